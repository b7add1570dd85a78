"""The "cuda" backend without a GPU: every CUDA kernel and the whole forward pass on the Numba CUDA simulator.

The simulator must be chosen before numba.cuda is first imported, so the simulator tests run in a child
`python -m pytest tests/test_cuda_sim.py` with NUMBA_ENABLE_CUDASIM=1 (test_simulator_suite starts it, and
`NUMBA_ENABLE_CUDASIM=1 pytest tests/test_cuda_sim.py` runs them directly). The other tests run in the plain
process, each in a subprocess of its own so that this process never imports numba.cuda:
  * a CPU-only load never imports numba.cuda;
  * backend="cuda" without a GPU is a BackendError that names the simulator;
  * DeviceTensor's indices are what numba's real device arrays accept (numba's own slicing code, no GPU);
  * every kernel compiles to PTX for a real GPU within 48 KiB of shared memory, where NVVM can be found
    (CUDA_HOME, or the nvidia-cuda-nvcc-cu12 wheel); skipped otherwise.
The simulator runs each CUDA thread as a Python thread, so shapes here are tiny. On a machine with a GPU,
`MINIBERT_TEST_REAL_GPU=1 pytest tests/test_cuda_sim.py` runs the same kernel and model tests on the device.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
REAL_GPU = os.environ.get("MINIBERT_TEST_REAL_GPU") == "1"     # the same device tests on a real GPU, when asked
ROOT = Path(__file__).resolve().parent.parent
on_device = pytest.mark.skipif(not (SIMULATOR or REAL_GPU),
                                  reason="runs under NUMBA_ENABLE_CUDASIM=1 (test_simulator_suite starts that run), "
                                         "or on a GPU with MINIBERT_TEST_REAL_GPU=1")
in_plain_process = pytest.mark.skipif(SIMULATOR, reason="checks the process without the simulator")


def one_shared_array_per_block(simulator_shared):
    """Replace the simulator's cuda.shared.array with one that cannot hand two threads different arrays.

    Numba's simulator (numba.cuda.simulator.kernelapi.FakeCUDAShared.array, also in numba-cuda) looks up
    the array of a call site in a dict and creates it when missing, without a lock: two simulated threads
    that both find it missing each get their own array, so one thread's writes to "shared" memory are never
    seen by the others. Measured: 13 of 300 launches of a 256-thread kernel read wrong shared values at a
    1 microsecond switch interval. In minibert's tests this surfaced as matmul outputs that were never
    written (NaN), seen twice in CI-like runs. The kernels themselves are not at fault: on a GPU there is one
    array per block. Same keying as the simulator (call site), with the lookup and creation under a lock.
    """
    import threading
    from numba.core import types
    from numba.np import numpy_support
    original = simulator_shared.array
    lock = threading.Lock()

    def array(self, shape, dtype, *args, **kwargs):
        if shape == 0 or not hasattr(self, "_allocations"):        # dynamic shared memory: no lookup
            return original(self, shape, dtype, *args, **kwargs)
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            found = self._allocations.get(site)
            if found is None:
                dtype = numpy_support.as_dtype(dtype) if isinstance(dtype, types.Type) else dtype
                found = self._allocations[site] = np.empty(shape, dtype)
        return found

    array.one_per_block = True
    simulator_shared.array = array


if SIMULATOR:
    # The simulator's block manager polls its threads while holding the GIL; a short switch interval
    # lets the simulated threads run (about 5x faster here). Only this child process is affected.
    sys.setswitchinterval(2e-4)
    from numba import cuda        # a global: the simulator swaps a kernel's global `cuda` for its own
    from numba.cuda.simulator import kernelapi
    one_shared_array_per_block(kernelapi.FakeCUDAShared)

F32_TOL, F64_TOL = 1e-5, 1e-12
DTYPES = [np.float32, np.float64]


def tol(dtype, scale=1.0):
    return (F32_TOL if dtype == np.float32 else F64_TOL) * scale


def rand(rng, *shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def run_python(code, env=None, timeout=300):
    """Run code in a fresh interpreter from the repository root; the result of subprocess.run."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def plain_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(extra)
    return env


# ----------------------------------------------------------------------------------------------------------
# The plain process (no simulator)
# ----------------------------------------------------------------------------------------------------------

def simulator_run():
    """The child pytest of test_simulator_suite (None where this process is the simulator or on a GPU)."""
    if SIMULATOR or REAL_GPU:
        return None
    return dict(args=[sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
                cwd=ROOT, env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))


