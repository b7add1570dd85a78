"""minibert: a from-scratch NumPy/Numba BERT encoder that returns every layer and matches transformers."""

from importlib import metadata as _metadata

from .api import Model, load
from .embed.estimator import SentenceEncoder
from .corpus.store import load_embeddings
from .errors import (BackendError, ConfigError, InputError, MiniBertError, ModelFileError,
                     TokenizerError)

try:
    __version__ = _metadata.version("minibert-numpy")      # the distribution's name, not the import name
except _metadata.PackageNotFoundError:                     # a source tree on sys.path, never installed
    __version__ = "0+unknown"


def load_classifier(directory, *, dtype="float32"):
    """A fine-tuned classifier directory (minibert.train.finetune or transformers' ...ForSequenceClassification /
    ...ForTokenClassification, safetensors) -> a Classifier with predict, predict_proba and tag."""
    from .train.finetune import load_classifier as load_from   # the training code loads only when asked for
    return load_from(directory, dtype=dtype)


def load_cross_encoder(source, *, dtype="float32", max_length=None, activation_fn=None):
    """A cross-encoder directory (a sequence-classification checkpoint, with sentence-transformers' CrossEncoder
    settings when it has them) -> a CrossEncoder with predict(pairs) and rank(query, documents)."""
    from .crossencoder import load_cross_encoder as load_from
    return load_from(source, dtype=dtype, max_length=max_length, activation_fn=activation_fn)


def quantize_embeddings(embeddings, precision, *, ranges=None, calibration_embeddings=None):
    """Vectors [N, D] in "float32", "int8", "uint8", "binary" or "ubinary", as sentence-transformers quantizes them."""
    from .quantize import quantize_embeddings as quantize
    return quantize(embeddings, precision, ranges=ranges, calibration_embeddings=calibration_embeddings)


__all__ = ["load", "Model", "load_embeddings", "load_classifier", "load_cross_encoder", "quantize_embeddings",
           "SentenceEncoder", "MiniBertError", "ModelFileError",
           "ConfigError", "TokenizerError",
           "InputError", "BackendError", "__version__"]
