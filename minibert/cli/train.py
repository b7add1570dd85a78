"""The `finetune` and `predict` commands, each `add_X(sub)` beside its `cmd_X(args)`. `add_commands(sub)` adds
them to minibert's command parser (a group of cli.GROUPS); `python -m minibert.cli.train ...` runs them alone.

    minibert finetune TRAIN --label-col C --out DIR [--text-col C] [--pair-col C]
                      [--task sequence|token|regression] [--loss mse|bce] [--model M] [--epochs N] [--lr X]
                      [--batch-size B] [--max-length L] [--seed S] [--dev FILE] [--patience N] [--dataset NAME]
                      [--resume]
    minibert predict DIR INPUT [--text-col C] [--pair-col C] [--out FILE]

TRAIN and --dev: .csv, .tsv or .jsonl with a text column (and a pair column) and a label column for
--task sequence; the same with a number as the label for --task regression (one output, trained with --loss
mse, or bce for scores in [0, 1]); CoNLL (one "word ... label" line per token, blank lines between sentences)
for --task token. The checkpoint is written to --out after every epoch (with --patience: after every epoch that is
the best so far), and beside it the state --resume continues from, so an interrupted run keeps its model
and can go on. Progress goes to stderr: a bar on a terminal, a line every 10 seconds otherwise. predict
writes one JSON line per input text (a one-output model: its score, as CrossEncoder.predict gives it, and
the raw logit), read as extract reads it (minibert.corpus.readers: a blank .txt line is an
empty text; - is standard input).
"""

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import InputError, MiniBertError, OutputError
from ..files import atomic_file
from .common import interrupted_training


def read_examples(path, args):
    from ..train.data import Examples
    from ..corpus.readers import read_conll, read_labelled
    if args.task == "token":
        if Path(path).suffix.lower() in (".csv", ".tsv", ".jsonl"):   # read as CoNLL, a JSON line is two "words"
            raise InputError(f"{path}: --task token reads CoNLL (one 'word ... label' line per token, blank lines "
                             "between sentences), not .csv/.tsv/.jsonl")
        if args.pair_col:       # CoNLL has no columns to name: it went unread
            raise InputError("--task token reads one sentence per CoNLL block; --pair-col is not read (leave it "
                             "out)")
        sentences, tags = read_conll(path)
        return Examples(texts=sentences, labels=tags)
    if args.task == "regression":
        return read_scored(path, args)
    if args.pair_col:
        texts, pairs, labels = read_labelled(path, args.text_col, args.label_col, args.pair_col)
        return Examples(texts=texts, labels=labels, text_pairs=pairs)
    texts, labels = read_labelled(path, args.text_col, args.label_col)
    return Examples(texts=texts, labels=labels)


def read_scored(path, args):
    """Regression examples: a text (and pair) column and a number as the label, a JSON number or a string
    that reads as one; anything else refused naming the file, line and value."""
    from ..corpus.readers import MISSING, read_table
    from ..train.data import Examples, score_problem
    fields = [args.text_col, args.label_col] + ([args.pair_col] if args.pair_col else [])
    texts, pairs, labels = [], [], []
    for number, (text, label, *pair) in read_table(path, fields, "labelled data"):
        text, *pair = ["" if v is MISSING and not str(path).lower().endswith(".jsonl") else v for v in [text, *pair]]
        if not all(isinstance(v, str) for v in [text, *pair]):
            raise InputError(f"{path}:{number}: needs a string field {args.text_col!r}"
                             f"{f' and {args.pair_col!r}' if args.pair_col else ''} (choose with --text-col / "
                             "--pair-col)")
        value = label
        if isinstance(label, str):
            try:
                value = float(label.strip())
            except ValueError:
                pass
        problem = "missing" if label is MISSING else score_problem(value, args.loss == "bce")
        if problem:
            raise InputError(f"{path}:{number}: the label {'' if label is MISSING else json.dumps(label)[:40] + ' '}"
                             f"is {problem.replace('a str, ', '')}; --task regression needs a number per example"
                             + ("" if label is MISSING or not isinstance(label, str) else " (such as 0.75)"))
        texts.append(text)
        pairs.extend(pair)
        labels.append(float(value))
    if not texts:
        raise InputError(f"{path}: no examples")
    return Examples(texts=texts, labels=labels, text_pairs=pairs if args.pair_col else None)


def cmd_finetune(args):
    from ..train.finetune import TrainingRecipe, check_recipe, check_task, finetune
    recipe = TrainingRecipe(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length,
                    seed=args.seed, dtype=args.dtype, patience=args.patience)
    check_recipe(recipe)            # every option before the data is read and the model loads
    check_task(args.task, args.loss)
    train = read_examples(args.train, args)
    dev = read_examples(args.dev, args) if args.dev else None
    finished = []
    try:
        finetune(args.model, train, task=args.task, loss=args.loss, dev=dev, recipe=recipe, progress=sys.stderr,
                 checkpoint_dir=args.out, resume=args.resume, on_epoch=finished.append, datasets=args.dataset,
                 command=reproducing_command(args))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_training(args, finished, f"minibert predict {args.out} INPUT")) from None


def reproducing_command(args):
    """The finetune command line with every setting spelled out (defaults too), for the model card."""
    from .common import spelled_out
    return spelled_out("finetune", [args.train], args, ["--out", "--task", "--loss", "--model", "--text-col",
                                                        "--pair-col", "--label-col", "--dev", "--epochs", "--lr",
                                                        "--batch-size", "--max-length", "--seed", "--dtype",
                                                        "--patience", "--dataset"])


