"""Numba CPU kernels: outputs first, no model knowledge. Each is tested against its reference.py function.

Every kernel is single-threaded and releases the GIL (nogil): the "cpu" ops in minibert.backends split
rows (or attention heads) into contiguous pieces and run the pieces on minibert's own threads
(minibert.backends.threads), with NumPy's BLAS held to one thread meanwhile, so one pool of threads does all the
work and no second pool spins on the cores the first one needs.

Rows are independent and each row is computed the same way whatever else is in the batch (attention
stops at a text's last real key), so a text's numbers do not depend on the batch it lands in. float64
matmuls go through `matmul_ordered`, whose summation order is fixed, so that holds bit for bit; float32
matmuls are BLAS, which may round a row by its place in the call (see `minibert/backends/cpu.py`).
Compiled lazily per dtype and
cached on disk. float32 kernels use the vectorisable `fast_exp` and `fast_erf` of kernels/cpu_math.py
instead of libm (which Numba cannot vectorise on this platform); float64 keeps libm's exp and erf.
"""

import math
import threading

import numpy as np

from .cpu_math import FAST, fast_erf, fast_exp, fmax, jit
from .reference import ACTIVATION_FUNCTIONS


# ---------------------------------------------------------------------------------------------------
# Row kernels: out[n] from x[n] for every row n of the 2-D arrays given (callers pass row slices).

@jit(fastmath=FAST)
def layer_norm(out, x, gamma, beta, eps):
    """out[n] = (x[n] - mean) / sqrt(var + eps) * gamma + beta, rows of x [N, C]; sums in float64."""
    N, C = x.shape
    for n in range(N):
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


@jit(fastmath=FAST)
def add_layer_norm(out, x, residual, gamma, beta, eps):
    """layer_norm of (x + residual) in one pass over memory; out may alias x."""
    N, C = x.shape
    for n in range(N):
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


# The bias + activation kernels work in place on the matmul's output: y[n] = act(y[n] + bias). (With a
# separate `out` that may alias `x`, LLVM's overlap check fails at run time and the scalar loop runs.)

@jit(fastmath=FAST)
def bias_add(y, bias):
    N, C = y.shape
    for n in range(N):
        for c in range(C):
            y[n, c] += bias[c]


@jit(fastmath=FAST)
def bias_gelu(y, bias):
    """Exact-erf GELU of (y + bias): 0.5 * z * (1 + erf(z / sqrt(2))); erf is fast_erf."""
    N, C = y.shape
    half, one, rsqrt2 = y.dtype.type(0.5), y.dtype.type(1.0), y.dtype.type(0.7071067811865476)
    for n in range(N):
        for c in range(C):
            z = y[n, c] + bias[c]
            y[n, c] = half * z * (one + fast_erf(z * rsqrt2))


@jit(fastmath=FAST)
def bias_gelu_tanh(y, bias):
    """tanh GELU of (y + bias) as z / (1 + exp(-2u)), u = sqrt(2/pi) (z + 0.044715 z^3), which equals
    0.5 z (1 + tanh(u)) exactly and needs only the vectorisable exp."""
    N, C = y.shape
    one, k0, k1 = y.dtype.type(1.0), y.dtype.type(-2 * 0.7978845608028654), y.dtype.type(0.044715)
    for n in range(N):
        for c in range(C):
            z = y[n, c] + bias[c]
            y[n, c] = z / (one + fast_exp(k0 * (z + k1 * z * z * z)))


@jit(fastmath=FAST)
def bias_relu(y, bias):
    N, C = y.shape
    zero = y.dtype.type(0.0)
    for n in range(N):
        for c in range(C):
            y[n, c] = max(y[n, c] + bias[c], zero)


@jit(fastmath=FAST)
def bias_silu(y, bias):
    N, C = y.shape
    one = y.dtype.type(1.0)
    for n in range(N):
        for c in range(C):
            z = y[n, c] + bias[c]
            y[n, c] = z / (one + fast_exp(-z))


@jit(fastmath=FAST)
def bias_tanh(y, bias):
    N, C = y.shape
    for n in range(N):
        for c in range(C):
            y[n, c] = math.tanh(y[n, c] + bias[c])


# The kernel for each function of reference.ACTIVATION_FUNCTIONS (None: bias only).
BIAS_ACTIVATIONS = {None: bias_add, "gelu": bias_gelu, "gelu_tanh": bias_gelu_tanh, "relu": bias_relu,
                    "silu": bias_silu, "tanh": bias_tanh}


