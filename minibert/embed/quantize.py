"""Quantized sentence vectors as sentence-transformers makes them (its `quantize_embeddings`).

    int8 / uint8     each dimension cut into 255 equal steps between a start and an end (`ranges`, else the
                     min and max of `calibration_embeddings`, else of the vectors themselves), a value's step
                     floored and clipped to 0..255; int8 shifts the result by -128.
    binary / ubinary one bit per dimension (value > 0), packed 8 to a byte, most significant bit first; binary
                     shifts each byte by -128 into int8, as sentence-transformers does.
    float32          a cast.

The arithmetic is NumPy's, step by step as sentence-transformers 6.3 writes it (ranges in float32, the
vectors in their own dtype), so vectors quantize to the same integers (packed bits are equal bit for bit).

Axes: N vectors, D dimensions.
"""

import numpy as np

from ..errors import InputError, warn_caller

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def check_precision(precision):
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, found {precision!r}")
    return precision


def quantize_embeddings(embeddings, precision, *, ranges=None, calibration_embeddings=None):
    """embeddings [N, D] (float) -> the same vectors in `precision`: float32 [N, D], int8/uint8 [N, D],
    binary/ubinary [N, ceil(D / 8)]. ranges [2, D]: per dimension the start and end of the int8/uint8 scale;
    calibration_embeddings [M, D]: vectors whose per-dimension min and max give the ranges instead."""
    check_precision(precision)
    embeddings = as_matrix(embeddings, "embeddings")
    N, D = embeddings.shape
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(embeddings > 0, axis=-1).reshape(N, (D + 7) // 8)    # [N, ceil(D/8)] uint8
        return packed if precision == "ubinary" else (packed - 128).astype(np.int8)
    if N == 0:
        return np.zeros((0, D), dtype=np.int8 if precision == "int8" else np.uint8)
    finite(embeddings, "embeddings")
    ranges = int8_ranges(embeddings, ranges, calibration_embeddings)        # [2, D]
    ranges = ranges.astype(np.float32, copy=False)     # as sentence-transformers 6.3: steps in float32
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)     # a dimension that never varies: every value to step 0
    steps_taken = np.clip(np.floor((embeddings - starts) / steps), 0, 255)  # [N, D]
    if precision == "uint8":
        return steps_taken.astype(np.uint8)
    return (steps_taken - 128).astype(np.int8)


def int8_ranges(embeddings, ranges, calibration_embeddings):
    """[2, D] starts and ends: `ranges` as given, else the calibration vectors' min and max, else the vectors'."""
    D = embeddings.shape[1]
    if ranges is not None:
        if calibration_embeddings is not None:
            raise InputError("pass ranges= or calibration_embeddings=, not both: ranges are what calibration gives")
        ranges = np.asarray(ranges)
        if ranges.shape != (2, D) or ranges.dtype.kind != "f":
            raise InputError(f"ranges must be a float array [2, {D}] (per dimension the start and the end), "
                             f"found {ranges.dtype} {ranges.shape}")
        return finite(ranges, "ranges")
    source = embeddings if calibration_embeddings is None else as_matrix(calibration_embeddings,
                                                                          "calibration_embeddings")
    if source.shape[1] != D:
        raise InputError(f"calibration_embeddings have {source.shape[1]} dimensions, the vectors {D}")
    if len(source) < 2:               # one calibration vector too: each dimension's start is its end
        given = "calibration_embeddings= with more vectors" if calibration_embeddings is not None else \
            "calibration_embeddings="
        raise InputError(f"int8/uint8 ranges cannot come from {len(source)} vector(s) (every value would be its "
                         f"own start): pass {given} (vectors like those you will quantize) or ranges=")
    if calibration_embeddings is not None:
        finite(source, "calibration_embeddings")
    if calibration_embeddings is None and len(source) < 100:
        warn_caller(f"minibert: int8/uint8 ranges taken from the {len(source)} vectors being quantized; ranges from "
                    "more vectors (calibration_embeddings= or ranges=) give steps that hold across batches")
    return np.vstack((np.min(source, axis=0), np.max(source, axis=0)))


def finite(array, what):
    """NaN or Inf in a range makes every step NaN, which casts to 0 (or anything) without a word."""
    bad = ~np.isfinite(array)
    if bad.any():
        raise InputError(f"{what} hold {int(bad.sum())} non-finite value(s) (NaN/Inf), first at index "
                         f"{tuple(int(i) for i in np.argwhere(bad)[0])}: int8/uint8 ranges need finite numbers")
    return array


def as_matrix(array, what):
    """A float array [N, D] (one vector [D] becomes [1, D]); integers (vectors already quantized) refused."""
    try:
        array = np.asarray(array)
    except (ValueError, TypeError) as e:
        raise InputError(f"{what} cannot be read as an array ({e})") from None
    if array.dtype.kind != "f":
        raise InputError(f"{what} must be float vectors to quantize, found dtype {array.dtype}"
                         + (" (already quantized?)" if array.dtype.kind in "iu" else ""))
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise InputError(f"{what} must be [N, D] vectors, found shape {array.shape}")
    return array


def quantize_encoded(vectors, precision, calibration_embeddings):
    """encode(..., precision=, calibration_embeddings=): the sentence vectors [N, D] quantized (as they are
    without precision)."""
    if precision is None:
        if calibration_embeddings is not None:
            raise InputError("calibration_embeddings= applies to precision='int8' or 'uint8'")
        return vectors
    check_precision(precision)
    if calibration_embeddings is not None and precision not in ("int8", "uint8"):
        raise InputError(f"calibration_embeddings= applies to precision='int8' or 'uint8', not {precision!r}")
    if isinstance(vectors, list) or vectors.ndim != 2:
        raise InputError("precision= quantizes sentence vectors [N, D]; not token vectors (pooling='none') or a "
                         "layer axis (layers=[...] without combine=)")
    return quantize_embeddings(vectors, precision, calibration_embeddings=calibration_embeddings)
