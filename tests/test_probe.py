"""Layer-wise probes: the solver against Newton's method and finite differences, the metrics against their
definitions, the probes on labelled data made here, and scikit-learn when it is installed."""

import importlib.util
import json

import numpy as np
import pytest

from minibert.analysis import lbfgs, probe
from minibert.cli import main
from minibert.corpus.readers import read_labelled


# ----- data made here: three topics, and a toy person/place tagging task -----------------------------------

def topic_data(n_per_topic=30, seed=0):
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[rng.integers(len(xs))]        # noqa: E731
    topics = {
        "sport": lambda: f"{pick(['Our', 'The visiting', 'Their young'])} {pick(['striker', 'goalkeeper', 'captain'])} "
                         f"{pick(['scored twice', 'was injured', 'missed a penalty'])} in the "
                         f"{pick(['final', 'derby', 'second half'])} of the {pick(['league', 'cup', 'tournament'])}.",
        "cooking": lambda: f"{pick(['Chop', 'Fry', 'Simmer'])} the {pick(['onions', 'garlic', 'tomatoes'])} with "
                           f"{pick(['butter', 'olive oil', 'a pinch of salt'])} for {pick(['five', 'ten', 'twenty'])} "
                           f"minutes before {pick(['serving', 'adding the rice', 'baking'])}.",
        "finance": lambda: f"{pick(['Shares', 'Bond yields', 'The central bank'])} {pick(['rose', 'fell', 'stalled'])} "
                           f"after {pick(['the earnings report', 'inflation data', 'the rate decision'])} "
                           f"{pick(['on Monday', 'this quarter', 'overnight'])}.",
    }
    texts, labels = [], []
    for label, make in topics.items():
        for _ in range(n_per_topic):
            texts.append(make())
            labels.append(label)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], [labels[i] for i in order]


PEOPLE = [["Anna"], ["Maria", "Schmidt"], ["John"], ["Li", "Wei"], ["Peter", "Novak"], ["Fatima"], ["Carlos", "Diaz"]]
PLACES = [["Paris"], ["New", "York"], ["Berlin"], ["Buenos", "Aires"], ["Tokyo"], ["Cape", "Town"], ["Madrid"]]
TEMPLATES = [["{PER}", "visited", "{LOC}", "last", "week", "."], ["Yesterday", "{PER}", "flew", "to", "{LOC}", "."],
             ["{PER}", "lives", "in", "{LOC}", "with", "{PER}", "."],
             ["In", "{LOC}", ",", "{PER}", "met", "friends", "."]]


def tagging_data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    sentences, tags = [], []
    for _ in range(n):
        words, labels = [], []
        for slot in TEMPLATES[rng.integers(len(TEMPLATES))]:
            if slot in ("{PER}", "{LOC}"):
                kind = slot[1:-1]
                entity = (PEOPLE if kind == "PER" else PLACES)[rng.integers(7)]
                words += entity
                labels += [f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1)
            else:
                words.append(slot)
                labels.append("O")
        sentences.append(words)
        tags.append(labels)
    return sentences, tags


@pytest.fixture(scope="module")
def model(model_for):
    return model_for("cpu")


@pytest.fixture(scope="module")
def topic_result(model):
    texts, labels = topic_data()
    return probe.probe_sentences(model, texts, labels, layers="all", folds=5)


# ----- the solver -------------------------------------------------------------------------------------------

