"""The `minibert` command line. Errors print one line on stderr and exit non-zero (tracebacks with --debug)."""

import argparse
import json
import sys

import numpy as np

from .errors import MiniBertError

DEMO_TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]


def cmd_demo(args):
    """Embed a few sentences with the default model, print every layer's shape and the similarities."""
    import minibert
    model = minibert.load(args.model, backend=args.backend)
    print(model)
    out = model(DEMO_TEXTS)
    for i, h in enumerate(out.hidden_states):
        print(f"hidden_states[{i}] {'embeddings' if i == 0 else f'layer {i}':>10}  shape {h.shape}")
    print(f"pooler_output               shape {out.pooler_output.shape if out.pooler_output is not None else None}")
    mask = out.attention_mask[..., None]
    vecs = (out.last_hidden_state * mask).sum(1) / mask.sum(1)          # mean over real tokens
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    sims = vecs @ vecs.T
    for i in range(len(DEMO_TEXTS)):
        for j in range(i + 1, len(DEMO_TEXTS)):
            print(f"cosine {sims[i, j]:+.4f}  {DEMO_TEXTS[i]!r} ~ {DEMO_TEXTS[j]!r}")


def cmd_inspect(args):
    import minibert
    from .weights import parameter_counts
    model = minibert.load(args.model, backend="numpy")
    c = model.config
    print(f"source      {model.source}")
    print(f"family      {c.model_type}")
    from .config import SWITCH_FIELDS
    for key, value in vars(c).items():
        if key not in SWITCH_FIELDS:
            print(f"  {key:<26}{value}")
    print("switches")
    for key in SWITCH_FIELDS:
        print(f"  {key:<26}{getattr(c, key)}")
    print(f"  {'max_tokens':<26}{c.max_tokens}")
    print(f"tokenizer   {model.tokenizer.kind}, vocabulary {model.tokenizer.vocab_size}, "
          f"max_length {model.tokenizer.max_length}")
    counts = parameter_counts(model.weights)
    for block, n in counts.items():
        print(f"  {block:<26}{n:>12,}")
    print(f"parameters  {sum(counts.values()):,}")
    if args.check:
        bad = [name for name, array in flatten(model.weights) if not np.isfinite(array).all()]
        if bad:
            raise MiniBertError(f"non-finite values (NaN/Inf) in {len(bad)} tensor(s): {', '.join(bad)}")
        print("check       all weights finite")


def flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from flatten(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from flatten(value, f"{prefix}{i}.")
    elif tree is not None:
        yield prefix[:-1], tree


def cmd_parity(args):
    import minibert
    from .parity import compare, compare_ops
    model = minibert.load(args.model, backend=args.backend, dtype=args.dtype)
    texts = args.text or DEMO_TEXTS
    rows = (compare_ops if args.ops else compare)(model, texts)
    print(f"minibert ({args.backend}, {args.dtype}) vs transformers on {len(texts)} text(s)")
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'tensor':<{width}}{'max abs':>12}{'mean abs':>12}{'min cos':>14}")
    first_bad = None
    for name, stats in rows:
        bad = stats["max_abs"] > args.tolerance
        first_bad = first_bad or (name if bad else None)
        flag = "  <-- above tolerance" if bad else ""
        print(f"{name:<{width}}{stats['max_abs']:>12.3e}{stats['mean_abs']:>12.3e}{stats['min_cos']:>14.10f}{flag}")
    if args.json:
        print(json.dumps({name: stats for name, stats in rows}))
    if first_bad:
        worst = max(stats["max_abs"] for _, stats in rows)
        raise MiniBertError(f"parity failed: max abs difference {worst:.3e} exceeds tolerance {args.tolerance:.1e}; "
                            f"first operation above it: {first_bad}")
    print(f"OK: every tensor within {args.tolerance:.1e}")


def parse_layers(text):
    """--layers: "all", "-1", or a comma list such as "-4,-3,-2,-1"."""
    if text == "all":
        return "all"
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise MiniBertError(f"--layers takes 'all', an int or a comma list of ints, found {text!r}") from None
    return values[0] if len(values) == 1 else values


def encoding_options(args):
    return {"layers": parse_layers(args.layers), "combine": args.combine, "pooling": args.pooling,
            "normalize": args.normalize, "batch_size": args.batch_size, "max_length": args.max_length,
            "window": args.window, "stride": args.stride}


def cmd_embed(args):
    import minibert
    model = minibert.load(args.model, backend=args.backend)
    vectors = model.encode(args.texts, **encoding_options(args), dtype="float32")
    if args.json:
        rows = vectors if isinstance(vectors, list) else list(vectors)
        print(json.dumps([{"text": t, "shape": list(v.shape), "vector": v.tolist()} for t, v in zip(args.texts, rows)]))
        return
    for text, v in zip(args.texts, vectors):
        head = np.array2string(v.reshape(-1)[:6], precision=4, separator=", ")
        print(f"{text[:40]!r:<44} shape {tuple(v.shape)}  {head[:-1]}, ...]  norm {np.linalg.norm(v):.4f}")


