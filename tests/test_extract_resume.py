"""extract.py under faults: an exception, a full disk or a signal midway leaves nothing that looks complete
and a truthful progress record, and --resume finishes the job with the rows an uninterrupted run writes.
(Its own file because these tests run the cpu backend, whose output the killed CLI child must match; the
normal path in test_extract.py runs numpy.)
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny import write_tiny

import minibert
from minibert.corpus import extract as extract_module
from minibert.corpus import writers
from minibert.errors import InputError, MiniBertError

FAMILIES = Path(__file__).parent / "fixtures" / "families"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return minibert.load(str(write_tiny(tmp_path_factory.mktemp("tiny"))), backend="cpu")


# ---------------------------------------------------------------------------------------------------
# Extraction faults: nothing that looks complete, a truthful manifest, and --resume finishing the job.

CORPUS = ["the cat sat", "a dog ran on the mat", "hello world", "", "the the the the the", "cats sat",
          "world hello a", "mat", "dogs ran and ran"]
FORMATS = [("npy", "mean"), ("npz", "mean"), ("safetensors", "cls"), ("jsonl", "max"), ("npy", "none")]


def loaded(directory):
    e = minibert.load_embeddings(directory)
    if e.tokens is not None:
        return [np.asarray(e.token_vectors(i)) for i in range(len(e.offsets) - 1)]
    return np.asarray(e.vectors)


def assert_same_output(a, b):
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    else:
        np.testing.assert_array_equal(a, b)


def assert_nothing_looks_complete(directory):
    names = {p.name for p in directory.iterdir()}
    assert "manifest.json" not in names
    assert not names & {"vectors.npy", "vectors.npz", "vectors.jsonl", "tokens.npy", "offsets.npy",
                        "vectors-00000.safetensors"}, names
    with pytest.raises(MiniBertError, match="interrupted after .* run the same extract command with --resume"):
        minibert.load_embeddings(directory)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(extract_module, "CHUNK", 2)


@pytest.mark.parametrize("fmt, pooling", FORMATS)
def test_exception_midway_then_resume_equals_an_uninterrupted_run(tiny_model, tmp_path, small_chunks, monkeypatch,
                                                                  fmt, pooling):
    options = {"fmt": fmt, "pooling": pooling, "layers": [-1, 0]}
    whole = extract_module.extract(tiny_model, CORPUS, tmp_path / "whole", **options)
    real_encode = type(tiny_model).encode
    calls = {"n": 0}

    def failing(self, texts, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:                       # the probe, two chunks, then a failure
            raise RuntimeError("worker lost")
        return real_encode(self, texts, **kwargs)
    monkeypatch.setattr(type(tiny_model), "encode", failing)
    with pytest.raises(RuntimeError, match="worker lost"):
        extract_module.extract(tiny_model, CORPUS, tmp_path / "cut", **options)
    assert_nothing_looks_complete(tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["rows"] == 4
    monkeypatch.setattr(type(tiny_model), "encode", real_encode)
    manifest = extract_module.extract(tiny_model, CORPUS, tmp_path / "cut", **options, resume=True)
    assert_same_output(loaded(tmp_path / "cut"), loaded(tmp_path / "whole"))
    assert manifest["resumed_at"] == [4] and manifest["count"] == len(CORPUS) and manifest["complete"]
    assert manifest["files"] == whole["files"] and manifest["job"] == whole["job"]
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == sorted(whole["files"] + ["manifest.json"])


@pytest.mark.parametrize("fmt, pooling", FORMATS)
def test_disk_full_midway_is_one_clear_error_and_resume_finishes(tiny_model, tmp_path, small_chunks, monkeypatch,
                                                                 fmt, pooling):
    whole = extract_module.extract(tiny_model, CORPUS, tmp_path / "whole", fmt=fmt, pooling=pooling)
    real_write = writers.write_rows
    calls = {"n": 0}

    def filling_up(f, offset, data):
        calls["n"] += 1
        if calls["n"] == 3:
            f.write(data[:len(data) // 2])        # a torn write, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(f, offset, data)
    monkeypatch.setattr(writers, "write_rows", filling_up)
    with pytest.raises(MiniBertError, match=r"disk full after 4 of 9 rows \(No space left on device\); free some "
                                            r"space and run the same command with --resume to finish"):
        extract_module.extract(tiny_model, CORPUS, tmp_path / "full", fmt=fmt, pooling=pooling)
    assert_nothing_looks_complete(tmp_path / "full")
    monkeypatch.setattr(writers, "write_rows", real_write)
    manifest = extract_module.extract(tiny_model, CORPUS, tmp_path / "full", fmt=fmt, pooling=pooling, resume=True)
    assert_same_output(loaded(tmp_path / "full"), loaded(tmp_path / "whole"))
    assert manifest["files"] == whole["files"]


def test_no_space_to_reserve_the_output_fails_before_encoding(tiny_model, tmp_path, monkeypatch):
    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate here")

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(MiniBertError, match="disk full after 0 of 9 rows"):
        extract_module.extract(tiny_model, CORPUS, tmp_path)


def test_resume_refuses_another_job_and_plain_reruns_refuse_to_discard(tiny_model, tmp_path, small_chunks,
                                                                       monkeypatch):
    real_encode = type(tiny_model).encode

    def interrupt_third(self, texts, **kwargs):
        interrupt_third.n += 1
        if interrupt_third.n == 3:
            raise KeyboardInterrupt
        return real_encode(self, texts, **kwargs)
    interrupt_third.n = 0
    monkeypatch.setattr(type(tiny_model), "encode", interrupt_third)
    with pytest.raises(KeyboardInterrupt, match="2 of 9 rows are saved in .*run the same command with --resume"):
        extract_module.extract(tiny_model, CORPUS, tmp_path)
    monkeypatch.setattr(type(tiny_model), "encode", real_encode)
    with pytest.raises(InputError, match=r"holds an interrupted extraction \(2 of 9 rows done\); pass --resume"):
        extract_module.extract(tiny_model, CORPUS, tmp_path)
    with pytest.raises(InputError, match="cannot resume .* another job \\(texts_sha256 was"):
        extract_module.extract(tiny_model, CORPUS[:-1] + ["changed"], tmp_path, resume=True)
    with pytest.raises(InputError, match="pooling was None, now 'cls'"):      # None: the checkpoint's recipe
        extract_module.extract(tiny_model, CORPUS, tmp_path, pooling="cls", resume=True)
    other = minibert.load(str(FAMILIES / "bert_cased"), backend="cpu")
    with pytest.raises(InputError, match="another job \\(model_source was"):
        extract_module.extract(other, CORPUS, tmp_path, resume=True)
    (tmp_path / "vectors.npy.partial").unlink()
    with pytest.raises(InputError, match="vectors.npy.partial: the rows of the interrupted run cannot be read"):
        extract_module.extract(tiny_model, CORPUS, tmp_path, resume=True)
    extract_module.extract(tiny_model, CORPUS, tmp_path, overwrite=True)
    # A finished job: --resume with the same job has nothing to do; another job is refused.
    def probe_only(self, texts, **kwargs):                # the one-text probe that checks the options
        assert texts == ["x"], "nothing but the probe should be encoded"
        return real_encode(self, texts, **kwargs)
    monkeypatch.setattr(type(tiny_model), "encode", probe_only)
    assert extract_module.extract(tiny_model, CORPUS, tmp_path, resume=True)["count"] == 9
    with pytest.raises(InputError, match="already holds a complete extraction of another job"):
        extract_module.extract(tiny_model, CORPUS, tmp_path, normalize=True, resume=True)


def test_resume_goes_through_encode_range_from_the_first_row_not_saved(tiny_model, tmp_path, small_chunks):
    """The seam other engines (Ray) feed extract through: a resumed run asks for increasing, non-overlapping
    ranges starting at the first row not saved, and writes the same bytes as one uninterrupted run."""
    asked = []

    def encode_range(start, stop):
        asked.append((start, stop))
        if len(asked) == 3 and len(asked) == len(set(asked)) and not resumed:
            raise ConnectionError("cluster lost")
        return tiny_model.encode(CORPUS[start:stop])
    resumed = False
    with pytest.raises(ConnectionError):
        extract_module.extract(tiny_model, CORPUS, tmp_path / "cut", encode_range=encode_range)
    assert asked == [(0, 2), (2, 4), (4, 6)]
    asked.clear()
    resumed = True
    extract_module.extract(tiny_model, CORPUS, tmp_path / "cut", encode_range=encode_range, resume=True)
    assert asked == [(4, 6), (6, 8), (8, 9)]
    extract_module.extract(tiny_model, CORPUS, tmp_path / "whole")
    assert_same_output(loaded(tmp_path / "cut"), loaded(tmp_path / "whole"))


def test_resume_with_nothing_to_resume_starts_fresh(tiny_model, tmp_path):
    manifest = extract_module.extract(tiny_model, CORPUS, tmp_path / "new", resume=True)
    assert manifest["resumed_at"] == [] and loaded(tmp_path / "new").shape == (9, 16)


KILLED_RUN = """
import signal, sys, time
# A shell's background jobs (CI runners among them) start with SIGINT ignored, and Python then installs no
# KeyboardInterrupt handler: give the child the handler an interactive user's minibert has.
signal.signal(signal.SIGINT, signal.default_int_handler)
import minibert.api, minibert.corpus.extract
minibert.corpus.extract.CHUNK = 4
method = sys.argv[1]                      # encode, or encode_sparse for --sparse
real = getattr(minibert.api.Model, method)
calls = []
def slow(self, texts, **kwargs):          # the probe and 3 chunks, then one that waits for the signal
    calls.append(len(texts))
    delay = float(sys.argv[2])            # 0: no waiting at all (the resumed run)
    time.sleep(delay if delay == 0 or len(calls) <= 4 else 600)
    return real(self, texts, **kwargs)
