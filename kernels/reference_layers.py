"""BERT's embeddings and encoder layer written out op by op from kernels/reference.py, nothing fused, forward
and backward: *the* unfused layer. minibert/model.py computes the same layer with fused ops (a Q|K|V matmul,
bias + activation after a matmul, the residual add inside LayerNorm); the walkthrough, the fused-path tests
and training (minibert/train/backprop.py) all read this one. Below the layer: BERT's pretraining heads (the
masked-LM head and the next-sentence head), which minibert/train/pretrain.py trains.

    x = LayerNorm(x + Dropout(Attention(x)))      Attention(x) = softmax(Q K^T / sqrt(HS) + mask) V Wo + bo
    x = LayerNorm(x + Dropout(FFN(x)))            FFN(x) = GELU(x W1 + b1) W2 + b2, GELU with the exact erf

Each forward returns (output, saved): `saved` holds every intermediate under its capture name
(minibert.model.INTERNALS: "query", "attention.probs", ...) and what the backward needs besides. Each
backward takes the gradient of the output, then the forward's arguments it needs in the same order, then
`saved`, and adds the weights' gradients into `grads`, a tree shaped like the weights (so a layer used
several times, ALBERT's, collects the gradient of every use, as llm.c accumulates into named buffers).
Dropout follows BERT (transformers' BertModel); with p 0 or rng None every dropout is the identity.

Axes: B batch, T tokens, H hidden, NH heads, I intermediate, E embedding width.
"""

import numpy as np

from .reference import (activation_backward, activation_forward, attention_backward, attention_forward,
                        dropout_backward, dropout_forward, embed_backward, embed_forward, layer_norm_backward,
                        layer_norm_forward, linear_backward, linear_forward)


# In a layer's saved for readers (the walkthrough, the fused-path tests) only: the backward never reads them,
# so training lets them go (each is [B, T, H] per layer).
READERS_ONLY = ("attention.output", "ffn.output")


def add_linear_grads(grads, dw, db):
    grads["w"] += dw
    grads["b"] += db


# ---- embeddings: LayerNorm(word[ids] + position[positions] + token_type[types]), dropout ------------------------

def embeddings_forward(input_ids, position_ids, token_type_ids, *, word, position, token_type, ln, eps,
                       dropout=0.0, rng=None):
    """ids [B, T] -> [B, T, E], and saved."""
    summed, _ = embed_forward(input_ids, position_ids, token_type_ids, word, position, token_type)   # [B, T, E]
    normed, ln_saved = layer_norm_forward(summed, ln["g"], ln["b"], eps)                       # [B, T, E]
    out, scale = dropout_forward(normed, dropout, rng)                                          # [B, T, E]
    return out, {"summed": summed, "layer_norm": ln_saved, "scale": scale}


def embeddings_backward(dout, input_ids, position_ids, token_type_ids, *, word, position, token_type, ln, saved,
                        grads):
    """dout [B, T, E] -> gradients added into grads (the embeddings' gradient tree)."""
    dnormed = dropout_backward(dout, saved["scale"])                                            # [B, T, E]
    dsummed, dg, db = layer_norm_backward(dnormed, saved["summed"], ln["g"], saved["layer_norm"])   # [B, T, E]
    grads["ln"]["g"] += dg
    grads["ln"]["b"] += db
    dword, dposition, dtype = embed_backward(dsummed, input_ids, position_ids, token_type_ids,
                                             word, position, token_type)
    grads["word"] += dword
    grads["position"] += dposition
    grads["token_type"] += dtype


# ---- one encoder layer: x = LN(x + attention(x)); x = LN(x + ffn(x)) -----------------------------------------

