"""Similarity of sentence vectors as sentence-transformers scores them: `model.similarity(a, b)` for every pair
of rows, `model.similarity_pairwise(a, b)` for row i with row i, by the model's `similarity_fn_name`
(config_sentence_transformers.json; cosine when it names none).

    cosine     rows scaled to unit length (a norm below 1e-12 counts as 1e-12, as torch's normalize), then dot
    dot        a @ b.T
    euclidean  minus the Euclidean distance
    manhattan  minus the sum of absolute differences

Distances are summed from the differences themselves, not from |a|^2 + |b|^2 - 2 a.b as torch.cdist does for
larger inputs, whose cancellation loses digits on near neighbours.

Axes: N rows of a, M rows of b, D dimensions.
"""

import json
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelFileError

NAMES = ("cosine", "dot", "euclidean", "manhattan")
NORM_FLOOR = 1e-12          # torch.nn.functional.normalize's eps
CHUNK_ELEMENTS = 1 << 22    # distances: differences held at once (32 MiB in float64)


def check_name(name):
    name = getattr(name, "value", name)        # sentence-transformers' SimilarityFunction enum, if given one
    if name not in NAMES:
        raise InputError(f"similarity_fn_name must be one of {', '.join(NAMES)}, found {name!r}")
    return name


def saved_settings(model_dir) -> dict:
    """config_sentence_transformers.json's similarity_fn_name and truncate_dim ({} without the file); names
    this module cannot score (a multi-vector "maxsim") are left out, as sentence-transformers leaves them."""
    path = Path(model_dir) / "config_sentence_transformers.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not readable JSON ({e})") from None
    settings = {}
    if raw.get("similarity_fn_name") in NAMES:
        settings["similarity_fn_name"] = raw["similarity_fn_name"]
    if raw.get("truncate_dim") is not None:
        settings["truncate_dim"] = raw["truncate_dim"]
    return settings


def similarity(a, b, name="cosine"):
    """[N, D] and [M, D] (a single [D] counts as one row) -> scores [N, M]."""
    a, b = as_rows(a, "a"), as_rows(b, "b")
    check_width(a, b)
    name = check_name(name)
    if name == "cosine":
        return unit_rows(a) @ unit_rows(b).T                                    # [N, M]
    if name == "dot":
        return a @ b.T                                                          # [N, M]
    out = np.empty((len(a), len(b)), dtype=np.result_type(a, b))                # [N, M]
    rows = max(1, CHUNK_ELEMENTS // max(1, b.size))          # rows of a per block: [rows, M, D] stays bounded
    for start in range(0, len(a), rows):
        difference = a[start:start + rows, None, :] - b[None, :, :]             # [rows, M, D]
        out[start:start + rows] = -(np.abs(difference).sum(axis=-1) if name == "manhattan"
                                    else np.sqrt((difference ** 2).sum(axis=-1)))
    return out


def similarity_pairwise(a, b, name="cosine"):
    """[N, D] and [N, D] -> scores [N], row i of a with row i of b."""
    a, b = as_rows(a, "a"), as_rows(b, "b")
    check_width(a, b)
    if len(a) != len(b):
        raise InputError(f"similarity_pairwise pairs row i with row i: a has {len(a)} rows, b {len(b)}")
    name = check_name(name)
    if name == "cosine":
        return (unit_rows(a) * unit_rows(b)).sum(axis=-1)                       # [N]
    if name == "dot":
        return (a * b).sum(axis=-1)
    if name == "manhattan":
        return -np.abs(a - b).sum(axis=-1)
    return -np.sqrt(((a - b) ** 2).sum(axis=-1))


def unit_rows(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_FLOOR)


def as_rows(x, what):
    """A float matrix [N, D]: one vector [D] is one row; integer (quantized) and float16 vectors are scored in
    float32."""
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise InputError(f"similarity: {what} cannot be read as an array ({e})") from None
    if x.dtype.kind in "iub":
        x = x.astype(np.float32)
    elif x.dtype.kind != "f":
        raise InputError(f"similarity: {what} must hold numbers, found dtype {x.dtype}")
    elif x.dtype.itemsize < 4:
        x = x.astype(np.float32)            # float16 storage: scored in float32, as sentence-transformers does
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"similarity: {what} must be vectors [N, D] or one vector [D], found shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():                        # a NaN/Inf row scores NaN against every row, without a word
        raise InputError(f"similarity: {what} holds {int(bad.sum())} non-finite value(s) (NaN/Inf), first in row "
                         f"{int(np.argwhere(bad)[0][0])}")
    return x


def check_width(a, b):
    if a.shape[1] != b.shape[1]:
        raise InputError(f"similarity: a has {a.shape[1]} dimensions, b {b.shape[1]}")
