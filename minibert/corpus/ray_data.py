"""Extraction on Ray Data: minibert as a `Dataset.map_batches` stage, and `minibert extract --engine ray`.

Ray is imported only in the functions here, and only when they run (`pip install 'minibert-numpy[ray]'`).

    Embedder        a callable class for map_batches over rows with a text column: loads the model once per
                    actor, sizes minibert's threads to the CPUs Ray gave the actor, adds an embedding column
    extract(...)    minibert.corpus.extract.extract (the same writers, formats and manifest) with the encoding done
                    by a pool of Ray actors: one Dataset row per chunk of 4,096 texts, each chunk encoded by
                    one model.encode call exactly as the local engine encodes it, the rows streamed back to
                    the driver in input order and checked index by index before they are written

Column layout of Embedder's output column (batch_format "numpy", Ray's default):
    pooled output     a fixed-shape tensor column: row i is an array [H] ([L, H] with a layer axis, [L*H] with
                      combine="concat"), i.e. the batch holds one [B, ...] array
    pooling="none"    a ragged (variable-shaped tensor) column: row i is [n_tokens_i, (L,) H], the text's whole
                      token sequence without padding
"""

import logging
import os
import re
import socket
import sys
import warnings
from urllib.parse import urlsplit

import numpy as np

from ..backends import threads
from ..errors import InputError, MiniBertError

INSTALL_RAY = "pip install 'minibert-numpy[ray]'"


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the data extra has no ray.data)
    except ImportError as e:
        raise MiniBertError(f"the Ray engine needs Ray Data, which is not installed ({e}); install it with "
                            f"`{INSTALL_RAY}`") from None
    return ray


def size_threads(num_threads=None):
    """Hold minibert's threads to the CPUs Ray assigned to this actor (or to num_threads); returns the count.

    minibert's cpu backend runs numba.get_num_threads() threads per op (NUMBA_NUM_THREADS, by default every
    core of the node) and holds OpenBLAS to one thread per op, so several actors on one node would each
    start a thread per core. Ray sets OMP_NUM_THREADS (which OpenBLAS reads) to the actor's CPUs; this sets
    Numba's count: through NUMBA_NUM_THREADS when numba is not imported yet (the usual case in a fresh
    actor), else numba.set_num_threads, which is per calling thread and so is repeated before each batch.
    """
    n = num_threads
    ray = sys.modules.get("ray")
    if n is None and ray is not None and ray.is_initialized():   # else not in Ray: asking would start Ray
        try:
            n = ray.get_runtime_context().get_assigned_resources().get("CPU")
        except Exception:          # a driver, or a Ray without this API: leave the process's own settings
            n = None
    if not n:
        return None
    return threads.set_thread_count(n)


def current_threads():
    return threads.thread_count()


class Embedder:
    """`ds.map_batches(Embedder, fn_constructor_kwargs={...}, compute=ActorPoolStrategy(size=N), num_cpus=C)`.

    model: a directory, a hub id, or None for the default model, resolved on each actor (so it must be
    available there). The encoding options are those of Model.encode; batch_size is the encoder's batch
    (texts per forward pass), not Ray's: pass Ray's batch_size to map_batches. Output: `output_column`
    added to the batch (layout in the module docstring). Vectors equal model.encode's on the same batch of
    texts; a text's numbers move by a few float32 ulp with the batch it lands in (see minibert/backends/cpu.py).
    Options left as None mean what they mean for Model.encode: the checkpoint's recipe, the model's dtype.
    """

    def __init__(self, model=None, *, layers=-1, combine=None, pooling=None, normalize=None, dtype=None,
                 text_column="text", output_column="embedding", batch_size=None, max_length=None, window=None,
                 stride=None, backend="cpu", num_threads=None):
        self.threads = size_threads(num_threads)             # before the model load imports numba
        import minibert
        self.model = minibert.load(model, backend=backend)
        self.text_column, self.output_column = text_column, output_column
        self.options = {"layers": layers, "combine": combine, "pooling": pooling, "normalize": normalize,
                        "dtype": dtype, "batch_size": batch_size, "max_length": max_length, "window": window,
                        "stride": stride, "progress": False}
        self.model.encode(["x"], **self.options)            # bad options fail at actor start, not mid-run

    def encode(self, texts):
        if self.threads is not None and "numba" in sys.modules:
            size_threads(self.threads)       # Numba's count is per thread, and Ray may call from another thread
        return self.model.encode(list(texts), **self.options)

    def __call__(self, batch):
        if not isinstance(batch, dict):
            raise InputError(f"minibert.corpus.ray_data.Embedder takes numpy batches (map_batches' default "
                             f"batch_format), found {type(batch).__name__}")
        if self.text_column not in batch:
            raise InputError(f"no column {self.text_column!r} in the batch; columns are {list(batch)} "
                             "(choose one with text_column=)")
        out = dict(batch)
        out[self.output_column] = as_column(self.encode(batch[self.text_column]))
        return out


