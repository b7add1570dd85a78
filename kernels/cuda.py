"""numba.cuda kernels: outputs first, no model knowledge. Each mirrors a function in reference.py.

Imported only by the "cuda" backend (minibert/backends/cuda.py): importing this module imports numba.cuda.
Works with numba's built-in CUDA target and with the numba-cuda package (which takes over `numba.cuda`
when installed), and runs on the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) for tests without a GPU.

Layout of the module:
  * scalar maths (`scalar_maths(dtype)`): GELU (exact erf and tanh forms), ReLU, SiLU, tanh and the
    activation switch of the matmul epilogue. They are plain `numba.njit` functions with no CUDA API in
    them: Numba compiles an njit function called from a CUDA kernel for the GPU (math.erf lowers to
    libdevice's erff/erf), and the same functions run unchanged inside CPU njit kernels (the tests call
    them from one). Constants are of the compute dtype so float32 kernels never widen to float64.
    They belong in a module both kernel files import; they live here until the CPU kernels take them up.
  * raw kernels, compiled lazily per dtype (`kernels_for(dtype)`; the attention kernel,
    `attention_kernel(dtype, ...)`, is in kernels/cuda_attention.py);
  * launchers: free functions taking device arrays, outputs first, that pick grid and block sizes.

Every output element is computed by the same sequence of operations whatever the batch holds (the
reduction order depends only on the row width, the tile order only on the reduction length), so a
text's numbers do not depend on the batch it lands in.

Shared-memory budget: every kernel stays under 48 KiB of static shared memory (the limit without
opt-in) in float32 and float64; tests/test_cuda_sim.py checks this on compiled PTX when NVVM is found.
The simulator runs this code as plain Python and checks no types: that PTX check is what catches code
the CUDA compiler refuses (shared-array shapes must be literal constants; Python's min/max do not type).
"""

import functools
import math
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda

from .cuda_attention import QUERIES_PER_BLOCK, attention_kernel, keys_per_tile
from .reference import ACTIVATION_FUNCTIONS

# ---------------------------------------------------------------------------------------------------
# Scalar maths, target-neutral (numba.njit, no CUDA API): usable from CUDA kernels and CPU kernels.
# ---------------------------------------------------------------------------------------------------

# Activation names -> the integer code the matmul epilogue switches on (uniform across a launch).
# The device function for each function of reference.ACTIVATION_FUNCTIONS, by code (0: bias only), and
# each activation name's code through that table.
FUNCTION_CODES = {None: 0, "gelu": 1, "gelu_tanh": 2, "relu": 3, "silu": 4, "tanh": 5}
ACTIVATION_CODES = {None: 0, **{name: FUNCTION_CODES[function] for name, function in ACTIVATION_FUNCTIONS.items()}}


@functools.lru_cache(maxsize=None)
def scalar_maths(dtype):
    """njit scalar functions whose constants are of `dtype` (np.float32 or np.float64)."""
    f = np.dtype(dtype).type
    zero, half, one = f(0.0), f(0.5), f(1.0)
    inv_sqrt2 = f(0.7071067811865476)          # 1 / sqrt(2)
    sqrt_2_over_pi = f(0.7978845608028654)     # sqrt(2 / pi)
    cubic = f(0.044715)

    @numba.njit
    def gelu(y):
        """Exact GELU, 0.5 * y * (1 + erf(y / sqrt(2))) (BERT's "gelu")."""
        return half * y * (one + math.erf(y * inv_sqrt2))

    @numba.njit
    def gelu_tanh(y):
        """The tanh approximation ("gelu_new", "gelu_pytorch_tanh")."""
        return half * y * (one + math.tanh(sqrt_2_over_pi * (y + cubic * y * y * y)))

    @numba.njit
    def relu(y):
        return zero if y < zero else y          # NaN stays NaN, as np.maximum (builtin max is not used:
                                                # Numba's CUDA typing resolves it to a CPU-only overload)

    @numba.njit
    def silu(y):
        return y / (one + math.exp(-y))

    @numba.njit
    def activate(y, code):
        """The activation with ACTIVATION_CODES code `code` (0: identity)."""
        if code == 1:
            return gelu(y)
        if code == 2:
            return gelu_tanh(y)
        if code == 3:
            return relu(y)
        if code == 4:
            return silu(y)
        if code == 5:
            return math.tanh(y)
        return y

    return SimpleNamespace(gelu=gelu, gelu_tanh=gelu_tanh, relu=relu, silu=silu, activate=activate)


