"""Tiny random BERT checkpoints written with NumPy only, laid out exactly as Hugging Face saves them."""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz.,!?") + [
    "the", "cat", "sat", "on", "mat", "dog", "ran", "##s", "##ed", "##ing", "hello", "world", "a", "##a"]


def tiny_config(**overrides):
    config = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(VOCAB), "hidden_size": 16,
              "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 24, "hidden_act": "gelu",
              "max_position_embeddings": 32, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
              "position_embedding_type": "absolute", "hidden_dropout_prob": 0.1}
    config.update(overrides)
    return config


def tiny_tensors(config, seed=0, pooler=True, prefix=""):
    """Every tensor of a BertModel with its Hugging Face name; values large enough that each one matters."""
    rng = np.random.default_rng(seed)
    H, I, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]

    def r(*shape, scale=0.5):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"embeddings.word_embeddings.weight": r(V, H),
         "embeddings.position_embeddings.weight": r(config["max_position_embeddings"], H),
         "embeddings.token_type_embeddings.weight": r(config["type_vocab_size"], H),
         "embeddings.LayerNorm.weight": 1 + r(H, scale=0.1), "embeddings.LayerNorm.bias": r(H, scale=0.1)}
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            t[p + f"attention.self.{name}.weight"], t[p + f"attention.self.{name}.bias"] = (r(H, H, scale=0.3),
                                                                                           r(H, scale=0.1))
        t[p + "attention.output.dense.weight"], t[p + "attention.output.dense.bias"] = (r(H, H, scale=0.3),
                                                                                        r(H, scale=0.1))
        t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"] = (1 + r(H, scale=0.1),
                                                                                                r(H, scale=0.1))
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = r(I, H, scale=0.3), r(I, scale=0.1)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = r(H, I, scale=0.3), r(H, scale=0.1)
        t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"] = 1 + r(H, scale=0.1), r(H, scale=0.1)
    if pooler:
        t["pooler.dense.weight"], t["pooler.dense.bias"] = r(H, H, scale=0.3), r(H, scale=0.1)
    return {prefix + name: value for name, value in t.items()}


def write_tiny(directory, config=None, tensors=None, seed=0, vocab=True, tokenizer_config=None):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_config() if config is None else config
    tensors = tiny_tensors(config, seed) if tensors is None else tensors
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if vocab:
        (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config or {"do_lower_case": True}))
    return directory
