"""PyTorch pytorch_model.bin checkpoints, read without torch: the committed fixtures (made by torch 2.13 with
tests/fixtures/make_torch_bin.py) load equal to their safetensors twins; malicious or damaged files are
refused with a ModelFileError before anything in them runs."""

import io
import json
import os
import pickle
import pickletools
import re
import resource
import shutil
import struct
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_loading import refused_by_every_reader
from tiny import write_tiny

import minibert
from minibert import ModelFileError

FIXTURES = Path(__file__).parent / "fixtures" / "torch_bin"
TEXTS = ["the cat sat on the mat", "hello world", "a dog ran"]


def twin_dir(tmp_path, case):
    """The case's config and vocabulary with its safetensors twin as model.safetensors."""
    twin = tmp_path / f"{case}-twin"
    twin.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copy(FIXTURES / case / name, twin / name)
    shutil.copy(FIXTURES / f"{case}.twin.safetensors", twin / "model.safetensors")
    return twin


@pytest.mark.parametrize("case", ["fp32", "fp16", "bf16", "tied", "views", "sharded"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_bin_loads_equal_to_its_safetensors_twin(tmp_path, case, dtype):
    from_bin = minibert.load(str(FIXTURES / case), backend="numpy", dtype=dtype)
    from_twin = minibert.load(str(twin_dir(tmp_path, case)), backend="numpy", dtype=dtype)

    def leaves(tree, prefix=""):
        if isinstance(tree, dict):
            for k, v in tree.items():
                yield from leaves(v, f"{prefix}{k}.")
        elif isinstance(tree, list):
            for i, v in enumerate(tree):
                yield from leaves(v, f"{prefix}{i}.")
        elif tree is not None:
            yield prefix, tree
    ours, twins = dict(leaves(from_bin.weights)), dict(leaves(from_twin.weights))
    assert ours.keys() == twins.keys()
    for name in ours:
        assert ours[name].dtype == twins[name].dtype
        np.testing.assert_array_equal(ours[name], twins[name], err_msg=name)     # bit for bit
    np.testing.assert_array_equal(from_bin.encode(TEXTS), from_twin.encode(TEXTS))


def test_bf16_values_are_the_exact_widening_of_the_stored_words():
    """bf16 -> float32 by shifting the 16-bit words left: exact, and not the fp32 values they came from."""
    model = minibert.load(str(FIXTURES / "bf16"), backend="numpy")
    word = np.asarray(model.weights["embeddings"]["word"])
    assert not np.any(word.view(np.uint32) & 0xFFFF)                 # low 16 bits all zero: bf16 values
    fp32 = minibert.load(str(FIXTURES / "fp32"), backend="numpy").weights["embeddings"]["word"]
    assert np.abs(word - fp32).max() <= np.abs(fp32).max() * 2 ** -8   # within bf16's rounding


def test_safetensors_is_preferred_when_both_exist(tmp_path):
    """A directory with both: model.safetensors is read, pytorch_model.bin is not even opened."""
    case = twin_dir(tmp_path, "fp32")
    (case / "pytorch_model.bin").write_bytes(b"not a checkpoint at all")
    model = minibert.load(str(case), backend="numpy")
    assert model.encode(TEXTS).shape == (3, 16)


def test_legacy_format_is_refused_naming_it():
    with pytest.raises(ModelFileError, match=r"pytorch_model.bin: not a zip archive: "
                                             r"a PyTorch checkpoint in the legacy "
                                             r"format \(torch < 1.6"):
        minibert.load(str(FIXTURES / "legacy"), backend="numpy")


# ---------------------------------------------------------------------------------------------------
# Hand-made archives: a pickle written here (no torch), in the layout torch.save uses.

def write_archive(directory: Path, pickled: bytes, records=None, name="pytorch_model.bin"):
    write_tiny(directory)
    (directory / "model.safetensors").unlink()
    with zipfile.ZipFile(directory / name, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")
        for key, data in (records or {}).items():
            z.writestr(f"archive/data/{key}", data)
    return directory


class RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("wrap", ["top", "inside_a_state_dict", "as_a_storage_type"])
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, wrap):
    marker = tmp_path / "marker"
    payload = RunsCommand(f"touch {marker}")
    if wrap == "top":
        pickled = pickle.dumps(payload, protocol=2)
    elif wrap == "inside_a_state_dict":
        pickled = pickle.dumps({"embeddings.word_embeddings.weight": payload}, protocol=2)
    else:             # a persistent id whose storage type is the payload
        storage = object()

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                return ("storage", payload, "0", "cpu", 4) if obj is storage else None
        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump({"w": storage})
        pickled = buffer.getvalue()
    write_archive(tmp_path / "model", pickled)
    with pytest.raises(ModelFileError, match=rf"the pickle asks for {os.system.__module__}\.system, which a state dict "
                                             "does not need; refused without running it"):
        minibert.load(str(tmp_path / "model"), backend="numpy")
    assert not marker.exists()


def test_builtins_eval_and_getattr_are_refused(tmp_path):
    for target in (eval, getattr):
        pickled = pickle.dumps({"x": target}, protocol=2)
        write_archive(tmp_path / target.__name__, pickled)
        with pytest.raises(ModelFileError, match=rf"asks for (__builtin__|builtins)\.{target.__name__}"):
            minibert.load(str(tmp_path / target.__name__), backend="numpy")


def fake_torch_pickle(tensors: dict) -> bytes:
    """data.pkl as torch writes it, for tensors given as (storage type, key, numel, offset, size, stride);
    the globals are written by name with pickle opcodes, so no torch is needed."""
    out = io.BytesIO()
    out.write(b"\x80\x02}(")                                                  # PROTO 2, EMPTY_DICT, MARK
    for name, (storage_type, key, numel, offset, size, stride) in tensors.items():
        out.write(pickle.dumps(name, protocol=2)[2:-1])                       # the key (no PROTO, no STOP)
        out.write(b"ctorch._utils\n_rebuild_tensor_v2\n(")                    # GLOBAL, MARK
        out.write(b"(" + pickle.dumps("storage", protocol=2)[2:-1] + f"ctorch\n{storage_type}\n".encode()
                  + pickle.dumps(key, protocol=2)[2:-1] + pickle.dumps("cpu", protocol=2)[2:-1]
                  + pickle.dumps(numel, protocol=2)[2:-1] + b"tQ")           # TUPLE, BINPERSID
        for value in (offset, tuple(size), tuple(stride), False):
            out.write(pickle.dumps(value, protocol=2)[2:-1])
        out.write(b"ccollections\nOrderedDict\n)RtR")                          # OrderedDict(), TUPLE, REDUCE
    out.write(b"u.")                                                          # SETITEMS, STOP
    return out.getvalue()


def test_build_opcodes_cannot_change_checked_records_or_minibert_functions(tmp_path):
    """BUILD (an object's state) after a tensor record, and on the rebuild function itself: refused, and a
    clean checkpoint loads the same afterwards."""
    V, H = 49, 16
    tensor = ("FloatStorage", "0", V * H, 0, (V, H), (H, 1))
    pickled = fake_torch_pickle({"embeddings.word_embeddings.weight": tensor})
    on_record = (pickled[:-2] + b"}" + pickle.dumps("offset", protocol=2)[2:-1]
                 + b"G?\xf8\x00\x00\x00\x00\x00\x00sb" + pickled[-2:])
    on_function = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(N}" + pickle.dumps("__defaults__", protocol=2)[2:-1]
                   + b"(K\x01tstb" + b".")     # BUILD (None, {"__defaults__": (1,)})
    for name, data in (("record", on_record), ("function", on_function)):
        write_archive(tmp_path / name, data, {"0": b"\0" * (4 * V * H)})
        with pytest.raises(ModelFileError):
            minibert.load(str(tmp_path / name), backend="numpy")
    from minibert.checkpoint.torch_bin import rebuild_tensor
    assert rebuild_tensor.__defaults__ == (False, None, None)
    minibert.load(str(FIXTURES / "fp32"), backend="numpy")


def test_the_hand_made_writer_reads_back():
    """fake_torch_pickle is what the refusals below rely on: check it against the real fixture's bytes."""
    data = np.arange(6, dtype=np.float32)
    pickled = fake_torch_pickle({"w": ("FloatStorage", "0", 6, 1, (2, 2), (1, 2))})
    from minibert.checkpoint.torch_bin import StateDictUnpickler
    state = StateDictUnpickler(pickled, "test").load()
    assert state["w"].offset == 1 and state["w"].shape == (2, 2) and state["w"].strides == (1, 2)
    assert data.size == state["w"].storage.numel


@pytest.mark.parametrize("tensor, records, message", [
    (("FloatStorage", "0", 10, 0, (4,), (1,)), {"0": b"\0" * 16},
     r"needs 40 bytes but its record holds 16 \(storage out of range\)"),
    (("FloatStorage", "0", 4, 2, (4,), (1,)), {"0": b"\0" * 16},
     r"reaches element 5 of a storage of 4 \(storage out of range\)"),
    (("FloatStorage", "0", 4, 0, (2, 2), (3, 1)), {"0": b"\0" * 16}, r"reaches element 4 of a storage of 4"),
    (("FloatStorage", "1", 4, 0, (4,), (1,)), {"0": b"\0" * 16}, r"storage '1' has no record archive/data/1"),
    (("FloatStorage", "0", 4, -1, (4,), (1,)), {"0": b"\0" * 16},
     r"storage offset -1 is not an int from 0 to 2\*\*63 - 1"),
    (("FloatStorage", "0", 4, 0, (1000, 1000), (0, 0)), {"0": b"\0" * 16}, r"more elements than its storage"),
    (("ComplexFloatStorage", "0", 4, 0, (4,), (1,)), {"0": b"\0" * 32}, r"asks for torch.ComplexFloatStorage"),
])
def test_damaged_storages_are_refused(tmp_path, tensor, records, message):
    write_archive(tmp_path, fake_torch_pickle({"embeddings.word_embeddings.weight": tensor}), records)
    with pytest.raises(ModelFileError, match=message):
        minibert.load(str(tmp_path), backend="numpy")


def hostile_pickle(numel, offset, size, stride) -> bytes:
    """data.pkl with one tensor, embeddings.word_embeddings.weight, of FloatStorage '0'; any int in `size`
    or `stride` equal to the first size is written once and then referenced through the pickle's memo
    (BINPUT / BINGET), as a 101 KB file can hold 40 copies of one 100 KB integer."""
    def ints(values):
        out = b"("
        for value in values:
            out += b"h\x01" if value == size[0] and value > 2 ** 63 else pickle.dumps(value, protocol=2)[2:-1]
        return out + b"t"
    out = io.BytesIO()
    out.write(b"\x80\x02}(" + pickle.dumps("embeddings.word_embeddings.weight", protocol=2)[2:-1])
    out.write(b"ctorch._utils\n_rebuild_tensor_v2\n(")
    out.write(b"(" + pickle.dumps("storage", protocol=2)[2:-1] + b"ctorch\nFloatStorage\n"
              + pickle.dumps("0", protocol=2)[2:-1] + pickle.dumps("cpu", protocol=2)[2:-1]
              + pickle.dumps(numel, protocol=2)[2:-1] + b"tQ")
    out.write(pickle.dumps(offset, protocol=2)[2:-1])
    if size and size[0] > 2 ** 63:           # the first copy, memoized as entry 1
        out.write(b"(" + pickle.dumps(size[0], protocol=2)[2:-1] + b"q\x01" + ints(size[1:])[1:])
    else:
        out.write(ints(size))
    out.write(ints(stride) + b"\x89" + b"ccollections\nOrderedDict\n)RtRu.")      # NEWFALSE, OrderedDict(), ...
    return out.getvalue()


BIG = (1 << 800_000) - 1    # a 100 KB integer (about 240,800 digits)


@pytest.mark.parametrize("numel, offset, size, stride, message", [
    (4, 0, (BIG,) * 40, (1,) * 40, r"shape \(<a number of about 240,825 digits>, .*, \.\.\. 32 more\) has 40 "
                                   r"dimensions, more than the 32"),
    (4, 0, (BIG,) * 20, (1,) * 20, r"shape \(<a number of about 240,825 digits>, .*\) is not a list of ints from 0 "
                                   r"to 2\*\*63 - 1"),
    (4, 0, (1,) * 65, (1,) * 65, r"shape \(1, 1, 1, 1, 1, 1, 1, 1, \.\.\. 57 more\) has 65 dimensions"),
    (4, 0, (2 ** 62, 2 ** 62, 0), (1, 1, 1), r"shape \(4611686018427387904, 4611686018427387904, 0\) spans 2\*\*63 "
                                             "bytes"),
    (4, 0, (1, 2), (2 ** 70, 2), r"strides \(<a number of about 22 digits>, 2\) are not 2 ints from 0 to 2\*\*63 - 1"),
    (4, 0, (2, 2), (2, 1, 1), r"strides \(2, 1, 1\) are not 2 ints"),
    (4, 2 ** 70, (2,), (1,), r"storage offset <a number of about 22 digits> is not an int from 0 to 2\*\*63 - 1"),
    (4, 0.5, (2,), (1,), r"storage offset 0.5 is not an int"),
], ids=["40_memo_refs", "20_memo_refs", "65_dims", "2**62", "stride_2**70", "3_strides", "offset_2**70",
        "float_offset"])
def test_hostile_view_numbers_are_refused_fast_naming_file_and_tensor(tmp_path, capsys, numel, offset, size, stride,
                                                                      message):
    """Sizes, strides and offsets from the pickle are bounded before anything multiplies or prints them: 40
    memo references to one 100 KB integer kept load busy for about 50 s (it grows with the square); more than
    64 dimensions, [2**62, 2**62, 0] and a stride of 2**70 were raw ValueError / OverflowError tracebacks."""
    directory = write_archive(tmp_path / "model", hostile_pickle(numel, offset, size, stride), {"0": b"\0" * 16})
    where = re.escape(str(directory / "pytorch_model.bin"))
    refused_by_every_reader(directory, rf"{where}: tensor 'embeddings.word_embeddings.weight': {message}", capsys)


def test_the_memo_file_is_small():
    """The hostile file of the first case is what the issue describes: about 101 KB for 40 sizes."""
    assert 95_000 < len(hostile_pickle(4, 0, (BIG,) * 40, (1,) * 40)) < 110_000


@pytest.mark.parametrize("numel", [2 ** 63, BIG, -1], ids=["2**63", "100KB", "-1"])
def test_hostile_storage_counts_are_refused(tmp_path, numel):
    write_archive(tmp_path / "model", hostile_pickle(numel, 0, (2,), (1,)), {"0": b"\0" * 16})
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=r"pytorch_model.bin: data.pkl: a storage with key '0' and "
                                             r"(-1|<a number of about [\d,]+ digits>) elements"):
        minibert.load(str(tmp_path / "model"), backend="numpy")
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("put", [b"r" + struct.pack("<I", 2 ** 29), b"p536870912\n"], ids=["LONG_BINPUT", "PUT"])
def test_a_huge_memo_index_is_refused_before_the_unpickler_allocates_for_it(tmp_path, put):
    """CPython's unpickler sizes its memo array from a PUT index: one LONG_BINPUT of 2**29 in the views
    fixture's data.pkl (the fuzzer's iteration 714 of seed 0) made load allocate 8 GiB, then succeed."""
    good = FIXTURES / "views" / "pytorch_model.bin"
    with zipfile.ZipFile(good) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        pickled, records = z.read(name), {n.split("/data/")[1]: z.read(n) for n in z.namelist() if "/data/" in n}
    first_put = next(at for op, arg, at in pickletools.genops(pickled) if op.name == "BINPUT")   # torch's first
    hostile = pickled[:first_put] + put + pickled[first_put + 2:]
    directory = write_archive(tmp_path / "model", hostile, records)
    shutil.copy(good.parent / "config.json", directory / "config.json")
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelFileError, match=r"data.pkl: memo index 536870912 at byte \d+, after \d+ opcodes"):
        minibert.load(str(directory), backend="numpy")
    assert time.perf_counter() - start < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000      # KiB: no 8 GiB memo


