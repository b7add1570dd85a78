"""Faults found by a user's and an attacker's pass over the embedding surface (encode, encode_words, the
embed/similarity/extract commands), each pinned here: what was accepted or said before, what happens now."""

import warnings

import numpy as np
import pytest
from conftest import FIXTURES

import minibert
from minibert.errors import InputError

BERT = FIXTURES / "families" / "bert_cased"


@pytest.fixture(scope="module")
def model():
    return minibert.load(BERT)


@pytest.mark.parametrize("value", [np.True_, True])
def test_a_numpy_true_normalize_renormalises_after_truncate_dim(model, value):
    # np.True_ was not `is True`: the vectors were normalised before the cut and not after (norms 0.53, 0.59)
    vectors = model.encode(["a cat", "dog"], truncate_dim=8, normalize=value)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("options", [{"normalize": "False"}, {"normalize": 1}, {"normalize_embeddings": "no"}])
def test_encode_refuses_a_normalize_that_is_no_bool(model, options):
    # "False" is truthy: it silently normalised
    name = next(iter(options))
    with pytest.raises(InputError, match=f"{name} must be True, False or None"):
        model.encode("a cat", **options)


def test_encode_words_refuses_a_normalize_that_is_no_bool(model):
    with pytest.raises(InputError, match="normalize must be True, False or None"):
        model.encode_words(["a cat"], normalize="no")
    vectors = model.encode_words(["a cat"], normalize=np.True_)[0].vectors
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("family", ["roberta", "bert_cased", "xlm_roberta", "mpnet"])
def test_encode_words_on_a_text_gives_no_blank_words_whatever_the_tokenizer(family):
    # byte-level BPE made each run of spaces a word: roberta gave ['', 'Hello', '', 'wörld', 'x', ''] here
    family_model = minibert.load(FIXTURES / "families" / family)
    text = "  Hello   wörld x  "
    [found] = family_model.encode_words([text])
    assert found.words == ["Hello", "wörld", "x"]
    assert [text[s:e] for s, e in found.spans] == found.words
    assert found.vectors.shape[0] == 3 and found.has_pieces.all()
    assert family_model.encode_words(["   "])[0].vectors.shape[0] == 0


def test_int8_ranges_from_one_calibration_vector_are_refused(model):
    # every value was its own start: all -128, without a word (one vector of the batch itself was refused)
    with pytest.raises(InputError, match="cannot come from 1 vector"):
        model.encode(["a cat", "a dog"], precision="int8", calibration_embeddings=np.ones((1, 32), np.float32))


@pytest.mark.parametrize("where", ["embeddings", "calibration_embeddings", "ranges"])
def test_int8_quantization_refuses_non_finite_values(where):
    # a NaN made every step NaN, cast to 0: quantized vectors of zeros, without a word
    vectors = np.array([[0.5, 1.0], [0.0, 2.0], [0.2, 1.5]], dtype=np.float32)
    options = {}
    if where == "embeddings":
        vectors[1, 0] = np.nan
        options["calibration_embeddings"] = np.array([[0.0, 0.0], [1.0, 2.0]], dtype=np.float32)
    elif where == "calibration_embeddings":
        options[where] = np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32)
    else:
        options[where] = np.array([[0.0, 0.0], [1.0, np.inf]], dtype=np.float32)
    with pytest.raises(InputError, match=f"{where} hold 1 non-finite value"):
        minibert.quantize_embeddings(vectors, "int8", **options)


def test_text_pairs_with_window_is_refused_for_what_it_is(model):
    # the message was "text_pairs needs one text per text (found 1 for 1) and no window=", as if the count were off
    with pytest.raises(InputError, match="text_pairs with window= is not supported") as refused:
        model.encode(["a cat"], text_pairs=["a dog"], window=16)
    assert "found 1 for 1" not in str(refused.value)


def test_stride_true_is_refused(model):
    # True was taken as an overlap of 1 token
    with pytest.raises(InputError, match="stride"):
        model.encode(["word " * 100], window=16, stride=True)


@pytest.mark.parametrize("options", [{"progress": "yes"}, {"show_progress_bar": "no"}])
def test_a_progress_that_is_no_bool_or_callable_is_refused(model, options):
    # show_progress_bar="no" was true: it showed the bar
    with pytest.raises(InputError, match="progress .show_progress_bar. must be True, False, None"):
        model.encode(["a cat"], **options)
    with pytest.raises(InputError, match="progress .show_progress_bar. must be"):
        model.encode_words(["a cat"], progress="yes")


def cli_error(capsys, argv):
    """The CLI run in-process: its one 'minibert: error:' line (exit status 1)."""
    from minibert.cli import main
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("minibert: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv, said", [
    (["similarity", "--matrix", "{texts}", "a cat"], "two texts, or --matrix FILE"),    # 'a cat' was ignored
    (["similarity", "a cat", "a dog", "--layer", "1"], "--layer picks the layer of --matrix"),   # every layer shown
    (["similarity", "--matrix", "{empty}"], "no texts in"),                      # an empty matrix, exit status 0
])
def test_similarity_refuses_what_it_would_ignore(tmp_path, capsys, argv, said):
    (tmp_path / "texts.txt").write_text("a cat\na dog\n")
    (tmp_path / "empty.txt").write_text("")
    argv = [a.format(texts=tmp_path / "texts.txt", empty=tmp_path / "empty.txt") for a in argv]
    assert said in cli_error(capsys, argv + ["--model", str(BERT)])


