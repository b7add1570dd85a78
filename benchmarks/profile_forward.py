"""Where a minibert forward spends its CPU time at one shape, and torch SDPA's, by op (the README Speed
section's 8 x 512 profile).

    .venv-reference/bin/python benchmarks/profile_forward.py

Process CPU time per minibert op (ops.linear, ops.attention, ...; worker threads included) and the thread
time of the softmax and row-scaling kernels inside attention, by wrapping them; torch.profiler for
transformers' default model. CPU time, not wall time, so that the shares hold on a shared machine.
"""
import os
import time
for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[v] = "2"
import numpy as np
import minibert
from minibert.kernels import cpu
model = minibert.load(None, backend="cpu")
B, T = 8, 512
rng = np.random.default_rng(0)
ids = rng.integers(1000, model.config.vocab_size, size=(B, T)); ids[:, 0] = 101; ids[:, -1] = 102
mask, types = np.ones((B, T), np.int64), np.zeros((B, T), np.int64)
acc = {}
def wrap(name, fn, clock):
    def w(*a, **k):
        c, t = clock(), time.perf_counter()
        r = fn(*a, **k)
        e = acc.setdefault(name, [0.0, 0.0, 0])
        e[0] += clock() - c; e[1] += time.perf_counter() - t; e[2] += 1
        return r
    return w
ops = model.ops
for name in ("embed", "linear", "layer_norm", "add_layer_norm", "attention"):
    setattr(ops, name, wrap("ops." + name, getattr(ops, name), time.process_time))
for name in ("softmax_scores", "scale_rows"):
    setattr(cpu, name, wrap("  inside attention: " + name, getattr(cpu, name), time.thread_time))
model.forward(ids, mask, types)
for _ in range(2):
    acc.clear()
    c, t = time.process_time(), time.perf_counter()
    model.forward(ids, mask, types)
    print(f"minibert forward: wall {time.perf_counter()-t:.3f} s, process cpu {time.process_time()-c:.3f} s")
    for k, (ct, wt, n) in sorted(acc.items(), key=lambda x: -x[1][0]):
        print(f"   {k:<40} cpu {ct:.3f} s  wall-sum {wt:.3f} s  calls {n}")
import torch
import transformers
torch.set_num_threads(2)
src = model.source
ref = transformers.AutoModel.from_pretrained(src).eval()
tids, tm, tt = (torch.from_numpy(a) for a in (ids, mask, types))
with torch.no_grad():
    ref(input_ids=tids, attention_mask=tm, token_type_ids=tt, output_hidden_states=True)
    c, t = time.process_time(), time.perf_counter()
    ref(input_ids=tids, attention_mask=tm, token_type_ids=tt, output_hidden_states=True)
    print(f"torch sdpa forward: wall {time.perf_counter()-t:.3f} s, process cpu {time.process_time()-c:.3f} s")
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ref(input_ids=tids, attention_mask=tm, token_type_ids=tt, output_hidden_states=True)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
