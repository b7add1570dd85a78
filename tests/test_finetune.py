"""Fine-tuning: checkpoint names both ways, AdamW, the schedule, clipping, batching, label alignment, and
end-to-end runs on the tiny family checkpoints (sequence pairs and CoNLL tokens), saved and loaded back."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import minibert
from minibert.checkpoint.config import read_config
from minibert.errors import InputError, ModelFileError, OutputError, TrainingError
from minibert.train.classifier import load_classifier
from minibert.train.data import Examples, first_piece_labels, length_buckets
from minibert.train.finetune import TrainingRecipe, finetune
from minibert.train.optimizer import adamw_update, clip_by_global_norm, decays, lr_at, trainable
from minibert.train.hf_checkpoint import tensors_from_tree, tree_from_tensors
from minibert.checkpoint.weights import FAMILY_NAMES, load_weights

FAMILIES = Path(__file__).parent / "fixtures" / "families"
# Every fixture family fine-tunes.
FAMILY_DIRS = sorted(p.name for p in FAMILIES.iterdir() if (p / "config.json").is_file())


@pytest.mark.parametrize("name", FAMILY_DIRS)
def test_tensors_from_tree_gives_back_the_checkpoint(name):
    """The encoder written under transformers' names is the checkpoint itself, tensor for tensor."""
    config = read_config(FAMILIES / name / "config.json")
    weights = load_weights(FAMILIES / name, config, np.float32)
    names = FAMILY_NAMES[config.model_type]
    stored = {}
    for key, value in load_file(str(FAMILIES / name / "model.safetensors")).items():
        plain = key[len(names.model_prefixes[0]):] if key.startswith(names.model_prefixes[0]) else key
        if not plain.startswith(names.ignored_prefixes):
            stored[names.model_prefixes[0] + plain] = value
    written = tensors_from_tree(weights, config, task="encoder")
    assert set(written) == set(stored)
    for key, value in stored.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)
    back, _ = tree_from_tensors(written, config, task="token", dtype=np.float32, template=weights)
    assert [id(layer) for layer in back["layers"]].count(id(back["layers"][-1])) == \
        [id(layer) for layer in weights["layers"]].count(id(weights["layers"][-1]))   # ALBERT's sharing kept
    np.testing.assert_array_equal(back["layers"][-1]["qkv"]["w"], weights["layers"][-1]["qkv"]["w"])


def test_adamw_first_step_and_decoupled_decay():
    """From zero moments the first step is p (1 - lr wd) - lr g / (|g| + eps) (bias corrections cancel)."""
    p = np.array([1.0, -2.0, 3.0])
    g = np.array([0.5, 0.25, -4.0])
    kept = np.array([1.0, -2.0, 3.0])
    state = {}
    adamw_update([p, kept], [g, g.copy()], state, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.5,
                 decay=[True, False])
    np.testing.assert_allclose(p, np.array([1.0, -2.0, 3.0]) * (1 - 0.05) - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-13)
    np.testing.assert_allclose(kept, np.array([1.0, -2.0, 3.0]) - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-13)
    assert state["step"] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adamw_matches_the_numpy_steps(dtype):
    rng = np.random.default_rng(0)
    start = [rng.standard_normal((7, 5)).astype(dtype), rng.standard_normal(9).astype(dtype)]
    runs = []
    for fused in (False, True):
        params, state = [p.copy() for p in start], {}
        for _ in range(4):
            grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
            adamw_update(params, grads, state, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                         decay=[True, False], fused=fused)
        runs.append(params)
        rng = np.random.default_rng(0)
        rng.standard_normal(7 * 5 + 9)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)          # the same operations in the same order


def test_no_decay_on_biases_and_layer_norm():
    assert decays("layers.0.qkv.w") and decays("head.out.w") and decays("embeddings.word")
    assert not any(decays(n) for n in ("layers.0.qkv.b", "layers.1.attn_ln.g", "embeddings.ln.g", "head.out.b",
                                       "relative_attention_bias.table"))   # MPNet's: "bias" in transformers' name


def test_linear_schedule():
    assert [lr_at(s, 10, 2, 1.0) for s in range(11)] == [0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25,
                                                         0.125, 0.0]
    assert lr_at(0, 5, 0, 2.0) == 2.0


def test_clip_by_global_norm():
    grads = [np.array([3.0]), np.array([4.0])]
    assert clip_by_global_norm(grads, 1.0) == 5.0
    np.testing.assert_allclose(np.sqrt(sum((g ** 2).sum() for g in grads)), 5.0 / (5.0 + 1e-6), rtol=1e-12)
    small = [np.array([0.3])]
    clip_by_global_norm(small, 1.0)
    assert small[0][0] == 0.3


def test_length_buckets_are_seeded_complete_and_homogeneous():
    lengths = np.random.default_rng(0).integers(3, 60, 100)
    a = length_buckets(lengths, 8, np.random.default_rng(1))
    b = length_buckets(lengths, 8, np.random.default_rng(1))
    assert [list(x) for x in a] == [list(x) for x in b]
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    spread = np.mean([np.ptp(lengths[batch]) for batch in a])
    assert spread < np.ptp(lengths) / 5          # sorted buckets: far less padding than random batches
    assert [list(x) for x in length_buckets(lengths, 8, np.random.default_rng(2))] != [list(x) for x in a]


def test_first_piece_labels():
    words, tags = ["Hello", "walking", "unbelievable"], ["O", "B-PER", "O"]
    model = minibert.load(FAMILIES / "bert_cased", backend="numpy")
    batch = model.tokenize([" ".join(words)])
    labels = first_piece_labels(words, tags, batch.offsets[0], batch.word_ids[0], {"O": 0, "B-PER": 1})
    # [CLS] Hello wa ##l ##k ##ing un ##believ ##able [SEP]: a word's first piece carries its label
    assert labels.tolist() == [-100, 0, 1, -100, -100, -100, 0, -100, -100, -100], batch.tokens[0]


def pair_task(n, seed=0):
    """Sentence pairs labelled 'yes' when the word 'red' is in the second text (anywhere in the first does
    not count): a label the model can only learn by telling the two segments apart."""
    rng = np.random.default_rng(seed)
    vocab = "cat dog sat ran mat the a on red big".split()
    texts = [" ".join(rng.choice(vocab, rng.integers(2, 6))) for _ in range(n)]
    pairs = [" ".join(rng.choice(vocab, rng.integers(2, 6))) for _ in range(n)]
    labels = ["yes" if "red" in pair.split() else "no" for pair in pairs]
    return Examples(texts=texts, text_pairs=pairs, labels=labels)


def test_sequence_pair_finetune_learns_saves_and_loads(tmp_path):
    train, dev = pair_task(96), pair_task(48, seed=1)
    recipe = TrainingRecipe(epochs=6, lr=1e-2, batch_size=8, warmup_ratio=0.1, dropout=0.0, seed=0)
    classifier = finetune(str(FAMILIES / "bert_cased"), train, dev=dev, recipe=recipe)
    losses = [r["train_loss"] for r in classifier.history]
    assert losses[-1] < 0.2 * losses[0], losses
    assert classifier.history[-1]["dev_accuracy"] >= 0.9, classifier.history
    out = classifier.save(tmp_path / "clf")
    raw = json.loads((out / "config.json").read_text())
    assert raw["architectures"] == ["BertForSequenceClassification"]
    assert raw["id2label"] == {"0": "no", "1": "yes"} and raw["label2id"] == {"no": 0, "yes": 1}
    assert (out / "tokenizer.json").is_file()
    loaded = minibert.load_classifier(out)
    np.testing.assert_allclose(loaded.predict_proba(dev.texts, dev.text_pairs),
                               classifier.predict_proba(dev.texts, dev.text_pairs), rtol=0, atol=1e-6)
    assert loaded.predict(dev.texts, dev.text_pairs) == classifier.predict(dev.texts, dev.text_pairs)
    assert loaded.predict([]) == [] and loaded.predict_proba([]).shape == (0, 2)


