"""The BERT encoder as pure functions over a weights dict and an `ops` backend.

Axes: B batch, T tokens, H hidden, NH heads, HS head size (H // NH), I intermediate,
      V vocabulary, P positions, TV token types, E embedding width (H except for ALBERT, ELECTRA),
      N tokens of texts laid end to end (packed: no padding).

The numerics are BERT's: exact-erf GELU (or the config's activation), LayerNorm *after* each residual
add (post-LN), and padding removed by adding a large negative number to masked keys' scores.
Every op but attention works row by row, so the same layer runs a padded batch [B, T, H] (`encoder_layers`,
what forward returns) or the texts laid end to end [N, H] (`packed_encoder_layers`, what encode runs: no row
is computed for padding); only the attention op handed to `encoder_layer` differs.
`ops` (an `Ops`, the contract in minibert.backends) supplies embed, linear, add_layer_norm, attention and
the rest; nothing here knows which device or library runs them. kernels/reference_layers.py
`encoder_layer_forward` is the same layer written out unfused, op by op.

Every supported family (BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA, ALBERT, MPNet) runs through the same
`encoder`. Their differences arrive as data, never as a branch on the family's name: the config's position_rule
(`make_position_ids`), an embedding projection present or None in the weights, a `layers` list that may hold
one dict several times (ALBERT's shared layers), a zero token-type row (DistilBERT, MPNet), a relative position
bias table present or None (MPNet: `relative_position_bias`, added to every layer's attention scores).
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .backends import Ops
from .checkpoint.config import RELATIVE_MAX_DISTANCE
from .conventions import OutputMapping
from .errors import InputError

# Sub-layer activations each layer can return on request (forward's `capture`), as "layer{i}.{name}" with
# i = 1..num_hidden_layers: layer i is the layer whose output is hidden_states[i] (0 is the embedding output).
INTERNALS = ("query", "key", "value",          # [B, T, H] projections, heads not yet split
             "attention.probs",                 # [B, NH, T, T] softmax of scaled, masked scores
             "attention.context",               # [B, T, H] probabilities times values, heads merged
             "attention.output",                # [B, T, H] output projection, before the residual
             "attention.layer_norm",            # [B, T, H] LayerNorm(x + attention.output)
             "ffn.intermediate",                # [B, T, I] after the activation
             "ffn.output")                      # [B, T, H] second projection, before the residual


@dataclass
class EncoderOutput(OutputMapping):
    """Also indexable as transformers' ModelOutput: out["last_hidden_state"], out[0], out.to_tuple()."""
    MAPPING_KEYS = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")
    hidden_states: tuple            # num_hidden_layers + 1 arrays [B, T, H]: embedding output, then each layer
    last_hidden_state: np.ndarray   # [B, T, H] == hidden_states[-1]
    pooler_output: Optional[np.ndarray]   # [B, H] tanh(dense(first token)), None without a pooler
    attentions: Optional[tuple]     # num_hidden_layers arrays [B, NH, T, T] when asked for, else None
    attention_mask: np.ndarray      # [B, T] 1 for real tokens, 0 for padding
    captured: dict                  # "layer{i}.{name}" -> array, for the internals asked for


def capture_name(layer, internal):
    """The name of one internal of encoder layer `layer` (1..num_hidden_layers, as hidden_states counts)."""
    return f"layer{layer}.{internal}"


def index_positions(input_ids, pad_token_id):
    """BERT: token t sits at position t, padding or not."""
    B, T = input_ids.shape
    return np.broadcast_to(np.arange(T, dtype=np.int64), (B, T))                 # [B, T]


def skip_padding_positions(input_ids, pad_token_id):
    """RoBERTa, XLM-R (fairseq's make_positions): real tokens are numbered from pad_token_id + 1 and padding
    tokens get pad_token_id, so a row's positions do not depend on how much padding it has."""
    real = (input_ids != pad_token_id).astype(np.int64)                          # [B, T]
    return np.cumsum(real, axis=1) * real + pad_token_id                        # [B, T]


POSITION_RULES = {"index": index_positions, "skip_padding": skip_padding_positions}


