"""Cross-encoders as sentence-transformers' CrossEncoder runs them, and the `rerank` command.

Torch-free: the tiny ce_* fixtures (saved by sentence-transformers 6 itself, tests/fixtures/make_st_surface.py)
against their goldens. Under -m reference: CrossEncoder live, in float64 (its .double()), and a classifier
saved by minibert loaded in CrossEncoder.
"""

import importlib.util
import io
import json
import warnings

import numpy as np
import pytest
from conftest import FIXTURES

import minibert
from minibert.errors import ConfigError, InputError, ModelFileError

GOLDEN_TOL = 1e-5       # float32 scores; measured: at most 2.8e-6 over these fixtures
CASES = ["ce_one_label", "ce_two_labels", "ce_three_labels", "ce_identity", "ce_legacy_tanh"]
ONE_LABEL = ["ce_one_label", "ce_identity", "ce_legacy_tanh"]


def load_maker():
    spec = importlib.util.spec_from_file_location("make_st_surface", FIXTURES / "make_st_surface.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = load_maker()


def golden(case):
    with np.load(FIXTURES / case / "golden.npz") as data:
        return {key: data[key] for key in data.files}


def cross_encoder(case, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the long pairs' truncation warning
        return minibert.load_cross_encoder(FIXTURES / case, **options)


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.mark.parametrize("case", CASES)
def test_predict_equals_sentence_transformers_with_its_stored_activation(case):
    model, want = cross_encoder(case), golden(case)
    got = quiet(model.predict, MAKER.PAIRS, batch_size=3)
    assert got.shape == want["predict"].shape and got.dtype == np.float32
    assert np.abs(got - want["predict"]).max() < GOLDEN_TOL, np.abs(got - want["predict"]).max()
    raw = quiet(model.predict, MAKER.PAIRS, activation_fn="Identity")
    assert np.abs(raw - want["logits"]).max() < GOLDEN_TOL
    one = quiet(model.predict, MAKER.PAIRS[1])            # one pair: its score alone
    assert np.shape(one) == want["predict_one"].shape and np.abs(one - want["predict_one"]).max() < GOLDEN_TOL


def test_activation_comes_from_where_each_sentence_transformers_version_stores_it():
    assert [cross_encoder(c).activation for c in CASES] == ["Sigmoid", "Identity", "Identity", "Identity", "Tanh"]
    assert "config_sentence_transformers.json" in cross_encoder("ce_identity").activation_source
    assert "config.json sentence_transformers" in cross_encoder("ce_legacy_tanh").activation_source
    assert cross_encoder("ce_one_label", activation_fn="Identity").activation == "Identity"


def test_pairs_past_max_length_are_cut_longest_first_at_the_saved_limit():
    model = cross_encoder("ce_one_label")
    assert model.max_length == 24               # tokenizer_config.json's model_max_length, as CrossEncoder saved it
    with pytest.warns(UserWarning, match="truncated"):
        model.predict(MAKER.PAIRS)
    batch = model.classifier.tokenizer([MAKER.LONG, "a dog"], [MAKER.LONG, MAKER.LONG], max_length=24)
    assert batch.attention_mask.sum(axis=1).tolist() == [24, 24]
    model.max_length = 16
    assert np.abs(quiet(model.predict, MAKER.PAIRS) - golden("ce_one_label")["predict"]).max() > 1e-3


@pytest.mark.parametrize("case", ["ce_two_labels", "ce_three_labels"])
def test_apply_softmax_on_multi_label_models(case):
    got = quiet(cross_encoder(case).predict, MAKER.PAIRS, apply_softmax=True)
    assert np.abs(got - golden(case)["predict_softmax"]).max() < GOLDEN_TOL
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-6)


@pytest.mark.parametrize("case", ONE_LABEL)
def test_rank_orders_as_sentence_transformers_ties_in_document_order(case):
    model, want = cross_encoder(case), golden(case)
    ranked = quiet(model.rank, MAKER.QUERY, MAKER.DOCUMENTS)
    assert [r["corpus_id"] for r in ranked] == want["rank_corpus_id"].tolist()
    assert np.abs(np.array([r["score"] for r in ranked]) - want["rank_score"]).max() < GOLDEN_TOL
    assert all(set(r) == {"corpus_id", "score"} and isinstance(r["score"], float) for r in ranked)
    # documents 0 and 3 are the same text: equal scores, listed in the documents' order
    tied = [r["corpus_id"] for r in ranked if r["corpus_id"] in (0, 3)]
    assert tied == [0, 3]
    top = quiet(model.rank, MAKER.QUERY, MAKER.DOCUMENTS, top_k=3, return_documents=True)
    assert [r["corpus_id"] for r in top] == want["rank_top3_corpus_id"].tolist()
    assert [r["text"] for r in top] == want["rank_top3_text"].tolist()


def test_float64_cross_encoder_agrees_with_the_float32_goldens():
    model = cross_encoder("ce_three_labels", dtype="float64")
    got = quiet(model.predict, MAKER.PAIRS)
    assert got.dtype == np.float64 and np.abs(got - golden("ce_three_labels")["predict"]).max() < GOLDEN_TOL


def test_bad_calls_are_refused_by_name():
    one, two = cross_encoder("ce_one_label"), cross_encoder("ce_two_labels")
    with pytest.raises(InputError, match="one-label"):
        two.rank("q", ["a"])
    with pytest.raises(InputError, match=r"pairs\[1\]"):
        one.predict([("a", "b"), ("only one",)])
    with pytest.raises(InputError, match="activation_fn"):
        one.predict([("a", "b")], activation_fn="Softplus")
    with pytest.raises(InputError, match="top_k"):
        one.rank("q", ["a"], top_k=-1)
    with pytest.raises(InputError, match="max_length"):
        one.max_length = 1000
    assert one.rank("q", []) == [] and one.predict([]).shape == (0,)


def test_an_activation_outside_torch_is_not_run_and_an_unknown_torch_one_is_refused(tmp_path):
    import shutil
    folder = shutil.copytree(FIXTURES / "ce_legacy_tanh", tmp_path / "ce", ignore=shutil.ignore_patterns("*.npz"))
    config = json.loads((folder / "config.json").read_text())
    config["sentence_transformers"]["activation_fn"] = "my_package.Scaled"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="not a torch activation"):
        assert minibert.load_cross_encoder(folder).activation == "Sigmoid"
    config["sentence_transformers"]["activation_fn"] = "torch.nn.modules.activation.Softplus"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="Softplus"):
        minibert.load_cross_encoder(folder)


