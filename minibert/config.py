"""config.json -> a frozen Config. Family differences are plain fields here, read by the model as data."""

import json
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import ConfigError

SUPPORTED_FAMILIES = ("bert",)
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")

# Keys Hugging Face writes that never change an encoder's forward pass at inference time:
# training settings, generation settings, task heads and bookkeeping.
IGNORED_KEYS = frozenset("""
    _name_or_path architectures transformers_version torch_dtype dtype model_type
    initializer_range hidden_dropout_prob attention_probs_dropout_prob classifier_dropout
    gradient_checkpointing use_cache output_hidden_states output_attentions return_dict
    torchscript use_return_dict id2label label2id num_labels problem_type finetuning_task
    tokenizer_class prefix task_specific_params bos_token_id eos_token_id sep_token_id
    cls_token_id unk_token_id mask_token_id decoder_start_token_id tie_word_embeddings
    chunk_size_feed_forward max_length min_length do_sample early_stopping num_beams
    num_beam_groups diversity_penalty temperature top_k top_p typical_p repetition_penalty
    length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids
    num_return_sequences output_scores return_dict_in_generate forced_bos_token_id
    forced_eos_token_id remove_invalid_values exponential_decay_length_penalty
    suppress_tokens begin_suppress_tokens tf_legacy_loss use_bfloat16 xla_device
    directionality pooler_fc_size pooler_num_attention_heads pooler_num_fc_layers
    pooler_size_per_head pooler_type is_encoder_decoder tie_encoder_decoder
""".split())

# Keys that are known but only accepted at the value that means "plain BERT encoder".
UNSUPPORTED_UNLESS = {
    "position_embedding_type": ("absolute",),
    "is_decoder": (False,),
    "add_cross_attention": (False,),
    "pruned_heads": ({},),
}


@dataclass(frozen=True)
class Config:
    """What the encoder needs to know. Values in comments are bert-base-uncased's."""
    model_type: str                 # "bert"
    vocab_size: int                 # 30522
    hidden_size: int                # 768
    num_hidden_layers: int          # 12
    num_attention_heads: int        # 12
    intermediate_size: int          # 3072
    hidden_act: str                 # "gelu": exact erf GELU
    max_position_embeddings: int    # 512
    type_vocab_size: int            # 2
    layer_norm_eps: float           # 1e-12
    pad_token_id: int               # 0

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


REQUIRED_KEYS = tuple(f.name for f in fields(Config) if f.name not in ("layer_norm_eps", "pad_token_id"))
DEFAULTS = {"layer_norm_eps": 1e-12, "pad_token_id": 0}


def read_config(path: Path) -> Config:
    """Read and check config.json; every problem raises ConfigError naming the key and the file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config.json not found; a model directory needs config.json beside model.safetensors") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config.json as JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config.json must hold a JSON object, found {type(raw).__name__}")
    return config_from_dict(raw, where=str(path))


def config_from_dict(raw: dict, where: str = "config") -> Config:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_FAMILIES:
        raise ConfigError(f"{where}: model_type {model_type!r} is not supported; "
                          f"supported families: {', '.join(SUPPORTED_FAMILIES)}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)} for model_type {model_type!r}")
    known = set(REQUIRED_KEYS) | set(DEFAULTS) | set(UNSUPPORTED_UNLESS) | IGNORED_KEYS
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; minibert cannot tell whether they "
                          "change the forward pass. Remove them if they are training-only settings.")
    for key, allowed in UNSUPPORTED_UNLESS.items():
        if key in raw and raw[key] not in allowed:
            raise ConfigError(f"{where}: {key}={raw[key]!r} is not supported (only {allowed[0]!r}); "
                              f"minibert supports absolute-position encoder-only families: {', '.join(SUPPORTED_FAMILIES)}")
    values = {**DEFAULTS, **{k: raw[k] for k in REQUIRED_KEYS + tuple(DEFAULTS) if k in raw}}
    for key, value in values.items():
        want = float if key == "layer_norm_eps" else (str if key in ("model_type", "hidden_act") else int)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else \
            isinstance(value, want) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{where}: {key} must be {want.__name__}, found {value!r}")
    config = Config(**values)
    check_values(config, where)
    return config


def check_values(c: Config, where: str) -> None:
    positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size")
    for key in positive:
        if getattr(c, key) <= 0:
            raise ConfigError(f"{where}: {key} must be positive, found {getattr(c, key)}")
    if c.hidden_size % c.num_attention_heads:
        raise ConfigError(f"{where}: hidden_size {c.hidden_size} is not divisible by "
                          f"num_attention_heads {c.num_attention_heads}")
    if c.hidden_act not in ACTIVATIONS:
        raise ConfigError(f"{where}: hidden_act {c.hidden_act!r} is not supported; use one of {', '.join(ACTIVATIONS)}")
    if not 0 < c.layer_norm_eps < 1:
        raise ConfigError(f"{where}: layer_norm_eps must be in (0, 1), found {c.layer_norm_eps}")
    if not 0 <= c.pad_token_id < c.vocab_size:
        raise ConfigError(f"{where}: pad_token_id {c.pad_token_id} is outside the vocabulary (size {c.vocab_size})")
