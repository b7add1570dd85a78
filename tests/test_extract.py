"""Extraction in the field: input files read as their formats define them, one run per output directory,
no file minibert did not write ever deleted or replaced, a manifest that tells the truth from any working
directory, and options refused before anything is on disk."""

import errno
import functools
import hashlib
import json
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import tiny_config, tiny_tensors, write_tiny

import minibert
from minibert.corpus import extract as extract_module
from minibert.corpus import readers, store
from minibert.cli import main
from minibert.errors import InputError, MiniBertError

def test_warnings_name_rows_of_the_whole_input_not_of_a_chunk(tmp_path, monkeypatch):
    """extract encodes CHUNK texts at a time; encode's warnings counted texts within the chunk, so the
    unreadable text on input row 4,098 was reported as texts[2] of 4. They now give the input's rows."""
    from conftest import FIXTURES
    model = minibert.load(str(FIXTURES / "st_cls"), backend="numpy")         # a 48-piece vocabulary
    monkeypatch.setattr(extract_module, "CHUNK", 4)
    texts = ["hello world"] * 10
    texts[1] = texts[6] = "zzzz qqqq"                                      # all [UNK]
    texts[7] = "hello world " * 40                                         # past max_seq_length 20
    with pytest.warns(UserWarning) as caught:
        extract_module.extract(model, texts, tmp_path / "out", progress=False)
    said = [str(w.message) for w in caught]
    assert any("texts[1] 100%" in m and "rows 0-3" in m for m in said), said
    assert any("texts[6] 100%" in m and "rows 4-7" in m for m in said), said
    assert any("1 of 4 texts (rows 4-7) were longer than 20 tokens" in m for m in said), said
    with pytest.warns(UserWarning, match=r"texts\[1\] 100%; this") as plain:
        model.encode(texts[:2])                                            # encode itself: no rows range
    assert "rows" not in str(plain[0].message)


FAMILIES = Path(__file__).parent / "fixtures" / "families"
CORPUS = ["the cat sat", "a dog ran on the mat", "hello world", "", "the the the the the", "cats sat",
          "world hello a", "mat", "dogs ran and ran"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return minibert.load(str(write_tiny(tmp_path_factory.mktemp("tiny"))), backend="numpy")


def run_cli(capsys, argv):
    """(exit code, stdout, stderr) of the CLI run in-process."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(capsys, argv):
    code, _, err = run_cli(capsys, argv)
    assert code == 1 and err.startswith("minibert: error: ") and err.count("\n") == 1, err
    return err


# ---------------------------------------------------------------------------------------------------
# Input files, read as their formats define them.

def test_txt_lines_end_at_newline_only(tmp_path):
    """Form feeds (PDF text), vertical tabs, U+2028/2029, NEL and \\x1c-\\x1e are characters, not line ends."""
    texts = ["page one\fpage two", "tab\vbed", "a\u2028b\u2029c\x85d\x1ce\x1df\x1eg", "", "crlf"]
    path = tmp_path / "c.txt"
    path.write_bytes(("\n".join(texts[:4]) + "\ncrlf\r\nlast").encode())
    assert readers.read_texts(path) == texts + ["last"]


def test_standard_input_is_spooled_and_split_at_newlines_only(tiny_model, tmp_path):
    """`-`: read as a .txt file (copied to a temporary file, not memory); the manifest hashes its bytes."""
    data = "one\ftwo\r\nthree\rstill three\nfour\u2028five\n".encode()
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "minibert", "extract", "-", "--out", str(out), "--model",
                          tiny_model.source, "--backend", "numpy", "--quiet"], input=data, capture_output=True)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"] == "-" and manifest["input_sha256"] == hashlib.sha256(data).hexdigest()
    texts = ["one\ftwo", "three\rstill three", "four\u2028five"]
    np.testing.assert_array_equal(minibert.load_embeddings(out).vectors, tiny_model.encode(texts))


def test_tsv_has_no_quoting(tmp_path):
    """GLUE's convention: a field that starts with '"' does not swallow the rows after it."""
    path = tmp_path / "c.tsv"
    path.write_text('id\ttext\n1\t"a quote opens here\n2\tnext row\n3\tand it closes here"\n4\t"x"\n')
    assert readers.read_texts(path) == ['"a quote opens here', "next row", 'and it closes here"', '"x"']


def test_csv_quoting_and_fields_over_128_kib(tmp_path):
    big = "word, " * 40000 + "\n\"quoted\" end"                       # 240 KB, commas, a newline, quotes
    path = tmp_path / "c.csv"
    path.write_text('text,label\n"' + big.replace('"', '""') + '",1\nsmall,0\n', newline="")
    assert readers.read_texts(path) == [big, "small"]


@pytest.mark.parametrize("suffix, body, field", [
    (".txt", "first\nsecond\n", "text"), (".jsonl", '{"t": "first"}\n{"t": "second"}\n', "t"),
    (".csv", "t\nfirst\nsecond\n", "t"), (".tsv", "t\nfirst\nsecond\n", "t")])
def test_a_byte_order_mark_is_accepted_in_every_format(tmp_path, suffix, body, field):
    path = tmp_path / f"c{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert readers.read_texts(path, field) == ["first", "second"]


def test_json_lines_accept_u2028_inside_strings(tmp_path):
    texts = ["one\u2028two", "three\u2029four\x85five", "six\fseven"]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts) + "\n  \n")
    assert readers.read_texts(path) == texts


