"""The "cuda" backend: the ops contract of minibert.backends on an NVIDIA GPU through numba.cuda kernels.

Imported only when backend="cuda" is asked for, and numba.cuda only by `load` (which make_ops calls), so a
CPU-only install never imports numba.cuda.

Activations stay on the device from layer to layer as `DeviceTensor`s, thin wrappers over numba device
arrays that support exactly what minibert.model does outside the ops: `.shape`, `.dtype`, `.ndim` and
basic indexing (`fused[..., :H]`, `x[:, 0]`), which numba's DeviceNDArray only partly supports (no
Ellipsis). Slices are views: the kernels take any strides, so q, k and v are never copied.
`to_host` turns whatever the model returned (EncoderOutput, tuples, dicts) into NumPy arrays; it is the
one place results cross back to the host.
"""

import dataclasses
import os
import warnings

import numpy as np

from ..errors import BackendError
from ..kernels.reference import relative_position_buckets

NO_DEVICE = ("backend 'cuda': no CUDA device was found{reason}. Use backend='cpu' on this machine; to test "
             "the CUDA code path without a GPU, set NUMBA_ENABLE_CUDASIM=1 in the environment before "
             "Python starts (the Numba CUDA simulator, very slow: for tests on tiny models only).")


def import_numba_cuda():
    """numba.cuda (numba-cuda's when installed, else numba's built-in target), or a BackendError."""
    try:
        from numba import cuda
    except Exception as e:   # a numba without a CUDA target, or a broken numba-cuda install
        raise BackendError(f"backend 'cuda': numba.cuda cannot be imported ({type(e).__name__}: {e}); "
                           "install the CUDA extra with `pip install 'minibert-numpy[cuda]'`") from None
    return cuda


def no_device_reason(cuda):
    try:
        error = cuda.cuda_error()
    except Exception:
        return ""
    reason = " ".join(str(error).split()).rstrip(":") if error else ""
    return f" ({reason})" if reason else ""


class DeviceTensor:
    """A device array with NumPy-like `.shape`/`.dtype`/`.ndim` and basic indexing (views, no copy).

    `.array` is the underlying numba device array; `np.asarray(t)` and `t.copy_to_host()` copy to the host.
    """

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    shape = property(lambda self: tuple(self.array.shape))
    dtype = property(lambda self: np.dtype(self.array.dtype))
    ndim = property(lambda self: len(self.array.shape))
    size = property(lambda self: int(np.prod(self.array.shape, dtype=np.int64)))
    strides = property(lambda self: tuple(self.array.strides))

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        return DeviceTensor(self.array[basic_index(index, self.shape)])

    def is_c_contiguous(self):
        return is_c_contiguous(self.shape, self.strides, self.dtype.itemsize)

    def copy_to_host(self):
        """A C-contiguous NumPy copy (a strided view's copy holds only its own elements)."""
        return np.ascontiguousarray(self.array.copy_to_host())

    def __array__(self, dtype=None, copy=None):
        host = self.copy_to_host()
        return host if dtype is None else host.astype(dtype, copy=False)

    @property
    def __cuda_array_interface__(self):      # zero-copy hand-over to CuPy, PyTorch, ...
        return self.array.__cuda_array_interface__

    def __repr__(self):
        return f"DeviceTensor(shape={self.shape}, dtype={self.dtype.name})"


def basic_index(index, shape):
    """`index` as a tuple of one int or step-positive slice per axis: what numba device arrays accept.

    Expands one Ellipsis, fills missing trailing axes, normalises negative ints; anything else (None,
    arrays, booleans, negative steps) is an IndexError rather than a silent host round trip.
    """
    items = index if isinstance(index, tuple) else (index,)
    if sum(item is Ellipsis for item in items) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    explicit = sum(item is not Ellipsis for item in items)
    if explicit > len(shape):
        raise IndexError(f"too many indices for a {len(shape)}-d device array: {index!r}")
    expanded = []
    for item in items:
        if item is Ellipsis:
            expanded.extend([slice(None)] * (len(shape) - explicit))
        else:
            expanded.append(item)
    expanded.extend([slice(None)] * (len(shape) - len(expanded)))
    normalized = []
    for axis, (item, size) in enumerate(zip(expanded, shape)):
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (slice, int, np.integer)):
            raise IndexError(f"device arrays take ints and slices only, found {item!r} for axis {axis}")
        if isinstance(item, slice):
            if item.step is not None and item.step <= 0:
                raise IndexError(f"device array slices need a positive step, found {item!r}")
            normalized.append(slice(*item.indices(size)))
        else:
            i = int(item)
            if not -size <= i < size:
                raise IndexError(f"index {i} is out of bounds for axis {axis} with size {size}")
            normalized.append(i % size)
    return tuple(normalized)


