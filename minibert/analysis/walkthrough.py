"""A guided run through the encoder for one sentence: `python -m minibert.analysis.walkthrough "text"`.

At each step it prints where the code is, the shape, and a few numbers from minibert next to the same
numbers recomputed from the formula in plain NumPy: the unfused embeddings and layer of
kernels/reference_layers.py, which training also runs (no backend op is called for the recomputation; only
the weights are shared). A checkpoint with BERT's own heads adds them and their losses (MLM, NSP).
Read docs/walkthrough.md beside it.

Axes: T tokens, H hidden, NH heads, HS head size, I intermediate.
"""

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from ..checkpoint.config import RELATIVE_MAX_DISTANCE
from ..kernels import reference, reference_layers

DEFAULT_TEXT = "The cat sat on the mat."


@dataclass
class Step:
    name: str              # what this step computes
    where: str             # "module: function" that computes it in minibert
    formula: str           # the formula, as in docs/walkthrough.md
    ours: np.ndarray       # minibert's result for the sentence (batch axis dropped)
    theirs: np.ndarray     # the formula's result, computed here

    @property
    def max_diff(self):
        return float(np.abs(np.asarray(self.ours, np.float64) - np.asarray(self.theirs, np.float64)).max())


# The formulas, one small function each, on a single sentence (no batch axis, no padding).

def formula_layer(x, w, config, bias_table=None):
    """One encoder layer of one text x [T, H] from the formulas: kernels/reference_layers.py
    `encoder_layer_forward`, the unfused layer training also runs (nothing fused, the residual adds and erf
    GELU on lines of their own). Returns every intermediate by its capture name, and "out". bias_table
    [32, NH]: MPNet's relative position bias."""
    from ..model import INTERNALS
    T = x.shape[0]
    bias = (None if bias_table is None else
            reference.relative_position_bias_forward(bias_table, T, config.relative_attention_num_buckets,
                                                     RELATIVE_MAX_DISTANCE)[0])      # [1, NH, T, T]
    out, inside = reference_layers.encoder_layer_forward(
        x[None], np.zeros((1, T), x.dtype), bias, **w, num_heads=config.num_attention_heads,
        activation=config.hidden_act, eps=config.layer_norm_eps)                     # [1, T, H]
    return {**{name: inside[name][0] for name in INTERNALS}, "out": out[0]}


def walkthrough(model, text=DEFAULT_TEXT):
    """Run `text` through minibert and through the formulas; returns (tokens, ids, [Step, ...])."""
    from ..model import make_position_ids
    from ..embed.pooling import l2_normalize, pool
    c, w = model.config, model.weights
    batch = model.tokenize([text])
    ids, mask, types = batch.input_ids, batch.attention_mask, batch.token_type_ids   # [1, T]
    out = model.forward(ids, mask, types, output_attentions=True, capture="layer1.*")
    positions = make_position_ids(ids, c)[0]                        # [T]
    steps = []
    x, _ = reference_layers.embeddings_forward(ids, positions[None], types, **w["embeddings"],
                                               eps=c.layer_norm_eps)                # [1, T, E]
    x = x[0]                                                                        # [T, E]
    if w.get("embedding_projection") is not None:                   # ALBERT, ELECTRA: E -> H
        x, _ = reference.linear_forward(x, w["embedding_projection"]["w"], w["embedding_projection"]["b"])   # [T, H]
    steps.append(Step("embeddings", "minibert/model.py: embeddings",
                      "LayerNorm(word[ids] + position[positions] + token_type[types])", out.hidden_states[0][0], x))
    table = (w.get("relative_attention_bias") or {}).get("table")   # MPNet's [32, NH], else None
    inside = formula_layer(x, w["layers"][0], c, table)
    detail = [("query", "x Wq + bq  (one fused matmul x [Wq|Wk|Wv] in minibert)"),
              ("key", "x Wk + bk"), ("value", "x Wv + bv"),
              ("attention.probs", "softmax(Q_h K_h^T / sqrt(HS) + mask), per head h"
                                  + (" (+ relative position bias)" if table is not None else "")),
              ("attention.context", "concat_h(probs_h V_h)"),
              ("attention.output", "context Wo + bo"),
              ("attention.layer_norm", "LayerNorm(x + attention.output)"),
              ("ffn.intermediate", f"{c.hidden_act}(a W1 + b1)"),
              ("ffn.output", "intermediate W2 + b2")]
    for name, formula in detail:
        where = "minibert/model.py: feed_forward" if name.startswith("ffn") else "minibert/model.py: self_attention"
        ours = out.attentions[0][0] if name == "attention.probs" else out.captured[f"layer1.{name}"][0]
        steps.append(Step(f"layer 1 {name}", where, formula, ours, inside[name]))
    x = inside["out"]
    steps.append(Step("layer 1 output", "minibert/model.py: encoder_layer", "LayerNorm(a + ffn.output)",
                      out.hidden_states[1][0], x))
    for i in range(1, c.num_hidden_layers):
        x = formula_layer(x, w["layers"][i], c, table)["out"]
        steps.append(Step(f"layer {i + 1} output", "minibert/model.py: encoder_layer",
                          "the same layer, its own weights",
                          out.hidden_states[i + 1][0], x))
    # What model.encode(text) does with the last layer (minibert/embed/encode.py: encode calls these two).
    pooled = pool(out.hidden_states[-1], mask, "mean")                  # [1, H]
    steps.append(Step("mean pooling", "minibert/embed/pooling.py: pool", "mean over the T tokens of the last layer",
                      pooled[0], x.mean(0)))
    steps.append(Step("normalised", "minibert/embed/pooling.py: l2_normalize", "v / ||v||",
                      l2_normalize(pooled)[0], x.mean(0) / np.linalg.norm(x.mean(0))))
    if out.pooler_output is not None:
        steps.append(Step("pooler", "minibert/model.py: pooler", "tanh(h_[CLS] Wp + bp)", out.pooler_output[0],
                          np.tanh(x[0] @ w["pooler"]["w"] + w["pooler"]["b"])))
    if model.heads.mlm is not None:                                 # a checkpoint saved with BERT's own heads
        steps += head_steps(model, batch, out, x)
    return batch.tokens[0], ids[0], steps


