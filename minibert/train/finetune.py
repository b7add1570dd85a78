"""Fine-tuning without torch: the training loop. Each step is `backprop.loss_and_grads`, clipping and
`optimizer.adamw_update` on length-bucketed batches (train.data); after each epoch the dev accuracy, early
stopping, and the checkpoint plus the state an interrupted run resumes from (train.state).

The recipe is the one transformers' examples use for BertForSequenceClassification / ForTokenClassification
(TrainingRecipe; train.optimizer says what each step does).

Axes: B batch, T tokens, H hidden, K classes (labels).
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TextIO, Tuple, Union

import numpy as np

from ..backends.threads import BLAS
from ..errors import InputError, TrainingError
from ..files import atomic_directory
from ..kernels.reference import IGNORE_INDEX
from .backprop import TASKS, loss_and_grads
from .classifier import Classifier, check_output_directory, new_classifier
from .data import Examples, checked_examples, checked_labels, collate, length_buckets, tokenize_examples
from .optimizer import adamw_update, clip_by_global_norm, decays, lr_at, trainable


@dataclass(frozen=True)
class TrainingRecipe:
    """How to train. Values are transformers' examples' defaults where they have one."""
    epochs: int = 3
    lr: float = 2e-5                 # peak learning rate, reached after the warmup
    batch_size: int = 16
    warmup_ratio: float = 0.0        # share of all steps spent warming up from 0
    weight_decay: float = 0.01       # decoupled (AdamW); not on biases and LayerNorm weights
    betas: Tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0       # clip the global gradient norm to this; 0 turns clipping off
    dropout: float = 0.1             # every dropout of the encoder and head while training
    max_length: Optional[int] = None  # tokens per example (default: the model's limit)
    seed: int = 0                    # head initialisation, batch order and dropout masks
    dtype: str = "float32"           # "float32" or "float64" for weights, activations and optimizer state
    patience: Optional[int] = None   # stop when the dev accuracy has not improved for this many epochs


def is_number(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def is_count(x, low):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) and x >= low


def check_recipe(recipe):
    """Every recipe value checked before the model loads: a bad one would train nothing and save nothing
    (epochs 0), divide by zero (batch_size 0), give NaN losses and a checkpoint of them (a negative
    batch_size), or a NumPy traceback after loading (seed -1)."""
    if recipe.dtype not in ("float32", "float64"):
        raise InputError(f"recipe.dtype must be 'float32' or 'float64', found {recipe.dtype!r}")
    for name, ok in (("epochs", is_count(recipe.epochs, 1)), ("batch_size", is_count(recipe.batch_size, 1)),
                     ("lr", is_number(recipe.lr) and np.isfinite(recipe.lr) and recipe.lr >= 0),
                     ("warmup_ratio", is_number(recipe.warmup_ratio) and 0 <= recipe.warmup_ratio <= 1),
                     ("dropout", is_number(recipe.dropout) and 0 <= recipe.dropout < 1),
                     ("weight_decay", is_number(recipe.weight_decay) and 0 <= recipe.weight_decay < np.inf),
                     ("max_grad_norm", is_number(recipe.max_grad_norm) and 0 <= recipe.max_grad_norm < np.inf),
                     ("adam_eps", is_number(recipe.adam_eps) and 0 < recipe.adam_eps < np.inf),
                     ("betas", isinstance(recipe.betas, (tuple, list)) and len(recipe.betas) == 2
                      and all(is_number(b) and 0 <= b < 1 for b in recipe.betas)),
                     ("seed", is_count(recipe.seed, 0)),
                     ("max_length", recipe.max_length is None or is_count(recipe.max_length, 1)),
                     ("patience", recipe.patience is None or is_count(recipe.patience, 1))):
        if not ok:
            raise InputError(f"recipe.{name} {getattr(recipe, name)!r} is out of range (epochs, batch_size, "
                             "max_length, patience: ints >= 1; seed: an int >= 0; lr, weight_decay, max_grad_norm "
                             ">= 0; adam_eps > 0; warmup_ratio in [0, 1]; dropout and betas in [0, 1))")


def finetune(model: Any, train: Examples, *, task: str = "sequence", dev: Optional[Examples] = None,
             recipe: TrainingRecipe = TrainingRecipe(), labels: Optional[Sequence[Any]] = None,
             progress: Optional[TextIO] = None, on_epoch: Optional[Callable[[Classifier], Any]] = None,
             checkpoint_dir: Union[str, "os.PathLike[str]", None] = None, resume: bool = False,
             datasets: Optional[Sequence[str]] = None, command: Optional[str] = None) -> Classifier:
    """Fine-tune `model` (a minibert.Model, or a directory / None for minibert.load) on `train` (Examples).

    labels: the label names in id order (default: sorted labels of train). Each epoch's mean training
    loss, and the dev accuracy when `dev` is given, go to the returned Classifier's history. progress: a
    stream (e.g. sys.stderr) for a bar with the running loss when it is a terminal, a line every 10 seconds
    otherwise (minibert.progress), and a line per epoch; or None.
    on_epoch: called with the Classifier after each epoch.

    checkpoint_dir: after each epoch the checkpoint (Classifier.save) is written there, and beside it the
    state an interrupted run resumes from (minibert.train.state); resume=True continues the run saved there
    after its last finished epoch, and finishes with what the uninterrupted run would have given.
    recipe.patience: stop when the dev accuracy has not improved for that many epochs; the best epoch's
    weights are the ones returned (and the checkpoint is only rewritten when an epoch is the best so far).

    Every save of the classifier writes README.md, a model card in the Hub's form (minibert.train.model_card):
    datasets names the data for its metadata (hub dataset ids), command the command line that reproduces
    the run (default: this call, in Python).
    """
    from .. import progress as progress_report
    from . import state as train_state
    from ..api import Model, load
    from ..checkpoint.default_model import DEFAULT_MODEL_HUB_ID
    from .model_card import check_run_names, run_description
    if task not in TASKS:
        raise InputError(f"task must be one of {TASKS}, found {task!r}")
    check_recipe(recipe)
    if recipe.patience is not None and dev is None:
        raise InputError(f"recipe.patience {recipe.patience}: early stopping needs a dev set (dev=, --dev) and "
                         "a patience of at least 1 epoch")
    check_run_names(datasets, command)
    if resume and checkpoint_dir is None:
        raise InputError("resume needs the checkpoint directory of the run to continue (checkpoint_dir=, --out)")
    train = checked_examples(train, task, "train")
    if dev is not None:
        dev = checked_examples(dev, task, "dev")

    def flat(examples):
        return [label for tags in examples.labels for label in tags] if task == "token" else list(examples.labels)
    labels = sorted(set(flat(train)), key=str) if labels is None else checked_labels(labels, "labels")
    if len(labels) < 2:      # a softmax over one class: loss 0 from the start, nothing to learn
        raise InputError(f"train has one label ({labels}); a classifier needs at least two (or pass labels=)")
    if len(set(labels)) != len(labels):
        raise InputError(f"labels {labels} name a class twice")
    label2id = {label: i for i, label in enumerate(labels)}
    # Checked before training: a dev label the head has no class for would otherwise fail after an epoch.
    for what, examples in (("train", train), ("dev", dev or Examples(texts=[], labels=[]))):
        unknown = sorted({str(label) for label in flat(examples) if label not in label2id})
        if unknown:
            raise InputError(f"{what} has label(s) {', '.join(unknown[:5])} not in labels {labels}"
                             + ("; give every label to finetune(labels=...)" if what == "dev" else ""))
    if checkpoint_dir is not None:       # now, not when the first epoch's checkpoint is written
        local = [model] if isinstance(model, (str, os.PathLike)) and Path(model).exists() else []
        check_output_directory(checkpoint_dir, local)
    base_model = DEFAULT_MODEL_HUB_ID if model is None else None
    if not isinstance(model, Model):
        model = load(model, backend="numpy", dtype=recipe.dtype)
    base_model = model.origin["hub_id"] if model.origin else base_model
    config = model.config
    if checkpoint_dir is not None:       # a hub id or the bundled model: its folder is known once loaded
        check_output_directory(checkpoint_dir, [model.source, model.encoder_dir])
    rng = np.random.default_rng(recipe.seed)
    classifier = new_classifier(model, task, labels, recipe, rng)
    classifier.training = run_description(base_model=base_model, source=model.source, recipe=recipe,
                                          datasets=datasets, command=command, pairs=train.text_pairs is not None)
    items = tokenize_examples(model.tokenizer, train, task, label2id, recipe.max_length)
    steps_per_epoch = -(-len(items) // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = int(np.ceil(recipe.warmup_ratio * total))
    params = trainable(classifier.weights, classifier.head, config)
    run = None
    if checkpoint_dir is not None:
        dev_items = None if dev is None else tokenize_examples(model.tokenizer, dev, task, label2id, recipe.max_length)
        run = train_state.describe_run(recipe, task, labels, model.source, items, dev_items)
    best: Any = None                             # {"epoch", "metric", "params"} of the best epoch so far
    state, first_epoch = {}, 0                   # AdamW's state, the last finished epoch
    if resume:
        state, first_epoch, best = resume_run(checkpoint_dir, run, recipe, classifier, params, rng)
    step = first_epoch * steps_per_epoch
    report = progress_report.reporter(progress, total, recipe.epochs, initial=step)
    try:
        with BLAS:      # the forward's thread policy: one BLAS thread (an epoch ran 6-10x slower on a busy machine)
            for epoch in range(first_epoch + 1, recipe.epochs + 1):
                losses = []
                for batch_indices in length_buckets([len(item[0]) for item in items], recipe.batch_size, rng):
                    lr = lr_at(step, total, warmup, recipe.lr)
                    try:
                        loss = train_step(classifier, [items[i] for i in batch_indices], params, state, recipe, lr,
                                          rng)
                    except TrainingError as e:
                        raise TrainingError(diverged(step + 1, epoch, e, recipe, checkpoint_dir)) from None
                    losses.append(loss)
                    step += 1
                    report.step(epoch=epoch, step=step, loss=loss, running=float(np.mean(losses)), lr=lr,
                                epoch_end=len(losses) == steps_per_epoch)
                if not all(np.isfinite(p).all() for _, p in params):     # finite steps can still overflow
                    raise TrainingError(diverged(step, epoch, "a weight is no longer a finite number", recipe,
                                                 checkpoint_dir))
                record = {"epoch": epoch, "train_loss": float(np.mean(losses))}
                if dev is not None:
                    record["dev_accuracy"] = accuracy(classifier, dev)
                improved = recipe.patience is None or best is None or record["dev_accuracy"] > best["metric"]
                if recipe.patience is not None:
                    if improved:
                        best = {"epoch": epoch, "metric": record["dev_accuracy"],
                                "params": [p.copy() for _, p in params]}
                    record["best_epoch"] = best["epoch"]
                classifier.history.append(record)
                if checkpoint_dir is not None:
                    save_checkpoint(classifier, checkpoint_dir, improved, params=params, adam=state, rng=rng,
                                    epoch=epoch, history=classifier.history, run=run,
                                    best=None if best is None else {**best, "params": None if improved
                                                                    else best["params"]})
                shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
                report.message(shown + (f"; saved {checkpoint_dir}" if checkpoint_dir is not None and improved
                                        else ""))
                if on_epoch is not None:
                    on_epoch(classifier)
                if recipe.patience is not None and epoch - best["epoch"] >= recipe.patience:
                    report.message(f"early stopping: no better dev accuracy for {recipe.patience} epoch(s); the "
                                   f"best was epoch {best['epoch']} ({best['metric']:.4f})")
                    break
    finally:
        report.close()
    if best is not None and best["epoch"] != classifier.history[-1]["epoch"]:
        for (_, p), value in zip(params, best["params"]):
            p[...] = value
    return classifier


def accuracy(classifier, examples):
    """Share of correct labels: per example (sequence) or per word (token, first pieces)."""
    if classifier.task == "sequence":
        predicted = classifier.predict(examples.texts, examples.text_pairs)
        return float(np.mean([p == t for p, t in zip(predicted, examples.labels)]))
    label2id = {label: i for i, label in enumerate(classifier.labels)}
    items = tokenize_examples(classifier.tokenizer, examples, "token", label2id, classifier.max_length)
    correct = total = 0
    for logits, (_, _, labels) in zip(classifier.logits([" ".join(w) for w in examples.texts]), items):
        counted = labels != IGNORE_INDEX
        correct += int((logits.argmax(axis=1)[counted] == labels[counted]).sum())
        total += int(counted.sum())
    return correct / max(total, 1)


def diverged(step, epoch, cause, recipe, checkpoint_dir):
    """The one line a diverged run stops with."""
    kept = (f"; {checkpoint_dir} keeps what it held before this epoch"
            if checkpoint_dir is not None and Path(checkpoint_dir).exists() else "")
    return (f"training diverged at step {step} (epoch {epoch}): {cause}; nothing of this epoch was saved{kept}. "
            f"Try a lower learning rate (it was {recipe.lr:g}) or check the data")


def save_checkpoint(classifier, checkpoint_dir, improved, **state):
    """After an epoch: the classifier and the training state, written as one new directory that replaces the
    previous epoch's (or an earlier run's) whole; when the classifier did not improve, the state file alone."""
    from . import state as train_state
    if not improved:
        train_state.save_state(checkpoint_dir, **state)
        return
    with atomic_directory(checkpoint_dir) as temporary:
        classifier.write_files(temporary, final=checkpoint_dir)
        train_state.save_state(temporary, **state)


def resume_run(checkpoint_dir, run, recipe, classifier, params, rng):
    """Put the run saved in checkpoint_dir back: parameters (in place, so shared arrays stay shared), the
    generator's state and the history. Returns (AdamW's state, the last finished epoch, the best epoch or None)."""
    from . import state as train_state
    saved = train_state.load_state(checkpoint_dir, params, run)
    stopped = (recipe.patience is not None and saved["best"] is not None
               and saved["epoch"] - saved["best"]["epoch"] >= recipe.patience)
    if saved["epoch"] >= recipe.epochs or stopped:
        raise InputError(f"{checkpoint_dir}: the run saved there has finished (epoch {saved['epoch']} of "
                         f"{recipe.epochs}{', stopped early' if stopped else ''}); nothing to resume")
    for (_, p), value in zip(params, saved["params"]):
        p[...] = value
    rng.bit_generator.state = saved["rng_state"]
    classifier.history = saved["history"]
    best = saved["best"]
    if best is not None and best["params"] is None:       # the last finished epoch was the best one
        best["params"] = [p.copy() for _, p in params]
    return saved["adam"], saved["epoch"], best


def train_step(classifier, batch_items, params, state, recipe, lr, rng):
    """One optimizer step on a list of tokenized examples; returns the batch's loss."""
    ids, mask, types, labels = collate(batch_items, classifier.config.pad_token_id, classifier.task)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):     # checked below: one clear error
        loss, _, weights_grads, head_grads = loss_and_grads(ids, mask, types, labels, classifier.weights,
                                                            classifier.head, classifier.config,
                                                            task=classifier.task, dropout=recipe.dropout,
                                                            rng=rng if recipe.dropout else None)
    grads_by_id = {id(p): g for (_, p), (_, g) in zip(trainable(classifier.weights, classifier.head, classifier.config),
                                                      trainable(weights_grads, head_grads, classifier.config))}
    grads = [grads_by_id[id(p)] for _, p in params]
    with np.errstate(over="ignore", invalid="ignore"):
        norm = clip_by_global_norm(grads, recipe.max_grad_norm)     # max_grad_norm 0: measured, not clipped
    if not (np.isfinite(loss) and np.isfinite(norm)):           # before the update: the weights stay finite
        raise TrainingError(f"the loss is {float(loss)} and the gradient norm {norm}")
    adamw_update([p for _, p in params], grads, state, lr=lr, betas=recipe.betas, eps=recipe.adam_eps,
                 weight_decay=recipe.weight_decay, decay=[decays(name) for name, _ in params])
    return float(loss)
