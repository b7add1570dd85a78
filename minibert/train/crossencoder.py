"""Cross-encoders as sentence-transformers' `CrossEncoder` runs them: a sequence-classification checkpoint scores
(query, passage) pairs read together, then the activation the model was saved with.

    scores = activation(logits)                    Sigmoid for one label, Identity for more, unless stored
    scores = softmax(scores) with apply_softmax    models with more than one label only
    rank(query, documents)                         one-label models: documents by score, best first, ties in
                                                   the documents' order (a stable sort, as Python's sorted)

Where the activation is stored, first found wins (as sentence-transformers 6 reads it):
    config_sentence_transformers.json  "activation_fn"                          sentence-transformers >= 6,
                                                                                beside a modules.json only
    config.json  "sentence_transformers": {"activation_fn": ...}                sentence-transformers 4 and 5
    config.json  "sbert_ce_default_activation_function"                         before 4
A dotted path outside torch (custom code) is not run: sentence-transformers then warns and uses the default
without trust_remote_code, and so does minibert.

Pairs longer than the limit are cut longest-first (the longer text loses a token at a time), as the tokenizer
does for sentence-transformers; the limit is max_seq_length from sentence_bert_config.json when the model has
one, else the tokenizer's model_max_length, at most the model's positions.

Axes: N pairs, K labels.
"""

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, InputError, ModelFileError, warn_caller

# The activations a cross-encoder is saved with, by torch class name (the last part of the dotted path).
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Identity": lambda x: x,
    "Sigmoid": lambda x: sigmoid(x),
    "Tanh": np.tanh,
    "ReLU": lambda x: np.maximum(x, 0),
}


def sigmoid(x):
    """1 / (1 + e^-x), without overflow for large |x| (e^-x is only taken where x >= 0, e^x where x < 0)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not readable JSON ({e})") from None


def stored_activation(model_dir, encoder_dir, num_labels):
    """(activation name, where it came from) for a cross-encoder directory."""
    found = None
    settings = Path(model_dir) / "config_sentence_transformers.json"
    if settings.is_file() and (Path(model_dir) / "modules.json").is_file():     # else a plain checkpoint to it
        value = read_json(settings).get("activation_fn")
        found = (value, f"{settings.name} activation_fn") if value else None
    if found is None:
        config = read_json(Path(encoder_dir) / "config.json")
        st = config.get("sentence_transformers")
        if isinstance(st, dict) and st.get("activation_fn"):
            found = (st["activation_fn"], "config.json sentence_transformers.activation_fn")
        elif config.get("sbert_ce_default_activation_function"):
            found = (config["sbert_ce_default_activation_function"],
                     "config.json sbert_ce_default_activation_function")
    default = ("Sigmoid" if num_labels == 1 else "Identity",
               f"the default for {num_labels} label{'s' if num_labels != 1 else ''}")
    if found is None:
        return default
    path, source = found
    if not isinstance(path, str):
        raise ConfigError(f"{model_dir}: {source} must be a dotted class path such as "
                          f"'torch.nn.modules.activation.Sigmoid', found {path!r}")
    if not path.startswith("torch."):
        # Custom code: sentence-transformers runs it only with trust_remote_code, and minibert never does.
        warn_caller(f"minibert: {model_dir}: {source} {path!r} is not a torch activation; it is not run, "
                    f"the default ({default[0]}) is used as sentence-transformers does without trust_remote_code")
        return default
    name = path.rsplit(".", 1)[-1]
    if name not in ACTIVATIONS:
        raise ConfigError(f"{model_dir}: {source} {path!r} is not an activation minibert has "
                          f"({', '.join(ACTIVATIONS)})")
    return name, source


class CrossEncoder:
    """A loaded cross-encoder: `predict(pairs)` scores, `rank(query, documents)` orders documents.
    `classifier` is the minibert.train.classifier.Classifier underneath (its `logits` are the raw scores)."""

    def __init__(self, classifier, activation, activation_source, source):
        self.classifier, self.activation, self.activation_source = classifier, activation, activation_source
        self.source = source

    def __repr__(self):
        return (f"minibert.CrossEncoder({self.source!r}, {self.num_labels} label(s), activation {self.activation}, "
                f"max_length {self.max_length})")

    @property
    def num_labels(self) -> int:
        return len(self.classifier.labels)

    @property
    def max_length(self) -> int:
        """Tokens per pair: longer pairs are cut longest-first."""
        return self.classifier.max_length

    @max_length.setter
    def max_length(self, value):
        limit = self.classifier.tokenizer.max_length          # the tokenizer's model_max_length caps it
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 3 <= value <= limit:
            raise InputError(f"max_length must be an int from 3 (a pair's special tokens) to the tokenizer's "
                             f"limit {limit}, found {value!r}")
        self.classifier.max_length = int(value)

    max_seq_length = max_length            # sentence-transformers 6's name for it

    def predict(self, pairs, *, batch_size=32, apply_softmax=False, activation_fn=None, show_progress_bar=None,
                convert_to_numpy=True, convert_to_tensor=False):
        """Scores of (query, passage) pairs: [N] for a one-label model, [N, K] otherwise; one pair given as
        (query, passage) gives its score alone. activation_fn: "Sigmoid", "Identity", "Tanh" or "ReLU" for
        this call instead of the stored one. show_progress_bar, convert_to_numpy: accepted and ignored (there
        is no bar; scores are always NumPy)."""
        if convert_to_tensor:
            raise InputError("convert_to_tensor: minibert returns NumPy arrays, never torch tensors")
        single = is_single_pair(pairs)
        pairs = check_pairs([pairs] if single else pairs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, found {batch_size!r}")
        activation = self.activation if activation_fn is None else activation_fn
        if activation not in ACTIVATIONS:
            raise InputError(f"activation_fn must be one of {', '.join(ACTIVATIONS)}, found {activation!r}")
        logits = self.classifier.logits([q for q, _ in pairs], [p for _, p in pairs], batch_size=batch_size)  # [N, K]
        scores = ACTIVATIONS[activation](logits)
        if apply_softmax and self.num_labels > 1:
            scores = softmax(scores)
        if self.num_labels == 1:
            scores = scores[:, 0]                                                           # [N]
        return scores[0] if single else scores

    def rank(self, query, documents, *, top_k=None, return_documents=False, batch_size=32, apply_softmax=False,
             activation_fn=None, show_progress_bar=None):
        """[{"corpus_id", "score"(, "text")}] for each document, highest score first, equal scores in the
        documents' order; the first top_k only when given. One-label models only, as sentence-transformers."""
        if self.num_labels != 1:
            raise InputError(f"rank needs a one-label cross-encoder; this one has {self.num_labels} labels: "
                             "use predict(pairs)")
        if not isinstance(query, str):
            raise InputError(f"query must be a str, found {type(query).__name__}")
        # A set or dict has a length but no order: corpus_id would index nothing (a raw TypeError or KeyError).
        if not isinstance(documents, (list, tuple, np.ndarray)):
            raise InputError(f"documents must be a list of str, found {type(documents).__name__}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0):
            raise InputError(f"top_k must be None or an int >= 0, found {top_k!r}")
        scores = self.predict([(query, d) for d in documents], batch_size=batch_size, apply_softmax=apply_softmax,
                              activation_fn=activation_fn) if len(documents) else []
        results = [{"corpus_id": i, "score": float(s), **({"text": documents[i]} if return_documents else {})}
                   for i, s in enumerate(scores)]
        return sorted(results, key=lambda r: r["score"], reverse=True)[:top_k]    # sorted is stable on ties


def is_single_pair(pairs) -> bool:
    """(query, passage) itself rather than a list of pairs: a list or tuple whose first item is a str."""
    return isinstance(pairs, (list, tuple)) and len(pairs) > 0 and isinstance(pairs[0], str)


def check_pairs(pairs) -> list:
    if isinstance(pairs, str) or not hasattr(pairs, "__len__"):
        raise InputError(f"pairs must be a list of (query, passage) pairs, found {type(pairs).__name__}")
    checked = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(t, str) for t in pair):
            raise InputError(f"pairs[{i}] must be two texts (query, passage), found {pair!r:.80}")
        checked.append((pair[0], pair[1]))
    return checked


