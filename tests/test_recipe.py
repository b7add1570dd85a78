"""The checkpoint's own embedding recipe (minibert/embed/recipe.py): sentence-transformers' modules reproduced.

Torch-free: the tiny st_* fixtures (saved by sentence-transformers itself, tests/fixtures/make_st.py) against
their goldens, the bundled model's recipe, the new poolings against loops, and bad recipes refused.
Under -m reference: every case rebuilt live, and the bundled model, against SentenceTransformer.encode.
"""

import json
import re
import shutil
import struct
import sys
import time

import numpy as np
import pytest
from conftest import FIXTURES
from tiny import write_tiny

import minibert
from minibert.errors import ConfigError, InputError, ModelFileError
from minibert.embed.pooling import pool_by_position
from minibert.embed.recipe import read_recipe

ST_CASES = sorted(p.name for p in FIXTURES.glob("st_*") if p.is_dir())
# Measured worst |minibert - sentence-transformers| (sentence-transformers 6.2.0): 3.1e-6 over the st_* goldens
# (st_weightedmean_two_dense, vectors of norm ~10; st_mpnet 1.8e-7), 1.5e-7 on the bundled model, numpy and
# cpu backends.
GOLDEN_TOL = 1e-5


def golden_texts():
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_st", FIXTURES / "make_st.py")
    make_st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_st)
    return make_st


MAKE_ST = golden_texts()


def encode_kwargs(key):
    """golden.npz keys -> encode keywords: "default", "prompt_name=query", "prompt=the dog: "."""
    if key == "default":
        return {}
    name, value = key.split("=", 1)
    return {name: value}


def test_every_case_has_a_committed_fixture():
    assert ST_CASES == sorted(MAKE_ST.CASES)


@pytest.mark.parametrize("case", ST_CASES)
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_st_fixture_goldens(case, backend):
    """No options: encode equals SentenceTransformer(dir).encode (float32), long texts included."""
    model = minibert.load(str(FIXTURES / case), backend=backend)
    with np.load(FIXTURES / case / "golden.npz") as golden:
        for key in golden.files:
            with pytest.warns(UserWarning, match="truncated") if model.recipe.max_length else nowarn():
                got = model.encode(MAKE_ST.TEXTS, batch_size=3, **encode_kwargs(key))
            assert got.shape == golden[key].shape, key
            assert np.abs(got - golden[key]).max() < GOLDEN_TOL, (key, np.abs(got - golden[key]).max())


class nowarn:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# Measured worst |minibert - sentence-transformers| on st_mpnet (sentence-transformers 6.2.0, float32 goldens):
# 1.8e-7 numpy float32, 1.6e-7 cpu float32, 1.3e-7 in float64 (the goldens' own float32 rounding); live, on
# the longer text list below, 1.8e-7 on both backends.
MPNET_TOL = 1e-6


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_st_mpnet_default_encode_is_all_mpnet_base_v2s_recipe(backend):
    """An MPNet saved by sentence-transformers as all-mpnet-base-v2 is (mean pooling, Normalize, max_seq_length
    below the positions): encode with no options gives SentenceTransformer.encode's vectors, the long text
    cut at max_seq_length as sentence-transformers cuts it."""
    model = minibert.load(str(FIXTURES / "st_mpnet"), backend=backend)
    r = model.recipe
    assert (model.config.model_type, r.pooling, r.normalize, r.dense, r.max_length) == ("mpnet", "mean", True, (), 20)
    assert model.tokenize(MAKE_ST.TEXTS, max_length=20).truncated.tolist() == [False] * 4 + [True, False, False]
    with np.load(FIXTURES / "st_mpnet" / "golden.npz") as golden:
        want = golden["default"]
    with pytest.warns(UserWarning, match="truncated"):
        got = model.encode(MAKE_ST.TEXTS, batch_size=3)
    assert got.dtype == np.float32 and got.shape == want.shape == (len(MAKE_ST.TEXTS), 32)
    assert np.abs(got - want).max() < MPNET_TOL, np.abs(got - want).max()
    # The golden is not any simpler vector: the CLS token, or the long text's uncut mean, is far from it.
    with pytest.warns(UserWarning, match="truncated"):
        assert np.abs(model.encode(MAKE_ST.TEXTS, pooling="cls") - want).max() > 0.1
    whole = model.encode([MAKE_ST.TEXTS[4]], window=20, stride=4)[0]
    assert np.abs(whole - want[4]).max() > 1e-3


