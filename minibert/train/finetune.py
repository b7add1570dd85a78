"""Fine-tuning without torch: the training loop. Each step is `objectives.loss_and_grads` (backprop's
cross-entropy, or a one-output model's MSE or BCE), clipping and `optimizer.adamw_update` on length-bucketed
batches (train.data); after each epoch the dev accuracy (or MSE, Pearson and Spearman for regression), early
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
from .backprop import TASKS
from .classifier import Classifier, check_output_directory, new_classifier
from .data import (Examples, check_labelled_tokens, checked_examples, checked_labels, collate, label_order,
                   length_buckets, tokenize_examples)
from .objectives import BEST_SCORE_METRIC, LOSSES, SAVED_AS, improves, loss_and_grads, score_metrics
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
    patience: Optional[int] = None   # stop when the dev accuracy (regression: Spearman) has not improved for
                                     # this many epochs


def is_number(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def is_count(x, low):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) and x >= low


def check_recipe(recipe):
    """Every recipe value checked before the model loads: a bad one would train nothing and save nothing
    (epochs 0), divide by zero (batch_size 0), give NaN losses and a checkpoint of them (a negative
    batch_size), or a NumPy traceback after loading (seed -1)."""
    if not isinstance(recipe, TrainingRecipe):         # a dict raised AttributeError
        raise InputError(f"recipe must be a TrainingRecipe (minibert.train.finetune.TrainingRecipe(epochs=..., ...)), "
                         f"found {type(recipe).__name__}")
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


FINETUNE_TASKS = TASKS + ("regression",)


def check_task(task, loss):
    """The task and its loss -> the objective (objectives.py): cross_entropy for sequence and token, loss
    ("mse" by default, or "bce") for regression."""
    if task not in FINETUNE_TASKS:
        raise InputError(f"task must be one of {FINETUNE_TASKS}, found {task!r}")
    if task != "regression":
        if loss not in (None, "cross_entropy"):
            raise InputError(f"loss {loss!r}: the {task} task trains with cross-entropy; loss= (--loss) chooses "
                             f"the regression task's objective, one of {LOSSES}")
        return "cross_entropy"
    if loss is None:
        return "mse"
    if loss not in LOSSES:
        raise InputError(f"loss must be one of {LOSSES} for the regression task, found {loss!r}")
    return loss


def check_dev_scores(dev):
    """A regression dev set whose labels are all equal has no Pearson or Spearman correlation to report."""
    if len(set(dev.labels)) < 2:
        raise InputError(f"dev: every label is {dev.labels[0]!r}; Pearson and Spearman correlations need labels "
                         "that differ (give a dev set with at least two different scores)")


def finetune(model: Any, train: Examples, *, task: str = "sequence", dev: Optional[Examples] = None,
             recipe: TrainingRecipe = TrainingRecipe(), labels: Optional[Sequence[Any]] = None,
             progress: Optional[TextIO] = None, on_epoch: Optional[Callable[[Classifier], Any]] = None,
             checkpoint_dir: Union[str, "os.PathLike[str]", None] = None, resume: bool = False,
             datasets: Optional[Sequence[str]] = None, command: Optional[str] = None,
             loss: Optional[str] = None) -> Classifier:
    """Fine-tune `model` (a minibert.Model, or a directory / None for minibert.load) on `train` (Examples).

    task: "sequence" (a label per text or pair), "token" (a label per word) or "regression" (a number per
    text or pair: a sequence head with one output). loss, regression only (objectives.py): "mse" (default;
    transformers' problem_type "regression", saved with sentence-transformers' Identity activation) or "bce"
    (labels in [0, 1], sentence-transformers' BinaryCrossEntropyLoss, saved with Sigmoid). Regression records
    the dev MSE, Pearson and Spearman of the activated scores, and patience watches Spearman.

    labels: the label names in id order (default: train's labels sorted, numbers by value:
    data.label_order). Each epoch's mean training loss, and the dev accuracy when `dev` is given, go to the
    returned Classifier's history. progress: a stream (e.g. sys.stderr) for a bar with the running loss when
    it is a terminal, a line every 10 seconds otherwise (minibert.progress), and a line per epoch; or None.
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
    objective = check_task(task, loss)
    check_recipe(recipe)
    if recipe.patience is not None and dev is None:
        raise InputError(f"recipe.patience {recipe.patience}: early stopping needs a dev set (dev=, --dev) and "
                         "a patience of at least 1 epoch")
    check_run_names(datasets, command)
    if resume and checkpoint_dir is None:
        raise InputError("resume needs the checkpoint directory of the run to continue (checkpoint_dir=, --out)")
    train = checked_examples(train, task, "train", objective)
    if dev is not None:
        dev = checked_examples(dev, task, "dev", objective)
    if dev is not None and (dev.text_pairs is None) != (train.text_pairs is None):
        # scored on another input than it was trained on, the dev metric describes no use of the model
        raise InputError(f"train {'has' if train.text_pairs is not None else 'has no'} text_pairs but dev "
                         f"{'has' if dev.text_pairs is not None else 'has none'}; give both sets pairs, or neither")
    if task == "regression":
        labels, label2id = check_output_name(labels), {}
        if dev is not None:
            check_dev_scores(dev)
    else:
        labels, label2id = class_labels(train, dev, task, labels)
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
    classifier = new_classifier(model, "token" if task == "token" else "sequence", labels, recipe, rng)
    if task == "regression":
        classifier.problem_type, classifier.activation = SAVED_AS[objective]
    classifier.training = run_description(base_model=base_model, source=model.source, recipe=recipe,
                                          datasets=datasets, command=command, pairs=train.text_pairs is not None)
    items = tokenize_examples(model.tokenizer, train, task, label2id, recipe.max_length)
    dev_items = None if dev is None else tokenize_examples(model.tokenizer, dev, task, label2id, recipe.max_length)
    if task == "token":
        check_labelled_tokens(items, "train", recipe.max_length or model.tokenizer.max_length)
        if dev_items is not None:
            check_labelled_tokens(dev_items, "dev", recipe.max_length or model.tokenizer.max_length)
    steps_per_epoch = -(-len(items) // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = int(np.ceil(recipe.warmup_ratio * total))
    params = trainable(classifier.weights, classifier.head, config)
    run = None
    if checkpoint_dir is not None:
        run = train_state.describe_run(recipe, task, labels, model.source, items, dev_items,
                                       loss=objective if task == "regression" else None)
    best: Any = None                             # {"epoch", "metric", "params"} of the best epoch so far
    watched = BEST_SCORE_METRIC if task == "regression" else "dev_accuracy"   # what patience compares
    state, first_epoch = {}, 0                   # AdamW's state, the last finished epoch
    if resume:
        state, first_epoch, best = resume_run(checkpoint_dir, run, recipe, classifier, params, rng)
    step = first_epoch * steps_per_epoch
    report = progress_report.reporter(progress, total, recipe.epochs, initial=step)
    try:
        with BLAS:      # the forward's thread policy: one BLAS thread (an epoch ran 6-10x slower on a busy machine)
            for epoch in range(first_epoch + 1, recipe.epochs + 1):
                losses, done = [], 0
                for batch_indices in length_buckets([len(item[0]) for item in items], recipe.batch_size, rng):
                    lr = lr_at(step, total, warmup, recipe.lr)
                    try:
                        value = train_step(classifier, [items[i] for i in batch_indices], params, state, recipe,
                                           lr, rng, objective)
                    except TrainingError as e:
                        raise TrainingError(diverged(step + 1, epoch, e, recipe, checkpoint_dir)) from None
                    # a token batch whose labelled words were all cut has no loss (0 here, NaN in torch): averaged
                    # in, it pulled train_loss down
                    if task != "token" or any((items[i][2] != IGNORE_INDEX).any() for i in batch_indices):
                        losses.append(value)
                    step, done = step + 1, done + 1
                    report.step(epoch=epoch, step=step, loss=value,
                                running=float(np.mean(losses)) if losses else float("nan"), lr=lr,
                                epoch_end=done == steps_per_epoch)
                if not all(np.isfinite(p).all() for _, p in params):     # finite steps can still overflow
                    raise TrainingError(diverged(step, epoch, "a weight is no longer a finite number", recipe,
                                                 checkpoint_dir))
                record = {"epoch": epoch, "train_loss": float(np.mean(losses))}
                if dev is not None:
                    record.update(score_metrics(scores(classifier, dev), dev.labels) if task == "regression"
                                  else {"dev_accuracy": accuracy(classifier, dev)})
                improved = recipe.patience is None or best is None or improves(record[watched], best["metric"])
                if recipe.patience is not None:
                    if improved:
                        best = {"epoch": epoch, "metric": record[watched],
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
                    report.message(f"early stopping: no better {watched.replace('_', ' ')} for {recipe.patience} "
                                   f"epoch(s); the "
                                   f"best was epoch {best['epoch']} ({best['metric']:.4f})")
                    break
    finally:
        report.close()
    if best is not None and best["epoch"] != classifier.history[-1]["epoch"]:
        for (_, p), value in zip(params, best["params"]):
            p[...] = value
    return classifier


def class_labels(train, dev, task, labels):
    """(labels in id order, label -> id) of a classifier: labels= checked, or train's sorted; every train
    and dev label must be one of them."""
    def flat(examples):
        return [label for tags in examples.labels for label in tags] if task == "token" else list(examples.labels)
    labels = label_order(flat(train)) if labels is None else checked_labels(labels, "labels")
    if len(labels) < 2:      # a softmax over one class: loss 0 from the start, nothing to learn
        raise InputError(f"train has one label ({labels}); a classifier needs at least two (or pass labels=), "
                         "and a model with one output is task='regression' (--task regression)")
    if len(set(labels)) != len(labels):
        raise InputError(f"labels {labels} name a class twice")
    label2id = {label: i for i, label in enumerate(labels)}
    # Checked before training: a dev label the head has no class for would otherwise fail after an epoch.
    for what, examples in (("train", train), ("dev", dev or Examples(texts=[], labels=[]))):
        unknown = sorted({str(label) for label in flat(examples) if label not in label2id})
        if unknown:
            raise InputError(f"{what} has label(s) {', '.join(unknown[:5])} not in labels {labels}"
                             + ("; the classifier could never predict them: give every label to "
                                "finetune(labels=...), or (minibert finetune has no such option) put examples of "
                                "them in the training data" if what == "dev" else ""))
    return labels, label2id


def check_output_name(labels):
    """A regression model's one output: named LABEL_0 as transformers and sentence-transformers name it, or
    by labels= (one name)."""
    if labels is None:
        return ["LABEL_0"]
    labels = checked_labels(labels, "labels")
    if len(labels) != 1:
        raise InputError(f"labels {labels}: a regression model has one output; give one name or none")
    return labels


def scores(classifier, examples):
    """The scores CrossEncoder.predict gives: the one output with the stored activation applied [N]."""
    from .crossencoder import ACTIVATIONS
    logits = classifier.logits(examples.texts, examples.text_pairs)                     # [N, 1]
    return ACTIVATIONS[classifier.activation or "Identity"](logits)[:, 0]


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
    saved = train_state.restore_unfinished(checkpoint_dir, params, run, recipe, rng)
    classifier.history = saved["history"]
    best = saved["best"]
    return saved["adam"], saved["epoch"], best


def train_step(classifier, batch_items, params, state, recipe, lr, rng, objective="cross_entropy"):
    """One optimizer step on a list of tokenized examples; returns the batch's loss."""
    ids, mask, types, labels = collate(batch_items, classifier.config.pad_token_id,
                                       "regression" if objective in LOSSES else classifier.task)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):     # checked below: one clear error
        loss, _, weights_grads, head_grads = loss_and_grads(ids, mask, types, labels, classifier.weights,
                                                            classifier.head, classifier.config,
                                                            task=classifier.task, objective=objective,
                                                            dropout=recipe.dropout,
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
