"""Numba kernels for training where NumPy's temporaries cost the time (the matmuls stay BLAS).

Each kernel computes exactly what its NumPy specification in minibert/train/optimizer.py computes, in the same
order of operations and the array's dtype, one pass over memory instead of one per operation; the tests
compare them bit for bit.
"""

import math

import numba


@numba.njit(cache=True, nogil=True)
def adamw(p, g, m, v, decay_factor, one_minus_b1, b2, one_minus_b2, step_size, root_correction, eps):
    """In place over flat arrays: p *= decay_factor; m += (g - m) (1 - b1); v = v b2 + g g (1 - b2);
    p -= step_size m / (sqrt(v) / root_correction + eps). Scalars arrive in p's dtype."""
    for i in range(p.size):
        p[i] *= decay_factor
        m[i] += (g[i] - m[i]) * one_minus_b1
        v[i] = v[i] * b2 + g[i] * g[i] * one_minus_b2
        p[i] -= step_size * m[i] / (math.sqrt(v[i]) / root_correction + eps)
