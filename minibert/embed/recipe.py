"""A checkpoint's own embedding recipe: what sentence-transformers would do with the same directory.

A sentence-transformers directory says, in modules.json, which modules run after the encoder and in what
order (Transformer, Pooling, Dense..., Normalize), and each module's folder holds its settings:

    modules.json                         the modules, in order, each with its folder ("" = the root)
    sentence_bert_config.json            max_seq_length, do_lower_case (in the Transformer's folder)
    1_Pooling/config.json                pooling_mode_* flags, include_prompt
    2_Dense/config.json + model.safetensors   in/out features, bias, activation; linear.weight [out, in]
    (Normalize)                          L2 normalisation; often listed without a folder
    config_sentence_transformers.json    prompts, default_prompt_name

`read_recipe` turns these into a frozen Recipe; every setting remembers the file it came from, so
`minibert inspect` can print it. A plain transformers directory gets minibert's defaults (docs/extraction.md).
"""

import json
import posixpath
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType

import numpy as np

from .. import files
from ..checkpoint.safetensors import Checkpoint
from ..errors import ConfigError, InputError, ModelFileError
from .pooling import POOLINGS, resolve_layer_choice

MODULE_PREFIX = "sentence_transformers."
# Pooling flags in 1_Pooling/config.json -> minibert's pooling names, from the pooling registry.
POOLING_FLAGS = {p.flag: p.name for p in POOLINGS.values() if p.flag}
# Newer files may name the mode in one string ("pooling_mode": "mean") instead of flags.
POOLING_NAMES = {p.mode: p.name for p in POOLINGS.values() if p.mode}
# Dense's activation_function is a dotted torch class name; the last part names the function.
DENSE_ACTIVATIONS = ("Identity", "Tanh", "ReLU", "Sigmoid", "GELU", "SiLU")
DEFAULT_SOURCE = "minibert default"
# A SparseEncoder directory (Transformer then SpladePooling) loads as its encoder; its vectors are encode_sparse's.
SPARSE_ENCODER = "sentence-transformers SparseEncoder"


@dataclass(frozen=True, eq=False)
class Dense:
    """One sentence-transformers Dense module: y = activation(x @ weight.T + bias)."""
    weight: np.ndarray            # [out, in]
    bias: object                  # [out] or None
    activation: str               # one of DENSE_ACTIVATIONS
    path: str                     # the module's folder, for messages and `minibert inspect`


# The prompts sentence-transformers' encode_query / encode_document use, the first the model has.
ROLE_PROMPTS = {"query": ("query",), "document": ("document", "passage", "corpus")}


