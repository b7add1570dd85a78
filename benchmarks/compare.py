"""minibert against transformers+torch on the same machine, same thread count.

    python benchmarks/compare.py [--shapes 32x128,8x512,64x16] [--threads 2] [--repeats 7] [--json out.json]
    python benchmarks/compare.py --real-text [--sentences 2000] [--batch-size 32] [--passes 3]
    python benchmarks/compare.py --cold-start [--starts 5] [--python .venv/bin/python]
    python benchmarks/compare.py --rss [--rss-shape 32x128]

Throughput (the default): every run returns all hidden states (transformers: output_hidden_states=True).
Runs alternate between the implementations and a NumPy float32 matmul shaped like the model's largest
(the peak), so machine noise hits all three alike, with a 0.25 s pause before each so that the thread
pools of the previous one (OpenBLAS, torch's OpenMP) have stopped spinning. The table shows medians, the
spread (min-max), the process CPU time of a run (all threads; steadier than wall time when other programs
share the cores), tokens/s, GFLOP/s, the share of the matmul peak (median / median, and best / best) and
the ratio reference / minibert (above 1: minibert is faster). A warm-up run comes first (Numba compiles
or loads its kernels there).

--real-text: a few thousand real English sentences (the docstrings of Python's standard library, split
into sentences: fixed for a given Python version), sorted by length and cut into batches as
sentence-transformers does, then tokenize + forward + masked mean pooling; tokenization included, both
sides truncated to 256 tokens (all-MiniLM-L6-v2's max_seq_length). minibert's forward returns every layer
(it always does); transformers returns only the last. Interleaved passes (0.25 s apart), medians, and the
process CPU time of a pass. Two more rows: "minibert encode" is what a user calls, `model.encode(texts,
pooling="mean")`, which batches by token count (so almost no padding) where sentence-transformers batches
by characters; "transformers, token-sorted" gives transformers the same batching, so the table separates
what batching gains from what the kernels gain.

--cold-start: fresh processes (this Python, or --python for minibert's) that import, load the default
model and embed one sentence; seconds from launch until the vector exists (interpreter start included)
and until the process exited (Python's final garbage collection of Numba's many objects adds 0.15-0.25 s),
and each process's peak RSS (os.wait4's rusage, ru_maxrss). minibert with a warm Numba cache, minibert
with an empty NUMBA_CACHE_DIR (the first start ever), and transformers.

--rss: a fresh process encodes one random batch with every layer returned and reports its peak RSS,
against the bound 1.5 x (returned activations + weights); also the peak less what the process held once
Python, NumPy, Numba, LLVM and the compiled kernels were in memory, before the model was loaded.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="32x128,8x512,64x16", help="comma-separated BATCHxTOKENS")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--backend", default="cpu")
    p.add_argument("--model", default=None, help="model directory (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--real-text", action="store_true", help="time sentence embedding of real text")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--passes", type=int, default=3, help="timed passes over the sentences per implementation")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cold-start", action="store_true", help="time fresh processes: import, load, embed one sentence")
    p.add_argument("--starts", type=int, default=5, help="cold starts per variant")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter for minibert's fresh processes (default: this one; transformers' use this one)")
    p.add_argument("--rss", action="store_true", help="peak RSS of a fresh process encoding one batch")
    p.add_argument("--rss-shape", default="32x128")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


args = parse_args()
# BLAS thread pools read these when they start: set them before NumPy or torch is imported (children inherit them).
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402

MIB = 1 << 20


def forward_flops(config, B, T):
    """Multiply-adds x 2 of one forward pass: projections, feed-forward, attention scores and context."""
    H, I, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    N = B * T
    per_layer = 2 * N * (3 * H * H + H * H + 2 * H * I) + 2 * 2 * B * T * T * H
    return L * per_layer + 2 * B * H * H


PEAK_SHAPE = (4096, 384, 1536)


def matmul_peak_run():
    """A closure timing one float32 matmul shaped like the model's largest; returns its GFLOP/s."""
    M, K, N = PEAK_SHAPE
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((K, N), dtype=np.float32)
    out = np.empty((M, N), dtype=np.float32)

    def run():
        t = time.perf_counter()
        for _ in range(3):
            np.matmul(a, b, out=out)
        return 2 * M * K * N * 3 / (time.perf_counter() - t) / 1e9
    return run


