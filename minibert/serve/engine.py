"""What the server computes, with the pieces `Model.encode` is made of, so that its vectors are encode's:
texts -> rows of token ids (the recipe's prompt, lower-casing and length limit), rows padded into one
forward batch -> sentence vectors (the recipe's pooling, Dense, Normalize) or one layer's token vectors.

Every import of minibert's internals is in this module, so that a move of recipe, pooling or tokenizer
touches one place here. Shapes: B rows in a batch, T tokens (padded), H hidden.
"""

from dataclasses import dataclass, replace

import numpy as np

from ..errors import InputError
from ..embed.pooling import apply_dense, l2_normalize, pool
from ..embed.recipe import check_dense, encode_settings, prepare_texts, prompt_length
from ..embed.sparse import SparseVectors, applied_settings, sparse_batch
from ..tokenizer import encode_batch


class TooLong(InputError):
    """An input over the model's token limit, refused as TEI refuses it (413) unless truncation is asked for."""


@dataclass(frozen=True)
class Want:
    """What one row of a request asks of the forward pass: its sentence vector, or one layer's token vectors."""
    layer: object                 # None: the recipe's sentence vector; an int: hidden_states[layer] per token
    normalize: bool = False       # sentence vectors: L2 after the recipe's Dense modules
    skip: int = 0                 # leading tokens (a prompt) the pooling leaves out


@dataclass
class Row:
    ids: np.ndarray               # [n] token ids, special tokens included
    types: np.ndarray             # [n] token type ids
    want: Want