def bias_kernel(activation):
    """The in-place bias + activation kernel for an activation name of the table (or None)."""
    return BIAS_ACTIVATIONS[None if activation is None else ACTIVATION_FUNCTIONS[activation]]


@jit()
def embed(out, input_ids, position_ids, token_type_ids, word, position, token_type):
    """out[n] = word[id] + position[pos] + token_type[type] for ids [N]; ids must already be range-checked."""
    N, E = out.shape
    for n in range(N):
        w, p, s = input_ids[n], position_ids[n], token_type_ids[n]
        for e in range(E):
            out[n, e] = word[w, e] + position[p, e] + token_type[s, e]


# ---------------------------------------------------------------------------------------------------
# Attention

PADDING_BELOW = -1e30    # an additive mask below this removes the key: its exp underflows to exactly 0


def key_lengths(mask_bias):
    """[B] int64: 1 + the index of each row's last key that is not padding (all T when every key is).

    Keys after it get probability exactly 0 in the reference, so the kernel can stop there: a text's
    arithmetic then does not depend on how much padding its batch adds.
    """
    B, T = mask_bias.shape
    real = mask_bias > PADDING_BELOW                                               # [B, T]
    last = T - np.argmax(real[:, ::-1], axis=1)                                    # [B]
    return np.where(real.any(axis=1), last, T).astype(np.int64)


@jit(fastmath=FAST | {"nnan"})
def softmax_scores(scores, position_bias, mask_bias, scale, inverse_sums):
    """In place: scores[g, h, i, j] <- exp(s - max_j s), s = scores[g, h, i, j] * scale
    (+ position_bias[g or 0, h, i, j]) + mask_bias[g, j], and inverse_sums[g, h, i] <- 1 / sum_j of those:
    the softmax is scores * inverse_sums, left for the caller to apply to probabilities @ values (a pass
    over the scores fewer).

    scores [G, NH, M, L] C-contiguous, position_bias None (compiled away) or [G or 1, NH, M, >= L] any
    strides, mask_bias [G, >= L], inverse_sums [G, NH, M]. The arithmetic order is the reference's (scale,
    then position bias, then mask, then exp(s - max)). The max is fmax, so that its loop vectorises.
    """
    G, NH, M, L = scores.shape
    zero = scale - scale
    for g in range(G):
        gb = 0 if position_bias is None or position_bias.shape[0] == 1 else g    # the bias row of text g
        for h in range(NH):
            for i in range(M):
                top = (scores[g, h, i, 0] * scale + (zero if position_bias is None else position_bias[gb, h, i, 0])
                       + mask_bias[g, 0])
                for j in range(L):
                    s = scores[g, h, i, j] * scale
                    if position_bias is not None:
                        s += position_bias[gb, h, i, j]
                    s += mask_bias[g, j]
                    scores[g, h, i, j] = s      # stored: fast-math must not regroup (s + mask) - max
                    top = fmax(top, s)
                total = zero
                for j in range(L):
                    e = fast_exp(scores[g, h, i, j] - top)
                    scores[g, h, i, j] = e
                    total += e
                inverse_sums[g, h, i] = 1 / total


@jit(fastmath=FAST)
def scale_rows(context, inverse_sums, first):
    """context [G, NH, M, HS] (any strides) rows times inverse_sums[g, h, first + i]."""
    G, NH, M, HS = context.shape
    for g in range(G):
        for h in range(NH):
            for i in range(M):
                inv = inverse_sums[g, h, first + i]
                for d in range(HS):
                    context[g, h, i, d] *= inv


SCORES_BUDGET = 1 << 18      # elements of scores [texts, heads, T, L] one BLAS step holds (1 MiB in float32)


