"""Checkpoint tensors -> minibert's weights dict, by the name tables of minibert/checkpoint/families.py.

The result is a nested dict of arrays in the compute dtype, linear weights stored (in, out) so the
model reads `x @ w + b`, and Q, K, V fused into one (H, 3H) projection. E is the embedding width
(hidden_size H except for ALBERT and ELECTRA):

    {"embeddings": {"word": [V, E], "position": [P, E], "token_type": [TV, E], "ln": {"g": [E], "b": [E]}},
     "embedding_projection": {"w": [E, H], "b": [H]} or None,
     "layers": [{"qkv": {"w": [H, 3H], "b": [3H]}, "attn_out": {"w": [H, H], "b": [H]}, "attn_ln": {...},
                 "ffn_in": {"w": [H, I], "b": [I]}, "ffn_out": {"w": [I, H], "b": [H]}, "ffn_ln": {...}}, ...],
     "pooler": {"w": [H, H], "b": [H]} or None,
     "relative_attention_bias": {"table": [buckets, NH]} or None}

Families differ only in names and in what is present: "layers" holds num_hidden_layers entries, but ALBERT's
point to the same dict objects (one per hidden group), DistilBERT's token_type is one row of zeros (it has
no segment embedding), only ALBERT and ELECTRA have an embedding projection, and only MPNet a relative
position bias table (one for all layers).
"""

from pathlib import Path

import numpy as np

from .config import Config
from ..errors import ModelFileError
from .families import FAMILIES, LEGACY_SUFFIXES, family_of
from .layout import checkpoint_files
from .safetensors import Checkpoint
from ..tree import size

# The checkpoint names are the families' (families.py): minibert name <- checkpoint name(s), by arrangement.
FAMILY_NAMES = {model_type: family.names for model_type, family in FAMILIES.items()}


def expected_shapes(c: Config) -> dict:
    E, H, I = c.embedding_size, c.hidden_size, c.intermediate_size
    return {
        "embeddings.word": (c.vocab_size, E), "embeddings.position": (c.max_position_embeddings, E),
        "embeddings.token_type": (c.type_vocab_size, E), "embeddings.ln.g": (E,), "embeddings.ln.b": (E,),
        "embedding_projection.w": (E, H), "embedding_projection.b": (H,),
        "qkv.w": (H, 3 * H), "qkv.b": (3 * H,), "attn_out.w": (H, H), "attn_out.b": (H,),
        "attn_ln.g": (H,), "attn_ln.b": (H,), "ffn_in.w": (H, I), "ffn_in.b": (I,),
        "ffn_out.w": (I, H), "ffn_out.b": (H,), "ffn_ln.g": (H,), "ffn_ln.b": (H,),
        "pooler.w": (H, H), "pooler.b": (H,),
        "relative_attention_bias.table": (c.relative_attention_num_buckets, c.num_attention_heads),
    }


