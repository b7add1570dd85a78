"""The store: the files an extraction directory holds, written so a crash never leaves one that looks
finished, and read back as an `Embeddings`.

Output directory (written by minibert.extract; pca.npz and reduced.npy by minibert.reduce):
    manifest.json            what was extracted, from what, by which minibert (written last)
    vectors.npy              [N, D] (or [N, L, D]) pooled vectors, written chunk by chunk         (npy)
    tokens.npy, offsets.npy  token-level output without padding: rows offsets[i]:offsets[i+1]  (npy)
    vectors.npz | vectors-00000.safetensors ... | vectors.jsonl                                 (other formats)
    pca.npz, reduced.npy     the PCA projection and the corpus projected (--reduce pca:K)
    progress.json            while a run is unfinished: rows done and the job they belong to (written first)
    extract.lock             while a run holds the directory: its pid, host and start time
Every file is written under a ".partial" name and renamed only when complete (finalise), manifest last.
`import minibert` loads this module (for load_embeddings), not the extraction machinery.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, MiniBertError

PROGRESS = "progress.json"
LOCK = "extract.lock"
# Every name minibert writes in an output directory: these, and only these, does --overwrite delete.
OWN_FILE = re.compile(r"(manifest\.json|progress\.json|vectors\.(npy|npz|jsonl)|vectors-\d{5}\.safetensors|tokens\.npy|"
                      r"offsets\.npy|pca\.npz|reduced\.npy)(\.partial)?(\.tmp)?|" + re.escape(LOCK))


def read_json_file(path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
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

    def token_vectors(self, i):
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def project(self, vectors):
        """Apply the PCA stored by `extract --reduce pca:K` to new vectors [..., D] -> [..., K]."""
        return load_projection(self.directory, self.manifest).transform(vectors)

    @property
    def reduced(self):
        """The corpus projected by `extract --reduce pca:K`, [rows, K], memory-mapped."""
        return load_reduced(self.directory, self.manifest)


def load_embeddings(directory):
    """Read an extraction directory back; refuses one whose manifest is missing or incomplete."""
    embeddings = read_embeddings(directory)
    embeddings.directory = str(directory)
    return embeddings


def read_embeddings(directory):
    d = Path(directory)
    try:
        manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        if (d / PROGRESS).exists():
            saved = read_json_file(d / PROGRESS)
            raise MiniBertError(f"{d}: the extraction was interrupted after {saved.get('rows', '?')} of "
                                f"{saved.get('job', {}).get('count', '?')} rows; run the same extract command "
                                "with --resume to finish it") from None
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
