"""The encoder and the classification heads, forward and backward, unfused, in plain NumPy.

This is minibert/model.py's encoder written out op by op for training: every residual add, activation and
dropout is its own line, each forward returns what its backward needs (`saved`), and each backward sits
right after its forward with the same arguments, taking the gradient of the output first. Gradients are
added into a tree shaped like the weights (`zeros_like_tree`), so a set of layer weights used by several
layers (ALBERT) collects the gradient of every use, as llm.c accumulates into named buffers. MPNet's
relative position bias table is gathered once into a [1, NH, T, T] bias that every layer adds to its
scores; its gradient is every layer's d(bias), summed, scattered back onto the table rows.

Axes: B batch, T tokens, H hidden, NH heads, I intermediate, E embedding width, K classes.
Dropout follows BERT (transformers' BertModel): after the embedding LayerNorm, on the attention
probabilities, after the attention output projection (not DistilBERT: ATTENTION_OUTPUT_DROPOUT) and after
the feed-forward output. With p = 0 every dropout is the identity, and these functions compute what
model.encoder computes.

Heads (a dict of linear weights, `head`) follow each family's transformers class:
    sequence, BERT/ALBERT:   pooler(x[:, 0]) -> dropout -> out                        (ForSequenceClassification)
    sequence, RoBERTa/XLM-R: x[:, 0] -> dropout -> dense -> tanh -> dropout -> out     (ClassificationHead)
    sequence, ELECTRA:       x[:, 0] -> dropout -> dense -> gelu -> dropout -> out     (ClassificationHead)
    sequence, DistilBERT:    x[:, 0] -> pre_classifier -> relu -> dropout -> out
    sequence, MPNet:         as RoBERTa                                              (ClassificationHead)
    token, every family:     x -> dropout -> out, per token
"""

import numpy as np

from .kernels.reference_backward import (activation_backward, activation_forward, attention_backward,
                                         attention_forward, cross_entropy_backward, cross_entropy_forward,
                                         dropout_backward, dropout_forward, embed_backward, embed_forward,
                                         layer_norm_backward, layer_norm_forward, linear_backward,
                                         linear_forward, relative_position_bias_backward,
                                         relative_position_bias_forward)
from .config import RELATIVE_MAX_DISTANCE
from .families import FAMILIES
from .model import additive_mask, make_position_ids
from .tree import zeros_like_tree

TASKS = ("sequence", "token")


# Views of the family records (families.py) that the forward and backward functions below read: each
# family's sequence head (a families.SequenceHead), and whether it drops out the attention output projection
# before the residual add (DistilBERT's TransformerBlock adds it as it is).
SEQUENCE_HEADS = {model_type: family.sequence_head for model_type, family in FAMILIES.items()}
ATTENTION_OUTPUT_DROPOUT = {model_type: family.attention_output_dropout for model_type, family in FAMILIES.items()}


def add_linear_grads(grads, dw, db):
    grads["w"] += dw
    grads["b"] += db


# ---- embeddings ------------------------------------------------------------------------------------------

def embeddings_forward(input_ids, position_ids, token_type_ids, *, word, position, token_type, ln, eps,
                       dropout, rng):
    """Sum of the three lookups, LayerNorm, dropout: ids [B, T] -> [B, T, E]."""
    summed = embed_forward(input_ids, position_ids, token_type_ids, word, position, token_type)   # [B, T, E]
    normed, mean, rstd = layer_norm_forward(summed, ln["g"], ln["b"], eps)                     # [B, T, E]
    out, scale = dropout_forward(normed, dropout, rng)                                          # [B, T, E]
    return out, {"summed": summed, "mean": mean, "rstd": rstd, "scale": scale}


def embeddings_backward(dout, saved, input_ids, position_ids, token_type_ids, *, word, position, token_type,
                        ln, grads):
    """dout [B, T, E] -> gradients added into grads (the embeddings' gradient tree)."""
    dnormed = dropout_backward(dout, None, None, None, saved["scale"])                          # [B, T, E]
    dsummed, dg, db = layer_norm_backward(dnormed, saved["summed"], ln["g"], saved["mean"], saved["rstd"])
    grads["ln"]["g"] += dg
    grads["ln"]["b"] += db
    dword, dposition, dtype = embed_backward(dsummed, input_ids, position_ids, token_type_ids,
                                             word, position, token_type)
    grads["word"] += dword
    grads["position"] += dposition
    grads["token_type"] += dtype


# ---- one encoder layer: x = LN(x + attention(x)); x = LN(x + ffn(x)) -----------------------------------------

