"""Where a model directory comes from: a local folder, a Hugging Face hub id (through huggingface_hub's cache),
MINIBERT_MODEL, or the default model; and the hub id and commit of a folder in that cache."""

import os
from pathlib import Path

from ..errors import InputError, ModelFileError
from .default_model import verified_default_model_dir


# What load fetches from the hub besides the weights: the encoder's config and tokenizer, and
# sentence-transformers' recipe (its modules and their settings, also in a 0_Transformer/ layout).
HUB_FILES = ["config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
             "vocab.json", "merges.txt", "special_tokens_map.json", "modules.json", "*config.json",
             "config_sentence_transformers.json", "*/tokenizer.json", "*/vocab.txt", "*/vocab.json", "*/merges.txt",
             "*/special_tokens_map.json", "*/model.safetensors.index.json"]


def resolve_source(source, hub_options=None) -> Path:
    """A local directory, a Hugging Face hub id (through huggingface_hub's cache), or None for the default.
    hub_options: revision, token, cache_dir for snapshot_download (hub ids only)."""
    hub_options = {key: value for key, value in (hub_options or {}).items() if value is not None}
    if hub_options and (source is None or Path(source).expanduser().is_dir()):
        raise InputError(f"{', '.join(hub_options)} apply to hub ids; "
                         f"{source or 'the default model'} is a local directory")
    if source is None:
        source = os.environ.get("MINIBERT_MODEL") or None
    if source is None:
        return verified_default_model_dir()
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelFileError(f"{path}: a model source must be a directory (holding config.json and "
                             "model.safetensors) or a hub id")
    looks_like_path = str(source).startswith((".", "/", "~")) or os.sep in str(source).strip("/").replace("/", "", 1)
    if looks_like_path:
        raise ModelFileError(f"{source}: no such model directory")
    try:
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(str(source), allow_patterns=HUB_FILES + ["*.safetensors"], **hub_options))
        if not any(folder.rglob("*.safetensors")):
            # A checkpoint published only as PyTorch .bin (read without torch): fetched only when there is no
            # safetensors, since repositories that have both would otherwise download the weights twice.
            folder = Path(snapshot_download(str(source), allow_patterns=HUB_FILES + [
                "pytorch_model*.bin", "pytorch_model.bin.index.json", "*/pytorch_model*.bin",
                "*/pytorch_model.bin.index.json"], **hub_options))
        return folder
    except Exception as e:
        raise ModelFileError(f"{source}: not a local directory, and the hub could not provide it "
                             f"({type(e).__name__}: {e}); with HF_HUB_OFFLINE=1 only cached models load") from None


def hub_origin(model_dir: Path):
    """{"hub_id", "revision"} when model_dir is a snapshot in huggingface_hub's cache
    (.../models--ORG--NAME/snapshots/COMMIT), so a record of the model outlives the local path; else None."""
    snapshots = model_dir.resolve().parent
    repo = snapshots.parent.name
    if snapshots.name != "snapshots" or not repo.startswith("models--"):
        return None
    return {"hub_id": repo[len("models--"):].replace("--", "/"), "revision": model_dir.resolve().name}
