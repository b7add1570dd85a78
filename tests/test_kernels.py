"""Each Numba CPU kernel against its plain-NumPy reference, in float32 and float64."""

import math

import numpy as np
import pytest

from minibert.backends import cpu_ops, numpy_ops
from minibert.kernels import cpu, reference

# float32 kernels accumulate in a different order from NumPy; float64 differences are rounding only.
TOL = {np.float32: 2e-6, np.float64: 1e-13}
DTYPES = [np.float32, np.float64]


def rand(rng, *shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_and_add_layer_norm(dtype):
    rng = np.random.default_rng(0)
    x, r = rand(rng, 37, 48, dtype=dtype, scale=3), rand(rng, 37, 48, dtype=dtype)
    g, b = rand(rng, 48, dtype=dtype), rand(rng, 48, dtype=dtype)
    out = np.empty_like(x)
    cpu.layer_norm(out, x, g, b, 1e-12)
    np.testing.assert_allclose(out, reference.layer_norm(x, g, b, 1e-12), atol=TOL[dtype] * 10, rtol=0)
    cpu.add_layer_norm(out, x, r, g, b, 1e-5)
    np.testing.assert_allclose(out, reference.layer_norm(x, g, b, 1e-5, residual=r), atol=TOL[dtype] * 10, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "tanh"])
def test_linear_with_fused_bias_activation(dtype, activation):
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, 3, 5, 24, dtype=dtype), rand(rng, 24, 40, dtype=dtype, scale=0.5), rand(rng, 40, dtype=dtype)
    ours = cpu_ops().linear(x, w, b, activation=activation)
    want = reference.linear(x, w, b, activation=activation)
    assert ours.shape == (3, 5, 40) and ours.dtype == dtype
    np.testing.assert_allclose(ours, want, atol=TOL[dtype] * 5, rtol=0)


def test_reference_gelu_is_exact_erf_gelu():
    x = np.linspace(-6, 6, 101)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_array_equal(reference.gelu(x), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embed(dtype):
    rng = np.random.default_rng(2)
    word, pos, tt = rand(rng, 50, 8, dtype=dtype), rand(rng, 20, 8, dtype=dtype), rand(rng, 2, 8, dtype=dtype)
    ids, positions, types = rng.integers(0, 50, (3, 7)), np.tile(np.arange(7), (3, 1)), rng.integers(0, 2, (3, 7))
    ours = cpu_ops().embed(ids, positions, types, word, pos, tt)
    np.testing.assert_array_equal(ours, reference.embed(ids, positions, types, word, pos, tt))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 7, 33])
def test_attention_with_padding_and_strided_inputs(dtype, T):
    rng = np.random.default_rng(3)
    B, NH, HS = 3, 4, 8
    H = NH * HS
    fused = rand(rng, B, T, 3 * H, dtype=dtype, scale=2)       # q, k, v are strided views, as in the model
    q, k, v = fused[..., :H], fused[..., H:2 * H], fused[..., 2 * H:]
    mask = np.ones((B, T))
    mask[1, T // 2 + 1:] = 0
    mask[2, :] = 0                                                 # a row with no real token at all
    bias = ((1 - mask) * np.finfo(dtype).min).astype(dtype)
    ctx, probs = cpu_ops().attention(q, k, v, bias, NH, True)
    want_ctx, want_probs = reference.attention(q, k, v, bias, NH, True)
    np.testing.assert_allclose(probs, want_probs, atol=TOL[dtype], rtol=0)
    np.testing.assert_allclose(ctx, want_ctx, atol=TOL[dtype] * 10, rtol=0)
    assert (probs[1, :, :, T // 2 + 1:] == 0).all()
    ctx_only, none = cpu_ops().attention(q, k, v, bias, NH, False)
    assert none is None
    np.testing.assert_array_equal(ctx_only, ctx)


def test_numpy_ops_keep_dtype():
    ops = numpy_ops()
    x = np.ones((2, 3, 4), dtype=np.float32)
    w, b = np.ones((4, 5), dtype=np.float32), np.ones(5, dtype=np.float32)
    assert ops.linear(x, w, b, activation="gelu").dtype == np.float32
    assert ops.layer_norm(x, b[:4], b[:4], 1e-12).dtype == np.float32


def test_float32_erf_is_within_1e_7_of_libm():
    import numba

    @numba.njit
    def evaluate(x, table):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = cpu.erf_piecewise(x[i], table)
        return out

    x = np.concatenate([np.linspace(-9, 9, 400001), [0.0, 3.999, 4.0, 4.5, -4.0]]).astype(np.float32)
    exact = np.array([math.erf(float(v)) for v in x])
    assert np.abs(evaluate(x, cpu.ERF_TABLE) - exact).max() < 1e-7
