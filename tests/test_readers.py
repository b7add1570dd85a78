"""One reader per format (minibert.corpus.readers), shared by every command: extract, embed, predict, finetune and
probe get the same rows from the same file, in every format, standard input included.

Each command is run through the CLI up to the point where it would load a model (stopped there), and the
rows it read are compared with what the format says the file holds."""

import csv
import importlib.util
import io
import json
import sys
from types import SimpleNamespace

import pytest

import minibert
from minibert.train import classifier, finetune
from minibert.corpus import readers
from minibert.cli import main
from minibert.errors import InputError

# Texts every format must give back as written: line and paragraph separators, form feed, vertical tab,
# NEL and \x1c-\x1e are characters of a text, not line ends; an empty text keeps its place; a text may start
# with a quote; a field may be longer than the csv module's default 128 KiB.
TEXTS = ["plain", "line\u2028sep para\u2029sep", "form\x0cfeed vtab\x0b", "seps\x1c\x1d\x1e nel\x85", "",
         '"starts with a quote', "x" * (200 << 10), "no\u00a0break"]
LABELS = ["a", "b", "a", "b", "a", "b", "a", "b"]


def write(path, texts=TEXTS, labels=LABELS):
    """`texts` (and labels, where the format holds them) in the format `path`'s suffix names."""
    suffix = path.suffix
    if suffix == ".txt":
        path.write_bytes("".join(t + "\n" for t in texts).encode())
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n"
                                for t, y in zip(texts, labels)), encoding="utf-8")
    elif suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["text", "label"], *zip(texts, labels)])
    elif suffix == ".tsv":
        path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)), encoding="utf-8")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"text": texts, "label": labels}), path)
    return path


class Stop(Exception):
    """Raised where a command would load its model: everything before it (the reading) has run."""


@pytest.fixture
def reads(monkeypatch):
    """Run a command up to its model; returns what the readers gave it: {function name: its result}."""
    seen = {}
    for name in ("open_corpus", "read_texts", "read_text_pairs", "read_labelled", "read_conll"):
        def recording(*args, _name=name, _real=getattr(readers, name), **kwargs):
            seen[_name] = result = _real(*args, **kwargs)
            return result
        monkeypatch.setattr(readers, name, recording)

    def stop(*args, **kwargs):
        raise Stop
    monkeypatch.setattr(minibert, "load", stop)
    monkeypatch.setattr(classifier, "load_classifier", stop)
    monkeypatch.setattr(finetune, "finetune", lambda model, train, **k: seen.update(finetune=train) or stop())

    def run(argv, stdin=None):
        seen.clear()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(stdin)))
        with pytest.raises(Stop):
            main(argv)
        return seen
    return run


FORMATS = [".txt", ".jsonl", ".csv", ".tsv", ".parquet"]


def needs(suffix):
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        pytest.skip("reading Parquet needs pyarrow")


@pytest.mark.parametrize("suffix", FORMATS + ["-"])
def test_extract_and_predict_read_the_same_texts_in_every_format(suffix, tmp_path, reads):
    needs(suffix)
    if suffix == "-":
        path, stdin = "-", "".join(t + "\n" for t in TEXTS).encode()
    else:
        path, stdin = str(write(tmp_path / f"in{suffix}")), None
    extracted = list(reads(["extract", path, "--out", str(tmp_path / "out")], stdin)["open_corpus"])
    predicted, pairs = reads(["predict", str(tmp_path / "clf"), path], stdin)["read_text_pairs"]
    assert extracted == predicted == TEXTS and pairs is None


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_finetune_and_probe_read_the_same_examples_in_every_format(suffix, tmp_path, reads):
    path = str(write(tmp_path / f"train{suffix}"))
    trained = reads(["finetune", path, "--out", str(tmp_path / "clf")])["finetune"]
    probed = reads(["probe", path])["read_labelled"]
    assert (trained.texts, trained.labels) == probed == (TEXTS, LABELS)
    assert list(reads(["extract", path, "--out", str(tmp_path / "out")])["open_corpus"]) == TEXTS


def test_pairs_are_read_alike_by_finetune_and_predict(tmp_path, reads):
    path = tmp_path / "pairs.csv"
    path.write_text("premise,hypothesis,label\nthe cat,a dog,yes\n\"a, b\",\"c\nd\",no\n")
    trained = reads(["finetune", str(path), "--pair-col", "hypothesis", "--text-col", "premise",
                     "--out", str(tmp_path / "clf")])["finetune"]
    predicted = reads(["predict", str(tmp_path / "clf"), str(path), "--text-col", "premise",
                       "--pair-col", "hypothesis"])["read_text_pairs"]
    assert (trained.texts, trained.text_pairs) == predicted == (["the cat", "a, b"], ["a dog", "c\nd"])
    with pytest.raises(InputError, match="sentence pairs .--pair-col. need"):
        readers.read_text_pairs(write(tmp_path / "in.txt"), pair_col="b")


