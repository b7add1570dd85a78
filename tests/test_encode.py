"""encode / encode_words / extract against plain NumPy computed here from forward's hidden states."""

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import write_tiny

import minibert
from minibert.corpus import extract as extract_module
from minibert.errors import InputError, MiniBertError

FAMILIES = Path(__file__).parent / "fixtures" / "families"

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
    result = model.encode(["hi there", "a much longer text than that"], capture="layer1.ffn.intermediate")
    shapes = [a.shape for a in result.captured["layer1.ffn.intermediate"]]
    assert shapes == [(4, 1536), (8, 1536)]


def test_capture_matches_numbers_computed_by_hand_from_the_weights(model):
    """query and intermediate of layer 1 (the first encoder layer), recomputed here with NumPy from the weights."""
    out = model("hello world", capture=["layer1.query", "layer1.ffn.intermediate", "layer1.attention.layer_norm"])
    x = out.hidden_states[0][0].astype(np.float64)
    layer = model.weights["layers"][0]
    H = 384
    q = x @ layer["qkv"]["w"][:, :H] + layer["qkv"]["b"][:H]
    assert np.abs(out.captured["layer1.query"][0] - q).max() < 1e-5
    a = out.captured["layer1.attention.layer_norm"][0].astype(np.float64)
    pre = a @ layer["ffn_in"]["w"] + layer["ffn_in"]["b"]
    from math import erf
    gelu = 0.5 * pre * (1 + np.vectorize(erf)(pre / np.sqrt(2)))
    assert np.abs(out.captured["layer1.ffn.intermediate"][0] - gelu).max() < 1e-5


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
    from minibert.corpus.extract import extract
    extract(model, TEXTS, tmp_path, fmt=fmt, dtype="float16" if fmt == "safetensors" else "float32")
    loaded = minibert.load_embeddings(tmp_path)
    want = model.encode(TEXTS)
    np.testing.assert_allclose(np.asarray(loaded.vectors, dtype=np.float32), want,
                               atol=2e-3 if fmt == "safetensors" else 1e-6)


def test_extract_token_level_is_flat_with_offsets(tmp_path, model):
    from minibert.corpus.extract import extract
    extract(model, TEXTS, tmp_path, pooling="none")
    loaded = minibert.load_embeddings(tmp_path)
    want = model.encode(TEXTS, pooling="none")
    assert len(loaded.offsets) == len(TEXTS) + 1
    for i, w in enumerate(want):
        np.testing.assert_allclose(loaded.token_vectors(i), w, atol=1e-6)


def test_interrupted_extract_leaves_nothing_that_looks_complete(tmp_path, model, monkeypatch):
    from minibert.corpus import extract as extract_module
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
    watched(TEXTS, capture="layer*.ffn.intermediate")
    assert max(linear_alive) > 1                # what is asked for is kept: the check above can fail


def test_pooled_encoding_never_holds_the_layer_stack(model):
    watched, alive, _ = watched_model(model)
    watched.encode(TEXTS, layers="all", batch_size=len(TEXTS))
    # Alive at a linear: the layer's input and, inside the FFN, the attention block's output (plus one
    # whose last reference is being replaced). Keeping every layer, as forward does, reaches 8 here.
    assert len(alive) == 6 * 4 and max(alive) <= 3, alive


# ----- word vectors line up with the given words (issue 19) ---------------------------------------------------

PIECELESS = ["\u200b", "\u00ad", "\ufeff", "\x00", "\u0301"]      # zero-width space, soft hyphen, BOM, NUL, lone accent