@in_plain_process
@pytest.mark.child_process(run=simulator_run)
def test_simulator_suite(request):
    """The simulator tests below, in a child pytest with NUMBA_ENABLE_CUDASIM=1 (started when collection
    ends, tests/background.py)."""
    if REAL_GPU:
        pytest.skip("MINIBERT_TEST_REAL_GPU=1: the device tests run on the GPU in this process")
    from background import finished
    result = finished(request, simulator_run, timeout=900)
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
    assert result.returncode == 0, f"simulator tests failed:\n{tail}"
    assert " passed" in result.stdout and " failed" not in result.stdout, tail


@in_plain_process
def test_cpu_backend_never_imports_numba_cuda(tmp_path):
    from tiny import write_tiny
    model_dir = write_tiny(tmp_path / "tiny")
    result = run_python(f"""
        import importlib.util, sys
        import minibert
        for backend in ("cpu", "numpy"):
            minibert.load({str(model_dir)!r}, backend=backend)(["the cat sat"])
        from minibert.api import DEFAULT_MODEL_PACKAGES
        if any(importlib.util.find_spec(package) for package, _ in DEFAULT_MODEL_PACKAGES):
            minibert.load(backend="cpu")(["the cat sat"])
        print(sorted(name for name in sys.modules if name.startswith("numba.cuda")))
        """, env=plain_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@in_plain_process
def test_cuda_backend_without_a_gpu_is_a_backend_error(tmp_path):
    from tiny import write_tiny
    model_dir = write_tiny(tmp_path / "tiny")
    result = run_python(f"""
        import minibert
        from numba import cuda
        if cuda.is_available():
            print("GPU")
        else:
            try:
                minibert.load({str(model_dir)!r}, backend="cuda")
            except minibert.BackendError as e:
                print("ERROR", e)
        """, env=plain_env())
    assert result.returncode == 0, result.stderr
    if result.stdout.startswith("GPU"):
        pytest.skip("this machine has a CUDA device")
    assert result.stdout.startswith("ERROR"), result.stdout
    assert "no CUDA device was found" in result.stdout
    assert "NUMBA_ENABLE_CUDASIM=1" in result.stdout and "backend='cpu'" in result.stdout


@in_plain_process
def test_device_tensor_indices_are_what_numba_device_arrays_accept():
    """The model's `fused[..., :H]` and `x[:, 0]` through numba's own slicing code (dummyarray), which
    the simulator does not use: it refuses Ellipsis, so DeviceTensor expands it first."""
    result = run_python("""
        import numpy as np
        try:
            from numba.cuda.cudadrv import dummyarray
        except ImportError:                 # numba 0.58 (the declared floor) keeps it in numba.misc
            from numba.misc import dummyarray
        from minibert.backends.cuda import basic_index
        host = np.zeros((2, 5, 12), np.float32)
        cases = [(Ellipsis, slice(None, 4)), (Ellipsis, slice(4, 8)), (Ellipsis, slice(8, None)),
                 (slice(None), 0), (1,), (-1, slice(1, 4), slice(None, None, 2)), (slice(None), -2, Ellipsis)]
        for index in cases:
            want = host[index]
            dummy = dummyarray.Array.from_desc(0, host.shape, host.strides,
                                               host.itemsize)[basic_index(index, host.shape)]
            assert (dummy.shape, dummy.strides) == (want.shape, want.strides), (index, dummy.shape, want.shape)
            assert dummy.extent.begin == (want.__array_interface__["data"][0] - host.__array_interface__["data"][0])
        try:
            dummyarray.Array.from_desc(0, host.shape, host.strides, host.itemsize)[..., :4]
            print("ellipsis accepted")
        except Exception:
            print("ellipsis refused")
        print("ok")
        """, env=plain_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "ok"


def find_nvvm_home():
    """A directory holding nvvm/lib64/libnvvm.so: CUDA_HOME, or the nvidia-cuda-nvcc-cu12 wheel. (numba-cuda
    also needs NVRTC, e.g. the nvidia-cuda-nvrtc-cu12 wheel; without it the test skips.)"""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and list(Path(home).glob("nvvm/lib*/libnvvm*")):
        return home
    import importlib.util
    try:
        spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    except ImportError:
        spec = None
    for location in (spec.submodule_search_locations if spec and spec.submodule_search_locations else []):
        if list(Path(location).glob("nvvm/lib*/libnvvm*")):
            return location
    return None


@in_plain_process
def test_kernels_compile_to_ptx_within_shared_memory_limits():
    """The simulator runs plain Python and checks no types: compile every kernel for a real GPU."""
    home = find_nvvm_home()
    if home is None:
        pytest.skip("NVVM not found (set CUDA_HOME, or pip install nvidia-cuda-nvcc-cu12)")
    result = run_python("""
        import re
        from types import SimpleNamespace
        import numba
        import numpy as np
        from numba import cuda, types
        try:   # device functions ask the current device for its compute capability: there is none here
            import numba.cuda.dispatcher as dispatcher
            dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(7, 5))
        except (ImportError, AttributeError):
            pass
        from minibert.kernels import cuda as K, cuda_attention

        def probe(out):
            out[0] = 1.0
        try:                      # the toolchain itself (NVVM, and NVRTC for numba-cuda), on a trivial kernel
            cuda.compile_ptx(probe, (types.Array(types.float32, 1, "C"),), cc=(7, 5))
        except Exception as e:
            print("NO-TOOLCHAIN", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            raise SystemExit(0)

        def arr(dtype, ndim, layout="C"):
            return types.Array(numba.from_dtype(np.dtype(dtype)), ndim, layout)

        def check(name, kernel, sig, dtype):
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(7, 5))
            shared = sum(int(n) for n in re.findall(r"\\.shared\\s+\\.align\\s+\\d+\\s+\\.b8\\s+\\S+\\[(\\d+)\\]", ptx))
            assert shared <= 48 * 1024, (name, np.dtype(dtype).name, shared)
            if dtype == np.float32:
                assert ".f64" not in ptx, (name, "float32 kernel computes in float64")
            print(np.dtype(dtype).name, name, shared)

        for dt in (np.float32, np.float64):
            k, F, ids = K.kernels_for(dt), numba.from_dtype(np.dtype(dt)), arr(np.int64, 2)
            check("layer_norm", k.layer_norm, (arr(dt, 2), arr(dt, 2), arr(dt, 1), arr(dt, 1), F), dt)
            check("add_layer_norm", k.add_layer_norm,
                  (arr(dt, 2), arr(dt, 2), arr(dt, 2), arr(dt, 1), arr(dt, 1), F), dt)
            check("embed", k.embed, (arr(dt, 2), ids, ids, ids, arr(dt, 2), arr(dt, 2), arr(dt, 2)), dt)
            for layout in ("C", "A"):
                check("matmul", k.matmul, (arr(dt, 2), arr(dt, 2, layout), arr(dt, 2), arr(dt, 1), types.int64), dt)
            check("copy3", k.copy3, (arr(dt, 3), arr(dt, 3, "A")), dt)
            check("gather_bias", k.gather_bias, (arr(dt, 4), ids, arr(dt, 2)), dt)
            for hs in (4, 32, 64, 128):
                for biased in (False, True):
                    kernel = cuda_attention.attention_kernel(dt, hs, cuda_attention.keys_per_tile(dt, hs), biased)
                    check(f"attention_hs{hs}{'_biased' if biased else ''}", kernel,
                          (arr(dt, 3), arr(dt, 4), arr(dt, 3, "A"), arr(dt, 3, "A"), arr(dt, 3, "A"), arr(dt, 4, "A"),
                           arr(dt, 2), F, types.boolean), dt)
        print("ok")
        """, env=plain_env(CUDA_HOME=home), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    if result.stdout.startswith("NO-TOOLCHAIN"):
        pytest.skip(f"cannot compile CUDA code here: {result.stdout.strip()}")
    assert result.stdout.split()[-1] == "ok"


# ----------------------------------------------------------------------------------------------------------
# On the device (the simulator, or a GPU when asked): each kernel against kernels/reference.py
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def K():
    from minibert.kernels import cuda as kernels
    return kernels


@pytest.fixture(scope="module")
def dev():
    from numba import cuda
    return cuda.to_device


def host(array):
    return np.ascontiguousarray(array.copy_to_host())


@pytest.mark.skipif(not SIMULATOR, reason="checks the simulator's shared arrays")
def test_simulator_gives_every_thread_of_a_block_the_same_shared_array():
    """The patched cuda.shared.array under a 1 microsecond switch interval (unpatched: 13 of 300 launches
    of a 256-thread kernel like this one read wrong values)."""
    from numba.cuda.simulator import kernelapi
    assert getattr(kernelapi.FakeCUDAShared.array, "one_per_block", False)

    @cuda.jit
    def reverse_through_shared(out):
        shared = cuda.shared.array(64, np.float64)
        t = cuda.threadIdx.x
        shared[t] = t
        cuda.syncthreads()
        out[cuda.blockIdx.x, t] = shared[63 - t]

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(20):
            out = np.full((2, 64), np.nan)
            reverse_through_shared[2, 64](out)
            np.testing.assert_array_equal(out, np.tile(63 - np.arange(64.0), (2, 1)))
    finally:
        sys.setswitchinterval(interval)


@on_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_scalar_maths_are_the_reference_activations_on_the_cpu_too(K, dtype):
    """The scalar functions the CUDA epilogue calls are plain njit functions: they run in CPU kernels too."""
    from minibert.kernels import reference
    import numba
    activate = K.scalar_maths(dtype).activate
    x = np.linspace(-6, 6, 97).astype(dtype)

    @numba.njit
    def apply_all(out, x):
        for i in range(x.shape[0]):
            for code in range(6):
                out[code, i] = activate(x[i], code)

    out = np.empty((6, x.size), dtype)
    apply_all(out, x)
    want = [x] + [reference.ACTIVATIONS[name](x) for name in ("gelu", "gelu_new", "relu", "silu", "tanh")]
    for code, expected in enumerate(want):
        assert out[code].dtype == dtype
        np.testing.assert_allclose(out[code], expected, atol=tol(dtype, 0.5), rtol=0, err_msg=f"code {code}")
    assert K.ACTIVATION_CODES["gelu_new"] == K.ACTIVATION_CODES["gelu_pytorch_tanh"] == 2


@on_device
@pytest.mark.parametrize("dtype, activation", [(np.float32, a) for a in
                                               (None, "gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "tanh")]
                         + [(np.float64, None), (np.float64, "gelu")])
def test_matmul_with_fused_bias_and_activation(K, dev, dtype, activation):
    from minibert.backends import reference_backend
    rng = np.random.default_rng(1)
    a, w, b = rand(rng, 15, 24, dtype=dtype), rand(rng, 24, 40, dtype=dtype, scale=0.5), rand(rng, 40, dtype=dtype)
    out = dev(np.full((15, 40), np.nan, dtype))
    K.matmul_bias_act(out, dev(a), dev(w), dev(b), activation)
    np.testing.assert_allclose(host(out), reference_backend.linear(a, w, b, activation), atol=tol(dtype), rtol=0)


@on_device
def test_matmul_tile_tails_strided_rows_and_the_pooler(K, dev):
    """Several output tiles with partial edges, a K that is not a multiple of TILE_K, rows of any stride."""
    from minibert.backends import reference_backend
    rng = np.random.default_rng(2)
    M, Kd, N = K.TILE_M + 6, K.TILE_K * 2 + 5, K.TILE_N + 3
    a, w = rand(rng, M, Kd, dtype=np.float32), rand(rng, Kd, N, dtype=np.float32, scale=0.3)
    b = rand(rng, N, dtype=np.float32)
    out = dev(np.zeros((M, N), np.float32))
    K.matmul_bias_act(out, dev(a), dev(w), dev(b), "gelu")
    np.testing.assert_allclose(host(out), reference_backend.linear(a, w, b, "gelu"), atol=tol(np.float32, 2), rtol=0)

    hidden = rand(rng, 3, 5, Kd, dtype=np.float32)                  # the pooler reads hidden[:, 0], a strided view
    pooled = dev(np.zeros((3, N), np.float32))
    K.matmul_bias_act(pooled, dev(hidden)[:, 0], dev(w), dev(b), "tanh")
    np.testing.assert_allclose(host(pooled), reference_backend.linear(hidden[:, 0], w, b, "tanh"), atol=tol(np.float32),
                               rtol=0)


@on_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [48, 200])
def test_layer_norm_and_add_layer_norm(K, dev, dtype, C):
    from minibert.backends import reference_backend
    rng = np.random.default_rng(3)
    x, r = rand(rng, 6, C, dtype=dtype, scale=3), rand(rng, 6, C, dtype=dtype)
    g, b = rand(rng, C, dtype=dtype), rand(rng, C, dtype=dtype)
    out = dev(np.zeros_like(x))
    K.layer_norm(out, dev(x), dev(g), dev(b), 1e-12)
    np.testing.assert_allclose(host(out), reference_backend.layer_norm(x, g, b, 1e-12), atol=tol(dtype, 10), rtol=0)
    xd = dev(x)
    K.add_layer_norm(xd, xd, dev(r), dev(g), dev(b), 1e-5)          # out may alias x
    np.testing.assert_allclose(host(xd), reference_backend.layer_norm(x, g, b, 1e-5, residual=r), atol=tol(dtype, 10),
                               rtol=0)


@on_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_embed(K, dev, dtype):
    from minibert.backends import reference_backend
    rng = np.random.default_rng(4)
    word, pos, tt = rand(rng, 50, 12, dtype=dtype), rand(rng, 20, 12, dtype=dtype), rand(rng, 2, 12, dtype=dtype)
    ids, positions, types = rng.integers(0, 50, (3, 7)), np.tile(np.arange(7), (3, 1)), rng.integers(0, 2, (3, 7))
    want = reference_backend.embed(ids, positions, types, word, pos, tt)
    out = dev(np.zeros((3, 7, 12), dtype))
    K.embed(out, dev(ids), dev(positions), dev(types), dev(word), dev(pos), dev(tt))
    np.testing.assert_array_equal(host(out), want)                  # the same two additions in the same order


def padded_attention_inputs(rng, B, T, NH, HS, dtype):
    H = NH * HS
    fused = rand(rng, B, T, 3 * H, dtype=dtype, scale=2)             # q, k, v are strided views, as in the model
    q, k, v = fused[..., :H], fused[..., H:2 * H], fused[..., 2 * H:]
    mask = np.ones((B, T))
    mask[1 % B, T // 2 + 1:] = 0
    if B > 2:
        mask[2, :] = 0                                                # a row with no real token at all
    bias = ((1 - mask) * np.finfo(dtype).min).astype(dtype)
    return fused, (q, k, v), bias


@on_device
@pytest.mark.parametrize("dtype, B, T, NH, HS", [
    (np.float32, 3, 1, 2, 4),
    (np.float32, 3, 9, 4, 4),
    (np.float32, 3, 70, 2, 4),       # two query blocks, three key tiles with a tail
    (np.float64, 3, 9, 4, 4),
    (np.float64, 2, 20, 1, 64),      # float64 at head size 64: 16-key tiles (shared-memory budget)
])
def test_attention_online_softmax_padding_and_strided_views(K, dev, dtype, B, T, NH, HS):
    from minibert.backends import reference_backend
    rng = np.random.default_rng(5)
    fused, (q, k, v), bias = padded_attention_inputs(rng, B, T, NH, HS, dtype)
    H = NH * HS
    dfused = dev(fused)
    dq, dk, dv = dfused[:, :, :H], dfused[:, :, H:2 * H], dfused[:, :, 2 * H:]
    want_ctx, want_probs = reference_backend.attention(q, k, v, bias, NH, True)
    context, probs = dev(np.zeros((B, T, H), dtype)), dev(np.full((B, NH, T, T), np.nan, dtype))
    K.attention(context, probs, dq, dk, dv, dev(bias), NH, True)
    ctx_with_probs, probs = host(context), host(probs)
    np.testing.assert_allclose(probs, want_probs, atol=tol(dtype), rtol=0)
    np.testing.assert_allclose(ctx_with_probs, want_ctx, atol=tol(dtype, 10), rtol=0)
    if T > 1:
        assert (probs[1 % B, :, :, T // 2 + 1:] == 0).all()          # padding gets exactly zero weight
    context = dev(np.zeros((B, T, H), dtype))
    K.attention(context, dev(np.zeros((1, 1, 1, 1), dtype)), dq, dk, dv, dev(bias), NH, False)
    np.testing.assert_array_equal(host(context), ctx_with_probs)       # probs or not, the same context


@on_device
@pytest.mark.parametrize("dtype, B, T, NH, HS, bias_rows", [
    (np.float32, 3, 9, 2, 4, 1),      # MPNet's: one [1, NH, T, T] bias shared by the batch
    (np.float32, 2, 40, 2, 4, 2),     # one per text; two key tiles
    (np.float64, 3, 9, 2, 4, 1),
])
def test_attention_adds_a_position_bias(K, dev, dtype, B, T, NH, HS, bias_rows):
    from minibert.backends import reference_backend
    rng = np.random.default_rng(7)
    fused, (q, k, v), bias = padded_attention_inputs(rng, B, T, NH, HS, dtype)
    position_bias = rand(rng, bias_rows, NH, T, T, dtype=dtype, scale=2)
    H = NH * HS
    dfused = dev(fused)
    dq, dk, dv = dfused[:, :, :H], dfused[:, :, H:2 * H], dfused[:, :, 2 * H:]
    want_ctx, want_probs = reference_backend.attention(q, k, v, bias, NH, True, position_bias=position_bias)
    context, probs = dev(np.zeros((B, T, H), dtype)), dev(np.full((B, NH, T, T), np.nan, dtype))
    K.attention(context, probs, dq, dk, dv, dev(bias), NH, True, position_bias=dev(position_bias))
    np.testing.assert_allclose(host(probs), want_probs, atol=tol(dtype), rtol=0)
    np.testing.assert_allclose(host(context), want_ctx, atol=tol(dtype, 10), rtol=0)
    assert np.abs(want_probs - reference_backend.attention(q, k, v, bias, NH, True)[1]).max() > 0.1   # the bias matters
    with pytest.raises(ValueError, match="position_bias has shape"):
        one_head = np.ascontiguousarray(position_bias[:, :1])          # [rows, 1, T, T]: a head short
        K.attention(context, probs, dq, dk, dv, dev(bias), NH, True, position_bias=dev(one_head))


@on_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_relative_position_bias_gathers_the_reference_buckets(dtype):
    """T = 24 with max_distance 20: distances past max_distance, so every bucket a sequence can reach is read,
    the same 31 of 32 as MPNet's max_distance 128 at T = 140 (58,800 simulated threads, 40 s a dtype)."""
    from minibert.backends import make_ops, reference_backend
    from minibert.kernels.reference import relative_position_buckets
    reached = set(np.unique(relative_position_buckets(24, 32, 20)))
    assert reached == set(np.unique(relative_position_buckets(140, 32, 128)))
    ops = make_ops("cuda")
    table = rand(np.random.default_rng(8), 32, 3, dtype=dtype)
    want = reference_backend.relative_position_bias(table, 24, 32, 20)                    # [1, NH, T, T]
    ours = ops.to_host(ops.relative_position_bias(ops.prepare(table), 24, 32, 20))
    np.testing.assert_array_equal(ours, want)


@on_device
def test_contiguous_copy_of_a_strided_view(K, dev):
    x = np.arange(2 * 5 * 12, dtype=np.float32).reshape(2, 5, 12)
    out = dev(np.zeros((2, 5, 4), np.float32))
    K.contiguous_copy(out, dev(x)[:, :, 4:8])
    np.testing.assert_array_equal(host(out), x[:, :, 4:8])


# ----------------------------------------------------------------------------------------------------------
# On the device (the simulator, or a GPU when asked): the ops and the whole model against the "numpy" backend
# ----------------------------------------------------------------------------------------------------------

@on_device
def test_device_tensor_views_shapes_and_host_copies():
    from minibert.backends import make_ops
    from minibert.backends.cuda import DeviceTensor
    ops = make_ops("cuda")
    x = np.arange(2 * 5 * 12, dtype=np.float32).reshape(2, 5, 12)
    t = ops.prepare({"x": x, "none": None, "list": [x]})["x"]
    assert isinstance(t, DeviceTensor) and t.shape == (2, 5, 12) and t.dtype == np.float32 and t.ndim == 3
    for index in [(Ellipsis, slice(None, 4)), (Ellipsis, slice(8, None)), (slice(None), 0), (-1,), (1, -2, Ellipsis)]:
        np.testing.assert_array_equal(t[index].copy_to_host(), x[index])
        assert t[index].shape == x[index].shape
    np.testing.assert_array_equal(np.asarray(t[:, 0]), x[:, 0])
    for bad in [None, np.array([0, 1]), (0, 0, 0, 0), (slice(None, None, -1),), 7]:
        with pytest.raises(IndexError):
            t[bad]
    result = ops.to_host({"a": (t, None), "b": [t[:, 1]], "c": x, "d": 3})
    assert isinstance(result["a"][0], np.ndarray) and result["a"][1] is None and result["d"] == 3
    np.testing.assert_array_equal(result["b"][0], x[:, 1])
    assert result["b"][0].flags.c_contiguous
    assert ops.to_host(result)["c"] is x                              # host arrays pass through: idempotent


@on_device
def test_ops_linear_on_strided_and_3d_views_and_mask_upload():
    from minibert.backends import make_ops, reference_backend
    ops, ref = make_ops("cuda"), reference_backend
    rng = np.random.default_rng(6)
    x, b = rand(rng, 2, 5, 24, dtype=np.float32), rand(rng, 8, dtype=np.float32)
    dx, db = ops.prepare([x, b])
    for index in [(Ellipsis, slice(8, 16)), (slice(None), 0)]:       # a 3-D strided view (copied), a 2-D one (not)
        w = rand(rng, x[index].shape[-1], 8, dtype=np.float32)
        np.testing.assert_allclose(ops.to_host(ops.linear(dx[index], ops.prepare(w), db, "relu")),
                                   ref.linear(x[index], w, b, "relu"), atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="activation"):
        ops.linear(dx[..., :8], ops.prepare(w[:8]), db, "swish")
    with pytest.raises(ValueError, match="shape"):                    # kernels would read out of bounds
        ops.linear(dx, ops.prepare(w[:8]), db)
    fused, (q, k, v), bias = padded_attention_inputs(rng, 3, 6, 2, 4, np.float32)
    dfused = ops.prepare(fused)
    views = dfused[..., :8], dfused[..., 8:16], dfused[..., 16:]
    first, _ = ops.attention(*views, bias, 2, False)                  # the host mask is uploaded ...
    again, _ = ops.attention(*views, bias.copy(), 2, False)           # ... and reused when unchanged
    changed, _ = ops.attention(*views, np.zeros_like(bias), 2, False)
    np.testing.assert_array_equal(ops.to_host(first), ops.to_host(again))
    np.testing.assert_allclose(ops.to_host(changed), ref.attention(q, k, v, np.zeros_like(bias), 2)[0],
                               atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from tiny import tiny_config, tiny_tensors, write_tiny
    root = tmp_path_factory.mktemp("cuda_models")
    bert = write_tiny(root / "bert")
    config = tiny_config(hidden_act="gelu_new")
    plain = write_tiny(root / "no_pooler", config=config, tensors=tiny_tensors(config, seed=1, pooler=False))
    return {"bert": bert, "no_pooler": plain}


def forward_both(model_dir, dtype, texts, **options):
    import minibert
    gpu = minibert.load(str(model_dir), backend="cuda", dtype=dtype)
    ref = minibert.load(str(model_dir), backend="numpy", dtype=dtype)
    batch = ref.tokenize(texts)
    args = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
    return gpu.ops.to_host(gpu.forward(*args, **options)), ref.forward(*args, **options), gpu, batch


def max_differences(ours, want):
    """Largest |ours - want| per output field; every array must already be on the host."""
    diffs = {"hidden_states": max(np.abs(a - b).max() for a, b in zip(ours.hidden_states, want.hidden_states))}
    for a in list(ours.hidden_states) + [ours.last_hidden_state]:
        assert isinstance(a, np.ndarray)
    if want.pooler_output is not None:
        assert isinstance(ours.pooler_output, np.ndarray)
        diffs["pooler"] = np.abs(ours.pooler_output - want.pooler_output).max()
    if want.attentions is not None:
        diffs["attentions"] = max(np.abs(a - b).max() for a, b in zip(ours.attentions, want.attentions))
    if want.captured:
        assert ours.captured.keys() == want.captured.keys()
        diffs["captured"] = max(np.abs(ours.captured[n] - want.captured[n]).max() for n in want.captured)
    return diffs


@on_device
def test_forward_float32_padded_batch_with_attentions_and_captures(tiny_models):
    texts = ["the cat sat on the mat.", "a dog ran!", "hello world, the cats ran on a mat sat the dog."]
    ours, want, gpu, batch = forward_both(tiny_models["bert"], "float32", texts, output_attentions=True,
                                          capture="layer.*")
    assert batch.attention_mask.min() == 0                            # the batch really is padded
    diffs = max_differences(ours, want)
    print("float32 max |cuda - numpy|:", diffs)
    assert max(diffs.values()) < 1e-4
    assert ours.last_hidden_state.shape == want.last_hidden_state.shape and ours.last_hidden_state.dtype == np.float32
    np.testing.assert_array_equal(ours.last_hidden_state, ours.hidden_states[-1])
    for a, b in zip(ours.attentions, want.attentions):
        assert a.shape == b.shape
    # A text's numbers do not depend on the batch it lands in: the second text alone, unpadded.
    alone = batch.attention_mask[1].sum()
    single = gpu.ops.to_host(gpu.forward(batch.input_ids[1:2, :alone], batch.attention_mask[1:2, :alone],
                                         batch.token_type_ids[1:2, :alone]))
    np.testing.assert_allclose(single.last_hidden_state[0], ours.last_hidden_state[1, :alone], atol=1e-6, rtol=0)


@on_device
def test_encode_on_cuda_runs_the_padded_forward(tiny_models):
    """cuda has no packed attention (BackendOps.packs False): encode and iter_packed_layers take the padded
    forward there, and give the reference's vectors."""
    import minibert
    gpu = minibert.load(str(tiny_models["bert"]), backend="cuda", dtype="float64")
    ref = minibert.load(str(tiny_models["bert"]), backend="numpy", dtype="float64")
    assert gpu.ops.packs is False and ref.ops.packs is True
    texts = ["the cat sat on the mat.", "a dog ran!", "hello world, the cats ran on a mat sat the dog."]
    np.testing.assert_allclose(gpu.encode(texts, layers="all"), ref.encode(texts, layers="all"), atol=1e-12, rtol=0)


@on_device
def test_forward_float64_matches_numpy_float64(tiny_models):
    ours, want, _, _ = forward_both(tiny_models["bert"], "float64", ["the cat sat on the mat.", "a dog"],
                                    output_attentions=True)
    diffs = max_differences(ours, want)
    print("float64 max |cuda - numpy|:", diffs)
    assert max(diffs.values()) < 1e-10


@on_device
def test_forward_tanh_gelu_without_pooler_and_fewer_layers(tiny_models):
    ours, want, _, _ = forward_both(tiny_models["no_pooler"], "float32", ["hello world", "a cat"])
    assert ours.pooler_output is None and ours.attentions is None
    assert max(max_differences(ours, want).values()) < 1e-4
    ours, want, _, _ = forward_both(tiny_models["no_pooler"], "float32", ["hello world"], num_layers=1)
    assert len(ours.hidden_states) == 2
    assert max(max_differences(ours, want).values()) < 1e-4


@on_device
@pytest.mark.parametrize("name", ["albert_groups", "mpnet"])
def test_model_families_against_their_transformers_goldens(name):
    """A family through the CUDA ops, against goldens written by transformers. ALBERT exercises what reaches
    the device: an embedding projection (E -> H), tanh GELU, layer groups sharing weights (uploaded once).
    MPNet: its relative position bias, gathered on the device and added in the attention kernel.
    The other families differ in host-side data only (position ids, token-type tables); with a GPU, every
    name of tests/test_families.py can be added here (the simulator is too slow for all of them).

    The first two rows of the golden batch only, cut after their last real token (the simulator is slow):
    the columns cut were padding, which gets exactly zero attention, so the kept values do not change."""
    import minibert
    directory = ROOT / "tests" / "fixtures" / "families" / name
    with np.load(directory / "golden.npz") as data:
        g = {key: data[key] for key in data.files}
    rows = 2
    T = int(g["attention_mask"][:rows].sum(axis=1).max())
    types = g.get("token_type_ids")
    model = minibert.load(str(directory), backend="cuda")
    out = model.ops.to_host(model.forward(g["input_ids"][:rows, :T], g["attention_mask"][:rows, :T],
                                          None if types is None else types[:rows, :T], output_attentions=True))
    hidden = max(np.abs(h - g[f"hidden_state_{i}"][:rows, :T]).max() for i, h in enumerate(out.hidden_states))
    attention = max(np.abs(a - g[f"attention_{i}"][:rows, :, :T, :T]).max() for i, a in enumerate(out.attentions))
    pooler = np.abs(out.pooler_output - g["pooler_output"][:rows]).max() if "pooler_output" in g else 0.0
    print(f"{name}: max |cuda - transformers| hidden {hidden:.1e} attention {attention:.1e} pooler {pooler:.1e}")
    assert hidden < 1e-4 and attention < 1e-4 and pooler < 1e-4, (hidden, attention, pooler)
    if name.startswith("albert"):                                      # one upload per shared layer group
        layers = model.weights["layers"]
        assert len({id(layer["qkv"]["w"]) for layer in layers}) < len(layers)


@on_device
@pytest.mark.parametrize("name", ["bert", "albert"])
def test_fill_mask_through_the_cuda_backend_equals_the_pipeline(name):
    """BERT's own heads on the "cuda" backend: the encoder on the device, the head on the host copy of the
    word table (the device holds the loaded one), against transformers' pipeline("fill-mask") goldens."""
    import json

    import minibert
    directory = ROOT / "tests" / "fixtures" / "heads" / name
    case = json.loads((directory / "fill_mask.json").read_text(encoding="utf-8"))["one"]
    model = minibert.load(str(directory), backend="cuda")
    out = model.fill_mask(case["inputs"], top_k=case.get("top_k", 5))
    assert [a["token"] for a in out] == [a["token"] for a in case["output"]]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(out, case["output"])) < 1e-6
    assert model.heads.tied and isinstance(model.heads.mlm["decoder"]["w"], np.ndarray)
