"""The rest of SentenceTransformer's encode surface: truncate_dim, precision (quantize_embeddings), similarity and
similarity_pairwise by similarity_fn_name, encode_query / encode_document, and the keywords refused by name.

Torch-free: the surface_query_document and surface_dot fixtures (saved by sentence-transformers 6 itself,
tests/fixtures/make_st_surface.py) against their goldens. Under -m reference: the same calls live, in float64.
"""

import importlib.util
import warnings

import numpy as np
import pytest
from conftest import FIXTURES

import minibert
from minibert.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")   # the long text, as intended
GOLDEN_TOL = 1e-6       # float32 vectors and scores; measured: at most 2.4e-7 over these fixtures
CASES = ["surface_query_document", "surface_dot"]
spec = importlib.util.spec_from_file_location("make_st_surface", FIXTURES / "make_st_surface.py")
MAKER = importlib.util.module_from_spec(spec)
spec.loader.exec_module(MAKER)


def golden(case):
    with np.load(FIXTURES / case / "golden.npz") as data:
        return {key: data[key] for key in data.files}


def load(case, **options):
    return minibert.load(str(FIXTURES / case), **options)


def close(got, want, tol=GOLDEN_TOL):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.abs(got.astype(np.float64) - want).max() < tol, np.abs(got.astype(np.float64) - want).max()


def test_load_takes_truncate_dim_as_sentence_transformer_does():
    """minibert.load(..., truncate_dim=d) as SentenceTransformer(..., truncate_dim=d): it wins over the saved
    setting, None keeps the saved one; a bad value is refused before anything loads."""
    want = golden("surface_query_document")
    model = load("surface_query_document", truncate_dim=8)
    assert model.truncate_dim == 8 and model.get_sentence_embedding_dimension() == 8
    close(model.encode(MAKER.TEXTS), want["truncate_8"])
    assert load("surface_dot", truncate_dim=6).encode(MAKER.TEXTS).shape == (len(MAKER.TEXTS), 6)    # saved: 12
    assert load("surface_dot", truncate_dim=None).truncate_dim == 12
    for bad in (0, 2.5, True):
        with pytest.raises(InputError, match="truncate_dim must be an int >= 1"):
            minibert.load(str(FIXTURES / "no such model"), truncate_dim=bad)


@pytest.mark.parametrize("case", CASES)
def test_encode_query_and_encode_document_apply_the_prompts_as_sentence_transformers(case):
    model, want = load(case), golden(case)
    close(model.encode_query(MAKER.TEXTS), want["encode_query"])
    close(model.encode_document(MAKER.TEXTS), want["encode_document"])
    close(model.encode(MAKER.TEXTS), want["encode"])
    if case == "surface_query_document":       # the prompts change the vectors: the test can tell them apart
        assert np.abs(want["encode_query"] - want["encode"]).max() > 1e-2
        assert np.abs(want["encode_document"] - want["encode_query"]).max() > 1e-2
    # sentence-transformers 6 saves empty "query" and "document" prompts beside surface_dot's "passage": "document"
    # wins over "passage", as its encode_document checks document, passage, corpus in that order
    assert load("surface_dot").recipe.prompts["document"] == ""
    given = model.encode_query(MAKER.TEXTS[:2], prompt="a ")
    np.testing.assert_array_equal(given, model.encode(MAKER.TEXTS[:2], prompt="a "))


def test_truncate_dim_cuts_after_normalize_and_normalize_embeddings_renormalises():
    model, want = load("surface_query_document"), golden("surface_query_document")
    close(model.encode(MAKER.TEXTS, truncate_dim=8), want["truncate_8"])
    close(model.encode(MAKER.TEXTS, truncate_dim=8, normalize_embeddings=True), want["truncate_8_normalize"])
    assert abs(np.linalg.norm(want["truncate_8"], axis=1) - 1).max() > 1e-2          # cut after Normalize
    model.truncate_dim = 8                                 # as SentenceTransformer(..., truncate_dim=8)
    close(model.encode(MAKER.TEXTS), want["truncate_8"])
    assert model.get_sentence_embedding_dimension() == 8
    assert model.encode("hello").shape == (8,)
    assert len(model.encode(["hello"], pooling="none")[0][0]) == 16    # token vectors are never cut
    assert model.encode(["hello"], layers=1).shape == (1, 16)         # nor other layers than the sentence vector's
    assert model.encode(["hello"], layers=1, truncate_dim=8).shape == (1, 8)    # unless asked outright
    model.truncate_dim = None
    close(model.encode(MAKER.TEXTS), want["encode"])


