"""The extraction run: a corpus encoded to files chunk by chunk, with bounded memory, one run per directory.

    texts (minibert.corpus.readers) -> encode CHUNK texts -> a writer (npy, npz, safetensors, jsonl, token-level npy)
    -> progress.json after every chunk is on disk -> manifest.json last (minibert.corpus.store) -> --reduce (reduce)

This module holds the run itself: the directory lock, the resume state (job fingerprint, progress.json),
the writers, SIGTERM handling and the loop. What the directory holds and how it is read back
(load_embeddings) is minibert.corpus.store; how input files are read is minibert.corpus.readers. Every file is written
under a ".partial" name and renamed only when complete, manifest last, so an interrupted run never leaves
a directory that looks finished; `resume=True` (`--resume`) finishes it.
"""

import dataclasses
import errno
import hashlib
import json
import os
import signal
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import __version__
from . import reduce as reduction  # called through the module, so a replaced reduce_extraction is the one run
from ..embed.encode import FIRST_ROW, tokenize_texts
from ..errors import InputError, MiniBertError
from ..progress import RowProgress
from .readers import TextFile, sha256_of
from ..embed.recipe import applied_recipe, encode_settings, prepare_texts
from .store import LOCK, OWN_FILE, PROGRESS, SHARD_ROWS, finalise, read_json_file, write_durably
from ..tokenizer import as_text_list
from ..checkpoint.layout import checkpoint_files

FORMATS = ("npy", "npz", "safetensors", "jsonl")
CHUNK = 4096            # texts tokenized and encoded per step: bounds memory whatever the corpus size


