"""config.json -> a frozen Config. Family differences are plain fields here, read by the model as data.

A family is recognised from config.json's model_type (or, for old files without one, its architectures).
Each family's own key names are normalised into the common fields (DistilBERT's dim, n_layers, ...), and
what its architecture fixes (RoBERTa's position rule, ALBERT's embedding projection, ...) is written into
the switch fields, so nothing downstream needs to know which family it runs.
"""

import os
import re
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import ConfigError, warn_caller
from .families import FAMILIES
from ..kernels.reference import ACTIVATION_FUNCTIONS
from ..files import SETTINGS_LIMIT, read_json

SUPPORTED_FAMILIES = tuple(FAMILIES)
# hidden_act values: the activation table's names less tanh, which only the pooler uses
ACTIVATIONS = tuple(name for name in ACTIVATION_FUNCTIONS if name != "tanh")
POSITION_RULES = ("index", "skip_padding")   # see minibert.model.position_ids
# MPNet's relative positions (transformers' MPNetEncoder.compute_position_bias, fixed there too): distances
# fall into this many buckets, the widest of which starts at RELATIVE_MAX_DISTANCE.
RELATIVE_BUCKETS, RELATIVE_MAX_DISTANCE = 32, 128

# Why some encoder-like families are not supported: they are not BERT's absolute-position, post-LN encoder.
UNSUPPORTED_REASONS = {
    "xlnet": "XLNet is a permutation language model with two-stream attention, relative positions and "
             "Transformer-XL segment recurrence, not a BERT-style encoder",
    "transfo-xl": "relative positions and segment recurrence",
    "deberta": "disentangled attention over relative positions",
    "deberta-v2": "disentangled attention over relative positions",
    "funnel": "the sequence is pooled shorter between blocks",
    "longformer": "sliding-window plus global attention",
    "big_bird": "block-sparse attention",
    "xlm-roberta-xl": "pre-LayerNorm layers",
    "roformer": "rotary position embeddings",
    "nezha": "relative position encodings",
    "convbert": "span-based dynamic convolution heads",
}

# Class-name stems in config.json's "architectures" ("RobertaForMaskedLM" -> "Roberta") -> model_type: the
# supported families' (families.py) and the unsupported ones', so their configs get UNSUPPORTED_REASONS.
ARCHITECTURE_FAMILIES = {
    **{family.architecture: family.model_type for family in FAMILIES.values()},
    "XLNet": "xlnet", "Deberta": "deberta", "DebertaV2": "deberta-v2", "Funnel": "funnel",
    "Longformer": "longformer", "BigBird": "big_bird", "XLMRobertaXL": "xlm-roberta-xl", "RoFormer": "roformer",
    "Nezha": "nezha", "ConvBert": "convbert",
}
ARCHITECTURE_SUFFIX = re.compile(r"(LMHeadModel|Model|For[A-Za-z]+)$")

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

# Keys that change the forward pass in ways minibert does not implement, whatever their value: quantized
# weights, rotary or relative positions, sparse or windowed attention (other families' configs).
FORWARD_CHANGING_KEYS = frozenset("""
    quantization_config rope_scaling rope_theta rotary_emb_base rotary_value relative_attention
    relative_attention_num_buckets relative_attention_max_distance max_relative_positions pos_att_type
    position_buckets attention_type attention_window block_size num_random_blocks use_rms_norm
    pre_layer_norm normalize_before
""".split())
# Keys that change nothing at inference, beyond IGNORED_KEYS: written by other tools and later transformers
# versions (attention implementation choice, hub bookkeeping, training-only settings).
HARMLESS_KEYS = frozenset("""
    _attn_implementation _attn_implementation_autoset attn_implementation _commit_hash _num_labels
    output_past layerdrop classifier_activation keys_to_ignore_at_inference is_composition
    gradient_checkpointing_kwargs use_flash_attention_2 onnx_export hidden_dropout attention_dropout
    dropout_rate pad_token_type_id label_smoothing layer_norm_type sentence_transformers
""".split())
STRICT_ENV = "MINIBERT_STRICT_CONFIG"    # "1": unknown keys are a ConfigError instead of a warning


