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


def pytest_collection_finish(session):
    """Start the children of the tests marked child_process now, so that they run beside the rest
    (tests/background.py)."""
    import background
    for item in session.items:
        marker = item.get_closest_marker("child_process")
        if marker is not None:
            background.start(item.nodeid, marker.kwargs["run"])


def pytest_sessionfinish(session):
    import background
    background.stop_all()