def test_resuming_with_changed_texts_says_the_texts_differ_and_marks_the_cut():
    # it said "(texts_sha256 was '83f8dadc839bdfdfcd18a080352ba5cd6212c40, now '87ed168e...)": each checksum
    # cut bare, its quote left open, and nothing said what the checksum is of
    from minibert.corpus.resume import job_difference
    said = job_difference({"texts_sha256": "8" * 64, "pooling": None}, {"texts_sha256": "7" * 64, "pooling": None})
    assert said == f" (texts_sha256 was '{'8' * 36}..., now '{'7' * 36}...: the input's texts differ)"
    assert job_difference({"pooling": None}, {"pooling": "cls"}) == " (pooling was None, now 'cls')"


@pytest.mark.parametrize("command", ["extract", "similarity"])
def test_a_field_named_for_a_txt_file_is_refused(tmp_path, capsys, command):
    # JSON Lines saved as .txt: --field body was ignored and each raw JSON line embedded as the text
    data = tmp_path / "data.txt"
    data.write_text('{"body": "a cat"}\n{"body": "a dog"}\n')
    argv = (["extract", str(data), "--out", str(tmp_path / "out")] if command == "extract"
            else ["similarity", "--matrix", str(data)])
    err = cli_error(capsys, argv + ["--field", "body", "--model", str(BERT)])
    assert "--field body names a JSON field or a column" in err and "read as .txt" in err
    assert not (tmp_path / "out").exists()


def test_the_field_still_defaults_to_text_for_csv(tmp_path, capsys):
    from minibert.cli import main
    data = tmp_path / "data.csv"
    data.write_text("id,text\n1,a cat\n2,a dog\n")
    assert main(["extract", str(data), "--out", str(tmp_path / "out"), "--model", str(BERT), "--quiet"]) == 0
    assert minibert.load_embeddings(tmp_path / "out").manifest["field"] == "text"


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_a_text_column_named_twice_is_refused(tmp_path, suffix, sep):
    # the first was read, silently, whichever held the texts
    from minibert.corpus.readers import read_texts
    data = tmp_path / f"data{suffix}"
    data.write_text(sep.join(["text", "id", "text"]) + "\n" + sep.join(["", "1", "a cat"]) + "\n")
    with pytest.raises(InputError, match="names column .text. 2 times; rename all but one"):
        read_texts(str(data))


@pytest.mark.parametrize("fixture", ["st_prompt_excluded", "st_mean_normalize"])
def test_a_prompt_that_fills_max_length_is_warned(fixture):
    # every text was cut whole and all got one vector, without a word but the truncation count
    st_model = minibert.load(FIXTURES / fixture)
    prompt = "a b c d e f g h i j "
    with pytest.warns(UserWarning, match="no token of any text reaches the model"):
        vectors = st_model.encode(["hi", "hello there"], prompt=prompt, max_length=12)
    np.testing.assert_array_equal(vectors[0], vectors[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # room for a text token: no warning
        vectors = st_model.encode(["hi", "there"], prompt=prompt, max_length=13)
    assert not np.array_equal(vectors[0], vectors[1])


@pytest.mark.parametrize("texts", [["a cat", "-"], ["-", "-"]])
def test_embed_refuses_a_dash_among_other_texts(capsys, texts):
    # `embed 'a cat' -` embedded the text "-" and never read standard input
    assert "must be the only text" in cli_error(capsys, ["embed", *texts, "--model", str(BERT)])


def test_a_lone_surrogate_escaped_in_jsonl_is_named_by_file_and_line(tmp_path):
    # JSON may spell "\ud800"; the refusal came from encode and named texts[1], not the file's line 2
    from minibert.corpus.readers import read_texts
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "ok"}\n{"text": "bad \\ud800 here"}\n')
    with pytest.raises(InputError, match=r"data.jsonl:2: field 'text' holds a lone surrogate '\\ud800' at character 4"):
        read_texts(str(data))


def test_a_generator_of_texts_is_refused_with_what_to_write(model):
    with pytest.raises(InputError, match=r"found generator \(pass list\(texts\) to read it whole\)"):
        model.encode(text for text in ["a cat", "a dog"])
    with pytest.raises(InputError, match="found dict$"):                      # no list() hint where it misleads
        model.encode({"a": 1})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_similarity_refuses_non_finite_vectors(model, bad):
    # the row scored NaN against everything, without a word
    a = np.array([[1.0, 0.0], [0.5, bad]])
    with pytest.raises(InputError, match=r"similarity: a holds 1 non-finite value\(s\) \(NaN/Inf\), first in row 1"):
        model.similarity(a, np.ones((2, 2)))
    with pytest.raises(InputError, match="b holds 1 non-finite"):
        model.similarity_pairwise(np.ones((2, 2)), a)


def test_a_csv_quote_never_closed_is_refused_naming_its_record(tmp_path, capsys):
    # the rest of the file became one text: 4 rows read as 2, 'stray quote,2\nrow three,3\nrow four,4\n' one of them
    from minibert.corpus.readers import read_texts
    data = tmp_path / "data.csv"
    data.write_text('text,id\nfine,1\n"stray quote,2\nrow three,3\nrow four,4\n')
    with pytest.raises(InputError, match="data.csv:3: a quote opened in this record is never closed"):
        read_texts(str(data))
    assert "data.csv:3: a quote opened" in cli_error(capsys, ["extract", str(data), "--out", str(tmp_path / "out"),
                                                               "--model", str(BERT)])
    data.write_text('text,id\n"multi\nline, ""quoted""",1\n"last\nrow",2\n')     # closed quotes: read as before
    assert read_texts(str(data)) == ['multi\nline, "quoted"', "last\nrow"]