@dataclass(frozen=True, eq=False)
class Recipe:
    """How the checkpoint turns token vectors into its sentence vector, and where each setting came from.

    None for max_length means the tokenizer's own limit. `sources` maps each setting name to the file
    it was read from, or "minibert default".
    """
    kind: str = "transformers"                    # "sentence-transformers" when modules.json is present,
                                                  # SPARSE_ENCODER for a SparseEncoder's (SpladePooling)
    transformer_path: str = ""                    # the encoder's folder ("" or e.g. "0_Transformer")
    pooling: str = "mean"
    include_prompt: bool = True                   # False: prompt tokens are left out of the pooling
    max_length: object = None                     # int, or None for the tokenizer's limit
    do_lower_case: bool = False                   # lower-case texts before tokenizing
    dense: tuple = ()                             # Dense modules, applied in order after pooling
    normalize: bool = False
    prompts: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    default_prompt_name: object = None
    sources: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    files: tuple = ()                             # the files read, relative to the model directory

    def __reduce__(self):
        """Pickle the read-only mappings as plain dicts (a mappingproxy does not pickle)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return rebuild_recipe, ({**values, "prompts": dict(self.prompts), "sources": dict(self.sources)},)

    def role_prompt(self, role: str, options: dict) -> dict:
        """encode's options with prompt_name set to this recipe's prompt for `role` ("query" or "document",
        ROLE_PROMPTS) when it has one and the options give no prompt: sentence-transformers' encode_query and
        encode_document."""
        if options.get("prompt") is not None or options.get("prompt_name") is not None:
            return options
        name = next((n for n in ROLE_PROMPTS[role] if n in self.prompts), None)
        return options if name is None else {**options, "prompt_name": name}

    def source_of(self, setting: str) -> str:
        default = "sentence-transformers default" if self.kind == "sentence-transformers" else DEFAULT_SOURCE
        return self.sources.get(setting, default)

    def describe(self) -> list:
        """(setting, value, source) rows for `minibert inspect`."""
        dense = ", ".join(f"{d.path} {d.weight.shape[1]}->{d.weight.shape[0]} {d.activation}" for d in self.dense)
        shown = {"transformer_path": self.transformer_path or ".", "max_length": self.max_length or "tokenizer's limit",
                 "dense": dense or "none", "prompts": dict(self.prompts) or "none"}
        if self.kind == SPARSE_ENCODER:
            shown["pooling"] = "none of its own (SpladePooling: encode_sparse; encode needs pooling=)"
        names = [f.name for f in fields(self) if f.name not in ("sources", "files")]
        return [(name, shown.get(name, getattr(self, name)), self.source_of(name)) for name in names]


def rebuild_recipe(values: dict) -> Recipe:
    return Recipe(**{**values, "prompts": MappingProxyType(values["prompts"]),
                     "sources": MappingProxyType(values["sources"])})


def read_json_object(path: Path, error=ConfigError) -> dict:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise error(f"{path}: cannot read as JSON ({type(e).__name__}: {e}); "
                    "copy the checkpoint's files again") from None
    if not isinstance(found, dict):
        raise error(f"{path}: must hold a JSON object, found {type(found).__name__}")
    return found


def read_modules(model_dir: Path) -> list:
    """modules.json -> [(short type, folder)] in order: ("Transformer", ""), ("Pooling", "1_Pooling"), ..."""
    path = model_dir / "modules.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: cannot read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{path}: must hold a list of module objects")
    modules = []
    for i, entry in enumerate(sorted(entries, key=lambda e: e.get("idx", 0) if isinstance(e.get("idx"), int) else 0)):
        kind, folder = entry.get("type"), entry.get("path", "")
        if not isinstance(kind, str) or not isinstance(folder, str):
            raise ConfigError(f"{path}: module {i} needs a string 'type' and 'path', found {entry!r}")
        if Path(folder).is_absolute() or ".." in Path(folder).parts:
            raise ConfigError(f"{path}: module {i} path {folder!r} must be a folder inside the model directory")
        if not kind.startswith(MODULE_PREFIX):
            raise ConfigError(f"{path}: module {i} is {kind!r}, not a sentence-transformers module; minibert "
                              "cannot run custom module code")
        modules.append((kind.rsplit(".", 1)[-1], folder))    # ...models.Pooling, or 6.x's ...modules.pooling.Pooling
    return modules


def read_recipe(model_dir: Path) -> Recipe:
    """The recipe of a model directory: sentence-transformers' modules when modules.json is present."""
    if not (model_dir / "modules.json").is_file():
        return Recipe()
    modules = read_modules(model_dir)
    kinds = [kind for kind, _ in modules]
    if not kinds or kinds[0] != "Transformer" or kinds.count("Transformer") != 1:
        raise ConfigError(f"{model_dir / 'modules.json'}: minibert reproduces a Transformer module followed by "
                          f"Pooling, Dense and Normalize modules; found {kinds}")
    settings, sources = {"kind": "sentence-transformers"}, {"kind": "modules.json"}

    def take(name, value, source):
        settings[name], sources[name] = value, source

    transformer = modules[0][1]
    take("transformer_path", transformer, "modules.json")
    read_transformer_settings(model_dir, transformer, take)
    if kinds[1:] == ["SpladePooling"]:
        # Its SPLADE settings are embed/sparse.py's to read (load attaches them); encode_sparse uses no prompts.
        settings["kind"] = SPARSE_ENCODER
        return Recipe(**settings, sources=MappingProxyType(sources), files=files_read(model_dir, modules))
    read_prompts(model_dir, take)
    dense, seen = [], []
    for kind, folder in modules[1:]:
        where = f"modules.json ({kind} at {folder or '.'})"
        if kind == "Pooling" and not seen:
            read_pooling(model_dir / folder, folder, take)
        elif kind == "Dense" and seen and "Normalize" not in seen:
            dense.append(read_dense(model_dir / folder, folder))
        elif kind == "Normalize" and seen and "Normalize" not in seen:
            if (model_dir / folder / "config.json").is_file() and folder:
                check_reads_sentence_embedding(read_json_object(model_dir / folder / "config.json"),
                                               model_dir / folder / "config.json")
            take("normalize", True, where)
        else:
            raise ConfigError(f"{model_dir / 'modules.json'}: module {kind!r} at {folder!r} "
                              f"(after {['Transformer'] + seen}) "
                              "is not one minibert can reproduce; it runs Transformer, Pooling, Dense and Normalize "
                              "in that order; to use the encoder alone, copy its files to a directory "
                              "without modules.json")
        seen.append(kind)
    if "Pooling" not in seen:
        # A Transformer alone (what sentence-transformers 6 writes for a CrossEncoder): the encoder with its
        # length and casing, pooled as a plain checkpoint is; `finetune --model` starts from it.
        settings["kind"] = Recipe.kind
    if dense:
        take("dense", tuple(dense), "modules.json")
    return Recipe(**settings, sources=MappingProxyType(sources), files=files_read(model_dir, modules))


