"""Plain NumPy versions of every op: the specification the fast kernels are tested against.

Shapes: N rows of width C (any leading axes fold into N); B batch, T tokens, NH heads, HS head size.
Works in float32 or float64: nothing here changes the input dtype.
"""

import math

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    """Exact erf, elementwise (NumPy has none; libm's is correctly rounded in float64)."""
    return _erf(x).astype(x.dtype)


def gelu(x):
    """BERT's GELU: x * Phi(x) with the exact normal CDF, 0.5 * x * (1 + erf(x / sqrt(2)))."""
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0).astype(x.dtype)))


def gelu_tanh(x):
    """The tanh approximation of GELU ("gelu_new", "gelu_pytorch_tanh")."""
    c = np.sqrt(2.0 / np.pi).astype(x.dtype)
    return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x ** 3)))


def relu(x):
    return np.maximum(x, 0)


def silu(x):
    return x / (1.0 + np.exp(-x))


# The one table of activations: each name a config (hidden_act) or the pooler (tanh) may use, and the
# function it means. Every backend implements the functions on the right (kernels.cpu.BIAS_ACTIVATIONS,
# kernels.cuda.ACTIVATION_CODES) and looks names up through this table; tests check they cover it.
ACTIVATION_FUNCTIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                        "relu": "relu", "silu": "silu", "tanh": "tanh"}
ACTIVATIONS = {name: {"gelu": gelu, "gelu_tanh": gelu_tanh, "relu": relu, "silu": silu, "tanh": np.tanh}[function]
               for name, function in ACTIVATION_FUNCTIONS.items()}


def linear(x, w, b, activation=None):
    """act(x @ w + b): x [..., C_in], w [C_in, C_out], b [C_out] -> [..., C_out]."""
    y = x @ w + b
    return y if activation is None else ACTIVATIONS[activation](y)


def matmul_in_k_order(x, w):
    """x [N, K] @ w [K, C] summed k = 0, 1, ... K-1, each product rounded before it is added: the order
    the "cpu" backend's float64 matmuls promise (kernels.cpu.matmul_ordered), whatever BLAS would do."""
    total = np.zeros((x.shape[0], w.shape[1]), dtype=np.result_type(x, w))   # [N, C]
    for k in range(x.shape[1]):
        total = total + x[:, k:k + 1] * w[k]                                  # [N, C]
    return total


def layer_norm(x, gamma, beta, eps, residual=None):
    """LayerNorm over the last axis of (x + residual), biased variance as in the BERT paper's code."""
    if residual is not None:
        x = x + residual
    mean = x.mean(axis=-1, keepdims=True)                      # [..., 1]
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)       # [..., 1]
    return (x - mean) / np.sqrt(var + eps) * gamma + beta      # [..., C]


def embed(input_ids, position_ids, token_type_ids, word, position, token_type):
    """Sum of the three embedding lookups: ids [B, T] -> [B, T, E]."""
    return word[input_ids] + position[position_ids] + token_type[token_type_ids]


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention(q, k, v, mask_bias, num_heads, return_probs=False):
    """Multi-head scaled dot-product attention.

    q, k, v [B, T, H]; mask_bias [B, T] added to every query's scores for each key (0 keeps, a large
    negative removes padding). Returns (context [B, T, H], probs [B, NH, T, T] or None).
    """
    B, T, H = q.shape
    HS = H // num_heads

    def heads(x):
        return x.reshape(B, T, num_heads, HS).transpose(0, 2, 1, 3)     # [B, NH, T, HS]

    scores = heads(q) @ heads(k).transpose(0, 1, 3, 2)                   # [B, NH, T, T]
    scores = scores * (1.0 / math.sqrt(HS)) + mask_bias[:, None, None, :]
    probs = softmax(scores)                                              # [B, NH, T, T]
    context = probs @ heads(v)                                           # [B, NH, T, HS]
    context = context.transpose(0, 2, 1, 3).reshape(B, T, H)             # [B, T, H]
    return context, (probs if return_probs else None)