def encoder_layer_forward(x, mask_bias, position_bias, *, qkv, attn_out, attn_ln, ffn_in, ffn_out, ffn_ln, config,
                          dropout, rng):
    """x [B, T, H] -> [B, T, H], and the activations the backward needs. position_bias [1, NH, T, T] or None."""
    H, eps = x.shape[-1], config.layer_norm_eps
    fused = linear_forward(x, qkv["w"], qkv["b"])                                       # [B, T, 3H]
    q, k, v = fused[..., :H], fused[..., H:2 * H], fused[..., 2 * H:]                    # 3 x [B, T, H]
    context, probs, probs_scale = attention_forward(q, k, v, mask_bias, config.num_attention_heads,
                                                    dropout, rng, position_bias)        # [B, T, H]
    projected = linear_forward(context, attn_out["w"], attn_out["b"])                    # [B, T, H]
    projected_dropped, projected_scale = dropout_forward(
        projected, dropout if ATTENTION_OUTPUT_DROPOUT[config.model_type] else 0.0, rng)  # [B, T, H]
    residual1 = x + projected_dropped                                                   # [B, T, H]
    attended, mean1, rstd1 = layer_norm_forward(residual1, attn_ln["g"], attn_ln["b"], eps)   # [B, T, H]
    pre_activation = linear_forward(attended, ffn_in["w"], ffn_in["b"])                  # [B, T, I]
    intermediate = activation_forward(pre_activation, config.hidden_act)                 # [B, T, I]
    ffn = linear_forward(intermediate, ffn_out["w"], ffn_out["b"])                       # [B, T, H]
    ffn_dropped, ffn_scale = dropout_forward(ffn, dropout, rng)                          # [B, T, H]
    residual2 = attended + ffn_dropped                                                  # [B, T, H]
    out, mean2, rstd2 = layer_norm_forward(residual2, ffn_ln["g"], ffn_ln["b"], eps)      # [B, T, H]
    return out, {"x": x, "q": q, "k": k, "v": v, "probs": probs, "probs_scale": probs_scale,
                 "context": context, "projected_scale": projected_scale, "residual1": residual1,
                 "mean1": mean1, "rstd1": rstd1, "attended": attended, "pre_activation": pre_activation,
                 "intermediate": intermediate, "ffn_scale": ffn_scale, "residual2": residual2,
                 "mean2": mean2, "rstd2": rstd2}


def encoder_layer_backward(dout, saved, mask_bias, position_bias, *, qkv, attn_out, attn_ln, ffn_in, ffn_out, ffn_ln,
                           config, grads):
    """dout [B, T, H] -> (dx [B, T, H], dposition_bias [1, NH, T, T] or None); the layer's weight gradients
    are added into grads."""
    s = saved
    dresidual2, dg, db = layer_norm_backward(dout, s["residual2"], ffn_ln["g"], s["mean2"], s["rstd2"])   # [B, T, H]
    grads["ffn_ln"]["g"] += dg
    grads["ffn_ln"]["b"] += db
    dffn = dropout_backward(dresidual2, None, None, None, s["ffn_scale"])                # [B, T, H]
    dintermediate, dw, db = linear_backward(dffn, s["intermediate"], ffn_out["w"])        # [B, T, I]
    add_linear_grads(grads["ffn_out"], dw, db)
    dpre = activation_backward(dintermediate, s["pre_activation"], config.hidden_act)    # [B, T, I]
    dattended_ffn, dw, db = linear_backward(dpre, s["attended"], ffn_in["w"])             # [B, T, H]
    add_linear_grads(grads["ffn_in"], dw, db)
    dattended = dresidual2 + dattended_ffn               # the residual path and the feed-forward path
    dresidual1, dg, db = layer_norm_backward(dattended, s["residual1"], attn_ln["g"], s["mean1"], s["rstd1"])
    grads["attn_ln"]["g"] += dg
    grads["attn_ln"]["b"] += db
    dprojected = dropout_backward(dresidual1, None, None, None, s["projected_scale"])     # [B, T, H]
    dcontext, dw, db = linear_backward(dprojected, s["context"], attn_out["w"])           # [B, T, H]
    add_linear_grads(grads["attn_out"], dw, db)
    dq, dk, dv, dposition_bias = attention_backward(dcontext, s["q"], s["k"], s["v"], mask_bias,
                                                    config.num_attention_heads, None, None, s["probs"],
                                                    s["probs_scale"], position_bias)     # 3 x [B, T, H]
    dfused = np.concatenate([dq, dk, dv], axis=-1)                                      # [B, T, 3H]
    dx_attention, dw, db = linear_backward(dfused, s["x"], qkv["w"])                      # [B, T, H]
    add_linear_grads(grads["qkv"], dw, db)
    return dresidual1 + dx_attention, dposition_bias     # the residual path and the attention path


# ---- the whole encoder -------------------------------------------------------------------------------------