def random_batch(config, B, T, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, config.vocab_size, size=(B, T))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.ones((B, T), dtype=np.int64), np.zeros((B, T), dtype=np.int64)


def load_reference(source):
    try:
        import torch
        import transformers
    except ImportError:
        return None, None, "transformers not installed"
    torch.set_num_threads(args.threads)
    model = transformers.AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    return model, tokenizer, f"transformers {transformers.__version__} + torch {torch.__version__}"


def throughput(model, reference, reference_name):
    config = model.config
    peak_run = matmul_peak_run()
    peak_run()
    results = {}
    print(f"model {config.num_hidden_layers} layers x hidden {config.hidden_size}; {args.threads} threads; "
          f"reference: {reference_name}")
    print(f"{'shape':>8} {'impl':<13}{'median s':>10}{'spread':>18}{'cpu s':>7}{'tokens/s':>10}{'GFLOP/s':>9}"
          f"{'%peak':>7}{'best%':>7}{'ratio':>7}")
    for shape in args.shapes.split(","):
        B, T = (int(v) for v in shape.lower().split("x"))
        ids, mask, types = random_batch(config, B, T)
        runs = {"minibert": lambda: model.forward(ids, mask, types)}
        if reference is not None:
            import torch
            tids, tmask, ttypes = (torch.from_numpy(a) for a in (ids, mask, types))

            def run_reference():
                with torch.no_grad():
                    return reference(input_ids=tids, attention_mask=tmask, token_type_ids=ttypes,
                                     output_hidden_states=True).hidden_states
            runs["transformers"] = run_reference
        for fn in runs.values():
            fn()                              # warm-up (and Numba compilation on a first run)
        times = {name: [] for name in runs}
        cpu_times = {name: [] for name in runs}
        peaks = []
        for _ in range(args.repeats):        # interleaved, so noise lands on every one
            for name, fn in runs.items():
                time.sleep(0.25)             # idle BLAS / OpenMP threads of the previous run stop spinning
                c, t = time.process_time(), time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
                cpu_times[name].append(time.process_time() - c)
            time.sleep(0.25)
            peaks.append(peak_run())
        flops = forward_flops(config, B, T)
        peak, best_peak = statistics.median(peaks), max(peaks)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        entry = {"matmul_peak_gflops_median": peak, "matmul_peak_gflops_best": best_peak}
        for name, ts in times.items():
            med = medians[name]
            ratio = medians.get("transformers", float("nan")) / med
            gflops = flops / med / 1e9
            best_share = 100 * flops / min(ts) / 1e9 / best_peak
            entry[name] = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "tokens_per_s": B * T / med,
                           "median_cpu_s": statistics.median(cpu_times[name]),
                           "gflops": gflops, "percent_of_peak": 100 * gflops / peak,
                           "best_percent_of_best_peak": best_share, "speedup_vs_reference": ratio}
            print(f"{shape:>8} {name:<13}{med:>10.4f}{f'{min(ts):.4f}-{max(ts):.4f}':>18}"
                  f"{statistics.median(cpu_times[name]):>7.2f}{B * T / med:>10.0f}"
                  f"{gflops:>9.1f}{100 * gflops / peak:>6.0f}%{best_share:>6.0f}%{ratio:>7.2f}")
        print(f"{shape:>8} {'matmul peak':<13} median {peak:.0f} GFLOP/s, best {best_peak:.0f} "
              f"({'x'.join(map(str, PEAK_SHAPE))} float32, NumPy's BLAS, {args.threads} threads)")
        results[shape] = entry
    return results


# ---------------------------------------------------------------------------------------------------
# Real text

