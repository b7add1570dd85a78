"""The `minibert` command line. Every failure prints one line on stderr (tracebacks with --debug).

Exit codes: 0 done; 1 an error (`minibert: error: ...`); 2 a malformed command line; 130 Ctrl-C; 143 SIGTERM
during extract; 141 when the reader of standard output went away (`minibert ... | head`), silently, as a
Unix tool killed by SIGPIPE.
"""

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import re
import select
import sys
import warnings

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

    from pathlib import Path

    from .weights import used_and_ignored_files
    used, ignored = used_and_ignored_files(Path(model.source), model.recipe.transformer_path, model.tokenizer.files,
                                           model.recipe.files)
    print(f"files used  {', '.join(used)}")
    print(f"ignored     {', '.join(ignored) or '-'}")
    print(f"family      {c.model_type}")
    from .config import SWITCH_FIELDS
    for key, value in vars(c).items():
        if key not in SWITCH_FIELDS:
            print(f"  {key:<32}{value}")
    print("switches")
    for key in SWITCH_FIELDS:
        print(f"  {key:<32}{getattr(c, key)}")
    print(f"  {'max_tokens':<32}{c.max_tokens}")
    print(f"tokenizer   {model.tokenizer.kind}, vocabulary {model.tokenizer.vocab_size}, "
          f"max_length {model.tokenizer.max_length}")
    print("recipe      what encode() does with no options, and where each setting came from")
    for name, value, source in model.recipe.describe():
        print(f"  {name:<26}{value}  <- {source}")
    counts = parameter_counts(model.weights)
    for block, n in counts.items():
        print(f"  {block:<32}{n:>12,}")
    print(f"parameters  {sum(counts.values()):,}")
    if args.check:

        from .weights import non_finite_tensors
        in_file = non_finite_tensors(model.encoder_dir)
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
    if args.grad:                           # the backward pass against torch autograd, float64
        from .grad_parity import grad_report
        print("\n".join(grad_report(model.source, args.task)))
        return
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


def cmd_embed(args):
    import minibert
    if args.texts == ["-"]:
        from .readers import read_texts
        args.texts = read_texts("-")
    model = minibert.load(args.model, backend=args.backend)
    check_lengths(args, model)
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
    if args.out is not None and (args.matrix is None or not args.out.endswith((".npy", ".csv"))):
        raise MiniBertError("--out writes the --matrix result: give --matrix and a FILE ending in .npy or .csv")
    if args.out is not None:
        check_writable(args.out, "--out")
    model = minibert.load(args.model, backend=args.backend)
    args.pooling = args.pooling or model.recipe.pooling
    if args.matrix is not None:
        from .readers import read_texts
        from .pooling import resolve_layers
        from .search import format_matrix, similarity_matrix
        texts = read_texts(args.matrix, args.field)
        [chosen] = resolve_layers(args.layer, model.config.num_hidden_layers)
        layer = layer_label(chosen)
        if head_label(model) and chosen == model.config.num_hidden_layers:     # encode adds the head there
            layer += f" + {head_label(model)}"
        matrix = similarity_matrix(model, texts, layer=args.layer, pooling=args.pooling)     # [N, N]
        if args.out is not None:
            with writing(args.out, "--out"):
                if args.out.endswith(".npy"):
                    np.save(args.out, matrix)
                else:
                    np.savetxt(args.out, matrix, delimiter=",", fmt="%.6f")
        if args.json:
            print(json.dumps({"layer": layer, "pooling": args.pooling, "texts": texts, "matrix": matrix.tolist()}))
            return
        print(f"cosine similarity, {layer}, {args.pooling} pooling")
        print(format_matrix(texts, matrix))
        return
    vectors = model.encode([args.text_a, args.text_b], layers="all", pooling=args.pooling, normalize=True)
    cosines = (vectors[0] * vectors[1]).sum(-1)                       # [layers]
    # The layers are the encoder's; a recipe's Dense head makes the model's own sentence vector from the
    # last one, which --matrix compares (and search, embed): shown too, so the two commands agree.
    sentence = None
    if head_label(model):
        a, b = model.encode([args.text_a, args.text_b], pooling=args.pooling, normalize=True)      # [D] each
        sentence = float(a @ b)
    if args.json:
        per_layer = {layer_label(i): float(c) for i, c in enumerate(cosines)}
        found = {"pooling": args.pooling, "layers": per_layer}
        print(json.dumps(found if sentence is None else {**found, "sentence": sentence}))
        return
    print(f"cosine similarity per layer ({args.pooling} pooling)")
    rows = [("embeddings" if i == 0 else f"layer {i}", c) for i, c in enumerate(cosines)]
    for name, c in rows + ([] if sentence is None else [(head_label(model), sentence)]):
        print(f"{name:>10}  {c:+.4f}  {'#' * int(round(max(c, 0) * 40))}")