def encoder_layer_forward(x, mask_bias, position_bias, *, qkv, attn_out, attn_ln, ffn_in, ffn_out, ffn_ln, num_heads,
                          activation, eps, dropout=0.0, drop_attention_output=True, rng=None):
    """x [B, T, H] -> [B, T, H], and saved. mask_bias [B, T] (0 for a real key, a large negative number for
    padding); position_bias [B or 1, NH, T, T] or None (MPNet). Weights as minibert.checkpoint.weights arranges them
    (qkv["w"] [H, 3H]). activation: a name of reference.ACTIVATIONS (BERT's "gelu" is the exact erf GELU).
    dropout: the probability of every dropout; drop_attention_output False leaves the attention output
    projection undropped (DistilBERT)."""
    H = x.shape[-1]
    fused, _ = linear_forward(x, qkv["w"], qkv["b"])                                     # [B, T, 3H]
    q, k, v = fused[..., :H], fused[..., H:2 * H], fused[..., 2 * H:]                    # 3 x [B, T, H]
    context, attention = attention_forward(q, k, v, mask_bias, num_heads, dropout, rng,
                                           position_bias)                               # [B, T, H]
    projected, _ = linear_forward(context, attn_out["w"], attn_out["b"])                 # [B, T, H]
    projected_dropped, projected_scale = dropout_forward(
        projected, dropout if drop_attention_output else 0.0, rng)                      # [B, T, H]
    residual1 = x + projected_dropped                                                   # [B, T, H]
    attended, ln1 = layer_norm_forward(residual1, attn_ln["g"], attn_ln["b"], eps)       # [B, T, H]
    pre_activation, _ = linear_forward(attended, ffn_in["w"], ffn_in["b"])               # [B, T, I]
    intermediate, _ = activation_forward(pre_activation, activation)                    # [B, T, I]
    ffn, _ = linear_forward(intermediate, ffn_out["w"], ffn_out["b"])                    # [B, T, H]
    ffn_dropped, ffn_scale = dropout_forward(ffn, dropout, rng)                          # [B, T, H]
    residual2 = attended + ffn_dropped                                                  # [B, T, H]
    out, ln2 = layer_norm_forward(residual2, ffn_ln["g"], ffn_ln["b"], eps)              # [B, T, H]
    return out, {"x": x, "query": q, "key": k, "value": v, "attention.probs": attention.probs,
                 "attention.context": context, "attention.output": projected, "attention.layer_norm": attended,
                 "ffn.intermediate": intermediate, "ffn.output": ffn,
                 # what the backward needs besides
                 "attention": attention, "projected_scale": projected_scale, "residual1": residual1, "ln1": ln1,
                 "pre_activation": pre_activation, "ffn_scale": ffn_scale, "residual2": residual2, "ln2": ln2}


def encoder_layer_backward(dout, mask_bias, position_bias, *, qkv, attn_out, attn_ln, ffn_in, ffn_out, ffn_ln,
                           num_heads, activation, saved, grads):
    """dout [B, T, H] -> (dx [B, T, H], dposition_bias [1, NH, T, T] or None); the layer's weight gradients
    are added into grads. The layer's input x is in saved."""
    s = saved
    dresidual2, dg, db = layer_norm_backward(dout, s["residual2"], ffn_ln["g"], s["ln2"])  # [B, T, H]
    grads["ffn_ln"]["g"] += dg
    grads["ffn_ln"]["b"] += db
    dffn = dropout_backward(dresidual2, s["ffn_scale"])                                 # [B, T, H]
    dintermediate, dw, db = linear_backward(dffn, s["ffn.intermediate"], ffn_out["w"])    # [B, T, I]
    add_linear_grads(grads["ffn_out"], dw, db)
    dpre = activation_backward(dintermediate, s["pre_activation"], activation)          # [B, T, I]
    dattended_ffn, dw, db = linear_backward(dpre, s["attention.layer_norm"], ffn_in["w"])   # [B, T, H]
    add_linear_grads(grads["ffn_in"], dw, db)
    dattended = dresidual2 + dattended_ffn               # the residual path and the feed-forward path
    dresidual1, dg, db = layer_norm_backward(dattended, s["residual1"], attn_ln["g"], s["ln1"])   # [B, T, H]
    grads["attn_ln"]["g"] += dg
    grads["attn_ln"]["b"] += db
    dprojected = dropout_backward(dresidual1, s["projected_scale"])                     # [B, T, H]
    dcontext, dw, db = linear_backward(dprojected, s["attention.context"], attn_out["w"])   # [B, T, H]
    add_linear_grads(grads["attn_out"], dw, db)
    dq, dk, dv, dposition_bias = attention_backward(dcontext, s["query"], s["key"], s["value"], mask_bias,
                                                    num_heads, position_bias, s["attention"])   # 3 x [B, T, H]
    dfused = np.concatenate([dq, dk, dv], axis=-1)                                      # [B, T, 3H]
    dx_attention, dw, db = linear_backward(dfused, s["x"], qkv["w"])                      # [B, T, H]
    add_linear_grads(grads["qkv"], dw, db)
    return dresidual1 + dx_attention, dposition_bias     # the residual path and the attention path


