"""The ops the model calls, chosen once at load: "numpy" (the reference) or "cpu" (Numba kernels).

Every backend offers the same five functions with the same array-in, array-out contract:
    embed(input_ids, position_ids, token_type_ids, word, position, token_type) -> [B, T, E]
    linear(x, w, b, activation=None)                  -> act(x @ w + b)
    layer_norm(x, gamma, beta, eps, residual=None)    -> LayerNorm(x + residual)
    attention(q, k, v, mask_bias, num_heads, return_probs) -> (context [B, T, H], probs or None)
    prepare(weights) -> weights in the form this backend computes with
"""

import math
from types import SimpleNamespace

import numpy as np

from .errors import BackendError

BACKENDS = ("numpy", "cpu", "cuda")


def numpy_ops():
    from .kernels import reference
    return SimpleNamespace(name="numpy", embed=reference.embed, linear=reference.linear,
                           layer_norm=reference.layer_norm, attention=reference.attention,
                           prepare=lambda weights: weights)


def cpu_ops():
    from .kernels import cpu

    bias_kernels = {None: cpu.bias_add, "gelu": cpu.bias_gelu, "gelu_new": cpu.bias_gelu_tanh,
                    "gelu_pytorch_tanh": cpu.bias_gelu_tanh, "relu": cpu.bias_relu, "silu": cpu.bias_silu,
                    "tanh": cpu.bias_tanh}

    def rows(x):
        return np.ascontiguousarray(x).reshape(-1, x.shape[-1])

    def embed(input_ids, position_ids, token_type_ids, word, position, token_type):
        out = np.empty(input_ids.shape + (word.shape[1],), dtype=word.dtype)
        cpu.embed(out, input_ids, position_ids, token_type_ids, word, position, token_type)
        return out

    def linear(x, w, b, activation=None):
        y = rows(x) @ w                                   # BLAS; the bias and activation follow in one pass
        if activation == "gelu" and y.dtype == np.float32:
            cpu.bias_gelu_fast(y, y, b, cpu.ERF_TABLE)    # erf within 1e-7, no libm call
        else:
            bias_kernels[activation](y, y, b)
        return y.reshape(x.shape[:-1] + (w.shape[1],))

    def layer_norm(x, gamma, beta, eps, residual=None):
        out = np.empty(x.shape, dtype=x.dtype)
        if residual is None:
            cpu.layer_norm(out.reshape(-1, x.shape[-1]), rows(x), gamma, beta, eps)
        else:
            cpu.add_layer_norm(out.reshape(-1, x.shape[-1]), rows(x), rows(residual), gamma, beta, eps)
        return out

    def attention(q, k, v, mask_bias, num_heads, return_probs=False):
        B, T, H = q.shape
        context = np.empty((B, T, H), dtype=q.dtype)
        probs = np.empty((B, num_heads, T, T) if return_probs else (1, 1, 1, 1), dtype=q.dtype)
        scale = q.dtype.type(1.0 / math.sqrt(H // num_heads))
        cpu.attention(context, probs, q, k, v, mask_bias, num_heads, scale, return_probs)
        return context, (probs if return_probs else None)

    return SimpleNamespace(name="cpu", embed=embed, linear=linear, layer_norm=layer_norm,
                           attention=attention, prepare=lambda weights: weights)


def make_ops(backend: str):
    if backend == "numpy":
        return numpy_ops()
    if backend == "cpu":
        return cpu_ops()
    if backend == "cuda":
        raise BackendError("backend 'cuda' is not available yet in this version of minibert; "
                           "use backend='cpu' (Numba) or 'numpy' (reference)")
    raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
