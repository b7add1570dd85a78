"""Model files that change or misbehave: a checkpoint rewritten or truncated under a loaded model, FIFOs and
devices in place of model files, oversized JSON, float64 values float32 cannot hold.

Cases that used to kill the process (SIGBUS) or hang (a FIFO) run in a child process, so that the signal or
the hang fails the test instead of taking pytest down."""

import json
import os
import resource
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from tiny import tiny_config, tiny_tensors, write_tiny

import minibert
from minibert import ConfigError, ModelFileError, TokenizerError

TESTS = Path(__file__).parent
TEXTS = ["the cat sat on the mat", "hello world", "a dog ran"]
OTHER_TEXTS = ["dogs ran on the mat!", "z y x w v u", "hello cats."]


def run_child(code: str, timeout=120, memory=None):
    """Run `code` in a fresh Python with tests/ importable; memory: an address-space cap in bytes."""
    limit = None if memory is None else (lambda: resource.setrlimit(resource.RLIMIT_AS, (memory, memory)))
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(TESTS)!r})\n" + code],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_truncating_the_checkpoint_under_a_loaded_model_changes_nothing(tmp_path, backend):
    """Before: the word table was a map of model.safetensors, and the next forward after a truncation died
    of SIGBUS. Now the model holds a private copy: the same vectors before and after."""
    write_tiny(tmp_path / "model")
    write_tiny(tmp_path / "pristine")
    code = textwrap.dedent(f"""
        import os, numpy as np, minibert
        model = minibert.load({str(tmp_path / "model")!r}, backend={backend!r})
        before = model.encode({TEXTS!r})
        os.truncate({str(tmp_path / "model" / "model.safetensors")!r}, 0)
        after = model.encode({TEXTS!r})
        other = model.encode({OTHER_TEXTS!r})
        want = minibert.load({str(tmp_path / "pristine")!r}, backend={backend!r}).encode({OTHER_TEXTS!r})
        assert np.array_equal(before, after) and np.array_equal(other, want), "vectors changed"
        print("same vectors")
    """)
    child = run_child(code)
    assert child.returncode == 0, f"exit {child.returncode}: {child.stderr[-2000:]}"
    assert "same vectors" in child.stdout


def test_rewriting_the_checkpoint_in_place_changes_nothing(tmp_path):
    """Before: bytes written into model.safetensors after load showed through the map: NaN vectors, silently."""
    write_tiny(tmp_path)
    model = minibert.load(str(tmp_path), backend="numpy")
    before = model.encode(TEXTS)
    path = tmp_path / "model.safetensors"
    size = path.stat().st_size
    with open(path, "r+b") as f:           # every byte after the header length: a re-download gone wrong
        f.seek(8)
        f.write(b"\xff" * (size - 8))
    after = model.encode(TEXTS)
    assert np.isfinite(after).all()
    np.testing.assert_array_equal(before, after)


def test_a_checkpoint_that_changes_while_loading_is_refused(tmp_path, monkeypatch):
    """A download still writing the file while minibert reads it: the tensors would mix two versions."""
    write_tiny(tmp_path)
    read = minibert.checkpoint.safetensors.Checkpoint.read
    calls = []

    def read_then_append(self, name, dtype, mapped=False):
        calls.append(name)
        if len(calls) == 3:
            with open(tmp_path / "model.safetensors", "ab") as f:
                f.write(b"\0" * 64)
        return read(self, name, dtype, mapped)

    monkeypatch.setattr(minibert.checkpoint.safetensors.Checkpoint, "read", read_then_append)
    with pytest.raises(ModelFileError, match="changed while minibert was reading it"):
        minibert.load(str(tmp_path), backend="numpy")


def test_the_word_table_is_not_a_map_of_the_checkpoint(tmp_path):
    """What the two tests above rely on, checked directly: no mapping of model.safetensors stays open."""
    write_tiny(tmp_path)
    maps = Path(f"/proc/{os.getpid()}/maps")
    if not maps.exists():
        pytest.skip("no /proc/PID/maps on this system")
    model = minibert.load(str(tmp_path), backend="numpy")
    assert model.weights["embeddings"]["word"].shape == (tiny_config()["vocab_size"], 16)
    assert str(tmp_path / "model.safetensors") not in maps.read_text()