def head_steps(model, batch, out, x):
    """The pretraining heads and their losses on the sentence: every real token predicts itself (labels = its
    id, the special tokens -100), and the sentence head's label is 0 ("the second segment follows")."""
    from ..heads import mlm_logits, sentence_head
    from ..train.pretrain import loss_and_grads
    heads, c, w = model.heads, model.config, model.weights
    ids = batch.input_ids[0]                                                        # [T]
    labels = np.where(np.asarray(batch.sequence_ids[0]) == -1, -100, ids)           # [T]
    theirs, _ = reference_layers.mlm_head_forward(x, **heads.mlm, activation=heads.activation, eps=heads.eps)   # [T, V]
    sentence = heads.sentence is not None and out.pooler_output is not None
    losses, _ = loss_and_grads(batch.input_ids, batch.attention_mask, batch.token_type_ids, w, heads, c,
                               mlm_labels=labels[None], sentence_labels=np.array([0]) if sentence else None)
    counted = labels != -100                                                        # [T]
    shifted = theirs - theirs.max(-1, keepdims=True)                                # [T, V]
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))            # [T, V] log P(v | X)
    steps = [Step("MLM logits", "minibert/heads.py: mlm_logits",
                  f"LayerNorm({heads.activation}(h W_t + b_t)) D^T + b_d  (D: the word table{', tied' * heads.tied})",
                  mlm_logits(out.hidden_states[-1], heads)[0], theirs)]
    if counted.any():        # a text of special tokens only has no token to predict: no loss to compare
        steps.append(Step("MLM loss", "minibert/train/pretrain.py: loss_and_grads",
                          "L_MLM = -1/|M| sum_{i in M} log P(x_i | X)   (M: every real token, predicting itself)",
                          np.asarray(losses["mlm"]), -log_probs[counted, ids[counted]].mean()))
    if sentence:
        pair, _ = reference_layers.sentence_head_forward(x[:1], pooler=w["pooler"], head=heads.sentence)   # [1, 2]
        pair_log_probs = pair[0] - np.log(np.exp(pair[0]).sum())                    # [2]
        steps += [Step("NSP logits", "minibert/heads.py: sentence_head", "tanh(h_[CLS] Wp + bp) W_s + b_s",
                       sentence_head(out.pooler_output, **heads.sentence)[0], pair[0]),
                  Step("NSP loss", "minibert/train/pretrain.py: loss_and_grads",
                       "L_NSP = -log P(y | [CLS])   (y = 0: the second segment follows the first)",
                       np.asarray(losses["sentence"]), -pair_log_probs[0])]
    return steps


def few(a, n=4):
    flat = np.asarray(a, np.float64).reshape(-1)[:n]
    return "[" + " ".join(f"{v:+.6f}" for v in flat) + (" ...]" if np.size(a) > n else "]")


def report(tokens, ids, steps, model):
    c = model.config
    yield f"model  {model.source}\n       {c.num_hidden_layers} layers, H {c.hidden_size}, " \
          f"{c.num_attention_heads} heads " \
          f"(HS {c.hidden_size // c.num_attention_heads}), I {c.intermediate_size}, {np.dtype(model.dtype).name}, " \
          f"backend {model.backend}"
    yield "\ntokens  minibert/tokenizer.py: Tokenizer.__call__"
    yield f"        {tokens}\n        ids {ids.tolist()}  shape [1, {len(ids)}]"
    for n, s in enumerate(steps, 1):
        shape = list(np.shape(s.ours))
        yield f"\n{n:>2}. {s.name:<28}{s.where}\n    formula   {s.formula}\n    shape     {shape}" \
              f"\n    minibert  {few(s.ours)}\n    formula   {few(s.theirs)}\n    max |diff| {s.max_diff:.1e}"
    worst = max(steps, key=lambda s: (np.isnan(s.max_diff), s.max_diff))     # a NaN is the worst, not skipped
    yield f"\nlargest difference: {worst.max_diff:.1e} ({worst.name})"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minibert.analysis.walkthrough", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", nargs="?", default=DEFAULT_TEXT)
    parser.add_argument("--model", default=None, help="model directory or hub id (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                        help="float64 (default) shows agreement to rounding; float32 is what encode uses")
    args = parser.parse_args(argv)
    import minibert
    from ..errors import MiniBertError
    try:
        # The NumPy reference backend: the walkthrough reads the same code path a newcomer reads.
        model = minibert.load(args.model, backend="numpy", dtype=args.dtype)
        tokens, ids, steps = walkthrough(model, args.text)
    except MiniBertError as e:      # one line, as the minibert command prints it
        print(f"minibert: error: {e}", file=sys.stderr)
        return 1
    for block in report(tokens, ids, steps, model):
        print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
