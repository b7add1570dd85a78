"""PCA on extractions and search over them: against NumPy computed here (direct SVD, brute-force cosine)."""

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import minibert
from minibert.corpus import reduce, search
from minibert.cli import main
from minibert.errors import InputError, MiniBertError
from minibert.corpus.extract import extract
from tiny import write_tiny

CORPUS = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today.",
          "Shares dropped on Wall Street.", "A cat sleeps on the sofa.", "The kitten naps on the couch.",
          "Heavy rain is expected tomorrow.", "The forecast says it will pour.", "He cooked pasta for dinner.",
          "She baked bread this morning.", "The train was late again.", "Our flight was delayed by an hour."]


@pytest.fixture(scope="module")
def model(model_for):
    return model_for("cpu")


@pytest.fixture()
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n")
    return path


# ----- PCA ---------------------------------------------------------------------------------------------------

def test_pca_matches_direct_svd_and_chunking(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 10)) @ rng.standard_normal((10, 10)) + 3.0     # correlated, off-centre
    monkeypatch.setattr(reduce, "CHUNK", 7)                                       # several partial sums
    pca = reduce.fit_pca(X, 4)
    centred = X - X.mean(0)
    _, s, Vt = np.linalg.svd(centred, full_matrices=False)                       # the textbook route
    signs = np.sign((pca.components * Vt[:4]).sum(1))
    np.testing.assert_allclose(pca.components, Vt[:4] * signs[:, None], atol=1e-10)
    np.testing.assert_allclose(pca.explained_variance, s[:4] ** 2 / 49, rtol=1e-10)
    assert pca.variance_kept == pytest.approx((s[:4] ** 2).sum() / (s ** 2).sum())
    np.testing.assert_allclose(pca.transform(X), centred @ pca.components.T, atol=1e-10)


def test_whitened_components_have_unit_variance():
    X = np.random.default_rng(1).standard_normal((40, 6)) * [5, 3, 2, 1, 0.5, 0.1]
    Z = reduce.fit_pca(X, 3, whiten=True).transform(X)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(Z.var(0, ddof=1), 1, rtol=1e-10)


def test_bad_specs():
    with pytest.raises(InputError, match="pca:K"):
        reduce.parse_reduce("svd:3")
    with pytest.raises(InputError, match="pca:K"):
        reduce.parse_reduce("pca:0")
    with pytest.raises(InputError, match=r"at most min\(rows - 1, width\) = 4 \(the vector width\)"):
        reduce.fit_pca(np.ones((6, 4)), 5)