def head_label(model):
    """The recipe's Dense modules by folder ("2_Dense"), or "" when it has none."""
    return " + ".join(d.path for d in model.recipe.dense)


def cmd_extract(args):
    import minibert
    from .extract import extract
    from .readers import open_corpus
    if args.engine == "local" and (args.address is not None or args.workers is not None):
        raise MiniBertError("--address and --workers are options of --engine ray")
    if args.whiten and not args.reduce:
        raise MiniBertError("--whiten scales the PCA components of --reduce pca:K: pass --reduce too")
    check_output_folder(args.out)
    texts = open_corpus(args.input, args.field)       # streamed: read again chunk by chunk, never held whole
    # The Ray engine loads the model on its workers (the path may exist only there): check what needs no model.
    model = minibert.load(args.model, backend=args.backend) if args.engine == "local" else None
    check_lengths(args, model)
    if args.reduce and model is None:      # the local engine's extract checks --reduce before any work
        check_reduce_rows(args, texts)
    options = {**encoding_options(args), "fmt": args.format, "dtype": args.dtype, "overwrite": args.overwrite,
               "resume": args.resume, "source_file": args.input, "field": args.field, "reduce": args.reduce,
               "whiten": args.whiten, "progress": None if not args.quiet else False}
    if args.engine == "ray":
        from .ray_data import extract as extract_on_ray
        manifest = extract_on_ray(texts, args.out, model=args.model, backend=args.backend, address=args.address,
                                  workers=args.workers, cpus_per_worker=args.cpus_per_worker, **options)
    else:
        manifest = extract(model, texts, args.out, **options)
    print(f"wrote {manifest['count']} texts x {manifest['row_shape']} ({args.format}, {args.dtype}) "
          f"to {args.out}: {', '.join(f for f in manifest['files'] if f not in ('pca.npz', 'reduced.npy'))}")
    if args.reduce:                                    # done by extract, under its lock
        kept = manifest["reduce"]
        print(f"PCA: {kept['k']} components keep {kept['variance_kept']:.1%} of the variance"
              f"{' (whitened)' if kept['whiten'] else ''}: pca.npz, reduced.npy [{kept['rows']}, {kept['k']}]")


def check_reduce_rows(args, texts):
    """--reduce pca:K against the row count, for --engine ray before Ray starts (the driver's own checks
    come later). Pooled rows only: token rows outnumber texts, so K < texts is all that is known."""
    from .reduce import check_k, parse_reduce
    if args.pooling != "none":
        check_k(parse_reduce(args.reduce), len(texts), math.inf)


def layer_label(layer):
    return "embeddings" if layer == 0 else f"layer {layer}"