def files_read(model_dir: Path, modules: list) -> tuple:
    """The recipe's files that read_recipe opened, relative to model_dir, for `minibert inspect`."""
    transformer = modules[0][1]
    names = ["modules.json", posixpath.join(transformer, "sentence_bert_config.json"),
             "config_sentence_transformers.json"]
    for kind, folder in modules[1:]:
        if folder:          # a Normalize listed at "" has no settings of its own
            names += [posixpath.join(folder, "config.json")] + ([posixpath.join(folder, "model.safetensors")]
                                                                if kind == "Dense" else [])
    return tuple(dict.fromkeys(name for name in names if (model_dir / name).is_file()))


def read_transformer_settings(model_dir: Path, transformer: str, take) -> None:
    """sentence_bert_config.json, in the Transformer's folder: max_seq_length and do_lower_case.

    sentence-transformers 6 saves max_seq_length as the tokenizer's model_max_length instead; either way
    the recipe shows it (encode caps it at the model's positions, as sentence-transformers does)."""
    folder = model_dir / transformer
    prefix = f"{transformer}/" if transformer else ""
    tokenizer_limit = read_json_object(folder / "tokenizer_config.json").get("model_max_length") \
        if (folder / "tokenizer_config.json").is_file() else None
    if isinstance(tokenizer_limit, int) and not isinstance(tokenizer_limit, bool) and 2 <= tokenizer_limit < 1 << 20:
        take("max_length", tokenizer_limit, f"{prefix}tokenizer_config.json (model_max_length)")
    rel = f"{prefix}sentence_bert_config.json"
    path = model_dir / rel
    if not path.is_file():
        return
    found = read_json_object(path)
    limit = found.get("max_seq_length")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
            raise ConfigError(f"{path}: max_seq_length must be an int of at least 2, found {limit!r}")
        take("max_length", limit, rel)
    if "do_lower_case" in found:
        if not isinstance(found["do_lower_case"], bool):
            raise ConfigError(f"{path}: do_lower_case must be true or false, found {found['do_lower_case']!r}")
        take("do_lower_case", found["do_lower_case"], rel)


def read_pooling(folder: Path, rel: str, take) -> None:
    """1_Pooling/config.json -> one pooling mode and include_prompt."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFileError(f"{path}: missing; the Pooling module listed in modules.json needs its config.json")
    found = read_json_object(path)
    source = f"{rel}/config.json"
    if "pooling_mode" in found:             # sentence-transformers 5.2 on: a name, or a list to concatenate
        names = found["pooling_mode"] if isinstance(found["pooling_mode"], list) else [found["pooling_mode"]]
        unknown = [name for name in names if name not in POOLING_NAMES]
        if unknown or not names:
            raise ConfigError(f"{path}: pooling_mode {found['pooling_mode']!r} "
                              f"is not one of {', '.join(POOLING_NAMES)}")
        modes = [POOLING_NAMES[name] for name in names]
    else:                                   # older files: one flag per mode; none set means mean
        modes = [mode for flag, mode in POOLING_FLAGS.items() if found.get(flag) is True] or ["mean"]
    if len(modes) != 1:
        raise ConfigError(f"{path}: minibert reproduces exactly one pooling mode, found {modes} (sentence-"
                          "transformers concatenates them); to use the encoder alone, copy its files to a directory "
                          "without modules.json")
    take("pooling", modes[0], source)
    include = found.get("include_prompt", True)
    if not isinstance(include, bool):
        raise ConfigError(f"{path}: include_prompt must be true or false, found {include!r}")
    if not include:
        take("include_prompt", False, source)


def read_dense(folder: Path, rel: str) -> Dense:
    """A Dense module's config.json and model.safetensors (linear.weight [out, in], linear.bias [out])."""
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not config_path.is_file():
        raise ModelFileError(f"{config_path}: missing; the Dense module listed in modules.json needs its config.json")
    found = read_json_object(config_path)
    check_reads_sentence_embedding(found, config_path)
    # sentence-transformers' Dense defaults to Tanh when the file names no activation.
    activation = str(found.get("activation_function", "torch.nn.modules.activation.Tanh")).rsplit(".", 1)[-1]
    if activation not in DENSE_ACTIVATIONS:
        raise ConfigError(f"{config_path}: activation_function {found.get('activation_function')!r} is not one of "
                          f"{', '.join(DENSE_ACTIVATIONS)}")
    if not weights_path.is_file():
        other = ("pytorch_model.bin (a pickle, which minibert does not read)"
                 if (folder / "pytorch_model.bin").is_file() else "nothing")
        raise ModelFileError(f"{weights_path}: missing (found {other}); save the Dense weights as safetensors, e.g. "
                             "SentenceTransformer(dir).save(dir, safe_serialization=True)")
    # The checked reader load uses: a hostile header is refused naming the tensor, in bounded time and words.
    checkpoint = Checkpoint([weights_path])
    tensors = {name: checkpoint.read_stored(name) for name in ("linear.weight", "linear.bias")
               if name in checkpoint.names()}
    checkpoint.check_unchanged()
    weight, bias = tensors.get("linear.weight"), tensors.get("linear.bias")
    if weight is None or weight.ndim != 2:
        raise ModelFileError(f"{weights_path}: needs a 2-D linear.weight [out, in], found "
                             f"{files.shown(sorted(checkpoint.names()))}")
    shape = (found.get("out_features", weight.shape[0]), found.get("in_features", weight.shape[1]))
    if tuple(weight.shape) != shape:
        raise ModelFileError(f"{weights_path}: linear.weight has shape {tuple(weight.shape)}, config.json says "
                             f"[out_features, in_features] = {list(shape)}")
    if found.get("bias", True) and (bias is None or bias.shape != (weight.shape[0],)):
        raise ModelFileError(f"{weights_path}: linear.bias must have shape ({weight.shape[0]},), found "
                             f"{None if bias is None else bias.shape}")
    for name, array in (("linear.weight", weight), ("linear.bias", bias)):
        if array is not None and not np.isfinite(array).all():
            raise ModelFileError(f"{weights_path}: {name} holds NaN or Inf values; the file is damaged")
    return Dense(weight=weight, bias=bias if found.get("bias", True) else None, activation=activation, path=rel)