def test_extract_reduce_end_to_end(model, corpus_file, tmp_path, capsys):
    out = tmp_path / "vecs"
    assert main(["extract", str(corpus_file), "--out", str(out), "--reduce", "pca:5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    emb = minibert.load_embeddings(out)
    kept = emb.manifest["reduce"]
    assert kept["k"] == 5 and {"pca.npz", "reduced.npy"} <= set(emb.manifest["files"])
    assert not list(out.glob("*.partial"))
    vectors = np.asarray(emb.vectors, dtype=np.float64)
    centred = vectors - vectors.mean(0)
    s = np.linalg.svd(centred, compute_uv=False)
    assert kept["variance_kept"] == pytest.approx((s[:5] ** 2).sum() / (s ** 2).sum(), rel=1e-6)
    assert f"{kept['variance_kept']:.1%}" in printed
    np.testing.assert_allclose(emb.reduced, emb.project(vectors), atol=1e-5)
    # New texts get the same projection: centre with the corpus mean, onto the stored components.
    new = model.encode(["A woman plays the violin."])
    pca = reduce.PCA.load(out / "pca.npz")
    np.testing.assert_allclose(emb.project(new), (new - pca.mean) @ pca.components.T, atol=1e-6)
    assert emb.project(new).shape == (1, 5)


def test_reduce_needs_one_vector_per_row(model, tmp_path):
    extract(model, CORPUS, tmp_path / "all", layers="all")
    with pytest.raises(InputError, match="one vector per row"):
        reduce.reduce_extraction(tmp_path / "all", "pca:4")
    with pytest.raises(MiniBertError, match="no projection"):
        minibert.load_embeddings(tmp_path / "all").project(np.zeros(384))


# ----- search ------------------------------------------------------------------------------------------------

def test_top_k_equals_brute_force_across_chunks(monkeypatch):
    rng = np.random.default_rng(2)
    matrix, queries = rng.standard_normal((103, 8)), rng.standard_normal((3, 8))
    monkeypatch.setattr(search, "CHUNK", 10)
    idx, scores = search.top_k(matrix, queries, 25)
    cos = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ \
        (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).T
    want = np.argsort(-cos, axis=1)[:, :25]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(scores, np.take_along_axis(cos, want, axis=1), atol=1e-6)
    assert search.top_k(matrix[:4], queries, 10)[0].shape == (3, 4)      # k larger than the index


def test_search_refuses_an_extraction_holding_nan_naming_the_row(model, corpus_file, tmp_path):
    """A NaN row scored NaN against every query and ranked anywhere among the hits; now it is named."""
    out = tmp_path / "vecs"
    extract(model, CORPUS, out, source_file=str(corpus_file))
    vectors = np.load(out / "vectors.npy", mmap_mode="r+")
    vectors[2, 5] = np.nan
    vectors.flush()
    del vectors
    with pytest.raises(MiniBertError, match=r"row 2 of the extraction holds NaN or inf \(1 such rows"):
        minibert.search(model, out, CORPUS[0], k=3)


def test_model_search_over_an_extraction(model, corpus_file, tmp_path):
    out = tmp_path / "vecs"
    extract(model, CORPUS, out, layers=[0, 2, -1], source_file=str(corpus_file))
    hits = minibert.search(model, out, CORPUS[3], k=3)                   # the last layer kept, by default
    assert hits[0].index == 3 and hits[0].text == CORPUS[3] and hits[0].score == pytest.approx(1, abs=1e-5)
    # Scores at layer 2 are the cosines of encode(layers=2) vectors.
    vecs = model.encode(CORPUS + ["Stocks tumbled."], layers=2, normalize=True).astype(np.float64)
    cos = vecs[:-1] @ vecs[-1]
    [hits] = minibert.search(model, out, ["Stocks tumbled."], k=len(CORPUS), layer=2)
    assert [h.index for h in hits] == np.argsort(-cos).tolist()
    np.testing.assert_allclose([h.score for h in hits], np.sort(cos)[::-1], atol=1e-5)
    with pytest.raises(InputError, match="was not extracted"):
        minibert.search(model, out, "x", layer=4)


def test_model_search_is_deprecated_for_minibert_search(model, corpus_file, tmp_path):
    """Model.search made api (the front door) import corpus.search (a stage above it, tests/test_structure.py):
    minibert.search(model, ...) is the way now, and Model.search warns and gives the same hits."""
    out = tmp_path / "vecs"
    extract(model, CORPUS, out, source_file=str(corpus_file))
    queries = ["Stocks tumbled.", CORPUS[3]]
    hits = minibert.search(model, out, queries, k=3)
    assert hits[1][0].index == 3 and len(hits) == 2 and all(len(h) == 3 for h in hits)
    with pytest.warns(DeprecationWarning, match=r"use minibert\.search\(model, index_dir, queries"):
        assert model.search(out, queries, k=3) == hits
    assert [hit.index for hit in minibert.search(model, out, CORPUS[3], k=1)] == [3]   # one query: one list


def test_search_command_texts_and_reduced(model, corpus_file, tmp_path, capsys):
    out = tmp_path / "vecs"
    assert main(["extract", str(corpus_file), "--out", str(out), "--reduce", "pca:6", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(out), "Someone plays an instrument.", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query: 'Someone plays an instrument.'" and lines[1].endswith("[1] Someone plays an instrument.")
    assert main(["search", str(out), CORPUS[8], "-k", "1", "--reduced"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(f"[8] {CORPUS[8]}")
    moved = tmp_path / "moved.txt"
    corpus_file.rename(moved)                                             # the input is gone: row numbers only
    assert main(["search", str(out), CORPUS[0], "-k", "1"]) == 0
    printed = capsys.readouterr().out
    assert "row 0" in printed and "pass --texts" in printed
    assert main(["search", str(out), CORPUS[0], "-k", "1", "--texts", str(moved)]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(f"[0] {CORPUS[0]}")


def test_search_json_and_the_extraction_recipe(model, corpus_file, tmp_path, capsys):
    """The default extraction follows the model's recipe (all-MiniLM-L6-v2: mean pooling, normalised), as
    encode() does, and says so in its manifest; search --json gives the same hits as the text output."""
    out = tmp_path / "vecs"
    assert main(["extract", str(corpus_file), "--out", str(out), "--quiet"]) == 0
    emb = minibert.load_embeddings(out)
    assert emb.manifest["recipe"] == {"kind": "sentence-transformers", "pooling": "mean", "normalize": True,
                                      "max_length": 256, "dense": [], "prompt": None}
    np.testing.assert_array_equal(emb.vectors, model.encode(CORPUS))
    capsys.readouterr()
    assert main(["search", str(out), CORPUS[3], "Stocks tumbled.", "-k", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    hits = minibert.search(model, out, [CORPUS[3], "Stocks tumbled."], k=3)
    assert [r["query"] for r in printed] == [CORPUS[3], "Stocks tumbled."]
    assert [[(h["rank"], h["index"], h["score"], h["text"]) for h in r["hits"]] for r in printed] == \
        [[(i, h.index, h.score, h.text) for i, h in enumerate(row, 1)] for row in hits]
    assert printed[0]["hits"][0] == {"rank": 1, "index": 3, "score": printed[0]["hits"][0]["score"], "text": CORPUS[3]}


def test_search_refuses_another_model_and_token_output(model, tmp_path):
    extract(model, CORPUS[:4], tmp_path / "vecs")
    tiny = minibert.load(write_tiny(tmp_path / "tiny"), backend="numpy")
    with pytest.raises(MiniBertError, match="extracted with"):
        minibert.search(tiny, tmp_path / "vecs", "the cat")
    extract(model, CORPUS[:4], tmp_path / "tokens", pooling="none")
    with pytest.raises(InputError, match="token-level"):
        minibert.search(model, tmp_path / "tokens", "the cat")


def test_search_refuses_the_same_weights_under_another_recipe(tmp_path, capsys):
    """The config check passed for the same encoder loaded without its sentence-transformers modules (its
    0_Transformer/ folder, or its files copied without modules.json), and the query was then pooled by that
    recipe: mean against a CLS-pooled corpus, a text's own row scored 0.64 instead of 1, silently; or,
    without the Dense head, a raw ValueError from the matmul (16 against 10 columns)."""
    import shutil

    from conftest import FIXTURES
    texts = ["the cat sat", "hello world", "a dog runs"]
    cls_model = minibert.load(str(FIXTURES / "st_cls"), backend="numpy")
    extract(cls_model, texts, tmp_path / "cls")
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "st_cls" / name, plain / name)
    with pytest.raises(MiniBertError, match="pooling cls.*pooling mean"):
        minibert.search(minibert.load(str(plain), backend="numpy"), tmp_path / "cls", "hello world")
    assert minibert.search(cls_model, tmp_path / "cls", "hello world", k=1)[0].index == 1
    legacy = FIXTURES / "st_legacy_layout_prompts"
    extract(minibert.load(str(legacy), backend="numpy"), texts, tmp_path / "dense")
    capsys.readouterr()
    assert main(["search", str(tmp_path / "dense"), "hello", "--model", str(legacy / "0_Transformer")]) == 1
    assert "dense ['2_Dense']" in capsys.readouterr().err


def test_similarity_matrix_command(model, corpus_file, capsys):
    assert main(["similarity", "--matrix", str(corpus_file), "--layer", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "cosine similarity, layer 3, mean pooling"
    rows = [line.split()[1:] for line in lines[2 + len(CORPUS):]]
    printed = np.array(rows, dtype=float)
    vecs = model.encode(CORPUS, layers=3, normalize=True).astype(np.float64)
    np.testing.assert_allclose(printed, vecs @ vecs.T, atol=5e-4)          # printed to 3 decimals
    assert main(["similarity", "only one text"]) == 1


# ----- PCA refusals and full disks ---------------------------------------------------------------------------

def test_k_beyond_rows_minus_one_is_refused():
    """5 centred vectors span at most 4 directions: a 5th component is rounding noise (whitened, it swamped
    every cosine and search printed +0.0000 for all hits)."""
    X = np.random.default_rng(3).standard_normal((5, 10))
    assert reduce.fit_pca(X, 4).components.shape == (4, 10)
    with pytest.raises(InputError, match=r"K = 5 on 5 vectors of 10 features: .* = 4 \(rows - 1\)"):
        reduce.fit_pca(X, 5)


def test_whiten_refuses_directions_without_variance():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 2)) @ rng.standard_normal((2, 6))        # 30 rows spanning 2 dimensions
    assert reduce.fit_pca(X, 3).components.shape == (3, 6)                # without --whiten a 3rd is harmless
    assert reduce.fit_pca(X, 2, whiten=True).components.shape == (2, 6)
    with pytest.raises(InputError, match="span only 2 dimension"):
        reduce.fit_pca(X, 3, whiten=True)


@pytest.mark.parametrize("argv, message", [
    (["--reduce", "pca:12", "--whiten"], r"K = 12 on 12 vectors of 384 features: .* = 11"),
    (["--reduce", "pca:4", "--layers", "all"], r"one vector per row, but the options give \[7, 384\]"),
    (["--reduce", "pca:385", "--combine", "mean", "--layers", "-2,-1"], r"= 11 \(rows - 1\)"),
    (["--whiten"], "pass --reduce too"),
])
def test_extract_refuses_reduce_options_before_any_work(model, corpus_file, tmp_path, capsys, monkeypatch, argv,
                                                        message):
    import minibert.corpus.resume
    # extract's own checks (one probe text encoded) refuse it before the output directory is locked
    monkeypatch.setattr(minibert.corpus.resume, "directory_lock",
                        lambda *a, **k: pytest.fail("the extraction started"))
    out = tmp_path / "vecs"
    assert main(["extract", str(corpus_file), "--out", str(out), "--quiet", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minibert: error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not out.exists()                                               # nothing on disk


class FullDisk:
    """A file whose writes fail with ENOSPC, as on a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("full", ["pca.npz", "reduced.npy", "manifest.json"])
def test_full_disk_during_reduce_leaves_the_extraction_intact(model, tmp_path, monkeypatch, full):
    out = tmp_path / "vecs"
    extract(model, CORPUS, out)
    reduce.reduce_extraction(out, "pca:3")                # an earlier projection, which must survive
    before = snapshot(out)
    real_open = open

    def open_on_full_disk(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        return FullDisk(f) if Path(path).name.startswith(full) else f
    monkeypatch.setattr(reduce, "open", open_on_full_disk, raising=False)
    with pytest.raises(MiniBertError, match=r"disk full while writing the PCA files \(No space left on device\); "
                                            "the extraction is intact"):
        reduce.reduce_extraction(out, "pca:5")
    assert snapshot(out) == before                                         # no .partial, nothing replaced
    assert minibert.load_embeddings(out).manifest["reduce"]["k"] == 3


def test_reduce_writes_no_memory_map(model, tmp_path, monkeypatch):
    """A write into a mapped page of a file on a full disk kills the process with SIGBUS: reduce may read
    through memory maps but never write through one."""
    out = tmp_path / "vecs"
    extract(model, CORPUS, out)
    real_memmap, real_open_memmap = np.memmap.__new__, np.lib.format.open_memmap

    def read_only(mode):
        assert mode in ("r", "c"), f"a memory map opened for writing (mode {mode!r})"

    monkeypatch.setattr(np.memmap, "__new__", lambda cls, *a, mode="r+", **k:
                        read_only(mode) or real_memmap(cls, *a, mode=mode, **k))
    monkeypatch.setattr(np.lib.format, "open_memmap", lambda *a, mode="r+", **k:
                        read_only(mode) or real_open_memmap(*a, mode=mode, **k))
    kept = reduce.reduce_extraction(out, "pca:4")["reduce"]
    emb = minibert.load_embeddings(out)
    assert kept["k"] == 4 and emb.reduced.shape == (len(CORPUS), 4)
    np.testing.assert_allclose(emb.reduced, emb.project(np.asarray(emb.vectors, dtype=np.float64)), atol=1e-5)


FULL_DISK_SCRIPT = r"""
import hashlib, json, os, subprocess, sys
from pathlib import Path
mount, corpus, tiny = map(Path, sys.argv[1:4])
out = mount / "vecs"
cli = [sys.executable, "-m", "minibert", "extract", str(corpus), "--out", str(out), "--model", str(tiny),
       "--backend", "numpy", "--quiet"]
subprocess.run(cli, check=True, capture_output=True)
state = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}
before = state()
fs = os.statvfs(mount)
with open(mount / "filler", "wb") as f:           # leave 16 KiB: room for pca.npz, not for reduced.npy
    f.write(b"\0" * (fs.f_bavail * fs.f_frsize - 16384))
run = subprocess.run(cli + ["--resume", "--reduce", "pca:8"], capture_output=True, text=True)
print(json.dumps({"rc": run.returncode, "stderr": run.stderr, "before": before, "after": state()}))
"""


def test_reduce_on_a_really_full_disk(tmp_path):
    """A 1 MiB tmpfs in a private mount namespace (`unshare -rm`, no root needed where user namespaces are
    allowed): the extraction fits, reduced.npy (96 KiB) does not. Through a memory map this was SIGBUS."""
    import shutil
    import subprocess
    import sys
    from tiny import write_tiny
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("unshare -rm is not available here (no user namespaces)")
    (tmp_path / "fs").mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the cat sat on the mat {'dog ' * (i % 5)}\n" for i in range(3000)))
    (tmp_path / "full.py").write_text(FULL_DISK_SCRIPT)
    run = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1" && shift && exec "$@"',
                          "sh", str(tmp_path / "fs"), sys.executable, str(tmp_path / "full.py"), str(tmp_path / "fs"),
                          str(corpus), str(write_tiny(tmp_path / "tiny"))], capture_output=True, text=True)
    if run.returncode and "mount" in run.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["rc"] == 1, result                                       # -7 (SIGBUS) before
    assert result["stderr"].startswith("minibert: error: ") and result["stderr"].count("\n") == 1
    assert "disk full" in result["stderr"] and "the extraction is intact" in result["stderr"]
    assert result["after"] == result["before"]                             # no .partial left, nothing changed


def test_ray_extract_checks_k_against_the_rows_before_starting_ray(corpus_file, tmp_path, capsys, monkeypatch):
    """The Ray engine loads the model on its workers, so only what needs no model is checked here: K
    against the rows (the width is checked after the extraction, which then stays)."""
    import minibert
    monkeypatch.setattr(minibert, "load", lambda *a, **k: pytest.fail("the model was loaded here"))
    out = tmp_path / "vecs"
    assert main(["extract", str(corpus_file), "--out", str(out), "--engine", "ray", "--reduce", "pca:12"]) == 1
    err = capsys.readouterr().err
    assert err == ("minibert: error: PCA with K = 12 on 12 vectors: K can be at most min(rows - 1, width) = 11 "
                   "(rows - 1); choose a smaller K\n") and not out.exists()


def test_a_hub_model_is_recorded_by_id_and_commit_and_found_again_by_them(tmp_path):
    """A model from the hub cache (.../models--ORG--NAME/snapshots/COMMIT) is recorded in the manifest as its
    hub id and commit, and `search` reloads it by them when the recorded snapshot path is gone. Offline:
    huggingface_hub resolves the id from the cache alone (HF_HUB_OFFLINE, read when it is imported, hence
    the child process)."""
    import subprocess
    import sys
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-bert"
    write_tiny(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (tmp_path / "c.txt").write_text("\n".join(CORPUS) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "MINIBERT_MODEL": ""}
    script = f"""
import json, shutil, sys
import minibert
from minibert.cli import main
model = minibert.load("someone/tiny-bert")
assert model.origin == {{"hub_id": "someone/tiny-bert", "revision": "{commit}"}}, model.origin
assert main(["extract", {str(tmp_path / "c.txt")!r}, "--out", {str(tmp_path / "o")!r}, "--model", "someone/tiny-bert",
             "--quiet"]) == 0
manifest = json.load(open({str(tmp_path / "o" / "manifest.json")!r}))
assert manifest["model_hub"] == model.origin, manifest["model_hub"]
manifest["model_source"] = {str(tmp_path / "gone")!r}           # another machine: that path does not exist
json.dump(manifest, open({str(tmp_path / "o" / "manifest.json")!r}, "w"))
sys.exit(main(["search", {str(tmp_path / "o")!r}, {CORPUS[4]!r}, "-k", "1", "--json"]))
"""
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    [result] = json.loads(run.stdout.splitlines()[-1])
    assert result["hits"][0]["index"] == 4


# ----- an extraction folder is trusted only as far as it checks out -------------------------------------------
# Each case edits or damages a real extraction the way a user, a disk or an attacker could; every one was a raw
# KeyError/ValueError/SafetensorError, a hang, a partial search or another file's lines before.

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return minibert.load(str(write_tiny(tmp_path_factory.mktemp("tiny"))), backend="cpu")


@pytest.fixture(scope="module")
def extractions(tiny, tmp_path_factory):
    """One finished extraction per format (npy with --reduce), of CORPUS read from a file."""
    root = tmp_path_factory.mktemp("extractions")
    (root / "corpus.txt").write_text("\n".join(CORPUS) + "\n")
    from minibert.corpus.readers import open_corpus
    for fmt in ("npy", "npz", "safetensors", "jsonl"):
        extract(tiny, open_corpus(str(root / "corpus.txt")), root / fmt, fmt=fmt,
                reduce="pca:3" if fmt == "npy" else None)
    extract(tiny, CORPUS, root / "tokens", pooling="none")
    return root


@pytest.fixture
def folder(extractions, tmp_path):
    """A copy of one extraction, to damage: folder("npy") -> (directory, its manifest as a dict)."""
    import shutil

    def copy(fmt):
        shutil.copytree(extractions / fmt, tmp_path / fmt)
        return tmp_path / fmt, json.loads((tmp_path / fmt / "manifest.json").read_text())
    return copy


def edit(directory, **changes):
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.update(changes)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def refused(directory, message):
    with pytest.raises(InputError, match=message):
        minibert.load_embeddings(directory)


@pytest.mark.parametrize("fmt, name", [("npy", "vectors.npy"), ("npz", "vectors.npz"),
                                       ("safetensors", "vectors-00000.safetensors"), ("jsonl", "vectors.jsonl"),
                                       ("tokens", "tokens.npy"), ("tokens", "offsets.npy"), ("npy", "reduced.npy")])
def test_a_truncated_data_file_is_one_clear_error(folder, fmt, name):
    """The most realistic damage (a copy cut short): `mmap length is greater than file size` before."""
    directory, _ = folder(fmt)
    data = (directory / name).read_bytes()
    (directory / name).write_bytes(data[:len(data) - 8])
    with pytest.raises(InputError, match=f"{directory}: .*; the extraction directory is damaged or was edited"):
        emb = minibert.load_embeddings(directory)
        emb.reduced


def test_search_on_a_truncated_folder_is_one_line(folder, capsys):
    directory, _ = folder("npy")
    data = (directory / "vectors.npy").read_bytes()
    (directory / "vectors.npy").write_bytes(data[:-4])
    assert main(["search", str(directory), "a cat"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"vectors.npy holds \d+ bytes where its \[12, 16\] rows need "
                                              r"\d+ \(truncated\)", err), err


def test_a_fifo_in_place_of_a_data_file_is_refused_without_opening_it(folder):
    """A FIFO named vectors.npy hung search forever (np.load opened it and waited for a writer)."""
    import threading
    directory, _ = folder("npy")
    (directory / "vectors.npy").unlink()
    os.mkfifo(directory / "vectors.npy")
    outcome = []

    def load():
        try:
            minibert.load_embeddings(directory)
        except Exception as e:
            outcome.append(e)
    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():                     # release the hung open so the test process can end
        fd = os.open(directory / "vectors.npy", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("load_embeddings opened the FIFO and waited")
    assert isinstance(outcome[0], InputError) and "is a FIFO (named pipe), not a regular file" in str(outcome[0])


def test_fewer_rows_than_the_count_are_refused(folder, tiny, tmp_path):
    """30 rows against count 40 was searched partially without a word."""
    directory, manifest = folder("npy")
    edit(directory, count=manifest["count"] + 10, reduce=None, files=["vectors.npy"])
    refused(directory, r"vectors.npy holds float32 \[12, 16\], but the manifest says float32 \[22, 16\]")
    directory, manifest = folder("jsonl")
    edit(directory, count=40)
    refused(directory, "vectors.jsonl holds 12 rows, but the manifest says 40")
    directory, manifest = folder("safetensors")
    edit(directory, count=40)
    refused(directory, r"vectors-00000.safetensors holds F32 \[12, 16\] .*, but the manifest says float32 \[40, 16\]")


@pytest.mark.parametrize("changes, message", [
    ({"files": ["/etc/passwd"]}, "'files' must be a list of the file names an extraction holds"),
    ({"files": ["../npz/vectors.npy"]}, "'files' must be a list of the file names"),
    ({"files": ["vectors.npz"]}, r"'files' \['vectors.npz'\] do not match format 'npy'"),
    ({"reduce": {"method": "pca", "k": 3, "whiten": False, "fitted_on": "vectors", "rows": 12,
                 "variance_kept": 0.5, "projection": "/tmp/pca.npz", "vectors": "reduced.npy"}},
     "'projection' must be \"pca.npz\""),
    ({"reduce": {"method": "pca", "k": 3, "whiten": False, "fitted_on": "vectors", "rows": 12,
                 "variance_kept": 0.5, "projection": "pca.npz", "vectors": "../reduced.npy"}},
     "'vectors' must be \"reduced.npy\""),
    ({"input": "../corpus.txt"}, "'input' must be null, \"-\" or an absolute path"),
    ({"count": "12"}, "'count' must be an int >= 0, found \"12\""),
    ({"count": -1}, "'count' must be an int >= 0"),
    ({"dtype": "object"}, "'dtype' must be one of float16, float32, float64"),
    ({"row_shape": [16, 0]}, "'row_shape' must be a list of at most 3 positive ints"),
    ({"layers": {"a": 1}}, "'layers' must be an int, a list of ints or 'all'"),
    ({"surprise": 1}, "unknown key\\(s\\) 'surprise'"),
    ({"model_hub": {"hub_id": "../../etc", "revision": "main"}}, "'model_hub' must be null or"),
    ({"complete": "yes"}, "'complete' must be true or false"),
])
def test_every_manifest_field_is_checked(folder, changes, message):
    directory, _ = folder("npy")
    edit(directory, **changes)
    refused(directory, message)


def test_a_manifest_that_is_no_object_or_lacks_a_key_is_refused(folder):
    directory, manifest = folder("npy")
    (directory / "manifest.json").write_text("[1, 2]")
    refused(directory, "manifest.json is not a JSON object")
    del manifest["format"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    refused(directory, "manifest.json has no 'format'")


def test_a_data_file_linked_from_outside_is_refused(folder, tmp_path):
    directory, _ = folder("npy")
    outside = tmp_path / "elsewhere.npy"
    os.replace(directory / "vectors.npy", outside)
    os.symlink(outside, directory / "vectors.npy")
    refused(directory, "vectors.npy is a link to .*elsewhere.npy, outside the directory")


def test_the_recorded_input_is_read_only_while_its_hash_matches(folder, tmp_path):
    """An input pointing at another file: its lines were shown as the hits' texts."""
    directory, _ = folder("npy")
    other = tmp_path / "other.txt"
    other.write_text("".join(f"secret {i}\n" for i in range(len(CORPUS))))
    edit(directory, input=str(other))
    assert search.Index(directory).texts is None


def test_a_manifest_hub_id_is_looked_up_in_the_local_cache_only(folder, monkeypatch):
    """model_hub made search download any repository id a manifest named."""
    import huggingface_hub
    directory, _ = folder("npy")
    hub = {"hub_id": "someone/else", "revision": "0123456789abcdef0123456789abcdef01234567"}
    edit(directory, model_source=str(directory / "gone"), model_hub=hub)
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append((repo_id, kwargs))
        raise huggingface_hub.utils.LocalEntryNotFoundError("not cached")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(InputError, match="someone/else at commit 0123.* not in the local hub cache, and search does "
                                         "not download .*: pass --model someone/else"):
        search.Index(directory).load_model()
    assert asked == [("someone/else", {"revision": hub["revision"], "local_files_only": True})]


def test_a_manifest_model_source_that_is_no_directory_is_never_fetched(folder, monkeypatch):
    """model_source "org/name" (no model_hub) went to minibert.load, which downloads hub ids."""
    directory, _ = folder("npy")
    edit(directory, model_source="someone/else", model_hub=None)
    monkeypatch.setattr(minibert, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(InputError, match="extracted with the model someone/else, which is not a directory here; "
                                         "pass --model"):
        search.Index(directory).load_model()


def test_search_of_no_queries_is_empty_and_of_none_refused(model, corpus_file, tmp_path):
    out = tmp_path / "vecs"
    extract(model, CORPUS, out, source_file=str(corpus_file))
    assert minibert.search(model, out, [], k=3) == []
    with pytest.raises(InputError, match="queries must be a str or a list of str, found NoneType"):
        minibert.search(model, out, None)


def test_search_of_an_extraction_from_a_list_or_stdin_says_its_texts_were_not_recorded(model, tmp_path, capsys,
                                                                                        monkeypatch):
    """Row numbers only, said as it is: no file was recorded (it read "None is gone or changed", "- is gone")."""
    import io
    extract(model, CORPUS, tmp_path / "listed")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("\n".join(CORPUS).encode("utf-8"))))
    assert main(["extract", "-", "--out", str(tmp_path / "piped"), "--quiet"]) == 0
    capsys.readouterr()
    for name, made in (("listed", "a list of texts"), ("piped", "standard input")):
        assert main(["search", str(tmp_path / name), CORPUS[0], "-k", "1"]) == 0
        assert f"(texts not recorded: the extraction was made from {made}; pass --texts FILE" in capsys.readouterr().out