def add_finetune(sub):
    p = sub.add_parser("finetune", help="fine-tune a classifier (sequence or token) or a one-output model "
                       "(regression) and save a Hugging Face checkpoint",
                       epilog="example: minibert finetune train.csv --text-col sentence --label-col label --out clf")
    p.add_argument("train", help="training data: .csv/.tsv/.jsonl (sequence) or CoNLL (token)")
    p.add_argument("--out", required=True, help="checkpoint directory, rewritten after every epoch")
    p.add_argument("--task", choices=["sequence", "token", "regression"], default="sequence",
                   help="regression: one output per text (or pair) trained on a numeric label")
    p.add_argument("--loss", choices=["mse", "bce"], default=None,
                   help="--task regression's objective: mse (default; the raw output, CrossEncoder's Identity) or "
                        "bce (labels in [0, 1], BCE with logits, CrossEncoder's Sigmoid)")
    p.add_argument("--model", default=None, help="model directory or hub id (default: the bundled model)")
    p.add_argument("--text-col", default="text")
    p.add_argument("--pair-col", default=None, help="second text of a sentence pair")
    p.add_argument("--label-col", default="label")
    p.add_argument("--dev", default=None, help="dev file in the same format, evaluated after each epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--patience", type=int, default=None,
                   help="stop when the --dev accuracy (regression: Spearman) has not improved for N epochs; --out "
                        "keeps the best epoch")
    p.add_argument("--dataset", action="append", default=None, metavar="NAME",
                   help="a hub dataset id the data comes from, for the model card (README.md); repeatable")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out after its last finished epoch (same arguments)")
    p.set_defaults(run=cmd_finetune)


def check_predictions_out(out, args):
    """--out refused up front when writing it would destroy what the user owns: the input, or a file of the
    classifier directory; or when it cannot be a file there."""
    out, model_dir = Path(out), Path(args.model_dir)
    if out.is_dir():
        raise OutputError(f"--out {out} is a directory; give a file name")
    if not out.resolve().parent.is_dir():
        raise OutputError(f"--out {out}: the folder {out.parent} does not exist")
    if out.exists() and args.input != "-" and Path(args.input).exists() and os.path.samefile(out, args.input):
        raise OutputError(f"--out {out} is the input file itself; writing the predictions there would destroy the "
                          "texts: choose another file")
    if model_dir.is_dir() and model_dir.resolve() in out.resolve().parents:
        raise OutputError(f"--out {out} is inside the classifier directory {model_dir}; write the predictions "
                          "elsewhere")


def prediction_lines(classifier, texts, pairs, model_dir):
    """One JSON line per text (the whole prediction is computed first: an error leaves no half output). A
    one-output model: "score" as CrossEncoder.predict gives it (its stored activation applied) and "logit"."""
    if classifier.task == "sequence" and len(classifier.labels) == 1:
        from ..train.crossencoder import ACTIVATIONS, stored_activation
        activation, _ = stored_activation(model_dir, model_dir, 1)
        logits = classifier.logits(texts, pairs)[:, 0]                                     # [N]
        return [json.dumps({"text": texts[i], **({"pair": pairs[i]} if pairs else {}),
                            "score": round(float(score), 6), "logit": round(float(logit), 6),
                            "activation": activation}, ensure_ascii=False, allow_nan=False)
                for i, (score, logit) in enumerate(zip(ACTIVATIONS[activation](logits), logits))]
    if classifier.task == "sequence":
        probs = classifier.predict_proba(texts, pairs)
        return [json.dumps({"text": texts[i], **({"pair": pairs[i]} if pairs else {}),
                            "label": classifier.labels[int(row.argmax())],
                            "probabilities": {label: round(float(p), 6) for label, p in zip(classifier.labels, row)}},
                           ensure_ascii=False, allow_nan=False)
                for i, row in enumerate(probs)]
    if pairs is not None:       # tag reads one text: the pair column went unread without a word
        raise InputError(f"{model_dir}: a token classifier tags the words of one text; --pair-col is not read "
                         "(leave it out, or join the two columns into one text)")
    return [json.dumps({"text": text, "words": [{"word": w, "label": label, "start": s, "end": e}
                                                for w, label, (s, e) in words]}, ensure_ascii=False)
            for text, words in zip(texts, classifier.tag(texts))]


def cmd_predict(args):
    from ..train.classifier import load_classifier
    if args.out is not None:
        check_predictions_out(args.out, args)
    from ..corpus.readers import read_text_pairs
    texts, pairs = read_text_pairs(args.input, args.text_col, args.pair_col)     # the cheap check first
    classifier = load_classifier(args.model_dir)
    lines = prediction_lines(classifier, texts, pairs, Path(args.model_dir))
    if args.out is None:
        for line in lines:
            print(line)
        return
    # Under a temporary name, renamed at the end: a refusal, a full disk or Ctrl-C leaves --out as it was.
    with atomic_file(args.out, "w", encoding="utf-8") as out:
        for line in lines:
            out.write(line + "\n")


def add_predict(sub):
    p = sub.add_parser("predict", help="predict with a fine-tuned classifier directory, one JSON line per text",
                       epilog="example: minibert predict clf texts.txt")
    p.add_argument("model_dir")
    p.add_argument("input", help=".txt (one text per line), .csv, .tsv, .jsonl, .parquet, or - for standard input")
    p.add_argument("--text-col", default="text")
    p.add_argument("--pair-col", default=None)
    p.add_argument("--out", default=None, help="write the JSON lines here instead of standard output")
    p.set_defaults(run=cmd_predict)


def add_commands(sub):
    for add in (add_finetune, add_predict):       # in this order in `minibert --help`
        add(sub)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minibert.cli.train")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except MiniBertError as e:
        print(f"minibert: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"minibert: interrupted{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
