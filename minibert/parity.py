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
