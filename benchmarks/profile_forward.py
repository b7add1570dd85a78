"""Where a minibert forward spends its CPU time, by op, at a few shapes, and torch SDPA's (the docs/speed.md
profile).

    .venv/bin/python benchmarks/profile_forward.py [--shapes 8x512 32x128 64x16] [--repeats 7]
    .venv-reference/bin/python benchmarks/profile_forward.py --torch          # adds torch's profile at 8 x 512

Process CPU time (all threads) per minibert op (ops.linear, ops.attention, ...) and per forward, medians
over the repeats; CPU time, not wall time, so that the figures hold on a shared machine. Shapes are
interleaved repeat by repeat, so load from other programs falls on all alike.
"""
import argparse
import os
import statistics
import time

for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(v, "2")
import numpy as np  # noqa: E402

import minibert  # noqa: E402

OPS = ("embed", "linear", "layer_norm", "add_layer_norm", "attention")


def inputs(model, B, T, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, model.config.vocab_size, size=(B, T))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.ones((B, T), np.int64), np.zeros((B, T), np.int64)


def profile(model, shapes, repeats):
    ops, spent = model.ops, {}

    def wrap(name, fn):
        def timed(*a, **k):
            c = time.process_time()
            r = fn(*a, **k)
            spent[name] = spent.get(name, 0.0) + time.process_time() - c
            return r
        return timed
    for name in OPS:
        setattr(ops, name, wrap(name, getattr(ops, name)))
    batches = {shape: inputs(model, *shape) for shape in shapes}
    table = {shape: [] for shape in shapes}
    for shape in shapes:                                # compile / warm caches outside the timing
        model.forward(*batches[shape])
    for _ in range(repeats):
        for shape in shapes:
            spent.clear()
            c, t = time.process_time(), time.perf_counter()
            model.forward(*batches[shape])
            table[shape].append(dict(spent, forward=time.process_time() - c, wall=time.perf_counter() - t))
    for (B, T), runs in table.items():
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        rest = "  ".join(f"{op} {med[op]:.3f}" for op in OPS if op in med and op != "attention")
        print(f"{B:>3} x {T:<4} forward cpu {med['forward']:.3f} s (wall {med['wall']:.3f})  "
              f"attention {med['attention']:.3f} s ({100 * med['attention'] / med['forward']:.0f}%)  {rest}")


def torch_profile(model, B, T):
    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile
    torch.set_num_threads(2)
    ref = transformers.AutoModel.from_pretrained(model.source).eval()
    tids, tm, tt = (torch.from_numpy(a) for a in inputs(model, B, T))
    with torch.no_grad():
        ref(input_ids=tids, attention_mask=tm, token_type_ids=tt, output_hidden_states=True)
        c, t = time.process_time(), time.perf_counter()
        ref(input_ids=tids, attention_mask=tm, token_type_ids=tt, output_hidden_states=True)
        print(f"torch sdpa forward: wall {time.perf_counter()-t:.3f} s, process cpu {time.process_time()-c:.3f} s")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ref(input_ids=tids, attention_mask=tm, token_type_ids=tt, output_hidden_states=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["8x512", "32x128", "64x16"], help="BATCHxTOKENS")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--torch", action="store_true", help="also profile transformers' default model")
    args = parser.parse_args()
    model = minibert.load(None, backend="cpu")
    print(f"load average {os.getloadavg()[0]:.1f}; process CPU time medians of {args.repeats} interleaved runs")
    profile(model, [tuple(int(n) for n in s.split("x")) for s in args.shapes], args.repeats)
    if args.torch:
        torch_profile(model, 8, 512)
