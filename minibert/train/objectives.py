"""What a one-output model trains toward and how its dev set is scored: the loss on the output, forward above
backward, `loss_and_grads` for every objective, and the correlations sentence-transformers reports.

    objective      task             loss on the output z [B] and labels y [B]       as the references train it
    cross_entropy  sequence, token  softmax cross-entropy (backprop.loss_and_grads) transformers' single label
    mse            regression       mean (z - y)^2 on the raw output                transformers' problem_type
                                                                                    "regression" (MSELoss)
    bce            regression,      mean -(y log s + (1 - y) log(1 - s)),           sentence-transformers'
                   y in [0, 1]      s = sigmoid(z), computed from z                 BinaryCrossEntropyLoss
                                                                                    (BCEWithLogitsLoss)

A saved model says which it is where both references read it (SAVED_AS): config.json's problem_type, which
transformers trains it on again with (one output and "multi_label_classification" is BCEWithLogitsLoss), and
sentence-transformers' activation, which CrossEncoder.predict applies: Identity for mse, so it returns the
regression value; Sigmoid for bce, so it returns the probability the loss was computed on.

Axes: B batch, N examples.
"""

import numpy as np

from .backprop import classifier_backward, classifier_forward
from .backprop import loss_and_grads as cross_entropy_loss_and_grads
from .crossencoder import sigmoid

LOSSES = ("mse", "bce")
# objective -> (config.json's problem_type, sentence-transformers' activation)
SAVED_AS = {"mse": ("regression", "Identity"), "bce": ("multi_label_classification", "Sigmoid")}
SCORE_METRICS = ("dev_mse", "dev_pearson", "dev_spearman")
BEST_SCORE_METRIC = "dev_spearman"     # CrossEncoderCorrelationEvaluator's primary metric


def mse_forward(z, y):
    """z [B] outputs, y [B] labels -> mean squared error (scalar) and the differences [B] for the backward."""
    diff = z - y                                                                         # [B]
    return z.dtype.type(np.mean(diff * diff)), diff


def mse_backward(dloss, diff):
    """dloss (scalar) -> dz [B] = dloss 2 (z - y) / B."""
    return dloss * 2 * diff / diff.size                                                  # [B]


def bce_with_logits_forward(z, y):
    """z [B] logits, y [B] labels in [0, 1] -> mean binary cross-entropy of sigmoid(z) (scalar) and
    sigmoid(z) [B]. Written as max(z, 0) - z y + log(1 + e^-|z|): finite for any z, as torch computes it."""
    loss = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    return z.dtype.type(loss), sigmoid(z)


def bce_with_logits_backward(dloss, probs, y):
    """dloss (scalar) -> dz [B] = dloss (sigmoid(z) - y) / B."""
    return dloss * (probs - y) / probs.size                                              # [B]


def loss_and_grads(input_ids, attention_mask, token_type_ids, labels, weights, head, config, *, task, objective,
                   dropout=0.0, rng=None):
    """backprop.loss_and_grads for any objective: (loss, logits, weights_grads, head_grads). mse and bce: a
    sequence head with one output, labels [B] floats."""
    if objective == "cross_entropy":
        return cross_entropy_loss_and_grads(input_ids, attention_mask, token_type_ids, labels, weights, head,
                                            config, task=task, dropout=dropout, rng=rng)
    logits, saved = classifier_forward(input_ids, attention_mask, token_type_ids, weights, head, config,
                                       task="sequence", dropout=dropout, rng=rng)        # [B, 1]
    z, y = logits[:, 0], np.asarray(labels, dtype=logits.dtype)                          # [B], [B]
    one = logits.dtype.type(1.0)
    if objective == "mse":
        loss, diff = mse_forward(z, y)
        dz = mse_backward(one, diff)                                                     # [B]
    else:
        loss, probs = bce_with_logits_forward(z, y)
        dz = bce_with_logits_backward(one, probs, y)                                     # [B]
    weights_grads, head_grads = classifier_backward(dz[:, None], saved, weights, head, config, task="sequence")
    return loss, logits, weights_grads, head_grads


# ---- dev metrics -------------------------------------------------------------------------------------------

def average_ranks(x):
    """Ranks 1..N of x [N], tied values sharing the mean of their ranks (scipy.stats.rankdata's default)."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])                  # first of each run
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2                                  # mean of start+1..end
    return ranks


def pearson(a, b):
    """Pearson's r of a [N] and b [N] in float64; NaN where either is constant (no correlation defined)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)                           # [N], [N]
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 0 else float("nan")


def spearman(a, b):
    """Spearman's rho: Pearson's r of the average ranks (scipy.stats.spearmanr without NaN handling)."""
    return pearson(average_ranks(np.asarray(a)), average_ranks(np.asarray(b)))


def score_metrics(scores, labels):
    """{dev_mse, dev_pearson, dev_spearman} of the scores CrossEncoder.predict gives (the stored activation
    applied) against the labels, as sentence-transformers' CrossEncoderCorrelationEvaluator scores them."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    return {"dev_mse": float(np.mean((scores - labels) ** 2)), "dev_pearson": pearson(scores, labels),
            "dev_spearman": spearman(scores, labels)}


def improves(metric, best):
    """Whether a dev metric beats the best so far (higher is better); a NaN correlation never does, and
    anything beats a NaN."""
    return not np.isnan(metric) and (best is None or np.isnan(best) or metric > best)