def sinusoidal_positions(num_positions: int, width: int) -> np.ndarray:
    """DistilBERT's fixed table: sin on even columns, cos on odd, of pos / 10000^(2 * (j // 2) / width).

    Rounded through float32 because transformers builds it in float32, so float64 runs match too.
    """
    angle = np.arange(num_positions)[:, None] / np.power(10000.0, 2 * (np.arange(width) // 2) / width)   # [P, E]
    return np.where(np.arange(width) % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)          # [P, E]


def weight_set_of_layer(config: Config) -> list:
    """Which set of layer weights each layer uses: ALBERT's group int(i / (L / G)); its own set when G == L."""
    L, G = config.num_hidden_layers, config.num_hidden_groups
    return [int(i / (L / G)) for i in range(L)]


def canonical(name: str, model_prefixes: tuple) -> str:
    for prefix in model_prefixes:
        if name.startswith(prefix):
            name = name[len(prefix):]
    for old, new in LEGACY_SUFFIXES.items():
        if name.endswith(old):
            name = name[: -len(old)] + new
    return name


def load_weights(model_dir: Path, config: Config, dtype) -> dict:
    """Read, check and arrange every tensor; raise ModelFileError naming any missing, extra or misshapen one."""
    checkpoint = Checkpoint(checkpoint_files(model_dir))
    names = family_of(config).names
    by_name = {canonical(n, names.model_prefixes): n for n in checkpoint.names()}
    shapes = expected_shapes(config)
    used = set()

    def fetch(ours: str, theirs, arrangement: str, shape_key: str) -> np.ndarray:
        names = (theirs,) if isinstance(theirs, str) else theirs
        parts = []
        for name in names:
            if name not in by_name:
                raise ModelFileError(f"{model_dir}: tensor {name!r} (minibert {ours}) is missing from the checkpoint "
                                     f"(model_type {config.model_type!r})")
            original = by_name[name]
            used.add(original)
            # The word table is most of a small model's bytes and a text reads a few of its rows: map it.
            parts.append(checkpoint.read(original, dtype, mapped=ours == "embeddings.word"))
        try:
            if arrangement == "transpose":
                array = parts[0].T
            elif arrangement == "transpose_concat":
                array = np.concatenate([p.T for p in parts], axis=1)
            elif arrangement == "concat":
                array = np.concatenate(parts)
            else:
                array = parts[0]
        except ValueError:       # parts that cannot be joined (Q, K, V of different shapes)
            array = None
        if array is None or array.shape != shapes[shape_key]:
            found = " + ".join(str(checkpoint.location[by_name[name]][2]) for name in names)
            raise ModelFileError(f"{model_dir}: tensor {' + '.join(names)} has shape {found}; "
                                 f"the config implies {shapes[shape_key]} (after arranging as {arrangement}) "
                                 "- does config.json belong to this checkpoint?")
        return np.ascontiguousarray(array)

    def nest(table, index=None):
        block = {}
        for ours, theirs, arrangement in table:
            if index is not None:
                theirs = (theirs.format(i=index) if isinstance(theirs, str)
                          else tuple(t.format(i=index) for t in theirs))
            *path, leaf = ours.split(".")
            node = block
            for key in path:
                node = node.setdefault(key, {})
            node[leaf] = fetch(ours, theirs, arrangement, ours)
        return block

    embedding_table = names.embeddings
    position_name = dict((ours, theirs) for ours, theirs, _ in embedding_table)["embeddings.position"]
    generate_positions = config.sinusoidal_positions and position_name not in by_name
    if generate_positions:   # transformers builds the fixed table itself when a checkpoint leaves it out
        embedding_table = [row for row in embedding_table if row[0] != "embeddings.position"]
    embeddings = nest(embedding_table)["embeddings"]
    if generate_positions:
        embeddings["position"] = sinusoidal_positions(config.max_position_embeddings,
                                                      config.embedding_size).astype(dtype)
    if not config.token_type_embeddings:   # no segment embedding: every token adds row 0, all zeros
        embeddings["token_type"] = np.zeros((config.type_vocab_size, config.embedding_size), dtype=dtype)
    weights = {"embeddings": embeddings}
    weights["embedding_projection"] = (nest(names.projection)["embedding_projection"]
                                       if config.embedding_projection else None)
    # One dict per set of layer weights; layers sharing a set (ALBERT) hold the same dict object.
    weight_sets = [nest(names.layer, index=g) for g in range(config.num_hidden_groups)]
    weights["layers"] = [weight_sets[g] for g in weight_set_of_layer(config)]
    has_pooler = bool(names.pooler) and all(name in by_name for _, name, _ in names.pooler)
    weights["pooler"] = nest(names.pooler)["pooler"] if has_pooler else None
    weights["relative_attention_bias"] = (nest(names.relative_bias)["relative_attention_bias"]
                                          if config.relative_attention_num_buckets else None)

    unexpected = sorted(original for name, original in by_name.items()
                        if original not in used and not name.startswith(names.ignored_prefixes))
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        raise ModelFileError(f"{model_dir}: unexpected tensor(s) {shown}; the checkpoint does not match "
                             f"config.json ({config.num_hidden_layers} layers, {config.num_hidden_groups} sets of "
                             f"layer weights, model_type {config.model_type!r})")
    checkpoint.check_unchanged()
    return weights


def parameter_counts(weights: dict) -> dict:
    """Parameters per block, for `minibert inspect`; a set of layer weights shared by several layers counts once."""
    counts = {"embeddings": size(weights["embeddings"])}
    if weights.get("embedding_projection") is not None:
        counts["embedding_projection"] = size(weights["embedding_projection"])
    users = {}   # id of a layer-weights dict -> the layers using it, in order
    for i, layer in enumerate(weights["layers"], start=1):       # layer i: the one producing hidden_states[i]
        users.setdefault(id(layer), (layer, []))[1].append(i)
    for layer, indices in users.values():
        name = f"layer{indices[0]}" if len(indices) == 1 else f"layer{indices[0]}-{indices[-1]} (shared)"
        if len(indices) > 1 and indices != list(range(indices[0], indices[-1] + 1)):
            name = f"layer{','.join(map(str, indices))} (shared)"
        counts[name] = size(layer)
    counts["pooler"] = size(weights["pooler"])
    if weights.get("relative_attention_bias") is not None:
        counts["relative_attention_bias"] = size(weights["relative_attention_bias"])
    return counts
