"""What lets an extraction be interrupted and finished later, and keeps two runs out of one directory.

The directory lock (extract.lock, naming its holder), the job record and its fingerprints (texts, weights,
recipe, tokenizer) that a resumed run must match, prepare_directory (where a run starts, refusing what would
lose or mix work), progress.json saved after every chunk, disk errors and SIGTERM turned into one message
that says how to resume. The run itself is minibert.corpus.extract.
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
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..checkpoint.layout import checkpoint_files
from ..errors import InputError, MiniBertError
from .readers import sha256_of
from .store import LOCK, OWN_FILE, PROGRESS, read_json_file, write_durably


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


def refuse_other_kind(out, saved, job):
    """A sparse extraction resumed as a dense one, or the other way: said in those words, not as the list of
    every setting the two kinds record differently."""
    was, now = bool((saved or {}).get("sparse")), bool(job.get("sparse"))
    if was != now:
        made = "with --sparse (SPLADE vectors)" if was else "without --sparse (dense vectors)"
        raise InputError(f"cannot resume the extraction in {out}: this extraction was made {made}; resume it "
                         f"{'with' if was else 'without'} --sparse, or pass --overwrite to start again")


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
            refuse_other_kind(out, manifest.get("job"), job)
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
            refuse_other_kind(out, saved.get("job"), job)
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
    shown = [f"{key} was {shortened(was)}, now {shortened(now)}"
             + (": the input's texts differ" if key == "texts_sha256" else "") for key, was, now in changed[:3]]
    return " (" + "; ".join(shown) + ")"


def shortened(value, width=40):
    """repr(value), cut to `width` characters with "..." where cut (a bare cut left a quote open)."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


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
