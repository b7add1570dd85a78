"""The `minibert` command line. Errors print one line on stderr and exit non-zero (tracebacks with --debug)."""

import argparse
import json
import sys

import numpy as np

from .backends import BACKENDS
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
        from pathlib import Path

        from .weights import non_finite_tensors
        in_file = non_finite_tensors(Path(model.source))
        for name, nan, inf, size in in_file:
            print(f"  {name}: {nan:,} NaN, {inf:,} Inf of {size:,} values")
        if in_file:
            raise MiniBertError(f"non-finite values (NaN/Inf) in {len(in_file)} checkpoint tensor(s): "
                                f"{', '.join(name for name, *_ in in_file)}; the checkpoint is damaged or was "
                                "saved after training diverged: use another copy or checkpoint")
        # Finite in the file but not after the cast to float32 (float64 values beyond 3.4e38).
        overflow = [name for name, array in flatten(model.weights) if not np.isfinite(array).all()]
        if overflow:
            raise MiniBertError(f"values too large for float32 in {', '.join(overflow)}; load with dtype='float64'")
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
    if (args.matrix is None) == (args.text_b is None):
        raise MiniBertError("similarity takes two texts, or --matrix FILE (a list of texts)")
    model = minibert.load(args.model, backend=args.backend)
    if args.matrix is not None:
        from .extract import read_texts
        from .pooling import resolve_layers
        from .search import format_matrix, similarity_matrix
        texts = read_texts(args.matrix, args.field)
        print(f"cosine similarity, {layer_label(resolve_layers(args.layer, model.config.num_hidden_layers)[0])}, "
              f"{args.pooling} pooling")
        print(format_matrix(texts, similarity_matrix(model, texts, layer=args.layer, pooling=args.pooling)))
        return
    vectors = model.encode([args.text_a, args.text_b], layers="all", pooling=args.pooling, normalize=True)
    cosines = (vectors[0] * vectors[1]).sum(-1)                       # [layers]
    print(f"cosine similarity per layer ({args.pooling} pooling)")
    for i, c in enumerate(cosines):
        name = "embeddings" if i == 0 else f"layer {i}"
        print(f"{name:>10}  {c:+.4f}  {'#' * int(round(max(c, 0) * 40))}")


def cmd_extract(args):
    import minibert
    from .extract import extract, read_texts
    if args.engine == "local" and (args.address is not None or args.workers is not None):
        raise MiniBertError("--address and --workers are options of --engine ray")
    texts = read_texts(args.input, args.field)
    if args.engine == "ray":
        from .ray_data import extract as extract_on_ray
        manifest = extract_on_ray(texts, args.out, model=args.model, backend=args.backend, address=args.address,
                                  workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                                  **encoding_options(args), fmt=args.format, dtype=args.dtype,
                                  overwrite=args.overwrite, resume=args.resume, source_file=args.input,
                                  progress=None if not args.quiet else False)
    else:
        model = minibert.load(args.model, backend=args.backend)
        manifest = extract(model, texts, args.out, **encoding_options(args), fmt=args.format, dtype=args.dtype,
                           overwrite=args.overwrite, resume=args.resume, source_file=args.input,
                           progress=None if not args.quiet else False)
    print(f"wrote {manifest['count']} texts x {manifest['row_shape']} ({args.format}, {args.dtype}) "
          f"to {args.out}: {', '.join(manifest['files'])}")
    if args.reduce:
        from .reduce import reduce_extraction
        kept = reduce_extraction(args.out, args.reduce, whiten=args.whiten)["reduce"]
        print(f"PCA: {kept['k']} components keep {kept['variance_kept']:.1%} of the variance"
              f"{' (whitened)' if kept['whiten'] else ''}: pca.npz, reduced.npy [{kept['rows']}, {kept['k']}]")


def layer_label(layer):
    return "embeddings" if layer == 0 else f"layer {layer}"