def test_recipe_of_each_fixture_names_its_sources():
    r = read_recipe(FIXTURES / "st_legacy_layout_prompts")
    assert (r.kind, r.transformer_path, r.pooling, r.default_prompt_name) == ("sentence-transformers", "0_Transformer",
                                                                              "mean", "query")
    assert [(d.activation, d.weight.shape) for d in r.dense] == [("ReLU", (10, 16))]
    assert r.source_of("pooling") == "1_Pooling/config.json"
    assert r.source_of("prompts") == "config_sentence_transformers.json"
    r = read_recipe(FIXTURES / "st_mean_normalize")
    assert not (FIXTURES / "st_mean_normalize" / "2_Normalize").exists()      # listed without its folder
    assert r.normalize and r.max_length == 16       # sentence-transformers 6 keeps it in tokenizer_config.json
    assert r.source_of("max_length") == "tokenizer_config.json (model_max_length)"
    r = read_recipe(FIXTURES / "st_mean_sqrt_len_lower")                  # as sentence-transformers 2-5 wrote it
    assert r.do_lower_case and r.max_length == 24 and r.source_of("max_length") == "sentence_bert_config.json"
    assert (read_recipe(FIXTURES / "st_legacy_layout_prompts").source_of("max_length")
            == "0_Transformer/sentence_bert_config.json")
    legacy = minibert.load(str(FIXTURES / "st_legacy_layout_prompts"), backend="numpy")
    assert legacy.encoder_dir == FIXTURES / "st_legacy_layout_prompts" / "0_Transformer"
    assert not read_recipe(FIXTURES / "st_prompt_excluded").include_prompt


def test_inspect_prints_the_recipe_and_where_each_setting_came_from(capsys):
    from minibert.cli import main
    assert main(["inspect", str(FIXTURES / "st_legacy_layout_prompts")]) == 0
    out = capsys.readouterr().out
    assert "max_length                18  <- 0_Transformer/sentence_bert_config.json" in out
    assert "dense                     2_Dense 16->10 ReLU  <- modules.json" in out
    assert "include_prompt            True  <- sentence-transformers default" in out


def test_bundled_model_recipe_is_all_minilm_l6_v2s(model_for):
    model = model_for("cpu")
    r = model.recipe
    assert (r.pooling, r.max_length, r.normalize, r.dense) == ("mean", 256, True, ())
    long_text = "word " * 300                                   # 302 tokens: cut at 256, not 512
    with pytest.warns(UserWarning, match="longer than 256"):
        default = model.encode(["A man is playing a guitar.", long_text])
    with pytest.warns(UserWarning, match="longer than 256"):
        cut = model.encode([long_text], pooling="mean", normalize=False, max_length=256)[0]
    np.testing.assert_allclose(np.linalg.norm(default, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(default[1], cut / np.linalg.norm(cut), atol=1e-6)


def test_explicit_options_override_each_setting(model_for):
    model = model_for("cpu")
    text = ["A man is playing a guitar."]
    raw = model(text).last_hidden_state[0].astype(np.float64)         # [T, H]
    np.testing.assert_allclose(model.encode(text, normalize=False)[0], raw.mean(0), atol=1e-5)
    np.testing.assert_allclose(model.encode(text, pooling="cls")[0], raw[0] / np.linalg.norm(raw[0]), atol=1e-6)
    # The head belongs to the sentence vector: other layers come out raw unless asked.
    layers = model.encode(text, layers=[-2, -1])
    assert layers.shape == (1, 2, 384) and abs(np.linalg.norm(layers[0, 1]) - 1) > 0.1


def test_plain_transformers_checkpoint_keeps_minibert_defaults(tmp_path):
    model = minibert.load(str(write_tiny(tmp_path)), backend="numpy")
    assert model.recipe.kind == "transformers" and model.recipe.source_of("pooling") == "minibert default"
    text = ["the cat sat on the mat"]
    raw = model(text).last_hidden_state[0].astype(np.float64)
    np.testing.assert_allclose(model.encode(text)[0], raw.mean(0), atol=1e-6)


@pytest.mark.parametrize("pooling", ["weightedmean", "lasttoken"])
def test_position_poolings_against_loops(pooling):
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 5, 4))                                   # [B, T, H]
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    got = pool_by_position(hidden, mask, pooling)
    for b in range(3):
        kept = [t for t in range(5) if mask[b, t]]
        if pooling == "lasttoken":
            want = hidden[b, kept[-1]]
        else:
            want = sum((t + 1) * hidden[b, t] for t in kept) / sum(t + 1 for t in kept)
        np.testing.assert_allclose(got[b], want, atol=1e-12)


