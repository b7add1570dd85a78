"""Checkpoint tensors -> minibert's weights dict. The only place Hugging Face tensor names appear.

The result is a nested dict of arrays in the compute dtype, linear weights stored (in, out) so the
model reads `x @ w + b`, and Q, K, V fused into one (H, 3H) projection:

    {"embeddings": {"word": [V, H], "position": [P, H], "token_type": [TV, H], "ln": {"g": [H], "b": [H]}},
     "layers": [{"qkv": {"w": [H, 3H], "b": [3H]}, "attn_out": {"w": [H, H], "b": [H]}, "attn_ln": {...},
                 "ffn_in": {"w": [H, I], "b": [I]}, "ffn_out": {"w": [I, H], "b": [H]}, "ffn_ln": {...}}, ...],
     "pooler": {"w": [H, H], "b": [H]} or None}
"""

import json
import struct
from pathlib import Path

import numpy as np
from safetensors import safe_open

from .config import Config
from .errors import ModelFileError

# (minibert name, checkpoint name or names, arrangement). "{i}" is the layer index.
EMBEDDING_TABLE = [
    ("embeddings.word",       "embeddings.word_embeddings.weight",       "as_is"),
    ("embeddings.position",   "embeddings.position_embeddings.weight",   "as_is"),
    ("embeddings.token_type", "embeddings.token_type_embeddings.weight", "as_is"),
    ("embeddings.ln.g",       "embeddings.LayerNorm.weight",             "as_is"),
    ("embeddings.ln.b",       "embeddings.LayerNorm.bias",               "as_is"),
]
LAYER_TABLE = [
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
POOLER_TABLE = [
    ("pooler.w", "pooler.dense.weight", "transpose"),
    ("pooler.b", "pooler.dense.bias",   "as_is"),
]
# Checkpoint prefixes of task heads and buffers that the encoder does not use.
IGNORED_PREFIXES = ("cls.", "embeddings.position_ids")
# Model prefixes that task-head checkpoints (BertForMaskedLM, ...) put before the encoder's names.
MODEL_PREFIXES = ("bert.",)
# Older TensorFlow-converted checkpoints name LayerNorm parameters gamma/beta.
LEGACY_SUFFIXES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}


def expected_shapes(c: Config) -> dict:
    H, I = c.hidden_size, c.intermediate_size
    return {
        "embeddings.word": (c.vocab_size, H), "embeddings.position": (c.max_position_embeddings, H),
        "embeddings.token_type": (c.type_vocab_size, H), "embeddings.ln.g": (H,), "embeddings.ln.b": (H,),
        "qkv.w": (H, 3 * H), "qkv.b": (3 * H,), "attn_out.w": (H, H), "attn_out.b": (H,),
        "attn_ln.g": (H,), "attn_ln.b": (H,), "ffn_in.w": (H, I), "ffn_in.b": (I,),
        "ffn_out.w": (I, H), "ffn_out.b": (H,), "ffn_ln.g": (H,), "ffn_ln.b": (H,),
        "pooler.w": (H, H), "pooler.b": (H,),
    }


