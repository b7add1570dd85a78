"""Every layer of the bundled all-MiniLM-L6-v2 against goldens written by transformers (tests/fixtures/make_goldens.py).

Tolerances: 1e-4 max abs for float32 (measured: at most 4.6e-5 on hidden states, 5e-6 on attention maps),
1e-10 for float64 against transformers run in float64 (measured: at most 4e-14).
"""

import numpy as np
import pytest
from conftest import golden

FP32_CASES = ["pair", "padded_batch", "accents", "cjk_emoji_unk", "long512"]
FP64_CASES = ["pair_f64", "padded_batch_f64", "long512_f64"]


def max_differences(out, g):
    rows, queries = g["token_rows"], g["query_rows"]
    hidden = [np.abs(h[:, rows] - g[f"hidden_state_{i}"]).max() for i, h in enumerate(out.hidden_states)]
    attention = [np.abs(a[:, :, queries] - g[f"attention_{i}"]).max() for i, a in enumerate(out.attentions)]
    return hidden, attention, np.abs(out.pooler_output - g["pooler_output"]).max()


@pytest.mark.parametrize("case", FP32_CASES)
def test_tokenization_identical_to_transformers(model_for, case):
    g = golden(case)
    pairs = list(g["text_pairs"]) if "text_pairs" in g else None
    batch = model_for("numpy").tokenize(list(g["texts"]), pairs)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(getattr(batch, key), g[key], err_msg=key)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("case", FP32_CASES)
def test_float32_every_layer_within_1e_4(model_for, backend, case):
    g = golden(case)
    out = model_for(backend).forward(g["input_ids"], g["attention_mask"], g["token_type_ids"], output_attentions=True)
    assert len(out.hidden_states) == 7 and len(out.attentions) == 6
    hidden, attention, pooler = max_differences(out, g)
    assert max(hidden) < 1e-4, hidden
    assert max(attention) < 1e-4, attention
    assert pooler < 1e-4


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("case", FP64_CASES)
def test_float64_every_layer_within_1e_10(model_for, backend, case):
    g = golden(case)
    out = model_for(backend, "float64").forward(g["input_ids"], g["attention_mask"], g["token_type_ids"],
                                                output_attentions=True)
    assert out.last_hidden_state.dtype == np.float64
    hidden, attention, pooler = max_differences(out, g)
    assert max(hidden) < 1e-10, hidden
    assert max(attention) < 1e-10, attention
    assert pooler < 1e-10


def test_text_call_matches_forward_and_last_hidden_state(model_for):
    g = golden("padded_batch")
    model = model_for("cpu")
    out = model(list(g["texts"]))
    assert out.last_hidden_state is out.hidden_states[-1]
    assert out.attentions is None
    np.testing.assert_array_equal(out.attention_mask, g["attention_mask"])
    assert np.abs(out.hidden_states[3] - g["hidden_state_3"]).max() < 1e-4
