"""The numba.cuda attention kernel: scaled dot-product attention with an online softmax, one thread per query.

Keys and values stream through shared memory a tile at a time with a running maximum and sum, so the [T, T]
score matrix is never stored; probabilities, when asked for, are recomputed in a second pass. Compiled lazily
per dtype, head size, key-tile length and with or without a position bias (`attention_kernel`); its launcher,
`attention`, is with the others in kernels/cuda.py, and its tests against the reference attention in
tests/test_cuda_sim.py. Same rules as cuda.py: the same operations in the same order whatever the batch
holds, under 48 KiB of static shared memory, shared-array shapes literal constants.
"""

import functools
import math

import numba
import numpy as np
from numba import cuda

QUERIES_PER_BLOCK = 64     # attention: one thread per query, this many queries per block at most
ATTENTION_SHARED_KV = 24 * 1024   # bytes of shared memory for one key tile plus one value tile


def keys_per_tile(dtype, head_size):
    """Keys per attention tile: 32, or fewer so a key tile and a value tile fit ATTENTION_SHARED_KV."""
    fit = ATTENTION_SHARED_KV // (2 * head_size * np.dtype(dtype).itemsize)
    keys = 32
    while keys > 1 and keys > fit:
        keys //= 2
    return keys


@functools.lru_cache(maxsize=None)
def attention_kernel(dtype, head_size, keys, biased=False):
    """The attention kernel for one dtype, head size and key-tile length, with or without a position bias
    (all compile-time constants: without one, the bias argument is never read)."""
    dtype = np.dtype(dtype)
    f = dtype.type
    ftype = numba.from_dtype(dtype)
    HS, KT, QB = head_size, keys, QUERIES_PER_BLOCK
    KT_PADDED = KT + 1          # shared-memory shapes must be compile-time constants
    zero, one, neg_inf = f(0.0), f(1.0), f(-np.inf)

    @cuda.jit
    def attention(context, probs, q, k, v, position_bias, mask_bias, scale, keep_probs):
        """Scaled dot-product attention for a tile of queries of one (batch, head), online softmax.

        Grid (ceil(T / blockDim.x), NH, B); one thread per query, blockDim.x <= QUERIES_PER_BLOCK.
        q, k, v [B, T, H] (any strides, e.g. column slices of the fused QKV projection), head h at
        columns h*HS:(h+1)*HS; position_bias [B or 1, NH, T, T] added to the scaled scores when the
        kernel is `biased`; mask_bias [B, T] added to every query's scores for each key; context
        [B, T, H]. Keys and values stream through shared memory KT at a time with a running maximum
        and sum (online softmax), so the [T, T] score matrix is never stored. When keep_probs, a second
        pass recomputes each tile's scores, normalises them with the final maximum and sum, and writes
        probs [B, NH, T, T] through shared memory so that the writes run along keys.
        """
        sk = cuda.shared.array((KT, HS), ftype)
        sv = cuda.shared.array((KT, HS), ftype)
        sm = cuda.shared.array(KT, ftype)
        sp = cuda.shared.array((QB, KT_PADDED), ftype)
        qi = cuda.local.array(HS, ftype)
        acc = cuda.local.array(HS, ftype)
        s = cuda.local.array(KT, ftype)
        b, h = cuda.blockIdx.z, cuda.blockIdx.y
        t, nt = cuda.threadIdx.x, cuda.blockDim.x
        q0 = cuda.blockIdx.x * nt
        i = q0 + t
        T = q.shape[1]
        lo = h * HS
        active = i < T
        g = b if position_bias.shape[0] > 1 else 0      # the bias row of text b (one row: shared)
        for d in range(HS):
            qi[d] = q[b, i, lo + d] * scale if active else zero
            acc[d] = zero
        m, total = neg_inf, zero
        for k0 in range(0, T, KT):
            n = KT if T - k0 > KT else T - k0     # (builtin min/max do not type in Numba 0.68's CUDA target)
            for e in range(t, n * HS, nt):
                j, d = e // HS, e % HS
                sk[j, d] = k[b, k0 + j, lo + d]
                sv[j, d] = v[b, k0 + j, lo + d]
            for j in range(t, n, nt):
                sm[j] = mask_bias[b, k0 + j]
            cuda.syncthreads()
            if active:
                top = m
                for j in range(n):
                    dot = zero
                    for d in range(HS):
                        dot += qi[d] * sk[j, d]
                    if biased:
                        dot += position_bias[g, h, i, k0 + j]
                    s[j] = dot + sm[j]
                    if s[j] > top:
                        top = s[j]
                correction = math.exp(m - top)        # 0 on the first tile (m = -inf)
                total *= correction
                for d in range(HS):
                    acc[d] *= correction
                for j in range(n):
                    p = math.exp(s[j] - top)
                    total += p
                    for d in range(HS):
                        acc[d] += p * sv[j, d]
                m = top
            cuda.syncthreads()
        inv = one / total if active else zero
        if active:
            for d in range(HS):
                context[b, i, lo + d] = acc[d] * inv
        if keep_probs:
            for k0 in range(0, T, KT):
                n = KT if T - k0 > KT else T - k0     # (builtin min/max do not type in Numba 0.68's CUDA target)
                for e in range(t, n * HS, nt):
                    j, d = e // HS, e % HS
                    sk[j, d] = k[b, k0 + j, lo + d]
                for j in range(t, n, nt):
                    sm[j] = mask_bias[b, k0 + j]
                cuda.syncthreads()
                if active:
                    for j in range(n):
                        dot = zero
                        for d in range(HS):
                            dot += qi[d] * sk[j, d]
                        if biased:
                            dot += position_bias[g, h, i, k0 + j]
                        sp[t, j] = math.exp(dot + sm[j] - m) * inv
                cuda.syncthreads()
                rows = nt if T - q0 > nt else T - q0
                for e in range(t, rows * n, nt):      # consecutive threads write consecutive keys
                    r, c = e // n, e % n
                    probs[b, h, q0 + r, k0 + c] = sp[r, c]
                cuda.syncthreads()

    return attention
