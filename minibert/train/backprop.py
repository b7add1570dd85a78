"""The encoder and the classification heads, forward and backward, unfused, in plain NumPy, for training.

The embeddings and each encoder layer are the unfused pair of kernels/reference_layers.py (the same layer the
walkthrough and the fused-path tests read); this module strings them into minibert/model.py's encoder and adds
the heads and the loss. Each forward returns what its backward needs (`saved`), and each backward sits right
after its forward, taking the gradient of the output first. Gradients are added into a tree shaped like the
weights (`zeros_like_tree`), so a set of layer weights used by several layers (ALBERT) collects the gradient
of every use, as llm.c accumulates into named buffers. MPNet's
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

from ..kernels.reference import (activation_backward, activation_forward, cross_entropy_backward,
                                cross_entropy_forward, dropout_backward, dropout_forward, linear_backward,
                                linear_forward, relative_position_bias_backward, relative_position_bias_forward)
from ..kernels.reference_layers import (READERS_ONLY, add_linear_grads, embeddings_backward, embeddings_forward,
                                       encoder_layer_backward, encoder_layer_forward)
from ..checkpoint.config import RELATIVE_MAX_DISTANCE
from ..checkpoint.families import FAMILIES
from ..model import additive_mask, make_position_ids
from ..tree import zeros_like_tree

TASKS = ("sequence", "token")


# Views of the family records (families.py) that the forward and backward functions below read: each
# family's sequence head (a families.SequenceHead), and whether it drops out the attention output projection
# before the residual add (DistilBERT's TransformerBlock adds it as it is).
SEQUENCE_HEADS = {model_type: family.sequence_head for model_type, family in FAMILIES.items()}
ATTENTION_OUTPUT_DROPOUT = {model_type: family.attention_output_dropout for model_type, family in FAMILIES.items()}


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
                                                    config.relative_attention_num_buckets, RELATIVE_MAX_DISTANCE)[0]
                     if relative is not None else None)                                  # [1, NH, T, T] or None
    x, saved_embeddings = embeddings_forward(input_ids, position_ids, token_type_ids, **weights["embeddings"],
                                             eps=config.layer_norm_eps, dropout=dropout, rng=rng)   # [B, T, E]
    projection_input = x
    if weights.get("embedding_projection") is not None:
        projection = weights["embedding_projection"]
        x, _ = linear_forward(x, projection["w"], projection["b"])                      # [B, T, H]
    saved_layers = []
    for layer_weights in weights["layers"]:
        x, saved = encoder_layer_forward(x, mask_bias, position_bias, **layer_weights,
                                         num_heads=config.num_attention_heads, activation=config.hidden_act,
                                         eps=config.layer_norm_eps, dropout=dropout,
                                         drop_attention_output=ATTENTION_OUTPUT_DROPOUT[config.model_type], rng=rng)
        if keep_activations:
            saved_layers.append({name: value for name, value in saved.items() if name not in READERS_ONLY})
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
        dx, dlayer_bias = encoder_layer_backward(dx, saved["mask_bias"], position_bias, **layer_weights,
                                                 num_heads=config.num_attention_heads, activation=config.hidden_act,
                                                 saved=layer_saved, grads=layer_grads)   # [B, T, H]
        if dposition_bias is not None:
            dposition_bias += dlayer_bias                # one bias for every layer: it collects each use
    if dposition_bias is not None:
        grads["relative_attention_bias"]["table"] += relative_position_bias_backward(
            dposition_bias, weights["relative_attention_bias"]["table"], position_bias.shape[-1],
            config.relative_attention_num_buckets, RELATIVE_MAX_DISTANCE)                 # [buckets, NH]
    if weights.get("embedding_projection") is not None:
        dx, dw, db = linear_backward(dx, saved["projection_input"], weights["embedding_projection"]["w"])   # [B, T, E]
        add_linear_grads(grads["embedding_projection"], dw, db)
    embeddings_backward(dx, saved["input_ids"], saved["position_ids"], saved["token_type_ids"],
                        **weights["embeddings"], saved=saved["embeddings"], grads=grads["embeddings"])


# ---- heads -------------------------------------------------------------------------------------------------

def sequence_head_forward(hidden, weights, head, style, *, dropout, rng):
    """hidden [B, T, H] -> logits [B, K] from the first token, by the family's SequenceHead style."""
    steps = {}
    x = hidden[:, 0]                                                                     # [B, H]
    if style.pooler:
        steps["pooler_input"] = x
        steps["pooler_pre"], _ = linear_forward(x, weights["pooler"]["w"], weights["pooler"]["b"])   # [B, H]
        x, _ = activation_forward(steps["pooler_pre"], "tanh")                          # [B, H]
    if style.dense_activation:
        if style.dropout_before_dense:
            x, steps["dense_input_scale"] = dropout_forward(x, dropout, rng)             # [B, H]
        steps["dense_input"] = x
        steps["dense_pre"], _ = linear_forward(x, head["dense"]["w"], head["dense"]["b"])   # [B, H]
        x, _ = activation_forward(steps["dense_pre"], style.dense_activation)           # [B, H]
    x, steps["out_input_scale"] = dropout_forward(x, dropout, rng)                       # [B, H]
    steps["out_input"] = x
    return linear_forward(x, head["out"]["w"], head["out"]["b"])[0], steps               # [B, K]


def sequence_head_backward(dlogits, steps, hidden, weights, head, style, *, weights_grads, head_grads):
    """dlogits [B, K] -> dhidden [B, T, H] (non-zero on the first token only)."""
    dx, dw, db = linear_backward(dlogits, steps["out_input"], head["out"]["w"])           # [B, H]
    add_linear_grads(head_grads["out"], dw, db)
    dx = dropout_backward(dx, steps["out_input_scale"])                                 # [B, H]
    if style.dense_activation:
        dx = activation_backward(dx, steps["dense_pre"], style.dense_activation)         # [B, H]
        dx, dw, db = linear_backward(dx, steps["dense_input"], head["dense"]["w"])         # [B, H]
        add_linear_grads(head_grads["dense"], dw, db)
        if style.dropout_before_dense:
            dx = dropout_backward(dx, steps["dense_input_scale"])                      # [B, H]
    if style.pooler:
        dx = activation_backward(dx, steps["pooler_pre"], "tanh")                        # [B, H]
        dx, dw, db = linear_backward(dx, steps["pooler_input"], weights["pooler"]["w"])    # [B, H]
        add_linear_grads(weights_grads["pooler"], dw, db)
    dhidden = np.zeros_like(hidden)                                                     # [B, T, H]
    dhidden[:, 0] = dx
    return dhidden


def token_head_forward(hidden, head, *, dropout, rng):
    """hidden [B, T, H] -> logits [B, T, K], one prediction per token."""
    x, scale = dropout_forward(hidden, dropout, rng)                                     # [B, T, H]
    return linear_forward(x, head["out"]["w"], head["out"]["b"])[0], {"out_input": x, "out_input_scale": scale}


def token_head_backward(dlogits, steps, hidden, head, *, head_grads):
    """dlogits [B, T, K] -> dhidden [B, T, H]."""
    dx, dw, db = linear_backward(dlogits, steps["out_input"], head["out"]["w"])           # [B, T, H]
    add_linear_grads(head_grads["out"], dw, db)
    return dropout_backward(dx, steps["out_input_scale"])                               # [B, T, H]


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
