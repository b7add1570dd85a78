"""One record per supported model family: everything minibert knows about a family, and the only place
Hugging Face checkpoint, module and class names appear.

A `Family` holds, for one config.json model_type:

    model_type, architecture   config.json's model_type and transformers' class-name stem ("Roberta" in
                               RobertaModel, RobertaForSequenceClassification): read to recognise old configs
                               without a model_type, and written into saved checkpoints' "architectures"
    ignored_keys               config.json keys its transformers encoder never reads (task heads, dropout)
    key_names                  its config.json names -> the common Config field names (DistilBERT's dim, ...)
    keys                       switch fields its config.json may set (ALBERT's embedding_size, ...)
    defaults                   switch values that differ from BERT's when config.json does not set them
    fixed                      switch values its architecture fixes, whatever config.json says
    names                      the checkpoint layout (`Names`): how tensors become minibert's weights tree
    sequence_head              how its ForSequenceClassification reaches the logits (`SequenceHead`)
    head_names                 task ("sequence", "token") -> head part -> checkpoint module name
    pretraining_heads          its masked-LM head's and sentence head's checkpoint names (`PretrainingHeads`)
    attention_output_dropout   whether training drops out the attention output projection before the add
    parity_modules             where `parity --ops` hooks each captured internal inside transformers' layer
    reference_layers           the path to those layers in transformers' base model ("*": each of a list)
    tokenizer_class            the WordPiece class AutoTokenizer picks when tokenizer_config.json names none

config.py reads the config fields, weights.py and hf_checkpoint.py the names (both ways), backprop.py and
classifier.py the heads and dropout, heads.py and pretrain.py the pretraining heads, parity.py the hooks,
tokenizer.py the tokenizer class. Adding a family is a new record here plus fixtures and tests (see
docs/extending.md).
"""

from dataclasses import dataclass, field
from typing import Optional

# ---- checkpoint names ------------------------------------------------------------------------------------

# (minibert name, checkpoint name or names, arrangement). "{i}" is the index of a set of layer weights:
# the layer for most families, the hidden group for ALBERT.
BERT_EMBEDDINGS = [
    ("embeddings.word",       "embeddings.word_embeddings.weight",       "as_is"),
    ("embeddings.position",   "embeddings.position_embeddings.weight",   "as_is"),
    ("embeddings.token_type", "embeddings.token_type_embeddings.weight", "as_is"),
    ("embeddings.ln.g",       "embeddings.LayerNorm.weight",             "as_is"),
    ("embeddings.ln.b",       "embeddings.LayerNorm.bias",               "as_is"),
]
BERT_LAYER = [
    ("qkv.w", ("encoder.layer.{i}.attention.self.query.weight", "encoder.layer.{i}.attention.self.key.weight",
               "encoder.layer.{i}.attention.self.value.weight"), "transpose_concat"),
    ("qkv.b", ("encoder.layer.{i}.attention.self.query.bias", "encoder.layer.{i}.attention.self.key.bias",
               "encoder.layer.{i}.attention.self.value.bias"), "concat"),
    ("attn_out.w", "encoder.layer.{i}.attention.output.dense.weight",     "transpose"),
    ("attn_out.b", "encoder.layer.{i}.attention.output.dense.bias",       "as_is"),
    ("attn_ln.g",  "encoder.layer.{i}.attention.output.LayerNorm.weight", "as_is"),
    ("attn_ln.b",  "encoder.layer.{i}.attention.output.LayerNorm.bias",   "as_is"),
    ("ffn_in.w",   "encoder.layer.{i}.intermediate.dense.weight",         "transpose"),
    ("ffn_in.b",   "encoder.layer.{i}.intermediate.dense.bias",           "as_is"),
    ("ffn_out.w",  "encoder.layer.{i}.output.dense.weight",               "transpose"),
    ("ffn_out.b",  "encoder.layer.{i}.output.dense.bias",                 "as_is"),
    ("ffn_ln.g",   "encoder.layer.{i}.output.LayerNorm.weight",           "as_is"),
    ("ffn_ln.b",   "encoder.layer.{i}.output.LayerNorm.bias",             "as_is"),
]
BERT_POOLER = [
    ("pooler.w", "pooler.dense.weight", "transpose"),
    ("pooler.b", "pooler.dense.bias",   "as_is"),
]

