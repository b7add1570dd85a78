"""Corpus-scale extraction to files, batch by batch, with bounded memory; and loading the result back.

Output directory:
    manifest.json            what was extracted, from what, by which minibert (written last)
    vectors.npy              [N, D] (or [N, L, D]) pooled vectors, filled through a memory map   (npy)
    tokens.npy, offsets.npy  token-level output without padding: rows offsets[i]:offsets[i+1]  (npy)
    vectors.npz | vectors-00000.safetensors ... | vectors.jsonl                                 (other formats)
Every file is written under a ".partial" name and renamed only when complete, manifest last, so an
interrupted run never leaves a directory that looks finished.
"""

import csv
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, MiniBertError

FORMATS = ("npy", "npz", "safetensors", "jsonl")
CHUNK = 4096            # texts tokenized and encoded per step: bounds memory whatever the corpus size
SHARD_ROWS = 65536      # rows per safetensors shard


def read_texts(path, field="text"):
    """Texts from .txt (a line each), .jsonl (a field), .csv/.tsv (a column), or '-' for stdin."""
    if path == "-":
        return [line.rstrip("\n") for line in sys.stdin]
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read as UTF-8 text ({e})") from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        texts = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise InputError(f"{path}:{n}: no string field {field!r} (choose it with --field)")
            texts.append(record[field])
        return texts
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        if reader.fieldnames is None or field not in reader.fieldnames:
            raise InputError(f"{path}: no column {field!r}; columns are {reader.fieldnames} (choose one with --field)")
        return [row[field] or "" for row in reader]
    return text.splitlines()


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract(model, texts, out_dir, *, layers=-1, combine=None, pooling="mean", normalize=False, fmt="npy",
            dtype="float32", batch_size=32, max_length=None, window=None, stride=None, overwrite=False,
            source_file=None, progress=None):
    """Encode `texts` into files under out_dir; returns the manifest dict."""
    from . import __version__
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, found {fmt!r}")
    out = Path(out_dir)
    if (out / "manifest.json").exists() and not overwrite:
        raise InputError(f"{out} already holds an extraction (manifest.json); pass --overwrite to replace it "
                         "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.partial"):
        stale.unlink()
    if overwrite:
        (out / "manifest.json").unlink(missing_ok=True)      # until the new run completes, nothing looks done

    def encode_chunk(chunk):
        return model.encode(chunk, layers=layers, combine=combine, pooling=pooling, normalize=normalize,
                            batch_size=batch_size, max_length=max_length, window=window, stride=stride,
                            progress=progress, dtype=dtype)

    probe = encode_chunk(["x"])                                           # the output's shape per text
    token_level = pooling == "none"
    row_shape = probe[0].shape[1:] if token_level else probe.shape[1:]
    N = len(texts)
    files = []
    if fmt == "npy" and not token_level:
        vectors = np.lib.format.open_memmap(out / "vectors.npy.partial", mode="w+", dtype=dtype, shape=(N,) + row_shape)
        for start in range(0, N, CHUNK):
            vectors[start:start + CHUNK] = encode_chunk(texts[start:start + CHUNK])
        vectors.flush()
        del vectors
        files.append(finalise(out, "vectors.npy"))
    elif fmt == "npy":
        # Token counts first (the tokenizer is cheap), so the flat token array can be memory-mapped.
        offsets = np.zeros(N + 1, dtype=np.int64)
        for start in range(0, N, CHUNK):
            for i, n_tokens in enumerate(encode_lengths(model, texts[start:start + CHUNK], max_length, window)):
                offsets[start + i + 1] = n_tokens
        offsets = np.cumsum(offsets)
        tokens = np.lib.format.open_memmap(out / "tokens.npy.partial", mode="w+", dtype=dtype,
                                           shape=(int(offsets[-1]),) + row_shape)
        for start in range(0, N, CHUNK):
            for i, vecs in enumerate(encode_chunk(texts[start:start + CHUNK])):
                tokens[offsets[start + i]:offsets[start + i + 1]] = vecs
        tokens.flush()
        del tokens
        with open(out / "offsets.npy.partial", "wb") as f:
            np.save(f, offsets)
        files += [finalise(out, "tokens.npy"), finalise(out, "offsets.npy")]
    elif fmt == "jsonl":
        with open(out / "vectors.jsonl.partial", "w", encoding="utf-8") as f:
            for start in range(0, N, CHUNK):
                for i, vecs in enumerate(encode_chunk(texts[start:start + CHUNK])):
                    f.write(json.dumps({"index": start + i, "text": texts[start + i],
                                        "vector": np.asarray(vecs, dtype=np.float64).tolist()}) + "\n")
        files.append(finalise(out, "vectors.jsonl"))
    elif fmt == "safetensors":
        from safetensors.numpy import save_file
        if token_level:
            raise InputError("token-level output (pooling none) is written as npy (flat tokens + offsets)")
        shard = 0
        for start in range(0, max(N, 1), SHARD_ROWS):
            part = [encode_chunk(texts[s:s + CHUNK]) for s in range(start, min(start + SHARD_ROWS, N), CHUNK)]
            block = np.concatenate(part) if part else np.zeros((0,) + row_shape, dtype=dtype)
            name = f"vectors-{shard:05d}.safetensors"
            save_file({"vectors": np.ascontiguousarray(block)}, str(out / f"{name}.partial"),
                      metadata={"first_row": str(start)})
            files.append(finalise(out, name))
            shard += 1
    else:  # npz: built from a memory-mapped scratch file so the corpus never sits in memory
        if token_level:
            raise InputError("token-level output (pooling none) is written as npy (flat tokens + offsets)")
        scratch = np.lib.format.open_memmap(out / "scratch.npy.partial", mode="w+", dtype=dtype, shape=(N,) + row_shape)
        for start in range(0, N, CHUNK):
            scratch[start:start + CHUNK] = encode_chunk(texts[start:start + CHUNK])
        with open(out / "vectors.npz.partial", "wb") as f:
            np.savez(f, vectors=scratch)
        del scratch
        (out / "scratch.npy.partial").unlink()
        files.append(finalise(out, "vectors.npz"))

    config_path = Path(model.source) / "config.json"
    manifest = {
        "minibert_version": __version__, "model_source": model.source,
        "config_sha256": sha256_of(config_path) if config_path.is_file() else None,
        "layers": layers, "combine": combine, "pooling": pooling, "normalize": normalize, "dtype": dtype,
        "format": fmt, "count": N, "row_shape": list(row_shape), "max_length": max_length, "window": window,
        "stride": stride, "input": None if source_file is None else str(source_file),
        "input_sha256": sha256_of(source_file) if source_file not in (None, "-") else None,
        "files": files, "complete": True,
    }
    (out / "manifest.json.partial").write_text(json.dumps(manifest, indent=2))
    finalise(out, "manifest.json")
    return manifest