def test_a_huge_stride_on_a_size_one_dimension_is_not_passed_to_numpy(tmp_path):
    """A view's size-1 dimension never moves, whatever its stride (torch writes such strides for slices): a
    stride of 2**62 there read as NumPy strides overflowed; now the values are read."""
    from minibert.checkpoint.safetensors import Checkpoint
    directory = write_archive(tmp_path / "model", hostile_pickle(4, 0, (1, 2), (2 ** 62, 2)),
                              {"0": np.arange(4, dtype="<f4").tobytes()})
    checkpoint = Checkpoint([directory / "pytorch_model.bin"])
    np.testing.assert_array_equal(checkpoint.read("embeddings.word_embeddings.weight", np.float32), [[0, 2]])


def test_integer_weights_are_refused_naming_the_dtype(tmp_path):
    config = json.loads((FIXTURES / "fp32" / "config.json").read_text())
    V, H = config["vocab_size"], config["hidden_size"]
    write_archive(tmp_path, fake_torch_pickle({"embeddings.word_embeddings.weight":
                                               ("LongStorage", "0", V * H, 0, (V, H), (H, 1))}),
                  {"0": b"\0" * (8 * V * H)})
    with pytest.raises(ModelFileError, match=r"tensor 'embeddings.word_embeddings.weight' has dtype I64"):
        minibert.load(str(tmp_path), backend="numpy")


