"""What an interrupted fine-tuning run needs to go on exactly where it stopped, kept beside its checkpoint.

After every finished epoch `finetune` writes STATE_FILE into the checkpoint directory: every trainable
parameter as it stands (in the training dtype: the checkpoint itself is float32, and may hold an earlier,
better epoch when early stopping is on), AdamW's moments and step count, the generator's state (it draws
the head, every dropout mask and each epoch's batch order, so the seed alone would replay epoch 1's order),
the history, the best epoch so far and its parameters, and a description of the run (recipe, task, labels,
model, a digest of the data). Resuming checks that description first: a run continued with other settings
or data would be a different run, not the same one finished.

The file is one .npz: arrays "param/NAME", "m/NAME", "v/NAME", "best/NAME" (only while the best epoch is
an earlier one) and "meta", a JSON string. It is written to a temporary name and renamed, so an
interrupt while saving leaves the previous epoch's state whole.
"""

import hashlib
import json
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelFileError
from ..files import atomic_file

STATE_FILE = "minibert_training_state.npz"
FORMAT = 1


def data_digest(items):
    """sha256 of the tokenized examples (ids, token types, labels), in order. Regression labels are hashed as
    float64 (as int64 they would be cut: 0.25 and 0.75 would be the same data)."""
    digest = hashlib.sha256()
    for ids, types, labels in items:
        labels = np.asarray(labels)
        for array in (ids, types, labels):
            kind = np.float64 if array is labels and array.dtype.kind == "f" else np.int64
            digest.update(np.ascontiguousarray(array, dtype=kind).tobytes())
            digest.update(b"|")
    return digest.hexdigest()


def describe_run(recipe, task, labels, source, train_items, dev_items, loss=None):
    """The settings that make two runs the same run (JSON-ready); loss: the regression task's objective."""
    return {**({"loss": loss} if loss else {}), "recipe": json.loads(json.dumps(asdict(recipe))), "task": task,
            "labels": [str(x) for x in labels],
            # resolved: the same folder named relatively, then absolutely, is the same model
            "model": str(Path(source).resolve()) if Path(source).exists() else str(source),
            "train": data_digest(train_items),
            "dev": data_digest(dev_items) if dev_items is not None else None}


def save_state(directory, *, params, adam, rng, epoch, history, best, run):
    """params: [(name, array)] (optimizer.trainable); adam: AdamW's state dict; best: {"epoch", "metric",
    "params" (a list like params' arrays, or None when the best epoch is this one)} or None."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (name, p) in enumerate(params):
        arrays[f"param/{name}"] = p
        if adam:
            arrays[f"m/{name}"], arrays[f"v/{name}"] = adam["m"][i], adam["v"][i]
        if best is not None and best["params"] is not None:
            arrays[f"best/{name}"] = best["params"][i]
    meta = {"format": FORMAT, "epoch": epoch, "adam_step": adam.get("step", 0) if adam else 0,
            "rng": rng.bit_generator.state, "history": history, "run": run,
            "best": None if best is None else {"epoch": best["epoch"], "metric": best["metric"]}}
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_file(directory / STATE_FILE) as f:     # a full disk: one error naming the file, no leftover
        np.savez(f, **arrays)


def load_state(directory, params, run):
    """The saved state of the run in `directory`, checked against this run's description `run`:
    {"epoch", "adam", "rng_state", "history", "best"} with arrays in params' order. InputError when there
    is nothing to resume or the run differs; ModelFileError when the file is damaged."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise InputError(f"{directory}: no {STATE_FILE} to resume from (it is written after each finished "
                         "epoch; start the run without --resume)")
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
        meta = json.loads(str(stored["meta"]))
        if not isinstance(meta, dict) or not {"epoch", "adam_step", "rng", "history", "run", "best"} <= set(meta):
            raise ValueError("its meta record lacks fields")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:     # truncated, empty, damaged
        raise ModelFileError(f"{path}: not a readable minibert training state ({type(e).__name__}: {e}); the "
                             "run cannot resume from it: start it again without --resume") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: training state format {meta.get('format')}, this minibert reads {FORMAT}")
    differences = run_differences(meta["run"], run)
    if differences:
        raise InputError(f"{directory}: the run saved there differs from this one ({'; '.join(differences)}); "
                         "resume with the same data and settings")
    names = [name for name, _ in params]
    missing = [name for name in names if f"param/{name}" not in stored]
    if missing:
        raise ModelFileError(f"{path}: no saved value for parameter(s) {missing[:3]}")

    def listed(prefix):
        return [stored[f"{prefix}/{name}"] for name in names] if f"{prefix}/{names[0]}" in stored else None
    m, v = listed("m"), listed("v")
    adam = {"step": meta["adam_step"], "m": m, "v": v} if m is not None else {}
    best = meta["best"]
    if best is not None:
        best = {**best, "params": listed("best")}
    return {"epoch": meta["epoch"], "params": listed("param"), "adam": adam, "rng_state": meta["rng"],
            "history": meta["history"], "best": best}


def restore_unfinished(directory, params, run, recipe, rng):
    """--resume for finetune and pretrain: the state saved in directory put back (parameters in place, so
    shared arrays stay shared; the generator's state; the best epoch's parameters when that epoch was the last
    finished one), after refusing a run that has finished (every epoch done, or stopped early by patience).
    Returns load_state's dict."""
    saved = load_state(directory, params, run)
    stopped = (recipe.patience is not None and saved["best"] is not None
               and saved["epoch"] - saved["best"]["epoch"] >= recipe.patience)
    if saved["epoch"] >= recipe.epochs or stopped:
        raise InputError(f"{directory}: the run saved there has finished (epoch {saved['epoch']} of "
                         f"{recipe.epochs}{', stopped early' if stopped else ''}); nothing to resume")
    for (_, p), value in zip(params, saved["params"]):
        p[...] = value
    rng.bit_generator.state = saved["rng_state"]
    best = saved["best"]
    if best is not None and best["params"] is None:       # the last finished epoch was the best one
        best["params"] = [p.copy() for _, p in params]
    return saved


def saved_task(directory):
    """The task of the run whose state `directory` holds ("mlm" for pretrain, else finetune's task), or None
    when there is no state or it cannot be read (only its meta record is read)."""
    try:
        with np.load(Path(directory) / STATE_FILE, allow_pickle=False) as data:
            run = json.loads(str(data["meta"])).get("run")
        return run.get("task") if isinstance(run, dict) else None
    except (OSError, ValueError, KeyError, AttributeError, EOFError, zipfile.BadZipFile):
        return None


def run_differences(saved, current):
    """'recipe.lr 0.001 then, 0.002 now' for each setting that differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k} {a.get(k)!r} then, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"the {key} data differs" if key in ("train", "dev") else f"{key} {a!r} then, {b!r} now")
    return out