@pytest.mark.parametrize("suffix, head", [(".txt", b"ok\nfine\n"), (".jsonl", b'{"text": "ok"}\n\n'),
                                          (".csv", b"text\nok\n"), (".tsv", b"text\nok\n")])
def test_invalid_utf8_names_the_file_line_and_byte(tmp_path, capsys, suffix, head):
    path = tmp_path / f"bad{suffix}"
    bad = b'{"text": "caf\xe9"}\n' if suffix == ".jsonl" else b"caf\xe9 au lait\n"
    path.write_bytes(head + bad + b"more\n")
    offset = len(head) + bad.index(b"\xe9")
    err = one_line_error(capsys, ["extract", str(path), "--out", str(tmp_path / "out")])
    assert f"{path}:3: not valid UTF-8 at byte {offset} of the file" in err
    assert not (tmp_path / "out").exists()


def test_csv_errors_and_missing_columns_are_input_errors(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("body\nx\n")
    with pytest.raises(InputError, match=r"no column 'text'; columns are \['body'\]"):
        readers.read_texts(path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty file"):
        readers.read_texts(tmp_path / "empty.csv")
    (tmp_path / "nul.csv").write_text('text\n"a\x00b"\n')
    assert readers.read_texts(tmp_path / "nul.csv") == ["a\x00b"]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".tsv"])
def test_a_corpus_file_is_read_again_chunk_by_chunk(tmp_path, suffix):
    """Slices and items of a TextFile equal those of the list, for any chunk size and any alignment."""
    texts = [f"text {i} " + "x" * (i % 5) for i in range(23)] + ["", "last one"]
    path = tmp_path / f"c{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    elif suffix == ".txt":
        path.write_text("\n".join(texts) + "\n")
    else:
        sep = "," if suffix == ".csv" else "\t"
        path.write_text(f"id{sep}text\n" + "".join(f"{i}{sep}{t}\n" for i, t in enumerate(texts)))
    for chunk in (1, 4, 7, 100):
        corpus = readers.TextFile(path, "text", chunk=chunk)
        assert len(corpus) == len(texts) and list(corpus) == texts
        for start, stop in [(0, 3), (3, 11), (5, 6), (20, 25), (0, 25), (24, 25), (7, 7)]:
            assert corpus[start:stop] == texts[start:stop]
        assert [corpus[i] for i in (24, 0, 13)] == [texts[24], texts[0], texts[13]]
        assert corpus.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.filterwarnings("ignore:minibert.*were truncated:UserWarning")
