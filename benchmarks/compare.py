"""minibert against the engines its users would otherwise run, each as they run it, on the same machine.

    python benchmarks/compare.py [--shapes 32x128,8x512,64x16] [--threads 2] [--repeats 7] [--json out.json]
    python benchmarks/compare.py --real-text [--short-text] [--sentences 2000] [--batch-size 32] [--passes 3]
    python benchmarks/compare.py --cold-start [--starts 5] [--python .venv/bin/python]
    python benchmarks/compare.py --rss [--rss-shape 32x128]
    OPENBLAS_CORETYPE=Haswell python benchmarks/compare.py ...   (force another OpenBLAS kernel for NumPy)

`make benchmark` builds the environment: torch 2.13, transformers, sentence-transformers, onnx, onnxruntime,
threadpoolctl. Every result starts with the machine record: the date, the CPU and the flags that pick
kernels (AVX2, AVX-512, AMX), numpy's BLAS and the kernel it chose (threadpoolctl's architecture), the
libraries' versions. A peer whose package is missing is printed as NOT RUN with the reason.

Throughput (the default): every implementation returns all hidden states, in one process:
  minibert "cpu";
  transformers' AutoModel.from_pretrained(dir) as users get it (the line says which attention it picked,
    today SDPA, torch's fused attention); transformers with attn_implementation="eager" as a labelled extra
    row (not counted as a peer: nobody gets it by default);
  ONNX Runtime (the engine of fastembed and optimum): the model exported once with torch.onnx.export
    (opset 17, batch and sequence axes dynamic, every hidden state an output; kept in the temp dir) and run
    by an InferenceSession with default options (all graph optimizations) and intra_op_num_threads set.
Runs alternate between the implementations and a NumPy float32 matmul shaped like the model's largest
(the peak), so machine noise hits all of them alike, with a 0.25 s pause before each so that the thread
pools of the previous one (OpenBLAS, torch's OpenMP, ONNX Runtime's) have stopped spinning. The table
shows medians, the spread (min-max), the process CPU time of a run (all threads), tokens/s, GFLOP/s, the
share of the matmul peak and t/minibert (above 1: minibert is faster); then minibert against the fastest
peer at that shape. A warm-up run comes first (Numba compiles or loads its kernels there).

--real-text: a few thousand real English sentences (the docstrings of Python's standard library, split
into sentences: fixed for a given Python version), embedded as a user would: minibert's
`model.encode(texts, normalize=True, max_length=256)`, sentence-transformers' `SentenceTransformer(dir)
.encode(texts)`, and ONNX Runtime as fastembed drives it (`tokenizers`, batches sorted by length, mean
pooling, L2 norm). The peers' batch size is --batch-size; minibert batches by its token budget
(max_batch_tokens) unless --minibert-batch-size caps its texts. --short-text: the first sentence of each
docstring instead (about 12 tokens a text: queries, titles, chat turns are short). Tokenization and pooling
included; interleaved passes, medians; the smallest cosine between each peer's vectors and minibert's.

--cold-start: fresh processes (this Python, or --python for minibert's) that import, load the default
model and embed one sentence; seconds from launch until the vector exists (interpreter start included)
and until the process exited (Python's final garbage collection of Numba's many objects adds 0.15-0.25 s),
and each process's peak RSS (its own VmHWM, read by the child at the end). minibert with a warm Numba cache, minibert
with an empty NUMBA_CACHE_DIR (the first start ever), and transformers, all with Python's bytecode caches as a
default Python writes them (PYTHONDONTWRITEBYTECODE removed from the children's environment: with it set and
an editable install, every start compiles minibert's modules from source, 0.05-0.08 s more here).

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
    p.add_argument("--short-text", action="store_true",
                   help="with --real-text: short texts (the first sentence of each docstring, about 12 tokens)")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--passes", type=int, default=3, help="timed passes over the sentences per implementation")
    p.add_argument("--batch-size", type=int, default=32, help="the peers' batch size (texts)")
    p.add_argument("--minibert-batch-size", type=int, default=None,
                   help="minibert's cap on texts per batch (default: none, batches of max_batch_tokens tokens)")
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

import peers  # noqa: E402  (benchmarks/peers.py, beside this file)
from texts import stdlib_first_sentences, stdlib_sentences  # noqa: E402  (benchmarks/texts.py)

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


def throughput_peers(source):
    """name -> (run(ids, mask, types), description) for every peer, and name -> reason for those not run."""
    runs, missing = {}, {}
    default, attn = peers.transformers_model(source, args.threads)
    if default is None:
        missing["transformers"] = attn
    else:
        runs[f"transformers ({attn}, default)"] = (peers.torch_forward(default), "AutoModel.from_pretrained(dir)")
        eager, _ = peers.transformers_model(source, args.threads, "eager")
        runs["transformers (eager, extra)"] = (peers.torch_forward(eager), 'attn_implementation="eager"')
    try:
        session, description = peers.onnxruntime_session(source, args.threads)
    except Exception as error:                      # an export that fails is reported, not hidden
        session, description = None, f"export or session failed: {type(error).__name__}: {error}"
    if session is None:
        missing["onnxruntime"] = description
    else:
        runs["onnxruntime"] = (peers.onnxruntime_forward(session), description)
    return runs, missing


def throughput(model):
    config = model.config
    peak_run = matmul_peak_run()
    peak_run()
    peer_runs, missing = throughput_peers(model.source)
    results = {"peers": {name: description for name, (_, description) in peer_runs.items()}, "not_run": missing}
    print(f"model {config.num_hidden_layers} layers x hidden {config.hidden_size}; {args.threads} threads; "
          f"every implementation returns all hidden states")
    for name, (_, description) in peer_runs.items():
        print(f"  {name}: {description}")
    for name, reason in missing.items():
        print(f"  {name}: NOT RUN ({reason})")
    print(f"{'shape':>8} {'impl':<32}{'median s':>10}{'spread':>18}{'cpu s':>7}{'tokens/s':>10}{'GFLOP/s':>9}"
          f"{'%peak':>7}{'t/minibert':>11}{'cpu/minibert':>13}")
    for shape in args.shapes.split(","):
        B, T = (int(v) for v in shape.lower().split("x"))
        ids, mask, types = random_batch(config, B, T)
        runs = {"minibert": lambda *a: model.forward(*a).hidden_states}
        runs.update({name: run for name, (run, _) in peer_runs.items()})
        outputs = {name: fn(ids, mask, types) for name, fn in runs.items()}   # warm-up (Numba compiles here)
        last = {name: np.asarray(out[-1]) for name, out in outputs.items()}      # [B, T, H] each
        del outputs                                                              # every layer of every peer
        times = {name: [] for name in runs}
        cpu_times = {name: [] for name in runs}
        peaks = []
        for _ in range(args.repeats):        # interleaved, so noise lands on every one
            for name, fn in runs.items():
                time.sleep(0.25)             # idle BLAS / OpenMP threads of the previous run stop spinning
                c, t = time.process_time(), time.perf_counter()
                fn(ids, mask, types)
                times[name].append(time.perf_counter() - t)
                cpu_times[name].append(time.process_time() - c)
            time.sleep(0.25)
            peaks.append(peak_run())
        flops = forward_flops(config, B, T)
        peak = statistics.median(peaks)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        best = min((name for name in medians if name != "minibert" and "extra" not in name),
                   key=medians.get, default=None)
        entry = {"matmul_peak_gflops_median": peak, "best_peer": best,
                 "minibert_vs_best_peer": medians[best] / medians["minibert"] if best else None}
        for name, ts in times.items():
            med = medians[name]
            gflops = flops / med / 1e9
            entry[name] = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "tokens_per_s": B * T / med,
                           "median_cpu_s": statistics.median(cpu_times[name]), "gflops": gflops,
                           "percent_of_peak": 100 * gflops / peak, "time_over_minibert": med / medians["minibert"],
                           "max_abs_difference_last_layer": float(np.abs(last[name] - last["minibert"]).max())}
            print(f"{shape:>8} {name:<32}{med:>10.4f}{f'{min(ts):.4f}-{max(ts):.4f}':>18}"
                  f"{statistics.median(cpu_times[name]):>7.2f}{B * T / med:>10.0f}"
                  f"{gflops:>9.1f}{100 * gflops / peak:>6.0f}%{med / medians['minibert']:>11.2f}"
                  f"{statistics.median(cpu_times[name]) / statistics.median(cpu_times['minibert']):>13.2f}")
        if best:
            print(f"{shape:>8} minibert vs the best peer ({best}): {entry['minibert_vs_best_peer']:.2f}x; matmul "
                  f"peak median {peak:.0f} GFLOP/s ({'x'.join(map(str, PEAK_SHAPE))} float32, NumPy's BLAS); "
                  f"largest |peer - minibert| in the last layer: "
                  + ", ".join(f"{n} {entry[n]['max_abs_difference_last_layer']:.1e}" for n in runs if n != "minibert"))
        results[shape] = entry
    return results


# ---------------------------------------------------------------------------------------------------
# Real text

def onnxruntime_encode(session, source, max_length, batch_size):
    """What fastembed does around an ONNX Runtime session: `tokenizers` truncating and padding, batches in
    sentence-transformers' order (longest texts first), masked mean pooling of the last layer, L2 norm."""
    import tokenizers
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(source, "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding()
    run = peers.onnxruntime_forward(session)

    hidden_size = session.get_outputs()[-1].shape[-1]      # static in the export: only batch and sequence vary

    def encode(texts):
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), hidden_size), dtype=np.float32)                  # [N, H]
        for s in range(0, len(texts), batch_size):
            batch = order[s:s + batch_size]
            encodings = tokenizer.encode_batch([texts[i] for i in batch])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)                # [b, T]
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)    # [b, T]
            types = np.array([e.type_ids for e in encodings], dtype=np.int64)         # [b, T]
            hidden = run(ids, mask, types)[-1]                                        # [b, T, H]
            weights = mask[:, :, None].astype(hidden.dtype)                           # [b, T, 1]
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)  # [b, H]
            out[batch] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out
    return encode