def test_not_a_state_dict_and_not_torch_layout(tmp_path):
    write_archive(tmp_path / "list", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ModelFileError, match="data.pkl holds a list, not a state dict"):
        minibert.load(str(tmp_path / "list"), backend="numpy")
    write_archive(tmp_path / "int", pickle.dumps({"w": 3}, protocol=2))
    with pytest.raises(ModelFileError, match="state dict entry 'w' is a int, not a tensor"):
        minibert.load(str(tmp_path / "int"), backend="numpy")
    write_tiny(tmp_path / "zip")
    (tmp_path / "zip" / "model.safetensors").unlink()
    with zipfile.ZipFile(tmp_path / "zip" / "pytorch_model.bin", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ModelFileError, match=r"not torch's checkpoint layout"):
        minibert.load(str(tmp_path / "zip"), backend="numpy")


def test_torch_is_never_imported(tmp_path):
    """Reading .bin files must not need torch even where it is installed."""
    import subprocess
    code = (f"import sys, minibert; minibert.load({str(FIXTURES / 'views')!r}, backend='numpy').encode(['a']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


@pytest.mark.reference
@pytest.mark.parametrize("torch_dtype", ["float32", "bfloat16"])
def test_live_save_pretrained_bin_equals_its_safetensors(tmp_path, torch_dtype):
    """torch.save of a fresh random BertForMaskedLM's state dict (tied decoder, int64 position_ids buffer), as
    transformers 4's save_pretrained(safe_serialization=False) wrote it (transformers 5 always writes
    safetensors), against the same model saved as safetensors; float32 also against transformers' output."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tiny import VOCAB
    torch.manual_seed(3)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=40)
    model = transformers.BertForMaskedLM(config).eval().to(getattr(torch, torch_dtype))
    model.save_pretrained(tmp_path / "st")
    (tmp_path / "bin").mkdir()
    model.config.to_json_file(tmp_path / "bin" / "config.json")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    for name in ("bin", "st"):
        (tmp_path / name / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    assert (tmp_path / "bin" / "pytorch_model.bin").exists() and not (tmp_path / "bin" / "model.safetensors").exists()
    ours = minibert.load(str(tmp_path / "bin"), backend="numpy", dtype="float64")
    twin = minibert.load(str(tmp_path / "st"), backend="numpy", dtype="float64")
    batch = ours.tokenize(TEXTS)
    got = ours.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids).last_hidden_state
    np.testing.assert_array_equal(got, twin.forward(batch.input_ids, batch.attention_mask,
                                                    batch.token_type_ids).last_hidden_state)
    if torch_dtype == "float32":
        with torch.no_grad():
            want = model.bert(input_ids=torch.tensor(batch.input_ids),
                              attention_mask=torch.tensor(batch.attention_mask),
                              token_type_ids=torch.tensor(batch.token_type_ids)).last_hidden_state.numpy()
        mask = batch.attention_mask.astype(bool)
        assert np.abs(got[mask] - want[mask]).max() < 5e-6


@pytest.mark.parametrize("published", ["bin only", "both"])
def test_hub_ids_fetch_the_bin_weights_only_when_there_is_no_safetensors(tmp_path, monkeypatch, published):
    """A stand-in hub that hands out the files matching allow_patterns, as snapshot_download does: a repository
    with only pytorch_model.bin loads from it; one with both never downloads the .bin."""
    import fnmatch
    huggingface_hub = pytest.importorskip("huggingface_hub")
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "fp32", repo)
    if published == "both":
        shutil.copy(FIXTURES / "fp32.twin.safetensors", repo / "model.safetensors")
    fetched = []

    def snapshot_download(repo_id, allow_patterns, **options):
        snapshot = tmp_path / "snapshot"
        snapshot.mkdir(exist_ok=True)
        for path in repo.iterdir():
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in allow_patterns):
                shutil.copy(path, snapshot / path.name)
                fetched.append(path.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = minibert.load("someone/bin-only", backend="numpy")
    assert ("pytorch_model.bin" in fetched) == (published == "bin only"), fetched
    want = minibert.load(str(twin_dir(tmp_path, "fp32")), backend="numpy").encode(TEXTS)
    np.testing.assert_array_equal(model.encode(TEXTS), want)


def test_a_classifier_with_only_pytorch_model_bin_loads(tmp_path):
    """Found by a user: load_classifier read every weights file as safetensors, so a classifier saved with
    only pytorch_model.bin (older hub ones) was "corrupt or truncated". The same tensors in both formats
    (with an int64 position_ids buffer in the .bin) give the same logits."""
    from safetensors.numpy import load_file
    from minibert.train.data import Examples
    from minibert.train.finetune import TrainingRecipe, finetune
    families = Path(__file__).parent / "fixtures" / "families"
    train = Examples(texts=["the cat", "a dog", "the mat", "a cat"], labels=["x", "y", "x", "y"])
    clf = finetune(str(families / "bert_cased"), train, recipe=TrainingRecipe(epochs=1, batch_size=2)).save(
        tmp_path / "st")
    tensors = load_file(str(clf / "model.safetensors"))
    tensors["bert.embeddings.position_ids"] = np.arange(8, dtype=np.int64)[None]
    storage = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}
    pickled = fake_torch_pickle({name: (storage[t.dtype], str(i), t.size, 0, t.shape,
                                        tuple(s // t.itemsize for s in t.strides))
                                 for i, (name, t) in enumerate(tensors.items())})
    write_archive(tmp_path / "bin", pickled, {str(i): t.tobytes() for i, t in enumerate(tensors.values())})
    for name in os.listdir(clf):
        if name != "model.safetensors":
            shutil.copy(clf / name, tmp_path / "bin" / name)
    texts = ["the cat sat", "a dog"]
    ours = minibert.load_classifier(tmp_path / "bin")
    assert ours.labels == ["x", "y"]
    np.testing.assert_array_equal(ours.logits(texts), minibert.load_classifier(clf).logits(texts))


def test_parameters_with_attributes_load(tmp_path):
    """Found by a user: state_dict(keep_vars=True) or dict(named_parameters()) of a transformers model saves
    each parameter through torch._utils._rebuild_parameter_with_state (transformers sets _is_hf_initialized
    on them), which torch.load(weights_only=True) reads and minibert refused."""
    from tiny import tiny_config, tiny_tensors
    tensors = tiny_tensors(tiny_config())
    body = b""
    for i, (name, t) in enumerate(tensors.items()):
        one = fake_torch_pickle({name: ("FloatStorage", str(i), t.size, 0, t.shape,
                                        tuple(s // t.itemsize for s in t.strides))})
        key = pickle.dumps(name, protocol=2)[2:-1]
        tensor = one[len(b"\x80\x02}(" + key):-len(b"u.")]
        body += (key + b"ctorch._utils\n_rebuild_parameter_with_state\n(" + tensor + b"\x89"     # NEWFALSE
                 + b"ccollections\nOrderedDict\n)R}" + pickle.dumps("_is_hf_initialized", protocol=2)[2:-1]
                 + b"\x88stR")                                           # NEWTRUE, SETITEM, TUPLE, REDUCE
    write_archive(tmp_path / "bin", b"\x80\x02}(" + body + b"u.", {str(i): t.tobytes()
                                                                  for i, t in enumerate(tensors.values())})
    ours = minibert.load(str(tmp_path / "bin"), backend="numpy").encode(TEXTS)
    np.testing.assert_array_equal(ours, minibert.load(str(write_tiny(tmp_path / "st")), backend="numpy").encode(TEXTS))