@pytest.mark.parametrize("pooling", ["weightedmean", "lasttoken"])
def test_position_poolings_over_windows_pool_the_merged_tokens(model_for, pooling):
    model = model_for("cpu")
    long_text = " ".join(["the cat sat on the mat"] * 60)
    tokens = model.encode([long_text], pooling="none", window=100, stride=20)[0].astype(np.float64)   # [n, H]
    pooled = model.encode([long_text], pooling=pooling, normalize=False, window=100, stride=20)[0]
    want = pool_by_position(tokens[None], np.ones((1, len(tokens))), pooling)[0]
    assert np.abs(pooled - want).max() < 1e-5


def test_prompt_name_unknown_and_prompt_type(model_for):
    model = minibert.load(str(FIXTURES / "st_legacy_layout_prompts"), backend="numpy")
    with pytest.raises(InputError, match="'passage' is not one of this model's prompts"):
        model.encode(["hello"], prompt_name="passage")
    with pytest.raises(InputError, match="prompt must be a string"):
        model.encode(["hello"], prompt=3)
    with pytest.raises(InputError, match="has none"):
        model_for("cpu").encode(["hello"], prompt_name="query")


def test_prompt_left_out_of_pooling_refuses_windows():
    model = minibert.load(str(FIXTURES / "st_prompt_excluded"), backend="numpy")
    with pytest.raises(InputError, match="include_prompt"):
        model.encode(["hello"], prompt_name="query", window=16)


def test_prompt_left_out_longer_than_max_seq_length():
    """sentence-transformers counts the prompt's tokens with the prompt cut to max_seq_length, so a prompt
    that fills the window leaves the text's last kept token ([SEP]) in the pooling. minibert counted the
    prompt uncut and masked every token: a zero vector, silently. (Live check: tests/test_recipe.py
    test_live_prompt_longer_than_max_seq_length: 1.9e-7 to sentence-transformers.) Measured 3.0e-8 here."""
    model = minibert.load(str(FIXTURES / "st_prompt_excluded"), backend="numpy")
    prompt = "hello world " * 40                                 # 82 tokens alone; max_seq_length 32
    texts = ["hi", "the cat sat"]
    got = model.encode(texts, prompt=prompt)                     # [2, 16]: mean over kept tokens, Normalize
    for text, vector in zip(texts, got):
        last = model.encode([text], prompt=prompt, pooling="none")[0][-1]                   # [16]
        np.testing.assert_allclose(vector, last / np.linalg.norm(last), rtol=0, atol=1e-6)


def copy_case(tmp_path, case="st_max_dense_normalize"):
    target = tmp_path / case
    shutil.copytree(FIXTURES / case, target)
    return target


def edit_json(path, change):
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def test_unknown_module_is_refused_with_its_name(tmp_path):
    d = copy_case(tmp_path)
    edit_json(d / "modules.json", lambda m: m[:2] + [{"idx": 2, "name": "2", "path": "2_LSTM",
                                                      "type": "sentence_transformers.models.LSTM"}])
    with pytest.raises(ConfigError, match="module 'LSTM' at '2_LSTM'"):
        minibert.load(str(d), backend="numpy")


def test_legacy_pooling_flags_are_read(tmp_path):
    d = copy_case(tmp_path)
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 16,
                                                            "pooling_mode_cls_token": False,
                                                            "pooling_mode_max_tokens": True,
                                                            "pooling_mode_mean_tokens": False}))
    assert read_recipe(d).pooling == "max"
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 16}))
    assert read_recipe(d).pooling == "mean"              # no flag set: sentence-transformers' default


