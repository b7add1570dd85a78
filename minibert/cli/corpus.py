"""The commands that run over a file of texts or an extraction: extract (a corpus into vector files, locally or
on Ray), probe (which layer carries a labelled corpus's labels) and search (cosine top-k over an extraction).
Each `add_X(sub)` sits beside its `cmd_X(args)`."""

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

from ..errors import MiniBertError
from .common import (POOLINGS, RECIPE_DEFAULT, add_encoding_arguments, add_model_arguments, check_lengths,
                     check_writable, encoding_options, field_for, int_at_least, parse_layers, print_json,
                     refuse_dense_flags, writing)


def cmd_extract(args):
    import minibert
    from ..corpus.extract import extract
    from ..corpus.readers import open_corpus, some_texts
    if args.engine == "local" and (args.address is not None or args.workers is not None):
        raise MiniBertError("--address and --workers are options of --engine ray")
    if args.whiten and not args.reduce:
        raise MiniBertError("--whiten scales the PCA components of --reduce pca:K: pass --reduce too")
    if args.sparse:
        check_sparse_flags(args)
    check_output_folder(args.out)
    args.field = field_for(args.input, args.field)
    texts = open_corpus(args.input, args.field)       # streamed: read again chunk by chunk, never held whole
    some_texts(texts, args.input)      # nothing to read is a mistake (as embed - and predict say), not an empty folder
    # The Ray engine loads the model on its workers (the path may exist only there): check what needs no model.
    load = minibert.load_sparse if args.sparse else minibert.load     # load_sparse: a SparseEncoder's settings
    model = load(args.model, backend=args.backend) if args.engine == "local" else None
    check_lengths(args, model)
    if args.reduce and model is None:      # the local engine's extract checks --reduce before any work
        check_reduce_rows(args, texts)
    options = {**encoding_options(args), "fmt": args.format, "dtype": args.dtype, "overwrite": args.overwrite,
               "resume": args.resume, "source_file": args.input, "field": args.field, "reduce": args.reduce,
               "whiten": args.whiten, "progress": None if not args.quiet else False}
    if args.sparse:        # extract refuses the dense options given; these are the defaults of the flags
        options = {**{k: v for k, v in options.items() if k not in ("layers", "whiten")}, "sparse": True}
    if args.engine == "ray":
        from ..corpus.ray_data import extract as extract_on_ray
        manifest = extract_on_ray(texts, args.out, model=args.model, backend=args.backend, address=args.address,
                                  workers=args.workers, cpus_per_worker=args.cpus_per_worker, **options)
    else:
        manifest = extract(model, texts, args.out, **options)
    what = (f"SPLADE vectors over a vocabulary of {manifest['row_shape'][0]}" if args.sparse else
            f"texts x {manifest['row_shape']}")
    print(f"wrote {manifest['count']} {what} ({args.format}, {args.dtype}) "
          f"to {args.out}: {', '.join(f for f in manifest['files'] if f not in ('pca.npz', 'reduced.npy'))}")
    if args.reduce:                                    # done by extract, under its lock
        kept = manifest["reduce"]
        print(f"PCA: {kept['k']} components keep {kept['variance_kept']:.1%} of the variance"
              f"{' (whitened)' if kept['whiten'] else ''}: pca.npz, reduced.npy [{kept['rows']}, {kept['k']}]")


