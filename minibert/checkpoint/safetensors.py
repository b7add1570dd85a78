"""Safetensors files, read without the safetensors library: a checked header, then each tensor's bytes.

read_header checks a file's whole layout before any tensor is read, so every byte range read later lies
inside the file; Checkpoint gives lazy access by name to the tensors of one or more files (safetensors, or
PyTorch .bin archives through torch_bin.py) and reads each in the dtype asked, refusing values the
narrowing would turn into inf. Nothing here knows a model family's names: weights.py maps them.
"""

import errno
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from .. import files
from . import torch_bin as torch_checkpoint
from ..errors import ModelFileError


# Bytes per element of every dtype the safetensors format defines.
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
HEADER_LIMIT = 100 * 1024 * 1024      # the safetensors library refuses larger headers too


def read_header(path: Path) -> dict:
    """Check a safetensors file's layout before any tensor is read; returns its header.

    The file is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
    then the tensors' bytes. Every way that can be wrong (truncation, a length past the end, bad JSON,
    unknown dtypes, offsets that disagree with the shape or leave gaps or overlaps) is a ModelFileError
    here, so that every byte range read later lies inside the file.
    """
    fix = "re-download or re-save the checkpoint"
    if not files.is_present(path, ModelFileError, "the checkpoint"):
        raise ModelFileError(f"{path}: safetensors file not found")
    try:
        with files.open_regular(path, ModelFileError, "the checkpoint") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path}: truncated ({size} bytes): a safetensors file starts with an 8-byte "
                                     f"header length; {fix}")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, HEADER_LIMIT):
                raise ModelFileError(f"{path}: corrupt or truncated: the header claims {length} bytes but the file "
                                     f"holds {size} bytes; {fix}")
            raw = f.read(length)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: safetensors file not found") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror or e}); check the file's permissions") from None
    try:
        header = json.loads(raw.decode("utf-8"), parse_int=files.header_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelFileError(f"{path}: the header is not valid JSON ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: the header is not a JSON object; {fix}")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(f"{path}: __metadata__ must map names to strings; {fix}")
    data_size = size - 8 - length
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = entry_problem(entry, data_size)
        if problem:
            raise ModelFileError(f"{path}: tensor {files.shown(name)}: {problem}; {fix}")
        spans.append((entry["data_offsets"][0], entry["data_offsets"][1], name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            raise ModelFileError(f"{path}: tensor {name!r} starts at byte {start} of the data but the previous "
                                 f"tensor ends at {end} ({'overlap' if start < end else 'gap'}); {fix}")
        end = stop
    if end != data_size:
        raise ModelFileError(f"{path}: the tensors cover {end} bytes but the file holds {data_size} bytes of data "
                             f"({'truncated' if end > data_size else 'trailing bytes'}); {fix}")
    return header


def entry_problem(entry, data_size):
    """What is wrong with one header entry, or None. Every number is bounded (files.shape_problem,
    files.is_size) before it is multiplied or printed."""
    if not isinstance(entry, dict):
        return "its entry is not a JSON object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        return f"unknown dtype {files.shown(dtype)}"
    problem = files.shape_problem(shape, SAFETENSORS_DTYPES[dtype])
    if problem:
        return problem
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(files.is_size(n) for n in offsets)
            or offsets[0] > offsets[1]):
        return f"data_offsets {files.shown(offsets)} are not a [start, end] pair of byte positions"
    if offsets[1] > data_size:
        return (f"data_offsets {offsets} end past the file's {data_size} bytes of data (the file is truncated "
                "or its header is corrupt)")
    count = 1
    for n in shape:
        count *= n
    if count * SAFETENSORS_DTYPES[dtype] != offsets[1] - offsets[0]:
        return (f"shape {shape} of {dtype} needs {count * SAFETENSORS_DTYPES[dtype]} bytes but data_offsets give "
                f"{offsets[1] - offsets[0]}")
    return None


class Checkpoint:
    """Lazy access to the tensors of one or more safetensors files, by checkpoint name."""

    def __init__(self, paths):
        self.location = {}   # checkpoint name -> (file, dtype string, shape, (first byte, end byte) in the file,
                             #   strides in elements, None when C-contiguous)
        self.identity = {}   # file -> what identifies its contents (see file_identity), as the header was read
        for path in paths:
            if torch_checkpoint.is_torch_file(path):
                self.add(path, torch_checkpoint.read_tensors(path))
                self.identity[path] = file_identity(path)
                continue
            header = read_header(path)
            self.identity[path] = file_identity(path)
            base = data_start(path)
            # Not opened with the safetensors library as well: it maps the whole file, and a truncation while
            # it reads the header would kill the process with SIGBUS; read_header checks every byte range used.
            self.add(path, {name: (entry["dtype"], tuple(entry["shape"]), None,
                                   (base + entry["data_offsets"][0], base + entry["data_offsets"][1]))
                            for name, entry in header.items() if name != "__metadata__"})

    def add(self, path: Path, tensors: dict) -> None:
        """tensors: name -> (dtype, shape, strides in elements or None when C-contiguous, byte span)."""
        for name, (dtype, shape, strides, span) in tensors.items():
            if name in self.location:
                raise ModelFileError(f"{path}: tensor {name!r} is also in {self.location[name][0]}; "
                                     "the shards must not repeat tensors")
            self.location[name] = (path, dtype, shape, span, strides)

    def names(self):
        return self.location.keys()

    def read(self, name: str, dtype, mapped=False) -> np.ndarray:
        """The tensor as `dtype`; mapped=True: where no conversion is needed, a read-only map of a private
        copy of its bytes (see private_copy), so only the parts that are used become resident."""
        path, stored, shape, span, strides = self.location[name]
        if mapped and strides is None and FLOAT_DTYPES.get(stored) == np.dtype(dtype).newbyteorder("<").str:
            array = private_copy(path, span, FLOAT_DTYPES[stored], shape)
            if array is not None:
                return array
        if stored in ("F32", "F16", "F64"):
            array = arranged(read_raw(path, span, FLOAT_DTYPES[stored]), shape, strides)
        elif stored == "BF16":        # NumPy has no bfloat16: widen the raw 16-bit words to float32 (exact)
            array = (arranged(read_raw(path, span, "<u2"), shape, strides).astype(np.uint32) << 16).view(np.float32)
        else:
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {stored}; "
                                 "minibert reads floating-point weights (F32, F16, BF16, F64)")
        return narrowed(array, dtype, f"{path}: tensor {name!r}")

    def read_stored(self, name: str) -> np.ndarray:
        """The tensor in the precision it is stored in; bfloat16, which NumPy lacks, widened to float32 (exact)."""
        return self.read(name, STORED_PRECISION.get(self.location[name][1], np.float32))

    def check_unchanged(self) -> None:
        """Raise ModelFileError if a file changed since its header was read: the tensors read may mix
        two versions of it."""
        for path, identity in self.identity.items():
            if file_identity(path) != identity:
                raise ModelFileError(f"{path}: changed while minibert was reading it (a download or copy still "
                                     "running?); load the model again once the file is complete")


def arranged(flat: np.ndarray, shape: tuple, strides) -> np.ndarray:
    """A tensor from the elements its byte span covers: reshaped, or for a strided view (a PyTorch tensor
    saved as a transpose or slice of a larger storage) gathered through its strides into a new array."""
    if strides is None:
        return flat.reshape(shape)
    view = np.lib.stride_tricks.as_strided(flat, shape=shape, strides=[s * flat.itemsize for s in strides],
                                           writeable=False)     # every element inside flat: checked on reading the file
    return np.array(view)


def file_identity(path: Path) -> tuple:
    """(device, inode, size, mtime, ctime) of a file: any write, truncation or replacement changes one of them
    (ctime even when a copy restores the old mtime)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def narrowed(array: np.ndarray, dtype, where: str) -> np.ndarray:
    """array as dtype; refuses float64 values that float32 cannot hold, which the cast would make inf."""
    if array.dtype == np.float64 and np.dtype(dtype) == np.float32:
        with np.errstate(over="ignore"):
            converted = array.astype(np.float32)
        overflow = int(np.count_nonzero(np.isinf(converted) & np.isfinite(array)))
        if overflow:
            raise ModelFileError(f"{where}: {overflow:,} of {array.size:,} float64 values are beyond float32's range "
                                 f"(+-{np.finfo(np.float32).max:.4g}) and would become inf; load with dtype='float64'")
        return converted
    return array.astype(dtype, copy=False)


COPY_CHUNK = 1 << 20


def private_copy(path: Path, span, dtype, shape):
    """A tensor's bytes copied into a temporary file that only this process holds, mapped read-only; None
    where the temporary directory has no room (the caller then reads the tensor into memory).

    Why not a map of the checkpoint itself: truncating or rewriting the checkpoint in place under a loaded
    model (a re-download into the same path) killed the process with SIGBUS at the next read of a page past
    the new end, or changed its numbers; a private (copy-on-write) map does not protect against truncation
    either. Why a map and not memory: the word table is half of a small model's bytes and a text reads a few
    of its rows; a map keeps only those resident (the cold start's peak memory). The temporary file is
    unlinked as it is created, so nothing else can truncate it, and the kernel copies the bytes
    (copy_file_range) without passing them through this process's memory.
    """
    start, end = span
    if end == start:
        return None
    try:
        copy = tempfile.TemporaryFile(prefix="minibert-", buffering=0)
    except OSError:
        return None
    with copy:
        try:
            with files.open_regular(path, ModelFileError, "the checkpoint") as source:
                copy_bytes(source, copy, start, end - start, path)
            return np.memmap(copy, dtype=dtype, mode="r", shape=shape)
        except FileNotFoundError:
            raise ModelFileError(f"{path}: disappeared while minibert was reading it; load the model again") from None
        except OSError:          # no room (ENOSPC, EDQUOT) or no map: read into memory instead
            return None


def copy_bytes(source, target, start: int, count: int, path: Path) -> None:
    """Bytes [start, start + count) of source into target from its beginning; a source that ends early
    (truncated while being read) is a ModelFileError."""
    done = 0
    in_kernel = hasattr(os, "copy_file_range")
    while done < count:
        if in_kernel:
            try:
                n = os.copy_file_range(source.fileno(), target.fileno(), count - done, start + done, done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                in_kernel = False       # this filesystem pair cannot: copy through a buffer
                continue
        else:
            source.seek(start + done)
            chunk = source.read(min(COPY_CHUNK, count - done))
            target.seek(done)
            n = target.write(chunk) if chunk else 0
        if n == 0:
            raise ModelFileError(f"{path}: ends before byte {start + count} (truncated while minibert was reading "
                                 "it?); load the model again once the file is complete")
        done += n


FLOAT_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
STORED_PRECISION = {"F16": np.float16, "BF16": np.float32, "F32": np.float32, "F64": np.float64}


def read_raw(path: Path, span, dtype) -> np.ndarray:
    """One tensor's bytes (the file's [first, end) span, which read_header checked) as a flat array, read
    with ordinary reads.

    Not through a memory map: a mapped file's pages count in the process's resident memory while it stays
    mapped, which raised the peak of loading a model by the size of its checkpoint."""
    start, end = span
    count = (end - start) // np.dtype(dtype).itemsize
    try:
        with files.open_regular(path, ModelFileError, "the checkpoint") as f:
            f.seek(start)
            array = np.fromfile(f, dtype=dtype, count=count)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror or e}); check the file") from None
    if array.size != count:
        raise ModelFileError(f"{path}: ends before byte {end} (truncated while minibert was reading it?); "
                             "load the model again once the file is complete")
    return array


def data_start(path: Path) -> int:
    """Byte position of the tensors' data: after the 8-byte header length and the header."""
    try:
        with files.open_regular(path, ModelFileError, "the checkpoint") as f:
            return 8 + struct.unpack("<Q", f.read(8))[0]
    except (OSError, struct.error) as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror or e}); check the file") from None
