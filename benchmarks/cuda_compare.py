"""minibert's "cuda" backend on a real GPU: layer-by-layer parity, then speed against torch.

    python benchmarks/cuda_compare.py [--model DIR] [--shapes 32x128,8x512,256x128] [--repeats 10]
                                      [--tolerance 1e-4] [--skip-parity] [--skip-benchmark] [--json out.json]

Parity (a padded batch of varied texts, one of them 512 tokens): every hidden state, every attention map
and the pooler of minibert "cuda" against transformers on the same GPU (float32, TF32 off, eager attention)
and against minibert "cpu"; exits 1 when any difference exceeds --tolerance.
Benchmark: forward passes returning all hidden states at each BATCHxTOKENS shape, minibert "cuda" against
transformers + torch on CUDA in float32 with TF32 off (torch's default attention), interleaved after a
warm-up, medians. Two timings each: "device" (outputs left on the GPU, after a synchronize) and "host"
(every hidden state copied to NumPy). Needs an NVIDIA GPU; transformers/torch (the `reference` extra with a
CUDA build of torch) for the comparisons against them.

Without a GPU the script says so ("no CUDA device") and exits with status 2.
"""

import argparse
import json
import os
import statistics
import sys
import time

NO_DEVICE_EXIT = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory or hub id (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--shapes", default="32x128,8x512,256x128", help="comma-separated BATCHxTOKENS")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |difference| in parity")
    p.add_argument("--skip-parity", action="store_true")
    p.add_argument("--skip-benchmark", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--allow-simulator", action="store_true",
                   help="run on the CUDA simulator (NUMBA_ENABLE_CUDASIM=1): for testing this script on a tiny model")
    args = p.parse_args(argv)
    try:
        args.shape_list = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s]
        assert all(len(s) == 2 and s[0] > 0 and s[1] > 0 for s in args.shape_list)
    except (ValueError, AssertionError):
        p.error(f"--shapes must look like 32x128,8x512, found {args.shapes!r}")
    return args


def load_cuda_model(source, allow_simulator=False):
    """minibert "cuda", or None after saying why there is no CUDA device."""
    import minibert
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0") and not allow_simulator:
        print("cuda_compare: no CUDA device: NUMBA_ENABLE_CUDASIM is set (the simulator); this script needs a "
              "real GPU", file=sys.stderr)
        return None
    try:
        return minibert.load(source, backend="cuda")
    except minibert.BackendError as e:
        print(f"cuda_compare: no CUDA device: {e}", file=sys.stderr)
        return None


def reference_on_cuda(model_dir, attn_implementation):
    """transformers on the GPU in float32 with TF32 off, or (None, reason)."""
    try:
        import torch
        import transformers
    except ImportError as e:
        return None, None, f"transformers/torch not installed ({e})"
    if not torch.cuda.is_available():
        return None, None, f"torch {torch.__version__} sees no CUDA device (a CPU build?)"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    model = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation=attn_implementation)
    return (model.float().eval().to("cuda"), torch,
            f"transformers {transformers.__version__} + torch {torch.__version__}")


def parity_texts():
    long_text = " ".join(["the quick brown fox jumps over the lazy dog near the river bank."] * 60)
    return (["The cat sat on the mat.", "A dog ran!", "Héllo wörld, café déjà vu.", "東京 は 大きい 😀 [UNK]",
             "Short.", long_text],
            ["A second sentence for the pair.", "It barked.", "Crème brûlée.", "Ça va?", "Yes.", "The end."])


def host(model, output):
    return model.ops.to_host(output)           # idempotent: fine whether or not Model.forward already copies


def parity(model, args):
    import numpy as np
    import minibert
    texts, pairs = parity_texts()
    batch = model.tokenize(texts, pairs)                    # truncated to the model's positions (512)
    feed = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
    print(f"parity batch {batch.input_ids.shape[0]}x{batch.input_ids.shape[1]} "
          f"({int(batch.attention_mask.sum())} real tokens)")
    ours = host(model, model.forward(*feed, output_attentions=True))
    cpu = minibert.load(model.source, backend="cpu").forward(*feed, output_attentions=True)
    targets = {"minibert cpu": cpu}
    reference, torch, name = reference_on_cuda(model.source, "eager")
    if reference is None:
        print(f"  transformers on CUDA skipped: {name}")
    else:
        with torch.no_grad():
            out = reference(**{k: torch.from_numpy(v).to("cuda") for k, v in
                               zip(("input_ids", "attention_mask", "token_type_ids"), feed)},
                            output_hidden_states=True, output_attentions=True)
        targets["transformers cuda"] = minibert.model.EncoderOutput(
            hidden_states=tuple(h.cpu().numpy() for h in out.hidden_states),
            last_hidden_state=out.last_hidden_state.cpu().numpy(),
            pooler_output=None if getattr(out, "pooler_output", None) is None else out.pooler_output.cpu().numpy(),
            attentions=tuple(a.cpu().numpy() for a in out.attentions), attention_mask=batch.attention_mask,
            captured={})
    mask = batch.attention_mask.astype(bool)
    rows, worst = [], 0.0
    names = [("embeddings" if i == 0 else f"layer.{i - 1}") for i in range(len(ours.hidden_states))]
    for target_name, theirs in targets.items():
        pairs_ = [(f"hidden {n}", a[mask], b[mask]) for n, a, b in zip(names, ours.hidden_states, theirs.hidden_states)]
        pairs_ += [(f"attention.{i}", a, b) for i, (a, b) in enumerate(zip(ours.attentions, theirs.attentions))]
        if ours.pooler_output is not None and theirs.pooler_output is not None:
            pairs_.append(("pooler", ours.pooler_output, theirs.pooler_output))
        for what, a, b in pairs_:
            d = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
            worst = max(worst, d)
            rows.append({"against": target_name, "tensor": what, "max_abs": d})
            print(f"  {target_name:<18} {what:<16} max |diff| {d:.2e}{'  FAIL' if d > args.tolerance else ''}")
    ok = worst <= args.tolerance
    print(f"parity: worst {worst:.2e}, tolerance {args.tolerance:.0e}: {'ok' if ok else 'FAILED'}")
    return ok, rows


