"""Layer-by-layer comparison of minibert with Hugging Face transformers (needs the `reference` extra)."""

import os

import numpy as np

from .errors import MiniBertError


class ReferenceMissing(MiniBertError):
    """transformers/torch are not installed."""


def reference_model(model_dir, dtype):
    """The transformers model for the same directory, eager attention so probabilities are returned."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ReferenceMissing(f"parity needs transformers and torch ({e}); install them with "
                               "`pip install -e '.[reference]'` (torch pinned to 2.13.0, the CPU build)") from None
    model = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    model.eval()
    return model.double() if dtype == np.float64 else model.float(), torch


def run_reference(model_dir, batch, dtype):
    model, torch = reference_model(model_dir, dtype)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask),
                    token_type_ids=torch.from_numpy(batch.token_type_ids),
                    output_hidden_states=True, output_attentions=True)
    pooled = getattr(out, "pooler_output", None)
    return {"hidden_states": [h.numpy() for h in out.hidden_states],
            "attentions": [a.numpy() for a in out.attentions],
            "pooler_output": None if pooled is None else pooled.numpy()}


def difference(ours, theirs, mask=None):
    """max abs, mean abs, and minimum cosine over token vectors (real tokens only when a mask is given)."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    diff = np.abs(ours - theirs)
    a, b = ours.reshape(-1, ours.shape[-1]), theirs.reshape(-1, theirs.shape[-1])
    if mask is not None and ours.ndim == 3:
        keep = mask.reshape(-1).astype(bool)
        a, b = a[keep], b[keep]
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-300)
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "min_cos": float(cos.min())}


def compare(model, texts):
    """Rows of (name, stats) for every hidden state, attention map and the pooler, minibert vs transformers."""
    batch = model.tokenize(texts)
    ours = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids, output_attentions=True)
    theirs = run_reference(model.source, batch, model.dtype)
    rows = [("embeddings" if i == 0 else f"layer.{i - 1}", difference(a, b, batch.attention_mask))
            for i, (a, b) in enumerate(zip(ours.hidden_states, theirs["hidden_states"]))]
    rows += [(f"attention.{i}", difference(a, b)) for i, (a, b) in enumerate(zip(ours.attentions, theirs["attentions"]))]
    if ours.pooler_output is not None and theirs["pooler_output"] is not None:
        rows.append(("pooler", difference(ours.pooler_output, theirs["pooler_output"])))
    return rows


# Where each captured internal lives in transformers' BERT-style modules (BERT, RoBERTa, ELECTRA share
# these names), for forward hooks: (our internal, module path under encoder.layer.{i}, which output).
HOOKED_INTERNALS = [
    ("query", "attention.self.query", "out"),
    ("key", "attention.self.key", "out"),
    ("value", "attention.self.value", "out"),
    ("attention.context", "attention.self", "first"),
    ("attention.output", "attention.output.dense", "out"),
    ("attention.layer_norm", "attention.output", "out"),
    ("ffn.intermediate", "intermediate", "out"),
    ("ffn.output", "output.dense", "out"),
]


def compare_ops(model, texts):
    """Every captured internal against the same tensor inside transformers, in the order they are computed.

    Returns rows (operation name, stats); the embedding LayerNorm comes first, then per layer Q, K, V,
    attention probabilities, context, output projection, LayerNorm, GELU intermediate, output projection,
    and the layer output.
    """
    batch = model.tokenize(texts)
    ours = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids, output_attentions=True,
                         capture=["layer.*"])
    reference, torch = reference_model(model.source, model.dtype)
    layers = getattr(getattr(reference, "encoder", None), "layer", None)
    if layers is None:
        raise MiniBertError(f"--ops compares internals of BERT-style transformers modules; "
                            f"{type(reference).__name__} names them differently (compare layers without --ops)")
    seen = {}

    def hook(name, which):
        def record(module, inputs, output):
            value = output[0] if which == "first" and isinstance(output, tuple) else output
            seen[name] = value.detach().numpy()
        return record

    handles = []
    for i, layer in enumerate(layers):
        for internal, path, which in HOOKED_INTERNALS:
            module = layer.get_submodule(path)
            handles.append(module.register_forward_hook(hook(f"layer.{i}.{internal}", which)))
    try:
        with torch.no_grad():
            out = reference(input_ids=torch.from_numpy(batch.input_ids),
                            attention_mask=torch.from_numpy(batch.attention_mask),
                            token_type_ids=torch.from_numpy(batch.token_type_ids),
                            output_hidden_states=True, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    mask = batch.attention_mask
    rows = [("embeddings.layer_norm", difference(ours.hidden_states[0], out.hidden_states[0].numpy(), mask))]
    for i in range(model.config.num_hidden_layers):
        for internal, _, _ in HOOKED_INTERNALS[:3]:
            rows.append((f"layer.{i}.{internal}", difference(ours.captured[f"layer.{i}.{internal}"], seen[f"layer.{i}.{internal}"], mask)))
        rows.append((f"layer.{i}.attention.probs", difference(ours.attentions[i], out.attentions[i].numpy())))
        for internal, _, _ in HOOKED_INTERNALS[3:]:
            rows.append((f"layer.{i}.{internal}", difference(ours.captured[f"layer.{i}.{internal}"], seen[f"layer.{i}.{internal}"], mask)))
        rows.append((f"layer.{i}.output", difference(ours.hidden_states[i + 1], out.hidden_states[i + 1].numpy(), mask)))
    return rows
