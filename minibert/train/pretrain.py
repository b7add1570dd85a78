"""BERT's pretraining losses and their gradients, on train/backprop.py's encoder and the heads' ops.

    L_MLM = -1/|M| sum_{i in M} log P(x_i | X)       M: the positions with a label (labels -100 do not count)
    L_NSP = -1/B sum_b log P(y_b | [CLS]_b)          y: 0 when the second text follows the first (ALBERT: in order)
    L = L_MLM + L_NSP                                 transformers' BertForPreTraining / AlbertForPreTraining .loss

The encoder runs through backprop.encoder_forward / encoder_backward; the heads through
kernels/reference_layers.py; the corpus's blocks and their masking are train/blocks.py. A tied decoder is the
word embedding table itself, and its gradient buffer is the word table's (zeros_like_tree shares buffers where
the weights share arrays), so the table collects both the lookup's and the decoder's contributions, as torch
autograd does.

Axes: B batch, T tokens, H hidden, N labelled tokens, V vocabulary.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .backprop import encoder_backward, encoder_forward
from .blocks import (HOLD_OUT_ADVICE, Blocks, check_block_size, group_texts, mask_tokens, split_documents,
                     widen_held_out)
from ..checkpoint.families import family_of
from ..errors import InputError
from ..kernels.reference import IGNORE_INDEX, cross_entropy_backward, cross_entropy_forward
from ..kernels.reference_layers import (mlm_head_backward, mlm_head_forward, sentence_head_backward,
                                        sentence_head_forward)
from ..tree import zeros_like_tree


def loss_and_grads(input_ids, attention_mask, token_type_ids, weights, heads, config, *, mlm_labels,
                   sentence_labels=None, dropout=0.0, rng=None):
    """Pretraining loss (MLM, plus the sentence head's when sentence_labels [B] are given) and the gradient of
    every parameter. Returns (losses {"mlm", "sentence" (or absent), "total"}, grads {"encoder": tree shaped like
    weights, "mlm": tree shaped like heads.mlm, "sentence": tree or None}); with a tied decoder
    grads["mlm"]["decoder"]["w"] IS grads["encoder"]["embeddings"]["word"] (both contributions)."""
    mlm = heads.require("mlm")
    sentence = heads.require("sentence") if sentence_labels is not None else None
    grads = zeros_like_tree({"encoder": weights, "mlm": mlm, "sentence": sentence})
    hidden, saved = encoder_forward(input_ids, attention_mask, token_type_ids, weights, config, dropout=dropout,
                                    rng=rng)                                        # [B, T, H]
    labels = np.asarray(mlm_labels)                                                  # [B, T]
    rows = labels != IGNORE_INDEX                                                    # [B, T]
    selected = hidden[rows]                                                          # [N, H]
    logits, head_saved = mlm_head_forward(selected, **mlm, activation=heads.activation, eps=heads.eps)   # [N, V]
    mlm_loss, probs = cross_entropy_forward(logits, labels[rows])
    one = hidden.dtype.type(1.0)
    dhidden = np.zeros_like(hidden)                                                  # [B, T, H]
    dlogits = cross_entropy_backward(one, logits, labels[rows], probs)               # [N, V]
    dhidden[rows] = mlm_head_backward(dlogits, selected, **mlm, activation=heads.activation, saved=head_saved,
                                      grads=grads["mlm"])
    losses = {"mlm": mlm_loss}
    if sentence is not None:
        pair_logits, pair_saved = sentence_head_forward(hidden[:, 0], pooler=weights["pooler"], head=sentence)
        sentence_loss, pair_probs = cross_entropy_forward(pair_logits, np.asarray(sentence_labels))   # [B, 2]
        dpair = cross_entropy_backward(one, pair_logits, np.asarray(sentence_labels), pair_probs)       # [B, 2]
        dhidden[:, 0] += sentence_head_backward(dpair, hidden[:, 0], pooler=weights["pooler"], head=sentence,
                                                saved=pair_saved, grads={"pooler": grads["encoder"]["pooler"],
                                                                         "head": grads["sentence"]})
        losses["sentence"] = sentence_loss
    encoder_backward(dhidden, saved, weights, config, grads["encoder"])
    losses["total"] = sum(losses.values())
    return losses, grads


def grads_by_name(grads, heads, config) -> dict:
    """loss_and_grads' gradients under transformers' parameter names (the ...ForPreTraining / ...ForMaskedLM
    model's), as torch's named_parameters gives them: a tied decoder has no name of its own (its gradient is in
    the word table's), a bias saved under two names is the one the model computes with."""
    from .hf_checkpoint import split_arranged, tensors_from_tree
    out = tensors_from_tree(grads["encoder"], config, task="encoder")
    table = family_of(config).pretraining_heads
    for rows, tree in ((table.mlm, grads["mlm"]), (table.sentence, grads.get("sentence"))):
        for ours, theirs, arrangement in rows if tree is not None else ():
            if ours == "decoder.w" and heads.tied:
                continue
            if arrangement == "first_present":
                theirs = theirs[0] if heads.tied else theirs[-1]
                arrangement = "as_is"
            node = tree
            for key in ours.split("."):
                node = node[key]
            out.update(split_arranged(node, theirs, arrangement))
    return out


# ---- a masked-LM checkpoint transformers loads -------------------------------------------------------------

def save_masked_lm(directory, weights, mlm, config, *, tied, source_dir, tokenizer_dir):
    """model.safetensors under the ...ForMaskedLM model's names (the encoder with its pooler, which
    ...ForSequenceClassification reads later, and the MLM head; a tied decoder left out, as transformers
    saves it), config.json with that architecture, and the tokenizer files."""
    import shutil

    from safetensors.numpy import save_file

    from .classifier import TOKENIZER_FILES
    from .hf_checkpoint import split_arranged, tensors_from_tree
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = tensors_from_tree(weights, config, task="encoder")
    if config.sinusoidal_positions:           # transformers rebuilds the fixed table itself
        tensors = {n: t for n, t in tensors.items() if not n.endswith("position_embeddings.weight")}
    for ours, theirs, arrangement in family_of(config).pretraining_heads.mlm:
        if ours == "decoder.w" and tied:
            continue
        node = mlm
        for key in ours.split("."):
            node = node[key]
        for name in ((theirs,) if isinstance(theirs, str) else theirs):   # a bias saved under both its names
            tensors.update(split_arranged(node, name, "as_is" if arrangement == "first_present" else arrangement))
    save_file({name: np.ascontiguousarray(t, dtype=np.float32) for name, t in tensors.items()},
              str(directory / "model.safetensors"), metadata={"format": "pt"})
    raw = json.loads((Path(source_dir) / "config.json").read_text(encoding="utf-8"))
    raw["architectures"] = [family_of(config).architecture + "ForMaskedLM"]
    for key in [k for k in ("torch_dtype", "dtype") if k in raw] or ["torch_dtype"]:
        raw[key] = "float32"
    (directory / "config.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file() and Path(tokenizer_dir).resolve() != directory.resolve():
            shutil.copyfile(Path(tokenizer_dir) / name, directory / name)
    return directory


# ---- continued pretraining ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PretrainRecipe:
    """How to continue MLM pretraining. Defaults are transformers' run_mlm.py / Trainer ones."""
    epochs: int = 3
    lr: float = 5e-5                 # peak learning rate, reached after the warmup
    batch_size: int = 8
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0        # decoupled (AdamW); never on biases and LayerNorm weights
    betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    dropout: float = 0.1             # every dropout of the encoder while training
    max_length: Optional[int] = None  # the block size in tokens (default: the model's limit)
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    validation_split: float = 0.05   # share of the documents (the first ones, as run_mlm) held out when no dev
    seed: int = 0                    # batch order, masks, dropout
    dtype: str = "float32"
    patience: Optional[int] = None   # stop when the held-out loss has not improved for this many epochs


@dataclass
class PretrainResult:
    weights: dict                    # the encoder (with the source's pooler, untouched by MLM training)
    mlm: dict                        # the MLM head; a tied decoder is weights["embeddings"]["word"]
    history: list                    # per epoch: train_loss, dev_loss, dev_perplexity (, best_epoch); with held-out
                                     # text, first {"epoch": 0, dev_loss, dev_perplexity} before any training


def check_recipe(recipe: PretrainRecipe) -> None:
    if not isinstance(recipe, PretrainRecipe):
        raise InputError(f"recipe must be a PretrainRecipe (minibert.train.pretrain.PretrainRecipe(epochs=..., ...)), "
                         f"found {type(recipe).__name__}")
    for name, ok in (("epochs", isinstance(recipe.epochs, int) and recipe.epochs >= 1),
                     ("batch_size", isinstance(recipe.batch_size, int) and recipe.batch_size >= 1),
                     ("lr", np.isfinite(recipe.lr) and recipe.lr >= 0), ("warmup_ratio", 0 <= recipe.warmup_ratio <= 1),
                     ("dropout", 0 <= recipe.dropout < 1), ("weight_decay", recipe.weight_decay >= 0),
                     ("max_grad_norm", recipe.max_grad_norm >= 0),
                     ("mlm_probability", 0 < recipe.mlm_probability < 1),
                     ("validation_split", 0 <= recipe.validation_split < 1),
                     ("dtype", recipe.dtype in ("float32", "float64")),
                     ("patience", recipe.patience is None
                      or (isinstance(recipe.patience, int) and recipe.patience >= 1))):
        if not ok:
            raise InputError(f"recipe.{name} {getattr(recipe, name)!r} is out of range (epochs, batch_size, patience: "
                             "ints >= 1; lr, weight_decay, max_grad_norm >= 0; warmup_ratio in [0, 1]; dropout, "
                             "validation_split in [0, 1); mlm_probability in (0, 1); dtype float32 or float64)")


def masked_batches(blocks: Blocks, order, batch_size, rng, recipe, mask_id, vocab_size):
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        inputs, labels = mask_tokens(blocks.ids[rows], blocks.special[rows], rng, mask_id=mask_id,
                                     vocab_size=vocab_size, mlm_probability=recipe.mlm_probability,
                                     words=blocks.words[rows] if recipe.whole_word_mask else None)
        yield inputs, labels


def held_out_loss(batches, weights, heads, config):
    """Mean cross-entropy over every masked token of the held-out batches (no dropout)."""
    total, count = 0.0, 0
    for inputs, labels in batches:
        losses, _ = loss_and_grads(inputs, np.ones_like(inputs), np.zeros_like(inputs), weights, heads, config,
                                   mlm_labels=labels)
        n = int((labels != IGNORE_INDEX).sum())
        total, count = total + float(losses["mlm"]) * n, count + n
    return total / max(count, 1)


def pretrain(model, texts, *, recipe=PretrainRecipe(), dev_texts=None, progress=None, checkpoint_dir=None,
             resume=False, on_epoch=None, datasets=None, command=None) -> PretrainResult:
    """Continue MLM pretraining of `model` (a minibert.Model with its MLM head, or a directory) on `texts`
    (documents), as transformers' run_mlm.py does: documents packed into blocks (group_texts), masked per
    batch (mask_tokens), AdamW with a linear schedule. Before training and after each epoch the held-out MLM
    loss and perplexity (exp of the loss; the held-out blocks are masked once, the same way every time) go to
    the history, and
    with checkpoint_dir a ...ForMaskedLM checkpoint is written there with the state `resume` continues from.
    on_epoch: called with each epoch's record once it is saved. Each checkpoint gets README.md, a model card
    in the Hub's form (train.model_card): datasets names the corpus (hub dataset ids), command the command
    line that reproduces the run (default: this call)."""
    from dataclasses import replace as replaced

    from . import state as train_state
    from .. import progress as progress_report
    from ..api import Model, load
    from ..heads import mask_token
    from ..tree import copy_tree
    from .model_card import check_run_names, masked_lm_card, run_description
    from .optimizer import adamw_update, clip_by_global_norm, decays, lr_at, trainable
    from ..backends.threads import BLAS
    from ..errors import TrainingError
    from ..files import atomic_directory
    from .classifier import check_output_directory
    from .finetune import diverged
    check_recipe(recipe)
    check_run_names(datasets, command)
    if resume and checkpoint_dir is None:
        raise InputError("resume needs the checkpoint directory of the run to continue (checkpoint_dir=, --out)")
    if not isinstance(model, Model):
        model = load(model, backend="numpy", dtype=recipe.dtype)
    config, heads = model.config, model.heads
    heads.require("mlm")
    if checkpoint_dir is not None:       # the model's folder, another kind of output, a folder minibert did not write
        check_output_directory(checkpoint_dir, [model.source, getattr(model.tokenizer, "dir", model.source)],
                               kind="pretraining")
    train_texts, held_texts = split_documents(texts, dev_texts, recipe.validation_split)
    block = recipe.max_length or model.tokenizer.max_length
    check_block_size(model.tokenizer, block)
    if dev_texts is None and held_texts:
        train_texts, held_texts = widen_held_out(model.tokenizer, held_texts + train_texts, len(held_texts), block)
    train_blocks = group_texts(model.tokenizer, train_texts, block, **(dict(
        what=f"the corpus less the first {len(held_texts)} document(s) held out for the perplexity report",
        advice=f"give more text, a smaller max_length (--max-length), {HOLD_OUT_ADVICE}")
        if held_texts and dev_texts is None else {}))
    dev_blocks = (group_texts(model.tokenizer, held_texts, block, what="the held-out text (dev_texts, --dev)",
                              advice="give more held-out text or a smaller max_length (--max-length)")
                  if held_texts else None)
    if recipe.patience is not None and dev_blocks is None:      # before training, not after its first epoch
        raise InputError("recipe.patience (--patience) needs held-out text: dev_texts= (--dev FILE), or "
                         "validation_split > 0 (--validation-split)")
    dtype = np.dtype(recipe.dtype).type
    trees = copy_tree({"encoder": model.weights, "mlm": heads.mlm}, dtype)   # the tied decoder stays the word table
    pooler = trees["encoder"]["pooler"]
    weights = {**trees["encoder"], "pooler": None}          # the MLM model has no pooler: it does not train
    head = replaced(heads, mlm=trees["mlm"], sentence=None)
    mask, mask_id = mask_token(model.tokenizer, config)
    training = run_description(base_model=model.origin["hub_id"] if model.origin else None, source=model.source,
                               recipe=recipe, datasets=datasets, command=command, dev_texts=dev_texts is not None)
    rng = np.random.default_rng(recipe.seed)
    dev_batches = (list(masked_batches(dev_blocks, np.arange(len(dev_blocks.ids)), recipe.batch_size,
                                       np.random.default_rng([recipe.seed, 1]), recipe, mask_id, config.vocab_size))
                   if dev_blocks is not None else None)
    params = trainable(weights, trees["mlm"], config)
    steps_per_epoch = -(-len(train_blocks.ids) // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = int(np.ceil(recipe.warmup_ratio * total))
    run = None
    if checkpoint_dir is not None:
        def items(blocks):
            return None if blocks is None else [(row, np.zeros_like(row), row) for row in blocks.ids]
        run = train_state.describe_run(recipe, "mlm", [], model.source, items(train_blocks), items(dev_blocks))
    state, first_epoch, best, history = {}, 0, None, []
    if resume:
        saved = train_state.restore_unfinished(checkpoint_dir, params, run, recipe, rng)
        state, first_epoch, history, best = saved["adam"], saved["epoch"], saved["history"], saved["best"]
    step = first_epoch * steps_per_epoch
    report = progress_report.reporter(progress, total, recipe.epochs, initial=step)
    decay = [decays(name) for name, _ in params]
    if dev_batches is not None and not resume:       # the starting point the epochs are measured against
        loss = held_out_loss(dev_batches, weights, head, config)
        history.append({"epoch": 0, "dev_loss": loss, "dev_perplexity": float(np.exp(loss))})
        report.message(f"before training: dev_loss {loss:.4f}, dev_perplexity {np.exp(loss):.4f}")
    try:
        with BLAS:      # the forward's thread policy: one BLAS thread beside minibert's own
            for epoch in range(first_epoch + 1, recipe.epochs + 1):
                losses, done = [], 0
                order = rng.permutation(len(train_blocks.ids))
                for inputs, labels in masked_batches(train_blocks, order, recipe.batch_size, rng, recipe, mask_id,
                                                     config.vocab_size):
                    lr = lr_at(step, total, warmup, recipe.lr)
                    result, grads = loss_and_grads(inputs, np.ones_like(inputs), np.zeros_like(inputs), weights, head,
                                                   config, mlm_labels=labels, dropout=recipe.dropout,
                                                   rng=rng if recipe.dropout else None)
                    if not np.isfinite(result["mlm"]):        # before the update: the weights stay finite
                        raise TrainingError(diverged(step + 1, epoch, f"the loss is {float(result['mlm'])}", recipe,
                                                     checkpoint_dir))
                    gradients = trainable(grads["encoder"], grads["mlm"], config)
                    by_id = {id(p): g for (_, p), (_, g) in zip(params, gradients)}
                    ordered = [by_id[id(p)] for _, p in params]
                    if recipe.max_grad_norm:
                        clip_by_global_norm(ordered, recipe.max_grad_norm)
                    adamw_update([p for _, p in params], ordered, state, lr=lr, betas=recipe.betas, eps=recipe.adam_eps,
                                 weight_decay=recipe.weight_decay, decay=decay)
                    if (labels != IGNORE_INDEX).any():   # a draw that masked no token has no loss (0 here, NaN in
                        losses.append(float(result["mlm"]))   # torch): averaged in, it pulled train_loss down
                    step, done = step + 1, done + 1
                    report.step(epoch=epoch, step=step, loss=float(result["mlm"]),
                                running=float(np.mean(losses)) if losses else float("nan"), lr=lr,
                                epoch_end=done == steps_per_epoch)
                if not all(np.isfinite(p).all() for _, p in params):     # finite steps can still overflow
                    raise TrainingError(diverged(step, epoch, "a weight is no longer a finite number", recipe,
                                                 checkpoint_dir))
                record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan")}
                if dev_batches is not None:
                    record["dev_loss"] = held_out_loss(dev_batches, weights, head, config)
                    record["dev_perplexity"] = float(np.exp(record["dev_loss"]))
                improved = recipe.patience is None or best is None or record["dev_loss"] < best["metric"]
                if recipe.patience is not None:
                    if improved:
                        best = {"epoch": epoch, "metric": record["dev_loss"], "params": [p.copy() for _, p in params]}
                    record["best_epoch"] = best["epoch"]
                history.append(record)
                if checkpoint_dir is not None:
                    saved_state = dict(params=params, adam=state, rng=rng, epoch=epoch, history=history, run=run,
                                       best=None if best is None else {**best, "params": None if improved
                                                                       else best["params"]})
                    if improved:    # one new folder (weights, config, tokenizer, card, state) replaces the last whole
                        with atomic_directory(checkpoint_dir) as temporary:
                            save_masked_lm(temporary, {**weights, "pooler": pooler}, trees["mlm"], config,
                                           tied=heads.tied, source_dir=model.encoder_dir,
                                           tokenizer_dir=model.tokenizer.dir)
                            card = masked_lm_card(training, config.model_type, history, mask, str(checkpoint_dir))
                            (temporary / "README.md").write_text(card, encoding="utf-8")
                            train_state.save_state(temporary, **saved_state)
                    else:
                        train_state.save_state(checkpoint_dir, **saved_state)
                report.message(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in record.items()))
                if on_epoch is not None:
                    on_epoch(record)
                if recipe.patience is not None and epoch - best["epoch"] >= recipe.patience:
                    report.message(f"early stopping: no lower held-out loss for {recipe.patience} epoch(s); the best "
                                   f"was epoch {best['epoch']} ({best['metric']:.4f})")
                    break
    finally:
        report.close()
    if best is not None and best["epoch"] != history[-1]["epoch"]:
        for (_, p), value in zip(params, best["params"]):
            p[...] = value
    return PretrainResult(weights={**weights, "pooler": pooler}, mlm=trees["mlm"], history=history)


# ---- gradient parity with torch autograd (torch only for the reference) ----------------------------------------

def example_labels(ids, mask, seed=0):
    """MLM labels for grad_parity.example_batch: a random id at about 30% of the real tokens past [CLS], at
    least one per row; -100 elsewhere."""
    rng = np.random.default_rng(seed + 2)
    chosen = (rng.random(ids.shape) < 0.3) & (mask == 1)                    # [B, T]
    chosen[:, 0] = False
    chosen[np.arange(len(ids)), np.maximum(mask.sum(axis=1) - 1, 1)] = True
    return np.where(chosen, rng.integers(0, ids.max() + 1, ids.shape), IGNORE_INDEX)


def grad_comparison(model_dir, seed=0):
    """(minibert's loss, torch's loss, rows (name, relative error, max |torch|) per parameter): minibert's
    loss_and_grads against torch autograd in float64 (the ...ForPreTraining model when the checkpoint has a
    sentence head, else AutoModelForMaskedLM) on grad_parity.example_batch. Needs torch and transformers."""
    import os

    import torch
    import transformers

    from ..api import load
    from .grad_parity import compare_grads, example_batch
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = load(str(model_dir), backend="numpy", dtype="float64")
    config, heads = model.config, model.heads
    ids, mask, types = example_batch(config, seed=seed)
    labels = example_labels(ids, mask, seed)
    sentence = np.arange(len(ids)) % 2 if heads.sentence is not None else None
    losses, grads = loss_and_grads(ids, mask, types, model.weights, heads, config, mlm_labels=labels,
                                   sentence_labels=sentence)
    ours = {"loss": float(losses["total"]), "grads": grads_by_name(grads, heads, config)}
    if sentence is not None:
        cls = {"bert": transformers.BertForPreTraining, "albert": transformers.AlbertForPreTraining}[config.model_type]
    else:
        cls = transformers.AutoModelForMaskedLM
    reference = cls.from_pretrained(str(model.encoder_dir), attn_implementation="eager", dtype=torch.float64).eval()
    inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
              "labels": torch.from_numpy(labels)}
    if config.token_type_embeddings:
        inputs["token_type_ids"] = torch.from_numpy(types)
    if sentence is not None:
        inputs["next_sentence_label" if config.model_type == "bert" else "sentence_order_label"] = \
            torch.from_numpy(sentence)
    out = reference(**inputs)
    out.loss.backward()
    named = {name: p.grad.numpy().copy() for name, p in reference.named_parameters() if p.grad is not None}
    word = next(name for name in ours["grads"] if name.endswith("embeddings.word_embeddings.weight"))
    for name in [n for n in named if n not in ours["grads"] and n.endswith(("decoder.weight", "lm_head.weight",
                                                                            "vocab_projector.weight"))]:
        named[word] = named.pop(name)       # torch may name a tied pair after the decoder
    return ours["loss"], float(out.loss.detach()), compare_grads(ours, {"grads": named})


def grad_report(model_dir, seed=0):
    """Lines for a parity check of the pretraining gradients (grad_comparison): the worst parameter per block,
    as `minibert parity --grad` prints the fine-tuning ones."""
    from .grad_parity import worst_per_block
    loss, torch_loss, rows = grad_comparison(model_dir, seed)
    lines = [f"pretraining loss {loss:.12g} (torch {torch_loss:.12g}), {len(rows)} parameters, float64, "
             "relative error per block (worst parameter):"]
    lines += [f"  {block:28s} {error:.2e}  {name}" for block, (name, error) in worst_per_block(rows).items()]
    return lines