def test_the_corpus_is_never_held_whole_in_memory(tiny_model, tmp_path, monkeypatch, capsys):
    """extract through the CLI holds one chunk of texts, not the file: traced Python memory while 2,000
    texts of 2,000 characters (4 MB) are extracted, 64 at a time. Measured: a peak of 1.2-1.4 MB whatever
    the corpus size (2,000 to 8,000 texts: buffers of one chunk); holding the file and its list of texts
    (read_text + splitlines) would take over 8 MB."""
    path = tmp_path / "c.txt"
    path.write_text("".join(f"{i:04} " + "the cat sat on the mat " * 86 + "x" * 16 + "\n" for i in range(2000)))
    assert path.stat().st_size == 4_000_000
    (tmp_path / "warm.txt").write_text("warm up\n")
    monkeypatch.setattr(extract_module, "CHUNK", 64)
    monkeypatch.setattr(readers, "CHUNK", 64)
    monkeypatch.setattr(minibert, "load", lambda *args, **kwargs: tiny_model)
    args = ["--quiet", "--max-length", "8"]
    assert run_cli(capsys, ["extract", str(tmp_path / "warm.txt"), "--out", str(tmp_path / "warm"), *args])[0] == 0
    tracemalloc.start()
    try:
        code, _, err = run_cli(capsys, ["extract", str(path), "--out", str(tmp_path / "out"), *args])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    assert peak < 2e6, f"peak {peak / 1e6:.1f} MB of Python memory for a 4 MB corpus"
    assert minibert.load_embeddings(tmp_path / "out").vectors.shape == (2000, 16)


def test_a_long_line_is_cut_before_the_tokenizer_sees_it(tiny_model, tmp_path, monkeypatch):
    """A 2 MB single line: the tokenizer gets a prefix of at most 16 * max_length + 64 characters (the first
    try), never the line, and the vector is the one of the whole line truncated."""
    line = "the cat sat on the mat " * 90000                                 # 2.07 MB
    backend = tiny_model.tokenizer.backend
    seen = []
    real = type(backend).encode_batch

    class Spy:
        def __getattr__(self, name):
            return getattr(backend, name)

        def encode_batch(self, inputs, **kwargs):
            seen.append(max(len(t) for t in inputs))
            return real(backend, inputs, **kwargs)
    monkeypatch.setattr(tiny_model.tokenizer, "backend", Spy())
    with pytest.warns(UserWarning, match="1 of 2 texts were longer than 32 tokens"):
        extract_module.extract(tiny_model, ["hello world", line], tmp_path / "out")
    assert max(seen) <= 16 * 32 + 64, seen
    monkeypatch.undo()
    with pytest.warns(UserWarning):
        whole = tiny_model.encode(["hello world", line])                   # the tokenizer gets all of it
    np.testing.assert_array_equal(minibert.load_embeddings(tmp_path / "out").vectors, whole)


PIECES = ["the", "cat", " ", "   ", "\t", "\n", "é", "e\u0301", "\u0301", "日本", "😀", ",", ".", "[MASK]", "<mask>",
          "a" * 150, "x" * 60, "\x00", "\u200b", " " * 200, "İ", "ﬁ", "Ǆ", "word", "##", "'s", "\u2028", "\f"]


@pytest.mark.parametrize("family", ["bert_multilingual", "roberta", "xlm_roberta", "albert", "bert_chinese"])
@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=30, max_size=600), limit=st.sampled_from([4, 8, 16]))
def test_a_cut_text_truncates_to_the_same_tokens_as_the_whole_text(family, pieces, limit):
    """cut_to_fit against the tokenizer on the whole text: WordPiece, byte-level BPE, SentencePiece
    (Unigram, Metaspace), CJK splitting; long words ([UNK] over 100 characters), runs of spaces, combining
    marks, controls the normalizer drops, special tokens written in the text."""
    from minibert.embed.encode import tokenize_texts
    from minibert.tokenizer import encode_batch
    model = loaded_family(family)
    text = "".join(pieces)
    (whole,) = encode_batch(model.tokenizer.backend, [text], limit)
    (got,) = tokenize_texts(model, [text], limit, None)
    assert got.ids.tolist() == list(whole.ids) and got.truncated == bool(whole.overflowing)


@functools.lru_cache(maxsize=None)
def loaded_family(name):
    return minibert.load(str(FAMILIES / name), backend="numpy")


# ---------------------------------------------------------------------------------------------------
# An output directory belongs to one extraction.