def test_finetune_is_deterministic_and_float64_available():
    train = pair_task(16)
    recipe = TrainingRecipe(epochs=1, lr=1e-3, batch_size=4, dropout=0.1, seed=3, dtype="float64")
    a = finetune(str(FAMILIES / "roberta"), train, recipe=recipe)
    b = finetune(str(FAMILIES / "roberta"), train, recipe=recipe)
    assert a.weights["layers"][0]["qkv"]["w"].dtype == np.float64
    assert a.history == b.history
    np.testing.assert_array_equal(a.head["out"]["w"], b.head["out"]["w"])


def write_conll(path, sentences, tags):
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(s, ts)) for s, ts in zip(sentences, tags)) + "\n")
    return path


def test_token_finetune_from_conll(tmp_path):
    from minibert.analysis.probe import read_conll
    rng = np.random.default_rng(0)
    names, others = ["Anna", "Bob", "Carla", "Dieter"], ["met", "saw", "the", "cat", "in", "town"]
    sentences = [[str(w) for w in rng.choice(names + others, rng.integers(3, 7))] for _ in range(48)]
    tags = [["B-PER" if w in names else "O" for w in s] for s in sentences]
    words, labels = read_conll(write_conll(tmp_path / "train.conll", sentences, tags))
    train = Examples(texts=words, labels=labels)
    recipe = TrainingRecipe(epochs=5, lr=3e-3, batch_size=8, dropout=0.0)
    classifier = finetune(str(FAMILIES / "distilbert"), train, task="token", dev=train, recipe=recipe)
    assert classifier.history[-1]["dev_accuracy"] >= 0.95, classifier.history
    loaded = load_classifier(classifier.save(tmp_path / "ner"))
    assert json.loads((tmp_path / "ner" / "config.json").read_text())["architectures"] == \
        ["DistilBertForTokenClassification"]
    tagged = loaded.tag(["Anna saw Bob"])
    assert [(w, label) for w, label, _ in tagged[0]] == [("Anna", "B-PER"), ("saw", "O"), ("Bob", "B-PER")]
    assert [span for _, _, span in tagged[0]] == [(0, 4), (5, 8), (9, 12)]


def test_bad_inputs_are_minibert_errors(tmp_path):
    with pytest.raises(InputError, match="labels"):
        finetune(str(FAMILIES / "bert_cased"), Examples(texts=["a", "b"], labels=["x"]))
    with pytest.raises(InputError, match="task"):
        finetune(str(FAMILIES / "bert_cased"), Examples(texts=["a"], labels=["x"]), task="span")
    with pytest.raises(InputError, match="sentence 0"):
        finetune(str(FAMILIES / "bert_cased"), Examples(texts=[["a", "b"]], labels=[["O"]]), task="token")
    with pytest.raises(ModelFileError, match="architectures"):
        load_classifier(FAMILIES / "bert_cased")


