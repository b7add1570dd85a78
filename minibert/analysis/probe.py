"""Layer-wise linear probes: which layer's vectors carry the information a task needs?

A probe is a multinomial logistic regression fitted on one layer's frozen vectors, scored by k-fold
cross-validation. Everything is NumPy, written here: the folds, the metrics and the run over layers; the
solver is analysis/lbfgs.py, the table and plot analysis/probe_plot.py.

Axes: N examples, D features, C classes, L layers.

    sentence probe   texts + labels -> model.encode(layers=...) [N, L, D] -> per layer: accuracy, macro-F1
    token probe      CoNLL sentences -> model.encode_words(...) [tokens, L, D] -> per layer: token accuracy,
                     entity-level F1 over BIO spans (folds split by sentence, so no sentence is in both sides)
"""

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..corpus.readers import read_conll, read_labelled  # noqa: F401  (the probe's data: readers is their one home)
from .lbfgs import check_l2, fit_logistic
# The table and plot under the names the `probe` command calls them by (probe.format_table, probe.write_plot).
from .probe_plot import format_table, write_plot  # noqa: F401


def check_labels(labels, fold_of, folds, unit="examples"):
    """Every fold's training part needs two labels, or its probe cannot be fitted: refuse before encoding.
    labels [N], fold_of [N] the fold of each label."""
    labels, fold_of = np.asarray(labels), np.asarray(fold_of)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise InputError(f"a probe needs at least 2 different labels, but all {len(labels)} {unit} are "
                         f"labelled {str(classes[0])!r}" if len(classes) else
                         "a probe needs labelled examples, found none")
    for k in range(folds):
        train = np.unique(labels[fold_of != k])
        if len(train) < 2:
            raise InputError(f"with {folds} folds, fold {k}'s training part holds only the label "
                             f"{str(train[0])!r}: give each label more {unit}, or use fewer --folds")
    if unseen_in_training(labels, fold_of, folds) == len(labels):
        # each label on one example (a column of scores or ids): no fold's probe ever saw the label it is
        # scored on, so every layer would score 0 and the table would say nothing about the layers
        raise InputError(f"every one of the {len(labels)} {unit} has a label that no other {unit[:-1]} has "
                         f"({len(classes)} labels), so no probe is ever trained on the label it is scored on: "
                         "a probe classifies: give labels that several examples share")


def unseen_in_training(labels, fold_of, folds):
    """How many examples have a label absent from their fold's training part (always scored wrong)."""
    labels, fold_of = np.asarray(labels), np.asarray(fold_of)
    return int(sum(np.isin(labels[fold_of == k], labels[fold_of != k], invert=True).sum() for k in range(folds)))



# ---------------------------------------------------------------------------------------------------------
# Folds and metrics
# ---------------------------------------------------------------------------------------------------------


def stratified_folds(y, k, seed=0):
    """Fold number [N] for each example: each class dealt round-robin over the folds after a shuffle."""
    y = np.asarray(y)
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise InputError(f"folds must be an int of at least 2, found {k!r}")
    if len(y) < k:
        raise InputError(f"{len(y)} examples cannot be split into {k} folds")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold[members] = (start + np.arange(len(members))) % k      # continue where the last class stopped
        start += len(members)
    return fold


def group_folds(num_groups, k, seed=0):
    """Fold number for each group (sentence): groups shuffled and dealt round-robin."""
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise InputError(f"folds must be an int of at least 2, found {k!r}")
    if num_groups < k:
        raise InputError(f"{num_groups} sentences cannot be split into {k} folds")
    fold = np.empty(num_groups, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(num_groups)] = np.arange(num_groups) % k
    return fold


