"""The `rerank` command: order passages by a cross-encoder's score for a query, `add_rerank(sub)` beside
`cmd_rerank(args)`; `add_commands(sub)` adds it to minibert's command parser (a group of cli.GROUPS).

    minibert rerank QUERY FILE --model DIR [--top-k N] [--json] [--batch-size B] [--max-length L]

FILE holds one passage per line (blank lines skipped, `-` reads standard input). Output: one line per passage,
best first, "rank  score  line  passage"; --json: a list of {"rank", "corpus_id", "line", "score", "text"} with
corpus_id counted from 0 over the passages (as sentence-transformers' rank) and line the FILE line (from 1).
"""

import json

from ..errors import InputError
from .common import int_at_least


def read_passages(path):
    """(passages, their line numbers) from a file or standard input ('-'), one passage per non-blank line."""
    from ..corpus.readers import read_lines
    rows = [(n, line) for n, line in read_lines(path, "passage file") if line.strip()]
    if not rows:
        raise InputError(f"{'standard input' if path == '-' else path}: no passages (one per line) to rerank")
    return [text for _, text in rows], [n for n, _ in rows]


def cmd_rerank(args):
    from ..train.crossencoder import load_cross_encoder
    try:
        args.query.encode("utf-8")
    except UnicodeEncodeError as e:              # bytes the locale could not decode: Python keeps them as surrogates
        raise InputError(f"the query is not valid UTF-8 text (character {e.start} is an undecodable byte); pass "
                         "it UTF-8 encoded") from None
    passages, lines = read_passages(args.file)
    model = load_cross_encoder(args.model, max_length=args.max_length)
    if model.num_labels != 1:             # rank's own refusal points to a Python method, not to a command
        raise InputError(f"{args.model}: rerank needs a cross-encoder with one output (a score); this one has "
                         f"{model.num_labels} labels {model.classifier.labels}: score the pairs with "
                         f"minibert predict {args.model} PAIRS.jsonl --pair-col COLUMN")
    ranked = model.rank(args.query, passages, top_k=args.top_k, return_documents=True, batch_size=args.batch_size)
    if args.json:
        print(json.dumps([{"rank": rank, "corpus_id": r["corpus_id"], "line": lines[r["corpus_id"]],
                           "score": r["score"], "text": r["text"]} for rank, r in enumerate(ranked, 1)]))
        return
    for rank, r in enumerate(ranked, 1):
        print(f"{rank:>4}  {r['score']:.6f}  line {lines[r['corpus_id']]:<5}  {r['text']}")


def add_rerank(sub):
    p = sub.add_parser("rerank", help="order passages by a cross-encoder's score for a query",
                       description="Score (QUERY, passage) pairs with a cross-encoder (a sequence-classification "
                       "directory with one output, e.g. one saved by sentence-transformers' CrossEncoder) and "
                       "print the passages best first.")
    p.add_argument("query")
    p.add_argument("file", help="one passage per line; - reads standard input")
    p.add_argument("--model", required=True, help="cross-encoder directory or hub id")
    p.add_argument("--top-k", type=int_at_least(1), default=None, help="print only the best N (default: all)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--max-length", type=int_at_least(3), default=None,
                   help="tokens per (query, passage) pair (default: the model's max_seq_length)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_rerank)


def add_commands(sub):
    add_rerank(sub)