def cmd_probe(args):
    from pathlib import Path

    import minibert
    from . import probe
    token_level = args.conll or str(args.data).lower().endswith(".conll")
    if args.plot and Path(args.data).resolve() in (Path(args.plot).resolve(),
                                                   Path(args.plot).with_suffix(".csv").resolve()):
        raise MiniBertError(f"--plot {args.plot} would overwrite the data file {args.data}; choose another name")
    if args.plot:
        check_writable(args.plot, "--plot")
    options = {"layers": parse_layers(args.layers), "folds": args.folds, "l2": args.l2, "seed": args.seed,
               "batch_size": args.batch_size}
    # The data and every option that needs no model are checked before the model is loaded.
    if token_level:
        sentences, tags = probe.read_conll(args.data)
        probe.token_probe_folds(tags, folds=args.folds, l2=args.l2, seed=args.seed)
    else:
        texts, labels = probe.read_labelled(args.data, args.text_col, args.label_col)
        probe.sentence_probe_folds(labels, folds=args.folds, l2=args.l2, seed=args.seed)
    model = minibert.load(args.model, backend=args.backend)
    # stdout carries the JSON alone with --json; what would be printed beside it goes to stderr.
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if token_level:
        result = probe.probe_tokens(model, sentences, tags, subword=args.subword, **options)
        say(f"token probe: {len(sentences)} sentences, {result.examples} words, {len(result.classes)} tags, "
            f"{args.folds}-fold CV by sentence, subword {args.subword}")
    else:
        pooling = args.pooling or model.recipe.pooling
        result = probe.probe_sentences(model, texts, labels, pooling=pooling, **options)
        say(f"sentence probe: {result.examples} texts, {len(result.classes)} classes, {args.folds}-fold CV, "
            f"{pooling} pooling")
    if not args.json:
        print(probe.format_table(result))
    for note in result.notes:
        say(f"note: {note}")
    written = None
    if args.plot:
        with writing(args.plot, "--plot"):
            written = probe.write_plot(result, args.plot)
        say(f"plot: {written}" if str(written).endswith(".png") else
            "matplotlib is not installed (pip install 'minibert-numpy[plot]'), so no PNG: "
            f"wrote the table to {written}")
    if args.json:
        print(json.dumps({**dataclasses.asdict(result), "f1_name": result.f1_name, "best_layer": result.best.layer,
                          "subword": args.subword if token_level else None,
                          "pooling": None if token_level else pooling,
                          "plot": None if written is None else str(written)}))


def cmd_search(args):
    import minibert
    from .search import Index, format_hits
    index = Index(args.index, layer=args.layer, reduced=args.reduced, texts_file=args.texts, field=args.field)
    model = minibert.load(args.model, backend=args.backend) if args.model else index.load_model(backend=args.backend)
    results = index.search(model, args.queries, args.k)
    missing = (f"texts not found: {index.manifest.get('input')} is gone or changed; pass --texts FILE to show them"
               if index.texts is None else None)
    if args.json:
        print(json.dumps([{"query": query, "hits": [{"rank": rank, **dataclasses.asdict(hit)}
                                                    for rank, hit in enumerate(hits, 1)]}
                          for query, hits in zip(args.queries, results)]))
        if missing:
            print(f"minibert search: {missing}", file=sys.stderr)
        return
    for query, hits in zip(args.queries, results):
        print(format_hits(query, hits))
    if missing:
        print(f"({missing})")


def cmd_attention(args):
    import minibert
    from . import attention_view
    if not (args.html or args.json):
        raise MiniBertError("attention writes --html FILE and/or --json FILE")
    for path, flag in ((args.html, "--html"), (args.json, "--json")):
        if path:
            check_writable(path, flag)
    model = minibert.load(args.model, backend=args.backend)
    data = attention_view.attention_data(model, args.text, args.pair)
    if args.html:
        with writing(args.html, "--html"):
            attention_view.write_html(data, args.html)
    if args.json:
        with writing(args.json, "--json"):
            attention_view.write_json(data, args.json)
    print(attention_view.summary_table(data))
    print(f"wrote {' and '.join(p for p in (args.html, args.json) if p)}")


def check_writable(path, flag):
    """An output file's folder exists and can be written, checked before any work (the write itself may
    still fail, e.g. on a full disk: main() reports that in one line too)."""
    from pathlib import Path
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise MiniBertError(f"{flag} {path} is a directory; give a file name")
    if not folder.is_dir():
        raise MiniBertError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise MiniBertError(f"{flag} {path}: permission denied; choose a writable place")


def check_output_folder(out):
    """--out is created with its parents: the nearest existing one must be a writable folder."""
    from pathlib import Path
    existing = Path(out).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise MiniBertError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MiniBertError(f"--out {out}: cannot write in {existing} (permission denied); choose another --out")


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


@contextlib.contextmanager
def writing(path, flag):
    """An OSError while writing an output file becomes one line naming the option and the file."""
    try:
        yield
    except OSError as e:
        raise MiniBertError(f"{flag} {path}: cannot write ({e.strerror or e})") from None


