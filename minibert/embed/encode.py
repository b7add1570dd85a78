"""Texts -> the embeddings users ask for, batch by batch: layer choice, pooling, word vectors, long texts.

Rows are sorted by length and cut into batches of at most `max_batch_tokens` tokens (MAX_BATCH_TOKENS by
default; with `batch_size`, also at most that many texts); results come back in input order. A batch runs
packed: its texts laid end to end, no row computed for padding (Model.iter_packed_layers), float64 bit for
bit what the padded forward gives. Captured internals need the padded forward ([B, T, ...] arrays), so a
call with capture= runs padded batches, as the cuda backend does. Pooled outputs are pooled layer by layer
as the encoder produces them.
"""

import contextvars
import sys
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, warn_caller
from .pooling import (POOLINGS, apply_dense, check_options, combine_layers, l2_normalize, pool)
from .recipe import check_dense, check_prompt_room, encode_settings, prepare_texts, prompt_length
from ..tokenizer import as_text_list, encode_batch

OUTPUT_DTYPES = ("float32", "float16", "float64")
# Tokens per forward batch unless max_batch_tokens says otherwise: 170 texts of 12 tokens, 4 of 512. Measured
# on 2,000 short texts (2 threads, CPU time, medians of 5): 1024 and 2048 tokens 7.5 s, 4096 7.6 s, 8192
# 8.2 s: past ~2048 rows a layer's activations leave the cache between ops; fewer gives small matmuls.
MAX_BATCH_TOKENS = 2048


@dataclass
class Row:
    """One encoder input row: a whole text, or one window of a long text."""
    text: int                 # index of the text in the caller's list
    ids: np.ndarray           # [n] token ids with special tokens
    types: np.ndarray         # [n] token type ids
    positions: np.ndarray     # [n] where each token sits in the text's full token sequence


@dataclass
class Tokenized:
    ids: np.ndarray           # [n] full token sequence of one text, special tokens included
    types: np.ndarray
    offsets: np.ndarray       # [n, 2]
    word_ids: np.ndarray      # [n], -1 for special tokens
    truncated: bool


@dataclass
class WordVectors:
    """Word-level output for one text: the words, their character spans, and one vector per word.

    For pre-split words there is exactly one entry per given word, in order. A word that has no token of its
    own (it produces no tokenizer pieces, e.g. U+200B alone, or max_length cut it off) gets a vector of
    zeros and has_pieces False."""
    words: list               # W strings
    spans: np.ndarray         # [W, 2] character start and end in the text (for pre-split words: in " ".join(words))
    vectors: np.ndarray       # [W, H], [W, L, H] with combine=None and several layers, or 2H for first_last
    has_pieces: np.ndarray    # [W] bool: False where the word has no token and its vector is zeros


@dataclass
class EncodeResult:
    """encode(..., capture=...) returns the vectors and, per captured internal, one unpadded array per text."""
    vectors: object
    captured: dict


def tokenize_texts(model, texts, max_length, window, pretokenized=False, prefix_space=True, pairs=None):
    """Each text's full token sequence (with its pair text, if any): cut to max_length, or whole when
    windows will cover it.

    pretokenized: texts are lists of words; with prefix_space, a byte-level BPE tokenizer encodes each
    word as if a space came before it (see Tokenizer.word_prefix_backend)."""
    limit = None if window else (max_length or model.tokenizer.max_length)
    backend = model.tokenizer.backend
    if pretokenized and prefix_space:
        backend = model.tokenizer.word_prefix_backend or backend
    if limit and not pretokenized and pairs is None:
        texts = cut_to_fit(backend, texts, limit)                     # memory bounded by the limit
    inputs = texts if pairs is None else list(zip(texts, pairs))
    encodings = encode_batch(backend, inputs, limit, what="texts" if pairs is None else "text pairs",
                             is_pretokenized=pretokenized)
    one_type = model.tokenizer.single_segment           # RoBERTa-style models: pairs keep type 0
    return [Tokenized(ids=np.array(e.ids, dtype=np.int64), types=np.array(e.type_ids, dtype=np.int64) * (not one_type),
                      offsets=np.array(e.offsets, dtype=np.int64).reshape(-1, 2),
                      word_ids=np.array([-1 if w is None else w for w in e.word_ids], dtype=np.int64),
                      truncated=bool(e.overflowing)) for e in encodings]


