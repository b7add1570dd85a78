"""minibert: a from-scratch NumPy/Numba BERT encoder that returns every layer and matches transformers."""

from importlib import metadata as _metadata

from .api import Model, load
from .extract import load_embeddings
from .errors import (BackendError, ConfigError, InputError, MiniBertError, ModelFileError,
                     TokenizerError)

try:
    __version__ = _metadata.version("minibert-numpy")      # the distribution's name, not the import name
except _metadata.PackageNotFoundError:                     # a source tree on sys.path, never installed
    __version__ = "0+unknown"
__all__ = ["load", "Model", "load_embeddings", "MiniBertError", "ModelFileError", "ConfigError", "TokenizerError",
           "InputError", "BackendError", "__version__"]
