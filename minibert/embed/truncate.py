"""truncate_dim as sentence-transformers applies it: the first d dimensions of each sentence vector, cut after
the recipe's Normalize; normalize=True scales them to unit length again after the cut.

Given to encode, truncate_dim cuts any pooled vectors (token vectors are refused); the model's own setting
(config_sentence_transformers.json's truncate_dim, or model.truncate_dim = d) cuts only its sentence vector,
the last layer pooled, as sentence-transformers cuts only sentence embeddings.

Axes: N texts, D dimensions.
"""

import numpy as np

from ..errors import InputError
from .pooling import l2_normalize


def check_dim(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be an int >= 1 (the dimensions to keep), found {value!r}")
    return int(value)


def cut_width(model, truncate_dim, pooling, capture, layers):
    """The width encode cuts at, or None."""
    if truncate_dim is not None:
        if pooling == "none" or capture is not None:
            raise InputError("truncate_dim cuts pooled vectors; not with pooling='none' or capture=")
        return check_dim(truncate_dim, "truncate_dim")
    sentence_vector = isinstance(layers, (int, np.integer)) and not isinstance(layers, bool) and \
        layers in (-1, model.config.num_hidden_layers) and pooling != "none" and capture is None
    return model.truncate_dim if sentence_vector else None


def truncate_vectors(vectors, cut, renormalize):
    """The first `cut` dimensions of pooled vectors [..., D] (a list of them for pooling="none" is never cut);
    renormalize: scaled to unit length again after the cut."""
    if cut is None or isinstance(vectors, list):
        return vectors
    vectors = vectors[..., :cut]
    return l2_normalize(vectors) if renormalize else np.ascontiguousarray(vectors)