@pytest.mark.parametrize("invisible", PIECELESS)
def test_encode_words_keeps_a_place_for_a_word_without_pieces(model, invisible):
    with pytest.warns(UserWarning) as caught:
        [got] = model.encode_words([["Paris", invisible, "France"]])
    [warning] = [w for w in caught if "no tokenizer pieces" in str(w.message)]
    assert "1 word(s) in 1 text(s)" in str(warning.message) and "texts[0][1]" in str(warning.message)
    assert warning.filename == __file__                                   # attributed to the caller's line
    [without] = model.encode_words([["Paris", "France"]])                 # the same tokens: the same vectors
    assert got.words == ["Paris", invisible, "France"] and got.has_pieces.tolist() == [True, False, True]
    assert got.vectors.shape == (3, 384) and not got.vectors[1].any()     # zeros where the word has no token
    np.testing.assert_array_equal(got.vectors[[0, 2]], without.vectors)
    joined = " ".join(got.words)
    assert got.spans.tolist() == [[0, 5], [6, 7], [8, 14]] and [joined[s:e] for s, e in got.spans] == got.words


def test_encode_words_one_warning_for_every_pieceless_word_and_layer_axes_kept(model):
    sentences = [["\u200b", "a"], ["b", "c"], ["\u00ad", "d", "\x00"]]
    with pytest.warns(UserWarning) as caught:
        got = model.encode_words(sentences, layers=[0, -1], subword="first_last")
    warnings = [str(w.message) for w in caught if "no tokenizer pieces" in str(w.message)]
    assert len(warnings) == 1 and "3 word(s) in 2 text(s)" in warnings[0]
    assert "texts[0][0]" in warnings[0] and "texts[2][0]" in warnings[0] and "texts[2][2]" in warnings[0]
    assert [len(r.vectors) for r in got] == [2, 2, 3] and got[2].vectors.shape == (3, 2, 768)
    assert got[2].has_pieces.tolist() == [False, True, False] and not got[2].vectors[[0, 2]].any()


def test_encode_words_words_cut_by_max_length_keep_their_place(model):
    words = ["one", "two", "three", "four", "five"]
    with pytest.warns(UserWarning, match="truncated") as caught:
        [got] = model.encode_words([words], max_length=5)              # [CLS] + 3 words + [SEP]
    assert not [w for w in caught if "no tokenizer pieces" in str(w.message)]   # they have pieces; cut, not missing
    assert got.words == words and got.has_pieces.tolist() == [True, True, True, False, False]
    assert not got.vectors[3:].any()


def test_mostly_unknown_pieces_get_one_warning_with_the_rate(model):
    with pytest.warns(UserWarning, match=r"1 of 2 texts are mostly \[UNK\].*texts\[1\] 100%"):
        model.encode(["plain English text", "\u16a0\u16a2\u16a6 \u16a8\u16b1\u16b2"])   # runes: not in the vocabulary
    with pytest.warns(UserWarning, match=r"mostly \[UNK\]"):
        model.encode_words([["\u16a0\u16a2", "\u16a6"]])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.encode(["plain English text", "Café naïve"])               # no warning for text the model reads


# ----- one numbering for encoder layers -------------------------------------------------------------------------

def test_capture_names_count_layers_as_hidden_states_does(model):
    """layer{i} is the layer whose output is hidden_states[i]: LayerNorm(attention.layer_norm + ffn.output)
    of layer i gives hidden_states[i], for every i."""
    out = model("The cat sat.", capture=["layer*.attention.layer_norm", "layer*.ffn.output"])
    L = model.config.num_hidden_layers
    assert sorted(out.captured) == sorted(f"layer{i}.{n}" for i in range(1, L + 1)
                                          for n in ("attention.layer_norm", "ffn.output"))
    for i in range(1, L + 1):
        ln = model.weights["layers"][i - 1]["ffn_ln"]
        x = (out.captured[f"layer{i}.attention.layer_norm"] + out.captured[f"layer{i}.ffn.output"]).astype(np.float64)
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        want = (x - mu) / np.sqrt(var + model.config.layer_norm_eps) * ln["g"] + ln["b"]
        assert np.abs(want - out.hidden_states[i]).max() < 1e-5, i
    with pytest.raises(InputError, match=r"layers 1\.\.6"):
        model("x", capture="layer7.query")
    with pytest.raises(InputError, match="matches no internal"):
        model("x", capture="layer0.query")
    with pytest.raises(InputError, match="capture must be a name or pattern"):
        model("x", capture=5)


