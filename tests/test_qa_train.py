"""A user's pass over fine-tuning and probing: inputs that used to train or score without a word of warning
and give numbers that meant something else."""

import json
from pathlib import Path

import pytest

import minibert
from minibert.analysis.probe import probe_sentences, sentence_probe_folds
from minibert.errors import InputError
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