def check_reads_sentence_embedding(found: dict, path: Path) -> None:
    """Dense and Normalize may be pointed at the token vectors; minibert applies them to the sentence vector."""
    for key in ("module_input_name", "module_output_name"):
        if found.get(key, "sentence_embedding") not in ("sentence_embedding", None):
            raise ConfigError(f"{path}: {key} {found[key]!r}: minibert applies this module to the sentence "
                              "vector only (sentence_embedding)")


def read_prompts(model_dir: Path, take) -> None:
    """config_sentence_transformers.json: prompts {name: text} and default_prompt_name."""
    path = model_dir / "config_sentence_transformers.json"
    if not path.is_file():
        return
    found = read_json_object(path)
    prompts = found.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ConfigError(f"{path}: prompts must map names to strings, found {prompts!r}")
    default = found.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ConfigError(f"{path}: default_prompt_name {default!r} is not one of the prompts {sorted(prompts)}")
    if prompts:
        take("prompts", MappingProxyType(dict(prompts)), path.name)
    if default is not None:
        take("default_prompt_name", default, path.name)


@dataclass(frozen=True, eq=False)
class EncodeSettings:
    """What one encode call does after the caller's options and the recipe are merged: every option resolved
    once here, so the rest of the call reads these values and nothing re-derives them."""
    pooling: str
    normalize: bool
    max_length: int               # tokens kept per text (resolve_max_length)
    layers: list                  # hidden-state indices in the order asked (0 = embedding output)
    single_layer: bool            # one int layer asked: its vectors come out without a layer axis
    dense: tuple                  # Dense modules for the sentence vector, or ()
    prompt: str                   # prepended to every text ("" for none)
    include_prompt: bool          # False: the prompt's tokens are left out of the pooling
    lower: bool                   # do_lower_case: lower-case texts (and the prompt) before tokenizing


def resolve_max_length(model, max_length=None) -> int:
    """Tokens kept per text: max_length when given; else the recipe's (max_seq_length read from the checkpoint
    or set on the model), cut to the positions as transformers would fail past them; else the tokenizer's."""
    if max_length is not None:
        return max_length
    if model.recipe.max_length is not None:
        return min(model.recipe.max_length, model.config.max_tokens)
    return model.tokenizer.max_length


