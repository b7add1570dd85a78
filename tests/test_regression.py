"""finetune's regression task: one output per text or pair, trained with MSE (transformers' problem_type
"regression") or BCE with logits (sentence-transformers' BinaryCrossEntropyLoss), saved so that transformers and
sentence-transformers' CrossEncoder load it and score as minibert does; its dev metrics (MSE, Pearson, Spearman
as CrossEncoderCorrelationEvaluator reports them), refusals, command line and model card. The losses' gradients
against torch autograd are in test_backward.py (goldens by tests/fixtures/make_grad_goldens.py).

Under -m reference: CrossEncoder(dir).predict, AutoModelForSequenceClassification's logits and the correlation
evaluator live against what minibert saved."""

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import minibert
from minibert.errors import InputError
from minibert.train.classifier import load_classifier
from minibert.train.data import Examples
from minibert.train.finetune import TrainingRecipe, finetune
from minibert.train.objectives import average_ranks, pearson, score_metrics, spearman

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = FIXTURES / "families"
STSB = FIXTURES / "stsb"
PAIRS = [("the cat", "a red dog"), ("a dog ran", "the blue mat"), ("red red cat", "a red mat on the dog"),
         ("sat on the mat", "under a cat")]


def scored_pairs(n, seed=0, unit=False):
    """test_finetune's pair task as scores: 5 (1 when unit) when 'red' is in the second text, else 0."""
    rng = np.random.default_rng(seed)
    vocab = "cat dog sat ran mat the a on red big".split()
    texts = [" ".join(rng.choice(vocab, rng.integers(2, 6))) for _ in range(n)]
    pairs = [" ".join(rng.choice(vocab, rng.integers(2, 6))) for _ in range(n)]
    labels = [(1.0 if "red" in pair.split() else 0.0) * (1 if unit else 5) for pair in pairs]
    return Examples(texts=texts, text_pairs=pairs, labels=labels)


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


# Measured to learn the task (train loss cut to under a tenth, dev Pearson >= 0.99 with seed 0).
RECIPES = {"mse": TrainingRecipe(epochs=10, lr=1e-2, batch_size=8, warmup_ratio=0.1, dropout=0.0, seed=0),
           "bce": TrainingRecipe(epochs=12, lr=3e-3, batch_size=8, warmup_ratio=0.1, dropout=0.0, seed=0)}


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_a_one_output_model_learns_and_is_saved_as_both_references_read_it(loss, tmp_path):
    train, dev = scored_pairs(96, unit=loss == "bce"), scored_pairs(48, seed=1, unit=loss == "bce")
    model = finetune(str(FAMILIES / "bert_cased"), train, dev=dev, task="regression", loss=loss,
                     recipe=RECIPES[loss])
    losses = [r["train_loss"] for r in model.history]
    assert losses[-1] < 0.1 * losses[0], losses
    # Two label values: Spearman's rho of a perfect scorer is capped by the ties (about 0.87 at half each).
    cap = spearman(np.asarray(dev.labels) + 1e-6 * np.arange(len(dev.labels)), dev.labels)
    assert model.history[-1]["dev_pearson"] >= 0.99 and model.history[-1]["dev_spearman"] >= 0.9 * cap, \
        (cap, model.history)
    assert set(model.history[-1]) == {"epoch", "train_loss", "dev_mse", "dev_pearson", "dev_spearman"}
    out = model.save(tmp_path / "scorer")
    raw = json.loads((out / "config.json").read_text())
    problem_type, activation = {"mse": ("regression", "linear.Identity"),
                                "bce": ("multi_label_classification", "activation.Sigmoid")}[loss]
    assert raw["architectures"] == ["BertForSequenceClassification"] and raw["id2label"] == {"0": "LABEL_0"}
    assert raw["problem_type"] == problem_type
    assert raw["sentence_transformers"] == {"activation_fn": f"torch.nn.modules.{activation}"}
    scorer = minibert.load_cross_encoder(out)
    assert scorer.activation == activation.split(".")[1] and scorer.num_labels == 1
    logits = model.logits(dev.texts, dev.text_pairs)[:, 0]
    want = logits if loss == "mse" else 1 / (1 + np.exp(-logits.astype(np.float64)))
    got = scorer.predict(list(zip(dev.texts, dev.text_pairs)))
    assert got.shape == (48,) and np.abs(got - want).max() < 1e-6
    # The dev metrics recorded are those of the scores CrossEncoder.predict gives.
    again = score_metrics(quiet(minibert.load_cross_encoder(out, dtype="float32").predict,
                                list(zip(dev.texts, dev.text_pairs))), dev.labels)
    for name, value in again.items():
        assert abs(value - model.history[-1][name]) < 1e-5, (name, value, model.history[-1])