def cmd_probe(args):
    from pathlib import Path

    import minibert
    from . import probe
    token_level = args.conll or str(args.data).lower().endswith(".conll")
    if args.plot and Path(args.data).resolve() in (Path(args.plot).resolve(), Path(args.plot).with_suffix(".csv").resolve()):
        raise MiniBertError(f"--plot {args.plot} would overwrite the data file {args.data}; choose another name")
    model = minibert.load(args.model, backend=args.backend)
    options = {"layers": parse_layers(args.layers), "folds": args.folds, "l2": args.l2, "seed": args.seed,
               "batch_size": args.batch_size}
    if token_level:
        sentences, tags = probe.read_conll(args.data)
        result = probe.probe_tokens(model, sentences, tags, subword=args.subword, **options)
        print(f"token probe: {len(sentences)} sentences, {result.examples} words, {len(result.classes)} tags, "
              f"{args.folds}-fold CV by sentence, subword {args.subword}")
    else:
        texts, labels = probe.read_labelled(args.data, args.text_col, args.label_col)
        result = probe.probe_sentences(model, texts, labels, pooling=args.pooling, **options)
        print(f"sentence probe: {result.examples} texts, {len(result.classes)} classes, {args.folds}-fold CV, "
              f"{args.pooling} pooling")
    print(probe.format_table(result))
    for note in result.notes:
        print(f"note: {note}")
    if args.plot:
        written = probe.write_plot(result, args.plot)
        print(f"plot: {written}" if str(written).endswith(".png") else
              f"matplotlib is not installed (pip install 'minibert-numpy[plot]'), so no PNG: wrote the table to {written}")


def cmd_search(args):
    import minibert
    from .search import Index, format_hits
    index = Index(args.index, layer=args.layer, reduced=args.reduced, texts_file=args.texts, field=args.field)
    model = minibert.load(args.model or index.manifest["model_source"], backend=args.backend)
    for query, hits in zip(args.queries, index.search(model, args.queries, args.k)):
        print(format_hits(query, hits))
    if index.texts is None:
        print(f"(texts not found: {index.manifest.get('input')} is gone or changed; pass --texts FILE to show them)")


def cmd_attention(args):
    import minibert
    from . import attention_view
    if not (args.html or args.json):
        raise MiniBertError("attention writes --html FILE and/or --json FILE")
    model = minibert.load(args.model, backend=args.backend)
    data = attention_view.attention_data(model, args.text, args.pair)
    if args.html:
        attention_view.write_html(data, args.html)
    if args.json:
        attention_view.write_json(data, args.json)
    print(attention_view.summary_table(data))
    print(f"wrote {' and '.join(p for p in (args.html, args.json) if p)}")


def add_model_arguments(p, model_help="model directory or hub id (default: bundled all-MiniLM-L6-v2)"):
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--backend", default="cpu", choices=BACKENDS)


