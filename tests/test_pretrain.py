"""Continued MLM pretraining: group_texts blocks, the collators' masking, the loop, its checkpoint and resume.

Torch-free; the checkpoint's parity with AutoModelForMaskedLM is in tests/test_heads_live.py (-m reference).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import minibert
from minibert import InputError
from minibert.cli import main as cli_main
from minibert.train.pretrain import PretrainRecipe, group_texts, mask_tokens, pretrain, save_masked_lm

HEADS_DIR = Path(__file__).parent / "fixtures" / "heads"
CORPUS = (HEADS_DIR / "corpus.txt").read_text(encoding="utf-8").splitlines()
FAST = dict(batch_size=4, max_length=24, lr=1e-3, validation_split=0.1)


@pytest.fixture(scope="module")
def bert():
    return minibert.load(str(HEADS_DIR / "bert"), backend="numpy")


def test_group_texts_concatenates_documents_with_their_special_tokens_and_drops_the_tail(bert):
    texts = CORPUS[:6]
    blocks = group_texts(bert.tokenizer, texts, 16)
    everything = np.concatenate([bert.tokenize(t, truncation=False).input_ids[0] for t in texts])
    assert blocks.ids.shape == (len(everything) // 16, 16)
    assert np.array_equal(blocks.ids.reshape(-1), everything[:blocks.ids.size])
    cls, sep = bert.tokenizer.backend.token_to_id("[CLS]"), bert.tokenizer.backend.token_to_id("[SEP]")
    assert np.array_equal(blocks.special, np.isin(blocks.ids, [cls, sep]))
    assert (blocks.words[blocks.special] == -1).all() and (blocks.words[~blocks.special] >= 0).all()
    with pytest.raises(InputError, match="the corpus holds 5 tokens, fewer than one block of 16"):
        group_texts(bert.tokenizer, ["Hello world!"], 16)


def test_masking_follows_the_collator_80_10_10_and_never_touches_special_tokens():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 1000, (400, 250))
    special = np.zeros(ids.shape, dtype=bool)
    special[:, 0] = special[:, -1] = True
    inputs, labels = mask_tokens(ids, special, rng, mask_id=3, vocab_size=1000, mlm_probability=0.15)
    chosen = labels != -100
    assert not chosen[special].any() and (inputs[special] == ids[special]).all()
    assert np.array_equal(labels[chosen], ids[chosen])
    assert abs(chosen[~special].mean() - 0.15) < 0.005                   # 99,200 tokens: 5 standard errors
    assert abs((inputs[chosen] == 3).mean() - 0.8) < 0.01
    kept = (inputs[chosen] == ids[chosen]).mean()
    assert 0.1 - 0.01 < kept < 0.1 + 0.01 + 0.002                       # a random id may draw the same id
    assert (inputs[~chosen] == ids[~chosen]).all()


def test_whole_word_masking_chooses_whole_words(bert):
    blocks = group_texts(bert.tokenizer, CORPUS, 32)
    rng = np.random.default_rng(1)
    inputs, labels = mask_tokens(blocks.ids, blocks.special, rng, mask_id=0, vocab_size=600, words=blocks.words)
    chosen = labels != -100
    for row in range(len(blocks.ids)):
        for word in np.unique(blocks.words[row][chosen[row]]):
            pieces = blocks.words[row] == word
            assert chosen[row][pieces].all(), "a word was masked in part"
        real = (~blocks.special[row]).sum()
        assert 1 <= chosen[row].sum() <= max(1, round(real * 0.15))
    assert not chosen[blocks.special].any()


def test_held_out_perplexity_falls_and_the_checkpoint_loads(tmp_path):
    out = tmp_path / "mlm"
    result = pretrain(str(HEADS_DIR / "bert"), CORPUS * 3, recipe=PretrainRecipe(epochs=2, **FAST),
                      checkpoint_dir=out)
    before, first, last = result.history[0], result.history[1], result.history[-1]
    assert before["epoch"] == 0 and "train_loss" not in before
    assert last["dev_loss"] < first["dev_loss"] < before["dev_loss"]
    assert last["dev_perplexity"] == pytest.approx(np.exp(last["dev_loss"]))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    reloaded = minibert.load(str(out), backend="numpy")
    assert reloaded.heads.tied and reloaded.weights["pooler"] is not None      # the pooler a classifier reads
    assert np.array_equal(reloaded.weights["embeddings"]["word"], result.weights["embeddings"]["word"])
    texts = ["The quick brown [MASK] jumps over the lazy dog."]
    source = minibert.load(str(HEADS_DIR / "bert"), backend="numpy")
    assert not np.allclose(reloaded.mlm_logits(texts), source.mlm_logits(texts))   # it learnt something


def test_a_pretrained_checkpoint_starts_a_classifier(tmp_path):
    from minibert.train.data import Examples
    from minibert.train.finetune import TrainingRecipe, finetune
    out = tmp_path / "mlm"
    pretrain(str(HEADS_DIR / "bert"), CORPUS * 2, recipe=PretrainRecipe(epochs=1, **FAST), checkpoint_dir=out)
    classifier = finetune(str(out), Examples(texts=["good", "bad", "fine", "awful"], labels=[1, 0, 1, 0]),
                          recipe=TrainingRecipe(epochs=1, batch_size=2))
    assert classifier.predict(["good"])[0] in (0, 1)


def test_resume_finishes_bit_for_bit_as_the_uninterrupted_run(tmp_path):
    recipe = PretrainRecipe(epochs=2, dropout=0.1, whole_word_mask=True, **FAST)
    straight = pretrain(str(HEADS_DIR / "bert"), CORPUS * 2, recipe=recipe, checkpoint_dir=tmp_path / "a")

    def interrupt(record):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        pretrain(str(HEADS_DIR / "bert"), CORPUS * 2, recipe=recipe, checkpoint_dir=tmp_path / "b", on_epoch=interrupt)
    resumed = pretrain(str(HEADS_DIR / "bert"), CORPUS * 2, recipe=recipe, checkpoint_dir=tmp_path / "b",
                       resume=True)
    assert resumed.history == straight.history
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    with pytest.raises(InputError, match="differs from this one .recipe.lr"):
        pretrain(str(HEADS_DIR / "bert"), CORPUS * 2, recipe=PretrainRecipe(**{**recipe.__dict__, "lr": 0.5}),
                 checkpoint_dir=tmp_path / "b", resume=True)


def test_recipe_and_corpus_refusals():
    with pytest.raises(InputError, match=r"recipe.mlm_probability 1.5 is out of range"):
        pretrain(str(HEADS_DIR / "bert"), CORPUS, recipe=PretrainRecipe(mlm_probability=1.5))
    with pytest.raises(InputError, match="the corpus has 1 document"):
        pretrain(str(HEADS_DIR / "bert"), CORPUS[:1], recipe=PretrainRecipe(max_length=8))
    with pytest.raises(minibert.ModelFileError, match="no masked-LM head"):
        pretrain(str(Path(__file__).parent / "fixtures" / "families" / "bert_cased"), CORPUS)


def test_save_masked_lm_round_trips_through_load(tmp_path):
    model = minibert.load(str(HEADS_DIR / "albert"), backend="numpy", dtype="float64")
    save_masked_lm(tmp_path, model.weights, model.heads.mlm, model.config, tied=True, source_dir=model.encoder_dir,
                   tokenizer_dir=model.tokenizer.dir)
    again = minibert.load(str(tmp_path), backend="numpy", dtype="float64")
    texts = ["The quick brown [MASK] jumps over the lazy dog."]
    assert np.abs(again.mlm_logits(texts) - model.mlm_logits(texts)).max() < 1e-4     # saved in float32


def test_pretrain_command(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"body": line}) + "\n" for line in CORPUS * 2), encoding="utf-8")
    out = tmp_path / "out"
    code = cli_main(["pretrain", str(corpus), "--field", "body", "--model", str(HEADS_DIR / "bert"), "--out", str(out),
                     "--epochs", "1", "--batch-size", "4", "--max-length", "24", "--whole-word-mask"])
    assert code == 0, capsys.readouterr().err
    assert "dev_perplexity" in capsys.readouterr().err
    assert (out / "model.safetensors").is_file()
    code = cli_main(["pretrain", str(corpus), "--field", "body", "--model", str(HEADS_DIR / "bert"), "--out", str(out),
                     "--mlm-probability", "0"])
    assert code == 1 and "mlm_probability 0.0 is out of range" in capsys.readouterr().err
    shutil.rmtree(out)


# ---- the model card written with each checkpoint ---------------------------------------------------------------

def read_card(directory):
    from huggingface_hub.repocard import metadata_load
    text = (Path(directory) / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return metadata_load(Path(directory) / "README.md"), text.split("\n---\n", 1)[1]


def code_blocks(body, language):
    import re
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)


def test_a_pretraining_checkpoint_has_a_model_card_with_the_runs_numbers(tmp_path, capsys):
    out = tmp_path / "mlm"
    recipe = PretrainRecipe(epochs=2, **FAST)
    result = pretrain(str(HEADS_DIR / "bert"), CORPUS * 2, recipe=recipe, checkpoint_dir=out, datasets=["me/corpus"])
    meta, body = read_card(out)
    assert meta == {"library_name": "minibert", "pipeline_tag": "fill-mask", "tags": ["minibert", "bert", "fill-mask"],
                    "datasets": ["me/corpus"], "metrics": ["perplexity"]}
    before, *epochs = result.history
    assert f"| 0 |  | {before['dev_loss']:.6f} | {before['dev_perplexity']:.6f} |" in body     # before training
    for record in epochs:
        assert (f"| {record['epoch']} | {record['train_loss']:.6f} | {record['dev_loss']:.6f} | "
                f"{record['dev_perplexity']:.6f} |") in body
    assert f"recipe={recipe!r}" in code_blocks(body, "python")[0] and "AutoModelForMaskedLM" in body
    exec(code_blocks(body, "python")[1], {})                  # the minibert example runs: fill-mask on the checkpoint
    assert "token_str" in capsys.readouterr().out
    pretrain(str(HEADS_DIR / "bert"), CORPUS, recipe=PretrainRecipe(epochs=1, **FAST), dev_texts=CORPUS[:4],
             checkpoint_dir=tmp_path / "dev")
    assert ", dev_texts=dev_texts, checkpoint_dir=" in code_blocks(read_card(tmp_path / "dev")[1], "python")[0]
    with pytest.raises(InputError, match="command must be a str"):
        pretrain(str(HEADS_DIR / "bert"), CORPUS, recipe=recipe, command=["minibert"])


def test_the_pretraining_cards_command_reproduces_the_run(tmp_path):
    import shlex
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 2) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert cli_main(["pretrain", str(corpus), "--model", str(HEADS_DIR / "bert"), "--out", str(out), "--epochs", "1",
                     "--batch-size", "4", "--max-length", "24", "--whole-word-mask", "--dataset", "me/corpus"]) == 0
    meta, body = read_card(out)
    command = shlex.split(code_blocks(body, "bash")[0])
    assert command[:2] == ["minibert", "pretrain"] and "--whole-word-mask" in command and "--lr" in command
    first = (out / "model.safetensors").read_bytes()
    shutil.rmtree(out)
    assert cli_main(command[1:]) == 0
    assert (out / "model.safetensors").read_bytes() == first and read_card(out) == (meta, body)


@pytest.mark.reference
def test_live_the_pretraining_cards_transformers_example_loads_the_checkpoint(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "mlm"
    pretrain(str(HEADS_DIR / "bert"), CORPUS * 2, recipe=PretrainRecipe(epochs=1, **FAST), checkpoint_dir=out)
    namespace = {}
    exec(code_blocks(read_card(out)[1], "python")[2], namespace)
    texts = ["The [MASK] sat on the mat."]           # the card's example
    want = namespace["logits"].detach().numpy()
    assert np.abs(minibert.load(str(out), backend="numpy").mlm_logits(texts) - want).max() < 2e-5   # measured 2.1e-6


def test_pretraining_never_writes_over_the_model_or_a_folder_it_did_not_write(tmp_path):
    """The classifier's rules (issue 22) hold for pretraining's output too: --out is checked before training,
    the model's own folder and a folder minibert did not write are refused, files minibert wrote are replaced
    whole (nothing of an earlier save stays behind)."""
    from minibert import OutputError
    model = tmp_path / "bert"
    shutil.copytree(HEADS_DIR / "bert", model)
    with pytest.raises(OutputError, match="the output directory is the model directory"):
        pretrain(str(model), CORPUS, recipe=PretrainRecipe(epochs=1, **FAST), checkpoint_dir=model)
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds files minibert did not write \(notes.txt\); pretraining "
                       "replaces its output directory whole"):
        pretrain(str(model), CORPUS, recipe=PretrainRecipe(epochs=1, **FAST), checkpoint_dir=mine)
    assert (mine / "notes.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    out = tmp_path / "mlm"
    pretrain(str(model), CORPUS, recipe=PretrainRecipe(epochs=1, **FAST), checkpoint_dir=out)
    (out / "stale.bin").write_bytes(b"from an earlier save")
    pretrain(str(model), CORPUS, recipe=PretrainRecipe(epochs=1, **FAST), checkpoint_dir=out)   # a new run
    assert not (out / "stale.bin").exists() and not list(tmp_path.glob(".mlm.*"))


def test_a_diverged_pretraining_run_stops_naming_the_step_and_saves_nothing(tmp_path):
    from minibert import TrainingError
    out = tmp_path / "mlm"
    with pytest.raises(TrainingError, match=r"training diverged at step \d+ \(epoch 1\)"):
        pretrain(str(HEADS_DIR / "bert"), CORPUS * 3,
                 recipe=PretrainRecipe(epochs=2, **{**FAST, "lr": 1e10}), checkpoint_dir=out)
    assert not out.exists()


def test_pretraining_finetuning_and_extraction_never_replace_each_others_output(tmp_path, capsys):
    """--out holding another kind of minibert output is refused before training, naming what it holds; the
    same kind is replaced as before (test above)."""
    from minibert import OutputError
    from minibert.corpus.extract import extract
    from minibert.train.data import Examples
    from minibert.train.finetune import TrainingRecipe, finetune
    mlm, clf, vectors = tmp_path / "mlm", tmp_path / "clf", tmp_path / "vectors"
    pretrain(str(HEADS_DIR / "roberta"), CORPUS, recipe=PretrainRecipe(epochs=1, **FAST), checkpoint_dir=mlm)
    examples = Examples(texts=["good", "bad", "fine", "awful"], labels=[1, 0, 1, 0])
    classifier = finetune(str(HEADS_DIR / "bert"), examples, recipe=TrainingRecipe(epochs=1, batch_size=2),
                          checkpoint_dir=clf)
    extract(minibert.load(str(HEADS_DIR / "bert"), backend="numpy"), CORPUS[:4], vectors, progress=False)
    before = {d: {p.name: p.read_bytes() for p in d.iterdir()} for d in (mlm, clf, vectors)}

    def trained(record):
        pytest.fail("trained before refusing")
    for target, held in ((mlm, "a masked-LM checkpoint of a minibert pretraining run"),
                         (vectors, "a minibert extraction")):
        with pytest.raises(OutputError, match=f"{target.name}: holds {held}.*a classifier replaces its output "
                                              f"directory whole.*choose another output directory, or delete"):
            finetune(str(HEADS_DIR / "bert"), examples, recipe=TrainingRecipe(epochs=1, batch_size=2),
                     checkpoint_dir=target, on_epoch=trained)
        with pytest.raises(OutputError, match=f"holds {held}"):
            classifier.save(target)
    for target, held in ((clf, "a classifier minibert fine-tuned"), (vectors, "a minibert extraction")):
        with pytest.raises(OutputError, match=f"{target.name}: holds {held}.*pretraining replaces its output "
                                              "directory whole"):
            pretrain(str(HEADS_DIR / "bert"), CORPUS, recipe=PretrainRecipe(epochs=1, **FAST), checkpoint_dir=target,
                     on_epoch=trained)
    code = cli_main(["finetune", str(write_labelled(tmp_path)), "--model", str(HEADS_DIR / "bert"), "--out", str(mlm),
                     "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "holds a masked-LM checkpoint" in err and "epoch" not in err, err
    assert {d: {p.name: p.read_bytes() for p in d.iterdir()} for d in (mlm, clf, vectors)} == before


def write_labelled(folder):
    path = folder / "labelled.csv"
    path.write_text("text,label\ngood,1\nbad,0\nfine,1\nawful,0\n", encoding="utf-8")
    return path


def test_a_str_is_one_document_and_the_recipe_must_be_a_pretrain_recipe(bert):
    from minibert.train.pretrain import split_documents
    document = "Paris is the capital of France. " * 30
    assert split_documents(document, None, 0) == ([document], [])
    with pytest.raises(InputError, match="the corpus has 1 document"):      # not 960 one-character documents
        pretrain(bert, document, recipe=PretrainRecipe(epochs=1, **FAST))
    recipe = PretrainRecipe(epochs=1, **FAST)
    as_str = pretrain(bert, CORPUS, recipe=recipe, dev_texts=document)
    as_list = pretrain(bert, CORPUS, recipe=recipe, dev_texts=[document])
    assert as_str.history == as_list.history
    with pytest.raises(InputError, match="recipe must be a PretrainRecipe .* found dict"):
        pretrain(bert, CORPUS, recipe={"epochs": 1})


def test_the_held_out_split_takes_one_block_at_least_and_says_when_the_corpus_is_too_short(bert, tmp_path, capsys):
    """5% of 40 five-token documents is 10 tokens, less than a block of 16: the held-out part grows to 4
    documents (one block) and the run goes on; too few tokens for both is refused saying so."""
    import io
    progress = io.StringIO()
    recipe = PretrainRecipe(epochs=1, batch_size=4, max_length=16)
    result = pretrain(bert, ["Hello world!"] * 40, recipe=recipe)
    assert len(bert.tokenize("Hello world!").input_ids[0]) == 5
    assert result.history[0]["epoch"] == 0 and np.isfinite(result.history[1]["dev_loss"])
    with pytest.raises(InputError, match="the corpus less the first 4 document.s. held out for the perplexity report "
                                         "holds 5 tokens, fewer than one block of 16"):
        pretrain(bert, ["Hello world!"] * 5, recipe=recipe)
    with pytest.raises(InputError, match="the corpus holds 15 tokens: too few for one block of 16 held out"):
        pretrain(bert, ["Hello world!"] * 3, recipe=recipe)
    with pytest.raises(InputError, match=r"recipe.patience \(--patience\) needs held-out text"):
        pretrain(bert, CORPUS, recipe=PretrainRecipe(epochs=1, patience=1, **{**FAST, "validation_split": 0}),
                 progress=progress)
    assert "step" not in progress.getvalue()                # refused before training, not after an epoch
    with pytest.raises(InputError, match=r"the held-out text \(dev_texts, --dev\) holds 5 tokens, fewer than one "
                                         "block of 16"):
        pretrain(bert, ["Hello world!"] * 40, recipe=recipe, dev_texts=["Hello world!"])
    # one document: the advice works where the user is (the command line has --validation-split)
    (tmp_path / "one.txt").write_text("Paris is the capital of France. " * 10 + "\n", encoding="utf-8")
    command = ["pretrain", str(tmp_path / "one.txt"), "--model", str(HEADS_DIR / "bert"), "--out",
               str(tmp_path / "out"), "--epochs", "1", "--max-length", "16"]
    assert cli_main(command) == 1
    assert "--validation-split 0" in capsys.readouterr().err
    assert cli_main(command + ["--validation-split", "0"]) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_an_empty_dev_set_is_refused_not_silently_skipped(bert, tmp_path, capsys):
    for empty in ([], [""], "  "):
        with pytest.raises(InputError, match="dev_texts .--dev. holds no text"):
            pretrain(bert, CORPUS, recipe=PretrainRecipe(epochs=1, **FAST), dev_texts=empty)
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    code = cli_main(["pretrain", str(tmp_path / "corpus.txt"), "--model", str(HEADS_DIR / "bert"), "--out",
                     str(tmp_path / "out"), "--max-length", "24", "--dev", str(tmp_path / "empty.txt")])
    err = capsys.readouterr().err
    assert code == 1 and f"--dev {tmp_path / 'empty.txt'}: no documents" in err and "epoch" not in err, err
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_run_that_stopped_early(tmp_path):
    recipe = PretrainRecipe(epochs=6, batch_size=4, max_length=24, lr=0.05, validation_split=0.1, patience=1, seed=0)
    first = pretrain(str(HEADS_DIR / "bert"), CORPUS * 2, recipe=recipe, checkpoint_dir=tmp_path / "mlm")
    assert first.history[-1]["epoch"] < 6                  # it did stop early
    saved = (tmp_path / "mlm" / "model.safetensors").read_bytes()
    with pytest.raises(InputError, match=f"has finished .epoch {first.history[-1]['epoch']} of 6, stopped early."):
        pretrain(str(HEADS_DIR / "bert"), CORPUS * 2, recipe=recipe, checkpoint_dir=tmp_path / "mlm", resume=True)
    assert (tmp_path / "mlm" / "model.safetensors").read_bytes() == saved


def test_ctrl_c_during_pretrain_says_what_was_saved_and_how_to_resume(tmp_path, capsys, monkeypatch):
    from minibert.train import pretrain as pretraining
    real = pretraining.loss_and_grads
    calls = []

    def interrupted_in_epoch(epoch):
        def loss_and_grads(*args, **kwargs):
            calls.append("train" if "dropout" in kwargs else "held out")    # the held-out loss has no dropout
            if calls[-1] == "train" and calls.count("held out") == epoch:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return loss_and_grads
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS * 2) + "\n", encoding="utf-8")
    command = ["pretrain", str(tmp_path / "corpus.txt"), "--model", str(HEADS_DIR / "bert"), "--out",
               str(tmp_path / "mlm"), "--epochs", "2", "--max-length", "24", "--batch-size", "4"]
    monkeypatch.setattr(pretraining, "loss_and_grads", interrupted_in_epoch(1))
    assert cli_main(command) == 130
    assert "minibert: interrupted: no epoch had finished; nothing saved" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(pretraining, "loss_and_grads", interrupted_in_epoch(2))
    assert cli_main(command) == 130
    err = capsys.readouterr().err
    assert (f"interrupted: {tmp_path / 'mlm'} holds the last finished epoch's model" in err
            and "run the same command with --resume" in err), err
    monkeypatch.setattr(pretraining, "loss_and_grads", real)
    assert cli_main(command + ["--resume"]) == 0, capsys.readouterr().err