CUT_MARGIN = 64          # characters before a cut that its tokens must end by to count as unchanged


def cut_to_fit(backend, texts, limit):
    """Texts too long to fit `limit` tokens cut by characters, so that the tokenizer never builds (and
    truncation never throws away) the encodings of a whole long text: a 10 MB line costs a prefix.

    No characters-per-token bound is safe on its own: whitespace, control characters and stripped accents
    make no token, and a WordPiece word over 100 characters is one [UNK], so a text of any length may fit.
    So a long text's prefix is tokenized, and the text is cut there only when the tokens that nothing past
    the prefix can change already number `limit`: those of the words (pre-tokens) before the first word
    reaching within CUT_MARGIN characters of the cut. A word reaching the cut may tokenize differently
    whole; normalization and pre-tokenization look only a few characters ahead (Unicode's stream-safe
    format bounds a run of combining marks at 30). Else the prefix doubles, up to the whole text. A text
    cut this way truncates to the same tokens as the whole text; texts of at most 16 * limit + CUT_MARGIN
    characters are never looked at.
    """
    cut = list(texts)
    for i, text in enumerate(texts):
        size = 16 * limit + CUT_MARGIN                  # a few characters per token: one try, nearly always
        while size < len(text):
            try:
                (tokens,) = encode_batch(backend, [text[:size]], None)
            except InputError:
                break                                   # the whole text's encoding names the fault
            reaching = [w for w, (_, end) in zip(tokens.word_ids, tokens.offsets)
                        if w is not None and end > size - CUT_MARGIN]
            first_reaching = min(reaching, default=float("inf"))
            if sum(w is not None and w < first_reaching for w in tokens.word_ids) >= limit:
                cut[i] = text[:size]
                break
            size *= 2
    return cut


def window_rows(index, tok, window, stride):
    """Split one tokenized text into overlapping windows of at most `window` tokens (specials included).

    `stride` is the overlap in tokens between consecutive windows (the convention of Hugging Face's
    tokenizers); each window keeps the text's own leading and trailing special tokens.
    """
    n = len(tok.ids)
    if window is None or n <= window:
        return [Row(index, tok.ids, tok.types, np.arange(n))]
    special = tok.word_ids < 0
    lead = int(np.argmax(~special)) if (~special).any() else 1
    trail = int(np.argmax(~special[::-1])) if (~special).any() else 1
    content = np.arange(lead, n - trail)                                 # positions of real tokens
    size = window - lead - trail
    step = size - stride
    rows, start = [], 0
    while True:
        chunk = content[start:start + size]
        positions = np.concatenate([np.arange(lead), chunk, np.arange(n - trail, n)])
        rows.append(Row(index, tok.ids[positions], np.zeros(len(positions), dtype=np.int64), positions))
        if start + size >= len(content):
            return rows
        start += step


# Where the texts being encoded start in a larger input: extract encodes a corpus chunk by chunk and sets
# this, so that warnings name the input's rows, not the chunk's.
FIRST_ROW = contextvars.ContextVar("minibert_first_row", default=None)


