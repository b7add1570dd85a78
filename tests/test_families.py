"""Every supported family against goldens written by transformers (tests/fixtures/make_families.py), torch-free.

Fixtures: tiny random checkpoints in tests/fixtures/families/<name>/ with their real tokenizer files. Each
golden.npz holds a padded batch (a sentence pair among single sentences), every hidden state and attention
map, the pooler output where the model has one, and the ids and offsets of awkward strings.
"""

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minibert
from minibert import ConfigError, InputError, ModelFileError
from minibert.checkpoint.config import config_from_dict
from minibert.model import make_position_ids
from minibert.checkpoint.weights import parameter_counts, sinusoidal_positions

FAMILIES_DIR = Path(__file__).parent / "fixtures" / "families"
FAMILIES = ["bert_cased", "bert_chinese", "bert_multilingual", "roberta", "xlm_roberta", "distilbert",
            "distilbert_sinusoidal", "electra", "electra_generator", "albert", "albert_groups", "mpnet", "mpnet_mlm"]
# Families whose goldens were also computed in float64 (f64_*): held to 1e-10 there.
FLOAT64_FAMILIES = ["mpnet", "mpnet_mlm"]
# The padded batch of make_families.py: (text, pair or None) per row.
BATCH = [("Hello world!", None), ("The lazy dog sleeps in a café.", None),
         ("Where is Zürich?", "Not in 北京."), ("Привет, мир! 🍕", None)]
RUNS = [("numpy", "float32"), ("cpu", "float32"), ("numpy", "float64")]


@functools.lru_cache(maxsize=None)
def family_model(name, backend="numpy", dtype="float32"):
    return minibert.load(str(FAMILIES_DIR / name), backend=backend, dtype=dtype)


@functools.lru_cache(maxsize=None)
def family_golden(name):
    with np.load(FAMILIES_DIR / name / "golden.npz") as data:
        return {key: data[key] for key in data.files}


def copy_family(name, to: Path, leave_out=()):
    shutil.copytree(FAMILIES_DIR / name, to, ignore=shutil.ignore_patterns(*leave_out))
    return to


