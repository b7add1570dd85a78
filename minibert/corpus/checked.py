"""An extraction's files checked before anything trusts them: each a regular file inside the directory,
each .npy header (dtype, shape, byte size) against the manifest before it is mapped, each jsonl line a record
of its row, each sparse row's ids in the vocabulary and ascending. Anything else is one InputError naming the
directory and what is wrong (damaged). minibert.corpus.store reads directories through these.
"""

import json
import os

import numpy as np

from ..errors import InputError
from ..files import open_regular, regular_size


def damaged(d, what):
    return InputError(f"{d}: {what}; the extraction directory is damaged or was edited: extract it again")


def member(d, name):
    """d/name, a regular file that is really in d (a symlink out of it refused); InputError otherwise."""
    path = d / name
    if path.is_symlink() and path.resolve().parent != d.resolve():
        raise damaged(d, f"{name} is a link to {os.readlink(path)}, outside the directory")
    if regular_size(path, InputError, f"the extraction's {name}") is None:
        raise damaged(d, f"{name} is listed in manifest.json but missing")
    return path


def checked_npy(d, name, dtype, leading, row_shape=None):
    """d/name after checking its .npy header against the manifest: dtype, shape (leading + row_shape; a
    None row_shape takes the file's) and its size in bytes, before anything maps it."""
    path = member(d, name)
    try:
        with open_regular(path, InputError, f"the extraction's {name}") as f:
            size = os.fstat(f.fileno()).st_size
            check_npy_header(d, name, f, size, dtype, leading, row_shape)
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, InputError):
            raise
        raise damaged(d, f"{name} is not a readable .npy file ({type(e).__name__}: {e})") from None
    return path


def check_npy_header(d, name, f, size, dtype, leading, row_shape):
    """The header of an open .npy stream against the manifest; `size` the file's bytes (None: not checked)."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise damaged(d, f"{name}: unknown .npy version {version}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, found = read(f)
    want = tuple(leading) + (tuple(row_shape) if row_shape is not None else tuple(shape[len(leading):]))
    if found != np.dtype(dtype) or fortran or tuple(shape) != want:
        raise damaged(d, f"{name} holds {'Fortran-order ' if fortran else ''}{found} {list(shape)[:8]}, but the "
                         f"manifest says {np.dtype(dtype)} {list(want)}")
    if size is not None:
        needed = f.tell() + int(np.prod(want, dtype=object)) * np.dtype(dtype).itemsize
        if size != needed:
            raise damaged(d, f"{name} holds {size:,} bytes where its {list(want)} rows need {needed:,} "
                             f"({'truncated' if size < needed else 'trailing bytes'})")


def jsonl_records(d, name, count, keys):
    """The count records of an extraction's jsonl file, one at a time, each an object holding row n's "index",
    a str "text" and `keys`."""
    n = 0
    with open_regular(member(d, name), InputError, f"the extraction's {name}") as f:
        for n, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except ValueError as e:
                raise damaged(d, f"{name}:{n}: not a JSON record ({e})") from None
            if not (isinstance(record, dict) and set(keys) <= set(record) and isinstance(record.get("text"), str)
                    and record.get("index") == n - 1):
                raise damaged(d, f"{name}:{n}: not row {n - 1} with {', '.join(keys)}")
            yield record
    if n != count:
        raise damaged(d, f"{name} holds {n} rows, but the manifest says {count}")


def read_sparse_rows(d, manifest, names):
    """A sparse extraction's (indptr [N + 1], indices [nnz], values [nnz], texts or None): the compressed rows
    (npy, memory-mapped; names: indptr, indices, values) or a jsonl file (names: [it]), every row checked."""
    count, dtype, texts = manifest["count"], manifest["dtype"], None
    if manifest["format"] == "npy":
        indptr = np.load(checked_npy(d, names[0], np.int64, (count + 1,)))
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise damaged(d, f"{names[0]} does not run from 0 upwards")
        indices = np.load(checked_npy(d, names[1], np.int32, (int(indptr[-1]),)), mmap_mode="r")
        values = np.load(checked_npy(d, names[2], dtype, (int(indptr[-1]),)), mmap_mode="r")
    else:
        ids, weights, texts = [], [], []
        for n, record in enumerate(jsonl_records(d, names[0], count, ("text", "indices", "values")), 1):
            row_ids, row_weights = record["indices"], record["values"]
            if not (isinstance(row_ids, list) and isinstance(row_weights, list) and len(row_ids) == len(row_weights)
                    and all(type(i) is int and 0 <= i < 2 ** 31 for i in row_ids)
                    and all(type(w) in (int, float) for w in row_weights)):
                raise damaged(d, f"{names[0]}:{n}: 'indices' and 'values' are not two lists of as many ids (ints) "
                                 "and weights (numbers)")
            ids.append(np.array(row_ids, dtype=np.int32))
            weights.append(np.array(row_weights, dtype=dtype))
            texts.append(record["text"])
        indptr = np.cumsum([0] + [len(row) for row in ids], dtype=np.int64)                 # [N + 1]
        indices = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)              # [nnz]
        values = np.concatenate(weights) if weights else np.zeros(0, dtype=dtype)          # [nnz]
    vocab = manifest["sparse"]["vocab_size"]
    step = 1 << 22
    for a in range(0, len(indices), step):             # ids in range and ascending within each text
        ids = np.asarray(indices[a:a + step + 1], dtype=np.int64)
        falls = np.flatnonzero(np.diff(ids) <= 0) + a + 1            # only where a new text starts
        if ids.min() < 0 or ids.max() >= vocab or not np.isin(falls, indptr).all():
            raise damaged(d, f"{names[min(1, len(names) - 1)]}: vocabulary ids outside 0..{vocab - 1} or not "
                             "ascending within a text")
    return indptr, indices, values, texts