HOLDING_RUN = """
import os, sys, time
import minibert.api
real = minibert.api.Model.encode
def waiting(self, texts, **kwargs):       # the probe passes; the first chunk waits for the test's signal
    if texts != ["x"]:
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.02)
    return real(self, texts, **kwargs)
minibert.api.Model.encode = waiting
from minibert.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_second_run_into_the_same_out_is_refused_naming_the_holder(tiny_model, tmp_path):
    """Two real processes: the second, plain or --resume, gets one line naming the first's pid and host,
    and the first's manifest and vectors are its own corpus's."""
    first, second, out, release = tmp_path / "first.txt", tmp_path / "second.txt", tmp_path / "out", tmp_path / "go"
    first.write_text("\n".join(CORPUS) + "\n")
    second.write_text("\n".join(reversed(CORPUS)) + "\nextra\n")
    args = ["--out", str(out), "--model", tiny_model.source, "--backend", "numpy", "--quiet"]
    holder = subprocess.Popen([sys.executable, "-c", HOLDING_RUN, str(release), "extract", str(first), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "vectors.npy.partial").exists() and time.time() < deadline:
            time.sleep(0.02)
        for extra in ([], ["--resume"], ["--overwrite"]):
            refused = subprocess.run([sys.executable, "-m", "minibert", "extract", str(second), *args, *extra],
                                     capture_output=True, text=True, timeout=300)
            assert refused.returncode == 1, refused.stderr
            assert refused.stderr.count("\n") == 1, refused.stderr
            assert (f"minibert: error: {out} is in use by another extraction (pid {holder.pid} on "
                    f"{socket.gethostname()}, started ") in refused.stderr
    finally:
        release.touch()
        _, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_sha256"] == hashlib.sha256(first.read_bytes()).hexdigest() and manifest["count"] == 9
    np.testing.assert_array_equal(minibert.load_embeddings(out).vectors, tiny_model.encode(CORPUS))
    assert not (out / store.LOCK).exists()


def test_a_lock_left_by_a_killed_run_does_not_block(tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / store.LOCK).write_text('{"pid": 1, "host": "gone", "started": "yesterday"}')
    extract_module.extract(tiny_model, CORPUS, out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "vectors.npy"]


def test_a_folder_that_is_not_an_extraction_is_refused(tiny_model, tmp_path, capsys):
    """A user's vectors.npy and notes.partial, no manifest: refused, with and without --overwrite; nothing
    of theirs is deleted or replaced."""
    out = tmp_path / "mine"
    out.mkdir()
    np.save(out / "vectors.npy", np.arange(3.0))
    (out / "notes.partial").write_text("my notes")
    (tmp_path / "c.txt").write_text("\n".join(CORPUS) + "\n")
    base = ["extract", str(tmp_path / "c.txt"), "--out", str(out), "--model", tiny_model.source, "--backend", "numpy"]
    err = one_line_error(capsys, base)
    assert "holds vectors.npy but no minibert extraction" in err and "will not replace it" in err
    assert "holds vectors.npy but no minibert extraction" in one_line_error(capsys, base + ["--overwrite"])
    assert "holds vectors.npy" in one_line_error(capsys, base + ["--resume"])
    assert sorted(p.name for p in out.iterdir()) == ["notes.partial", "vectors.npy"]
    np.testing.assert_array_equal(np.load(out / "vectors.npy"), np.arange(3.0))
    # Without a name minibert writes: refused unless --overwrite, which writes beside the user's files.
    (out / "vectors.npy").rename(tmp_path / "moved.npy")
    err = one_line_error(capsys, base)
    assert "is not empty (notes.partial) and holds no minibert extraction" in err
    assert run_cli(capsys, base + ["--overwrite", "--quiet"])[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.partial", "vectors.npy"]
    # --overwrite of an extraction deletes minibert's files only.
    (out / "vectors-00000.safetensors.partial").write_text("a stale part of an earlier run")
    (out / "my.partial").write_text("mine")
    assert run_cli(capsys, base + ["--overwrite", "--quiet", "--format", "npz"])[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "my.partial", "notes.partial", "vectors.npz"]
    assert (out / "notes.partial").read_text() == "my notes"


def test_the_manifest_hash_is_of_the_bytes_that_were_read(tiny_model, tmp_path, monkeypatch, capsys):
    """The input rewritten while the last chunk is encoded: the manifest keeps the hash of what was
    encoded. Rewritten earlier: refused, naming the rows, rather than mixing two files."""
    path = tmp_path / "c.txt"
    original = ("\n".join(CORPUS) + "\n").encode()
    path.write_bytes(original)
    monkeypatch.setattr(extract_module, "CHUNK", 4)
    monkeypatch.setattr(readers, "CHUNK", 4)
    monkeypatch.setattr(minibert, "load", lambda *args, **kwargs: tiny_model)
    real = type(tiny_model).encode
    calls = []

    def rewriting(self, texts, **kwargs):
        calls.append(texts)
        if len(calls) == rewrite_at:
            path.write_text("\n".join(t.upper() for t in CORPUS) + "\n")
        return real(self, texts, **kwargs)
    monkeypatch.setattr(type(tiny_model), "encode", rewriting)
    rewrite_at = 4                                     # the probe, then the chunks 0-3, 4-7 and 8
    assert run_cli(capsys, ["extract", str(path), "--out", str(tmp_path / "late"), "--quiet"])[0] == 0
    manifest = json.loads((tmp_path / "late" / "manifest.json").read_text())
    assert manifest["input_sha256"] == hashlib.sha256(original).hexdigest()
    path.write_bytes(original)
    calls.clear()
    rewrite_at = 2
    err = one_line_error(capsys, ["extract", str(path), "--out", str(tmp_path / "early"), "--quiet"])
    assert f"{path} changed while it was being read (texts 4 to 7 differ from the first reading)" in err
    assert not (tmp_path / "early" / "manifest.json").exists()


def test_the_manifest_works_from_any_directory_and_search_reads_its_field(model_for, tmp_path, monkeypatch,
                                                                          capsys):
    """Relative --out and input: the manifest holds absolute paths, so search finds the texts from
    elsewhere; and it records --field, which search reads (not the `text` column)."""
    model = model_for("cpu")
    records = [{"text": f"label {i}", "body": body} for i, body in enumerate(
        ["A man is playing a guitar.", "The stock market fell sharply today.", "A cat sleeps on the sofa."])]
    work = tmp_path / "work"
    work.mkdir()
    (work / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.chdir(work)
    assert run_cli(capsys, ["extract", "c.jsonl", "--field", "body", "--out", "vecs", "--quiet"])[0] == 0
    manifest = json.loads((work / "vecs" / "manifest.json").read_text())
    assert manifest["input"] == str(work / "c.jsonl") and manifest["field"] == "body"
    assert Path(manifest["model_source"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, ["search", str(work / "vecs"), "Shares dropped on Wall Street.", "-k", "1"])
    assert code == 0, err
    assert out.splitlines()[1].endswith("[1] The stock market fell sharply today."), out
    hits = minibert.search(model, work / "vecs", "a kitten naps", k=1)
    assert hits[0].text == "A cat sleeps on the sofa."


# ---------------------------------------------------------------------------------------------------
# Options checked before any work; values and disks that misbehave.

def test_reduce_with_several_layers_is_refused_before_any_work(tiny_model, tmp_path, monkeypatch, capsys):
    (tmp_path / "c.txt").write_text("\n".join(CORPUS) + "\n")
    real = type(tiny_model).encode
    encoded = []

    def counting(self, texts, **kwargs):
        encoded.append(len(texts))
        return real(self, texts, **kwargs)
    monkeypatch.setattr(type(tiny_model), "encode", counting)
    monkeypatch.setattr(minibert, "load", lambda *args, **kwargs: tiny_model)
    base = ["extract", str(tmp_path / "c.txt"), "--out", str(tmp_path / "out"), "--quiet"]
    err = one_line_error(capsys, base + ["--layers", "all", "--reduce", "pca:4"])
    assert "--reduce needs one vector per row" in err and "[3, 16] per row" in err
    err = one_line_error(capsys, base + ["--reduce", "pca:9"])
    assert "K = 9" in err and "at most" in err and "= 8" in err
    assert encoded == [1, 1]                            # the one-text probe of each run, nothing more
    assert not (tmp_path / "out").exists()
    assert run_cli(capsys, base + ["--layers", "all", "--combine", "mean", "--reduce", "pca:4"])[0] == 0
    assert minibert.load_embeddings(tmp_path / "out").reduced.shape == (9, 4)


def test_reduce_on_a_full_disk_is_one_line_and_leaves_the_extraction_intact(tiny_model, tmp_path,
                                                                            monkeypatch, capsys):
    from minibert.corpus import reduce
    (tmp_path / "c.txt").write_text("\n".join(CORPUS) + "\n")
    monkeypatch.setattr(minibert, "load", lambda *args, **kwargs: tiny_model)
    real = reduce.reduce_extraction

    def disk_fills(directory, spec, whiten=False):   # pca.npz written, the disk full on reduced.npy
        (Path(directory) / "pca.npz.partial").write_bytes(b"\0" * 100)
        (Path(directory) / "reduced.npy.partial").write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(reduce, "reduce_extraction", disk_fills)
    base = ["extract", str(tmp_path / "c.txt"), "--out", str(tmp_path / "out"), "--quiet", "--reduce", "pca:3"]
    err = one_line_error(capsys, base)
    assert "disk full while writing the PCA reduction (No space left on device); the extraction itself is " \
           "complete and intact; free some space and run the same command with --resume" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "vectors.npy"]
    np.testing.assert_array_equal(minibert.load_embeddings(tmp_path / "out").vectors, tiny_model.encode(CORPUS))
    monkeypatch.setattr(reduce, "reduce_extraction", real)
    assert run_cli(capsys, base + ["--resume"])[0] == 0
    assert minibert.load_embeddings(tmp_path / "out").reduced.shape == (9, 3)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float16_overflow_is_refused_with_counts_never_written_as_inf(tmp_path):
    """Embedding LayerNorm weights of 1e5: layer 0's values reach ~1e5, past float16's 65504."""
    config = tiny_config()
    tensors = tiny_tensors(config)
    tensors["embeddings.LayerNorm.weight"][:] = 1e5
    big = minibert.load(str(write_tiny(tmp_path / "big", config, tensors)), backend="numpy")
    with pytest.raises(MiniBertError, match=r"values of \d texts among texts 0\.\.8 \(the first: text 0\) exceed "
                                            r"float16's range \(\|x\| > 65504\)"):
        extract_module.extract(big, CORPUS, tmp_path / "out", layers=0, dtype="float16")
    assert not (tmp_path / "out" / "vectors.npy").exists()
    with pytest.raises(MiniBertError, match="exceed float16's range"):
        extract_module.extract(big, CORPUS, tmp_path / "tokens", layers=0, dtype="float16", pooling="none")
    manifest = extract_module.extract(big, CORPUS, tmp_path / "f32", layers=0, dtype="float32")
    assert np.isfinite(minibert.load_embeddings(tmp_path / "f32").vectors).all() and manifest["count"] == 9


def test_one_progress_report_for_the_whole_run():
    """Off a terminal: a line every `interval` seconds with the rate and the ETA (counted from where a resumed
    run started), nothing at the end; on a terminal (show=True here): one tqdm bar over all rows."""
    import io

    from minibert.progress import RowProgress
    now = [0.0]
    log = io.StringIO()
    with RowProgress(10_000, 2_000, what="texts", interval=30, stream=log, clock=lambda: now[0]) as report:
        for rows, t in [(4_000, 10), (6_000, 40), (8_000, 50), (10_000, 90)]:
            now[0] = t
            report.advance(rows)
    assert log.getvalue().splitlines() == [
        "minibert extract: 6000/10000 texts (60%), 100.0 texts/s, 0m40s elapsed, ETA 0m40s"]
    bar = io.StringIO()
    with RowProgress(100, show=True, stream=bar) as report:
        report.advance(60)
        report.advance(100)
    assert "100/100" in bar.getvalue()
    quiet = io.StringIO()
    with RowProgress(100, show=False, stream=quiet, clock=lambda: 1e9) as report:
        report.advance(50)
    assert quiet.getvalue() == ""


def test_the_run_report_advances_batch_by_batch(tiny_model, tmp_path, monkeypatch):
    """extract's one report moves after every batch of encode, not only after each 4,096-text chunk (a chunk
    of long texts is minutes of work), and encode(progress=callable) says rows done after each batch."""
    import minibert.corpus.extract as extract_module
    calls = []
    tiny_model.encode([f"text {i}" for i in range(25)], batch_size=10, progress=lambda done, total: calls.append(
        (done, total)))
    assert calls == [(10, 25), (20, 25), (25, 25)]
    seen = []

    class Recorder:
        def __init__(self, total, done=0, **options):
            seen.append(("start", total, done))

        def advance(self, rows):
            seen.append(rows)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(extract_module, "RowProgress", Recorder)
    monkeypatch.setattr(extract_module, "CHUNK", 40)
    extract_module.extract(tiny_model, [f"text number {i}" for i in range(100)], tmp_path / "o", batch_size=8)
    assert seen[0] == ("start", 100, 0) and seen[-1] == 100
    progress = seen[1:]
    assert progress == sorted(progress) and len(progress) > 3 * 3      # several reports inside each chunk
    assert {40, 80, 100} <= set(progress)                               # and each chunk's end exactly
