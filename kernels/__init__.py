"""Compute kernels, imported as `minibert.kernels`.

`reference` is the plain-NumPy specification of every op; `cpu` holds the same ops as Numba kernels
(outputs first), each tested against the reference. Kernels know nothing about models.
"""
