"""Labelled examples, checked and made into batches: Examples, the checks that refuse bad texts and labels up
front, tokenization with token-task labels on each word's first piece, length-bucketed batch order, and collation
into padded arrays.

Axes: B batch, T tokens, N examples, W words.
"""

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError
from ..kernels.reference import IGNORE_INDEX


@dataclass
class Examples:
    """Labelled data. Sequence task: texts (and text_pairs) with one label each. Token task: texts are
    lists of words and labels lists of per-word labels. Regression task: texts (and text_pairs) with one
    number each."""
    texts: list
    labels: list
    text_pairs: Optional[list] = None


def word_spans(words):
    """Character spans of each word in ' '.join(words): [(start, end), ...]."""
    spans, start = [], 0
    for word in words:
        spans.append((start, start + len(word)))
        start += len(word) + 1
    return spans


def first_piece_labels(words, word_labels, offsets, word_ids, label2id):
    """Per-token label ids [n] for one sentence: the label of a word on its first piece, -100 on the other
    pieces and on special tokens (transformers' token-classification recipe). Tokens are assigned to words
    by their character offsets in ' '.join(words)."""
    spans = word_spans(words)
    starts = np.array([s for s, _ in spans])                                   # [W]
    labels: np.ndarray = np.full(len(offsets), IGNORE_INDEX, dtype=np.int64)   # [n]
    seen = set()
    for t, ((start, end), word_id) in enumerate(zip(offsets, word_ids)):
        if word_id < 0 or end <= start:
            continue
        w = int(np.searchsorted(starts, start, side="right") - 1)
        if w not in seen:
            seen.add(w)
            labels[t] = label2id[word_labels[w]]
    return labels


def tokenize_examples(tokenizer, examples, task, label2id, max_length):
    """All examples as padded-per-example arrays: list of (ids [n], types [n], labels scalar or [n]).
    Regression: the label is the number itself (label2id unused)."""
    if task in ("sequence", "regression"):
        batch = tokenizer(examples.texts, examples.text_pairs, max_length=max_length)
        labels = (list(examples.labels) if task == "regression"
                  else [label2id[label] for label in examples.labels])
    else:
        texts = [" ".join(words) for words in examples.texts]
        batch = tokenizer(texts, max_length=max_length)
        labels = [first_piece_labels(words, tags, offsets, word_ids, label2id)
                  for words, tags, offsets, word_ids in zip(examples.texts, examples.labels, batch.offsets,
                                                            batch.word_ids)]
    lengths = batch.attention_mask.sum(axis=1)                                  # [N]
    return [(batch.input_ids[i, :n], batch.token_type_ids[i, :n], labels[i]) for i, n in enumerate(lengths)]


def check_labelled_tokens(items, what, max_length):
    """A token-task set in which no word keeps its label (every labelled piece cut by max_length, or every
    word without pieces) trains on a loss of 0, or scores a dev accuracy of 0, without a word counted."""
    if not any((labels != IGNORE_INDEX).any() for _, _, labels in items):
        raise InputError(f"{what}: no word keeps a label within max_length {max_length} tokens (each "
                         "sentence's labelled words are cut off, or have no tokenizer pieces); raise max_length "
                         "or give words the tokenizer can read")


def length_buckets(lengths, batch_size, rng):
    """Batches of example indices: examples sorted by length (ties in a seeded random order) and cut into
    batches of similar length, so little padding is computed; the batches come in a seeded random order."""
    order = np.lexsort((rng.permutation(len(lengths)), np.asarray(lengths)))    # [N] by length, ties shuffled
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(items, pad_id, task):
    """A list of (ids, types, labels) -> input_ids, attention_mask, token_type_ids [B, T], labels [B] or [B, T]
    (regression: [B] float64, cast to the weights' dtype by the loss)."""
    B, T = len(items), max(len(ids) for ids, _, _ in items)
    input_ids: np.ndarray = np.full((B, T), pad_id, dtype=np.int64)             # [B, T]
    mask: np.ndarray = np.zeros((B, T), dtype=np.int64)                         # [B, T]
    types: np.ndarray = np.zeros((B, T), dtype=np.int64)                        # [B, T]
    labels: np.ndarray = (np.full((B, T), IGNORE_INDEX, dtype=np.int64) if task == "token"
                          else np.zeros(B, dtype=np.float64 if task == "regression" else np.int64))   # [B, T] or [B]
    for b, (ids, tt, label) in enumerate(items):
        n = len(ids)
        input_ids[b, :n], mask[b, :n], types[b, :n] = ids, 1, tt
        if task != "token":
            labels[b] = label
        else:
            labels[b, :n] = label
    return input_ids, mask, types, labels


def python_value(value):
    """A NumPy scalar as the Python value it holds (np.int64(1) -> 1, np.str_('a') -> 'a'); others as given."""
    return value.item() if isinstance(value, np.generic) else value