def encoder_forward(input_ids, attention_mask, token_type_ids, weights, config, *, dropout, rng,
                    keep_activations=True):
    """ids [B, T] -> last hidden state [B, T, H] and, per step, what the backward needs. keep_activations
    False (prediction): each layer's activations are let go once the next layer has its input, so memory
    holds one layer's, not every layer's; there is then no backward."""
    position_ids = make_position_ids(input_ids, config)                                 # [B, T]
    mask_bias = additive_mask(attention_mask, weights["embeddings"]["word"].dtype)       # [B, T]
    relative = weights.get("relative_attention_bias")
    position_bias = (relative_position_bias_forward(relative["table"], input_ids.shape[1],
                                                    config.relative_attention_num_buckets, RELATIVE_MAX_DISTANCE)
                     if relative is not None else None)                                  # [1, NH, T, T] or None
    x, saved_embeddings = embeddings_forward(input_ids, position_ids, token_type_ids, **weights["embeddings"],
                                             eps=config.layer_norm_eps, dropout=dropout, rng=rng)   # [B, T, E]
    projection_input = x
    if weights.get("embedding_projection") is not None:
        x = linear_forward(x, weights["embedding_projection"]["w"], weights["embedding_projection"]["b"])   # [B, T, H]
    saved_layers = []
    for layer_weights in weights["layers"]:
        x, saved = encoder_layer_forward(x, mask_bias, position_bias, **layer_weights, config=config, dropout=dropout,
                                         rng=rng)
        if keep_activations:
            saved_layers.append(saved)
    return x, {"input_ids": input_ids, "position_ids": position_ids, "token_type_ids": token_type_ids,
               "mask_bias": mask_bias, "position_bias": position_bias, "embeddings": saved_embeddings,
               "projection_input": projection_input, "layers": saved_layers}


def encoder_backward(dout, saved, weights, config, grads):
    """dout [B, T, H] (gradient of the last hidden state) -> every encoder gradient added into grads."""
    dx = dout                                                                           # [B, T, H]
    position_bias = saved["position_bias"]                                              # [1, NH, T, T] or None
    dposition_bias = None if position_bias is None else np.zeros_like(position_bias)    # [1, NH, T, T]
    for layer_weights, layer_grads, layer_saved in reversed(list(zip(weights["layers"], grads["layers"],
                                                                      saved["layers"]))):
        dx, dlayer_bias = encoder_layer_backward(dx, layer_saved, saved["mask_bias"], position_bias,
                                                 **layer_weights, config=config, grads=layer_grads)   # [B, T, H]
        if dposition_bias is not None:
            dposition_bias += dlayer_bias                # one bias for every layer: it collects each use
    if dposition_bias is not None:
        grads["relative_attention_bias"]["table"] += relative_position_bias_backward(
            dposition_bias, weights["relative_attention_bias"]["table"], position_bias.shape[-1],
            config.relative_attention_num_buckets, RELATIVE_MAX_DISTANCE)                 # [buckets, NH]
    if weights.get("embedding_projection") is not None:
        dx, dw, db = linear_backward(dx, saved["projection_input"], weights["embedding_projection"]["w"])   # [B, T, E]
        add_linear_grads(grads["embedding_projection"], dw, db)
    embeddings_backward(dx, saved["embeddings"], saved["input_ids"], saved["position_ids"],
                        saved["token_type_ids"], **weights["embeddings"], grads=grads["embeddings"])


# ---- heads -------------------------------------------------------------------------------------------------

def sequence_head_forward(hidden, weights, head, style, *, dropout, rng):
    """hidden [B, T, H] -> logits [B, K] from the first token, by the family's SequenceHead style."""
    steps = {}
    x = hidden[:, 0]                                                                     # [B, H]
    if style.pooler:
        steps["pooler_input"] = x
        x = activation_forward(linear_forward(x, weights["pooler"]["w"], weights["pooler"]["b"]), "tanh")   # [B, H]
        steps["pooled"] = x
    if style.dense_activation:
        if style.dropout_before_dense:
            x, steps["dense_input_scale"] = dropout_forward(x, dropout, rng)             # [B, H]
        steps["dense_input"] = x
        steps["dense_pre"] = linear_forward(x, head["dense"]["w"], head["dense"]["b"])    # [B, H]
        x = activation_forward(steps["dense_pre"], style.dense_activation)              # [B, H]
    x, steps["out_input_scale"] = dropout_forward(x, dropout, rng)                       # [B, H]
    steps["out_input"] = x
    return linear_forward(x, head["out"]["w"], head["out"]["b"]), steps                  # [B, K]


