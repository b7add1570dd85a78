"""The speed targets of issue #26, each library in its own process as a user runs it alone.

    python benchmarks/targets.py [--rounds 5] [--threads 2] [--jobs forward,encode,cold] [--json out.json]
        [--minibert-python .venv/bin/python] [--reference-python .venv-reference/bin/python]
        [--fastembed-python PATH]

compare.py runs every library in one process, interleaved; there the thread pools of one library (OpenBLAS's,
torch's OpenMP, ONNX Runtime's) can still spin while the next runs. Here every measurement is a fresh process
holding one library: it loads the model, warms up, times --repeats runs and reports their median wall and
CPU time. Rounds rotate the order of the libraries so that a noisy machine hits every one alike; a library's
figure is the median of its per-round medians, and a ratio is peer / minibert (above 1: minibert is faster).

Jobs and peers, each in the configuration its users get by default:
  forward  every hidden state of one random batch at 32x128, 8x512, 64x16: minibert `model.forward`,
           transformers `AutoModel.from_pretrained(dir)` (its default attention, today SDPA) and ONNX Runtime
           (the export compare.py makes, default session options). Target: >= 1.1x the best peer.
  encode   2,000 real sentences, unit vectors, tokenization and pooling included: the first sentence of each
           docstring of Python's standard library (short: about 12 tokens) and whole docstring sentences
           (about 27 tokens). minibert `model.encode(texts, normalize=True)`, sentence-transformers
           `SentenceTransformer(dir).encode(texts)`, fastembed `TextEmbedding(..., specific_model_path=dir)`
           `.embed(texts)` on an ONNX export of the same checkpoint (its hub files cannot be fetched here),
           with its default batch of 256 texts and with batch_size=32 (it does not sort texts by length, so
           one long text pads its whole batch): the target holds against the faster of the two.
           Targets: >= 1.3x (short) and >= 1.5x (docstring) sentence-transformers, >= 1.2x fastembed. The
           smallest cosine between a peer's vectors and minibert's is printed beside the time.
  cold     compare.py --cold-start in minibert's environment: seconds to the first vector and peak RSS of a
           fresh process with a warm Numba cache. Targets: <= 0.6 s, <= 200 MiB.

Environments: minibert's (`make .venv/.ready`), the reference one (`make benchmark` installs torch,
transformers, sentence-transformers, onnx, onnxruntime) and fastembed's (any venv with `pip install fastembed`,
given by --fastembed-python; without it fastembed is NOT RUN). Children run with the temp dir as their working
directory: the repository's top-level kernels/ would shadow a package transformers imports.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
SHAPES = ((32, 128), (8, 512), (64, 16))
WORKLOADS = {"short": "stdlib_first_sentences", "docstring": "stdlib_sentences"}
TARGETS = {"forward": 1.1, ("encode", "short", "sentence-transformers"): 1.3,
           ("encode", "docstring", "sentence-transformers"): 1.5, ("encode", "fastembed"): 1.2}
COLD_SECONDS, COLD_MIB = 0.6, 200


# ---------------------------------------------------------------------------------------------------
# Child: one library, one job, in this process

def forward_runner(library, source, threads):
    import peers
    if library == "minibert":
        import minibert
        model = minibert.load(source)
        return lambda ids, mask, types: model.forward(ids, mask, types).hidden_states
    if library == "transformers":
        model, why = peers.transformers_model(source, threads)
        return peers.torch_forward(model) if model is not None else why
    if library == "onnxruntime":
        session, why = peers.onnxruntime_session(source, threads)
        return peers.onnxruntime_forward(session) if session is not None else why
    raise ValueError(library)


def encode_runner(library, source, threads, fastembed_dir):
    import numpy as np
    if library == "minibert":
        import minibert
        model = minibert.load(source)
        return lambda texts: model.encode(texts, normalize=True)
    if library == "sentence-transformers":
        import peers
        model, why = peers.sentence_transformer(source, threads)
        return (lambda texts: model.encode(texts)) if model is not None else why
    if library.startswith("fastembed"):
        try:
            from fastembed import TextEmbedding
        except ImportError:
            return "fastembed not installed"
        model = TextEmbedding("sentence-transformers/all-MiniLM-L6-v2", specific_model_path=fastembed_dir,
                              threads=threads)
        batch = {"batch_size": 32} if library == "fastembed-batch32" else {}     # its default is 256
        return lambda texts: np.stack(list(model.embed(texts, **batch)))
    raise ValueError(library)


def child(spec):
    import resource
    import warnings

    import numpy as np
    sys.path.insert(0, BENCHMARKS)
    warnings.simplefilter("ignore")          # truncation notes: every library truncates at 256 tokens alike
    if spec["job"] == "forward":
        B, T = spec["shape"]
        with open(os.path.join(spec["source"], "config.json")) as f:
            vocab = json.load(f)["vocab_size"]
        rng = np.random.default_rng(0)
        ids = rng.integers(1000, vocab, size=(B, T))                      # [B, T]
        ids[:, 0], ids[:, -1] = 101, 102
        inputs = (ids, np.ones((B, T), dtype=np.int64), np.zeros((B, T), dtype=np.int64))
        run = forward_runner(spec["library"], spec["source"], spec["threads"])
        if isinstance(run, str):
            return print("RESULT " + json.dumps({"missing": run}), flush=True)
        run(*inputs)                                                      # warm-up: Numba loads its kernels
    else:
        import texts as workload
        sentences = getattr(workload, WORKLOADS[spec["workload"]])(spec["sentences"])
        inputs = (sentences,)
        run = encode_runner(spec["library"], spec["source"], spec["threads"], spec.get("fastembed_dir"))
        if isinstance(run, str):
            return print("RESULT " + json.dumps({"missing": run}), flush=True)
        run(sentences[:64])
    walls, cpus = [], []
    for _ in range(spec["repeats"]):
        time.sleep(0.1)
        c, t = time.process_time(), time.perf_counter()
        out = run(*inputs)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    if spec.get("save"):
        np.save(spec["save"], np.asarray(out, dtype=np.float32))
    record = None
    if spec.get("machine"):
        import peers
        record = peers.machine_record(spec["threads"])
    print("RESULT " + json.dumps({"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
                                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                  "machine": record}), flush=True)


# ---------------------------------------------------------------------------------------------------
# Parent: rounds of fresh processes

def run_child(python, spec, threads):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update({var: str(threads) for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                              "NUMBA_NUM_THREADS")})
    done = subprocess.run([python, os.path.abspath(__file__), "--child", json.dumps(spec)], env=env,
                          cwd=tempfile.gettempdir(), capture_output=True, text=True)
    line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"{spec['library']} {spec['job']} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def rounds(args, libraries, spec_for):
    """library -> {wall_s, cpu_s, peak_rss_mib}: medians over the rounds of each fresh process's median;
    a library whose package is missing is printed NOT RUN and left out (the list is changed in place)."""
    per_round = {library: [] for library in libraries}
    for r in range(args.rounds):
        order = libraries[r % len(libraries):] + libraries[:r % len(libraries)]
        for library in order:
            if library not in libraries:
                continue
            python, spec = spec_for(library, r)
            result = run_child(python, spec, args.threads)
            if "missing" in result:
                print(f"  {library}: NOT RUN ({result['missing']})")
                libraries.remove(library)
                del per_round[library]
                continue
            per_round[library].append(result)
    return {library: {key: statistics.median(result[key] for result in results)
                      for key in ("wall_s", "cpu_s", "peak_rss_mib")} | {"rounds": len(results)}
            for library, results in per_round.items()}


def python_for(args, library):
    if library == "minibert":
        return args.minibert_python
    if library.startswith("fastembed"):
        return args.fastembed_python
    return args.reference_python


def forward_job(args, source, report):
    libraries = ["minibert", "transformers", "onnxruntime"]
    report["forward"] = {}
    print(f"\nforward, every hidden state, {args.repeats} runs a process, {args.rounds} rounds "
          "(median s; ratio = peer / minibert)")
    for B, T in SHAPES:
        def spec_for(library, r):
            return python_for(args, library), {"job": "forward", "library": library, "shape": [B, T],
                                               "source": source, "threads": args.threads,
                                               "repeats": args.repeats}
        results = rounds(args, libraries, spec_for)
        mine = results["minibert"]["wall_s"]
        if len(libraries) == 1:
            continue
        best = min(libraries[1:], key=lambda name: results[name]["wall_s"])
        ratio = results[best]["wall_s"] / mine
        report["forward"][f"{B}x{T}"] = {"results": results, "best_peer": best, "ratio": ratio}
        print(f"  {B}x{T}: " + ", ".join(f"{name} {results[name]['wall_s']:.4f}" for name in libraries)
              + f"; vs best peer ({best}) {ratio:.2f}x (target >= {TARGETS['forward']}x)")


def cosine_floor(a, b):
    import numpy as np
    a, b = np.load(a), np.load(b)
    return float(((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def encode_job(args, source, report, scratch):
    libraries = ["minibert", "sentence-transformers"] + (["fastembed", "fastembed-batch32"]
                                                         if args.fastembed_python else [])
    fastembed_dir = os.path.join(scratch, "fastembed-model")
    if args.fastembed_python:
        subprocess.run([args.reference_python, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import peers; "
                        "peers.export_fastembed_directory(sys.argv[2], sys.argv[3])", BENCHMARKS, source,
                        fastembed_dir], cwd=tempfile.gettempdir(), check=True, capture_output=True)
    if not args.fastembed_python:
        print("  fastembed: NOT RUN (no --fastembed-python: a venv with `pip install fastembed`)")
    report["encode"] = {}
    for workload in args.workloads.split(","):
        def spec_for(library, r):
            save = os.path.join(scratch, f"{workload}-{library}.npy") if r == 0 else None
            return python_for(args, library), {"job": "encode", "library": library, "workload": workload,
                                               "sentences": args.sentences, "source": source,
                                               "threads": args.threads, "repeats": args.passes, "save": save,
                                               "fastembed_dir": fastembed_dir}
        results = rounds(args, libraries, spec_for)
        mine = results["minibert"]["wall_s"]
        entry = {"results": results}
        print(f"\nencode, {workload} workload, {args.sentences} sentences, {args.passes} passes a process, "
              f"{args.rounds} rounds")
        for name in libraries:
            ratio = results[name]["wall_s"] / mine
            cosine = cosine_floor(os.path.join(scratch, f"{workload}-{name}.npy"),
                                  os.path.join(scratch, f"{workload}-minibert.npy"))
            target = TARGETS.get(("encode", workload, name), TARGETS.get(("encode", name.split("-batch")[0])))
            entry[name] = {"ratio": ratio, "target": target, "min_cosine_vs_minibert": cosine}
            print(f"  {name:<24}{results[name]['wall_s']:>8.3f} s  cpu {results[name]['cpu_s']:>7.2f} s  "
                  f"peak {results[name]['peak_rss_mib']:>5.0f} MiB  ratio {ratio:.2f}x"
                  + (f" (target >= {target}x)" if target else "") + f"  min cosine {cosine:.6f}")
        report["encode"][workload] = entry


def cold_job(args, report, scratch):
    out = os.path.join(scratch, "cold.json")
    subprocess.run([args.minibert_python, os.path.join(BENCHMARKS, "compare.py"), "--cold-start", "--starts",
                    str(args.starts), "--json", out], cwd=tempfile.gettempdir(), check=True, capture_output=True)
    with open(out) as f:
        warm = json.load(f)["cold_start"]["minibert (warm Numba cache)"]
    report["cold"] = warm
    print(f"\ncold start (warm Numba cache, {args.starts} starts): first vector {warm['ready_s']:.3f} s (target <= "
          f"{COLD_SECONDS} s), peak RSS {warm['peak_rss_mib']:.0f} MiB (target <= {COLD_MIB} MiB)")


def summary(report):
    rows = []
    for shape, entry in report.get("forward", {}).items():
        rows.append((f"forward {shape} vs {entry['best_peer']}", entry["ratio"], TARGETS["forward"]))
    for workload, entry in report.get("encode", {}).items():
        fastest = {}                  # a peer run in two configurations is held to its faster one
        for name, value in entry.items():
            if name not in ("results", "minibert") and value["target"]:
                peer = name.split("-batch")[0]
                if peer not in fastest or value["ratio"] < fastest[peer][1]:
                    fastest[peer] = (name, value["ratio"], value["target"])
        rows += [(f"encode {workload} vs {name}", ratio, target) for name, ratio, target in fastest.values()]
    print("\ntarget                                      measured   target   met")
    for name, measured, target in rows:
        print(f"{name:<44}{measured:>7.2f}x  >= {target:.1f}x   {'yes' if measured >= target else 'NO'}")
    if "cold" in report:
        cold = report["cold"]
        print(f"{'cold start, first vector':<44}{cold['ready_s']:>7.3f}s  <= {COLD_SECONDS} s   "
              f"{'yes' if cold['ready_s'] <= COLD_SECONDS else 'NO'}")
        print(f"{'cold start, peak RSS':<44}{cold['peak_rss_mib']:>6.0f}MiB <= {COLD_MIB} MiB "
              f"{'yes' if cold['peak_rss_mib'] <= COLD_MIB else 'NO'}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--jobs", default="forward,encode,cold")
    p.add_argument("--workloads", default="short,docstring", help="encode's workloads")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5, help="timed forwards in each process")
    p.add_argument("--passes", type=int, default=2, help="timed encodes of the sentences in each process")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--starts", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=None, help="model directory (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--minibert-python", default=os.path.join(REPO, ".venv", "bin", "python"))
    p.add_argument("--reference-python", default=os.path.join(REPO, ".venv-reference", "bin", "python"))
    p.add_argument("--fastembed-python", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    unknown = set(args.workloads.split(",")) - set(WORKLOADS) or set(args.jobs.split(",")) - {"forward", "encode",
                                                                                               "cold"}
    if unknown:
        p.error(f"unknown workload or job {sorted(unknown)}: workloads {list(WORKLOADS)}, jobs forward, encode, cold")
    source = args.model or subprocess.run(
        [args.minibert_python, "-c", "import minibert; print(minibert.api.resolve_source(None))"],
        capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()).stdout.strip()
    record = run_child(args.minibert_python, {"job": "forward", "library": "minibert", "shape": [1, 8],
                                              "source": source, "threads": args.threads, "repeats": 1,
                                              "machine": True}, args.threads)["machine"]
    sys.path.insert(0, BENCHMARKS)
    import peers
    print(peers.describe(record) + "\n(minibert's environment; the peers' libraries are in their own)")
    report = {"machine": record, "model": source, "threads": args.threads, "rounds": args.rounds}
    jobs = args.jobs.split(",")
    with tempfile.TemporaryDirectory(prefix="minibert-targets-") as scratch:
        if "forward" in jobs:
            forward_job(args, source, report)
        if "encode" in jobs:
            encode_job(args, source, report, scratch)
        if "cold" in jobs:
            cold_job(args, report, scratch)
    summary(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