class Engine:
    """One loaded model as the server uses it. Thread-safe: the batcher's worker calls `forward`, request
    handlers (in a thread pool) call `text_rows` and `id_rows`."""

    def __init__(self, model):
        self.model = model
        self.num_layers = model.config.num_hidden_layers
        base = self.settings(None, None)
        self.max_input_length = base.max_length or model.tokenizer.max_length
        self.pooling = base.pooling
        self.dimension = model.get_sentence_embedding_dimension()

    def settings(self, normalize, prompt_name, pooling=None):
        """encode's settings for a request's options (prompt_name: an InputError naming the model's prompts)."""
        return encode_settings(self.model, pooling=pooling, normalize=normalize, max_length=None, layers=-1,
                               prompt=None, prompt_name=prompt_name)

    def text_rows(self, texts, *, normalize=None, prompt_name=None, truncate=False, direction="right", layer=None,
                  limit=None, what="inputs", nested=True, remedy="shorten it or set truncate"):
        """Texts -> Rows as encode tokenizes them; an input over the limit (None: the recipe's) is a TooLong
        naming it (what[i], or what for one text) and saying `remedy`, unless truncate (direction "left" keeps
        a text's end, as TEI's truncation_direction Left)."""
        if layer is None:
            check_dense(self.model, None)
        settings = self.settings(normalize, prompt_name, pooling=None if layer is None else "none")
        want = Want(layer=layer, normalize=settings.normalize,
                    skip=prompt_length(self.model, settings) if layer is None else 0)
        prepared = prepare_texts(settings, texts)
        limit = limit or self.max_input_length
        one_type = self.model.tokenizer.single_segment        # as encode: RoBERTa-style models keep type 0
        cut = limit if direction == "right" else None         # encode's truncation; the left cut is made below
        rows = []
        for i, e in enumerate(encode_batch(self.model.tokenizer.backend, prepared, cut)):
            ids, types = np.array(e.ids, dtype=np.int64), np.array(e.type_ids, dtype=np.int64) * (not one_type)
            if e.overflowing or len(ids) > limit:
                if not truncate:
                    raise TooLong(f"{f'{what}[{i}]' if nested else what} has more than the model's {limit} "
                                  f"tokens; {remedy}")
                if len(ids) > limit:        # left: the leading special tokens, then the text's end and its closing ones
                    special = np.array(e.special_tokens_mask, dtype=bool)
                    lead = int(np.argmax(~special)) if (~special).any() else 0
                    start = len(ids) - (limit - lead)
                    keep = np.r_[0:lead, start:len(ids)]
                    ids, types = ids[keep], types[keep]
                    # The cut takes the prompt (at the text's start) with it: the pooling leaves out the leading
                    # special tokens and what is left of the prompt, never the text's own tokens.
                    skip = min(want.skip, lead) + max(0, want.skip - max(start, lead))
                    rows.append(Row(ids, types, replace(want, skip=skip)))
                    continue
            rows.append(Row(ids, types, want))
        return rows

    def sparse(self, texts, *, prompt_name=None, truncate=False, direction="right", nested=True):
        """Texts -> their SPLADE vectors (SparseVectors) with the model's settings, tokenized as text_rows does
        (the prompt, the cut to the SPLADE length limit from either end); a ModelFileError without an MLM head."""
        settings = applied_settings(self.model)
        self.model.heads.require("mlm")
        rows = self.text_rows(texts, prompt_name=prompt_name, truncate=truncate, direction=direction, layer=-1,
                              limit=settings.max_length or self.model.tokenizer.max_length, nested=nested)
        T = max(len(row.ids) for row in rows)
        ids = np.full((len(rows), T), self.model.config.pad_token_id, dtype=np.int64)  # [B, T]
        mask = np.zeros((len(rows), T), dtype=np.int64)                                 # [B, T]
        types = np.zeros((len(rows), T), dtype=np.int64)                                # [B, T]
        for b, row in enumerate(rows):
            ids[b, :len(row.ids)], mask[b, :len(row.ids)], types[b, :len(row.ids)] = row.ids, 1, row.types
        found = sparse_batch(self.model, ids, mask, types, settings)
        return SparseVectors(ids=[i for i, _ in found], weights=[w for _, w in found],
                             vocab_size=self.model.config.vocab_size, single=False)

    def id_rows(self, sequences, *, normalize=None, layer=None, what="input", nested=True):
        """Lists of token ids, taken as the whole input (special tokens included, as model.tokenize gives them)
        -> Rows; an id outside the vocabulary or a sequence over the limit is an InputError naming its place."""
        if layer is None:
            check_dense(self.model, None)
        settings = self.settings(normalize, None, pooling=None if layer is None else "none")
        vocab = self.model.config.vocab_size
        rows = []
        for i, sequence in enumerate(sequences):
            where = f"{what}[{i}]" if nested else what
            if not sequence:
                raise InputError(f"{where} is an empty list of token ids")
            for j, token in enumerate(sequence):
                if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
                    raise InputError(f"{where}[{j}] = {token!r} is not a token id of this model's vocabulary "
                                     f"(integers 0..{vocab - 1})")
            if len(sequence) > self.max_input_length:
                raise TooLong(f"{where} has {len(sequence)} token ids, more than the model's "
                              f"{self.max_input_length} (token ids are never truncated)")
            rows.append(Row(np.array(sequence, dtype=np.int64), np.zeros(len(sequence), dtype=np.int64),
                            Want(layer=layer, normalize=settings.normalize)))
        return rows

    def forward(self, rows):
        """One forward batch -> one array per row: its sentence vector [D] or token vectors [n, H], in the
        model's dtype, computed as encode computes them (pooled, then float64 through Dense and Normalize)."""
        model = self.model
        B, T = len(rows), max(len(row.ids) for row in rows)
        ids = np.full((B, T), model.config.pad_token_id, dtype=np.int64)     # [B, T]
        mask = np.zeros((B, T), dtype=np.int64)                               # [B, T]
        types = np.zeros((B, T), dtype=np.int64)                              # [B, T]
        for b, row in enumerate(rows):
            ids[b, :len(row.ids)], mask[b, :len(row.ids)], types[b, :len(row.ids)] = row.ids, 1, row.types
        layers = {self.num_layers if row.want.layer is None else row.want.layer % (self.num_layers + 1)
                  for row in rows}
        sentence = [b for b, row in enumerate(rows) if row.want.layer is None]
        out = [None] * B
        for layer in model.iter_packed_layers(ids, mask, types, num_layers=max(layers)):   # no padding row run
            hidden = layer.hidden_state                                       # [B, T, H], zeros at padding
            if layer.index == self.num_layers and sentence:
                pool_mask = mask[sentence].copy()                             # [b, T]
                for k, b in enumerate(sentence):
                    pool_mask[k, :rows[b].want.skip] = 0                       # a prompt left out of the pooling
                pooled = pool(hidden[sentence], pool_mask, self.pooling).astype(np.float64)   # [b, H]
                vectors = apply_dense(pooled, model.recipe.dense)                             # [b, D]
                for k, b in enumerate(sentence):
                    vector = l2_normalize(vectors[k:k + 1])[0] if rows[b].want.normalize else vectors[k]
                    out[b] = vector.astype(model.dtype)                                      # [D]
            for b, row in enumerate(rows):
                if row.want.layer is not None and row.want.layer % (self.num_layers + 1) == layer.index:
                    out[b] = hidden[b, :len(row.ids)].astype(model.dtype)                    # [n, H]
        return out


def cut_dimensions(vector, dimensions, normalize):
    """A sentence vector cut to its first `dimensions` (Matryoshka), re-normalised when the request's vectors
    are normalised: sentence-transformers' encode(truncate_dim=d, normalize_embeddings=True)."""
    if dimensions is None:
        return vector
    cut = vector[:dimensions]
    return l2_normalize(cut.astype(np.float64)).astype(vector.dtype) if normalize else cut


def tokens_of(engine, texts, *, prompt_name=None, add_special_tokens=True):
    """TEI's /tokenize: per text its tokens {id, text, special, start, stop}, the whole text (no limit), as the
    model reads it (prompt and lower-casing applied; offsets are into that text)."""
    prepared = prepare_texts(engine.settings(None, prompt_name), texts)
    out = []
    for text, e in zip(prepared, encode_batch(engine.model.tokenizer.backend, prepared, None)):
        out.append([{"id": int(token), "text": piece if special else text[start:stop], "special": bool(special),
                     "start": None if special else int(start), "stop": None if special else int(stop)}
                    for token, piece, special, (start, stop) in zip(e.ids, e.tokens, e.special_tokens_mask, e.offsets)
                    if add_special_tokens or not special])
    return out