# ---------------------------------------------------------------------------------------------------
# Raw kernels
# ---------------------------------------------------------------------------------------------------

# Matmul tiling: a block of THREADS_Y x THREADS_X threads computes a TILE_M x TILE_N tile of the output,
# each thread a MICRO x MICRO grid of it (rows ty + i * THREADS_Y, columns tx + j * THREADS_X, so
# neighbouring threads write neighbouring columns). K advances TILE_K at a time through shared memory.
TILE_M, TILE_N, TILE_K, MICRO = 64, 64, 16, 4
THREADS_X, THREADS_Y = TILE_N // MICRO, TILE_M // MICRO          # 16 x 16 = 256 threads
MATMUL_THREADS = THREADS_X * THREADS_Y
A_LOADS, W_LOADS = TILE_M * TILE_K // MATMUL_THREADS, TILE_K * TILE_N // MATMUL_THREADS   # 4, 4
TILE_M_PADDED = TILE_M + 1   # the a tile's row length in shared memory (shapes must be literal constants)

ROW_THREADS_MAX = 256      # block size ceiling of the row kernels (LayerNorm, embeddings)


@functools.lru_cache(maxsize=None)
def kernels_for(dtype):
    """The kernels of one dtype (float32 or float64), compiled lazily on first launch."""
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"CUDA kernels run in float32 or float64, not {dtype}")
    f = dtype.type
    ftype = numba.from_dtype(dtype)
    zero = f(0.0)
    one = f(1.0)
    maths = scalar_maths(dtype.type)
    activate = maths.activate

    @cuda.jit(device=True)
    def block_sum(value, scratch):
        """Sum of `value` over the block's threads, the same in every thread: each thread adds all the
        partials in thread order (a fixed order, two barriers, no power-of-two block size needed)."""
        scratch[cuda.threadIdx.x] = value
        cuda.syncthreads()
        total = zero
        for j in range(cuda.blockDim.x):
            total += scratch[j]
        cuda.syncthreads()          # scratch is free again for the next reduction
        return total

    @cuda.jit(device=True)
    def normalize_row(out, n, gamma, beta, eps, scratch):
        """LayerNorm of out[n] in place: two-pass mean and biased variance, as reference.layer_norm_forward.

        Each thread reads and writes only its own columns, so out may alias the kernel's input."""
        C = out.shape[1]
        t, nt = cuda.threadIdx.x, cuda.blockDim.x
        part = zero
        for c in range(t, C, nt):
            part += out[n, c]
        mean = block_sum(part, scratch) / f(C)
        part = zero
        for c in range(t, C, nt):
            d = out[n, c] - mean
            part += d * d
        var = block_sum(part, scratch) / f(C)
        inv = one / math.sqrt(var + eps)
        for c in range(t, C, nt):
            out[n, c] = (out[n, c] - mean) * inv * gamma[c] + beta[c]

    @cuda.jit
    def layer_norm(out, x, gamma, beta, eps):
        """out[n] = LayerNorm(x[n]); one block per row of x [N, C]."""
        scratch = cuda.shared.array(ROW_THREADS_MAX, ftype)
        n = cuda.blockIdx.x
        for c in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            out[n, c] = x[n, c]
        normalize_row(out, n, gamma, beta, eps, scratch)

    @cuda.jit
    def add_layer_norm(out, x, residual, gamma, beta, eps):
        """out[n] = LayerNorm(x[n] + residual[n]); one block per row; out may alias x or residual."""
        scratch = cuda.shared.array(ROW_THREADS_MAX, ftype)
        n = cuda.blockIdx.x
        for c in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            out[n, c] = x[n, c] + residual[n, c]
        normalize_row(out, n, gamma, beta, eps, scratch)

    @cuda.jit(device=True)
    def gather_row(out, n, input_ids, position_ids, token_type_ids, word, position, token_type):
        """out[n] = word[id] + position[pos] + token_type[type] for row n = b * T + t."""
        T = input_ids.shape[1]
        b, t = n // T, n % T
        w, p, s = input_ids[b, t], position_ids[b, t], token_type_ids[b, t]
        for e in range(cuda.threadIdx.x, out.shape[1], cuda.blockDim.x):
            out[n, e] = word[w, e] + position[p, e] + token_type[s, e]

    @cuda.jit
    def embed(out, input_ids, position_ids, token_type_ids, word, position, token_type):
        """out [B*T, E]: the sum of the three lookups; ids [B, T] must already be range-checked."""
        gather_row(out, cuda.blockIdx.x, input_ids, position_ids, token_type_ids, word, position, token_type)

    @cuda.jit
    def matmul(out, a, w, bias, activation):
        """out = activate(a @ w + bias): a [M, K], w [K, N], bias [N], out [M, N]; any strides.

        Grid (ceil(N / TILE_N), ceil(M / TILE_M)), block (THREADS_X, THREADS_Y). Tiles of a (stored
        transposed, padded against bank conflicts) and w go through shared memory; each thread keeps
        MICRO x MICRO accumulators in registers; the bias and activation are applied on the way out.
        """
        sa = cuda.shared.array((TILE_K, TILE_M_PADDED), ftype)
        sw = cuda.shared.array((TILE_K, TILE_N), ftype)
        acc = cuda.local.array((MICRO, MICRO), ftype)
        av = cuda.local.array(MICRO, ftype)
        wv = cuda.local.array(MICRO, ftype)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * THREADS_X + tx
        row0, col0 = cuda.blockIdx.y * TILE_M, cuda.blockIdx.x * TILE_N
        M, K, N = a.shape[0], a.shape[1], w.shape[1]
        for i in range(MICRO):
            for j in range(MICRO):
                acc[i, j] = zero
        for k0 in range(0, K, TILE_K):
            for load in range(A_LOADS):            # consecutive threads read consecutive k of one row
                e = tid + load * MATMUL_THREADS
                r, c = e // TILE_K, e % TILE_K
                if row0 + r < M and k0 + c < K:
                    sa[c, r] = a[row0 + r, k0 + c]
                else:
                    sa[c, r] = zero
            for load in range(W_LOADS):            # consecutive threads read consecutive n of one row
                e = tid + load * MATMUL_THREADS
                r, c = e // TILE_N, e % TILE_N
                if k0 + r < K and col0 + c < N:
                    sw[r, c] = w[k0 + r, col0 + c]
                else:
                    sw[r, c] = zero
            cuda.syncthreads()
            for kk in range(TILE_K):
                for i in range(MICRO):
                    av[i] = sa[kk, ty + i * THREADS_Y]
                for j in range(MICRO):
                    wv[j] = sw[kk, tx + j * THREADS_X]
                for i in range(MICRO):
                    for j in range(MICRO):
                        acc[i, j] += av[i] * wv[j]
            cuda.syncthreads()
        for i in range(MICRO):
            r = row0 + ty + i * THREADS_Y
            if r < M:
                for j in range(MICRO):
                    c = col0 + tx + j * THREADS_X
                    if c < N:
                        out[r, c] = activate(acc[i, j] + bias[c], activation)

    @cuda.jit
    def copy3(out, x):
        """out[...] = x[...] for 3-D arrays of any strides (a contiguous copy of a strided view)."""
        A, B, C = x.shape
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, A * B * C, step):
            i, rest = e // (B * C), e % (B * C)
            out[i, rest // C, rest % C] = x[i, rest // C, rest % C]

    @cuda.jit
    def gather_bias(out, buckets, table):
        """out[0, h, i, j] = table[buckets[i, j], h]: a [1, NH, T, T] bias from [T, T] buckets and a
        [buckets, NH] table (MPNet's relative positions), one element per thread step."""
        NH, T = out.shape[1], out.shape[2]
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, NH * T * T, step):
            h, rest = e // (T * T), e % (T * T)
            i, j = rest // T, rest % T
            out[0, h, i, j] = table[buckets[i, j], h]

    return SimpleNamespace(dtype=dtype, block_sum=block_sum, layer_norm=layer_norm, add_layer_norm=add_layer_norm,
                           embed=embed, matmul=matmul, copy3=copy3,
                           gather_bias=gather_bias, maths=maths)


