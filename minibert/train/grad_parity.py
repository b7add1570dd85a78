"""Every parameter's gradient, minibert's backward pass against torch autograd (torch only for the reference).

`reference_grads` runs transformers' ForSequenceClassification / ForTokenClassification model on a batch
and returns its loss, logits, the head parameters it initialised and every parameter's gradient, under
transformers' names. Task "regression" is the sequence model with one output and the loss finetune trains
it on (train.objectives): loss "mse" is transformers' problem_type "regression" (MSELoss), "bce" its
"multi_label_classification" (BCEWithLogitsLoss, sentence-transformers' BinaryCrossEntropyLoss).
tests/fixtures/make_grad_goldens.py stores that as goldens. `compare_grads` runs
minibert's backprop on the same weights and inputs and gives one row per parameter, and `worst_per_block`
the worst of each block (embeddings, layer.i, pooler, head), as `minibert parity --grad` prints it.
Relative error of a tensor: max |ours - theirs| / max |theirs|, the denominator floored at 1e-6 of the
model's largest gradient entry. The floor is for gradients that are zero in exact arithmetic: the key
projection's bias shifts every key's score for a query by the same q . b_k, which softmax ignores, so both
frameworks return rounding noise (~1e-17) there and a plain ratio of noises would say nothing.
"""

import os
from pathlib import Path

import numpy as np

from .objectives import SAVED_AS, loss_and_grads
from ..checkpoint.config import read_config
from .hf_checkpoint import tensors_from_tree, tree_from_tensors
from ..checkpoint.weights import load_weights

NUM_LABELS = 3


def example_batch(config, seed=0, B=3, T=7):
    """A small padded batch of ids drawn with a seeded generator, real tokens avoiding the special ids
    below 5, rows of three lengths, a second segment where the model has token types."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, config.vocab_size, (B, T))                          # [B, T]
    lengths = [T, T - 2, max(T - 4, 2)][:B] + [T] * max(B - 3, 0)
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)   # [B, T]
    ids[mask == 0] = config.pad_token_id
    types = np.zeros((B, T), dtype=np.int64)                                   # [B, T]
    if config.type_vocab_size > 1:
        types[:, T // 2:] = mask[:, T // 2:]
    return ids, mask, types


def example_labels(mask, task, seed=0, loss=None):
    """Sequence: one label per row [B]; token: one per real token [B, T], -100 on padding and [CLS];
    regression: one float per row [B], in [0, 5] as STS scores for mse, in [0, 1] for bce."""
    rng = np.random.default_rng(seed + 1)
    if task == "regression":
        return rng.uniform(0, 1 if loss == "bce" else 5, mask.shape[0])              # [B]
    if task == "sequence":
        return rng.integers(0, NUM_LABELS, mask.shape[0])                      # [B]
    labels = rng.integers(0, NUM_LABELS, mask.shape)                           # [B, T]
    labels[mask == 0] = -100
    labels[:, 0] = -100
    return labels


def reference_grads(model_dir, task, ids, mask, types, labels, seed=0, loss=None):
    """transformers' task model in float64, dropout off (eval), head initialised by torch.manual_seed(seed).
    Returns {"loss", "logits", "params": {name: array} (head and pooler), "grads": {name: array}}."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    auto = {"sequence": transformers.AutoModelForSequenceClassification,
            "regression": transformers.AutoModelForSequenceClassification,
            "token": transformers.AutoModelForTokenClassification}[task]
    torch.manual_seed(seed)
    options = ({"num_labels": 1, "problem_type": SAVED_AS[loss or "mse"][0]} if task == "regression"
               else {"num_labels": NUM_LABELS})
    model = auto.from_pretrained(str(model_dir), **options, attn_implementation="eager")
    model = model.double().eval()
    config = read_config(os.path.join(str(model_dir), "config.json"))
    target = torch.from_numpy(np.asarray(labels))
    if task == "regression" and loss == "bce":       # BCEWithLogitsLoss takes labels shaped as the logits
        target = target[:, None]
    inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask), "labels": target}
    if config.token_type_embeddings:
        inputs["token_type_ids"] = torch.from_numpy(types)
    out = model(**inputs)
    out.loss.backward()
    named = dict(model.named_parameters())
    return {"loss": float(out.loss.detach()), "logits": out.logits.detach().numpy(),
            "params": {name: p.detach().numpy().copy() for name, p in named.items()
                       if "classifier" in name or "pooler" in name},
            "grads": {name: p.grad.numpy().copy() for name, p in named.items() if p.grad is not None}}


