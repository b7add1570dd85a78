"""Loading checkpoints: layouts that must work, and bad models and inputs that must raise a minibert error."""

import json
import math
import re
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from tiny import VOCAB, tiny_config, tiny_tensors, write_tiny

import minibert
from minibert import ConfigError, InputError, ModelFileError, TokenizerError

FAMILIES = Path(__file__).parent / "fixtures" / "families"
TEXTS = ["the cat sat on the mat", "hello world", "a dog ran"]


def run(path, backend="numpy", dtype="float32"):
    model = minibert.load(str(path), backend=backend, dtype=dtype)
    return model, model(TEXTS, output_attentions=True)


def test_tiny_checkpoint_numpy_and_cpu_agree(tmp_path):
    write_tiny(tmp_path)
    _, a = run(tmp_path, "numpy", "float64")
    _, b = run(tmp_path, "cpu", "float32")
    for x, y in zip(a.hidden_states + a.attentions, b.hidden_states + b.attentions):
        assert np.abs(x - y).max() < 1e-5


def test_bert_prefix_and_mlm_head_are_handled(tmp_path):
    write_tiny(tmp_path / "plain")
    config = tiny_config(architectures=["BertForMaskedLM"])
    tensors = tiny_tensors(config, prefix="bert.")
    tensors["cls.predictions.bias"] = np.zeros(config["vocab_size"], np.float32)
    tensors["cls.predictions.transform.dense.weight"] = np.zeros((16, 16), np.float32)
    write_tiny(tmp_path / "prefixed", config, tensors)
    _, a = run(tmp_path / "plain")
    _, b = run(tmp_path / "prefixed")
    np.testing.assert_array_equal(a.last_hidden_state, b.last_hidden_state)


def test_checkpoint_without_pooler_gives_none(tmp_path):
    config = tiny_config()
    write_tiny(tmp_path, config, tiny_tensors(config, pooler=False))
    _, out = run(tmp_path)
    assert out.pooler_output is None


@pytest.mark.parametrize("stored", ["float16", "bfloat16", "float64"])
def test_half_and_double_tensors_convert_to_compute_dtype(tmp_path, stored):
    config = tiny_config()
    tensors = tiny_tensors(config)
    if stored == "bfloat16":
        tensors = {k: (v.view(np.uint32) >> 16 << 16).view(np.float32) for k, v in tensors.items()}  # exactly bf16
        write_tiny(tmp_path / "f32", config, tensors)
        write_bf16(tmp_path / "f32" / "model.safetensors", tmp_path / "model.safetensors", tensors)
        (tmp_path / "config.json").write_text(json.dumps(config))
        (tmp_path / "vocab.txt").write_text((tmp_path / "f32" / "vocab.txt").read_text())
        reference_dir = tmp_path / "f32"
    else:
        write_tiny(tmp_path / "f32", config, {k: v.astype(stored).astype(np.float32) for k, v in tensors.items()})
        write_tiny(tmp_path, config, {k: v.astype(stored) for k, v in tensors.items()})
        reference_dir = tmp_path / "f32"
    model, out = run(tmp_path)
    assert model.weights["layers"][0]["qkv"]["w"].dtype == np.float32
    _, want = run(reference_dir)
    np.testing.assert_array_equal(out.last_hidden_state, want.last_hidden_state)


def write_bf16(_, path, tensors):
    """A BF16 safetensors file by hand (NumPy has no bfloat16 dtype)."""
    header, blobs, offset = {}, [], 0
    for name, value in tensors.items():
        raw = (value.view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_sharded_checkpoint(tmp_path):
    config = tiny_config()
    tensors = tiny_tensors(config)
    write_tiny(tmp_path / "single", config, tensors)
    write_tiny(tmp_path / "sharded", config, tensors)
    (tmp_path / "sharded" / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(tmp_path / "sharded" / file))
        weight_map.update({n: file for n in part})
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _, a = run(tmp_path / "single")
    _, b = run(tmp_path / "sharded")
    np.testing.assert_array_equal(a.last_hidden_state, b.last_hidden_state)


def test_vocab_txt_tokenizer_matches_tokenizer_json_on_the_default_model(tmp_path):
    from minibert.api import default_model_dir
    source = default_model_dir()
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        (tmp_path / name).symlink_to(source / name)
    from_vocab = minibert.load(str(tmp_path), backend="numpy")
    from_json = minibert.load(str(source), backend="numpy")
    assert "vocab.txt" in from_vocab.tokenizer.kind and "tokenizer.json" in from_json.tokenizer.kind
    texts = ["Café Müller's naïve résumé", "北京是中国的首都 🍕", "unaffable pneumonoultramicroscopic",
             "  spaces\tand\nlines "]
    a, b = from_vocab.tokenize(texts, texts[::-1]), from_json.tokenize(texts, texts[::-1])
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.token_type_ids, b.token_type_ids)


# --- bad models: each must raise the right minibert error and say where ---

def test_missing_directory_and_files(tmp_path):
    with pytest.raises(ModelFileError, match="no such model directory"):
        minibert.load(str(tmp_path / "nope"))
    with pytest.raises(ModelFileError, match=r"missing config.json, weights .* \(found nothing\)"):
        minibert.load(str(tmp_path))          # an empty directory: everything missing, in one error
    (tmp_path / "vocab.txt").write_text("[UNK]\n[CLS]\n[SEP]\n")
    with pytest.raises(ConfigError, match="config.json not found"):
        minibert.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(tiny_config()))
    with pytest.raises(ModelFileError, match="no model.safetensors"):
        minibert.load(str(tmp_path))


