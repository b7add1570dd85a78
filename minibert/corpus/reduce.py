"""PCA for extracted vectors: fit on a corpus, keep K components, apply the same projection to new texts.

    X [N, D] -> centred -> covariance [D, D] (accumulated chunk by chunk, so a memory-mapped corpus of any
    size never sits in memory) -> SVD -> the top K directions [K, D] -> projected [N, K]

`minibert extract ... --reduce pca:K [--whiten]` runs `reduce_extraction` after the extraction: it writes
pca.npz (the projection), reduced.npy (the corpus projected) and the manifest that records both, each
under a ".partial" name with ordinary writes (never through a memory map: a full disk then raises ENOSPC,
where a write into a mapped page would kill the process with SIGBUS), and renames them only when all three
are complete, so a failure leaves the extraction as it was. `load_embeddings(DIR).project(v)` applies the
stored projection to new vectors (the PCA class and the readers of these files live in minibert.corpus.store).
"""

import errno
import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputError, MiniBertError
from .store import PCA, load_embeddings     # PCA: the stored projection (pca.npz), read back by the store

CHUNK = 65536           # rows read at a time from a memory-mapped array


def fit_pca(X, k, *, whiten=False):
    """Fit PCA with k components on X [N, D] (an array or a memory map), reading CHUNK rows at a time."""
    N, D = X.shape
    check_k(k, N, D)
    total = np.zeros(D)
    for start in range(0, N, CHUNK):
        total += np.asarray(X[start:start + CHUNK], dtype=np.float64).sum(axis=0)
    mean = total / N                                                    # [D]
    cov = np.zeros((D, D))
    for start in range(0, N, CHUNK):
        block = np.asarray(X[start:start + CHUNK], dtype=np.float64) - mean    # [b, D]
        cov += block.T @ block
    cov /= N - 1                                                        # [D, D] sample covariance
    # The covariance is symmetric positive semi-definite: its SVD is its eigendecomposition,
    # singular values = variances along the directions, in decreasing order.
    U, variances, _ = np.linalg.svd(cov)
    components = U[:, :k].T.copy()                                      # [K, D]
    # A direction's sign is arbitrary: fix it so the largest loading is positive (reproducible output).
    largest = components[np.arange(k), np.abs(components).argmax(axis=1)]
    components *= np.where(largest < 0, -1.0, 1.0)[:, None]
    if whiten:
        # Whitening divides by each component's standard deviation: a direction the vectors do not span
        # (variance at rounding level) would be blown up into noise that swamps every cosine.
        rank = int(np.sum(variances > variances[0] * D * np.finfo(np.float64).eps)) if variances[0] > 0 else 0
        if k > rank:
            raise InputError(f"--whiten with K = {k}, but the {N} vectors span only {rank} dimension(s) (the "
                             f"others have no variance to scale): choose K <= {rank}, or drop --whiten")
    return PCA(mean, components, variances[:k].copy(), float(np.trace(cov)), bool(whiten))


def check_k(k, rows, width):
    """PCA on `rows` vectors of `width` features finds at most min(rows - 1, width) directions with any
    variance (centring removes one): a larger K would keep directions that are only rounding noise."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"PCA needs K to be a positive int, found {k!r}")
    if rows < 2:
        raise InputError(f"PCA needs at least 2 vectors, found {rows}")
    if k > min(rows - 1, width):
        limit = "rows - 1" if rows - 1 < width else "the vector width"
        features = f" of {width} features" if width < np.inf else ""      # the width may not be known yet
        raise InputError(f"PCA with K = {k} on {rows} vectors{features}: K can be at most "
                         f"min(rows - 1, width) = {min(rows - 1, width)} ({limit}); choose a smaller K")


def check_reduce(spec, rows, row_shape):
    """--reduce checked before any work: `rows` vectors of shape `row_shape` each. Returns K."""
    k = parse_reduce(spec)
    if len(row_shape) != 1:
        raise InputError(f"--reduce needs one vector per row, but the options give {list(row_shape)} per row: "
                         "choose one layer, or combine layers with --combine")
    check_k(k, rows, row_shape[0])
    return k


def parse_reduce(spec):
    """'pca:K' -> K."""
    match = re.fullmatch(r"pca:(\d+)", str(spec).strip())
    if not match or int(match.group(1)) < 1:
        raise InputError(f"--reduce takes pca:K with K a positive int (e.g. pca:64), found {spec!r}")
    return int(match.group(1))


def source_array(directory, manifest):
    """The 2-D array of an extraction that PCA is fitted on: pooled vectors [N, D] or flat tokens [n, D]."""
    emb = load_embeddings(directory)
    name, array = ("tokens", emb.tokens) if emb.tokens is not None else ("vectors", emb.vectors)
    if array.ndim != 2:
        raise InputError(f"--reduce needs one vector per row, but {name} are {list(array.shape[1:])} per row: "
                         "choose one layer, or combine layers with --combine")
    return name, array


def reduce_extraction(directory, spec, *, whiten=False):
    """Fit PCA on an extraction directory's vectors; write pca.npz, reduced.npy and the updated manifest.
    On any OSError (a full disk) the .partial files are removed and the extraction is left as it was."""
    d = Path(directory)
    manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    k = parse_reduce(spec)
    name, array = source_array(d, manifest)
    pca = fit_pca(array, k, whiten=whiten)
    reduced = {"method": "pca", "k": k, "whiten": bool(whiten), "fitted_on": name, "rows": len(array),
               "variance_kept": pca.variance_kept, "projection": "pca.npz", "vectors": "reduced.npy"}
    files = [f for f in manifest["files"] if f not in ("pca.npz", "reduced.npy")] + ["pca.npz", "reduced.npy"]
    manifest = {**manifest, "reduce": reduced, "files": files}
    written = ("pca.npz", "reduced.npy", "manifest.json")          # renamed in this order: the manifest last
    try:
        with open(d / "pca.npz.partial", "wb") as f:
            pca.save(f)
            sync(f)
        with open(d / "reduced.npy.partial", "wb") as f:
            write_projected(f, pca, array)
            sync(f)
        with open(d / "manifest.json.partial", "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=2))
            sync(f)
        for file in written:
            os.replace(d / f"{file}.partial", d / file)
    except OSError as e:
        for file in written:
            (d / f"{file}.partial").unlink(missing_ok=True)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise MiniBertError(f"{d}: {'disk full' if full else 'cannot write'} while writing the PCA files "
                            f"({e.strerror or e}); the extraction is intact: "
                            f"{'free some space' if full else 'fix the cause'} and run the same command with "
                            "--resume to add the projection") from None
    return manifest


def write_projected(f, pca, array):
    """reduced.npy: an npy header, then the projected rows CHUNK at a time with ordinary writes."""
    K = pca.components.shape[0]
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                             "fortran_order": False, "shape": (len(array), K)})
    for start in range(0, len(array), CHUNK):
        block = pca.transform(array[start:start + CHUNK]).astype("<f4")          # [b, K]
        f.write(block.tobytes())


def sync(f):
    """Flush to the disk: on some file systems a full disk shows only here."""
    f.flush()
    os.fsync(f.fileno())
