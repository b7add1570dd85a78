"""Similarity search over an extraction directory, and similarity matrices.

    index: DIR/vectors.npy [N, D] (or [N, L, D]: one layer is chosen), memory-mapped, read CHUNK rows at a
           time, each row divided by its norm -> cosine = query . row
    query: encoded with the settings in DIR/manifest.json (layers, combine, pooling, max_length, window),
           so query and corpus vectors come from the same layer and pooling
    sparse: an `extract --sparse` directory's SPLADE rows are scored by the dot product with the query's
           SPLADE vector (SPLADE's score, as SparseEncoder.similarity), encoded with the recorded settings
    texts: the manifest's input file (an absolute path, read with the manifest's field, checked against its
           sha256), the vectors.jsonl texts, or --texts FILE
    model: --model, else the manifest's model directory, else its hub id and commit from the local hub
           cache only (a manifest never makes search contact the hub)
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError, MiniBertError
from .readers import open_corpus, sha256_of
from .store import load_embeddings, load_projection, load_reduced

CHUNK = 65536


@dataclass
class Hit:
    index: int                  # row of the extraction (line of the input, counting from 0)
    score: float                # cosine similarity (SPLADE vectors: their dot product)
    text: Optional[str]         # the input text, when the input file can be read back


def top_k(matrix, queries, k):
    """Cosine top-k of queries [Q, D] against the rows of matrix [N, D], CHUNK rows at a time.
    Returns (indices [Q, k'], scores [Q, k']) best first, k' = min(k, N)."""
    q = np.asarray(queries, dtype=np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)                # [Q, D]
    N = len(matrix)
    k = min(k, N)
    best_idx = np.zeros((len(q), 0), dtype=np.int64)
    best = np.zeros((len(q), 0), dtype=np.float32)
    for start in range(0, N, CHUNK):
        block = np.asarray(matrix[start:start + CHUNK], dtype=np.float32)             # [b, D]
        block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-30)
        fresh = q @ block.T                                                           # [Q, b]
        damaged = np.isnan(fresh).any(axis=0)      # a row holding NaN or inf scores NaN against every query  [b]
        if damaged.any():                           # and would rank anywhere among the hits
            raise MiniBertError(f"row {start + int(np.argmax(damaged))} of the extraction holds NaN or inf "
                                f"({int(damaged.sum())} such rows among rows {start}..{start + len(block) - 1}): "
                                "the vectors file is damaged; extract again")
        scores = np.concatenate([best, fresh], axis=1)                                # [Q, k + b]
        idx = np.concatenate([best_idx, np.broadcast_to(np.arange(start, start + len(block)), (len(q), len(block)))],
                             axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else \
            np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        best = np.take_along_axis(scores, keep, axis=1)
        best_idx = np.take_along_axis(idx, keep, axis=1)
    order = np.argsort(-best, axis=1, kind="stable")
    return np.take_along_axis(best_idx, order, axis=1), np.take_along_axis(best, order, axis=1)


def read_index_texts(directory, emb, texts_file=None, field=None):
    """The texts behind the rows (a list, or a readers.TextFile read chunk by chunk as hits need them), or None
    when they cannot be found (search then prints row numbers). The manifest's input is read with the
    field the extraction used, and only while its bytes are the ones extracted."""
    m = emb.manifest
    if texts_file is None and emb.texts is not None:
        return emb.texts
    field = field or m.get("field") or "text"
    if texts_file is not None:
        texts = open_corpus(texts_file, field)
    else:
        source = m.get("input")
        if source in (None, "-") or not Path(source).is_file() or sha256_of(source) != m.get("input_sha256"):
            return None                                # gone, moved, or changed since the extraction
        texts = open_corpus(source, field)
        if getattr(texts, "sha256", m.get("input_sha256")) != m.get("input_sha256"):
            return None                                # changed since the check a moment ago
    if len(texts) != m["count"]:
        raise InputError(f"{texts_file or m.get('input')}: {len(texts)} texts, but {directory} holds {m['count']} rows")
    return texts


class Index:
    """An extraction directory opened for search: vectors memory-mapped, the manifest, the texts if found."""

    def __init__(self, directory, *, layer=None, reduced=False, texts_file=None, field=None):
        self.directory = Path(directory)
        self.embeddings = emb = load_embeddings(directory)
        self.manifest = emb.manifest
        self.sparse = emb.indptr is not None
        if self.sparse and (layer is not None or reduced):
            raise InputError(f"{directory} holds SPLADE vectors (extract --sparse): one vector per text, no layers "
                             "and no PCA reduction; leave out --layer and --reduced")
        if emb.vectors is None and not self.sparse:
            raise InputError(f"{directory} holds token-level vectors (pooling none); search needs one vector "
                             "per text: extract with --pooling mean (or cls, max)")
        self.reduced = reduced
        self.layer = layer
        self.texts = read_index_texts(directory, emb, texts_file, field)

    def load_model(self, backend="cpu"):
        """The model the extraction recorded: its directory, or, where that is gone (another machine), the
        hub id at the recorded commit, from the local hub cache only: a manifest is data anyone can edit,
        so its word never makes search download a repository (--model ID does, the user's choice)."""
        import minibert
        source, hub = self.manifest.get("model_source"), self.manifest.get("model_hub")
        load = minibert.load_sparse if self.sparse else minibert.load    # load_sparse: a SparseEncoder's settings
        if source and Path(source).is_dir():
            return load(source, backend=backend)
        if hub:
            return load(cached_snapshot(self.directory, hub), backend=backend)
        # Not a directory here: a model_source such as "org/name" would be a hub download on a manifest's word.
        raise InputError(f"{self.directory} was extracted with the model {source}, which is not a directory here; "
                         "pass --model (its directory or hub id) to choose the model yourself")

    def matrix_and_query_options(self, model):
        """The [N, D] rows searched, and the encode() options that give a query vector comparable to them."""
        from ..embed.pooling import resolve_layers
        m, vectors = self.manifest, self.embeddings.vectors
        options = {"pooling": m["pooling"], "combine": m["combine"], "max_length": m.get("max_length"),
                   "window": m.get("window"), "stride": m.get("stride"), "layers": m["layers"]}
        if vectors.ndim == 3:                          # several layers kept: search one of them
            chosen = resolve_layers(m["layers"], model.config.num_hidden_layers)
            want = chosen[-1] if self.layer is None else resolve_layers(self.layer, model.config.num_hidden_layers)[0]
            if want not in chosen:
                raise InputError(f"layer {self.layer} was not extracted; {self.directory} holds hidden states {chosen}")
            # [want] with combine "mean" is that layer as it is: a bare int for the last layer would add the
            # recipe's head (Dense), which the corpus's per-layer vectors never had.
            options.update(layers=[want], combine="mean")
            matrix = vectors[:, chosen.index(want)]
        else:
            if self.layer is not None:
                raise InputError(f"{self.directory} holds one vector per text (layers {m['layers']!r}, combine "
                                 f"{m['combine']!r}); --layer only applies when several layers were kept")
            matrix = vectors
        if self.reduced:
            if vectors.ndim != 2:
                raise InputError("reduced vectors exist only for extractions with one vector per text")
            matrix = load_reduced(self.directory, m)
        return matrix, options

    def check_recipe(self, model):
        """The same config.json can come with another recipe (the encoder's folder alone, or its files copied
        without modules.json): the query would then be pooled, cut or projected unlike the corpus."""
        from ..embed.recipe import applied_recipe
        m, recorded = self.manifest, self.manifest.get("recipe")
        if recorded is None:                           # written before manifests recorded the recipe
            return
        now = applied_recipe(model, m["layers"], m["pooling"], m["normalize"], m.get("max_length"))
        differ = [key for key in ("pooling", "max_length", "dense", "prompt") if now[key] != recorded.get(key)]
        if differ:
            raise MiniBertError(f"{self.directory} was extracted with {shown(recorded, differ)}, but {model.source} "
                                f"gives {shown(now, differ)}: load the model directory the extraction used "
                                f"({m.get('model_source')})")

    def search(self, model, queries, k=10):
        """Top-k hits for each query: a list (per query) of Hit, best first."""
        if model.config_sha256 != self.manifest.get("config_sha256"):
            raise MiniBertError(f"{self.directory} was extracted with {self.manifest.get('model_source')}, "
                                f"not {model.source} (their config.json differ): load that model to search it")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive int, found {k!r}")
        if not queries:
            return []
        if self.sparse:
            indices, scores = sparse_top_k(self.embeddings, self.sparse_queries(model, queries), k)
            return [[Hit(int(i), float(s), None if self.texts is None else self.texts[i])
                     for i, s in zip(row_i, row_s)] for row_i, row_s in zip(indices, scores)]
        self.check_recipe(model)
        matrix, options = self.matrix_and_query_options(model)
        q = model.encode(queries, **options, dtype="float32")                            # [Q, D]
        if self.reduced:
            q = load_projection(self.directory, self.manifest).transform(q)             # [Q, K]
        indices, scores = top_k(matrix, q, k)
        return [[Hit(int(i), float(s), None if self.texts is None else self.texts[i]) for i, s in zip(row_i, row_s)]
                for row_i, row_s in zip(indices, scores)]

    def sparse_queries(self, model, queries):
        """The queries' SPLADE vectors, made as the corpus's were: the model must apply the recorded settings."""
        from dataclasses import asdict
        from ..embed.sparse import applied_settings
        recorded = self.manifest["sparse"]
        now = {"vocab_size": model.config.vocab_size,
               **asdict(applied_settings(model, max_length=recorded["max_length"]))}
        differ = [key for key in recorded if now[key] != recorded[key]]
        if differ:
            raise MiniBertError(f"{self.directory} holds SPLADE vectors made with "
                                f"{', '.join(f'{key} {recorded[key]}' for key in differ)}, but {model.source} gives "
                                f"{', '.join(f'{key} {now[key]}' for key in differ)}: load the model the extraction "
                                f"used ({self.manifest.get('model_source')}) with minibert.load_sparse")
        return model.encode_sparse(queries, max_length=recorded["max_length"])


def sparse_top_k(embeddings, queries, k):
    """Dot-product top-k of SPLADE queries (a SparseVectors) against the compressed rows of a sparse
    extraction, CHUNK rows at a time, in float64: (indices [Q, k'], scores [Q, k']) best first, k' = min(k, N)."""
    indptr = embeddings.indptr
    N = len(indptr) - 1
    dense = np.asarray(queries.to_dense(), dtype=np.float64).reshape(len(queries), -1)     # [Q, V]
    scores = np.zeros((len(dense), N))                                                     # [Q, N]
    for start in range(0, N, CHUNK):
        stop = min(start + CHUNK, N)
        a, b = int(indptr[start]), int(indptr[stop])
        ids = np.asarray(embeddings.indices[a:b], dtype=np.int64)                         # [e] entries
        values = np.asarray(embeddings.values[a:b], dtype=np.float64)                     # [e]
        text = np.repeat(np.arange(stop - start), np.diff(indptr[start:stop + 1]))        # [e] each entry's row
        for q, query in enumerate(dense):
            scores[q, start:stop] = np.bincount(text, weights=values * query[ids], minlength=stop - start)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, N)]                      # [Q, k']
    return order, np.take_along_axis(scores, order, axis=1)