def add_model_arguments(p, model_help="model directory or hub id (default: bundled all-MiniLM-L6-v2)"):
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--backend", default="cpu", choices=BACKENDS)


POOLINGS = ["cls", "mean", "max", "mean_sqrt_len", "weightedmean", "lasttoken"]
RECIPE_DEFAULT = "default: the model's recipe (sentence-transformers' pooling; mean for a plain checkpoint)"


def add_encoding_arguments(p):
    add_model_arguments(p)
    p.add_argument("--layers", default="-1", help="'all', an int (0 = embeddings, -1 = last) or e.g. -4,-3,-2,-1")
    p.add_argument("--combine", default=None, choices=["mean", "sum", "concat"])
    p.add_argument("--pooling", default=None, choices=POOLINGS + ["none"],
                   help=f"none: token vectors; {RECIPE_DEFAULT}")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise the final vectors (--no-normalize: never); default: the model's recipe "
                        "(normalised when it lists sentence-transformers' Normalize; not for a plain checkpoint)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--max-length", type=int_at_least(2), default=None,
                   help="cut texts to this many tokens, special tokens included (default: the model's maximum)")
    p.add_argument("--window", type=int_at_least(8), default=None,
                   help="cover long texts with windows of this many tokens")
    p.add_argument("--stride", type=int_at_least(0), default=None, help="overlap between windows, in tokens")


def package_version():
    from . import __version__
    return __version__


def build_parser():
    parser = Parser(prog="minibert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"minibert {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="embed a few sentences and print per-layer shapes and similarities",
                       epilog="example: minibert demo")
    add_model_arguments(p)
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("embed", help="print the vectors of a few texts",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert embed 'A cat.' 'A dog.'\n"
                              "  minibert embed 'A cat.' --layers -4,-3,-2,-1 --combine concat --json")
    p.add_argument("texts", nargs="+", help="texts, or - to read one text per line from standard input")
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
                   help="print the similarity matrix of the texts in FILE "
                        "(.txt a line each, .jsonl/.csv/.tsv with --field)")
    p.add_argument("--field", default="text", help="JSON field or CSV/TSV column holding the text (with --matrix)")
    p.add_argument("--layer", type=int, default=-1, help="layer for --matrix (0 = embeddings, -1 = last)")
    add_model_arguments(p)
    p.add_argument("--pooling", default=None, choices=POOLINGS, help=RECIPE_DEFAULT)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--out", default=None, help="with --matrix: also write the matrix to FILE (.npy or .csv)")
    p.set_defaults(run=cmd_similarity)

    p = sub.add_parser("extract", help="embed a corpus into files, batch by batch",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert extract corpus.txt --out vecs --layers all\n"
                              "  minibert extract data.jsonl --field body --out vecs --format safetensors"
                              " --dtype float16\n"
                              "  cat corpus.txt | minibert extract - --out vecs --pooling none\n"
                              "  minibert extract corpus.txt --out vecs --layers all --resume"
                              "   # after an interruption\n"
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
    p.add_argument("--workers", type=int_at_least(1), default=None,
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
    p.add_argument("--pooling", default=None, choices=POOLINGS, help=RECIPE_DEFAULT)
    p.add_argument("--subword", default="first", choices=["first", "last", "mean", "first_last"],
                   help="token probe: how a word's WordPiece vectors become one")
    p.add_argument("--folds", type=int_at_least(2), default=5)
    p.add_argument("--l2", type=float, default=1e-2, help="L2 strength on the weights, >= 0 "
                   "(mean loss + l2/2 |W|^2)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="shuffles the folds")
    p.add_argument("--plot", default="probe.png", help="PNG of the scores per layer (a CSV without matplotlib); "
                                                       "'' for none")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--json", action="store_true", help="machine-readable output: the scores per layer")
    add_model_arguments(p)
    p.set_defaults(run=cmd_probe)

    p = sub.add_parser("search", help="cosine top-k over a `minibert extract` directory",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert search vecs 'a cheap flight to Rome' -k 5\n"
                              "  minibert search vecs 'query one' 'query two' --layer 4 --texts corpus.txt")
    p.add_argument("index", help="directory written by minibert extract (pooled vectors)")
    p.add_argument("queries", nargs="+")
    p.add_argument("-k", type=int_at_least(1), default=10, help="hits per query")
    p.add_argument("--layer", type=int, default=None, help="which extracted layer to search when several were kept")
    p.add_argument("--reduced", action="store_true", help="search the PCA-reduced vectors (extract --reduce)")
    p.add_argument("--texts", default=None, help="the input file, when it has moved since the extraction")
    p.add_argument("--field", default=None, help="JSON field or CSV/TSV column of the texts (default: text)")
    p.add_argument("--json", action="store_true", help="machine-readable output: per query, its hits")
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
    p.add_argument("--grad", action="store_true", help="compare the fine-tuning gradients of every parameter "
                   "with torch autograd (float64) and print the worst per block")
    p.add_argument("--task", choices=["sequence", "token"], default="sequence", help="the head --grad puts on top")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_parity)

    from .finetune_cli import add_commands      # finetune, predict
    add_commands(sub)
    from .rerank_cli import add_rerank          # rerank
    add_rerank(sub)
    for command in sub.choices.values():        # global flags work after the command too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
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


# API parameter names in warnings, as the flags that set them (`window=` -> `--window`).
FLAGS = {"max_length": "--max-length", "window": "--window", "stride": "--stride", "batch_size": "--batch-size",
         "layers": "--layers", "combine": "--combine", "pooling": "--pooling", "l2": "--l2", "folds": "--folds"}


def cli_terms(message):
    """A warning or error message as the command line's user needs it: flags for API parameters, one line."""
    message = re.sub(r"^minibert( \w+)?: ", "", " ".join(str(message).split()))
    return re.sub(r"\b(" + "|".join(FLAGS) + r")=", lambda m: FLAGS[m.group(1)], message)


def show_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning for the command line: `minibert: warning: ...`, no Python source line."""
    print(f"minibert: warning: {cli_terms(message)}", file=sys.stderr if file is None else file)


def stdout_is_closed_pipe():
    """True when standard output is a pipe whose reader has gone (`minibert ... | head` after head exits)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))   # Linux: ERR, BSD: HUP
    except (AttributeError, OSError, ValueError):     # no real file descriptor (e.g. captured by a test)
        return False


