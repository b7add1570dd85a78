"""Continued MLM pretraining, minibert against torch + transformers on the same recipe: loss curves, time, memory.

    .venv-reference/bin/python benchmarks/pretrain_vs_torch.py [--corpus FILE] [--model DIR] [--seeds 0 1 2]
                                                              [--epochs 3] [--which both|minibert|torch]

The corpus is split into documents at blank lines (default: the GPL-3 text Debian ships). Both sides build the
same blocks (every document with its special tokens, concatenated, cut into --max-length blocks, the first 5% of
the documents held out, as run_mlm.py), mask 15% (80/10/10, DataCollatorForLanguageModeling on the torch side,
minibert.train.pretrain.mask_tokens on minibert's), train with AdamW (betas 0.9/0.999, eps 1e-8, no weight decay),
a linear schedule without warmup, clipping at 1.0, dropout 0.1, float32, batch --batch-size, and report per
epoch the mean step loss and the held-out loss (masked once per run). The two sides draw different masks from
their seeds, so the curves agree in distribution, not bit for bit: the report gives each side's mean and spread
over the seeds. Time: wall time of the whole run (held-out passes included) per optimizer step; memory: the
process's peak resident set (run each side alone with --which for its own figure).
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def documents(path):
    text = Path(path).read_text(encoding="utf-8")
    return [" ".join(part.split()) for part in text.split("\n\n") if part.strip()]


def run_minibert(args, docs, seed):
    from minibert.train.pretrain import PretrainRecipe, pretrain
    recipe = PretrainRecipe(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length,
                            seed=seed, dropout=0.1)
    start = time.perf_counter()
    result = pretrain(args.model, docs, recipe=recipe)
    return result.history, time.perf_counter() - start      # history[0]: before training


def run_torch(args, docs, seed):
    import numpy as np
    import torch
    import transformers
    torch.manual_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    held = int(np.ceil(0.05 * len(docs)))

    def blocks(texts):
        enc = tokenizer(texts, return_special_tokens_mask=True)
        ids = [i for row in enc["input_ids"] for i in row]
        special = [s for row in enc["special_tokens_mask"] for s in row]
        usable = len(ids) // args.max_length * args.max_length
        return (torch.tensor(ids[:usable]).view(-1, args.max_length),
                torch.tensor(special[:usable]).view(-1, args.max_length))
    train_ids, train_special = blocks(docs[held:])
    dev_ids, dev_special = blocks(docs[:held])
    model = transformers.AutoModelForMaskedLM.from_pretrained(args.model, hidden_dropout_prob=0.1,
                                                              attention_probs_dropout_prob=0.1,
                                                              attn_implementation="eager")
    collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    steps_per_epoch = -(-len(train_ids) // args.batch_size)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, 0, steps_per_epoch * args.epochs)

    def batch(ids, special):
        return collator([{"input_ids": i, "special_tokens_mask": s} for i, s in zip(ids, special)])
    state = torch.random.get_rng_state()
    torch.manual_seed(seed + 1)
    dev_batches = [batch(dev_ids[i:i + args.batch_size], dev_special[i:i + args.batch_size])
                   for i in range(0, len(dev_ids), args.batch_size)]
    torch.random.set_rng_state(state)
    def held_out():
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for b in dev_batches:
                logits = model(input_ids=b["input_ids"]).logits
                labels = b["labels"]
                total += float(torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                                                 ignore_index=-100, reduction="sum"))
                count += int((labels != -100).sum())
        return total / count
    start = time.perf_counter()
    loss = held_out()
    history = [{"epoch": 0, "dev_loss": loss, "dev_perplexity": float(np.exp(loss))}]
    for epoch in range(1, args.epochs + 1):
        model.train()
        losses = []
        order = torch.randperm(len(train_ids))
        for i in range(0, len(order), args.batch_size):
            rows = order[i:i + args.batch_size]
            loss = model(**batch(train_ids[rows], train_special[rows])).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss))
        loss = held_out()
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "dev_loss": loss,
                        "dev_perplexity": float(np.exp(loss))})
    return history, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="/usr/share/common-licenses/GPL-3")
    parser.add_argument("--model", default=str(ROOT / "tests" / "fixtures" / "heads" / "bert"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--which", choices=["both", "minibert", "torch"], default="both")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    docs = documents(args.corpus)
    sides = ["minibert", "torch"] if args.which == "both" else [args.which]
    report = {"corpus": args.corpus, "documents": len(docs), "model": args.model, "args": vars(args)}
    for side in sides:
        runs = []
        for seed in args.seeds:
            history, seconds = (run_minibert if side == "minibert" else run_torch)(args, docs, seed)
            runs.append({"seed": seed, "history": history, "seconds": seconds})
            print(side, seed, json.dumps(history), f"{seconds:.1f} s", file=sys.stderr)
        report[side] = runs
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import numpy as np
    for side in sides:
        for key in ("train_loss", "dev_loss"):
            curves = np.array([[h[key] for h in run["history"] if key in h] for run in report[side]])
            print(f"{side:8s} {key:10s} mean " + " ".join(f"{v:.4f}" for v in curves.mean(axis=0))
                  + "  spread (max - min over seeds) " + " ".join(f"{v:.4f}" for v in np.ptp(curves, axis=0)))
    print(f"peak RSS {report['peak_rss_mib']:.0f} MiB")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
