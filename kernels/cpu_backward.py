"""Numba kernels for training where NumPy's temporaries cost the time (the matmuls stay BLAS).

Each kernel computes what its NumPy specification computes (the optimizer's in minibert/train/optimizer.py,
the element-wise ones in kernels/reference.py, named in each docstring), in the same order of operations and
the array's dtype, one pass over memory instead of one per operation. In float64 the results are the
specification's bit for bit (erf and exp are libm's, as there). In float32 erf and exp are cpu_math's
vectorisable fast_erf and fast_exp (within 1e-7 and one ulp of libm's; the "cpu" backend's forward uses the
same), so a float32 GELU differs from the specification's by about an ulp; tests/test_backward.py measures both.
An output may be an input array (each element is read before it is written), but then LLVM does not
vectorise the loop: give fresh outputs.
"""

import math

from .cpu_math import fast_erf, fast_exp, jit


@jit()
def adamw(p, g, m, v, decay_factor, one_minus_b1, b2, one_minus_b2, step_size, root_correction, eps):
    """In place over flat arrays: p *= decay_factor; m += (g - m) (1 - b1); v = v b2 + g g (1 - b2);
    p -= step_size m / (sqrt(v) / root_correction + eps). Scalars arrive in p's dtype. The NumPy error
    model (jit's) lets the division vectorise: 7x faster than Numba's default, which checks every divisor."""
    for i in range(p.size):
        gi = g[i]
        mi = m[i] + (gi - m[i]) * one_minus_b1
        vi = v[i] * b2 + gi * gi * one_minus_b2
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay_factor - step_size * mi / (math.sqrt(vi) / root_correction + eps)


@jit()
def gelu_forward(x, y, s, half, one, sqrt2):
    """reference.gelu_forward_keeping_cdf over flat arrays: s = 1 + erf(x / sqrt2), y = half x s."""
    for i in range(x.size):
        xi = x[i]
        si = one + fast_erf(xi / sqrt2)
        s[i] = si
        y[i] = half * xi * si


@jit()
def gelu_backward(dy, x, s, dx, half, minus_half, sqrt_2pi, exponent_floor, zero):
    """reference.gelu_backward_from_cdf over flat arrays: dx = dy (half s + x exp(-x x / 2) / sqrt(2 pi)),
    exp taken as zero below exponent_floor (-inf: never)."""
    for i in range(x.size):
        xi = x[i]
        exponent = minus_half * xi * xi
        pdf = fast_exp(exponent) / sqrt_2pi if exponent > exponent_floor else zero
        dx[i] = dy[i] * (half * s[i] + xi * pdf)