class UnknownConfigKeysWarning(UserWarning):
    """config.json holds keys minibert does not know; it loaded the model ignoring them."""


class UnknownArchitectureWarning(UserWarning):
    """config.json's architectures name a class minibert does not know; its model_type's encoder was loaded."""


# Keys that are known but only accepted at the value that means "plain absolute-position encoder".
UNSUPPORTED_UNLESS = {
    "position_embedding_type": ("absolute",),
    "is_decoder": (False,),
    "add_cross_attention": (False,),
    "pruned_heads": ({},),
    "inner_group_num": (1,),      # ALBERT with several layers per group: no published checkpoint uses it
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
    type_vocab_size: int            # 2; RoBERTa, XLM-R 1; DistilBERT (no segment embedding) 1, a zero row
    layer_norm_eps: float           # 1e-12
    pad_token_id: int               # 0
    # Family switches.
    embedding_size: int             # 768 (= hidden_size): width E of the embedding tables; ALBERT, ELECTRA differ
    embedding_projection: bool      # False: True when a linear E -> H follows the embedding LayerNorm
                                    #   (ALBERT always, ELECTRA when embedding_size != hidden_size)
    num_hidden_groups: int          # 12 (= num_hidden_layers): distinct sets of layer weights; layer i uses
                                    #   set int(i / (layers / groups)); ALBERT shares 1 set (or a few)
    position_rule: str              # "index": token t has position t; "skip_padding" (RoBERTa, XLM-R): real
                                    #   tokens count from pad_token_id + 1, padding gets pad_token_id
    token_type_embeddings: bool     # True: False for DistilBERT, which has no segment table
    sinusoidal_positions: bool      # False: True for DistilBERT's sinusoidal_pos_embds (fixed sin/cos table)
    relative_attention_num_buckets: int   # 0: no relative position bias; MPNet 32, rows of a [buckets, NH]
                                    #   table added to every attention score by the bucket of key - query

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_tokens(self) -> int:
        """Tokens one row can hold: RoBERTa's positions start after pad_token_id, using up pad_token_id + 1 rows."""
        return self.max_position_embeddings - (self.pad_token_id + 1 if self.position_rule == "skip_padding" else 0)


# The family switches, for `minibert inspect` and anything else that reports them.
SWITCH_FIELDS = ("embedding_size", "embedding_projection", "num_hidden_groups", "position_rule",
                 "token_type_embeddings", "sinusoidal_positions", "relative_attention_num_buckets")
BERT_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
             "layer_norm_eps", "pad_token_id")
REQUIRED_KEYS = tuple(k for k in BERT_KEYS if k not in ("layer_norm_eps", "pad_token_id"))
DEFAULTS = {"layer_norm_eps": 1e-12, "pad_token_id": 0}
FIELD_TYPES = {f.name: f.type for f in fields(Config)}
RESTORE = "config.json looks damaged or edited: restore the one from the model's repository"
MAX_SIZE = 1 << 24          # no size of a BERT-family encoder comes near this (XLM-R's vocabulary: 250,002)


def read_config(path: Path) -> Config:
    """Read and check config.json; every problem raises ConfigError naming the key and the file."""
    try:
        raw = read_json(Path(path), SETTINGS_LIMIT, ConfigError, "config.json")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config.json not found; "
                          "a model directory needs config.json beside model.safetensors") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config.json must hold a JSON object, found {type(raw).__name__}")
    return config_from_dict(raw, where=str(path))