def test_texts_without_pairs_train_too():
    texts = ["red cat", "a dog", "red red", "the mat", "a red mat", "blue dog"] * 4
    labels = [float(t.split().count("red")) for t in texts]
    model = finetune(str(FAMILIES / "roberta"), Examples(texts=texts, labels=labels), task="regression",
                     recipe=TrainingRecipe(epochs=2, lr=1e-2, batch_size=8, dropout=0.0))
    assert model.logits(["red cat"]).shape == (1, 1) and model.problem_type == "regression"


def test_a_cross_encoders_stored_activation_is_replaced_by_the_objectives(tmp_path):
    """ce_one_label stores Sigmoid in config_sentence_transformers.json, which sentence-transformers 6 reads
    before config.json: a one-output model saved from it with MSE's objective must say Identity there too."""
    from minibert.train.objectives import SAVED_AS
    model = load_classifier(FIXTURES / "ce_one_label")
    model.problem_type, model.activation = SAVED_AS["mse"]
    out = model.save(tmp_path / "scorer")
    settings = json.loads((out / "config_sentence_transformers.json").read_text())
    assert settings["activation_fn"] == "torch.nn.modules.linear.Identity"
    assert settings["model_type"] == "CrossEncoder"                   # the rest of the file kept
    assert minibert.load_cross_encoder(out).activation == "Identity"
    assert json.loads((out / "config.json").read_text())["problem_type"] == "regression"


def test_a_one_output_model_points_to_its_scores_not_label_probabilities(tmp_path):
    out = finetune(str(FAMILIES / "bert_cased"), scored_pairs(8), task="regression",
                   recipe=TrainingRecipe(epochs=1, batch_size=4)).save(tmp_path / "scorer")
    with pytest.raises(InputError, match=r"load_cross_encoder\(directory\).predict\(pairs\) gives its scores"):
        load_classifier(out).predict(["a cat"], ["a dog"])


def test_resaving_a_loaded_regression_model_keeps_its_objective(tmp_path):
    out = finetune(str(FAMILIES / "bert_cased"), scored_pairs(8, unit=True), task="regression", loss="bce",
                   recipe=TrainingRecipe(epochs=1, batch_size=4)).save(tmp_path / "a")
    again = load_classifier(out).save(tmp_path / "b")
    raw = json.loads((again / "config.json").read_text())
    assert raw["problem_type"] == "multi_label_classification"
    assert minibert.load_cross_encoder(again).activation == "Sigmoid"


# ---- metrics -------------------------------------------------------------------------------------------------

def test_spearman_ranks_ties_by_their_mean_and_ignores_monotone_maps():
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4, 1, 4, 2, 4])
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert abs(spearman(a, b) - spearman(np.exp(a), b ** 3)) < 1e-12
    assert abs(spearman(a, b) - pearson(average_ranks(a), average_ranks(b))) == 0
    assert abs(pearson(a, 2 * a + 1) - 1) < 1e-12 and abs(pearson(a, -a) + 1) < 1e-12
    assert np.isnan(pearson(a, np.ones(50))) and np.isnan(spearman(np.ones(50), b))


def test_patience_watches_the_dev_spearman(monkeypatch):
    from minibert.train import finetune as ft
    script = iter([0.2, 0.6, 0.5, float("nan"), 0.9])

    def scripted(scores, labels):
        return {"dev_mse": 1.0, "dev_pearson": 0.0, "dev_spearman": next(script)}
    monkeypatch.setattr(ft, "score_metrics", scripted)
    model = finetune(str(FAMILIES / "bert_cased"), scored_pairs(16), dev=scored_pairs(4, seed=1), task="regression",
                     recipe=TrainingRecipe(epochs=5, lr=1e-3, batch_size=8, patience=2))
    assert [r["best_epoch"] for r in model.history] == [1, 2, 2, 2]     # a NaN correlation is never the best