ELECTRA_PROJECTION = [
    ("embedding_projection.w", "embeddings_project.weight", "transpose"),
    ("embedding_projection.b", "embeddings_project.bias",   "as_is"),
]

# ALBERT: the projection lives in the encoder; groups hold one layer each (inner_group_num 1, see config).
ALBERT_PROJECTION = [
    ("embedding_projection.w", "encoder.embedding_hidden_mapping_in.weight", "transpose"),
    ("embedding_projection.b", "encoder.embedding_hidden_mapping_in.bias",   "as_is"),
]
ALBERT_LAYER_PREFIX = "encoder.albert_layer_groups.{i}.albert_layers.0."
ALBERT_LAYER = [(ours, tuple(ALBERT_LAYER_PREFIX + t for t in theirs) if isinstance(theirs, tuple)
                 else ALBERT_LAYER_PREFIX + theirs, arrangement) for ours, theirs, arrangement in [
    ("qkv.w", ("attention.query.weight", "attention.key.weight", "attention.value.weight"), "transpose_concat"),
    ("qkv.b", ("attention.query.bias", "attention.key.bias", "attention.value.bias"), "concat"),
    ("attn_out.w", "attention.dense.weight",            "transpose"),
    ("attn_out.b", "attention.dense.bias",              "as_is"),
    ("attn_ln.g",  "attention.LayerNorm.weight",        "as_is"),
    ("attn_ln.b",  "attention.LayerNorm.bias",          "as_is"),
    ("ffn_in.w",   "ffn.weight",                        "transpose"),
    ("ffn_in.b",   "ffn.bias",                          "as_is"),
    ("ffn_out.w",  "ffn_output.weight",                 "transpose"),
    ("ffn_out.b",  "ffn_output.bias",                   "as_is"),
    ("ffn_ln.g",   "full_layer_layer_norm.weight",      "as_is"),
    ("ffn_ln.b",   "full_layer_layer_norm.bias",        "as_is"),
]]
ALBERT_POOLER = [
    ("pooler.w", "pooler.weight", "transpose"),
    ("pooler.b", "pooler.bias",   "as_is"),
]

# DistilBERT: no segment table (the loader supplies a zero row), its own layer names, no pooler.
DISTILBERT_EMBEDDINGS = [row for row in BERT_EMBEDDINGS if row[0] != "embeddings.token_type"]
DISTILBERT_LAYER = [
    ("qkv.w", ("transformer.layer.{i}.attention.q_lin.weight", "transformer.layer.{i}.attention.k_lin.weight",
               "transformer.layer.{i}.attention.v_lin.weight"), "transpose_concat"),
    ("qkv.b", ("transformer.layer.{i}.attention.q_lin.bias", "transformer.layer.{i}.attention.k_lin.bias",
               "transformer.layer.{i}.attention.v_lin.bias"), "concat"),
    ("attn_out.w", "transformer.layer.{i}.attention.out_lin.weight",   "transpose"),
    ("attn_out.b", "transformer.layer.{i}.attention.out_lin.bias",     "as_is"),
    ("attn_ln.g",  "transformer.layer.{i}.sa_layer_norm.weight",       "as_is"),
    ("attn_ln.b",  "transformer.layer.{i}.sa_layer_norm.bias",         "as_is"),
    ("ffn_in.w",   "transformer.layer.{i}.ffn.lin1.weight",            "transpose"),
    ("ffn_in.b",   "transformer.layer.{i}.ffn.lin1.bias",              "as_is"),
    ("ffn_out.w",  "transformer.layer.{i}.ffn.lin2.weight",            "transpose"),
    ("ffn_out.b",  "transformer.layer.{i}.ffn.lin2.bias",              "as_is"),
    ("ffn_ln.g",   "transformer.layer.{i}.output_layer_norm.weight",   "as_is"),
    ("ffn_ln.b",   "transformer.layer.{i}.output_layer_norm.bias",     "as_is"),
]