# ---- BERT's pretraining heads (minibert/heads.py reads them from the checkpoint) -------------------------------

def mlm_head_forward(x, *, transform, ln, decoder, activation, eps):
    """x [N, H] -> logits [N, V] = LayerNorm(act(x W_t + b_t)) D^T + b_d, and saved. decoder["w"] [V, E] is
    the word table itself when the checkpoint ties it."""
    pre, _ = linear_forward(x, transform["w"], transform["b"])                           # [N, E]
    act, _ = activation_forward(pre, activation)                                        # [N, E]
    h, ln_saved = layer_norm_forward(act, ln["g"], ln["b"], eps)                         # [N, E]
    logits = h @ decoder["w"].T + decoder["b"]                                          # [N, V]
    return logits, {"pre": pre, "act": act, "layer_norm": ln_saved, "h": h}


def mlm_head_backward(dlogits, x, *, transform, ln, decoder, activation, saved, grads):
    """dlogits [N, V] -> dx [N, H]; the head's gradients added into grads (decoder w [V, E]: with a tied
    decoder, the word table's gradient buffer, which so collects the lookup's and the decoder's parts)."""
    grads["decoder"]["w"] += dlogits.T @ saved["h"]                                     # [V, E]
    grads["decoder"]["b"] += dlogits.sum(axis=0)                                        # [V]
    dh = dlogits @ decoder["w"]                                                         # [N, E]
    dact, dg, db = layer_norm_backward(dh, saved["act"], ln["g"], saved["layer_norm"])   # [N, E]
    grads["ln"]["g"] += dg
    grads["ln"]["b"] += db
    dpre = activation_backward(dact, saved["pre"], activation)                         # [N, E]
    dx, dw, db = linear_backward(dpre, x, transform["w"])                               # [N, H]
    add_linear_grads(grads["transform"], dw, db)
    return dx


# ---- the sentence head on the pooler: tanh(x[CLS] W_p + b_p) W_s + b_s ----------------------------------------

def sentence_head_forward(first, *, pooler, head):
    """first [B, H] (the first token's hidden state) -> logits [B, 2], and saved (the pooler output)."""
    pre, _ = linear_forward(first, pooler["w"], pooler["b"])                             # [B, H]
    pooled = np.tanh(pre)                                                               # [B, H]
    logits, _ = linear_forward(pooled, head["w"], head["b"])                             # [B, 2]
    return logits, {"pooled": pooled}


def sentence_head_backward(dlogits, first, *, pooler, head, saved, grads):
    """dlogits [B, 2] -> dfirst [B, H]; gradients added into grads["pooler"] and grads["head"]."""
    dpooled, dw, db = linear_backward(dlogits, saved["pooled"], head["w"])                # [B, H]
    add_linear_grads(grads["head"], dw, db)
    dpre = dpooled * (1.0 - saved["pooled"] ** 2)                                       # tanh' from its output
    dfirst, dw, db = linear_backward(dpre, first, pooler["w"])                          # [B, H]
    add_linear_grads(grads["pooler"], dw, db)
    return dfirst
