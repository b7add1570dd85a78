"""Plain NumPy forward and backward of every op: the specification the fast kernels are tested against, and the
gradients training uses. kernels/reference_layers.py composes these ops into the unfused BERT layers.

As in llm.c, each op is written once: `X_forward` returns its output and what its backward needs (`saved`,
None where the inputs suffice), and `X_backward` sits right below it, taking the gradient of the output
first, then the forward's arguments it needs in the same order, then `saved`; it returns one gradient per
differentiable input. A backward never recomputes what its forward saved, and never changes an argument
in place. Inference (the "numpy" backend, the walkthrough) calls the forwards and drops what they saved.

Axes: N rows of width C (any leading axes fold into N); B batch, T tokens, H hidden, NH heads, HS head size,
V/P/TV rows of the word/position/type tables, E embedding width, K classes.
Works in float32 or float64: nothing here changes the input dtype.
"""

import functools
import math
from typing import NamedTuple, Optional

import numpy as np


# ---- activations: y = act(x), elementwise ----------------------------------------------------------------------

def scalar_erf(x):
    return math.erf(x)


@functools.lru_cache(maxsize=None)
def libm_erf():
    """libm's float64 erf as a NumPy ufunc, compiled by Numba on first use (Numba calls libm's erf, as
    math.erf does): NumPy has no erf, and a Python call per element is too slow for training, which
    evaluates erf on every intermediate activation twice per step. Imported here, not at the top, so that
    `import minibert` does not import Numba. Cached on disk where Numba can write its cache."""
    import numba
    try:
        return numba.vectorize(["float64(float64)"], cache=True)(scalar_erf)
    except RuntimeError:      # numba: "cannot cache function ...: no locator available" (kernels.cpu_math.jit warns)
        return numba.vectorize(["float64(float64)"])(scalar_erf)


def erf(x):
    """Exact erf, elementwise: libm's (correctly rounded in float64), rounded to x's dtype."""
    return libm_erf()(np.asarray(x, dtype=np.float64)).astype(x.dtype)


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


def gelu_grad(x):
    """d/dx x * Phi(x) = Phi(x) + x * phi(x), with the exact normal CDF Phi and density phi."""
    cdf = 0.5 * (1.0 + erf(x / np.sqrt(2.0).astype(x.dtype)))                 # [...]
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi).astype(x.dtype)         # [...]
    return cdf + x * pdf                                                      # [...]


def gelu_tanh_grad(x):
    """d/dx 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3)."""
    c = np.sqrt(2.0 / np.pi).astype(x.dtype)
    t = np.tanh(c * (x + 0.044715 * x ** 3))                                  # [...]
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)


def relu_grad(x):
    return (x > 0).astype(x.dtype)                    # 0 at x == 0, as torch's relu


def silu_grad(x):
    s = 1.0 / (1.0 + np.exp(-x))                                              # [...] sigmoid
    return s * (1.0 + x * (1.0 - s))


def tanh_grad(x):
    return 1.0 - np.tanh(x) ** 2


# The one table of activations: each name a config (hidden_act) or the pooler (tanh) may use, and the
# function it means. Every backend implements the functions on the right (kernels.cpu.BIAS_ACTIVATIONS,
# kernels.cuda.ACTIVATION_CODES) and looks names up through this table; tests check they cover it.
ACTIVATION_FUNCTIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                        "relu": "relu", "silu": "silu", "tanh": "tanh"}
ACTIVATIONS = {name: {"gelu": gelu, "gelu_tanh": gelu_tanh, "relu": relu, "silu": silu, "tanh": np.tanh}[function]
               for name, function in ACTIVATION_FUNCTIONS.items()}
# The derivative of each, by the same names.
ACTIVATION_GRADS = {name: {"gelu": gelu_grad, "gelu_tanh": gelu_tanh_grad, "relu": relu_grad, "silu": silu_grad,
                           "tanh": tanh_grad}[function]
                    for name, function in ACTIVATION_FUNCTIONS.items()}


def activation_forward(x, name):
    """The activation ACTIVATIONS[name] of x [...]; the backward needs x (the pre-activation)."""
    return ACTIVATIONS[name](x), None                                         # [...]


def activation_backward(dy, x, name):
    """dy [...] -> dx [...]."""
    return dy * ACTIVATION_GRADS[name](x)                                     # [...]


def gelu_forward_keeping_cdf(x):
    """GELU for training: gelu(x) [...] (the same numbers), and s = 1 + erf(x / sqrt(2)) [...], twice the
    normal CDF, which gelu_backward_from_cdf reuses instead of evaluating erf again."""
    s = 1.0 + erf(x / np.sqrt(2.0).astype(x.dtype))                           # [...]
    return 0.5 * x * s, s                                                     # [...]


