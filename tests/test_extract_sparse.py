"""extract --sparse: SPLADE vectors written as compressed rows (npy) or sparse.jsonl, read back by
load_embeddings(...).sparse as the very SparseVectors encode_sparse returns, resumed after an interruption as
dense extractions are, searched by dot product, and refused where they have no meaning."""

import errno
import json
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import minibert
from minibert.cli import main
from minibert.corpus import extract as extract_module
from minibert.corpus import ray_data, writers
from minibert.embed.sparse import SparseVectors
from minibert.errors import InputError, MiniBertError, ModelFileError
from test_extract_resume import killed_midway, resume_killed

HEADS_DIR = Path(__file__).parent / "fixtures" / "heads"
SPLADE = str(HEADS_DIR / "splade")                 # SparseEncoder: max pooling, relu
SPLADE_SUM = str(HEADS_DIR / "splade_sum")         # sum pooling, log1p_relu, max_active_dims 20
CORPUS = ["the cat sat", "a dog ran on the mat", "Hello world!", "", "Paris is the capital of France.",
          "cats sat", "world hello a", "mat", "dogs ran and ran"]
SPARSE_FILES = {"npy": ["sparse_indptr.npy", "sparse_indices.npy", "sparse_values.npy"], "jsonl": ["sparse.jsonl"]}


@pytest.fixture(scope="module")
def splade64():
    return minibert.load_sparse(SPLADE, backend="numpy", dtype="float64")


@pytest.fixture(scope="module")
def splade32():
    return minibert.load_sparse(SPLADE_SUM, backend="cpu", dtype="float32")


def assert_identical(got: SparseVectors, want: SparseVectors):
    """The same ids and weights, bit for bit, in the same dtypes."""
    assert type(got) is SparseVectors and len(got) == len(want) and got.vocab_size == want.vocab_size
    for ids, weights, want_ids, want_weights in zip(got.ids, got.weights, want.ids, want.weights):
        assert ids.dtype == want_ids.dtype == np.int64 and weights.dtype == want_weights.dtype
        assert np.array_equal(ids, want_ids) and np.array_equal(weights, want_weights)