def rewrite_config(directory: Path, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del config[key]
    (directory / "config.json").write_text(json.dumps(config))


def max_differences(out, g, prefix=""):
    hidden = max(np.abs(h - g[f"{prefix}hidden_state_{i}"]).max() for i, h in enumerate(out.hidden_states))
    attention = max(np.abs(a - g[f"{prefix}attention_{i}"]).max() for i, a in enumerate(out.attentions))
    pooler = np.abs(out.pooler_output - g[f"{prefix}pooler_output"]).max() if f"{prefix}pooler_output" in g else 0.0
    return hidden, attention, pooler


# --- numerics: every layer of every family ---

@pytest.mark.parametrize("backend, dtype", RUNS)
@pytest.mark.parametrize("name", FAMILIES)
def test_every_hidden_state_attention_and_pooler_within_1e_4(name, backend, dtype):
    """float32 on both backends, and float64 NumPy against the float32 goldens (so also 1e-4)."""
    g, model = family_golden(name), family_model(name, backend, dtype)
    out = model.forward(g["input_ids"], g["attention_mask"], g.get("token_type_ids"), output_attentions=True)
    L = model.config.num_hidden_layers
    assert len(out.hidden_states) == L + 1 == len([k for k in g if k.startswith("hidden_state_")])
    assert len(out.attentions) == L
    assert out.last_hidden_state.dtype == np.dtype(dtype)
    assert (out.pooler_output is None) == ("pooler_output" not in g)
    hidden, attention, pooler = max_differences(out, g)
    assert hidden < 1e-4 and attention < 1e-4 and pooler < 1e-4, (hidden, attention, pooler)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("name", FLOAT64_FAMILIES)
def test_float64_within_1e_10_of_transformers_float64(name, backend):
    g, model = family_golden(name), family_model(name, backend, "float64")
    out = model.forward(g["input_ids"], g["attention_mask"], output_attentions=True)
    assert out.last_hidden_state.dtype == np.float64
    hidden, attention, pooler = max_differences(out, g, "f64_")
    assert hidden < 1e-10 and attention < 1e-10 and pooler < 1e-10, (hidden, attention, pooler)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("name", FAMILIES)
def test_unfused_reference_layer_is_the_fused_layer_in_float64(name, backend):
    """kernels/reference_layers.py encoder_layer_forward (the formula, nothing fused) against model.py's fused
    layers, every layer and internal of every family, on the golden batch with its padding: float64, within 1e-12."""
    from minibert.kernels.reference_layers import encoder_layer_forward
    from minibert.model import INTERNALS, additive_mask
    g, model = family_golden(name), family_model(name, backend, "float64")
    out = model.forward(g["input_ids"], g["attention_mask"], g.get("token_type_ids"), capture="*")
    bias_weights = model.weights.get("relative_attention_bias")
    T = g["input_ids"].shape[1]
    bias = None if bias_weights is None else model.ops.relative_position_bias(
        bias_weights["table"], T, model.config.relative_attention_num_buckets, 128)     # [1, NH, T, T]
    mask_bias = additive_mask(g["attention_mask"], np.float64)                          # [B, T]
    for i, layer in enumerate(model.weights["layers"], start=1):
        ours, inside = encoder_layer_forward(out.hidden_states[i - 1], mask_bias, bias, **layer,
                                             num_heads=model.config.num_attention_heads,
                                             activation=model.config.hidden_act, eps=model.config.layer_norm_eps)
        np.testing.assert_allclose(ours, out.hidden_states[i], atol=1e-12, rtol=0)
        for internal in INTERNALS:
            np.testing.assert_allclose(inside[internal], out.captured[f"layer{i}.{internal}"], atol=1e-12, rtol=0,
                                       err_msg=f"layer{i}.{internal}")


@pytest.mark.parametrize("name", FAMILIES)
def test_packed_layers_are_the_padded_layers_in_float64_and_close_in_float32(name):
    """Texts laid end to end (iter_packed_layers) against the padded forward on the golden batch, every family:
    MPNet's relative position bias, ALBERT's and ELECTRA's embedding projections, RoBERTa's positions.
    float64 on cpu: bit for bit; float32: within the 1e-4 the goldens are held to (measured: below 1e-5)."""
    g = family_golden(name)
    keep = g["attention_mask"].astype(bool)
    for dtype in ("float64", "float32"):
        model = family_model(name, "cpu", dtype)
        args = (g["input_ids"], g["attention_mask"], g.get("token_type_ids"))
        for a, b in zip(model.iter_layers(*args), model.iter_packed_layers(*args), strict=True):
            if dtype == "float64":
                np.testing.assert_array_equal(a.hidden_state[keep], b.hidden_state[keep], err_msg=f"{a.index}")
            else:
                assert np.abs(a.hidden_state[keep] - b.hidden_state[keep]).max() < 1e-5, a.index


# --- tokenization: awkward strings and the batch, ids and offsets ---

@pytest.mark.parametrize("name", FAMILIES)
def test_tricky_strings_tokenize_to_the_golden_ids_and_offsets(name):
    g, tokenizer = family_golden(name), family_model(name).tokenizer
    for i, text in enumerate(g["tricky_texts"].tolist()):
        want_ids, want_offsets = g[f"tok_{i}_ids"].tolist(), g[f"tok_{i}_offsets"].tolist()
        if len(want_ids) <= tokenizer.max_length:
            batch = tokenizer(text)
            assert batch.input_ids[0].tolist() == want_ids, text
            assert batch.offsets[0].tolist() == want_offsets, text
            assert not batch.truncated[0]
        else:   # longer than the model takes: the untruncated pipeline agrees, and truncation keeps the end token
            tokenizer.backend.no_truncation()         # each tokenizer call sets its own truncation again
            full = tokenizer.backend.encode(text)
            assert full.ids == want_ids and [list(o) for o in full.offsets] == want_offsets, text
            batch = tokenizer(text)
            n = tokenizer.max_length
            assert batch.input_ids[0].tolist() == want_ids[:n - 1] + want_ids[-1:]
            assert batch.truncated[0]


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_tokenizes_to_the_golden_ids_mask_and_types(name):
    g, model = family_golden(name), family_model(name)
    for row, (text, pair) in enumerate(BATCH):
        batch = model.tokenize([text], None if pair is None else [pair])
        n = int(g["attention_mask"][row].sum())
        assert batch.input_ids[0].tolist() == g["input_ids"][row, :n].tolist(), row
        want_types = g["token_type_ids"][row, :n] if "token_type_ids" in g else np.zeros(n)   # one segment: zeros
        assert batch.token_type_ids[0].tolist() == want_types.tolist(), row
    singles = [text for text, pair in BATCH if pair is None]
    batch = model.tokenize(singles)
    rows = [row for row, (_, pair) in enumerate(BATCH) if pair is None]
    np.testing.assert_array_equal(batch.attention_mask, g["attention_mask"][rows, :batch.input_ids.shape[1]])
    np.testing.assert_array_equal(batch.input_ids, g["input_ids"][rows, :batch.input_ids.shape[1]])


def test_roberta_vocab_json_and_merges_txt_without_tokenizer_json(tmp_path):
    directory = copy_family("roberta", tmp_path / "roberta", leave_out=["tokenizer.json"])
    model, g = minibert.load(str(directory), backend="numpy"), family_golden("roberta")
    assert "merges.txt" in model.tokenizer.kind
    for i, text in enumerate(g["tricky_texts"].tolist()):   # includes "<mask>", which swallows the space before it
        e = model.tokenizer.backend.encode(text)
        assert e.ids == g[f"tok_{i}_ids"].tolist(), text
        assert [list(o) for o in e.offsets] == g[f"tok_{i}_offsets"].tolist(), text
    for row, (text, pair) in enumerate(BATCH):
        batch = model.tokenize([text], None if pair is None else [pair])
        n = int(g["attention_mask"][row].sum())
        assert batch.input_ids[0].tolist() == g["input_ids"][row, :n].tolist()
    reference = family_model("roberta").tokenize(["Where is Zürich?"], ["Not in 北京."])
    fallback = model.tokenize(["Where is Zürich?"], ["Not in 北京."])
    assert [o.tolist() for o in fallback.offsets] == [o.tolist() for o in reference.offsets]


# --- positions ---

def test_skip_padding_positions_follow_fairseq():
    config = family_model("roberta").config          # pad_token_id 1
    ids = np.array([[0, 5, 6, 2, 1, 1],
                    [0, 5, 6, 7, 8, 2]])
    np.testing.assert_array_equal(make_position_ids(ids, config), [[2, 3, 4, 5, 1, 1], [2, 3, 4, 5, 6, 7]])
    np.testing.assert_array_equal(make_position_ids(ids, family_model("bert_cased").config),
                                  [[0, 1, 2, 3, 4, 5]] * 2)


def test_padding_does_not_change_roberta_outputs():
    """Real tokens' positions do not depend on padding: a row alone equals the same row padded."""
    model = family_model("roberta")
    alone = model(["Hello world!"])
    padded = model(["Hello world!", "The lazy dog sleeps in a café, says the quick brown fox."])
    n = alone.last_hidden_state.shape[1]
    assert padded.last_hidden_state.shape[1] > n
    assert np.abs(alone.last_hidden_state[0] - padded.last_hidden_state[0, :n]).max() < 1e-5


def test_roberta_rows_cannot_run_past_the_position_table(tmp_path):
    model = family_model("roberta")                  # 66 position rows, positions start at 2: 64 tokens
    assert model.config.max_tokens == 64 == model.tokenizer.max_length
    ids = np.full((1, 65), 5)
    with pytest.raises(InputError, match="position 66, past the model's 66 position rows"):
        model.forward(ids)
    directory = copy_family("roberta", tmp_path / "roberta")
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    del settings["model_max_length"]                 # without a limit the tokenizer falls back to the table
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    assert minibert.load(str(directory), backend="numpy").tokenizer.max_length == 64


# --- the weights dict: switches as data ---

def test_albert_layers_share_one_dict_per_group():
    layers = family_model("albert").weights["layers"]
    assert len(layers) == 3 and layers[0] is layers[1] is layers[2]
    layers = family_model("albert_groups").weights["layers"]     # 4 layers, 2 groups: int(i / 2)
    assert layers[0] is layers[1] and layers[2] is layers[3] and layers[0] is not layers[2]
    counts = parameter_counts(family_model("albert_groups").weights)
    assert "layer1-2 (shared)" in counts and "layer3-4 (shared)" in counts      # layers count from 1


@pytest.mark.parametrize("name", FAMILIES)
def test_parameter_counts_cover_each_checkpoint_tensor_once(name):
    """Shared layers count once; task heads are left out; DistilBERT's zero token-type row is the one extra."""
    weights = family_model(name).weights
    tensors = load_file(str(FAMILIES_DIR / name / "model.safetensors"))
    heads = ("cls.", "generator_", "lm_head.")
    stored = sum(t.size for key, t in tensors.items() if not key.startswith(heads))
    extra = 0 if family_model(name).config.token_type_embeddings else weights["embeddings"]["token_type"].size
    assert sum(parameter_counts(weights).values()) == stored + extra


def test_family_switches_in_the_weights_dict():
    E = {name: family_model(name).weights for name in FAMILIES}
    assert all(E[n]["embedding_projection"] is None for n in FAMILIES if not n.startswith(("electra", "albert")))
    assert E["electra"]["embedding_projection"]["w"].shape == (16, 32)             # E -> H
    assert E["electra_generator"]["embedding_projection"]["w"].shape == (32, 16)   # wider embeddings
    assert E["albert"]["embedding_projection"]["w"].shape == (16, 32)
    token_type = E["distilbert"]["embeddings"]["token_type"]
    assert token_type.shape == (1, 32) and not token_type.any()
    assert family_model("distilbert").config.token_type_embeddings is False
    assert family_model("xlm_roberta").config.position_rule == "skip_padding"
    assert all(E[n]["relative_attention_bias"] is None for n in FAMILIES if not n.startswith("mpnet"))
    assert E["mpnet"]["relative_attention_bias"]["table"].shape == (32, 4)      # [buckets, NH]
    token_type = E["mpnet_mlm"]["embeddings"]["token_type"]
    assert token_type.shape == (1, 32) and not token_type.any()


def test_distilbert_sinusoidal_table_is_generated_when_left_out(tmp_path):
    stored = load_file(str(FAMILIES_DIR / "distilbert_sinusoidal" / "model.safetensors"))
    table = stored.pop("embeddings.position_embeddings.weight")
    assert np.abs(sinusoidal_positions(*table.shape) - table).max() < 1e-6
    directory = copy_family("distilbert_sinusoidal", tmp_path / "d", leave_out=["model.safetensors"])
    save_file(stored, str(directory / "model.safetensors"))
    g = family_golden("distilbert_sinusoidal")
    out = minibert.load(str(directory), backend="numpy").forward(g["input_ids"], g["attention_mask"])
    assert np.abs(out.last_hidden_state - g[f"hidden_state_{len(out.hidden_states) - 1}"]).max() < 1e-4
    rewrite_config(directory, sinusoidal_pos_embds=False)      # learned table: its absence is an error
    with pytest.raises(ModelFileError, match="embeddings.position_embeddings.weight"):
        minibert.load(str(directory))


def test_every_tensor_is_accounted_for(tmp_path):
    directory = copy_family("albert", tmp_path / "albert", leave_out=["model.safetensors"])
    tensors = load_file(str(FAMILIES_DIR / "albert" / "model.safetensors"))
    prefix = "encoder.albert_layer_groups.0.albert_layers.0."
    extra = {**tensors, **{k.replace("groups.0.", "groups.1."): v for k, v in tensors.items() if k.startswith(prefix)}}
    save_file(extra, str(directory / "model.safetensors"))
    with pytest.raises(ModelFileError, match="unexpected tensor.*albert_layer_groups.1"):
        minibert.load(str(directory))
    rewrite_config(directory, num_hidden_groups=2, num_hidden_layers=4)   # now the second group is used
    layers = minibert.load(str(directory), backend="numpy").weights["layers"]
    assert layers[1] is layers[0] and layers[2] is not layers[0]
    bad = {k: v for k, v in tensors.items() if not k.startswith("encoder.embedding_hidden_mapping_in.")}
    save_file(bad, str(directory / "model.safetensors"))
    rewrite_config(directory, num_hidden_groups=1, num_hidden_layers=3)
    with pytest.raises(ModelFileError, match="embedding_hidden_mapping_in.weight.*missing"):
        minibert.load(str(directory))
    bad = dict(tensors, **{"encoder.embedding_hidden_mapping_in.weight": np.zeros((32, 8), np.float32)})
    save_file(bad, str(directory / "model.safetensors"))
    with pytest.raises(ModelFileError, match="embedding_hidden_mapping_in.weight has shape \\(32, 8\\)"):
        minibert.load(str(directory))


def test_generator_and_mlm_heads_are_ignored_but_prefixes_are_stripped():
    assert family_model("electra_generator").config.hidden_size == 16
    assert family_model("bert_chinese").weights["pooler"] is None


# --- config: detection, normalisation, unsupported families ---

def fixture_config(name):
    return json.loads((FAMILIES_DIR / name / "config.json").read_text())


def test_distilbert_keys_are_normalised_into_the_common_fields():
    c = family_model("distilbert_sinusoidal").config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.hidden_act) == \
        (32, 2, 4, 64, "gelu")
    assert c.sinusoidal_positions and c.layer_norm_eps == 1e-12 and c.type_vocab_size == 1
    raw = fixture_config("distilbert")
    del raw["dim"]
    with pytest.raises(ConfigError, match="missing key\\(s\\) dim for model_type 'distilbert'"):
        config_from_dict(raw)


