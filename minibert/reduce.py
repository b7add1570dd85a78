"""PCA for extracted vectors: fit on a corpus, keep K components, apply the same projection to new texts.

    X [N, D] -> centred -> covariance [D, D] (accumulated chunk by chunk, so a memory-mapped corpus of any
    size never sits in memory) -> SVD -> the top K directions [K, D] -> projected [N, K]

`minibert extract ... --reduce pca:K [--whiten]` runs `reduce_extraction` after the extraction: it writes
pca.npz (the projection) and reduced.npy (the corpus projected), each under a ".partial" name renamed when
complete, and records both in manifest.json (rewritten the same way). `load_embeddings(DIR).project(v)`
applies the stored projection to new vectors.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, MiniBertError

CHUNK = 65536           # rows read at a time from a memory-mapped array


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


def fit_pca(X, k, *, whiten=False):
    """Fit PCA with k components on X [N, D] (an array or a memory map), reading CHUNK rows at a time."""
    N, D = X.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= D:
        raise InputError(f"PCA needs 1 <= K <= {D} (the vector width), found {k!r}")
    if N < 2:
        raise InputError(f"PCA needs at least 2 vectors, found {N}")
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
    return PCA(mean, components, variances[:k].copy(), float(np.trace(cov)), bool(whiten))


def parse_reduce(spec):
    """'pca:K' -> K."""
    match = re.fullmatch(r"pca:(\d+)", str(spec).strip())
    if not match or int(match.group(1)) < 1:
        raise InputError(f"--reduce takes pca:K with K a positive int (e.g. pca:64), found {spec!r}")
    return int(match.group(1))


def source_array(directory, manifest):
    """The 2-D array of an extraction that PCA is fitted on: pooled vectors [N, D] or flat tokens [n, D]."""
    from .extract import load_embeddings
    emb = load_embeddings(directory)
    name, array = ("tokens", emb.tokens) if emb.tokens is not None else ("vectors", emb.vectors)
    if array.ndim != 2:
        raise InputError(f"--reduce needs one vector per row, but {name} are {list(array.shape[1:])} per row: "
                         "choose one layer, or combine layers with --combine")
    return name, array


def reduce_extraction(directory, spec, *, whiten=False):
    """Fit PCA on an extraction directory's vectors; write pca.npz, reduced.npy and the updated manifest."""
    d = Path(directory)
    manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    k = parse_reduce(spec)
    name, array = source_array(d, manifest)
    pca = fit_pca(array, k, whiten=whiten)
    with open(d / "pca.npz.partial", "wb") as f:
        pca.save(f)
    reduced = np.lib.format.open_memmap(d / "reduced.npy.partial", mode="w+", dtype=np.float32, shape=(len(array), k))
    for start in range(0, len(array), CHUNK):
        reduced[start:start + CHUNK] = pca.transform(array[start:start + CHUNK])
    reduced.flush()
    del reduced
    for file in ("pca.npz", "reduced.npy"):
        os.replace(d / f"{file}.partial", d / file)
    manifest["reduce"] = {"method": "pca", "k": k, "whiten": bool(whiten), "fitted_on": name, "rows": len(array),
                          "variance_kept": pca.variance_kept, "projection": "pca.npz", "vectors": "reduced.npy"}
    manifest["files"] = [f for f in manifest["files"] if f not in ("pca.npz", "reduced.npy")] + ["pca.npz", "reduced.npy"]
    (d / "manifest.json.partial").write_text(json.dumps(manifest, indent=2))
    os.replace(d / "manifest.json.partial", d / "manifest.json")       # the manifest changes last
    return manifest


def load_projection(directory, manifest):
    """The PCA stored beside an extraction by --reduce."""
    if not manifest.get("reduce"):
        raise MiniBertError(f"{directory}: this extraction has no projection; run extract with --reduce pca:K")
    return PCA.load(Path(directory) / manifest["reduce"]["projection"])


def load_reduced(directory, manifest):
    """The corpus's projected vectors [rows, K], memory-mapped."""
    if not manifest.get("reduce"):
        raise MiniBertError(f"{directory}: this extraction has no reduced vectors; run extract with --reduce pca:K")
    return np.load(Path(directory) / manifest["reduce"]["vectors"], mmap_mode="r")