def test_a_nan_first_epoch_is_beaten_by_any_number(monkeypatch):
    from minibert.train import finetune as ft
    script = iter([float("nan"), -0.5, -0.6, -0.7])
    monkeypatch.setattr(ft, "score_metrics", lambda s, y: {"dev_spearman": next(script)})
    model = finetune(str(FAMILIES / "bert_cased"), scored_pairs(8), dev=scored_pairs(4, seed=1), task="regression",
                     recipe=TrainingRecipe(epochs=4, lr=1e-3, batch_size=8, patience=2))
    assert [r["best_epoch"] for r in model.history] == [1, 2, 2, 2]


# ---- refusals ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, loss, message", [
    (["0.5", 1.0], "mse", "label 0 is '0.5', a str, not a number"),
    ([0.5, float("nan")], "mse", "label 1 is nan, not a finite number"),
    ([np.float32(np.inf), 0.0], "mse", "label 0 is inf, not a finite number"),
    ([True, 0.0], "mse", "label 0 is True, a bool, not a number"),
    ([0.5, None], "mse", "label 1 is None, a NoneType"),
    ([0.5, 1.5], "bce", r"label 1 is 1.5, outside \[0, 1\]"),
    ([-0.25, 1.0], "bce", r"label 0 is -0.25, outside \[0, 1\]"),
])
def test_labels_that_are_not_usable_numbers_are_refused_naming_the_example(labels, loss, message):
    with pytest.raises(InputError, match=message):
        finetune(str(FAMILIES / "bert_cased"), Examples(texts=["a", "b"], labels=labels), task="regression",
                 loss=loss, recipe=TrainingRecipe(epochs=1))


def test_numpy_scores_train_as_floats():
    model = finetune(str(FAMILIES / "bert_cased"), Examples(texts=np.array(["a", "b"]), labels=np.array([0, 3])),
                     task="regression", recipe=TrainingRecipe(epochs=1, batch_size=2))
    assert model.labels == ["LABEL_0"]


@pytest.mark.parametrize("options, message", [
    ({"task": "sequence", "loss": "mse"}, "the sequence task trains with cross-entropy"),
    ({"task": "regression", "loss": "l1"}, "loss must be one of"),
    ({"task": "regression", "labels": ["a", "b"]}, "one output"),
    ({"task": "regression", "dev": Examples(texts=["a", "b"], labels=[1.0, 1.0])}, "every label is 1.0"),
])
def test_settings_a_regression_run_cannot_use_are_refused(options, message):
    with pytest.raises(InputError, match=message):
        finetune(str(FAMILIES / "bert_cased"), Examples(texts=["a", "b"], labels=[0.0, 1.0]),
                 recipe=TrainingRecipe(epochs=1), **options)


def test_one_label_classification_points_to_the_regression_task():
    with pytest.raises(InputError, match="task='regression'"):
        finetune(str(FAMILIES / "bert_cased"), Examples(texts=["a", "b"], labels=["x", "x"]),
                 recipe=TrainingRecipe(epochs=1))


def test_resuming_with_other_scores_is_another_run(tmp_path):
    """The training state's digest of the data holds the scores as floats: cut to integers, 0.25 and 0.75
    would be the same data and a resume on other labels would go on."""
    recipe = TrainingRecipe(epochs=2, batch_size=4)
    data = Examples(texts=["a", "b", "c", "d"], labels=[0.25, 0.5, 0.75, 1.0])
    from minibert.train import finetune as ft
    calls = {"n": 0}
    real = ft.train_step

    def stop_in_epoch_two(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ft, "train_step", stop_in_epoch_two)
        with pytest.raises(KeyboardInterrupt):
            finetune(str(FAMILIES / "bert_cased"), data, task="regression", recipe=recipe,
                     checkpoint_dir=tmp_path / "run")
    other = Examples(texts=data.texts, labels=[0.0, 0.5, 0.5, 1.0])
    with pytest.raises(InputError, match="the train data differs"):
        finetune(str(FAMILIES / "bert_cased"), other, task="regression", recipe=recipe,
                 checkpoint_dir=tmp_path / "run", resume=True)
    with pytest.raises(InputError, match="loss 'mse' then, 'bce' now"):
        finetune(str(FAMILIES / "bert_cased"), data, task="regression", loss="bce", recipe=recipe,
                 checkpoint_dir=tmp_path / "run", resume=True)
    resumed = finetune(str(FAMILIES / "bert_cased"), data, task="regression", recipe=recipe,
                       checkpoint_dir=tmp_path / "run", resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2]