# (file made a FIFO or /dev/zero, error class, how the message names it)
SPECIAL_FILES = [
    ("config.json", "ConfigError", "config.json is a FIFO"),
    ("tokenizer_config.json", "TokenizerError", "tokenizer_config.json is a FIFO"),
    ("vocab.txt", "TokenizerError", "vocab.txt is a FIFO"),
    ("model.safetensors", "ModelFileError", "model.safetensors is a FIFO"),
]


@pytest.mark.parametrize("name, error, message", SPECIAL_FILES)
def test_a_fifo_in_place_of_a_model_file_is_refused_without_reading(tmp_path, name, error, message):
    """Before: open() on a FIFO blocked forever (config.json, shards) or the FIFO was silently skipped."""
    write_tiny(tmp_path)
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)
    code = f"import minibert\ntry:\n    minibert.load({str(tmp_path)!r}, backend='numpy')\n" \
           f"except minibert.{error} as e:\n    print('refused:', e)\n"
    child = run_child(code, timeout=60)
    assert child.returncode == 0, child.stderr[-2000:]
    assert f"{tmp_path / name}: {message}" in child.stdout


def test_a_fifo_shard_and_tokenizer_json_are_refused(tmp_path):
    """The sharded layout and tokenizer.json: each named in its own error."""
    write_tiny(tmp_path)
    os.mkfifo(tmp_path / "tokenizer.json")
    code = f"import minibert\ntry:\n    minibert.load({str(tmp_path)!r}, backend='numpy')\n" \
           "except minibert.TokenizerError as e:\n    print('refused:', e)\n"
    child = run_child(code, timeout=60)
    assert f"{tmp_path / 'tokenizer.json'}: tokenizer.json is a FIFO" in child.stdout, child.stderr[-2000:]

    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "model.safetensors").rename(tmp_path / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {"embeddings.word_embeddings.weight": "shard.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    os.mkfifo(tmp_path / "shard.safetensors")
    code = f"import minibert\ntry:\n    minibert.load({str(tmp_path)!r}, backend='numpy')\n" \
           "except minibert.ModelFileError as e:\n    print('refused:', e)\n"
    child = run_child(code, timeout=60)
    assert f"{tmp_path / 'shard.safetensors'}: the checkpoint is a FIFO" in child.stdout, child.stderr[-2000:]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize("name, error", [("config.json", ConfigError), ("vocab.txt", TokenizerError),
                                         ("model.safetensors", ModelFileError)])
def test_dev_zero_in_place_of_a_model_file_is_refused(tmp_path, name, error):
    """Before: config.json linked to /dev/zero was read until MemoryError. Run in a child with 2 GiB of
    address space, so that the old behaviour fails quickly instead of eating the machine's memory."""
    write_tiny(tmp_path)
    (tmp_path / name).unlink()
    (tmp_path / name).symlink_to("/dev/zero")
    code = f"import minibert\ntry:\n    minibert.load({str(tmp_path)!r}, backend='numpy')\n" \
           f"except minibert.{error.__name__} as e:\n    print('refused:', e)\n"
    child = run_child(code, timeout=60, memory=2 << 30)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "is a character device, not a regular file" in child.stdout


@pytest.mark.parametrize("name, error", [("config.json", ConfigError), ("tokenizer_config.json", TokenizerError),
                                         ("special_tokens_map.json", TokenizerError)])
def test_oversized_json_files_are_refused_before_reading(tmp_path, name, error):
    """A sparse 65 MiB file: refused by its size, not read into memory and parsed."""
    write_tiny(tmp_path)
    with open(tmp_path / name, "wb") as f:
        f.truncate(65 << 20)
    with pytest.raises(error, match=rf"{name} holds 68,157,440 bytes, more than the 64 MiB"):
        minibert.load(str(tmp_path), backend="numpy")


def test_oversized_shard_index_is_refused(tmp_path):
    write_tiny(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with open(tmp_path / "model.safetensors.index.json", "wb") as f:
        f.truncate(65 << 20)
    with pytest.raises(ModelFileError, match="the shard index holds 68,157,440 bytes, more than the 64 MiB"):
        minibert.load(str(tmp_path), backend="numpy")


def test_float64_values_beyond_float32_are_refused_with_counts(tmp_path):
    """Before: cast silently to inf (only `inspect --check` noticed). Now: the tensor and the count; float64
    loading still works."""
    config = tiny_config()
    tensors = {k: v.astype(np.float64) for k, v in tiny_tensors(config).items()}
    name = "encoder.layer.1.intermediate.dense.weight"
    tensors[name][0, :3] = [4e38, -1e300, 3.4e38]          # 3.4e38 still fits (float32 max 3.4028e38)
    write_tiny(tmp_path, config, tensors)
    with pytest.raises(ModelFileError, match=rf"tensor '{name}': 2 of 384 float64 values are beyond float32's range"):
        minibert.load(str(tmp_path), backend="numpy", dtype="float32")
    model = minibert.load(str(tmp_path), backend="numpy", dtype="float64")
    assert model.weights["layers"][1]["ffn_in"]["w"][0, 0] == 4e38


def test_no_room_for_the_private_copy_reads_the_word_table_into_memory(tmp_path, monkeypatch):
    """The fallback when $TMPDIR is full: the same vectors, from a table in memory."""
    write_tiny(tmp_path)
    want = minibert.load(str(tmp_path), backend="numpy").encode(TEXTS)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(minibert.checkpoint.safetensors.tempfile, "TemporaryFile", full)
    model = minibert.load(str(tmp_path), backend="numpy")
    assert not isinstance(model.weights["embeddings"]["word"].base, np.memmap)
    np.testing.assert_array_equal(model.encode(TEXTS), want)


def safetensors_bytes(header, data=b""):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


# ---------------------------------------------------------------------------------------------------
# Model files: every fault is a ModelFileError naming the file (and the tensor) and saying what to do.

W = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
SAFETENSORS_FAULTS = [
    (b"", r"truncated \(0 bytes\)"),
    (b"\x05\x00\x00", r"truncated \(3 bytes\)"),
    (struct.pack("<Q", 10 ** 6) + b"{}", r"the header claims 1000000 bytes but the file holds 10 bytes"),
    (struct.pack("<Q", 2 ** 64 - 1) + b"{}", r"the header claims 18446744073709551615 bytes"),
    (struct.pack("<Q", 9) + b"{not json", r"the header is not valid JSON"),
    (struct.pack("<Q", 2) + b"\xff\xfe", r"the header is not valid JSON \(UnicodeDecodeError"),
    (safetensors_bytes([1, 2]), r"the header is not a JSON object"),
    (safetensors_bytes({"w": {**W, "dtype": "F33"}}, bytes(16)), r"tensor 'w': unknown dtype 'F33'"),
    (safetensors_bytes({"w": {**W, "dtype": ["F32"]}}, bytes(16)), r"tensor 'w': unknown dtype \['F32'\]"),
    (safetensors_bytes({"w": {**W, "shape": [2, -2]}}, bytes(16)), r"shape \[2, -2\] is not a list of ints from 0"),
    (safetensors_bytes({"w": {**W, "shape": "2x2"}}, bytes(16)), r"shape '2x2' is not a list"),
    (safetensors_bytes({"w": {**W, "data_offsets": [0, 12]}}, bytes(12)), r"needs 16 bytes but data_offsets give 12"),
    (safetensors_bytes({"w": {**W, "data_offsets": [0, 16]}}, bytes(8)), r"data_offsets \[0, 16\] end past the file's "
                                                                          r"8 bytes of data \(the file is truncated"),
    (safetensors_bytes({"w": {**W, "data_offsets": [16, 0]}}, bytes(16)), r"are not a \[start, end\] pair"),
    (safetensors_bytes({"w": W, "v": {**W, "data_offsets": [8, 24]}}, bytes(24)), r"\(overlap\)"),
    (safetensors_bytes({"w": {**W, "data_offsets": [4, 20]}}, bytes(20)), r"\(gap\)"),
    (safetensors_bytes({"w": W}, bytes(20)), r"cover 16 bytes but the file holds 20 bytes of data \(trailing bytes\)"),
    (safetensors_bytes({"w": W, "__metadata__": {"format": 1}}, bytes(16)), r"__metadata__ must map names to strings"),
    (safetensors_bytes({"w": "F32"}, bytes(16)), r"tensor 'w': its entry is not a JSON object"),
]


@pytest.mark.parametrize("content, message", SAFETENSORS_FAULTS)
def test_safetensors_layout_faults_are_caught_before_the_library_sees_the_file(tmp_path, content, message):
    write_tiny(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelFileError, match=message) as caught:
        minibert.load(str(tmp_path))
    assert str(tmp_path / "model.safetensors") in str(caught.value)
    assert "re-download or re-save" in str(caught.value)


def test_truncated_checkpoint_names_the_shortfall(tmp_path):
    write_tiny(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(ModelFileError, match=r"tensor 'pooler.dense.weight': data_offsets \[\d+, \d+\] end past "
                                             r"the file's \d+ bytes of data \(the file is truncated"):
        minibert.load(str(tmp_path))


def test_tensor_of_a_non_float_dtype(tmp_path):
    config = tiny_config()
    tensors = tiny_tensors(config)
    tensors["encoder.layer.0.output.dense.bias"] = np.zeros(16, np.int32)
    write_tiny(tmp_path, config, tensors)
    with pytest.raises(ModelFileError, match=r"tensor 'encoder.layer.0.output.dense.bias' has dtype I32; minibert "
                                             r"reads floating-point weights"):
        minibert.load(str(tmp_path))


def write_sharded(directory, shards):
    """shards: {file name: {tensor name: array}} plus model.safetensors.index.json naming them."""
    config = tiny_config()
    write_tiny(directory, config)
    (directory / "model.safetensors").unlink()
    weight_map = {}
    for file, tensors in shards.items():
        save_file(tensors, str(directory / file))
        weight_map.update({name: file for name in tensors})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_shard_index_faults(tmp_path):
    tensors = tiny_tensors(tiny_config())
    names = sorted(tensors)
    write_sharded(tmp_path / "repeat", {"a.safetensors": {n: tensors[n] for n in names},
                                        "b.safetensors": {names[0]: tensors[names[0]]}})
    with pytest.raises(ModelFileError, match=rf"tensor '{names[0]}' is also in .*a.safetensors"):
        minibert.load(str(tmp_path / "repeat"))

    write_sharded(tmp_path / "dir", {"a.safetensors": tensors})
    index = tmp_path / "dir" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {names[0]: "sub.safetensors"}}))
    (tmp_path / "dir" / "sub.safetensors").mkdir()               # unreadable as a file
    with pytest.raises(ModelFileError, match=r"sub.safetensors: the checkpoint is a directory, not a regular file"):
        minibert.load(str(tmp_path / "dir"))
    index.write_text(json.dumps({"weight_map": {names[0]: "../elsewhere.safetensors"}}))
    with pytest.raises(ModelFileError, match=r"shard name '../elsewhere.safetensors' is not a file name"):
        minibert.load(str(tmp_path / "dir"))
    index.write_text(json.dumps({"weight_map": {names[0]: "missing.safetensors"}}))
    with pytest.raises(ModelFileError, match=r"missing.safetensors: safetensors file not found"):
        minibert.load(str(tmp_path / "dir"))
    index.write_text("[" * 100000)
    with pytest.raises(ModelFileError, match=r"cannot read the shard index \(RecursionError"):
        minibert.load(str(tmp_path / "dir"))
