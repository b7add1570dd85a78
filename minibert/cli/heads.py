"""The `fill-mask` and `pretrain` commands, each `add_X(sub)` beside its `cmd_X(args)`. `add_commands(sub)` adds
them to minibert's command parser (a group of cli.GROUPS).

    minibert fill-mask TEXT [TEXT ...] [--model M] [--top-k 5] [--targets T [T ...]] [--json]
    minibert pretrain CORPUS --model M --out DIR [--field F] [--dev FILE] [--epochs --lr --batch-size
                      --max-length --mlm-probability 0.15 --whole-word-mask --validation-split 0.05 --seed
                      --dtype --resume --patience --dataset NAME]

Each TEXT holds the model's own mask token ([MASK], <mask>, ...) once or more. Plain output: per mask, one
line per candidate (score, token, the filled-in text); --json: what transformers' pipeline("fill-mask")
returns, shaped the same way. pretrain continues MLM pretraining on CORPUS (read by minibert.corpus.readers:
.txt one document a line, blank lines left out; .jsonl, .csv, .tsv, .parquet: the --field column) and writes a
...ForMaskedLM checkpoint to --out after each epoch, with the state --resume continues from; progress and each
epoch's held-out loss and perplexity go to stderr.
"""

import json
import sys

from .common import add_model_arguments, int_at_least, interrupted_training, spelled_out


def cmd_fill_mask(args):
    from ..api import load
    model = load(args.model, backend=args.backend)
    results = model.fill_mask(args.texts if len(args.texts) > 1 else args.texts[0], top_k=args.top_k,
                              targets=args.targets)
    if args.json:
        print(json.dumps(results, ensure_ascii=False))
        return
    per_text = results if len(args.texts) > 1 else [results]
    for text, found in zip(args.texts, per_text):
        masks = found if found and isinstance(found[0], list) else [found]
        for number, answers in enumerate(masks, start=1):
            print(f"{text}" + (f"  (mask {number} of {len(masks)})" if len(masks) > 1 else ""))
            for answer in answers:
                print(f"  {answer['score']:.4f}  {answer['token_str']!r:<16} {answer['sequence']}")


def add_fill_mask(sub):
    p = sub.add_parser("fill-mask", help="the masked-LM head's top candidates for each mask token",
                       epilog='example: minibert fill-mask "Paris is the [MASK] of France." --model bert-dir')
    p.add_argument("texts", nargs="+", help="texts holding the model's mask token ([MASK], <mask>, ...)")
    add_model_arguments(p, "a checkpoint with its masked-LM head (directory or hub id)")
    p.add_argument("--top-k", type=int_at_least(1), default=5)
    p.add_argument("--targets", nargs="+", default=None, help="score only these candidate tokens")
    p.add_argument("--json", action="store_true", help="print pipeline('fill-mask')'s output as JSON")
    p.set_defaults(run=cmd_fill_mask)


def documents(path, field):
    """The corpus's documents; blank .txt lines are no documents (read_texts keeps them as empty texts)."""
    from ..corpus.readers import read_texts
    return [text for text in read_texts(path, field) if text.strip()]


def cmd_pretrain(args):
    from ..errors import InputError
    from ..train.pretrain import PretrainRecipe, pretrain
    texts = documents(args.corpus, args.field)
    dev = documents(args.dev, args.field) if args.dev else None
    if dev == []:           # an empty --dev would turn the held-out evaluation off without a word
        raise InputError(f"--dev {args.dev}: no documents (the file is empty or its lines are blank); give "
                         "held-out text, or leave out --dev to hold out the first documents of the corpus")
    recipe = PretrainRecipe(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length,
                            mlm_probability=args.mlm_probability, whole_word_mask=args.whole_word_mask,
                            validation_split=args.validation_split, seed=args.seed, dtype=args.dtype,
                            patience=args.patience)
    finished = []
    try:
        pretrain(args.model, texts, recipe=recipe, dev_texts=dev, progress=sys.stderr, checkpoint_dir=args.out,
                 resume=args.resume, datasets=args.dataset, on_epoch=finished.append,
                 command=spelled_out("pretrain", [args.corpus], args, [
                     "--model", "--out", "--field", "--dev", "--epochs", "--lr", "--batch-size", "--max-length",
                     "--mlm-probability", "--whole-word-mask", "--validation-split", "--seed", "--dtype",
                     "--patience", "--dataset"]))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_training(args, finished, f"minibert fill-mask TEXT --model {args.out}")) \
            from None


def add_pretrain(sub):
    p = sub.add_parser("pretrain", help="continue masked-LM pretraining on a corpus; saves a ...ForMaskedLM checkpoint",
                       epilog="example: minibert pretrain corpus.txt --model bert-dir --out bert-adapted --epochs 1")
    p.add_argument("corpus", help=".txt (one document a line), .jsonl, .csv, .tsv or .parquet (the --field column)")
    p.add_argument("--model", default=None, help="a checkpoint with its masked-LM head (directory or hub id)")
    p.add_argument("--out", required=True, help="checkpoint directory, rewritten after every epoch")
    p.add_argument("--field", default="text", help="the text field of .jsonl/.csv/.tsv/.parquet rows")
    p.add_argument("--dev", default=None,
                   help="held-out documents (default: the first --validation-split of the corpus)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=None, help="block size in tokens (default: the model's limit)")
    p.add_argument("--mlm-probability", type=float, default=0.15)
    p.add_argument("--whole-word-mask", action="store_true", help="mask whole words, all their pieces at once")
    p.add_argument("--validation-split", type=float, default=0.05,
                   help="share of the documents held out without --dev (widened to one block at least; 0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--patience", type=int, default=None,
                   help="stop when the held-out loss has not fallen for N epochs; --out keeps the best epoch")
    p.add_argument("--dataset", action="append", default=None, metavar="NAME",
                   help="a hub dataset id the corpus comes from, for the model card (README.md); repeatable")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (same arguments)")
    p.set_defaults(run=cmd_pretrain)


def add_commands(sub):
    for add in (add_fill_mask, add_pretrain):     # in this order in `minibert --help`
        add(sub)