def gelu_backward_from_cdf(dy, x, s):
    """dy [...] -> dx [...] = activation_backward(dy, x, "gelu"), gelu_grad's arithmetic with its cdf from s."""
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi).astype(x.dtype)         # [...]
    return dy * (0.5 * s + x * pdf)                                           # [...]


# ---- linear: y = x @ w + b ------------------------------------------------------------------------------

def linear_forward(x, w, b):
    """x [..., C_in], w [C_in, C_out], b [C_out] -> y [..., C_out]. The backward needs only x and w."""
    return x @ w + b, None                                                    # [..., C_out]


def linear_backward(dy, x, w):
    """dy [..., C_out] -> dx [..., C_in], dw [C_in, C_out], db [C_out]."""
    x2 = x.reshape(-1, x.shape[-1])                                           # [N, C_in]
    dy2 = dy.reshape(-1, dy.shape[-1])                                        # [N, C_out]
    dx = (dy2 @ w.T).reshape(*dy.shape[:-1], w.shape[0])     # [..., C_in]; one 2-D matmul: 1.5x a stack of them
    dw = x2.T @ dy2                                                           # [C_in, C_out]
    db = dy2.sum(axis=0)                                                      # [C_out]
    return dx, dw, db


def matmul_in_k_order(x, w):
    """x [N, K] @ w [K, C] summed k = 0, 1, ... K-1, each product rounded before it is added: the order
    the "cpu" backend's float64 matmuls promise (kernels.cpu.matmul_ordered), whatever BLAS would do."""
    total = np.zeros((x.shape[0], w.shape[1]), dtype=np.result_type(x, w))   # [N, C]
    for k in range(x.shape[1]):
        total = total + x[:, k:k + 1] * w[k]                                  # [N, C]
    return total


# ---- LayerNorm over the last axis, biased variance as in the BERT paper's code ----------------------------

class LayerNormSaved(NamedTuple):
    mean: np.ndarray          # [..., 1]
    rstd: np.ndarray          # [..., 1] 1 / sqrt(biased variance + eps)


def layer_norm_forward(x, gamma, beta, eps):
    """x [..., C] -> out [..., C], and the rows' mean and rstd."""
    mean = x.mean(axis=-1, keepdims=True)                                     # [..., 1]
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)                      # [..., 1]
    std = np.sqrt(var + eps)                                                  # [..., 1]
    out = (x - mean) / std * gamma + beta                                     # [..., C]
    return out, LayerNormSaved(mean, 1.0 / std)


def layer_norm_backward(dout, x, gamma, saved):
    """dout [..., C] -> dx [..., C], dgamma [C], dbeta [C].

    With xhat = (x - mean) * rstd and g = dout * gamma: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
    """
    C = x.shape[-1]
    mean, rstd = saved
    xhat = (x - mean) * rstd                                                  # [..., C]
    g = dout * gamma                                                          # [..., C]
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))            # [..., C]
    dgamma = (dout * xhat).reshape(-1, C).sum(axis=0)                         # [C]
    dbeta = dout.reshape(-1, C).sum(axis=0)                                   # [C]
    return dx, dgamma, dbeta


# ---- dropout -------------------------------------------------------------------------------------------

def dropout_forward(x, p, rng):
    """Zero each element with probability p and scale the rest by 1 / (1 - p) (inverted dropout).

    rng: a numpy Generator, the only source of randomness, so a seed fixes every mask. p == 0 (or rng None,
    evaluation) returns x itself. Returns (y [...], scale [...] or None): scale is 0 or 1 / (1 - p).
    """
    if p == 0 or rng is None:
        return x, None
    keep = rng.random(x.shape) >= p                                           # [...] bool
    scale = keep.astype(x.dtype) / x.dtype.type(1.0 - p)                      # [...]
    return x * scale, scale


def dropout_backward(dy, scale):
    """dy [...] -> dx [...]: the forward's mask and scale, which is all it needs."""
    return dy if scale is None else dy * scale


# ---- embeddings: word + position + token type lookups ------------------------------------------------------

def embed_forward(input_ids, position_ids, token_type_ids, word, position, token_type):
    """ids [B, T] -> [B, T, E]: the sum of three table rows. The backward needs only the ids."""
    return word[input_ids] + position[position_ids] + token_type[token_type_ids], None   # [B, T, E]


def embed_backward(dout, input_ids, position_ids, token_type_ids, word, position, token_type):
    """dout [B, T, E] -> dword [V, E], dposition [P, E], dtoken_type [TV, E]: each row gets the sum of the
    gradients of every token that read it (scatter-add; a row read twice gets both)."""
    E = dout.shape[-1]
    flat = dout.reshape(-1, E)                                                # [B*T, E]
    grads = []
    for ids, table in ((input_ids, word), (position_ids, position), (token_type_ids, token_type)):
        grad = np.zeros(table.shape, dtype=dout.dtype)                        # [rows, E]
        np.add.at(grad, np.asarray(ids).reshape(-1), flat)
        grads.append(grad)
    return tuple(grads)