def checked_labels(labels, what):
    """Labels as Python values, checked: NumPy scalars converted (an np.int64 label failed only when the
    checkpoint's config.json was written, after a whole epoch); None, NaN, inf and blank strings refused
    naming the example; one type for all (1 and "1", or 1 and True, would be two classes that print alike)."""
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise InputError(f"{what}: labels must be a list (or array) of labels, found {type(labels).__name__}")
    out: list = []
    kinds: dict = {}
    for i, label in enumerate(labels):
        label = python_value(label)
        if (label is None or (isinstance(label, float) and not np.isfinite(label))
                or (isinstance(label, str) and not label.strip())):
            raise InputError(f"{what}: label {i} is {label!r}; every example needs a label")
        if not isinstance(label, (str, int, float)):
            raise InputError(f"{what}: label {i} is a {type(label).__name__} ({label!r}); labels are str, int or "
                             "float")
        kinds.setdefault(type(label).__name__, i)
        out.append(label)
    if len(kinds) > 1:
        raise InputError(f"{what}: labels mix types ({', '.join(f'{k} at {i}' for k, i in kinds.items())}); they "
                         "would be different classes that print alike: give every label the same type")
    return out


def label_order(labels):
    """Distinct labels in id order: numbers, and strings that spell integers (a CSV column of class ids), by
    value, so id i is label i as transformers' recipes and datasets number them (sorted as strings, "10"
    came before "2" and a transformers user reading argmax as the label got another class); others as
    strings. labels: checked_labels' output (one type)."""
    distinct = set(labels)
    if all(isinstance(x, (int, float)) for x in distinct):
        return sorted(distinct)
    if all(isinstance(x, str) and re.fullmatch(r"[+-]?[0-9]+", x.strip()) for x in distinct):
        return sorted(distinct, key=lambda x: (int(x), x))     # "1" and "01" both kept, in a fixed order
    return sorted(distinct, key=str)


def score_problem(value, unit):
    """Why `value` cannot be a regression label (None when it can): not a real number, NaN or infinite, or
    for BCE (unit) outside [0, 1]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return f"a {type(value).__name__}, not a number"
    if not np.isfinite(value):
        return "not a finite number"
    if unit and not 0 <= value <= 1:
        return "outside [0, 1], where --loss bce's labels (probabilities) lie"
    return None


def checked_scores(labels, what, unit=False):
    """Regression labels as Python floats, each checked (score_problem), refused naming the example."""
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise InputError(f"{what}: labels must be a list (or array) of numbers, found {type(labels).__name__}")
    out = []
    for i, label in enumerate(labels):
        problem = score_problem(python_value(label), unit)
        if problem:
            raise InputError(f"{what}: label {i} is {python_value(label)!r:.40}, {problem}; the regression task "
                             "needs one number per example")
        out.append(float(label))
    return out


def checked_texts(texts, what, words=False):
    """Texts (words=True: lists of words) as a list of Python str, refusing anything else by position."""
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__len__"):
        raise InputError(f"{what}: give a list (or array) of {'word lists' if words else 'texts'}, found "
                         f"{type(texts).__name__}")
    if words:
        return [checked_texts(sentence, f"{what} sentence {i}") for i, sentence in enumerate(texts)]
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{what}: item {i} is a {type(text).__name__} ({text!r:.40}), not a str")
        out.append(str(text))          # np.str_ -> str
    return out


def checked_examples(examples, task, what, objective=None):
    """`examples` with Python lists throughout (NumPy arrays and scalars converted), checked up front.
    objective: the regression task's ("mse" or "bce": labels in [0, 1])."""
    if not isinstance(examples, Examples):
        raise InputError(f"{what}: give an Examples(texts=..., labels=...), found {type(examples).__name__}")
    texts = checked_texts(examples.texts, f"{what} texts", words=task == "token")
    pairs = None if examples.text_pairs is None else checked_texts(examples.text_pairs, f"{what} text_pairs")
    if task == "token":
        if isinstance(examples.labels, (str, bytes)) or not hasattr(examples.labels, "__len__"):
            raise InputError(f"{what}: labels must be one list of labels per sentence")
        per_sentence = [python_value(tags) for tags in examples.labels]
        if any(isinstance(tags, (str, bytes)) or not hasattr(tags, "__len__") for tags in per_sentence):
            raise InputError(f"{what}: labels must be one list of labels per sentence (one per word)")
        flat = checked_labels([tag for tags in per_sentence for tag in tags], f"{what} labels")
        labels, start = [], 0
        for tags in per_sentence:
            labels.append(flat[start:start + len(tags)])
            start += len(tags)
    elif task == "regression":
        labels = checked_scores(examples.labels, f"{what} labels", unit=objective == "bce")
    else:
        labels = checked_labels(examples.labels, f"{what} labels")
    checked = Examples(texts=texts, labels=labels, text_pairs=pairs)
    check_examples(checked, task, what)
    return checked


def check_examples(examples, task, what):
    if len(examples.texts) != len(examples.labels) or not examples.texts:
        raise InputError(f"{what}: {len(examples.texts)} texts but {len(examples.labels)} labels; "
                         "give one label per text (at least one)")
    if examples.text_pairs is not None and len(examples.text_pairs) != len(examples.texts):
        raise InputError(f"{what}: {len(examples.text_pairs)} pair texts for {len(examples.texts)} texts")
    if task == "token":
        if examples.text_pairs is not None:     # tokenize_examples reads the words alone: pairs went unread
            raise InputError(f"{what}: the token task labels the words of one text; text_pairs are not read "
                             "(join the two texts' words into one sentence, or use the sequence task)")
        for i, (words, tags) in enumerate(zip(examples.texts, examples.labels)):
            if isinstance(words, str) or len(words) != len(tags):
                raise InputError(f"{what}: sentence {i} must be a list of words with one label per word "
                                 f"(found {len(tags)} labels)")
