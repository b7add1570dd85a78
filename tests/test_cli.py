"""The command line as a user meets it: every failure one line on stderr with a documented exit code, a closed
pipe quiet, warnings in flag terms, options checked before any work. Real `minibert` processes where the
terminal behaviour is the point (pipes, exit codes, what reaches stderr)."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from minibert import cli
from minibert.cli import embed as embed_commands
from minibert.cli import main
from minibert.cli.common import DEMO_TEXTS
from tiny import tiny_config, tiny_tensors, write_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny(tmp_path_factory.mktemp("tiny") / "model"))


def minibert_process(*argv, **kwargs):
    """A real `minibert` process (python -m minibert, the console script's entry point)."""
    return subprocess.Popen([sys.executable, "-m", "minibert", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def one_line(err):
    return err.count("\n") == 1 and "Traceback" not in err


# ----- a closed pipe ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, head", [("similarity", "head -n 1"), ("embed", "head -c 100")])
def test_closed_pipe_exits_quietly(tiny, tmp_path, command, head):
    """`minibert ... | head`: head reads a little and exits; minibert's next write meets a closed pipe.
    Exit 141 (128 + SIGPIPE, what `yes | head` shows under pipefail) and nothing on stderr."""
    texts = [f"the cat sat on the mat number {i}" for i in range(1000)]
    (tmp_path / "texts.txt").write_text("\n".join(texts[:150]) + "\n")
    argv = (["similarity", "--matrix", str(tmp_path / "texts.txt")] if command == "similarity"
            else ["embed", *texts, "--json"])            # 150 x 150 matrix, 1000 JSON vectors: far over 64 KiB
    script = f'"$@" | {head} > /dev/null; echo "${{PIPESTATUS[0]}}"'
    run = subprocess.run(["bash", "-c", script, "bash", sys.executable, "-m", "minibert", *argv, "--model", tiny,
                          "--backend", "numpy"], capture_output=True, text=True)
    assert run.stdout.strip() == "141" and run.stderr == "", run.stderr


def test_closed_pipe_before_the_first_write(tiny):
    p = minibert_process("embed", "the cat", "--model", tiny, "--backend", "numpy")
    p.stdout.close()                                           # the reader is gone before minibert writes
    assert p.wait() == 141 and p.stderr.read() == ""


def test_other_broken_pipes_are_errors(monkeypatch, capsys):
    """A BrokenPipeError that is not about standard output (a socket, a child process) is an error."""
    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(embed_commands, "cmd_demo", broken)
    assert main(["demo"]) == 1
    assert capsys.readouterr().err == "minibert: error: BrokenPipeError: [Errno 32] Broken pipe\n"


# ----- one line, a documented exit code --------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["embed", "x", "--max-length", "0"], "argument --max-length: must be at least 2, found 0"),
    (["embed", "x", "--max-length", "-3"], "argument --max-length: must be at least 2, found -3"),
    (["embed", "x", "--window", "abc"], "argument --window: takes an int, found 'abc'"),
    (["embed", "x", "--batch-size", "0"], "argument --batch-size: must be at least 1, found 0"),
    (["search", "dir", "q", "-k", "0"], "argument -k: must be at least 1, found 0"),
    (["probe", "d.csv", "--folds", "1"], "argument --folds: must be at least 2, found 1"),
    (["embed", "x", "--pooling", "avg"], "argument --pooling: invalid choice: 'avg'"),
    (["nonsense"], "argument command: invalid choice: 'nonsense'"),
])
def test_a_malformed_command_line_is_one_line_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"minibert: error: {message}") and one_line(err), err
    assert "--help" in err


