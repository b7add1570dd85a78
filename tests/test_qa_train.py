"""A user's pass over fine-tuning and probing: inputs that used to train or score without a word of warning
and give numbers that meant something else."""

import json
from pathlib import Path

import pytest

import minibert
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