def test_conll_is_read_alike_by_finetune_and_probe(tmp_path, reads):
    """Columns split at ASCII spaces and tabs only: '1\\u00a0000' is one word (str.split made it '1')."""
    path = tmp_path / "d.conll"
    twice = "EU NNP B-ORG\nrejects\tVBZ\tO\n1\u00a0000 CD O\n\nPeter\u2028x B-PER\nsaw O\n\n" * 2
    path.write_text("-DOCSTART- -X- O\n\n" + twice)
    expected = ([["EU", "rejects", "1\u00a0000"], ["Peter\u2028x", "saw"]] * 2,
                [["B-ORG", "O", "O"], ["B-PER", "O"]] * 2)
    trained = reads(["finetune", str(path), "--task", "token", "--out", str(tmp_path / "clf")])["finetune"]
    assert (trained.texts, trained.labels) == reads(["probe", str(path), "--folds", "2"])["read_conll"] == expected
    assert reads(["probe", "--conll", "-", "--folds", "2"], stdin=path.read_bytes())["read_conll"] == expected


def test_a_bad_byte_is_named_alike_by_every_reader(tmp_path):
    (tmp_path / "bad.conll").write_bytes(b"EU B-ORG\nrejects O\n\nPeter\xff B-PER\n")
    (tmp_path / "bad.csv").write_bytes(b"text,label\nfine,a\nPeter\xff,b\n")
    with pytest.raises(InputError, match=r"bad.conll:4: not valid UTF-8 at byte 25 of the file"):
        readers.read_conll(tmp_path / "bad.conll")
    for read in (readers.read_labelled, readers.read_texts, readers.read_text_pairs):
        with pytest.raises(InputError, match=r"bad.csv:3: not valid UTF-8 at byte 23 of the file"):
            read(tmp_path / "bad.csv")


def test_a_byte_order_mark_is_no_part_of_a_column_name(tmp_path):
    (tmp_path / "bom.csv").write_text("text,label\nfine,a\n", encoding="utf-8-sig")   # as Excel saves it
    assert readers.read_labelled(tmp_path / "bom.csv") == (["fine"], ["a"])
    assert readers.read_text_pairs(tmp_path / "bom.csv") == (["fine"], None)


def test_a_blank_txt_line_is_an_empty_text_in_its_place(tmp_path):
    """predict dropped blank lines (and split at U+2028 and form feeds): its records no longer matched the
    input's lines. Every command now reads a blank line as an empty text."""
    (tmp_path / "t.txt").write_bytes(b"one\r\n\r\nthree\x0cstill three\n\nfive")
    expected = ["one", "", "three\x0cstill three", "", "five"]
    assert readers.read_text_pairs(tmp_path / "t.txt") == (expected, None)
    assert readers.read_texts(tmp_path / "t.txt") == expected


def test_jsonl_with_a_raw_line_separator_is_read(tmp_path):
    """predict --out writes U+2028 raw (ensure_ascii=False); predict refused reading that file back."""
    (tmp_path / "p.jsonl").write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert "\u2028" in (tmp_path / "p.jsonl").read_text(encoding="utf-8")
    assert readers.read_text_pairs(tmp_path / "p.jsonl") == (["a\u2028b"], None)


@pytest.mark.parametrize("argv", [["embed", "-"], ["predict", "clf", "-"]])
def test_an_empty_standard_input_is_an_error(argv, monkeypatch, capsys):
    """`embed -` with nothing on stdin exited 0 printing nothing."""
    monkeypatch.setattr(minibert, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(b"")))
    assert main(argv) == 1
    assert "-: no texts in standard input" in capsys.readouterr().err


# ----- labels are what the file says -------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ("text,label\nfine,a\nno label,\n", r"t.csv:3: the label is blank \(''\)"),
    ("text,label\nfine,a\nno label,  \n", r"t.csv:3: the label is blank \('  '\)"),
    ("text,label\nfine,a\nshort row\n", "t.csv:3: the label is missing"),
    ("text\tlabel\nfine\ta\nno label\t\n", r"t.tsv:3: the label is blank"),
    ('{"text": "x", "label": "a"}\n{"text": "y", "label": null}\n', "t.jsonl:2: the label is null"),
    ('{"text": "x", "label": "a"}\n{"text": "y"}\n', "t.jsonl:2: the label is missing"),
    ('{"text": "x", "label": 1}\n{"text": "y", "label": 1.0}\n', "t.jsonl:2: the label 1.0 is a JSON number with a"),
    ('{"text": "x", "label": true}\n', "t.jsonl:1: the label true is a JSON bool"),
    ('{"text": "x", "label": ["a"]}\n', "t.jsonl:1: the label .\"a\". is a JSON list"),
    ('{"text": "x", "label": 1}\n\n{"text": "y", "label": "1"}\n',
     r't.jsonl:3: the label "1" is a string, but the labels before it are integers \(the first at line 1\)'),
    ('{"text": "x", "label": "1"}\n{"text": "y", "label": 0}\n',
     r"t.jsonl:2: the label 0 is an integer, but the labels before it are strings \(the first at line 1\)"),
    ('{"text": 3, "label": "a"}\n', "t.jsonl:1: needs a string field 'text'"),
    ("text,label\n", "t.csv: no examples"),
    ("", "t.csv: empty file"),
    ("words,label\nx,a\n", "t.csv: no column 'text'"),
])
def test_labels_are_refused_unless_the_file_writes_them(content, message, tmp_path):
    """Blank CSV labels became a class '', JSON null 'None', 1 and 1.0 two classes, true 'True'."""
    suffix = ".jsonl" if content.startswith("{") else ".tsv" if "\t" in content else ".csv"
    path = tmp_path / f"t{suffix}"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        readers.read_labelled(path)


