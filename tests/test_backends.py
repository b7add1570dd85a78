"""minibert/backends/: choosing a backend, every backend module implementing the Ops contract, and the Numba
cache when it cannot be written."""

import dataclasses
import importlib
import inspect
import os
import subprocess
import sys

import pytest

import minibert
from minibert.backends import BACKENDS, MODULES, OPS_NAMES, BackendOps, Ops, make_ops
from minibert.errors import BackendError
from minibert.kernels import cpu_math


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


def test_cuda_refuses_packed_attention_and_says_it_does_not_pack():
    """cuda has no packed kernel yet: BackendOps.packs False sends encode to the padded forward, and a direct
    call is a BackendError, not a crash."""
    from minibert.backends import cuda
    with pytest.raises(BackendError, match="backend 'cuda' has no packed attention.*padded forward"):
        cuda.packed_attention(None, None, None, None, 2)


def accepts(function, contract):
    """Whether every call `contract` allows is a call `function` takes, meaning the same: the same parameters
    in the same order, each default of the contract's kept (a default where the contract has none is fine);
    `function` may add parameters after them, each with a default."""
    ours = list(inspect.signature(function).parameters.values())
    theirs = [p for p in inspect.signature(contract).parameters.values() if p.name != "self"]
    if len(ours) < len(theirs):
        return False
    for mine, wanted in zip(ours, theirs):
        if (mine.name, mine.kind) != (wanted.name, wanted.kind):
            return False
        if wanted.default is not inspect.Parameter.empty and mine.default != wanted.default:
            return False
    return all(p.default is not inspect.Parameter.empty for p in ours[len(theirs):])


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_module_implements_every_op_of_the_contract(backend):
    """Read from the module without running it: cuda's imports no numba.cuda until make_ops calls its load."""
    module = importlib.import_module(f"minibert.backends.{MODULES[backend]}")
    assert OPS_NAMES == ("embed", "linear", "layer_norm", "add_layer_norm", "attention", "packed_attention",
                         "relative_position_bias", "prepare", "to_host", "synchronize")
    for name in OPS_NAMES:
        function = getattr(module, name, None)
        assert callable(function), f"{module.__name__} has no function {name}"
        assert accepts(function, getattr(Ops, name)), (module.__name__, name, inspect.signature(function),
                                                       inspect.signature(getattr(Ops, name)))
    assert {field.name for field in dataclasses.fields(BackendOps)} >= set(OPS_NAMES) | {"name"}


def test_the_contract_check_refuses_a_wrong_signature():
    def linear(x, w, bias, activation=None):      # a renamed parameter
        pass

    def linear_extra(x, w, b, activation=None, out=None):
        pass

    def linear_required(x, w, b, activation=None, out=None, *, stream):
        pass
    assert accepts(linear_extra, Ops.linear)
    assert not accepts(linear, Ops.linear) and not accepts(linear_required, Ops.linear)
    assert not accepts(lambda x, w, b, activation="gelu": x, Ops.linear)     # another default
    assert not accepts(lambda x, w, b: x, Ops.linear)                         # a parameter short
    assert accepts(lambda q, k, v, mask_bias, num_heads, return_probs=False, position_bias=None: q, Ops.attention)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_make_ops_holds_the_module_functions(backend):
    ops = make_ops(backend)
    module = importlib.import_module(f"minibert.backends.{MODULES[backend]}")
    assert ops.name == backend and all(getattr(ops, name) is getattr(module, name) for name in OPS_NAMES)


def test_numba_cache_unavailable_is_a_warning_not_an_error(monkeypatch):
    real_njit = cpu_math.numba.njit

    def njit(*args, cache=False, **options):
        if cache:     # what numba raises when no cache directory can be written
            raise RuntimeError("cannot cache function 'double': no locator available for file 'x.py'")
        return real_njit(*args, **options)
    monkeypatch.setattr(cpu_math.numba, "njit", njit)
    with pytest.warns(UserWarning, match="Numba cache unavailable .*Set NUMBA_CACHE_DIR to a writable directory"):
        double = cpu_math.jit()(lambda x: 2 * x)
    assert double(21) == 42


def test_unwritable_numba_cache_dir_still_runs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(blocker / "cache")}
    code = "import minibert; print(minibert.load()(['hi']).last_hidden_state.shape)"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(1, 3, 384)"
