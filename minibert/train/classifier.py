"""The classifier users keep: Classifier (logits, predict, predict_proba, tag, save), a new one from a
pretrained model (new_classifier), and load_classifier for a directory saved by minibert or transformers; the
output-directory checks that keep a save from destroying what the user owns.

Axes: B batch, T tokens, H hidden, K classes (labels), N texts.
"""

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union, cast

import numpy as np

from ..backends.threads import BLAS
from ..checkpoint.config import read_config
from ..checkpoint.families import family_of
from ..checkpoint.weights import sinusoidal_positions, weight_set_of_layer
from ..errors import ConfigError, InputError, ModelFileError, OutputError
from .. import files
from ..files import atomic_directory
from ..tree import copy_tree
from .backprop import SEQUENCE_HEADS, classifier_forward
from .hf_checkpoint import architecture, has_pooler, tensors_from_tree, tree_from_tensors
from .state import STATE_FILE

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model")
# Written into every classifier directory: a directory holding it (or finetune's training state) is minibert's
# own classifier, replaced whole by the next save; any other non-empty directory is refused as its output.
OUTPUT_MARK = "minibert_classifier.json"
# sentence-transformers 6 keeps a cross-encoder's activation_fn in config_sentence_transformers.json, which it
# reads only beside a modules.json: a save of a cross-encoder keeps the three files its CrossEncoder reads.
CROSS_ENCODER_SETTINGS = "config_sentence_transformers.json"
CROSS_ENCODER_FILES = (CROSS_ENCODER_SETTINGS, "modules.json", "sentence_bert_config.json")
# The dotted paths sentence-transformers writes for a cross-encoder's activation (train.crossencoder.ACTIVATIONS).
TORCH_PATHS = {"Identity": "torch.nn.modules.linear.Identity", "Sigmoid": "torch.nn.modules.activation.Sigmoid",
               "Tanh": "torch.nn.modules.activation.Tanh", "ReLU": "torch.nn.modules.activation.ReLU"}


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
    config: Any                      # a checkpoint.config.Config
    weights: dict
    head: dict
    task: str
    labels: list                     # id -> label
    tokenizer: Any                   # a minibert.tokenizer.Tokenizer
    source: str                      # the directory config.json came from (a sentence-transformers 0_Transformer/)
    max_length: Optional[int] = None
    # per epoch: {"epoch", "train_loss", "dev_accuracy"?} (regression: "dev_mse", "dev_pearson", "dev_spearman"?)
    history: list = field(default_factory=list)
    problem_type: Optional[str] = None            # config.json's: transformers' or finetune's regression objective
    training: Optional[dict] = None               # finetune's run (train.model_card): saves write a README.md
    # sentence-transformers' activation a save stores (train.objectives.SAVED_AS); None keeps the source's
    activation: Optional[str] = None

    def logits(self, texts: Sequence[str], text_pairs: Optional[Sequence[str]] = None,
               batch_size: int = 32, warn: bool = True) -> Union[np.ndarray, List[np.ndarray]]:
        """Sequence: [N, K]. Token: a list of [n_tokens, K] per text (special tokens included). warn=False: no
        truncation warning (a caller that asked for the cut, such as the server's /rerank with truncate)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, found {batch_size!r}")   # range() would raise
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
        if cut and warn:       # as encode warns: a prediction from a text's start, or words (tag) left without a label
            from ..errors import warn_caller
            warn_caller(f"minibert: {cut} of {len(texts)} texts were longer than "
                        f"{self.max_length or self.tokenizer.max_length} tokens and were truncated"
                        + ("; their words past the cut get no label" if self.task == "token" else ""))
        return np.concatenate(out) if self.task == "sequence" else out

    def predict_proba(self, texts: Union[str, Sequence[str]],
                      text_pairs: Union[str, Sequence[str], None] = None) -> np.ndarray:
        """Sequence task: class probabilities [N, K], columns in the order of `labels`; [K] for one str."""
        from ..tokenizer import as_text_list
        self.require("sequence", "predict_proba")
        # One output (a score: cross-encoders, regression) or independent labels: a softmax over the outputs
        # would be 1.0 for every text, or probabilities the model was not trained to give.
        if len(self.labels) == 1 or self.problem_type in ("regression", "multi_label_classification"):
            raise InputError(f"this classifier's outputs are {'one score' if len(self.labels) == 1 else 'scores'} "
                             f"(problem_type {self.problem_type!r}), not one label among {len(self.labels)}; "
                             "use logits(texts) (apply a sigmoid for multi-label probabilities)"
                             + ("; minibert.load_cross_encoder(directory).predict(pairs) gives its scores as "
                                "sentence-transformers' CrossEncoder does" if len(self.labels) == 1 else ""))
        # A str is one text (as in encode), never a sequence of one-character texts.
        logits = cast(np.ndarray, self.logits(as_text_list(texts, "texts"),   # a sequence task's: one [N, K]
                                              None if text_pairs is None else as_text_list(text_pairs, "text_pairs")))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = e / e.sum(axis=1, keepdims=True)                                         # [N, K]
        return probabilities[0] if isinstance(texts, str) else probabilities

    def predict(self, texts: Union[str, Sequence[str]], text_pairs: Union[str, Sequence[str], None] = None) -> Any:
        """Sequence task: one label per text (or pair); the label alone for one str."""
        from ..tokenizer import as_text_list
        self.require("sequence", "predict")
        labels = [self.labels[i] for i in self.predict_proba(as_text_list(texts, "texts"), text_pairs).argmax(axis=1)]
        return labels[0] if isinstance(texts, str) else labels

    def tag(self, texts: Union[str, Sequence[str]]) -> Any:
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

    def require(self, task: str, what: str) -> None:
        if self.task != task:
            raise InputError(f"{what} is for {task} classifiers; this one is a {self.task} classifier")

    def save(self, directory: Union[str, "os.PathLike[str]"]) -> Path:
        """A Hugging Face checkpoint directory: model.safetensors under transformers' names for the task
        model, config.json with architectures, id2label and label2id, the tokenizer files, a
        sentence-transformers cross-encoder's settings (its activation: CROSS_ENCODER_FILES), and for a
        classifier finetune trained, README.md (its model card, train.model_card). The directory
        is written whole under a temporary name and then takes `directory`'s place, so no file of an earlier
        save stays behind; a directory minibert did not write is refused (check_output_directory)."""
        directory = Path(directory)
        check_output_directory(directory, [self.source, getattr(self.tokenizer, "dir", self.source)],
                               resaving=True)
        with atomic_directory(directory) as temporary:
            self.write_files(temporary, final=directory)
        return directory

    def write_files(self, directory: Union[str, "os.PathLike[str]"],
                    final: Union[str, "os.PathLike[str]", None] = None) -> Path:
        """Classifier.save's files, written into the existing, empty `directory`; `final`: where they will
        live (the model card's examples load from there), `directory` itself by default."""
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
        # A source cross-encoder's "regression" is not what a new classifier is; finetune's regression says its own.
        if self.problem_type is None:
            raw.pop("problem_type", None)
        else:
            raw["problem_type"] = self.problem_type
        if self.activation is not None:      # read by CrossEncoder when no copied setting below names one
            st = raw.get("sentence_transformers")
            raw["sentence_transformers"] = {**(st if isinstance(st, dict) else {}),
                                            "activation_fn": TORCH_PATHS[self.activation]}
            if "sbert_ce_default_activation_function" in raw:       # sentence-transformers before 4
                raw["sbert_ce_default_activation_function"] = TORCH_PATHS[self.activation]
        raw["id2label"] = {str(i): label for i, label in enumerate(self.labels)}
        raw["label2id"] = {label: i for i, label in enumerate(self.labels)}
        (directory / "config.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
        # From the folder the tokenizer was read from: the one above the model's when only that one has it.
        tokenizer_dir = Path(getattr(self.tokenizer, "dir", self.source))
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, directory / name)
        if cross_encoder_settings(Path(self.source)):    # CrossEncoder then scores the copy as it scored the source
            for name in CROSS_ENCODER_FILES:
                if (Path(self.source) / name).is_file():
                    shutil.copyfile(Path(self.source) / name, directory / name)
            if self.activation is not None:   # sentence-transformers 6 reads this file first: it must say ours
                settings = json.loads((directory / CROSS_ENCODER_SETTINGS).read_text(encoding="utf-8"))
                settings["activation_fn"] = TORCH_PATHS[self.activation]
                (directory / CROSS_ENCODER_SETTINGS).write_text(json.dumps(settings, indent=2) + "\n",
                                                                encoding="utf-8")
        if self.training is not None:       # a run of finetune: its model card, as the Hub shows one
            from .model_card import classifier_card
            (directory / "README.md").write_text(classifier_card(self, str(final or directory)), encoding="utf-8")
        (directory / OUTPUT_MARK).write_text(json.dumps({"written_by": "minibert", "task": self.task}) + "\n",
                                             encoding="utf-8")
        return directory


def cross_encoder_settings(source: Path) -> bool:
    """Whether `source` holds a sentence-transformers cross-encoder's settings (its activation_fn) that a save
    keeps. An embedding model's file of that name (prompts, similarity) does not describe a classifier."""
    raw = settings_json(source / CROSS_ENCODER_SETTINGS)
    return isinstance(raw, dict) and (raw.get("model_type") == "CrossEncoder" or "activation_fn" in raw)


def settings_json(path: Path) -> Any:
    """A sentence-transformers settings file's JSON (bounded in size, a regular file); None where it is absent."""
    if not path.is_file():
        return None
    try:
        return files.read_json(path, files.SETTINGS_LIMIT, ModelFileError, path.name)
    except FileNotFoundError:        # removed since the check
        return None


# What each kind of minibert output directory holds, and what writes one, for the refusal to mix them.
OUTPUT_KINDS = {"classifier": ("a classifier minibert fine-tuned (finetune, Classifier.save)",
                               "a classifier replaces its output directory whole"),
                "pretraining": ("a masked-LM checkpoint of a minibert pretraining run (pretrain)",
                                "pretraining replaces its output directory whole after every epoch"),
                "extraction": ("a minibert extraction (extract's manifest.json and vectors)", None)}


def output_kind(directory):
    """Which minibert output `directory` holds: "classifier" (its mark, or finetune's training state),
    "pretraining" (pretrain's training state, or with it unreadable a ...ForMaskedLM config.json beside it),
    "extraction" (extract's manifest, progress or lock), or None."""
    from ..corpus.store import LOCK, PROGRESS
    from .state import saved_task
    directory = Path(directory)
    if (directory / OUTPUT_MARK).is_file():
        return "classifier"
    if (directory / STATE_FILE).is_file():
        task = saved_task(directory)
        if task is None:
            try:
                task = "mlm" if any(str(a).endswith("ForMaskedLM") for a in json.loads(
                    (directory / "config.json").read_text(encoding="utf-8")).get("architectures") or []) else None
            except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError):
                pass
        return "pretraining" if task == "mlm" else "classifier"
    if any((directory / name).is_file() for name in ("manifest.json", PROGRESS, LOCK)):
        return "extraction"
    return None