# ---- the commands and the model card ---------------------------------------------------------------------------

def write_csv(path, rows, header=("query", "passage", "score")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("value, message", [("high", "the label \"high\" is not a number"),
                                            ("nan", "the label \"nan\" is not a finite number"),
                                            ("", "the label \"\" is not a number"),
                                            ("1.5", r"the label \"1.5\" is outside \[0, 1\]")])
def test_the_command_names_the_file_line_and_value_of_a_bad_score(tmp_path, capsys, value, message):
    from minibert.cli import train as cli
    path = write_csv(tmp_path / "train.csv", [("a", "b", "0.5"), ("c", "d", value)])
    assert cli.main(["finetune", str(path), "--text-col", "query", "--pair-col", "passage", "--label-col", "score",
                     "--task", "regression", "--loss", "bce", "--out", str(tmp_path / "out"),
                     "--model", str(FAMILIES / "bert_cased")]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3: " in err and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()


def test_the_command_reads_json_numbers_and_refuses_a_loss_for_classification(tmp_path, capsys):
    from minibert.cli import train as cli
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": v}) + "\n" for t, v in [("a", 1), ("b", 2.5), ("c", 0)]))
    assert cli.main(["finetune", str(path), "--task", "regression", "--out", str(tmp_path / "out"), "--epochs", "1",
                     "--model", str(FAMILIES / "bert_cased")]) == 0
    capsys.readouterr()
    path.write_text(json.dumps({"text": "a", "label": [1]}) + "\n")
    assert cli.main(["finetune", str(path), "--task", "regression", "--out", str(tmp_path / "out2")]) == 1
    assert f"{path}:1: the label [1] is a list, not a number" in capsys.readouterr().err
    assert cli.main(["finetune", str(path), "--loss", "bce", "--out", str(tmp_path / "out3")]) == 1
    assert "the sequence task trains with cross-entropy" in capsys.readouterr().err


def test_finetune_and_predict_commands_on_sts_pairs(tmp_path, capsys):
    """The real STS Benchmark rows (tests/fixtures/stsb): trained with --task regression, `minibert predict`
    prints each pair's score as CrossEncoder.predict gives it and the raw logit; the card has the metrics."""
    from minibert.cli import train as cli
    out = tmp_path / "sts"
    common = ["--text-col", "sentence1", "--pair-col", "sentence2", "--label-col", "score"]
    assert cli.main(["finetune", str(STSB / "train.tsv"), *common, "--task", "regression", "--dev",
                     str(STSB / "dev.tsv"), "--out", str(out), "--epochs", "2", "--lr", "1e-3", "--batch-size", "4",
                     "--model", str(FAMILIES / "bert_cased")]) == 0
    err = capsys.readouterr().err
    assert "dev_mse" in err and "dev_spearman" in err
    assert cli.main(["predict", str(out), str(STSB / "dev.tsv"), "--text-col", "sentence1", "--pair-col",
                     "sentence2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 9 and set(records[0]) == {"text", "pair", "score", "logit", "activation"}
    scorer = minibert.load_cross_encoder(out)
    want = scorer.predict([(r["text"], r["pair"]) for r in records])
    assert all(r["activation"] == "Identity" and r["score"] == r["logit"] for r in records)
    np.testing.assert_allclose([r["score"] for r in records], want, rtol=0, atol=1e-6)
    from huggingface_hub.repocard import metadata_load
    meta = metadata_load(out / "README.md")
    assert meta["metrics"] == ["mse", "pearsonr", "spearmanr"] and meta["pipeline_tag"] == "text-classification"
    body = (out / "README.md").read_text()
    assert "| epoch | train loss | dev MSE | dev Pearson | dev Spearman |" in body
    assert "--task regression --loss" not in body and "--task regression" in body     # no --loss given
    assert "mean squared error" in body and f"CrossEncoder({str(out)!r})" in body


def test_predict_prints_the_sigmoid_score_of_a_bce_model(tmp_path, capsys):
    from minibert.cli import train as cli
    out = finetune(str(FAMILIES / "bert_cased"), scored_pairs(8, unit=True), task="regression", loss="bce",
                   recipe=TrainingRecipe(epochs=1, batch_size=4)).save(tmp_path / "scorer")
    path = write_csv(tmp_path / "in.csv", PAIRS)
    assert cli.main(["predict", str(out), str(path), "--text-col", "query", "--pair-col", "passage"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for record in records:
        assert record["activation"] == "Sigmoid"
        assert abs(record["score"] - 1 / (1 + np.exp(-record["logit"]))) < 2e-6


def test_the_regression_card_reproduces_the_run_in_python(tmp_path):
    model = finetune(str(FAMILIES / "bert_cased"), scored_pairs(8, unit=True), dev=scored_pairs(4, seed=2, unit=True),
                     task="regression", loss="bce", recipe=TrainingRecipe(epochs=1, batch_size=4))
    body = (model.save(tmp_path / "scorer") / "README.md").read_text()
    assert "task='regression', loss='bce', dev=dev" in body and "binary cross-entropy" in body
    record = model.history[0]
    assert (f"| 1 | {record['train_loss']:.6f} | {record['dev_mse']:.6f} | {record['dev_pearson']:.6f} | "
            f"{record['dev_spearman']:.6f} |") in body
    assert "load_cross_encoder" in body


# ---- live, against transformers and sentence-transformers --------------------------------------------------------

@pytest.mark.reference
# Not ALBERT: transformers 5's AlbertTokenizer gives no token_type_ids (its model_input_names), so CrossEncoder
# scores ALBERT pairs with every token in segment 0 where minibert's tokenizer marks the second text 1.
@pytest.mark.parametrize("name", ["bert_cased", "roberta", "distilbert", "electra", "mpnet"])
@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_live_cross_encoder_and_transformers_score_a_saved_regression_model_as_minibert(name, loss, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    import torch
    import transformers
    out = finetune(str(FAMILIES / name), scored_pairs(24, unit=loss == "bce"), task="regression", loss=loss,
                   recipe=TrainingRecipe(epochs=1, lr=1e-3, batch_size=8)).save(tmp_path / "scorer")
    pairs = PAIRS + [(" ".join(["red cat"] * 40), "a dog")]          # one past the limit: cut longest-first
    reference = st.CrossEncoder(str(out), device="cpu")
    assert type(reference.activation_fn).__name__ == {"mse": "Identity", "bce": "Sigmoid"}[loss]
    want = reference.predict(pairs, batch_size=2)
    scorer = minibert.load_cross_encoder(out)
    got = quiet(scorer.predict, pairs, batch_size=2)
    assert want.dtype == got.dtype == np.float32 and np.abs(got - want).max() < 1e-5, np.abs(got - want).max()
    auto = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert auto.config.problem_type == {"mse": "regression", "bce": "multi_label_classification"}[loss]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    batch = tokenizer([q for q, _ in PAIRS], [p for _, p in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = auto(**batch).logits.numpy()
    ours = scorer.classifier.logits([q for q, _ in PAIRS], [p for _, p in PAIRS])
    assert logits.shape == ours.shape == (len(PAIRS), 1) and np.abs(logits - ours).max() < 1e-5


@pytest.mark.reference
def test_live_dev_metrics_equal_the_correlation_evaluators(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator
    train, dev = scored_pairs(32, unit=True), scored_pairs(24, seed=1, unit=True)
    dev.labels = [label * 0.5 + 0.1 * (i % 5) for i, label in enumerate(dev.labels)]    # ties and spread
    model = finetune(str(FAMILIES / "bert_cased"), train, dev=dev, task="regression", loss="bce",
                     recipe=TrainingRecipe(epochs=1, lr=1e-3, batch_size=8))
    reference = st.CrossEncoder(str(model.save(tmp_path / "scorer")), device="cpu")
    evaluator = CrossEncoderCorrelationEvaluator(list(zip(dev.texts, dev.text_pairs)), dev.labels, name="dev")
    results = evaluator(reference)
    assert abs(results["dev_pearson"] - model.history[0]["dev_pearson"]) < 1e-5
    assert abs(results["dev_spearman"] - model.history[0]["dev_spearman"]) < 1e-5
