"""A user's pass over fine-tuning and probing: inputs that used to train or score without a word of warning
and give numbers that meant something else."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minibert
from minibert.analysis import walkthrough
from minibert.analysis.probe import probe_sentences, sentence_probe_folds
from minibert.errors import InputError, ModelFileError
from minibert.train.data import Examples
from minibert.train.finetune import TrainingRecipe, finetune

BERT = Path(__file__).parent / "fixtures" / "families" / "bert_cased"
QUICK = TrainingRecipe(epochs=1, batch_size=16, max_length=8)


@pytest.mark.parametrize("kind", [int, str])
def test_class_ids_are_the_numeric_labels(tmp_path, kind):
    # sorted as strings, "10" took id 2: transformers' argmax read as the label gave another class
    labels = [kind(i % 12) for i in range(24)]
    clf = finetune(BERT, Examples(texts=[f"text {i}" for i in range(24)], labels=labels), recipe=QUICK)
    assert clf.labels == [kind(i) for i in range(12)]
    clf.save(tmp_path / "clf")
    id2label = json.loads((tmp_path / "clf" / "config.json").read_text())["id2label"]
    assert id2label == {str(i): kind(i) for i in range(12)}
    assert minibert.load_classifier(tmp_path / "clf").labels == [kind(i) for i in range(12)]


def test_words_labels_still_sort_as_strings():
    clf = finetune(BERT, Examples(texts=["a", "b", "c"], labels=["b", "B", "a"]), recipe=QUICK)
    assert clf.labels == ["B", "a", "b"]


def test_token_task_refuses_text_pairs():
    with pytest.raises(InputError, match="text_pairs are not read"):
        finetune(BERT, Examples(texts=[["a"], ["c"]], text_pairs=["b", "d"], labels=[["X"], ["Y"]]),
                 task="token", recipe=QUICK)


@pytest.mark.parametrize("pairs_in", ["train", "dev"])
def test_dev_must_have_pairs_as_train_has(pairs_in):
    def examples(with_pairs):
        return Examples(texts=["a", "b"], text_pairs=["c", "d"] if with_pairs else None, labels=["x", "y"])
    with pytest.raises(InputError, match="give both sets pairs, or neither"):
        finetune(BERT, examples(pairs_in == "train"), dev=examples(pairs_in == "dev"), recipe=QUICK)


def test_token_task_refuses_a_train_set_whose_labels_are_all_cut():
    # max_length 2 keeps only [CLS] [SEP]: the loss was 0.0 with no word counted, and the run "trained"
    with pytest.raises(InputError, match="train: no word keeps a label within max_length 2"):
        finetune(BERT, Examples(texts=[["a"], ["b"]], labels=[["X"], ["Y"]]), task="token",
                 recipe=TrainingRecipe(epochs=1, max_length=2))


def test_token_task_refuses_a_dev_set_with_no_word_to_score():
    # words the tokenizer makes no pieces of: the dev accuracy was 0.0 with no word counted
    with pytest.raises(InputError, match="dev: no word keeps a label"):
        finetune(BERT, Examples(texts=[["a"], ["b"]], labels=[["X"], ["Y"]]),
                 dev=Examples(texts=[["\u200b"], ["\x00"]], labels=[["X"], ["Y"]]), task="token", recipe=QUICK)


def test_probe_refuses_labels_no_two_texts_share():
    # a column of scores: every fold was scored on labels its probe never saw, 0.000 on every layer
    with pytest.raises(InputError, match="no probe is ever trained on the label"):
        sentence_probe_folds([i * 0.37 for i in range(12)])


def test_probe_notes_texts_whose_label_no_other_fold_holds():
    model = minibert.load(BERT)
    texts = [f"text {i}" for i in range(11)]
    result = probe_sentences(model, texts, ["a", "b"] * 5 + ["c"], layers=[0], folds=2)
    assert result.notes == ["1 text(s) have a label no other fold holds, so their fold's probe never saw it and "
                            "scores them wrong"]
    assert probe_sentences(model, texts[:10], ["a", "b"] * 5, layers=[0], folds=2).notes == []


HEADS_BERT = Path(__file__).parent / "fixtures" / "heads" / "bert"


def test_walkthrough_of_an_empty_text_has_no_nan_step():
    # no real token: the MLM loss was a mean of nothing, NaN beside minibert's 0, and the summary said 0.0e+00
    _, _, steps = walkthrough.walkthrough(minibert.load(HEADS_BERT, backend="numpy"), "")
    assert "MLM loss" not in [s.name for s in steps] and "NSP loss" in [s.name for s in steps]
    assert all(np.isfinite(s.max_diff) for s in steps)


def test_walkthrough_summary_names_a_nan_difference():
    model = minibert.load(HEADS_BERT, backend="numpy")
    steps = [walkthrough.Step("fine", "", "", np.zeros(2), np.full(2, 1e-3)),
             walkthrough.Step("broken", "", "", np.array([np.nan]), np.zeros(1))]
    assert list(walkthrough.report([], np.zeros(0, int), steps, model))[-1] == "\nlargest difference: nan (broken)"


def test_walkthrough_command_prints_one_line_for_a_missing_model(capsys, tmp_path):
    assert walkthrough.main(["x", "--model", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err == f"minibert: error: {tmp_path / 'nowhere'}: no such model directory\n"


def test_next_sentence_warns_when_a_pair_is_cut():
    # the probability of a cut pair (its second text perhaps gone) came back without a word
    model = minibert.load(HEADS_BERT)
    with pytest.warns(UserWarning, match="1 of 2 pairs were longer than 64 tokens and were truncated"):
        model.next_sentence(["a", "word " * 40], ["b", "other " * 40])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.next_sentence("a cat", "a dog")


@pytest.mark.parametrize("name", ["", "  ", "my data"])
def test_blank_or_spaced_dataset_names_are_refused_before_training(name):
    # they went into the model card's metadata (datasets: [""]) and its text ("trained ... on .")
    with pytest.raises(InputError, match="is not a dataset id"):
        finetune(BERT, Examples(texts=["a", "b"], labels=["x", "y"]), datasets=[name], recipe=QUICK)


@pytest.fixture(scope="module")
def saved_classifiers(tmp_path_factory):
    """A BERT sequence classifier and an XLM-R one (whose head has a dense layer), saved once."""
    root = tmp_path_factory.mktemp("classifiers")
    train = Examples(texts=["a", "b"], labels=["x", "y"])
    finetune(BERT, train, recipe=QUICK).save(root / "bert")
    finetune(BERT.parent / "xlm_roberta", train, recipe=QUICK).save(root / "xlmr")
    return root


def damaged(saved_classifiers, tmp_path, name, edit):
    directory = tmp_path / name
    shutil.copytree(saved_classifiers / name, directory)
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors")
    return directory


@pytest.mark.parametrize("name, edit, message", [
    # each was a raw KeyError or a NumPy broadcasting error (at the first predict) before
    ("bert", lambda t: t.pop("classifier.bias"), r"missing \['classifier.bias'\], unexpected \[\]"),
    ("xlmr", lambda t: t.pop("classifier.dense.weight"), r"missing \['classifier.dense.weight'\], unexpected \[\]"),
    ("bert", lambda t: t.update({"classifier.bias": np.zeros(5, np.float32)}), r"out.b \(5,\), not \(2,\)"),
    ("xlmr", lambda t: t.update({"classifier.dense.bias": np.zeros(3, np.float32)}), r"dense.b \(3,\), not"),
    ("bert", lambda t: t.update({"classifier.weight": t["classifier.weight"].astype(np.int32)}),
     r"\['classifier.weight'\] stored, but not as floating-point numbers"),
])
def test_damaged_classifier_heads_are_named(saved_classifiers, tmp_path, name, edit, message):
    with pytest.raises(ModelFileError, match=message):
        minibert.load_classifier(damaged(saved_classifiers, tmp_path, name, edit))


def test_an_unexpected_pooler_is_not_reported_missing(saved_classifiers, tmp_path):
    directory = tmp_path / "bert"
    shutil.copytree(saved_classifiers / "bert", directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "architectures": ["BertForTokenClassification"]}))
    with pytest.raises(ModelFileError, match=r"missing \[\], unexpected \['bert.pooler"):
        minibert.load_classifier(directory)


@pytest.mark.parametrize("key, shape", [("bert.encoder.layer.0.attention.self.query.weight", (3, 3)),
                                        ("bert.embeddings.word_embeddings.weight", (10, 32)),
                                        ("bert.embeddings.LayerNorm.weight", (7,))])
def test_encoder_tensors_of_the_wrong_shape_are_named(saved_classifiers, tmp_path, key, shape):
    # minibert.load refused them; load_classifier gave a NumPy error (or an IndexError at predict)
    directory = damaged(saved_classifiers, tmp_path, "bert", lambda t: t.update({key: np.zeros(shape, np.float32)}))
    with pytest.raises(ModelFileError, match=rf"1 encoder tensor\(s\) have the wrong shape \({key} \({shape[0]},"):
        minibert.load_classifier(directory)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_classifier_logits_refuses_a_batch_size_that_is_not_a_positive_int(saved_classifiers, batch_size):
    # 0 was range()'s raw ValueError; -1 an empty loop and a NumPy error joining nothing
    with pytest.raises(InputError, match="batch_size must be a positive int"):
        minibert.load_classifier(saved_classifiers / "bert").logits(["a", "b"], batch_size=batch_size)


def test_a_dev_label_train_lacks_is_refused_with_advice_the_command_line_can_follow(tmp_path, capsys):
    # the advice was finetune(labels=...) alone, which `minibert finetune` has no option for
    from minibert.cli import main
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    (tmp_path / "dev.csv").write_text("text,label\na,x\nb,z\n")
    assert main(["finetune", str(tmp_path / "train.csv"), "--dev", str(tmp_path / "dev.csv"), "--model", str(BERT),
                 "--out", str(tmp_path / "out")]) == 1
    assert "put examples of them in the training data" in capsys.readouterr().err


def test_pretrain_train_loss_leaves_out_batches_that_masked_nothing(monkeypatch):
    # a batch whose draw masked no token has a loss of 0 (NaN in torch): averaged in, with small blocks
    # and batches it pulled the epoch's train_loss down (6.73 where the batches that had a loss gave 7.42)
    from minibert.train import pretrain as module
    seen, original = [], module.loss_and_grads

    def recording(*args, mlm_labels, **kwargs):
        losses, grads = original(*args, mlm_labels=mlm_labels, **kwargs)
        if "dropout" in kwargs:                        # a training step, not the held-out loss
            seen.append((float(losses["mlm"]), bool((mlm_labels != -100).any())))
        return losses, grads
    monkeypatch.setattr(module, "loss_and_grads", recording)
    corpus = (HEADS_BERT.parent / "corpus.txt").read_text().splitlines()
    result = module.pretrain(str(HEADS_BERT), corpus, recipe=module.PretrainRecipe(
        epochs=1, batch_size=1, max_length=3, validation_split=0.0))
    assert any(not masked for _, masked in seen) and any(masked for _, masked in seen)
    assert result.history[-1]["train_loss"] == pytest.approx(np.mean([loss for loss, masked in seen if masked]),
                                                             rel=1e-12)


def test_token_train_loss_leaves_out_batches_without_a_labelled_word(monkeypatch):
    # a sentence of words without pieces alone in its batch has a loss of 0: averaged in, it pulled train_loss down
    from minibert.train import finetune as module
    seen, original = [], module.train_step

    def recording(classifier, batch_items, *args, **kwargs):
        value = original(classifier, batch_items, *args, **kwargs)
        seen.append((value, any((labels != -100).any() for _, _, labels in batch_items)))
        return value
    monkeypatch.setattr(module, "train_step", recording)
    train = Examples(texts=[["Anna", "saw"], ["\u200b"], ["Bob", "ran"], ["\x00", "\u200b"]],
                     labels=[["B", "O"], ["O"], ["B", "O"], ["O", "O"]])
    clf = module.finetune(BERT, train, task="token", recipe=TrainingRecipe(epochs=1, batch_size=1, max_length=8))
    assert [masked for _, masked in seen].count(False) == 2
    assert clf.history[0]["train_loss"] == pytest.approx(np.mean([v for v, masked in seen if masked]), rel=1e-12)


def test_predict_with_a_token_classifier_refuses_a_pair_column(tmp_path, capsys):
    # the pair column went unread: the words of the first text alone were tagged, without a word
    from minibert.cli import main
    finetune(BERT, Examples(texts=[["Anna", "saw"]], labels=[["B", "O"]]), task="token", recipe=QUICK).save(
        tmp_path / "ner")
    (tmp_path / "pairs.csv").write_text("a,b\nthe cat,a dog\n")
    assert main(["predict", str(tmp_path / "ner"), str(tmp_path / "pairs.csv"), "--text-col", "a",
                 "--pair-col", "b"]) == 1
    assert "a token classifier tags the words of one text; --pair-col is not read" in capsys.readouterr().err


def test_finetune_token_task_refuses_a_pair_column(tmp_path, capsys):
    from minibert.cli import main
    (tmp_path / "train.conll").write_text("Anna B\nsaw O\n\n")
    assert main(["finetune", str(tmp_path / "train.conll"), "--task", "token", "--pair-col", "b", "--model",
                 str(BERT), "--out", str(tmp_path / "out")]) == 1
    assert "--pair-col is not read" in capsys.readouterr().err and not (tmp_path / "out").exists()