def is_c_contiguous(shape, strides, itemsize):
    expected = itemsize
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


# numba.cuda and minibert.kernels.cuda, set by load(): importing this module imports no CUDA machinery.
cuda = None
kernels = None


def load():
    """Import numba.cuda and the kernels (once) and check for a device: make_ops("cuda") calls this first.
    Returns what BackendOps records besides the functions."""
    global cuda, kernels
    found = import_numba_cuda()
    if not found.is_available():
        raise BackendError(NO_DEVICE.format(reason=no_device_reason(found)))
    from ..kernels import cuda as loaded

    try:   # launches of a few blocks (small batches) are expected, not a mistake worth a warning
        from numba.core.errors import NumbaPerformanceWarning
        warnings.filterwarnings("ignore", message=r"Grid size .* will likely result in GPU under-utilization",
                                category=NumbaPerformanceWarning)
    except ImportError:
        pass
    cuda, kernels = found, loaded
    return {"implementation": getattr(cuda, "implementation", "unknown"), "packs": False,
            "simulator": os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")}


def synchronize():
    """Wait for the device's queued work."""
    cuda.synchronize()


def device(x, dtype=None):
    """The numba device array behind x: DeviceTensors unwrap, host arrays are copied over."""
    if isinstance(x, DeviceTensor):
        return x.array
    if hasattr(x, "copy_to_host"):          # a numba device array (or the simulator's stand-in)
        return x
    if hasattr(x, "__cuda_array_interface__") and hasattr(cuda, "as_cuda_array"):
        return cuda.as_cuda_array(x)        # CuPy, PyTorch, ...: zero-copy
    return cuda.to_device(np.ascontiguousarray(x, dtype=dtype))


def empty(shape, dtype):
    return cuda.device_array(tuple(shape), dtype=dtype)


def contiguous(array):
    """`array` itself when C-contiguous, else a contiguous device copy (3-D arrays; 2-D rows pass)."""
    if is_c_contiguous(array.shape, array.strides, array.dtype.itemsize):
        return array
    if array.ndim != 3:
        raise BackendError(f"backend 'cuda': cannot lay out a strided {array.ndim}-d array as rows")
    out = empty(array.shape, array.dtype)
    kernels.contiguous_copy(out, array)
    return out


def rows(array):
    """[..., C] -> [N, C] without a copy when possible (2-D views of any strides pass as they are)."""
    return array if array.ndim == 2 else kernels.as_rows(contiguous(array))


def embed(input_ids, position_ids, token_type_ids, word, position, token_type):
    word = device(word)
    ids = [device(a, np.int64) for a in (input_ids, position_ids, token_type_ids)]
    out = empty(tuple(ids[0].shape) + (word.shape[1],), word.dtype)
    kernels.embed(out, *ids, word, device(position), device(token_type))
    return DeviceTensor(out)


def linear(x, w, b, activation=None):
    if activation not in kernels.ACTIVATION_CODES:
        raise BackendError(f"backend 'cuda': unknown activation {activation!r}")
    x, w = device(x), device(w)
    a = rows(x)
    out = empty((a.shape[0], w.shape[1]), w.dtype)
    kernels.matmul_bias_act(out, a, w, device(b), activation)
    return DeviceTensor(out.reshape(*(tuple(x.shape)[:-1] + (w.shape[1],))))


def layer_norm(x, gamma, beta, eps, residual=None):
    x = device(x)
    out = empty(x.shape, x.dtype)
    if residual is None:
        kernels.layer_norm(rows(out), rows(x), device(gamma), device(beta), eps)
    else:
        kernels.add_layer_norm(rows(out), rows(x), rows(device(residual)), device(gamma), device(beta), eps)
    return DeviceTensor(out)


# The last mask_bias seen, host copy -> device array: uploaded once per forward (one per process).
mask_cache = {}


def device_mask(mask_bias, dtype):
    if not isinstance(mask_bias, np.ndarray):
        return device(mask_bias, dtype)
    host = np.ascontiguousarray(mask_bias, dtype=dtype)
    seen = mask_cache.get("host")
    if seen is None or seen.shape != host.shape or not np.array_equal(seen, host):
        mask_cache["host"], mask_cache["device"] = host.copy(), cuda.to_device(host)
    return mask_cache["device"]


# dtype -> a [1, 1, 1, 1] device array the attention kernel writes no probabilities into.
probs_placeholder = {}


def attention(q, k, v, mask_bias, num_heads, return_probs=False, position_bias=None):
    q, k, v = device(q), device(k), device(v)
    B, T, H = q.shape
    if H % num_heads:
        raise BackendError(f"backend 'cuda': hidden size {H} is not a multiple of {num_heads} heads")
    context = empty((B, T, H), q.dtype)
    if return_probs:
        probs = empty((B, num_heads, T, T), q.dtype)
    else:
        if q.dtype not in probs_placeholder:
            probs_placeholder[q.dtype] = empty((1, 1, 1, 1), q.dtype)
        probs = probs_placeholder[q.dtype]
    kernels.attention(context, probs, q, k, v, device_mask(mask_bias, q.dtype), num_heads, return_probs,
                      position_bias=None if position_bias is None else device(position_bias, q.dtype))
    return DeviceTensor(context), (DeviceTensor(probs) if return_probs else None)


def packed_attention(q, k, v, offsets, num_heads, position_bias=None):
    """Not on the device yet: BackendOps.packs is False, so encode and iter_packed_layers pad instead."""
    raise BackendError("backend 'cuda' has no packed attention (texts laid end to end); use the padded "
                       "forward, as encode does on this backend")


# (T, num_buckets, max_distance) -> device buckets [T, T]: uploaded once per length.
bucket_cache = {}


def relative_position_bias(table, T, num_buckets, max_distance):
    """The buckets on the host (reference.py's integers, the spec), gathered from the table on the device."""
    key = (T, num_buckets, max_distance)
    if key not in bucket_cache:
        bucket_cache.clear()
        bucket_cache[key] = cuda.to_device(relative_position_buckets(T, num_buckets, max_distance))
    table = device(table)
    out = empty((1, table.shape[1], T, T), table.dtype)
    kernels.relative_position_bias(out, bucket_cache[key], table)
    return DeviceTensor(out)


def prepare(weights):
    """The weights dict with every array uploaded once (same structure, DeviceTensors); an array
    that appears several times (ALBERT's shared layers) is uploaded once and shared."""
    uploaded = {}

    def upload(array):
        if id(array) not in uploaded:
            uploaded[id(array)] = (array, DeviceTensor(cuda.to_device(np.ascontiguousarray(array))))
        return uploaded[id(array)][1]
    return map_arrays(weights, upload)


def to_host(output):
    """NumPy copies of every DeviceTensor in output (EncoderOutput, tuples, lists, dicts); others as is."""
    return map_arrays(output, lambda a: a, device_array=lambda t: t.copy_to_host())


def add_layer_norm(x, residual, gamma, beta, eps):
    return layer_norm(x, gamma, beta, eps, residual=residual)


def map_arrays(value, host_array, device_array=None):
    """Rebuild value (dataclasses, dicts, lists, tuples) applying host_array to NumPy arrays and
    device_array (default: identity) to DeviceTensors."""
    if isinstance(value, np.ndarray):
        return host_array(value)
    if isinstance(value, DeviceTensor):
        return value if device_array is None else device_array(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{field.name: map_arrays(getattr(value, field.name), host_array,
                                                                    device_array)
                                             for field in dataclasses.fields(value) if field.init})
    if isinstance(value, dict):
        return {key: map_arrays(item, host_array, device_array) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_arrays(item, host_array, device_array) for item in value)
    return value
