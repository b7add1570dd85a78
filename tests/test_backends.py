"""backends.py: choosing a backend, and the Numba cache when it cannot be written."""

import os
import subprocess
import sys

import pytest

import minibert
from minibert.errors import BackendError
from minibert.kernels import cpu


# ---------------------------------------------------------------------------------------------------
# Backends.

def test_unknown_backend_and_cuda_without_a_device():
    with pytest.raises(BackendError, match="unknown backend 'gpu'; choose one of numpy, cpu, cuda"):
        minibert.load(backend="gpu")
    cuda = pytest.importorskip("numba.cuda")
    if cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(BackendError, match="backend 'cuda': no CUDA device was found.*Use backend='cpu'"):
        minibert.load(backend="cuda")


def test_numba_cache_unavailable_is_a_warning_not_an_error(monkeypatch):
    real_njit = cpu.numba.njit

    def njit(*args, cache=False, **options):
        if cache:     # what numba raises when no cache directory can be written
            raise RuntimeError("cannot cache function 'double': no locator available for file 'x.py'")
        return real_njit(*args, **options)
    monkeypatch.setattr(cpu.numba, "njit", njit)
    with pytest.warns(UserWarning, match="Numba cache unavailable .*Set NUMBA_CACHE_DIR to a writable directory"):
        double = cpu.jit()(lambda x: 2 * x)
    assert double(21) == 42


def test_unwritable_numba_cache_dir_still_runs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(blocker / "cache")}
    code = "import minibert; print(minibert.load()(['hi']).last_hidden_state.shape)"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(1, 3, 384)"