def cached_snapshot(directory, hub):
    """The local snapshot of a hub record (validated by store.read_manifest), never fetched."""
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(hub["hub_id"], revision=hub["revision"], local_files_only=True)
    except Exception:
        raise InputError(f"{directory} was extracted with {hub['hub_id']} at commit {hub['revision']}, which is not "
                         "in the local hub cache, and search does not download a model a manifest names: pass "
                         f"--model {hub['hub_id']} (or the model's directory) to choose it yourself") from None


def shown(recipe, keys):
    return ", ".join(f"{key} {recipe.get(key)!r}" if key == "prompt" else f"{key} {recipe.get(key)}" for key in keys)


def search(model, directory, queries, *, k=10, layer=None, reduced=False, texts_file=None, field=None):
    """Model.search: a query string gives a list of Hit; a list of queries gives a list of such lists."""
    from ..tokenizer import as_text_list
    single = isinstance(queries, str)
    hits = Index(directory, layer=layer, reduced=reduced, texts_file=texts_file, field=field).search(
        model, as_text_list(queries, "queries"), k)
    return hits[0] if single else hits


def format_hits(query, hits):
    lines = [f"query: {query!r}"]
    for rank, hit in enumerate(hits, 1):
        text = f"row {hit.index}" if hit.text is None else hit.text
        lines.append(f"{rank:>3}. {hit.score:+.4f}  [{hit.index}] {text}")
    return "\n".join(lines)


def similarity_matrix(model, texts, *, layer=-1, pooling="mean"):
    """Cosine similarity [N, N] of every pair of texts at one layer."""
    vectors = model.encode(texts, layers=layer, pooling=pooling, normalize=True).astype(np.float64)   # [N, D]
    return vectors @ vectors.T


def format_matrix(texts, sims, width=40):
    """The texts numbered, then the matrix with the same numbers on both axes."""
    lines = [f"[{i}] {t if len(t) <= width else t[:width - 3] + '...'}" for i, t in enumerate(texts)]
    lines.append("      " + "".join(f"{f'[{j}]':>8}" for j in range(len(texts))))
    for i, row in enumerate(sims):
        lines.append(f"{f'[{i}]':>6}" + "".join(f"{s:>+8.3f}" for s in row))
    return "\n".join(lines)
