"""The store: the files an extraction directory holds, written so a crash never leaves one that looks
finished, and read back as an `Embeddings`.

Output directory (written by minibert.corpus.extract; pca.npz and reduced.npy by minibert.corpus.reduce):
    manifest.json            what was extracted, from what, by which minibert (written last)
    vectors.npy              [N, D] (or [N, L, D]) pooled vectors, written chunk by chunk         (npy)
    tokens.npy, offsets.npy  token-level output without padding: rows offsets[i]:offsets[i+1]  (npy)
    vectors.npz | vectors-00000.safetensors ... | vectors.jsonl                                 (other formats)
    sparse_indptr.npy, sparse_indices.npy, sparse_values.npy | sparse.jsonl   SPLADE vectors (extract --sparse)
    pca.npz, reduced.npy     the PCA projection and the corpus projected (--reduce pca:K)
    progress.json            while a run is unfinished: rows done and the job they belong to (written first)
    extract.lock             while a run holds the directory: its pid, host and start time
Every file is written under a ".partial" name and renamed only when complete (finalise), manifest last.
`import minibert` loads this module (for load_embeddings), not the extraction machinery.

A directory is read back only as far as it checks out (read_manifest here, then minibert.corpus.checked's
checks of each file: checked_npy, jsonl_records, read_sparse_rows): every manifest key is
known and of its type and range; every file it lists is one of the names above, a regular file inside the
directory (no path, no symlink out of it, no FIFO); every array's dtype, shape and byte size match the
manifest before it is mapped. Anything else is one InputError naming the directory and what is wrong.
"""

import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import InputError, MiniBertError
from ..files import SETTINGS_LIMIT, open_regular, read_limited
from .checked import check_npy_header, checked_npy, damaged, jsonl_records, member, read_sparse_rows

PROGRESS = "progress.json"
LOCK = "extract.lock"
# Every name minibert writes in an output directory: these, and only these, does --overwrite delete.
OWN_FILE = re.compile(r"(manifest\.json|progress\.json|vectors\.(npy|npz|jsonl)|vectors-\d{5}\.safetensors|tokens\.npy|"
                      r"offsets\.npy|pca\.npz|reduced\.npy|sparse_(indptr|indices|values)\.npy|sparse\.jsonl)"
                      r"(\.partial)?(\.tmp)?|" + re.escape(LOCK))