def test_truncate_dim_saved_in_config_sentence_transformers_applies():
    model, want = load("surface_dot"), golden("surface_dot")
    assert model.truncate_dim == 12 and model.get_sentence_embedding_dimension() == 12
    close(model.encode(MAKER.TEXTS), want["encode"])
    assert want["encode"].shape[1] == 12
    close(model.encode(MAKER.TEXTS, truncate_dim=10_000), want["encode_full"])


@pytest.mark.parametrize("case", CASES)
def test_quantize_embeddings_equals_sentence_transformers_bit_for_bit(case):
    want = golden(case)
    vectors, calibration = want["encode_full"], want["calibration"]
    for precision in MAKER.PRECISIONS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")            # ranges from 10 vectors: warned, as sentence-transformers
            got = minibert.quantize_embeddings(vectors, precision)
        assert got.dtype == want[f"quantize_{precision}"].dtype
        np.testing.assert_array_equal(got, want[f"quantize_{precision}"])
        if precision.endswith("int8"):
            np.testing.assert_array_equal(
                minibert.quantize_embeddings(vectors, precision, calibration_embeddings=calibration),
                want[f"quantize_{precision}_calibrated"])


@pytest.mark.parametrize("case", CASES)
def test_encode_precision_equals_sentence_transformers_encode(case):
    model, want = load(case), golden(case)
    for precision in MAKER.PRECISIONS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = model.encode(MAKER.TEXTS, truncate_dim=10_000, precision=precision)
        expected = want[f"encode_{precision}"]
        assert got.dtype == expected.dtype and got.shape == expected.shape
        if precision == "float32":
            close(got, expected)
        else:      # int8/uint8 may differ by one step at a rounding boundary; measured: equal on these fixtures
            assert np.abs(got.astype(np.int64) - expected.astype(np.int64)).max() <= (0 if "binary" in precision else 1)
    with pytest.warns(UserWarning, match="ranges taken from the 10 vectors"):
        model.encode(MAKER.TEXTS, precision="uint8")
    calibrated = model.encode(MAKER.TEXTS, truncate_dim=10_000, precision="int8",
                              calibration_embeddings=want["calibration"])
    assert np.abs(calibrated.astype(int) - want["quantize_int8_calibrated"].astype(int)).max() <= 1


@pytest.mark.parametrize("case", CASES)
def test_similarity_follows_similarity_fn_name(case):
    model, want = load(case), golden(case)
    a, b = want["encode_full"][:6], want["encode_full"][4:]
    assert model.similarity_fn_name == {"surface_query_document": "cosine", "surface_dot": "dot"}[case]
    close(model.similarity(a, b), want["similarity_model"])
    for name in MAKER.SIMILARITIES:
        model.similarity_fn_name = name
        close(model.similarity(a, b), want[f"similarity_{name}"])
        close(model.similarity_pairwise(a, b), want[f"similarity_pairwise_{name}"])
    assert model.similarity(a[0], b[0]).shape == (1, 1)
    with pytest.raises(InputError, match="similarity_fn_name must be one of"):
        model.similarity_fn_name = "maxsim"
    with pytest.raises(InputError, match="row i with row i"):
        model.similarity_pairwise(a, b[:2])
    with pytest.raises(InputError, match="dimensions"):
        model.similarity(a, b[:, :4])


def test_sentence_transformers_keywords_minibert_does_not_take_are_refused_by_name():
    model = load("surface_query_document")
    for keyword, value, hint in [("task", "query", "encode_query"), ("processing_kwargs", {}, "max_length="),
                                 ("convert_to_tensor", True, "torch.from_numpy"), ("device", "cuda", "backend="),
                                 ("output_value", None, "token_embeddings"), ("sentences", ["a"], "first argument")]:
        with pytest.raises(InputError, match=keyword) as e:
            model.encode(["hello"], **{keyword: value})
        assert hint in str(e.value)
    with pytest.raises(InputError, match="accepted: normalize_embeddings"):
        model.encode(["hello"], no_such_option=1)
    tokens = model.encode(["hello", "the cat"], output_value="token_embeddings")
    for got, want in zip(tokens, model.encode(["hello", "the cat"], pooling="none")):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.encode(["hello"], device="cpu", output_value="sentence_embedding"),
                                  model.encode(["hello"]))