def as_column(vectors):
    """encode's output as a Ray column: [B, ...] as is; pooling "none"'s list as a ragged object array."""
    if isinstance(vectors, np.ndarray):
        return vectors
    column = np.empty(len(vectors), dtype=object)
    column[:] = vectors
    return column


class ChunkEmbedder(Embedder):
    """The extract engine's stage: input rows are chunks {start, texts}, output rows are texts
    {index, embedding, threads, pid}. One chunk is one model.encode call, as in the local engine, so the
    sort-by-length batching inside it, and with it every rounding, is the same.

    A chunk whose encoding raises is tried again up to `retries` times on the same actor (a MiniBertError,
    which says the input or options are wrong, is not). A chunk whose actor dies is Ray Data's to retry: its
    actor pool restarts dead actors and reruns their tasks (max_restarts and max_task_retries default to -1).
    Ray's own retry of raised errors is not used: DataContext.actor_task_retry_on_errors retries without end
    under those defaults (and the map_batches remote args that could bound it are deprecated as of Ray
    2.60), and the bounded DataContext.retried_map_errors/max_map_retries exist only in the newest releases;
    this loop is the same bounded retry, on the same actor, on any version.
    """

    def __init__(self, model=None, *, config_sha256=None, retries=3, **options):
        super().__init__(model, text_column="texts", **options)
        self.retries = retries
        if config_sha256 is not None:
            found = self.model.config_sha256
            if found != config_sha256:
                raise MiniBertError(f"this Ray worker's model {self.model.source} (config sha256 {found}) is not "
                                    f"the driver's (config sha256 {config_sha256}): install the same model on "
                                    "every node, or pass a hub id or a shared path with --model")
        self.pid = os.getpid()

    def encode_chunk(self, start, texts):
        return self.encode(texts)

    def encode_with_retries(self, start, texts):
        for attempt in range(self.retries + 1):
            try:
                return self.encode_chunk(start, texts)
            except MiniBertError:
                raise
            except Exception as e:
                if attempt == self.retries:
                    raise
                warnings.warn(f"minibert: the chunk at row {start} failed ({type(e).__name__}: {e}); "
                              f"retry {attempt + 1} of {self.retries}")

    def __call__(self, batch):
        index, vectors = [], []
        for start, texts in zip(batch["start"], batch["texts"]):
            encoded = self.encode_with_retries(int(start), texts)
            index.append(np.arange(start, start + len(texts), dtype=np.int64))
            vectors.append(encoded)
        if self.options["pooling"] == "none":
            column = as_column([v for chunk in vectors for v in chunk])
        else:
            column = np.concatenate(vectors)
        n = sum(len(i) for i in index)
        threads = current_threads()
        return {"index": np.concatenate(index), "embedding": column,
                "threads": np.full(n, threads, dtype=np.int32), "pid": np.full(n, self.pid, dtype=np.int64)}


