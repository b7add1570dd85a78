"""Live parity of the pretraining heads (pytest -m reference; needs torch + transformers, skipped without them).

The committed head fixtures on texts the goldens do not hold, against AutoModelForMaskedLM, ...ForPreTraining,
BertForNextSentencePrediction and pipeline("fill-mask"); and fresh checkpoints whose head activation differs
from the fixtures' (the transform follows hidden_act in BERT and ALBERT, and is fixed GELU in RoBERTa).
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import minibert

pytestmark = pytest.mark.reference
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HEADS_DIR = Path(__file__).parent / "fixtures" / "heads"
FAMILIES_DIR = Path(__file__).parent / "fixtures" / "families"
HEADS = ["bert", "bert_untied", "roberta", "xlm_roberta", "mpnet", "electra", "albert", "distilbert"]
TEXTS = ["The {m} sleeps in a café.", "Where is {m}? Not in 北京, {m} says.", "{m}"]


def flat(output):
    if isinstance(output, dict):
        return [output]
    return [answer for item in output for answer in flat(item)]


def reference_mlm(directory, dtype=torch.float64):
    return transformers.AutoModelForMaskedLM.from_pretrained(directory, attn_implementation="eager",
                                                             dtype=dtype).eval()


@pytest.mark.parametrize("name", HEADS)
def test_mlm_logits_float32_within_1e_4_of_transformers(name):
    directory = str(HEADS_DIR / name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    texts = [t.format(m=tokenizer.mask_token) for t in TEXTS]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = reference_mlm(directory, torch.float32)(**enc).logits.numpy()
    ours = minibert.load(directory, backend="cpu").mlm_logits(texts)
    real = enc["attention_mask"].numpy().astype(bool)
    assert np.abs(ours - theirs)[real].max() < 1e-4


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.filterwarnings("ignore:target .* is not in the vocabulary")
def test_fill_mask_equals_the_pipeline_on_new_texts(name):
    directory = str(HEADS_DIR / name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    pipe = transformers.pipeline("fill-mask", model=reference_mlm(directory), tokenizer=tokenizer)
    texts = [t.format(m=tokenizer.mask_token) for t in TEXTS]
    f64 = minibert.load(directory, backend="numpy", dtype="float64")
    f32 = minibert.load(directory, backend="cpu")
    for inputs, options in [(texts, {"top_k": 6}), (texts[1], {"top_k": 2}),
                            (texts[0], {"targets": ["dog", "cat", "world", "Zürich"]})]:
        theirs = flat(pipe(inputs, **options))
        ours = flat(f64.fill_mask(inputs, **options))
        assert [(a["token"], a["token_str"], a["sequence"]) for a in ours] == \
               [(a["token"], a["token_str"], a["sequence"]) for a in theirs]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs)) < 1e-12
        ours32 = flat(f32.fill_mask(inputs, **options))
        assert max(abs(a["score"] - b["score"]) for a, b in zip(ours32, theirs)) < 1e-5


@pytest.mark.parametrize("name", ["bert", "albert"])
def test_sentence_head_and_next_sentence_equal_transformers(name):
    directory = str(HEADS_DIR / name)
    first, second = ["Hello world!", "The lazy dog sleeps."], ["Goodbye, cruel world...", "Привет, мир!"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    enc = tokenizer(first, second, padding=True, return_tensors="pt", return_token_type_ids=True)
    cls = transformers.BertForPreTraining if name == "bert" else transformers.AlbertForPreTraining
    model = cls.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(**enc)
    theirs = (out.seq_relationship_logits if name == "bert" else out.sop_logits).numpy()
    ours = minibert.load(directory, backend="cpu")
    assert np.abs(ours.nsp_logits(first, second) - theirs).max() < 1e-4
    if name == "bert":
        nsp = transformers.BertForNextSentencePrediction.from_pretrained(directory, dtype=torch.float64).eval()
        with torch.no_grad():
            probs = nsp(**enc).logits.softmax(-1)[:, 0].numpy()
        f64 = minibert.load(directory, backend="numpy", dtype="float64")
        assert np.abs(f64.next_sentence(first, second) - probs).max() < 1e-12


@pytest.mark.parametrize("family, cls, changes", [
    ("bert_cased", "BertForPreTraining", {"hidden_act": "relu"}),
    ("albert", "AlbertForPreTraining", {"hidden_act": "gelu"}),
    ("roberta", "RobertaForMaskedLM", {"hidden_act": "relu"}),
    ("distilbert", "DistilBertForMaskedLM", {"activation": "relu"}),
])
def test_head_activation_follows_each_family(tmp_path, family, cls, changes):
    config = transformers.AutoConfig.from_pretrained(FAMILIES_DIR / family)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(5)
    model = getattr(transformers, cls)(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                 "merges.txt"):
        if (FAMILIES_DIR / family / file).exists():
            shutil.copy(FAMILIES_DIR / family / file, tmp_path / file)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = [t.format(m=tokenizer.mask_token) for t in TEXTS]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**{k: v for k, v in enc.items() if k != "token_type_ids" or family != "distilbert"})
    theirs = (out.prediction_logits if hasattr(out, "prediction_logits") else out.logits).numpy()
    ours = minibert.load(str(tmp_path), backend="numpy", dtype="float64").mlm_logits(texts)
    assert np.abs(ours - theirs)[enc["attention_mask"].numpy().astype(bool)].max() < 1e-10


@pytest.mark.parametrize("name", ["splade", "splade_sum"])
def test_encode_sparse_equals_sparse_encoder_on_new_texts(name):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["The lazy dog sleeps in a café.", "Where is Zürich? Not in 北京.", "x", "Don't STOP: $1,234.56!"]
    encoder = sentence_transformers.SparseEncoder(str(HEADS_DIR / name), device="cpu")
    theirs = encoder.encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False).to_dense().numpy()
    model = minibert.load_sparse(str(HEADS_DIR / name))
    ours = model.encode_sparse(texts)
    for ids, weights, row in zip(ours.ids, ours.weights, theirs):
        assert np.array_equal(ids, np.flatnonzero(row))
        assert np.abs(weights - row[ids]).max() < 1e-5
    decoded = encoder.decode(torch.from_numpy(theirs), top_k=3)
    assert [[t for t, _ in row] for row in ours.decode(top_k=3)] == [[t for t, _ in row] for row in decoded]


@pytest.mark.parametrize("name", ["bert", "bert_untied", "roberta", "albert", "distilbert"])
def test_a_pretrained_checkpoint_loads_in_automodelformaskedlm(tmp_path, name):
    from minibert.train.pretrain import PretrainRecipe, pretrain
    corpus = (HEADS_DIR / "corpus.txt").read_text(encoding="utf-8").splitlines() * 2
    pretrain(str(HEADS_DIR / name), corpus, checkpoint_dir=tmp_path,
             recipe=PretrainRecipe(epochs=1, batch_size=4, max_length=24, lr=1e-3))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = [t.format(m=tokenizer.mask_token) for t in TEXTS]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = reference_mlm(tmp_path, torch.float32)(**enc).logits.numpy()
    ours = minibert.load(str(tmp_path), backend="numpy").mlm_logits(texts)
    assert np.abs(ours - theirs)[enc["attention_mask"].numpy().astype(bool)].max() < 1e-5


@pytest.mark.parametrize("name", HEADS)
def test_pretraining_gradients_equal_torch_autograd_on_another_batch(name):
    from minibert.train.pretrain import grad_comparison, grad_report
    loss, torch_loss, rows = grad_comparison(HEADS_DIR / name, seed=3)
    assert abs(loss - torch_loss) < 1e-10
    assert max(error for _, error, _ in rows) < 1e-8
    assert grad_report(HEADS_DIR / name)[0].startswith("pretraining loss")


@pytest.mark.parametrize("name", ["bert", "albert"])
def test_parity_grad_task_pretraining_prints_the_heads_gradients(name, capsys):
    from minibert.cli import main as cli_main
    assert cli_main(["parity", str(HEADS_DIR / name), "--grad", "--task", "pretraining"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pretraining loss")
    blocks = {line.split()[0]: float(line.split()[1]) for line in lines[1:]}
    assert {"head", "embeddings"} <= set(blocks), blocks                  # the heads and the tied word table
    assert any(block.startswith(("layer.", "albert_layer_groups.")) for block in blocks), blocks
    assert max(blocks.values()) < 1e-8


# ---------------------------------------------------------------------------------------------------
# A real masked-LM checkpoint from PyPI: antiberty 0.1.3 (MIT) ships AntiBERTy, an 8-layer BERT (hidden 512)
# trained on antibody sequences, as trained_models/AntiBERTy_md_smooth/{config.json, pytorch_model.bin} with
# its 25-token vocabulary in trained_models/vocab.txt. `make reference-test` installs it and sets
# MINIBERT_REFERENCE_STRICT=1, so there its absence fails instead of skipping.

# Variable domains as published: trastuzumab heavy and light, adalimumab heavy.
ANTIBODIES = ["EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSR"
              "WGGDGFYAMDYWGQGTLVTVSS",
              "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQG"
              "TKVEIK",
              "EVQLVESGGGLVQPGRSLRLSCAASGFTFDDYAMHWVRQAPGKGLEWVSAITWNSGHIDYADSVEGRFTISRDNAKNSLYLQMNSLRAEDTAVYYCAKVSY"
              "LSTASSLDYWGQGTLVTVSS"]


def masked(sequence, *positions):
    """antiberty's input form: one amino acid a token, space-separated, [MASK] at the positions."""
    return " ".join("[MASK]" if i in positions else letter for i, letter in enumerate(sequence))


