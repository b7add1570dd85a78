"""Turning per-token vectors into the vectors users ask for: layer choice and combination, pooling,
word pooling, normalisation. Plain NumPy; shapes in comments (B batch, T tokens, H hidden, L layers).
"""

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..errors import InputError
from ..kernels import reference

COMBINES = (None, "mean", "sum", "concat")
SUBWORD_POOLINGS = ("first", "last", "mean", "first_last")


def resolve_layers(layers, num_layers):
    """layers -> a list of hidden-state indices in the order asked (0 = embedding output).

    An int (negative counts from the top: -1 is the last layer), a list of ints, or "all".
    """
    if isinstance(layers, str):
        if layers != "all":
            raise InputError(f"layers must be an int, a list of ints or 'all', found {layers!r}")
        return list(range(num_layers + 1))
    single = isinstance(layers, (int, np.integer)) and not isinstance(layers, bool)
    chosen = [layers] if single else layers
    if not isinstance(chosen, (list, tuple)) or not chosen:
        raise InputError(f"layers must be an int, a non-empty list of ints or 'all', found {layers!r}")
    resolved = []
    for layer in chosen:
        if (isinstance(layer, bool) or not isinstance(layer, (int, np.integer))
                or not -(num_layers + 1) <= layer <= num_layers):
            raise InputError(f"layer {layer!r} does not exist: the model has hidden states 0..{num_layers} "
                             f"(0 = embedding output) or -1..-{num_layers + 1} counting from the top")
        resolved.append(int(layer) % (num_layers + 1))
    return resolved


def resolve_layer_choice(layers, num_layers):
    """layers -> (hidden-state indices, single): single when one int layer was asked, whose vectors then
    come out without a layer axis."""
    single = isinstance(layers, (int, np.integer)) and not isinstance(layers, bool)
    return resolve_layers(layers, num_layers), single


def check_options(pooling, combine):
    if not isinstance(pooling, str) or pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, found {pooling!r}")
    if combine not in COMBINES:
        raise InputError(f"combine must be one of None, 'mean', 'sum', 'concat', found {combine!r}")


def pool(hidden, mask, pooling):
    """One layer's [B, T, H] with mask [B, T] -> [B, H] (pooling "none" is handled by the caller)."""
    return POOLINGS[pooling].pool(hidden, mask)


def pool_cls(hidden, mask):
    """The first token the mask keeps ([CLS], or the first after an excluded prompt)."""
    return hidden[np.arange(len(hidden)), np.argmax(mask > 0, axis=1)]   # [B, H]


def pool_max(hidden, mask):
    m = mask[..., None].astype(hidden.dtype)                                   # [B, T, 1]
    return np.where(m > 0, hidden, -np.inf).max(axis=1).astype(hidden.dtype)  # [B, H]


def masked_sum(hidden, mask):
    m = mask[..., None].astype(hidden.dtype)                                   # [B, T, 1]
    total = (hidden * m).sum(axis=1)                                           # [B, H]
    count = np.maximum(m.sum(axis=1), 1)                                       # [B, 1]
    return total, count


def pool_mean(hidden, mask):
    total, count = masked_sum(hidden, mask)
    return total / count                                                       # [B, H]


def pool_mean_sqrt_len(hidden, mask):
    total, count = masked_sum(hidden, mask)
    return total / np.sqrt(count)                                              # [B, H]


def pool_by_position(hidden, mask, pooling):
    """sentence-transformers' position-aware poolings of [B, T, H] with mask [B, T] -> [B, H].

    weightedmean: token t (counted from 1) weighs t, so later tokens count more (SGPT);
    lasttoken: the last token the mask keeps (decoder-style embedders; [SEP] for BERT).
    """
    B, T = mask.shape
    if pooling == "lasttoken":
        last = T - 1 - np.argmax(mask[:, ::-1] > 0, axis=1)                   # [B] last kept position
        return hidden[np.arange(B), last]                                      # [B, H]
    weights = mask * np.arange(1, T + 1, dtype=hidden.dtype)                   # [B, T]
    total = np.einsum("bt,bth->bh", weights, hidden)                           # [B, H]
    return total / np.maximum(weights.sum(axis=1, keepdims=True), 1)          # [B, H]