def test_family_detected_from_architectures_when_model_type_is_absent():
    raw = fixture_config("electra")
    del raw["model_type"]
    assert config_from_dict(raw).model_type == "electra"
    raw = dict(fixture_config("roberta"), architectures=["BertModel"])
    with pytest.raises(ConfigError, match="model_type 'roberta' disagrees with architectures"):
        config_from_dict(raw)


SUPPORTED = "supported families: bert, roberta, xlm-roberta, distilbert, electra, albert, mpnet"


@pytest.mark.parametrize("name, change, message", [
    ("bert_cased", {"model_type": "xlnet", "architectures": ["XLNetModel"]},
     f"model_type 'xlnet' is not supported; {SUPPORTED} \\(XLNet is a permutation language model"),
    ("bert_cased", {"model_type": "deberta-v2", "architectures": ["DebertaV2Model"]},
     f"model_type 'deberta-v2' is not supported; {SUPPORTED} \\(disentangled attention"),
    ("bert_cased", {"model_type": None, "architectures": ["XLNetLMHeadModel"]},
     f"model_type 'xlnet' is not supported; {SUPPORTED}"),
    ("bert_cased", {"model_type": None, "architectures": None}, f"model_type None is not supported; {SUPPORTED}"),
    ("roberta", {"position_embedding_type": "relative_key_query"},
     "position_embedding_type='relative_key_query' is not supported "
     ".*absolute-position encoder-only families: bert, roberta"),
    ("electra", {"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key' is not supported"),
    ("albert", {"inner_group_num": 2}, "inner_group_num=2 is not supported"),
    ("albert", {"num_hidden_groups": 4}, "num_hidden_groups must be between 1 and num_hidden_layers \\(3\\)"),
    ("bert_cased", {"embedding_size": 16}, "unknown key\\(s\\) embedding_size"),
    ("distilbert", {"hidden_size": 32}, "both 'dim' and 'hidden_size' are set"),
    ("mpnet", {"relative_attention_num_buckets": 64}, "relative_attention_num_buckets must be 32, found 64"),
    ("bert_cased", {"relative_attention_num_buckets": 32}, "unknown key\\(s\\) relative_attention_num_buckets"),
])
def test_unsupported_configs_raise_config_error(tmp_path, name, change, message):
    directory = copy_family(name, tmp_path / name)
    rewrite_config(directory, **change)
    with pytest.raises(ConfigError, match=message):
        minibert.load(str(directory))


@pytest.mark.parametrize("name", ["bert_cased", "bert_chinese", "bert_multilingual", "distilbert", "electra"])
def test_wordpiece_from_vocab_txt_without_tokenizer_json(tmp_path, name):
    """Cased, Chinese-splitting and accent-keeping WordPiece rebuilt from vocab.txt + tokenizer_config.json."""
    directory = copy_family(name, tmp_path / name, leave_out=["tokenizer.json"])
    tokenizer, g = minibert.load(str(directory), backend="numpy").tokenizer, family_golden(name)
    assert "vocab.txt" in tokenizer.kind
    for i, text in enumerate(g["tricky_texts"].tolist()):
        batch = tokenizer(text)
        assert batch.input_ids[0].tolist() == g[f"tok_{i}_ids"].tolist(), text
        assert batch.offsets[0].tolist() == g[f"tok_{i}_offsets"].tolist(), text


# --- MPNet: the relative position bias ---

def test_mpnet_buckets_are_transformers_buckets_for_every_distance():
    """Both signs, the exact range (0..7), the log-spaced buckets and the cap past 128, as transformers
    computes them (recorded by make_families.py for distances up to 599)."""
    from minibert.kernels.reference import relative_position_buckets
    g = family_golden("mpnet")
    span = (len(g["relative_distances"]) + 1) // 2
    buckets = relative_position_buckets(span, 32, 128)            # [T, T]: key - query = j - i
    ours = np.concatenate([buckets[span - 1], buckets[0, 1:]])     # distances -(span-1) .. span-1
    assert g["relative_distances"][0] == -(span - 1)
    np.testing.assert_array_equal(ours, g["relative_buckets"])
    assert set(ours.tolist()) == set(range(32)) - {16}    # 16 would be a key after the query at distance 0


@pytest.mark.parametrize("backend, dtype, tolerance", [("numpy", "float32", 1e-4), ("cpu", "float32", 1e-4),
                                                       ("numpy", "float64", 1e-10), ("cpu", "float64", 1e-10)])
def test_mpnet_long_row_reaches_every_bucket(backend, dtype, tolerance):
    """200 tokens: distances past max_distance 128, which the short padded batch never reaches."""
    g, model = family_golden("mpnet"), family_model("mpnet", backend, dtype)
    out = model.forward(g["long_input_ids"])
    prefix = "f64_" if dtype == "float64" else ""
    worst = max(np.abs(h - g[f"{prefix}long_hidden_state_{i}"]).max() for i, h in enumerate(out.hidden_states))
    assert worst < tolerance, worst


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_mpnet_without_its_bias_would_be_far_off(backend):
    """The bias carries weight in the fixture: the same model with the table left out misses by far."""
    g, model = family_golden("mpnet"), family_model("mpnet", backend, "float64")
    weights = dict(model.weights, relative_attention_bias=None)
    from minibert.model import encoder, make_position_ids
    out = encoder(g["input_ids"], g["attention_mask"], np.zeros_like(g["input_ids"]),
                  make_position_ids(g["input_ids"], model.config), weights, model.config, model.ops,
                  dtype=np.float64, output_attentions=True)
    hidden, attention, _ = max_differences(out, g, "f64_")
    assert hidden > 1e-2 and attention > 1e-2, (hidden, attention)


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 1e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize("bias_rows", [1, 3])
def test_cpu_attention_adds_a_position_bias_as_the_reference_does(dtype, tolerance, bias_rows):
    """[1, NH, T, T] (MPNet's, shared by the batch) or one per text, with padding; None leaves it out."""
    from minibert.backends import cpu as cpu_backend, reference_backend
    rng = np.random.default_rng(11)
    B, T, NH, HS = 3, 13, 4, 8
    fused = rng.standard_normal((B, T, 3 * NH * HS)).astype(dtype)
    q, k, v = np.split(fused, 3, axis=-1)
    mask = np.ones((B, T))
    mask[1, 7:] = 0
    mask_bias = ((1 - mask) * np.finfo(dtype).min).astype(dtype)
    position_bias = rng.standard_normal((bias_rows, NH, T, T)).astype(dtype)
    context, probs = cpu_backend.attention(q, k, v, mask_bias, NH, True, position_bias=position_bias)
    want_context, want_probs = reference_backend.attention(q, k, v, mask_bias, NH, True, position_bias=position_bias)
    assert np.abs(probs - want_probs).max() < tolerance and np.abs(context - want_context).max() < 10 * tolerance
    assert (probs[1, :, :, 7:] == 0).all()
    _, plain = reference_backend.attention(q, k, v, mask_bias, NH, True)
    assert np.abs(probs - plain).max() > 0.1


def test_mpnet_positions_skip_padding_from_index_1(tmp_path):
    """transformers' MPNet numbers positions from padding index 1 whatever pad_token_id says."""
    ids = np.array([[0, 5, 6, 2, 1, 1]])
    np.testing.assert_array_equal(make_position_ids(ids, family_model("mpnet").config), [[2, 3, 4, 5, 1, 1]])
    directory = copy_family("mpnet_mlm", tmp_path / "mpnet")
    rewrite_config(directory, pad_token_id=0)
    assert minibert.load(str(directory), backend="numpy").config.pad_token_id == 1


def test_mpnet_bias_table_missing_or_misshapen(tmp_path):
    directory = copy_family("mpnet_mlm", tmp_path / "mpnet", leave_out=["model.safetensors"])
    tensors = load_file(str(FAMILIES_DIR / "mpnet_mlm" / "model.safetensors"))
    name = "mpnet.encoder.relative_attention_bias.weight"
    save_file({k: v for k, v in tensors.items() if k != name}, str(directory / "model.safetensors"))
    with pytest.raises(ModelFileError, match="encoder.relative_attention_bias.weight.*missing"):
        minibert.load(str(directory))
    save_file(dict(tensors, **{name: tensors[name][:, :3].copy()}), str(directory / "model.safetensors"))
    with pytest.raises(ModelFileError, match="relative_attention_bias.weight has shape \\(32, 3\\)"):
        minibert.load(str(directory))


def test_mpnet_vocab_txt_alone_joins_pairs_as_its_tokenizer_json_does(tmp_path):
    """An MPNet checkpoint with only vocab.txt: pairs are <s> A </s></s> B </s>, as with its tokenizer.json."""
    shutil.copytree(FAMILIES_DIR / "mpnet", tmp_path / "mpnet")
    (tmp_path / "mpnet" / "tokenizer.json").unlink()
    full, vocab_only = family_model("mpnet", "numpy", "float32"), minibert.load(tmp_path / "mpnet", backend="numpy")
    texts, pairs = ["hello world", "a cat"], ["the dog ran", "sat"]
    want, got = full.tokenize(texts, pairs), vocab_only.tokenize(texts, pairs)
    np.testing.assert_array_equal(got.input_ids, want.input_ids)
    np.testing.assert_array_equal(got.token_type_ids, want.token_type_ids)


def test_family_records_are_complete_and_consistent():
    """families.py's records: every supported family has one, its architecture stem reads back as its
    model_type, its layer table names each layer parameter once, its head names the parts its head has, and
    parity hooks the same internals in every family."""
    from minibert.checkpoint.config import (ARCHITECTURE_FAMILIES, BERT_KEYS, SUPPORTED_FAMILIES, SWITCH_FIELDS,
                                 detect_family)
    from minibert.checkpoint.families import FAMILIES
    from minibert.checkpoint.weights import expected_shapes
    layer_keys = {"qkv.w", "qkv.b", "attn_out.w", "attn_out.b", "attn_ln.g", "attn_ln.b", "ffn_in.w", "ffn_in.b",
                  "ffn_out.w", "ffn_out.b", "ffn_ln.g", "ffn_ln.b"}
    assert SUPPORTED_FAMILIES == tuple(FAMILIES)
    config = config_from_dict(json.loads((FAMILIES_DIR / "bert_cased" / "config.json").read_text()))
    for model_type, family in FAMILIES.items():
        assert family.model_type == model_type and ARCHITECTURE_FAMILIES[family.architecture] == model_type
        assert detect_family({"architectures": [family.architecture + "ForMaskedLM"]}, "here") == model_type
        assert [ours for ours, _, _ in family.names.layer] == sorted(layer_keys, key=[
            ours for ours, _, _ in FAMILIES["bert"].names.layer].index)
        assert all(ours in expected_shapes(config) for table in (family.names.embeddings, family.names.projection,
                   family.names.pooler, family.names.relative_bias) for ours, _, _ in table)
        parts = set(family.head_names["sequence"])
        assert parts == ({"dense", "out"} if family.sequence_head.dense_activation else {"out"})
        assert set(family.parity_modules) == set(FAMILIES["bert"].parity_modules)
        assert set(family.keys) <= set(SWITCH_FIELDS) and set(family.fixed) <= set(SWITCH_FIELDS) | set(BERT_KEYS)
        heads = family.pretraining_heads       # BERT's own heads: read on demand, and left out by load
        assert [ours for ours, _, _ in heads.mlm] == ["transform.w", "transform.b", "ln.g", "ln.b", "decoder.w",
                                                      "decoder.b"]
        assert [ours for ours, _, _ in heads.sentence] in ([], ["w", "b"]) and bool(heads.sentence) == \
            bool(heads.sentence_task)
        for _, theirs, _ in [*heads.mlm, *heads.sentence]:
            for name in (theirs,) if isinstance(theirs, str) else theirs:
                assert name.startswith(family.names.ignored_prefixes), (model_type, name)


def test_parity_hooks_find_each_familys_layers():
    """parity --ops finds the layers by the record's reference_layers, on stand-ins laid out as transformers'
    models are (ALBERT: groups of layers, in call order), and refuses a model laid out otherwise."""
    from types import SimpleNamespace as Module
    from minibert.checkpoint.families import FAMILIES
    from minibert.analysis.parity import hooked_layers
    bert = Module(encoder=Module(layer=["l0", "l1"]))
    distil = Module(transformer=Module(layer=["t0", "t1", "t2"]))
    albert = Module(encoder=Module(albert_layer_groups=[Module(albert_layers=["g0"]), Module(albert_layers=["g1"])]))
    for model_type, reference, layers in [("bert", bert, ["l0", "l1"]), ("mpnet", bert, ["l0", "l1"]),
                                          ("distilbert", distil, ["t0", "t1", "t2"]),
                                          ("albert", albert, ["g0", "g1"])]:
        config = Module(model_type=model_type)
        assert hooked_layers(reference, config) == (layers, FAMILIES[model_type].parity_modules)
    with pytest.raises(minibert.MiniBertError, match="laid out otherwise"):
        hooked_layers(distil, Module(model_type="roberta"))