def antiberty_files():
    """(model folder, vocab.txt) of the installed antiberty package, found without importing it."""
    import importlib.util
    spec = importlib.util.find_spec("antiberty")
    if spec is None or not spec.submodule_search_locations:
        reason = "antiberty is not installed (pip install antiberty==0.1.3): its AntiBERTy checkpoint is the real " \
                 "masked-LM model these tests read"
        if os.environ.get("MINIBERT_REFERENCE_STRICT", "") not in ("", "0"):
            pytest.fail(reason + "; MINIBERT_REFERENCE_STRICT is set (make reference-test: rebuild .venv-reference "
                                 "with `rm .venv-reference/.ready && make reference-test`)")
        pytest.skip(reason)
    models = Path(spec.submodule_search_locations[0]) / "trained_models"
    return models / "AntiBERTy_md_smooth", models / "vocab.txt"


ANTIBERTY_TEXTS = [masked(ANTIBODIES[0], 23), masked(ANTIBODIES[1], 30, 96), masked(ANTIBODIES[2], 5, 51)]


def antiberty_pipeline():
    """As antiberty's own AntiBERTyRunner reads it: BERT from the folder, BertTokenizer on the vocabulary with
    do_lower_case=False (BertTokenizer's default, True, would make every amino acid [UNK])."""
    folder, vocab = antiberty_files()
    model = transformers.BertForMaskedLM.from_pretrained(folder, dtype=torch.float64,
                                                         attn_implementation="eager").eval()
    tokenizer = transformers.BertTokenizer(str(vocab), do_lower_case=False)
    return folder, transformers.pipeline("fill-mask", model=model, tokenizer=tokenizer)


