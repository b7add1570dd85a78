"""Numba CPU kernels: outputs first, no model knowledge. Each mirrors a function in reference.py.

Rows are independent and each row is computed the same way whatever else is in the batch, so a
text's numbers do not depend on the batch it lands in. Compiled lazily per dtype and cached on disk.
"""

import math
import warnings

import numba
import numpy as np


def jit(**options):
    """njit with an on-disk cache; when no cache directory is writable, compile in memory and say so."""
    def decorate(function):
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError as e:  # numba: "cannot cache function ...: no locator available"
            warnings.warn(f"minibert: Numba cache unavailable ({e}); kernels will be recompiled in every "
                          "process. Set NUMBA_CACHE_DIR to a writable directory to fix this.", stacklevel=2)
            return numba.njit(cache=False, **options)(function)
    return decorate


@jit(parallel=True)
def layer_norm(out, x, gamma, beta, eps):
    """out[n] = (x[n] - mean) / sqrt(var + eps) * gamma + beta, rows of x [N, C]."""
    N, C = x.shape
    for n in numba.prange(N):
        mean = 0.0
        for c in range(C):
            mean += x[n, c]
        mean /= C
        var = 0.0
        for c in range(C):
            d = x[n, c] - mean
            var += d * d
        inv = 1.0 / math.sqrt(var / C + eps)
        for c in range(C):
            out[n, c] = (x[n, c] - mean) * inv * gamma[c] + beta[c]


@jit(parallel=True)
def add_layer_norm(out, x, residual, gamma, beta, eps):
    """layer_norm of (x + residual) in one pass over memory; out may alias x."""
    N, C = x.shape
    for n in numba.prange(N):
        mean = 0.0
        for c in range(C):
            s = x[n, c] + residual[n, c]
            out[n, c] = s
            mean += s
        mean /= C
        var = 0.0
        for c in range(C):
            d = out[n, c] - mean
            var += d * d
        inv = 1.0 / math.sqrt(var / C + eps)
        for c in range(C):
            out[n, c] = (out[n, c] - mean) * inv * gamma[c] + beta[c]


@jit(parallel=True)
def bias_add(out, x, bias):
    N, C = x.shape
    for n in numba.prange(N):
        for c in range(C):
            out[n, c] = x[n, c] + bias[c]


def erf_table(width=0.5, pieces=8, degree=8):
    """Coefficients of erf on [0, 4) as `pieces` polynomials in the offset from each piece's left edge.

    Fitted once at import on Chebyshev nodes against libm's erf; evaluated in float32 the result is
    within 1e-7 of the true erf (about one float32 ulp near 1), and needs no libm call, so it vectorises.
    Beyond 4, erf is 1 to float32 precision.
    """
    table = np.zeros((pieces, degree + 1))
    nodes = (np.cos(np.pi * (np.arange(200) + 0.5) / 200) + 1) * width / 2       # [200] in [0, width]
    for p in range(pieces):
        exact = np.array([math.erf(p * width + t) for t in nodes])
        table[p] = np.polynomial.polynomial.polyfit(nodes, exact, degree)
    return table.astype(np.float32)


ERF_TABLE = erf_table()


@numba.njit(inline="always", cache=True)
def erf_piecewise(x, table):
    """erf(x) from erf_table (float32): pick the piece, Horner in the offset, restore the sign."""
    a = min(abs(x), np.float32(3.999))
    piece = int(a * np.float32(2.0))
    t = a - np.float32(piece) * np.float32(0.5)
    degree = table.shape[1] - 1
    y = table[piece, degree]
    for d in range(degree - 1, -1, -1):
        y = y * t + table[piece, d]
    y = min(y, np.float32(1.0))
    return y if x >= 0 else -y


@jit(parallel=True)
def bias_gelu(out, x, bias):
    """Exact GELU of (x + bias): 0.5 * y * (1 + erf(y / sqrt(2))), libm erf (float64)."""
    N, C = x.shape
    for n in numba.prange(N):
        for c in range(C):
            y = x[n, c] + bias[c]
            out[n, c] = 0.5 * y * (1.0 + math.erf(y * 0.7071067811865476))


