"""BERT's own heads against goldens written by transformers (tests/fixtures/make_heads.py), torch-free.

Fixtures: tiny random ...ForPreTraining / ...ForMaskedLM checkpoints in tests/fixtures/heads/<name>/ (tokenizers
of the families/ fixtures). golden.npz: MLM logits, sentence-head logits, losses, all float64; grads.npz: every
parameter's gradient by torch autograd in float64; fill_mask.json: pipeline("fill-mask") outputs.
"""

import functools
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minibert
from minibert import InputError, ModelFileError
from minibert.cli import main as cli_main
from minibert.train.grad_parity import ZERO_FLOOR, relative_error
from minibert.kernels.reference import softmax_forward
from minibert.train.pretrain import grads_by_name, loss_and_grads

HEADS_DIR = Path(__file__).parent / "fixtures" / "heads"
FAMILIES_DIR = Path(__file__).parent / "fixtures" / "families"
HEADS = ["bert", "bert_untied", "roberta", "xlm_roberta", "mpnet", "electra", "albert", "distilbert"]
WITH_SENTENCE_HEAD = ["bert", "albert"]


@functools.lru_cache(maxsize=None)
def head_model(name, backend="numpy", dtype="float64"):
    return minibert.load(str(HEADS_DIR / name), backend=backend, dtype=dtype)


@functools.lru_cache(maxsize=None)
def golden(name, file="golden.npz"):
    with np.load(HEADS_DIR / name / file) as data:
        return {key: data[key] for key in data.files}


def fill_cases(name):
    return json.loads((HEADS_DIR / name / "fill_mask.json").read_text(encoding="utf-8"))


def flat(output):
    """The pipeline's nesting (texts, then masks) flattened to its answer dicts, in order."""
    if isinstance(output, dict):
        return [output]
    return [answer for item in output for answer in flat(item)]


def nesting(output):
    return [nesting(item) for item in output] if isinstance(output, list) else "answer"


def batch(g, prefix=""):
    ids = g[prefix + "input_ids"]
    return ids, g[prefix + "attention_mask"], g.get(prefix + "token_type_ids", np.zeros_like(ids))


