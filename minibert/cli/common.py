"""What the commands share: the model and encoding options, the recipe default's help text, argparse types,
checks on output files made before any work, JSON on standard output, texts from the arguments or stdin."""

import argparse
import contextlib
import json
import math
import os
import shlex
from pathlib import Path

from ..backends import BACKENDS
from ..embed.pooling import CLI_POOLINGS
from ..errors import MiniBertError

DEMO_TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]
POOLINGS = CLI_POOLINGS                  # the pooling registry's (minibert/embed/pooling.py)
RECIPE_DEFAULT = "default: the model's recipe (sentence-transformers' pooling; mean for a plain checkpoint)"


def add_model_arguments(p, model_help="model directory or hub id (default: bundled all-MiniLM-L6-v2)"):
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--backend", default="cpu", choices=BACKENDS)


def add_encoding_arguments(p):
    add_model_arguments(p)
    p.add_argument("--layers", default="-1", help="'all', an int (0 = embeddings, -1 = last) or e.g. -4,-3,-2,-1")
    p.add_argument("--combine", default=None, choices=["mean", "sum", "concat"])
    p.add_argument("--pooling", default=None, choices=POOLINGS + ["none"],
                   help=f"none: token vectors; {RECIPE_DEFAULT}")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise the final vectors (--no-normalize: never); default: the model's recipe "
                        "(normalised when it lists sentence-transformers' Normalize; not for a plain checkpoint)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help="at most this many texts a forward batch (default: batches are bounded by tokens, "
                        "2,048 a batch, texts end to end without padding)")
    p.add_argument("--max-length", type=int_at_least(2), default=None,
                   help="cut texts to this many tokens, special tokens included (default: the model's maximum)")
    p.add_argument("--window", type=int_at_least(8), default=None,
                   help="cover long texts with windows of this many tokens")
    p.add_argument("--stride", type=int_at_least(0), default=None, help="overlap between windows, in tokens")


def int_at_least(low):
    """An argparse type: an int >= low (argparse then reports a bad value as a one-line usage error)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes an int, found {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, found {value}")
        return value
    parse.__name__ = f"int >= {low}"
    return parse


def parse_layers(text):
    """--layers: "all", "-1", or a comma list such as "-4,-3,-2,-1"."""
    if text == "all":
        return "all"
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise MiniBertError(f"--layers takes 'all', an int or a comma list of ints, found {text!r}") from None
    return values[0] if len(values) == 1 else values


def refuse_dense_flags(args, *extra):
    """--sparse: the encoding flags that shape dense vectors (and `extra` (flag, given) pairs) refused by name."""
    dense = [flag for flag, given in (("--layers", args.layers != "-1"), ("--combine", args.combine),
                                      ("--pooling", args.pooling), ("--normalize", args.normalize is not None),
                                      ("--window", args.window), ("--stride", args.stride), *extra) if given]
    if dense:
        raise MiniBertError(f"--sparse gives one SPLADE vector per text from the masked-LM head; {', '.join(dense)} "
                            "shape dense vectors: leave them out")


def check_lengths(args, model=None):
    """--max-length, --window and --stride, against the model when it is given, before any text is encoded."""
    limit = model.tokenizer.max_length if model is not None else math.inf
    if args.max_length is not None and args.window is not None:
        raise MiniBertError("--max-length cuts each text and --window covers each text whole: pass one of them")
    if args.max_length is not None and not 2 <= args.max_length <= limit:
        raise MiniBertError(f"--max-length must be between 2 (the special tokens) and the model's {limit} "
                            f"positions, found {args.max_length}; use --window for longer texts")
    if args.window is not None and not 8 <= args.window <= limit:
        raise MiniBertError(f"--window must be between 8 and the model's {limit} positions, found {args.window}")
    if args.stride is not None:
        if args.window is None:
            raise MiniBertError("--stride is the overlap between windows: pass --window too")
        if args.stride > args.window // 2:
            raise MiniBertError(f"--stride (the overlap between windows) must be at most --window // 2 = "
                                f"{args.window // 2}, found {args.stride}")


def encoding_options(args):
    return {"layers": parse_layers(args.layers), "combine": args.combine, "pooling": args.pooling,
            "normalize": args.normalize, "batch_size": args.batch_size, "max_length": args.max_length,
            "window": args.window, "stride": args.stride}


def check_writable(path, flag):
    """An output file's folder exists and can be written, checked before any work (the write itself may
    still fail, e.g. on a full disk: main() reports that in one line too)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise MiniBertError(f"{flag} {path} is a directory; give a file name")
    if not folder.is_dir():
        raise MiniBertError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise MiniBertError(f"{flag} {path}: permission denied; choose a writable place")


@contextlib.contextmanager
def writing(path, flag):
    """An OSError while writing an output file becomes one line naming the option and the file."""
    try:
        yield
    except OSError as e:
        raise MiniBertError(f"{flag} {path}: cannot write ({e.strerror or e})") from None


def print_json(value):
    """--json: one document on standard output (what is printed beside it goes to stderr)."""
    print(json.dumps(value))


def field_for(path, field):
    """--field (default "text"); refused for a .txt file or standard input, whose lines are the texts: a .jsonl
    saved as .txt was embedded as raw JSON, its field unread."""
    tabular = path != "-" and Path(path).suffix.lower() in (".jsonl", ".csv", ".tsv", ".parquet")
    if field is not None and not tabular:
        where = "standard input" if path == "-" else f"{path} (read as .txt: a text per line)"
        raise MiniBertError(f"--field {field} names a JSON field or a column, but {where} has none; rename a "
                            "JSON Lines file to .jsonl (a CSV to .csv, .tsv), or leave --field out")
    return "text" if field is None else field


def texts_from_arguments(texts):
    """TEXT... as given, or one text per line of standard input for a lone `-` (an empty stdin is an error)."""
    if "-" in texts and len(texts) > 1:      # it was embedded as the text "-", standard input unread
        raise MiniBertError(f"- reads the texts from standard input and must be the only text, found {len(texts)} "
                            "texts with it; put every text on standard input, or none there")
    if texts != ["-"]:
        return texts
    from ..corpus.readers import read_texts, some_texts
    return some_texts(read_texts("-"), "-")


def interrupted_training(args, finished, use):
    """The KeyboardInterrupt message of finetune and pretrain. Resumable only from this run's own state: one
    this command wrote (an epoch finished), or the one it resumed from; a new run into an --out holding an
    older run's state has neither (--resume would be refused). use: how to use the saved model."""
    from ..train.state import STATE_FILE
    if finished or (args.resume and (Path(args.out) / STATE_FILE).is_file()):
        which = "the best finished epoch's" if args.patience is not None else "the last finished epoch's"
        return (f"{args.out} holds {which} model ({use} uses it); run the same command with --resume to continue "
                "after the last finished epoch")
    return "no epoch had finished; nothing saved" + (f" ({args.out} is as it was)" if Path(args.out).exists() else "")


def spelled_out(command, positionals, args, flags):
    """`minibert COMMAND POSITIONALS --flag value ...` with every flag's value in args (defaults too; a repeated
    flag once per value, a switch when on), shell-quoted: the line that reproduces a run, for its model card."""
    words = ["minibert", command, *positionals]
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        for one in value if isinstance(value, list) else [value]:
            if one is True:
                words.append(flag)
            elif one is not None and one is not False:
                words += [flag, str(one)]
    return shlex.join(words)