@jit(parallel=True, fastmath=True)
def bias_gelu_fast(out, x, bias, erf_coefficients):
    """GELU of (x + bias) for float32 with erf_piecewise: the same exact-erf formula, vectorised."""
    N, C = x.shape
    for n in numba.prange(N):
        for c in range(C):
            y = x[n, c] + bias[c]
            out[n, c] = np.float32(0.5) * y * (np.float32(1.0) + erf_piecewise(y * np.float32(0.70710677), erf_coefficients))


@jit(parallel=True)
def bias_gelu_tanh(out, x, bias):
    N, C = x.shape
    for n in numba.prange(N):
        for c in range(C):
            y = x[n, c] + bias[c]
            out[n, c] = 0.5 * y * (1.0 + math.tanh(0.7978845608028654 * (y + 0.044715 * y * y * y)))


@jit(parallel=True)
def bias_relu(out, x, bias):
    N, C = x.shape
    for n in numba.prange(N):
        for c in range(C):
            out[n, c] = max(x[n, c] + bias[c], 0.0)


@jit(parallel=True)
def bias_silu(out, x, bias):
    N, C = x.shape
    for n in numba.prange(N):
        for c in range(C):
            y = x[n, c] + bias[c]
            out[n, c] = y / (1.0 + math.exp(-y))


@jit(parallel=True)
def bias_tanh(out, x, bias):
    N, C = x.shape
    for n in numba.prange(N):
        for c in range(C):
            out[n, c] = math.tanh(x[n, c] + bias[c])


@jit(parallel=True)
def embed(out, input_ids, position_ids, token_type_ids, word, position, token_type):
    """out[b, t] = word[id] + position[pos] + token_type[type]; ids must already be range-checked."""
    B, T = input_ids.shape
    E = word.shape[1]
    for bt in numba.prange(B * T):
        b, t = bt // T, bt % T
        w, p, s = input_ids[b, t], position_ids[b, t], token_type_ids[b, t]
        for e in range(E):
            out[b, t, e] = word[w, e] + position[p, e] + token_type[s, e]


@jit(parallel=True, fastmath=True)
def attention(context, probs, q, k, v, mask_bias, num_heads, scale, keep_probs):
    """Scaled dot-product attention per (batch, head): scores, additive mask, softmax, context.

    q, k, v [B, T, H] (any strides); mask_bias [B, T]; scale a scalar of q's dtype; context [B, T, H];
    probs [B, NH, T, T] written only when keep_probs (otherwise pass any array).
    Every accumulator stays in q's dtype so the inner loops vectorise.
    """
    B, T, H = q.shape
    HS = H // num_heads
    for bh in numba.prange(B * num_heads):
        b, h = bh // num_heads, bh % num_heads
        lo = h * HS
        qh = np.empty((T, HS), dtype=q.dtype)
        kt = np.empty((HS, T), dtype=q.dtype)       # keys transposed: the score loop runs over contiguous keys
        vh = np.empty((T, HS), dtype=q.dtype)
        for t in range(T):
            for d in range(HS):
                qh[t, d] = q[b, t, lo + d] * scale
                kt[d, t] = k[b, t, lo + d]
                vh[t, d] = v[b, t, lo + d]
        scores = np.empty(T, dtype=q.dtype)
        acc = np.empty(HS, dtype=q.dtype)
        for i in range(T):
            for j in range(T):
                scores[j] = mask_bias[b, j]
            for d in range(HS):
                qd = qh[i, d]
                for j in range(T):
                    scores[j] += qd * kt[d, j]
            top = scores[0]
            for j in range(1, T):
                top = max(top, scores[j])
            total = scores[0] - scores[0]
            for j in range(T):
                scores[j] = np.exp(scores[j] - top)
                total += scores[j]
            inv = 1 / total
            for j in range(T):
                scores[j] *= inv
            if keep_probs:
                for j in range(T):
                    probs[b, h, i, j] = scores[j]
            acc[:] = 0
            for j in range(T):
                p = scores[j]
                for d in range(HS):
                    acc[d] += p * vh[j, d]
            for d in range(HS):
                context[b, i, lo + d] = acc[d]
