"""SPLADE sparse vectors on the masked-LM head, as sentence-transformers' SparseEncoder computes them.

    w_v = pool_t log(1 + relu(logits[t, v]))      over the text's real tokens t; pool = max (SPLADE v2 on) or sum
    (activation "log1p_relu", OpenSearch's models: log(1 + w) once more before pooling)

then, with max_active_dims k, only the k largest weights of each text are kept. The result is a vocabulary-wide
vector that is zero almost everywhere; SparseVectors holds only the non-zero entries, ids ascending, with no
scipy or torch involved. The settings come from a SparseEncoder directory (modules.json with a SpladePooling
module, config_sentence_transformers.json's max_active_dims) read by minibert.load_sparse, or default to
max + relu for a plain ...ForMaskedLM checkpoint.

Axes: N texts, T tokens, n a text's real tokens, V vocabulary.
"""

from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np

from ..errors import ConfigError, InputError
from ..tokenizer import as_text_list

POOLINGS = ("max", "sum")
ACTIVATIONS = ("relu", "log1p_relu")
SPLADE_POOLING = "SpladePooling"


@dataclass(frozen=True)
class SpladeSettings:
    pooling: str = "max"                    # SpladePooling's pooling_strategy
    activation: str = "relu"                # its activation_function
    max_active_dims: Optional[int] = None   # config_sentence_transformers.json; None keeps every non-zero weight
    max_length: Optional[int] = None        # the Transformer module's max_seq_length; None: the tokenizer's limit


@dataclass
class SparseVectors:
    """Per text the vocabulary ids with a non-zero weight (ascending) and those weights."""
    ids: list               # N arrays [nnz] int64
    weights: list           # N arrays [nnz], the model's dtype
    vocab_size: int
    single: bool            # encode_sparse was given one str: decode and to_dense drop the text axis
    tokenizer: object = None

    def __len__(self):
        return len(self.ids)

    @classmethod
    def from_rows(cls, indptr, indices, values, vocab_size) -> "SparseVectors":
        """From compressed rows as an extraction stores them (text i: indices[indptr[i]:indptr[i + 1]] and its
        values), ids widened to int64 as encode_sparse gives them; no tokenizer."""
        bounds = list(zip(indptr[:-1].tolist(), indptr[1:].tolist()))
        return cls(ids=[np.asarray(indices[a:b], dtype=np.int64) for a, b in bounds],
                   weights=[np.array(values[a:b]) for a, b in bounds], vocab_size=vocab_size, single=False)

    def to_dense(self) -> np.ndarray:
        """[N, V] (or [V] for one str) with zeros where no weight is stored."""
        dtype = self.weights[0].dtype if self.weights else np.float32
        dense = np.zeros((len(self.ids), self.vocab_size), dtype=dtype)                  # [N, V]
        for row, (ids, weights) in enumerate(zip(self.ids, self.weights)):
            dense[row, ids] = weights
        return dense[0] if self.single else dense

    def decode(self, top_k=None):
        """Per text [(token, weight)] by descending weight, the top_k first (all without top_k), as
        SparseEncoder.decode gives them."""
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise InputError(f"top_k must be a positive int or None, found {top_k!r}")
        if self.tokenizer is None:
            raise InputError("these sparse vectors carry no tokenizer (read back from an extraction): set "
                             "`.tokenizer = model.tokenizer` of the model that made them, then decode")
        decoded = []
        for ids, weights in zip(self.ids, self.weights):
            order = np.argsort(-weights, kind="stable")[:top_k]
            decoded.append([(self.tokenizer.backend.id_to_token(int(ids[i])), float(weights[i])) for i in order])
        return decoded[0] if self.single else decoded


def splade_pool(logits, *, pooling, activation):
    """logits [n, V] of one text's real tokens -> weights [V]."""
    weights = np.log1p(np.maximum(logits, 0))                                # [n, V]
    if activation == "log1p_relu":
        weights = np.log1p(weights)                                          # [n, V]
    return weights.max(axis=0) if pooling == "max" else weights.sum(axis=0)  # [V]


def keep_largest(weights, k):
    """weights [V] with all but the k largest set to zero (k None: unchanged)."""
    if k is None or np.count_nonzero(weights) <= k:
        return weights
    kept = np.zeros_like(weights)                                            # [V]
    top = np.argpartition(-weights, k - 1)[:k]
    kept[top] = weights[top]
    return kept


def applied_settings(model, *, max_length=None, max_active_dims=None, pooling=None,
                     activation=None) -> SpladeSettings:
    """The settings encode_sparse applies: the model's (load_sparse) or the defaults, with each given override;
    max_length becomes the token limit texts are cut to (None: the tokenizer's own)."""
    settings = model.__dict__.get("splade_settings") or SpladeSettings()
    settings = replace(settings, **{key: value for key, value in (("pooling", pooling), ("activation", activation),
                                                                  ("max_active_dims", max_active_dims))
                                    if value is not None})
    check_settings(settings, "encode_sparse")
    limit = max_length or settings.max_length
    return replace(settings, max_length=None if limit is None else min(limit, model.tokenizer.max_length))


