"""Each Numba CPU kernel against its plain-NumPy reference, in float32 and float64, and the threading
around them (pieces, BLAS thread hold, batch invariance)."""

import math
from pathlib import Path
import threading

import numba
import numpy as np
import pytest

from minibert.backends import cpu as cpu_backend, reference_backend
from minibert.backends import threads as minibert_threads
from minibert.kernels import cpu, cpu_math, reference

# float32 kernels accumulate in a different order from NumPy; float64 differences are rounding only.
TOL = {np.float32: 2e-6, np.float64: 1e-13}
DTYPES = [np.float32, np.float64]
ACTIVATIONS = [None, *reference.ACTIVATION_FUNCTIONS]


def rand(rng, *shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.fixture
def threads(monkeypatch):
    """threads(n): make the cpu ops cut their work into n pieces (n > cores is fine: pieces just wait)."""
    def set_threads(n):
        monkeypatch.setattr(minibert_threads, "thread_count", lambda: n)
    return set_threads


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_and_add_layer_norm(dtype):
    rng = np.random.default_rng(0)
    x, r = rand(rng, 37, 48, dtype=dtype, scale=3), rand(rng, 37, 48, dtype=dtype)
    g, b = rand(rng, 48, dtype=dtype), rand(rng, 48, dtype=dtype)
    out = np.empty_like(x)
    cpu.layer_norm(out, x, g, b, 1e-12)
    np.testing.assert_allclose(out, reference_backend.layer_norm(x, g, b, 1e-12), atol=TOL[dtype] * 10, rtol=0)
    cpu.add_layer_norm(out, x, r, g, b, 1e-5)
    np.testing.assert_allclose(out, reference_backend.layer_norm(x, g, b, 1e-5, residual=r), atol=TOL[dtype] * 10,
                               rtol=0)
    ops = cpu_backend
    np.testing.assert_allclose(ops.layer_norm(x.reshape(37, 4, 12)[..., :12], g[:12], b[:12], 1e-12),
                               reference_backend.layer_norm(x.reshape(37, 4, 12), g[:12], b[:12], 1e-12),
                               atol=TOL[dtype] * 10, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_with_fused_bias_activation(dtype, activation):
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, 3, 5, 24, dtype=dtype), rand(rng, 24, 40, dtype=dtype, scale=0.5), rand(rng, 40, dtype=dtype)
    ours = cpu_backend.linear(x, w, b, activation=activation)
    want = reference_backend.linear(x, w, b, activation=activation)
    assert ours.shape == (3, 5, 40) and ours.dtype == dtype
    np.testing.assert_allclose(ours, want, atol=TOL[dtype] * 5, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3, 4), (1, 1, 1), (5, 7, 9), (9, 300, 129), (33, 64, 257)])
def test_matmul_ordered_sums_in_k_order_bit_for_bit(dtype, shape):
    """The float64 promise rests on this: every element is the k-ordered sum of rounded products, exactly,
    on any CPU (no fused multiply-add, no reassociation), also for strided inputs and row slices."""
    N, K, C = shape
    rng = np.random.default_rng(2)
    x, w = rand(rng, N, K, dtype=dtype), rand(rng, K, C, dtype=dtype)
    want = reference.matmul_in_k_order(x, w)
    out = np.full((N, C), np.nan, dtype=dtype)
    cpu.matmul_ordered(out, x, w)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_allclose(out, x @ w, atol=TOL[dtype] * K, rtol=0)
    strided = np.full((N, 2 * C), np.nan, dtype=dtype)[:, ::2]
    cpu.matmul_ordered(strided, np.asfortranarray(x), w[:, ::-1].copy()[:, ::-1])
    np.testing.assert_array_equal(strided, want)
    for lo in range(min(N, 4)):                  # a row alone gives the bits it has among all rows
        alone = np.empty((1, C), dtype=dtype)
        cpu.matmul_ordered(alone, x[lo:lo + 1], w)
        np.testing.assert_array_equal(alone[0], out[lo])


