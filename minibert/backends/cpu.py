"""The "cpu" backend: Numba kernels (minibert.kernels.cpu), each op cut into row pieces that run on minibert's
own threads.

Threads: numba.get_num_threads() of them (NUMBA_NUM_THREADS, or numba.set_num_threads at run time);
small ops run on the calling thread alone. While an op runs, NumPy's OpenBLAS is held to one thread so
that each piece's matmul runs on the thread that owns the piece, and no idle BLAS thread spins on a
core the next kernel needs; the process's previous OpenBLAS thread count is put back when the op
returns (a NumPy matmul another thread runs at that very moment gets one thread too). Other BLAS
libraries keep their own threading and only the work after the matmul is split.

Batch invariance: the row kernels (embeddings, bias + activation, LayerNorm) and attention (which stops
at each text's last real key and gives real and padding queries separate matmuls) compute a text the
same way whatever batch it is in. The matmuls are where batches can leak in: BLAS kernels round a row by
where it lands among the call's rows (they work on tiles of rows, with other code for a leftover partial
tile or a single row), and each CPU kernel (Haswell, SkylakeX, ...) does it differently. So float64, the
dtype of the bit-identity promise, never uses BLAS: its matmuls run `kernels.cpu.matmul_ordered`, which
sums every output element in one fixed order on any CPU (slower than BLAS: float64 is the parity path).
float32 keeps BLAS for speed, and a text's numbers move by a few float32 ulp with the batch it lands
in: up to ~3.6e-6 absolute on all-MiniLM-L6-v2's hidden states (whose largest activations are near 10),
~1e-6 on mean-pooled sentence vectors (tests/test_model.py measures and bounds both).
"""

import math

import numpy as np

from . import threads
from ..kernels import cpu as kernels
from .reference_backend import prepare, relative_position_bias, synchronize, to_host   # the same on the host

__all__ = ["embed", "linear", "layer_norm", "add_layer_norm", "attention", "packed_attention",
           "relative_position_bias", "prepare", "to_host", "synchronize"]

SPLIT_ABOVE = 1 << 16      # elements (multiply-adds / 32 for matmuls) below which one thread is quicker


def pieces(n, work, cost=None, per_thread=1):
    """Cut n rows (or units) into contiguous pieces: one for small work, else `per_thread` per thread
    (the threads take them as they go, which evens out a thread slowed by other programs)."""
    count = threads.thread_count()
    return threads.split(n, 1 if work <= SPLIT_ABOVE or count == 1 else count * per_thread, cost)


def rows(x):
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


def embed(input_ids, position_ids, token_type_ids, word, position, token_type):
    B, T = input_ids.shape
    E = word.shape[1]
    out = np.empty((B * T, E), dtype=word.dtype)
    ids, positions, types = (np.ascontiguousarray(a, dtype=np.int64).reshape(-1)
                             for a in (input_ids, position_ids, token_type_ids))

    def piece(lo, hi):
        kernels.embed(out[lo:hi], ids[lo:hi], positions[lo:hi], types[lo:hi], word, position, token_type)
    threads.WORKERS.run(piece, pieces(B * T, B * T * E))
    return out.reshape(B, T, E)


def linear(x, w, b, activation=None):
    x2 = rows(x)                                                       # [N, C_in]
    N, K = x2.shape
    y = np.empty((N, w.shape[1]), dtype=np.result_type(x2, w))         # [N, C_out]
    epilogue = kernels.bias_kernel(activation)
    cut = pieces(N, N * K * w.shape[1] // 32, per_thread=2 if N >= 2048 else 1)   # small pieces: slow matmuls
    with threads.BLAS:
        if y.dtype == np.float64:
            def piece(lo, hi):                  # fixed summation order: a row's bits ignore its batch
                kernels.matmul_ordered(y[lo:hi], x2[lo:hi], w)
                epilogue(y[lo:hi], b)
        elif threads.BLAS.available or len(cut) == 1:
            def piece(lo, hi):                  # matmul, then bias + activation while the rows are in cache
                np.matmul(x2[lo:hi], w, out=y[lo:hi])
                epilogue(y[lo:hi], b)
        else:                                   # a BLAS we cannot hold to one thread: let it thread itself
            np.matmul(x2, w, out=y)

            def piece(lo, hi):
                epilogue(y[lo:hi], b)
        threads.WORKERS.run(piece, cut)
    return y.reshape(x.shape[:-1] + (w.shape[1],))


def layer_norm(x, gamma, beta, eps, residual=None):
    C = x.shape[-1]
    out = np.empty(x.shape, dtype=x.dtype)
    o2, x2 = out.reshape(-1, C), rows(x)
    r2 = None if residual is None else rows(residual)

    def piece(lo, hi):
        if r2 is None:
            kernels.layer_norm(o2[lo:hi], x2[lo:hi], gamma, beta, eps)
        else:
            kernels.add_layer_norm(o2[lo:hi], x2[lo:hi], r2[lo:hi], gamma, beta, eps)
    threads.WORKERS.run(piece, pieces(len(x2), x2.size))
    return out


def attention(q, k, v, mask_bias, num_heads, return_probs=False, position_bias=None):
    B, T, H = q.shape
    context = np.empty((B, T, H), dtype=q.dtype)
    probs = np.empty((B, num_heads, T, T) if return_probs else (1, 1, 1, 1), dtype=q.dtype)
    scale = q.dtype.type(1.0 / math.sqrt(H // num_heads))
    if B * T == 0:
        return context, (probs if return_probs else None)
    mask_bias = np.ascontiguousarray(mask_bias, dtype=q.dtype)
    if position_bias is not None:
        position_bias = np.asarray(position_bias, dtype=q.dtype)                  # [B or 1, NH, T, T]
    lengths = kernels.key_lengths(mask_bias)                         # [B] keys up to each text's last real one
    units, cost = kernels.attention_units(lengths, num_heads, T)     # whole texts, or heads of long ones

    def piece(first, last):
        kernels.attention_units_run(context, probs, q, k, v, position_bias, mask_bias, lengths, num_heads, scale,
                                    return_probs, units[first:last])
    with threads.BLAS:
        threads.WORKERS.run(piece, pieces(len(units), sum(cost) * (H // num_heads) // 16, cost, per_thread=2))
    return context, (probs if return_probs else None)


def packed_attention(q, k, v, offsets, num_heads, position_bias=None):
    N, H = q.shape
    context = np.empty((N, H), dtype=q.dtype)
    if N == 0:
        return context
    scale = q.dtype.type(1.0 / math.sqrt(H // num_heads))
    if position_bias is not None:
        position_bias = np.asarray(position_bias, dtype=q.dtype)                  # [1, NH, >= n, >= n]
    runs, work, cost = kernels.packed_attention_work(np.asarray(offsets, dtype=np.int64), num_heads)

    def piece(first, last):
        kernels.packed_attention_run(context, q, k, v, position_bias, num_heads, scale, runs, work[first:last])
    with threads.BLAS:
        threads.WORKERS.run(piece, pieces(len(work), sum(cost) * (H // num_heads) // 16, cost, per_thread=2))
    return context


def add_layer_norm(x, residual, gamma, beta, eps):
    return layer_norm(x, gamma, beta, eps, residual=residual)