def read_json_file(path):
    """A small JSON file minibert wrote (progress.json, manifest.json): a regular file only, size-bounded."""
    try:
        return json.loads(read_limited(path, SETTINGS_LIMIT, InputError, "this extraction file").decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as e:
        raise InputError(f"{path}: unreadable ({e}); pass --overwrite to start again") from None


def write_durably(path, text):
    """Write a small file so that after a crash it is either the old one or the whole new one."""
    scratch = path.with_name(path.name + ".tmp")
    with open(scratch, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(scratch, path)
    sync_directory(path.parent)


def sync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return                                           # not possible everywhere (Windows): best effort
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def finalise(out, name):
    """Rename name.partial to name; a run resumed after this already happened finds name in place."""
    partial = out / f"{name}.partial"
    if partial.exists() or not (out / name).exists():
        os.replace(partial, out / name)
    return name


@dataclass
class PCA:
    mean: np.ndarray                 # [D] corpus mean, subtracted first
    components: np.ndarray           # [K, D] unit directions of largest variance, largest first
    explained_variance: np.ndarray   # [K] variance along each direction (N - 1 denominator)
    total_variance: float            # sum of the variances of all D features
    whiten: bool                     # divide each projected coordinate by its standard deviation

    @property
    def variance_kept(self):
        """Fraction of the corpus variance the K components keep."""
        return float(self.explained_variance.sum() / self.total_variance) if self.total_variance > 0 else 1.0

    def transform(self, X):
        """[..., D] -> [..., K]."""
        X = np.asarray(X, dtype=np.float64)
        if X.shape[-1] != self.mean.shape[0]:
            raise InputError(f"vectors have {X.shape[-1]} features but the projection was fitted on "
                             f"{self.mean.shape[0]}")
        Z = (X - self.mean) @ self.components.T                         # [..., K]
        if self.whiten:
            Z /= np.sqrt(np.maximum(self.explained_variance, 1e-12))
        return Z

    def save(self, f):
        np.savez(f, mean=self.mean, components=self.components, explained_variance=self.explained_variance,
                 total_variance=np.float64(self.total_variance), whiten=np.bool_(self.whiten))

    @classmethod
    def load(cls, path):
        with np.load(path) as d:
            return cls(d["mean"], d["components"], d["explained_variance"], float(d["total_variance"]),
                       bool(d["whiten"]))


@dataclass
class Embeddings:
    """What load_embeddings returns: the arrays (memory-mapped for npy) and the manifest."""
    manifest: dict
    vectors: object = None       # [N, ...] pooled vectors
    tokens: object = None        # [total tokens, ...] token-level output, flat
    offsets: object = None       # [N + 1]: text i's tokens are tokens[offsets[i]:offsets[i + 1]]
    texts: list = None           # for jsonl output
    directory: str = None        # where it was read from
    indptr: object = None        # [N + 1] SPLADE vectors: text i's entries are indptr[i]:indptr[i + 1] of
    indices: object = None       # [nnz] int32 its vocabulary ids, ascending, and
    values: object = None        # [nnz] their weights

    def token_vectors(self, i):
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    @property
    def sparse(self):
        """The SPLADE vectors (extract --sparse) as model.encode_sparse returns them: a SparseVectors."""
        from ..embed.sparse import SparseVectors
        if self.indptr is None:
            raise MiniBertError(f"{self.directory}: this extraction holds dense vectors (.vectors), not sparse ones")
        return SparseVectors.from_rows(self.indptr, self.indices, self.values, self.manifest["sparse"]["vocab_size"])

    def project(self, vectors):
        """Apply the PCA stored by `extract --reduce pca:K` to new vectors [..., D] -> [..., K]."""
        return load_projection(self.directory, self.manifest).transform(vectors)

    @property
    def reduced(self):
        """The corpus projected by `extract --reduce pca:K`, [rows, K], memory-mapped."""
        return load_reduced(self.directory, self.manifest)


def load_embeddings(directory: Union[str, "os.PathLike[str]"]) -> Embeddings:
    """Read an extraction directory back; refuses one whose manifest is missing or incomplete."""
    embeddings = read_embeddings(directory)
    embeddings.directory = str(directory)
    return embeddings


def read_embeddings(directory):
    d = Path(directory)
    manifest = read_manifest(d)
    fmt, files, count = manifest["format"], manifest["files"], manifest["count"]
    dtype, row_shape = manifest["dtype"], manifest.get("row_shape")
    if "sparse" in manifest:
        return read_sparse(d, manifest)
    if fmt == "npy" and "tokens.npy" in files:
        offsets = np.load(checked_npy(d, "offsets.npy", np.int64, (count + 1,)))
        total = int(offsets[-1]) if len(offsets) else 0
        if len(offsets) and (offsets[0] != 0 or np.any(np.diff(offsets) < 0)):
            raise damaged(d, "offsets.npy does not run from 0 upwards")
        tokens = np.load(checked_npy(d, "tokens.npy", dtype, (total,), row_shape), mmap_mode="r")
        return Embeddings(manifest, tokens=tokens, offsets=offsets)
    if fmt == "npy":
        return Embeddings(manifest, vectors=np.load(checked_npy(d, "vectors.npy", dtype, (count,), row_shape),
                                                    mmap_mode="r"))
    if fmt == "npz":
        path = member(d, "vectors.npz")
        try:
            with open_regular(path, InputError, "vectors.npz") as f, zipfile.ZipFile(f) as z:
                with z.open("vectors.npy") as m:
                    check_npy_header(d, "vectors.npz", m, None, dtype, (count,), row_shape)
                with z.open("vectors.npy") as m:
                    vectors = np.lib.format.read_array(m)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise damaged(d, f"vectors.npz cannot be read ({type(e).__name__}: {e})") from None
        return Embeddings(manifest, vectors=vectors)
    if fmt == "safetensors":
        return Embeddings(manifest, vectors=read_shards(d, files, dtype, count, row_shape))
    return read_jsonl(d, manifest, dtype, count, row_shape)


# ---------------------------------------------------------------------------------------------------------
# Checking a directory before trusting it
# ---------------------------------------------------------------------------------------------------------

# The files an extraction lists: bare names minibert writes, nothing else (no path, so nothing outside).
LISTED = re.compile(r"vectors\.(npy|npz|jsonl)|vectors-\d{5}\.safetensors|tokens\.npy|offsets\.npy|"
                    r"pca\.npz|reduced\.npy|sparse_(indptr|indices|values)\.npy|sparse\.jsonl")
DTYPES = ("float16", "float32", "float64")
FORMAT_FILES = {"npy": "vectors.npy or tokens.npy and offsets.npy", "npz": "vectors.npz",
                "safetensors": "vectors-NNNNN.safetensors shards", "jsonl": "vectors.jsonl"}
SAFETENSORS_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64"}
SHARD_ROWS = 65536      # rows per safetensors shard, as extract writes them


def count_(v, low=0):
    return isinstance(v, int) and not isinstance(v, bool) and low <= v < 2 ** 63


def sha256_hex(v):
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None


def optional(check):
    return lambda v: v is None or check(v)


def hub_record(v):
    return (isinstance(v, dict) and set(v) == {"hub_id", "revision"} and isinstance(v["hub_id"], str)
            and re.fullmatch(r"[\w.-]{1,96}(/[\w.-]{1,96})?", v["hub_id"]) is not None
            and ".." not in v["hub_id"] and isinstance(v["revision"], str)
            and re.fullmatch(r"[0-9a-f]{40}", v["revision"]) is not None)


def layers_value(v):
    return (v == "all" or count_(v, -(2 ** 31)) or isinstance(v, list) and 0 < len(v) <= 1024
            and all(count_(x, -(2 ** 31)) for x in v))


def input_path(v):
    """The corpus path extract records: "-" or absolute (read only while its sha256 matches)."""
    return isinstance(v, str) and (v == "-" or Path(v).is_absolute()) and "\x00" not in v


def str_list(v, limit=1 << 20):
    return isinstance(v, list) and len(v) <= limit and all(isinstance(x, str) for x in v)


def is_str(v):
    return isinstance(v, str)


def is_dict(v):
    return isinstance(v, dict)


# key: (check, what it must be). Keys marked required must be there; the others may be missing (older runs).
MANIFEST = {
    "minibert_version": (is_str, "a string"),
    "model_source": (optional(is_str), "a string"),
    "model_hub": (optional(hub_record), 'null or {"hub_id": "org/name", "revision": a 40-hex commit}'),
    "config_sha256": (optional(sha256_hex), "a sha256 (64 hex digits)"),
    "layers": (layers_value, "an int, a list of ints or 'all'"),
    "combine": (optional(is_str), "null or a string"),
    "pooling": (optional(is_str), "null or a string"),
    "normalize": (optional(lambda v: isinstance(v, bool)), "null, true or false"),
    "dtype": (lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
    "format": (lambda v: v in FORMAT_FILES, f"one of {', '.join(FORMAT_FILES)}"),
    "count": (count_, "an int >= 0"),
    "row_shape": (lambda v: isinstance(v, list) and len(v) <= 3 and all(count_(x, 1) and x < 2 ** 31 for x in v),
                  "a list of at most 3 positive ints"),
    "max_length": (optional(count_), "null or an int >= 0"),
    "window": (optional(count_), "null or an int >= 0"),
    "stride": (optional(count_), "null or an int >= 0"),
    "recipe": (optional(is_dict), "null or an object"),
    "input": (optional(input_path), 'null, "-" or an absolute path'),
    "field": (optional(is_str), "null or a string"),
    "input_sha256": (optional(sha256_hex), "null or a sha256 (64 hex digits)"),
    "engine": (is_dict, "an object"),
    "files": (lambda v: str_list(v, 1 << 16) and all(LISTED.fullmatch(x) for x in v) and len(set(v)) == len(v),
              "a list of the file names an extraction holds (vectors.npy, pca.npz, ...: no paths)"),
    "job": (is_dict, "an object"),
    "resumed_at": (lambda v: isinstance(v, list) and all(count_(x) for x in v), "a list of ints >= 0"),
    "complete": (lambda v: isinstance(v, bool), "true or false"),
    "reduce": (optional(is_dict), "null or an object"),
    "sparse": (is_dict, "an object"),
}
SPARSE = {
    "vocab_size": (lambda v: count_(v, 1) and v < 2 ** 31, "an int from 1 to 2**31 - 1"),
    "pooling": (is_str, "a string"),
    "activation": (is_str, "a string"),
    "max_active_dims": (optional(lambda v: count_(v, 1)), "null or an int >= 1"),
    "max_length": (optional(count_), "null or an int >= 0"),
}
SPARSE_FILES = {"npy": ["sparse_indptr.npy", "sparse_indices.npy", "sparse_values.npy"], "jsonl": ["sparse.jsonl"]}
REQUIRED = ("format", "count", "dtype", "files", "complete")
REDUCE = {
    "method": (lambda v: v == "pca", '"pca"'),
    "k": (lambda v: count_(v, 1), "an int >= 1"),
    "whiten": (lambda v: isinstance(v, bool), "true or false"),
    "fitted_on": (lambda v: v in ("vectors", "tokens"), '"vectors" or "tokens"'),
    "rows": (count_, "an int >= 0"),
    "variance_kept": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1.0 + 1e-6,
                      "a number from 0 to 1"),
    "projection": (lambda v: v == "pca.npz", '"pca.npz"'),
    "vectors": (lambda v: v == "reduced.npy", '"reduced.npy"'),
}


def check_fields(d, record, schema, required, where):
    unknown = sorted(set(record) - set(schema))
    if unknown:
        raise damaged(d, f"{where} holds unknown key(s) {', '.join(map(repr, unknown[:5]))}")
    for key in required:
        if key not in record:
            raise damaged(d, f"{where} has no {key!r}")
    for key, value in record.items():
        check, what = schema[key]
        if not check(value):
            raise damaged(d, f"{where}: {key!r} must be {what}, found {json.dumps(value)[:60]}")


def read_manifest(d):
    """manifest.json, checked against MANIFEST (and its files against the format); an unfinished or
    missing one is refused saying what to do."""
    try:
        manifest = read_json_file(d / "manifest.json")
    except FileNotFoundError:
        if (d / PROGRESS).exists():
            saved = read_json_file(d / PROGRESS)
            saved = saved if isinstance(saved, dict) else {}
            job = saved.get("job") if isinstance(saved.get("job"), dict) else {}
            raise MiniBertError(f"{d}: the extraction was interrupted after {saved.get('rows', '?')} of "
                                f"{job.get('count', '?')} rows; run the same extract command "
                                "with --resume to finish it") from None
        partial = any(d.glob("*.partial"))
        raise MiniBertError(f"{d}: no manifest.json" + ("; the extraction was interrupted before it finished: "
                            "run it again with --overwrite" if partial else "; not an extraction directory")) from None
    if not isinstance(manifest, dict):
        raise damaged(d, "manifest.json is not a JSON object")
    if manifest.get("complete") is False:
        raise MiniBertError(f"{d}: the manifest says the extraction is incomplete; run it again")
    check_fields(d, manifest, MANIFEST, REQUIRED, "manifest.json")
    fmt, files, count = manifest["format"], manifest["files"], manifest["count"]
    shards = ([f"vectors-{i:05d}.safetensors" for i in range(max(1, -(-count // SHARD_ROWS)))]
              if fmt == "safetensors" else None)
    expected = {"npy": (["vectors.npy"], ["tokens.npy", "offsets.npy"]), "npz": (["vectors.npz"],),
                "safetensors": (shards,), "jsonl": (["vectors.jsonl"],)}[fmt]
    reduce, layout = manifest.get("reduce"), FORMAT_FILES[fmt]
    if "sparse" in manifest:
        check_fields(d, manifest["sparse"], SPARSE, tuple(SPARSE), "manifest.json 'sparse'")
        expected = [SPARSE_FILES[fmt]] if fmt in SPARSE_FILES and reduce is None else []   # no PCA of sparse rows
        layout = "sparse: " + " and ".join(" ".join(names) for names in SPARSE_FILES.values())
        if manifest.get("row_shape") != [manifest["sparse"]["vocab_size"]]:
            raise damaged(d, "manifest.json: 'row_shape' is not [the 'sparse' record's vocab_size]")
    if reduce is not None:
        check_fields(d, reduce, REDUCE, tuple(REDUCE), "manifest.json 'reduce'")
        if reduce["fitted_on"] == "vectors" and reduce["rows"] != count:
            raise damaged(d, f"manifest.json: 'reduce' was fitted on {reduce['rows']} rows, but 'count' is {count}")
    data = [name for name in files if name not in ("pca.npz", "reduced.npy")]
    if data not in expected or (reduce is not None) != ({"pca.npz", "reduced.npy"} <= set(files)):
        raise damaged(d, f"manifest.json: 'files' {files} do not match format {fmt!r} ({layout}, "
                         "and pca.npz, reduced.npy exactly when 'reduce' is there)")
    return manifest


def read_shards(d, files, dtype, count, row_shape):
    """The safetensors shards' vectors, each shard's header checked (dtype, shape, offsets, size) first."""
    from safetensors.numpy import load_file
    parts, rows = [], 0
    for name in files:
        path = member(d, name)
        with open_regular(path, InputError, f"the extraction's {name}") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if length is None or length > min(size - 8, 100 << 20):
                raise damaged(d, f"{name} is not a safetensors file (a header of {length} bytes in {size:,})")
            try:
                header = json.loads(f.read(length))
                entry = header["vectors"]
                shape, kind, (begin, end) = entry["shape"], entry["dtype"], entry["data_offsets"]
            except (ValueError, KeyError, TypeError) as e:
                raise damaged(d, f"{name}: unreadable safetensors header ({type(e).__name__}: {e})") from None
        want_rows = min(SHARD_ROWS, count - rows) if count else 0
        want = [want_rows] + (list(row_shape) if row_shape is not None else list(shape[1:]))
        if SAFETENSORS_DTYPES.get(kind) != dtype or shape != want or begin != 0 or end != size - 8 - length:
            raise damaged(d, f"{name} holds {kind} {shape} (bytes {begin}..{end} of {size - 8 - length}), but the "
                             f"manifest says {dtype} {want} filling the file")
        if not all(count_(x) for x in shape) or end != int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize:
            raise damaged(d, f"{name}: {shape} {kind} does not fill its {end} bytes")
        try:
            parts.append(load_file(str(path))["vectors"])
        except Exception as e:                 # safetensors raises its own SafetensorError
            raise damaged(d, f"{name} cannot be read ({type(e).__name__}: {e})") from None
        rows += want_rows
    return np.concatenate(parts) if parts else np.zeros((0,))


def read_jsonl(d, manifest, dtype, count, row_shape):
    vectors, texts = [], []
    for n, record in enumerate(jsonl_records(d, "vectors.jsonl", count, ("text", "vector")), 1):
        try:
            vector = np.array(record["vector"], dtype=dtype)
        except (ValueError, TypeError) as e:
            raise damaged(d, f"vectors.jsonl:{n}: not a record with a text and a vector ({e})") from None
        if row_shape is not None and list(vector.shape) != list(row_shape):
            raise damaged(d, f"vectors.jsonl:{n}: not row {n - 1} with a text and a {row_shape} vector")
        vectors.append(vector)
        texts.append(record["text"])
    return Embeddings(manifest, vectors=np.array(vectors, dtype=dtype), texts=texts)


def read_sparse(d, manifest):
    """SPLADE vectors: the compressed rows (npy, memory-mapped) or sparse.jsonl, each row checked."""
    indptr, indices, values, texts = read_sparse_rows(d, manifest, SPARSE_FILES[manifest["format"]])
    return Embeddings(manifest, indptr=indptr, indices=indices, values=values, texts=texts)


def load_projection(directory, manifest):
    """The PCA stored beside an extraction by --reduce."""
    if not manifest.get("reduce"):
        raise MiniBertError(f"{directory}: this extraction has no projection; run extract with --reduce pca:K")
    d, reduce = Path(directory), manifest["reduce"]
    path = member(d, reduce["projection"])
    try:
        with open_regular(path, InputError, "the extraction's pca.npz") as f:
            pca = PCA.load(f)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, InputError):
            raise
        raise damaged(d, f"pca.npz cannot be read ({type(e).__name__}: {e})") from None
    width = (manifest.get("row_shape") or [pca.mean.shape[-1]])[-1]
    k = reduce["k"]
    if (pca.mean.shape, pca.components.shape, pca.explained_variance.shape) != ((width,), (k, width), (k,)):
        raise damaged(d, f"pca.npz holds a projection {list(pca.components.shape)}, but the manifest says "
                         f"{k} components of {width} features")
    return pca


def load_reduced(directory, manifest):
    """The corpus's projected vectors [rows, K], memory-mapped."""
    if not manifest.get("reduce"):
        raise MiniBertError(f"{directory}: this extraction has no reduced vectors; run extract with --reduce pca:K")
    reduce = manifest["reduce"]
    return np.load(checked_npy(Path(directory), reduce["vectors"], np.float32, (reduce["rows"], reduce["k"])),
                   mmap_mode="r")