def test_float64_linear_and_attention_use_the_ordered_matmul():
    """float64 "cpu" linear equals the k-ordered sum plus bias exactly, and its attention does not call BLAS."""
    rng = np.random.default_rng(3)
    x, w, b = (rand(rng, 2, 7, 24, dtype=np.float64), rand(rng, 24, 40, dtype=np.float64),
               rand(rng, 40, dtype=np.float64))
    np.testing.assert_array_equal(cpu_backend.linear(x, w, b),
                                  reference.matmul_in_k_order(x.reshape(14, 24), w).reshape(2, 7, 40) + b)
    q, k, v = (rand(rng, 2, 7, 24, dtype=np.float64) for _ in range(3))
    blas_calls = []
    real_matmul = np.matmul

    class CountingNumpy:                 # kernels.cpu's `np`, with matmul calls counted
        def __getattr__(self, name):
            if name == "matmul":
                return lambda *a, **kw: blas_calls.append(1) or real_matmul(*a, **kw)
            return getattr(np, name)
    # Compiled first: Numba binds a kernel's `np` when it compiles, and with a cold cache (after any edit of
    # kernels/cpu.py) it would otherwise compile matmul_ordered against the stand-in and fail.
    cpu_backend.attention(q, k, v, np.zeros((2, 7)), 4, False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "np", CountingNumpy())
        context, _ = cpu_backend.attention(q, k, v, np.zeros((2, 7)), 4, False)
    assert not blas_calls
    np.testing.assert_allclose(context, reference_backend.attention(q, k, v, np.zeros((2, 7)), 4)[0], atol=1e-13,
                               rtol=0)


def test_every_backend_implements_every_activation_of_the_one_table():
    from minibert.checkpoint.config import ACTIVATIONS as CONFIG_ACTIVATIONS
    functions = set(reference.ACTIVATION_FUNCTIONS.values())
    assert set(cpu.BIAS_ACTIVATIONS) == functions | {None}
    assert set(CONFIG_ACTIVATIONS) == set(reference.ACTIVATION_FUNCTIONS) - {"tanh"}
    source = (Path(cpu.__file__).parent / "cuda.py").read_text()      # numba.cuda may be absent: read, not import
    assert all(f'"{function}"' in source.split("FUNCTION_CODES = {", 1)[1].split("}", 1)[0] for function in functions)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_activation_kernels_in_place_over_a_wide_range(dtype, activation):
    rng = np.random.default_rng(4)
    x = np.concatenate([rand(rng, 64, 130, dtype=dtype, scale=3),
                        np.linspace(-30, 30, 64 * 130).astype(dtype).reshape(64, 130)])
    bias = rand(rng, 130, dtype=dtype)
    y = x.copy()
    cpu.bias_kernel(activation)(y, bias)
    exact = reference_backend.linear(x.astype(np.float64), np.eye(130), bias.astype(np.float64), activation=activation)
    error = np.abs(y - exact) / np.maximum(1, np.abs(exact))       # relative, absolute below 1
    assert error.max() <= 6 * np.finfo(dtype).eps + (1e-7 if dtype == np.float32 else 0)   # + erf's 1e-7


def test_reference_gelu_is_exact_erf_gelu():
    x = np.linspace(-6, 6, 101)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_array_equal(reference.gelu(x), want)


