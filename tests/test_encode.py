"""encode / encode_words / extract against plain NumPy computed here from forward's hidden states."""

import json
import subprocess
import sys

import numpy as np
import pytest

import minibert
from minibert.errors import InputError, MiniBertError

TEXTS = ["The cat sat on the mat.", "Hi", "A considerably longer sentence, with several clauses, about nothing much.",
         "", "   ", "Café naïve 北京 🍕"]


@pytest.fixture(scope="module")
def model():
    return minibert.load(backend="cpu")


@pytest.fixture(scope="module")
def reference(model):
    """Each text alone through forward: the per-token hidden states everything else is checked against."""
    return [model(t).hidden_states for t in TEXTS]


def ref_pool(h, pooling):
    h = h[0].astype(np.float64)                          # [T, H], one text, no padding
    return {"cls": h[0], "mean": h.mean(0), "max": h.max(0), "mean_sqrt_len": h.sum(0) / np.sqrt(len(h))}[pooling]


@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "mean_sqrt_len"])
def test_pooling_matches_numpy_and_keeps_input_order(model, reference, pooling):
    got = model.encode(TEXTS, pooling=pooling, normalize=False, batch_size=2)   # sorted into batches of 2
    want = np.stack([ref_pool(hs[-1], pooling) for hs in reference])
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize("combine", [None, "mean", "sum", "concat"])
def test_layer_choice_and_combination(model, reference, combine):
    layers = [-4, -3, -2, -1]
    got = model.encode(TEXTS, layers=layers, combine=combine)
    per_layer = np.stack([[ref_pool(hs[i], "mean") for i in (3, 4, 5, 6)] for hs in reference])   # [N, 4, H]
    want = {None: per_layer, "mean": per_layer.mean(1), "sum": per_layer.sum(1),
            "concat": per_layer.reshape(len(TEXTS), -1)}[combine]
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4


def test_all_layers_zero_is_embeddings_and_normalize(model, reference):
    got = model.encode(TEXTS, layers="all", normalize=True)
    assert got.shape == (len(TEXTS), 7, 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-6)
    first = ref_pool(reference[0][0], "mean")
    assert np.abs(got[0, 0] - first / np.linalg.norm(first)).max() < 1e-6


def test_token_level_output_is_unpadded_per_text(model, reference):
    got = model.encode(TEXTS, pooling="none", layers=[0, -1])
    assert isinstance(got, list) and len(got) == len(TEXTS)
    for tokens, hs in zip(got, reference):
        assert tokens.shape == (hs[0].shape[1], 2, 384)
        assert np.abs(tokens[:, 1] - hs[-1][0]).max() < 1e-5


def test_padding_and_batch_invariance(model):
    alone = np.stack([model.encode([t]) for t in TEXTS])[:, 0]
    together = model.encode(TEXTS, batch_size=len(TEXTS))
    # OpenBLAS rounds a row differently with its place among a matmul's rows: measured up to 2.4e-6 here.
    assert np.abs(alone - together).max() < 3e-6


def test_windows_equal_unwindowed_when_text_fits(model):
    plain = model.encode(TEXTS, pooling="none", layers="all")
    windowed = model.encode(TEXTS, pooling="none", layers="all", window=64, stride=16)
    for a, b in zip(plain, windowed):
        np.testing.assert_array_equal(a, b)


def test_long_text_windows_cover_every_token(model):
    long_text = " ".join(f"word{i}" for i in range(400))
    with pytest.warns(UserWarning, match="1 of 1 texts were longer than 128 tokens and were truncated"):
        cut = model.encode([long_text], pooling="none", max_length=128)[0]
    whole = model.encode([long_text], pooling="none", window=128, stride=32)[0]
    n_tokens = len(model.tokenizer.backend.encode(long_text).ids)
    assert cut.shape[0] == 128 and whole.shape[0] == n_tokens > 512
    # Window 1 holds content tokens 1..126; window 2 starts 126 - 32 = 94 tokens later. Tokens 1..94 are
    # covered by window 1 alone, so they equal the truncated text's; [CLS] is averaged over every window.
    # The windows run as one batch, the truncated text alone: OpenBLAS row rounding, measured <= 2.4e-6.
    np.testing.assert_allclose(whole[1:95], cut[1:95], rtol=0, atol=3e-6)
    assert np.abs(whole[0] - cut[0]).max() > 1e-3


@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "mean_sqrt_len"])
def test_windowed_pooling_pools_the_merged_tokens(model, pooling):
    # cls, mean and mean_sqrt_len add each window's share as it comes; max pools the kept merged tokens.
    long_text = " ".join(["the cat sat on the mat"] * 60)
    tokens = model.encode([long_text], pooling="none", window=100, stride=20)[0].astype(np.float64)
    pooled = model.encode([long_text], pooling=pooling, normalize=False, window=100, stride=20)[0]
    want = ref_pool(tokens[None], pooling)
    assert np.abs(pooled - want).max() < 1e-6