def macro_f1(y_true, y_pred):
    """Unweighted mean of per-class F1 over the classes found in either y_true or y_pred."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for c in np.union1d(y_true, y_pred):
        tp = np.sum((y_true == c) & (y_pred == c))
        fp = np.sum((y_true != c) & (y_pred == c))
        fn = np.sum((y_true == c) & (y_pred != c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def bio_spans(tags):
    """Entity spans {(start, end, type)} of one sentence's tags, end exclusive.

    B-X starts an entity; I-X continues one of type X and otherwise starts one (as conlleval does, so IOB1
    data also works); S-X/E-X (BIOES) read as B-X/I-X; O and anything without a prefix end the entity.
    """
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, t = tag.partition("-") if "-" in tag else ("O", "", None)
        prefix = {"S": "B", "E": "I"}.get(prefix, prefix)
        continues = prefix == "I" and kind == t
        if start is not None and not continues:
            spans.add((start, i, kind))
            start, kind = None, None
        if prefix in ("B", "I") and not continues:
            start, kind = i, t
    return spans


def entity_f1(true_sentences, pred_sentences):
    """Micro F1 over exact entity spans (type and boundaries), summed over sentences: CoNLL's measure."""
    tp = n_true = n_pred = 0
    for t, p in zip(true_sentences, pred_sentences):
        ts, ps = bio_spans(t), bio_spans(p)
        tp += len(ts & ps)
        n_true += len(ts)
        n_pred += len(ps)
    if n_true + n_pred == 0:
        return 1.0
    return 2 * tp / (n_true + n_pred)


# ---------------------------------------------------------------------------------------------------------
# Probing every layer
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LayerScore:
    layer: int                  # hidden-state index: 0 = embedding output
    accuracy: float             # mean over folds (token accuracy for the token probe)
    accuracy_std: float
    f1: float                   # macro-F1 (sentence probe) or entity-level F1 (token probe), mean over folds


@dataclass
class ProbeResult:
    task: str                   # "sentence" or "token"
    rows: list                  # LayerScore per layer, in the order asked
    chance: float               # accuracy of always predicting the most frequent label
    examples: int               # texts, or tokens for the token probe
    classes: list
    folds: int
    notes: list = field(default_factory=list)

    @property
    def best(self):
        return max(self.rows, key=lambda r: (r.f1, r.accuracy))

    @property
    def f1_name(self):
        return "macro-F1" if self.task == "sentence" else "entity F1"


def cross_validate(X, y, *, folds=5, seed=0, l2=1e-2, fold_of=None):
    """k-fold scores of a probe on X [N, D]: (accuracy mean, accuracy std, macro-F1 mean) over folds."""
    y = np.asarray(y)
    fold_of = stratified_folds(y, folds, seed) if fold_of is None else fold_of
    accs, f1s = [], []
    for k in range(folds):
        test = fold_of == k
        clf = fit_logistic(X[~test], y[~test], l2=l2)
        pred = clf.predict(X[test])
        accs.append(float(np.mean(pred == y[test])))
        f1s.append(macro_f1(y[test], pred))
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(f1s))


def sentence_probe_folds(labels, *, folds=5, l2=1e-2, seed=0):
    """The fold of each text [N], after checking every option that does not need the model (the command
    line calls this before loading it)."""
    check_l2(l2)
    y = np.asarray(labels)
    fold_of = stratified_folds(y, folds, seed)
    check_labels(y, fold_of, folds, "texts")
    return fold_of


def token_probe_folds(tags, *, folds=5, l2=1e-2, seed=0):
    """The fold of each sentence, after checking every option that does not need the model."""
    check_l2(l2)
    fold_of = group_folds(len(tags), folds, seed)
    check_labels([t for sentence_tags in tags for t in sentence_tags],
                 [fold_of[s] for s, sentence_tags in enumerate(tags) for _ in sentence_tags], folds, "words")
    return fold_of