def test_fill_mask_on_antiberty_equals_the_pipeline():
    folder, pipe = antiberty_pipeline()
    with pytest.warns(UserWarning) as caught:
        f64 = minibert.load(str(folder), backend="numpy", dtype="float64")
    said = [str(w.message) for w in caught]
    assert any("architectures names 'AntiBERTy'" in m for m in said) and any("all upper case" in m for m in said)
    f32 = minibert.load(str(folder), backend="cpu")
    assert "[UNK]" not in f64.tokenize(ANTIBERTY_TEXTS).tokens[0]
    worst = {"float64": 0.0, "float32": 0.0}
    for inputs in [ANTIBERTY_TEXTS[0], ANTIBERTY_TEXTS[1], ANTIBERTY_TEXTS]:       # one mask, two, a batch of both
        theirs = flat(pipe(inputs, top_k=5))
        for name, model in (("float64", f64), ("float32", f32)):
            ours = flat(model.fill_mask(inputs, top_k=5))
            assert [(a["token"], a["token_str"], a["sequence"]) for a in ours] == \
                   [(a["token"], a["token_str"], a["sequence"]) for a in theirs]
            worst[name] = max(worst[name], *(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs)))
    assert worst["float64"] < 1e-12 and worst["float32"] < 1e-5, worst
    # Read as its authors read it, the model knows the framework: the masked residue of CAAS comes back first.
    top = flat(f64.fill_mask(ANTIBERTY_TEXTS[0]))[0]
    assert top["token_str"] == ANTIBODIES[0][23] == "A" and top["score"] > 0.5


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fill_mask_command_on_antiberty_prints_the_pipeline(capsys):
    from minibert.cli import main as cli_main
    folder, pipe = antiberty_pipeline()
    theirs = flat(pipe(ANTIBERTY_TEXTS[1]))
    assert cli_main(["fill-mask", ANTIBERTY_TEXTS[1], "--model", str(folder), "--json"]) == 0
    ours = flat(json.loads(capsys.readouterr().out))
    assert [(a["token"], a["token_str"], a["sequence"]) for a in ours] == \
           [(a["token"], a["token_str"], a["sequence"]) for a in theirs]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs)) < 1e-5
    assert cli_main(["fill-mask", ANTIBERTY_TEXTS[0], "--model", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [f"  {a['score']:.4f}  {a['token_str']!r:<16} {a['sequence']}" for a in flat(pipe(ANTIBERTY_TEXTS[0]))]
    assert lines == [ANTIBERTY_TEXTS[0]] + expected