def transformer_module(model_dir):
    """(the folder holding the classifier, sentence_bert_config.json's max_seq_length or None). A
    sentence-transformers 6 save lists its Transformer in modules.json (path "" is the root); earlier ones and
    plain transformers checkpoints are the classifier itself."""
    folder = model_dir
    modules = model_dir / "modules.json"
    if modules.is_file():
        entries = read_json(modules)
        found = [e for e in entries if isinstance(e, dict) and str(e.get("type", "")).endswith("Transformer")] \
            if isinstance(entries, list) else []
        if len(found) != 1 or len(entries) != 1:
            raise ModelFileError(f"{modules}: a cross-encoder minibert runs is one Transformer module (a sequence "
                                 f"classifier); found {[e.get('type') for e in entries if isinstance(e, dict)]}")
        folder = model_dir / str(found[0].get("path") or "")
    from .classifier import saved_max_length
    return folder, saved_max_length(folder)


def load_cross_encoder(source, *, dtype="float32", max_length=None, activation_fn=None):
    """A cross-encoder directory -> CrossEncoder: a ...ForSequenceClassification checkpoint (transformers',
    sentence-transformers' or `minibert finetune`'s), with sentence-transformers' settings when it has them.

    max_length: tokens per pair instead of the saved limit. activation_fn: "Sigmoid", "Identity", "Tanh" or
    "ReLU" instead of the stored activation (as CrossEncoder(..., activation_fn=))."""
    from ..api import compute_dtype_name, resolve_source
    from .classifier import load_classifier
    model_dir = resolve_source(source)
    encoder_dir, saved_max_length = transformer_module(model_dir)
    if not (encoder_dir / "config.json").is_file():
        raise ModelFileError(f"{encoder_dir}: no config.json; a cross-encoder is a sequence-classification "
                             "checkpoint directory")
    classifier = load_classifier(encoder_dir, dtype=compute_dtype_name(dtype))
    if classifier.task != "sequence":
        raise ModelFileError(f"{encoder_dir}: a token classifier, not a cross-encoder (a sequence classifier)")
    limit = classifier.tokenizer.max_length
    # sentence_bert_config.json's max_seq_length (sentence-transformers' own setting) over the tokenizer's.
    classifier.max_length = min(saved_max_length, classifier.config.max_tokens) if saved_max_length else limit
    if activation_fn is None:
        activation, where = stored_activation(model_dir, encoder_dir, len(classifier.labels))
    elif activation_fn in ACTIVATIONS:
        activation, where = activation_fn, "given to load_cross_encoder"
    else:
        raise InputError(f"activation_fn must be one of {', '.join(ACTIVATIONS)}, found {activation_fn!r}")
    model = CrossEncoder(classifier, activation, where, str(model_dir))
    if max_length is not None:
        model.max_length = max_length
    return model