# ---- softmax over the last axis ---------------------------------------------------------------------------

def softmax_forward(x):
    """x [..., T] -> probs [..., T]; the backward needs the output, probs."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))                             # [..., T]
    return e / e.sum(axis=-1, keepdims=True), None                            # [..., T]


def softmax_backward(dprobs, probs):
    """dprobs [..., T] -> dx [..., T] = probs * (dprobs - sum(dprobs * probs))."""
    return probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))    # [..., T]


# ---- scaled dot-product attention with the additive mask ------------------------------------------------------

def split_heads(x, num_heads):
    B, T, H = x.shape
    return x.reshape(B, T, num_heads, H // num_heads).transpose(0, 2, 1, 3)   # [B, NH, T, HS]


def merge_heads(x):
    B, NH, T, HS = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, NH * HS)                     # [B, T, H]


class AttentionSaved(NamedTuple):
    probs: np.ndarray             # [B, NH, T, T] softmax of the scores, before dropout
    scale: Optional[np.ndarray]   # [B, NH, T, T] the dropout's, or None without dropout


def attention_forward(q, k, v, mask_bias, num_heads, dropout_p=0.0, rng=None, position_bias=None):
    """softmax(q k^T / sqrt(HS) + position_bias + mask) v per head, dropout on the probabilities (as BERT
    trains; p 0 or rng None: none).

    q, k, v [B, T, H]; mask_bias [B, T] added to every query's scores for each key (0 keeps, a large
    negative removes padding); position_bias [B or 1, NH, T, T] or None, added to the scaled scores before
    the mask (MPNet's relative positions). Returns context [B, T, H] and AttentionSaved.
    """
    HS = q.shape[-1] // num_heads
    qh, kh, vh = (split_heads(a, num_heads) for a in (q, k, v))               # 3 x [B, NH, T, HS]
    scores = qh @ kh.transpose(0, 1, 3, 2) * (1.0 / math.sqrt(HS))            # [B, NH, T, T]
    if position_bias is not None:
        scores = scores + position_bias                                       # [B, NH, T, T]
    scores = scores + mask_bias[:, None, None, :]                             # [B, NH, T, T]
    probs, _ = softmax_forward(scores)                                        # [B, NH, T, T]
    dropped, scale = dropout_forward(probs, dropout_p, rng)                   # [B, NH, T, T]
    context = merge_heads(dropped @ vh)                                       # [B, T, H]
    return context, AttentionSaved(probs, scale)


def attention_backward(dcontext, q, k, v, mask_bias, num_heads, position_bias, saved):
    """dcontext [B, T, H] -> dq, dk, dv [B, T, H] and dposition_bias [1, NH, T, T] (None without a position
    bias): the bias is added to every text's scores, so its gradient is theirs summed over the batch. The
    mask is a constant: it gets no gradient."""
    HS = q.shape[-1] // num_heads
    probs, scale = saved
    qh, kh, vh = (split_heads(a, num_heads) for a in (q, k, v))               # 3 x [B, NH, T, HS]
    dctx = split_heads(dcontext, num_heads)                                   # [B, NH, T, HS]
    dropped = probs if scale is None else probs * scale                       # [B, NH, T, T]
    dvh = dropped.transpose(0, 1, 3, 2) @ dctx                                # [B, NH, T, HS]
    ddropped = dctx @ vh.transpose(0, 1, 3, 2)                                # [B, NH, T, T]
    dprobs = dropout_backward(ddropped, scale)                                # [B, NH, T, T]
    dbiased = softmax_backward(dprobs, probs)                                 # [B, NH, T, T] d(scaled scores + bias)
    dposition_bias = None if position_bias is None else dbiased.sum(axis=0, keepdims=True)   # [1, NH, T, T]
    dscores = dbiased * (1.0 / math.sqrt(HS))                                 # [B, NH, T, T]
    dqh = dscores @ kh                                                        # [B, NH, T, HS]
    dkh = dscores.transpose(0, 1, 3, 2) @ qh                                  # [B, NH, T, HS]
    return merge_heads(dqh), merge_heads(dkh), merge_heads(dvh), dposition_bias


# ---- attention over texts laid end to end (variable-length attention: no padding anywhere) ------------------

def packed_attention_forward(q, k, v, offsets, num_heads, position_bias=None):
    """Each text's attention over its own tokens: q, k, v [N, H] hold the texts end to end, text b in rows
    offsets[b]:offsets[b + 1] (offsets [B + 1], N = offsets[-1]); position_bias [1, NH, >= n, >= n] or None
    (the top-left n x n block is an n-token text's: the bias depends only on the query-key distance).
    Exactly attention_forward of each text alone, with no key masked. Returns context [N, H] and per text
    its AttentionSaved."""
    context = np.empty(q.shape, dtype=q.dtype)                                 # [N, H]
    saved = []
    for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        bias = None if position_bias is None else position_bias[:, :, :hi - lo, :hi - lo]   # [1, NH, n, n]
        out, kept = attention_forward(q[None, lo:hi], k[None, lo:hi], v[None, lo:hi],
                                      np.zeros((1, hi - lo), dtype=q.dtype), num_heads, position_bias=bias)
        context[lo:hi] = out[0]                                                # [n, H]
        saved.append(kept)
    return context, saved


def packed_attention_backward(dcontext, q, k, v, offsets, num_heads, position_bias, saved):
    """dcontext [N, H] -> dq, dk, dv [N, H] and dposition_bias (the shape of position_bias, None without one):
    attention_backward of each text, the bias's gradient summed over the texts' blocks."""
    dq, dk, dv = (np.zeros(q.shape, dtype=q.dtype) for _ in range(3))        # 3 x [N, H]
    dbias = None if position_bias is None else np.zeros(position_bias.shape, dtype=q.dtype)
    for (lo, hi), kept in zip(zip(offsets[:-1].tolist(), offsets[1:].tolist()), saved):
        n = hi - lo
        bias = None if position_bias is None else position_bias[:, :, :n, :n]
        grads = attention_backward(dcontext[None, lo:hi], q[None, lo:hi], k[None, lo:hi], v[None, lo:hi],
                                   np.zeros((1, n), dtype=q.dtype), num_heads, bias, kept)
        dq[lo:hi], dk[lo:hi], dv[lo:hi] = grads[0][0], grads[1][0], grads[2][0]
        if dbias is not None:
            dbias[:, :, :n, :n] += grads[3]
    return dq, dk, dv, dbias


# ---- MPNet's relative position bias: a [buckets, NH] table gathered by bucketed query-key distance -------------

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


def relative_position_bias_forward(table, T, num_buckets, max_distance):
    """table [num_buckets, NH] -> bias [1, NH, T, T]: each head's learned score for the bucket of every
    query-key distance, the same for every text and every layer. The backward needs only T (the buckets
    follow from it)."""
    buckets = relative_position_buckets(T, num_buckets, max_distance)          # [T, T]
    return np.ascontiguousarray(table[buckets].transpose(2, 0, 1)[None]), None   # [1, NH, T, T]


def relative_position_bias_backward(dbias, table, T, num_buckets, max_distance):
    """dbias [B or 1, NH, T, T] -> dtable [num_buckets, NH]: each table row gets the sum of the gradients
    of every (text, query, key) that read it (scatter-add over buckets; distances far apart share a row)."""
    buckets = relative_position_buckets(T, num_buckets, max_distance)          # [T, T]
    per_pair = dbias.sum(axis=0).transpose(1, 2, 0)                           # [T, T, NH]
    dtable = np.zeros(table.shape, dtype=dbias.dtype)                         # [num_buckets, NH]
    np.add.at(dtable, buckets, per_pair)
    return dtable


# ---- softmax cross-entropy with ignored labels ---------------------------------------------------------------

IGNORE_INDEX = -100      # transformers' label for tokens that do not count (padding, later subword pieces)


def cross_entropy_forward(logits, labels):
    """Mean over the counted rows of -log softmax(logits)[label]; rows labelled -100 do not count.

    logits [N, K], labels [N] int -> loss (scalar), and probs [N, K] for the backward. With no counted row
    the loss is 0.
    """
    counted = labels != IGNORE_INDEX                                          # [N]
    shifted = logits - logits.max(axis=-1, keepdims=True)                     # [N, K]
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))   # [N, K]
    picked = log_probs[np.arange(len(labels)), np.where(counted, labels, 0)]  # [N]
    loss = -(picked * counted).sum() / max(int(counted.sum()), 1)
    return logits.dtype.type(loss), np.exp(log_probs)


def cross_entropy_backward(dloss, logits, labels, probs):
    """dloss (scalar) -> dlogits [N, K] = dloss * (probs - onehot(label)) / counted rows, 0 on ignored rows."""
    counted = labels != IGNORE_INDEX                                          # [N]
    onehot = np.zeros_like(probs)                                             # [N, K]
    onehot[np.arange(len(labels)), np.where(counted, labels, 0)] = 1.0
    scale = dloss / max(int(counted.sum()), 1)
    return (probs - onehot) * counted[:, None] * scale                       # [N, K]