def extract(model, texts, out_dir, *, layers=-1, combine=None, pooling=None, normalize=None, fmt="npy",
            dtype=None, batch_size=32, max_length=None, window=None, stride=None, overwrite=False,
            resume=False, source_file=None, field=None, progress=None, encode_range=None, engine=None,
            reduce=None, whiten=False):
    """Encode `texts` into files under out_dir; returns the manifest dict.

    texts: a list of str, or a readers.TextFile (open_corpus), which is read chunk by chunk and records its
    own path, field and the sha256 of the bytes read. For a list, source_file and field only go into the
    manifest (source_file's sha256 is taken at the end: the caller vouches that the list is that file).
    reduce="pca:K" (whiten): fit PCA on the result, under the same lock, as reduce.reduce_extraction does.

    encode_range(start, stop), when given, must return what encode would for texts[start:stop]; it is
    called with increasing, non-overlapping ranges (another engine, e.g. Ray, serves them). `engine` is
    recorded in the manifest (default {"name": "local"}).

    The directory belongs to one run at a time (a lock file, see directory_lock), and minibert deletes or
    replaces only its own files in it (see prepare_directory). Every option is checked before the directory
    is touched: a refused option leaves nothing on disk.

    Interruptions: rows are written chunk by chunk into ".partial" files and progress.json records, after
    each chunk is on disk (fsync), how many rows are done and what job they belong to (a checksum of the
    texts, the model, the options). `resume=True` checks that the job is the same and continues from the
    first row not done, through encode_range like any run; a different job is refused. Without resume or
    overwrite, a directory holding an interrupted run is refused rather than silently discarded.
    """
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, found {fmt!r}")
    if pooling == "none" and fmt != "npy":
        raise InputError("token-level output (pooling none) is written as npy (flat tokens + offsets)")
    if overwrite and resume:
        raise InputError("--overwrite discards an earlier run and --resume continues it: pass one of them")
    if not isinstance(texts, TextFile):
        texts = as_text_list(texts, "texts")
    dtype = np.dtype(model.dtype).name if dtype is None else dtype      # as encode: the model's own by default
    N = len(texts)
    out = Path(out_dir)

    report = None                  # the run's one progress report, once the run has started (below)

    def encode_chunk(chunk, start=0):
        def batch_done(rows, total):
            if report is not None:
                report.advance(start + len(chunk) * rows // total)
        first = FIRST_ROW.set(start if N > CHUNK else None)      # several chunks: warnings name the input's rows
        try:
            return model.encode(chunk, layers=layers, combine=combine, pooling=pooling, normalize=normalize,
                                batch_size=batch_size, max_length=max_length, window=window, stride=stride,
                                progress=batch_done, dtype=dtype)
        finally:
            FIRST_ROW.reset(first)

    if encode_range is None:
        def encode_range(start, stop):
            return encode_chunk(texts[start:stop], start)

    with warnings.catch_warnings():        # about "x", not about the input
        warnings.simplefilter("ignore")
        probe = encode_chunk(["x"])        # the output's shape per text; also checks every option up front
    token_level = pooling == "none"
    row_shape = tuple(probe[0].shape[1:] if token_level else probe.shape[1:])
    if reduce is not None:
        rows = N               # token rows are at least as many as texts: count them only where K needs it
        if token_level and reduction.parse_reduce(reduce) > N - 1:
            rows = int(token_counts(model, texts, max_length, window).sum())
        reduction.check_reduce(reduce, rows, row_shape)
    model_source = resolved(model.source)
    job = {"texts_sha256": texts_sha256(texts), "count": N, "model_source": model_source,
           "config_sha256": model.config_sha256,
           "weights": weights_fingerprint(model.source), "compute_dtype": np.dtype(model.dtype).name,
           # what shapes a vector besides the weights and options: the recipe in force (a max_seq_length set
           # on the model included) and the tokenizer's files
           "recipe": applied_recipe(model, layers, pooling, normalize, max_length),
           "recipe_sha256": recipe_fingerprint(model.recipe), "tokenizer_sha256": tokenizer_fingerprint(model),
           "layers": layers, "combine": combine, "pooling": pooling, "normalize": normalize, "dtype": dtype,
           "format": fmt, "batch_size": batch_size, "max_length": max_length, "window": window, "stride": stride,
           "minibert_version": __version__}
    job = json.loads(json.dumps(job, default=lambda v: v.item() if hasattr(v, "item") else str(v)))  # as saved
    with directory_lock(out, N):
        with disk_errors(out, 0, N):
            finished, done = prepare_directory(out, job, overwrite=overwrite, resume=resume)
        if finished:                                    # resume of a job that had already finished
            return add_reduction(out, finished, reduce, whiten)
        if token_level:
            writer = TokenWriter(out, N, row_shape, dtype, token_counts(model, texts, max_length, window))
        elif fmt == "jsonl":
            writer = JsonlWriter(out, texts)
        else:
            writer = PooledWriter(out, N, row_shape, dtype, fmt)
        try:
            with sigterm_as_interrupt():
                if done["writer"] is None or done["rows"] < N:      # else only finish() was left to do
                    with disk_errors(out, done["rows"], N):
                        writer.open(done)
                with RowProgress(N, done["rows"], show=progress, what="texts") as report:
                    for start in range(done["rows"], N, CHUNK):
                        stop = min(start + CHUNK, N)
                        block = encode_range(start, stop)              # its own errors pass through unchanged
                        refuse_overflow(block, dtype, start, done["rows"])
                        with disk_errors(out, done["rows"], N):
                            writer.write(start, block)
                            writer.sync()
                            done = {**done, "rows": stop, "writer": writer.position()}
                            save_progress(out, job, done)
                        report.advance(stop)
                with disk_errors(out, done["rows"], N):
                    writer.close()
                    files = writer.finish()
        except KeyboardInterrupt as e:
            raise type(e)(f"{done['rows']} of {N} rows are saved in {out}; run the same command with --resume to "
                          "finish") from None
        finally:
            writer.close()

        if isinstance(texts, TextFile):                 # the sha256 of the very bytes that were encoded
            source = {"input": texts.name if texts.name == "-" else str(texts.path), "field": texts.field,
                      "input_sha256": texts.sha256}
        else:
            source = {"input": None if source_file is None else resolved(source_file), "field": field,
                      "input_sha256": sha256_of(source_file) if source_file not in (None, "-") else None}
        manifest = {
            "minibert_version": __version__, "model_source": model_source, "model_hub": model.origin,
            "config_sha256": job["config_sha256"],
            "layers": layers, "combine": combine, "pooling": pooling, "normalize": normalize, "dtype": dtype,
            "format": fmt, "count": N, "row_shape": list(row_shape), "max_length": max_length, "window": window,
            "stride": stride, "recipe": applied_recipe(model, layers, pooling, normalize, max_length), **source,
            "engine": engine or {"name": "local"}, "files": files, "job": job,
            "resumed_at": done["resumed_at"], "complete": True,
        }
        with disk_errors(out, N, N):
            write_durably(out / "manifest.json.partial", json.dumps(manifest, indent=2))
            finalise(out, "manifest.json")
            (out / PROGRESS).unlink(missing_ok=True)
        return add_reduction(out, manifest, reduce, whiten)


def resolved(path):
    """A path as an absolute one, so that a manifest works from any directory ("-" and hub ids kept)."""
    return str(Path(path).resolve()) if path != "-" and Path(path).exists() else str(path)


def add_reduction(out, manifest, spec, whiten):
    """Run --reduce on a finished extraction (unless the same reduction is there). A failure to write
    leaves the extraction as it was and says so, in one line."""
    if spec is None:
        return manifest
    kept = manifest.get("reduce") or {}
    if kept.get("k") == reduction.parse_reduce(spec) and kept.get("whiten") == bool(whiten):
        return manifest
    try:
        return reduction.reduce_extraction(out, spec, whiten=whiten)
    except OSError as e:
        for name in ("pca.npz.partial", "reduced.npy.partial", "manifest.json.partial"):
            (out / name).unlink(missing_ok=True)            # give the space back; manifest.json is untouched
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise MiniBertError(f"{out}: {'disk full' if full else 'cannot write'} while writing the PCA reduction "
                            f"({e.strerror or e}); the extraction itself is complete and intact; "
                            f"{'free some space and ' if full else 'fix the cause and '}run the same command with "
                            "--resume to add the reduction") from None


def refuse_overflow(block, dtype, start, saved):
    """float16 holds |x| <= 65504 and turns anything larger into inf: refuse such rows rather than write inf."""
    if dtype != "float16":
        return
    per_text = [int(np.isinf(v).sum()) for v in block]            # block: [n, ...] or n arrays [tokens, ...]
    bad = [i for i, count in enumerate(per_text) if count]
    if bad:
        raise MiniBertError(f"{sum(per_text)} values of {len(bad)} texts among texts {start}..{start + len(block) - 1} "
                            f"(the first: text {start + bad[0]}) exceed float16's range (|x| > 65504) and would be "
                            f"written as inf; none of them was written ({saved} rows before them are saved): "
                            "extract with --dtype float32 (and --overwrite)")


@contextmanager
def disk_errors(out, rows, total):
    """An OSError while writing becomes one MiniBertError that says how far the run got and how to go on."""
    try:
        yield
    except OSError as e:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise MiniBertError(f"{out}: {'disk full' if full else 'cannot write'} after {rows} of {total} rows "
                            f"({e.strerror or e}); {'free some space' if full else 'fix the cause'} and run the same "
                            "command with --resume to finish") from None


@contextmanager
def directory_lock(out, total):
    """Hold `out` for this run alone: an exclusive flock on out/extract.lock, which names the holder (pid,
    host, start time) for a run refused meanwhile. The lock file is removed when the run ends, and so is
    `out` when this run created it and left nothing in it. Without fcntl (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    created = not out.exists()
    with disk_errors(out, 0, total):
        out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    while True:
        with disk_errors(out, 0, total):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise MiniBertError(f"{path}: cannot lock the output directory ({e.strerror or e})") from None
            raise InputError(f"{out} is in use by another extraction ({describe_holder(holder)}); wait for it to "
                             "finish or choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)                     # the last holder removed the file after we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)     # while still holding it: a waiting run then locks a fresh file
        os.close(fd)
        if created:
            try:
                out.rmdir()              # only succeeds when empty: a run refused before writing anything
            except OSError:
                pass


def describe_holder(text):
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "a run that is just starting"


def prepare_directory(out, job, *, overwrite, resume):
    """Decide where this run starts: (None, {"rows": first row to encode, "writer": writer state or None for a
    fresh start, "resumed_at": [...]}), or (manifest, None) when resuming a job that already finished.
    Refuses what would lose or mix work, and never deletes or replaces a file minibert did not write: a
    directory is an extraction when it holds manifest.json or progress.json (a run writes progress.json
    before anything else); only then are the names minibert writes (OWN_FILE) taken as its own."""
    manifest_path, progress_path = out / "manifest.json", out / PROGRESS
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    if names and not (manifest_path.exists() or progress_path.exists()):
        clashing = [name for name in names if OWN_FILE.fullmatch(name)]
        if clashing:
            raise InputError(f"{out} holds {', '.join(clashing[:3])}{' ...' if len(clashing) > 3 else ''} but no "
                             "minibert extraction (no manifest.json or progress.json): minibert did not write "
                             "it and will not replace it; move it away or choose another --out")
        if not overwrite:
            raise InputError(f"{out} is not empty ({', '.join(names[:3])}{' ...' if len(names) > 3 else ''}) and "
                             "holds no minibert extraction; choose a new or empty --out, or pass --overwrite to "
                             "write the extraction beside those files (they are left alone)")
    if manifest_path.exists() and not overwrite:
        if resume:
            manifest = read_json_file(manifest_path)
            if manifest.get("complete") and manifest.get("job") == job:
                return manifest, None
            difference = job_difference(manifest.get("job"), job)
            raise InputError(f"{out} already holds a complete extraction of another job{difference}; "
                             "pass --overwrite to replace it or choose another --out")
        raise InputError(f"{out} already holds an extraction (manifest.json); pass --overwrite to replace it "
                         "or choose another --out")
    if progress_path.exists() and not (resume or overwrite):
        saved = read_json_file(progress_path)
        raise InputError(f"{out} holds an interrupted extraction ({saved.get('rows', '?')} of "
                         f"{saved.get('job', {}).get('count', '?')} rows done); pass --resume to finish it or "
                         "--overwrite to start again")
    if resume and progress_path.exists():
        saved = read_json_file(progress_path)
        if saved.get("job") != job:
            raise InputError(f"cannot resume the extraction in {out}: it was started for another job"
                             f"{job_difference(saved.get('job'), job)}; run it with the same input, model and "
                             "options, or pass --overwrite to start again")
        rows = saved.get("rows")
        if not isinstance(rows, int) or not 0 <= rows <= job["count"]:
            raise InputError(f"{out / PROGRESS}: unreadable progress (rows {rows!r}); pass --overwrite to start again")
        return None, {"rows": rows, "writer": saved.get("writer"), "resumed_at": saved.get("resumed_at", []) + [rows]}
    done = {"rows": 0, "writer": None, "resumed_at": []}
    save_progress(out, job, done)                        # first: from now on the directory is an extraction
    for name in names:
        if OWN_FILE.fullmatch(name) and name != PROGRESS:
            (out / name).unlink(missing_ok=True)         # until this run completes, nothing looks done
    return None, done


def job_difference(old, new):
    """' (pooling was 'mean', now 'cls'; recipe.max_length was 32, now 16)' naming the first fields in which
    two job records differ (inside a record such as the recipe, the field within it)."""
    if not isinstance(old, dict):
        return ""
    changed = []
    for key in new:
        was, now = old.get(key), new[key]
        if isinstance(was, dict) and isinstance(now, dict):
            changed += [(f"{key}.{k}", was.get(k), now.get(k)) for k in {**was, **now} if was.get(k) != now.get(k)]
        elif was != now:
            changed.append((key, was, now))
    if not changed:
        return ""
    shown = [f"{key} was {was!r:.40}, now {now!r:.40}" for key, was, now in changed[:3]]
    return " (" + "; ".join(shown) + ")"


def save_progress(out, job, done):
    write_durably(out / PROGRESS, json.dumps({"job": job, **done}))


def texts_sha256(texts):
    """Checksum of the texts themselves (so stdin and in-memory lists are covered too); also refuses,
    before anything is encoded, a text that is not valid Unicode."""
    digest = hashlib.sha256()
    for i, text in enumerate(texts):
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"texts[{i}] holds a lone surrogate {text[e.start]!r} at character {e.start}, which "
                             "is not valid Unicode text; repair the input") from None
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def weights_fingerprint(source):
    """A cheap identity of the checkpoint files: sizes, headers and 16 sampled 64 KiB blocks of each."""
    try:
        files = checkpoint_files(Path(source))
    except MiniBertError:
        return None
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as f:
            for k in range(17):
                f.seek(size * k // 17)
                digest.update(f.read(1 << 16))
    return digest.hexdigest()


def recipe_fingerprint(recipe):
    """sha256 of every recipe setting that shapes a vector (where each was read from excepted): pooling,
    max_length, lower-casing, prompts, and the Dense modules' weights."""
    digest = hashlib.sha256()
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        if f.name in ("sources", "files"):
            continue
        if f.name == "dense":
            for d in value:
                digest.update(f"{d.path}:{d.activation}:{d.weight.shape}:{d.bias is not None}".encode())
                for array in (d.weight, d.bias if d.bias is not None else np.zeros(0)):
                    digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        else:
            value = dict(value) if f.name == "prompts" else value
            digest.update(f"{f.name}={json.dumps(value, sort_keys=True, default=str)};".encode())
    return digest.hexdigest()


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


def tokenizer_fingerprint(model):
    """sha256 of the tokenizer files the model read (names and bytes), None when there is no folder."""
    folder = getattr(model.tokenizer, "dir", None)
    if folder is None:
        return None
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if path.is_file():
            digest.update(f"{name}:{sha256_of(path)};".encode())
    return digest.hexdigest()


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
            # EOPNOTSUPP and friends: this filesystem cannot reserve space; writes still report a full disk


class NpyFile:
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

    def sync(self):
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None


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

    def __init__(self, out, texts):
        self.out, self.texts = out, texts
        self.path = out / "vectors.jsonl.partial"
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

    def write(self, start, vectors):
        lines = "".join(json.dumps({"index": start + i, "text": self.texts[start + i],
                                    "vector": np.asarray(v, dtype=np.float64).tolist()}) + "\n"
                        for i, v in enumerate(vectors))
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
        return [finalise(self.out, "vectors.jsonl")]


class Terminated(KeyboardInterrupt):
    """SIGTERM during an extraction: unwinds like Ctrl-C so that files are closed and the message says how
    to resume (the CLI exits 143)."""


@contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM into Terminated while an extraction runs (main thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise Terminated()
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def token_counts(model, texts, max_length, window):
    """Tokens per text (the tokenizer is cheap), so the flat token array can be laid out before encoding;
    texts prepared and cut as encode's settings say (the recipe's prompt, lower-casing, max_seq_length)."""
    settings = encode_settings(model, pooling="none", normalize=None, max_length=max_length, layers=-1,
                               prompt=None, prompt_name=None)
    counts = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), CHUNK):
        chunk = prepare_texts(settings, texts[start:start + CHUNK])
        counts[start:start + CHUNK] = [len(t.ids) for t in tokenize_texts(model, chunk, settings.max_length, window)]
    return counts


