"""The ops the model calls, chosen once at load: "numpy" (the reference), "cpu" (Numba kernels) or "cuda".

`Ops` below is the contract: every backend is an object with exactly these functions, array in, array out,
so minibert/model.py names `Ops` and "go to definition" lands here; adding a backend means implementing
this list (and registering it in make_ops). Arrays may be a backend's own device arrays between calls;
`to_host` turns an output back into NumPy.
"""

import math
from types import SimpleNamespace
from typing import Optional, Protocol

import numpy as np

from .errors import BackendError

BACKENDS = ("numpy", "cpu", "cuda")


class Ops(Protocol):
    """The functions every backend provides (kernels/reference.py holds the NumPy definition of each)."""

    name: str                   # "numpy", "cpu" or "cuda"

    def embed(self, input_ids, position_ids, token_type_ids, word, position, token_type):
        """word[ids] + position[positions] + token_type[types]: ids [B, T] -> [B, T, E]."""

    def linear(self, x, w, b, activation: Optional[str] = None):
        """activation(x @ w + b): x [..., C_in], w [C_in, C_out] -> [..., C_out]; activation a name of
        kernels.reference.ACTIVATION_FUNCTIONS or None."""

    def layer_norm(self, x, gamma, beta, eps):
        """LayerNorm over the last axis (biased variance)."""

    def add_layer_norm(self, x, residual, gamma, beta, eps):
        """LayerNorm(x + residual): each sub-layer's residual add and post-LN."""

    def attention(self, q, k, v, mask_bias, num_heads, return_probs, position_bias=None):
        """Scaled dot-product attention: q, k, v [B, T, H], mask_bias [B, T], position_bias [B or 1, NH, T, T]
        or None -> (context [B, T, H], probs [B, NH, T, T] or None)."""

    def relative_position_bias(self, table, T, num_buckets, max_distance):
        """MPNet's bias [1, NH, T, T] from its [buckets, NH] table."""

    def prepare(self, weights):
        """The weights dict in the form this backend computes with (e.g. uploaded to a device)."""

    def to_host(self, output):
        """output with every array as a NumPy array (identity on the host backends)."""

    def synchronize(self):
        """Wait for queued work (a device's); returns at once on the host backends."""


def no_wait():
    """Host backends finish each op before it returns: nothing to wait for."""


def numpy_ops():
    from .kernels import reference
    return SimpleNamespace(name="numpy", embed=reference.embed, linear=reference.linear,
                           layer_norm=reference.layer_norm, add_layer_norm=reference.add_layer_norm,
                           attention=reference.attention, relative_position_bias=reference.relative_position_bias,
                           prepare=lambda weights: weights, to_host=lambda output: output, synchronize=no_wait)


def cpu_ops():
    """Numba kernels (minibert.kernels.cpu), each op cut into row pieces that run on minibert's own threads.

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
    from . import threads
    from .kernels import cpu, reference

    split_above = 1 << 16      # elements (multiply-adds / 32 for matmuls) below which one thread is quicker

    def pieces(n, work, cost=None, per_thread=1):
        """Cut n rows (or units) into contiguous pieces: one for small work, else `per_thread` per thread
        (the threads take them as they go, which evens out a thread slowed by other programs)."""
        count = threads.thread_count()
        return threads.split(n, 1 if work <= split_above or count == 1 else count * per_thread, cost)

    def rows(x):
        return np.ascontiguousarray(x).reshape(-1, x.shape[-1])

    def embed(input_ids, position_ids, token_type_ids, word, position, token_type):
        B, T = input_ids.shape
        E = word.shape[1]
        out = np.empty((B * T, E), dtype=word.dtype)
        ids, positions, types = (np.ascontiguousarray(a, dtype=np.int64).reshape(-1)
                                 for a in (input_ids, position_ids, token_type_ids))

        def piece(lo, hi):
            cpu.embed(out[lo:hi], ids[lo:hi], positions[lo:hi], types[lo:hi], word, position, token_type)
        threads.WORKERS.run(piece, pieces(B * T, B * T * E))
        return out.reshape(B, T, E)

    def linear(x, w, b, activation=None):
        x2 = rows(x)                                                       # [N, C_in]
        N, K = x2.shape
        y = np.empty((N, w.shape[1]), dtype=np.result_type(x2, w))         # [N, C_out]
        epilogue = cpu.bias_kernel(activation)
        cut = pieces(N, N * K * w.shape[1] // 32, per_thread=2 if N >= 2048 else 1)   # small pieces: slow matmuls
        with threads.BLAS:
            if y.dtype == np.float64:
                def piece(lo, hi):                  # fixed summation order: a row's bits ignore its batch
                    cpu.matmul_ordered(y[lo:hi], x2[lo:hi], w)
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
                cpu.layer_norm(o2[lo:hi], x2[lo:hi], gamma, beta, eps)
            else:
                cpu.add_layer_norm(o2[lo:hi], x2[lo:hi], r2[lo:hi], gamma, beta, eps)
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
        lengths = cpu.key_lengths(mask_bias)                         # [B] keys up to each text's last real one
        units, cost = cpu.attention_units(lengths, num_heads, T)     # whole texts, or heads of long ones

        def piece(first, last):
            cpu.attention_units_run(context, probs, q, k, v, position_bias, mask_bias, lengths, num_heads, scale,
                                    return_probs, units[first:last])
        with threads.BLAS:
            threads.WORKERS.run(piece, pieces(len(units), sum(cost) * (H // num_heads) // 16, cost, per_thread=2))
        return context, (probs if return_probs else None)

    def add_layer_norm(x, residual, gamma, beta, eps):
        return layer_norm(x, gamma, beta, eps, residual=residual)

    return SimpleNamespace(name="cpu", embed=embed, linear=linear, layer_norm=layer_norm,
                           add_layer_norm=add_layer_norm, attention=attention,
                           relative_position_bias=reference.relative_position_bias,
                           prepare=lambda weights: weights, to_host=lambda output: output, synchronize=no_wait)


def make_ops(backend: str) -> Ops:
    if backend == "numpy":
        return numpy_ops()
    if backend == "cpu":
        return cpu_ops()
    if backend == "cuda":
        from .cuda_backend import cuda_ops     # the only import of CUDA machinery, and only on request
        return cuda_ops()
    raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