def test_encode_words_pools_subword_pieces(model):
    text = "Unaffable pneumonoultramicroscopic dogs"
    batch = model.tokenize(text)
    hidden = model(text).last_hidden_state[0]
    word_ids = batch.word_ids[0]
    for subword in ("first", "last", "mean", "first_last"):
        [result] = model.encode_words([text], subword=subword)
        assert result.words == ["Unaffable", "pneumonoultramicroscopic", "dogs"]
        assert result.spans.tolist() == [[0, 9], [10, 34], [35, 39]]
        for w in range(3):
            pieces = hidden[word_ids == w]
            assert len(pieces) > 1 or w == 2            # the first two words are out of vocabulary
            want = {"first": pieces[0], "last": pieces[-1], "mean": pieces.mean(0),
                    "first_last": np.concatenate([pieces[0], pieces[-1]])}[subword]
            assert np.abs(result.vectors[w] - want).max() < 1e-5


def test_encode_words_on_pre_split_words(model):
    words = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    [result] = model.encode_words([words], layers=[-2, -1], combine="sum")
    assert result.words == words and result.vectors.shape == (len(words), 384)
    joined = " ".join(words)
    assert [joined[s:e] for s, e in result.spans] == words


def test_capture_on_encode_returns_unpadded_internals(model):
    result = model.encode(["hi there", "a much longer text than that"], capture="layer.0.ffn.intermediate")
    shapes = [a.shape for a in result.captured["layer.0.ffn.intermediate"]]
    assert shapes == [(4, 1536), (8, 1536)]


def test_capture_matches_numbers_computed_by_hand_from_the_weights(model):
    """query of layer 0 and the intermediate of layer 0, recomputed here with NumPy from the weights."""
    out = model("hello world", capture=["layer.0.query", "layer.0.ffn.intermediate", "layer.0.attention.layer_norm"])
    x = out.hidden_states[0][0].astype(np.float64)
    layer = model.weights["layers"][0]
    H = 384
    q = x @ layer["qkv"]["w"][:, :H] + layer["qkv"]["b"][:H]
    assert np.abs(out.captured["layer.0.query"][0] - q).max() < 1e-5
    a = out.captured["layer.0.attention.layer_norm"][0].astype(np.float64)
    pre = a @ layer["ffn_in"]["w"] + layer["ffn_in"]["b"]
    from math import erf
    gelu = 0.5 * pre * (1 + np.vectorize(erf)(pre / np.sqrt(2)))
    assert np.abs(out.captured["layer.0.ffn.intermediate"][0] - gelu).max() < 1e-5


def test_empty_list_and_bad_options(model):
    assert model.encode([]).shape == (0, 384)
    assert model.encode([], layers="all").shape == (0, 7, 384)
    with pytest.raises(InputError, match="layer 7 does not exist"):
        model.encode(["x"], layers=7)
    with pytest.raises(InputError, match="pooling must be one of"):
        model.encode(["x"], pooling="median")
    with pytest.raises(InputError, match="stride is the overlap between windows"):
        model.encode(["x"], stride=4)


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "minibert", *args], capture_output=True, text=True, input=stdin)


def test_extract_end_to_end_and_refusal_to_overwrite(tmp_path, model):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"body": t}) for t in TEXTS) + "\n")
    out = tmp_path / "out"
    result = run_cli("extract", str(corpus), "--field", "body", "--out", str(out), "--layers", "-2,-1", "--quiet")
    assert result.returncode == 0, result.stderr
    loaded = minibert.load_embeddings(out)
    assert loaded.manifest["count"] == len(TEXTS) and loaded.manifest["layers"] == [-2, -1]
    assert isinstance(loaded.vectors, np.memmap)
    np.testing.assert_allclose(loaded.vectors, model.encode(TEXTS, layers=[-2, -1]), atol=1e-6)
    again = run_cli("extract", str(corpus), "--field", "body", "--out", str(out))
    assert again.returncode != 0 and "already holds an extraction" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("fmt", ["npz", "safetensors", "jsonl"])
def test_extract_formats_round_trip(tmp_path, model, fmt):
    from minibert.extract import extract
    extract(model, TEXTS, tmp_path, fmt=fmt, dtype="float16" if fmt == "safetensors" else "float32")
    loaded = minibert.load_embeddings(tmp_path)
    want = model.encode(TEXTS)
    np.testing.assert_allclose(np.asarray(loaded.vectors, dtype=np.float32), want, atol=2e-3 if fmt == "safetensors" else 1e-6)


def test_extract_token_level_is_flat_with_offsets(tmp_path, model):
    from minibert.extract import extract
    extract(model, TEXTS, tmp_path, pooling="none")
    loaded = minibert.load_embeddings(tmp_path)
    want = model.encode(TEXTS, pooling="none")
    assert len(loaded.offsets) == len(TEXTS) + 1
    for i, w in enumerate(want):
        np.testing.assert_allclose(loaded.token_vectors(i), w, atol=1e-6)