def test_two_pooling_modes_are_refused(tmp_path):
    d = copy_case(tmp_path)
    edit_json(d / "1_Pooling" / "config.json", lambda c: {**c, "pooling_mode": ["cls", "mean"]})
    with pytest.raises(ConfigError, match="exactly one pooling mode"):
        minibert.load(str(d), backend="numpy")


def test_dense_without_safetensors_names_the_pickle(tmp_path):
    d = copy_case(tmp_path)
    (d / "2_Dense" / "model.safetensors").rename(d / "2_Dense" / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match="pytorch_model.bin"):
        minibert.load(str(d), backend="numpy")


def test_dense_shape_must_match_its_config(tmp_path):
    d = copy_case(tmp_path)
    edit_json(d / "2_Dense" / "config.json", lambda c: {**c, "out_features": 7})
    with pytest.raises(ModelFileError, match=r"linear.weight has shape \(12, 16\)"):
        minibert.load(str(d), backend="numpy")


@pytest.mark.parametrize("shape, message", [
    ([int("9" * 4300)] * 1000, r"shape \[<a number of 4,300 digits>, .*, \.\.\. 992 more\] has 1,000 dimensions"),
    ([2 ** 62, 2 ** 62, 0], r"shape \[4611686018427387904, 4611686018427387904, 0\] spans 2\*\*63 bytes or more"),
    ([-1], r"shape \[-1\] is not a list of ints from 0"),
])
def test_a_hostile_dense_header_is_refused_naming_the_tensor_like_the_encoders(tmp_path, shape, message):
    """The Dense weights are read by the encoder's checked reader: the safetensors library refused these headers
    without naming the tensor ("invalid JSON in header: number out of range", "overflow computing buffer size")."""
    d = copy_case(tmp_path)
    path = d / "2_Dense" / "model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    end = len(data) - 8 - length
    header["extra"] = {"dtype": "F32", "shape": shape, "data_offsets": [end, end]}
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=rf"{re.escape(str(path))}: tensor 'extra': {message}") as error:
        read_recipe(d)
    assert time.perf_counter() - start < 1 and len(str(error.value)) < 500
    with pytest.raises(ModelFileError, match=rf"{re.escape(str(path))}: tensor 'extra': {message}"):
        minibert.load(str(d), backend="numpy")


def test_dense_activation_must_be_known(tmp_path):
    d = copy_case(tmp_path)
    edit_json(d / "2_Dense" / "config.json", lambda c: {**c, "activation_function": "torch.nn.modules.activation.Mish"})
    with pytest.raises(ConfigError, match="Mish"):
        minibert.load(str(d), backend="numpy")


@pytest.mark.parametrize("text", ["[", "{}", "[{\"type\": 3}]", "[]"])
def test_bad_modules_json_is_a_config_error(tmp_path, text):
    d = copy_case(tmp_path)
    (d / "modules.json").write_text(text)
    with pytest.raises(ConfigError, match="modules.json"):
        minibert.load(str(d), backend="numpy")


def test_module_path_outside_the_directory_is_refused(tmp_path):
    d = copy_case(tmp_path)
    edit_json(d / "modules.json", lambda m: [{**m[0], "path": "../elsewhere"}] + m[1:])
    with pytest.raises(ConfigError, match="inside the model directory"):
        minibert.load(str(d), backend="numpy")


def test_bad_sentence_bert_config_values(tmp_path):
    d = copy_case(tmp_path)
    edit_json(d / "sentence_bert_config.json", lambda c: {**c, "max_seq_length": "long"})
    with pytest.raises(ConfigError, match="max_seq_length must be an int"):
        minibert.load(str(d), backend="numpy")


def test_default_prompt_name_must_name_a_prompt(tmp_path):
    d = copy_case(tmp_path, "st_legacy_layout_prompts")
    edit_json(d / "config_sentence_transformers.json", lambda c: {**c, "default_prompt_name": "nope"})
    with pytest.raises(ConfigError, match="default_prompt_name 'nope'"):
        minibert.load(str(d), backend="numpy")


# ---- sentence-transformers' conventions on encode ------------------------------------------------------