def encode(model, texts, *, layers=-1, combine=None, pooling=None, normalize=None, batch_size=None,
           max_length=None, window=None, stride=None, progress=None, dtype=None, capture=None,
           prompt=None, prompt_name=None, text_pairs=None, max_batch_tokens=None):
    """Embeddings of `texts` (with `text_pairs`: of each pair) from the chosen layers; see Model.encode.

    Options left as None come from the checkpoint's recipe (minibert.embed.recipe): pooling, normalize,
    max_length, prompt; the recipe's Dense modules apply to its sentence vector."""
    texts = as_text_list(texts, "texts")
    check_progress(progress)
    check_lengths(max_length, window, stride, batch_size,
                  model.tokenizer.max_length, max_batch_tokens)   # the caller's, before the recipe's
    check_dense(model, pooling)
    recipe = encode_settings(model, pooling=pooling, normalize=normalize, max_length=max_length, layers=layers,
                             prompt=prompt, prompt_name=prompt_name)
    pooling, normalize, max_length = recipe.pooling, recipe.normalize, recipe.max_length
    check_options(pooling, combine)
    if window is None:
        check_prompt_room(model, recipe)
    texts, skip = prepare_texts(recipe, texts), prompt_length(model, recipe)
    if skip and window is not None:
        raise InputError("window= with a prompt left out of the pooling (include_prompt false) is not supported")
    out_dtype = output_dtype(model, dtype)
    if capture is not None and window is not None:
        raise InputError("capture with window= is not supported: captured internals are per window")
    request = model.capture_request(capture)          # a bad capture is refused before any text is tokenized
    if text_pairs is not None:
        text_pairs = as_text_list(text_pairs, "text_pairs")
        if len(text_pairs) != len(texts):
            raise InputError(f"text_pairs needs one text per text (found {len(text_pairs)} for {len(texts)})")
        if window is not None:
            raise InputError("text_pairs with window= is not supported: a pair is encoded whole, up to max_length")
        if recipe.lower:                            # as sentence-transformers: both texts of a pair
            text_pairs = [t.lower() for t in text_pairs]
    tokenized = tokenize_texts(model, texts, max_length, window, pairs=text_pairs)
    first_index = FIRST_ROW.get()
    warn_truncated(model, tokenized, max_length, first_index)
    warn_unknown(model, tokenized, first_index=first_index)
    per_layer, captured = run(model, tokenized, chosen=recipe.layers, pooling=pooling, batch_size=batch_size,
                              window=window, stride=stride, progress=progress, capture=request.names, skip=skip,
                              max_batch_tokens=max_batch_tokens)
    if pooling == "none":
        vectors = [finish(v, recipe.single_layer, combine, normalize, out_dtype) for v in per_layer]
    else:
        vectors = finish(per_layer, recipe.single_layer, combine, normalize, out_dtype, dense=recipe.dense)
    if capture is None:
        return vectors
    return EncodeResult(vectors, request.keyed({name: [to_output(v, out_dtype) for v in values]
                                                for name, values in captured.items()}))


def rows_of(tokenized, first_index):
    """" (rows 4096-8191)" for a chunk of a larger input, "" for a whole one."""
    return "" if first_index is None else f" (rows {first_index}-{first_index + len(tokenized) - 1})"


def warn_truncated(model, tokenized, max_length, first_index=None,
                   hint="pass window= (and stride=) to cover long texts whole"):
    """max_length: the limit the texts were cut to (resolved: an int); hint: what the caller can do about it."""
    cut = sum(t.truncated for t in tokenized)
    if cut:
        warn_caller(f"minibert: {cut} of {len(tokenized)} texts{rows_of(tokenized, first_index)} were longer than "
                    f"{max_length} tokens and were truncated; {hint}")