def is_own_output(directory, kind="classifier"):
    """Whether `directory` is an output of this kind minibert wrote (output_kind)."""
    return output_kind(directory) == kind


def check_output_directory(directory, sources, *, resaving=False, kind="classifier"):
    """Refuse, before any work, an output of `kind` (a key of OUTPUT_KINDS: classifier, pretraining) that would
    destroy what the user owns: the source model (or a directory inside it or holding it), a file, another
    kind of minibert output, or a non-empty directory minibert did not write.
    resaving: a classifier loaded from its own minibert directory may be saved back there."""
    directory = Path(directory)
    target = directory.resolve()
    for source in sources:
        source = Path(source).resolve()
        if target == source and resaving and is_own_output(directory, kind):
            continue
        if target == source or source in target.parents or target in source.parents:
            where = ("is" if target == source else "is inside" if source in target.parents else "holds")
            raise OutputError(f"{directory}: the output directory {where} the model directory {source}; saving "
                              "there would replace the model's own files: choose another output directory")
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{directory}: exists and is not a directory; choose another output directory")
    if directory.is_dir():
        held = output_kind(directory)
        if held is not None and held != kind:
            raise OutputError(f"{directory}: holds {OUTPUT_KINDS[held][0]}; {OUTPUT_KINDS[kind][1]}, which would "
                              f"destroy it: choose another output directory, or delete {directory} first if it "
                              "is no longer needed")
        entries = sorted(os.listdir(directory)) if held is None else []
        if entries:
            raise OutputError(f"{directory}: holds files minibert did not write ({', '.join(entries[:3])}"
                              f"{', ...' if len(entries) > 3 else ''}); {OUTPUT_KINDS[kind][1]}: choose a new "
                              "or empty directory")
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


