import functools
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@functools.lru_cache(maxsize=None)
def cached_model(backend, dtype="float32"):
    import minibert
    return minibert.load(backend=backend, dtype=dtype)


@pytest.fixture(scope="session")
def model_for():
    """model_for(backend, dtype) -> the bundled default model, loaded once per session."""
    return cached_model


def golden(name):
    with np.load(FIXTURES / "minilm" / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}