def without_id2label(case, folder, **config_changes):
    """A copy of a fixture whose config.json has no id2label / label2id, as transformers 5 saves a
    classifier whose labels are its defaults (LABEL_0, LABEL_1)."""
    import shutil
    folder = shutil.copytree(FIXTURES / case, folder, ignore=shutil.ignore_patterns("*.npz"))
    config = json.loads((folder / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (folder / "config.json").write_text(json.dumps({**config, **config_changes}))
    return folder


def test_a_config_without_id2label_gets_transformers_default_labels(tmp_path):
    """transformers reads a config.json without id2label as num_labels labels (2 when it names none), called
    LABEL_0..LABEL_{n-1}; the scores are the fixture's."""
    from minibert.train.classifier import load_classifier
    two = without_id2label("ce_two_labels", tmp_path / "two")
    model = cross_encoder(two)
    assert model.classifier.labels == ["LABEL_0", "LABEL_1"]
    got = quiet(model.predict, MAKER.PAIRS, batch_size=3)
    assert np.abs(got - golden("ce_two_labels")["predict"]).max() < GOLDEN_TOL
    three = without_id2label("ce_three_labels", tmp_path / "three", num_labels=3)
    assert load_classifier(three).labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    with pytest.raises(ModelFileError, match="3 classes but config.json has no id2label: transformers' default 2"):
        load_classifier(without_id2label("ce_three_labels", tmp_path / "default"))
    for bad in (0, "3", True):
        with pytest.raises(ModelFileError, match="num_labels must be an int >= 1"):
            load_classifier(without_id2label("ce_three_labels", tmp_path / f"bad{bad}", num_labels=bad))
    with pytest.raises(ModelFileError, match="no usable id2label"):      # present but empty: not a default
        load_classifier(without_id2label("ce_two_labels", tmp_path / "empty", id2label={}))


def test_config_sentence_transformers_json_counts_only_beside_a_modules_json(tmp_path):
    """sentence-transformers 6 reads config_sentence_transformers.json (the activation) only for a directory
    with a modules.json; without one it loads a plain checkpoint: config.json's setting, else the default."""
    import shutil
    folder = shutil.copytree(FIXTURES / "ce_identity", tmp_path / "ce", ignore=shutil.ignore_patterns("*.npz"))
    (folder / "modules.json").unlink()
    model = cross_encoder(folder)
    assert model.activation == "Sigmoid" and "default" in model.activation_source


def test_an_embedding_model_is_not_a_cross_encoder():
    with pytest.raises(ModelFileError, match="one Transformer module"):
        minibert.load_cross_encoder(FIXTURES / "surface_query_document")


def test_rerank_command_prints_the_ranking(tmp_path, capsys, monkeypatch):
    from minibert.cli import main
    passages = tmp_path / "passages.txt"
    passages.write_text("\n".join(MAKER.DOCUMENTS[:3]) + "\n\n" + "\n".join(MAKER.DOCUMENTS[3:]) + "\n")
    want = golden("ce_one_label")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["rerank", MAKER.QUERY, str(passages), "--model", str(FIXTURES / "ce_one_label"), "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)
    assert [r["corpus_id"] for r in ranked] == want["rank_corpus_id"].tolist()
    assert [r["rank"] for r in ranked] == list(range(1, 8))
    assert ranked[0]["line"] == 7 and ranked[0]["text"] == MAKER.DOCUMENTS[5]     # the blank line 4 skipped
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("\n".join(MAKER.DOCUMENTS).encode("utf-8"))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["rerank", MAKER.QUERY, "-", "--model", str(FIXTURES / "ce_one_label"), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1" and lines[0].endswith(MAKER.DOCUMENTS[5])
    assert abs(float(lines[0].split()[1]) - want["rank_score"][0]) < GOLDEN_TOL
    assert main(["rerank", "q", str(tmp_path / "missing.txt"), "--model", str(FIXTURES / "ce_one_label")]) == 1
    assert "passage file not found" in capsys.readouterr().err


def test_rerank_names_the_line_of_bad_utf8_a_directory_and_an_undecodable_query(tmp_path, capsys):
    """The passages are read by corpus/readers.py: bad UTF-8 names file, line and byte (it said "of a block
    read"), a directory is said to be one (it was "not found"); a query of undecodable bytes (surrogates in
    argv) is named as the query, not texts[0]."""
    from minibert.cli import main
    model = str(FIXTURES / "ce_one_label")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("first passage\ncaf\u00e9 au lait\n".encode("latin-1"))
    assert main(["rerank", "q", str(latin), "--model", model]) == 1
    assert f"{latin}:2: not valid UTF-8 at byte 17 of the file" in capsys.readouterr().err
    assert main(["rerank", "q", str(tmp_path), "--model", model]) == 1
    assert f"{tmp_path} is a directory, not a passage file" in capsys.readouterr().err
    passages = tmp_path / "passages.txt"
    passages.write_text("one\ntwo\n")
    assert main(["rerank", "caf\udce9", str(passages), "--model", model]) == 1
    assert "the query is not valid UTF-8 text (character 3" in capsys.readouterr().err


def test_a_classifier_saved_by_minibert_loads_as_a_cross_encoder(tmp_path):
    """Classifier.save (what `minibert finetune` writes): its softmax is predict(apply_softmax=True)'s."""
    from minibert.train.classifier import load_classifier
    classifier = load_classifier(FIXTURES / "ce_two_labels")
    saved = cross_encoder(classifier.save(tmp_path / "saved"))
    assert saved.activation == "Identity" and saved.max_length == 20
    texts, pairs = [q for q, _ in MAKER.PAIRS], [p for _, p in MAKER.PAIRS]
    classifier.max_length = 20
    want = quiet(classifier.predict_proba, texts, pairs)
    assert np.abs(quiet(saved.predict, MAKER.PAIRS, apply_softmax=True) - want).max() < 1e-6


def test_a_cross_encoder_saved_again_keeps_its_stored_activation(tmp_path):
    """Classifier.save copies a cross-encoder's config_sentence_transformers.json (its activation_fn) with the
    modules.json beside which sentence-transformers reads it, so CrossEncoder scores the saved model as it
    scored the source; an embedding model's settings (prompts, similarity) are not a classifier's."""
    import shutil
    from minibert.train.classifier import load_classifier
    source = FIXTURES / "ce_identity"
    saved = load_classifier(source).save(tmp_path / "saved")
    name = "config_sentence_transformers.json"
    for copied in (name, "modules.json", "sentence_bert_config.json"):
        assert (saved / copied).read_bytes() == (source / copied).read_bytes()
    model = cross_encoder(saved)
    assert model.activation == "Identity" and name in model.activation_source
    assert np.abs(quiet(model.predict, MAKER.PAIRS) - golden("ce_identity")["predict"]).max() < GOLDEN_TOL
    embedding = shutil.copytree(FIXTURES / "ce_two_labels", tmp_path / "embedding",
                                ignore=shutil.ignore_patterns("*.npz"))
    shutil.copyfile(FIXTURES / "surface_dot" / name, embedding / name)
    assert not (load_classifier(embedding).save(tmp_path / "from_embedding") / name).exists()


# ---- live, against sentence-transformers ----------------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("case", CASES)
def test_live_float64_scores_equal_cross_encoder(case):
    st = pytest.importorskip("sentence_transformers")
    import torch
    reference = st.CrossEncoder(str(FIXTURES / case), device="cpu")
    reference.model.double()
    want = reference.predict(MAKER.PAIRS, batch_size=3, convert_to_tensor=True).numpy()
    got = quiet(cross_encoder(case, dtype="float64").predict, MAKER.PAIRS, batch_size=3)
    assert want.dtype == np.float64 and np.abs(got - want).max() < 1e-12, np.abs(got - want).max()
    if case in ONE_LABEL:
        ranked = reference.rank(MAKER.QUERY, MAKER.DOCUMENTS)
        assert [r["corpus_id"] for r in quiet(cross_encoder(case, dtype="float64").rank, MAKER.QUERY,
                                              MAKER.DOCUMENTS)] == [r["corpus_id"] for r in ranked]
    else:
        want = reference.predict(MAKER.PAIRS, apply_softmax=True, convert_to_tensor=True).numpy()
        got = quiet(cross_encoder(case, dtype="float64").predict, MAKER.PAIRS, apply_softmax=True)
        assert np.abs(got - want).max() < 1e-12
    del torch


@pytest.mark.reference
def test_live_a_one_output_classifier_saved_by_minibert_loads_in_cross_encoder(tmp_path):
    """Classifier.save (what `minibert finetune` writes) of a one-output model: CrossEncoder and
    minibert.load_cross_encoder give the same scores."""
    st = pytest.importorskip("sentence_transformers")
    from minibert.train.classifier import load_classifier
    saved = load_classifier(FIXTURES / "ce_legacy_tanh").save(tmp_path / "saved")
    reference = st.CrossEncoder(str(saved), device="cpu")
    want = reference.predict(MAKER.PAIRS, batch_size=3)
    got = quiet(minibert.load_cross_encoder(saved).predict, MAKER.PAIRS, batch_size=3)
    assert type(reference.activation_fn).__name__ == "Tanh"     # the source's setting travels in config.json
    assert np.abs(got - want).max() < GOLDEN_TOL, np.abs(got - want).max()


@pytest.mark.reference
def test_live_a_config_without_id2label_reads_as_transformers_and_cross_encoder_read_it(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    from transformers import AutoConfig
    folder = without_id2label("ce_two_labels", tmp_path / "two")
    assert [AutoConfig.from_pretrained(folder).id2label[i] for i in range(2)] == \
        minibert.load_classifier(folder).labels
    reference = st.CrossEncoder(str(folder), device="cpu")
    reference.model.double()
    want = reference.predict(MAKER.PAIRS, batch_size=3, convert_to_tensor=True).numpy()
    got = quiet(cross_encoder(folder, dtype="float64").predict, MAKER.PAIRS, batch_size=3)
    assert np.abs(got - want).max() < 1e-12, np.abs(got - want).max()


@pytest.mark.reference
def test_live_a_cross_encoder_saved_again_scores_in_cross_encoder_with_its_activation(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    saved = minibert.load_classifier(FIXTURES / "ce_identity").save(tmp_path / "saved")
    reference = st.CrossEncoder(str(saved), device="cpu")
    assert type(reference.activation_fn).__name__ == "Identity"     # the default for one label is Sigmoid
    reference.model.double()
    want = reference.predict(MAKER.PAIRS, batch_size=3, convert_to_tensor=True).numpy()
    got = quiet(cross_encoder(saved, dtype="float64").predict, MAKER.PAIRS, batch_size=3)
    assert np.abs(got - want).max() < 1e-12, np.abs(got - want).max()


@pytest.mark.reference
def test_live_without_modules_json_cross_encoder_ignores_config_sentence_transformers_json(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    import shutil
    folder = shutil.copytree(FIXTURES / "ce_identity", tmp_path / "ce", ignore=shutil.ignore_patterns("*.npz"))
    (folder / "modules.json").unlink()
    reference = st.CrossEncoder(str(folder), device="cpu")
    assert type(reference.activation_fn).__name__ == cross_encoder(folder).activation == "Sigmoid"
    reference.model.double()
    want = reference.predict(MAKER.PAIRS, batch_size=3, convert_to_tensor=True).numpy()
    got = quiet(cross_encoder(folder, dtype="float64").predict, MAKER.PAIRS, batch_size=3)
    assert np.abs(got - want).max() < 1e-12, np.abs(got - want).max()


def test_a_cross_encoder_directory_loads_as_its_encoder_and_starts_a_finetune(tmp_path):
    """sentence-transformers 6 saves a CrossEncoder with a modules.json listing its Transformer alone: minibert.load
    reads it as the encoder (its length and casing, pooled as a plain checkpoint), so `finetune --model` starts from
    a cross-encoder; it was refused for want of a Pooling module."""
    from minibert.train.data import Examples
    from minibert.train.finetune import TrainingRecipe, finetune
    model = minibert.load(FIXTURES / "ce_identity", dtype="float64")
    assert model.recipe.kind == "transformers" and model.recipe.pooling == "mean"
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (plain / name).write_bytes((FIXTURES / "ce_identity" / name).read_bytes())
    np.testing.assert_array_equal(model.encode(["a cat", "two dogs"]),
                                  minibert.load(plain, dtype="float64").encode(["a cat", "two dogs"]))
    texts = (["a cat sat", "rain falls", "the dog ran", "sun shines"], ["a cat", "snow", "a dog", "moon"])
    classifier = finetune(model, Examples(texts[0], [1, 0, 1, 0], texts[1]),
                          recipe=TrainingRecipe(epochs=1, batch_size=2))
    assert classifier.logits(*texts).shape == (4, 2)