def encode_lengths(model, texts, max_length, window):
    from .encode import tokenize_texts
    return [len(t.ids) for t in tokenize_texts(model, texts, max_length, window)]


def finalise(out, name):
    os.replace(out / f"{name}.partial", out / name)
    return name


@dataclass
class Embeddings:
    """What load_embeddings returns: the arrays (memory-mapped for npy) and the manifest."""
    manifest: dict
    vectors: object = None       # [N, ...] pooled vectors
    tokens: object = None        # [total tokens, ...] token-level output, flat
    offsets: object = None       # [N + 1]: text i's tokens are tokens[offsets[i]:offsets[i + 1]]
    texts: list = None           # for jsonl output

    def token_vectors(self, i):
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def load_embeddings(directory):
    """Read an extraction directory back; refuses one whose manifest is missing or incomplete."""
    d = Path(directory)
    try:
        manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        partial = any(d.glob("*.partial"))
        raise MiniBertError(f"{d}: no manifest.json" + ("; the extraction was interrupted before it finished: "
                            "run it again with --overwrite" if partial else "; not an extraction directory")) from None
    if not manifest.get("complete"):
        raise MiniBertError(f"{d}: the manifest says the extraction is incomplete; run it again")
    fmt, files = manifest["format"], manifest["files"]
    if fmt == "npy" and "tokens.npy" in files:
        return Embeddings(manifest, tokens=np.load(d / "tokens.npy", mmap_mode="r"), offsets=np.load(d / "offsets.npy"))
    if fmt == "npy":
        return Embeddings(manifest, vectors=np.load(d / "vectors.npy", mmap_mode="r"))
    if fmt == "npz":
        with np.load(d / "vectors.npz") as data:
            return Embeddings(manifest, vectors=data["vectors"])
    if fmt == "safetensors":
        from safetensors.numpy import load_file
        parts = [load_file(str(d / name))["vectors"] for name in files]
        return Embeddings(manifest, vectors=np.concatenate(parts) if parts else np.zeros((0,)))
    rows = [json.loads(line) for line in (d / "vectors.jsonl").read_text(encoding="utf-8").splitlines()]
    return Embeddings(manifest, vectors=np.array([r["vector"] for r in rows], dtype=manifest["dtype"]),
                      texts=[r["text"] for r in rows])