def cmd_similarity(args):
    import minibert
    model = minibert.load(args.model, backend=args.backend)
    vectors = model.encode([args.text_a, args.text_b], layers="all", pooling=args.pooling, normalize=True)
    cosines = (vectors[0] * vectors[1]).sum(-1)                       # [layers]
    print(f"cosine similarity per layer ({args.pooling} pooling)")
    for i, c in enumerate(cosines):
        name = "embeddings" if i == 0 else f"layer {i}"
        print(f"{name:>10}  {c:+.4f}  {'#' * int(round(max(c, 0) * 40))}")


def cmd_extract(args):
    import minibert
    from .extract import extract, read_texts
    texts = read_texts(args.input, args.field)
    model = minibert.load(args.model, backend=args.backend)
    manifest = extract(model, texts, args.out, **encoding_options(args), fmt=args.format, dtype=args.dtype,
                       overwrite=args.overwrite, source_file=args.input, progress=None if not args.quiet else False)
    print(f"wrote {manifest['count']} texts x {manifest['row_shape']} ({args.format}, {args.dtype}) "
          f"to {args.out}: {', '.join(manifest['files'])}")


def add_encoding_arguments(p, pooling="mean"):
    p.add_argument("--model", default=None, help="model directory or hub id (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--backend", default="cpu", choices=["numpy", "cpu", "cuda"])
    p.add_argument("--layers", default="-1", help="'all', an int (0 = embeddings, -1 = last) or e.g. -4,-3,-2,-1")
    p.add_argument("--combine", default=None, choices=["mean", "sum", "concat"])
    p.add_argument("--pooling", default=pooling, choices=["cls", "mean", "max", "mean_sqrt_len", "none"])
    p.add_argument("--normalize", action="store_true", help="L2-normalise the final vectors")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--window", type=int, default=None, help="cover long texts with windows of this many tokens")
    p.add_argument("--stride", type=int, default=None, help="overlap between windows, in tokens")


def build_parser():
    parser = argparse.ArgumentParser(prog="minibert", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="embed a few sentences and print per-layer shapes and similarities",
                       epilog="example: minibert demo")
    p.add_argument("--model", default=None, help="model directory or hub id (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--backend", default="cpu", choices=["numpy", "cpu", "cuda"])
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("embed", help="print the vectors of a few texts", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert embed 'A cat.' 'A dog.'\n"
                              "  minibert embed 'A cat.' --layers -4,-3,-2,-1 --combine concat --json")
    p.add_argument("texts", nargs="+")
    add_encoding_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("similarity", help="cosine similarity of two texts at every layer",
                       epilog="example: minibert similarity 'A man plays guitar.' 'Someone plays music.'")
    p.add_argument("text_a")
    p.add_argument("text_b")
    p.add_argument("--model", default=None)
    p.add_argument("--backend", default="cpu", choices=["numpy", "cpu", "cuda"])
    p.add_argument("--pooling", default="mean", choices=["cls", "mean", "max", "mean_sqrt_len"])
    p.set_defaults(run=cmd_similarity)

    p = sub.add_parser("extract", help="embed a corpus into files, batch by batch",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert extract corpus.txt --out vecs --layers all\n"
                              "  minibert extract data.jsonl --field body --out vecs --format safetensors --dtype float16\n"
                              "  cat corpus.txt | minibert extract - --out vecs --pooling none")
    p.add_argument("input", help=".txt (a text per line), .jsonl, .csv, .tsv, or - for standard input")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--field", default="text", help="JSON field or CSV/TSV column holding the text")
    p.add_argument("--format", default="npy", choices=["npy", "npz", "safetensors", "jsonl"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing extraction in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_encoding_arguments(p)
    p.set_defaults(run=cmd_extract)

    p = sub.add_parser("inspect", help="print config, parameters per block and tokenizer",
                       epilog="example: minibert inspect path/to/model --check")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--check", action="store_true", help="also check every weight is finite")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("parity", help="per-layer differences against transformers (needs the reference extra)",
                       epilog="example: minibert parity --text 'Hello world' --dtype float64 --tolerance 1e-10")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--text", action="append", help="a text to compare on (repeatable)")
    p.add_argument("--backend", default="cpu", choices=["numpy", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--tolerance", type=float, default=None, help="max abs difference allowed "
                   "(default 1e-4 for float32, 1e-10 for float64)")
    p.add_argument("--ops", action="store_true", help="compare every internal operation (Q, K, V, softmax, "
                   "GELU, ...) through forward hooks and name the first one above tolerance")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_parity)
    return parser


def join_negative_values(argv):
    """Let `--layers -4,-3,-2,-1` through: argparse would take the value for an option."""
    joined, i = [], 0
    while i < len(argv):
        if argv[i] == "--layers" and i + 1 < len(argv):
            joined.append(f"--layers={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    return joined


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else list(argv)))
    if getattr(args, "tolerance", 0) is None:
        args.tolerance = 1e-10 if args.dtype == "float64" else 1e-4
    try:
        args.run(args)
    except MiniBertError as e:
        if args.debug:
            raise
        print(f"minibert: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("minibert: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