def test_a_dev_label_the_head_lacks_is_refused_before_training(tmp_path):
    """Found by a user: a dev label absent from train crashed with KeyError (after an epoch of training for
    --task token, or at once with a checkpoint directory) instead of naming the label."""
    train = Examples(texts=["a cat", "a dog"], labels=["x", "y"])
    dev = Examples(texts=["a cat", "big"], labels=["x", "z"])
    with pytest.raises(InputError, match="dev has label.s. z not in labels"):
        finetune(str(FAMILIES / "bert_cased"), train, dev=dev, recipe=TrainingRecipe(epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="dev has label.s. I-PER not in labels"):
        finetune(str(FAMILIES / "bert_cased"), Examples(texts=[["Anna", "saw"]], labels=[["B-PER", "O"]]),
                 dev=Examples(texts=[["Bob", "Li"]], labels=[["B-PER", "I-PER"]]), task="token",
                 recipe=TrainingRecipe(epochs=1))


def test_a_tokenizer_one_level_up_is_saved_with_the_classifier(tmp_path):
    """Found by a user: fine-tuning a Trainer's checkpoint-500/ (tokenizer in the folder above) saved a
    classifier without tokenizer files, which load_classifier then refused."""
    import shutil
    model_dir = tmp_path / "run" / "checkpoint-500"
    model_dir.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(FAMILIES / "bert_cased" / name, model_dir / name)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(FAMILIES / "bert_cased" / name, tmp_path / "run" / name)
    with pytest.warns(UserWarning, match="folder above"):
        classifier = finetune(str(model_dir), pair_task(8), recipe=TrainingRecipe(epochs=1, batch_size=4, dropout=0.0))
    loaded = load_classifier(classifier.save(tmp_path / "clf"))
    assert (tmp_path / "clf" / "tokenizer.json").is_file()
    assert loaded.predict(["the cat"], ["a red dog"]) == classifier.predict(["the cat"], ["a red dog"])


@pytest.mark.parametrize("name", ["bert_cased", "distilbert", "roberta"])
def test_a_saved_classifier_loads_as_an_encoder_and_fine_tunes_again(name, tmp_path):
    """Found by a user: minibert.load (and so finetune --model) refused every classifier directory, its own
    included, for the head's classifier.* / pre_classifier.* tensors, which transformers' AutoModel ignores."""
    classifier = finetune(str(FAMILIES / name), pair_task(8), recipe=TrainingRecipe(epochs=1, lr=1e-2, batch_size=4))
    out = classifier.save(tmp_path / "clf")
    model = minibert.load(out, backend="numpy")
    for layer, trained in zip(model.weights["layers"], classifier.weights["layers"]):
        np.testing.assert_array_equal(layer["qkv"]["w"], trained["qkv"]["w"])
    again = finetune(str(out), pair_task(8), recipe=TrainingRecipe(epochs=1, lr=1e-2, batch_size=4))
    assert again.labels == ["no", "yes"]


def test_one_str_is_one_text():
    """Found by a user: predict("hello world") gave one label per character."""
    classifier = finetune(str(FAMILIES / "bert_cased"), pair_task(8), recipe=TrainingRecipe(epochs=1, batch_size=4))
    texts, pairs = ["the cat sat", "a dog"], ["a red mat", "the cat"]
    assert classifier.predict("the cat sat", "a red mat") == classifier.predict(texts, pairs)[0]
    # Alone, "a dog" is not padded: other matmul shapes, float32 rounding (measured 0 here); bound 1e-6.
    np.testing.assert_allclose(classifier.predict_proba("a dog", "the cat"),
                               classifier.predict_proba(texts, pairs)[1], rtol=0, atol=1e-6)
    with pytest.raises(InputError, match=r"texts\[1\] is int"):
        classifier.predict(["a", 3])


def test_tagging_skips_the_pieces_of_extra_spaces():
    """Found by a user: RoBERTa's byte-level BPE gave '' words (empty spans) for runs of spaces, and a ' '
    word for a text of spaces."""
    words = [["Anna", "saw", "Bob"], ["the", "cat", "met", "Carla"]]
    train = Examples(texts=words, labels=[["B-PER" if w[0].isupper() else "O" for w in s] for s in words])
    classifier = finetune(str(FAMILIES / "roberta"), train, task="token", recipe=TrainingRecipe(epochs=1, batch_size=2))
    text = "Anna  saw   Bob,  in town."
    tagged = classifier.tag(text)
    assert [(w, span) for w, _, span in tagged] == [("Anna", (0, 4)), ("saw", (6, 9)), ("Bob", (12, 15)),
                                                   (",", (15, 16)), ("in", (18, 20)), ("town", (21, 25)),
                                                   (".", (25, 26))]
    assert all(text[s:e] == w for w, _, (s, e) in tagged)
    assert classifier.tag(["   ", ""]) == [[], []]


def test_a_sentence_transformers_model_with_its_encoder_in_0_transformer_fine_tunes(tmp_path):
    """Found by a user: fine-tuning the legacy sentence-transformers layout (config.json in 0_Transformer/)
    trained, then failed to save with FileNotFoundError for <model>/config.json."""
    source = Path(__file__).parent / "fixtures" / "st_legacy_layout_prompts"
    classifier = finetune(str(source), pair_task(8), recipe=TrainingRecipe(epochs=1, batch_size=4))
    loaded = load_classifier(classifier.save(tmp_path / "clf"))
    assert json.loads((tmp_path / "clf" / "config.json").read_text())["architectures"] == \
        ["BertForSequenceClassification"]
    assert (tmp_path / "clf" / "tokenizer.json").is_file()
    # The same float32 weights and tokenizer: the same numbers.
    np.testing.assert_array_equal(loaded.predict_proba(["the cat"], ["a red dog"]),
                                  classifier.predict_proba(["the cat"], ["a red dog"]))


@pytest.mark.parametrize("setting", [{"epochs": 0}, {"batch_size": 0}, {"batch_size": -2}, {"lr": -1.0},
                                     {"lr": float("nan")}, {"dropout": 1.0}, {"warmup_ratio": 2.0}])
def test_recipe_numbers_out_of_range_are_refused(setting):
    """Found by a user: --epochs 0 saved nothing and exited 0, --batch-size 0 raised ZeroDivisionError and
    --batch-size -2 trained on NaN losses and saved the result."""
    with pytest.raises(InputError, match=f"recipe.{next(iter(setting))} .* is out of range"):
        finetune(str(FAMILIES / "bert_cased"), pair_task(4), recipe=TrainingRecipe(**setting))


def test_a_recipe_that_is_not_a_training_recipe_is_refused():
    with pytest.raises(InputError, match="recipe must be a TrainingRecipe .* found dict"):
        finetune(str(FAMILIES / "bert_cased"), pair_task(4), recipe={"epochs": 1})


def test_predicting_on_truncated_texts_warns():
    """Found by a user: tag silently gave no words past the model's token limit (and predict saw only a long
    text's start), where encode warns."""
    words = [["Anna", "saw", "Bob"], ["the", "cat", "met", "Carla"]]
    train = Examples(texts=words, labels=[["B-PER" if w[0].isupper() else "O" for w in s] for s in words])
    tagger = finetune(str(FAMILIES / "bert_cased"), train, task="token", recipe=TrainingRecipe(epochs=1, batch_size=2))
    with pytest.warns(UserWarning, match=r"1 of 2 texts were longer than \d+ tokens and were truncated; their words"):
        tagger.tag(["Anna saw Bob " * 100, "Anna saw Bob"])
    classifier = finetune(str(FAMILIES / "bert_cased"), pair_task(4), recipe=TrainingRecipe(epochs=1, batch_size=2))
    with pytest.warns(UserWarning, match="1 of 1 texts were longer"):
        classifier.predict(["the cat " * 100])


def test_the_saved_config_names_the_float32_weights(tmp_path):
    """Found by a user: fine-tuned from a checkpoint whose config.json says "dtype": "float16" (as half-precision
    hub uploads do), the float32 classifier kept that dtype, so transformers 5 (dtype "auto" by default) loaded
    it in float16: logits 1.2e-4 away from minibert's on the tiny BERT, where they agree to 1.3e-7 in float32."""
    import shutil
    source = shutil.copytree(FAMILIES / "bert_cased", tmp_path / "half")
    raw = json.loads((source / "config.json").read_text())
    raw.pop("torch_dtype", None)
    raw["dtype"] = "float16"
    (source / "config.json").write_text(json.dumps(raw))
    out = finetune(str(source), pair_task(4), recipe=TrainingRecipe(epochs=1, batch_size=2)).save(tmp_path / "clf")
    saved = json.loads((out / "config.json").read_text())
    assert saved["dtype"] == "float32" and "torch_dtype" not in saved
    assert all(t.dtype == np.float32 for t in load_file(str(out / "model.safetensors")).values())


def test_scores_are_not_given_as_label_probabilities(tmp_path):
    """Found by a user: a cross-encoder (one output, as BertForSequenceClassification with num_labels=1) gave
    predict_proba 1.0 for every text and the same label for all; a multi-label classifier a softmax."""
    out = finetune(str(FAMILIES / "bert_cased"), pair_task(4), recipe=TrainingRecipe(epochs=1, batch_size=2)).save(
        tmp_path / "clf")
    raw = json.loads((out / "config.json").read_text())
    for problem_type in ("regression", "multi_label_classification"):
        (out / "config.json").write_text(json.dumps({**raw, "problem_type": problem_type}))
        classifier = load_classifier(out)
        with pytest.raises(InputError, match="use logits"):
            classifier.predict(["the cat"])
        assert classifier.logits(["the cat"]).shape == (1, 2)
    import dataclasses
    with pytest.raises(InputError, match="outputs are one score"):
        dataclasses.replace(classifier, labels=["score"], problem_type=None).predict_proba(["the cat"])
    with pytest.raises(InputError, match="train has one label"):      # and finetune does not make one
        finetune(str(FAMILIES / "bert_cased"), Examples(texts=["a", "b"], labels=["x", "x"]),
                 recipe=TrainingRecipe(epochs=1))
    # Fine-tuned from such a model (its config.json names a problem_type), the new classifier gives labels.
    again = finetune(str(out), pair_task(4), recipe=TrainingRecipe(epochs=1, batch_size=2)).save(tmp_path / "again")
    assert "problem_type" not in json.loads((again / "config.json").read_text())
    assert load_classifier(again).predict(["the cat"], ["a red dog"])[0] in ("no", "yes")


def test_every_trainable_parameter_is_updated_once():
    """A shared ALBERT layer set is one parameter; DistilBERT's fixed tables are not trained."""
    for name, expect_frozen in (("albert_groups", 0), ("distilbert_sinusoidal", 2)):
        config = read_config(FAMILIES / name / "config.json")
        weights = load_weights(FAMILIES / name, config, np.float32)
        params = trainable(weights, {"out": {"w": np.zeros((2, 2)), "b": np.zeros(2)}}, config)
        assert len({id(p) for _, p in params}) == len(params)
        layer_sets = {name.split(".")[1] for name, _ in params if name.startswith("layers.")}
        assert len(layer_sets) == config.num_hidden_groups
        names = {n for n, _ in params}
        assert ("embeddings.position" not in names) == (expect_frozen == 2)


# ---- live against transformers (pytest -m reference) ----------------------------------------------------------

def small_run(name, task, tmp_path, dtype="float32"):
    """A short fine-tune (weights move away from the checkpoint) saved as a Hugging Face directory."""
    if task == "sequence":
        train = pair_task(24)
    else:
        rng = np.random.default_rng(0)
        words = [[str(w) for w in rng.choice("Anna Bob met saw the cat in town".split(), 5)] for _ in range(24)]
        train = Examples(texts=words, labels=[["B-PER" if w in ("Anna", "Bob") else "O" for w in s] for s in words])
    recipe = TrainingRecipe(epochs=1, lr=1e-3, batch_size=8, dropout=0.1, dtype=dtype)
    classifier = finetune(str(FAMILIES / name), train, task=task, recipe=recipe)
    return classifier, classifier.save(tmp_path / f"{name}_{task}")


@pytest.mark.reference
@pytest.mark.parametrize("name", FAMILY_DIRS)
@pytest.mark.parametrize("task", ["sequence", "token"])
def test_saved_checkpoint_predicts_the_same_in_transformers(name, task, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    classifier, directory = small_run(name, task, tmp_path)
    auto = {"sequence": transformers.AutoModelForSequenceClassification,
            "token": transformers.AutoModelForTokenClassification}[task]
    reference = auto.from_pretrained(str(directory)).eval()
    assert reference.config.id2label == dict(enumerate(classifier.labels))
    texts, pairs = ["the cat sat on a red mat", "Anna met Bob"], ["a red dog ran", "in town"]
    pairs = pairs if task == "sequence" else None
    batch = classifier.tokenizer(texts, pairs)
    inputs = {"input_ids": torch.from_numpy(batch.input_ids), "attention_mask": torch.from_numpy(batch.attention_mask)}
    if classifier.config.token_type_embeddings:
        inputs["token_type_ids"] = torch.from_numpy(batch.token_type_ids)
    with torch.no_grad():
        theirs = reference(**inputs).logits.numpy()
    ours = classifier.logits(texts, pairs)
    if task == "token":
        ours = np.concatenate(ours)
        theirs = theirs[batch.attention_mask.astype(bool)]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)      # float32: measured worst 1.3e-7
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
    loaded = load_classifier(directory)
    np.testing.assert_allclose(np.concatenate(loaded.logits(texts, pairs)) if task == "token"
                               else loaded.logits(texts, pairs), ours, rtol=0, atol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["bert_cased", "roberta", "distilbert", "electra", "albert", "mpnet"])
def test_twenty_steps_track_torch(name):
    """Dropout off, the same initial head and batch order: minibert's float32 loss curve and torch's
    (AdamW, linear warmup/decay, clipping) agree to 1e-4 relative at each of 20 steps."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from minibert.train.classifier import new_classifier
    from minibert.train.data import collate, tokenize_examples
    from minibert.train.finetune import train_step
    from minibert.train.hf_checkpoint import tensors_from_tree
    recipe = TrainingRecipe(lr=1e-3, batch_size=4, warmup_ratio=0.1, weight_decay=0.01, dropout=0.0, seed=0)
    train = pair_task(80)
    model = minibert.load(FAMILIES / name, backend="numpy")
    labels = ["no", "yes"]
    rng = np.random.default_rng(0)
    classifier = new_classifier(model, "sequence", labels, recipe, rng)
    items = tokenize_examples(model.tokenizer, train, "sequence", {"no": 0, "yes": 1}, None)
    batches = length_buckets([len(i[0]) for i in items], recipe.batch_size, rng)[:20]
    total, warmup = 20, 2
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(FAMILIES / name), num_labels=2, attn_implementation="eager").float().eval()
    start = tensors_from_tree(classifier.weights, classifier.config, task="sequence", head=classifier.head)
    missing, unexpected = reference.load_state_dict({k: torch.from_numpy(v) for k, v in start.items()}, strict=False)
    assert not unexpected and all("position_ids" in k or "token_type_ids" in k or
                                  (classifier.config.sinusoidal_positions and "position_embeddings" in k)
                                  for k in missing), (missing, unexpected)
    named = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    # transformers' examples and Trainer: no decay where "bias" is in the name (MPNet's relative position
    # bias table too) and on LayerNorm weights
    no_decay = [p for n, p in named if "bias" in n or "LayerNorm" in n or "layer_norm" in n]
    decay = [p for n, p in named if not any(p is q for q in no_decay)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=recipe.betas,
                                  eps=recipe.adam_eps)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
    params = trainable(classifier.weights, classifier.head, classifier.config)
    assert sum(p.size for _, p in params) == sum(p.numel() for _, p in named)   # Q, K, V fused here
    state, ours, theirs = {}, [], []
    for step, batch in enumerate(batches):
        chosen = [items[i] for i in batch]
        ours.append(train_step(classifier, chosen, params, state, recipe, lr_at(step, total, warmup, recipe.lr), None))
        ids, mask, types, y = collate(chosen, classifier.config.pad_token_id, "sequence")
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                  "labels": torch.from_numpy(y)}
        if classifier.config.token_type_embeddings:
            inputs["token_type_ids"] = torch.from_numpy(types)
        loss = reference(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), recipe.max_grad_norm)
        optimizer.step()
        schedule.step()
        theirs.append(float(loss))
    relative = np.abs(np.array(ours) - np.array(theirs)) / np.abs(np.array(theirs))
    print(f"{name}: loss {theirs[0]:.4f} -> {theirs[-1]:.4f}, worst relative difference {relative.max():.1e}")
    assert relative.max() <= 1e-4, (relative.max(), ours, theirs)
    assert abs(ours[-1] - ours[0]) > 1e-3          # the weights moved: the comparison is not of one point


# ---- the commands ----------------------------------------------------------------------------------------------

def test_finetune_and_predict_commands_for_pairs(tmp_path, capsys):
    import csv
    from minibert.cli import train as finetune_cli
    data = pair_task(96)
    with open(tmp_path / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["premise", "hypothesis", "gold"])
        writer.writerows(zip(data.texts, data.text_pairs, data.labels))
    out = tmp_path / "clf"
    assert finetune_cli.main(["finetune", str(tmp_path / "train.csv"), "--text-col", "premise", "--pair-col",
                              "hypothesis", "--label-col", "gold", "--out", str(out), "--epochs", "2",
                              "--lr", "1e-2", "--batch-size", "8", "--model", str(FAMILIES / "bert_cased")]) == 0
    err = capsys.readouterr().err
    assert "epoch 2/2 step 24/24 loss" in err and f"saved {out}" in err
    (tmp_path / "in.jsonl").write_text(json.dumps({"premise": "the cat", "hypothesis": "a red dog"}) + "\n")
    assert finetune_cli.main(["predict", str(out), str(tmp_path / "in.jsonl"), "--text-col", "premise",
                              "--pair-col", "hypothesis"]) == 0
    record = json.loads(capsys.readouterr().out)
    expected = minibert.load_classifier(out).predict(["the cat"], ["a red dog"])[0]
    assert record["label"] == expected and set(record["probabilities"]) == {"no", "yes"}


def read_card(directory):
    """(the README.md's YAML front matter as huggingface_hub reads it, the Markdown body)."""
    from huggingface_hub.repocard import metadata_load
    text = (Path(directory) / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n") and text.count("\n---\n") >= 1
    return metadata_load(Path(directory) / "README.md"), text.split("\n---\n", 1)[1]


def code_blocks(body, language):
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)


def test_a_finetuned_classifier_is_saved_with_a_model_card(tmp_path, capsys):
    """README.md in the Hub's form: its metadata, the run's recipe and per-epoch numbers, the call that
    reproduces it, and a minibert example that runs."""
    train, dev = pair_task(16), pair_task(8, seed=1)
    recipe = TrainingRecipe(epochs=2, lr=1e-3, batch_size=8, dropout=0.0)
    classifier = finetune(str(FAMILIES / "bert_cased"), train, dev=dev, recipe=recipe, datasets=["nyu-mll/glue"])
    out = classifier.save(tmp_path / "clf")
    meta, body = read_card(out)
    assert meta == {"library_name": "minibert", "pipeline_tag": "text-classification",
                    "tags": ["minibert", "bert", "text-classification"], "datasets": ["nyu-mll/glue"],
                    "metrics": ["accuracy"]}          # no base_model: a local directory has no hub id
    for record in classifier.history:
        assert f"| {record['epoch']} | {record['train_loss']:.6f} | {record['dev_accuracy']:.6f} |" in body
    assert "| lr | 0.001 |" in body and "| batch_size | 8 |" in body and "labels (id order): no, yes." in body
    assert f"recipe={recipe!r}" in code_blocks(body, "python")[0]
    use = code_blocks(body, "python")[1]
    assert f"load_classifier({str(out)!r})" in use and "AutoModelForSequenceClassification" in body
    assert 'predict(["first text"], ["second text"])' in use and "dev=dev" in code_blocks(body, "python")[0]
    exec(use, {})
    assert capsys.readouterr().out.strip() in ("['no']", "['yes']")
    assert not (minibert.load_classifier(out).save(tmp_path / "again") / "README.md").exists()   # no run, no card


def test_the_card_names_a_hub_base_model_and_the_token_task(tmp_path):
    from minibert.train.model_card import run_description
    sentences = [["Anna", "saw", "Bob"], ["the", "cat", "met", "Carla"]] * 2
    tags = [["B-PER" if w[0].isupper() else "O" for w in s] for s in sentences]
    classifier = finetune(str(FAMILIES / "electra"), Examples(texts=sentences, labels=tags), task="token",
                          recipe=TrainingRecipe(epochs=1, batch_size=4))
    classifier.training = run_description(**{**classifier.training, "base_model": "google/electra-small"})
    meta, body = read_card(classifier.save(tmp_path / "ner"))
    assert meta["base_model"] == "google/electra-small" and meta["pipeline_tag"] == "token-classification"
    assert "metrics" not in meta and "datasets" not in meta        # no dev set scored, no dataset named
    assert "AutoModelForTokenClassification" in body and "| epoch | train loss |" in body
    with pytest.raises(InputError, match="datasets must be a list of names"):
        finetune(str(FAMILIES / "electra"), Examples(texts=sentences, labels=tags), task="token", datasets="conll")


def test_the_bundled_default_model_is_the_cards_base_model():
    from minibert.train.model_card import classifier_card
    classifier = finetune(None, Examples(texts=["a cat", "a dog"], labels=["x", "y"]),
                          recipe=TrainingRecipe(epochs=1, batch_size=2, max_length=8))
    assert 'base_model: "sentence-transformers/all-MiniLM-L6-v2"' in classifier_card(classifier, "d").splitlines()


def test_the_cards_command_reproduces_the_run(tmp_path):
    """The finetune command writes its card with every setting spelled out; that command, run again, trains
    the same weights (and may write over the directory: the card is part of minibert's own output)."""
    import csv
    import shlex
    from minibert.cli import train as finetune_cli
    data = pair_task(16)
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text", "pair", "label"], *zip(data.texts, data.text_pairs, data.labels)])
    out = tmp_path / "clf"
    assert finetune_cli.main(["finetune", str(tmp_path / "train.csv"), "--pair-col", "pair", "--out", str(out),
                              "--epochs", "1", "--batch-size", "8", "--model", str(FAMILIES / "bert_cased"),
                              "--dataset", "me/pairs"]) == 0
    meta, body = read_card(out)
    assert meta["datasets"] == ["me/pairs"]
    command = shlex.split(code_blocks(body, "bash")[0])
    assert command[:2] == ["minibert", "finetune"] and "--lr" in command and "--seed" in command
    first = (out / "model.safetensors").read_bytes()
    assert finetune_cli.main(command[1:]) == 0
    assert (out / "model.safetensors").read_bytes() == first and read_card(out)[1] == body


@pytest.mark.reference
def test_live_the_cards_transformers_example_runs_and_gives_minibert_logits(tmp_path):
    pytest.importorskip("transformers")
    classifier = finetune(str(FAMILIES / "bert_cased"), pair_task(8), recipe=TrainingRecipe(epochs=1, batch_size=8))
    _, body = read_card(classifier.save(tmp_path / "clf"))
    namespace = {}
    exec(code_blocks(body, "python")[2], namespace)
    want = classifier.logits(["first text"], ["second text"])
    assert np.abs(namespace["logits"].detach().numpy() - want).max() < 1e-6        # measured 7.5e-9


def test_token_command_and_interrupt_keeps_the_last_epoch(tmp_path, capsys, monkeypatch):
    from minibert.train import finetune
    from minibert.cli import train as finetune_cli
    sentences = [["Anna", "saw", "Bob"], ["the", "cat", "met", "Carla"]] * 4
    tags = [["B-PER" if w[0].isupper() else "O" for w in s] for s in sentences]
    write_conll(tmp_path / "train.conll", sentences, tags)
    calls = {"n": 0}
    real_step = finetune.train_step

    def interrupted_in_epoch_two(*args):
        calls["n"] += 1
        if calls["n"] > 2:                    # 8 sentences in batches of 4: epoch 1 is steps 1-2
            raise KeyboardInterrupt
        return real_step(*args)
    monkeypatch.setattr(finetune, "train_step", interrupted_in_epoch_two)
    out = tmp_path / "ner"
    code = finetune_cli.main(["finetune", str(tmp_path / "train.conll"), "--task", "token", "--out", str(out),
                              "--epochs", "3", "--batch-size", "4", "--model", str(FAMILIES / "electra")])
    err = capsys.readouterr().err
    assert code == 130 and "holds the last finished epoch's model" in err and "--resume" in err
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ElectraForTokenClassification"]
    (tmp_path / "texts.txt").write_text("Anna saw Bob\n")
    assert finetune_cli.main(["predict", str(out), str(tmp_path / "texts.txt")]) == 0
    words = json.loads(capsys.readouterr().out)["words"]
    assert [(w["word"], w["start"], w["end"]) for w in words] == [("Anna", 0, 4), ("saw", 5, 8), ("Bob", 9, 12)]
    monkeypatch.setattr(finetune, "train_step", real_step)
    command = ["finetune", str(tmp_path / "train.conll"), "--task", "token", "--out", str(out), "--epochs", "3",
               "--batch-size", "4", "--model", str(FAMILIES / "electra"), "--resume"]
    assert finetune_cli.main(command) == 0
    err = capsys.readouterr().err
    assert "step 3/6" in err and "epoch 1," not in err and "epoch 3, train_loss" in err    # epochs 2 and 3 only
    assert finetune_cli.main(command) == 1
    assert "has finished (epoch 3 of 3)" in capsys.readouterr().err


def test_predict_reads_csv_and_tsv_as_finetune_does(tmp_path, capsys):
    """Found by a user: predict refused a CSV with a byte-order mark (Excel's) that finetune had trained on,
    and read a TSV text starting with '"' as a quoted field running over the next rows."""
    from minibert.cli import train as finetune_cli
    out = finetune(str(FAMILIES / "bert_cased"), pair_task(8), recipe=TrainingRecipe(epochs=1, batch_size=4)).save(
        tmp_path / "clf")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbftext,label\nthe cat,no\na dog,yes\n")
    (tmp_path / "quote.tsv").write_text('text\tlabel\n"the cat\tno\na dog\tyes\n')
    for name, texts in (("bom.csv", ["the cat", "a dog"]), ("quote.tsv", ['"the cat', "a dog"])):
        assert finetune_cli.main(["predict", str(out), str(tmp_path / name)]) == 0, capsys.readouterr().err
        assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == texts


def test_token_task_refuses_table_files(tmp_path, capsys):
    """Found by a user: a .jsonl given to --task token was read as CoNLL and trained on labels like 'x"}'."""
    from minibert.cli import train as finetune_cli
    (tmp_path / "train.jsonl").write_text('{"text": "the cat", "label": "x"}\n{"text": "a dog", "label": "y"}\n')
    assert finetune_cli.main(["finetune", str(tmp_path / "train.jsonl"), "--task", "token", "--out",
                              str(tmp_path / "o"), "--model", str(FAMILIES / "bert_cased")]) == 1
    assert "--task token reads CoNLL" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_command_errors_are_one_line(tmp_path, capsys):
    from minibert.cli import train as finetune_cli
    (tmp_path / "bad.csv").write_text("text,label\n")
    assert finetune_cli.main(["finetune", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o"),
                              "--model", str(FAMILIES / "bert_cased")]) == 1
    assert "no examples" in capsys.readouterr().err
    (tmp_path / "x.jsonl").write_text("{not json\n")
    assert finetune_cli.main(["predict", str(tmp_path), str(tmp_path / "x.jsonl")]) == 1
    assert "x.jsonl:1: not valid JSON" in capsys.readouterr().err      # the one reader names the line


@pytest.mark.reference
@pytest.mark.parametrize("name", ["bert_chinese", "distilbert_sinusoidal", "albert_groups", "roberta", "mpnet"])
@pytest.mark.parametrize("task", ["sequence", "token"])
def test_load_classifier_reads_what_transformers_saves(name, task, tmp_path):
    """A classifier saved by transformers' save_pretrained loads in minibert and predicts the same."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    auto = {"sequence": transformers.AutoModelForSequenceClassification,
            "token": transformers.AutoModelForTokenClassification}[task]
    torch.manual_seed(0)
    reference = auto.from_pretrained(str(FAMILIES / name), num_labels=3).eval()
    reference.save_pretrained(str(tmp_path))
    for file in (FAMILIES / name).iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            (tmp_path / file.name).write_bytes(file.read_bytes())
    classifier = minibert.load_classifier(tmp_path)
    texts = ["the cat sat on a red mat", "Anna met Bob"]
    batch = classifier.tokenizer(texts)
    with torch.no_grad():
        theirs = reference(input_ids=torch.from_numpy(batch.input_ids),
                           attention_mask=torch.from_numpy(batch.attention_mask)).logits.numpy()
    ours = classifier.logits(texts)
    if task == "token":
        ours, theirs = np.concatenate(ours), theirs[batch.attention_mask.astype(bool)]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=5e-6)      # float32: measured worst 1.2e-6


# ---- early stopping and resuming ------------------------------------------------------------------------------

def scripted_accuracy(script):
    """A stand-in for finetune.accuracy giving script[epoch - 1] at each epoch (by the history's length, so a
    resumed run continues the script where the interrupted one left it)."""
    return lambda classifier, examples: script[len(classifier.history)]


def trained_arrays(classifier):
    return [p.copy() for _, p in trainable(classifier.weights, classifier.head, classifier.config)]


def test_patience_stops_and_keeps_the_best_epoch(tmp_path, monkeypatch):
    from minibert.train import finetune as ft
    monkeypatch.setattr(ft, "accuracy", scripted_accuracy([0.5, 0.75, 0.625, 0.625, 0.9]))
    per_epoch = []
    recipe = TrainingRecipe(epochs=5, lr=1e-3, batch_size=8, dropout=0.1, patience=2)
    classifier = finetune(str(FAMILIES / "bert_cased"), pair_task(16), dev=pair_task(4, seed=1), recipe=recipe,
                          checkpoint_dir=tmp_path / "clf", on_epoch=lambda c: per_epoch.append(trained_arrays(c)))
    assert [r["epoch"] for r in classifier.history] == [1, 2, 3, 4]       # epochs 3 and 4 did not beat epoch 2
    assert [r["best_epoch"] for r in classifier.history] == [1, 2, 2, 2]
    assert any((a != b).any() for a, b in zip(per_epoch[1], per_epoch[3]))  # training went on after epoch 2
    for got, best in zip(trained_arrays(classifier), per_epoch[1]):
        np.testing.assert_array_equal(got, best)                           # the returned model is epoch 2's
    saved = load_classifier(tmp_path / "clf")                              # and so is the checkpoint (float32)
    names = [name for name, _ in trainable(classifier.weights, classifier.head, classifier.config)]
    loaded = dict(trainable(saved.weights, saved.head, saved.config))
    assert set(loaded) == set(names)
    for name, best in zip(names, per_epoch[1]):
        np.testing.assert_array_equal(loaded[name], best, err_msg=name)


def test_patience_needs_a_dev_set():
    with pytest.raises(InputError, match="dev set"):
        finetune(str(FAMILIES / "bert_cased"), pair_task(8), recipe=TrainingRecipe(epochs=2, patience=1))


@pytest.mark.parametrize("patience,dtype", [(None, "float64"), (2, "float64"), (None, "float32")])
def test_interrupted_then_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch, patience, dtype):
    """Dropout on (the generator's state matters as much as the weights and AdamW's moments): the resumed
    run ends with exactly the uninterrupted run's weights, history and checkpoint, in float64 and float32
    alike (the state keeps the training dtype). With patience, the early stop falls after the interruption
    and the best epoch before it."""
    from minibert.train import finetune as ft
    if patience:
        monkeypatch.setattr(ft, "accuracy", scripted_accuracy([0.5, 0.75, 0.625, 0.625, 0.9]))
    train, dev = pair_task(24), pair_task(8, seed=1)
    recipe = TrainingRecipe(epochs=5, lr=1e-3, batch_size=8, warmup_ratio=0.2, dropout=0.1, seed=5, dtype=dtype,
                    patience=patience)
    whole = finetune(str(FAMILIES / "roberta"), train, dev=dev, recipe=recipe, checkpoint_dir=tmp_path / "whole")
    real_step, calls = ft.train_step, {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 8:                  # 3 steps an epoch: the 2nd step of epoch 3
            raise KeyboardInterrupt
        return real_step(*args)
    monkeypatch.setattr(ft, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(str(FAMILIES / "roberta"), train, dev=dev, recipe=recipe, checkpoint_dir=tmp_path / "parts")
    monkeypatch.setattr(ft, "train_step", real_step)
    resumed = finetune(str(FAMILIES / "roberta"), train, dev=dev, recipe=recipe, checkpoint_dir=tmp_path / "parts",
                       resume=True)
    assert resumed.history == whole.history
    assert len(whole.history) == (4 if patience else 5)
    for a, b in zip(trained_arrays(resumed), trained_arrays(whole)):
        np.testing.assert_array_equal(a, b)
    ours, theirs = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("parts", "whole"))
    assert set(ours) == set(theirs)
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_resume_refuses_another_run_or_nothing(tmp_path):
    train = pair_task(8)
    recipe = TrainingRecipe(epochs=1, lr=1e-3, batch_size=8, dropout=0.0)
    with pytest.raises(InputError, match="no minibert_training_state.npz"):
        finetune(str(FAMILIES / "bert_cased"), train, recipe=recipe, checkpoint_dir=tmp_path, resume=True)
    finetune(str(FAMILIES / "bert_cased"), train, recipe=recipe, checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match=r"recipe.lr 0.001 then, 0.002 now"):
        finetune(str(FAMILIES / "bert_cased"), train,
                 recipe=TrainingRecipe(epochs=2, lr=2e-3, batch_size=8, dropout=0.0), checkpoint_dir=tmp_path,
                 resume=True)
    with pytest.raises(InputError, match="train data differs"):
        finetune(str(FAMILIES / "bert_cased"), pair_task(8, seed=4), recipe=recipe, checkpoint_dir=tmp_path,
                 resume=True)
    with pytest.raises(InputError, match="has finished"):
        finetune(str(FAMILIES / "bert_cased"), train, recipe=recipe, checkpoint_dir=tmp_path, resume=True)


def test_a_damaged_training_state_is_a_model_file_error(tmp_path):
    """Found by a user: a truncated state file raised zipfile.BadZipFile, an empty one EOFError."""
    train = pair_task(8)
    recipe = TrainingRecipe(epochs=1, lr=1e-3, batch_size=8, dropout=0.0)
    finetune(str(FAMILIES / "bert_cased"), train, recipe=recipe, checkpoint_dir=tmp_path)
    state = tmp_path / "minibert_training_state.npz"
    whole = state.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", b"junk" * 50):
        state.write_bytes(damaged)
        with pytest.raises(ModelFileError, match="not a readable minibert training state.*without --resume"):
            finetune(str(FAMILIES / "bert_cased"), train,
                     recipe=TrainingRecipe(epochs=2, lr=1e-3, batch_size=8, dropout=0.0), checkpoint_dir=tmp_path,
                     resume=True)


def test_resume_takes_the_same_model_named_another_way(tmp_path, monkeypatch):
    """Found by a user: a run started with a relative --model and resumed with the absolute path (or from
    another folder) was refused as another model."""
    recipe = TrainingRecipe(epochs=2, lr=1e-3, batch_size=8, dropout=0.0)
    stop = {"after": 1}

    def interrupt(classifier):
        if len(classifier.history) == stop["after"]:
            raise KeyboardInterrupt
    monkeypatch.chdir(FAMILIES)
    with pytest.raises(KeyboardInterrupt):
        finetune("bert_cased", pair_task(8), recipe=recipe, checkpoint_dir=tmp_path, on_epoch=interrupt)
    resumed = finetune(str(FAMILIES / "bert_cased"), pair_task(8), recipe=recipe, checkpoint_dir=tmp_path,
                       resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2]


def test_an_unwritable_checkpoint_directory_is_refused_before_training(tmp_path):
    """Found by a user: a --out that cannot be created failed only when the first epoch was saved."""
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="cannot write the checkpoint there"):
        finetune(str(FAMILIES / "bert_cased"), pair_task(4), checkpoint_dir=tmp_path / "file" / "clf",
                 on_epoch=lambda _: pytest.fail("trained before refusing"))


# ---- progress ----------------------------------------------------------------------------------------------------

def test_progress_lines_come_at_epoch_ends_and_every_interval():
    import io
    from minibert.progress import LineReporter
    now = {"t": 0.0}
    out = io.StringIO()
    report = LineReporter(out, 6, 2, interval=10.0, clock=lambda: now["t"])
    for step, (t, end) in enumerate([(0, False), (5, False), (12, True), (13, False), (14, False), (15, True)], 1):
        now["t"] = t
        report.step(epoch=1 + (step > 3), step=step, loss=1.0 / step, running=0.5, lr=1e-3, epoch_end=end)
    lines = out.getvalue().splitlines()
    assert [line.split(" loss")[0] for line in lines] == ["epoch 1/2 step 1/6", "epoch 1/2 step 3/6",
                                                          "epoch 2/2 step 4/6", "epoch 2/2 step 6/6"]
    assert lines[1] == "epoch 1/2 step 3/6 loss 0.3333 running 0.5000 lr 1.00e-03"


def test_progress_is_a_bar_with_the_running_loss_on_a_terminal():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    out = Terminal()
    finetune(str(FAMILIES / "bert_cased"), pair_task(16), recipe=TrainingRecipe(epochs=2, lr=1e-3, batch_size=8),
             progress=out)
    text = out.getvalue()
    assert "\r" in text and "4/4" in text and "epoch 2/2" in text        # one bar redrawn in place
    last = [part for part in text.split("\r") if "4/4" in part][-1]
    assert re.search(r"loss \d\.\d{4}", last), last
    assert "epoch 2, train_loss" in text                                   # the epoch lines above the bar


# ---- outputs: nothing the user owns is overwritten or emptied (issue 22) -------------------------------------------

def tree_bytes(directory):
    """{relative path: bytes} of every file under directory: to show it untouched."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def leftovers(folder):
    """Temporary names minibert's writers leave only while writing."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".") or p.suffix in (".tmp", ".partial"))


def copy_model(name, tmp_path):
    import shutil
    return Path(shutil.copytree(FAMILIES / name, tmp_path / name))


def test_finetune_refuses_an_out_that_is_the_model_or_inside_or_around_it(tmp_path, capsys):
    """Before: `finetune --model DIR --out DIR` replaced the pretrained model's weights and config.json."""
    from minibert.cli import train as finetune_cli
    model = copy_model("bert_cased", tmp_path)
    before = tree_bytes(model)
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"word {i},{i % 2}\n" for i in range(8)))
    for out in (model, model / "clf", tmp_path):
        code = finetune_cli.main(["finetune", str(tmp_path / "train.csv"), "--model", str(model), "--out", str(out),
                                  "--epochs", "1"])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "the model directory" in err and str(out) in err, err
        assert "epoch" not in err                                    # refused before training
    assert tree_bytes(model) == before
    with pytest.raises(OutputError, match="is the model directory"):
        finetune(str(model), pair_task(4), checkpoint_dir=model)


