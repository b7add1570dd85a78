"""minibert's own encode on short texts, one source tree against another, each run in its own process.

    python benchmarks/short_encode.py --trees /tmp/before,. [--rounds 5] [--sentences 2000] [--threads 2]
    python benchmarks/short_encode.py --profile [--sentences 2000]      (cProfile of one encode, this tree)

The workload is compare.py's --short-text one (the first sentence of each docstring of the standard library,
about 12 tokens a text), encoded as a user does: `model.encode(texts, normalize=True)`, tokenization,
batching, forward, pooling and normalisation included. Each tree's minibert runs under this interpreter
(PYTHONPATH=tree: e.g. `git archive main | tar -x -C /tmp/before` for the code before a change). Rounds
alternate between the trees (fresh process each, Numba's cache warm, one warm-up encode first), so that a
noisy shared machine hits every tree alike; the table gives the median of each tree's timed encodes and
its ratio to the first tree's (above 1: this tree is faster). The kernels/ package is the one installed
(minibert.kernels), whatever the tree.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, os, sys, time, warnings
sys.path.insert(0, {benchmarks!r})
import texts as workload
texts = workload.{workload}({count})
import minibert
model = minibert.load()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model.encode(texts[:64], normalize=True)            # warm-up: Numba's kernels loaded from the cache
    times = []
    for _ in range({repeats}):
        t, c = time.perf_counter(), time.process_time()
        model.encode(texts, normalize=True)
        times.append((time.perf_counter() - t, time.process_time() - c))
print(json.dumps(times))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", default=".", help="comma-separated minibert source trees")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2, help="timed encodes per process")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--long", action="store_true", help="the docstring sentences (about 27 tokens) instead")
    args = p.parse_args()
    benchmarks = str(Path(__file__).resolve().parent)
    env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                          "NUMBA_NUM_THREADS")}}
    if args.profile:
        return profile(args, benchmarks)      # this process's minibert (PYTHONPATH picks the tree)
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    times = {t: [] for t in trees}
    workload = "stdlib_sentences" if args.long else "stdlib_first_sentences"
    code = CHILD.format(benchmarks=benchmarks, count=args.sentences, repeats=args.repeats, workload=workload)
    for _ in range(args.rounds):
        for tree in trees:
            out = subprocess.run([sys.executable, "-c", code], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
                                 capture_output=True, text=True, check=True)
            times[tree] += json.loads(out.stdout.strip().splitlines()[-1])
    wall = {tree: [w for w, _ in ts] for tree, ts in times.items()}
    cpu = {tree: [c for _, c in ts] for tree, ts in times.items()}
    base, base_cpu = statistics.median(wall[trees[0]]), statistics.median(cpu[trees[0]])
    print(f"{args.sentences} {workload}, {args.threads} threads, {args.rounds} rounds x {args.repeats} encodes; "
          "wall and process CPU time (all threads), medians")
    for tree in trees:
        median, median_cpu = statistics.median(wall[tree]), statistics.median(cpu[tree])
        print(f"{str(tree):<32} wall {median:.3f} s ({min(wall[tree]):.3f}-{max(wall[tree]):.3f})  "
              f"cpu {median_cpu:.3f} s  texts/s {args.sentences / median:.0f}  "
              f"first/this wall {base / median:.2f} cpu {base_cpu / median_cpu:.2f}")


def profile(args, benchmarks):
    import cProfile
    import pstats
    import warnings
    sys.path.insert(0, benchmarks)
    import texts as workload
    import minibert
    texts = workload.stdlib_first_sentences(args.sentences)
    model = minibert.load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.encode(texts[:64], normalize=True)
        profiler = cProfile.Profile()
        profiler.enable()
        model.encode(texts, normalize=True)
        profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    sys.exit(main())