def real_text(model):
    texts = (stdlib_first_sentences if args.short_text else stdlib_sentences)(args.sentences)
    max_length = 256                                  # all-MiniLM-L6-v2's max_seq_length
    runs, missing = {}, {}

    def minibert_encode(texts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")         # texts past 256 tokens are truncated on every side alike
            return model.encode(texts, normalize=True, max_length=max_length, batch_size=args.minibert_batch_size)
    runs["minibert encode"] = minibert_encode
    st, description = peers.sentence_transformer(model.source, args.threads)
    if st is None:
        missing["sentence-transformers"] = description
    else:
        if st.max_seq_length != max_length:
            print(f"note: sentence-transformers' max_seq_length is {st.max_seq_length}, minibert is given {max_length}")
        runs["sentence-transformers encode"] = lambda texts: st.encode(texts, batch_size=args.batch_size)
    try:
        session, description = peers.onnxruntime_session(model.source, args.threads)
    except Exception as error:
        session, description = None, f"export or session failed: {type(error).__name__}: {error}"
    if session is None:
        missing["onnxruntime"] = description
    else:
        runs["onnxruntime + tokenizers"] = onnxruntime_encode(session, model.source, max_length, args.batch_size)
    for fn in runs.values():
        fn(texts[:2 * args.batch_size])               # warm-up
    times = {name: [] for name in runs}
    cpu_times = {name: [] for name in runs}
    embeddings = {}
    for _ in range(max(1, args.passes)):                # interleaved passes
        for name, fn in runs.items():
            time.sleep(0.25)
            c, t = time.process_time(), time.perf_counter()
            embeddings[name] = np.asarray(fn(texts), dtype=np.float32)              # [N, H]
            times[name].append(time.perf_counter() - t)
            cpu_times[name].append(time.process_time() - c)
    token_count = int(sum(mask.sum() for mask in (model.tokenize(texts[s:s + 256], max_length=max_length)
                                                   .attention_mask for s in range(0, len(texts), 256))))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    best = min((name for name in medians if name != "minibert encode"), key=medians.get, default=None)
    result = {"sentences": len(texts), "real_tokens": token_count, "batch_size": args.batch_size,
              "short_text": args.short_text, "minibert_batch_size": args.minibert_batch_size,
              "max_length": max_length, "not_run": missing, "best_peer": best,
              "minibert_vs_best_peer": medians[best] / medians["minibert encode"] if best else None}
    print(f"real text: {len(texts)} {'first ' if args.short_text else ''}sentences from the standard library's "
          f"docstrings, {token_count} tokens, peers' batch size {args.batch_size} (minibert: "
          f"{args.minibert_batch_size or 'its token budget'}), truncated to {max_length} tokens, tokenization and "
          "pooling included; unit vectors")
    for name, reason in missing.items():
        print(f"  {name}: NOT RUN ({reason})")
    print(f"{'impl':<30}{'median s':>10}{'spread':>18}{'cpu s':>8}{'sentences/s':>13}{'t/minibert':>11}"
          f"{'min cos vs minibert':>21}")
    for name, ts in times.items():
        cpu = statistics.median(cpu_times[name])
        a, b = embeddings[name], embeddings["minibert encode"]
        cosine = float(((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
        result[name] = {"median_s": medians[name], "min_s": min(ts), "max_s": max(ts), "median_cpu_s": cpu,
                        "sentences_per_s": len(texts) / medians[name],
                        "time_over_minibert": medians[name] / medians["minibert encode"],
                        "min_cosine_vs_minibert": cosine}
        print(f"{name:<30}{medians[name]:>10.3f}{f'{min(ts):.3f}-{max(ts):.3f}':>18}{cpu:>8.2f}"
              f"{len(texts) / medians[name]:>13.0f}{medians[name] / medians['minibert encode']:>11.2f}"
              f"{cosine:>21.6f}")
    if best:
        print(f"minibert encode vs the best peer ({best}): {result['minibert_vs_best_peer']:.2f}x")
    return result


# ---------------------------------------------------------------------------------------------------
# Fresh processes: cold start and peak RSS

# The child's own peak RSS (VmHWM of its memory map). os.wait4's ru_maxrss is no use here: Linux carries the
# high-water mark of the memory the child had before exec into it, i.e. this benchmark process's own RSS
# (475 MiB with torch loaded), which then hid every child's figure.
PEAK_RSS = """
def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return None
"""

COLD_MINIBERT = PEAK_RSS + """
import json, time
t0 = time.perf_counter()
import minibert
t1 = time.perf_counter()
model = minibert.load({source!r})
t2 = time.perf_counter()
out = model(["The cat sat on the mat."])
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "embed_s": t3 - t2, "ready_at": time.time(),
                  "peak_rss_mib": peak_rss_mib()}}))
"""

COLD_TRANSFORMERS = PEAK_RSS + """
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
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "embed_s": t3 - t2, "ready_at": time.time(),
                  "peak_rss_mib": peak_rss_mib()}}))
"""


def fresh_process_rusage(code, env=None, python=None):
    """Run `code` in a new interpreter, reaped with os.wait4 to read that child's own ru_maxrss; `env` adds to
    this process's environment (a None value removes the variable).

    Returns (wall seconds from launch to exit, peak RSS in MiB, the JSON its last line printed, with
    "ready_s" added: seconds from launch to the moment it printed, when it reports "ready_at")."""
    launched, t = time.time(), time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        merged = {**os.environ, **(env or {})}
        child = subprocess.Popen([python or sys.executable, "-c", code], stdout=out, stderr=err,
                                 env={key: value for key, value in merged.items() if value is not None})
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
    peak = info.get("peak_rss_mib") or usage.ru_maxrss * 1024 / MIB      # ru_maxrss: an upper bound only
    return wall, peak, info


# Python's default: compiled bytecode (.pyc) is written on first import and read after, and pip writes it at
# install. An environment that sets PYTHONDONTWRITEBYTECODE (some containers, this project's sandboxes) with an
# editable install compiles minibert's modules from source at every start instead, which is not what users time.
WITH_BYTECODE = {"PYTHONDONTWRITEBYTECODE": None}


def cold_start(source, have_reference):
    code = COLD_MINIBERT.format(source=source)
    starts = args.starts
    results = {}
    fresh_process_rusage(code, WITH_BYTECODE, python=args.python)     # warm Numba's cache, write the .pyc files
    results["minibert (warm Numba cache)"] = [fresh_process_rusage(code, WITH_BYTECODE, python=args.python)
                                              for _ in range(starts)]
    first, fresh_dirs = [], []
    for _ in range(max(1, min(2, starts))):
        fresh_dirs.append(tempfile.mkdtemp(prefix="minibert-numba-cache-"))
        first.append(fresh_process_rusage(code, {"NUMBA_CACHE_DIR": fresh_dirs[-1], **WITH_BYTECODE},
                                          python=args.python))
    results["minibert (first start, empty cache)"] = first
    if have_reference:
        code = COLD_TRANSFORMERS.format(source=source, threads=args.threads)
        fresh_process_rusage(code, WITH_BYTECODE)
        results["transformers"] = [fresh_process_rusage(code, WITH_BYTECODE) for _ in range(starts)]
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
    results = {"machine": peers.machine_record(args.threads)}
    print(peers.describe(results["machine"]))
    source = str(minibert.api.resolve_source(args.model))
    results["model"] = source
    if args.cold_start:
        import importlib.util
        results["cold_start"] = cold_start(source, importlib.util.find_spec("transformers") is not None)
    if args.rss:
        results["rss"] = rss_mode(source)
    if args.real_text or not (args.cold_start or args.rss):
        model = minibert.load(args.model, backend=args.backend)
        if args.real_text:
            results["real_text"] = real_text(model)
        else:
            results["shapes"] = throughput(model)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
