"""Live parity against transformers (pytest -m reference; needs the `reference` extra, skipped without torch)."""

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_config, write_tiny

import minibert
from minibert.analysis.parity import compare

FAMILIES = Path(__file__).parent / "fixtures" / "families"

pytestmark = pytest.mark.reference
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["How old are you?", "Café Müller's naïve résumé, Ångström.", "北京是中国的首都 🍕 😀 ☃",
         "A longer sentence about the quick brown fox that jumps over the lazy dog near the river bank."]


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_default_model_float32(backend):
    rows = compare(minibert.load(backend=backend), TEXTS)
    worst = {name: stats["max_abs"] for name, stats in rows}
    assert max(worst.values()) < 1e-4, worst
    assert min(stats["min_cos"] for _, stats in rows) > 0.99999


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_default_model_float64(backend):
    rows = compare(minibert.load(backend=backend, dtype="float64"), TEXTS + ["word " * 600])
    worst = {name: stats["max_abs"] for name, stats in rows}
    assert max(worst.values()) < 1e-10, worst


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_random_checkpoints_made_by_transformers(tmp_path, seed, hidden_act):
    """Fresh random BertModels saved by transformers itself load and match, with and without a pooler."""
    torch.manual_seed(seed)
    settings = tiny_config(hidden_act=hidden_act, hidden_size=16 * (seed + 1), num_attention_heads=4,
                           num_hidden_layers=2 + seed, intermediate_size=40)
    settings.pop("architectures")
    config = transformers.BertConfig(**settings)
    model = transformers.BertModel(config, add_pooling_layer=seed != 1)
    with torch.no_grad():   # widen LayerNorm and bias values so every parameter shows in the outputs
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(tmp_path, safe_serialization=True)
    write_tiny(tmp_path / "tok")   # borrow the tiny vocab for tokenization
    (tmp_path / "vocab.txt").write_text((tmp_path / "tok" / "vocab.txt").read_text())
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"
    for backend, dtype, tol in [("cpu", "float32", 1e-4), ("numpy", "float64", 1e-10)]:
        rows = compare(minibert.load(str(tmp_path), backend=backend, dtype=dtype), ["the cat sat on the mat", "hello"])
        assert max(stats["max_abs"] for _, stats in rows) < tol, rows
        assert any(name == "pooler" for name, _ in rows) == (seed != 1)


def test_parity_command_exit_codes(capsys):
    from minibert.cli import main
    assert main(["parity", "--text", "hello world"]) == 0
    out = capsys.readouterr().out
    assert "layer6 " in out and "layer6.attention.probs" in out and "layer.5" not in out   # layers count from 1
    assert main(["parity", "--text", "hello world", "--tolerance", "1e-12"]) == 1
    assert "exceeds tolerance" in capsys.readouterr().err


def test_parity_ops_locates_the_first_operation_above_tolerance(capsys):
    from minibert.cli import main
    assert main(["parity", "--ops", "--text", "hello world"]) == 0
    out = capsys.readouterr().out
    assert "layer1.ffn.intermediate" in out and "layer6.attention.probs" in out and "layer6.output" in out
    assert main(["parity", "--ops", "--text", "hello world", "--tolerance", "1e-9"]) == 1
    assert "first operation above it: embeddings" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["roberta", "electra", "distilbert", "albert_groups"])
def test_parity_ops_reads_every_internal_of_each_module_layout(family):
    """DistilBERT and ALBERT name their modules differently, and ALBERT calls one layer module for several
    layers: every internal must still line up with the same tensor in transformers (measured <= 3e-15)."""
    from conftest import FIXTURES
    from minibert.analysis.parity import compare_ops
    model = minibert.load(FIXTURES / "families" / family, backend="numpy", dtype="float64")
    rows = compare_ops(model, TEXTS[:2])
    assert len(rows) == 1 + model.config.num_hidden_layers * 10
    worst = max(rows, key=lambda row: row[1]["max_abs"])
    assert worst[1]["max_abs"] < 1e-13, worst


# ---------------------------------------------------------------------------------------------------
# Against transformers (pytest -m reference): tokenization of odd texts, lone surrogates, a zero mask row.

@pytest.mark.reference
def test_odd_texts_tokenize_as_transformers_does():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from minibert.api import default_model_dir
    texts = ["", " ", "\t\n  \r", "\x00\x01\x1f\x7f", "the\x00 cat\x07 s\x1bat", "北京是中国的首都 🍕 😀 ☃",
             "Ünïcödé ñ ß ﬁ Ⅻ", "مرحبا بالعالم", "👩‍👩‍👧‍👦🏳️‍🌈", "𝕳𝖊𝖑𝖑𝖔", "\u3000\u2003x", "a" * 300]
    for source in (default_model_dir(), FAMILIES / "roberta", FAMILIES / "xlm_roberta"):
        model = minibert.load(str(source), backend="numpy")
        ours = model.tokenize(texts)
        theirs = transformers.AutoTokenizer.from_pretrained(str(source))(
            texts, truncation=True, max_length=model.tokenizer.max_length)["input_ids"]
        for i, ids in enumerate(theirs):
            assert list(ours.input_ids[i][ours.attention_mask[i] == 1]) == ids, (source, texts[i])
        with pytest.raises(Exception):            # transformers refuses lone surrogates as well
            transformers.AutoTokenizer.from_pretrained(str(source))(["a \ud800"])


@pytest.mark.reference
def test_all_zero_mask_row_matches_transformers_eager_attention():
    """transformers' eager attention adds finfo.min to every key, as minibert does: uniform attention, equal to
    1e-10 (measured 5e-15). Its default SDPA path (torch >= 2.5) differs on purpose: PyTorch's safe softmax
    gives a fully masked row zero probabilities, so the row's attention output is zero; checked here against
    minibert's float64 reference with that one change."""
    from types import SimpleNamespace
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from minibert.api import default_model_dir
    model = minibert.load(backend="numpy", dtype="float64")
    batch = model.tokenize(["A man is playing a guitar.", "Hi"])
    mask = batch.attention_mask.copy()
    mask[1] = 0
    ours = model.forward(batch.input_ids, mask, batch.token_type_ids)

    def zero_context_for_masked_rows(q, k, v, mask_bias, num_heads, return_probs=False, position_bias=None):
        context, probs = model.ops.attention(q, k, v, mask_bias, num_heads, return_probs, position_bias=position_bias)
        context = context.copy()
        context[(mask_bias == np.finfo(mask_bias.dtype).min).all(axis=1)] = 0
        return context, probs
    sdpa_like = minibert.load(backend="numpy", dtype="float64")
    sdpa_like.ops = SimpleNamespace(**{**vars(model.ops), "attention": zero_context_for_masked_rows})
    for implementation, expected in (("eager", ours), ("sdpa", sdpa_like.forward(batch.input_ids, mask,
                                                                                    batch.token_type_ids))):
        theirs = transformers.AutoModel.from_pretrained(str(default_model_dir()), dtype=torch.float64,
                                                        attn_implementation=implementation).eval()
        with torch.no_grad():
            want = theirs(input_ids=torch.tensor(batch.input_ids), attention_mask=torch.tensor(mask),
                          token_type_ids=torch.tensor(batch.token_type_ids), output_hidden_states=True)
        for a, b in zip(expected.hidden_states, want.hidden_states):
            assert np.abs(a - b.numpy()).max() < 1e-10, implementation
