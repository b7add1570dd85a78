"""Throughput of `extract` on Ray Data with 1 and 2 workers, beside the local engine, on this machine.

    .venv-ray/bin/python benchmarks/ray_scaling.py [--texts 8192] [--repeats 3]

One process: a local Ray cluster (this machine's CPUs, no dashboard) is started once; then, per repeat,
in interleaved order: the local engine at 1 and at 2 threads, and the Ray engine with 1 worker x 1 CPU,
2 workers x 1 CPU and 1 worker x 2 CPUs. Every run writes the same npy output (mean-pooled last layer,
float32) from the same synthetic corpus, in chunks of minibert.corpus.extract.CHUNK texts. Reported, as medians:

    texts/s           end to end: texts / wall time of the extract call (Ray: actor start, model load,
                      encoding, transfer to the driver and writing, but not ray.init)
    encode texts/s    per worker, from the actors' own timing of model.encode on each chunk
    texts per CPU-s   the same work per CPU-second the actors used: what a worker delivers per core it gets
                      (other programs on the machine move the other figures, not this one)
    tokenize share    of a chunk's encode time, the tokenizer's (timed once more beside encode)
    driver wait/write time the driver spent waiting for rows vs everything else (writing, probing)
    actor RSS         peak resident memory of each actor process (model, Numba, one chunk's activations)
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import minibert                                           # noqa: E402
from minibert.corpus import extract as local  # noqa: E402
from minibert.corpus import ray_data  # noqa: E402


class TimedChunks(ray_data.ChunkEmbedder):
    """The extract stage, also timing each chunk's encode and its tokenization; writes one JSON per chunk."""
    report_dir = None

    def encode_chunk(self, start, texts):
        from minibert.embed.encode import tokenize_texts
        cpu0, t0 = os.times(), time.perf_counter()
        out = super().encode_chunk(start, texts)
        cpu1, t1 = os.times(), time.perf_counter()
        tokenize_texts(self.model, list(texts), self.options["max_length"], self.options["window"])
        t2 = time.perf_counter()
        report = {"pid": os.getpid(), "rows": len(texts), "encode_s": t1 - t0, "tokenize_s": t2 - t1,
                  "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        with open(os.path.join(self.report_dir, f"{start}-{os.getpid()}.json"), "w") as f:
            json.dump(report, f)
        return out


class TimedRows(ray_data.OrderedRows):
    """OrderedRows that adds up the time the driver spends waiting for Ray's rows."""
    waited = 0.0

    def __call__(self, start, stop):
        t = time.perf_counter()
        try:
            return super().__call__(start, stop)
        finally:
            TimedRows.waited += time.perf_counter() - t


def run_local(texts, out, threads):
    import numba
    numba.set_num_threads(threads)
    model = minibert.load()
    model.encode(["warm up"])                      # compiled kernels: not part of the extraction
    t = time.perf_counter()
    local.extract(model, texts, out, progress=False)
    wall = time.perf_counter() - t
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return {"wall": wall}


def run_ray(texts, out, workers, cpus):
    report = Path(out).parent / (Path(out).name + "-report")
    report.mkdir()
    stage = type("TimedChunks", (TimedChunks,), {"report_dir": str(report)})
    TimedRows.waited = 0.0
    t = time.perf_counter()
    manifest = ray_data.extract(texts, out, workers=workers, cpus_per_worker=cpus, progress=False,
                                embedder_class=stage)
    wall = time.perf_counter() - t
    chunks = [json.loads(p.read_text()) for p in report.iterdir()]
    per_actor = {}
    for c in chunks:
        a = per_actor.setdefault(c["pid"], {"rows": 0, "encode_s": 0.0, "tokenize_s": 0.0, "cpu_s": 0.0,
                                            "rss_mib": 0.0})
        a["rows"] += c["rows"]
        a["cpu_s"] += c["cpu_s"]
        a["encode_s"] += c["encode_s"]
        a["tokenize_s"] += c["tokenize_s"]
        a["rss_mib"] = max(a["rss_mib"], c["rss_mib"])
    return {"wall": wall, "waited": TimedRows.waited, "threads": manifest["engine"]["threads_per_worker"],
            "encode_rate": statistics.median(a["rows"] / a["encode_s"] for a in per_actor.values()),
            "per_cpu_second": sum(a["rows"] for a in per_actor.values()) / sum(a["cpu_s"] for a in per_actor.values()),
            "tokenize_share": sum(a["tokenize_s"] for a in per_actor.values()) /
                              sum(a["encode_s"] for a in per_actor.values()),
            "actor_rss": max(a["rss_mib"] for a in per_actor.values())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from test_ray import corpus                     # the tests' varied sentences (1 to ~80 words)
    texts = corpus(args.texts, seed=7)
    load = os.getloadavg()
    ray = ray_data.require_ray()
    ray.init(include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_data.OrderedRows = TimedRows
    configs = [("local", 1, 1), ("local", 1, 2), ("ray", 1, 1), ("ray", 2, 1), ("ray", 1, 2)]
    results = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for engine, workers, cpus in configs:
                out = Path(tmp) / f"{engine}-{workers}x{cpus}-{r}"
                run = run_local(texts, out, cpus) if engine == "local" else run_ray(texts, out, workers, cpus)
                results[(engine, workers, cpus)].append(run)
                print(f"repeat {r}: {engine} {workers}x{cpus}: {args.texts / run['wall']:.0f} texts/s", flush=True)
        reference = minibert.load_embeddings(Path(tmp) / "local-1x1-0").vectors
        same = all(np.array_equal(minibert.load_embeddings(Path(tmp) / f"ray-{w}x1-0").vectors, reference)
                   for w in (1, 2))
    ray.shutdown()
    print(f"\n{args.texts} texts, chunks of {local.CHUNK}, {os.cpu_count()} CPUs; medians of {args.repeats}; "
          f"Ray {ray.__version__}; ray 1x1 and 2x1 bit-identical to local at 1 thread: {same}; load average "
          f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'engine':<8}{'workers x CPUs':>15}{'texts/s':>10}{'encode texts/s per worker':>28}"
          f"{'texts per CPU-s':>17}{'tokenize share':>16}{'driver wait':>13}{'actor RSS MiB':>15}")
    for (engine, workers, cpus), runs in results.items():
        rate = statistics.median(args.texts / x["wall"] for x in runs)
        if engine == "local":
            print(f"{engine:<8}{f'1 process x {cpus} thr':>15}{rate:>10.0f}")
            continue
        med = {k: statistics.median(x[k] for x in runs) for k in ("encode_rate", "per_cpu_second", "tokenize_share",
                                                                  "waited", "wall", "actor_rss")}
        print(f"{engine:<8}{f'{workers} x {cpus}':>15}{rate:>10.0f}{med['encode_rate']:>28.0f}"
              f"{med['per_cpu_second']:>17.0f}"
              f"{med['tokenize_share']:>16.1%}{med['waited'] / med['wall']:>13.0%}{med['actor_rss']:>15.0f}")


if __name__ == "__main__":
    main()
