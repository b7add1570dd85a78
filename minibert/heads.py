"""BERT's own pretraining heads: the masked-LM head and the sentence head (next sentence / sentence order).

Every family's MLM head is the same three steps with its own names (transformers' BertLMPredictionHead,
RobertaLMHead, ElectraGeneratorPredictions + generator_lm_head, AlbertMLMHead, DistilBERT's vocab_*):

    h = LayerNorm(act(x W_t + b_t))          x [..., H] -> h [..., E]   (E = H except ALBERT, ELECTRA)
    logits = h D^T + b_d                      D [V, E]: the word embedding table itself when tied

and BERT's next-sentence head (ALBERT's sentence-order head) is one linear on the pooler output, [B, H] ->
[B, 2]. The heads are read from the checkpoint only when asked for (`load_heads`), through
checkpoint.safetensors' Checkpoint reader: an encoder-only checkpoint loads as it always did, and asking it for
a head it does not have is one ModelFileError naming what the checkpoint holds. The checkpoint names are the
family records' (checkpoint/families.py, `pretraining_heads`).

Axes: B batch, T tokens, H hidden, E embedding width, V vocabulary, N selected rows.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .kernels import reference
from .backends import reference_backend
from .checkpoint.families import family_of
from .checkpoint.layout import checkpoint_files
from .checkpoint.safetensors import Checkpoint
from .checkpoint.weights import FAMILY_NAMES, canonical
from .errors import InputError, ModelFileError, warn_caller


@dataclass
class Heads:
    """The heads a checkpoint holds, in the compute dtype. mlm: {"transform": {w [H, E], b [E]}, "ln": {g, b},
    "decoder": {w [V, E], b [V]}} or None; sentence: {"w": [H, 2], "b": [2]} or None."""
    mlm: dict
    sentence: dict
    activation: str
    eps: float
    tied: bool              # mlm["decoder"]["w"] is the word embedding table (the same array)
    sentence_task: str
    found: tuple            # head-looking tensor names of the checkpoint, for messages
    source: str

    def require(self, which: str) -> dict:
        head = self.mlm if which == "mlm" else self.sentence
        if head is None:
            what = {"mlm": "masked-LM head", "sentence": "next-sentence (or sentence-order) head"}[which]
            held = (f"its head tensors are {', '.join(self.found[:6])}" + (" ..." if len(self.found) > 6 else "")
                    if self.found else "it holds the encoder only")
            raise ModelFileError(f"{self.source}: the checkpoint has no {what} ({held}); use a checkpoint saved "
                                 "from a ...ForMaskedLM or ...ForPreTraining model")
        return head


def tie_word_embeddings(model_dir: Path) -> bool:
    """config.json's tie_word_embeddings (transformers' default: True)."""
    try:
        return bool(json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("tie_word_embeddings",
                                                                                           True))
    except (OSError, ValueError):
        return True


def load_heads(model_dir: Path, config, word, dtype) -> Heads:
    """Read the family's heads that the checkpoint holds. word [V, E]: the loaded word table, which a tied
    decoder uses as it is (not a copy); None reads it from the checkpoint."""
    model_dir = Path(model_dir)
    table = family_of(config).pretraining_heads
    checkpoint = Checkpoint(checkpoint_files(model_dir))
    by_name = {canonical(n, FAMILY_NAMES[config.model_type].model_prefixes): n for n in checkpoint.names()}
    if word is None:          # the loaded table lives on a device: read the host copy the head multiplies by
        word = checkpoint.read(by_name["embeddings.word_embeddings.weight"], dtype)
    mlm_names = {name for _, theirs, _ in [*table.mlm, *table.sentence]
                 for name in ((theirs,) if isinstance(theirs, str) else theirs)}
    found = tuple(sorted(by_name[name] for name in by_name if name in mlm_names))
    tied = tie_word_embeddings(model_dir)

    def fetch(theirs, arrangement, shape):
        names = (theirs,) if isinstance(theirs, str) else theirs
        name = next((n for n in names if n in by_name), None)
        if name is None:
            raise ModelFileError(f"{model_dir}: tensor {' or '.join(map(repr, names))} is missing from the "
                                 f"checkpoint (model_type {config.model_type!r}), which has the head's "
                                 f"{', '.join(found)}")
        array = checkpoint.read(by_name[name], dtype)
        array = array.T if arrangement == "transpose" else array
        if array.shape != shape:
            raise ModelFileError(f"{model_dir}: tensor {name!r} has shape {array.shape} (after arranging as "
                                 f"{arrangement}); the config implies {shape}")
        return np.ascontiguousarray(array)

    H, E, V = config.hidden_size, config.embedding_size, config.vocab_size
    shapes = {"transform.w": (H, E), "transform.b": (E,), "ln.g": (E,), "ln.b": (E,), "decoder.w": (V, E),
              "decoder.b": (V,), "w": (H, 2), "b": (2,)}

    def nest(rows):
        block = {}
        for ours, theirs, arrangement in rows:
            if ours == "decoder.w" and tied:
                value = word                # transformers ties it: the checkpoint's copy, if any, is not read
            elif arrangement == "first_present" and not tied:
                # Untied (transformers 5 unties every pair it would tie): the decoder's own bias is the one used.
                value = fetch(tuple(reversed(theirs)), arrangement, shapes[ours])
            else:
                value = fetch(theirs, arrangement, shapes[ours])
            *path, leaf = ours.split(".")
            node = block
            for key in path:
                node = node.setdefault(key, {})
            node[leaf] = value
        return block

    def present(rows):
        return any((theirs if isinstance(theirs, str) else theirs[0]) in by_name for _, theirs, _ in rows
                   if not (tied and _ == "decoder.w"))

    mlm = nest(table.mlm) if present(table.mlm) else None
    sentence = nest(table.sentence) if table.sentence and present(table.sentence) else None
    checkpoint.check_unchanged()
    activation = config.hidden_act if table.activation == "hidden_act" else table.activation
    return Heads(mlm=mlm, sentence=sentence, activation=activation, eps=config.layer_norm_eps, tied=tied,
                 sentence_task=table.sentence_task, found=found, source=str(model_dir))


# ---- forward --------------------------------------------------------------------------------------------------

def mlm_head(x, *, transform, ln, decoder, activation, eps):
    """x [..., H] -> logits [..., V]: dense + activation, LayerNorm, then the (tied) decoder."""
    h = reference_backend.linear(x, transform["w"], transform["b"], activation)   # [..., E]
    h = reference_backend.layer_norm(h, ln["g"], ln["b"], eps)                   # [..., E]
    return h @ decoder["w"].T + decoder["b"]                                 # [..., V]


def sentence_head(pooled, *, w, b):
    """pooled [B, H] (the pooler's tanh(dense([CLS]))) -> logits [B, 2]."""
    return pooled @ w + b                                                    # [B, 2]


def mlm_logits(hidden, heads: Heads, rows=None):
    """hidden [B, T, H] -> logits [B, T, V]; with rows (a boolean [B, T] mask) only those tokens: [N, V]."""
    x = hidden if rows is None else hidden[rows]                             # [B, T, H] or [N, H]
    return mlm_head(x, **heads.require("mlm"), activation=heads.activation, eps=heads.eps)


def model_heads(model) -> Heads:
    """model.heads: the heads of the model's checkpoint, read on first use and kept on the model."""
    if model.__dict__.get("_heads") is None:
        word = model.weights["embeddings"]["word"]
        model._heads = load_heads(model.encoder_dir, model.config, word if isinstance(word, np.ndarray) else None,
                                  model.dtype)
    return model._heads


def model_mlm_logits(model, texts, text_pairs, **inputs):
    """Model.mlm_logits: [B, T, V] of texts (or of id arrays in inputs), as transformers' prediction_logits."""
    heads = model.heads
    heads.require("mlm")
    return mlm_logits(model(texts, text_pairs, **inputs).last_hidden_state, heads)


def model_nsp_logits(model, texts, text_pairs, **inputs):
    """Model.nsp_logits: [B, 2], as transformers' seq_relationship_logits (ALBERT's sop_logits)."""
    head = model.heads.require("sentence")
    out = model(texts, text_pairs, **inputs)
    if out.pooler_output is None:
        raise ModelFileError(f"{model.source}: the checkpoint has no pooler, which the sentence head reads")
    return sentence_head(out.pooler_output, **head)


def next_sentence(model, first, second):
    """Probability that `second` follows `first`: the softmax of the next-sentence logits, class 0, as
    BertForNextSentencePrediction; a float for two strs, an array [N] for two lists."""
    probs = reference.softmax_forward(model_nsp_logits(model, first, second))[0][:, 0]   # [N]
    cut = int(model.tokenize(first, second).truncated.sum())
    if cut:     # as encode and predict warn: the probability is of the cut pair, its second text maybe gone
        warn_caller(f"minibert: {cut} of {len(probs)} pairs were longer than {model.tokenizer.max_length} tokens "
                    "and were truncated; the probability is the cut pair's")
    return float(probs[0]) if isinstance(first, str) else probs


# ---- fill-mask, as transformers' pipeline("fill-mask") -----------------------------------------------------------

DEFAULT_MASK_TOKENS = {"bert": "[MASK]", "albert": "[MASK]", "electra": "[MASK]", "distilbert": "[MASK]",
                       "roberta": "<mask>", "xlm-roberta": "<mask>", "mpnet": "<mask>"}


def tokenizer_settings(tokenizer) -> dict:
    """tokenizer_config.json merged with special_tokens_map.json, as the tokenizer read them."""
    settings = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            loaded = json.loads((tokenizer.dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(loaded, dict):
            settings.update(loaded)
    return settings


def mask_token(tokenizer, config) -> tuple:
    """(mask token, its id): the tokenizer files' mask_token, else the family's usual one."""
    token = tokenizer_settings(tokenizer).get("mask_token") or DEFAULT_MASK_TOKENS[config.model_type]
    token = token.get("content") if isinstance(token, dict) else token
    token_id = tokenizer.backend.token_to_id(token) if isinstance(token, str) else None
    if token_id is None:
        raise InputError(f"{tokenizer.dir}: the tokenizer has no mask token ({token!r} is not in its vocabulary)")
    return token, token_id


# transformers' clean_up_tokenization: spaces the decoder put before punctuation and English contractions.
CLEAN_UP = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]


def decode(tokenizer, ids, skip_special_tokens=False) -> str:
    """ids -> text as the transformers tokenizer decodes them (clean_up_tokenization_spaces as its files say)."""
    text = tokenizer.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
    if tokenizer_settings(tokenizer).get("clean_up_tokenization_spaces", False):
        for old, new in CLEAN_UP:
            text = text.replace(old, new)
    return text


def target_ids(tokenizer, targets) -> np.ndarray:
    """Each target's id: the vocabulary entry, else the first piece the tokenizer makes of it (as the pipeline)."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    ids = []
    for target in targets:
        if not isinstance(target, str):
            raise InputError(f"targets must be str or a list of str, found {type(target).__name__}")
        if target in vocab:
            ids.append(vocab[target])
            continue
        pieces = tokenizer.backend.encode(target, add_special_tokens=False).ids
        if not pieces:          # the pipeline, too, drops it with a warning
            warn_caller(f"target {target!r} gives no token; it is left out")
            continue
        warn_caller(f"target {target!r} is not in the vocabulary; it stands for its first piece "
                    f"{tokenizer.backend.id_to_token(pieces[0])!r}")
        ids.append(pieces[0])
    if not ids:
        raise InputError("targets is empty; give at least one target token or leave targets=None")
    return np.array(sorted(set(ids)), dtype=np.int64)


def fill_mask(model, texts, top_k=5, targets=None):
    """What pipeline("fill-mask")(texts, top_k=, targets=) returns: per mask a list of top_k dicts
    {score, token, token_str, sequence}, best first; a list per text with several masks, a list over texts
    when texts is a list (a one-text list gives its result alone, as the pipeline does)."""
    single = isinstance(texts, str)
    texts = [texts] if single else texts
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise InputError(f"top_k must be a positive int, found {top_k!r}")
    heads = model.heads
    heads.require("mlm")
    token, token_id = mask_token(model.tokenizer, model.config)
    batch = model.tokenize(texts)
    if batch.truncated.any():           # the pipeline reads a text whole: no truncation or window to suggest
        i = int(np.argmax(batch.truncated))
        raise InputError(f"texts[{i}] has more than the model's {model.tokenizer.max_length} tokens; fill-mask "
                         "reads a text whole: shorten it to the words around its mask")
    masks = batch.input_ids == token_id                                      # [B, T]
    for i, count in enumerate(masks.sum(axis=1)):
        if count == 0:
            raise InputError(f"texts[{i}] has no mask token {token!r}; write {token} where a word should be "
                             f"predicted: {texts[i]!r}")
    hidden = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids).last_hidden_state
    probs, _ = reference.softmax_forward(mlm_logits(hidden, heads, rows=masks))   # [N, V] in mask order
    candidates = target_ids(model.tokenizer, targets) if targets is not None else None
    if candidates is not None:
        probs = probs[:, candidates]                                         # [N, targets]
    k = min(top_k, probs.shape[1])
    results, row = [], 0
    for b in range(len(texts)):
        ids = batch.input_ids[b][batch.attention_mask[b] == 1]
        positions = np.flatnonzero(ids == token_id)
        per_mask = []
        for position in positions:
            order = np.argsort(-probs[row], kind="stable")[:k]
            answers = []
            for choice in order:
                predicted = int(choice if candidates is None else candidates[choice])
                filled = ids.copy()
                filled[position] = predicted
                filled = filled[filled != model.config.pad_token_id]
                answers.append({"score": float(probs[row, choice]), "token": predicted,
                                "token_str": decode(model.tokenizer, [predicted]),
                                "sequence": decode(model.tokenizer, filled, skip_special_tokens=len(positions) == 1)})
            per_mask.append(answers)
            row += 1
        results.append(per_mask[0] if len(per_mask) == 1 else per_mask)
    return results[0] if len(results) == 1 else results