def golden(name):
    with np.load(HEADS_DIR / name / "golden.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("fmt", ["npy", "jsonl"])
@pytest.mark.parametrize("which", ["splade64", "splade32"])
def test_extracted_sparse_vectors_read_back_as_encode_sparse_returns_them(request, tmp_path, fmt, which):
    model = request.getfixturevalue(which)
    g = golden("splade" if which == "splade64" else "splade_sum")
    texts = [str(t) for t in g["texts"]] + CORPUS
    manifest = extract_module.extract(model, texts, tmp_path / "out", sparse=True, fmt=fmt)
    assert manifest["files"] == SPARSE_FILES[fmt] and manifest["row_shape"] == [600]
    assert manifest["dtype"] == np.dtype(model.dtype).name
    settings = model.splade_settings
    assert manifest["sparse"] == {"vocab_size": 600, "pooling": settings.pooling, "activation": settings.activation,
                                  "max_active_dims": settings.max_active_dims, "max_length": 64}
    assert not {"layers", "pooling", "recipe"} & set(manifest)        # the dense options do not apply
    saved = minibert.load_embeddings(tmp_path / "out")
    assert_identical(saved.sparse, model.encode_sparse(texts))
    if fmt == "npy":                                   # compressed rows, memory-mapped
        assert isinstance(saved.indices, np.memmap) and saved.indices.dtype == np.int32
        assert saved.indptr.tolist() == np.cumsum([0] + [len(ids) for ids in saved.sparse.ids]).tolist()
    else:
        assert saved.texts == texts
    # And these are SparseEncoder's vectors (the goldens' non-zero ids; weights as tests/test_sparse.py measures).
    for ids, row in zip(saved.sparse.ids, g["dense"]):
        assert np.array_equal(ids, np.flatnonzero(row))


def test_several_chunks_give_the_vectors_of_one_call(splade64, tmp_path, monkeypatch):
    monkeypatch.setattr(extract_module, "CHUNK", 2)
    extract_module.extract(splade64, CORPUS, tmp_path / "out", sparse=True, batch_size=2)
    assert_identical(minibert.load_embeddings(tmp_path / "out").sparse, splade64.encode_sparse(CORPUS, batch_size=2))


def test_vectors_read_back_decode_with_the_models_tokenizer(splade64, tmp_path):
    extract_module.extract(splade64, CORPUS[:3], tmp_path / "out", sparse=True)
    vectors = minibert.load_embeddings(tmp_path / "out").sparse
    with pytest.raises(InputError, match=r"carry no tokenizer .* set `.tokenizer = model.tokenizer`"):
        vectors.decode(top_k=3)
    vectors.tokenizer = splade64.tokenizer
    assert vectors.decode(top_k=3) == splade64.encode_sparse(CORPUS[:3]).decode(top_k=3)
    np.testing.assert_array_equal(vectors.to_dense(), splade64.encode_sparse(CORPUS[:3]).to_dense())


# ----- resume -------------------------------------------------------------------------------------------------

def loaded(directory):
    return minibert.load_embeddings(directory).sparse


@pytest.mark.parametrize("fmt", ["npy", "jsonl"])
def test_exception_midway_then_resume_equals_an_uninterrupted_run(splade32, tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(extract_module, "CHUNK", 2)
    whole = extract_module.extract(splade32, CORPUS, tmp_path / "whole", sparse=True, fmt=fmt)
    real = type(splade32).encode_sparse
    calls = {"n": 0}

    def failing(self, texts, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:                            # the probe, two chunks, then a failure
            raise RuntimeError("worker lost")
        return real(self, texts, **kwargs)
    monkeypatch.setattr(type(splade32), "encode_sparse", failing)
    with pytest.raises(RuntimeError, match="worker lost"):
        extract_module.extract(splade32, CORPUS, tmp_path / "cut", sparse=True, fmt=fmt)
    names = {p.name for p in (tmp_path / "cut").iterdir()}
    assert "manifest.json" not in names and not names & set(SPARSE_FILES[fmt]), names      # only .partial files
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["rows"] == 4
    with pytest.raises(MiniBertError, match="interrupted after 4 of 9 rows; run the same extract command with "
                                            "--resume"):
        minibert.load_embeddings(tmp_path / "cut")
    monkeypatch.setattr(type(splade32), "encode_sparse", real)
    manifest = extract_module.extract(splade32, CORPUS, tmp_path / "cut", sparse=True, fmt=fmt, resume=True)
    assert_identical(loaded(tmp_path / "cut"), loaded(tmp_path / "whole"))
    assert manifest["resumed_at"] == [4] and manifest["job"] == whole["job"] and manifest["files"] == whole["files"]
    for name in whole["files"]:                        # the same bytes
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == sorted(whole["files"] + ["manifest.json"])


@pytest.mark.parametrize("fmt", ["npy", "jsonl"])
def test_a_torn_write_on_a_full_disk_is_cut_off_by_resume(splade32, tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(extract_module, "CHUNK", 2)
    extract_module.extract(splade32, CORPUS, tmp_path / "whole", sparse=True, fmt=fmt)
    real_write = writers.write_rows
    calls = {"n": 0}

    def filling_up(f, offset, data):
        calls["n"] += 1
        if calls["n"] == (8 if fmt == "npy" else 3):   # npy: indptr[0], then 3 writes a chunk; the third's ids
            f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(f, offset, data)
    monkeypatch.setattr(writers, "write_rows", filling_up)
    with pytest.raises(MiniBertError, match=r"disk full after 4 of 9 rows .* run the same command with --resume"):
        extract_module.extract(splade32, CORPUS, tmp_path / "full", sparse=True, fmt=fmt)
    monkeypatch.setattr(writers, "write_rows", real_write)
    extract_module.extract(splade32, CORPUS, tmp_path / "full", sparse=True, fmt=fmt, resume=True)
    assert_identical(loaded(tmp_path / "full"), loaded(tmp_path / "whole"))


def test_a_failure_while_finishing_the_files_is_finished_by_resume(splade64, tmp_path, monkeypatch):
    """The indices and values files get their final length in their headers at the end, then each is renamed:
    a run cut between two renames is finished by --resume with the bytes of an uninterrupted run."""
    extract_module.extract(splade64, CORPUS, tmp_path / "whole", sparse=True)
    real = writers.finalise

    def second_fails(out, name):
        second_fails.n += 1
        if second_fails.n == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(out, name)
    second_fails.n = 0
    monkeypatch.setattr(writers, "finalise", second_fails)
    with pytest.raises(MiniBertError, match="cannot write after 9 of 9 rows .* --resume to finish"):
        extract_module.extract(splade64, CORPUS, tmp_path / "cut", sparse=True)
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == [
        "progress.json", "sparse_indices.npy.partial", "sparse_indptr.npy", "sparse_values.npy.partial"]
    monkeypatch.setattr(writers, "finalise", real)
    manifest = extract_module.extract(splade64, CORPUS, tmp_path / "cut", sparse=True, resume=True)
    for name in manifest["files"]:
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_resume_refuses_other_splade_settings(splade32, tmp_path, monkeypatch):
    monkeypatch.setattr(extract_module, "CHUNK", 2)
    real = type(splade32).encode_sparse

    def interrupt_third(self, texts, **kwargs):
        interrupt_third.n += 1
        if interrupt_third.n == 3:
            raise KeyboardInterrupt
        return real(self, texts, **kwargs)
    interrupt_third.n = 0
    monkeypatch.setattr(type(splade32), "encode_sparse", interrupt_third)
    with pytest.raises(KeyboardInterrupt, match="2 of 9 rows are saved in .*--resume"):
        extract_module.extract(splade32, CORPUS, tmp_path, sparse=True)
    monkeypatch.setattr(type(splade32), "encode_sparse", real)
    with pytest.raises(InputError, match=r"another job \(max_length was None, now 16; sparse.max_length was 64, "
                                          "now 16"):
        extract_module.extract(splade32, CORPUS, tmp_path, sparse=True, max_length=16, resume=True)
    fewer = minibert.load_sparse(SPLADE_SUM, backend="cpu")
    fewer.splade_settings = replace(fewer.splade_settings, max_active_dims=5)
    with pytest.raises(InputError, match=r"another job \(sparse.max_active_dims was 20, now 5\)"):
        extract_module.extract(fewer, CORPUS, tmp_path, sparse=True, resume=True)
    with pytest.raises(InputError, match=r"another job \(format was 'npy', now 'jsonl'"):
        extract_module.extract(splade32, CORPUS, tmp_path, sparse=True, fmt="jsonl", resume=True)
    with pytest.raises(InputError, match="is a SparseEncoder"):          # a dense run of the same texts
        extract_module.extract(splade32, CORPUS, tmp_path, resume=True)
    assert extract_module.extract(splade32, CORPUS, tmp_path, sparse=True, resume=True)["resumed_at"] == [2]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_sparse_extraction_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, sig):
    texts = [f"the cat sat on the mat {' '.join(['dog'] * (i % 7))}" for i in range(60)]
    corpus, out = tmp_path / "corpus.txt", tmp_path / "out"
    corpus.write_text("\n".join(texts) + "\n")
    args = ["extract", str(corpus), "--out", str(out), "--model", SPLADE, "--quiet", "--sparse"]
    returncode, err, done = killed_midway(args, sig, "encode_sparse")
    assert returncode == {signal.SIGTERM: 143, signal.SIGKILL: -9}[sig], err
    assert 12 <= done < 60 and not (out / "manifest.json").exists()
    resume_killed(args, "encode_sparse")
    monkeypatch.setattr(extract_module, "CHUNK", 4)
    model = minibert.load_sparse(SPLADE, backend="cpu")
    extract_module.extract(model, texts, tmp_path / "whole", sparse=True)
    assert_identical(loaded(out), loaded(tmp_path / "whole"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed_at"] == [done] and manifest["count"] == 60 and not (out / "progress.json").exists()


# ----- refusals -----------------------------------------------------------------------------------------------

def test_a_checkpoint_without_the_masked_lm_head_is_refused_before_anything_is_written(tmp_path, capsys):
    encoder_only = Path(__file__).parent / "fixtures" / "families" / "bert_cased"
    model = minibert.load(str(encoder_only), backend="numpy")
    with pytest.raises(ModelFileError, match=f"{encoder_only}: the checkpoint has no masked-LM head "
                                             r"\(it holds the encoder only\)"):
        extract_module.extract(model, CORPUS, tmp_path / "out", sparse=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    assert main(["extract", str(corpus), "--out", str(tmp_path / "cli"), "--sparse", "--model", str(encoder_only)]) == 1
    assert "no masked-LM head (it holds the encoder only)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cli").exists()


@pytest.mark.parametrize("options, message", [
    ({"pooling": "cls"}, "pooling shape dense vectors"),
    ({"layers": "all", "normalize": True}, "layers, normalize shape dense vectors"),
    ({"reduce": "pca:2"}, "reduce shape dense vectors"),
    ({"fmt": "npz"}, "written as npy .* or jsonl .*, not npz"),
    ({"dtype": "float16"}, "stored as float32 or float64, not float16"),
    ({"max_length": 1}, "max_length must be an int of at least 2"),
])
def test_options_without_a_sparse_meaning_are_refused_before_anything_is_written(splade64, tmp_path, options,
                                                                                   message):
    with pytest.raises(InputError, match=message):
        extract_module.extract(splade64, CORPUS, tmp_path / "out", sparse=True, **options)
    assert not (tmp_path / "out").exists()


def test_the_command_refuses_dense_flags_formats_and_the_ray_engine_by_name(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    base = ["extract", str(corpus), "--out", str(tmp_path / "out"), "--sparse", "--model", SPLADE]
    for extra, message in ((["--pooling", "cls", "--window", "16"], "--pooling, --window shape dense vectors"),
                           (["--format", "safetensors"], "--sparse writes --format npy"),
                           (["--engine", "ray"], "--engine ray extracts dense vectors only")):
        assert main(base + extra) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_the_ray_engine_refuses_sparse_before_ray_is_needed(tmp_path):
    with pytest.raises(InputError, match="--engine ray extracts dense vectors only; .* leave out --engine ray"):
        ray_data.extract(CORPUS, tmp_path / "out", model=SPLADE, sparse=True)
    assert not (tmp_path / "out").exists()


def test_the_command_writes_and_search_reads_a_sparse_extraction(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    assert main(["extract", str(corpus), "--out", str(tmp_path / "out"), "--sparse", "--model", SPLADE_SUM,
                 "--quiet"]) == 0
    assert capsys.readouterr().out == (f"wrote 9 SPLADE vectors over a vocabulary of 600 (npy, float32) to "
                                       f"{tmp_path / 'out'}: sparse_indptr.npy, sparse_indices.npy, "
                                       "sparse_values.npy\n")
    model = minibert.load_sparse(SPLADE_SUM, backend="cpu")
    assert_identical(loaded(tmp_path / "out"), model.encode_sparse(CORPUS))
    # search with the model the manifest records (load_sparse: its settings), scores as printed
    assert main(["search", str(tmp_path / "out"), "the cat", "-k", "3", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    scores = model.encode_sparse(CORPUS).to_dense().astype(np.float64) @ \
        model.encode_sparse("the cat").to_dense().astype(np.float64)
    assert [hit["index"] for hit in result["hits"]] == np.argsort(-scores, kind="stable")[:3].tolist()
    assert [hit["text"] for hit in result["hits"]] == [CORPUS[i] for i in np.argsort(-scores, kind="stable")[:3]]
    np.testing.assert_allclose([hit["score"] for hit in result["hits"]], np.sort(scores)[::-1][:3], rtol=1e-12)


# ----- search -------------------------------------------------------------------------------------------------

def test_search_scores_are_the_dot_products_of_splade_vectors(splade64, tmp_path, monkeypatch):
    from minibert.corpus import search
    monkeypatch.setattr(search, "CHUNK", 4)            # several blocks of rows
    extract_module.extract(splade64, CORPUS, tmp_path / "out", sparse=True)
    queries = ["a cat on a mat", "Paris"]
    hits = minibert.search(splade64, tmp_path / "out", queries, k=len(CORPUS))
    scores = splade64.encode_sparse(CORPUS).to_dense() @ splade64.encode_sparse(queries).to_dense().T   # [N, Q]
    for q, row in enumerate(hits):
        assert [hit.index for hit in row] == np.argsort(-scores[:, q], kind="stable").tolist()
        assert max(abs(hit.score - scores[hit.index, q]) for hit in row) < 1e-12 * scores.max()
        assert [hit.text for hit in row] == [None] * len(CORPUS)          # a list of texts has no file to show


def test_search_refuses_other_splade_settings_layers_and_reduction(splade64, tmp_path):
    extract_module.extract(splade64, CORPUS, tmp_path / "out", sparse=True)
    plain = minibert.load(str(HEADS_DIR / "bert"), backend="numpy", dtype="float64")   # same weights, other config
    sum_pooled = minibert.load_sparse(SPLADE, backend="numpy", dtype="float64")
    sum_pooled.splade_settings = minibert.load_sparse(SPLADE_SUM).splade_settings
    with pytest.raises(MiniBertError, match=r"holds SPLADE vectors made with pooling max, activation relu, "
                                            r"max_active_dims None, but .* gives pooling sum, activation log1p_relu, "
                                            r"max_active_dims 20: load the model the extraction used"):
        minibert.search(sum_pooled, tmp_path / "out", "cat")
    with pytest.raises(MiniBertError, match="not .*their config.json differ"):
        minibert.search(plain, tmp_path / "out", "cat")
    for options in ({"layer": 2}, {"reduced": True}):
        with pytest.raises(InputError, match="holds SPLADE vectors .* leave out --layer and --reduced"):
            minibert.search(splade64, tmp_path / "out", "cat", **options)


# ----- a damaged directory ------------------------------------------------------------------------------------

def rewrite_npy(path, change):
    array = np.load(path)
    change(array)
    np.save(path, array)


@pytest.mark.parametrize("damage, message", [
    (lambda d: rewrite_npy(d / "sparse_indices.npy", lambda a: a.__setitem__(0, 600)),
     "sparse_indices.npy: vocabulary ids outside 0..599 or not ascending within a text"),
    (lambda d: rewrite_npy(d / "sparse_indices.npy", lambda a: a.__setitem__(slice(0, 2), a[1::-1])),
     "not ascending within a text"),
    (lambda d: rewrite_npy(d / "sparse_indptr.npy", lambda a: a.__setitem__(2, a[1] - 1)),
     "sparse_indptr.npy does not run from 0 upwards"),
    (lambda d: rewrite_npy(d / "sparse_indptr.npy", lambda a: a.__setitem__(-1, a[-1] + 1)),
     r"sparse_indices.npy holds int32 \[\d+\], but the manifest says int32"),
    (lambda d: edit_manifest(d, lambda m: m["sparse"].pop("activation")), "'sparse' has no 'activation'"),
    (lambda d: edit_manifest(d, lambda m: m["files"].append("vectors.npy")), "'files' .* do not match format 'npy'"),
    (lambda d: edit_manifest(d, lambda m: m.__setitem__("row_shape", [7])), "'row_shape' is not"),
])
def test_a_damaged_sparse_extraction_is_one_clear_error(splade64, tmp_path, damage, message):
    extract_module.extract(splade64, CORPUS, tmp_path / "out", sparse=True)
    damage(tmp_path / "out")
    with pytest.raises(InputError, match=message + ".*the extraction directory is damaged or was edited"):
        minibert.load_embeddings(tmp_path / "out")


def edit_manifest(d, change):
    manifest = json.loads((d / "manifest.json").read_text())
    change(manifest)
    (d / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.__setitem__("indices", r["indices"][:-1]), "are not two lists of as many ids .ints. and weights"),
    (lambda r: r.__setitem__("indices", [1.5] + r["indices"][1:]), "are not two lists of as many ids"),
    (lambda r: r.__setitem__("values", ["1"] + r["values"][1:]), "are not two lists of as many ids"),
    (lambda r: r.pop("values"), r"not row 1 with text, indices, values"),
    (lambda r: r.__setitem__("indices", sorted(r["indices"], reverse=True)), "not ascending within a text"),
])
def test_a_damaged_sparse_jsonl_is_one_clear_error(splade64, tmp_path, edit, message):
    extract_module.extract(splade64, CORPUS, tmp_path / "out", sparse=True, fmt="jsonl")
    path = tmp_path / "out" / "sparse.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    edit(record)
    path.write_text("\n".join([lines[0], json.dumps(record)] + lines[2:]) + "\n")
    with pytest.raises(InputError, match=message):
        minibert.load_embeddings(tmp_path / "out")


def test_a_dense_extraction_has_no_sparse_vectors(splade64, tmp_path):
    extract_module.extract(splade64, CORPUS, tmp_path / "out", pooling="mean")   # a SparseEncoder: named
    with pytest.raises(MiniBertError, match=r"holds dense vectors \(\.vectors\), not sparse ones"):
        minibert.load_embeddings(tmp_path / "out").sparse


def test_search_of_no_sparse_queries_is_empty_and_of_none_refused(splade64, tmp_path):
    extract_module.extract(splade64, CORPUS, tmp_path / "sp", sparse=True)
    assert minibert.search(splade64, tmp_path / "sp", [], k=1) == []
    with pytest.raises(InputError, match="queries must be a str or a list of str"):
        minibert.search(splade64, tmp_path / "sp", None, k=1)


@pytest.mark.parametrize("complete", [False, True])
def test_resuming_a_sparse_extraction_without_sparse_says_so(tmp_path, monkeypatch, complete):
    """A sparse extraction resumed dense (and a dense one resumed --sparse) is refused in those words; it was a
    list of every setting that differs (recipe, sparse, ...)."""
    model = minibert.load_sparse(str(HEADS_DIR / "bert"))              # a plain MLM checkpoint: dense runs too
    if complete:
        extract_module.extract(model, CORPUS, tmp_path / "sp", sparse=True)
        extract_module.extract(model, CORPUS, tmp_path / "dense")
    else:
        monkeypatch.setattr(extract_module, "CHUNK", 2)
        real = type(model).encode_sparse
        calls = []

        def interrupt_second(self, texts, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(self, texts, **kwargs)
        monkeypatch.setattr(type(model), "encode_sparse", interrupt_second)
        with pytest.raises(KeyboardInterrupt):
            extract_module.extract(model, CORPUS, tmp_path / "sp", sparse=True)
        monkeypatch.setattr(type(model), "encode_sparse", real)
    with pytest.raises(InputError, match="this extraction was made with --sparse .*; resume it with --sparse"):
        extract_module.extract(model, CORPUS, tmp_path / "sp", resume=True)
    if complete:
        with pytest.raises(InputError, match="made without --sparse .*; resume it without --sparse"):
            extract_module.extract(model, CORPUS, tmp_path / "dense", sparse=True, resume=True)


def test_a_sparse_extraction_warns_of_truncated_texts_naming_their_rows(splade64, tmp_path, monkeypatch):
    """As a dense extraction does: chunk by chunk, the warning names the input's rows (it gave none at all)."""
    monkeypatch.setattr(extract_module, "CHUNK", 4)
    texts = CORPUS[:5] + ["word " * 300] + CORPUS[5:]
    with pytest.warns(UserWarning, match=r"1 of 4 texts \(rows 4-7\) were longer than 64 tokens and were truncated"):
        extract_module.extract(splade64, texts, tmp_path / "sp", sparse=True)