def check_flag(value, name):
    """A yes/no option: True, False (a NumPy bool too) or None (the recipe's), as a Python bool or None. A
    string such as "False" is refused: its truth would silently turn the option on."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    raise InputError(f"{name} must be True, False or None (the model's recipe), found {value!r}")


def encode_settings(model, *, pooling, normalize, max_length, layers, prompt, prompt_name) -> EncodeSettings:
    """Options given explicitly win; the model's recipe fills in the rest.

    The recipe's head (Dense modules, Normalize) belongs to its sentence vector, the last layer pooled:
    a single-int `layers` naming the last layer with a pooling other than "none". Other layers, lists of
    layers and token vectors come out of the encoder as they are (normalised only when asked).
    """
    recipe, num_layers = model.recipe, model.config.num_hidden_layers
    chosen, single = resolve_layer_choice(layers, num_layers)
    normalize = check_flag(normalize, "normalize")
    pooling = recipe.pooling if pooling is None else pooling
    sentence_vector = single and chosen == [num_layers] and pooling != "none"
    normalize = (recipe.normalize and sentence_vector) if normalize is None else normalize
    if prompt is None and prompt_name is not None:
        if prompt_name not in recipe.prompts:
            raise InputError(f"prompt_name {prompt_name!r} is not one of this model's prompts "
                             f"{sorted(recipe.prompts) or '(it has none)'} (config_sentence_transformers.json)")
        prompt = recipe.prompts[prompt_name]
    if prompt is None and recipe.default_prompt_name is not None:
        prompt = recipe.prompts[recipe.default_prompt_name]
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, found {type(prompt).__name__}")
    return EncodeSettings(pooling=pooling, normalize=bool(normalize), max_length=resolve_max_length(model, max_length),
                          layers=chosen, single_layer=single, dense=recipe.dense if sentence_vector else (),
                          prompt=prompt or "", include_prompt=recipe.include_prompt, lower=recipe.do_lower_case)


def check_dense(model, pooling) -> None:
    """A SparseEncoder's vectors are sparse: encode with its own recipe (no pooling named) would give a pooled
    dense vector sentence-transformers never gives for it, so it is refused, pointing to encode_sparse."""
    if model.recipe.kind == SPARSE_ENCODER and pooling is None:
        raise InputError(f"{model.source} is a SparseEncoder (modules.json: Transformer, SpladePooling): its "
                         "vectors are sparse; use encode_sparse (embed --sparse, extract --sparse, the server's "
                         "/embed_sparse), or name a pooling (pooling=, --pooling) to pool its token vectors")


def applied_recipe(model, layers, pooling, normalize, max_length):
    """What the options left as None (pooling, normalize, max_length) became, and the head applied: the
    settings a reader of the manifest needs without loading the model's recipe."""
    settings = encode_settings(model, pooling=pooling, normalize=normalize, max_length=max_length,
                               layers=layers, prompt=None, prompt_name=None)
    return {"kind": model.recipe.kind, "pooling": settings.pooling, "normalize": settings.normalize,
            "max_length": settings.max_length, "dense": [d.path for d in settings.dense],
            "prompt": settings.prompt or None}


def prepare_texts(settings: EncodeSettings, texts: list) -> list:
    """The texts as sentence-transformers tokenizes them: prompt first, lower-cased if the recipe says."""
    texts = [settings.prompt + t for t in texts]
    return [t.lower() for t in texts] if settings.lower else texts


def prompt_length(model, settings: EncodeSettings) -> int:
    """How many leading tokens the pooling leaves out: with include_prompt false, the prompt's own tokens
    and the special token before them, counted as sentence-transformers counts them (the prompt tokenized
    alone and cut as the texts are, less its closing special token if it has one: a prompt longer than the
    texts' limit leaves their last token in the pooling, not none)."""
    if settings.include_prompt or not settings.prompt:
        return 0
    from ..tokenizer import encode_batch
    [alone] = encode_batch(model.tokenizer.backend, prepare_texts(settings, [""]), settings.max_length)
    return len(alone.ids) - (alone.special_tokens_mask[-1] if alone.ids else 0)


def check_prompt_room(model, settings: EncodeSettings) -> None:
    """One warning when the prompt with its special tokens fills max_length: truncation then cuts every text
    whole, and every text gets the same vector (sentence-transformers gives it too, without a word)."""
    if not settings.prompt:
        return
    from ..errors import warn_caller
    from ..tokenizer import encode_batch
    [alone] = encode_batch(model.tokenizer.backend, prepare_texts(settings, [""]), None)
    if len(alone.ids) >= settings.max_length:
        shown = settings.prompt if len(settings.prompt) <= 40 else settings.prompt[:37] + "..."
        warn_caller(f"minibert: the prompt {shown!r} takes {len(alone.ids)} tokens with the special "
                    f"tokens, max_length is {settings.max_length}: no token of any text reaches the model, and "
                    "every text gets the same vector; shorten the prompt or raise max_length")