def test_old_zero_based_capture_names_still_work_for_one_release(model):
    with pytest.warns(DeprecationWarning, match="'layer.0.query' is 'layer1.query'") as caught:
        old = model("hello world", capture=["layer.0.query", "layer.5.ffn.output"])
    assert caught[0].filename == __file__
    new = model("hello world", capture=["layer1.query", "layer6.ffn.output"])
    assert sorted(old.captured) == ["layer.0.query", "layer.5.ffn.output"]   # old keys back for old names
    np.testing.assert_array_equal(old.captured["layer.0.query"], new.captured["layer1.query"])
    np.testing.assert_array_equal(old.captured["layer.5.ffn.output"], new.captured["layer6.ffn.output"])
    with pytest.warns(DeprecationWarning):
        result = model.encode(["hi there"], capture="layer.*.ffn.intermediate")
    assert sorted(result.captured) == [f"layer.{i}.ffn.intermediate" for i in range(6)]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model("x", capture="layer1.*")                                       # the new names warn about nothing


# ----- the dtype a model was loaded with is the dtype it returns --------------------------------------------

def test_encode_returns_the_dtype_the_model_was_loaded_with(model_for):
    model64 = model_for("cpu", "float64")
    got = model64.encode(TEXTS)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, model64.encode(TEXTS, dtype="float64"))
    assert model64.encode(TEXTS, pooling="none")[0].dtype == np.float64
    assert model64.encode_words(["a b"])[0].vectors.dtype == np.float64
    assert model64.encode(TEXTS, capture="layer1.query").captured["layer1.query"][0].dtype == np.float64
    assert model64.encode(TEXTS, dtype="float32").dtype == np.float32            # an explicit dtype wins
    # float16 is a cast of the model's own result, not a float16 computation.
    np.testing.assert_array_equal(model64.encode(TEXTS, dtype="float16"), got.astype(np.float16))
    assert model_for("cpu").encode(TEXTS).dtype == np.float32


def test_float16_values_beyond_its_range_are_refused_not_returned_as_inf():
    """A hidden state over 65504 became inf in a float16 result without a word (extract already refused it)."""
    model = minibert.load(backend="cpu")
    model.weights["layers"][-1]["ffn_ln"]["g"] *= 1e5                 # the last layer's outputs reach ~1e6
    model.weights["layers"][-1]["ffn_out"]["w"] *= 1e5                # and its FFN output before the LayerNorm
    wide = model.encode(TEXTS[:2], normalize=False)
    assert np.abs(wide).max() > 65504 and np.isfinite(wide).all()
    with pytest.raises(InputError, match=r"values exceed float16's range \(\|x\| > 65504, the largest here"):
        model.encode(TEXTS[:2], normalize=False, dtype="float16")
    with pytest.raises(InputError, match="exceed float16's range"):
        model.encode(TEXTS[:2], normalize=False, dtype="float16", capture="layer6.ffn.output")
    with pytest.raises(InputError, match="exceed float16's range"):
        model.encode_words(["a cat"], dtype="float16")
    assert np.isfinite(model.encode(TEXTS[:2], dtype="float16")).all()      # unit vectors fit


def test_extract_writes_the_dtype_the_model_was_loaded_with(tmp_path, model_for):
    from minibert.corpus.extract import extract
    model64 = model_for("cpu", "float64")
    manifest = extract(model64, TEXTS, tmp_path / "a")
    loaded = minibert.load_embeddings(tmp_path / "a")
    assert manifest["dtype"] == "float64" and loaded.vectors.dtype == np.float64
    np.testing.assert_array_equal(loaded.vectors, model64.encode(TEXTS))
    assert extract(model64, TEXTS, tmp_path / "b", dtype="float32")["dtype"] == "float32"   # explicit wins


@pytest.mark.parametrize("dtype", ["bfloat16", "int8", "fp32", 5, np.int32])
def test_bad_dtypes_are_input_errors(model, dtype):
    with pytest.raises(InputError, match="dtype must be one of"):
        model.encode(["x"], dtype=dtype)
    with pytest.raises(InputError, match="dtype must be 'float32' or 'float64'"):
        minibert.load(dtype=dtype)