def checkpoint_files(model_dir: Path) -> list:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [model_dir / name for name in sorted(set(weight_map.values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelFileError(f"{index}: cannot read the shard index ({e})") from None
    found = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.h5"))
    hint = f" (found {', '.join(found)}: convert it to safetensors)" if found else ""
    raise ModelFileError(f"{model_dir}: no model.safetensors or model.safetensors.index.json{hint}")


class Checkpoint:
    """Lazy access to the tensors of one or more safetensors files, by checkpoint name."""

    def __init__(self, files):
        self.location = {}   # checkpoint name -> (file, dtype string, shape)
        self.handles = {}
        for path in files:
            try:
                handle = safe_open(str(path), framework="numpy")
                names = list(handle.keys())
            except FileNotFoundError:
                raise ModelFileError(f"{path}: safetensors file not found") from None
            except Exception as e:  # safetensors raises its own SafetensorError for corrupt headers
                raise ModelFileError(f"{path}: not a readable safetensors file ({e}); "
                                     "re-download or re-save the checkpoint") from None
            self.handles[path] = handle
            for name in names:
                piece = handle.get_slice(name)
                self.location[name] = (path, piece.get_dtype(), tuple(piece.get_shape()))

    def names(self):
        return self.location.keys()

    def read(self, name: str, dtype) -> np.ndarray:
        path, stored, _ = self.location[name]
        if stored in ("F32", "F16", "F64"):
            try:
                array = self.handles[path].get_tensor(name)
            except Exception as e:
                raise ModelFileError(f"{path}: tensor {name!r} cannot be read ({e})") from None
        elif stored == "BF16":
            array = read_bfloat16(path, name)
        else:
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {stored}; "
                                 "minibert reads floating-point weights (F32, F16, BF16, F64)")
        return array.astype(dtype, copy=False)


def read_bfloat16(path: Path, name: str) -> np.ndarray:
    """NumPy has no bfloat16: read the raw 16-bit words and widen them to float32 (exact)."""
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
    entry = header[name]
    start, end = entry["data_offsets"]
    raw = np.memmap(path, dtype="<u2", mode="r", offset=8 + header_size + start,
                    shape=((end - start) // 2,))
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def canonical(name: str) -> str:
    for prefix in MODEL_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    for old, new in LEGACY_SUFFIXES.items():
        if name.endswith(old):
            name = name[: -len(old)] + new
    return name


def load_weights(model_dir: Path, config: Config, dtype) -> dict:
    """Read, check and arrange every tensor; raise ModelFileError naming any missing, extra or misshapen one."""
    checkpoint = Checkpoint(checkpoint_files(model_dir))
    by_name = {canonical(n): n for n in checkpoint.names()}
    shapes = expected_shapes(config)
    used = set()

    def fetch(ours: str, theirs, arrangement: str, shape_key: str) -> np.ndarray:
        names = (theirs,) if isinstance(theirs, str) else theirs
        parts = []
        for name in names:
            if name not in by_name:
                raise ModelFileError(f"{model_dir}: tensor {name!r} (minibert {ours}) is missing from the checkpoint")
            original = by_name[name]
            used.add(original)
            parts.append(checkpoint.read(original, dtype))
        if arrangement == "transpose":
            array = parts[0].T
        elif arrangement == "transpose_concat":
            array = np.concatenate([p.T for p in parts], axis=1)
        elif arrangement == "concat":
            array = np.concatenate(parts)
        else:
            array = parts[0]
        if array.shape != shapes[shape_key]:
            raise ModelFileError(f"{model_dir}: tensor {' + '.join(names)} has shape {checkpoint.location[by_name[names[0]]][2]}; "
                                 f"the config implies {shapes[shape_key]} (after arranging as {arrangement}) "
                                 "- does config.json belong to this checkpoint?")
        return np.ascontiguousarray(array)

    def nest(table, layer=None):
        block = {}
        for ours, theirs, arrangement in table:
            if layer is not None:
                theirs = (theirs.format(i=layer) if isinstance(theirs, str)
                          else tuple(t.format(i=layer) for t in theirs))
            *path, leaf = ours.split(".")
            node = block
            for key in path:
                node = node.setdefault(key, {})
            node[leaf] = fetch(ours, theirs, arrangement, ours)
        return block

    weights = {"embeddings": nest(EMBEDDING_TABLE)["embeddings"],
               "layers": [nest(LAYER_TABLE, layer=i) for i in range(config.num_hidden_layers)]}
    has_pooler = all(name in by_name for _, name, _ in POOLER_TABLE)
    weights["pooler"] = nest(POOLER_TABLE)["pooler"] if has_pooler else None

    unexpected = sorted(original for name, original in by_name.items()
                        if original not in used and not name.startswith(IGNORED_PREFIXES))
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        raise ModelFileError(f"{model_dir}: unexpected tensor(s) {shown}; the checkpoint does not match "
                             f"config.json ({config.num_hidden_layers} layers, model_type {config.model_type!r})")
    return weights


def parameter_counts(weights: dict) -> dict:
    """Parameters per block, for `minibert inspect`."""
    def count(tree):
        if tree is None:
            return 0
        if isinstance(tree, dict):
            return sum(count(v) for v in tree.values())
        if isinstance(tree, list):
            return sum(count(v) for v in tree)
        return int(tree.size)
    counts = {"embeddings": count(weights["embeddings"])}
    counts.update({f"layer.{i}": count(layer) for i, layer in enumerate(weights["layers"])})
    counts["pooler"] = count(weights["pooler"])
    return counts