def probe_sentences(model, texts, labels, *, layers="all", pooling=None, folds=5, l2=1e-2, seed=0,
                    batch_size=None, max_length=None):
    """Fit and cross-validate a probe on each layer's pooled vectors of `texts` (pooling None: the model's
    recipe's, as encode; each layer's vectors as the encoder gives them, no Dense or normalisation)."""
    from ..embed.pooling import resolve_layers
    if len(texts) != len(labels):
        raise InputError(f"{len(texts)} texts but {len(labels)} labels")
    if pooling == "none":
        raise InputError("the sentence probe needs one vector per text: choose cls, mean, max or mean_sqrt_len")
    fold_of = sentence_probe_folds(labels, folds=folds, l2=l2, seed=seed)
    chosen = resolve_layers(layers, model.config.num_hidden_layers)
    y = np.asarray(labels)
    vectors = model.encode(texts, layers=chosen, pooling=pooling, batch_size=batch_size,
                           max_length=max_length)                   # [N, L, D]
    rows = [LayerScore(layer, *cross_validate(vectors[:, i], y, folds=folds, l2=l2, fold_of=fold_of))
            for i, layer in enumerate(chosen)]
    classes, counts = np.unique(y, return_counts=True)
    unseen = unseen_in_training(y, fold_of, folds)
    notes = [f"{unseen} text(s) have a label no other fold holds, so their fold's probe never saw it and "
             "scores them wrong"] if unseen else []
    return ProbeResult("sentence", rows, float(counts.max() / counts.sum()), len(texts), classes.tolist(), folds,
                       notes)


def probe_tokens(model, sentences, tags, *, layers="all", subword="first", folds=5, l2=1e-2, seed=0, batch_size=None):
    """Fit and cross-validate a per-token tagger on each layer's word vectors; folds split by sentence."""
    from ..embed.pooling import resolve_layers
    if len(sentences) != len(tags):
        raise InputError(f"{len(sentences)} sentences but {len(tags)} tag sequences")
    sentence_folds = token_probe_folds(tags, folds=folds, l2=l2, seed=seed)
    chosen = resolve_layers(layers, model.config.num_hidden_layers)
    # One window as long as the model allows: a sentence that fits is encoded exactly as without windows,
    # and a longer one is covered whole, so every word gets a vector.
    encoded = model.encode_words([list(s) for s in sentences], layers=chosen, subword=subword,
                                 batch_size=batch_size, window=model.tokenizer.max_length)
    feats, labels, sentence_of, kept_tags = [], [], [], []
    dropped = 0
    for s, (words, sentence_tags, wv) in enumerate(zip(sentences, tags, encoded)):
        index = np.flatnonzero(wv.has_pieces)                       # words with no pieces have zero vectors
        dropped += len(words) - len(index)
        feats.append(wv.vectors[index])                             # [W, L, D]
        labels += [sentence_tags[i] for i in index]
        kept_tags.append([sentence_tags[i] for i in index])
        sentence_of += [s] * len(index)
    X = np.concatenate(feats)                                       # [tokens, L, D]
    y = np.asarray(labels)
    sentence_of = np.asarray(sentence_of)
    fold_of = sentence_folds[sentence_of]
    rows = []
    for i, layer in enumerate(chosen):
        accs, f1s = [], []
        for k in range(folds):
            test = fold_of == k
            clf = fit_logistic(X[~test, i], y[~test], l2=l2)
            pred = clf.predict(X[test, i])
            accs.append(float(np.mean(pred == y[test])))
            test_sentences = np.unique(sentence_of[test])
            per_sentence = np.split(pred, np.cumsum([len(kept_tags[s]) for s in test_sentences])[:-1])
            f1s.append(entity_f1([kept_tags[s] for s in test_sentences], [list(p) for p in per_sentence]))
        rows.append(LayerScore(layer, float(np.mean(accs)), float(np.std(accs)), float(np.mean(f1s))))
    classes, counts = np.unique(y, return_counts=True)
    notes = [f"{dropped} word(s) produced no tokenizer pieces and were left out"] if dropped else []
    unseen = unseen_in_training(y, fold_of, folds)
    if unseen:
        notes.append(f"{unseen} word(s) have a label no other fold holds, so their fold's probe never saw it "
                     "and scores them wrong")
    return ProbeResult("token", rows, float(counts.max() / counts.sum()), len(y), classes.tolist(), folds, notes)
