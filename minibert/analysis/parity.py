"""Layer-by-layer comparison of minibert with Hugging Face transformers (needs the `reference` extra)."""

import os

import numpy as np

from ..errors import MiniBertError
from ..checkpoint.families import family_of
from ..model import capture_name, relative_position_bias


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


def reference_inputs(batch, config, torch):
    """The batch as transformers' keyword arguments; DistilBERT takes no token types."""
    inputs = {"input_ids": torch.from_numpy(batch.input_ids), "attention_mask": torch.from_numpy(batch.attention_mask)}
    if config.token_type_embeddings:
        inputs["token_type_ids"] = torch.from_numpy(batch.token_type_ids)
    return inputs


def run_reference(model, batch):
    reference, torch = reference_model(model.source, model.dtype)
    with torch.no_grad():
        out = reference(**reference_inputs(batch, model.config, torch), output_hidden_states=True,
                        output_attentions=True)
    pooled = getattr(out, "pooler_output", None)
    return {"hidden_states": [h.numpy() for h in out.hidden_states],
            "attentions": [a.numpy() for a in out.attentions],
            "pooler_output": None if pooled is None else pooled.numpy()}


def difference(ours, theirs, mask=None):
    """max abs, mean abs, and minimum cosine over token vectors (real tokens only when a mask is given); and
    "scaled", max abs over max(1, the reference's largest magnitude), what a tolerance is checked against.

    Why scaled: float rounding grows with the values' size. all-MiniLM-L6-v2's first FFN output reaches 190,
    where one float32 ulp is 1.5e-5; its difference from transformers there was 8.4e-5 on one OpenBLAS kernel
    and 1.2e-4 on another (8 ulp, two summation orders of 1,536 products), so an absolute 1e-4 passed or
    failed by the CPU. Tensors within [-1, 1] keep the absolute criterion."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    diff = np.abs(ours - theirs)
    a, b = ours.reshape(-1, ours.shape[-1]), theirs.reshape(-1, theirs.shape[-1])
    if mask is not None and ours.ndim == 3:
        keep = mask.reshape(-1).astype(bool)
        a, b = a[keep], b[keep]
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-300)
    largest = float(np.abs(theirs).max()) if theirs.size else 0.0
    worst = float(diff.max()) if diff.size else 0.0
    return {"max_abs": worst, "mean_abs": float(diff.mean()) if diff.size else 0.0,
            "min_cos": float(cos.min()) if cos.size else 1.0, "reference_max": largest,
            "scaled": worst / max(1.0, largest)}


def compare(model, texts):
    """Rows of (name, stats) for every hidden state, attention map and the pooler, minibert vs transformers.

    Names count encoder layers from 1 as hidden_states does: "layer{i}" is hidden_states[i] (the output of
    layer i), "layer{i}.attention.probs" its attention probabilities, as `capture=` names them."""
    batch = model.tokenize(texts)
    ours = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids, output_attentions=True)
    theirs = run_reference(model, batch)
    rows = [("embeddings" if i == 0 else f"layer{i}", difference(a, b, batch.attention_mask))
            for i, (a, b) in enumerate(zip(ours.hidden_states, theirs["hidden_states"]))]
    rows += [(capture_name(i, "attention.probs"), difference(a, b))
             for i, (a, b) in enumerate(zip(ours.attentions, theirs["attentions"]), start=1)]
    if ours.pooler_output is not None and theirs["pooler_output"] is not None:
        rows.append(("pooler", difference(ours.pooler_output, theirs["pooler_output"])))
    return rows


ORDER = ("query", "key", "value", "attention.probs", "attention.context", "attention.output",
         "attention.layer_norm", "ffn.intermediate", "ffn.output")


def hooked_layers(reference, config):
    """(distinct layer modules in call order, internal -> (path, which): the family's parity_modules)."""
    family = family_of(config)
    found = [reference]
    for part in family.reference_layers.split("."):       # "*": every module of the lists found so far
        found = [m for lst in found for m in lst] if part == "*" else [getattr(m, part, None) for m in found]
        if any(m is None for m in found):
            raise MiniBertError(f"--ops hooks {family.model_type}'s layers at {family.reference_layers}; "
                                f"{type(reference).__name__} is laid out otherwise (compare layers without --ops)")
    return [layer for layers in found for layer in layers], family.parity_modules


def compare_ops(model, texts):
    """Every captured internal against the same tensor inside transformers, in the order they are computed.

    Returns rows (operation name, stats); the embedding output comes first (then MPNet's position bias), then
    per layer Q, K, V, attention probabilities, context, output projection, LayerNorm, activation output,
    output projection, and the layer output, named as `capture=` names them ("layer1.query", ...,
    "layer1.output").
    """
    batch = model.tokenize(texts)
    ours = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids, output_attentions=True,
                         capture=["layer*"])
    reference, torch = reference_model(model.source, model.dtype)
    layers, where = hooked_layers(reference, model.config)
    seen = {internal: [] for internal in where}         # internal -> one array per call, i.e. per layer

    def hook(internal, which):
        def record(module, inputs, output):
            value = inputs[0] if which == "in" else output[0] if which == "first" else output
            seen[internal].append(value.detach().numpy())
        return record

    handles = [layer.get_submodule(path).register_forward_hook(hook(internal, which))
               for layer in layers for internal, (path, which) in where.items()]
    try:
        with torch.no_grad():
            out = reference(**reference_inputs(batch, model.config, torch), output_hidden_states=True,
                            output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    mask = batch.attention_mask
    rows = [("embeddings", difference(ours.hidden_states[0], out.hidden_states[0].numpy(), mask))]
    if model.weights.get("relative_attention_bias") is not None:    # MPNet: one bias [1, NH, T, T] for every layer
        bias = relative_position_bias(batch.input_ids.shape[1], **model.weights["relative_attention_bias"],
                                      ops=model.ops, config=model.config)
        with torch.no_grad():
            theirs = reference.encoder.compute_position_bias(out.hidden_states[0]).numpy()   # [B, NH, T, T]
        rows.append(("position_bias", difference(model.ops.to_host(bias)[0], theirs[0])))
    for i in range(1, model.config.num_hidden_layers + 1):      # layer i: transformers' calls i - 1, attentions[i - 1]
        for internal in ORDER:
            theirs = out.attentions[i - 1].numpy() if internal == "attention.probs" else seen[internal][i - 1]
            rows.append((capture_name(i, internal), difference(ours.captured[capture_name(i, internal)], theirs, mask)))
        rows.append((capture_name(i, "output"), difference(ours.hidden_states[i], out.hidden_states[i].numpy(), mask)))
    return rows
