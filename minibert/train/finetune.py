"""Fine-tuning without torch: AdamW, a linear warmup/decay schedule, gradient clipping, length-bucketed
batches, and checkpoints transformers loads.

The recipe is the one transformers' examples use for BertForSequenceClassification / ForTokenClassification:
AdamW with decoupled weight decay (no decay on biases and LayerNorm weights), the learning rate rising
linearly from 0 over the warmup steps and falling linearly to 0 at the last step, gradients clipped to a
global norm of 1. Each step is `backprop.loss_and_grads` then `adamw_update`, in plain NumPy.

Axes: B batch, T tokens, H hidden, K classes (labels).
"""

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .backprop import SEQUENCE_HEADS, TASKS, classifier_forward, loss_and_grads
from ..checkpoint.config import read_config
from ..errors import InputError, ModelFileError, OutputError, TrainingError
from ..files import atomic_directory
from .hf_checkpoint import architecture, has_pooler, tensors_from_tree, tree_from_tensors
from ..kernels.reference import IGNORE_INDEX
from ..backends.threads import BLAS
from .state import STATE_FILE
from ..tree import copy_tree, leaves
from ..checkpoint.weights import sinusoidal_positions, weight_set_of_layer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model")
# Written into every classifier directory: a directory holding it (or a training state) is minibert's own
# output, replaced whole by the next save; any other non-empty directory is refused as an output.
OUTPUT_MARK = "minibert_classifier.json"


@dataclass(frozen=True)
class Recipe:
    """How to train. Values are transformers' examples' defaults where they have one."""
    epochs: int = 3
    lr: float = 2e-5                 # peak learning rate, reached after the warmup
    batch_size: int = 16
    warmup_ratio: float = 0.0        # share of all steps spent warming up from 0
    weight_decay: float = 0.01       # decoupled (AdamW); not on biases and LayerNorm weights
    betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0       # clip the global gradient norm to this; 0 turns clipping off
    dropout: float = 0.1             # every dropout of the encoder and head while training
    max_length: Optional[int] = None  # tokens per example (default: the model's limit)
    seed: int = 0                    # head initialisation, batch order and dropout masks
    dtype: str = "float32"           # "float32" or "float64" for weights, activations and optimizer state
    patience: Optional[int] = None   # stop when the dev accuracy has not improved for this many epochs


# ---- examples and batches ------------------------------------------------------------------------------------

@dataclass
class Examples:
    """Labelled data. Sequence task: texts (and text_pairs) with one label each. Token task: texts are
    lists of words and labels lists of per-word labels."""
    texts: list
    labels: list
    text_pairs: Optional[list] = None


def word_spans(words):
    """Character spans of each word in ' '.join(words): [(start, end), ...]."""
    spans, start = [], 0
    for word in words:
        spans.append((start, start + len(word)))
        start += len(word) + 1
    return spans


def first_piece_labels(words, word_labels, offsets, word_ids, label2id):
    """Per-token label ids [n] for one sentence: the label of a word on its first piece, -100 on the other
    pieces and on special tokens (transformers' token-classification recipe). Tokens are assigned to words
    by their character offsets in ' '.join(words)."""
    spans = word_spans(words)
    starts = np.array([s for s, _ in spans])                                   # [W]
    labels = np.full(len(offsets), IGNORE_INDEX, dtype=np.int64)               # [n]
    seen = set()
    for t, ((start, end), word_id) in enumerate(zip(offsets, word_ids)):
        if word_id < 0 or end <= start:
            continue
        w = int(np.searchsorted(starts, start, side="right") - 1)
        if w not in seen:
            seen.add(w)
            labels[t] = label2id[word_labels[w]]
    return labels


def tokenize_examples(tokenizer, examples, task, label2id, max_length):
    """All examples as padded-per-example arrays: list of (ids [n], types [n], labels scalar or [n])."""
    if task == "sequence":
        batch = tokenizer(examples.texts, examples.text_pairs, max_length=max_length)
        labels = [label2id[label] for label in examples.labels]
    else:
        texts = [" ".join(words) for words in examples.texts]
        batch = tokenizer(texts, max_length=max_length)
        labels = [first_piece_labels(words, tags, offsets, word_ids, label2id)
                  for words, tags, offsets, word_ids in zip(examples.texts, examples.labels, batch.offsets,
                                                            batch.word_ids)]
    lengths = batch.attention_mask.sum(axis=1)                                  # [N]
    return [(batch.input_ids[i, :n], batch.token_type_ids[i, :n], labels[i]) for i, n in enumerate(lengths)]


def length_buckets(lengths, batch_size, rng):
    """Batches of example indices: examples sorted by length (ties in a seeded random order) and cut into
    batches of similar length, so little padding is computed; the batches come in a seeded random order."""
    order = np.lexsort((rng.permutation(len(lengths)), np.asarray(lengths)))    # [N] by length, ties shuffled
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(items, pad_id, task):
    """A list of (ids, types, labels) -> input_ids, attention_mask, token_type_ids [B, T], labels [B] or [B, T]."""
    B, T = len(items), max(len(ids) for ids, _, _ in items)
    input_ids = np.full((B, T), pad_id, dtype=np.int64)                         # [B, T]
    mask = np.zeros((B, T), dtype=np.int64)                                     # [B, T]
    types = np.zeros((B, T), dtype=np.int64)                                    # [B, T]
    labels = (np.zeros(B, dtype=np.int64) if task == "sequence"
              else np.full((B, T), IGNORE_INDEX, dtype=np.int64))               # [B] or [B, T]
    for b, (ids, tt, label) in enumerate(items):
        n = len(ids)
        input_ids[b, :n], mask[b, :n], types[b, :n] = ids, 1, tt
        if task == "sequence":
            labels[b] = label
        else:
            labels[b, :n] = label
    return input_ids, mask, types, labels