# ----- options checked before any work --------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"max_length": "10"}, "max_length must be an int"), ({"max_length": 1}, "max_length must be an int"),
    ({"max_length": True}, "max_length must be an int"), ({"max_length": 10.0}, "max_length must be an int"),
    ({"max_length": 513}, "exceeds the model's 512 positions"),
    ({"max_length": 64, "window": 128}, "max_length and window cannot be combined"),
    ({"capture": 5}, "capture must be a name or pattern"), ({"capture": [5]}, "capture names are strings"),
    ({"dtype": "bfloat16"}, "dtype must be one of"),
])
def test_options_are_refused_before_any_text_is_tokenized(model, monkeypatch, options, message):
    import minibert.embed.encode
    def tokenized_too_soon(*args, **kwargs):
        raise AssertionError("texts were tokenized before the options were checked")
    monkeypatch.setattr(minibert.embed.encode, "tokenize_texts", tokenized_too_soon)
    with pytest.raises(InputError, match=message):
        model.encode(["x"], **options)
    if "capture" not in options:
        with pytest.raises(InputError, match=message):
            model.encode_words([["x"]], **options)


# ----- byte-level BPE: pre-split words read as words, with the space before them -------------------------------

def test_pre_split_words_get_the_prefix_space_on_byte_level_bpe():
    from conftest import FIXTURES
    from minibert.embed.encode import tokenize_texts
    roberta = minibert.load(str(FIXTURES / "families" / "roberta"), backend="numpy")
    words = ["Hund", "und", "Katze"]
    with_space = tokenize_texts(roberta, [words], None, None, pretokenized=True)[0]
    tokens = [roberta.tokenizer.backend.id_to_token(int(i)) for i in with_space.ids[with_space.word_ids >= 0]]
    assert tokens[0].startswith("\u0120")                       # "ĠHund...": the word as it reads mid-sentence
    # Each word as it reads after a space: the same token sequence, and vectors, as the text " Hund und Katze".
    [split] = roberta.encode_words([words])
    [text] = roberta.encode_words(" " + " ".join(words))
    assert text.words == words and split.words == words
    np.testing.assert_array_equal(split.vectors, text.vectors)
    # prefix_space=False restores the old reading: the first word without its space, other vectors.
    bare = tokenize_texts(roberta, [words], None, None, pretokenized=True, prefix_space=False)[0]
    assert not roberta.tokenizer.backend.id_to_token(int(bare.ids[bare.word_ids >= 0][0])).startswith("\u0120")
    [old] = roberta.encode_words([words], prefix_space=False)
    assert np.abs(old.vectors - split.vectors).max() > 0.1
    # WordPiece has no byte-level pre-tokenizer: nothing changes there.
    bert = minibert.load(str(FIXTURES / "families" / "bert_cased"), backend="numpy")
    assert bert.tokenizer.word_prefix_backend is None
    np.testing.assert_array_equal(bert.encode_words([words])[0].vectors,
                                  bert.encode_words([words], prefix_space=False)[0].vectors)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return minibert.load(str(write_tiny(tmp_path_factory.mktemp("tiny"))), backend="cpu")


# ---------------------------------------------------------------------------------------------------
# Texts.

@pytest.mark.parametrize("texts, message", [
    (None, "texts must be a str or a list of str, found NoneType"),
    (b"bytes", "texts must be a str or a list of str, found bytes"),
    (42, "found int"),
    ({"a": 1}, "found dict"),
    ((t for t in ["a"]), "found generator"),
    (["ok", None], r"texts\[1\] is NoneType, not str; drop it or pass an empty string"),
    (["ok", b"raw"], r"texts\[1\] is bytes, not str; decode it first"),
    (["ok", 3.5], r"texts\[1\] is float, not str; convert it to text first"),
    ([["nested", "words"]], r"texts\[0\] is list, not str; pass pre-split words to encode_words"),
])
def test_texts_that_are_not_text(tiny_model, texts, message):
    with pytest.raises(InputError, match=message):
        tiny_model.encode(texts)
    if not isinstance(texts, type(t for t in ())):        # a generator is used up by the first call
        with pytest.raises(InputError, match=message):
            tiny_model.tokenize(texts)