# MPNet: no segment table (the loader supplies a zero row); q, k, v, o under attention.attn; one relative
# position bias table for all layers, in the encoder.
MPNET_LAYER = [
    ("qkv.w", ("encoder.layer.{i}.attention.attn.q.weight", "encoder.layer.{i}.attention.attn.k.weight",
               "encoder.layer.{i}.attention.attn.v.weight"), "transpose_concat"),
    ("qkv.b", ("encoder.layer.{i}.attention.attn.q.bias", "encoder.layer.{i}.attention.attn.k.bias",
               "encoder.layer.{i}.attention.attn.v.bias"), "concat"),
    ("attn_out.w", "encoder.layer.{i}.attention.attn.o.weight",      "transpose"),
    ("attn_out.b", "encoder.layer.{i}.attention.attn.o.bias",        "as_is"),
    ("attn_ln.g",  "encoder.layer.{i}.attention.LayerNorm.weight",   "as_is"),
    ("attn_ln.b",  "encoder.layer.{i}.attention.LayerNorm.bias",     "as_is"),
] + [row for row in BERT_LAYER if row[0].startswith("ffn_")]
MPNET_RELATIVE_BIAS = [
    ("relative_attention_bias.table", "encoder.relative_attention_bias.weight", "as_is"),
]


@dataclass(frozen=True)
class Names:
    """One family's checkpoint layout."""
    embeddings: list
    projection: list      # read only when config.embedding_projection
    layer: list
    pooler: list          # read when every tensor it names is present, else pooler None
    model_prefixes: tuple  # what task-head checkpoints (BertForMaskedLM, ...) put before the encoder's names
    ignored_prefixes: tuple  # task heads and buffers the encoder does not use
    relative_bias: list = ()  # read only when config.relative_attention_num_buckets


# The encoder's buffers, and the classification heads of ...ForSequenceClassification / ...ForTokenClassification
# checkpoints (minibert finetune's own among them): transformers' AutoModel leaves both out, and so does load.
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids") + ("classifier.", "pre_classifier.")

# Older TensorFlow-converted checkpoints name LayerNorm parameters gamma/beta.
LEGACY_SUFFIXES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}

# ---- classification heads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceHead:
    """How a family's sequence-classification head reaches the logits from the [CLS] (first) token."""
    pooler: bool                     # True: BERT's tanh pooler first (weights["pooler"])
    dense_activation: Optional[str]  # an extra dense layer with this activation (head["dense"]), or None
    dropout_before_dense: bool       # RoBERTa and ELECTRA drop out the [CLS] vector before the dense layer


POOLER_HEAD = SequenceHead(pooler=True, dense_activation=None, dropout_before_dense=False)
# RoBERTa's ClassificationHead: x[:, 0] -> dropout -> dense -> tanh -> dropout -> out_proj
CLASSIFICATION_HEAD = SequenceHead(pooler=False, dense_activation="tanh", dropout_before_dense=True)
# Head part -> checkpoint module name. Every part is a Linear ([out, in] weight).
CLASSIFIER = {"out": "classifier"}
CLASSIFICATION_HEAD_NAMES = {"dense": "classifier.dense", "out": "classifier.out_proj"}

# ---- pretraining heads -----------------------------------------------------------------------------------

# The masked-LM head is the same three steps in every family, under its own names (minibert/heads.py):
# (minibert name, checkpoint name or alternatives, arrangement) rows as above; a tuple under "first_present"
# is one tensor saved under either name.
def mlm_rows(dense, ln, decoder, biases):
    return [("transform.w", dense + ".weight", "transpose"),
            ("transform.b", dense + ".bias", "as_is"),
            ("ln.g", ln + ".weight", "as_is"),
            ("ln.b", ln + ".bias", "as_is"),
            ("decoder.w", decoder + ".weight", "as_is"),      # [V, E], the word table's layout; read when untied
            ("decoder.b", biases, "first_present")]


@dataclass(frozen=True)
class PretrainingHeads:
    """One family's pretraining heads (not the classifier heads of `head_names`)."""
    mlm: list
    sentence: list = ()     # () when the family's pretraining has no sentence head
    sentence_task: str = ""  # what the sentence head predicts, for messages
    activation: str = "hidden_act"   # the transform's activation; "hidden_act": the config's


BERT_HEADS = PretrainingHeads(
    mlm_rows("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.decoder",
             ("cls.predictions.bias", "cls.predictions.decoder.bias")),
    [("w", "cls.seq_relationship.weight", "transpose"), ("b", "cls.seq_relationship.bias", "as_is")],
    "next sentence")
# RoBERTa, XLM-R, MPNet and the ELECTRA generator hard-code exact GELU in the head whatever hidden_act says.
LM_HEAD = PretrainingHeads(mlm_rows("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder",
                                    ("lm_head.bias", "lm_head.decoder.bias")), activation="gelu")