# ---- parameters, AdamW, schedule, clipping -----------------------------------------------------------------

def trainable(weights, head, config):
    """(name, array) of every parameter that trains, each shared array once, in a fixed order. Not trained,
    as in transformers: DistilBERT's sinusoidal position table and its all-zero token-type row."""
    frozen = set()
    if config.sinusoidal_positions:
        frozen.add(id(weights["embeddings"]["position"]))
    if not config.token_type_embeddings:
        frozen.add(id(weights["embeddings"]["token_type"]))
    seen, out = set(frozen), []
    for name, array in [*leaves(weights), *leaves(head, "head")]:
        if id(array) not in seen:
            seen.add(id(array))
            out.append((name, array))
    return out


def decays(name):
    """transformers' examples: no weight decay on biases and LayerNorm weights. Their rule is by name ("bias"
    anywhere in it), so MPNet's relative position bias table (encoder.relative_attention_bias.weight) does
    not decay either."""
    return not (name.endswith(".b") or ".ln." in name or name.split(".")[-2] in ("ln", "attn_ln", "ffn_ln")
                or name.startswith("relative_attention_bias."))


def lr_at(step, total_steps, warmup_steps, peak):
    """Linear warmup from 0 to the peak over warmup_steps, then linear decay to 0 at total_steps; `step`
    counts optimizer steps from 0 (as transformers' get_linear_schedule_with_warmup)."""
    if step < warmup_steps:
        return peak * step / max(1, warmup_steps)
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def clip_by_global_norm(grads, max_norm):
    """Scale every gradient by max_norm / (norm + 1e-6) when the global norm is above max_norm (torch's
    clip_grad_norm_); returns the norm before clipping."""
    norm = float(np.sqrt(sum(float(np.linalg.norm(g.reshape(-1))) ** 2
                             for g in grads)))   # as torch: per tensor, then of the norms
    coefficient = max_norm / (norm + 1e-6)
    if max_norm > 0 and coefficient < 1:
        for g in grads:
            g *= g.dtype.type(coefficient)
    return norm


def adamw_update(params, grads, state, *, lr, betas, eps, weight_decay, decay, fused=True):
    """One AdamW step in place, in torch's order of operations: decoupled decay p *= 1 - lr * wd, moments
    m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, then p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    state: {"step": t, "m": [...], "v": [...]} (created on the first call). fused: the same arithmetic in
    one Numba loop per array (kernels/cpu_backward.adamw) instead of NumPy's pass per operation."""
    from ..kernels import cpu_backward
    if not state:
        state.update(step=0, m=[np.zeros_like(p) for p in params], v=[np.zeros_like(p) for p in params])
    state["step"] += 1
    t = state["step"]
    b1, b2 = betas
    step_size = lr / (1 - b1 ** t)
    root_correction = np.sqrt(1 - b2 ** t)
    for p, g, m, v, d in zip(params, grads, state["m"], state["v"], decay):
        dtype = p.dtype.type
        decay_factor = dtype(1 - lr * weight_decay) if d and weight_decay else dtype(1)
        if fused and all(a.flags.c_contiguous for a in (p, g, m, v)):
            cpu_backward.adamw(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), decay_factor,
                               dtype(1 - b1), dtype(b2), dtype(1 - b2), dtype(step_size), dtype(root_correction),
                               dtype(eps))
            continue
        p *= decay_factor
        m += (g - m) * dtype(1 - b1)                    # torch's lerp: m + (1 - b1) (g - m)
        v *= dtype(b2)
        v += g * g * dtype(1 - b2)
        p -= dtype(step_size) * m / (np.sqrt(v) / dtype(root_correction) + dtype(eps))


# ---- the classifier users keep -------------------------------------------------------------------------------

def init_head(config, task, num_labels, rng, dtype):
    """A new head as transformers initialises one: weights N(0, 0.02), biases 0."""
    H = config.hidden_size
    head = {"out": {"w": (rng.standard_normal((H, num_labels)) * 0.02).astype(dtype),
                    "b": np.zeros(num_labels, dtype=dtype)}}
    if task == "sequence" and SEQUENCE_HEADS[config.model_type].dense_activation:
        head["dense"] = {"w": (rng.standard_normal((H, H)) * 0.02).astype(dtype), "b": np.zeros(H, dtype=dtype)}
    return head


