"""The extraction's writers: rows as they come into ".partial" files, each format finished at the end.

    PooledWriter   npy, npz, safetensors: rows into vectors.npy.partial; at the end vectors.npy, vectors.npz,
                   or safetensors shards of SHARD_ROWS rows
    TokenWriter    token-level npy: tokens.npy [total tokens, ...] filled text by text, offsets.npy [N + 1] last
    JsonlWriter    vectors.jsonl, a line per text
    SparseWriter   SPLADE vectors (extract --sparse) as compressed rows: sparse_indptr.npy [N + 1] int64,
                   sparse_indices.npy [nnz] int32 (vocabulary ids, ascending per text), sparse_values.npy [nnz];
                   text i holds entries indptr[i]:indptr[i + 1]
    SparseJsonlWriter  sparse.jsonl, a line per text: {"index", "text", "indices", "values"}

Each has open(done) (fresh, or continuing an interrupted run from the state position() returned),
write(start, rows), sync() (fsync: progress.json is saved only after), close() and finish() (the final names,
through store.finalise). The run that drives them is minibert.corpus.extract.
"""

import errno
import io
import json
import os

import numpy as np

from ..errors import InputError, MiniBertError
from .store import SHARD_ROWS, finalise


def write_rows(f, offset, data):
    """Write bytes at `offset` of an open file (one function, so tests can make the disk fill up here)."""
    f.seek(offset)
    f.write(data)


def preallocate(f, size):
    """Reserve the whole file now so that a full disk fails here, with an error, rather than later."""
    f.truncate(size)
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise


class OpenNpy:
    """A .npy file held open for writing in place (self.f), made durable by sync and closed by close."""
    f = None

    def sync(self):
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None


class NpyFile(OpenNpy):
    """A .npy file of a known shape written piece by piece with ordinary writes (not a memory map, whose
    writes to a full disk end the process with SIGBUS instead of raising)."""

    def __init__(self, path, shape, dtype):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.f = None

    def open(self, fresh):
        if fresh:
            with open(self.path, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                        "fortran_order": False, "shape": self.shape})
                self.header = f.tell()
                preallocate(f, self.header + self.shape[0] * self.row_bytes)
        else:
            try:
                with open(self.path, "rb") as f:
                    np.lib.format.read_magic(f)
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    self.header = f.tell()
            except (OSError, ValueError) as e:
                raise InputError(f"{self.path}: the rows of the interrupted run cannot be read ({e}); "
                                 "pass --overwrite to start again") from None
            if tuple(shape) != self.shape or dtype != self.dtype:
                raise InputError(f"{self.path}: holds {shape} {dtype}, not {self.shape} {self.dtype}; "
                                 "pass --overwrite to start again")
        self.f = open(self.path, "r+b")

    def write(self, row, array):
        array = np.ascontiguousarray(array, dtype=self.dtype)
        write_rows(self.f, self.header + row * self.row_bytes, array.tobytes())