def sequence_head_backward(dlogits, steps, hidden, weights, head, style, *, weights_grads, head_grads):
    """dlogits [B, K] -> dhidden [B, T, H] (non-zero on the first token only)."""
    dx, dw, db = linear_backward(dlogits, steps["out_input"], head["out"]["w"])           # [B, H]
    add_linear_grads(head_grads["out"], dw, db)
    dx = dropout_backward(dx, None, None, None, steps["out_input_scale"])                 # [B, H]
    if style.dense_activation:
        dx = activation_backward(dx, steps["dense_pre"], style.dense_activation)         # [B, H]
        dx, dw, db = linear_backward(dx, steps["dense_input"], head["dense"]["w"])         # [B, H]
        add_linear_grads(head_grads["dense"], dw, db)
        if style.dropout_before_dense:
            dx = dropout_backward(dx, None, None, None, steps["dense_input_scale"])      # [B, H]
    if style.pooler:
        dx = dx * (1.0 - steps["pooled"] ** 2)                                           # tanh' from its output
        dx, dw, db = linear_backward(dx, steps["pooler_input"], weights["pooler"]["w"])    # [B, H]
        add_linear_grads(weights_grads["pooler"], dw, db)
    dhidden = np.zeros_like(hidden)                                                     # [B, T, H]
    dhidden[:, 0] = dx
    return dhidden


def token_head_forward(hidden, head, *, dropout, rng):
    """hidden [B, T, H] -> logits [B, T, K], one prediction per token."""
    x, scale = dropout_forward(hidden, dropout, rng)                                     # [B, T, H]
    return linear_forward(x, head["out"]["w"], head["out"]["b"]), {"out_input": x, "out_input_scale": scale}


def token_head_backward(dlogits, steps, hidden, head, *, head_grads):
    """dlogits [B, T, K] -> dhidden [B, T, H]."""
    dx, dw, db = linear_backward(dlogits, steps["out_input"], head["out"]["w"])           # [B, T, H]
    add_linear_grads(head_grads["out"], dw, db)
    return dropout_backward(dx, None, None, None, steps["out_input_scale"])               # [B, T, H]


# ---- the classifier: encoder, head, loss ---------------------------------------------------------------------

def classifier_forward(input_ids, attention_mask, token_type_ids, weights, head, config, *, task, dropout=0.0,
                       rng=None, keep_activations=True):
    """ids [B, T] -> logits ([B, K] for task "sequence", [B, T, K] for "token") and what the backward needs.
    dropout: the probability for every dropout (0, or rng None: evaluation). keep_activations False: for
    prediction, holding one layer's activations at a time (see encoder_forward)."""
    hidden, saved_encoder = encoder_forward(input_ids, attention_mask, token_type_ids, weights, config,
                                            dropout=dropout, rng=rng,
                                            keep_activations=keep_activations)           # [B, T, H]
    if task == "sequence":
        logits, steps = sequence_head_forward(hidden, weights, head, SEQUENCE_HEADS[config.model_type],
                                              dropout=dropout, rng=rng)                 # [B, K]
    else:
        logits, steps = token_head_forward(hidden, head, dropout=dropout, rng=rng)      # [B, T, K]
    return logits, {"encoder": saved_encoder, "hidden": hidden, "head": steps}


def classifier_backward(dlogits, saved, weights, head, config, *, task):
    """dlogits -> (gradient tree shaped like weights, gradient tree shaped like head)."""
    weights_grads, head_grads = zeros_like_tree(weights), zeros_like_tree(head)
    if task == "sequence":
        dhidden = sequence_head_backward(dlogits, saved["head"], saved["hidden"], weights, head,
                                         SEQUENCE_HEADS[config.model_type], weights_grads=weights_grads,
                                         head_grads=head_grads)                          # [B, T, H]
    else:
        dhidden = token_head_backward(dlogits, saved["head"], saved["hidden"], head, head_grads=head_grads)
    encoder_backward(dhidden, saved["encoder"], weights, config, weights_grads)
    return weights_grads, head_grads


def loss_and_grads(input_ids, attention_mask, token_type_ids, labels, weights, head, config, *, task,
                   dropout=0.0, rng=None):
    """Mean cross-entropy over the labelled examples (sequence: labels [B]; token: labels [B, T], -100 where
    a token does not count) and the gradient of every parameter: (loss, logits, weights_grads, head_grads)."""
    logits, saved = classifier_forward(input_ids, attention_mask, token_type_ids, weights, head, config,
                                       task=task, dropout=dropout, rng=rng)
    K = logits.shape[-1]
    flat_logits, flat_labels = logits.reshape(-1, K), np.asarray(labels).reshape(-1)      # [N, K], [N]
    loss, probs = cross_entropy_forward(flat_logits, flat_labels)                         # scalar, [N, K]
    dlogits = cross_entropy_backward(logits.dtype.type(1.0), flat_logits, flat_labels, probs).reshape(logits.shape)
    weights_grads, head_grads = classifier_backward(dlogits, saved, weights, head, config, task=task)
    return loss, logits, weights_grads, head_grads
