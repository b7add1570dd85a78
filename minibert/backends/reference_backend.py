"""The "numpy" backend: the ops of minibert.backends.Ops from kernels/reference.py's forwards, their saved
values dropped. The specification every other backend is tested against; float64 here is the parity path.

(Named reference_backend, not numpy, so that it cannot shadow NumPy.)
"""

from ..kernels import reference


def embed(input_ids, position_ids, token_type_ids, word, position, token_type):
    return reference.embed_forward(input_ids, position_ids, token_type_ids, word, position, token_type)[0]


def linear(x, w, b, activation=None):
    y, _ = reference.linear_forward(x, w, b)                                  # [..., C_out]
    return y if activation is None else reference.activation_forward(y, activation)[0]


def layer_norm(x, gamma, beta, eps, residual=None):
    if residual is not None:
        x = x + residual                                                      # [..., C]
    return reference.layer_norm_forward(x, gamma, beta, eps)[0]               # [..., C]


def add_layer_norm(x, residual, gamma, beta, eps):
    return layer_norm(x + residual, gamma, beta, eps)                         # [..., C]


def attention(q, k, v, mask_bias, num_heads, return_probs=False, position_bias=None):
    context, saved = reference.attention_forward(q, k, v, mask_bias, num_heads, position_bias=position_bias)
    return context, (saved.probs if return_probs else None)


def packed_attention(q, k, v, offsets, num_heads, position_bias=None):
    return reference.packed_attention_forward(q, k, v, offsets, num_heads, position_bias=position_bias)[0]


def relative_position_bias(table, T, num_buckets, max_distance):
    return reference.relative_position_bias_forward(table, T, num_buckets, max_distance)[0]


def prepare(weights):
    return weights


def to_host(output):
    return output


def synchronize():
    """Each op is finished when it returns: nothing to wait for."""