ELECTRA_HEADS = PretrainingHeads(mlm_rows("generator_predictions.dense", "generator_predictions.LayerNorm",
                                          "generator_lm_head", ("generator_lm_head.bias",)), activation="gelu")
ALBERT_HEADS = PretrainingHeads(
    mlm_rows("predictions.dense", "predictions.LayerNorm", "predictions.decoder",
             ("predictions.bias", "predictions.decoder.bias")),
    [("w", "sop_classifier.classifier.weight", "transpose"), ("b", "sop_classifier.classifier.bias", "as_is")],
    "sentence order")
DISTILBERT_HEADS = PretrainingHeads(mlm_rows("vocab_transform", "vocab_layer_norm", "vocab_projector",
                                             ("vocab_projector.bias",)))

# ---- parity hooks ----------------------------------------------------------------------------------------

# Where each captured internal lives inside transformers' modules, for forward hooks: our internal ->
# (module path under one layer, which tensor: "out" the output, "first" the output's first element, "in" the
# input). "in" reads tensors transformers never returns: DistilBERT's and ALBERT's context enters the output
# projection, their activation output enters the second feed-forward linear.
BERT_STYLE_MODULES = {     # BERT, RoBERTa, XLM-R, ELECTRA: encoder.layer[i]
    "query": ("attention.self.query", "out"), "key": ("attention.self.key", "out"),
    "value": ("attention.self.value", "out"), "attention.context": ("attention.self", "first"),
    "attention.output": ("attention.output.dense", "out"), "attention.layer_norm": ("attention.output", "out"),
    "ffn.intermediate": ("intermediate", "out"), "ffn.output": ("output.dense", "out"),
}
DISTILBERT_MODULES = {     # transformer.layer[i]
    "query": ("attention.q_lin", "out"), "key": ("attention.k_lin", "out"), "value": ("attention.v_lin", "out"),
    "attention.context": ("attention.out_lin", "in"), "attention.output": ("attention.out_lin", "out"),
    "attention.layer_norm": ("sa_layer_norm", "out"), "ffn.intermediate": ("ffn.lin2", "in"),
    "ffn.output": ("ffn.lin2", "out"),
}
ALBERT_MODULES = {         # encoder.albert_layer_groups[g].albert_layers[j], each called once per layer sharing it
    "query": ("attention.query", "out"), "key": ("attention.key", "out"), "value": ("attention.value", "out"),
    "attention.context": ("attention.dense", "in"), "attention.output": ("attention.dense", "out"),
    "attention.layer_norm": ("attention.LayerNorm", "out"), "ffn.intermediate": ("ffn_output", "in"),
    "ffn.output": ("ffn_output", "out"),
}
MPNET_MODULES = {          # encoder.layer[i]; the context enters the output projection attn.o
    "query": ("attention.attn.q", "out"), "key": ("attention.attn.k", "out"), "value": ("attention.attn.v", "out"),
    "attention.context": ("attention.attn.o", "in"), "attention.output": ("attention.attn.o", "out"),
    "attention.layer_norm": ("attention.LayerNorm", "out"), "ffn.intermediate": ("intermediate", "out"),
    "ffn.output": ("output.dense", "out"),
}

# ---- the records -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """Everything minibert knows about one family; the fields are described in the module docstring."""
    model_type: str
    architecture: str
    names: Names
    sequence_head: SequenceHead
    parity_modules: dict
    pretraining_heads: PretrainingHeads
    sequence_head_names: dict = field(default_factory=lambda: CLASSIFIER)
    ignored_keys: frozenset = frozenset()
    key_names: dict = field(default_factory=dict)
    keys: tuple = ()
    defaults: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    attention_output_dropout: bool = True
    tokenizer_class: str = "BertTokenizer"
    reference_layers: str = "encoder.layer"

    @property
    def head_names(self) -> dict:
        """task -> head part -> checkpoint module name; every family's token classifier is one Linear."""
        return {"sequence": self.sequence_head_names, "token": CLASSIFIER}


ROBERTA_NAMES = Names(BERT_EMBEDDINGS, [], BERT_LAYER, BERT_POOLER, ("roberta.",), ("lm_head.",) + BUFFERS)

