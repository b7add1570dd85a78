"""Time one fine-tuning step (forward, backward, AdamW) of minibert and of torch, same model, batch, threads.

    .venv-reference/bin/python benchmarks/finetune_step.py [--threads 1] [--batch 16] [--steps 5] [--which both]

Sequence classification on the bundled all-MiniLM-L6-v2, float32, dropout off, one fixed padded batch of
real sentences (pairs). Prints the median step time and the process's peak resident memory; run each
side in its own process (--which minibert / --which torch) for a peak-memory figure of that side alone.
"""

import argparse
import os
import resource
import statistics
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--which", choices=["both", "minibert", "torch"], default="both")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import minibert
    from minibert.train.classifier import new_classifier
    from minibert.train.data import Examples, collate, tokenize_examples
    from minibert.train.finetune import TrainingRecipe, train_step
    from minibert.train.optimizer import trainable
    from minibert.train.hf_checkpoint import tensors_from_tree

    base = ["A man is playing a guitar on the stage.", "The weather forecast says it will rain tomorrow afternoon.",
            "Two dogs run across a snowy field.", "She reads the newspaper every morning before work.",
            "The committee approved the new budget after a long debate.", "A child is eating an apple."]
    texts = [base[i % len(base)] for i in range(args.batch)]
    pairs = [base[(i + 1) % len(base)] for i in range(args.batch)]
    labels = ["yes" if i % 2 else "no" for i in range(args.batch)]
    recipe = TrainingRecipe(lr=2e-5, dropout=0.0)
    model = minibert.load(backend="numpy")
    classifier = new_classifier(model, "sequence", ["no", "yes"], recipe, np.random.default_rng(0))
    items = tokenize_examples(model.tokenizer, Examples(texts, labels, pairs), "sequence", {"no": 0, "yes": 1}, None)
    ids, mask, types, y = collate(items, model.config.pad_token_id, "sequence")
    print(f"batch {ids.shape[0]} x {ids.shape[1]} tokens, threads {args.threads}")

    if args.which in ("both", "minibert"):
        params, state, times = trainable(classifier.weights, classifier.head, classifier.config), {}, []
        for _ in range(args.steps + 1):
            start = time.perf_counter()
            train_step(classifier, items, params, state, recipe, recipe.lr, None)
            times.append(time.perf_counter() - start)
        print(f"minibert  median step {statistics.median(times[1:]) * 1000:.0f} ms")

    if args.which in ("both", "torch"):
        import torch
        import transformers
        torch.set_num_threads(args.threads)
        reference = transformers.AutoModelForSequenceClassification.from_pretrained(
            model.source, num_labels=2, attn_implementation="eager").float().eval()
        start_tensors = tensors_from_tree(classifier.weights, classifier.config, task="sequence", head=classifier.head)
        reference.load_state_dict({k: torch.from_numpy(v) for k, v in start_tensors.items()}, strict=False)
        optimizer = torch.optim.AdamW(reference.parameters(), lr=recipe.lr)
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                  "token_type_ids": torch.from_numpy(types), "labels": torch.from_numpy(y)}
        times = []
        for _ in range(args.steps + 1):
            start = time.perf_counter()
            optimizer.zero_grad()
            reference(**inputs).loss.backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
            optimizer.step()
            times.append(time.perf_counter() - start)
        print(f"torch     median step {statistics.median(times[1:]) * 1000:.0f} ms")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
