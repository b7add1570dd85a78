"""minibert's weights and head trees <-> tensors named as transformers' task models name them.

The names come from each family's record (minibert/checkpoint/families.py). The encoder's tables are read in reverse:
a table row (ours, theirs, arrangement) says how checkpoint tensors become one minibert array, and
`tensors_from_tree` undoes that arrangement (transpose back, split the fused Q/K/V). The heads' names
(Family.head_names) are transformers' ForSequenceClassification / ForTokenClassification modules.
"""

import numpy as np

from ..checkpoint.families import family_of
from ..checkpoint.weights import weight_set_of_layer

TASK_SUFFIX = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}


def architecture(config, task):
    return family_of(config).architecture + TASK_SUFFIX[task]


def split_arranged(array, theirs, arrangement):
    """One minibert array -> {checkpoint name: tensor}, undoing weights.py's arrangement."""
    names = (theirs,) if isinstance(theirs, str) else theirs
    if arrangement == "transpose":
        parts = [array.T]
    elif arrangement == "transpose_concat":
        parts = [p.T for p in np.split(array, len(names), axis=1)]
    elif arrangement == "concat":
        parts = np.split(array, len(names))
    else:
        parts = [array]
    return {name: np.ascontiguousarray(part) for name, part in zip(names, parts)}


def join_arranged(tensors, theirs, arrangement):
    """{checkpoint name: tensor} -> the minibert array, as weights.py arranges it."""
    names = (theirs,) if isinstance(theirs, str) else theirs
    parts = [tensors[name] for name in names]
    if arrangement == "transpose":
        return np.ascontiguousarray(parts[0].T)
    if arrangement == "transpose_concat":
        return np.concatenate([p.T for p in parts], axis=1)
    if arrangement == "concat":
        return np.concatenate(parts)
    return parts[0]


def leaf(tree, dotted):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def table_rows(config, include_position=True):
    """(our dotted name within its block, checkpoint name(s), arrangement, block) of the encoder's tensors."""
    names = family_of(config).names
    rows = [(ours, theirs, arr, "embeddings") for ours, theirs, arr in names.embeddings
            if include_position or ours != "embeddings.position"]
    if config.embedding_projection:
        rows += [(ours, theirs, arr, "projection") for ours, theirs, arr in names.projection]
    rows += [(ours, theirs, arr, "pooler") for ours, theirs, arr in names.pooler]
    if config.relative_attention_num_buckets:
        rows += [(ours, theirs, arr, "relative_bias") for ours, theirs, arr in names.relative_bias]
    return rows


def has_pooler(config, task):
    """Whether transformers' model for the task holds the pooler: the base model ("encoder") and the
    sequence classifiers of BERT and ALBERT do; token classifiers and the other families' heads do not."""
    return task == "encoder" or (task == "sequence" and family_of(config).sequence_head.pooler)


def tensors_from_tree(weights, config, *, task, head=None, prefix=None):
    """Every encoder tensor (and the head's) under transformers' names for the task model ("sequence",
    "token", or "encoder" for the bare base model), float arrays as given. prefix: what the task model puts
    before the encoder's names (default: the family's, "bert.")."""
    names = family_of(config).names
    prefix = names.model_prefixes[0] if prefix is None else prefix
    out = {}
    for ours, theirs, arrangement, block in table_rows(config):
        if block == "pooler" and (weights.get("pooler") is None or not has_pooler(config, task)):
            continue
        out.update(split_arranged(leaf(weights, ours), theirs, arrangement))
    first_layer_of_set = {g: weight_set_of_layer(config).index(g) for g in range(config.num_hidden_groups)}
    for g, layer_index in first_layer_of_set.items():
        for ours, theirs, arrangement in names.layer:
            theirs = theirs.format(i=g) if isinstance(theirs, str) else tuple(t.format(i=g) for t in theirs)
            out.update(split_arranged(leaf(weights["layers"][layer_index], ours), theirs, arrangement))
    out = {prefix + name: tensor for name, tensor in out.items()}
    for part, module in family_of(config).head_names[task].items() if head else ():
        if part not in head:          # a damaged checkpoint's partial head: the caller names what is missing
            continue
        out[module + ".weight"] = np.ascontiguousarray(head[part]["w"].T)
        out[module + ".bias"] = np.ascontiguousarray(head[part]["b"])
    return out


def tree_from_tensors(tensors, config, *, task, dtype, template):
    """The inverse of tensors_from_tree: (weights tree, head tree) from transformers-named tensors.

    template: a weights tree of the same model (its structure, sharing and any tensors the checkpoint does
    not hold: DistilBERT's zero token-type row, a generated sinusoidal table) whose arrays are replaced.
    A name missing from `tensors` keeps the template's array.
    """
    names = family_of(config).names
    prefix = names.model_prefixes[0]
    plain = {name[len(prefix):] if name.startswith(prefix) else name: t for name, t in tensors.items()}
    weights = {"embeddings": dict(template["embeddings"]), "embedding_projection": template.get("embedding_projection"),
               "pooler": template.get("pooler"), "relative_attention_bias": template.get("relative_attention_bias")}
    weights["embeddings"]["ln"] = dict(template["embeddings"]["ln"])

    def arranged(theirs, arrangement):
        wanted = (theirs,) if isinstance(theirs, str) else theirs
        if not all(name in plain for name in wanted):
            return None
        return join_arranged(plain, theirs, arrangement).astype(dtype)

    for ours, theirs, arrangement, block in table_rows(config):
        array = arranged(theirs, arrangement)
        if array is None:
            continue
        top, *path = ours.split(".")
        if weights.get(top) is None:
            weights[top] = {}
        node = weights[top] = dict(weights[top])
        for key in path[:-1]:
            node[key] = dict(node.get(key, {}))
            node = node[key]
        node[path[-1]] = array
    sets = []
    first_layer_of_set = {g: weight_set_of_layer(config).index(g) for g in range(config.num_hidden_groups)}
    for g, layer_index in first_layer_of_set.items():
        layer = {block: dict(params) for block, params in template["layers"][layer_index].items()}
        for ours, theirs, arrangement in names.layer:
            theirs = theirs.format(i=g) if isinstance(theirs, str) else tuple(t.format(i=g) for t in theirs)
            array = arranged(theirs, arrangement)
            if array is not None:
                block, key = ours.split(".")
                layer[block][key] = array
        sets.append(layer)
    weights["layers"] = [sets[g] for g in weight_set_of_layer(config)]
    head = {}
    for part, module in family_of(config).head_names[task].items():
        if module + ".weight" in tensors and module + ".bias" in tensors:     # else reported missing by the caller
            head[part] = {"w": np.ascontiguousarray(tensors[module + ".weight"].T).astype(dtype),
                          "b": tensors[module + ".bias"].astype(dtype)}
    return weights, head
