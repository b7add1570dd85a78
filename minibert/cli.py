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
    for key, value in vars(c).items():
        print(f"  {key:<26}{value}")
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
    from .parity import compare
    model = minibert.load(args.model, backend=args.backend, dtype=args.dtype)
    texts = args.text or DEMO_TEXTS
    rows = compare(model, texts)
    print(f"minibert ({args.backend}, {args.dtype}) vs transformers on {len(texts)} text(s)")
    print(f"{'tensor':<14}{'max abs':>12}{'mean abs':>12}{'min cos':>14}")
    worst = 0.0
    for name, stats in rows:
        worst = max(worst, stats["max_abs"])
        flag = "" if stats["max_abs"] <= args.tolerance else "  <-- above tolerance"
        print(f"{name:<14}{stats['max_abs']:>12.3e}{stats['mean_abs']:>12.3e}{stats['min_cos']:>14.10f}{flag}")
    if args.json:
        print(json.dumps({name: stats for name, stats in rows}))
    if worst > args.tolerance:
        raise MiniBertError(f"parity failed: max abs difference {worst:.3e} exceeds tolerance {args.tolerance:.1e}")
    print(f"OK: every tensor within {args.tolerance:.1e}")


def build_parser():
    parser = argparse.ArgumentParser(prog="minibert", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="embed a few sentences and print per-layer shapes and similarities",
                       epilog="example: minibert demo")
    p.add_argument("--model", default=None, help="model directory or hub id (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--backend", default="cpu", choices=["numpy", "cpu"])
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("inspect", help="print config, parameters per block and tokenizer",
                       epilog="example: minibert inspect path/to/model --check")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--check", action="store_true", help="also check every weight is finite")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("parity", help="per-layer differences against transformers (needs the reference extra)",
                       epilog="example: minibert parity --text 'Hello world' --dtype float64 --tolerance 1e-10")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--text", action="append", help="a text to compare on (repeatable)")
    p.add_argument("--backend", default="cpu", choices=["numpy", "cpu"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--tolerance", type=float, default=None, help="max abs difference allowed "
                   "(default 1e-4 for float32, 1e-10 for float64)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_parity)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
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