def error_line(e):
    """One line for an error the commands did not turn into a MiniBertError (a file that cannot be written,
    bytes that are not UTF-8, a malformed CSV): what failed, where."""
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    if isinstance(e, UnicodeDecodeError):
        return f"not valid UTF-8 ({e.reason} at byte {e.start} of a block read); save the input as UTF-8"
    if isinstance(e, csv.Error):
        return f"cannot read the CSV/TSV input ({e})"
    return f"{type(e).__name__}: {e}"


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """A malformed command line: one line on stderr, exit 2 (argparse's code), pointing at --help."""
        self.exit(2, f"minibert: error: {message} (see {self.prog} --help)\n")


def main(argv=None):
    with warnings.catch_warnings():                    # restores showwarning when main() returns
        warnings.showwarning = show_warning
        return run_command(argv)


def run_command(argv):
    debug = False
    try:
        args = build_parser().parse_args(join_negative_values(sys.argv[1:] if argv is None else list(argv)))
        debug = args.debug
        if getattr(args, "tolerance", 0) is None:
            args.tolerance = 1e-10 if args.dtype == "float64" else 1e-4
        args.run(args)
        sys.stdout.flush()                             # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError as e:
        if not stdout_is_closed_pipe():
            return report(e, debug)
        # Nobody reads any more: send what is left in the buffer nowhere, and exit as a tool killed by SIGPIPE.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (MiniBertError, OSError, UnicodeError, csv.Error) as e:
        return report(e, debug)
    except KeyboardInterrupt as e:                     # Ctrl-C, or SIGTERM during extract (Terminated)
        terminated = type(e).__name__ == "Terminated"
        print(f"minibert: {'terminated' if terminated else 'interrupted'}{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 143 if terminated else 130
    return 0


def report(e, debug):
    if debug:
        raise e
    message = e if isinstance(e, MiniBertError) else error_line(e)
    print(f"minibert: error: {cli_terms(message)}", file=sys.stderr)       # one line, whatever it quotes
    return 1


if __name__ == "__main__":
    sys.exit(main())