def make_position_ids(input_ids, config):
    """Each token's row of the position table, by config.position_rule; InputError past the table's end."""
    positions = POSITION_RULES[config.position_rule](input_ids, config.pad_token_id)   # [B, T]
    if positions.size and positions.max() >= config.max_position_embeddings:
        b, t = np.argwhere(positions >= config.max_position_embeddings)[0]
        raise InputError(f"input_ids[{b}, {t}] would need position {positions[b, t]}, past the model's "
                         f"{config.max_position_embeddings} position rows (at most {config.max_tokens} tokens "
                         "per row); truncate or use window/stride")
    return positions


def embeddings(input_ids, position_ids, token_type_ids, *, word, position, token_type, ln, ops: Ops, eps):
    """Token + position + segment embeddings, then LayerNorm (BERT paper, section 3.2)."""
    x = ops.embed(input_ids, position_ids, token_type_ids, word, position, token_type)   # [B, T, E]
    return ops.layer_norm(x, ln["g"], ln["b"], eps)                                       # [B, T, E]


def project_embeddings(x, *, w, b, ops: Ops):
    """ALBERT, ELECTRA: embeddings narrower (or wider) than the layers are mapped E -> H by one linear."""
    return ops.linear(x, w, b)                                               # [B, T, H]


def relative_position_bias(T, *, table, ops: Ops, config):
    """MPNet: each head's learned score for the bucket of every key's distance from the query, [1, NH, T, T];
    the same for every text and layer (table [buckets, NH], bucketing in kernels/reference.py)."""
    return ops.relative_position_bias(table, T, config.relative_attention_num_buckets, RELATIVE_MAX_DISTANCE)


def padded_attention(mask_bias, position_bias, *, ops: Ops, num_heads):
    """The attention of a padded batch [B, T, H]: every text attends over its row, padding keys masked
    (mask_bias [B, T]; position_bias [1, NH, T, T] or None added to the scaled scores)."""
    def attend(q, k, v, return_probs):
        return ops.attention(q, k, v, mask_bias, num_heads, return_probs,
                             position_bias=position_bias)           # [B, T, H], [B, NH, T, T] or None
    return attend


def packed_attention(offsets, position_bias, *, ops: Ops, num_heads):
    """The attention of texts laid end to end [N, H] (text b in rows offsets[b]:offsets[b + 1]): each text
    attends over its own tokens only, as variable-length attention does; no padding exists to mask."""
    def attend(q, k, v, return_probs):
        if return_probs:
            raise InputError("attention probabilities are [B, NH, T, T]: ask the padded forward for them")
        return ops.packed_attention(q, k, v, offsets, num_heads, position_bias=position_bias), None   # [N, H]
    return attend


def self_attention(x, attend, *, qkv, attn_out, attn_ln, ops: Ops, eps, return_probs):
    """Multi-head self-attention (`attend`: padded_attention or packed_attention), output projection,
    residual add, LayerNorm. x is [B, T, H], or [N, H] for packed texts: every op but attend is row-wise."""
    H = x.shape[-1]
    fused = ops.linear(x, qkv["w"], qkv["b"])                               # [B, T, 3H]
    q, k, v = fused[..., :H], fused[..., H:2 * H], fused[..., 2 * H:]       # 3 x [B, T, H]
    context, probs = attend(q, k, v, return_probs)                          # [B, T, H], [B, NH, T, T]
    projected = ops.linear(context, attn_out["w"], attn_out["b"])           # [B, T, H]
    out = ops.add_layer_norm(x, projected, attn_ln["g"], attn_ln["b"], eps)  # [B, T, H] LayerNorm(x + attention)
    return out, {"query": q, "key": k, "value": v, "attention.probs": probs,
                 "attention.context": context, "attention.output": projected}


def feed_forward(x, *, ffn_in, ffn_out, ffn_ln, ops: Ops, activation, eps):
    """Position-wise feed-forward: H -> I with the activation, I -> H, residual add, LayerNorm."""
    # activation(x W1 + b1) in one op; kernels/reference_layers.py encoder_layer_forward writes the two steps apart
    intermediate = ops.linear(x, ffn_in["w"], ffn_in["b"], activation=activation)   # [B, T, I]
    projected = ops.linear(intermediate, ffn_out["w"], ffn_out["b"])                 # [B, T, H]
    out = ops.add_layer_norm(x, projected, ffn_ln["g"], ffn_ln["b"], eps)           # [B, T, H] LayerNorm(x + FFN)
    return out, {"ffn.intermediate": intermediate, "ffn.output": projected}