class OrderedRows:
    """encode_range(start, stop) for minibert.corpus.extract.extract, served from a stream of row blocks that must
    carry the indexes first, first + 1, ..., total - 1 exactly once and in order.

    `open_stream(first)` is called on the first request and yields (index [n], values [n, ...] or a list of
    n arrays). Every block's indexes are checked as they arrive; a gap, repeat or reordering raises
    MiniBertError before any of it is written, and so do rows missing at the end or rows past it.
    """

    def __init__(self, open_stream, total):
        self._open, self._total = open_stream, total
        self._blocks = None
        self._expected = None          # the index the next arriving row must carry
        self._position = None          # the index of the first row in _pending
        self._pending = []             # [(values)] of rows not yet served, in order

    def _pull(self):
        """The next non-empty block's values, after checking its indexes."""
        for index, values in self._blocks:
            index = np.asarray(index)
            if len(index) == 0:
                continue
            if len(values) != len(index):
                raise MiniBertError(f"the Ray run returned a block of {len(index)} indexes and {len(values)} rows")
            if self._expected + len(index) > self._total:
                raise MiniBertError(f"the Ray run returned rows past the end of the {self._total} texts "
                                    f"(up to row {int(index[-1])}): rows were duplicated")
            wrong = np.flatnonzero(index != np.arange(self._expected, self._expected + len(index)))
            if wrong.size:
                k = int(wrong[0])
                raise MiniBertError(f"the Ray run returned row {int(index[k])} where row {self._expected + k} was "
                                    "due: rows were duplicated, lost or reordered; nothing was marked complete")
            self._expected += len(index)
            return values
        raise MiniBertError(f"the Ray run ended after {self._expected} of {self._total} rows: "
                            f"{self._total - self._expected} are missing; nothing was marked complete")

    def _take(self, n):
        """The next n rows, as pieces of the arriving blocks."""
        out = []
        while n > 0:
            if not self._pending:
                self._pending.append(self._pull())
            values = self._pending[0]
            k = min(n, len(values))
            out.append(values[:k])
            if k == len(values):
                self._pending.pop(0)
            else:
                self._pending[0] = values[k:]
            self._position += k
            n -= k
        return out

    def __call__(self, start, stop):
        if self._blocks is None:
            self._blocks = iter(self._open(start))
            self._expected = self._position = start
        if start < self._position:
            raise MiniBertError(f"rows {start}..{stop} were asked for after row {self._position}: "
                                "ranges must increase")
        self._take(start - self._position)                     # rows of ranges the caller skipped
        out = self._take(stop - start)
        if stop == self._total:
            self.check_exhausted()
        if out and out[0].dtype != object:
            return np.concatenate(out)
        return [np.asarray(v) for part in out for v in part]   # token-level: one array per text

    def check_exhausted(self):
        for index, _ in self._blocks:
            if len(index):
                raise MiniBertError(f"the Ray run returned rows past the end of the {self._total} texts "
                                    f"(row {int(np.asarray(index)[0])}): rows were duplicated")


