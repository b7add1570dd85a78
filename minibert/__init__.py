"""minibert: a from-scratch NumPy/Numba BERT encoder that returns every layer and matches transformers."""

from .api import Model, load
from .store import load_embeddings
from .errors import (BackendError, ConfigError, InputError, MiniBertError, ModelFileError,
                     TokenizerError)

__version__ = "0.1.0"


def load_classifier(directory, *, dtype="float32"):
    """A fine-tuned classifier directory (minibert.finetune or transformers' ...ForSequenceClassification /
    ...ForTokenClassification, safetensors) -> a Classifier with predict, predict_proba and tag."""
    from .finetune import load_classifier as load_from   # the training code loads only when asked for
    return load_from(directory, dtype=dtype)


__all__ = ["load", "Model", "load_embeddings", "load_classifier", "MiniBertError", "ModelFileError", "ConfigError", "TokenizerError",
           "InputError", "BackendError", "__version__"]