def encoder_layer(x, attend, *, qkv, attn_out, attn_ln, ffn_in, ffn_out, ffn_ln, ops: Ops, config, keep=frozenset()):
    """One transformer encoder layer: attention block then feed-forward block, each post-LN. `attend` is
    padded_attention (x [B, T, H]) or packed_attention (x [N, H]): the only op that sees where texts end.

    Returns the output and the internals named in `keep` (see INTERNALS). The others are let go as soon as
    the next step no longer needs them: they are several times the size of the output.
    """
    eps = config.layer_norm_eps
    attended, inside = self_attention(x, attend, qkv=qkv, attn_out=attn_out, attn_ln=attn_ln, ops=ops, eps=eps,
                                      return_probs="attention.probs" in keep)   # [B, T, H]
    kept = {name: value for name, value in {**inside, "attention.layer_norm": attended}.items() if name in keep}
    del inside                  # q, k, v (one [B, T, 3H] array), context: not needed by the feed-forward
    out, inside = feed_forward(attended, ffn_in=ffn_in, ffn_out=ffn_out, ffn_ln=ffn_ln, ops=ops,
                               activation=config.hidden_act, eps=eps)          # [B, T, H]
    return out, {**kept, **{name: value for name, value in inside.items() if name in keep}}


def pooler(x, *, w, b, ops: Ops):
    """BERT's pooler: tanh(dense(hidden state of the first token, [CLS]))."""
    return ops.linear(x[:, 0], w, b, activation="tanh")                      # [B, H]


def additive_mask(attention_mask, dtype):
    """0 where a key is a real token, the dtype's most negative number where it is padding."""
    return (1.0 - attention_mask.astype(dtype)) * np.finfo(dtype).min        # [B, T]


@dataclass
class LayerOutput:
    index: int                      # 0: the embedding output; i: the output of layer i
    hidden_state: np.ndarray        # [B, T, H]
    attention: Optional[np.ndarray]  # [B, NH, T, T] when asked for (layers 1.. only), else None
    captured: dict                  # "layer{index}.{name}" -> array, for the internals asked for


def encoder_layers(input_ids, attention_mask, token_type_ids, position_ids, weights, config, ops: Ops, *,
                   dtype, output_attentions=False, num_layers=None, capture=frozenset()):
    """Yield the embedding output, then each layer's output, one at a time (a LayerOutput each).

    A caller that pools each layer and lets it go never holds the whole [layers, B, T, H] stack, and
    nothing past `num_layers` is computed. position_ids [B, T]: rows of the position table, from
    `make_position_ids(input_ids, config)`. Index 0 is the embedding output after the projection where
    the model has one. capture: names "layer{i}.{internal}" of sub-layer activations (see INTERNALS).
    """
    num_layers = config.num_hidden_layers if num_layers is None else num_layers
    mask_bias = additive_mask(attention_mask, dtype)                        # [B, T]
    position_bias = (relative_position_bias(input_ids.shape[1], **weights["relative_attention_bias"], ops=ops,
                                            config=config)                  # [1, NH, T, T]
                     if weights.get("relative_attention_bias") is not None else None)
    attend = padded_attention(mask_bias, position_bias, ops=ops, num_heads=config.num_attention_heads)
    x = embeddings(input_ids, position_ids, token_type_ids, **weights["embeddings"], ops=ops,
                   eps=config.layer_norm_eps)                               # [B, T, E]
    if weights.get("embedding_projection") is not None:
        x = project_embeddings(x, **weights["embedding_projection"], ops=ops)   # [B, T, H]
    yield LayerOutput(index=0, hidden_state=x, attention=None, captured={})
    for i, layer_weights in enumerate(weights["layers"][:num_layers], start=1):
        keep = {name for name in INTERNALS if capture_name(i, name) in capture}
        keep |= {"attention.probs"} if output_attentions else set()
        x, kept = encoder_layer(x, attend, **layer_weights, ops=ops, config=config,
                                keep=frozenset(keep))                        # [B, T, H]
        yield LayerOutput(index=i, hidden_state=x,
                          attention=kept["attention.probs"] if output_attentions else None,
                          captured={capture_name(i, name): value for name, value in kept.items()
                                    if capture_name(i, name) in capture})


