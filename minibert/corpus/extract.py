"""The extraction run: a corpus encoded to files chunk by chunk, with bounded memory, one run per directory.

    texts (minibert.corpus.readers) -> encode CHUNK texts -> a writer (minibert.corpus.writers: npy, npz,
    safetensors, jsonl, token-level npy; SPLADE vectors as compressed rows or jsonl) -> progress.json after
    every chunk is on disk -> manifest.json last (minibert.corpus.store) -> --reduce (reduce)

This module holds the run itself: options checked, the job recorded, chunks encoded and handed to a writer,
the manifest written. The lock, the resume state and SIGTERM are minibert.corpus.resume; what the directory
holds and how it is read back (load_embeddings) is minibert.corpus.store; how input files are read is
minibert.corpus.readers. Every file is written under a ".partial" name and renamed only when complete,
manifest last, so an interrupted run never leaves a directory that looks finished; `resume=True`
(`--resume`) finishes it.
"""

import errno
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np

from .. import __version__
from . import reduce as reduction  # called through the module, so a replaced reduce_extraction is the one run
from . import resume as resumable  # the lock taken through the module, so a replaced directory_lock is the one held
from ..embed.encode import FIRST_ROW, check_lengths, tokenize_texts
from ..errors import InputError, MiniBertError
from ..progress import RowProgress
from .readers import TextFile, sha256_of
from ..embed.recipe import applied_recipe, encode_settings, prepare_texts
from .resume import (disk_errors, prepare_directory, recipe_fingerprint, save_progress, sigterm_as_interrupt,
                     texts_sha256, tokenizer_fingerprint, weights_fingerprint)
from .store import PROGRESS, finalise, write_durably
from ..tokenizer import as_text_list
from .writers import JsonlWriter, PooledWriter, SparseJsonlWriter, SparseWriter, TokenWriter

if TYPE_CHECKING:
    from ..api import Layers, Model, PathLike

FORMATS = ("npy", "npz", "safetensors", "jsonl")
SPARSE_FORMATS = ("npy", "jsonl")
CHUNK = 4096            # texts tokenized and encoded per step: bounds memory whatever the corpus size