def minibert_grads(model_dir, task, ids, mask, types, labels, params, loss=None):
    """minibert's loss, logits and gradients (float64) under transformers' names, for the same weights:
    the checkpoint's encoder plus `params` (the head and any pooler the reference initialised)."""
    model_dir = Path(model_dir)
    config = read_config(model_dir / "config.json")
    template = load_weights(model_dir, config, np.float64)
    model_task = "token" if task == "token" else "sequence"
    weights, head = tree_from_tensors(params, config, task=model_task, dtype=np.float64, template=template)
    objective = (loss or "mse") if task == "regression" else "cross_entropy"
    value, logits, weights_grads, head_grads = loss_and_grads(ids, mask, types, labels, weights, head, config,
                                                              task=model_task, objective=objective)
    grads = tensors_from_tree(weights_grads, config, task=model_task, head=head_grads)
    return {"loss": float(value), "logits": logits, "grads": grads}


ZERO_FLOOR = 1e-6     # share of the model's largest gradient below which a tensor's gradient counts as zero


def relative_error(ours, theirs, floor=0.0):
    scale = max(float(np.max(np.abs(theirs))) if theirs.size else 0.0, floor)
    diff = float(np.max(np.abs(ours - theirs))) if theirs.size else 0.0
    return diff / scale if scale > 0 else diff


def compare_grads(ours, theirs):
    """Rows (name, relative error, max |theirs|) for every parameter the reference has a gradient for; a
    parameter minibert has no gradient for is a row with error inf."""
    largest = max((float(np.max(np.abs(g))) for g in theirs["grads"].values() if g.size), default=0.0)
    rows = []
    for name, reference in theirs["grads"].items():
        mine = ours["grads"].get(name)
        error = (float("inf") if mine is None or mine.shape != reference.shape
                 else relative_error(mine, reference, ZERO_FLOOR * largest))
        rows.append((name, error, float(np.max(np.abs(reference)))))
    return rows


def block_of(name):
    """'bert.encoder.layer.1.output.dense.weight' -> 'layer.1'; the embeddings, pooler, MPNet's relative
    position bias and the head by name."""
    parts = name.split(".")
    for marker in ("layer", "albert_layer_groups"):
        if marker in parts:
            i = parts.index(marker)
            if i + 1 < len(parts) and parts[i + 1].isdigit():
                return f"{marker}.{parts[i + 1]}"
    for block in ("embeddings_project", "embedding_hidden_mapping_in", "embeddings", "pooler",
                  "relative_attention_bias"):
        if any(part.startswith(block) for part in parts):
            return block
    return "head"


def worst_per_block(rows):
    """{block: (name, relative error)} with the worst parameter of each block."""
    worst = {}
    for name, error, _ in rows:
        block = block_of(name)
        if block not in worst or error > worst[block][1]:
            worst[block] = (name, error)
    return worst


def grad_report(model_dir, task="sequence", seed=0, loss=None):
    """Lines for `minibert parity --grad`: the worst parameter of each block, minibert against torch
    autograd in float64 on example_batch (needs torch and transformers). loss: regression's, mse or bce."""
    if loss is not None and task != "regression":      # else a --loss that changed nothing
        from ..errors import InputError
        raise InputError(f"--loss {loss} is the regression task's loss; --task {task} trains with cross-entropy")
    config = read_config(os.path.join(str(model_dir), "config.json"))
    ids, mask, types = example_batch(config, seed=seed)
    labels = example_labels(mask, task, seed=seed, loss=loss)
    reference = reference_grads(model_dir, task, ids, mask, types, labels, seed=seed, loss=loss)
    rows = compare_grads(minibert_grads(model_dir, task, ids, mask, types, labels, reference["params"], loss=loss),
                         reference)
    what = f"regression ({loss or 'mse'})" if task == "regression" else f"{task} classification"
    lines = [f"{what}, {len(rows)} parameters, float64, relative error per block (worst parameter):"]
    lines += [f"  {block:28s} {error:.2e}  {name}" for block, (name, error) in worst_per_block(rows).items()]
    return lines
