"""Throughput of minibert against transformers+torch, side by side in one process, same thread count.

    python benchmarks/compare.py [--shapes 32x128,8x512,64x16] [--threads 2] [--repeats 7] [--json out.json]

Every run returns all hidden states (transformers: output_hidden_states=True). Runs alternate between
implementations after a warm-up so machine noise hits both alike; the table shows medians, the spread
(min-max), the ratio minibert / reference, GFLOP/s, and the share of a NumPy float32 matmul peak
measured in the same process.
"""

import argparse
import json
import os
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="32x128,8x512,64x16", help="comma-separated BATCHxTOKENS")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--backend", default="cpu")
    p.add_argument("--model", default=None, help="model directory (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


args = parse_args()
# BLAS thread pools read these when they start: set them before NumPy or torch is imported.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402

import minibert  # noqa: E402


def forward_flops(config, B, T):
    """Multiply-adds x 2 of one forward pass: projections, feed-forward, attention scores and context."""
    H, I, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    N = B * T
    per_layer = 2 * N * (3 * H * H + H * H + 2 * H * I) + 2 * 2 * B * T * T * H
    return L * per_layer + 2 * B * H * H


def matmul_peak(threads, repeats=5):
    """GFLOP/s of float32 matmuls shaped like the model's largest ones (the practical limit here)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4096, 384), dtype=np.float32), rng.standard_normal((384, 1536), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        times.append((time.perf_counter() - t) / 10)
    return 2 * 4096 * 384 * 1536 / min(times) / 1e9


def random_batch(config, B, T, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, config.vocab_size, size=(B, T))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.ones((B, T), dtype=np.int64), np.zeros((B, T), dtype=np.int64)


def timed(fn, repeats):
    fn()                                   # warm-up (and Numba compilation on a first run)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main():
    model = minibert.load(args.model, backend=args.backend)
    config = model.config
    try:
        import torch
        import transformers
        torch.set_num_threads(args.threads)
        reference = transformers.AutoModel.from_pretrained(model.source, attn_implementation="eager").eval()
        reference_name = f"transformers {transformers.__version__} + torch {torch.__version__}"
    except ImportError:
        reference, reference_name = None, "transformers not installed"
    peak = matmul_peak(args.threads)
    results = {"machine": {"cpus": os.cpu_count(), "threads": args.threads, "matmul_peak_gflops": peak},
               "model": model.source, "reference": reference_name, "shapes": {}}
    print(f"model {config.num_hidden_layers} layers x hidden {config.hidden_size}; {args.threads} threads; "
          f"numpy float32 matmul peak {peak:.0f} GFLOP/s; reference: {reference_name}")
    print(f"{'shape':>8} {'impl':<12}{'median s':>10}{'spread':>18}{'tokens/s':>10}{'GFLOP/s':>9}{'%peak':>7}{'ratio':>7}")
    for shape in args.shapes.split(","):
        B, T = (int(v) for v in shape.lower().split("x"))
        ids, mask, types = random_batch(config, B, T)
        runs = {"minibert": lambda: model.forward(ids, mask, types)}
        if reference is not None:
            tids, tmask, ttypes = (torch.from_numpy(a) for a in (ids, mask, types))

            def run_reference():
                with torch.no_grad():
                    return reference(input_ids=tids, attention_mask=tmask, token_type_ids=ttypes,
                                     output_hidden_states=True).hidden_states
            runs["transformers"] = run_reference
        for fn in runs.values():
            fn()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):        # interleaved, so noise lands on both
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        flops = forward_flops(config, B, T)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        entry = {}
        for name, ts in times.items():
            med = medians[name]
            ratio = medians.get("transformers", float("nan")) / med
            gflops = flops / med / 1e9
            entry[name] = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "tokens_per_s": B * T / med,
                           "gflops": gflops, "percent_of_peak": 100 * gflops / peak, "speedup_vs_reference": ratio}
            print(f"{shape:>8} {name:<12}{med:>10.4f}{f'{min(ts):.4f}-{max(ts):.4f}':>18}{B * T / med:>10.0f}"
                  f"{gflops:>9.1f}{100 * gflops / peak:>6.0f}%{ratio:>7.2f}")
        results["shapes"][shape] = entry
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
