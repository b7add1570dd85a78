"""The optimizer and its schedule, as transformers' examples train: AdamW with decoupled weight decay (none on
biases and LayerNorm weights), the learning rate rising linearly from 0 over the warmup steps and falling
linearly to 0 at the last step, gradients clipped to a global norm. Plain NumPy, or one Numba loop per array
(kernels/cpu_backward.adamw)."""

import numpy as np

from ..tree import leaves


def trainable(weights, head, config):
    """(name, array) of every parameter that trains, each shared array once, in a fixed order. Not trained,
    as in transformers: DistilBERT's sinusoidal position table and its all-zero token-type row."""
    frozen = set()
    if config.sinusoidal_positions:
        frozen.add(id(weights["embeddings"]["position"]))
    if not config.token_type_embeddings:
        frozen.add(id(weights["embeddings"]["token_type"]))
    seen, out = set(frozen), []
    for name, array in [*leaves(weights), *leaves(head, "head")]:
        if id(array) not in seen:
            seen.add(id(array))
            out.append((name, array))
    return out


def decays(name):
    """transformers' examples: no weight decay on biases and LayerNorm weights. Their rule is by name ("bias"
    anywhere in it), so MPNet's relative position bias table (encoder.relative_attention_bias.weight) does
    not decay either."""
    return not (name.endswith(".b") or ".ln." in name or name.split(".")[-2] in ("ln", "attn_ln", "ffn_ln")
                or name.startswith("relative_attention_bias."))


def lr_at(step, total_steps, warmup_steps, peak):
    """Linear warmup from 0 to the peak over warmup_steps, then linear decay to 0 at total_steps; `step`
    counts optimizer steps from 0 (as transformers' get_linear_schedule_with_warmup)."""
    if step < warmup_steps:
        return peak * step / max(1, warmup_steps)
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def clip_by_global_norm(grads, max_norm):
    """Scale every gradient by max_norm / (norm + 1e-6) when the global norm is above max_norm (torch's
    clip_grad_norm_); returns the norm before clipping."""
    norm = float(np.sqrt(sum(float(np.linalg.norm(g.reshape(-1))) ** 2
                             for g in grads)))   # as torch: per tensor, then of the norms
    coefficient = max_norm / (norm + 1e-6)
    if max_norm > 0 and coefficient < 1:
        for g in grads:
            g *= g.dtype.type(coefficient)
    return norm


def adamw_update(params, grads, state, *, lr, betas, eps, weight_decay, decay, fused=True):
    """One AdamW step in place, in torch's order of operations: decoupled decay p *= 1 - lr * wd, moments
    m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, then p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    state: {"step": t, "m": [...], "v": [...]} (created on the first call). fused: the same arithmetic in
    one Numba loop per array (kernels/cpu_backward.adamw) instead of NumPy's pass per operation."""
    from ..kernels import cpu_backward
    if not state:
        state.update(step=0, m=[np.zeros_like(p) for p in params], v=[np.zeros_like(p) for p in params])
    state["step"] += 1
    t = state["step"]
    b1, b2 = betas
    step_size = lr / (1 - b1 ** t)
    root_correction = np.sqrt(1 - b2 ** t)
    for p, g, m, v, d in zip(params, grads, state["m"], state["v"], decay):
        dtype = p.dtype.type
        decay_factor = dtype(1 - lr * weight_decay) if d and weight_decay else dtype(1)
        if fused and all(a.flags.c_contiguous for a in (p, g, m, v)):
            cpu_backward.adamw(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), decay_factor,
                               dtype(1 - b1), dtype(b2), dtype(1 - b2), dtype(step_size), dtype(root_correction),
                               dtype(eps))
            continue
        p *= decay_factor
        m += (g - m) * dtype(1 - b1)                    # torch's lerp: m + (1 - b1) (g - m)
        v *= dtype(b2)
        v += g * g * dtype(1 - b2)
        p -= dtype(step_size) * m / (np.sqrt(v) / dtype(root_correction) + dtype(eps))
