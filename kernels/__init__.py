"""Compute kernels, imported as `minibert.kernels`.

`reference` is the plain-NumPy specification of every op, each forward directly above its backward;
`reference_layers` strings them into BERT's unfused embeddings and encoder layer (forward and backward), the
one layer inference is tested against and training differentiates (train/backprop.py computes it fused, tested
against it). `cpu` and `cuda` hold the ops as Numba kernels (outputs first), each tested against the
reference, `cpu_math` the vectorisable float32 exp and erf the CPU kernels inline, `cuda_attention` the CUDA
attention kernel; `cpu_backward` training's kernels (AdamW, GELU forward and backward). The ops know nothing
about models.
"""