def random_batch(config, B, T, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    low = 1000 if config.vocab_size > 2000 else 5          # past the special tokens
    ids = rng.integers(low, config.vocab_size, size=(B, T))
    if config.vocab_size > 102:
        ids[:, 0], ids[:, -1] = 101, 102                   # [CLS] ... [SEP] in BERT's vocabulary
    return ids, np.ones((B, T), dtype=np.int64), np.zeros((B, T), dtype=np.int64)


def benchmark(model, args):
    ops = model.ops
    real_to_host = ops.to_host
    reference, torch, name = reference_on_cuda(model.source, None)
    print(f"benchmark: minibert cuda ({ops.implementation} numba.cuda) vs {name}; all hidden states; "
          f"{args.repeats} interleaved runs, medians")
    results = {}
    print(f"{'shape':>8} {'impl':<14}{'device s':>10}{'host s':>10}{'tokens/s':>11}{'ratio':>7}")
    for B, T in args.shape_list:
        ids, mask, types = random_batch(model.config, B, T)

        def minibert_device():
            ops.to_host = lambda value: value          # keep outputs on the GPU, whatever Model.forward does
            try:
                out = model.forward(ids, mask, types)
            finally:
                ops.to_host = real_to_host
            ops.synchronize()
            return out

        def minibert_host():
            return real_to_host(model.forward(ids, mask, types))

        runs = {"minibert": (minibert_device, minibert_host)}
        if reference is not None:
            feed = {k: torch.from_numpy(v).to("cuda") for k, v in
                    zip(("input_ids", "attention_mask", "token_type_ids"), (ids, mask, types))}

            def torch_device():
                with torch.no_grad():
                    out = reference(**feed, output_hidden_states=True).hidden_states
                torch.cuda.synchronize()
                return out

            def torch_host():
                with torch.no_grad():
                    return [h.cpu().numpy() for h in reference(**feed, output_hidden_states=True).hidden_states]
            runs["transformers"] = (torch_device, torch_host)
        for device_fn, host_fn in runs.values():          # warm-up: compilation, allocator pools
            device_fn()
            host_fn()
        times = {(n, k): [] for n in runs for k in ("device", "host")}
        for _ in range(args.repeats):
            for n, (device_fn, host_fn) in runs.items():
                for kind, fn in (("device", device_fn), ("host", host_fn)):
                    t = time.perf_counter()
                    fn()
                    times[(n, kind)].append(time.perf_counter() - t)
        med = {key: statistics.median(ts) for key, ts in times.items()}
        entry = {}
        for n in runs:
            ratio = med.get(("transformers", "device"), float("nan")) / med[(n, "device")]
            entry[n] = {"device_median_s": med[(n, "device")], "host_median_s": med[(n, "host")],
                        "tokens_per_s": B * T / med[(n, "device")], "speedup_vs_transformers": ratio}
            print(f"{f'{B}x{T}':>8} {n:<14}{med[(n, 'device')]:>10.4f}{med[(n, 'host')]:>10.4f}"
                  f"{B * T / med[(n, 'device')]:>11.0f}{ratio:>7.2f}")
        results[f"{B}x{T}"] = entry
    return results


def main(argv=None):
    args = parse_args(argv)
    model = load_cuda_model(args.model, args.allow_simulator)
    if model is None:
        return NO_DEVICE_EXIT
    from numba import cuda
    try:
        name = cuda.get_current_device().name
    except AttributeError:                       # the simulator
        name = "CUDA simulator"
    print(f"device: {name.decode() if isinstance(name, bytes) else name}; "
          f"numba.cuda implementation: {model.ops.implementation}; model: {model.source}")
    results, ok = {"model": model.source}, True
    if not args.skip_parity:
        ok, results["parity"] = parity(model, args)
    if not args.skip_benchmark:
        results["benchmark"] = benchmark(model, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