def detect_family(raw: dict, where: str) -> str:
    """model_type, checked against the architectures list; old files with only architectures also work."""
    architectures = raw.get("architectures") or []
    if not isinstance(architectures, list):
        raise ConfigError(f"{where}: architectures must be a list of class names, found {architectures!r}")
    named = {ARCHITECTURE_FAMILIES.get(ARCHITECTURE_SUFFIX.sub("", a)) for a in architectures if isinstance(a, str)}
    named.discard(None)
    model_type = raw.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ConfigError(f"{where}: model_type must be a string, found {model_type!r}")
    if model_type is None and len(named) == 1:
        model_type = next(iter(named))
    if model_type not in SUPPORTED_FAMILIES:
        reason = UNSUPPORTED_REASONS.get(model_type,
                                         "config.json names no model_type or known architecture"
                                         if model_type is None else None)
        raise ConfigError(f"{where}: model_type {model_type!r} is not supported; supported families: "
                          f"{', '.join(SUPPORTED_FAMILIES)}" + (f" ({reason})" if reason else ""))
    if named - {model_type}:
        raise ConfigError(f"{where}: model_type {model_type!r} disagrees with architectures {architectures}; "
                          "config.json must describe one family")
    unknown = [a for a in architectures if isinstance(a, str) and ARCHITECTURE_SUFFIX.sub("", a) not in
               ARCHITECTURE_FAMILIES]
    if unknown:
        # A project's own class around the family's encoder (AntiBERTy: BertModel + BERT's MLM head + its own
        # heads): transformers' Auto classes go by model_type too; heads minibert does not know are ignored.
        warn_caller(f"{where}: architectures names {', '.join(map(repr, unknown))}, a class minibert does not "
                    f"know; loaded as model_type {model_type!r} says, the {model_type} encoder with the family's "
                    "own heads where present (other heads' tensors are ignored)", UnknownArchitectureWarning)
    return model_type


def config_from_dict(raw: dict, where: str = "config") -> Config:
    family = detect_family(raw, where)
    record = FAMILIES[family]
    renames = record.key_names
    for theirs, ours in renames.items():
        if theirs in raw and ours in raw:
            raise ConfigError(f"{where}: both {theirs!r} and {ours!r} are set; {family} names it {theirs!r}")
    raw = {renames.get(k, k): v for k, v in raw.items()}
    raw["model_type"] = family
    fixed = record.fixed
    missing = [k for k in REQUIRED_KEYS if k not in raw and k not in fixed]
    if missing:
        their_names = {ours: theirs for theirs, ours in renames.items()}
        raise ConfigError(f"{where}: missing key(s) {', '.join(their_names.get(k, k) for k in missing)} "
                          f"for model_type {family!r}; {RESTORE}")
    family_keys = record.keys
    known = (set(BERT_KEYS) | set(family_keys) | set(fixed) | set(UNSUPPORTED_UNLESS) | IGNORED_KEYS
             | HARMLESS_KEYS | record.ignored_keys)
    # Another family's switches (embedding_size on BERT, ...) and keys known to change the forward pass.
    other_switches = set().union(*(f.keys for f in FAMILIES.values()), *(set(f.key_names) for f in FAMILIES.values()),
                                 SWITCH_FIELDS) | FORWARD_CHANGING_KEYS
    refused = sorted(k for k in raw if k not in known and k in other_switches)
    if refused:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(refused)} for model_type {family!r}: they change the "
                          "forward pass in ways minibert does not implement for this family")
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        listed = f"{where}: unknown key(s) {', '.join(unknown)}"
        why = "minibert cannot tell whether they change the forward pass"
        if os.environ.get(STRICT_ENV, "") not in ("", "0"):
            raise ConfigError(f"{listed}; {why}. Remove them if they are training-only settings ({STRICT_ENV} is set)")
        warnings.warn(f"{listed} ignored; {why} (set {STRICT_ENV}=1 to refuse them)", UnknownConfigKeysWarning,
                      stacklevel=3)
    for key, allowed in UNSUPPORTED_UNLESS.items():
        if key in raw and raw[key] not in allowed:
            raise ConfigError(f"{where}: {key}={raw[key]!r} is not supported (only {allowed[0]!r}); "
                              "minibert supports absolute-position encoder-only families: "
                              f"{', '.join(SUPPORTED_FAMILIES)}")
    values = {**DEFAULTS, **record.defaults,
              **{k: raw[k] for k in BERT_KEYS + family_keys if k in raw}, **fixed}
    # Switches a family leaves alone keep BERT's meaning.
    values.setdefault("embedding_size", values["hidden_size"])
    values.setdefault("embedding_projection", values["embedding_size"] != values["hidden_size"])  # ELECTRA's rule
    values.setdefault("num_hidden_groups", values["num_hidden_layers"])
    values.setdefault("position_rule", "index")
    values.setdefault("token_type_embeddings", True)
    values.setdefault("sinusoidal_positions", False)
    values.setdefault("relative_attention_num_buckets", 0)
    try:
        check_types(values, where)
        config = Config(**values)
        check_values(config, where)
    except ConfigError as e:
        raise ConfigError(f"{e}; {RESTORE}") from None
    return config


