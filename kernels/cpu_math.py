"""Scalar maths and compile settings shared by the Numba CPU kernels (kernels/cpu.py).

`jit` is njit with an on-disk cache and the NumPy error model, FAST the fast-math flags that keep NaN and
Inf; `fast_exp` and `fast_erf` are exp and erf that a kernel's loop can vectorise: for float32 the
polynomial approximations below (no libm call, so loops over them compile to SIMD), for float64 libm's.
`fmax` is a maximum whose reductions vectorise. Each approximation is tested against libm in
tests/test_kernels.py.

Numba's cache checks only the date of the file a kernel is defined in: the kernels of cpu.py inline these
functions, so after editing this file clear kernels/__pycache__ (or touch cpu.py) before timing or testing
the kernels, or they may run the cached code of the old version.
"""

import math
import warnings

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

# fast-math without 'nnan'/'ninf': reductions vectorise and multiply-adds fuse, but NaN and Inf still
# propagate as IEEE says.
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


def jit(**options):
    """njit (nogil; division by zero gives inf/NaN as in NumPy, so loops with a division vectorise) with an
    on-disk cache; when no cache directory is writable, compile in memory and say so."""
    def decorate(function):
        try:
            return numba.njit(cache=True, nogil=True, error_model="numpy", **options)(function)
        except RuntimeError as e:  # numba: "cannot cache function ...: no locator available"
            warnings.warn(f"minibert: Numba cache unavailable ({e}); kernels will be recompiled in every "
                          "process. Set NUMBA_CACHE_DIR to a writable directory to fix this.", stacklevel=2)
            return numba.njit(cache=False, nogil=True, error_model="numpy", **options)(function)
    return decorate



@intrinsic
def _pow2_f32(typingctx, n):
    """2.0 ** n for a float32 n holding an integer in [-126, 127]: the exponent bits written directly."""
    if n != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        biased = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(biased, ir.Constant(i32, 23)), ir.FloatType())
    return types.float32(types.float32), codegen


@intrinsic
def fmax(typingctx, a, b):
    """The larger of two floats of one type, as LLVM's llvm.maxnum (IEEE maxNum: a NaN operand is ignored).
    A loop that reduces with it vectorises; one that reduces with Numba's max(), whose NaN handling is
    branches, stays scalar whatever the fast-math flags (the softmax's max pass: 0.89 ns a score with max(),
    0.07 ns with fmax, one thread of a Sapphire Rapids)."""
    if a != b or a not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        return builder.call(builder.module.declare_intrinsic("llvm.maxnum", [t], ir.FunctionType(t, [t, t])), args)
    return a(a, b), codegen


F32 = np.float32
LOG2E, LN2_HI, LN2_LO = F32(1.4426950408889634), F32(0.693359375), F32(-2.12194440e-4)
EXP_LOW, EXP_HIGH = F32(-87.33), F32(88.0)           # below: 0 (exp is subnormal there); above: e**88
INV_FACTORIAL = tuple(F32(1.0 / math.factorial(k)) for k in range(8))


@jit(inline="always")
def exp_f32(x):
    """exp(x) in float32 for x in [-87.33, 88]; 0 below, e**88 above, NaN stays NaN.

    Cody and Waite's range reduction (Software Manual for the Elementary Functions, 1980):
    x = n ln2 + r with |r| <= ln2/2 and ln2 split in two so n * LN2_HI is exact, then exp(r) by its
    Taylor series to degree 7 (remainder below 6e-9 relative) and 2**n from the exponent bits.
    Within one ulp; in kernels compiled with reassociation LLVM may merge the two parts of ln2, which
    leaves 3 ulp for |x| near 88 (one ulp still for |x| < 10, where softmax and the activations live).
    """
    c = min(max(x, EXP_LOW), EXP_HIGH)
    n = np.floor(c * LOG2E + F32(0.5))
    r = (c - n * LN2_HI) - n * LN2_LO
    c1, c2, c3, c4, c5, c6, c7 = (INV_FACTORIAL[1], INV_FACTORIAL[2], INV_FACTORIAL[3], INV_FACTORIAL[4],
                                  INV_FACTORIAL[5], INV_FACTORIAL[6], INV_FACTORIAL[7])
    p = ((((((c7 * r + c6) * r + c5) * r + c4) * r + c3) * r + c2) * r + c1) * r + F32(1.0)
    y = p * _pow2_f32(n)
    y = F32(0.0) if x < EXP_LOW else y
    return y if x == x else x