def test_a_directory_minibert_did_not_write_is_refused_as_output(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(OutputError, match=r"mine: holds files minibert did not write \(notes.txt\)"):
        finetune(str(FAMILIES / "bert_cased"), pair_task(4), checkpoint_dir=out,
                 on_epoch=lambda _: pytest.fail("trained before refusing"))
    classifier = finetune(str(FAMILIES / "bert_cased"), pair_task(4), recipe=TrainingRecipe(epochs=1))
    with pytest.raises(OutputError, match="holds files minibert did not write"):
        classifier.save(out)
    assert tree_bytes(out) == {"notes.txt": b"my notes"}
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match="is not a directory"):
        classifier.save(tmp_path / "a_file")
    # new, empty, or minibert's own (saved again, or a loaded classifier saved back where it came from): fine
    for target in (tmp_path / "new", tmp_path / "new", (tmp_path / "empty")):
        target.mkdir(exist_ok=True) if target.name == "empty" else None
        classifier.save(target)
    loaded = minibert.load_classifier(tmp_path / "new")
    loaded.save(tmp_path / "new")
    assert (tmp_path / "new" / "tokenizer.json").is_file()
    assert leftovers(tmp_path) == []


def test_a_rerun_into_an_earlier_runs_out_replaces_the_directory_whole(tmp_path):
    """Before: the earlier run's tokenizer.json stayed beside the new run's vocab files, and the reloaded
    classifier tokenized with the other vocabulary (0.4681/0.5319 instead of 0.4769/0.5231)."""
    train = pair_task(8)
    recipe = TrainingRecipe(epochs=1, lr=1e-3, batch_size=8, dropout=0.0)
    out = tmp_path / "clf"
    finetune(str(FAMILIES / "roberta"), train, recipe=recipe, checkpoint_dir=out)
    assert (out / "tokenizer.json").is_file()
    model = copy_model("bert_cased", tmp_path)
    (model / "tokenizer.json").unlink()          # its vocabulary in vocab.txt only
    second = finetune(str(model), train, recipe=recipe, checkpoint_dir=out)
    fresh = finetune(str(model), train, recipe=recipe, checkpoint_dir=tmp_path / "fresh")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "fresh").iterdir())
    assert not (out / "tokenizer.json").exists() and not (out / "merges.txt").exists()
    texts = ["the cat sat", "a red dog"]
    np.testing.assert_allclose(minibert.load_classifier(out).predict_proba(texts, texts),
                               second.predict_proba(texts, texts), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(minibert.load_classifier(out).predict_proba(texts, texts),
                                  minibert.load_classifier(tmp_path / "fresh").predict_proba(texts, texts))
    assert leftovers(tmp_path) == [] and fresh.history == second.history


def test_saved_files_get_the_permissions_of_any_new_file(tmp_path):
    """Before: model.safetensors was 0600 (mkstemp's) and config.json 0644."""
    import os
    old = os.umask(0o022)
    try:
        finetune(str(FAMILIES / "bert_cased"), pair_task(8), recipe=TrainingRecipe(epochs=1, batch_size=8),
                 checkpoint_dir=tmp_path / "clf")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "clf").iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert (tmp_path / "clf").stat().st_mode & 0o777 == 0o755
    assert {"model.safetensors", "config.json", "minibert_training_state.npz"} <= set(modes)