def check_types(values: dict, where: str) -> None:
    for key, value in values.items():
        want = FIELD_TYPES[key]
        if want is bool:
            ok = isinstance(value, bool)
        else:   # JSON has no int/bool distinction worth trusting: true is not a size
            ok = isinstance(value, (int, float) if want is float else want) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{where}: {key} must be {want.__name__}, found {value!r}")


def check_values(c: Config, where: str) -> None:
    positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size", "embedding_size")
    for key in positive:
        if getattr(c, key) <= 0:
            raise ConfigError(f"{where}: {key} must be positive, found {getattr(c, key)}")
        if getattr(c, key) > MAX_SIZE:     # tables minibert builds itself are sized from these before any check
            raise ConfigError(f"{where}: {key} {getattr(c, key)} is implausibly large (above {MAX_SIZE:,}); "
                              "is config.json corrupt?")
    if c.hidden_size % c.num_attention_heads:
        raise ConfigError(f"{where}: hidden_size {c.hidden_size} is not divisible by "
                          f"num_attention_heads {c.num_attention_heads}")
    if c.hidden_act not in ACTIVATIONS:
        raise ConfigError(f"{where}: hidden_act {c.hidden_act!r} is not supported; use one of {', '.join(ACTIVATIONS)}")
    if not 0 < c.layer_norm_eps < 1:
        raise ConfigError(f"{where}: layer_norm_eps must be in (0, 1), found {c.layer_norm_eps}")
    if not 0 <= c.pad_token_id < c.vocab_size:
        raise ConfigError(f"{where}: pad_token_id {c.pad_token_id} is outside the vocabulary (size {c.vocab_size})")
    if not 1 <= c.num_hidden_groups <= c.num_hidden_layers:
        raise ConfigError(f"{where}: num_hidden_groups must be between 1 and num_hidden_layers "
                          f"({c.num_hidden_layers}), found {c.num_hidden_groups}")
    if not c.embedding_projection and c.embedding_size != c.hidden_size:
        raise ConfigError(f"{where}: embedding_size {c.embedding_size} differs from hidden_size {c.hidden_size} "
                          "but the family has no embedding projection")
    if c.relative_attention_num_buckets not in (0, RELATIVE_BUCKETS):
        raise ConfigError(f"{where}: relative_attention_num_buckets must be {RELATIVE_BUCKETS}, found "
                          f"{c.relative_attention_num_buckets} (transformers' MPNet buckets distances into "
                          f"{RELATIVE_BUCKETS} whatever this says, so a table of another size would be misread)")
    if c.position_rule not in POSITION_RULES:
        raise ConfigError(f"{where}: position_rule {c.position_rule!r} is not one of {', '.join(POSITION_RULES)}")
    if c.max_tokens < 1:
        raise ConfigError(f"{where}: max_position_embeddings {c.max_position_embeddings} leaves no position for a "
                          f"token after pad_token_id {c.pad_token_id} (positions start at pad_token_id + 1)")
