"""The encoder and the classification heads, forward and backward, for training: NumPy, BLAS matmuls, and Numba
kernels where NumPy's passes cost the time (kernels/cpu_backward.py).

The embeddings and each encoder layer compute kernels/reference_layers.py's unfused pair (the same layer the
walkthrough and the fused-path tests read), arranged for speed (layer_forward / layer_backward below; tests
compare the two); this module strings them into minibert/model.py's encoder and adds the heads and the loss.
Each forward returns what its backward needs (`saved`), and each backward sits right after its forward,
taking the gradient of the output first. Gradients go into a tree shaped like the weights (`empty_grads`):
a weight's first gradient is stored there and later ones added, so a set of layer weights used by several
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

import ctypes
import functools

import numpy as np

from ..kernels.reference import (activation_backward, activation_forward, attention_backward, attention_forward,
                                cross_entropy_backward, cross_entropy_forward, dropout_backward, dropout_forward,
                                embed_backward, layer_norm_backward, layer_norm_forward, linear_backward,
                                linear_forward, relative_position_bias_backward, relative_position_bias_forward)
from ..kernels.reference_layers import embeddings_forward
from ..checkpoint.config import RELATIVE_MAX_DISTANCE
from ..checkpoint.families import FAMILIES
from ..model import additive_mask, make_position_ids
from ..tree import map_tree

TASKS = ("sequence", "token")


# Views of the family records (families.py) that the forward and backward functions below read: each
# family's sequence head (a families.SequenceHead), and whether it drops out the attention output projection
# before the residual add (DistilBERT's TransformerBlock adds it as it is).
SEQUENCE_HEADS = {model_type: family.sequence_head for model_type, family in FAMILIES.items()}
ATTENTION_OUTPUT_DROPOUT = {model_type: family.attention_output_dropout for model_type, family in FAMILIES.items()}


# ---- gradients: written where first computed, added where a weight is used again -------------------------

def empty_grads(tree):
    """A tree shaped like `tree` (sharing its shared dicts: ALBERT's layers) with None at every array: a
    gradient is stored where it is first computed (add_grad) instead of added into a zeroed buffer, which
    saves a zeroing and an addition over every parameter each step (91 MB for MiniLM)."""
    return map_tree(tree, lambda array: None)


def add_grad(grads, name, value):
    """grads[name] += value; value itself where nothing is there yet (a fresh array the grads then own)."""
    if grads[name] is None:
        grads[name] = value
    else:
        grads[name] += value


def add_linear_grads(grads, dw, db):
    add_grad(grads, "w", dw)
    add_grad(grads, "b", db)


def finish_grads(grads, tree, seen=None):
    """Zeros where a parameter got no gradient (the pooler under a token head); an array found at several
    places of `tree` gets one gradient, the sum of its places', as zeros_like_tree's shared buffer would."""
    seen = {} if seen is None else seen                      # id(weight array) -> its gradient
    pairs = (tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ())
    for key, value in pairs:
        if isinstance(value, np.ndarray):
            grad = grads[key] if grads[key] is not None else np.zeros(value.shape, dtype=value.dtype)
            first = seen.setdefault(id(value), grad)
            if first is not grad:
                first += grad
            grads[key] = first
        else:
            finish_grads(grads[key], value, seen)
    return grads


# ---- the embeddings and one encoder layer, as reference_layers.py's, fused for training ------------------------
# The same layer and the same dropout draws as reference_layers.encoder_layer_forward / _backward (tests compare
# them), arranged for speed: every projection one 2-D matmul over the B*T rows (1.5x faster than NumPy's stack of
# per-text matmuls), GELU and its derivative one Numba pass each (kernels/cpu_backward.py), the GELU's erf
# evaluated once, in the forward, and kept for the backward; weight gradients stored, not added into zeros.

def linear_rows(x, w, b):
    """x [B, T, C_in] -> x @ w + b [B, T, C_out], as one matmul over the B*T rows."""
    y = x.reshape(-1, x.shape[-1]) @ w                                                  # [B*T, C_out]
    y += b
    return y.reshape(*x.shape[:-1], w.shape[1])                                         # [B, T, C_out]


def gelu_keeping_cdf(x):
    """x [...] -> (gelu(x), 1 + erf(x / sqrt 2)), kernels/cpu_backward.gelu_forward."""
    from ..kernels import cpu_backward
    dtype = x.dtype.type
    y, s = np.empty_like(x), np.empty_like(x)
    cpu_backward.gelu_forward(x.reshape(-1), y.reshape(-1), s.reshape(-1), dtype(0.5), dtype(1.0),
                              np.sqrt(2.0).astype(x.dtype))
    return y, s


# In float32, exp(-x^2 / 2) below e**-60 (|x| > 10.95) is taken as 0: what it adds is under 1e-26 of dy, and
# such products are subnormal numbers, each 100 times slower to compute than a normal one (pre-activations
# that far out are common: the backward's GELU took 6.6 ms a layer instead of 0.8 ms on a WNUT batch).
GELU_EXPONENT_FLOOR = {np.dtype(np.float32): -60.0, np.dtype(np.float64): -np.inf}


def gelu_backward(dy, x, s):
    """dy [...] -> dx [...], kernels/cpu_backward.gelu_backward (into a new array: written over dy, the loop
    would not vectorise, LLVM's overlap check failing, and would take 8x as long)."""
    from ..kernels import cpu_backward
    dtype = x.dtype.type
    dx = np.empty_like(dy)                                                              # [...]
    cpu_backward.gelu_backward(dy.reshape(-1), x.reshape(-1), s.reshape(-1), dx.reshape(-1), dtype(0.5),
                               dtype(-0.5), np.sqrt(2.0 * np.pi).astype(x.dtype),
                               dtype(GELU_EXPONENT_FLOOR[x.dtype]), dtype(0.0))
    return dx


def dropout_rows(x, p, rng, T):
    """dropout_forward of x [B, R, C], the first R of T rows: the draws for all T rows are made (and the
    first R used), so the random stream and the masks are those of the whole [B, T, C] array's dropout."""
    if x.shape[1] == T or p == 0 or rng is None:
        return dropout_forward(x, p, rng)                                               # [B, T, C]
    keep = rng.random((x.shape[0], T, x.shape[2]))[:, :x.shape[1]] >= p                  # [B, R, C] bool
    scale = keep.astype(x.dtype) / x.dtype.type(1.0 - p)                                 # [B, R, C]
    return x * scale, scale                                                             # [B, R, C]


def layer_forward(x, mask_bias, position_bias, *, qkv, attn_out, attn_ln, ffn_in, ffn_out, ffn_ln, num_heads,
                  activation, eps, dropout, drop_attention_output, rng, first_token_only=False):
    """x [B, T, H] -> [B, R, H] (R = T), and what layer_backward needs (reference_layers.encoder_layer_forward's
    arguments and names). first_token_only: the output of the first token alone (R = 1), for a sequence
    head on the last layer: every token's keys and values, then the attention output, the feed-forward
    block and their dropouts (the same draws) on one row per text instead of T (3/4 of the layer's work)."""
    B, T, H = x.shape
    fused = linear_rows(x, qkv["w"], qkv["b"])                                          # [B, T, 3H]
    q, k, v = fused[..., :H], fused[..., H:2 * H], fused[..., 2 * H:]                    # 3 x [B, T, H]
    context, attention = attention_forward(q, k, v, mask_bias, num_heads, dropout, rng,
                                           position_bias)                               # [B, T, H]
    rows = x[:, :1] if first_token_only else x          # [B, R, H]: the rows whose output is wanted, R 1 or T
    if first_token_only:
        context = np.ascontiguousarray(context[:, :1])                                  # [B, 1, H]
    projected = linear_rows(context, attn_out["w"], attn_out["b"])                      # [B, R, H]
    projected_dropped, projected_scale = dropout_rows(
        projected, dropout if drop_attention_output else 0.0, rng, T)                   # [B, R, H]
    residual1 = rows + projected_dropped                                                # [B, R, H]
    attended, ln1 = layer_norm_forward(residual1, attn_ln["g"], attn_ln["b"], eps)       # [B, R, H]
    pre_activation = linear_rows(attended, ffn_in["w"], ffn_in["b"])                    # [B, R, I]
    if activation == "gelu":
        intermediate, cdf = gelu_keeping_cdf(pre_activation)                            # 2 x [B, R, I]
    else:
        intermediate, cdf = activation_forward(pre_activation, activation)[0], None     # [B, R, I]
    ffn = linear_rows(intermediate, ffn_out["w"], ffn_out["b"])                         # [B, R, H]
    ffn_dropped, ffn_scale = dropout_rows(ffn, dropout, rng, T)                          # [B, R, H]
    residual2 = attended + ffn_dropped                                                  # [B, R, H]
    out, ln2 = layer_norm_forward(residual2, ffn_ln["g"], ffn_ln["b"], eps)              # [B, R, H]
    return out, {"x": x, "query": q, "key": k, "value": v, "attention": attention, "attention.context": context,
                 "projected_scale": projected_scale, "residual1": residual1, "ln1": ln1,
                 "attention.layer_norm": attended, "pre_activation": pre_activation, "gelu_cdf": cdf,
                 "ffn.intermediate": intermediate, "ffn_scale": ffn_scale, "residual2": residual2, "ln2": ln2}


def layer_backward(dout, mask_bias, position_bias, *, qkv, attn_out, attn_ln, ffn_in, ffn_out, ffn_ln, num_heads,
                   activation, saved, grads):
    """dout [B, R, H] (R = T, or 1 after first_token_only) -> (dx [B, T, H], dposition_bias [1, NH, T, T] or
    None); weight gradients into grads (add_grad). reference_layers.encoder_layer_backward's steps."""
    s = saved
    dresidual2, dg, db = layer_norm_backward(dout, s["residual2"], ffn_ln["g"], s["ln2"])  # [B, T, H]
    add_grad(grads["ffn_ln"], "g", dg)
    add_grad(grads["ffn_ln"], "b", db)
    dffn = dropout_backward(dresidual2, s["ffn_scale"])                                 # [B, T, H]
    dintermediate, dw, db = linear_backward(dffn, s["ffn.intermediate"], ffn_out["w"])    # [B, T, I]
    add_linear_grads(grads["ffn_out"], dw, db)
    if s["gelu_cdf"] is not None:
        dpre = gelu_backward(dintermediate, s["pre_activation"], s["gelu_cdf"])          # [B, T, I]
    else:
        dpre = activation_backward(dintermediate, s["pre_activation"], activation)      # [B, T, I]
    dattended_ffn, dw, db = linear_backward(dpre, s["attention.layer_norm"], ffn_in["w"])   # [B, T, H]
    add_linear_grads(grads["ffn_in"], dw, db)
    dattended = dresidual2 + dattended_ffn               # the residual path and the feed-forward path
    dresidual1, dg, db = layer_norm_backward(dattended, s["residual1"], attn_ln["g"], s["ln1"])   # [B, T, H]
    add_grad(grads["attn_ln"], "g", dg)
    add_grad(grads["attn_ln"], "b", db)
    dprojected = dropout_backward(dresidual1, s["projected_scale"])                     # [B, T, H]
    dcontext, dw, db = linear_backward(dprojected, s["attention.context"], attn_out["w"])   # [B, R, H]
    add_linear_grads(grads["attn_out"], dw, db)
    if dcontext.shape[1] != s["x"].shape[1]:             # first_token_only: the other tokens' context is unread
        dcontext = np.concatenate([dcontext, np.zeros((dcontext.shape[0], s["x"].shape[1] - dcontext.shape[1],
                                                       dcontext.shape[2]), dtype=dcontext.dtype)], axis=1)
    dq, dk, dv, dposition_bias = attention_backward(dcontext, s["query"], s["key"], s["value"], mask_bias,
                                                    num_heads, position_bias, s["attention"])   # 3 x [B, T, H]
    dfused = np.concatenate([dq, dk, dv], axis=-1)                                      # [B, T, 3H]
    dx_attention, dw, db = linear_backward(dfused, s["x"], qkv["w"])                      # [B, T, H]
    add_linear_grads(grads["qkv"], dw, db)
    dx_attention[:, :dresidual1.shape[1]] += dresidual1  # the residual path and the attention path
    return dx_attention, dposition_bias


def embeddings_backward(dout, input_ids, position_ids, token_type_ids, *, word, position, token_type, ln, saved,
                        grads):
    """dout [B, T, E] -> gradients into grads (add_grad); reference_layers.embeddings_backward's steps."""
    dnormed = dropout_backward(dout, saved["scale"])                                            # [B, T, E]
    dsummed, dg, db = layer_norm_backward(dnormed, saved["summed"], ln["g"], saved["layer_norm"])   # [B, T, E]
    add_grad(grads["ln"], "g", dg)
    add_grad(grads["ln"], "b", db)
    for name, grad in zip(("word", "position", "token_type"),
                          embed_backward(dsummed, input_ids, position_ids, token_type_ids, word, position,
                                         token_type)):
        add_grad(grads, name, grad)


# ---- the whole encoder -------------------------------------------------------------------------------------

def encoder_forward(input_ids, attention_mask, token_type_ids, weights, config, *, dropout, rng,
                    keep_activations=True, first_token_only=False):
    """ids [B, T] -> last hidden state [B, T, H] and, per step, what the backward needs. keep_activations
    False (prediction): each layer's activations are let go once the next layer has its input, so memory
    holds one layer's, not every layer's; there is then no backward. first_token_only: the last hidden
    state of the first token alone, [B, 1, H] (layer_forward's: what a sequence head reads)."""
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
    for i, layer_weights in enumerate(weights["layers"]):
        x, saved = layer_forward(x, mask_bias, position_bias, **layer_weights, num_heads=config.num_attention_heads,
                                 activation=config.hidden_act, eps=config.layer_norm_eps, dropout=dropout,
                                 drop_attention_output=ATTENTION_OUTPUT_DROPOUT[config.model_type], rng=rng,
                                 first_token_only=first_token_only and i == len(weights["layers"]) - 1)
        if keep_activations:
            saved_layers.append(saved)
    return x, {"input_ids": input_ids, "position_ids": position_ids, "token_type_ids": token_type_ids,
               "mask_bias": mask_bias, "position_bias": position_bias, "embeddings": saved_embeddings,
               "projection_input": projection_input, "layers": saved_layers}


def encoder_backward(dout, saved, weights, config, grads):
    """dout [B, T or 1, H] (gradient of the last hidden state) -> every encoder gradient added into grads (a tree
    shaped like weights: zeros, or empty_grads' Nones, which the first gradient of each weight replaces)."""
    dx = dout                                                                           # [B, T, H]
    position_bias = saved["position_bias"]                                              # [1, NH, T, T] or None
    dposition_bias = None if position_bias is None else np.zeros_like(position_bias)    # [1, NH, T, T]
    for layer_weights, layer_grads, layer_saved in reversed(list(zip(weights["layers"], grads["layers"],
                                                                      saved["layers"]))):
        dx, dlayer_bias = layer_backward(dx, saved["mask_bias"], position_bias, **layer_weights,
                                         num_heads=config.num_attention_heads, activation=config.hidden_act,
                                         saved=layer_saved, grads=layer_grads)           # [B, T, H]
        if dposition_bias is not None:
            dposition_bias += dlayer_bias                # one bias for every layer: it collects each use
    if dposition_bias is not None:
        add_grad(grads["relative_attention_bias"], "table", relative_position_bias_backward(
            dposition_bias, weights["relative_attention_bias"]["table"], position_bias.shape[-1],
            config.relative_attention_num_buckets, RELATIVE_MAX_DISTANCE))                # [buckets, NH]
    if weights.get("embedding_projection") is not None:
        dx, dw, db = linear_backward(dx, saved["projection_input"], weights["embedding_projection"]["w"])   # [B, T, E]
        add_linear_grads(grads["embedding_projection"], dw, db)
    embeddings_backward(dx, saved["input_ids"], saved["position_ids"], saved["token_type_ids"],
                        **weights["embeddings"], saved=saved["embeddings"], grads=grads["embeddings"])


# ---- heads -------------------------------------------------------------------------------------------------

def sequence_head_forward(hidden, weights, head, style, *, dropout, rng):
    """hidden [B, T or 1, H] -> logits [B, K] from the first token, by the family's SequenceHead style."""
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
    """dlogits [B, K] -> dhidden shaped like hidden (non-zero on the first token only)."""
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


# ---- memory between steps ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def keep_freed_memory():
    """On glibc, keep the memory a training step frees for the next step's arrays. A step allocates and frees
    about 130 MB of activations and gradients (MiniLM, 16 x 31 tokens); by default glibc hands most of it back
    to the system (arrays over its adaptive mmap threshold, and the top of the heap past its trim threshold),
    and the next step takes every page back with a page fault: 34,000 of them, 80 ms of a 600 ms step. After
    this call arrays under 32 MB come from the heap, and up to 256 MB of free heap stays with the process.
    The peak is unchanged; after training the process may hold up to 256 MB it no longer uses. Process-wide,
    done once; True when glibc took the settings (elsewhere nothing changes)."""
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3                  # glibc's malloc.h
    try:
        mallopt = ctypes.CDLL(None).mallopt                      # the C library Python itself runs on
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 256 << 20))
    except (OSError, AttributeError, TypeError):                 # no such C library or function (macOS, Windows)
        return False


