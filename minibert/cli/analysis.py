"""The commands that look inside one model: attention (every head's weights as an HTML page and/or JSON),
inspect (files, config, recipe, parameters; --check finds NaN/Inf weights) and parity (differences against
transformers, per layer, per operation or per gradient). Each `add_X(sub)` sits beside its `cmd_X(args)`."""

import argparse
from pathlib import Path

import numpy as np

from ..backends import BACKENDS
from ..errors import MiniBertError
from ..tree import leaves
from .common import DEMO_TEXTS, add_model_arguments, check_writable, print_json, writing


def cmd_attention(args):
    import minibert
    from ..analysis import attention_view
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


def add_attention(sub):
    p = sub.add_parser("attention", help="a self-contained HTML page (and/or JSON) of every head's attention",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert attention 'The cat sat on the mat.' --html attention.html\n"
                              "  minibert attention 'Who sat?' --pair 'The cat sat.' --json attention.json")
    p.add_argument("text")
    p.add_argument("--pair", default=None, help="a second text, encoded as a pair")
    p.add_argument("--html", default=None, metavar="FILE", help="write the page (opens offline in any browser)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write the data (format: minibert.analysis.attention_view)")
    add_model_arguments(p)
    p.set_defaults(run=cmd_attention)


def cmd_inspect(args):
    import minibert
    from ..checkpoint.config import SWITCH_FIELDS
    from ..checkpoint.layout import non_finite_tensors, used_and_ignored_files
    from ..checkpoint.weights import parameter_counts
    model = minibert.load(args.model, backend="numpy")
    c = model.config
    print(f"source      {model.source}")
    used, ignored = used_and_ignored_files(Path(model.source), model.recipe.transformer_path, model.tokenizer.files,
                                           model.recipe.files)
    print(f"files used  {', '.join(used)}")
    print(f"ignored     {', '.join(ignored) or '-'}")
    print(f"family      {c.model_type}")
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
        in_file = non_finite_tensors(model.encoder_dir)
        for name, nan, inf, size in in_file:
            print(f"  {name}: {nan:,} NaN, {inf:,} Inf of {size:,} values")
        if in_file:
            raise MiniBertError(f"non-finite values (NaN/Inf) in {len(in_file)} checkpoint tensor(s): "
                                f"{', '.join(name for name, *_ in in_file)}; the checkpoint is damaged or was "
                                "saved after training diverged: use another copy or checkpoint")
        # Finite in the file but not after the cast to float32 (float64 values beyond 3.4e38).
        overflow = [name for name, array in leaves(model.weights) if not np.isfinite(array).all()]
        if overflow:
            raise MiniBertError(f"values too large for float32 in {', '.join(overflow)}; load with dtype='float64'")
        print("check       all weights finite")


def add_inspect(sub):
    p = sub.add_parser("inspect", help="print config, parameters per block and tokenizer",
                       epilog="example: minibert inspect path/to/model --check")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--check", action="store_true", help="also check every weight is finite")
    p.set_defaults(run=cmd_inspect)


def cmd_parity(args):
    import minibert
    from ..analysis.parity import compare, compare_ops
    if args.tolerance is None:
        args.tolerance = 1e-10 if args.dtype == "float64" else 1e-4
    model = minibert.load(args.model, backend=args.backend, dtype=args.dtype)
    if args.grad and args.task == "pretraining":     # the MLM (+ NSP) losses through BERT's own heads
        from ..train.pretrain import grad_report as pretraining_report
        print("\n".join(pretraining_report(model.encoder_dir)))
        return
    if args.grad:                           # the backward pass against torch autograd, float64
        from ..train.grad_parity import grad_report
        print("\n".join(grad_report(model.source, args.task, loss=args.loss)))
        return
    texts = args.text or DEMO_TEXTS
    rows = (compare_ops if args.ops else compare)(model, texts)
    print(f"minibert ({args.backend}, {args.dtype}) vs transformers on {len(texts)} text(s)")
    width = max(len(name) for name, _ in rows) + 2
    # scaled = max abs / max(1, largest |reference value|): float rounding grows with the values (parity.difference)
    print(f"{'tensor':<{width}}{'max abs':>12}{'mean abs':>12}{'|ref| max':>12}{'scaled':>12}{'min cos':>14}")
    first_bad = None
    for name, stats in rows:
        bad = stats["scaled"] > args.tolerance
        first_bad = first_bad or (name if bad else None)
        flag = "  <-- above tolerance" if bad else ""
        print(f"{name:<{width}}{stats['max_abs']:>12.3e}{stats['mean_abs']:>12.3e}{stats['reference_max']:>12.3e}"
              f"{stats['scaled']:>12.3e}{stats['min_cos']:>14.10f}{flag}")
    if args.json:
        print_json({name: stats for name, stats in rows})
    if first_bad:
        worst = max(stats["scaled"] for _, stats in rows)
        raise MiniBertError(f"parity failed: scaled difference {worst:.3e} (max abs / max(1, |reference| max)) "
                            f"exceeds tolerance {args.tolerance:.1e}; first operation above it: {first_bad}")
    print(f"OK: every tensor within {args.tolerance:.1e} (max abs, relative to the tensor's largest value where "
          "that is above 1)")


def add_parity(sub):
    p = sub.add_parser("parity", help="per-layer differences against transformers (needs the reference extra)",
                       epilog="example: minibert parity --text 'Hello world' --dtype float64 --tolerance 1e-10")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--text", action="append", help="a text to compare on (repeatable)")
    p.add_argument("--backend", default="cpu", choices=BACKENDS)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--tolerance", type=float, default=None, help="max abs difference allowed, relative to "
                   "the tensor's largest reference value where that is above 1 (default 1e-4 for float32, "
                   "1e-10 for float64)")
    p.add_argument("--ops", action="store_true", help="compare every internal operation (Q, K, V, softmax, "
                   "GELU, ...) through forward hooks and name the first one above tolerance")
    p.add_argument("--grad", action="store_true", help="compare the fine-tuning gradients of every parameter "
                   "with torch autograd (float64) and print the worst per block")
    p.add_argument("--task", choices=["sequence", "token", "regression", "pretraining"], default="sequence",
                   help="the head --grad puts on top (regression: one output); pretraining: the checkpoint's own "
                        "MLM (and NSP/SOP) heads")
    p.add_argument("--loss", choices=["mse", "bce"], default=None, help="--task regression's loss (default mse)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_parity)


def add_commands(sub):
    for add in (add_attention, add_inspect, add_parity):       # in this order in `minibert --help`
        add(sub)