def test_integer_labels_are_their_decimal_strings(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"t": "x", "y": 1}\n\n{"t": "z", "y": 0}\n{"t": "w", "y": 10}\n')
    assert readers.read_labelled(tmp_path / "d.jsonl", "t", "y") == (["x", "z", "w"], ["1", "0", "10"])


def test_labelled_data_must_be_a_table(tmp_path):
    with pytest.raises(InputError, match="labelled data must be .csv, .tsv or .jsonl"):
        readers.read_labelled(write(tmp_path / "in.txt"))
    with pytest.raises(InputError, match="input file not found"):
        readers.read_labelled(tmp_path / "gone.csv")


def test_predict_keeps_one_record_per_line_and_reads_its_own_output(tmp_path, monkeypatch, capsys):
    """End to end with a real classifier: blank lines and U+2028 kept in place (predict dropped and split
    them), `predict -` reads standard input, and predict reads back the JSONL its --out wrote."""
    from pathlib import Path

    from minibert.train.data import Examples
    from minibert.train.finetune import TrainingRecipe
    families = Path(__file__).parent / "fixtures" / "families"
    train = Examples(texts=["the cat", "a dog", "red car", "blue sky"], labels=["x", "y", "x", "y"])
    clf = finetune.finetune(str(families / "bert_cased"), train, recipe=TrainingRecipe(epochs=1, batch_size=4))
    clf.save(tmp_path / "clf")
    lines = ["the cat", "", "a\u2028dog", "red\x0ccar", ""]
    (tmp_path / "in.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    assert main(["predict", str(tmp_path / "clf"), str(tmp_path / "in.txt"), "--out", str(tmp_path / "p.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert [r["text"] for r in records] == lines
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO((tmp_path / "in.txt").read_bytes())))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "clf"), "-"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.split("\n") if line] == records
    assert main(["predict", str(tmp_path / "clf"), str(tmp_path / "p.jsonl")]) == 0     # raw U+2028 inside
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.split("\n") if line] == lines


@pytest.mark.parametrize("source", ["stdin", "file"])
def test_extract_with_nothing_to_read_is_refused_like_embed_and_predict(tmp_path, monkeypatch, capsys, source):
    """`extract -` with an empty standard input (or an empty .txt) wrote an empty extraction and exited 0,
    where embed - and predict refuse it."""
    import io
    from minibert.cli import main
    path = "-" if source == "stdin" else str(tmp_path / "empty.txt")
    if source == "stdin":
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
    else:
        (tmp_path / "empty.txt").write_text("")
    assert main(["extract", path, "--out", str(tmp_path / "out")]) == 1
    assert "no texts in" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
def test_a_missing_column_is_named_without_another_commands_flag(tmp_path, suffix):
    """The readers serve extract (--field), predict (--text-col, --pair-col), finetune and probe (--text-col,
    --label-col): a missing column's message named --field whichever command read it."""
    path = tmp_path / f"data{suffix}"
    path.write_text("text\tp\ncat\tdog\n" if suffix == ".tsv" else '{"text": "cat", "p": "dog"}\n')
    with pytest.raises(InputError) as caught:
        readers.read_text_pairs(str(path), pair_col="pair")
    assert "'pair'" in str(caught.value) and "--field" not in str(caught.value)


def test_a_path_that_is_no_regular_file_is_not_called_missing():
    """/dev/null (or a FIFO) exists: 'input file not found' sent users looking for a file that was there."""
    with pytest.raises(InputError, match="/dev/null: input file is no regular file"):
        readers.read_text_pairs("/dev/null")


def test_conll_given_as_labelled_data_points_to_the_token_task(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("EU B-ORG\n")
    with pytest.raises(InputError, match=r"CoNLL token data: \.conll, with --task token"):
        readers.read_table(str(path), ["text", "label"], "labelled data")