def pack(attention_mask):
    """Where the real tokens of right-padded rows go when the texts are laid end to end: (keep [B, T] bool,
    offsets [B + 1], text b in packed rows offsets[b]:offsets[b + 1]). x[keep] packs any [B, T, ...] array."""
    keep = np.asarray(attention_mask) != 0                                   # [B, T]
    lengths = keep.sum(axis=1)                                               # [B]
    holes = (keep != (np.arange(keep.shape[1]) < lengths[:, None])).any(axis=1)   # [B] not 1s then 0s
    if holes.any():
        b = int(np.argmax(holes))
        raise InputError(f"attention_mask[{b}] has padding before a real token: packing needs right-padded rows "
                         "(1s, then 0s), as tokenize gives; use iter_layers for other masks")
    return keep, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def unpack(x, keep):
    """Packed rows [N, ...] back to [B, T, ...] with zeros at padding (rows no layer computed)."""
    out = np.zeros(keep.shape + x.shape[1:], dtype=x.dtype)                  # [B, T, ...]
    out[keep] = x
    return out


def packed_encoder_layers(input_ids, offsets, token_type_ids, position_ids, weights, config, ops: Ops, *,
                          num_layers=None):
    """encoder_layers for texts laid end to end with no padding: ids, types, positions [N] (N real tokens,
    text b in rows offsets[b]:offsets[b + 1]); yields LayerOutputs whose hidden_state is [N, H].

    The same embeddings and encoder_layer; only the attention differs (packed_attention). MPNet's bias for
    the longest text serves them all: it depends only on each query-key distance.
    """
    num_layers = config.num_hidden_layers if num_layers is None else num_layers
    longest = max(int(np.diff(offsets).max(initial=0)), 1)
    position_bias = (relative_position_bias(longest, **weights["relative_attention_bias"], ops=ops,
                                            config=config)                  # [1, NH, longest, longest]
                     if weights.get("relative_attention_bias") is not None else None)
    attend = packed_attention(offsets, position_bias, ops=ops, num_heads=config.num_attention_heads)
    x = embeddings(input_ids[None], position_ids[None], token_type_ids[None], **weights["embeddings"], ops=ops,
                   eps=config.layer_norm_eps)[0]                            # [N, E]
    if weights.get("embedding_projection") is not None:
        x = project_embeddings(x, **weights["embedding_projection"], ops=ops)   # [N, H]
    yield LayerOutput(index=0, hidden_state=x, attention=None, captured={})
    for i, layer_weights in enumerate(weights["layers"][:num_layers], start=1):
        x, _ = encoder_layer(x, attend, **layer_weights, ops=ops, config=config)   # [N, H]
        yield LayerOutput(index=i, hidden_state=x, attention=None, captured={})


def encoder(input_ids, attention_mask, token_type_ids, position_ids, weights, config, ops: Ops, *,
            dtype, output_attentions=False, num_layers=None, capture=frozenset()):
    """Run embeddings and the first `num_layers` layers (all by default), keep every hidden state, and pool
    [CLS] when the model has a pooler and every layer ran. Arguments as for `encoder_layers`."""
    layers = list(encoder_layers(input_ids, attention_mask, token_type_ids, position_ids, weights, config, ops,
                                 dtype=dtype, output_attentions=output_attentions, num_layers=num_layers,
                                 capture=capture))
    x = layers[-1].hidden_state                                             # [B, T, H]
    ran_every_layer = len(layers) == config.num_hidden_layers + 1
    pooled = (pooler(x, **weights["pooler"], ops=ops)                       # [B, H]
              if weights["pooler"] is not None and ran_every_layer else None)
    return EncoderOutput(hidden_states=tuple(layer.hidden_state for layer in layers), last_hidden_state=x,
                         pooler_output=pooled,
                         attentions=tuple(layer.attention for layer in layers[1:]) if output_attentions else None,
                         attention_mask=attention_mask,
                         captured={name: value for layer in layers for name, value in layer.captured.items()})
