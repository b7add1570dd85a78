"""sentence-transformers' surface on minibert's Model (its base class, SentenceTransformersSurface):
truncate_dim and similarity_fn_name as settings, similarity / similarity_pairwise, encode_query /
encode_document, a process pool, and encode's options in sentence-transformers' order of operations
(encode_with_options): the recipe's vectors, then the truncate_dim cut (renormalised with
normalize_embeddings), then the precision.

The pieces live beside it: truncate.py, quantize.py, similarity.py, process_pool.py.
"""

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np


class SentenceTransformersSurface:
    """Model's sentence-transformers methods. `load` (the class's loader) is what the pool's workers call."""
    loader: Callable[..., Any]

    @property
    def truncate_dim(self) -> Optional[int]:
        """Dimensions encode() keeps (None: all): config_sentence_transformers.json's truncate_dim until set,
        as SentenceTransformer(..., truncate_dim=) sets it (minibert.embed.truncate)."""
        if "_truncate_dim" not in self.__dict__:
            from .similarity import saved_settings
            self._truncate_dim = saved_settings(self.source).get("truncate_dim")
        return self._truncate_dim

    @truncate_dim.setter
    def truncate_dim(self, value: Optional[int]) -> None:
        from .truncate import check_dim
        self._truncate_dim = None if value is None else check_dim(value, "truncate_dim")

    @property
    def similarity_fn_name(self) -> str:
        """How similarity() scores: "cosine", "dot", "euclidean" or "manhattan"; config_sentence_transformers.json's
        similarity_fn_name until set, cosine when it names none."""
        if "_similarity_fn_name" not in self.__dict__:
            from .similarity import saved_settings
            self._similarity_fn_name = saved_settings(self.source).get("similarity_fn_name", "cosine")
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: Optional[str]) -> None:
        from .similarity import check_name
        self._similarity_fn_name = "cosine" if value is None else check_name(value)

    def similarity(self, a: Any, b: Any) -> np.ndarray:
        """Scores [N, M] of every row of a [N, D] with every row of b [M, D], by similarity_fn_name."""
        from .similarity import similarity
        return similarity(a, b, self.similarity_fn_name)

    def similarity_pairwise(self, a: Any, b: Any) -> np.ndarray:
        """Scores [N] of row i of a with row i of b, by similarity_fn_name."""
        from .similarity import similarity_pairwise
        return similarity_pairwise(a, b, self.similarity_fn_name)

    def encode_query(self, texts: Union[str, Sequence[str]], **options: Any) -> Any:
        """encode with the recipe's "query" prompt when it has one and none is given, as sentence-transformers."""
        return self.encode(texts, **self.recipe.role_prompt("query", options))

    def encode_document(self, texts: Union[str, Sequence[str]], **options: Any) -> Any:
        """encode with the recipe's "document" prompt (else "passage", else "corpus") when it has one and none
        is given, as sentence-transformers."""
        return self.encode(texts, **self.recipe.role_prompt("document", options))

    def start_multi_process_pool(self, processes: Union[int, Sequence[str], None] = None, *,
                                 threads_per_process: Optional[int] = None) -> Any:
        """Worker processes that each load this model (minibert.embed.process_pool): pass the pool to
        encode(pool=), close it with pool.close() or a `with` block. processes: a count (default: the CPU
        count), or as sentence-transformers' target_devices a list of "cpu" (one process each).
        threads_per_process: minibert's threads in each (default: this process's threads shared out)."""
        from .process_pool import start_pool
        return start_pool(self, type(self).loader, processes, threads_per_process)

    @staticmethod
    def stop_multi_process_pool(pool: Any) -> None:
        """pool.close(), under sentence-transformers' name."""
        pool.close()


def encode_with_options(model, texts, *, normalize, progress, pooling, capture, layers, truncate_dim, precision,
                        calibration_embeddings, pool, chunk_size, text_pairs, sentence_transformers_options,
                        **options):
    """Model.encode: sentence-transformers' spellings translated (minibert.conventions), the vectors from
    embed.encode (or the pool's workers), cut at truncate_dim, quantized to `precision`, shaped as
    sentence-transformers shapes them."""
    from ..conventions import shape_like_sentence_transformers, translate
    from .encode import encode
    from .quantize import quantize_encoded
    from .truncate import cut_width, truncate_vectors
    given, as_list = translate({"normalize": normalize, "progress": progress, "pooling": pooling},
                               sentence_transformers_options)
    from .recipe import check_flag
    given["normalize"] = check_flag(given["normalize"], "normalize_embeddings" if "normalize_embeddings" in
                                    sentence_transformers_options else "normalize")   # np.True_ renormalises too
    pooling = given["pooling"]
    cut = cut_width(model, truncate_dim, pooling, capture, layers)
    renormalize = cut is not None and given["normalize"] is True
    if pool is not None:
        from .process_pool import encode_in_pool
        vectors = encode_in_pool(model, pool, texts, text_pairs, chunk_size, given["progress"], capture,
                                 layers=layers, pooling=pooling, normalize=given["normalize"],
                                 truncate_dim=truncate_dim, **options)
    else:
        vectors = encode(model, texts, layers=layers, pooling=pooling, capture=capture, text_pairs=text_pairs,
                         normalize=None if renormalize else given["normalize"],   # the recipe's, then cut
                         progress=given["progress"], **options)
        vectors = truncate_vectors(vectors, cut, renormalize)
    if capture is not None:
        return vectors
    vectors = quantize_encoded(vectors, precision, calibration_embeddings)
    return shape_like_sentence_transformers(vectors, isinstance(texts, str), as_list)
