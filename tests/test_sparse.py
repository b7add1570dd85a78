"""SPLADE vectors against sentence-transformers' SparseEncoder (goldens by tests/fixtures/make_heads.py), torch-free.

splade/: Transformer (fill-mask) + SpladePooling(max, relu) over heads/bert, saved by SparseEncoder.save;
splade_sum/: the same with sum pooling, the log1p_relu activation and max_active_dims 20 in its config.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import minibert
from minibert import ConfigError, InputError
from minibert.embed.sparse import SparseVectors

HEADS_DIR = Path(__file__).parent / "fixtures" / "heads"


def golden(name):
    with np.load(HEADS_DIR / name / "golden.npz") as data:
        return {key: data[key] for key in data.files}


def assert_same_vectors(vectors: SparseVectors, dense, tolerance):
    assert len(vectors) == len(dense)
    for ids, weights, row in zip(vectors.ids, vectors.weights, dense):
        assert np.array_equal(ids, np.flatnonzero(row))                 # non-zero ids identical, ascending
        assert np.abs(weights - row[ids]).max() < tolerance


@pytest.mark.parametrize("name", ["splade", "splade_sum"])
@pytest.mark.parametrize("backend, dtype, tolerance", [("numpy", "float64", 1e-12), ("cpu", "float32", 1e-5)])
def test_encode_sparse_equals_sparse_encoder(name, backend, dtype, tolerance):
    g = golden(name)
    model = minibert.load_sparse(str(HEADS_DIR / name), backend=backend, dtype=dtype)
    vectors = model.encode_sparse(list(g["texts"]), batch_size=2)
    assert_same_vectors(vectors, g["dense"], tolerance)      # measured 3.9e-15 (float64), 1.5e-6 (float32)
    if name == "splade_sum":                                 # the config's max_active_dims 20 applied
        assert max(len(ids) for ids in vectors.ids) == 20


def test_max_active_dims_keeps_the_largest_weights_as_sparse_encoder():
    g = golden("splade")
    model = minibert.load_sparse(str(HEADS_DIR / "splade"), backend="numpy", dtype="float64")
    assert_same_vectors(model.encode_sparse(list(g["texts"]), max_active_dims=7), g["max_active_dims_7"], 1e-12)


def test_decode_gives_sparse_encoders_tokens_by_descending_weight():
    g = golden("splade")
    expected = json.loads((HEADS_DIR / "splade" / "decode.json").read_text(encoding="utf-8"))
    model = minibert.load_sparse(str(HEADS_DIR / "splade"), backend="numpy", dtype="float64")
    decoded = model.encode_sparse(list(g["texts"])).decode(top_k=expected["top_k"])
    assert [[token for token, _ in row] for row in decoded] == [[token for token, _ in row]
                                                                for row in expected["decoded"]]
    assert max(abs(w - v) for row, ref in zip(decoded, expected["decoded"])
               for (_, w), (_, v) in zip(row, ref)) < 1e-12


def test_one_text_gives_one_vector_and_dense_form_round_trips():
    model = minibert.load_sparse(str(HEADS_DIR / "splade"), backend="numpy", dtype="float64")
    vectors = model.encode_sparse("Hello world!")
    dense = vectors.to_dense()
    assert dense.shape == (model.config.vocab_size,)
    assert np.array_equal(np.flatnonzero(dense), vectors.ids[0])
    assert isinstance(vectors.decode(top_k=2), list) and isinstance(vectors.decode(top_k=2)[0], tuple)


def test_a_plain_masked_lm_checkpoint_gives_the_default_splade():
    """No modules.json: max pooling of log1p(relu(logits)), the SparseEncoder fixture's settings, on the same
    weights (splade/ was saved from heads/bert)."""
    g = golden("splade")
    model = minibert.load(str(HEADS_DIR / "bert"), backend="numpy", dtype="float64")
    assert_same_vectors(model.encode_sparse(list(g["texts"])), g["dense"], 1e-12)


def test_bad_settings_are_clear_errors(tmp_path):
    model = minibert.load(str(HEADS_DIR / "bert"), backend="numpy")
    with pytest.raises(ConfigError, match="SPLADE pooling must be one of max, sum, found 'mean'"):
        model.encode_sparse("hi", pooling="mean")
    with pytest.raises(ConfigError, match="max_active_dims must be a positive int, found 0"):
        model.encode_sparse("hi", max_active_dims=0)
    with pytest.raises(InputError, match="top_k must be a positive int"):
        model.encode_sparse("hi").decode(top_k=0)
    target = tmp_path / "splade"
    shutil.copytree(HEADS_DIR / "splade", target)
    modules = json.loads((target / "modules.json").read_text())
    modules[1]["type"] = "sentence_transformers.sparse_encoder.modules.sparse_auto_encoder.SparseAutoEncoder"
    (target / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="a Transformer module then a SpladePooling module; found "
                                          r"\['Transformer', 'SparseAutoEncoder'\]"):
        minibert.load_sparse(str(target))


def test_an_encoder_only_checkpoint_has_no_sparse_vectors():
    model = minibert.load(str(Path(__file__).parent / "fixtures" / "families" / "bert_cased"), backend="numpy")
    with pytest.raises(minibert.ModelFileError, match="no masked-LM head"):
        model.encode_sparse("hi")


def test_embed_sparse_prints_sparse_encoders_vectors(capsys):
    from minibert.cli import main as cli_main
    g = golden("splade_sum")                                 # sum pooling, log1p_relu, max_active_dims 20
    texts = [str(t) for t in g["texts"]]
    assert cli_main(["embed", *texts, "--sparse", "--model", str(HEADS_DIR / "splade_sum"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["text"] for row in rows] == texts
    vectors = SparseVectors(ids=[np.array(row["ids"]) for row in rows],
                            weights=[np.array(row["weights"]) for row in rows], vocab_size=rows[0]["vocab_size"],
                            single=False)
    assert_same_vectors(vectors, g["dense"], 1e-5)           # the command runs in float32
    assert all(len(row["tokens"]) == len(row["ids"]) <= 20 for row in rows)
    assert cli_main(["embed", texts[0], "--sparse", "--model", str(HEADS_DIR / "splade_sum")]) == 0
    assert "of 600 non-zero" in capsys.readouterr().out


def test_embed_sparse_refuses_dense_options_and_a_checkpoint_without_the_mlm_head(capsys):
    from minibert.cli import main as cli_main
    assert cli_main(["embed", "a cat", "--sparse", "--pooling", "cls", "--model", str(HEADS_DIR / "splade")]) == 1
    assert "--pooling shape dense vectors" in capsys.readouterr().err
    encoder_only = Path(__file__).parent / "fixtures" / "families" / "albert"
    assert cli_main(["embed", "a cat", "--sparse", "--model", str(encoder_only)]) == 1
    assert "no masked-LM head" in capsys.readouterr().err


def test_encode_sparse_refuses_bad_texts_and_max_length_as_encode_does():
    model = minibert.load_sparse(str(HEADS_DIR / "splade"))
    with pytest.raises(InputError, match="texts must be a str or a list of str, found NoneType"):
        model.encode_sparse(None)
    for bad in (0, 1, "8", 2.5, True):
        with pytest.raises(InputError, match="max_length must be an int of at least 2"):
            model.encode_sparse(["a"], max_length=bad)


def test_encode_sparse_warns_of_truncated_texts_with_encodes_warning():
    """A text over the SPLADE length limit is cut, and said to be, as encode says it; there was no warning."""
    model = minibert.load_sparse(str(HEADS_DIR / "splade"))
    limit = model.splade_settings.max_length or model.tokenizer.max_length
    with pytest.warns(UserWarning, match=f"1 of 2 texts were longer than {limit} tokens and were truncated; "
                      "split long texts into passages"):
        model.encode_sparse(["word " * 300, "short"])
    with pytest.warns(UserWarning, match="1 of 1 texts were longer than 8 tokens and were truncated; pass "
                      "max_length="):
        model.encode_sparse(["word " * 300], max_length=8)


@pytest.mark.parametrize("name", ["splade", "splade_sum"])
def test_load_reads_a_sparse_encoder_directory_as_its_encoder_with_its_splade_settings(name):
    """minibert.load of a SparseEncoder directory (it refused SpladePooling): the encoder and MLM head, with
    encode_sparse following the directory's settings exactly as load_sparse's."""
    loaded, sparse = minibert.load(str(HEADS_DIR / name)), minibert.load_sparse(str(HEADS_DIR / name))
    assert loaded.splade_settings == sparse.splade_settings
    texts = ["the cat sat on the mat", "Paris is the capital of France."]
    got, want = loaded.encode_sparse(texts), sparse.encode_sparse(texts)
    for a, b, x, y in zip(got.ids, want.ids, got.weights, want.weights):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(x, y)
    assert loaded.fill_mask("the cat [MASK] on the mat") == sparse.fill_mask("the cat [MASK] on the mat")


def test_dense_encode_of_a_sparse_encoder_is_refused_unless_a_pooling_is_named():
    """A SparseEncoder has no dense recipe: encode without pooling= names encode_sparse rather than give a
    mean-pooled vector sentence-transformers never gives for it; a named pooling pools its token vectors."""
    model = minibert.load(str(HEADS_DIR / "splade"))
    with pytest.raises(InputError, match="is a SparseEncoder .* use encode_sparse"):
        model.encode(["hi"])
    sparse = minibert.load_sparse(str(HEADS_DIR / "splade"))     # its pool's workers loaded it (they refused)
    with sparse.start_multi_process_pool(1) as pool:
        np.testing.assert_allclose(sparse.encode(["hi", "the cat"], pooling="cls", pool=pool),
                                   sparse.encode(["hi", "the cat"], pooling="cls"), atol=2e-6)
        with pytest.raises(InputError, match="is a SparseEncoder"):
            sparse.encode(["hi"], pool=pool)


def test_fill_mask_and_inspect_commands_take_a_sparse_encoder_directory(capsys):
    from minibert.cli import main
    main(["fill-mask", "the cat [MASK] on the mat", "--model", str(HEADS_DIR / "splade")])
    want = minibert.load(str(HEADS_DIR / "splade")).fill_mask("the cat [MASK] on the mat")
    assert want[0]["token_str"] in capsys.readouterr().out
    main(["inspect", str(HEADS_DIR / "splade")])
    out = capsys.readouterr().out
    assert "sentence-transformers SparseEncoder" in out and "SpladePooling" in out


def test_encode_sparse_lower_cases_texts_when_the_transformer_module_says(tmp_path):
    """sentence_bert_config.json's do_lower_case applies to a SparseEncoder's texts as to any Transformer
    module's (encode_sparse ignored it; the server's /embed_sparse, reading the recipe, applied it)."""
    target = tmp_path / "splade"
    shutil.copytree(HEADS_DIR / "splade", target)
    config = json.loads((target / "sentence_bert_config.json").read_text())
    (target / "sentence_bert_config.json").write_text(json.dumps({**config, "do_lower_case": True}))
    lowered, cased = minibert.load_sparse(str(target)), minibert.load_sparse(str(HEADS_DIR / "splade"))
    got, want = lowered.encode_sparse(["Hello World"]), cased.encode_sparse(["hello world"])
    np.testing.assert_array_equal(got.ids[0], want.ids[0])
    np.testing.assert_array_equal(got.weights[0], want.weights[0])
    assert not np.array_equal(cased.encode_sparse(["Hello World"]).ids[0], want.ids[0])