@dataclass
class Classifier:
    """A fine-tuned encoder with its head: predict labels, probabilities, save as a Hugging Face directory."""
    config: object
    weights: dict
    head: dict
    task: str
    labels: list                     # id -> label
    tokenizer: object
    source: str                      # the directory config.json came from (a sentence-transformers 0_Transformer/)
    max_length: Optional[int] = None
    history: list = field(default_factory=list)   # per epoch: {"epoch", "train_loss", "dev_accuracy"?}
    problem_type: Optional[str] = None            # config.json's, for a classifier transformers trained

    def logits(self, texts, text_pairs=None, batch_size=32):
        """Sequence: [N, K]. Token: a list of [n_tokens, K] per text (special tokens included)."""
        if not len(texts):
            return np.zeros((0, len(self.labels)), dtype=self.head["out"]["w"].dtype) if self.task == "sequence" else []
        out, cut = [], 0
        with BLAS:     # as the forward holds it: NumPy's own BLAS threads crawl on a busy machine
            for start in range(0, len(texts), batch_size):
                part = texts[start:start + batch_size]
                pairs = None if text_pairs is None else text_pairs[start:start + batch_size]
                batch = self.tokenizer(part, pairs, max_length=self.max_length)
                cut += int(batch.truncated.sum())
                logits, _ = classifier_forward(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                                               self.weights, self.head, self.config, task=self.task,
                                               keep_activations=False)
                if not np.isfinite(logits).all():   # NaN probabilities are not JSON, NaN labels are arbitrary
                    bad = start + int(np.flatnonzero(~np.isfinite(logits).reshape(len(part), -1).all(axis=1))[0])
                    raise ModelFileError(f"{self.source}: the classifier's outputs for text {bad} are not finite "
                                         "numbers (NaN or inf): its weights are damaged or its training "
                                         "diverged; retrain it (a lower learning rate)")
                if self.task == "sequence":
                    out.append(logits)
                else:
                    out += [logits[b, :n] for b, n in enumerate(batch.attention_mask.sum(axis=1))]
        if cut:       # as encode warns: a prediction from a text's start, or words (tag) left without a label
            from ..errors import warn_caller
            warn_caller(f"minibert: {cut} of {len(texts)} texts were longer than "
                        f"{self.max_length or self.tokenizer.max_length} tokens and were truncated"
                        + ("; their words past the cut get no label" if self.task == "token" else ""))
        return np.concatenate(out) if self.task == "sequence" else out

    def predict_proba(self, texts, text_pairs=None):
        """Sequence task: class probabilities [N, K], columns in the order of `labels`; [K] for one str."""
        from ..tokenizer import as_text_list
        self.require("sequence", "predict_proba")
        # One output (a score: cross-encoders, regression) or independent labels: a softmax over the outputs
        # would be 1.0 for every text, or probabilities the model was not trained to give.
        if len(self.labels) == 1 or self.problem_type in ("regression", "multi_label_classification"):
            raise InputError(f"this classifier's outputs are {'one score' if len(self.labels) == 1 else 'scores'} "
                             f"(problem_type {self.problem_type!r}), not one label among {len(self.labels)}; "
                             "use logits(texts) (apply a sigmoid for multi-label probabilities)")
        # A str is one text (as in encode), never a sequence of one-character texts.
        logits = self.logits(as_text_list(texts, "texts"),
                             None if text_pairs is None else as_text_list(text_pairs, "text_pairs"))   # [N, K]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = e / e.sum(axis=1, keepdims=True)                                         # [N, K]
        return probabilities[0] if isinstance(texts, str) else probabilities

    def predict(self, texts, text_pairs=None):
        """Sequence task: one label per text (or pair); the label alone for one str."""
        from ..tokenizer import as_text_list
        self.require("sequence", "predict")
        labels = [self.labels[i] for i in self.predict_proba(as_text_list(texts, "texts"), text_pairs).argmax(axis=1)]
        return labels[0] if isinstance(texts, str) else labels

    def tag(self, texts):
        """Token task: per text a list of (word, label, (start, end)) with character spans in the text; a
        word's label is its first piece's. One str gives its one list."""
        from ..tokenizer import as_text_list
        self.require("token", "tag")
        if isinstance(texts, str):
            return self.tag([texts])[0]
        texts = as_text_list(texts, "texts")
        batch = self.tokenizer(texts, max_length=self.max_length)
        per_text = self.logits(texts)
        out = []
        for b, logits in enumerate(per_text):
            words, last = [], None
            for t, word_id in enumerate(batch.word_ids[b][:len(logits)]):
                start, end = (int(v) for v in batch.offsets[b][t])
                # Byte-level BPE (RoBERTa) makes pieces of extra spaces: not words, and never trained
                # (first_piece_labels skips them too).
                if word_id < 0 or not texts[b][start:end].strip():
                    continue
                if word_id != last:
                    words.append([texts[b][start:end], self.labels[int(logits[t].argmax())], (start, end)])
                    last = word_id
                else:                       # a later piece of the same word: widen its span
                    words[-1][2] = (words[-1][2][0], end)
                    words[-1][0] = texts[b][words[-1][2][0]:end]
            out.append([tuple(w) for w in words])
        return out

    def require(self, task, what):
        if self.task != task:
            raise InputError(f"{what} is for {task} classifiers; this one is a {self.task} classifier")

    def save(self, directory):
        """A Hugging Face checkpoint directory: model.safetensors under transformers' names for the task
        model, config.json with architectures, id2label and label2id, and the tokenizer files. The directory
        is written whole under a temporary name and then takes `directory`'s place, so no file of an earlier
        save stays behind; a directory minibert did not write is refused (check_output_directory)."""
        directory = Path(directory)
        check_output_directory(directory, [self.source, getattr(self.tokenizer, "dir", self.source)],
                               resaving=True)
        with atomic_directory(directory) as temporary:
            self.write_files(temporary)
        return directory

    def write_files(self, directory):
        """Classifier.save's files, written into the existing, empty `directory`."""
        from safetensors.numpy import save
        directory = Path(directory)
        tensors = tensors_from_tree(self.weights, self.config, task=self.task, head=self.head)
        if self.config.sinusoidal_positions:      # transformers rebuilds the fixed table itself
            tensors = {n: t for n, t in tensors.items() if not n.endswith("position_embeddings.weight")}
        # Serialized here and written by Python: safetensors' own writer made 0600 files and raised its own
        # error on a full disk.
        (directory / "model.safetensors").write_bytes(
            save({name: np.ascontiguousarray(t, dtype=np.float32) for name, t in tensors.items()},
                 metadata={"format": "pt"}))
        raw = json.loads((Path(self.source) / "config.json").read_text(encoding="utf-8"))
        raw["architectures"] = [architecture(self.config, self.task)]
        # The weights are written in float32: a source's float16 would make transformers (dtype "auto", its
        # default from v5) load them in half precision, with other predictions.
        for key in [k for k in ("torch_dtype", "dtype") if k in raw] or ["torch_dtype"]:
            raw[key] = "float32"
        raw.pop("problem_type", None)      # a source cross-encoder's "regression" is not what this one is
        raw["id2label"] = {str(i): label for i, label in enumerate(self.labels)}
        raw["label2id"] = {label: i for i, label in enumerate(self.labels)}
        (directory / "config.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
        # From the folder the tokenizer was read from: the one above the model's when only that one has it.
        tokenizer_dir = Path(getattr(self.tokenizer, "dir", self.source))
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, directory / name)
        (directory / OUTPUT_MARK).write_text(json.dumps({"written_by": "minibert", "task": self.task}) + "\n",
                                             encoding="utf-8")
        return directory