def test_numpy_array_of_texts_is_a_list_of_texts(tiny_model):
    np.testing.assert_array_equal(tiny_model.encode(np.array(["the cat", "a dog"])),
                                  tiny_model.encode(["the cat", "a dog"]))


def test_empty_list_gives_empty_arrays_of_the_right_width_for_every_option(tiny_model):
    for layers in (-1, 0, [1, 2], [2, 0, 1], "all"):
        for combine in (None, "mean", "sum", "concat"):
            for pooling in ("cls", "mean", "max", "mean_sqrt_len", "none"):
                for dtype in ("float32", "float16"):
                    empty = tiny_model.encode([], layers=layers, combine=combine, pooling=pooling, dtype=dtype)
                    one = tiny_model.encode(["the cat"], layers=layers, combine=combine, pooling=pooling, dtype=dtype)
                    if pooling == "none":
                        assert empty == []
                    else:
                        assert empty.shape == (0,) + one.shape[1:] and empty.dtype == one.dtype, (layers, combine)
    assert tiny_model.encode_words([]) == []
    assert tiny_model.tokenize([]).input_ids.shape == (0, 0)
    out = tiny_model([])
    assert [h.shape for h in out.hidden_states] == [(0, 1, 16)] * 3 and out.pooler_output.shape == (0, 16)


def test_empty_whitespace_and_control_only_texts_are_cls_sep(model):
    texts = ["", " ", "\t\n  \r", "\u3000\u2003", "\x00\x01\x1f\x7f", "\ufffd"]
    batch = model.tokenize(texts)
    assert batch.tokens == [["[CLS]", "[SEP]"]] * len(texts)
    assert np.isfinite(model.encode(texts)).all()
    roberta = minibert.load(str(FAMILIES / "roberta"), backend="numpy")
    assert roberta.tokenize([""]).tokens == [["<s>", "</s>"]]


def test_control_characters_are_dropped_as_bert_normalizer_does(model):
    batch = model.tokenize(["the cat sat", "the\x00 cat\x07 s\x1bat\x7f"])
    np.testing.assert_array_equal(batch.input_ids[0], batch.input_ids[1])