@pytest.mark.parametrize("argv, message", [
    (["--max-length", "33"], "--max-length must be between 2 (the special tokens) and the model's 32 positions, "
                             "found 33"),
    (["--window", "40"], "--window must be between 8 and the model's 32 positions, found 40"),
    (["--max-length", "16", "--window", "16"], "--max-length cuts each text and --window covers each text whole"),
    (["--stride", "2"], "--stride is the overlap between windows: pass --window too"),
    (["--window", "16", "--stride", "9"], "--stride (the overlap between windows) must be at most --window // 2 = 8"),
])
@pytest.mark.parametrize("command", ["embed", "extract"])
def test_lengths_checked_against_the_model_before_any_work(tiny, tmp_path, capsys, argv, message, command):
    (tmp_path / "in.txt").write_text("the cat\n")
    out = tmp_path / "out"
    args = (["embed", "the cat"] if command == "embed" else ["extract", str(tmp_path / "in.txt"), "--out", str(out)])
    assert main([*args, "--model", tiny, "--backend", "numpy", *argv]) == 1
    err = capsys.readouterr().err
    assert err == f"minibert: error: {message}" + err[len(f"minibert: error: {message}"):] and one_line(err), err
    assert not out.exists()                                    # a refused option leaves nothing on disk


def test_unwritable_outputs_are_one_line(tiny, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for argv, message in [(["--html", str(tmp_path / "no" / "a.html")], "the folder"),
                          (["--json", str(tmp_path / "file" / "a.json")], "the folder"),
                          (["--html", str(tmp_path)], "is a directory"),
                          (["--html", "/dev/full"], "--html /dev/full: cannot write (No space left on device)"),
                          (["--json", "/dev/full"], "--json /dev/full: cannot write (No space left on device)")]:
        assert main(["attention", "the cat", "--model", tiny, "--backend", "numpy", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("minibert: error: ") and message in err and one_line(err), err


@pytest.mark.parametrize("error, line", [
    (OSError(5, "Input/output error", "/data/x.txt"), "/data/x.txt: Input/output error"),
    (PermissionError(13, "Permission denied", "vecs/manifest.json"), "vecs/manifest.json: Permission denied"),
    (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"), "not valid UTF-8 (invalid start byte"),
    (csv.Error("field larger than field limit (131072)"), "cannot read the CSV/TSV input (field larger than"),
])
def test_errors_the_commands_did_not_anticipate_are_one_line(monkeypatch, capsys, error, line):
    """Whatever a command lets through of these (an input reader, a file system) still reaches the user as
    one line and exit 1; --debug shows the traceback."""
    def fails(args):
        raise error
    monkeypatch.setattr(embed_commands, "cmd_demo", fails)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"minibert: error: {line}") and one_line(err), err
    with pytest.raises(type(error)):
        main(["--debug", "demo"])


def test_errors_in_a_real_process(tmp_path):
    """Invalid UTF-8 in CoNLL data and an unreadable file: one line on stderr, exit 1, nothing on stdout."""
    (tmp_path / "bad.conll").write_bytes(b"EU B-ORG\n\nPeter\xff B-PER\n")
    p = minibert_process("probe", str(tmp_path / "bad.conll"), "--plot", "")
    out, err = p.communicate()
    assert p.returncode == 1 and out == "" and one_line(err), err
    assert err.startswith(f"minibert: error: {tmp_path / 'bad.conll'}:3: not valid UTF-8")


# ----- warnings -------------------------------------------------------------------------------------------------

def test_warnings_speak_in_flags(tiny):
    p = minibert_process("embed", "the cat " * 40, "--model", tiny, "--backend", "numpy")
    out, err = p.communicate()
    assert p.returncode == 0 and out.count("\n") == 1
    assert err == ("minibert: warning: 1 of 1 texts were longer than 32 tokens and were truncated; pass --window "
                   "(and --stride) to cover long texts whole\n")     # no UserWarning, no file, no source line


def test_cli_terms():
    assert cli.cli_terms("minibert probe: L-BFGS stopped; a larger l2= converges sooner") == \
        "L-BFGS stopped; a larger --l2 converges sooner"
    assert cli.cli_terms("use max_length= or batch_size=\n  now") == "use --max-length or --batch-size now"
    assert cli.cli_terms("max_lengths= stays") == "max_lengths= stays"


def test_main_leaves_warnings_as_it_found_them(capsys):
    import warnings
    before = warnings.showwarning
    assert main(["attention", "x", "--html", "/no/such/folder/a.html"]) == 1
    assert warnings.showwarning is before


def test_extract_out_that_cannot_be_a_folder(tmp_path, capsys, monkeypatch):
    import minibert
    monkeypatch.setattr(minibert, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "in.txt").write_text("the cat\n")
    (tmp_path / "file").write_text("")
    assert main(["extract", str(tmp_path / "in.txt"), "--out", str(tmp_path / "file" / "vecs")]) == 1
    err = capsys.readouterr().err
    assert err == (f"minibert: error: --out {tmp_path / 'file' / 'vecs'}: {tmp_path / 'file'} is a file, not a "
                   "folder; choose another --out\n")


def test_version_and_embed_reading_standard_input(tiny):
    import minibert
    out, err = minibert_process("--version").communicate(timeout=120)
    assert out.strip() == f"minibert {minibert.__version__}", err
    run = minibert_process("embed", "-", "--model", tiny, stdin=subprocess.PIPE)
    out, err = run.communicate("the cat\nsat on\nthe mat\n", timeout=120)
    assert run.returncode == 0, err
    assert [line.split()[0] for line in out.splitlines()] == ["'the", "'sat", "'the"]


def test_debug_is_accepted_before_or_after_the_command():
    parser = cli.build_parser()
    assert parser.parse_args(["--debug", "inspect"]).debug is True
    assert parser.parse_args(["inspect", "--debug"]).debug is True
    assert parser.parse_args(["inspect"]).debug is False


def test_each_command_is_an_add_and_cmd_pair_of_one_group():
    """Every command comes from a module of cli.GROUPS, whose add_X(sub) adds it and whose cmd_X(args) runs it:
    the parser of a command sits beside its handler, and a new group is one name in GROUPS."""
    import importlib
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    owner = {}
    for group in cli.GROUPS:
        module = importlib.import_module(f"minibert.cli.{group}")
        for name in commands:
            if hasattr(module, f"add_{name.replace('-', '_')}"):
                owner.setdefault(name, []).append(module)
    assert set(owner) == set(commands) and all(len(found) == 1 for found in owner.values()), owner
    for name, [module] in owner.items():
        assert commands[name].get_default("run") is getattr(module, f"cmd_{name.replace('-', '_')}")


def test_similarity_json_and_matrix_written_to_a_file(tiny, tmp_path, capsys):
    import json

    import numpy as np
    (tmp_path / "texts.txt").write_text("the cat\nthe dog\nhello world\n")
    assert main(["similarity", "the cat", "the dog", "--model", tiny, "--json"]) == 0
    pair = json.loads(capsys.readouterr().out)
    assert list(pair["layers"]) == ["embeddings", "layer 1", "layer 2"]
    out = tmp_path / "m.npy"
    assert main(["similarity", "--matrix", str(tmp_path / "texts.txt"), "--model", tiny, "--json",
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = np.load(out)
    assert saved.shape == (3, 3) and np.allclose(saved, printed["matrix"]) and np.allclose(np.diag(saved), 1)
    assert main(["similarity", "a", "b", "--model", tiny, "--out", str(tmp_path / "x.npy")]) == 1
    assert "--out writes the --matrix result" in capsys.readouterr().err


def one_line_error(capsys, argv):
    """Run the CLI in-process; return its stderr after checking it is one 'minibert: error:' line."""
    from minibert.cli import main
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("minibert: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------------
# The command line: one line on stderr, exit 1.

def test_cli_errors_are_one_line(tmp_path, capsys):
    write_tiny(tmp_path / "bad", tiny_config(hidden_size=18), tiny_tensors(tiny_config()))
    assert "not divisible by num_attention_heads" in one_line_error(capsys, ["inspect", str(tmp_path / "bad")])
    assert "no such model directory" in one_line_error(capsys, ["embed", "x", "--model", str(tmp_path / "none")])
    assert "input file not found" in one_line_error(capsys, ["extract", str(tmp_path / "no.txt"), "--out",
                                                             str(tmp_path / "o")])
    (tmp_path / "in.txt").write_text("a\n")
    err = one_line_error(capsys, ["extract", str(tmp_path / "in.txt"), "--out", str(tmp_path / "o"), "--resume",
                                  "--overwrite"])
    assert "pass one of them" in err


# ---------------------------------------------------------------------------------------------------
# inspect --check: non-finite weights reported by checkpoint tensor name.

@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_inspect_check_reports_non_finite_weights_by_tensor_name(tmp_path, capsys):
    from minibert.cli import main
    config = tiny_config()
    tensors = tiny_tensors(config)
    tensors["encoder.layer.0.attention.self.query.weight"][3, :5] = np.nan
    tensors["pooler.dense.bias"][0] = -np.inf
    write_tiny(tmp_path / "nan", config, tensors)
    assert main(["inspect", str(tmp_path / "nan"), "--check"]) == 1
    out, err = capsys.readouterr()
    assert "encoder.layer.0.attention.self.query.weight: 5 NaN, 0 Inf of 256 values" in out
    assert "pooler.dense.bias: 0 NaN, 1 Inf of 16 values" in out
    assert err.count("\n") == 1 and "in 2 checkpoint tensor(s): encoder.layer.0.attention.self.query.weight, " \
                                    "pooler.dense.bias" in err

    tensors = {k: v.astype(np.float64) for k, v in tiny_tensors(config).items()}
    tensors["embeddings.LayerNorm.bias"][2] = 1e39            # finite in float64, inf once cast to float32
    write_tiny(tmp_path / "big", config, tensors)
    assert main(["inspect", str(tmp_path / "big"), "--check"]) == 1
    assert ("tensor 'embeddings.LayerNorm.bias': 1 of 16 float64 values are beyond float32's range"
            in capsys.readouterr().err)                       # refused by load itself, naming the checkpoint tensor

    write_tiny(tmp_path / "clean")
    assert main(["inspect", str(tmp_path / "clean"), "--check"]) == 0
    assert "all weights finite" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# Defaults: the model's recipe, as encode() follows it.

ST_FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "st_max_dense_normalize"


def test_embed_and_extract_defaults_follow_the_recipe(tmp_path, capsys):
    """A sentence-transformers checkpoint (max pooling, a Dense module, Normalize): the commands give, with
    no options, what model.encode() gives, which is sentence-transformers' vector (tests/test_recipe.py);
    --pooling and --no-normalize override the recipe as encode's arguments do."""
    import json

    import minibert
    model = minibert.load(ST_FIXTURE)
    texts = ["the cat sat", "a dog barked loudly"]
    assert main(["embed", *texts, "--model", str(ST_FIXTURE), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    np.testing.assert_array_equal(np.array([r["vector"] for r in rows], dtype=np.float32), model.encode(texts))
    assert np.allclose(np.linalg.norm([r["vector"] for r in rows], axis=1), 1, atol=1e-6)
    assert main(["embed", *texts, "--model", str(ST_FIXTURE), "--json", "--pooling", "mean", "--no-normalize"]) == 0
    rows = json.loads(capsys.readouterr().out)
    np.testing.assert_array_equal(np.array([r["vector"] for r in rows], dtype=np.float32),
                                  model.encode(texts, pooling="mean", normalize=False))
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
    assert main(["extract", str(tmp_path / "c.txt"), "--out", str(tmp_path / "o"), "--model", str(ST_FIXTURE),
                 "--quiet"]) == 0
    got = minibert.load_embeddings(tmp_path / "o")
    np.testing.assert_array_equal(got.vectors, model.encode(texts))
    recipe = got.manifest["recipe"]
    assert (recipe["pooling"], recipe["normalize"], len(recipe["dense"])) == ("max", True, 1), recipe
    assert got.manifest["pooling"] is None and got.manifest["model_hub"] is None      # asked: nothing; a local dir


def test_similarity_of_a_pair_and_the_matrix_agree_on_a_dense_head(tmp_path, capsys):
    """Before: for a model with a Dense module, `similarity A B` printed the last layer without the head and
    `similarity --matrix` the head's vectors, both labelled "layer 2": 0.929 and 0.918 for the same pair.
    Now the pair also shows the model's own sentence vector, and the matrix says it is that vector."""
    import json

    import minibert
    model = minibert.load(ST_FIXTURE)
    texts = ["the cat sat", "a dog barked loudly"]
    a, b = model.encode(texts)                                    # the recipe: max, Dense, Normalize
    assert main(["similarity", *texts, "--model", str(ST_FIXTURE), "--json"]) == 0
    pair = json.loads(capsys.readouterr().out)
    assert list(pair["layers"]) == ["embeddings", "layer 1", "layer 2"]
    assert abs(pair["sentence"] - float(a @ b)) < 1e-6 and abs(pair["layers"]["layer 2"] - float(a @ b)) > 1e-3
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    assert main(["similarity", "--matrix", str(tmp_path / "t.txt"), "--model", str(ST_FIXTURE), "--json"]) == 0
    matrix = json.loads(capsys.readouterr().out)
    assert abs(matrix["matrix"][0][1] - pair["sentence"]) < 1e-6 and matrix["layer"] == "layer 2 + 2_Dense"
    assert main(["similarity", *texts, "--model", str(ST_FIXTURE)]) == 0
    assert f"{'2_Dense':>10}  {pair['sentence']:+.4f}" in capsys.readouterr().out
    assert main(["similarity", "--matrix", str(tmp_path / "t.txt"), "--model", str(ST_FIXTURE), "--json",
                 "--layer", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["layer"] == "layer 1"


# ---------------------------------------------------------------------------------------------------
# inspect: which files load read and which it left alone, across the whole sentence-transformers layout.

def test_inspect_lists_recipe_and_encoder_files_used_and_the_rest_ignored(tmp_path, capsys):
    """Before: only the encoder's folder was listed, so modules.json, 1_Pooling/ and sentence_bert_config.json,
    which the recipe reads, showed as ignored, and a 0_Transformer/ layout's root files not at all."""
    import shutil

    from conftest import FIXTURES
    model = shutil.copytree(FIXTURES / "st_legacy_layout_prompts", tmp_path / "st")
    (model / "2_Dense" / "pytorch_model.bin").write_bytes(b"old dense weights")     # a twin load never opens
    (model / "0_Transformer" / "rust_model.ot").write_bytes(b"")
    (model / "onnx").mkdir()
    (model / "onnx" / "model.onnx").write_bytes(b"")
    assert main(["inspect", str(model)]) == 0
    out = capsys.readouterr().out
    assert ("files used  modules.json, 0_Transformer/sentence_bert_config.json, config_sentence_transformers.json, "
            "1_Pooling/config.json, 2_Dense/config.json, 2_Dense/model.safetensors, 0_Transformer/config.json, "
            "0_Transformer/model.safetensors, 0_Transformer/tokenizer_config.json, 0_Transformer/tokenizer.json\n"
            in out)
    assert ("ignored     golden.npz, onnx/, versions.json, 0_Transformer/rust_model.ot, 2_Dense/pytorch_model.bin\n"
            in out)


def test_inspect_on_a_root_layout_counts_sentence_bert_config_and_module_folders_as_used(capsys):
    from conftest import FIXTURES
    assert main(["inspect", str(FIXTURES / "st_mpnet")]) == 0
    out = capsys.readouterr().out
    assert ("files used  modules.json, sentence_bert_config.json, config_sentence_transformers.json, "
            "1_Pooling/config.json, 2_Normalize/config.json, config.json, model.safetensors, tokenizer_config.json, "
            "tokenizer.json\n" in out)
    assert "ignored     golden.npz, versions.json\n" in out


# ---------------------------------------------------------------------------------------------------
# Outputs are written whole or not at all (issue 22).

def enospc_after(partial):
    """A writer that writes `partial` bytes and then finds the disk full."""
    import errno

    def write(target, *args, **kwargs):
        if isinstance(target, str):         # a writer given the path opens it itself
            with open(target, "wb") as f:
                f.write(partial)
        else:
            target.write(partial)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def no_temporaries(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")] == []


def test_atomic_file_keeps_the_old_file_on_any_failure(tmp_path):
    import errno
    import os

    from minibert.errors import OutputError
    from minibert.files import atomic_file
    target = tmp_path / "out.txt"
    target.write_text("old")
    for error in (KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device"),
                  OSError(errno.EROFS, "Read-only file system"), ValueError("a bug")):
        with pytest.raises((KeyboardInterrupt, OutputError, ValueError)) as caught:
            with atomic_file(target, "w", encoding="utf-8") as f:
                f.write("new, half")
                raise error
        assert target.read_text() == "old" and no_temporaries(tmp_path)
        if isinstance(error, OSError):
            assert str(caught.value).startswith(f"{target}: cannot write it") and "\n" not in str(caught.value)
    old = os.umask(0o027)
    try:
        with atomic_file(target) as f:
            f.write(b"new")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640
    with pytest.raises(OutputError, match="No such file or directory"):
        with atomic_file(tmp_path / "missing" / "x") as f:
            pass


@pytest.mark.parametrize("suffix, writer", [(".npy", "save"), (".csv", "savetxt")])
def test_similarity_matrix_out_on_a_full_disk(tiny, tmp_path, capsys, monkeypatch, suffix, writer):
    """Before: a full disk left a header-only .npy (and a raw OSError)."""
    (tmp_path / "texts.txt").write_text("the cat\nthe dog\n")
    out = tmp_path / f"m{suffix}"
    out.write_bytes(b"the previous matrix")
    monkeypatch.setattr(np, writer, enospc_after(b"\x93NUMPY header"))
    err = one_line_error(capsys, ["similarity", "--matrix", str(tmp_path / "texts.txt"), "--model", tiny,
                                  "--out", str(out)])
    assert out.read_bytes() == b"the previous matrix" and no_temporaries(tmp_path)
    assert f"{out}: cannot write it (No space left on device); free some disk space" in err


def test_similarity_matrix_out_may_not_be_its_input(tiny, tmp_path, capsys):
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nthe cat\nthe dog\n")
    err = one_line_error(capsys, ["similarity", "--matrix", str(texts), "--model", tiny, "--out", str(texts)])
    assert "is the --matrix input itself" in err and texts.read_text() == "text\nthe cat\nthe dog\n"


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from pathlib import Path

    from minibert.train.data import Examples
    from minibert.train.finetune import TrainingRecipe, finetune
    model = Path(__file__).parent / "fixtures" / "families" / "bert_cased"
    out = tmp_path_factory.mktemp("clf") / "clf"
    finetune(str(model), Examples(texts=["the cat", "a red dog", "the mat", "a red cat"], labels=["n", "y", "n", "y"]),
             recipe=TrainingRecipe(epochs=1, batch_size=4), checkpoint_dir=out)
    return out


def test_predict_out_is_written_only_when_complete(classifier_dir, tmp_path, capsys, monkeypatch):
    """Before: predict --out F opened F before predicting: a refusal or Ctrl-C left F empty."""
    from minibert.cli import train as finetune_cli
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat\na red dog\n")
    out = tmp_path / "predictions.jsonl"
    out.write_text("earlier predictions\n")
    # a refusal (not a classifier directory), then Ctrl-C while predicting: F as it was
    assert finetune_cli.main(["predict", str(tmp_path / "not_a_classifier"), str(texts), "--out", str(out)]) == 1
    monkeypatch.setattr(finetune_cli, "prediction_lines", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert finetune_cli.main(["predict", str(classifier_dir), str(texts), "--out", str(out)]) == 130
    assert out.read_text() == "earlier predictions\n" and no_temporaries(tmp_path)
    capsys.readouterr()
    monkeypatch.undo()
    import errno
    import os
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    assert finetune_cli.main(["predict", str(classifier_dir), str(texts), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out}: cannot write it (No space left on device)" in err and err.count("\n") == 1
    assert out.read_text() == "earlier predictions\n" and no_temporaries(tmp_path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert finetune_cli.main(["predict", str(classifier_dir), str(texts), "--out", str(out)]) == 0
    import json
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == ["the cat", "a red dog"]


def test_predict_out_may_not_be_its_input_or_in_the_classifier(classifier_dir, tmp_path, capsys):
    """Before: --out equal to the input overwrote the input."""
    from minibert.cli import train as finetune_cli
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat\n")
    (tmp_path / "link.txt").symlink_to(texts)
    for out, message in ((texts, "is the input file itself"), (tmp_path / "link.txt", "is the input file itself"),
                         (classifier_dir / "config.json", "is inside the classifier directory")):
        before = out.read_bytes()
        assert finetune_cli.main(["predict", str(classifier_dir), str(texts), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and out.read_bytes() == before


@pytest.mark.parametrize("case", ["st_cls", "st_weightedmean_two_dense"])
def test_demo_cosines_follow_the_models_recipe(capsys, case):
    """demo --model X printed cosines of mean-pooled last layers whatever X's recipe; now those of X's own
    sentence vectors (model.encode, checked against sentence-transformers by tests/test_recipe.py)."""
    import minibert
    from conftest import FIXTURES
    assert main(["demo", "--model", str(FIXTURES / case), "--backend", "numpy"]) == 0
    printed = [float(line.split()[1]) for line in capsys.readouterr().out.splitlines() if line.startswith("cosine ")]
    model = minibert.load(str(FIXTURES / case), backend="numpy")
    vectors = model.encode(DEMO_TEXTS)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = model(DEMO_TEXTS)
    mask = out.attention_mask[..., None]
    mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    pairs = [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_allclose(printed, [vectors[i] @ vectors[j] for i, j in pairs], atol=5e-5)   # printed to 4 places
    assert max(abs(p - mean[i] @ mean[j]) for p, (i, j) in zip(printed, pairs)) > 0.01


def test_parity_judges_differences_relative_to_the_tensors_largest_value(monkeypatch, capsys):
    """A float32 difference of 1.2e-4 on values near 190 is 8 ulp (one float32 ulp there is 1.5e-5) and passes
    the default 1e-4; the same difference on values within [-1, 1] fails it, named as the first operation."""
    from minibert.analysis import parity
    big = parity.difference(np.array([[190.0 + 1.2e-4, -3.0]]), np.array([[190.0, -3.0]]))
    assert big["max_abs"] == pytest.approx(1.2e-4) and big["reference_max"] == 190.0
    assert big["scaled"] == pytest.approx(1.2e-4 / 190)
    small = parity.difference(np.array([[0.5 + 1.2e-4]]), np.array([[0.5]]))
    assert small["scaled"] == pytest.approx(1.2e-4)                   # below 1: the absolute difference
    rows = [("layer1.ffn.output", big)]
    monkeypatch.setattr(parity, "compare", lambda model, texts: rows)
    assert main(["parity", "--text", "x"]) == 0
    assert "OK: every tensor within 1.0e-04" in capsys.readouterr().out
    rows.append(("layer1.output", small))
    assert main(["parity", "--text", "x"]) == 1
    assert "first operation above it: layer1.output" in capsys.readouterr().err