def attention_units(lengths, num_heads, T):
    """Units of work (b0, b1, h0, h1): one text with all its heads, or, when a text's scores would pass
    SCORES_BUDGET, as many of its heads as fit. Returns (units, cost of each)."""
    units, cost = [], []
    for b, L in enumerate(lengths.tolist()):
        step = max(1, min(num_heads, SCORES_BUDGET // (T * L)))
        for h in range(0, num_heads, step):
            units.append((b, b + 1, h, min(h + step, num_heads)))
            cost.append((min(h + step, num_heads) - h) * T * (L + 16))
    return units, cost


_scratch = threading.local()


def scratch(size, dtype):
    """A per-thread reusable buffer of at least `size` elements."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.size < size or buffer.dtype != dtype:
        buffer = _scratch.buffer = np.empty(size, dtype=dtype)
    return buffer[:size]


def unit_groups(units, lengths, num_heads, T):
    """(b0, b1, h0, h1, L) for each block the attention kernels compute at once: a unit of attention_units, or
    consecutive whole-text units of equal key length L merged while their scores fit SCORES_BUDGET (one
    stacked matmul)."""
    i = 0
    while i < len(units):
        b0, b1, h0, h1 = units[i]
        L = int(lengths[b0])
        i += 1
        while (i < len(units) and h0 == 0 and h1 == num_heads and units[i][2] == 0 and units[i][3] == num_heads
               and int(lengths[units[i][0]]) == L and (units[i][1] - b0) * num_heads * T * L <= SCORES_BUDGET):
            b1 = units[i][1]
            i += 1
        yield b0, b1, h0, h1, L


def attention_units_run(context, probs, q, k, v, position_bias, mask_bias, lengths, num_heads, scale, keep_probs,
                        units):
    """Scaled dot-product attention for `units` (from attention_units) on the calling thread.

    q, k, v [B, T, H] (any strides, e.g. views into one fused QKV output); position_bias None or
    [B or 1, NH, T, T] added to the scaled scores; mask_bias [B, T]; lengths [B]
    from key_lengths: keys at and past lengths[b] are padding and are skipped (their probability is exactly
    0); scale a scalar of q's dtype; context [B, T, H]; probs [B, NH, T, T] written only when keep_probs.
    Every query row, padding included, is computed, as the reference does.

    Per block of heads: scores = q @ k^T and context = exp-scores @ v (float32: BLAS, which the caller holds
    to one thread, see minibert.backends.threads.BLAS; float64: matmul_ordered), softmax_scores in between, the division
    by the sum applied to the
    context rows. Consecutive whole texts of equal key length share one block (one stacked matmul). Real
    queries (before L) and padding queries go to separate matmuls, so a text's scores come from matmuls of
    the same shapes whatever padding its batch adds; in float64 each element's arithmetic is fixed outright,
    so a text's attention cannot depend on its batch.
    """
    B, T, H = q.shape
    matmul = matmul_stacked_ordered if q.dtype == np.float64 else np.matmul    # float64: see matmul_ordered
    heads = (B, T, num_heads, H // num_heads)
    q4, v4, context4 = (a.reshape(heads).transpose(0, 2, 1, 3) for a in (q, v, context))   # [B, NH, T, HS]
    k4 = k.reshape(heads).transpose(0, 2, 3, 1)                                              # [B, NH, HS, T]
    for b0, b1, h0, h1, L in unit_groups(units, lengths, num_heads, T):
        G, NH = b1 - b0, h1 - h0
        buffer = scratch(G * NH * (T * L + T), q.dtype)
        scores, inverse_sums = buffer[:G * NH * T * L].reshape(G, NH, T, L), buffer[G * NH * T * L:].reshape(G, NH, T)
        rows = ((0, L), (L, T)) if L < T else ((0, T),)
        for lo, hi in rows:
            matmul(q4[b0:b1, h0:h1, lo:hi], k4[b0:b1, h0:h1, :, :L], out=scores[:, :, lo:hi])
        texts = slice(b0, b1) if position_bias is not None and len(position_bias) > 1 else slice(0, 1)
        bias = None if position_bias is None else position_bias[texts, h0:h1, :, :L]      # [G or 1, NH, T, L]
        softmax_scores(scores, bias, mask_bias[b0:b1], scale, inverse_sums)
        if keep_probs:
            np.multiply(scores, inverse_sums[..., None], out=probs[b0:b1, h0:h1, :, :L])
            probs[b0:b1, h0:h1, :, L:] = 0
        for lo, hi in rows:
            out = context4[b0:b1, h0:h1, lo:hi]
            matmul(scores[:, :, lo:hi], v4[b0:b1, h0:h1, :L], out=out)
            scale_rows(out, inverse_sums, lo)


def equal_length_runs(offsets):
    """(first row, texts, n) for each maximal run of consecutive texts of one length n in texts laid end to
    end (offsets [B + 1]): rows first:first + texts * n are a [texts, n, H] batch without any padding."""
    lengths = np.diff(offsets)
    starts = np.flatnonzero(np.diff(lengths, prepend=-1))                     # first text of each run
    counts = np.diff(starts, append=len(lengths))
    return [(int(offsets[b]), int(c), int(lengths[b])) for b, c in zip(starts, counts)]


def packed_attention_work(offsets, num_heads):
    """The packed attention's units: (run, unit) pairs, a run from equal_length_runs (empty texts dropped)
    and a unit of attention_units over its texts; returns (runs, work, cost of each)."""
    runs = [run for run in equal_length_runs(offsets) if run[2] > 0]
    work, cost = [], []
    for r, (_, texts, n) in enumerate(runs):
        units, unit_cost = attention_units(np.full(texts, n, dtype=np.int64), num_heads, n)
        work += [(r, unit) for unit in units]
        cost += unit_cost
    return runs, work, cost


def packed_attention_run(context, q, k, v, position_bias, num_heads, scale, runs, work):
    """Attention of texts laid end to end (q, k, v, context [N, H]) for `work` (from packed_attention_work) on
    the calling thread. Each run of equal-length texts is a [texts, n, H] view with no key masked, handed to
    attention_units_run: a text's arithmetic is the padded path's for its real queries and keys, the same
    shapes of matmul, so float64 gives the padded path's bits."""
    H = q.shape[1]
    i = 0
    while i < len(work):
        r = work[i][0]
        units = []
        while i < len(work) and work[i][0] == r:
            units.append(work[i][1])
            i += 1
        first, texts, n = runs[r]
        q3, k3, v3, context3 = (a[first:first + texts * n].reshape(texts, n, H) for a in (q, k, v, context))
        bias = None if position_bias is None else position_bias[:, :, :n, :n]     # [1, NH, n, n]
        lengths = np.full(texts, n, dtype=np.int64)
        no_mask = np.zeros((texts, n), dtype=q.dtype)
        attention_units_run(context3, None, q3, k3, v3, bias, no_mask, lengths, num_heads, scale, False, units)


# ---------------------------------------------------------------------------------------------------
# float64 matmul in a fixed summation order, the basis of the float64 batch-invariance promise.

ORDERED_ROWS, ORDERED_COLUMNS = 8, 128      # block of outputs accumulated together (8 x 128 doubles: 8 KiB)


@jit()
def matmul_ordered(out, x, w):
    """out[n, c] = sum over k = 0, 1, ... K-1 of x[n, k] * w[k, c], in that order, each product rounded then
    added (no fused multiply-add, no reassociation: compiled without fast-math).

    x [N, K], w [K, C], out [N, C], any strides. Every output element is computed by the same sequence of
    IEEE operations whatever N is, where its row sits among the rows, or which CPU runs it (the loops
    vectorise across columns only), so a row's bits cannot depend on its batch. It equals
    `reference.matmul_in_k_order` bit for bit. BLAS makes no such promise: its kernels round a row by where
    it lands in their tiles, and differently per CPU kernel (Haswell, SkylakeX, ...).
    """
    N, K = x.shape
    C = w.shape[1]
    acc = np.empty((ORDERED_ROWS, ORDERED_COLUMNS), dtype=out.dtype)
    for c0 in range(0, C, ORDERED_COLUMNS):
        width = min(ORDERED_COLUMNS, C - c0)
        for n0 in range(0, N, ORDERED_ROWS):
            rows = min(ORDERED_ROWS, N - n0)
            acc[:] = 0.0
            for k in range(K):
                w_row = w[k, c0:c0 + width]
                for r in range(rows):
                    xv = x[n0 + r, k]
                    a = acc[r]
                    for c in range(width):
                        a[c] += xv * w_row[c]
            for r in range(rows):
                out[n0 + r, c0:c0 + width] = acc[r, :width]


def matmul_stacked_ordered(a, b, out):
    """np.matmul(a, b, out=out) for [..., M, K] @ [..., K, L] stacks, each matrix by matmul_ordered."""
    for index in np.ndindex(*out.shape[:-2]):
        matmul_ordered(out[index], a[index], b[index])


def warm_up(dtype=np.float32, activations=("gelu", "tanh")):
    """Compile, or load from Numba's cache, the kernels a forward pass in `dtype` calls, by calling each
    once on tiny arrays of the same types and layouts (for benchmarks and servers that want the first
    request fast)."""
    one = np.ones((2, 4), dtype=dtype)
    vector, ids = one[0], np.zeros(2, dtype=np.int64)
    embed(np.empty_like(one), ids, ids, ids, one, one, one)
    layer_norm(np.empty_like(one), one, vector, vector, 1e-12)
    add_layer_norm(np.empty_like(one), one, one, vector, vector, 1e-12)
    bias_add(one.copy(), vector)
    for activation in activations:
        bias_kernel(activation)(one.copy(), vector)
    scores = np.ones((1, 1, 2, 2), dtype=dtype)
    softmax_scores(scores, None, one[:1], dtype(1), np.empty((1, 1, 2), dtype=dtype))
    strided = np.ones((1, 2, 1, 8), dtype=dtype).transpose(0, 2, 1, 3)[..., :4]      # like a context view
    scale_rows(strided, np.ones((1, 1, 2), dtype=dtype), 0)
