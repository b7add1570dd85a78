"""Walks over weight trees: nested dicts and lists whose leaves are arrays, None where a block is absent
(weights.py's layout). One layer's dict can sit at several places of "layers" (ALBERT's shared groups):
`map_tree` keeps that sharing, `leaves` names every place, and the callers that must see a shared array
once (trainable parameters, parameter counts) deduplicate by identity themselves.
"""

import numpy as np


def leaves(tree, name=""):
    """(dotted name, array) of every array in tree order: dict keys, then list indices ("layers.0.qkv.w");
    a shared dict yields its arrays under each name it has. name: put before every path ("head")."""
    if tree is None:
        return
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, f"{name}.{key}" if name else str(key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from leaves(value, f"{name}.{i}" if name else str(i))
    else:
        yield name, tree


def size(tree) -> int:
    """Elements in every array of the tree, counting a shared array at each place it appears."""
    return sum(int(array.size) for _, array in leaves(tree))


def map_tree(tree, leaf, memo=None):
    """The tree with leaf(array) for each array, sharing where `tree` shares: two layers holding one weights
    dict (ALBERT) get one dict in the result, and a shared array maps once."""
    memo = {} if memo is None else memo
    if tree is None:
        return None
    if id(tree) in memo:
        return memo[id(tree)]
    if isinstance(tree, dict):
        made = {key: map_tree(value, leaf, memo) for key, value in tree.items()}
    elif isinstance(tree, list):
        made = [map_tree(value, leaf, memo) for value in tree]
    else:
        made = leaf(tree)
    memo[id(tree)] = made
    return made


def zeros_like_tree(tree):
    """Zero arrays shaped like `tree`'s, sharing where it shares (the gradients of shared layers add up)."""
    return map_tree(tree, lambda array: np.zeros(array.shape, dtype=array.dtype))


def copy_tree(tree, dtype):
    """A writable copy in `dtype` of a weights tree, keeping its sharing (ALBERT)."""
    return map_tree(tree, lambda array: np.array(array, dtype=dtype, copy=True))