@pytest.fixture(scope="module")
def dense_model():
    return minibert.load(str(FIXTURES / "st_max_dense_normalize"), backend="numpy")


def test_a_single_string_gives_one_vector(dense_model):
    one = dense_model.encode("the cat sat")
    assert one.shape == (12,)
    np.testing.assert_array_equal(one, dense_model.encode(["the cat sat"])[0])
    assert dense_model.encode("the cat sat", pooling="none").shape == (5, 16)     # [CLS] the cat sat [SEP]


def test_sentence_transformers_spellings(dense_model):
    texts = ["the cat sat", "hello"]
    np.testing.assert_array_equal(dense_model.encode(texts, normalize_embeddings=False),
                                  dense_model.encode(texts, normalize=False))
    assert abs(np.linalg.norm(dense_model.encode(texts, normalize_embeddings=False)[0]) - 1) > 0.01
    as_list = dense_model.encode(texts, convert_to_numpy=False, show_progress_bar=False)
    assert isinstance(as_list, list) and [v.shape for v in as_list] == [(12,), (12,)]
    with pytest.raises(InputError, match="not both"):
        dense_model.encode(texts, normalize=True, normalize_embeddings=True)
    with pytest.raises(InputError, match="never torch tensors"):
        dense_model.encode(texts, convert_to_tensor=True)
    with pytest.raises(InputError, match="unexpected option.*normalise"):
        dense_model.encode(texts, normalise=True)


def test_sentence_embedding_dimension_and_max_seq_length(dense_model, model_for):
    assert dense_model.get_sentence_embedding_dimension() == 12 and dense_model.max_seq_length == 32
    assert model_for("cpu").get_sentence_embedding_dimension() == 384 and model_for("cpu").max_seq_length == 256


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_model_pickles_with_its_recipe(backend):
    """joblib, multiprocessing and scikit-learn's n_jobs pickle the model: the ops are rebuilt on load."""
    import pickle
    model = minibert.load(str(FIXTURES / "st_legacy_layout_prompts"), backend=backend)
    again = pickle.loads(pickle.dumps(model))
    assert again.ops.name == backend and dict(again.recipe.prompts) == dict(model.recipe.prompts)
    np.testing.assert_array_equal(again.encode(MAKE_ST.TEXTS[:3]), model.encode(MAKE_ST.TEXTS[:3]))


def test_batch_and_outputs_behave_like_transformers(dense_model):
    batch = dense_model.tokenize(["the cat sat", "hello"])
    assert list(batch.keys()) == ["input_ids", "attention_mask", "token_type_ids"] and batch.offsets is not None
    np.testing.assert_array_equal(batch["input_ids"], batch.input_ids)
    out = dense_model.forward(**batch)
    assert list(out.keys()) == ["last_hidden_state", "pooler_output", "hidden_states"]     # no attentions asked
    assert out[0] is out["last_hidden_state"] is out.last_hidden_state and len(out.to_tuple()) == 3
    with pytest.raises(KeyError, match="attentions"):
        out["attentions"]
    called = dense_model(**batch, output_attentions=True)
    assert "attentions" in called and np.array_equal(called.last_hidden_state, out.last_hidden_state)
    with pytest.raises(InputError, match="not both"):
        dense_model("hello", input_ids=batch.input_ids)