def random_problem(N=80, D=6, C=3, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    y = (X @ rng.standard_normal((D, C)) + rng.standard_normal((N, C))).argmax(1)
    return X, y


def test_gradient_matches_finite_differences():
    X, y = random_problem()
    Y = np.eye(3)[y]
    theta = np.random.default_rng(2).standard_normal(7 * 3) * 0.3
    _, grad = lbfgs.softmax_loss(theta, X, Y, l2=0.1)
    eps = 1e-6
    numeric = np.array([(lbfgs.softmax_loss(theta + eps * e, X, Y, 0.1)[0]
                         - lbfgs.softmax_loss(theta - eps * e, X, Y, 0.1)[0])
                        / (2 * eps) for e in np.eye(len(theta))])
    assert np.abs(grad - numeric).max() < 1e-7


def newton_solution(X, Y, l2, steps=30):
    """Newton's method with the exact Hessian of the same objective, written out independently."""
    N, D = X.shape
    C = Y.shape[1]
    Xt = np.hstack([X, np.ones((N, 1))])                                  # [N, D + 1], bias as a last feature
    theta = np.zeros((D + 1) * C)                                         # Theta [D + 1, C] row-major
    penalty = np.kron(np.diag(np.r_[np.ones(D), 0.0]), np.eye(C)) * l2     # the bias row is not penalised
    for _ in range(steps):
        Z = Xt @ theta.reshape(D + 1, C)
        P = np.exp(Z - Z.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        grad = (Xt.T @ (P - Y) / N).ravel() + penalty @ theta
        H = sum(np.kron(np.outer(x, x), np.diag(p) - np.outer(p, p)) for x, p in zip(Xt, P)) / N + penalty
        theta -= np.linalg.lstsq(H, grad, rcond=None)[0]                  # H is singular along b + c
    return theta.reshape(D + 1, C)


def test_lbfgs_converges_to_the_newton_solution():
    X, y = random_problem()
    clf = probe.fit_logistic(X, y, l2=0.05, standardize=False, tol=1e-9)
    assert clf.info["converged"] and clf.info["grad_max"] <= 1e-9
    theta = newton_solution(X, np.eye(3)[y], 0.05)
    assert np.abs(clf.W - theta[:-1]).max() < 1e-6                       # W is unique; b only up to a constant
    Z = np.hstack([X, np.ones((len(X), 1))]) @ theta
    P = np.exp(Z - Z.max(1, keepdims=True))
    assert np.abs(clf.predict_proba(X) - P / P.sum(1, keepdims=True)).max() < 1e-6


def test_solver_reports_non_convergence():
    X, y = random_problem()
    with pytest.warns(UserWarning, match="L-BFGS stopped"):
        clf = probe.fit_logistic(X, y, l2=1e-4, max_iter=2)
    assert not clf.info["converged"]


def test_fit_refuses_a_single_class():
    with pytest.raises(probe.InputError, match="at least 2 classes"):
        probe.fit_logistic(np.ones((4, 2)), ["a"] * 4)


# ----- folds and metrics ------------------------------------------------------------------------------------

def test_stratified_folds_balance_classes():
    y = np.array(["a"] * 10 + ["b"] * 5)
    fold = probe.stratified_folds(y, 5, seed=3)
    for k in range(5):
        assert (y[fold == k] == "a").sum() == 2 and (y[fold == k] == "b").sum() == 1


def test_macro_f1_from_its_definition():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    per_class = []
    for c in (0, 1, 2):                                   # precision and recall first, then their harmonic mean
        p = np.mean(y_true[y_pred == c] == c)
        r = np.mean(y_pred[y_true == c] == c)
        per_class.append(2 * p * r / (p + r))
    assert probe.macro_f1(y_true, y_pred) == pytest.approx(np.mean(per_class))
    assert probe.macro_f1(y_true, y_true) == 1.0


def test_bio_spans_and_entity_f1():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-PER", "I-PER", "O", "I-ORG", "B-ORG"]
    # I-PER after B-LOC starts a new entity, as does I-ORG after O (conlleval's reading).
    assert probe.bio_spans(tags) == {(0, 2, "PER"), (3, 4, "LOC"), (4, 6, "PER"), (7, 8, "ORG"), (8, 9, "ORG")}
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    assert probe.entity_f1(gold, gold) == 1.0
    # One of two entities found, nothing spurious: precision 1, recall 1/2.
    assert probe.entity_f1(gold, [["B-PER", "I-PER", "O", "O"]]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    # A boundary error counts as a miss and a false alarm.
    assert probe.entity_f1(gold, [["B-PER", "O", "O", "B-LOC"]]) == pytest.approx(0.5)


# ----- the probes on real vectors ---------------------------------------------------------------------------

def test_sentence_probe_beats_chance_widely(topic_result):
    r = topic_result
    assert [row.layer for row in r.rows] == list(range(7))
    assert r.chance == pytest.approx(1 / 3)
    assert r.best.accuracy >= 0.9 and r.best.f1 >= 0.9
    assert np.mean([row.accuracy for row in r.rows]) >= r.chance + 0.4


def test_token_probe_finds_people_and_places(model):
    sentences, tags = tagging_data()
    r = probe.probe_tokens(model, sentences, tags, layers=[0, 3, 6], folds=4)
    assert r.examples == sum(map(len, sentences))
    assert r.best.accuracy >= max(0.9, r.chance + 0.2)
    assert r.best.f1 >= 0.8


def test_token_probe_keeps_words_the_tokenizer_drops(model):
    """A zero-width space has no WordPiece: it is left out, and the other words keep their own labels."""
    sentences, tags = tagging_data(n=12)
    sentences[0] = sentences[0][:1] + ["\u200b"] + sentences[0][1:]
    tags[0] = tags[0][:1] + ["B-LOC"] + tags[0][1:]
    r = probe.probe_tokens(model, sentences, tags, layers=[6], folds=3)
    assert r.examples == sum(map(len, sentences)) - 1
    assert r.notes and "1 word" in r.notes[0]


def who_acts_data():
    """Which animal does it? Both labels of a pair have the same bag of words: only word order tells."""
    animals, verbs = ["cat", "dog", "fox", "owl", "wolf", "horse"], ["chased", "bit", "followed", "watched"]
    rng = np.random.default_rng(4)
    texts, labels = [], []
    for i, a in enumerate(animals):
        for b in animals[i + 1:]:
            for v in verbs:
                s, o = (a, b) if rng.random() < 0.5 else (b, a)
                texts.append(f"The {s} {v} the {o}.")
                labels.append(s)
    return texts, labels


def test_matches_scikit_learn(model):
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed (optional comparison)")
    from sklearn.linear_model import LogisticRegression
    texts, labels = who_acts_data()
    X = model.encode(texts, layers=2).astype(np.float64)     # a hard task: accuracy well below 1, folds can differ
    y = np.asarray(labels)
    fold_of = probe.stratified_folds(y, 5)
    ours, theirs, l2 = [], [], 1e-2
    for k in range(5):
        train, test = fold_of != k, fold_of == k
        clf = probe.fit_logistic(X[train], y[train], l2=l2, tol=1e-8)
        Xs = (X - clf.mean) / clf.scale
        sk = LogisticRegression(C=1 / (l2 * train.sum()), tol=1e-10, max_iter=10000).fit(Xs[train], y[train])
        assert list(sk.classes_) == list(clf.classes)
        assert np.abs(sk.predict_proba(Xs[test]) - clf.predict_proba(X[test])).max() < 1e-3   # same optimum
        ours.append(np.mean(clf.predict(X[test]) == y[test]))
        theirs.append(np.mean(sk.predict(Xs[test]) == y[test]))
    assert abs(np.mean(ours) - np.mean(theirs)) <= 0.03, sklearn.__version__


# ----- reading files and the command ------------------------------------------------------------------------

def test_probe_command(tmp_path, capsys):
    texts, labels = topic_data(n_per_topic=10, seed=7)
    with open(tmp_path / "topics.csv", "w") as f:
        f.write("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in zip(texts, labels)))
    assert main(["probe", str(tmp_path / "topics.csv"), "--layers", "0,6", "--folds", "3",
                 "--plot", str(tmp_path / "probe.png")]) == 0
    out = capsys.readouterr().out
    assert "embeddings" in out and "layer 6" in out and "<- best" in out and "chance" in out
    png, csv_file = tmp_path / "probe.png", tmp_path / "probe.csv"
    if importlib.util.find_spec("matplotlib"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plot:" in out
    else:
        assert not png.exists() and "matplotlib is not installed" in out
        rows = csv_file.read_text().splitlines()
        assert rows[0] == "layer,accuracy,accuracy_std,macro_f1" and [r.split(",")[0] for r in rows[1:]] == ["0", "6"]


# ----- options refused before any encoding --------------------------------------------------------------------
# model=None: the checks must come before the probe touches the model (the old code encoded first).

@pytest.mark.parametrize("l2", [float("nan"), -0.1, float("inf")])
def test_l2_must_be_finite_and_non_negative(l2):
    texts, labels = topic_data(n_per_topic=4)
    with pytest.raises(probe.InputError, match=r"l2 .* must be a finite number >= 0"):
        probe.probe_sentences(None, texts, labels, l2=l2, folds=2)
    with pytest.raises(probe.InputError, match=r"l2 .* must be a finite number >= 0"):
        probe.probe_tokens(None, *tagging_data(n=6), l2=l2, folds=2)
    X, y = random_problem()
    with pytest.raises(probe.InputError, match="finite number >= 0"):   # NaN made the solver return zeros
        probe.fit_logistic(X, y, l2=l2)


def test_one_class_is_refused_before_encoding():
    with pytest.raises(probe.InputError, match="at least 2 different labels, but all 6 texts are labelled 'pos'"):
        probe.probe_sentences(None, ["a", "b", "c", "d", "e", "f"], ["pos"] * 6, folds=2)
    sentences, _ = tagging_data(n=6)
    with pytest.raises(probe.InputError, match="labelled 'O'"):
        probe.probe_tokens(None, sentences, [["O"] * len(s) for s in sentences], folds=2)
    # Two labels, but one fold's training part would hold only one of them.
    with pytest.raises(probe.InputError, match="training part holds only the label 'neg'"):
        probe.probe_sentences(None, list("abcdef"), ["neg"] * 5 + ["pos"], folds=2)


def test_probe_command_checks_data_and_options_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import minibert
    monkeypatch.setattr(minibert, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "one.csv").write_text("text,label\n" + "".join(f"text {i},pos\n" for i in range(6)))
    (tmp_path / "two.csv").write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(6)))
    for argv, message in [([str(tmp_path / "one.csv")], "all 6 texts are labelled 'pos'"),
                          ([str(tmp_path / "two.csv"), "--l2", "nan"], "found nan"),
                          ([str(tmp_path / "two.csv"), "--l2", "-1"], "found -1.0"),
                          ([str(tmp_path / "two.csv"), "--plot", str(tmp_path / "no" / "p.png")], "does not exist")]:
        assert main(["probe", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("minibert: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "probe.png").exists() and not (tmp_path / "probe.csv").exists()


def test_tsv_fields_are_not_quoted(tmp_path):
    """GLUE's .tsv files: tab-separated, no quoting; a text that starts with a quote is just a text."""
    (tmp_path / "d.tsv").write_text('sentence\tlabel\n"quoted" start\tpos\nnext row\tneg\n"open\tneg\n')
    assert read_labelled(tmp_path / "d.tsv", "sentence") == (['"quoted" start', "next row", '"open'],
                                                             ["pos", "neg", "neg"])


def test_probe_json_is_the_table_in_numbers(tmp_path, capsys):
    """--json: stdout is one JSON document holding the same scores the table prints."""
    texts, labels = topic_data(n_per_topic=10, seed=7)
    with open(tmp_path / "topics.csv", "w") as f:
        f.write("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in zip(texts, labels)))
    argv = ["probe", str(tmp_path / "topics.csv"), "--layers", "0,6", "--folds", "3", "--plot", ""]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert main(argv + ["--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "sentence probe" in captured.err and result["pooling"] == "mean" and result["plot"] is None
    assert [row["layer"] for row in result["rows"]] == [0, 6] and result["folds"] == 3
    assert result["best_layer"] in (0, 6) and result["examples"] == len(texts)
    for row in result["rows"]:            # the table's figures, from the same seeded folds
        assert f"{row['accuracy']:.3f}" in table