def extract(model: "Model", texts: Union[Sequence[str], TextFile], out_dir: "PathLike", *,
            layers: "Layers" = -1, combine: Optional[str] = None, pooling: Optional[str] = None,
            normalize: Optional[bool] = None, fmt: str = "npy", dtype: Optional[str] = None,
            batch_size: Optional[int] = None,
            max_length: Optional[int] = None, window: Optional[int] = None, stride: Optional[int] = None,
            overwrite: bool = False, resume: bool = False, source_file: Optional["PathLike"] = None,
            field: Optional[str] = None, progress: Union[bool, Callable[[int, int], None], None] = None,
            encode_range: Optional[Callable[..., Any]] = None, engine: Optional[str] = None,
            reduce: Optional[str] = None, whiten: bool = False, sparse: bool = False) -> dict:
    """Encode `texts` into files under out_dir; returns the manifest dict.

    texts: a list of str, or a readers.TextFile (open_corpus), which is read chunk by chunk and records its
    own path, field and the sha256 of the bytes read. For a list, source_file and field only go into the
    manifest (source_file's sha256 is taken at the end: the caller vouches that the list is that file).
    reduce="pca:K" (whiten): fit PCA on the result, under the same lock, as reduce.reduce_extraction does.
    sparse=True: SPLADE vectors from the masked-LM head, model.encode_sparse's (settings from load_sparse,
    recorded in the manifest's "sparse"), written as compressed rows (npy) or jsonl; see check_sparse.

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
    if sparse:
        check_sparse(fmt, dtype, layers=layers, combine=combine, pooling=pooling, normalize=normalize,
                     window=window, stride=stride, reduce=reduce, whiten=whiten or None)
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
            if sparse:                                   # encode checks these itself; encode_sparse cuts
                check_lengths(max_length, None, None, batch_size, model.tokenizer.max_length)
                return model.encode_sparse(chunk, batch_size=batch_size or 32, max_length=max_length)
            return model.encode(chunk, layers=layers, combine=combine, pooling=pooling, normalize=normalize,
                                batch_size=batch_size, max_length=max_length, window=window, stride=stride,
                                progress=batch_done, dtype=None if dtype == "float16" else dtype)   # cast on write
        finally:
            FIRST_ROW.reset(first)

    if encode_range is None:
        def encode_range(start, stop):
            return encode_chunk(texts[start:stop], start)

    with warnings.catch_warnings():        # about "x", not about the input
        warnings.simplefilter("ignore")
        probe = encode_chunk(["x"])        # the output's shape per text; also checks every option up front
    token_level = pooling == "none"
    row_shape = (probe.vocab_size,) if sparse else tuple(probe[0].shape[1:] if token_level else probe.shape[1:])
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
    if sparse:                         # what shapes a SPLADE vector: its settings; the dense recipe does not apply
        job.update(recipe=None, sparse=sparse_record(model, max_length))
    job = json.loads(json.dumps(job, default=lambda v: v.item() if hasattr(v, "item") else str(v)))  # as saved
    with resumable.directory_lock(out, N):
        with disk_errors(out, 0, N):
            finished, done = prepare_directory(out, job, overwrite=overwrite, resume=resume)
        if finished:                                    # resume of a job that had already finished
            return add_reduction(out, finished, reduce, whiten)
        writer: Union[TokenWriter, JsonlWriter, PooledWriter, SparseWriter]
        if sparse:
            writer = SparseJsonlWriter(out, texts) if fmt == "jsonl" else SparseWriter(out, N, dtype)
        elif token_level:
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
                        block = as_stored(block, dtype, start, done["rows"])
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
        if sparse:                     # one SPLADE vector per text: the dense options do not apply
            for key in ("layers", "combine", "pooling", "normalize", "window", "stride", "recipe"):
                del manifest[key]
            manifest["sparse"] = job["sparse"]
        with disk_errors(out, N, N):
            write_durably(out / "manifest.json.partial", json.dumps(manifest, indent=2))
            finalise(out, "manifest.json")
            (out / PROGRESS).unlink(missing_ok=True)
        return add_reduction(out, manifest, reduce, whiten)


def check_sparse(fmt, dtype, **dense):
    """sparse=True: refuse the options that shape dense vectors, formats without a sparse layout, and float16
    (whose cast would turn the smallest weights into zeros that are not there)."""
    given = [name for name, value in dense.items() if value is not None and not (name == "layers" and value == -1)]
    if given:
        raise InputError(f"sparse vectors are one SPLADE vector per text from the masked-LM head; {', '.join(given)} "
                         "shape dense vectors: leave them out")
    if fmt not in SPARSE_FORMATS:
        raise InputError(f"sparse vectors are written as npy (sparse_indptr.npy, sparse_indices.npy, "
                         f"sparse_values.npy) or jsonl (sparse.jsonl), not {fmt}: choose one of those formats")
    if dtype not in (None, "float32", "float64"):
        raise InputError(f"sparse weights are stored as float32 or float64, not {dtype}")


def sparse_record(model, max_length):
    """The manifest's "sparse": the vocabulary and the SPLADE settings encode_sparse applied (max_length the
    token limit in force)."""
    from dataclasses import asdict
    from ..embed.sparse import applied_settings
    return {"vocab_size": model.config.vocab_size, **asdict(applied_settings(model, max_length=max_length))}


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


def as_stored(block, dtype, start, saved):
    """The block in the dtype written: float16 (a cast here, once) holds |x| <= 65504 and turns anything larger
    into inf, so rows with such values are refused rather than written as inf."""
    if dtype != "float16":
        return block
    with np.errstate(over="ignore"):                              # block: [n, ...] or n arrays [tokens, ...]
        cast = block.astype(np.float16) if isinstance(block, np.ndarray) else [v.astype(np.float16) for v in block]
    per_text = [int(np.isinf(v).sum()) for v in cast]
    bad = [i for i, count in enumerate(per_text) if count]
    if bad:
        raise MiniBertError(f"{sum(per_text)} values of {len(bad)} texts among texts {start}..{start + len(block) - 1} "
                            f"(the first: text {start + bad[0]}) exceed float16's range (|x| > 65504) and would be "
                            f"written as inf; none of them was written ({saved} rows before them are saved): "
                            "extract with --dtype float32 (and --overwrite)")
    return cast


def token_counts(model, texts, max_length, window):
    """Tokens per text (the tokenizer is cheap), so the flat token array can be laid out before encoding;
    texts prepared and cut as encode's settings say (the recipe's prompt, lower-casing, max_seq_length)."""
    settings = encode_settings(model, pooling="none", normalize=None, max_length=max_length, layers=-1,
                               prompt=None, prompt_name=None)
    counts: np.ndarray = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), CHUNK):
        chunk = prepare_texts(settings, texts[start:start + CHUNK])
        counts[start:start + CHUNK] = [len(t.ids) for t in tokenize_texts(model, chunk, settings.max_length, window)]
    return counts