def enospc(*args, **kwargs):
    import errno
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_is_one_error_naming_the_directory_and_keeps_the_old_one(tmp_path, monkeypatch):
    """Before: a raw SafetensorError after the whole training (and the state write: OSError [Errno 28] with
    no path and a .partial left)."""
    recipe = TrainingRecipe(epochs=1, lr=1e-3, batch_size=8, dropout=0.0)
    out = tmp_path / "clf"
    finetune(str(FAMILIES / "bert_cased"), pair_task(8), recipe=recipe, checkpoint_dir=out)
    before = tree_bytes(out)
    monkeypatch.setattr(Path, "write_bytes", enospc)          # the weights file
    with pytest.raises(OutputError) as caught:
        finetune(str(FAMILIES / "bert_cased"), pair_task(8, seed=2), recipe=recipe, checkpoint_dir=out)
    message = str(caught.value)
    assert message.startswith(f"{out}: cannot write it (No space left on device); free some disk space")
    assert "\n" not in message
    assert tree_bytes(out) == before and leftovers(tmp_path) == [] and leftovers(out) == []
    monkeypatch.undo()                                        # then the training state, written alone (epoch 2
    from minibert.train import finetune as ft  # is no better than epoch 1)
    monkeypatch.setattr(ft, "accuracy", scripted_accuracy([0.9, 0.5]))
    with pytest.raises(OutputError, match=f"{out / 'minibert_training_state.npz'}: cannot write it .No space left"):
        finetune(str(FAMILIES / "bert_cased"), pair_task(8), dev=pair_task(4), checkpoint_dir=out,
                 recipe=TrainingRecipe(epochs=2, lr=1e-3, batch_size=8, dropout=0.0, patience=2),
                 on_epoch=lambda c: monkeypatch.setattr(np, "savez", enospc) if len(c.history) == 1 else None)
    assert leftovers(out) == []