def is_own_output(directory):
    """Whether `directory` is a classifier directory minibert wrote (its mark, or a training state)."""
    return any((Path(directory) / name).is_file() for name in (OUTPUT_MARK, STATE_FILE))


def check_output_directory(directory, sources, *, resaving=False):
    """Refuse, before any work, a classifier output that would destroy what the user owns: the source model
    (or a directory inside it or holding it), a file, or a non-empty directory minibert did not write.
    resaving: a classifier loaded from its own minibert directory may be saved back there."""
    directory = Path(directory)
    target = directory.resolve()
    for source in sources:
        source = Path(source).resolve()
        if target == source and resaving and is_own_output(directory):
            continue
        if target == source or source in target.parents or target in source.parents:
            where = ("is" if target == source else "is inside" if source in target.parents else "holds")
            raise OutputError(f"{directory}: the output directory {where} the model directory {source}; saving "
                              "there would replace the model's own files: choose another output directory")
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{directory}: exists and is not a directory; choose another output directory")
    if directory.is_dir() and not is_own_output(directory):
        entries = sorted(os.listdir(directory))
        if entries:
            raise OutputError(f"{directory}: holds files minibert did not write ({', '.join(entries[:3])}"
                              f"{', ...' if len(entries) > 3 else ''}); a classifier replaces its output directory "
                              "whole: choose a new or empty directory")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied")
    except OSError as e:
        raise OutputError(f"{directory}: cannot write the checkpoint there ({e.strerror or e}); choose a "
                          "writable place") from None


def empty_weights(config, dtype):
    """A weights tree of zeros with the model's structure (the template tree_from_tensors fills)."""
    E, H, I = config.embedding_size, config.hidden_size, config.intermediate_size

    def linear(n_in, n_out):
        return {"w": np.zeros((n_in, n_out), dtype), "b": np.zeros(n_out, dtype)}

    def norm(n):
        return {"g": np.ones(n, dtype), "b": np.zeros(n, dtype)}
    position = (sinusoidal_positions(config.max_position_embeddings, E).astype(dtype) if config.sinusoidal_positions
                else np.zeros((config.max_position_embeddings, E), dtype))
    sets = [{"qkv": linear(H, 3 * H), "attn_out": linear(H, H), "attn_ln": norm(H), "ffn_in": linear(H, I),
             "ffn_out": linear(I, H), "ffn_ln": norm(H)} for _ in range(config.num_hidden_groups)]
    relative = ({"table": np.zeros((config.relative_attention_num_buckets, config.num_attention_heads), dtype)}
                if config.relative_attention_num_buckets else None)
    return {"embeddings": {"word": np.zeros((config.vocab_size, E), dtype), "position": position,
                           "token_type": np.zeros((config.type_vocab_size, E), dtype), "ln": norm(E)},
            "embedding_projection": linear(E, H) if config.embedding_projection else None,
            "layers": [sets[g] for g in weight_set_of_layer(config)], "pooler": None,
            "relative_attention_bias": relative}