def stdlib_sentences(count):
    """Up to `count` English sentences from the docstrings of Python's standard library (deterministic)."""
    import importlib
    import inspect
    import re
    names = ["abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
             "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
             "decimal", "difflib", "doctest", "email", "enum", "fileinput", "fnmatch", "fractions", "ftplib",
             "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
             "imaplib", "inspect", "io", "ipaddress", "json", "logging", "lzma", "mailbox", "mimetypes",
             "multiprocessing", "netrc", "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle",
             "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "quopri", "random", "re", "sched",
             "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "socketserver",
             "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
             "threading", "timeit", "tokenize", "trace", "traceback", "turtle", "typing", "unittest", "urllib.parse",
             "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo"]
    seen, sentences = set(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception:
                continue
            docs = [inspect.getdoc(module)]
            for _, member in sorted(vars(module).items()):
                if inspect.isclass(member) or inspect.isfunction(member):
                    docs.append(inspect.getdoc(member))
                    if inspect.isclass(member):
                        docs += [inspect.getdoc(m) for _, m in sorted(vars(member).items()) if inspect.isfunction(m)]
            for doc in docs:
                if not doc:
                    continue
                text = re.sub(r"\s+", " ", doc)
                for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                    words = sentence.split()
                    if 3 <= len(words) <= 200 and sentence not in seen and re.search("[a-z]{3}", sentence):
                        seen.add(sentence)
                        sentences.append(sentence)
                        if len(sentences) == count:
                            return sentences
    return sentences


def real_text(model, reference, tokenizer):
    texts = stdlib_sentences(args.sentences)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))          # sentence-transformers' order
    batches = [[texts[i] for i in order[s:s + args.batch_size]] for s in range(0, len(texts), args.batch_size)]
    max_length = 256

    def minibert_pass(batches=batches):
        out = []
        for batch in batches:
            enc = model.tokenize(batch, max_length=max_length)
            hidden = model.forward(enc.input_ids, enc.attention_mask, enc.token_type_ids).last_hidden_state
            mask = enc.attention_mask[:, :, None].astype(hidden.dtype)
            out.append((hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9))
        return np.concatenate(out)

    def transformers_pass(batches=batches):
        import torch
        out = []
        with torch.no_grad():
            for batch in batches:
                enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                hidden = reference(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)).numpy())
        return np.concatenate(out)

    def minibert_encode_pass(batches=batches):
        # What a user calls: encode batches by token count (padding near zero), where sentence-transformers
        # batches by characters. Returned in the order the other passes use, for the comparison below.
        texts_in_order = [text for batch in batches for text in batch]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")         # texts past 256 tokens are truncated on both sides alike
            return model.encode(texts_in_order, pooling="mean", batch_size=args.batch_size, max_length=max_length)

    # The same batching for transformers, to tell what batching gains from what the kernels gain.
    lengths = {text: len(ids) for batch in batches
               for text, ids in zip(batch, tokenizer(batch, truncation=True, max_length=max_length)["input_ids"])} \
        if reference is not None else {}
    by_tokens = sorted((text for batch in batches for text in batch), key=lambda text: -lengths[text])
    token_batches = [by_tokens[s:s + args.batch_size] for s in range(0, len(by_tokens), args.batch_size)]

    def transformers_by_tokens_pass(batches=batches):
        vectors = dict(zip(by_tokens, transformers_pass(token_batches)))
        return np.stack([vectors[text] for batch in batches for text in batch])

    runs = {"minibert": minibert_pass, "minibert encode": minibert_encode_pass}
    if reference is not None:
        runs["transformers"] = transformers_pass
        runs["transformers, token-sorted"] = transformers_by_tokens_pass
    for name, fn in runs.items():
        if name != "transformers, token-sorted":       # torch is warm after "transformers"
            fn([batches[0], batches[-1]])              # warm-up: the longest and the shortest batch
    masks = [model.tokenize(batch, max_length=max_length).attention_mask for batch in batches]    # [B, T] each
    token_count, padded = int(sum(mask.sum() for mask in masks)), sum(mask.size for mask in masks)
    times = {name: [] for name in runs}
    cpu_times = {name: [] for name in runs}
    embeddings = {}
    for _ in range(max(1, args.passes)):                # interleaved passes
        for name, fn in runs.items():
            time.sleep(0.25)
            c, t = time.process_time(), time.perf_counter()
            embeddings[name] = fn()
            times[name].append(time.perf_counter() - t)
            cpu_times[name].append(time.process_time() - c)
    result = {"sentences": len(texts), "batches": len(batches), "batch_size": args.batch_size,
              "real_tokens": token_count, "padded_tokens": int(padded), "max_length": max_length}
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"real text: {len(texts)} sentences from the standard library's docstrings, {token_count} tokens "
          f"({padded} with padding), {len(batches)} batches of {args.batch_size} sorted by length as "
          f"sentence-transformers does, mean pooling, tokenization included")
    print(f"{'impl':<28}{'median s':>10}{'spread':>18}{'cpu s':>8}{'sentences/s':>13}{'ratio':>7}")
    for name, ts in times.items():
        ratio = medians.get("transformers", float("nan")) / medians[name]
        cpu = statistics.median(cpu_times[name])
        result[name] = {"median_s": medians[name], "min_s": min(ts), "max_s": max(ts), "median_cpu_s": cpu,
                        "sentences_per_s": len(texts) / medians[name], "speedup_vs_reference": ratio}
        print(f"{name:<28}{medians[name]:>10.3f}{f'{min(ts):.3f}-{max(ts):.3f}':>18}{cpu:>8.2f}"
              f"{len(texts) / medians[name]:>13.0f}{ratio:>7.2f}")
    if "transformers" in embeddings:
        for name in ("minibert", "minibert encode", "transformers, token-sorted"):
            diff = float(np.abs(embeddings[name] - embeddings["transformers"]).max())
            result[name]["max_abs_difference"] = diff
            print(f"largest |{name} - transformers| over all sentence vectors: {diff:.2e}")
    return result