# In SUPPORTED_FAMILIES order (error messages list them so).
FAMILIES = {family.model_type: family for family in [
    Family("bert", "Bert",
           Names(BERT_EMBEDDINGS, [], BERT_LAYER, BERT_POOLER, ("bert.",), ("cls.",) + BUFFERS),
           POOLER_HEAD, BERT_STYLE_MODULES, BERT_HEADS),
    Family("roberta", "Roberta", ROBERTA_NAMES, CLASSIFICATION_HEAD, BERT_STYLE_MODULES, LM_HEAD,
           sequence_head_names=CLASSIFICATION_HEAD_NAMES, fixed={"position_rule": "skip_padding"}),
    Family("xlm-roberta", "XLMRoberta", ROBERTA_NAMES, CLASSIFICATION_HEAD, BERT_STYLE_MODULES, LM_HEAD,
           sequence_head_names=CLASSIFICATION_HEAD_NAMES, fixed={"position_rule": "skip_padding"}),
    Family("distilbert", "DistilBert",
           Names(DISTILBERT_EMBEDDINGS, [], DISTILBERT_LAYER, [], ("distilbert.",),
                 ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.") + BUFFERS),
           SequenceHead(pooler=False, dense_activation="relu", dropout_before_dense=False), DISTILBERT_MODULES,
           DISTILBERT_HEADS,
           sequence_head_names={"dense": "pre_classifier", "out": "classifier"},
           # DistilBERT hard-codes LayerNorm eps 1e-12 whatever its config says.
           ignored_keys=frozenset("dropout attention_dropout qa_dropout seq_classif_dropout output_past "
                                  "tie_weights_ layer_norm_eps".split()),
           key_names={"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                      "hidden_dim": "intermediate_size", "activation": "hidden_act",
                      "sinusoidal_pos_embds": "sinusoidal_positions"},
           keys=("sinusoidal_positions",),
           fixed={"token_type_embeddings": False, "type_vocab_size": 1, "layer_norm_eps": 1e-12},
           # its TransformerBlock adds the attention output projection as it is
           attention_output_dropout=False, reference_layers="transformer.layer"),
    Family("electra", "Electra",
           Names(BERT_EMBEDDINGS, ELECTRA_PROJECTION, BERT_LAYER, [], ("electra.",),
                 ("generator_predictions.", "generator_lm_head.", "discriminator_predictions.") + BUFFERS),
           SequenceHead(pooler=False, dense_activation="gelu", dropout_before_dense=True), BERT_STYLE_MODULES,
           ELECTRA_HEADS, sequence_head_names=CLASSIFICATION_HEAD_NAMES,
           ignored_keys=frozenset("summary_type summary_use_proj summary_activation summary_last_dropout "
                                  "summary_proj_to_labels".split()),      # the sequence-summary head
           keys=("embedding_size",)),
    Family("albert", "Albert",
           Names(BERT_EMBEDDINGS, ALBERT_PROJECTION, ALBERT_LAYER, ALBERT_POOLER, ("albert.",),
                 ("predictions.", "sop_classifier.") + BUFFERS),
           POOLER_HEAD, ALBERT_MODULES, ALBERT_HEADS,
           ignored_keys=frozenset("classifier_dropout_prob down_scale_factor gap_size net_structure_type "
                                  "num_memory_blocks".split()),             # written by the original code, unused
           keys=("embedding_size", "num_hidden_groups"),
           defaults={"num_hidden_groups": 1},          # AlbertConfig's default: every layer shares one set
           fixed={"embedding_projection": True},
           # each group's layer is called once per layer sharing it: hooks record every call
           reference_layers="encoder.albert_layer_groups.*.albert_layers"),
    Family("mpnet", "MPNet",
           Names(DISTILBERT_EMBEDDINGS, [], MPNET_LAYER, BERT_POOLER, ("mpnet.",), ("lm_head.",) + BUFFERS,
                 MPNET_RELATIVE_BIAS),
           CLASSIFICATION_HEAD, MPNET_MODULES, LM_HEAD,
           sequence_head_names=CLASSIFICATION_HEAD_NAMES,
           keys=("relative_attention_num_buckets",),
           defaults={"relative_attention_num_buckets": 32},   # MPNetConfig's default
           # MPNet numbers positions from padding index 1 whatever config.json's pad_token_id says.
           fixed={"position_rule": "skip_padding", "token_type_embeddings": False, "type_vocab_size": 1,
                  "pad_token_id": 1},
           tokenizer_class="MPNetTokenizer"),
]}


def family_of(config) -> Family:
    """The record of a Config's family (config.model_type is always one of FAMILIES: config.py checks)."""
    return FAMILIES[config.model_type]