def load_classifier(directory, *, dtype="float32"):
    """A Classifier from a checkpoint directory saved by `Classifier.save` or by transformers'
    ...ForSequenceClassification / ...ForTokenClassification.save_pretrained (safetensors or pytorch_model.bin)."""
    from ..tokenizer import Tokenizer
    from ..checkpoint.layout import checkpoint_files
    from ..checkpoint.safetensors import Checkpoint
    directory = Path(directory)
    config = read_config(directory / "config.json")
    raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    arch = next((a for a in raw.get("architectures") or [] if a.endswith(("ForSequenceClassification",
                                                                           "ForTokenClassification"))), None)
    if arch is None:
        raise ModelFileError(f"{directory}: config.json's architectures {raw.get('architectures')} name no "
                             "...ForSequenceClassification or ...ForTokenClassification model")
    task = "sequence" if arch.endswith("ForSequenceClassification") else "token"
    id2label = raw.get("id2label") or {}
    labels = ([id2label[str(i)] for i in range(len(id2label))]
              if all(str(i) in id2label for i in range(len(id2label))) else None)
    if not labels:
        raise ModelFileError(f"{directory}: config.json has no usable id2label ({id2label!r})")
    np_dtype = np.dtype(dtype).type
    # Through load's reader: safetensors or pytorch_model.bin (older hub classifiers have only that), shards.
    checkpoint = Checkpoint(checkpoint_files(directory))
    stored = set(checkpoint.names())
    tensors = {name: checkpoint.read(name, np_dtype) for name in stored
               if checkpoint.location[name][1] in ("F16", "BF16", "F32", "F64")}   # not integer buffers (position_ids)
    weights, head = tree_from_tensors(tensors, config, task=task, dtype=np_dtype,
                                      template=empty_weights(config, np_dtype))
    expected = set(tensors_from_tree(weights, config, task=task, head=head))
    expected |= {n for n in stored if n.endswith(("position_ids", "token_type_ids"))}   # buffers
    needed = set(tensors_from_tree(empty_weights(config, np_dtype), config, task=task,
                                   head=init_head(config, task, len(labels), np.random.default_rng(0), np_dtype)))
    if SEQUENCE_HEADS[config.model_type].pooler and task == "sequence":
        needed |= {n for n in expected if "pooler" in n}
    if config.sinusoidal_positions:
        needed = {n for n in needed if not n.endswith("position_embeddings.weight")}
    missing, unexpected = sorted(needed - stored), sorted(stored - expected)
    if missing or unexpected or (task == "sequence" and SEQUENCE_HEADS[config.model_type].pooler
                                 and weights["pooler"] is None):
        raise ModelFileError(f"{directory}: the checkpoint does not match a {arch}: missing "
                             f"{missing[:5] or 'pooler'}, unexpected {unexpected[:5]}")
    if head["out"]["w"].shape[1] != len(labels):
        raise ModelFileError(f"{directory}: the head predicts {head['out']['w'].shape[1]} classes but id2label "
                             f"names {len(labels)}")
    return Classifier(config=config, weights=weights, head=head, task=task, labels=labels,
                      tokenizer=Tokenizer(directory, config), source=str(directory),
                      problem_type=raw.get("problem_type"))


# ---- training ----------------------------------------------------------------------------------------------

def accuracy(classifier, examples):
    """Share of correct labels: per example (sequence) or per word (token, first pieces)."""
    if classifier.task == "sequence":
        predicted = classifier.predict(examples.texts, examples.text_pairs)
        return float(np.mean([p == t for p, t in zip(predicted, examples.labels)]))
    label2id = {label: i for i, label in enumerate(classifier.labels)}
    items = tokenize_examples(classifier.tokenizer, examples, "token", label2id, classifier.max_length)
    correct = total = 0
    for logits, (_, _, labels) in zip(classifier.logits([" ".join(w) for w in examples.texts]), items):
        counted = labels != IGNORE_INDEX
        correct += int((logits.argmax(axis=1)[counted] == labels[counted]).sum())
        total += int(counted.sum())
    return correct / max(total, 1)


def python_value(value):
    """A NumPy scalar as the Python value it holds (np.int64(1) -> 1, np.str_('a') -> 'a'); others as given."""
    return value.item() if isinstance(value, np.generic) else value


def checked_labels(labels, what):
    """Labels as Python values, checked: NumPy scalars converted (an np.int64 label failed only when the
    checkpoint's config.json was written, after a whole epoch); None, NaN, inf and blank strings refused
    naming the example; one type for all (1 and "1", or 1 and True, would be two classes that print alike)."""
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise InputError(f"{what}: labels must be a list (or array) of labels, found {type(labels).__name__}")
    out, kinds = [], {}
    for i, label in enumerate(labels):
        label = python_value(label)
        if (label is None or (isinstance(label, float) and not np.isfinite(label))
                or (isinstance(label, str) and not label.strip())):
            raise InputError(f"{what}: label {i} is {label!r}; every example needs a label")
        if not isinstance(label, (str, int, float)):
            raise InputError(f"{what}: label {i} is a {type(label).__name__} ({label!r}); labels are str, int or "
                             "float")
        kinds.setdefault(type(label).__name__, i)
        out.append(label)
    if len(kinds) > 1:
        raise InputError(f"{what}: labels mix types ({', '.join(f'{k} at {i}' for k, i in kinds.items())}); they "
                         "would be different classes that print alike: give every label the same type")
    return out


