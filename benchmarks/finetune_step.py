"""Time one fine-tuning step (forward, backward, clipping, AdamW) of minibert and of torch, same model, batch, threads.

    .venv-reference/bin/python benchmarks/finetune_step.py [--task sequence] [--threads 1] [--batch 16]
                                                          [--steps 7] [--which both]

all-MiniLM-L6-v2, float32, one fixed padded batch of real sentences, the same initial head on both sides.
--task sequence: sentence pairs (16 x 23 tokens), dropout off (as before). --task token: the WNUT 2016 recipe's
shapes (benchmarks/finetune_wnut16.py: 16 tweets of about 31 tokens, its median batch; words tagged on their
first piece), dropout 0.1 (torch in train mode). Prints the median step's process CPU time and wall time
(CPU time is what the step costs; wall time on a shared machine includes waiting for a core) and the process's
peak resident memory. Run each side in its own process (--which minibert / --which torch) for a peak-memory
figure of that side alone, and alternate the two over several runs: the machine's load changes by the minute.
Run it from outside the repository: its top-level kernels/ folder would shadow the `kernels` package that
transformers imports.
"""

import argparse
import os
import resource
import statistics
import time

SENTENCES = ["A man is playing a guitar on the stage.", "The weather forecast says it will rain tomorrow afternoon.",
             "Two dogs run across a snowy field.", "She reads the newspaper every morning before work.",
             "The committee approved the new budget after a long debate.", "A child is eating an apple."]


def batch(task, size):
    """Examples and label names: sentence pairs labelled yes/no, or runs of three sentences (about 31 tokens,
    WNUT's median batch) with a tag per word."""
    from minibert.train.data import Examples
    if task == "sequence":
        texts = [SENTENCES[i % 6] for i in range(size)]
        pairs = [SENTENCES[(i + 1) % 6] for i in range(size)]
        return Examples(texts, ["yes" if i % 2 else "no" for i in range(size)], pairs), ["no", "yes"]
    tags = ["O", "B-person", "I-person", "B-geo-loc"]
    words = [" ".join(SENTENCES[(i + j) % 6] for j in range(3)).split() for i in range(size)]
    return Examples(words, [[tags[(i + w) % 4 if w % 3 == 0 else 0] for w in range(len(ws))]
                            for i, ws in enumerate(words)]), tags


def timed(step, steps):
    """(median CPU ms, median wall ms) of `steps` calls after one warm-up call."""
    cpu, wall = [], []
    for i in range(steps + 1):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        step()
        if i:
            cpu.append(time.process_time() - start_cpu)
            wall.append(time.perf_counter() - start_wall)
    return statistics.median(cpu) * 1000, statistics.median(wall) * 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=["sequence", "token"], default="sequence")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--dropout", type=float, default=None, help="default: 0 for sequence, 0.1 for token")
    parser.add_argument("--which", choices=["both", "minibert", "torch"], default="both")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import minibert
    from minibert.train.classifier import new_classifier
    from minibert.train.data import collate, tokenize_examples
    from minibert.train.finetune import TrainingRecipe, train_step
    from minibert.train.optimizer import trainable
    from minibert.train.hf_checkpoint import tensors_from_tree

    dropout = args.dropout if args.dropout is not None else (0.1 if args.task == "token" else 0.0)
    examples, labels = batch(args.task, args.batch)
    recipe = TrainingRecipe(lr=2e-5, dropout=dropout)
    model = minibert.load(backend="numpy")
    classifier = new_classifier(model, args.task, labels, recipe, np.random.default_rng(0))
    items = tokenize_examples(model.tokenizer, examples, args.task, {label: i for i, label in enumerate(labels)},
                              None)
    ids, mask, types, y = collate(items, model.config.pad_token_id, args.task)
    print(f"{args.task}: batch {ids.shape[0]} x {ids.shape[1]} tokens, dropout {dropout}, threads {args.threads}")

    if args.which in ("both", "minibert"):
        params, state = trainable(classifier.weights, classifier.head, classifier.config), {}
        rng = np.random.default_rng(1)
        cpu, wall = timed(lambda: train_step(classifier, items, params, state, recipe, recipe.lr, rng), args.steps)
        print(f"minibert  median step {cpu:.0f} ms CPU, {wall:.0f} ms wall")

    if args.which in ("both", "torch"):
        import torch
        import transformers
        torch.set_num_threads(args.threads)
        torch.manual_seed(1)
        auto = (transformers.AutoModelForSequenceClassification if args.task == "sequence"
                else transformers.AutoModelForTokenClassification)
        reference = auto.from_pretrained(model.source, num_labels=len(labels), attn_implementation="eager").float()
        reference.train(dropout > 0)
        start_tensors = tensors_from_tree(classifier.weights, classifier.config, task=args.task, head=classifier.head)
        reference.load_state_dict({k: torch.from_numpy(v) for k, v in start_tensors.items()}, strict=False)
        for module in reference.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = dropout
        optimizer = torch.optim.AdamW(reference.parameters(), lr=recipe.lr)
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                  "token_type_ids": torch.from_numpy(types), "labels": torch.from_numpy(y)}

        def step():
            optimizer.zero_grad()
            reference(**inputs).loss.backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
            optimizer.step()
        cpu, wall = timed(step, args.steps)
        print(f"torch     median step {cpu:.0f} ms CPU, {wall:.0f} ms wall")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
