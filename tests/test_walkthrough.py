"""The walkthrough: its formulas reproduce minibert step by step, and every function it (and
docs/walkthrough.md) points a reader to exists."""

import importlib
import re
from pathlib import Path

import pytest

import minibert
from minibert.analysis import walkthrough
from tiny import write_tiny

FAMILIES = Path(__file__).parent / "fixtures" / "families"
DOC = Path(__file__).parent.parent / "docs" / "walkthrough.md"


def resolve(where):
    """'minibert/model.py: embeddings' or 'minibert/tokenizer.py: Tokenizer.__call__' -> the object."""
    path, name = (part.strip() for part in where.split(":"))
    module = importlib.import_module(path[:-3].replace("/", ".").replace("kernels.", "minibert.kernels.")
                                     if path.startswith("kernels/") else path[:-3].replace("/", "."))
    obj = module
    for attribute in name.replace("()", "").split("."):
        obj = getattr(obj, attribute)
    return obj


def test_default_model_in_float64_agrees_to_rounding(model_for):
    model = model_for("numpy", "float64")
    tokens, ids, steps = walkthrough.walkthrough(model, "Walking through BERT, one step at a time.")
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(ids) == len(tokens)
    names = [s.name for s in steps]
    assert names[0] == "embeddings" and "layer 1 attention.probs" in names and names[-1] == "pooler"
    assert sum(n.endswith(" output") and n.startswith("layer") for n in names) == model.config.num_hidden_layers
    for step in steps:
        assert step.max_diff < 1e-10, step.name
        resolve(step.where)


@pytest.mark.parametrize("family", ["albert", "electra", "roberta", "distilbert", "mpnet"])
def test_other_families_through_the_same_formulas(family):
    """ALBERT/ELECTRA add an embedding projection, RoBERTa skips padding positions, DistilBERT has no
    token types, MPNet adds a relative position bias: the walkthrough's formulas cover each."""
    model = minibert.load(FAMILIES / family, backend="numpy", dtype="float64")
    _, _, steps = walkthrough.walkthrough(model, "hello world")
    assert max(s.max_diff for s in steps) < 1e-10


def test_float32_and_a_wrong_formula_is_caught(tmp_path, monkeypatch):
    model = minibert.load(write_tiny(tmp_path / "tiny"), backend="numpy", dtype="float32")
    _, _, steps = walkthrough.walkthrough(model, "the cat sat")
    assert max(s.max_diff for s in steps) < 1e-5
    # The tanh approximation in place of exact GELU: the comparison must notice.
    right = walkthrough.reference_layers.encoder_layer_forward
    monkeypatch.setattr(walkthrough.reference_layers, "encoder_layer_forward",
                        lambda *args, **kwargs: right(*args, **{**kwargs, "activation": "gelu_new"}))
    _, _, steps = walkthrough.walkthrough(model, "the cat sat")
    bad = {s.name for s in steps if s.max_diff > 1e-5}
    assert "layer 1 ffn.intermediate" in bad and "layer 1 attention.probs" not in bad


def test_main_prints_every_step(tmp_path, capsys):
    assert walkthrough.main(["the cat sat on the mat", "--model", str(write_tiny(tmp_path / "tiny"))]) == 0
    out = capsys.readouterr().out
    assert "tokens  minibert/tokenizer.py: Tokenizer.__call__" in out
    assert re.search(r"largest difference: \d\.\de[+-]\d\d", out)
    assert out.count("max |diff|") >= 12


def test_doc_points_at_real_functions():
    text = DOC.read_text()
    pointers = re.findall(r"`((?:minibert|kernels)/[a-z_/]+\.py): ([A-Za-z_][\w.]*)`", text)
    assert len(pointers) >= 15
    for path, name in pointers:
        resolve(f"{path}: {name}")


HEADS = Path(__file__).parent / "fixtures" / "heads"


@pytest.mark.parametrize("name", ["bert", "albert", "roberta", "distilbert"])
def test_the_pretraining_heads_and_losses_beside_their_formulas(name):
    """A checkpoint with BERT's own heads adds the MLM logits and loss (and, for BERT's next sentence and
    ALBERT's sentence order, the sentence head's logits and loss); the losses are the ones training computes."""
    model = minibert.load(HEADS / name, backend="numpy", dtype="float64")
    _, _, steps = walkthrough.walkthrough(model, "Paris is the capital of France.")
    names = [s.name for s in steps]
    tail = ["MLM logits", "MLM loss"] + (["NSP logits", "NSP loss"] if name in ("bert", "albert") else [])
    assert names[-len(tail):] == tail
    for step in steps:
        assert step.max_diff < 1e-10, step.name
        resolve(step.where)
    assert steps[names.index("MLM logits")].ours.shape[-1] == model.config.vocab_size


def test_a_wrong_head_formula_is_caught(monkeypatch):
    model = minibert.load(HEADS / "bert", backend="numpy", dtype="float64")
    right = walkthrough.reference_layers.mlm_head_forward
    monkeypatch.setattr(walkthrough.reference_layers, "mlm_head_forward",
                        lambda *args, **kwargs: right(*args, **{**kwargs, "activation": "relu"}))
    _, _, steps = walkthrough.walkthrough(model, "the cat sat")
    bad = {s.name for s in steps if s.max_diff > 1e-5}
    assert {"MLM logits", "MLM loss"} <= bad and "NSP loss" not in bad