def test_an_interrupt_while_saving_leaves_the_previous_epoch_whole(tmp_path, monkeypatch):
    from minibert.train import classifier as writer
    recipe = TrainingRecipe(epochs=1, lr=1e-3, batch_size=8, dropout=0.0)
    out = tmp_path / "clf"
    finetune(str(FAMILIES / "bert_cased"), pair_task(8), recipe=recipe, checkpoint_dir=out)
    before = tree_bytes(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(writer.shutil, "copyfile", interrupted)     # half-way through the directory
    with pytest.raises(KeyboardInterrupt):
        finetune(str(FAMILIES / "bert_cased"), pair_task(8, seed=3), recipe=recipe, checkpoint_dir=out,
                 labels=["no", "yes"])
    assert tree_bytes(out) == before and leftovers(tmp_path) == []


# ---- training fails loudly ---------------------------------------------------------------------------------------

def test_a_diverged_run_stops_naming_the_step_and_saves_nothing(tmp_path, capsys):
    """Before: --lr 1e10 trained on NaN losses, saved the result and exited 0."""
    from minibert.cli import train as finetune_cli
    with pytest.raises(TrainingError, match=r"training diverged at step 2 \(epoch 1\): the loss is nan"):
        finetune(str(FAMILIES / "bert_cased"), pair_task(16), checkpoint_dir=tmp_path / "clf",
                 recipe=TrainingRecipe(epochs=2, lr=1e10, batch_size=4))
    assert not (tmp_path / "clf").exists() and leftovers(tmp_path) == []
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"the cat {i},{i % 2}\n" for i in range(16)))
    code = finetune_cli.main(["finetune", str(tmp_path / "train.csv"), "--model", str(FAMILIES / "bert_cased"),
                              "--out", str(tmp_path / "cli"), "--lr", "1e10", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert code == 1 and "minibert: error: training diverged at step" in err and "lower learning rate" in err
    assert not (tmp_path / "cli").exists()


def test_a_model_with_non_finite_outputs_is_refused_not_printed_as_nan(tmp_path, capsys):
    """Before: predict printed NaN probabilities, which is not JSON."""
    from minibert.cli import train as finetune_cli
    classifier = finetune(str(FAMILIES / "bert_cased"), pair_task(8), recipe=TrainingRecipe(epochs=1, batch_size=8))
    classifier.head["out"]["b"][:] = np.nan
    classifier.save(tmp_path / "clf")
    with pytest.raises(ModelFileError, match=r"outputs for text 0 are not finite numbers"):
        classifier.predict_proba(["the cat"])
    (tmp_path / "in.txt").write_text("the cat\n")
    assert finetune_cli.main(["predict", str(tmp_path / "clf"), str(tmp_path / "in.txt")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "not finite numbers" in captured.err and captured.err.count("\n") == 1


def test_numpy_texts_and_labels_train_as_lists_do(tmp_path):
    """Before: NumPy labels trained a whole epoch, then failed saving config.json ('int64 is not JSON
    serializable', a folder with only model.safetensors left); NumPy texts raised a raw ValueError."""
    data = pair_task(8)
    as_ints = [int(label == "yes") for label in data.labels]
    recipe = TrainingRecipe(epochs=1, lr=1e-3, batch_size=8, dropout=0.0)
    listed = finetune(str(FAMILIES / "bert_cased"), Examples(texts=data.texts, labels=as_ints,
                                                             text_pairs=data.text_pairs), recipe=recipe)
    given = Examples(texts=np.array(data.texts), labels=np.array(as_ints), text_pairs=np.array(data.text_pairs))
    arrays = finetune(str(FAMILIES / "bert_cased"), given, recipe=recipe, labels=np.array([0, 1]),
                      checkpoint_dir=tmp_path / "clf")
    assert arrays.history == listed.history and arrays.labels == [0, 1]
    assert all(type(label) is int for label in arrays.labels)
    assert json.loads((tmp_path / "clf" / "config.json").read_text())["id2label"] == {"0": 0, "1": 1}


@pytest.mark.parametrize("labels, message", [
    (["a", None, "b"], r"train labels: label 1 is None; every example needs a label"),
    ([1.0, float("nan"), 0.0], r"label 1 is nan"),
    (["a", "", "b"], r"label 1 is ''"),
    ([1, "1", 0], r"labels mix types \(int at 0, str at 1\)"),
    ([True, 1, 0], r"labels mix types \(bool at 0, int at 1\)"),
    ([{"x": 1}, "a", "b"], r"label 0 is a dict"),
])
def test_labels_given_from_python_are_checked_before_loading(labels, message):
    with pytest.raises(InputError, match=message):
        finetune("/no/such/model", Examples(texts=["a", "b", "c"], labels=labels))


def test_texts_that_are_not_strings_are_refused_before_loading():
    with pytest.raises(InputError, match=r"train texts: item 1 is a int"):
        finetune("/no/such/model", Examples(texts=["a", 5], labels=["x", "y"]))
    with pytest.raises(InputError, match=r"give a list \(or array\) of texts, found str"):
        finetune("/no/such/model", Examples(texts="ab", labels=["x", "y"]))


@pytest.mark.parametrize("flags, name", [(["--seed", "-1"], "seed"), (["--max-length", "0"], "max_length"),
                                         (["--patience", "0"], "patience"), (["--epochs", "0"], "epochs")])
def test_every_option_is_checked_before_the_data_and_model_are_read(tmp_path, capsys, flags, name):
    """Before: --seed -1 gave a NumPy traceback after the model had loaded."""
    from minibert.cli import train as finetune_cli
    code = finetune_cli.main(["finetune", str(tmp_path / "missing.csv"), "--model", "/no/such/model",
                              "--out", str(tmp_path / "clf"), *flags])
    err = capsys.readouterr().err
    assert code == 1 and f"recipe.{name} " in err and "is out of range" in err and err.count("\n") == 1


def test_training_and_prediction_hold_blas_to_one_thread(monkeypatch):
    """As the forward does (threads.BLAS): without it an epoch ran 6-10x slower on a busy machine."""
    from minibert.train import classifier as predictor, finetune as ft
    from minibert.backends.threads import BLAS
    seen = []
    real_forward, real_loss = predictor.classifier_forward, ft.loss_and_grads
    monkeypatch.setattr(predictor, "classifier_forward",
                        lambda *a, **k: seen.append(BLAS._holders) or real_forward(*a, **k))
    monkeypatch.setattr(ft, "loss_and_grads", lambda *a, **k: seen.append(BLAS._holders) or real_loss(*a, **k))
    classifier = finetune(str(FAMILIES / "bert_cased"), pair_task(8), recipe=TrainingRecipe(epochs=1, batch_size=8))
    classifier.predict(["the cat"])
    if not BLAS.available:
        pytest.skip("threadpoolctl finds no BLAS to hold on this machine")
    assert len(seen) == 2 and all(holders >= 1 for holders in seen), seen
    assert BLAS._holders == 0


def test_an_interrupted_new_run_over_an_older_runs_out_does_not_offer_resume(tmp_path, capsys, monkeypatch):
    """Before: Ctrl-C in the first epoch of a new run said to use --resume, which was then refused (the state
    there was the older run's)."""
    from minibert.train import finetune as ft
    from minibert.cli import train as finetune_cli
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"the cat {i},{i % 2}\n" for i in range(8)))
    command = ["finetune", str(tmp_path / "train.csv"), "--model", str(FAMILIES / "bert_cased"),
               "--out", str(tmp_path / "clf"), "--epochs", "1", "--batch-size", "4"]
    assert finetune_cli.main(command) == 0
    before = tree_bytes(tmp_path / "clf")
    capsys.readouterr()

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(ft, "train_step", interrupted)
    assert finetune_cli.main(command[:-4] + ["--epochs", "2", "--batch-size", "4"]) == 130
    err = capsys.readouterr().err
    assert "no epoch had finished; nothing saved" in err and "is as it was" in err and "--resume" not in err
    assert tree_bytes(tmp_path / "clf") == before
