"""What a model directory holds: which checkpoint files load reads (single file or shards), the one error for a
directory with neither weights nor tokenizer, the files `minibert inspect` lists as used and ignored, and the
NaN/Inf check of every stored tensor (`inspect --check`).
"""

import json
import posixpath
from pathlib import Path

import numpy as np

from .. import files
from ..errors import ModelFileError
from .safetensors import Checkpoint


# The layouts minibert reads, in order of preference: (single file, shard index).
LAYOUTS = [("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")]


def checkpoint_files(model_dir: Path) -> list:
    """model.safetensors, or the shards its index names; else pytorch_model.bin, or the shards its index
    names (safetensors first: it needs no unpickling and maps without conversion)."""
    for single, index in ((model_dir / a, model_dir / b) for a, b in LAYOUTS):
        if files.is_present(single, ModelFileError, "the checkpoint"):
            return [single]
        if files.is_present(index, ModelFileError, "the shard index"):
            return shard_files(model_dir, index)
    found = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.h5"))
    hint = f" (found {', '.join(found)}: convert it to safetensors)" if found else ""
    raise ModelFileError(f"{model_dir}: no model.safetensors, pytorch_model.bin or a shard index of either{hint}")


def check_model_directory(model_dir: Path) -> None:
    """One error naming every missing part when neither weights nor a tokenizer are there (a wrong directory,
    a download that fetched only some files), instead of only the first one load would meet."""
    from ..tokenizer import has_tokenizer_files, tokenizer_dir
    if any(files.is_present(model_dir / name, ModelFileError, name) for layout in LAYOUTS for name in layout):
        return
    if has_tokenizer_files(tokenizer_dir(model_dir)):
        return
    missing = ["weights (model.safetensors, pytorch_model.bin or a shard index of either)",
               "a tokenizer (tokenizer.json, vocab.txt, or vocab.json + merges.txt)"]
    if not files.is_present(model_dir / "config.json", ModelFileError, "config.json"):
        missing.insert(0, "config.json")
    try:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in model_dir.iterdir())
    except OSError as e:
        found = [f"(cannot list: {e.strerror or e})"]
    shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "") if found else "nothing"
    raise ModelFileError(f"{model_dir}: missing {', '.join(missing[:-1])} and {missing[-1]} (found {shown}); "
                         "is this the model's directory?")


def used_and_ignored_files(model_dir: Path, encoder_path: str, tokenizer_files, recipe_files=()) -> tuple:
    """(files load read, other entries), by path relative to model_dir, for `minibert inspect`: the recipe's
    files, then the encoder's (in encoder_path, "" for the root) and its tokenizer's ("../vocab.txt" when read
    one level up). Unused entries of model_dir and of every folder holding a used file are listed as ignored;
    a folder nothing was read from is one entry ("2_Dense/")."""
    encoder_dir = model_dir / encoder_path
    weights = [p.name for p in checkpoint_files(encoder_dir)]
    index = [name for single, name in LAYOUTS if (encoder_dir / name).is_file() and single not in weights]
    encoder_files = [posixpath.normpath(posixpath.join(encoder_path or ".", name))
                     for name in ["config.json", *index, *weights, *tokenizer_files]]
    used = list(dict.fromkeys([*recipe_files, *encoder_files]))
    folders = {""} | {posixpath.dirname(name) for name in used if not name.startswith("../")}
    ignored = []
    for folder in sorted(folders):
        for entry in sorted((model_dir / folder).iterdir()):
            name = posixpath.join(folder, entry.name) if folder else entry.name
            if name in used or name in folders:
                continue
            ignored.append(name + ("/" if entry.is_dir() else ""))
    return used, ignored


def shard_files(model_dir: Path, index: Path) -> list:
    try:
        raw = files.read_limited(index, files.SETTINGS_LIMIT, ModelFileError, "the shard index")
        weight_map = json.loads(raw.decode("utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ModelFileError(f"{index}: cannot read the shard index ({type(e).__name__}: {e}); "
                             "re-download it or the checkpoint") from None
    for name in shards:
        if not isinstance(name, str) or Path(name).name != name or not name:
            raise ModelFileError(f"{index}: shard name {name!r} is not a file name in the model directory")
    return [model_dir / name for name in shards]


def non_finite_tensors(model_dir: Path) -> list:
    """(checkpoint tensor name, NaN count, Inf count, element count) for every floating-point tensor of the
    checkpoint holding NaN or Inf, in file order; read one tensor at a time in its stored precision."""
    checkpoint = Checkpoint(checkpoint_files(Path(model_dir)))
    found = []
    for name, (path, stored, *_) in checkpoint.location.items():
        if stored not in ("F16", "BF16", "F32", "F64"):
            continue
        array = checkpoint.read(name, np.float64 if stored == "F64" else np.float32)
        nan = int(np.isnan(array).sum())
        inf = int(np.isinf(array).sum())
        if nan or inf:
            found.append((name, nan, inf, int(array.size)))
    return found