def check_reachable(address, timeout):
    """Fail fast, naming the address, when nothing listens there: ray.init itself can wait minutes."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise InputError(f"--address {address!r}: expected auto, HOST:PORT (the head's GCS port, 6379) or "
                         "ray://HOST:PORT (Ray Client, 10001)")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise MiniBertError(f"the Ray cluster at {address} cannot be reached within {timeout:g} s ({e}); check "
                            "the address and that the head node is up (`ray status` on it)") from None


def connect(address=None, *, timeout=30.0, quiet=False):
    """Join the cluster at `address`, or start a local one (this machine's CPUs, no dashboard) when None.
    Returns True when this call started the connection (the caller shuts it down), False when Ray was
    already initialised in this process (its connection is used as it is)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    level = logging.WARNING if quiet else logging.INFO
    if address is None:
        ray.init(include_dashboard=False, logging_level=level)
        return True
    check_reachable(address, timeout)
    try:
        ray.init(address=address, logging_level=level)
    except Exception as e:
        raise MiniBertError(f"cannot join the Ray cluster at {address}: {type(e).__name__}: {e}") from None
    return True


def ray_failure(error):
    """A Ray error as one readable line: the exception the stage raised, found in the remote traceback Ray
    carries as text (its original exception object does not cross back to the driver), not Ray's wrappers."""
    text = str(error)
    raised = [line for line in text.splitlines() if EXCEPTION_LINE.match(line) and not line.startswith("ray.")]
    if raised:
        return f"the Ray run failed: {raised[0].strip()}"             # the first is the root of the chain
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"the Ray run failed: {type(error).__name__}: {first}"


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b[^:\s]*: ")


def extract(texts, out_dir, *, model=None, backend="cpu", address=None, workers=None, cpus_per_worker=1,
            retries=3, connect_timeout=30.0, progress=None, embedder_class=ChunkEmbedder, **options):
    """`minibert extract --engine ray`: minibert.corpus.extract.extract with the encoding done on Ray actors.

    model: directory, hub id or None (default model), resolved by the driver for the manifest and by each
    worker for the encoding (the config hashes must agree). address: None starts a local Ray cluster;
    "auto", "HOST:6379" or "ray://HOST:10001" join one (ignored when Ray is already initialised here).
    workers: actors in the pool (default: the cluster's CPUs // cpus_per_worker); each holds a model and
    runs cpus_per_worker threads. retries: attempts after the first for a chunk whose encoding raised (a
    chunk whose actor died is rerun by Ray Data on a restarted actor, see ChunkEmbedder).
    options: those of minibert.corpus.extract.extract (layers, pooling, fmt, dtype, overwrite, source_file, ...).
    Returns the manifest, whose "engine" records the run.
    """
    import minibert
    from . import extract as local
    if options.get("sparse"):
        refuse_sparse()
    require_ray()
    if not (isinstance(cpus_per_worker, (int, float)) and cpus_per_worker > 0):
        raise InputError(f"cpus_per_worker must be a positive number, found {cpus_per_worker!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError(f"workers must be a positive int, found {workers!r}")
    # The driver only probes the output shape, counts tokens and writes: the numpy backend needs no compiling.
    driver_model = minibert.load(model, backend="numpy")
    engine = {"name": "ray", "address": address or "local", "model": model, "backend": backend,
              "chunk_rows": local.CHUNK, "cpus_per_worker": cpus_per_worker, "retries": retries}
    encoder_options = {k: options[k] for k in ("layers", "combine", "pooling", "normalize", "dtype", "batch_size",
                                               "max_length", "window", "stride") if k in options}
    state = {"started": False, "saved": None}
    seen = {"threads": set(), "pids": set()}

    def open_stream(first):
        """Runs on the first range extract asks for, after its own checks (overwrite, options) passed."""
        import ray
        state["started"] = connect(address, timeout=connect_timeout, quiet=progress is False)
        cluster_cpus = int(ray.cluster_resources().get("CPU", 0))
        n = workers or max(1, int(cluster_cpus // cpus_per_worker))
        if address is None and n * cpus_per_worker > cluster_cpus:
            raise InputError(f"{n} workers x {cpus_per_worker} CPUs do not fit this machine's {cluster_cpus} CPUs")
        engine["workers"] = n
        engine["ray_version"] = ray.__version__
        state["saved"] = configure_data_context(progress)
        chunk = local.CHUNK              # read now: the chunks must be the ranges extract asks for
        rows = [{"start": s, "texts": texts[s:s + chunk]} for s in range(first, len(texts), chunk)]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))   # a block per chunk: even load
        ds = ds.map_batches(
            # One chunk in flight per actor: a chunk is tens of seconds of work, and queueing a second one on
            # the first actor to come up would leave the others idle (at 2 chunks and 2 workers, no speed-up).
            embedder_class, batch_size=1, num_cpus=cpus_per_worker,
            compute=ray.data.ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=1),
            num_gpus=1 if backend == "cuda" else None,
            fn_constructor_kwargs={"model": model, "backend": backend, "retries": retries,
                                   "config_sha256": driver_model.config_sha256,
                                   **encoder_options})
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                seen["threads"].update(np.unique(batch["threads"]).tolist())
                seen["pids"].update(np.unique(batch["pid"]).tolist())
                yield batch["index"], batch["embedding"]
        except Exception as e:
            if isinstance(e, ray.exceptions.RayError) or type(e).__module__.startswith("ray."):
                raise MiniBertError(ray_failure(e)) from e     # a remote error: its message, not its traceback
            raise
        engine["threads_per_worker"] = sorted(seen["threads"])
        engine["actor_processes"] = len(seen["pids"])

    ranges = OrderedRows(open_stream, len(texts))
    try:
        return local.extract(driver_model, texts, out_dir, **options, progress=progress, encode_range=ranges,
                             engine=engine)
    finally:
        if state["saved"] is not None:
            restore_data_context(state["saved"])
        if state["started"]:
            import ray
            ray.shutdown()


def refuse_sparse():
    """The actors return dense blocks (an embedding column of equal rows); SPLADE rows differ in length."""
    raise InputError("--engine ray extracts dense vectors only; extract SPLADE vectors (--sparse, sparse=True) "
                     "with the local engine: leave out --engine ray")


def configure_data_context(progress):
    """Ray Data settings for the run (a Dataset copies them when it is made); returns what they were.
    Order is preserved so that the driver writes rows as they come, holding at most the blocks Ray Data
    has finished ahead of the next one due."""
    from ray.data import DataContext
    ctx = DataContext.get_current()
    saved = {"preserve_order": ctx.execution_options.preserve_order,
             "enable_progress_bars": ctx.enable_progress_bars}
    ctx.execution_options.preserve_order = True
    if progress is False:
        ctx.enable_progress_bars = False
    return saved


def restore_data_context(saved):
    from ray.data import DataContext
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = saved["preserve_order"]
    ctx.enable_progress_bars = saved["enable_progress_bars"]