def warn_unknown(model, tokenized, threshold=0.5, first_index=None):
    """One warning for the texts most of whose pieces are the unknown token: the model cannot read them."""
    unk = model.tokenizer.unk_id
    if unk is None:
        return
    if not tokenized:
        return
    ids = np.concatenate([tok.ids for tok in tokenized])                     # [all tokens]
    text = np.repeat(np.arange(len(tokenized)), [len(tok.ids) for tok in tokenized])   # [all tokens]
    piece = np.concatenate([tok.word_ids for tok in tokenized]) >= 0          # special tokens left out
    pieces = np.bincount(text[piece], minlength=len(tokenized))               # [texts]
    unknown = np.bincount(text[piece & (ids == unk)], minlength=len(tokenized))   # [texts]
    rate = unknown / np.maximum(pieces, 1)                                    # [texts]
    rates = [(int(i), float(rate[i])) for i in np.flatnonzero((pieces > 0) & (rate > threshold))]
    if rates:
        base = first_index or 0
        shown = ", ".join(f"texts[{base + i}] {rate:.0%}" for i, rate in rates[:5])
        shown += ", ..." if len(rates) > 5 else ""
        token = model.tokenizer.backend.id_to_token(unk)
        warn_caller(f"minibert: {len(rates)} of {len(tokenized)} texts{rows_of(tokenized, first_index)} are mostly "
                    f"{token} (pieces the "
                    f"vocabulary does not hold): {shown}; this model cannot read them, their vectors say little")


def run(model, tokenized, *, chosen, pooling, batch_size, window, stride, progress, capture, skip=0,
        max_batch_tokens=None):
    """The batching loop. Returns pooled [N, layers, H] (float64), or for pooling "none" a list of
    per-text [n, layers, H]; plus captured internals per text (unpadded). The first `skip` tokens of
    each text (a prompt) are left out of the pooling. chosen: the hidden-state indices (resolved)."""
    H = model.config.hidden_size
    check_batching(batch_size, window, stride, model.tokenizer.max_length, max_batch_tokens)
    if stride is None and window is not None:
        stride = window // 4
    capture_names = model.capture_names(capture)
    N = len(tokenized)
    rows = [row for i, tok in enumerate(tokenized) for row in window_rows(i, tok, window, stride)]
    token_level = pooling == "none"
    windowed = {row.text for row in rows if len(row.positions) != len(tokenized[row.text].ids)}
    # Texts whose token vectors must be kept: all for token-level output; windowed ones for max pooling,
    # which needs each merged token. Other pooling of a windowed text is linear in the merged tokens, so
    # each window adds its share as it comes (`shares`) and the text's tokens are never held.
    keep_tokens = set(range(N)) if token_level else windowed if POOLINGS[pooling].window_share is None else set()
    pooled = np.zeros((N, len(chosen), H), dtype=np.float64)
    sums = {i: np.zeros((len(tokenized[i].ids), len(chosen), H)) for i in keep_tokens}   # [n, layers, H]
    counts = {i: np.zeros(len(tokenized[i].ids), dtype=np.int64) for i in keep_tokens}   # [n]
    shares = window_shares(rows, tokenized, windowed - keep_tokens, pooling)              # text -> [n]
    captured = {name: [None] * N for name in sorted(capture_names)}
    packed = not capture_names          # captured internals are the padded forward's [B, T, ...] arrays
    order = sorted(range(len(rows)), key=lambda r: len(rows[r].ids))
    batches = token_batches([len(rows[r].ids) for r in order], max_batch_tokens or MAX_BATCH_TOKENS, batch_size,
                            packed)
    for first, last in progress_bar(batches, progress, len(rows)):
        batch_rows = [rows[r] for r in order[first:last]]
        ids, mask, types = pad(batch_rows, model.config.pad_token_id)
        lengths = mask.sum(axis=1)
        pool_mask = np.concatenate([np.zeros_like(mask[:, :skip]), mask[:, skip:]], axis=1)   # [B, T]
        direct = [k for k, row in enumerate(batch_rows) if row.text not in keep_tokens and row.text not in shares]
        layers = (model.iter_packed_layers(ids, mask, types, num_layers=max(chosen)) if packed else
                  model.iter_layers(ids, mask, types, num_layers=max(chosen), capture=capture_names))
        for layer in layers:
            index, hidden = layer.index, layer.hidden_state                     # [B, T, H]
            for name, value in layer.captured.items():      # internals are [B, T, ...] or [B, NH, T, T]
                for k, row in enumerate(batch_rows):
                    n = lengths[k]
                    captured[name][row.text] = value[k, :, :n, :n] if value.ndim == 4 else value[k, :n]
            slots = [s for s, c in enumerate(chosen) if c == index]
            if not slots:
                continue
            if direct:
                vectors = pool(hidden[direct], pool_mask[direct], pooling)                  # [b, H]
                for k, v in zip(direct, vectors):
                    pooled[batch_rows[k].text, slots] = v
            for k, row in enumerate(batch_rows):
                if row.text in keep_tokens:
                    sums[row.text][row.positions[:, None], slots] += hidden[k, :len(row.positions), None]
                elif row.text in shares:
                    share = shares[row.text][row.positions]                              # [window tokens]
                    pooled[row.text, slots] += share @ hidden[k, :len(row.positions)].astype(np.float64)
        for row in batch_rows:
            if row.text in keep_tokens:
                counts[row.text][row.positions] += 1
    merged = {i: sums[i] / counts[i][:, None, None] for i in keep_tokens}     # averaged over windows
    if token_level:
        return [merged[i] for i in range(N)], captured
    for i in keep_tokens:
        tokens = merged[i].transpose(1, 0, 2)                                   # [layers, n, H]
        pooled[i] = pool(tokens, np.ones(tokens.shape[:2]), pooling)
    return pooled, captured