setattr(minibert.api.Model, method, slow)
from minibert.cli import main
sys.exit(main(sys.argv[3:]))
"""


def killed_midway(args, sig, method="encode"):
    """`minibert *args` in a child whose `method` stalls after the probe and 3 chunks, sent `sig` once 12 rows
    are on disk: (its exit code, its stderr, the rows progress.json counts)."""
    out = Path(args[args.index("--out") + 1])
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, method, "0.04", *args], stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 120
    while time.time() < deadline:                 # wait until a few chunks are on disk
        try:
            if json.loads((out / "progress.json").read_text())["rows"] >= 12:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    return child.returncode, err, json.loads((out / "progress.json").read_text())["rows"]


def resume_killed(args, method="encode"):
    resumed = subprocess.run([sys.executable, "-c", KILLED_RUN, method, "0", *args, "--resume"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killed_extraction_resumes_without_losing_or_duplicating_rows(tiny_model, tmp_path, monkeypatch, sig):
    texts = [f"the cat sat on the mat {' '.join(['dog'] * (i % 7))}" for i in range(120)]
    corpus, out = tmp_path / "corpus.txt", tmp_path / "out"
    corpus.write_text("\n".join(texts) + "\n")
    args = ["extract", str(corpus), "--out", str(out), "--model", tiny_model.source, "--quiet", "--format", "jsonl"]
    returncode, err, done = killed_midway(args, sig)
    assert returncode == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[sig], err
    if sig != signal.SIGKILL:
        word = "interrupted" if sig == signal.SIGINT else "terminated"
        assert err.startswith(f"minibert: {word}: ") and err.count("\n") == 1, err
        assert "rows are saved in" in err and "--resume" in err
    assert 12 <= done < 120
    assert_nothing_looks_complete(out)
    resume_killed(args)
    monkeypatch.setattr(extract_module, "CHUNK", 4)
    extract_module.extract(tiny_model, texts, tmp_path / "whole", fmt="jsonl")
    lines = (out / "vectors.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(120))      # none lost, none twice
    assert lines == (tmp_path / "whole" / "vectors.jsonl").read_text().splitlines()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed_at"] == [done] and manifest["count"] == 120 and not (out / "progress.json").exists()


@pytest.mark.parametrize("change", ["max_seq_length", "tokenizer", "prompts"])
def test_resume_refuses_another_effective_recipe_or_tokenizer(tmp_path, small_chunks, monkeypatch, change):
    """A max_seq_length set on the model (or another vocabulary, or a recipe's prompts) before the resume
    was accepted: the output mixed two truncations under one manifest. Each now changes the job."""
    import dataclasses
    from types import MappingProxyType
    model = minibert.load(str(write_tiny(tmp_path / "m")), backend="cpu")
    real_encode = type(model).encode
    calls = {"n": 0}

    def failing(self, texts, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:                       # the probe, one chunk, then a failure
            raise RuntimeError("worker lost")
        return real_encode(self, texts, **kwargs)
    monkeypatch.setattr(type(model), "encode", failing)
    with pytest.raises(RuntimeError, match="worker lost"):
        extract_module.extract(model, CORPUS, tmp_path / "cut")
    monkeypatch.setattr(type(model), "encode", real_encode)
    if change == "max_seq_length":
        model.max_seq_length = 4
        expected = "recipe.max_length was 32, now 4"
    elif change == "tokenizer":
        vocab = tmp_path / "m" / "vocab.txt"
        vocab.write_text(vocab.read_text() + "extra\n")
        expected = "tokenizer_sha256 was"
    else:
        model.recipe = dataclasses.replace(model.recipe, prompts=MappingProxyType({"query": "q: "}))
        expected = "recipe_sha256 was"
    with pytest.raises(InputError, match=f"cannot resume .* another job \\({expected}"):
        extract_module.extract(model, CORPUS, tmp_path / "cut", resume=True)