# erf on [0, 3.92] as two degree-12 polynomials in (|x| - centre), least-squares fits on 4000 Chebyshev
# nodes of each piece against libm's float64 erf, coefficients rounded to float32 (fit_erf_pieces below
# regenerates them). Evaluated in float32 the result is within 7e-8 of the true erf (about one float32
# ulp near 1); from 3.84 on it is exactly 1, as erf is to float32 precision. The piece is picked by
# selecting each coefficient, not by indexing a table, so the loop around it still vectorises.
ERF_SPLIT = F32(1.4)
ERF_CENTRES = (F32(0.699999988079071), F32(2.6600000858306885))
ERF_LOW = tuple(F32(c) for c in (
    0.6778011918067932, 0.691274881362915, -0.48389241099357605, -0.004608694463968277, 0.16291050612926483,
    -0.04422928765416145, -0.03312268480658531, 0.017134085297584534, 0.0040999362245202065,
    -0.003897364716976881, -0.00018626170640345663, 0.0005441147950477898, -2.9583465220639482e-05))
ERF_HIGH = tuple(F32(c) for c in (
    0.9998313188552856, 0.0009539021411910653, -0.0025376982521265745, 0.004184445831924677,
    -0.004716603551059961, 0.0037520546466112137, -0.0020785105880349874, 0.0007099937065504491,
    -1.1429365258663893e-05, -0.00015593774151057005, 7.21098404028453e-05, 2.970884452224709e-06,
    -6.828218829468824e-06))
ERF_END = F32(3.92)
ERF_ONE = F32(3.84)          # from here on erf(x) rounds to 1.0 in float32 (1 - erf(3.84) < 2**-25)


def fit_erf_pieces(split=1.4, end=3.92, degree=12, nodes=4000):
    """Regenerate ERF_CENTRES, ERF_LOW, ERF_HIGH (float32): least squares on Chebyshev nodes per piece."""
    pieces = []
    for lo, hi in ((0.0, split), (split, end)):
        x = (np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes) + 1) * (hi - lo) / 2 + lo
        centre = np.float32((lo + hi) / 2)
        exact = np.array([math.erf(v) for v in x])
        pieces.append((centre, np.polynomial.polynomial.polyfit(x - float(centre), exact, degree).astype(np.float32)))
    return pieces


@jit(inline="always")
def erf_f32(x):
    """erf(x) in float32, within 1e-7 of libm's erf, vectorisable (see ERF_LOW / ERF_HIGH)."""
    a = min(abs(x), ERF_END)
    low = a < ERF_SPLIT
    t = a - (ERF_CENTRES[0] if low else ERF_CENTRES[1])
    lo, hi = ERF_LOW, ERF_HIGH
    y = lo[12] if low else hi[12]
    y = y * t + (lo[11] if low else hi[11])
    y = y * t + (lo[10] if low else hi[10])
    y = y * t + (lo[9] if low else hi[9])
    y = y * t + (lo[8] if low else hi[8])
    y = y * t + (lo[7] if low else hi[7])
    y = y * t + (lo[6] if low else hi[6])
    y = y * t + (lo[5] if low else hi[5])
    y = y * t + (lo[4] if low else hi[4])
    y = y * t + (lo[3] if low else hi[3])
    y = y * t + (lo[2] if low else hi[2])
    y = y * t + (lo[1] if low else hi[1])
    y = y * t + (lo[0] if low else hi[0])
    y = F32(1.0) if a >= ERF_ONE else min(y, F32(1.0))     # exactly 1: GELU(-30) is -0.0, not -30 * 3e-8
    y = y if x >= F32(0.0) else -y
    return y if x == x else x


def fast_exp(x):
    """exp: the vectorisable exp_f32 for float32, libm's for float64 (used inside kernels)."""
    return math.exp(x)


def fast_erf(x):
    """erf: the vectorisable erf_f32 for float32, libm's for float64."""
    return math.erf(x)


@overload(fast_exp, inline="always")
def _fast_exp(x):
    if x == types.float32:
        return lambda x: exp_f32(x)
    return lambda x: math.exp(x)


@overload(fast_erf, inline="always")
def _fast_erf(x):
    if x == types.float32:
        return lambda x: erf_f32(x)
    return lambda x: math.erf(x)
