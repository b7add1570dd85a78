"""PyTorch `pytorch_model.bin` state dicts, read without torch and without running the file's pickle.

torch.save (torch >= 1.6) writes a zip archive:

    <name>/data.pkl      the state dict, pickled; each tensor is a call of torch._utils._rebuild_tensor_v2
                         (storage, storage_offset, size, stride, requires_grad, backward_hooks), and each
                         storage a persistent id ("storage", torch.FloatStorage, key, location, numel)
    <name>/data/<key>    the storage's raw little-endian bytes, stored uncompressed
    <name>/byteorder     "little" (absent in older files: little)

A pickle can call any importable function, so data.pkl is read by an unpickler that knows only the globals
a state dict needs (the tensor and parameter rebuild functions, torch's storage types, OrderedDict) and
refuses any other global when the pickle names it, before anything is called. The rebuild functions are
minibert's own stand-ins: they record where a tensor's elements are (storage, offset, shape, strides),
and safetensors.Checkpoint reads those bytes from the archive like a safetensors tensor.
"""

import collections
import functools
import io
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

from .. import files
from ..errors import ModelFileError

PICKLE_LIMIT = 64 * files.MiB      # a state dict's pickle holds names and shapes: ~100 KiB for BERT-large

# torch storage type name -> (safetensors dtype name, bytes per element); the names are those torch writes.
STORAGE_DTYPES = {
    "FloatStorage": ("F32", 4), "HalfStorage": ("F16", 2), "BFloat16Storage": ("BF16", 2),
    "DoubleStorage": ("F64", 8), "LongStorage": ("I64", 8), "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2), "CharStorage": ("I8", 1), "ByteStorage": ("U8", 1), "BoolStorage": ("BOOL", 1),
    "UntypedStorage": ("U8", 1),   # a storage saved without a dtype: bytes, as torch.load reads it
}
FIX = "re-save it with torch.save(model.state_dict(), path), or use the checkpoint's safetensors file"


# Records the unpickler makes are tuples: a pickle's BUILD opcode cannot change them after they were checked.
class StorageType(NamedTuple):
    name: str          # "FloatStorage"


class Storage(NamedTuple):
    key: str           # the archive record data/<key>
    dtype: str         # "F32", ...
    numel: int


class TensorRef(NamedTuple):
    """Where one tensor's elements are: storage element offset + sum(index * stride)."""
    storage: Storage
    offset: int
    shape: tuple
    strides: tuple


def rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Stand-in for torch._utils._rebuild_tensor_v2: records the view; tensor_location checks it, once the
    state dict gives the tensor a name to report."""
    return TensorRef(storage, storage_offset, size, stride)


def rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """Stand-in for torch._utils._rebuild_parameter: a parameter is its tensor."""
    return data


def rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    """Stand-in for torch._utils._rebuild_parameter_with_state: a parameter carrying attributes (transformers
    marks every loaded one with _is_hf_initialized), as state_dict(keep_vars=True) saves it; the attributes,
    plain values the unpickler already restricted, are dropped."""
    return data


ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter_with_state,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
    ("torch.storage", "UntypedStorage"): StorageType("UntypedStorage"),
}


class StateDictUnpickler(pickle.Unpickler):
    """Only ALLOWED_GLOBALS; storages come back as Storage records, one per key (tied tensors share one)."""

    def __init__(self, data: bytes, where: str):
        super().__init__(io.BytesIO(data))
        self.where, self.storages = where, {}

    def find_class(self, module, name):
        found = ALLOWED_GLOBALS.get((module, name))
        if callable(found):      # a fresh wrapper: BUILD on it cannot reach minibert's own function objects
            return functools.partial(found)
        if found is None:
            raise ModelFileError(f"{self.where}: the pickle asks for {module}.{name}, which a state dict does not "
                                 "need; refused without running it (the file may be malicious, or hold more than "
                                 f"weights); {FIX}")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ModelFileError(f"{self.where}: unknown persistent id {files.shown(pid)}; {FIX}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, StorageType):
            raise ModelFileError(f"{self.where}: a storage of type {files.shown(storage_type)}; {FIX}")
        if not isinstance(key, str) or not files.is_size(numel):
            raise ModelFileError(f"{self.where}: a storage with key {files.shown(key)} and {files.shown(numel)} "
                                 f"elements; {FIX}")
        dtype = STORAGE_DTYPES[storage_type.name][0]
        seen = self.storages.setdefault(key, Storage(key, dtype, numel))
        if seen != Storage(key, dtype, numel):       # torch writes one record per storage, with one type
            raise ModelFileError(f"{self.where}: storage {key!r} appears with two types or sizes; {FIX}")
        return seen


def check_memo_indices(data: bytes, where: str) -> None:
    """Refuse memo indices that no pickler writes, before the C unpickler sees them.

    CPython's unpickler grows its memo array to twice a PUT / LONG_BINPUT index: one 4-byte index near
    2**29 in a 34 KB data.pkl made it allocate 8 GiB (found by tests/fuzz_loading.py). A pickler numbers
    memo entries 0, 1, 2, ... as it writes them, so an index never exceeds the count of opcodes before it.
    """
    try:
        for count, (opcode, arg, position) in enumerate(pickletools.genops(data)):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and not (type(arg) is int and 0 <= arg <= count):
                raise ModelFileError(f"{where}: memo index {files.shown(arg)} at byte {position}, after {count} "
                                     f"opcodes; no pickler writes that (the file is damaged or crafted); {FIX}")
    except ModelFileError:
        raise
    except (ValueError, TypeError, EOFError) as e:
        raise ModelFileError(f"{where}: not a readable pickle ({type(e).__name__}: {str(e)[:200]}); {FIX}") from None


def is_torch_file(path: Path) -> bool:
    return path.suffix == ".bin"


def read_tensors(path: Path) -> dict:
    """name -> (dtype, shape, strides or None when C-contiguous, (first byte, end byte) in the file)."""
    if not files.is_present(path, ModelFileError, "the checkpoint"):
        raise ModelFileError(f"{path}: PyTorch checkpoint not found")
    try:
        with files.open_regular(path, ModelFileError, "the checkpoint") as f:
            if f.read(4) != b"PK\x03\x04":
                raise ModelFileError(f"{path}: not a zip archive: a PyTorch checkpoint in the legacy format (torch "
                                     "< 1.6 or _use_new_zipfile_serialization=False), which only torch can read; "
                                     f"{FIX}")
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                return archive_tensors(path, f, archive)
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError, IndexError,
            TypeError, AttributeError, struct.error, NotImplementedError, OverflowError, RecursionError,
            MemoryError, pickle.UnpicklingError) as e:
        raise ModelFileError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e}); {FIX}") from None


def archive_tensors(path: Path, f, archive: zipfile.ZipFile) -> dict:
    pickles = [info for info in archive.infolist() if info.filename.count("/") == 1
               and info.filename.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise ModelFileError(f"{path}: a zip archive but not torch's checkpoint layout "
                             f"(no single <name>/data.pkl); {FIX}")
    prefix = pickles[0].filename[: -len("data.pkl")]
    if pickles[0].file_size > PICKLE_LIMIT:
        raise ModelFileError(f"{path}: data.pkl holds {pickles[0].file_size:,} bytes, more than a state dict "
                             f"needs ({PICKLE_LIMIT // files.MiB} MiB); {FIX}")
    byteorder = prefix + "byteorder"
    if byteorder in archive.namelist() and archive.open(byteorder).read(16) != b"little":
        raise ModelFileError(f"{path}: saved on a big-endian machine; {FIX} on a little-endian one")
    with archive.open(pickles[0]) as stream:
        data = stream.read(PICKLE_LIMIT + 1)
    check_memo_indices(data, f"{path}: data.pkl")
    unpickler = StateDictUnpickler(data, f"{path}: data.pkl")
    state = unpickler.load()
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: data.pkl holds a {type(state).__name__}, "
                             f"not a state dict (names -> tensors); {FIX}")
    spans = {key: storage_span(path, f, archive, prefix, storage) for key, storage in unpickler.storages.items()}
    tensors = {}
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, TensorRef):
            raise ModelFileError(f"{path}: state dict entry {files.shown(name)} is a {type(tensor).__name__}, not a "
                                 f"tensor; {FIX}")
        tensors[name] = tensor_location(path, name, tensor, spans)
    return tensors


def storage_span(path: Path, f, archive: zipfile.ZipFile, prefix: str, storage: Storage) -> tuple:
    """(first byte, end byte) in the file of a storage's record, which must hold all of its elements."""
    name = f"{prefix}data/{storage.key}"
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ModelFileError(f"{path}: storage {storage.key!r} has no record {name} in the archive; {FIX}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise ModelFileError(f"{path}: record {name} is compressed; torch stores tensor data uncompressed; {FIX}")
    needed = storage.numel * STORAGE_ITEMSIZE[storage.dtype]
    if info.file_size < needed:
        raise ModelFileError(f"{path}: storage {storage.key!r} ({storage.numel:,} x {storage.dtype}) needs {needed:,} "
                             f"bytes but its record holds {info.file_size:,} (storage out of range); {FIX}")
    f.seek(info.header_offset)
    local = f.read(30)                       # the local file header: the data follows its name and extra field
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise ModelFileError(f"{path}: record {name}: corrupt zip entry; {FIX}")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_length + extra_length
    size = f.seek(0, 2)
    if start + needed > size:
        raise ModelFileError(f"{path}: record {name} ends past the end of the file (truncated); {FIX}")
    return start, start + needed


STORAGE_ITEMSIZE = {dtype: size for dtype, size in STORAGE_DTYPES.values()}


def tensor_location(path: Path, name: str, tensor: TensorRef, spans: dict) -> tuple:
    """(dtype, shape, strides or None, byte span covering the tensor's elements) after checking that every
    element lies inside the storage. The numbers come from the pickle: each is bounded (files.shape_problem)
    before any is multiplied or printed."""
    storage, offset, shape, strides = tensor
    where = f"{path}: tensor {name!r}"
    if not isinstance(storage, Storage):
        raise ModelFileError(f"{where}: its storage is a {type(storage).__name__}, not a storage record; {FIX}")
    itemsize, span = STORAGE_ITEMSIZE[storage.dtype], spans[storage.key]
    if not isinstance(shape, tuple) or not isinstance(strides, tuple):
        raise ModelFileError(f"{where}: size {files.shown(shape)} and stride {files.shown(strides)} are not "
                             f"tuples; {FIX}")
    problem = files.shape_problem(shape, itemsize, strides)
    if not problem and not files.is_size(offset):
        problem = f"storage offset {files.shown(offset)} is not an int from 0 to 2**63 - 1"
    if problem:
        raise ModelFileError(f"{where}: {problem}; {FIX}")
    count = 1
    for n in shape:
        count *= n
    if count == 0:
        return storage.dtype, shape, None, (span[0], span[0])
    if count > storage.numel:          # only a broadcast (stride 0) view can: never in a state dict
        raise ModelFileError(f"{where} ({shape}, strides {strides}) has more elements than its "
                             f"storage ({storage.numel}); {FIX}")
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))      # the last element's index
    if last >= storage.numel:
        raise ModelFileError(f"{where} ({shape}, strides {strides}, offset {offset}) reaches "
                             f"element {last} of a storage of {storage.numel} (storage out of range); {FIX}")
    contiguous, step = True, 1
    for n, s in reversed(list(zip(shape, strides))):
        if n != 1 and s != step:
            contiguous = False
        step *= n
    start = span[0] + offset * itemsize
    end = start + (count if contiguous else last - offset + 1) * itemsize
    # A size-1 dimension never moves: its stride, however large, is not passed on to NumPy (which would overflow).
    strides = None if contiguous else tuple(s if n != 1 else 0 for n, s in zip(shape, strides))
    return storage.dtype, shape, strides, (start, end)
