"""The ops the model calls, chosen once at load: "numpy" (the reference), "cpu" (Numba kernels) or "cuda".

`Ops` below is the contract, so minibert/model.py names `Ops` and "go to definition" lands here. Each backend
is one module of top-level functions with exactly these names, array in, array out: reference_backend.py
("numpy"), cpu.py, cuda.py. Adding a backend means writing such a module and registering it in BACKENDS;
adding an op means adding it here, to kernels/reference.py (forward and backward) and to each module
(tests/test_backends.py checks that every module implements every name). `make_ops` hands the model a
`BackendOps` holding the module's functions. Arrays may be a backend's own device arrays between calls;
`to_host` turns an output back into NumPy.
"""

import dataclasses
import importlib
import inspect
from typing import Callable, Optional, Protocol

from ..errors import BackendError

BACKENDS = ("numpy", "cpu", "cuda")
# Each backend's module, imported on request: the CUDA machinery only when "cuda" is asked for.
MODULES = {"numpy": "reference_backend", "cpu": "cpu", "cuda": "cuda"}


class Ops(Protocol):
    """The functions every backend provides (kernels/reference.py holds the NumPy definition of each)."""

    name: str                   # "numpy", "cpu" or "cuda"

    def embed(self, input_ids, position_ids, token_type_ids, word, position, token_type):
        """word[ids] + position[positions] + token_type[types]: ids [B, T] -> [B, T, E]."""

    def linear(self, x, w, b, activation: Optional[str] = None):
        """activation(x @ w + b): x [..., C_in], w [C_in, C_out] -> [..., C_out]; activation a name of
        kernels.reference.ACTIVATION_FUNCTIONS or None."""

    def layer_norm(self, x, gamma, beta, eps):
        """LayerNorm over the last axis (biased variance)."""

    def add_layer_norm(self, x, residual, gamma, beta, eps):
        """LayerNorm(x + residual): each sub-layer's residual add and post-LN."""

    def attention(self, q, k, v, mask_bias, num_heads, return_probs, position_bias=None):
        """Scaled dot-product attention: q, k, v [B, T, H], mask_bias [B, T], position_bias [B or 1, NH, T, T]
        or None -> (context [B, T, H], probs [B, NH, T, T] or None)."""

    def packed_attention(self, q, k, v, offsets, num_heads, position_bias=None):
        """attention of texts laid end to end with no padding: q, k, v [N, H], text b in rows
        offsets[b]:offsets[b + 1], each attending over its own tokens; position_bias [1, NH, >= n, >= n] or
        None -> context [N, H]. A backend without it raises BackendError (see `packs`)."""

    def relative_position_bias(self, table, T, num_buckets, max_distance):
        """MPNet's bias [1, NH, T, T] from its [buckets, NH] table."""

    def prepare(self, weights):
        """The weights dict in the form this backend computes with (e.g. uploaded to a device)."""

    def to_host(self, output):
        """output with every array as a NumPy array (identity on the host backends)."""

    def synchronize(self):
        """Wait for queued work (a device's); returns at once on the host backends."""


# The names of Ops, in its order: what each backend module defines.
OPS_NAMES = tuple(name for name, member in vars(Ops).items()
                  if inspect.isfunction(member) and not name.startswith("_"))


@dataclasses.dataclass
class BackendOps:
    """One backend's functions under the names of Ops (what make_ops returns). Not frozen: a profiler or a
    benchmark may wrap an op in place (benchmarks/profile_forward.py, benchmarks/cuda_compare.py)."""
    name: str
    embed: Callable
    linear: Callable
    layer_norm: Callable
    add_layer_norm: Callable
    attention: Callable
    packed_attention: Callable
    relative_position_bias: Callable
    prepare: Callable
    to_host: Callable
    synchronize: Callable
    implementation: Optional[str] = None   # cuda: numba.cuda's implementation ("NVIDIA", ...), for reports
    simulator: bool = False                # cuda: running on Numba's CUDA simulator
    packs: bool = True                     # packed_attention runs (cuda: not yet; callers pad instead)


def backend_module(backend: str):
    """The module of `backend` (one of BACKENDS), or a BackendError naming the choices."""
    if backend not in MODULES:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{MODULES[backend]}")


def make_ops(backend: str) -> Ops:
    module = backend_module(backend)
    extra = module.load() if hasattr(module, "load") else {}   # cuda: import numba.cuda, find the device
    return BackendOps(name=backend, **{name: getattr(module, name) for name in OPS_NAMES}, **extra)
