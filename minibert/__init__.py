"""minibert: a from-scratch NumPy/Numba BERT encoder that returns every layer and matches transformers."""

from .api import Model, load
from .estimator import SentenceEncoder
from .extract import load_embeddings
from .errors import (BackendError, ConfigError, InputError, MiniBertError, ModelFileError,
                     TokenizerError)

__version__ = "0.1.0"
__all__ = ["load", "Model", "load_embeddings", "SentenceEncoder", "MiniBertError", "ModelFileError", "ConfigError", "TokenizerError",
           "InputError", "BackendError", "__version__"]
