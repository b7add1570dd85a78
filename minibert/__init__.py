"""minibert: a from-scratch NumPy/Numba BERT encoder that returns every layer and matches transformers."""

import os as _os
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Union

from .api import Model, load, load_sparse
from .embed.estimator import SentenceEncoder
from .corpus.store import load_embeddings
from .errors import (BackendError, ConfigError, InputError, MiniBertError, ModelFileError, OutputError,
                     TokenizerError, TrainingError)

try:
    __version__ = _metadata.version("minibert-numpy")      # the distribution's name, not the import name
except _metadata.PackageNotFoundError:                     # a source tree on sys.path, never installed
    __version__ = "0+unknown"


if TYPE_CHECKING:
    import numpy as np

    from .corpus.search import Hit
    from .train.classifier import Classifier
    from .train.crossencoder import CrossEncoder


def load_classifier(directory: Union[str, "_os.PathLike[str]"], *, dtype: str = "float32") -> "Classifier":
    """A fine-tuned classifier directory (minibert.train.finetune's output or transformers'
    ...ForSequenceClassification / ...ForTokenClassification, safetensors) -> a Classifier with predict,
    predict_proba and tag."""
    from .train.classifier import load_classifier as load_from   # the training code loads only when asked for
    return load_from(directory, dtype=dtype)


def search(model: Model, index_dir: Union[str, "_os.PathLike[str]"], queries: Union[str, Sequence[str]], *,
           k: int = 10, layer: Optional[int] = None, reduced: bool = False,
           texts_file: Union[str, "_os.PathLike[str]", None] = None,
           field: Optional[str] = None) -> Union[List["Hit"], List[List["Hit"]]]:
    """Cosine top-k over a `minibert extract` directory (memory-mapped), the queries encoded by `model` as
    the directory's manifest says. A query string gives a list of Hit(index, score, text); a list of
    queries, a list of lists."""
    from .corpus.search import search as search_index     # the corpus code loads only when asked for
    return search_index(model, index_dir, queries, k=k, layer=layer, reduced=reduced, texts_file=texts_file,
                        field=field)


def load_cross_encoder(source: Union[str, "_os.PathLike[str]"], *, dtype: str = "float32",
                       max_length: Optional[int] = None, activation_fn: Optional[str] = None) -> "CrossEncoder":
    """A cross-encoder directory (a sequence-classification checkpoint, with sentence-transformers' CrossEncoder
    settings when it has them) -> a CrossEncoder with predict(pairs) and rank(query, documents)."""
    from .train.crossencoder import load_cross_encoder as load_from   # the training code loads only when asked
    return load_from(source, dtype=dtype, max_length=max_length, activation_fn=activation_fn)


def quantize_embeddings(embeddings: Any, precision: str, *, ranges: Any = None,
                        calibration_embeddings: Any = None) -> "np.ndarray":
    """Vectors [N, D] in "float32", "int8", "uint8", "binary" or "ubinary", as sentence-transformers quantizes them."""
    from .embed.quantize import quantize_embeddings as quantize
    return quantize(embeddings, precision, ranges=ranges, calibration_embeddings=calibration_embeddings)


__all__ = ["load", "Model", "load_embeddings", "load_classifier", "load_cross_encoder", "load_sparse",
           "quantize_embeddings", "search", "SentenceEncoder", "MiniBertError", "ModelFileError", "ConfigError",
           "TokenizerError", "InputError", "BackendError", "OutputError", "TrainingError", "__version__"]