def add_encoding_arguments(p, pooling="mean"):
    add_model_arguments(p)
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
    add_model_arguments(p)
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("embed", help="print the vectors of a few texts", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert embed 'A cat.' 'A dog.'\n"
                              "  minibert embed 'A cat.' --layers -4,-3,-2,-1 --combine concat --json")
    p.add_argument("texts", nargs="+")
    add_encoding_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("similarity", help="cosine similarity of two texts at every layer, or a matrix for a list",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert similarity 'A man plays guitar.' 'Someone plays music.'\n"
                              "  minibert similarity --matrix sentences.txt --layer -1")
    p.add_argument("text_a", nargs="?")
    p.add_argument("text_b", nargs="?")
    p.add_argument("--matrix", metavar="FILE", default=None,
                   help="print the similarity matrix of the texts in FILE (.txt a line each, .jsonl/.csv/.tsv with --field)")
    p.add_argument("--field", default="text", help="JSON field or CSV/TSV column holding the text (with --matrix)")
    p.add_argument("--layer", type=int, default=-1, help="layer for --matrix (0 = embeddings, -1 = last)")
    add_model_arguments(p)
    p.add_argument("--pooling", default="mean", choices=["cls", "mean", "max", "mean_sqrt_len"])
    p.set_defaults(run=cmd_similarity)

    p = sub.add_parser("extract", help="embed a corpus into files, batch by batch",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert extract corpus.txt --out vecs --layers all\n"
                              "  minibert extract data.jsonl --field body --out vecs --format safetensors --dtype float16\n"
                              "  cat corpus.txt | minibert extract - --out vecs --pooling none\n"
                              "  minibert extract corpus.txt --out vecs --layers all --resume   # after an interruption\n"
                              "  minibert extract corpus.parquet --out vecs --engine ray --address auto --workers 8")
    p.add_argument("input", help=".txt (a text per line), .jsonl, .csv, .tsv, .parquet, or - for standard input")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--field", default="text", help="JSON field or CSV/TSV/Parquet column holding the text")
    p.add_argument("--format", default="npy", choices=["npy", "npz", "safetensors", "jsonl"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing extraction in --out")
    p.add_argument("--resume", action="store_true", help="finish an interrupted extraction in --out (same input, "
                   "model and options; checked), continuing from the first row not saved")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--reduce", metavar="pca:K", default=None,
                   help="also fit PCA with K components on the vectors; stores pca.npz and reduced.npy")
    p.add_argument("--whiten", action="store_true", help="with --reduce: scale each component to unit variance")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="ray: encode on a Ray cluster's actors (needs `pip install 'minibert-numpy[ray]'`)")
    p.add_argument("--address", default=None, help="with --engine ray: auto, HOST:6379 or ray://HOST:10001 "
                   "(default: start a local Ray cluster on this machine)")
    p.add_argument("--workers", type=int, default=None,
                   help="with --engine ray: actors, each with its own model (default: CPUs // --cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="with --engine ray: CPUs (threads) per actor")
    add_encoding_arguments(p)
    p.set_defaults(run=cmd_extract)

    p = sub.add_parser("probe", help="which layer carries your labels? a linear probe per layer, cross-validated",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert probe reviews.csv --text-col review --label-col sentiment\n"
                              "  minibert probe train.conll --subword first --folds 3")
    p.add_argument("data", help=".csv/.tsv/.jsonl with a text and a label column, or CoNLL token data "
                                "(.conll, or --conll): a token and its label per line, blank line between sentences")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--conll", action="store_true", help="read DATA as CoNLL token data whatever its suffix")
    p.add_argument("--layers", default="all", help="'all', an int, or e.g. 0,2,4,6")
    p.add_argument("--pooling", default="mean", choices=["cls", "mean", "max", "mean_sqrt_len"])
    p.add_argument("--subword", default="first", choices=["first", "last", "mean", "first_last"],
                   help="token probe: how a word's WordPiece vectors become one")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--l2", type=float, default=1e-2, help="L2 strength on the weights (mean loss + l2/2 |W|^2)")
    p.add_argument("--seed", type=int, default=0, help="shuffles the folds")
    p.add_argument("--plot", default="probe.png", help="PNG of the scores per layer (a CSV without matplotlib); "
                                                       "'' for none")
    p.add_argument("--batch-size", type=int, default=32)
    add_model_arguments(p)
    p.set_defaults(run=cmd_probe)

    p = sub.add_parser("search", help="cosine top-k over a `minibert extract` directory",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert search vecs 'a cheap flight to Rome' -k 5\n"
                              "  minibert search vecs 'query one' 'query two' --layer 4 --texts corpus.txt")
    p.add_argument("index", help="directory written by minibert extract (pooled vectors)")
    p.add_argument("queries", nargs="+")
    p.add_argument("-k", type=int, default=10, help="hits per query")
    p.add_argument("--layer", type=int, default=None, help="which extracted layer to search when several were kept")
    p.add_argument("--reduced", action="store_true", help="search the PCA-reduced vectors (extract --reduce)")
    p.add_argument("--texts", default=None, help="the input file, when it has moved since the extraction")
    p.add_argument("--field", default=None, help="JSON field or CSV/TSV column of the texts (default: text)")
    add_model_arguments(p, model_help="default: the model recorded in the manifest")
    p.set_defaults(run=cmd_search)

    p = sub.add_parser("attention", help="a self-contained HTML page (and/or JSON) of every head's attention",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert attention 'The cat sat on the mat.' --html attention.html\n"
                              "  minibert attention 'Who sat?' --pair 'The cat sat.' --json attention.json")
    p.add_argument("text")
    p.add_argument("--pair", default=None, help="a second text, encoded as a pair")
    p.add_argument("--html", default=None, metavar="FILE", help="write the page (opens offline in any browser)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the data (format: minibert.attention_view)")
    add_model_arguments(p)
    p.set_defaults(run=cmd_attention)

    p = sub.add_parser("inspect", help="print config, parameters per block and tokenizer",
                       epilog="example: minibert inspect path/to/model --check")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--check", action="store_true", help="also check every weight is finite")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("parity", help="per-layer differences against transformers (needs the reference extra)",
                       epilog="example: minibert parity --text 'Hello world' --dtype float64 --tolerance 1e-10")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--text", action="append", help="a text to compare on (repeatable)")
    p.add_argument("--backend", default="cpu", choices=BACKENDS)
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
        print(f"minibert: error: {' '.join(str(e).split())}", file=sys.stderr)    # one line, whatever it quotes
        return 1
    except KeyboardInterrupt as e:                     # Ctrl-C, or SIGTERM during extract (Terminated)
        terminated = type(e).__name__ == "Terminated"
        print(f"minibert: {'terminated' if terminated else 'interrupted'}{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 143 if terminated else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