def test_load_passes_revision_token_and_cache_dir_to_the_hub(monkeypatch, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    asked = {}

    def snapshot_download(repo_id, **options):
        asked.update(options, repo_id=repo_id)
        return str(FIXTURES / "st_cls")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = minibert.load("someone/tiny-st", backend="numpy", revision="v1.0", token="hf_x", cache_dir=str(tmp_path))
    assert (asked["repo_id"], asked["revision"], asked["token"], asked["cache_dir"]) == ("someone/tiny-st", "v1.0",
                                                                                          "hf_x", str(tmp_path))
    assert "modules.json" in asked["allow_patterns"] and model.recipe.pooling == "cls"
    with pytest.raises(InputError, match="revision apply to hub ids"):
        minibert.load(str(FIXTURES / "st_cls"), revision="main")


def test_encode_text_pairs_is_forward_on_the_tokenized_pairs(dense_model):
    texts, pairs = ["the cat sat", "hello"], ["on the mat", "world, hello"]
    got = dense_model.encode(texts, text_pairs=pairs, pooling="cls", normalize=False)   # through the Dense head
    hidden = dense_model.forward(**dense_model.tokenize(texts, pairs)).last_hidden_state[:, 0].astype(np.float64)
    want = np.tanh(hidden @ dense_model.recipe.dense[0].weight.T.astype(np.float64) + dense_model.recipe.dense[0].bias)
    assert np.abs(got - want).max() < 1e-6
    with pytest.raises(InputError, match="one text per text"):
        dense_model.encode(texts, text_pairs=pairs[:1])


def test_text_pairs_are_lower_cased_with_the_texts():
    """do_lower_case applies to both texts of a pair, as sentence-transformers lower-cases every column; the
    second text was tokenized as given (1.23 from sentence-transformers on "A DOG Barked"; live check below:
    1.4e-6 now)."""
    model = minibert.load(str(FIXTURES / "st_mean_sqrt_len_lower"), backend="numpy")
    texts, pairs = ["The Cat SAT", "Hello World"], ["A DOG Barked", "The Cat"]
    np.testing.assert_array_equal(model.encode(texts, text_pairs=pairs),
                                  model.encode([t.lower() for t in texts], text_pairs=[p.lower() for p in pairs]))
    assert np.abs(model.encode(pairs) - model.encode([p.lower() for p in pairs])).max() == 0


@pytest.mark.reference
def test_live_text_pairs_lower_cased():
    st = pytest.importorskip("sentence_transformers")
    texts, pairs = ["The Cat SAT", "Hello World"], ["A DOG Barked", "The Cat"]
    want = st.SentenceTransformer(str(FIXTURES / "st_mean_sqrt_len_lower"), device="cpu").encode(
        [[t, p] for t, p in zip(texts, pairs)])
    got = minibert.load(str(FIXTURES / "st_mean_sqrt_len_lower"), backend="numpy").encode(texts, text_pairs=pairs)
    assert np.abs(got - want).max() < GOLDEN_TOL, np.abs(got - want).max()


def test_scikit_learn_pipeline_fits_predicts_and_saves_with_joblib(tmp_path):
    sklearn = pytest.importorskip("sklearn")
    import joblib
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    texts = ["the cat sat", "a cat ran", "the cats sat on the mat", "hello world", "hello", "world hello"]
    labels = [0, 0, 0, 1, 1, 1]
    encoder = minibert.SentenceEncoder(str(FIXTURES / "st_mean_normalize"), backend="numpy")
    pipe = Pipeline([("embed", encoder), ("clf", LogisticRegression(C=100.0))]).fit(texts, labels)
    assert list(pipe.predict(texts)) == labels
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    again = joblib.load(tmp_path / "pipe.joblib")
    np.testing.assert_array_equal(again.predict_proba(texts), pipe.predict_proba(texts))
    copy = clone(encoder).set_params(encode_options={"pooling": "cls"})
    assert copy.get_params()["model"] == encoder.model and copy.transform(texts[:2]).shape == (2, 16)
    assert "sklearn" in sys.modules and sklearn


def test_sentence_encoder_needs_no_scikit_learn():
    import subprocess
    code = ("import sys, minibert; e = minibert.SentenceEncoder(sys.argv[1], backend='numpy'); "
            "print(e.fit_transform(['hello']).shape, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(FIXTURES / "st_cls")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False" and "(1, 16)" in out.stdout


def test_sentence_encoder_refuses_a_bare_string():
    """transform("some text") would otherwise iterate the string: one vector per character, [len, D], no error
    (scikit-learn's own text vectorizers refuse a bare string the same way)."""
    encoder = minibert.SentenceEncoder(str(FIXTURES / "st_cls"), backend="numpy")
    for call in (encoder.transform, encoder.fit_transform):
        with pytest.raises(InputError, match="a list of texts"):
            call("hello world")
    assert encoder.transform(np.array(["hello world"])).shape == (1, 16)


def test_sentence_encoder_batch_size_in_encode_options():
    """batch_size is a parameter of its own; given again in encode_options it was a TypeError from inside
    transform ('got multiple values for keyword argument')."""
    encoder = minibert.SentenceEncoder(str(FIXTURES / "st_cls"), backend="numpy", encode_options={"batch_size": 2})
    with pytest.raises(InputError, match="batch_size"):
        encoder.fit(["hello"])


# ---- live: sentence-transformers itself -------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("case", sorted(MAKE_ST.CASES))
def test_live_against_sentence_transformers(tmp_path, case):
    st = pytest.importorskip("sentence_transformers")
    torch = pytest.importorskip("torch")
    reference = MAKE_ST.build(case, tmp_path / case, st, torch)
    want = MAKE_ST.goldens(reference, case)
    for backend in ("numpy", "cpu"):
        model = minibert.load(str(tmp_path / case), backend=backend)
        for key, expected in want.items():
            got = model.encode(MAKE_ST.TEXTS, batch_size=3, **encode_kwargs(key))
            assert np.abs(got - expected).max() < GOLDEN_TOL, (backend, key, np.abs(got - expected).max())


@pytest.mark.reference
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_live_st_mpnet_against_sentence_transformers(backend):
    """The committed st_mpnet read by SentenceTransformer(dir) itself, on texts beyond the goldens': accents,
    unknown pieces, an empty-ish text, and texts far past max_seq_length (20) and the 202 positions."""
    st = pytest.importorskip("sentence_transformers")
    texts = MAKE_ST.TEXTS + ["Café Müller's naïve résumé.", "  padded  ", "北京 🍕 hello",
                             " ".join(["the cat sat on the mat"] * 40), "a " * 300]
    want = st.SentenceTransformer(str(FIXTURES / "st_mpnet"), device="cpu").encode(texts, batch_size=4)
    with pytest.warns(UserWarning, match="truncated"):
        got = minibert.load(str(FIXTURES / "st_mpnet"), backend=backend).encode(texts, batch_size=4)
    assert np.abs(got - want).max() < MPNET_TOL, np.abs(got - want).max()


@pytest.mark.reference
def test_live_prompt_longer_than_max_seq_length():
    """include_prompt false and a prompt past max_seq_length: sentence-transformers' own numbers."""
    st = pytest.importorskip("sentence_transformers")
    texts, prompt = ["hi", "the cat sat", "x y z"], "hello world " * 40
    want = st.SentenceTransformer(str(FIXTURES / "st_prompt_excluded"), device="cpu").encode(texts, prompt=prompt)
    with pytest.warns(UserWarning, match="truncated"):
        got = minibert.load(str(FIXTURES / "st_prompt_excluded"), backend="numpy").encode(texts, prompt=prompt)
    assert np.abs(got - want).max() < GOLDEN_TOL, np.abs(got - want).max()


@pytest.mark.reference
def test_live_bundled_model_against_sentence_transformers(model_for):
    st = pytest.importorskip("sentence_transformers")
    model = model_for("cpu")
    texts = ["A man is playing a guitar.", "Café Müller's naïve résumé.", "北京是中国的首都 🍕",
             " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 25),   # > 256 tokens
             "  padded with spaces  ", "word " * 600]
    want = st.SentenceTransformer(model.source, device="cpu").encode(texts, batch_size=4)
    with pytest.warns(UserWarning, match="truncated"):
        got = model.encode(texts)
    assert np.abs(got - want).max() < GOLDEN_TOL, np.abs(got - want).max()


def test_encode_words_lower_cases_as_the_recipe_says():
    """A do_lower_case recipe lower-cases texts before tokenizing (sentence-transformers'), and encode does;
    encode_words did not, so capitals met a lower-case vocabulary as [UNK] pieces. Words and spans stay the
    user's; a character whose lower case is longer ("İ") is kept, so the spans stay right."""
    model = minibert.load(FIXTURES / "st_mean_sqrt_len_lower", backend="numpy")
    assert model.recipe.do_lower_case
    [mixed] = model.encode_words(["The Cat SAT"])
    [lower] = model.encode_words(["the cat sat"])
    assert mixed.words == ["The", "Cat", "SAT"] and mixed.spans.tolist() == [[0, 3], [4, 7], [8, 11]]
    np.testing.assert_array_equal(mixed.vectors, lower.vectors)
    [given] = model.encode_words([["The", "Cat", "SAT"]])
    np.testing.assert_array_equal(given.vectors, model.encode_words([["the", "cat", "sat"]])[0].vectors)
    [odd] = model.encode_words(["İstanbul Cat"])
    assert odd.words[-1] == "Cat" and odd.spans[-1].tolist() == [9, 12]


def test_max_seq_length_can_be_set_as_sentence_transformers_users_do():
    """model.max_seq_length = N: encode cuts there from then on, as SentenceTransformer's attribute does;
    an explicit max_length= still wins; out-of-range values are refused."""
    model = minibert.load(FIXTURES / "st_cls", backend="numpy")
    text = "the cat sat on the mat and then it ran far away over the hills " * 3
    before = model.encode(text)
    model.max_seq_length = 8
    assert model.max_seq_length == 8 and model.recipe.source_of("max_length").startswith("set on the model")
    with pytest.warns(UserWarning, match="truncated"):
        np.testing.assert_array_equal(model.encode(text), model.encode(text, max_length=8))
    assert not np.array_equal(model.encode(text), before)
    for bad in (1, 10**6, 2.5, True, "8"):
        with pytest.raises(InputError, match="max_seq_length must be"):
            model.max_seq_length = bad


def test_encode_settings_resolve_layers_and_max_length_once(tmp_path):
    """encode_settings resolves `layers` (to hidden-state indices, and whether the layer axis drops) and
    max_length (explicit > max_seq_length set on the model > the recipe's, cut to the positions > the
    tokenizer's limit) into one value that encode, applied_recipe and model.max_seq_length all read."""
    from minibert.embed.recipe import applied_recipe, encode_settings
    model = minibert.load(str(copy_case(tmp_path)))
    L = model.config.num_hidden_layers

    def settings(**options):
        values = {"pooling": None, "normalize": None, "max_length": None, "layers": -1, "prompt": None,
                  "prompt_name": None, **options}
        return encode_settings(model, **values)

    recipe_limit = min(model.recipe.max_length, model.config.max_tokens)
    assert (settings().layers, settings().single_layer, settings().max_length) == ([L], True, recipe_limit)
    assert settings().dense == model.recipe.dense and settings(layers=[-1]).dense == ()   # head: the sentence vector
    assert (settings(layers="all").layers, settings(layers="all").single_layer) == (list(range(L + 1)), False)
    assert settings(layers=[0, -2]).layers == [0, L - 1]
    with pytest.raises(InputError, match="does not exist"):
        settings(layers=L + 1)
    assert settings(max_length=5).max_length == 5
    model.max_seq_length = 7
    assert settings().max_length == 7 == model.max_seq_length
    assert applied_recipe(model, -1, None, None, None)["max_length"] == 7
    assert settings(max_length=5).max_length == 5
    plain = minibert.load(str(write_tiny(tmp_path / "plain")))
    assert plain.recipe.max_length is None
    assert encode_settings(plain, pooling=None, normalize=None, max_length=None, layers=-1, prompt=None,
                           prompt_name=None).max_length == plain.tokenizer.max_length == plain.max_seq_length


@pytest.mark.parametrize("case", ["st_mean_sqrt_len_lower", "st_legacy_layout_prompts"])
def test_token_level_extract_cuts_and_prompts_as_encode(tmp_path, case):
    """extract(pooling="none") lays out its token rows by the tokens encode will give: the recipe's
    max_seq_length (24 here, under the tokenizer's 32), lower-casing and default prompt. It counted the
    raw texts cut at the tokenizer's limit, and refused the run ("gave 24 token vectors where its
    tokenization has 32")."""
    from minibert.corpus.extract import extract
    model = minibert.load(str(FIXTURES / case))
    texts = ["Word " * 200, "Short Text"]
    with pytest.warns(UserWarning, match="truncated"):
        want = model.encode(texts, pooling="none")
    with pytest.warns(UserWarning, match="truncated"):
        extract(model, texts, tmp_path / "out", pooling="none")
    got = minibert.load_embeddings(tmp_path / "out")
    assert len(want[0]) == model.recipe.max_length < model.tokenizer.max_length
    for i, w in enumerate(want):
        np.testing.assert_array_equal(got.token_vectors(i), w)
