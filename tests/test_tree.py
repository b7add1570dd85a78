"""minibert/tree.py: the one walker over weight trees, on a tree shaped like ALBERT's (one layer dict shared by
several layers) and on a real loaded model."""

from pathlib import Path

import numpy as np

import minibert
from minibert.tree import copy_tree, leaves, map_tree, size, zeros_like_tree

FAMILIES_DIR = Path(__file__).parent / "fixtures" / "families"


def shared_tree():
    layer = {"qkv": {"w": np.ones((2, 6)), "b": np.zeros(6)}}
    return {"embeddings": {"word": np.arange(6.0).reshape(3, 2)}, "embedding_projection": None,
            "layers": [layer, layer, {"qkv": {"w": np.ones((2, 6)), "b": np.ones(6)}}], "pooler": None}


def test_leaves_name_every_place_in_order():
    tree = shared_tree()
    assert [name for name, _ in leaves(tree)] == ["embeddings.word", "layers.0.qkv.w", "layers.0.qkv.b",
                                                 "layers.1.qkv.w", "layers.1.qkv.b", "layers.2.qkv.w",
                                                 "layers.2.qkv.b"]
    assert leaves(tree, "head").__next__()[0] == "head.embeddings.word"
    assert list(leaves(None)) == []
    assert size(tree) == 6 + 3 * (12 + 6)


def test_map_tree_keeps_sharing():
    tree = shared_tree()
    calls = []
    made = map_tree(tree, lambda array: calls.append(array) or array * 2)
    assert made["layers"][0] is made["layers"][1] and made["layers"][0] is not made["layers"][2]
    assert len(calls) == 5          # the shared layer's two arrays map once
    assert made["pooler"] is None and made["embedding_projection"] is None
    np.testing.assert_array_equal(made["embeddings"]["word"], tree["embeddings"]["word"] * 2)
    zeros = zeros_like_tree(tree)
    assert zeros["layers"][0] is zeros["layers"][1] and not zeros["layers"][0]["qkv"]["w"].any()
    copied = copy_tree(tree, np.float32)
    assert copied["layers"][0] is copied["layers"][1] and copied["layers"][2]["qkv"]["b"].dtype == np.float32
    copied["layers"][2]["qkv"]["b"][0] = 5.0      # a copy: the original is untouched
    assert tree["layers"][2]["qkv"]["b"][0] == 1.0


def test_albert_groups_share_in_every_walk():
    """A loaded ALBERT with shared groups: map_tree shares what load shares, leaves names each layer."""
    model = minibert.load(str(FAMILIES_DIR / "albert_groups"))
    weights = model.weights
    distinct = {id(layer) for layer in weights["layers"]}
    assert len(distinct) < len(weights["layers"])
    zeros = zeros_like_tree(weights)
    assert [id(layer) for layer in zeros["layers"]].count(id(zeros["layers"][0])) == \
        [id(layer) for layer in weights["layers"]].count(id(weights["layers"][0]))
    names = [name for name, _ in leaves(weights["layers"], "layers")]
    assert len(names) == len(weights["layers"]) * 12 and len(set(names)) == len(names)
