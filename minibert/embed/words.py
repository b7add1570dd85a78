"""Word vectors: one vector per word of a text or of a given word list, from its subword pieces
(first, last, mean or first_last piece), through encode's batching; spans in the text's characters."""

import numpy as np

from ..errors import InputError, warn_caller
from ..tokenizer import as_text_list, encode_batch
from .encode import (WordVectors, check_lengths, check_progress, finish, output_dtype, run, tokenize_texts,
                     warn_truncated, warn_unknown)
from .pooling import check_options, pool_words, resolve_layer_choice
from .recipe import check_flag


def encode_words(model, texts_or_words, *, layers=-1, combine=None, subword="first", normalize=False,
                 batch_size=None, max_length=None, window=None, stride=None, progress=None, dtype=None,
                 prefix_space=True, max_batch_tokens=None):
    """One vector per word: a list (one per text) of WordVectors.

    Raw texts are split into words by the tokenizer's pre-tokenizer; a list of word lists (NER data)
    keeps the caller's words, one entry per word, and spans then refer to " ".join(words).
    prefix_space (pre-split words, byte-level BPE tokenizers only): each word is encoded as if a space came
    before it, as transformers' token-classification recipe does; False encodes each word bare.
    """
    check_options("none", combine)
    out_dtype = output_dtype(model, dtype)
    pretokenized = isinstance(texts_or_words, (list, tuple)) and bool(texts_or_words) and \
        all(isinstance(t, (list, tuple)) for t in texts_or_words)
    if pretokenized:
        for i, words in enumerate(texts_or_words):
            for j, word in enumerate(words):
                if not isinstance(word, str):
                    raise InputError(f"texts[{i}][{j}] is {type(word).__name__}, not str")
        inputs = [list(words) for words in texts_or_words]
    else:
        inputs = as_text_list(texts_or_words, "texts")
    normalize = check_flag(normalize, "normalize")
    check_progress(progress)
    if not isinstance(prefix_space, bool):
        raise InputError(f"prefix_space must be True or False, found {prefix_space!r}")
    check_lengths(max_length, window, stride, batch_size, model.tokenizer.max_length, max_batch_tokens)
    chosen, single = resolve_layer_choice(layers, model.config.num_hidden_layers)
    max_length = max_length or model.tokenizer.max_length    # encode_words does not read the recipe's max_seq_length
    lower = lower_keeping_offsets if model.recipe.do_lower_case else None     # as encode does for this recipe
    read = inputs if lower is None else [[lower(w) for w in t] if pretokenized else lower(t) for t in inputs]
    tokenized = tokenize_texts(model, read, max_length, window, pretokenized=pretokenized,
                               prefix_space=prefix_space)
    warn_truncated(model, tokenized, max_length)
    warn_unknown(model, tokenized)
    per_text, _ = run(model, tokenized, chosen=chosen, pooling="none", batch_size=batch_size, window=window,
                      stride=stride, progress=progress, capture=None, max_batch_tokens=max_batch_tokens)
    results = []
    for i, tok in enumerate(tokenized):
        found, word_index = pool_words(per_text[i], tok.word_ids, subword)         # [W', layers, H']
        if pretokenized:
            words = inputs[i]
            vectors = np.zeros((len(words),) + found.shape[1:], dtype=found.dtype)   # [W, layers, H']
            vectors[word_index] = found
            has_pieces = np.zeros(len(words), dtype=bool)
            has_pieces[word_index] = True
            starts = np.cumsum([0] + [len(w) + 1 for w in words])                    # [W + 1]
            spans = np.stack([starts[:-1], starts[:-1] + [len(w) for w in words]], axis=-1)   # [W, 2]
        else:
            spans = np.array([[tok.offsets[tok.word_ids == w][0, 0], tok.offsets[tok.word_ids == w][-1, 1]]
                              for w in word_index], dtype=np.int64).reshape(-1, 2)        # [W', 2]
            # byte-level BPE makes a run of spaces a pre-token of its own ("a  b": a, Ġ, Ġb), its span empty
            # (offsets trimmed) or blank: no word of the text
            kept = np.array([inputs[i][s:e].strip() != "" for s, e in spans], dtype=bool)   # [W']
            vectors, spans = found[kept], spans[kept]
            has_pieces = np.ones(len(spans), dtype=bool)
            words = [inputs[i][s:e] for s, e in spans]
        results.append(WordVectors(words=list(words), spans=spans.astype(np.int64).reshape(-1, 2),
                                   vectors=finish(vectors, single, combine, normalize, out_dtype),
                                   has_pieces=has_pieces))
    if pretokenized:
        warn_pieceless(model, inputs, results, prefix_space)
    return results


def lower_keeping_offsets(text):
    """text lower-cased, except the rare characters whose lower case is longer ("İ" -> "i̇"), so that offsets
    into the result are offsets into `text` and words and spans stay the user's."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def warn_pieceless(model, inputs, results, prefix_space):
    """One warning naming the given words that produce no tokenizer pieces at all (words that only lost their
    pieces to max_length are covered by the truncation warning)."""
    missing = [(i, j) for i, r in enumerate(results) for j in np.flatnonzero(~r.has_pieces)]
    if not missing:
        return
    backend = (model.tokenizer.word_prefix_backend if prefix_space else None) or model.tokenizer.backend
    alone = encode_batch(backend, [[inputs[i][j]] for i, j in missing], None, is_pretokenized=True)
    empty = [(i, j) for (i, j), e in zip(missing, alone) if not any(w is not None for w in e.word_ids)]
    if empty:
        shown = ", ".join(f"texts[{i}][{j}] {inputs[i][j]!r}" for i, j in empty[:8])
        shown += ", ..." if len(empty) > 8 else ""
        texts = sorted({i for i, _ in empty})
        warn_caller(f"minibert: {len(empty)} word(s) in {len(texts)} text(s) produce no tokenizer pieces: {shown}; "
                    "each keeps its place with a vector of zeros and has_pieces False")