def encode_sparse(model, texts, *, batch_size=32, max_length=None, max_active_dims=None, pooling=None,
                  activation=None) -> SparseVectors:
    from .encode import FIRST_ROW, check_max_length, warn_truncated
    if max_length is not None:
        check_max_length(max_length)
    settings = applied_settings(model, max_length=max_length, max_active_dims=max_active_dims, pooling=pooling,
                                activation=activation)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, found {batch_size!r}")
    single = isinstance(texts, str)
    texts = [texts] if single else texts
    texts = as_text_list(texts, "texts")
    if model.recipe.do_lower_case:            # the Transformer module's do_lower_case, as for encode
        texts = [text.lower() for text in texts]
    model.heads.require("mlm")
    ids, weights, cut = [], [], []
    for start in range(0, len(texts), batch_size):
        batch = model.tokenize(texts[start:start + batch_size], max_length=settings.max_length)
        cut += [SimpleNamespace(truncated=bool(t)) for t in batch.truncated]
        for row_ids, row_weights in sparse_batch(model, batch.input_ids, batch.attention_mask, batch.token_type_ids,
                                                 settings):
            ids.append(row_ids)
            weights.append(row_weights)
    limit, most = settings.max_length or model.tokenizer.max_length, model.tokenizer.max_length
    # SPLADE pools no windows: the caller can raise max_length to the model's limit, or split the texts
    warn_truncated(model, cut, limit, FIRST_ROW.get(), hint=f"pass max_length= (up to {most}) to keep more of each text"
                   if limit < most else "split long texts into passages to cover them whole")
    return SparseVectors(ids=ids, weights=weights, vocab_size=model.config.vocab_size, single=single,
                         tokenizer=model.tokenizer)


def sparse_batch(model, input_ids, attention_mask, token_type_ids, settings: SpladeSettings):
    """One padded batch [B, T] -> per row (ids [nnz] ascending, weights [nnz]) of its SPLADE vector."""
    from ..heads import mlm_logits
    heads = model.heads
    heads.require("mlm")
    hidden = model.forward(input_ids, attention_mask, token_type_ids).last_hidden_state     # [B, T, H]
    out = []
    for b in range(len(input_ids)):
        real = np.asarray(attention_mask[b]) == 1                                          # [T]
        pooled = splade_pool(mlm_logits(hidden[b][real], heads), pooling=settings.pooling,
                             activation=settings.activation)                               # [V]
        pooled = keep_largest(pooled, settings.max_active_dims)
        nonzero = np.flatnonzero(pooled)
        out.append((nonzero.astype(np.int64), pooled[nonzero]))
    return out


def check_settings(settings: SpladeSettings, where: str) -> None:
    if settings.pooling not in POOLINGS:
        raise ConfigError(f"{where}: SPLADE pooling must be one of {', '.join(POOLINGS)}, found {settings.pooling!r}")
    if settings.activation not in ACTIVATIONS:
        raise ConfigError(f"{where}: SPLADE activation must be one of {', '.join(ACTIVATIONS)}, "
                          f"found {settings.activation!r}")
    k = settings.max_active_dims
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ConfigError(f"{where}: max_active_dims must be a positive int, found {k!r}")


def read_splade_settings(model_dir: Path):
    """(Transformer folder, SpladeSettings) of a SparseEncoder directory: modules.json must list a Transformer
    then a SpladePooling module, the only SparseEncoder minibert reproduces."""
    from .recipe import read_json_object, read_modules, read_transformer_settings
    modules = read_modules(model_dir)
    kinds = [kind for kind, _ in modules]
    if kinds[:1] != ["Transformer"] or kinds[1:] != [SPLADE_POOLING]:
        raise ConfigError(f"{model_dir / 'modules.json'}: minibert reproduces a SparseEncoder made of a Transformer "
                          f"module then a SpladePooling module; found {kinds}")
    found = {}
    read_transformer_settings(model_dir, modules[0][1], lambda name, value, source: found.__setitem__(name, value))
    path = model_dir / modules[1][1] / "config.json"
    pooling = read_json_object(path) if path.is_file() else {}
    options = read_json_object(model_dir / "config_sentence_transformers.json") \
        if (model_dir / "config_sentence_transformers.json").is_file() else {}
    settings = SpladeSettings(pooling=pooling.get("pooling_strategy", "max"),
                              activation=pooling.get("activation_function", "relu"),
                              max_active_dims=options.get("max_active_dims"), max_length=found.get("max_length"))
    check_settings(settings, str(path))
    return modules[0][1], settings