# ---------------------------------------------------------------------------------------------------
# Launchers: device arrays in, outputs first; they pick grid and block sizes and launch.
# ---------------------------------------------------------------------------------------------------

def row_threads(width):
    """Threads per block for a row kernel: about 4 columns each, whole warps from 32 columns up, at most
    ROW_THREADS_MAX (a row of 384 gets 96 threads, 1024 gets 256)."""
    threads = max(1, -(-width // 4))
    if threads > 32:
        threads = -(-threads // 32) * 32
    return min(threads, ROW_THREADS_MAX)


def as_rows(array):
    """A [..., C] C-contiguous device array seen as [N, C] (2-D arrays pass through, any strides)."""
    shape = tuple(array.shape)
    if len(shape) == 2:
        return array
    return array.reshape(-1, shape[len(shape) - 1])


def check_shapes(what, **shapes):
    """Kernels do not check bounds: a ValueError here rather than reads past the end on the device."""
    sizes = {}
    for name, (array, axes) in shapes.items():
        shape = tuple(array.shape)
        if len(shape) != len(axes):
            raise ValueError(f"{what}: {name} has shape {shape}, expected axes {axes}")
        for axis, size in zip(axes, shape):
            if sizes.setdefault(axis, size) != size:
                raise ValueError(f"{what}: {name} has shape {shape}; axis {axis} is {sizes[axis]} elsewhere")


def layer_norm(out, x, gamma, beta, eps):
    """out = LayerNorm(x) over the last axis; x and out [N, C] (or C-contiguous [..., C])."""
    out2, x2 = as_rows(out), as_rows(x)
    check_shapes("layer_norm", out=(out2, "NC"), x=(x2, "NC"), gamma=(gamma, "C"), beta=(beta, "C"))
    if out2.shape[0]:
        k = kernels_for(out.dtype)
        k.layer_norm[out2.shape[0], row_threads(out2.shape[1])](out2, x2, gamma, beta, out.dtype.type(eps))


def add_layer_norm(out, x, residual, gamma, beta, eps):
    """out = LayerNorm(x + residual); out may alias x."""
    out2, x2, r2 = as_rows(out), as_rows(x), as_rows(residual)
    check_shapes("add_layer_norm", out=(out2, "NC"), x=(x2, "NC"), residual=(r2, "NC"), gamma=(gamma, "C"),
                 beta=(beta, "C"))
    if out2.shape[0]:
        k = kernels_for(out.dtype)
        k.add_layer_norm[out2.shape[0], row_threads(out2.shape[1])](out2, x2, r2, gamma, beta,
                                                                    out.dtype.type(eps))


def check_embed_shapes(out, input_ids, position_ids, token_type_ids, word, position, token_type):
    """Shapes only: the ids' values must be range-checked by the caller (minibert.api does)."""
    check_shapes("embed", out=(out, "BTE"), input_ids=(input_ids, "BT"), position_ids=(position_ids, "BT"),
                 token_type_ids=(token_type_ids, "BT"), word=(word, "VE"), position=(position, "PE"),
                 token_type=(token_type, "SE"))


def embed(out, input_ids, position_ids, token_type_ids, word, position, token_type):
    """out [B, T, E] = word[ids] + position[pos] + token_type[types]; ids [B, T] device int arrays."""
    check_embed_shapes(out, input_ids, position_ids, token_type_ids, word, position, token_type)
    out2 = as_rows(out)
    if out2.shape[0]:
        k = kernels_for(out.dtype)
        k.embed[out2.shape[0], row_threads(out2.shape[1])](out2, input_ids, position_ids, token_type_ids,
                                                           word, position, token_type)


def matmul_bias_act(out, a, w, bias, activation=None):
    """out [M, N] = activation(a [M, K] @ w [K, N] + bias [N]); a may have any strides."""
    check_shapes("matmul", out=(out, "MN"), a=(a, "MK"), w=(w, "KN"), bias=(bias, "N"))
    M, N = out.shape
    if M and N:
        k = kernels_for(out.dtype)
        grid = ((N + TILE_N - 1) // TILE_N, (M + TILE_M - 1) // TILE_M)
        k.matmul[grid, (THREADS_X, THREADS_Y)](out, a, w, bias, ACTIVATION_CODES[activation])


def attention(context, probs, q, k, v, mask_bias, num_heads, keep_probs, position_bias=None):
    """context [B, T, H] (and probs [B, NH, T, T] when keep_probs; else pass any 4-D array).

    q, k, v [B, T, H] device arrays of any strides; mask_bias [B, T] device array of q's dtype;
    position_bias None or a [B or 1, NH, T, T] device array of q's dtype, added to the scaled scores.
    """
    check_shapes("attention", context=(context, "BTH"), q=(q, "BTH"), k=(k, "BTH"), v=(v, "BTH"),
                 mask_bias=(mask_bias, "BT"))
    B, T, H = tuple(q.shape)
    if H % num_heads:
        raise ValueError(f"attention: hidden size {H} is not a multiple of {num_heads} heads")
    if position_bias is not None and tuple(position_bias.shape) not in ((B, num_heads, T, T), (1, num_heads, T, T)):
        raise ValueError(f"attention: position_bias has shape {tuple(position_bias.shape)}, expected "
                         f"{(B, num_heads, T, T)} or {(1, num_heads, T, T)}")
    if keep_probs:
        check_shapes("attention", q=(q, "BTH"), probs=(probs, "BNTS"))
        if tuple(probs.shape) != (B, num_heads, T, T):
            raise ValueError(f"attention: probs has shape {tuple(probs.shape)}, expected {(B, num_heads, T, T)}")
    if B == 0 or T == 0:
        return
    head_size = H // num_heads
    dtype = context.dtype
    keys = keys_per_tile(dtype, head_size)
    kernel = attention_kernel(dtype, head_size, keys, position_bias is not None)
    threads = min(T, QUERIES_PER_BLOCK)
    grid = ((T + threads - 1) // threads, num_heads, B)
    scale = dtype.type(1.0 / math.sqrt(head_size))
    bias = probs if position_bias is None else position_bias      # without a bias: any 4-D array, never read
    kernel[grid, threads](context, probs, q, k, v, bias, mask_bias, scale, bool(keep_probs))


def relative_position_bias(out, buckets, table):
    """out [1, NH, T, T] = table [buckets, NH] at buckets [T, T] (int64), heads first."""
    check_shapes("relative_position_bias", out=(out, "ONTS"), buckets=(buckets, "TS"), table=(table, "KN"))
    if tuple(out.shape)[0] != 1:
        raise ValueError(f"relative_position_bias: out has shape {tuple(out.shape)}, expected [1, NH, T, T]")
    if out.size:
        k = kernels_for(out.dtype)
        k.gather_bias[min((out.size + 255) // 256, 4096), 256](out, buckets, table)


def contiguous_copy(out, x):
    """out = x for 3-D device arrays; out C-contiguous, x any strides."""
    check_shapes("contiguous_copy", out=(out, "ABC"), x=(x, "ABC"))
    if x.size:
        k = kernels_for(out.dtype)
        k.copy3[min((x.size + 255) // 256, 4096), 256](out, x)