def test_interrupted_extract_leaves_nothing_that_looks_complete(tmp_path, model, monkeypatch):
    from minibert import extract as extract_module
    calls = {"n": 0}
    real_encode = type(model).encode

    def failing_encode(self, texts, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_encode(self, texts, **kwargs)

    monkeypatch.setattr(type(model), "encode", failing_encode)
    monkeypatch.setattr(extract_module, "CHUNK", 2)
    with pytest.raises(KeyboardInterrupt):
        extract_module.extract(model, TEXTS, tmp_path)
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "vectors.npy").exists()
    with pytest.raises(MiniBertError, match="interrupted after 2 of 6 rows; .* --resume"):
        minibert.load_embeddings(tmp_path)
    monkeypatch.undo()
    with pytest.raises(InputError, match="holds an interrupted extraction .*pass --resume"):
        extract_module.extract(model, TEXTS, tmp_path)        # a plain re-run would throw the saved rows away
    extract_module.extract(model, TEXTS, tmp_path, resume=True)   # --resume finishes the job
    assert minibert.load_embeddings(tmp_path).vectors.shape == (len(TEXTS), 384)


def test_cli_embed_similarity_and_errors():
    result = run_cli("embed", "A cat.", "--layers", "-4,-3,-2,-1", "--combine", "concat", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["shape"] == [1536]
    result = run_cli("similarity", "A man plays guitar.", "Someone plays music.")
    assert result.returncode == 0 and "layer 6" in result.stdout
    result = run_cli("embed", "x", "--layers", "12")
    assert result.returncode == 1 and result.stderr.startswith("minibert: error: layer 12 does not exist")


def watched_model(model):
    """The same model with ops that keep a weak reference to every LayerNorm output (each hidden state is
    one) and every linear output, and record, at each linear call, how many of each are still alive.
    Returns (model, hidden states alive at each linear call, linear outputs alive at each linear call)."""
    import weakref
    from types import SimpleNamespace
    outputs, linear_outputs, alive_at_linear, linear_alive_at_linear = [], [], [], []

    def layer_norm(*args, **kwargs):
        out = model.ops.layer_norm(*args, **kwargs)
        outputs.append(weakref.ref(out))
        return out

    def linear(*args, **kwargs):
        alive_at_linear.append(sum(ref() is not None for ref in outputs))
        linear_alive_at_linear.append(sum(ref() is not None for ref in linear_outputs))
        out = model.ops.linear(*args, **kwargs)
        linear_outputs.append(weakref.ref(out))
        return out

    ops = SimpleNamespace(**{**vars(model.ops), "layer_norm": layer_norm, "linear": linear})
    watched = minibert.api.Model(config=model.config, weights=model.weights, tokenizer=model.tokenizer, ops=ops,
                                 dtype=model.dtype, source=model.source, backend=model.backend)
    return watched, alive_at_linear, linear_alive_at_linear


def test_iter_layers_computes_each_layer_only_when_taken(model):
    watched, linear_calls, _ = watched_model(model)
    batch = model.tokenize(TEXTS[:2])
    layers = watched.iter_layers(batch.input_ids, batch.attention_mask, batch.token_type_ids, num_layers=2)
    assert linear_calls == []                                  # nothing runs before the first layer is taken
    first = next(layers)
    assert first.index == 0 and linear_calls == []             # the embedding output needs no linear
    second = next(layers)
    assert second.index == 1 and len(linear_calls) == 4        # fused QKV, attention output, FFN in, FFN out
    np.testing.assert_array_equal(second.hidden_state, model(TEXTS[:2]).hidden_states[1])


def test_forward_lets_each_layer_s_internals_go_while_keeping_every_hidden_state(model):
    """Internals not asked for (QKV, the attention output, the FFN intermediate: together several times a
    hidden state) are freed as soon as they are used, not held into the feed-forward or the next layer."""
    watched, _, linear_alive = watched_model(model)
    watched(TEXTS)
    # At most one earlier linear output is alive at a linear call: the fused QKV (q, k, v are its views)
    # during the attention's output projection, the intermediate during the FFN's second matmul.
    assert len(linear_alive) == 6 * 4 + 1 and max(linear_alive) <= 1, linear_alive
    watched, _, linear_alive = watched_model(model)
    watched(TEXTS, capture="layer.*.ffn.intermediate")
    assert max(linear_alive) > 1                # what is asked for is kept: the check above can fail


def test_pooled_encoding_never_holds_the_layer_stack(model):
    watched, alive, _ = watched_model(model)
    watched.encode(TEXTS, layers="all", batch_size=len(TEXTS))
    # Alive at a linear: the layer's input and, inside the FFN, the attention block's output (plus one
    # whose last reference is being replaced). Keeping every layer, as forward does, reaches 8 here.
    assert len(alive) == 6 * 4 and max(alive) <= 3, alive