def token_batches(lengths, max_tokens, max_texts, packed):
    """Rows sorted by length [R] -> batches (first, last) of consecutive rows holding at most `max_tokens`
    tokens (packed: the rows' own tokens; padded: rows x the longest) and at most `max_texts` rows (None: no
    limit). A row longer than max_tokens is a batch of its own."""
    batches, first, total = [], 0, 0
    for r, n in enumerate(lengths):
        size = total + n if packed else (r + 1 - first) * n       # lengths ascend: n is the longest so far
        if r > first and (size > max_tokens or (max_texts is not None and r - first >= max_texts)):
            batches.append((first, r))
            first, size = r, n
        total = size if packed else 0
    if first < len(lengths):
        batches.append((first, len(lengths)))
    return batches


def window_shares(rows, tokenized, texts, pooling):
    """Per token of each windowed text, the weight one window's vector carries in the pooled vector.

    A merged token is the mean of the windows covering it (vector sum / coverage), and the linear poolings
    are weighted sums of merged tokens (Pooling.window_share), so pooled = sum over windows of share . window
    tokens.
    """
    coverage = {i: np.zeros(len(tokenized[i].ids)) for i in texts}                 # text -> [n]
    for row in rows:
        if row.text in coverage:
            coverage[row.text][row.positions] += 1
    shares = {}
    for i, covered in coverage.items():
        shares[i] = POOLINGS[pooling].window_share(len(covered)) / covered      # [n]
    return shares


def finish(stacked, single_layer, combine, normalize, out_dtype, dense=()):
    """[..., layers, H] -> drop the layer axis for a single int layer, or combine layers; the recipe's
    Dense modules; normalise; cast."""
    layer_axis = stacked.ndim - 2
    if single_layer:
        out = np.take(stacked, 0, axis=layer_axis)
    else:
        out = combine_layers(stacked, combine, layer_axis)
    out = apply_dense(out, dense)
    if normalize:
        out = l2_normalize(out)
    return to_output(out, out_dtype)


def to_output(array, out_dtype):
    """array cast to the dtype asked for; float16 holds |x| <= 65504 and makes anything larger inf, which is
    refused (as extract refuses it) rather than returned as if it were a number."""
    with np.errstate(over="ignore"):                  # said below, once, as an error
        cast = array.astype(out_dtype)
    if out_dtype == np.float16 and np.isinf(cast).any():
        lost = int((np.isinf(cast) & np.isfinite(array)).sum())
        if lost:
            raise InputError(f"{lost} values exceed float16's range (|x| > 65504, the largest here "
                             f"{float(np.abs(array[np.isfinite(array)]).max()):.4g}) and would be inf: "
                             "ask for dtype='float32'")
    return cast