@pytest.mark.parametrize("contract", [True, False])
def test_float32_erf_is_within_1e_7_of_libm(contract):
    @numba.njit(fastmath={"contract"} if contract else False)     # with and without fused multiply-adds
    def evaluate(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = cpu_math.erf_f32(x[i])
        return out

    x = np.concatenate([np.linspace(-9, 9, 400001), [0.0, 1.4, -1.4, 3.84, 3.92, 3.999, 4.0, 4.5, -4.0, 1e30, -1e30],
                        np.float32(1.4) + np.arange(-50, 50) * np.spacing(np.float32(1.4))]).astype(np.float32)
    exact = np.array([math.erf(float(v)) for v in x])
    got = evaluate(x)
    assert np.abs(got - exact).max() < 1e-7
    assert (got[x > 0] >= 0).all() and (got[x < 0] <= 0).all() and (np.abs(got) <= 1).all()
    assert (np.abs(got[np.abs(x) >= 3.84]) == 1).all()
    assert np.isnan(evaluate(np.array([np.nan], dtype=np.float32))).all()


def test_erf_coefficients_are_the_documented_fit():
    (low_centre, low), (high_centre, high) = cpu_math.fit_erf_pieces()
    assert (low_centre, high_centre) == cpu_math.ERF_CENTRES
    np.testing.assert_allclose(low, np.array(cpu_math.ERF_LOW), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(high, np.array(cpu_math.ERF_HIGH), rtol=1e-4, atol=1e-9)


def test_float32_exp_within_one_ulp_and_exact_zero_for_masked_scores():
    @numba.njit(fastmath=cpu_math.FAST, error_model="numpy")
    def evaluate(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = cpu_math.fast_exp(x[i])
        return out

    x = np.linspace(-87.3, 88, 2000001).astype(np.float32)
    exact = np.exp(x.astype(np.float64))
    error = np.abs(evaluate(x) - exact) / exact
    assert error[np.abs(x) < 10].max() < 1.2e-7       # one float32 ulp is 1.19e-7 relative
    assert error.max() < 3.6e-7                        # fast-math may merge the two-part ln2 for large |x|
    special = np.array([-87.34, -100, -1e30, np.finfo(np.float32).min, 0.0, np.nan], dtype=np.float32)
    got = evaluate(special)
    np.testing.assert_array_equal(got[:5], [0, 0, 0, 0, 1])
    assert np.isnan(got[5])
    np.testing.assert_array_equal(evaluate(np.array([0.5, -3.0])), [math.exp(0.5), math.exp(-3.0)])   # float64: libm


@pytest.mark.parametrize("dtype", DTYPES)
def test_embed(dtype):
    rng = np.random.default_rng(2)
    word, pos, tt = rand(rng, 50, 8, dtype=dtype), rand(rng, 20, 8, dtype=dtype), rand(rng, 2, 8, dtype=dtype)
    ids, positions, types = rng.integers(0, 50, (3, 7)), np.tile(np.arange(7), (3, 1)), rng.integers(0, 2, (3, 7))
    ours = cpu_backend.embed(ids, positions, types, word, pos, tt)
    np.testing.assert_array_equal(ours, reference_backend.embed(ids, positions, types, word, pos, tt))


def attention_case(dtype, T, B=4, NH=4, HS=8, seed=3):
    """q, k, v as strided views of one fused array (as in the model) and a mask with right padding, a text
    with no real token, and a text with a hole and left padding."""
    rng = np.random.default_rng(seed)
    H = NH * HS
    fused = rand(rng, B, T, 3 * H, dtype=dtype, scale=2)
    q, k, v = fused[..., :H], fused[..., H:2 * H], fused[..., 2 * H:]
    mask = np.ones((B, T))
    mask[1, T // 2 + 1:] = 0
    mask[2, :] = 0
    if T > 3:
        mask[3, :2] = 0
        mask[3, T // 2] = 0
    bias = ((1 - mask) * np.finfo(dtype).min).astype(dtype)
    return q, k, v, bias, NH


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 7, 33, 97])
def test_attention_with_padding_and_strided_inputs(dtype, T):
    q, k, v, bias, NH = attention_case(dtype, T)
    ctx, probs = cpu_backend.attention(q, k, v, bias, NH, True)
    want_ctx, want_probs = reference_backend.attention(q, k, v, bias, NH, True)
    np.testing.assert_allclose(probs, want_probs, atol=TOL[dtype], rtol=0)
    np.testing.assert_allclose(ctx, want_ctx, atol=TOL[dtype] * 10, rtol=0)
    assert (probs[1, :, :, T // 2 + 1:] == 0).all()
    ctx_only, none = cpu_backend.attention(q, k, v, bias, NH, False)
    assert none is None
    np.testing.assert_array_equal(ctx_only, ctx)


@pytest.mark.parametrize("T", [20, 300])
def test_attention_splits_long_texts_by_heads(monkeypatch, T):
    monkeypatch.setattr(cpu, "SCORES_BUDGET", 3 * T * T)      # at most 3 heads of scores per block
    q, k, v, bias, NH = attention_case(np.float32, T, NH=8)
    units, _ = cpu.attention_units(cpu.key_lengths(bias), NH, T)
    assert any(h1 - h0 < NH for _, _, h0, h1 in units)
    ctx, probs = cpu_backend.attention(q, k, v, bias, NH, True)
    want_ctx, want_probs = reference_backend.attention(q, k, v, bias, NH, True)
    np.testing.assert_allclose(probs, want_probs, atol=2e-6, rtol=0)
    np.testing.assert_allclose(ctx, want_ctx, atol=2e-5, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 5, 60])
def test_attention_of_a_text_does_not_depend_on_its_batch_padding(dtype, n, threads):
    """A text alone (T = n) and the same text padded to T = 130 next to others: bitwise equal."""
    threads(2)
    rng = np.random.default_rng(5)
    NH, HS, T = 4, 8, 130
    H = NH * HS
    fused = rand(rng, 3, T, 3 * H, dtype=dtype)
    mask = np.ones((3, T))
    mask[1, n:] = 0
    bias = ((1 - mask) * np.finfo(dtype).min).astype(dtype)
    batch, _ = cpu_backend.attention(fused[..., :H], fused[..., H:2 * H], fused[..., 2 * H:], bias, NH, False)
    alone_fused = np.ascontiguousarray(fused[1:2, :n])
    alone, _ = cpu_backend.attention(alone_fused[..., :H], alone_fused[..., H:2 * H], alone_fused[..., 2 * H:],
                                   bias[1:2, :n], NH, False)
    np.testing.assert_array_equal(batch[1, :n], alone[0])


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
def test_ops_accept_empty_batches(shape):
    ops = cpu_backend
    B, T = shape
    fused, ones = np.ones((B, T, 3 * 16), np.float32), np.ones(8, np.float32)
    ctx, probs = ops.attention(fused[..., :16], fused[..., 16:32], fused[..., 32:], np.zeros((B, T), np.float32),
                               2, True)
    assert ctx.shape == (B, T, 16) and probs.shape == (B, 2, T, T)
    assert ops.linear(np.ones((B, T, 8), np.float32), np.ones((8, 4), np.float32), ones[:4], "gelu").shape == (B, T, 4)
    assert ops.layer_norm(np.ones((B, T, 8), np.float32), ones, ones, 1e-12).shape == (B, T, 8)


def test_key_lengths():
    m = np.finfo(np.float32).min
    bias = np.array([[0, 0, 0, 0], [0, 0, m, m], [m, m, m, m], [m, 0, m, 0], [0, m, 0, m]], dtype=np.float32)
    np.testing.assert_array_equal(cpu.key_lengths(bias), [4, 2, 4, 4, 3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ops_give_the_same_numbers_on_any_number_of_threads(dtype, threads):
    """Row kernels and attention: bitwise; matmuls: OpenBLAS rounds a row differently with the number of rows
    in the call, so within float rounding."""
    rng = np.random.default_rng(6)
    ops = cpu_backend
    x, w, b = rand(rng, 7, 61, 96, dtype=dtype), rand(rng, 96, 384, dtype=dtype, scale=0.1), rand(rng, 384, dtype=dtype)
    g, beta = rand(rng, 96, dtype=dtype), rand(rng, 96, dtype=dtype)
    q, k, v, bias, NH = attention_case(dtype, 61, B=7, NH=12, HS=32)
    results = []
    for n in (1, 2, 3, 5):
        threads(n)
        results.append((ops.linear(x, w, b, "gelu"), ops.layer_norm(x, g, beta, 1e-12, residual=x * 2),
                        *ops.attention(q, k, v, bias, NH, True)))
    for other in results[1:]:
        np.testing.assert_allclose(other[0], results[0][0], atol=TOL[dtype], rtol=TOL[dtype])
        for ours, first in zip(other[1:], results[0][1:]):
            np.testing.assert_array_equal(ours, first)


def test_blas_thread_count_is_held_at_one_during_an_op_and_restored_after(monkeypatch):
    blas = minibert_threads.BLAS
    if not blas.available:
        pytest.skip("threadpoolctl finds no BLAS it can control in this process")
    before = blas.thread_counts()
    seen = []
    original = cpu.bias_add

    def spy(y, bias):
        seen.append(blas.thread_counts()[0])
        return original(y, bias)
    monkeypatch.setitem(cpu.BIAS_ACTIVATIONS, None, spy)
    try:
        blas._set([3] * len(before))
        cpu_backend.linear(np.ones((3000, 64), np.float32), np.ones((64, 64), np.float32), np.ones(64, np.float32))
        assert seen and set(seen) == {1}
        assert blas.thread_counts()[0] == 3
        with blas:
            with blas:
                assert blas.thread_counts()[0] == 1
            assert blas.thread_counts()[0] == 1
        assert blas.thread_counts()[0] == 3
        seen.clear()
        with blas:
            minibert_threads.WORKERS.run(lambda lo, hi: seen.append(blas.thread_counts()[0]),
                                         minibert_threads.split(10, 3))
        assert seen == [1, 1, 1]
        done = []                           # a hold taken and released by threads other than the first
        worker = threading.Thread(target=lambda: done.append(blas.__enter__() and blas.thread_counts()[0]))
        worker.start(), worker.join()
        assert done == [1]
        other = threading.Thread(target=lambda: blas.__exit__(None, None, None))
        other.start(), other.join()
        assert blas.thread_counts()[0] == 3
    finally:
        blas._set(before)


def test_workers_run_every_piece_and_raise_the_first_error(threads):
    threads(3)
    done = []
    minibert_threads.WORKERS.run(lambda lo, hi: done.append((lo, hi)), minibert_threads.split(10, 4))
    assert sorted(done) == [(0, 2), (2, 5), (5, 7), (7, 10)]

    def fail(lo, hi):
        raise ValueError(f"piece {lo}")
    with pytest.raises(ValueError, match="piece"):
        minibert_threads.WORKERS.run(fail, minibert_threads.split(10, 5))
    done.clear()
    minibert_threads.WORKERS.run(lambda lo, hi: done.append("again"), minibert_threads.split(4, 2))   # still usable
    assert done == ["again", "again"]
    threads(1)
    minibert_threads.WORKERS.run(lambda lo, hi: done.append((lo, hi)),
                                 minibert_threads.split(4, 2))   # one thread: in order
    assert done[-2:] == [(0, 2), (2, 4)]


def test_split_is_contiguous_and_balanced():
    assert minibert_threads.split(0, 3) == []
    assert minibert_threads.split(5, 1) == [(0, 5)]
    assert minibert_threads.split(3, 8) == [(0, 1), (1, 2), (2, 3)]
    cost = [1, 1, 1, 1, 10, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    pieces = minibert_threads.split(len(cost), 2, cost)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(cost)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    sums = [sum(cost[lo:hi]) for lo, hi in pieces]
    assert max(sums) - min(sums) <= 10


def test_numpy_ops_keep_dtype():
    ops = reference_backend
    x = np.ones((2, 3, 4), dtype=np.float32)
    w, b = np.ones((4, 5), dtype=np.float32), np.ones(5, dtype=np.float32)
    assert ops.linear(x, w, b, activation="gelu").dtype == np.float32
    assert ops.layer_norm(x, b[:4], b[:4], 1e-12).dtype == np.float32


def test_model_vectors_barely_depend_on_the_batch(model_for):
    """End to end on the default model: a text alone and in a padded batch. Attention and every row kernel
    are batch-invariant; OpenBLAS's matmuls round a row differently with the rows around it, which moves
    hidden states by a few float32 ulp (about 1e-6 here) and no more."""
    model = model_for("cpu")
    texts = ["A dog ran.", "The quick brown fox jumps over the lazy dog while the cat watches from the wall.",
             "Hi"] * 6
    batch = model(texts)
    for i in (0, 1, 2):
        alone = model([texts[i]])
        n = int(alone.attention_mask.sum())
        for a, b in zip(alone.hidden_states, batch.hidden_states):
            np.testing.assert_allclose(a[0], b[i, :n], atol=2e-5, rtol=0)
        np.testing.assert_array_equal(alone.hidden_states[0][0], batch.hidden_states[0][i, :n])


def packed_case(dtype, lengths, NH=4, HS=8, seed=7):
    """q, k, v [N, H] as strided views of one fused array, texts of `lengths` end to end, their offsets, and the
    same texts right-padded [B, T, H] with their additive mask."""
    rng = np.random.default_rng(seed)
    H, T = NH * HS, max(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    fused = rand(rng, int(offsets[-1]), 3 * H, dtype=dtype, scale=2)
    padded = np.zeros((len(lengths), T, 3 * H), dtype=dtype)
    mask = np.zeros((len(lengths), T))
    for b, n in enumerate(lengths):
        padded[b, :n], mask[b, :n] = fused[offsets[b]:offsets[b + 1]], 1
    bias = ((1 - mask) * np.finfo(dtype).min).astype(dtype)
    return fused, offsets, padded, bias, NH, H


# Runs of equal lengths (one stacked matmul), a one-token text, and long texts whose heads are split.
PACKED_LENGTHS = [[1], [3, 3, 3, 7, 7, 12], [5, 1, 40, 40, 2], [130, 9, 9]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", PACKED_LENGTHS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_attention_is_each_texts_padded_attention(dtype, lengths, with_bias, threads, monkeypatch):
    """cpu packed_attention against the reference, and bit for bit against the padded cpu attention of the same
    texts in float64 (the promise encode's packed batches keep); the reference's packed attention is its
    padded one on the real rows."""
    threads(3)
    monkeypatch.setattr(cpu, "SCORES_BUDGET", 2 * 130 * 130)        # the 130-token text: 2 heads per block
    fused, offsets, padded, bias, NH, H = packed_case(dtype, lengths)
    T = padded.shape[1]
    position_bias = (rand(np.random.default_rng(1), 1, NH, T + 3, T + 3, dtype=dtype) if with_bias else None)
    q, k, v = fused[:, :H], fused[:, H:2 * H], fused[:, 2 * H:]
    got = cpu_backend.packed_attention(q, k, v, offsets, NH, position_bias=position_bias)
    want = reference_backend.packed_attention(q, k, v, offsets, NH, position_bias=position_bias)
    np.testing.assert_allclose(got, want, atol=TOL[dtype] * 10, rtol=0)
    pq, pk, pv = padded[..., :H], padded[..., H:2 * H], padded[..., 2 * H:]
    square = None if position_bias is None else position_bias[:, :, :T, :T]
    for backend, packed in ((cpu_backend, got), (reference_backend, want)):
        context, _ = backend.attention(pq, pk, pv, bias, NH, False, position_bias=square)
        rows = np.concatenate([context[b, :n] for b, n in enumerate(lengths)])
        if backend is cpu_backend and dtype == np.float64:
            np.testing.assert_array_equal(packed, rows)
        else:
            np.testing.assert_allclose(packed, rows, atol=TOL[dtype] * 10, rtol=0)


def test_packed_attention_backward_is_each_texts_backward():
    """The reference pair: gradients of the packed op are each text's attention_backward, the bias's summed."""
    lengths = [4, 1, 6]
    fused, offsets, _, _, NH, H = packed_case(np.float64, lengths)
    q, k, v = fused[:, :H], fused[:, H:2 * H], fused[:, 2 * H:]
    bias = rand(np.random.default_rng(2), 1, NH, 6, 6, dtype=np.float64)
    dcontext = rand(np.random.default_rng(3), len(q), H, dtype=np.float64)
    context, saved = reference.packed_attention_forward(q, k, v, offsets, NH, position_bias=bias)
    dq, dk, dv, dbias = reference.packed_attention_backward(dcontext, q, k, v, offsets, NH, bias, saved)
    dbias_want = np.zeros_like(bias)
    for b, n in enumerate(lengths):
        rows = slice(offsets[b], offsets[b + 1])
        mask = np.zeros((1, n))
        one, kept = reference.attention_forward(q[None, rows], k[None, rows], v[None, rows], mask, NH,
                                                position_bias=bias[:, :, :n, :n])
        np.testing.assert_array_equal(context[rows], one[0])
        want = reference.attention_backward(dcontext[None, rows], q[None, rows], k[None, rows], v[None, rows], mask,
                                            NH, bias[:, :, :n, :n], kept)
        for got, wanted in zip((dq, dk, dv), want[:3]):
            np.testing.assert_array_equal(got[rows], wanted[0])
        dbias_want[:, :, :n, :n] += want[3]
    np.testing.assert_allclose(dbias, dbias_want, rtol=0, atol=1e-15)


def test_equal_length_runs():
    offsets = np.array([0, 3, 6, 7, 7, 9, 11, 13], dtype=np.int64)            # lengths 3 3 1 0 2 2 2
    assert cpu.equal_length_runs(offsets) == [(0, 2, 3), (6, 1, 1), (7, 1, 0), (7, 3, 2)]
    runs, work, _ = cpu.packed_attention_work(offsets, 2)
    assert runs == [(0, 2, 3), (6, 1, 1), (7, 3, 2)] and {r for r, _ in work} == {0, 1, 2}
