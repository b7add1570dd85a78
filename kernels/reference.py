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


def add_layer_norm(x, residual, gamma, beta, eps):
    """LayerNorm(x + residual): the residual add and the post-LN of every BERT sub-layer, one op."""
    return layer_norm(x + residual, gamma, beta, eps)                  # [..., C]


def embed(input_ids, position_ids, token_type_ids, word, position, token_type):
    """Sum of the three embedding lookups: ids [B, T] -> [B, T, E]."""
    return word[input_ids] + position[position_ids] + token_type[token_type_ids]


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def relative_position_buckets(T, num_buckets, max_distance):
    """MPNet's (T5's) bucket of each query-key distance: [T, T] int64, row i the query, column j the key.

    The first half of the buckets is for keys at or before the query, the second half for keys after it.
    Within a half, the first num_buckets // 4 distances get a bucket each; longer distances share buckets
    whose widths grow geometrically up to max_distance, and everything farther shares the last one.
    """
    distance = np.arange(T)[None, :] - np.arange(T)[:, None]                  # [T, T] key minus query position
    half = num_buckets // 2                                                    # buckets per direction
    exact = half // 2                                                          # distances 0..exact-1: one bucket each
    after = np.where(distance > 0, half, 0)                                    # [T, T] keys after the query: 2nd half
    n = np.abs(distance)                                                       # [T, T]
    # log2, not ln: exact at powers of two, where the quotient is a whole number and a floor a rounding
    # short of it would drop a bucket (transformers computes this in float32; the floors agree).
    growth = np.log2(np.maximum(n, 1) / exact) / np.log2(max_distance / exact)   # [T, T] 0 at exact, 1 at max_distance
    far = np.minimum(exact + (growth * (half - exact)).astype(np.int64), half - 1)   # [T, T]
    return after + np.where(n < exact, n, far)                                 # [T, T] in [0, num_buckets)


def relative_position_bias(table, T, num_buckets, max_distance):
    """table [num_buckets, NH] -> [1, NH, T, T]: each head's learned score for the bucket of every
    query-key distance, the same for every text and every layer."""
    buckets = relative_position_buckets(T, num_buckets, max_distance)          # [T, T]
    return np.ascontiguousarray(table[buckets].transpose(2, 0, 1)[None])      # [1, NH, T, T]


def attention(q, k, v, mask_bias, num_heads, return_probs=False, position_bias=None):
    """Multi-head scaled dot-product attention.

    q, k, v [B, T, H]; mask_bias [B, T] added to every query's scores for each key (0 keeps, a large
    negative removes padding); position_bias [B or 1, NH, T, T] or None, added to the scaled scores before
    the mask (MPNet's relative positions). Returns (context [B, T, H], probs [B, NH, T, T] or None).
    """
    B, T, H = q.shape
    HS = H // num_heads

    def heads(x):
        return x.reshape(B, T, num_heads, HS).transpose(0, 2, 1, 3)     # [B, NH, T, HS]

    scores = heads(q) @ heads(k).transpose(0, 1, 3, 2)                   # [B, NH, T, T]
    scores = scores * (1.0 / math.sqrt(HS))                              # [B, NH, T, T]
    if position_bias is not None:
        scores = scores + position_bias                                  # [B, NH, T, T]
    scores = scores + mask_bias[:, None, None, :]                        # [B, NH, T, T]
    probs = softmax(scores)                                              # [B, NH, T, T]
    context = probs @ heads(v)                                           # [B, NH, T, HS]
    context = context.transpose(0, 2, 1, 3).reshape(B, T, H)             # [B, T, H]
    return context, (probs if return_probs else None)


def encoder_layer(x, mask_bias, *, qkv, attn_out, attn_ln, ffn_in, ffn_out, ffn_ln, num_heads, activation, eps,
                  position_bias=None):
    """One BERT encoder layer written out op by op, nothing fused: the formula minibert/model.py computes
    with fused ops (a Q|K|V matmul, bias + activation after a matmul, the residual add inside LayerNorm).

        x = LayerNorm(x + Attention(x))          Attention(x) = softmax(Q K^T / sqrt(HS) + mask) V Wo + bo
        x = LayerNorm(x + FFN(x))                FFN(x) = GELU(x W1 + b1) W2 + b2, GELU with the exact erf

    x [B, T, H]; mask_bias [B, T] (0 for a real key, a large negative number for padding); position_bias
    [B or 1, NH, T, T] or None (MPNet). Weights as minibert.weights arranges them (qkv["w"] [H, 3H]).
    Returns (output [B, T, H], every intermediate under its capture name).
    """
    B, T, H = x.shape
    HS = H // num_heads

    def heads(a):
        return a.reshape(B, T, num_heads, HS).transpose(0, 2, 1, 3)             # [B, NH, T, HS]

    w_q, w_k, w_v = np.split(qkv["w"], 3, axis=1)                               # 3 x [H, H]
    b_q, b_k, b_v = np.split(qkv["b"], 3)                                       # 3 x [H]
    q = x @ w_q + b_q                                                           # [B, T, H]
    k = x @ w_k + b_k                                                           # [B, T, H]
    v = x @ w_v + b_v                                                           # [B, T, H]
    scores = heads(q) @ heads(k).transpose(0, 1, 3, 2) / math.sqrt(HS)          # [B, NH, T, T]
    if position_bias is not None:
        scores = scores + position_bias                                         # [B, NH, T, T]
    scores = scores + mask_bias[:, None, None, :]                               # [B, NH, T, T]
    probs = softmax(scores)                                                     # [B, NH, T, T]
    context = (probs @ heads(v)).transpose(0, 2, 1, 3).reshape(B, T, H)         # [B, T, H]
    attention_output = context @ attn_out["w"] + attn_out["b"]                  # [B, T, H]
    x_attended = layer_norm(x + attention_output, attn_ln["g"], attn_ln["b"], eps)   # [B, T, H] residual, LN
    pre_activation = x_attended @ ffn_in["w"] + ffn_in["b"]                     # [B, T, I]
    intermediate = ACTIVATIONS[activation](pre_activation)                      # [B, T, I] erf GELU for BERT
    ffn_output = intermediate @ ffn_out["w"] + ffn_out["b"]                     # [B, T, H]
    out = layer_norm(x_attended + ffn_output, ffn_ln["g"], ffn_ln["b"], eps)    # [B, T, H] residual, LN
    return out, {"query": q, "key": k, "value": v, "attention.probs": probs, "attention.context": context,
                 "attention.output": attention_output, "attention.layer_norm": x_attended,
                 "ffn.intermediate": intermediate, "ffn.output": ffn_output}