def checked_texts(texts, what, words=False):
    """Texts (words=True: lists of words) as a list of Python str, refusing anything else by position."""
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__len__"):
        raise InputError(f"{what}: give a list (or array) of {'word lists' if words else 'texts'}, found "
                         f"{type(texts).__name__}")
    if words:
        return [checked_texts(sentence, f"{what} sentence {i}") for i, sentence in enumerate(texts)]
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{what}: item {i} is a {type(text).__name__} ({text!r:.40}), not a str")
        out.append(str(text))          # np.str_ -> str
    return out


def checked_examples(examples, task, what):
    """`examples` with Python lists throughout (NumPy arrays and scalars converted), checked up front."""
    if not isinstance(examples, Examples):
        raise InputError(f"{what}: give an Examples(texts=..., labels=...), found {type(examples).__name__}")
    texts = checked_texts(examples.texts, f"{what} texts", words=task == "token")
    pairs = None if examples.text_pairs is None else checked_texts(examples.text_pairs, f"{what} text_pairs")
    if task == "token":
        if isinstance(examples.labels, (str, bytes)) or not hasattr(examples.labels, "__len__"):
            raise InputError(f"{what}: labels must be one list of labels per sentence")
        per_sentence = [python_value(tags) for tags in examples.labels]
        if any(isinstance(tags, (str, bytes)) or not hasattr(tags, "__len__") for tags in per_sentence):
            raise InputError(f"{what}: labels must be one list of labels per sentence (one per word)")
        flat = checked_labels([tag for tags in per_sentence for tag in tags], f"{what} labels")
        labels, start = [], 0
        for tags in per_sentence:
            labels.append(flat[start:start + len(tags)])
            start += len(tags)
    else:
        labels = checked_labels(examples.labels, f"{what} labels")
    checked = Examples(texts=texts, labels=labels, text_pairs=pairs)
    check_examples(checked, task, what)
    return checked


def check_examples(examples, task, what):
    if len(examples.texts) != len(examples.labels) or not examples.texts:
        raise InputError(f"{what}: {len(examples.texts)} texts but {len(examples.labels)} labels; "
                         "give one label per text (at least one)")
    if examples.text_pairs is not None and len(examples.text_pairs) != len(examples.texts):
        raise InputError(f"{what}: {len(examples.text_pairs)} pair texts for {len(examples.texts)} texts")
    if task == "token":
        for i, (words, tags) in enumerate(zip(examples.texts, examples.labels)):
            if isinstance(words, str) or len(words) != len(tags):
                raise InputError(f"{what}: sentence {i} must be a list of words with one label per word "
                                 f"(found {len(tags)} labels)")


def is_number(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def is_count(x, low):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) and x >= low


def check_recipe(recipe):
    """Every recipe value checked before the model loads: a bad one would train nothing and save nothing
    (epochs 0), divide by zero (batch_size 0), give NaN losses and a checkpoint of them (a negative
    batch_size), or a NumPy traceback after loading (seed -1)."""
    if recipe.dtype not in ("float32", "float64"):
        raise InputError(f"recipe.dtype must be 'float32' or 'float64', found {recipe.dtype!r}")
    for name, ok in (("epochs", is_count(recipe.epochs, 1)), ("batch_size", is_count(recipe.batch_size, 1)),
                     ("lr", is_number(recipe.lr) and np.isfinite(recipe.lr) and recipe.lr >= 0),
                     ("warmup_ratio", is_number(recipe.warmup_ratio) and 0 <= recipe.warmup_ratio <= 1),
                     ("dropout", is_number(recipe.dropout) and 0 <= recipe.dropout < 1),
                     ("weight_decay", is_number(recipe.weight_decay) and 0 <= recipe.weight_decay < np.inf),
                     ("max_grad_norm", is_number(recipe.max_grad_norm) and 0 <= recipe.max_grad_norm < np.inf),
                     ("adam_eps", is_number(recipe.adam_eps) and 0 < recipe.adam_eps < np.inf),
                     ("betas", isinstance(recipe.betas, (tuple, list)) and len(recipe.betas) == 2
                      and all(is_number(b) and 0 <= b < 1 for b in recipe.betas)),
                     ("seed", is_count(recipe.seed, 0)),
                     ("max_length", recipe.max_length is None or is_count(recipe.max_length, 1)),
                     ("patience", recipe.patience is None or is_count(recipe.patience, 1))):
        if not ok:
            raise InputError(f"recipe.{name} {getattr(recipe, name)!r} is out of range (epochs, batch_size, "
                             "max_length, patience: ints >= 1; seed: an int >= 0; lr, weight_decay, max_grad_norm "
                             ">= 0; adam_eps > 0; warmup_ratio in [0, 1]; dropout and betas in [0, 1))")