def pad(rows, pad_id):
    B, T = len(rows), max(len(r.ids) for r in rows)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    types = np.zeros((B, T), dtype=np.int64)
    for b, r in enumerate(rows):
        ids[b, :len(r.ids)], mask[b, :len(r.ids)], types[b, :len(r.ids)] = r.ids, 1, r.types
    return ids, mask, types


def progress_bar(batches, progress, total_rows):
    """tqdm over batches: on by default only when stderr is a terminal and the input is large. A callable
    `progress` is called instead, progress(rows_done, total_rows), after each batch (a caller's own report,
    e.g. extract's one bar for a whole run)."""
    if callable(progress):
        return report_batches(batches, progress, total_rows)
    show = progress if progress is not None else (sys.stderr.isatty() and total_rows >= 2048)
    if not show:
        return batches
    from tqdm.auto import tqdm
    return tqdm(batches, desc="minibert", unit="batch")


def check_progress(progress):
    """progress: None, a bool or a callable; a string such as "no" was true and showed the bar."""
    if not (progress is None or callable(progress) or isinstance(progress, (bool, np.bool_))):
        raise InputError(f"progress (show_progress_bar) must be True, False, None (a bar on a terminal for large "
                         f"inputs) or a callable progress(done, total), found {progress!r}")


def report_batches(batches, progress, total_rows):
    done = 0
    for first, last in batches:
        yield first, last               # the loop body runs here; the batch is done when the next is asked for
        done += last - first
        progress(done, total_rows)


def output_dtype(model, dtype):
    """The dtype encode returns: the model's own (what it was loaded with) unless `dtype` is given.

    float16 is a cast of the float32/float64 result at the end, never a float16 computation."""
    if dtype is None:
        return np.dtype(model.dtype)
    try:
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    except TypeError:          # np.dtype of something that is no dtype at all
        name = None
    if name not in OUTPUT_DTYPES:
        raise InputError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)} (or None: the model's "
                         f"{np.dtype(model.dtype).name}), found {dtype!r}")
    return np.dtype(name)


def check_lengths(max_length, window, stride, batch_size, limit, max_batch_tokens=None):
    """Every length option, before any text is tokenized: max_length, window, stride, batch_size and
    max_batch_tokens."""
    if max_length is not None:
        check_max_length(max_length)
        if max_length > limit:
            raise InputError(f"max_length {max_length} exceeds the model's {limit} positions; "
                             "use window= (and stride=) for longer texts")
        if window is not None:
            raise InputError("max_length and window cannot be combined: max_length cuts each text to its first "
                             "tokens, window covers the whole text; pass one of them")
    check_batching(batch_size, window, stride, limit, max_batch_tokens)


def check_max_length(max_length):
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or not 2 <= max_length:
        raise InputError(f"max_length must be an int of at least 2 (room for the special tokens), found {max_length!r}")


def is_count(value):
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def check_batching(batch_size, window, stride, limit, max_batch_tokens=None):
    if batch_size is not None and not is_count(batch_size):
        raise InputError(f"batch_size (the most texts per batch) must be a positive int or None, found {batch_size!r}")
    if max_batch_tokens is not None and not is_count(max_batch_tokens):
        raise InputError(f"max_batch_tokens (the most tokens per batch) must be a positive int or None (the "
                         f"default {MAX_BATCH_TOKENS}), found {max_batch_tokens!r}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 8 <= window <= limit:
            raise InputError(f"window must be an int between 8 and the model's {limit} tokens, found {window!r}")
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, (int, np.integer))
                                   or not 0 <= stride <= window // 2):
            raise InputError(f"stride (the overlap between windows) must be between 0 and window // 2 = "
                             f"{window // 2}, found {stride!r}")
    elif stride is not None:
        raise InputError("stride is the overlap between windows: pass window= too")