class PooledWriter:
    """npy, npz, safetensors: rows go into vectors.npy.partial as they come; at the end it becomes
    vectors.npy, or is copied into vectors.npz or safetensors shards."""

    def __init__(self, out, N, row_shape, dtype, fmt):
        self.out, self.N, self.fmt, self.dtype = out, N, fmt, dtype
        self.data = NpyFile(out / "vectors.npy.partial", (N,) + row_shape, dtype)

    def open(self, done):
        self.data.open(fresh=done["writer"] is None)

    def write(self, start, block):
        self.data.write(start, block)

    def sync(self):
        self.data.sync()

    def position(self):
        return {"file": self.data.path.name}

    def close(self):
        self.data.close()

    def finish(self):
        out = self.out
        if self.fmt == "npy":
            return [finalise(out, "vectors.npy")]
        if not self.data.path.exists():          # a resumed run: the last one got as far as deleting it
            names = (["vectors.npz"] if self.fmt == "npz" else
                     [f"vectors-{shard:05d}.safetensors" for shard in range(max(1, -(-self.N // SHARD_ROWS)))])
            return [finalise(out, name) for name in names]
        rows = np.load(self.data.path, mmap_mode="r")
        if self.fmt == "npz":
            with open(out / "vectors.npz.partial", "wb") as f:
                np.savez(f, vectors=rows)
                f.flush()
                os.fsync(f.fileno())
            names = ["vectors.npz"]
        else:
            from safetensors.numpy import save_file
            names = []
            for shard, start in enumerate(range(0, max(self.N, 1), SHARD_ROWS)):
                name = f"vectors-{shard:05d}.safetensors"
                save_file({"vectors": np.ascontiguousarray(rows[start:start + SHARD_ROWS])},
                          str(out / f"{name}.partial"), metadata={"first_row": str(start)})
                names.append(name)
        del rows
        files = [finalise(out, name) for name in names]
        self.data.path.unlink()
        return files


class TokenWriter:
    """Token-level npy: tokens.npy.partial [total tokens, ...] filled text by text; offsets.npy last."""

    def __init__(self, out, N, row_shape, dtype, counts):
        self.out = out
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)   # [N + 1]
        self.data = NpyFile(out / "tokens.npy.partial", (int(self.offsets[-1]),) + row_shape, dtype)

    def open(self, done):
        self.data.open(fresh=done["writer"] is None)

    def write(self, start, vectors):
        for i, v in enumerate(vectors):
            if len(v) != self.offsets[start + i + 1] - self.offsets[start + i]:
                raise MiniBertError(f"text {start + i} gave {len(v)} token vectors where its tokenization has "
                                    f"{self.offsets[start + i + 1] - self.offsets[start + i]}")
        if len(vectors):
            self.data.write(int(self.offsets[start]), np.concatenate(vectors))

    def sync(self):
        self.data.sync()

    def position(self):
        return {"file": self.data.path.name, "tokens": int(self.offsets[-1])}

    def close(self):
        self.data.close()

    def finish(self):
        with open(self.out / "offsets.npy.partial", "wb") as f:
            np.save(f, self.offsets)
            f.flush()
            os.fsync(f.fileno())
        return [finalise(self.out, "tokens.npy"), finalise(self.out, "offsets.npy")]


class JsonlWriter:
    """vectors.jsonl.partial, a line per text appended in order; progress records its length in bytes, and a
    resumed run cuts off whatever an interrupted write left after it."""

    name = "vectors.jsonl"

    def __init__(self, out, texts):
        self.out, self.texts = out, texts
        self.path = out / f"{self.name}.partial"
        self.f = None

    def open(self, done):
        state = done["writer"]
        if state is None:
            self.f = open(self.path, "wb")
            return
        if not self.path.is_file() or self.path.stat().st_size < state["bytes"]:
            raise InputError(f"{self.path}: shorter than the {state['bytes']} bytes the interrupted run recorded; "
                             "pass --overwrite to start again")
        self.f = open(self.path, "r+b")
        self.f.truncate(state["bytes"])
        self.f.seek(state["bytes"])

    def records(self, start, vectors):
        for i, v in enumerate(vectors):
            yield {"index": start + i, "text": self.texts[start + i],
                   "vector": np.asarray(v, dtype=np.float64).tolist()}

    def write(self, start, vectors):
        lines = "".join(json.dumps(record) + "\n" for record in self.records(start, vectors))
        write_rows(self.f, self.f.tell(), lines.encode("utf-8"))

    def sync(self):
        self.f.flush()
        os.fsync(self.f.fileno())

    def position(self):
        return {"file": self.path.name, "bytes": self.f.tell()}

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None

    def finish(self):
        return [finalise(self.out, self.name)]


class SparseJsonlWriter(JsonlWriter):
    """sparse.jsonl: per text its non-zero vocabulary ids, ascending, and their weights (float64 in JSON, so a
    float32 weight reads back as itself)."""

    name = "sparse.jsonl"

    def records(self, start, vectors):
        for i, (ids, weights) in enumerate(zip(vectors.ids, vectors.weights)):
            yield {"index": start + i, "text": self.texts[start + i], "indices": ids.tolist(),
                   "values": np.asarray(weights, dtype=np.float64).tolist()}


class GrowingNpy(OpenNpy):
    """A 1-D .npy file whose length is known only at the end: entries written after a header that NumPy pads
    so that any length fits in it, and finish() writes the final length into that header in place."""

    def __init__(self, path, dtype):
        self.path, self.dtype, self.f = path, np.dtype(dtype), None
        self.header = len(self.header_bytes(0))

    def header_bytes(self, length):
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": (length,)})
        return buffer.getvalue()

    def open(self, entries):
        """entries None: a fresh file; else continue after that many entries, cutting what follows them."""
        if entries is None:
            with open(self.path, "wb") as f:
                f.write(self.header_bytes(0))
        else:
            needed = self.header + entries * self.dtype.itemsize
            try:
                with open(self.path, "rb") as f:
                    np.lib.format.read_magic(f)
                    _, _, dtype = np.lib.format.read_array_header_1_0(f)
                    header, size = f.tell(), os.fstat(f.fileno()).st_size
            except (OSError, ValueError) as e:
                raise InputError(f"{self.path}: the entries of the interrupted run cannot be read ({e}); "
                                 "pass --overwrite to start again") from None
            if dtype != self.dtype or header != self.header or size < needed:
                raise InputError(f"{self.path}: holds {dtype} and {size} bytes, not the {entries} {self.dtype} "
                                 "entries the interrupted run recorded; pass --overwrite to start again")
        self.f = open(self.path, "r+b")
        self.f.truncate(self.header + (entries or 0) * self.dtype.itemsize)

    def write(self, entry, array):
        write_rows(self.f, self.header + entry * self.dtype.itemsize,
                   np.ascontiguousarray(array, dtype=self.dtype).tobytes())


    def set_length(self, length):
        with open(self.path, "r+b") as f:
            f.write(self.header_bytes(length))           # the same size as the header it replaces
            f.flush()
            os.fsync(f.fileno())


class SparseWriter:
    """Compressed rows: each chunk's ids and weights appended to sparse_indices/sparse_values.npy.partial, its
    row ends written into sparse_indptr.npy.partial (laid out for N + 1 entries); progress records the entries
    written, and a resumed run cuts off whatever an interrupted write left after them."""

    NAMES = ("sparse_indptr.npy", "sparse_indices.npy", "sparse_values.npy")

    def __init__(self, out, N, dtype):
        self.out, self.entries = out, 0
        self.indptr = NpyFile(out / "sparse_indptr.npy.partial", (N + 1,), np.int64)
        self.indices = GrowingNpy(out / "sparse_indices.npy.partial", np.int32)
        self.values = GrowingNpy(out / "sparse_values.npy.partial", dtype)

    def open(self, done):
        state = done["writer"]
        self.entries = None if state is None else state["entries"]
        self.indptr.open(fresh=state is None)
        self.indices.open(self.entries)
        self.values.open(self.entries)
        if state is None:
            self.indptr.write(0, np.zeros(1, dtype=np.int64))
            self.entries = 0

    def write(self, start, vectors):
        ends = self.entries + np.cumsum([len(ids) for ids in vectors.ids], dtype=np.int64)      # [n]
        if len(ends) and ends[-1] > self.entries:
            self.indices.write(self.entries, np.concatenate(vectors.ids))
            self.values.write(self.entries, np.concatenate(vectors.weights))
        self.indptr.write(start + 1, ends)
        self.entries = int(ends[-1]) if len(ends) else self.entries

    def sync(self):
        for f in (self.indices, self.values, self.indptr):
            f.sync()

    def position(self):
        return {"file": self.indices.path.name, "entries": self.entries}

    def close(self):
        for f in (self.indices, self.values, self.indptr):
            f.close()

    def finish(self):
        indptr = self.indptr.path if self.indptr.path.exists() else self.out / self.NAMES[0]
        entries = int(np.load(indptr, mmap_mode="r")[-1])
        for f in (self.indices, self.values):
            if f.path.exists():                  # else a resumed run: the last one had renamed it already
                f.set_length(entries)
        return [finalise(self.out, name) for name in self.NAMES]