def test_bad_encode_options_are_refused():
    model = load("surface_query_document")
    cases = [({"truncate_dim": 0}, "truncate_dim"), ({"truncate_dim": 8, "pooling": "none"}, "truncate_dim"),
             ({"precision": "int4"}, "precision must be one of"),
             ({"calibration_embeddings": np.ones((2, 16))}, "calibration_embeddings"),
             ({"precision": "binary", "calibration_embeddings": np.ones((2, 16))}, "calibration_embeddings"),
             ({"precision": "int8", "layers": [1, 2]}, "layer axis"),
             ({"precision": "int8", "pooling": "none"}, "token vectors")]
    for options, match in cases:
        with pytest.raises(InputError, match=match):
            model.encode(MAKER.TEXTS, **options)
    with pytest.raises(InputError, match="cannot come from 1 vector"):
        minibert.quantize_embeddings(np.ones((1, 4), np.float32), "int8")
    with pytest.raises(InputError, match="float vectors"):
        minibert.quantize_embeddings(np.ones((3, 4), np.int8), "binary")
    with pytest.raises(InputError, match="truncate_dim"):
        model.truncate_dim = -1


# ---- live, against sentence-transformers ----------------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("case", CASES)
def test_live_float64_encode_options_equal_sentence_transformers(case):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(FIXTURES / case), device="cpu").double()
    model = load(case, dtype="float64")
    for method, options in [("encode", {}), ("encode_query", {}), ("encode_document", {}),
                            ("encode", {"truncate_dim": 8}),
                            ("encode", {"truncate_dim": 8, "normalize_embeddings": True})]:
        want = getattr(reference, method)(MAKER.TEXTS, convert_to_tensor=True, **options).numpy()
        got = getattr(model, method)(MAKER.TEXTS, **options)
        assert want.dtype == np.float64 and np.abs(got - want).max() < 1e-12, (method, options)
    a, b = model.encode(MAKER.TEXTS[:6]), model.encode(MAKER.TEXTS[4:])
    for name in MAKER.SIMILARITIES:
        reference.similarity_fn_name = model.similarity_fn_name = name
        assert np.abs(model.similarity(a, b) - reference.similarity(a, b).numpy()).max() < 1e-12
        assert np.abs(model.similarity_pairwise(a, b) - reference.similarity_pairwise(a, b).numpy()).max() < 1e-12


@pytest.mark.reference
@pytest.mark.parametrize("case", CASES)
def test_live_load_truncate_dim_equals_sentence_transformer_truncate_dim(case):
    st = pytest.importorskip("sentence_transformers")
    for dim in (8, None):
        reference = st.SentenceTransformer(str(FIXTURES / case), device="cpu", truncate_dim=dim).double()
        model = load(case, dtype="float64", truncate_dim=dim)
        assert model.get_sentence_embedding_dimension() == reference.get_sentence_embedding_dimension()
        want = reference.encode(MAKER.TEXTS, convert_to_tensor=True).numpy()
        assert np.abs(model.encode(MAKER.TEXTS) - want).max() < 1e-12, (case, dim)


@pytest.mark.reference
def test_live_quantize_embeddings_equals_sentence_transformers_on_many_vectors():
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.util.quantization import quantize_embeddings
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 77)).astype(np.float32)
    calibration = rng.standard_normal((300, 77)).astype(np.float32) * 0.8   # some values outside: clipped
    for precision in MAKER.PRECISIONS:
        np.testing.assert_array_equal(minibert.quantize_embeddings(vectors, precision),
                                      quantize_embeddings(vectors, precision=precision))
    for precision in ("int8", "uint8"):
        np.testing.assert_array_equal(
            minibert.quantize_embeddings(vectors, precision, calibration_embeddings=calibration),
            quantize_embeddings(vectors, precision=precision, calibration_embeddings=calibration))
        ranges = np.vstack([vectors.min(0) - 0.1, vectors.max(0)]).astype(np.float64)
        np.testing.assert_array_equal(minibert.quantize_embeddings(vectors, precision, ranges=ranges),
                                      quantize_embeddings(vectors, precision=precision, ranges=ranges))


def test_packed_precisions_of_no_vectors_are_empty_arrays_of_their_shape():
    """binary/ubinary of zero vectors: [0, ceil(D / 8)] in their dtype, as int8 gives [0, D]; packbits'
    empty result could not be reshaped (a raw ValueError)."""
    model = load("surface_query_document")
    D = model.get_sentence_embedding_dimension()
    for precision, dtype in (("ubinary", np.uint8), ("binary", np.int8)):
        for got in (model.encode([], precision=precision),
                    minibert.quantize_embeddings(np.zeros((0, D), np.float32), precision)):
            assert got.shape == (0, (D + 7) // 8) and got.dtype == dtype