@dataclass(frozen=True)
class Pooling:
    """One pooling: how it runs, how a long text's windows feed it, how sentence-transformers names it."""
    name: str
    pool: Optional[Callable]          # (hidden [B, T, H], mask [B, T]) -> [B, H]; None: token vectors ("none")
    window_share: Optional[Callable]  # n -> [n] weight of each merged token of an n-token windowed text in the
                                      #   pooled vector (linear poolings); None: windows' tokens are merged first
    flag: Optional[str] = None        # its pooling_mode_* flag in 1_Pooling/config.json
    mode: Optional[str] = None        # its name in newer files' "pooling_mode" string
    cli: bool = True                  # offered as a --pooling choice


# In the order of error messages and the CLI's choices. A merged token is the mean of the windows covering
# it, and the linear poolings are weighted sums of merged tokens: each window adds share . its tokens.
POOLINGS = {p.name: p for p in [
    Pooling("cls", pool_cls, lambda n: np.eye(1, n)[0], "pooling_mode_cls_token", "cls"),
    Pooling("mean", pool_mean, lambda n: np.full(n, 1 / n), "pooling_mode_mean_tokens", "mean"),
    Pooling("max", pool_max, None, "pooling_mode_max_tokens", "max"),
    Pooling("mean_sqrt_len", pool_mean_sqrt_len, lambda n: np.full(n, 1 / np.sqrt(n)),
            "pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    Pooling("weightedmean", lambda hidden, mask: pool_by_position(hidden, mask, "weightedmean"),
            lambda n: np.arange(1, n + 1) / (n * (n + 1) / 2), "pooling_mode_weightedmean_tokens", "weightedmean"),
    Pooling("lasttoken", lambda hidden, mask: pool_by_position(hidden, mask, "lasttoken"),
            lambda n: np.eye(1, n, n - 1)[0], "pooling_mode_lasttoken", "lasttoken"),
    Pooling("none", None, None),
]}
# What the CLI offers as --pooling: sentence poolings ("none", token vectors, only where a command takes it).
CLI_POOLINGS = [p.name for p in POOLINGS.values() if p.cli and p.pool is not None]


def apply_dense(vectors, dense_modules):
    """Pooled vectors [..., H] through sentence-transformers Dense modules, in order -> [..., out]."""
    for d in dense_modules:
        vectors = vectors @ d.weight.T.astype(vectors.dtype)                   # [..., out]
        if d.bias is not None:
            vectors = vectors + d.bias.astype(vectors.dtype)
        vectors = DENSE_FUNCTIONS[d.activation](vectors)
    return vectors


DENSE_FUNCTIONS = {"Identity": lambda x: x, "Tanh": np.tanh, "ReLU": lambda x: np.maximum(x, 0),
                   "Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "GELU": reference.gelu,
                   "SiLU": lambda x: x / (1 + np.exp(-x))}


def combine_layers(stacked, combine, layer_axis):
    """Per-layer vectors stacked on `layer_axis` -> combined: None keeps the axis, mean/sum reduce it,
    concat joins the layers along the feature axis."""
    if combine is None:
        return stacked
    if combine == "mean":
        return stacked.mean(axis=layer_axis)
    if combine == "sum":
        return stacked.sum(axis=layer_axis)
    moved = np.moveaxis(stacked, layer_axis, -2)                              # [..., L, H]
    return moved.reshape(moved.shape[:-2] + (moved.shape[-2] * moved.shape[-1],))   # [..., L*H] (also for 0 texts)


def l2_normalize(x):
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, np.finfo(x.dtype).tiny)


def pool_words(token_vectors, word_ids, subword):
    """Token vectors [n, ...] and word_ids [n] (-1 for special tokens) -> word vectors [W, ...].

    subword: "first" / "last" piece of each word, "mean" of its pieces, or "first_last" (both, concatenated).
    """
    if subword not in SUBWORD_POOLINGS:
        raise InputError(f"subword must be one of {', '.join(SUBWORD_POOLINGS)}, found {subword!r}")
    words = np.unique(word_ids[word_ids >= 0])
    rows = []
    for w in words:
        pieces = token_vectors[word_ids == w]                                  # [pieces, ...]
        if subword == "first":
            rows.append(pieces[0])
        elif subword == "last":
            rows.append(pieces[-1])
        elif subword == "mean":
            rows.append(pieces.mean(axis=0))
        else:
            rows.append(np.concatenate([pieces[0], pieces[-1]], axis=-1))
    width = token_vectors.shape[1:-1] + (token_vectors.shape[-1] * (2 if subword == "first_last" else 1),)
    return np.stack(rows) if rows else np.zeros((0,) + width, dtype=token_vectors.dtype), words