# ---------------------------------------------------------------------------------------------------
# Fresh processes: cold start and peak RSS

COLD_MINIBERT = """
import json, time
t0 = time.perf_counter()
import minibert
t1 = time.perf_counter()
model = minibert.load({source!r})
t2 = time.perf_counter()
out = model(["The cat sat on the mat."])
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "embed_s": t3 - t2, "ready_at": time.time()}}))
"""

COLD_TRANSFORMERS = """
import json, time
t0 = time.perf_counter()
import torch, transformers
t1 = time.perf_counter()
torch.set_num_threads({threads})
tokenizer = transformers.AutoTokenizer.from_pretrained({source!r})
model = transformers.AutoModel.from_pretrained({source!r}).eval()
t2 = time.perf_counter()
with torch.no_grad():
    out = model(**tokenizer(["The cat sat on the mat."], return_tensors="pt"))
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "embed_s": t3 - t2, "ready_at": time.time()}}))
"""


def fresh_process_rusage(code, env=None, python=None):
    """Run `code` in a new interpreter, reaped with os.wait4 to read that child's own ru_maxrss.

    Returns (wall seconds from launch to exit, peak RSS in MiB, the JSON its last line printed, with
    "ready_s" added: seconds from launch to the moment it printed, when it reports "ready_at")."""
    launched, t = time.time(), time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen([python or sys.executable, "-c", code], stdout=out, stderr=err,
                                 env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"child process failed:\n{err.read().decode()[-3000:]}")
        lines = out.read().decode().strip().splitlines()
    info = json.loads(lines[-1]) if lines else {}
    if "ready_at" in info:
        info["ready_s"] = info["ready_at"] - launched
    return wall, usage.ru_maxrss * 1024 / MIB, info


def cold_start(source, have_reference):
    code = COLD_MINIBERT.format(source=source)
    starts = args.starts
    results = {}
    fresh_process_rusage(code, python=args.python)                   # make sure the cache is warm
    results["minibert (warm Numba cache)"] = [fresh_process_rusage(code, python=args.python) for _ in range(starts)]
    first, fresh_dirs = [], []
    for _ in range(max(1, min(2, starts))):
        fresh_dirs.append(tempfile.mkdtemp(prefix="minibert-numba-cache-"))
        first.append(fresh_process_rusage(code, {"NUMBA_CACHE_DIR": fresh_dirs[-1]}, python=args.python))
    results["minibert (first start, empty cache)"] = first
    if have_reference:
        code = COLD_TRANSFORMERS.format(source=source, threads=args.threads)
        fresh_process_rusage(code)
        results["transformers"] = [fresh_process_rusage(code) for _ in range(starts)]
    for d in fresh_dirs:
        import shutil
        shutil.rmtree(d, ignore_errors=True)
    print("cold start: new process, import + load the default model + embed one sentence; seconds from launch to "
          "the vector (ready) and to the process's exit (Python's final garbage collection included)")
    print(f"{'variant':<38}{'ready s':>8}{'exit s':>8}{'spread':>13}{'peak RSS MiB':>14}{'import':>8}{'load':>7}"
          f"{'embed':>7}")
    summary = {}
    for name, runs in results.items():
        walls = [r[0] for r in runs]
        rss = max(r[1] for r in runs)
        parts = {key: statistics.median(r[2][key] for r in runs)
                 for key in ("ready_s", "import_s", "load_s", "embed_s")}
        summary[name] = {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
                         "peak_rss_mib": rss, "runs": len(runs), **parts}
        print(f"{name:<38}{parts['ready_s']:>8.3f}{statistics.median(walls):>8.3f}"
              f"{f'{min(walls):.2f}-{max(walls):.2f}':>13}{rss:>14.0f}"
              f"{parts['import_s']:>8.2f}{parts['load_s']:>7.2f}{parts['embed_s']:>7.2f}")
    return summary