def finetune(model, train, *, task="sequence", dev=None, recipe=Recipe(), labels=None, progress=None,
             on_epoch=None, checkpoint_dir=None, resume=False):
    """Fine-tune `model` (a minibert.Model, or a directory / None for minibert.load) on `train` (Examples).

    labels: the label names in id order (default: sorted labels of train). Each epoch's mean training
    loss, and the dev accuracy when `dev` is given, go to the returned Classifier's history. progress: a
    stream (e.g. sys.stderr) for a bar with the running loss when it is a terminal, a line every 10 seconds
    otherwise (minibert.progress), and a line per epoch; or None.
    on_epoch: called with the Classifier after each epoch.

    checkpoint_dir: after each epoch the checkpoint (Classifier.save) is written there, and beside it the
    state an interrupted run resumes from (minibert.train.state); resume=True continues the run saved there
    after its last finished epoch, and finishes with what the uninterrupted run would have given.
    recipe.patience: stop when the dev accuracy has not improved for that many epochs; the best epoch's
    weights are the ones returned (and the checkpoint is only rewritten when an epoch is the best so far).
    """
    from .. import progress as progress_report
    from . import state as train_state
    from ..api import Model, load
    if task not in TASKS:
        raise InputError(f"task must be one of {TASKS}, found {task!r}")
    check_recipe(recipe)
    if recipe.patience is not None and dev is None:
        raise InputError(f"recipe.patience {recipe.patience}: early stopping needs a dev set (dev=, --dev) and "
                         "a patience of at least 1 epoch")
    if resume and checkpoint_dir is None:
        raise InputError("resume needs the checkpoint directory of the run to continue (checkpoint_dir=, --out)")
    train = checked_examples(train, task, "train")
    if dev is not None:
        dev = checked_examples(dev, task, "dev")

    def flat(examples):
        return [label for tags in examples.labels for label in tags] if task == "token" else list(examples.labels)
    labels = sorted(set(flat(train)), key=str) if labels is None else checked_labels(labels, "labels")
    if len(labels) < 2:      # a softmax over one class: loss 0 from the start, nothing to learn
        raise InputError(f"train has one label ({labels}); a classifier needs at least two (or pass labels=)")
    if len(set(labels)) != len(labels):
        raise InputError(f"labels {labels} name a class twice")
    label2id = {label: i for i, label in enumerate(labels)}
    # Checked before training: a dev label the head has no class for would otherwise fail after an epoch.
    for what, examples in (("train", train), ("dev", dev or Examples(texts=[], labels=[]))):
        unknown = sorted({str(label) for label in flat(examples) if label not in label2id})
        if unknown:
            raise InputError(f"{what} has label(s) {', '.join(unknown[:5])} not in labels {labels}"
                             + ("; give every label to finetune(labels=...)" if what == "dev" else ""))
    if checkpoint_dir is not None:       # now, not when the first epoch's checkpoint is written
        local = [model] if isinstance(model, (str, os.PathLike)) and Path(model).exists() else []
        check_output_directory(checkpoint_dir, local)
    if not isinstance(model, Model):
        model = load(model, backend="numpy", dtype=recipe.dtype)
    config = model.config
    if checkpoint_dir is not None:       # a hub id or the bundled model: its folder is known once loaded
        check_output_directory(checkpoint_dir, [model.source, model.encoder_dir])
    rng = np.random.default_rng(recipe.seed)
    classifier = new_classifier(model, task, labels, recipe, rng)
    items = tokenize_examples(model.tokenizer, train, task, label2id, recipe.max_length)
    steps_per_epoch = -(-len(items) // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = int(np.ceil(recipe.warmup_ratio * total))
    params = trainable(classifier.weights, classifier.head, config)
    run = None
    if checkpoint_dir is not None:
        dev_items = None if dev is None else tokenize_examples(model.tokenizer, dev, task, label2id, recipe.max_length)
        run = train_state.describe_run(recipe, task, labels, model.source, items, dev_items)
    state, first_epoch, best = {}, 0, None       # AdamW's state; best: {"epoch", "metric", "params"}
    if resume:
        state, first_epoch, best = resume_run(checkpoint_dir, run, recipe, classifier, params, rng)
    step = first_epoch * steps_per_epoch
    report = progress_report.reporter(progress, total, recipe.epochs, initial=step)
    try:
        with BLAS:      # the forward's thread policy: one BLAS thread (an epoch ran 6-10x slower on a busy machine)
            for epoch in range(first_epoch + 1, recipe.epochs + 1):
                losses = []
                for batch_indices in length_buckets([len(item[0]) for item in items], recipe.batch_size, rng):
                    lr = lr_at(step, total, warmup, recipe.lr)
                    try:
                        loss = train_step(classifier, [items[i] for i in batch_indices], params, state, recipe, lr,
                                          rng)
                    except TrainingError as e:
                        raise TrainingError(diverged(step + 1, epoch, e, recipe, checkpoint_dir)) from None
                    losses.append(loss)
                    step += 1
                    report.step(epoch=epoch, step=step, loss=loss, running=float(np.mean(losses)), lr=lr,
                                epoch_end=len(losses) == steps_per_epoch)
                if not all(np.isfinite(p).all() for _, p in params):     # finite steps can still overflow
                    raise TrainingError(diverged(step, epoch, "a weight is no longer a finite number", recipe,
                                                 checkpoint_dir))
                record = {"epoch": epoch, "train_loss": float(np.mean(losses))}
                if dev is not None:
                    record["dev_accuracy"] = accuracy(classifier, dev)
                improved = recipe.patience is None or best is None or record["dev_accuracy"] > best["metric"]
                if recipe.patience is not None:
                    if improved:
                        best = {"epoch": epoch, "metric": record["dev_accuracy"],
                                "params": [p.copy() for _, p in params]}
                    record["best_epoch"] = best["epoch"]
                classifier.history.append(record)
                if checkpoint_dir is not None:
                    save_checkpoint(classifier, checkpoint_dir, improved, params=params, adam=state, rng=rng,
                                    epoch=epoch, history=classifier.history, run=run,
                                    best=None if best is None else {**best, "params": None if improved
                                                                    else best["params"]})
                shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
                report.message(shown + (f"; saved {checkpoint_dir}" if checkpoint_dir is not None and improved
                                        else ""))
                if on_epoch is not None:
                    on_epoch(classifier)
                if recipe.patience is not None and epoch - best["epoch"] >= recipe.patience:
                    report.message(f"early stopping: no better dev accuracy for {recipe.patience} epoch(s); the "
                                   f"best was epoch {best['epoch']} ({best['metric']:.4f})")
                    break
    finally:
        report.close()
    if best is not None and best["epoch"] != classifier.history[-1]["epoch"]:
        for (_, p), value in zip(params, best["params"]):
            p[...] = value
    return classifier


def diverged(step, epoch, cause, recipe, checkpoint_dir):
    """The one line a diverged run stops with."""
    kept = (f"; {checkpoint_dir} keeps what it held before this epoch"
            if checkpoint_dir is not None and Path(checkpoint_dir).exists() else "")
    return (f"training diverged at step {step} (epoch {epoch}): {cause}; nothing of this epoch was saved{kept}. "
            f"Try a lower learning rate (it was {recipe.lr:g}) or check the data")


def save_checkpoint(classifier, checkpoint_dir, improved, **state):
    """After an epoch: the classifier and the training state, written as one new directory that replaces the
    previous epoch's (or an earlier run's) whole; when the classifier did not improve, the state file alone."""
    from . import state as train_state
    if not improved:
        train_state.save_state(checkpoint_dir, **state)
        return
    with atomic_directory(checkpoint_dir) as temporary:
        classifier.write_files(temporary)
        train_state.save_state(temporary, **state)


def resume_run(checkpoint_dir, run, recipe, classifier, params, rng):
    """Put the run saved in checkpoint_dir back: parameters (in place, so shared arrays stay shared), the
    generator's state and the history. Returns (AdamW's state, the last finished epoch, the best epoch or None)."""
    from . import state as train_state
    saved = train_state.load_state(checkpoint_dir, params, run)
    stopped = (recipe.patience is not None and saved["best"] is not None
               and saved["epoch"] - saved["best"]["epoch"] >= recipe.patience)
    if saved["epoch"] >= recipe.epochs or stopped:
        raise InputError(f"{checkpoint_dir}: the run saved there has finished (epoch {saved['epoch']} of "
                         f"{recipe.epochs}{', stopped early' if stopped else ''}); nothing to resume")
    for (_, p), value in zip(params, saved["params"]):
        p[...] = value
    rng.bit_generator.state = saved["rng_state"]
    classifier.history = saved["history"]
    best = saved["best"]
    if best is not None and best["params"] is None:       # the last finished epoch was the best one
        best["params"] = [p.copy() for _, p in params]
    return saved["adam"], saved["epoch"], best


def new_classifier(model, task, labels, recipe, rng):
    """A Classifier holding a writable copy of the model's weights in recipe.dtype and a new head drawn
    from rng (and a new pooler where the family's head needs one and the checkpoint has none)."""
    dtype = np.dtype(recipe.dtype).type
    config = model.config
    weights = copy_tree(model.weights, dtype)
    if not has_pooler(config, task):      # as transformers' task model: the pooler is not part of it
        weights["pooler"] = None
    elif weights["pooler"] is None:
        H = config.hidden_size     # a checkpoint saved without its pooler: a new one, as transformers does
        weights["pooler"] = {"w": (rng.standard_normal((H, H)) * 0.02).astype(dtype), "b": np.zeros(H, dtype)}
    head = init_head(config, task, len(labels), rng, dtype)
    return Classifier(config=config, weights=weights, head=head, task=task, labels=list(labels),
                      tokenizer=model.tokenizer, source=str(model.encoder_dir),   # a sentence-transformers
                      max_length=recipe.max_length)                                 # model's 0_Transformer/


def train_step(classifier, batch_items, params, state, recipe, lr, rng):
    """One optimizer step on a list of tokenized examples; returns the batch's loss."""
    ids, mask, types, labels = collate(batch_items, classifier.config.pad_token_id, classifier.task)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):     # checked below: one clear error
        loss, _, weights_grads, head_grads = loss_and_grads(ids, mask, types, labels, classifier.weights,
                                                            classifier.head, classifier.config,
                                                            task=classifier.task, dropout=recipe.dropout,
                                                            rng=rng if recipe.dropout else None)
    grads_by_id = {id(p): g for (_, p), (_, g) in zip(trainable(classifier.weights, classifier.head, classifier.config),
                                                      trainable(weights_grads, head_grads, classifier.config))}
    grads = [grads_by_id[id(p)] for _, p in params]
    with np.errstate(over="ignore", invalid="ignore"):
        norm = clip_by_global_norm(grads, recipe.max_grad_norm)     # max_grad_norm 0: measured, not clipped
    if not (np.isfinite(loss) and np.isfinite(norm)):           # before the update: the weights stay finite
        raise TrainingError(f"the loss is {float(loss)} and the gradient norm {norm}")
    adamw_update([p for _, p in params], grads, state, lr=lr, betas=recipe.betas, eps=recipe.adam_eps,
                 weight_decay=recipe.weight_decay, decay=[decays(name) for name, _ in params])
    return float(loss)