def test_lone_surrogates_are_refused_naming_the_text(tiny_model, tmp_path):
    """transformers' fast tokenizer raises on them too; minibert says which text and how to repair it."""
    with pytest.raises(InputError, match=r"texts\[2\] holds a lone surrogate '\\ud800' at character 4"):
        tiny_model.tokenize(["a", "b", "the \ud800 cat"])
    with pytest.raises(InputError, match=r"text_pairs\[0\] holds a lone surrogate '\\udfff'"):
        tiny_model.tokenize(["a"], ["\udfff"])
    with pytest.raises(InputError, match=r"texts\[1\] holds a lone surrogate .*text.encode\('utf-8', 'replace'\)"):
        tiny_model.encode(["a", "b\udc80"])
    with pytest.raises(InputError, match=r"texts\[0\]\[1\] holds a lone surrogate"):
        tiny_model.encode_words([["ok", "b\ud83d"]])
    with pytest.raises(InputError, match=r"texts\[1\] holds a lone surrogate"):   # before anything is written
        extract_module.extract(tiny_model, ["a", "\ud800"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_million_character_text_is_truncated_with_a_warning_in_seconds(model):
    text = "The quick brown fox jumps over the lazy dog. " * 22223            # 1,000,035 characters
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vectors = model.encode([text, "short"])
    elapsed = time.perf_counter() - start
    assert vectors.shape == (2, 384) and np.isfinite(vectors).all()
    assert [str(w.message) for w in caught if "truncated" in str(w.message)] == [
        # 256: all-MiniLM-L6-v2's own max_seq_length (sentence_bert_config.json), as sentence-transformers cuts
        "minibert: 1 of 2 texts were longer than 256 tokens and were truncated; pass window= (and stride=) to "
        "cover long texts whole"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(vectors, model.encode([text[:3000], "short"]))   # the same first 512 tokens
    assert elapsed < 30, elapsed          # measured 2.6 s (the tokenizer reads all of it)


def test_a_million_character_text_is_covered_whole_with_windows(tiny_model):
    text = ("the cat sat on the mat " * 43479)[:1_000_000]
    start = time.perf_counter()
    tokens = tiny_model.encode([text], window=32, stride=8, pooling="none")[0]
    elapsed = time.perf_counter() - start
    full = tiny_model.tokenizer.backend
    full.no_truncation()
    assert len(tokens) == len(full.encode(text).ids) == 260873 and np.isfinite(tokens).all()
    assert elapsed < 60, elapsed          # measured 2.1 s (11,600 windows of 32 tokens)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80), min_size=1, max_size=4))
def test_any_valid_unicode_text_tokenizes_inside_the_vocabulary_and_encodes(model, texts):
    """Mixed scripts, emoji, combining marks, private use, controls: ids in range, offsets inside the text."""
    batch = model.tokenize(texts)
    assert batch.input_ids.max() < model.config.vocab_size and batch.input_ids.min() >= 0
    for text, offsets, tokens in zip(texts, batch.offsets, batch.tokens):
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        assert (offsets >= 0).all() and (offsets <= len(text)).all() and (offsets[:, 0] <= offsets[:, 1]).all()
    assert np.isfinite(model.encode(texts, batch_size=2)).all()


def test_mixed_scripts_and_emoji_give_the_same_vector_alone_and_in_a_batch(model):
    texts = ["北京是中国的首都 🍕 😀 ☃", "Ünïcödé ñ ß ﬁ Ⅻ", "مرحبا بالعالم", "नमस्ते दुनिया", "👩‍👩‍👧‍👦🏳️‍🌈", "𝕳𝖊𝖑𝖑𝖔"]
    together = model.encode(texts, normalize=True)
    alone = np.stack([model.encode([t], normalize=True)[0] for t in texts])
    assert np.abs(together - alone).max() <= 1e-6        # see the batch-invariance bound below


def test_pooling_registry_window_shares_are_the_poolings_weights():
    """Each linear pooling's window_share(n) is the weight it gives each of n tokens: pooling the identity
    (token t = unit vector t) returns exactly those weights. Non-linear poolings have none."""
    from minibert.embed.pooling import POOLINGS
    for n in (1, 2, 7):
        for p in POOLINGS.values():
            if p.window_share is None:
                assert p.name in ("max", "none")
                continue
            got = p.pool(np.eye(n)[None], np.ones((1, n)))[0]                   # [n]
            np.testing.assert_allclose(p.window_share(n), got, rtol=1e-15, atol=0)


def test_pooling_registry_feeds_cli_and_recipe():
    """The CLI's choices and the recipe's sentence-transformers names come from the registry."""
    from minibert import cli
    from minibert.cli.common import POOLINGS as CLI_POOLINGS
    from minibert.embed.pooling import POOLINGS
    from minibert.embed.recipe import POOLING_FLAGS, POOLING_NAMES
    sentence = [name for name, p in POOLINGS.items() if p.pool is not None]
    assert CLI_POOLINGS == sentence == sorted(set(POOLING_FLAGS.values()), key=sentence.index)
    assert set(POOLING_NAMES.values()) == set(sentence)
    embed = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["embed"]._actions
                 if a.dest == "pooling")
    assert embed.choices == sentence + ["none"]


# ---------------------------------------------------------------------------------------------------
# Packed batches (texts end to end, no padding row) against the padded forward.

def padded_twin(model):
    """The same model whose backend says it cannot pack: encode then runs the padded forward (as on cuda)."""
    import copy
    import dataclasses
    twin = copy.copy(model)
    twin.ops = dataclasses.replace(model.ops, packs=False)
    return twin


PACKED_TEXTS = TEXTS + ["the quick brown fox " * 30, "two words", "two more", "Zürich", "x y z"] * 3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_packed_encode_gives_the_padded_vectors(model_for, dtype):
    """Every pooling, layers='all', windows, pairs, token vectors and encode_words: float64 bit for bit, float32
    within the batch-dependence bound of test_model's default-model test, 1e-6 of the largest |value|."""
    model = model_for("cpu", dtype)
    padded = padded_twin(model)
    bound = {"float64": 0, "float32": 1e-6}[dtype]

    def same(a, b):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max(initial=0) <= bound * np.abs(b).max(initial=0)
    for pooling in ("cls", "mean", "max", "mean_sqrt_len", "weightedmean", "lasttoken"):
        same(model.encode(PACKED_TEXTS, pooling=pooling, layers="all", normalize=False, max_batch_tokens=64),
             padded.encode(PACKED_TEXTS, pooling=pooling, layers="all", normalize=False, batch_size=3))
    for options in ({"window": 16, "stride": 4, "pooling": "max"}, {"window": 16, "pooling": "mean"},
                    {"text_pairs": PACKED_TEXTS[::-1]}, {"prompt": "query: ", "pooling": "weightedmean"}):
        same(model.encode(PACKED_TEXTS, **options), padded.encode(PACKED_TEXTS, batch_size=4, **options))
    for a, b in zip(model.encode(PACKED_TEXTS, pooling="none", layers=[0, -1]),
                    padded.encode(PACKED_TEXTS, pooling="none", layers=[0, -1], batch_size=5), strict=True):
        same(a, b)
    for a, b in zip(model.encode_words(PACKED_TEXTS, subword="mean"),
                    padded.encode_words(PACKED_TEXTS, subword="mean", batch_size=2), strict=True):
        same(a.vectors, b.vectors)


def test_capture_runs_padded_batches_and_keeps_its_meaning(model_for):
    """A captured internal is the padded forward's: encode with capture= takes the padded path (float64: the
    vectors are the packed path's bits all the same)."""
    model = model_for("cpu", "float64")
    got = model.encode(PACKED_TEXTS, capture="layer2.attention.probs")
    np.testing.assert_array_equal(got.vectors, model.encode(PACKED_TEXTS))
    alone = model(PACKED_TEXTS[0], output_attentions=True)
    np.testing.assert_array_equal(got.captured["layer2.attention.probs"][0], alone.attentions[1][0])


@pytest.mark.parametrize("max_batch_tokens, batch_size, want", [
    (8, None, [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6)]),     # lengths 1 3 5 8 9 9: sums up to 8, a 9 alone
    (20, 2, [(0, 2), (2, 4), (4, 6)]),
    (100, None, [(0, 6)])])
def test_token_batches_hold_the_budget_and_the_text_count(max_batch_tokens, batch_size, want):
    from minibert.embed.encode import token_batches
    lengths = [1, 3, 5, 8, 9, 9]
    assert token_batches(lengths, max_batch_tokens, batch_size, packed=True) == want
    assert token_batches(lengths, 18, None, packed=False) == [(0, 3), (3, 5), (5, 6)]   # rows x longest


def test_encode_batches_by_tokens_unless_batch_size_caps_the_texts(model):
    texts = ["one two three four five six"] * 40                # 8 tokens each
    done = []
    model.encode(texts, progress=lambda n, total: done.append(n))
    assert done == [40]                                         # 320 tokens: one batch under the 2048 default
    done.clear()
    model.encode(texts, max_batch_tokens=100, progress=lambda n, total: done.append(n))
    assert done == [12, 24, 36, 40]
    done.clear()
    model.encode(texts, batch_size=32, progress=lambda n, total: done.append(n))
    assert done == [32, 40]


@pytest.mark.parametrize("option, value", [("max_batch_tokens", 0), ("max_batch_tokens", 2.5),
                                           ("max_batch_tokens", True), ("batch_size", 0)])
def test_bad_batch_limits_are_refused_before_tokenizing(model, option, value):
    with pytest.raises(InputError, match=f"{option} \\(the most (tokens|texts) per batch\\) must be a positive int"):
        model.encode(["a"], **{option: value})