@pytest.mark.parametrize("name", HEADS)
def test_mlm_logits_equal_transformers_in_float64(name):
    g = golden(name)
    ids, mask, types = batch(g)
    logits = head_model(name).mlm_logits(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert logits.shape == g["mlm_logits"].shape
    real = mask.astype(bool)
    assert np.abs(logits - g["mlm_logits"])[real].max() < 1e-12     # measured 5.5e-15 at most


@pytest.mark.parametrize("name", HEADS)
def test_mlm_logits_float32_cpu_within_2e_5(name):
    g = golden(name)
    ids, mask, types = batch(g)
    logits = head_model(name, "cpu", "float32").mlm_logits(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert logits.dtype == np.float32
    assert np.abs(logits - g["mlm_logits"])[mask.astype(bool)].max() < 2e-5   # measured 2.8e-6 at most; issue: 1e-4


@pytest.mark.parametrize("name", WITH_SENTENCE_HEAD)
def test_sentence_logits_and_next_sentence_equal_transformers(name):
    g = golden(name)
    model = head_model(name)
    ids, mask, types = batch(g, "pair_")
    logits = model.nsp_logits(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert np.abs(logits - g["pair_sentence_logits"]).max() < 1e-12
    pair_mlm = model.mlm_logits(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert np.abs(pair_mlm - g["pair_mlm_logits"])[mask.astype(bool)].max() < 1e-12
    # next_sentence tokenizes the pair itself: the same ids as the golden's first row
    first = "The quick brown fox jumps over the lazy dog."
    p = model.next_sentence(first, "A journey of a thousand miles begins with a [MASK] step.")
    assert isinstance(p, float)
    assert abs(p - softmax_forward(g["pair_sentence_logits"])[0][0, 0]) < 1e-12


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("case", ["one", "several", "two_masks", "targets"])
@pytest.mark.filterwarnings("ignore:target .* is not in the vocabulary")     # as the pipeline warns
def test_fill_mask_equals_the_pipeline(name, case):
    c = fill_cases(name)[case]
    options = {key: value for key, value in c.items() if key not in ("inputs", "output")}
    out = head_model(name).fill_mask(c["inputs"], **options)
    assert nesting(out) == nesting(c["output"])
    ours, theirs = flat(out), flat(c["output"])
    for mine, reference in zip(ours, theirs):
        assert {k: mine[k] for k in ("token", "token_str", "sequence")} == \
               {k: reference[k] for k in ("token", "token_str", "sequence")}
        assert abs(mine["score"] - reference["score"]) < 1e-12
    assert all(isinstance(a["score"], float) and isinstance(a["token"], int) for a in ours)


@pytest.mark.parametrize("name", HEADS)
def test_fill_mask_float32_scores_within_1e_6(name):
    c = fill_cases(name)["several"]
    out = head_model(name, "cpu", "float32").fill_mask(c["inputs"], top_k=c["top_k"])
    assert [a["token"] for a in flat(out)] == [a["token"] for a in flat(c["output"])]
    # measured 1.2e-7 at most (MPNet); the issue asks for 1e-5
    assert max(abs(a["score"] - b["score"]) for a, b in zip(flat(out), flat(c["output"]))) < 1e-6


def test_fill_mask_one_text_in_a_list_gives_its_result_alone_as_the_pipeline():
    c = fill_cases("bert")["one"]
    assert head_model("bert").fill_mask([c["inputs"]]) == head_model("bert").fill_mask(c["inputs"])


def test_a_target_outside_the_vocabulary_warns_and_stands_for_its_first_piece():
    model = head_model("bert")
    with pytest.warns(UserWarning, match="target 'Paris' is not in the vocabulary; it stands for its first piece 'P'"):
        out = model.fill_mask("Paris is the [MASK] of France.", targets=["Paris"])
    assert [a["token_str"] for a in out] == ["P"]


def test_fill_mask_refuses_a_text_without_mask_and_bad_top_k():
    model = head_model("bert")
    with pytest.raises(InputError, match=r"texts\[1\] has no mask token '\[MASK\]'"):
        model.fill_mask(["Paris is the [MASK] of France.", "no mask here"])
    with pytest.raises(InputError, match="top_k must be a positive int"):
        model.fill_mask("Paris is the [MASK].", top_k=0)
    with pytest.raises(InputError, match="targets is empty"):
        model.fill_mask("Paris is the [MASK].", targets=[])


def test_tied_decoder_is_the_word_table_and_untied_reads_its_own():
    tied = head_model("bert")
    assert tied.heads.tied and tied.heads.mlm["decoder"]["w"] is tied.weights["embeddings"]["word"]
    untied = head_model("bert_untied")
    assert not untied.heads.tied
    decoder = load_file(str(HEADS_DIR / "bert_untied" / "model.safetensors"))["cls.predictions.decoder.weight"]
    assert np.array_equal(untied.heads.mlm["decoder"]["w"], decoder.astype(np.float64))


def test_encoder_only_checkpoint_loads_as_before_and_names_the_missing_head():
    model = minibert.load(str(FAMILIES_DIR / "bert_cased"), backend="numpy")
    assert "_heads" not in model.__dict__              # loading reads no head
    with pytest.raises(ModelFileError, match="has no masked-LM head .it holds the encoder only"):
        model.fill_mask("Paris is the [MASK] of France.")
    mlm_only = head_model("roberta")
    with pytest.raises(ModelFileError, match="no next-sentence .or sentence-order. head .its head tensors are "
                                             "lm_head.bias, lm_head.dense.bias"):
        mlm_only.next_sentence("a", "b")


def test_legacy_gamma_beta_names_load_the_same_head(tmp_path):
    target = tmp_path / "bert"
    shutil.copytree(HEADS_DIR / "bert", target)
    tensors = load_file(str(target / "model.safetensors"))
    renamed = {name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): t
               for name, t in tensors.items()}
    assert "cls.predictions.transform.LayerNorm.gamma" in renamed
    save_file(renamed, str(target / "model.safetensors"))
    g = golden("bert")
    ids, mask, types = batch(g)
    logits = minibert.load(str(target), backend="numpy", dtype="float64").mlm_logits(
        input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert np.abs(logits - g["mlm_logits"])[mask.astype(bool)].max() < 1e-12


def test_a_head_tensor_missing_is_one_error_naming_it(tmp_path):
    target = tmp_path / "bert"
    shutil.copytree(HEADS_DIR / "bert", target)
    tensors = load_file(str(target / "model.safetensors"))
    del tensors["cls.predictions.transform.dense.bias"]
    save_file(tensors, str(target / "model.safetensors"))
    model = minibert.load(str(target), backend="numpy")       # the encoder is complete: it loads
    with pytest.raises(ModelFileError, match="'cls.predictions.transform.dense.bias' is missing"):
        model.fill_mask("Paris is the [MASK].")


def antiberty_shaped(tmp_path):
    """The bert head fixture laid out as the antiberty package ships its model: config.json naming the project's
    own class (architectures ["AntiBERTy"]), pytorch_model.bin holding three extra heads of its own beside BERT's
    (cls.species, cls.chain, cls.graft on the pooler output) and the pooler, and the tokenizer's vocab.txt and
    settings only in the folder above (trained_models/vocab.txt beside trained_models/AntiBERTy_md_smooth/)."""
    from test_torch_checkpoint import fake_torch_pickle
    tensors = load_file(str(HEADS_DIR / "bert" / "model.safetensors"))
    rng = np.random.default_rng(3)
    H = tensors["bert.pooler.dense.weight"].shape[0]
    for head, labels in (("species", 6), ("chain", 2), ("graft", 2)):
        tensors[f"cls.{head}.weight"] = rng.standard_normal((labels, H)).astype(np.float32)
        tensors[f"cls.{head}.bias"] = rng.standard_normal(labels).astype(np.float32)
    models = tmp_path / "trained_models"
    folder = models / "AntiBERTy_md_smooth"
    folder.mkdir(parents=True)
    records = {str(i): np.ascontiguousarray(t, dtype="<f4").tobytes() for i, t in enumerate(tensors.values())}
    pickled = fake_torch_pickle({name: ("FloatStorage", str(i), t.size, 0, t.shape,
                                        tuple(s // t.itemsize for s in t.strides))
                                 for i, (name, t) in enumerate(tensors.items())})
    with zipfile.ZipFile(folder / "pytorch_model.bin", "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data)
    config = json.loads((HEADS_DIR / "bert" / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["AntiBERTy"]}))
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(HEADS_DIR / "bert" / name, models / name)
    return folder


@pytest.mark.filterwarnings("ignore:.*the folder above")
def test_a_checkpoint_of_a_project_class_with_extra_heads_fills_masks_as_the_pipeline(tmp_path):
    """Before: loaded, silently, as BERT. Now it loads the same, saying that it takes 'AntiBERTy' for model_type's
    BERT; its own heads' tensors are left out as transformers' BertForMaskedLM leaves them, and fill-mask gives the
    pipeline's goldens of the same weights."""
    folder = antiberty_shaped(tmp_path)
    with pytest.warns(minibert.checkpoint.config.UnknownArchitectureWarning,
                      match=r"architectures names 'AntiBERTy', a class minibert does not know; loaded as "
                            r"model_type 'bert' says"):
        model = minibert.load(str(folder), backend="numpy", dtype="float64")
    assert model.tokenizer.files == ["../tokenizer_config.json", "../vocab.txt"]
    for case in ("one", "several"):
        c = fill_cases("bert")[case]
        options = {key: value for key, value in c.items() if key not in ("inputs", "output")}
        out = model.fill_mask(c["inputs"], **options)
        assert nesting(out) == nesting(c["output"])
        for mine, reference in zip(flat(out), flat(c["output"])):
            assert (mine["token"], mine["token_str"], mine["sequence"]) == \
                   (reference["token"], reference["token_str"], reference["sequence"])
            assert abs(mine["score"] - reference["score"]) < 1e-12
    assert sorted(model.heads.found) == sorted(name for name in load_file(str(HEADS_DIR / "bert" / "model.safetensors"))
                                               if name.startswith("cls."))


@pytest.mark.parametrize("name", HEADS)
def test_pretraining_loss_equals_transformers_within_1e_10(name):
    g = golden(name)
    model = head_model(name)
    if name in WITH_SENTENCE_HEAD:
        losses, _ = loss_and_grads(*batch(g, "pair_"), model.weights, model.heads, model.config,
                                   mlm_labels=g["pair_mlm_labels"], sentence_labels=g["pair_sentence_labels"])
        assert abs(losses["total"] - g["pair_loss"]) < 1e-10
    losses, _ = loss_and_grads(*batch(g), model.weights, model.heads, model.config, mlm_labels=g["mlm_labels"])
    assert abs(losses["mlm"] - g["mlm_loss"]) < 1e-10            # measured 1.8e-15 at most


@pytest.mark.parametrize("name", HEADS)
def test_every_gradient_equals_torch_autograd_within_1e_8(name):
    """Encoder, heads and the tied decoder (its gradient added into the word table's), relative to the largest
    entry of each tensor, floored as minibert parity --grad floors it."""
    g, theirs = golden(name), dict(golden(name, "grads.npz"))
    theirs.pop("loss")
    model = head_model(name)
    prefix = "pair_" if name in WITH_SENTENCE_HEAD else ""
    sentence = g["pair_sentence_labels"] if prefix else None
    _, grads = loss_and_grads(*batch(g, prefix), model.weights, model.heads, model.config,
                              mlm_labels=g[prefix + "mlm_labels"], sentence_labels=sentence)
    ours = grads_by_name(grads, model.heads, model.config)
    # torch names a tied pair after whichever module registered it first (XLM-R: the decoder)
    word = next(name for name in ours if name.endswith("embeddings.word_embeddings.weight"))
    for tied in [n for n in theirs if n not in ours and n.endswith(("decoder.weight", "generator_lm_head.weight",
                                                                     "vocab_projector.weight"))]:
        theirs[word] = theirs.pop(tied)
    assert set(ours) == set(theirs)
    largest = max(float(np.abs(v).max()) for v in theirs.values())
    errors = {n: relative_error(ours[n], theirs[n], ZERO_FLOOR * largest) for n in theirs}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-8, (worst, errors[worst])         # measured 6.3e-11 at most (key biases)


def test_fill_mask_command_prints_the_pipeline_json(capsys):
    c = fill_cases("bert")["targets"]
    code = cli_main(["fill-mask", c["inputs"], "--model", str(HEADS_DIR / "bert"), "--backend", "numpy",
                     "--top-k", str(c["top_k"]), "--targets", *c["targets"], "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [a["token"] for a in out] == [a["token"] for a in c["output"]]
    assert [a["sequence"] for a in out] == [a["sequence"] for a in c["output"]]


def test_fill_mask_command_refuses_a_text_without_mask(capsys):
    code = cli_main(["fill-mask", "Paris is the capital.", "--model", str(HEADS_DIR / "bert")])
    assert code == 1
    assert "has no mask token '[MASK]'" in capsys.readouterr().err


def test_fill_mask_on_a_text_over_the_limit_gives_a_hint_it_can_follow(capsys):
    """fill-mask has no truncation or window: the refusal says to shorten the text (it suggested
    "keep truncation=True or use window/stride", options neither fill_mask nor the command has)."""
    long = "word " * 300 + "[MASK]"
    with pytest.raises(InputError, match="texts\\[0\\] has more than the model's 64 tokens; fill-mask reads a "
                                         "text whole: shorten it"):
        minibert.load(str(HEADS_DIR / "bert")).fill_mask(long)
    assert cli_main(["fill-mask", long, "--model", str(HEADS_DIR / "bert")]) == 1
    err = capsys.readouterr().err
    assert "shorten it" in err and "truncation" not in err and "window" not in err