def config_labels(directory, raw):
    """(labels by id, what named them) from config.json. Without id2label, transformers' default: num_labels
    labels (2 when config.json names none either) called LABEL_0, LABEL_1, ...; transformers 5 saves a
    classifier whose labels are those defaults with no id2label at all."""
    if raw.get("id2label") is None:
        count = raw.get("num_labels", 2)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ModelFileError(f"{directory}: config.json has no id2label and its num_labels must be an int >= 1, "
                                 f"found {count!r}")
        where = "num_labels" if "num_labels" in raw else "no num_labels either"
        return ([f"LABEL_{i}" for i in range(count)],
                f"config.json has no id2label: transformers' default {count} labels ({where}); name the labels "
                "in config.json's id2label")
    id2label = raw["id2label"]
    labels = ([id2label[str(i)] for i in range(len(id2label))]
              if isinstance(id2label, dict) and all(str(i) in id2label for i in range(len(id2label))) else None)
    if not labels:
        raise ModelFileError(f"{directory}: config.json has no usable id2label ({id2label!r})")
    return labels, f"id2label names {len(labels)}"


def load_classifier(directory: Union[str, "os.PathLike[str]"], *, dtype: str = "float32") -> Classifier:
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
    labels, named = config_labels(directory, raw)
    np_dtype: type = np.dtype(dtype).type
    # Through load's reader: safetensors or pytorch_model.bin (older hub classifiers have only that), shards.
    checkpoint = Checkpoint(checkpoint_files(directory))
    stored = set(checkpoint.names())
    tensors = {name: checkpoint.read(name, np_dtype) for name in stored
               if checkpoint.location[name][1] in ("F16", "BF16", "F32", "F64")}   # not integer buffers (position_ids)
    fresh = init_head(config, task, len(labels), np.random.default_rng(0), np_dtype)   # the shapes a head has
    shapes = {name: t.shape for name, t in tensors_from_tree(empty_weights(config, np_dtype), config, task=task,
                                                             head=fresh).items()}
    head_tensors = {module + end for module in family_of(config).head_names[task].values()
                    for end in (".weight", ".bias")}     # checked after: a class count or shape of their own
    wrong = [f"{name} {tensors[name].shape}, the config implies {shape}" for name, shape in sorted(shapes.items())
             if name in tensors and name not in head_tensors and tensors[name].shape != shape]
    if wrong:       # as load refuses them; here they were NumPy errors while arranging, or at the first predict
        raise ModelFileError(f"{directory}: {len(wrong)} encoder tensor(s) have the wrong shape "
                             f"({'; '.join(wrong[:3])}) - does config.json belong to this checkpoint?")
    weights, head = tree_from_tensors(tensors, config, task=task, dtype=np_dtype,
                                      template=empty_weights(config, np_dtype))
    expected = set(tensors_from_tree(weights, config, task=task, head=head))
    expected |= {n for n in stored if n.endswith(("position_ids", "token_type_ids"))}   # buffers
    needed = set(shapes)
    if SEQUENCE_HEADS[config.model_type].pooler and task == "sequence":
        needed |= {n for n in expected if "pooler" in n}
    if config.sinusoidal_positions:
        needed = {n for n in needed if not n.endswith("position_embeddings.weight")}
    # a head tensor without its pair is missing its pair, not unexpected; an integer one is not a weight
    missing, unexpected = sorted(needed - set(tensors)), sorted(stored - expected - needed)
    no_pooler = task == "sequence" and SEQUENCE_HEADS[config.model_type].pooler and weights["pooler"] is None
    if missing or unexpected or no_pooler:
        integer = [name for name in missing if name in stored]
        raise ModelFileError(f"{directory}: the checkpoint does not match a {arch}: missing "
                             f"{missing[:5] or ('pooler' if no_pooler else [])}, unexpected {unexpected[:5]}"
                             + (f" ({integer[:3]} stored, but not as floating-point numbers)" if integer else ""))
    if head["out"]["w"].shape[1] != len(labels):
        raise ModelFileError(f"{directory}: the head predicts {head['out']['w'].shape[1]} classes but {named}")
    wrong = [f"{part}.{key} {head[part][key].shape}, not {fresh[part][key].shape}" for part in fresh
             for key in ("w", "b") if head[part][key].shape != fresh[part][key].shape]
    if wrong:       # a bias of the wrong length broadcast into a NumPy error at the first predict
        raise ModelFileError(f"{directory}: the classifier head's tensors have the wrong shape "
                             f"({'; '.join(wrong)}, as [in, out] / [out]): the checkpoint is damaged")
    # A sentence-transformers cross-encoder's own limit: CrossEncoder cuts its pairs there, so predict, the
    # server's /rerank and rank must too (the tokenizer's model_max_length is often longer).
    saved = saved_max_length(directory)
    return Classifier(config=config, weights=weights, head=head, task=task, labels=labels,
                      tokenizer=Tokenizer(directory, config), source=str(directory),
                      max_length=min(saved, config.max_tokens) if saved else None,
                      problem_type=raw.get("problem_type"))


def saved_max_length(folder: Path) -> Optional[int]:
    """sentence_bert_config.json's max_seq_length in `folder`, None when it names none."""
    settings = Path(folder) / "sentence_bert_config.json"
    raw = settings_json(settings)
    value = raw.get("max_seq_length") if isinstance(raw, dict) else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 3):
        raise ConfigError(f"{settings}: max_seq_length must be an int >= 3, found {value!r}")
    return value


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