@pytest.mark.parametrize("change, message", [
    ({"model_type": "xlnet"}, "model_type 'xlnet' is not supported; supported families: bert"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key' is not supported"),
    ({"rope_scaling": {"type": "linear"}},
     "unknown key\\(s\\) rope_scaling for model_type 'bert': they change the forward"),
    ({"embedding_size": 16}, "unknown key\\(s\\) embedding_size for model_type 'bert'"),
    ({"hidden_size": 18}, "hidden_size 18 is not divisible by num_attention_heads 4"),
    ({"hidden_act": "swish2"}, "hidden_act 'swish2' is not supported"),
    ({"num_hidden_layers": "2"}, "num_hidden_layers must be int"),
    ({"layer_norm_eps": 0}, "layer_norm_eps must be in"),
])
def test_bad_config_values(tmp_path, change, message):
    write_tiny(tmp_path, tiny_config(**change), tiny_tensors(tiny_config()))
    with pytest.raises(ConfigError, match=message):
        minibert.load(str(tmp_path))


def test_missing_config_key(tmp_path):
    config = tiny_config()
    del config["intermediate_size"]
    write_tiny(tmp_path, config, tiny_tensors(tiny_config()))
    with pytest.raises(ConfigError, match="missing key\\(s\\) intermediate_size"):
        minibert.load(str(tmp_path))


def test_missing_unexpected_and_misshapen_tensors(tmp_path):
    config = tiny_config()
    tensors = tiny_tensors(config)
    del tensors["encoder.layer.1.attention.self.key.bias"]
    write_tiny(tmp_path / "missing", config, tensors)
    with pytest.raises(ModelFileError, match="'encoder.layer.1.attention.self.key.bias'.*missing"):
        minibert.load(str(tmp_path / "missing"))

    tensors = tiny_tensors(config)
    tensors["encoder.layer.2.output.dense.weight"] = np.zeros((16, 24), np.float32)
    write_tiny(tmp_path / "extra", config, tensors)
    with pytest.raises(ModelFileError, match="unexpected tensor\\(s\\) encoder.layer.2.output.dense.weight"):
        minibert.load(str(tmp_path / "extra"))

    tensors = tiny_tensors(config)
    tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((25, 16), np.float32)
    write_tiny(tmp_path / "shape", config, tensors)
    with pytest.raises(ModelFileError, match="intermediate.dense.weight has shape \\(25, 16\\); the config implies"):
        minibert.load(str(tmp_path / "shape"))


def test_corrupt_safetensors_header(tmp_path):
    write_tiny(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(ModelFileError, match="the header is not valid JSON"):
        minibert.load(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(ModelFileError):
        minibert.load(str(tmp_path))


def refused_by_every_reader(directory, match, capsys):
    """load, load_classifier, non_finite_tensors and `minibert inspect --check` each refuse `directory` with
    a ModelFileError matching `match`, in well under a second each (hostile headers once took minutes)."""
    from minibert.cli import main
    from minibert.train.classifier import load_classifier
    from minibert.checkpoint.layout import non_finite_tensors
    config = json.loads((directory / "config.json").read_text())
    config.update(architectures=["BertForSequenceClassification"], id2label={"0": "no", "1": "yes"})
    (directory / "config.json").write_text(json.dumps(config))
    for reader in (lambda: minibert.load(str(directory), backend="numpy"), lambda: load_classifier(directory),
                   lambda: non_finite_tensors(directory)):
        start = time.perf_counter()
        with pytest.raises(ModelFileError, match=match):
            reader()
        assert time.perf_counter() - start < 1
    start = time.perf_counter()
    capsys.readouterr()
    assert main(["inspect", str(directory), "--check"]) == 1
    assert time.perf_counter() - start < 1
    assert re.search(match, capsys.readouterr().err)


def with_extra_tensor(directory, shape, data_offsets=None):
    """The tiny model with one more header entry, 'extra' (F32, `shape`; no bytes unless data_offsets say)."""
    path = write_tiny(directory) / "model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    end = len(data) - 8 - length
    header["extra"] = {"dtype": "F32", "shape": shape, "data_offsets": data_offsets or [end, end]}
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    return directory


HUGE = int("9" * 4300)        # the longest int Python converts from text by default


@pytest.mark.parametrize("shape, data_offsets, message", [
    ([HUGE] * 1000, None, r"shape \[<a number of 4,300 digits>, .*, \.\.\. 992 more\] has 1,000 dimensions"),
    ([HUGE] * 30, None, r"shape \[<a number of 4,300 digits>, .*, \.\.\. 22 more\] is not a list of ints from 0 "
                        r"to 2\*\*63 - 1"),
    ([1] * 65 + [0], None, r"shape \[1, 1, 1, 1, 1, 1, 1, 1, \.\.\. 58 more\] has 66 dimensions, more than the 32"),
    ([2 ** 62, 2 ** 62, 0], None, r"shape \[4611686018427387904, 4611686018427387904, 0\] spans 2\*\*63 bytes or more"),
    ([2 ** 61], None, r"shape \[2305843009213693952\] spans 2\*\*63 bytes or more"),             # 2**63 bytes of F32
    ([-1], None, r"shape \[-1\] is not a list of ints from 0"),
    ([0], [HUGE, HUGE], r"data_offsets \[<a number of 4,300 digits>, <a number of 4,300 digits>\] are not a \[start, "
                        r"end\] pair"),
    ([0], [2 ** 70, 2 ** 70], r"data_offsets \[<a number of 22 digits>, .*\] are not a \[start, end\] pair"),
])
def test_hostile_header_numbers_are_refused_fast_naming_file_and_tensor(tmp_path, capsys, shape, data_offsets,
                                                                        message):
    """Sizes and offsets are bounded before anything multiplies or prints them: 1,000 sizes of 4,300 digits
    took 44 s, then raised a raw ValueError (Python does not print ints that long); more than 64 dimensions
    and [2**62, 2**62, 0] were raw ValueErrors from NumPy. Each is now a ModelFileError in milliseconds."""
    directory = with_extra_tensor(tmp_path / "model", shape, data_offsets)
    where = re.escape(str(directory / "model.safetensors"))
    refused_by_every_reader(directory, rf"{where}: tensor 'extra': {message}", capsys)


def test_sizes_up_to_the_bounds_still_load(tmp_path):
    """The bounds refuse nothing real: an empty tensor with 32 dimensions, one of them 2**40, is read."""
    from minibert.checkpoint.safetensors import Checkpoint
    directory = with_extra_tensor(tmp_path / "model", [2 ** 40] + [1] * 30 + [0])
    checkpoint = Checkpoint([directory / "model.safetensors"])
    assert checkpoint.read("extra", np.float32).shape == (2 ** 40,) + (1,) * 30 + (0,)


def test_tokenizer_larger_than_embedding_matrix(tmp_path):
    write_tiny(tmp_path)
    with open(tmp_path / "vocab.txt", "a") as f:
        f.write("\n".join(f"extra{i}" for i in range(10)) + "\n")
    with pytest.raises(TokenizerError, match="the tokenizer has .* tokens but the embedding matrix has"):
        minibert.load(str(tmp_path))


def test_missing_tokenizer(tmp_path):
    write_tiny(tmp_path, vocab=False)
    with pytest.raises(TokenizerError, match="no tokenizer.json or vocab.txt"):
        minibert.load(str(tmp_path))


# --- bad inputs to forward: validated before any kernel runs ---

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return minibert.load(str(write_tiny(tmp_path_factory.mktemp("tiny"))), backend="cpu")


@pytest.mark.parametrize("kwargs, message", [
    ({"input_ids": [[2, 500, 3]]}, "input_ids\\[0, 1\\] = 500 is outside the vocabulary"),
    ({"input_ids": [[2, -1, 3]]}, "input_ids\\[0, 1\\] = -1 is outside the vocabulary"),
    ({"input_ids": [[2, 5, 3]], "token_type_ids": [[0, 2, 0]]}, "token_type_ids\\[0, 1\\] = 2 is outside"),
    ({"input_ids": [[2, 5, 3]], "attention_mask": [[1, 1]]}, "attention_mask has shape \\(1, 2\\)"),
    ({"input_ids": [[2.0, 5.0, 3.0]]}, "input_ids must hold integers"),
    ({"input_ids": [[2, 5, 3]], "attention_mask": [[1, 2, 1]]}, "attention_mask must hold only 0 and 1"),
    ({"input_ids": np.ones((1, 40), dtype=np.int64)}, "more than the model's 32 positions"),
    ({"input_ids": np.ones((1, 2, 3), dtype=np.int64)}, "must be 2-D"),
])
def test_bad_forward_inputs(tiny_model, kwargs, message):
    with pytest.raises(InputError, match=message):
        tiny_model.forward(**kwargs)


def test_bad_texts(tiny_model):
    with pytest.raises(InputError, match="texts\\[1\\] is bytes"):
        tiny_model.tokenize(["ok", b"bytes"])
    with pytest.raises(InputError, match="must be a str or a list of str"):
        tiny_model.tokenize(None)
    with pytest.raises(InputError, match="text_pairs has 1 texts but texts has 2"):
        tiny_model.tokenize(["a", "b"], ["c"])


def test_capture_names_and_patterns(tiny_model):
    out = tiny_model(["the cat sat"], capture=["layer.*.ffn.intermediate", "layer.1.query"])
    assert sorted(out.captured) == ["layer.0.ffn.intermediate", "layer.1.ffn.intermediate", "layer.1.query"]
    assert out.captured["layer.0.ffn.intermediate"].shape[-1] == 24
    with pytest.raises(InputError, match="matches no internal"):
        tiny_model(["x"], capture=["layer.9.query"])


def test_runtime_never_imports_torch():
    import subprocess
    code = ("import minibert, sys; m = minibert.load(); m('hi'); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------------
# Configs and layouts as they are in the wild.

def test_unknown_config_keys_warn_once_naming_them_and_load(tmp_path, monkeypatch):
    """Before: any unknown key aborted loading. Now one warning names all of them; the model loads and
    computes what it computes without them."""
    monkeypatch.delenv("MINIBERT_STRICT_CONFIG", raising=False)
    write_tiny(tmp_path / "plain")
    write_tiny(tmp_path / "extra", tiny_config(mystery_switch=3, zeta_setting="x"), tiny_tensors(tiny_config()))
    with pytest.warns(minibert.checkpoint.config.UnknownConfigKeysWarning) as caught:
        _, out = run(tmp_path / "extra")
    assert len(caught) == 1
    assert "unknown key(s) mystery_switch, zeta_setting ignored" in str(caught[0].message)
    np.testing.assert_array_equal(out.last_hidden_state, run(tmp_path / "plain")[1].last_hidden_state)


def test_strict_config_env_turns_the_warning_into_an_error(tmp_path, monkeypatch):
    write_tiny(tmp_path, tiny_config(mystery_switch=3), tiny_tensors(tiny_config()))
    monkeypatch.setenv("MINIBERT_STRICT_CONFIG", "1")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) mystery_switch; minibert cannot tell"):
        minibert.load(str(tmp_path), backend="numpy")


def test_keys_known_not_to_change_the_forward_pass_are_ignored_silently(tmp_path, monkeypatch, recwarn):
    monkeypatch.setenv("MINIBERT_STRICT_CONFIG", "1")
    write_tiny(tmp_path, tiny_config(_attn_implementation="sdpa", _commit_hash="abc", layerdrop=0.1),
               tiny_tensors(tiny_config()))
    minibert.load(str(tmp_path), backend="numpy")
    assert not [w for w in recwarn if issubclass(w.category, minibert.checkpoint.config.UnknownConfigKeysWarning)]


def test_unknown_architecture_of_a_supported_model_type_loads_its_encoder_and_warns_naming_it(tmp_path):
    """A project's own class around BERT (antiberty's "AntiBERTy"): before, taken for BERT without a word. Now
    one warning names the class; the encoder loads as model_type says, as transformers' Auto classes read it."""
    write_tiny(tmp_path / "plain")
    write_tiny(tmp_path / "own", tiny_config(architectures=["AntiBERTy"]), tiny_tensors(tiny_config()))
    with pytest.warns(minibert.checkpoint.config.UnknownArchitectureWarning) as caught:
        _, out = run(tmp_path / "own")
    assert len(caught) == 1
    assert re.search(r"own.config\.json: architectures names 'AntiBERTy', a class minibert does not know; loaded "
                     r"as model_type 'bert' says", str(caught[0].message))
    np.testing.assert_array_equal(out.last_hidden_state, run(tmp_path / "plain")[1].last_hidden_state)


@pytest.mark.parametrize("architectures", [["BertModel"], ["BertForMaskedLM"], ["BertLMHeadModel"],
                                           ["BertForPreTraining", "BertForSequenceClassification"], []])
def test_known_architectures_load_without_the_unknown_architecture_warning(tmp_path, architectures, recwarn):
    write_tiny(tmp_path, tiny_config(architectures=architectures), tiny_tensors(tiny_config()))
    minibert.load(str(tmp_path), backend="numpy")
    assert not [w for w in recwarn if issubclass(w.category, minibert.checkpoint.config.UnknownArchitectureWarning)]


def test_unknown_architecture_without_model_type_is_still_refused(tmp_path):
    config = tiny_config(architectures=["AntiBERTy"])
    del config["model_type"]
    write_tiny(tmp_path, config, tiny_tensors(tiny_config()))
    with pytest.raises(ConfigError, match="model_type None is not supported.*names no model_type or known "
                                          "architecture"):
        minibert.load(str(tmp_path), backend="numpy")


AMINO_ACIDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("ACDEFGHIKLMNPQRSTVWY")


def amino_acid_model(directory, tokenizer_config=None):
    """antiberty's vocabulary: the special tokens and the 20 amino acids, upper case, and no tokenizer_config.json."""
    config = tiny_config(vocab_size=len(AMINO_ACIDS))
    write_tiny(directory, config, tiny_tensors(config), vocab=False)
    (directory / "vocab.txt").write_text("\n".join(AMINO_ACIDS) + "\n")
    if tokenizer_config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return directory


def test_an_upper_case_only_vocabulary_is_not_lower_cased_unless_tokenizer_config_says(tmp_path, recwarn):
    """Before: lower-cased as BertTokenizer's default does, so every letter of "E V Q [MASK] S" was [UNK] and
    fill-mask answered for a text of unknowns. Now such a vocabulary is read as cased, with a warning naming the
    file; tokenizer_config.json's do_lower_case still decides when it is there, silently."""
    with pytest.warns(UserWarning, match=r"vocab\.txt: its letters are all upper case and no tokenizer_config\.json "
                                         r"sets do_lower_case, so texts are not lower-cased \(BertTokenizer's default, "
                                         r"do_lower_case=True, would make every letter \[UNK\]\)"):
        cased = minibert.load(str(amino_acid_model(tmp_path / "bare")), backend="numpy")
    assert cased.tokenize(["E V Q [MASK] S"]).tokens[0] == ["[CLS]", "E", "V", "Q", "[MASK]", "S", "[SEP]"]
    recwarn.clear()
    said = minibert.load(str(amino_acid_model(tmp_path / "said", {"do_lower_case": True})), backend="numpy")
    assert said.tokenize(["E V Q [MASK] S"]).tokens[0] == ["[CLS]"] + ["[UNK]"] * 3 + ["[MASK]", "[UNK]", "[SEP]"]
    assert not [w for w in recwarn if "upper case" in str(w.message)]


def test_vocabularies_with_lower_case_letters_keep_bert_tokenizers_default(tmp_path, recwarn):
    """The rule reads letters outside bracketed tokens only: [CLS], [unused0] and <s> say nothing of casing."""
    words = VOCAB + ["[unused0]", "<s>", "CAT"]
    config = tiny_config(vocab_size=len(words))
    write_tiny(tmp_path / "lower", config, tiny_tensors(config), vocab=False)
    (tmp_path / "lower" / "vocab.txt").write_text("\n".join(words) + "\n")
    model = minibert.load(str(tmp_path / "lower"), backend="numpy")
    assert model.tokenize(["The CAT"]).tokens[0] == ["[CLS]", "the", "cat", "[SEP]"]
    from minibert.tokenizer import upper_case_only
    assert upper_case_only(AMINO_ACIDS + ["[unused0]", "<s>", "##K"])
    assert not upper_case_only(["[PAD]", "[UNK]", "12", "##3"]) and not upper_case_only(AMINO_ACIDS + ["a"])
    assert not [w for w in recwarn if "upper case" in str(w.message)]


def test_max_len_in_an_old_tokenizer_config_limits_the_tokens(tmp_path):
    """transformers < 4 wrote max_len where later versions write model_max_length; transformers 4 still reads it."""
    write_tiny(tmp_path, tokenizer_config={"do_lower_case": True, "max_len": 8})
    model = minibert.load(str(tmp_path), backend="numpy")
    assert model.tokenizer.max_length == 8
    assert model.tokenize(["the cat sat on the mat the cat sat"]).input_ids.shape == (1, 8)


def test_old_wordpiece_layout_takes_casing_from_tokenizer_config(tmp_path):
    """vocab.txt + tokenizer_config.json's do_lower_case, no tokenizer.json (older checkpoints)."""
    write_tiny(tmp_path / "lower", tokenizer_config={"do_lower_case": True})
    write_tiny(tmp_path / "cased", tokenizer_config={"do_lower_case": False})
    lower = minibert.load(str(tmp_path / "lower"), backend="numpy").tokenize(["The CAT"]).tokens[0]
    cased = minibert.load(str(tmp_path / "cased"), backend="numpy").tokenize(["The CAT"]).tokens[0]
    assert lower == ["[CLS]", "the", "cat", "[SEP]"]
    assert cased == ["[CLS]", "[UNK]", "[UNK]", "[SEP]"]


def test_a_directory_without_weights_and_tokenizer_names_both(tmp_path):
    """Before: only the first problem met (the tokenizer). Now one error names everything missing."""
    write_tiny(tmp_path, vocab=False)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(ModelFileError, match=r"missing weights \(model.safetensors, pytorch_model.bin or a shard "
                                             r"index of either\) and a tokenizer \(tokenizer.json, vocab.txt, or "
                                             r"vocab.json \+ merges.txt\) \(found README.md, config.json\)"):
        minibert.load(str(tmp_path), backend="numpy")
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelFileError, match=r"missing config.json, weights .* and a tokenizer"):
        minibert.load(str(tmp_path), backend="numpy")


def trainer_checkpoint(tmp_path):
    """A Trainer's output: the tokenizer saved in run/, weights and config only in run/checkpoint-2/."""
    write_tiny(tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint-2"
    checkpoint.mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "run" / name).rename(checkpoint / name)
    (checkpoint / "trainer_state.json").write_text("{}")
    return checkpoint


def test_tokenizer_one_level_up_is_used_and_said(tmp_path):
    """Before: 'no tokenizer.json or vocab.txt'. Now the folder above is read, with a warning naming it."""
    checkpoint = trainer_checkpoint(tmp_path)
    with pytest.warns(UserWarning, match=r"checkpoint-2 has no tokenizer files; using those in .*run, the folder"):
        model = minibert.load(str(checkpoint), backend="numpy")
    same = minibert.load(str(write_tiny(tmp_path / "together")), backend="numpy")
    text = ["The cat sat on the mat", "hello world"]
    np.testing.assert_array_equal(model.tokenize(text).input_ids, same.tokenize(text).input_ids)
    np.testing.assert_array_equal(model(text).last_hidden_state, same(text).last_hidden_state)
    assert model.tokenizer.files == ["../tokenizer_config.json", "../vocab.txt"]


def test_tokenizer_one_level_up_settings_come_with_its_vocabulary(tmp_path):
    """A tokenizer_config.json beside the weights but no vocabulary there: every tokenizer file comes from the
    folder holding the vocabulary (casing from its tokenizer_config.json), never a mix of the two."""
    checkpoint = trainer_checkpoint(tmp_path)
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    with pytest.warns(UserWarning, match="the folder above"):
        model = minibert.load(str(checkpoint), backend="numpy")
    assert model.tokenize(["The CAT"]).tokens[0] == ["[CLS]", "the", "cat", "[SEP]"]


def test_sentence_transformers_subfolder_reads_the_root_tokenizer_silently(tmp_path, recwarn):
    """Weights in 0_Transformer/, tokenizer at the model's root: one level up but inside the model."""
    root = shutil.copytree(Path(__file__).parent / "fixtures" / "st_legacy_layout_prompts", tmp_path / "st")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (root / "0_Transformer" / name).exists():
            (root / "0_Transformer" / name).rename(root / name)
    model = minibert.load(str(root), backend="numpy")
    assert not [w for w in recwarn if "tokenizer" in str(w.message)]
    assert model.tokenizer.dir == root.resolve() and "../tokenizer.json" in model.tokenizer.files
    original = minibert.load(str(Path(__file__).parent / "fixtures" / "st_legacy_layout_prompts"), backend="numpy")
    np.testing.assert_array_equal(model.encode(TEXTS), original.encode(TEXTS))


def test_weights_missing_with_the_tokenizer_one_level_up_names_only_the_weights(tmp_path):
    checkpoint = trainer_checkpoint(tmp_path)
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="no model.safetensors, pytorch_model.bin") as caught, \
            pytest.warns(UserWarning, match="the folder above"):
        minibert.load(str(checkpoint), backend="numpy")
    assert "tokenizer" not in str(caught.value)


def test_inspect_names_tokenizer_files_one_level_up(tmp_path, capsys):
    from minibert.cli import main
    checkpoint = trainer_checkpoint(tmp_path)
    assert main(["inspect", str(checkpoint)]) == 0
    out, err = capsys.readouterr()
    assert "files used  config.json, model.safetensors, ../tokenizer_config.json, ../vocab.txt\n" in out
    assert "ignored     trainer_state.json\n" in out
    assert "has no tokenizer files; using those in" in err


def test_inspect_says_which_files_were_used_and_which_ignored(tmp_path, capsys):
    from minibert.cli import main
    write_tiny(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"old weights")
    (tmp_path / "1_Pooling").mkdir()
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "files used  config.json, model.safetensors, tokenizer_config.json, vocab.txt\n" in out
    assert "ignored     1_Pooling/, pytorch_model.bin\n" in out


OLD_TOKENIZERS = Path(__file__).parent / "fixtures" / "old_tokenizers"
OLD_TOKENIZER_CASES = sorted(p.name for p in OLD_TOKENIZERS.iterdir() if p.is_dir())


def old_tokenizers_script():
    import importlib.util
    script = OLD_TOKENIZERS.parent / "make_old_tokenizers.py"
    spec = importlib.util.spec_from_file_location("make_old_tokenizers", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE_OLD_TOKENIZERS = old_tokenizers_script()


def minibert_tokenization(case_dir):
    """golden.json's layout, from minibert's Tokenizer on the folder holding config.json (the weights')."""
    from minibert.checkpoint.config import read_config
    from minibert.tokenizer import Tokenizer
    weights_dir = case_dir / "checkpoint-1" if (case_dir / "checkpoint-1").is_dir() else case_dir
    tokenizer = Tokenizer(weights_dir, read_config(weights_dir / "config.json"))
    assert tokenizer.dir == case_dir.resolve() or tokenizer.dir == case_dir
    out = {"texts": [], "pairs": []}
    for key, items in (("texts", [(t,) for t in MAKE_OLD_TOKENIZERS.TEXTS]), ("pairs", MAKE_OLD_TOKENIZERS.PAIRS)):
        for item in items:
            batch = tokenizer([item[0]], [item[1]] if len(item) == 2 else None)
            out[key].append({"input_ids": batch.input_ids[0].tolist(),
                             "token_type_ids": batch.token_type_ids[0].tolist(),
                             "offsets": batch.offsets[0].tolist()})
    return out


def test_every_old_tokenizer_case_has_a_committed_fixture():
    assert OLD_TOKENIZER_CASES == sorted(MAKE_OLD_TOKENIZERS.CASES)


@pytest.mark.parametrize("case", OLD_TOKENIZER_CASES)
def test_old_tokenizer_layouts_tokenize_as_transformers(case):
    """vocab.txt without tokenizer.json, casing and accents from tokenizer_config.json (or transformers' defaults
    when it is absent), special tokens from special_tokens_map.json or the class named or implied by
    model_type, the files one level up from config.json: ids, token types and offsets as AutoTokenizer's
    (golden.json, made by tests/fixtures/make_old_tokenizers.py)."""
    golden = json.loads((OLD_TOKENIZERS / case / "golden.json").read_text())
    assert minibert_tokenization(OLD_TOKENIZERS / case) == {"texts": golden["texts"], "pairs": golden["pairs"]}


def test_old_tokenizer_cases_differ_where_their_settings_do():
    """The fixtures are not all one tokenization: casing, accents and MPNet's tokens each change the ids."""
    ids = {case: json.loads((OLD_TOKENIZERS / case / "golden.json").read_text())["texts"][1]["input_ids"]
           for case in OLD_TOKENIZER_CASES}
    assert ids["bert_lower"] != ids["bert_cased"] != ids["bert_cased_strip_accents"]
    assert ids["bert_no_settings"] == ids["bert_lower"]                 # transformers' default: lower-case
    assert ids["mpnet_class_from_config"][0] != ids["bert_lower"][0]    # <s>, not [CLS]


@pytest.mark.reference
@pytest.mark.parametrize("case", sorted(MAKE_OLD_TOKENIZERS.CASES))
def test_live_old_tokenizer_layouts_against_auto_tokenizer(tmp_path, case, monkeypatch):
    """Each case written afresh and read by transformers' AutoTokenizer itself."""
    pytest.importorskip("transformers")
    monkeypatch.setattr(MAKE_OLD_TOKENIZERS, "OUT", tmp_path)
    directory = MAKE_OLD_TOKENIZERS.write_case(case, MAKE_OLD_TOKENIZERS.CASES[case])
    want = MAKE_OLD_TOKENIZERS.reference_tokenization(directory)
    assert minibert_tokenization(directory) == {"texts": want["texts"], "pairs": want["pairs"]}


ODD_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a\x0cb", "c\u2028d", "e\x85f", "the", "the", "cat",
             "x\x1cy", "dog"]


def test_vocab_txt_ids_are_line_numbers(tmp_path):
    """Lines split on \\n only (form feed, U+2028, NEL, file separators belong to the token); a repeated token
    takes its last line. Before: str.splitlines split inside those tokens, shifting every later id."""
    config = tiny_config(vocab_size=len(ODD_VOCAB))
    write_tiny(tmp_path, config, tiny_tensors(config), vocab=False)
    (tmp_path / "vocab.txt").write_bytes(("\n".join(ODD_VOCAB) + "\n").encode("utf-8"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    model = minibert.load(str(tmp_path), backend="numpy")
    vocab = model.tokenizer.backend.get_vocab()
    assert vocab["the"] == 9 and vocab["cat"] == 10 and vocab["dog"] == 12
    assert model.tokenize(["the cat dog"]).input_ids[0].tolist() == [2, 9, 10, 12, 3]


@pytest.mark.reference
def test_vocab_txt_ids_match_transformers_on_odd_lines(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = tiny_config(vocab_size=len(ODD_VOCAB))
    write_tiny(tmp_path, config, tiny_tensors(config), vocab=False)
    (tmp_path / "vocab.txt").write_bytes(("\n".join(ODD_VOCAB) + "\n").encode("utf-8"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    theirs = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False)
    ours = minibert.load(str(tmp_path), backend="numpy").tokenizer
    text = ["the cat dog x", "cat the"]
    assert ours(text).input_ids[0][:6].tolist() == theirs(text[0])["input_ids"]
    assert ours.backend.get_vocab() == theirs.get_vocab()


# ---------------------------------------------------------------------------------------------------
# config.json: missing keys, impossible values, unsupported features; each names the key and the file.

@pytest.mark.parametrize("change, message", [
    ({"vocab_size": 0}, "vocab_size must be positive, found 0"),
    ({"num_attention_heads": 0}, "num_attention_heads must be positive, found 0"),
    ({"hidden_size": -16}, "hidden_size must be positive, found -16"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be positive"),
    ({"intermediate_size": 1 << 30}, "intermediate_size 1073741824 is implausibly large"),
    ({"max_position_embeddings": 10 ** 12}, "max_position_embeddings 1000000000000 is implausibly large"),
    ({"hidden_size": 16.0}, "hidden_size must be int, found 16.0"),
    ({"hidden_size": True}, "hidden_size must be int, found True"),
    ({"layer_norm_eps": math.nan}, "layer_norm_eps must be in \\(0, 1\\), found nan"),
    ({"pad_token_id": 999}, "pad_token_id 999 is outside the vocabulary"),
    ({"num_attention_heads": 32}, "hidden_size 16 is not divisible by num_attention_heads 32"),
    ({"is_decoder": True}, "is_decoder=True is not supported"),
    ({"add_cross_attention": True}, "add_cross_attention=True is not supported"),
    ({"position_embedding_type": "relative_key_query"},
     "position_embedding_type='relative_key_query' is not supported"),
    ({"model_type": ["bert"]}, "model_type must be a string"),
    ({"architectures": "BertModel"}, "architectures must be a list"),
    ({"architectures": ["RobertaModel"]}, "model_type 'bert' disagrees with architectures"),
    ({"model_type": "deberta-v2", "architectures": []}, "not supported.*disentangled attention"),
    ({"model_type": "roberta", "architectures": [], "pad_token_id": 1, "max_position_embeddings": 2},
     "leaves no position for a token after pad_token_id 1"),
])
def test_impossible_or_unsupported_config_values(tmp_path, change, message):
    write_tiny(tmp_path, tiny_config(**change), tiny_tensors(tiny_config()))
    with pytest.raises(ConfigError, match=message) as caught:
        minibert.load(str(tmp_path))
    assert "config.json" in str(caught.value)


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "must hold a JSON object, found list"),
    ("{'hidden_size': 16}", "cannot read config.json as JSON \\(JSONDecodeError"),
    ("[" * 100000, "cannot read config.json as JSON \\(RecursionError"),
    ('{"hidden_size": 1' + "0" * 5000 + "}", "cannot read config.json as JSON \\(ValueError"),
])
def test_unreadable_config_json(tmp_path, text, message):
    write_tiny(tmp_path)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=message):
        minibert.load(str(tmp_path))


# ---------------------------------------------------------------------------------------------------
# Tokenizer files: missing or inconsistent with each other or with the model.

def copy_family(name, destination):
    shutil.copytree(FAMILIES / name, destination)
    return destination


def test_tokenizer_files_inconsistent_with_the_model(tmp_path):
    write_tiny(tmp_path / "list")
    (tmp_path / "list" / "tokenizer_config.json").write_text("[]")
    with pytest.raises(TokenizerError, match="tokenizer_config.json: must hold a JSON object, found list"):
        minibert.load(str(tmp_path / "list"))

    write_tiny(tmp_path / "typed", tokenizer_config={"do_lower_case": True, "cls_token": 5})
    with pytest.raises(TokenizerError, match="the tokenizer files are inconsistent .*copy the checkpoint's"):
        minibert.load(str(tmp_path / "typed"))

    write_tiny(tmp_path / "nocls")
    (tmp_path / "nocls" / "vocab.txt").write_text("\n".join(v for v in VOCAB if v != "[CLS]") + "\n")
    with pytest.raises(TokenizerError, match="the cls token '\\[CLS\\]' is not in the vocabulary"):
        minibert.load(str(tmp_path / "nocls"))

    roberta = copy_family("roberta", tmp_path / "roberta")
    spec = json.loads((roberta / "tokenizer.json").read_text())
    spec["post_processor"]["cls"] = ["<s>", 99999]          # a special-token id past the embedding matrix
    (roberta / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="gives '<s>' the id 99999, outside the model's 700 embedding rows"):
        minibert.load(str(roberta))
    (roberta / "tokenizer.json").write_text("{\"version\": ")
    with pytest.raises(TokenizerError, match="tokenizer.json: not a valid tokenizers file"):
        minibert.load(str(roberta))


# ---------------------------------------------------------------------------------------------------
# Arrays passed to forward: validated before any kernel runs.

@pytest.mark.parametrize("kwargs, message", [
    ({"input_ids": np.array([[2, 5, 3]], dtype=bool)}, "input_ids must hold integers, found dtype bool"),
    ({"input_ids": [[2, 5, 3]], "attention_mask": [[1.0, 1.0, 0.0]]},
     r"attention_mask must hold integers or bools, found dtype float64 \(cast it with .astype\(np.int64\)"),
    ({"input_ids": np.array([[2, 5, 3]], dtype=object)}, "must hold integers, found dtype object"),
    ({"input_ids": [["2", "5"]]}, "must hold integers, found dtype <U1"),
    ({"input_ids": [[2, 5, 3], [2, 5]]}, "input_ids cannot be read as an array .*equal-length rows"),
    ({"input_ids": np.array([[2, 2 ** 64 - 1]], dtype=np.uint64)},
     r"input_ids\[0, 1\] = 18446744073709551615 is outside the vocabulary \(0..48\)"),
    ({"input_ids": np.zeros((2, 0), dtype=np.int64)}, "2 row\\(s\\) of zero tokens"),
    ({"input_ids": [[2, 5, 3]], "token_type_ids": [[0, -1, 0]]}, r"token_type_ids\[0, 1\] = -1 is outside"),
    ({"input_ids": [[2, 5, 3]], "token_type_ids": [[0, 0]]}, r"token_type_ids has shape \(1, 2\) but input_ids"),
    ({"input_ids": [[2, 5, 3]], "attention_mask": [[1, 1, -1]]}, r"found attention_mask\[0, 2\] = -1"),
    ({"input_ids": 7}, r"must be 2-D \[batch, tokens\] \(or 1-D for one row\), found shape \(\)"),
    ({"input_ids": None}, "input_ids is required"),
])
def test_bad_arrays_are_refused_before_any_kernel_runs(tiny_model, monkeypatch, kwargs, message):
    from types import SimpleNamespace

    def kernel(*args, **kwargs):
        raise AssertionError("a kernel ran on unchecked input")
    monkeypatch.setattr(tiny_model, "ops", SimpleNamespace(**{name: kernel for name in
                                                              ("embed", "linear", "layer_norm", "attention")}))
    with pytest.raises(InputError, match=message):
        tiny_model.forward(**kwargs)


def test_positions_past_the_table_for_the_roberta_rule():
    """RoBERTa numbers real tokens from pad_token_id + 1 (fixture: 66 rows, pad 1, so 64 real tokens fit);
    padding takes no position, so a longer row whose extra entries are padding is fine."""
    model = minibert.load(str(FAMILIES / "roberta"), backend="cpu")
    ids = np.full((1, 65), 5)
    with pytest.raises(InputError, match=r"input_ids\[0, 64\] would need position 66, past the model's 66 position "
                                         r"rows \(at most 64 tokens per row\)"):
        model.forward(ids)
    padded = np.concatenate([ids[:, :64], np.full((1, 10), 1)], axis=1)             # 64 real + 10 padding
    mask = (padded != 1).astype(np.int64)
    out = model.forward(padded, mask)
    np.testing.assert_allclose(out.last_hidden_state[0, :64], model.forward(ids[:, :64]).last_hidden_state[0],
                               atol=2e-6)        # measured 9.5e-7 (float32 BLAS, see batch invariance below)


def test_one_dimensional_and_bool_inputs(tiny_model):
    ids = np.array([2, 38, 37, 3])
    one = tiny_model.forward(ids, attention_mask=np.array([True, True, True, False]))
    two = tiny_model.forward(ids[None], attention_mask=np.array([[1, 1, 1, 0]]))
    for a, b in zip(one.hidden_states, two.hidden_states):
        np.testing.assert_array_equal(a, b)


def test_an_all_zero_mask_row_attends_uniformly_like_transformers(tiny_model, tmp_path):
    """Every key gets score + finfo.min, which rounds to finfo.min whatever the score: a uniform softmax over
    all T keys, as transformers' additive finfo.min mask gives; no NaN. The row's numbers match the float64
    reference, and the other rows do not notice it."""
    reference = minibert.load(tiny_model.source, backend="numpy", dtype="float64")
    ids = np.array([[2, 38, 37, 3, 0], [2, 40, 41, 42, 3]])
    mask = np.array([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    got = tiny_model.forward(ids, mask, output_attentions=True)
    want = reference.forward(ids, mask, output_attentions=True)
    for a, b in zip(got.hidden_states + got.attentions, want.hidden_states + want.attentions):
        assert np.isfinite(a).all() and np.abs(a - b).max() < 1e-5     # measured 1.9e-6
    np.testing.assert_allclose(got.attentions[0][0], 1 / 5, rtol=1e-6)
    alone = tiny_model.forward(ids[1:], mask[1:])
    np.testing.assert_allclose(alone.last_hidden_state[0], got.last_hidden_state[1], atol=2e-6)


# ---------------------------------------------------------------------------------------------------
# Fuzzing the loading path.

def fuzz_run():
    """The fuzzer's child process (tests/fuzz_loading.py) in a folder of its own."""
    import tempfile
    work = tempfile.mkdtemp(prefix="minibert-fuzz-")
    return dict(args=[sys.executable, str(Path(__file__).parent / "fuzz_loading.py"), work, "--seed", "0",
                      "--iterations", "1000"])


@pytest.mark.child_process(run=fuzz_run)
def test_fuzzed_model_files_raise_minibert_errors_never_crash_or_hang(request):
    """1,000 seeded mutations (bit flips, truncations, splices, a wrong header length, JSON values replaced
    by other types, huge or negative numbers, NaN, lone surrogates) of the weights, config and tokenizer files
    of a tiny BERT and of the RoBERTa fixture; in a child process so that a crash or a hang fails here.
    Measured: about 6-9 s; about 30,000 iterations over other seeds found nothing after the two fixes they
    prompted (a non-string dtype in a safetensors header, a non-list `architectures`). Hostile header numbers
    among them (1,000 sizes of 4,300 digits, 100 KB ints referenced through the pickle's memo) each took 10 s
    to minutes before sizes were bounded; the slowest refusal now takes about 20 ms."""
    from background import finished
    run = finished(request, fuzz_run, timeout=240)
    shutil.rmtree(run.args[2], ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["failures"] == [], report["failures"][:3]
    assert report["loaded"] + report["minibert_error"] == 1000 and report["minibert_error"] > 500
    assert report["slowest_refusal"][0] < 5, report["slowest_refusal"]
    # A pickle's memo index of 2**29 once made one load allocate 8 GiB and succeed; the child (NumPy, Numba,
    # tokenizers and the tiny models loaded) peaks near 0.9 GB.
    assert report["peak_rss_mib"] < 1500, report["peak_rss_mib"]
    assert report["seconds"] < 240


@pytest.mark.parametrize("settings", [{"do_lower_case": False}, {"do_lower_case": False, "strip_accents": True},
                                      {"do_lower_case": False, "tokenize_chinese_chars": False}])
def test_tokenizer_config_overrides_the_bert_normalizer_of_tokenizer_json(tmp_path, settings):
    """tokenizer_config.json's casing, accent and CJK settings win over the BertNormalizer stored in
    tokenizer.json, as in transformers: the ids equal those of the stored tokenizer with its normalizer
    replaced by hand, and differ from the stored one's."""
    from tokenizers import Tokenizer as HFTokenizer, normalizers

    from minibert.checkpoint.config import read_config
    from minibert.checkpoint.default_model import default_model_dir
    from minibert.tokenizer import Tokenizer
    source = default_model_dir()
    for name in ("config.json", "tokenizer.json", "special_tokens_map.json"):
        shutil.copy(source / name, tmp_path / name)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    text = "Héllo Wörld 東京 café"
    ours = Tokenizer(tmp_path, read_config(tmp_path / "config.json"))([text]).input_ids[0].tolist()
    by_hand = HFTokenizer.from_file(str(source / "tokenizer.json"))
    by_hand.no_padding()                 # the stored file pads to 128; minibert pads itself
    stored = by_hand.encode(text).ids
    by_hand.normalizer = normalizers.BertNormalizer(
        clean_text=True, lowercase=settings.get("do_lower_case", True), strip_accents=settings.get("strip_accents"),
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True))
    assert ours == by_hand.encode(text).ids != stored