RSS_MINIBERT = """
import json, resource
import numpy as np
import minibert
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))
interpreter = rss()
from minibert.kernels import cpu
cpu.warm_up()                                  # Numba, LLVM and the compiled kernels in memory
libraries = rss()
model = minibert.load({source!r})
def nbytes(tree, seen):
    if isinstance(tree, dict):
        return sum(nbytes(v, seen) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(nbytes(v, seen) for v in tree)
    if isinstance(tree, np.ndarray) and id(tree) not in seen:
        seen.add(id(tree))
        return tree.nbytes
    return 0
weights = nbytes(model.weights, set())
loaded = rss()
load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
B, T = {B}, {T}
rng = np.random.default_rng(0)
ids = rng.integers(1000, model.config.vocab_size, size=(B, T))
out = model.forward(ids, np.ones((B, T), dtype=np.int64), np.zeros((B, T), dtype=np.int64))
returned = sum(h.nbytes for h in out.hidden_states) + (out.pooler_output.nbytes if out.pooler_output is not None else 0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"interpreter": interpreter, "libraries": libraries, "loaded": loaded, "load_peak": load_peak,
                  "weights": weights, "returned": returned, "peak": peak}}))
"""


def rss_mode(source):
    B, T = (int(v) for v in args.rss_shape.lower().split("x"))
    code = RSS_MINIBERT.format(source=source, B=B, T=T)
    fresh_process_rusage(code)                                          # warm the Numba cache
    runs = [fresh_process_rusage(code) for _ in range(3)]
    wall, rss, info = max(runs, key=lambda r: r[1])
    bound = 1.5 * (info["weights"] + info["returned"]) / MIB
    above = rss - info["libraries"] / MIB
    result = {"shape": args.rss_shape, "peak_rss_mib": rss, "weights_mib": info["weights"] / MIB,
              "returned_mib": info["returned"] / MIB, "bound_mib": bound,
              "interpreter_mib": info["interpreter"] / MIB, "libraries_mib": info["libraries"] / MIB,
              "after_load_mib": info["loaded"] / MIB, "load_peak_mib": info["load_peak"] / MIB,
              "peak_above_libraries_mib": above}
    print(f"peak RSS encoding {args.rss_shape} with every layer returned (fresh process, worst of 3):")
    print(f"  peak {rss:.0f} MiB; weights {result['weights_mib']:.0f} MiB + returned activations "
          f"{result['returned_mib']:.0f} MiB -> bound 1.5x = {bound:.0f} MiB ({rss / bound:.2f} of it)")
    print(f"  Python + NumPy {result['interpreter_mib']:.0f} MiB, + Numba, LLVM and the kernels "
          f"{result['libraries_mib']:.0f} MiB; peak above that: {above:.0f} MiB ({above / bound:.2f} of the bound)")
    print(f"  after load {result['after_load_mib']:.0f} MiB, peak while loading {result['load_peak_mib']:.0f} MiB")
    return result


def main():
    import minibert
    results = {"machine": {"cpus": os.cpu_count(), "threads": args.threads}}
    source = str(minibert.api.resolve_source(args.model))
    results["model"] = source
    if args.cold_start:
        import importlib.util
        results["cold_start"] = cold_start(source, importlib.util.find_spec("transformers") is not None)
    if args.rss:
        results["rss"] = rss_mode(source)
    if args.real_text or not (args.cold_start or args.rss):
        model = minibert.load(args.model, backend=args.backend)
        reference, tokenizer, reference_name = load_reference(model.source)
        results["reference"] = reference_name
        if args.real_text:
            results["real_text"] = real_text(model, reference, tokenizer)
        else:
            results["shapes"] = throughput(model, reference, reference_name)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