def add_extract(sub):
    p = sub.add_parser("extract", help="embed a corpus into files, batch by batch",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert extract corpus.txt --out vecs --layers all\n"
                              "  minibert extract data.jsonl --field body --out vecs --format safetensors"
                              " --dtype float16\n"
                              "  cat corpus.txt | minibert extract - --out vecs --pooling none\n"
                              "  minibert extract corpus.txt --out vecs --layers all --resume"
                              "   # after an interruption\n"
                              "  minibert extract corpus.parquet --out vecs --engine ray --address auto --workers 8\n"
                              "  minibert extract corpus.txt --out splade --sparse --model SPLADE_DIR")
    p.add_argument("input", help=".txt (a text per line), .jsonl, .csv, .tsv, .parquet, or - for standard input")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--field", default=None, help="JSON field or CSV/TSV/Parquet column holding the text "
                   "(default: text)")
    p.add_argument("--format", default="npy", choices=["npy", "npz", "safetensors", "jsonl"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing extraction in --out")
    p.add_argument("--resume", action="store_true", help="finish an interrupted extraction in --out (same input, "
                   "model and options; checked), continuing from the first row not saved")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--reduce", metavar="pca:K", default=None,
                   help="also fit PCA with K components on the vectors; stores pca.npz and reduced.npy")
    p.add_argument("--whiten", action="store_true", help="with --reduce: scale each component to unit variance")
    p.add_argument("--sparse", action="store_true", help="SPLADE vectors from the masked-LM head (a ...ForMaskedLM "
                   "checkpoint or a SparseEncoder directory), as compressed rows: sparse_indptr.npy, "
                   "sparse_indices.npy, sparse_values.npy (or sparse.jsonl with --format jsonl)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="ray: encode on a Ray cluster's actors (needs `pip install 'minibert-numpy[ray]'`)")
    p.add_argument("--address", default=None, help="with --engine ray: auto, HOST:6379 or ray://HOST:10001 "
                   "(default: start a local Ray cluster on this machine)")
    p.add_argument("--workers", type=int_at_least(1), default=None,
                   help="with --engine ray: actors, each with its own model (default: CPUs // --cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="with --engine ray: CPUs (threads) per actor")
    add_encoding_arguments(p)
    p.set_defaults(run=cmd_extract)


def check_sparse_flags(args):
    """--sparse, before the corpus or the model is read: the flags that shape dense vectors, and the engine
    and formats that have no sparse output, are refused by their names."""
    refuse_dense_flags(args, ("--reduce", args.reduce), ("--whiten", args.whiten))
    if args.format not in ("npy", "jsonl"):
        raise MiniBertError(f"--sparse writes --format npy (sparse_indptr.npy, sparse_indices.npy, sparse_values.npy)"
                            f" or jsonl (sparse.jsonl), not {args.format}")
    if args.engine == "ray":
        from ..corpus.ray_data import refuse_sparse
        refuse_sparse()


def check_reduce_rows(args, texts):
    """--reduce pca:K against the row count, for --engine ray before Ray starts (the driver's own checks
    come later). Pooled rows only: token rows outnumber texts, so K < texts is all that is known."""
    from ..corpus.reduce import check_k, parse_reduce
    if args.pooling != "none":
        check_k(parse_reduce(args.reduce), len(texts), math.inf)


def check_output_folder(out):
    """--out is created with its parents: the nearest existing one must be a writable folder."""
    existing = Path(out).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise MiniBertError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MiniBertError(f"--out {out}: cannot write in {existing} (permission denied); choose another --out")


def cmd_probe(args):
    import minibert
    from ..analysis import probe
    from ..corpus.readers import read_conll, read_labelled
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
        sentences, tags = read_conll(args.data)
        probe.token_probe_folds(tags, folds=args.folds, l2=args.l2, seed=args.seed)
    else:
        texts, labels = read_labelled(args.data, args.text_col, args.label_col)
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
        print_json({**dataclasses.asdict(result), "f1_name": result.f1_name, "best_layer": result.best.layer,
                    "subword": args.subword if token_level else None,
                    "pooling": None if token_level else pooling,
                    "plot": None if written is None else str(written)})


def add_probe(sub):
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
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help="at most this many texts a forward batch (default: batches are bounded by tokens, "
                        "2,048 a batch, texts end to end without padding)")
    p.add_argument("--json", action="store_true", help="machine-readable output: the scores per layer")
    add_model_arguments(p)
    p.set_defaults(run=cmd_probe)


def texts_missing(source):
    """Why the hits show no texts: an extraction made from a list or standard input recorded no file to read."""
    if source is None:
        return "texts not recorded: the extraction was made from a list of texts; pass --texts FILE to show them"
    if source == "-":
        return "texts not recorded: the extraction was made from standard input; pass --texts FILE to show them"
    return f"texts not found: {source} is gone or changed; pass --texts FILE to show them"


def cmd_search(args):
    import minibert
    from ..corpus.search import Index, format_hits
    index = Index(args.index, layer=args.layer, reduced=args.reduced, texts_file=args.texts, field=args.field)
    load = minibert.load_sparse if index.sparse else minibert.load     # load_sparse: a SparseEncoder's settings
    model = load(args.model, backend=args.backend) if args.model else index.load_model(backend=args.backend)
    results = index.search(model, args.queries, args.k)
    missing = None if index.texts is not None else texts_missing(index.manifest.get("input"))
    if args.json:
        print_json([{"query": query, "hits": [{"rank": rank, **dataclasses.asdict(hit)}
                                              for rank, hit in enumerate(hits, 1)]}
                    for query, hits in zip(args.queries, results)])
        if missing:
            print(f"minibert search: {missing}", file=sys.stderr)
        return
    for query, hits in zip(args.queries, results):
        print(format_hits(query, hits))
    if missing:
        print(f"({missing})")


def add_search(sub):
    p = sub.add_parser("search", help="cosine top-k over a `minibert extract` directory (dot product for --sparse)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert search vecs 'a cheap flight to Rome' -k 5\n"
                              "  minibert search vecs 'query one' 'query two' --layer 4 --texts corpus.txt")
    p.add_argument("index", help="directory written by minibert extract (pooled vectors, or SPLADE vectors)")
    p.add_argument("queries", nargs="+")
    p.add_argument("-k", type=int_at_least(1), default=10, help="hits per query")
    p.add_argument("--layer", type=int, default=None, help="which extracted layer to search when several were kept")
    p.add_argument("--reduced", action="store_true", help="search the PCA-reduced vectors (extract --reduce)")
    p.add_argument("--texts", default=None, help="the input file, when it has moved since the extraction")
    p.add_argument("--field", default=None, help="JSON field or CSV/TSV column of the texts (default: text)")
    p.add_argument("--json", action="store_true", help="machine-readable output: per query, its hits")
    add_model_arguments(p, model_help="default: the model recorded in the manifest")
    p.set_defaults(run=cmd_search)


def add_commands(sub):
    for add in (add_extract, add_probe, add_search):       # in this order in `minibert --help`
        add(sub)