# ---- the classifier: encoder, head, loss ---------------------------------------------------------------------

def classifier_forward(input_ids, attention_mask, token_type_ids, weights, head, config, *, task, dropout=0.0,
                       rng=None, keep_activations=True):
    """ids [B, T] -> logits ([B, K] for task "sequence", [B, T, K] for "token") and what the backward needs.
    dropout: the probability for every dropout (0, or rng None: evaluation). keep_activations False: for
    prediction, holding one layer's activations at a time (see encoder_forward)."""
    hidden, saved_encoder = encoder_forward(input_ids, attention_mask, token_type_ids, weights, config,
                                            dropout=dropout, rng=rng, keep_activations=keep_activations,
                                            first_token_only=task == "sequence")         # [B, T or 1, H]
    if task == "sequence":
        logits, steps = sequence_head_forward(hidden, weights, head, SEQUENCE_HEADS[config.model_type],
                                              dropout=dropout, rng=rng)                 # [B, K]
    else:
        logits, steps = token_head_forward(hidden, head, dropout=dropout, rng=rng)      # [B, T, K]
    return logits, {"encoder": saved_encoder, "hidden": hidden, "head": steps}


def classifier_backward(dlogits, saved, weights, head, config, *, task):
    """dlogits -> (gradient tree shaped like weights, gradient tree shaped like head)."""
    keep_freed_memory()                  # a training step: the next one reuses this one's memory
    weights_grads, head_grads = empty_grads(weights), empty_grads(head)
    if task == "sequence":
        dhidden = sequence_head_backward(dlogits, saved["head"], saved["hidden"], weights, head,
                                         SEQUENCE_HEADS[config.model_type], weights_grads=weights_grads,
                                         head_grads=head_grads)                          # [B, T, H]
    else:
        dhidden = token_head_backward(dlogits, saved["head"], saved["hidden"], head, head_grads=head_grads)
    encoder_backward(dhidden, saved["encoder"], weights, config, weights_grads)
    return finish_grads(weights_grads, weights), finish_grads(head_grads, head)


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
