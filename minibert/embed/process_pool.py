"""encode spread over worker processes: `pool = model.start_multi_process_pool(2)`, then
`model.encode(texts, pool=pool)`, and `pool.close()` (or `with model.start_multi_process_pool(2) as pool:`).

Each worker is a fresh process (multiprocessing's spawn start: no state forked mid-use, the same on every
platform) that loads the model from `model.source` with the parent's backend, dtype, recipe (max_seq_length
set on the model included) and truncate_dim, then encodes the chunks it is sent. Texts are cut into chunks in
order and the vectors put back in input order; in float64 they equal the single process's bit for bit
(minibert's float64 path gives the same bits whatever the batch). Weights changed in memory after load are
not what the workers use: they read the files.

Workers end on close(), when the `with` block ends, when an error is raised in any of them (the pool is
closed and the error raised in the caller), on Ctrl-C (they ignore SIGINT, so the caller's
KeyboardInterrupt decides, and the pool terminates them), and on their own when the parent process is gone.

When it helps: minibert's own threads already use every core for one encode, so on a machine with few cores
the pool mostly splits the same cores differently; it pays where one process cannot keep the cores busy
(short texts in small batches, the tokenizer and Python between ops) and on machines with many cores. The
scripts that start a pool need the `if __name__ == "__main__":` guard spawn asks for.
"""

import builtins
import math
import multiprocessing
import os
import queue
import signal
import warnings
import weakref

import numpy as np

from .. import errors
from ..errors import InputError, MiniBertError
from .encode import FIRST_ROW, encode, progress_bar
from .recipe import check_dense

POLL_SECONDS = 0.2          # how often a waiting parent checks that its workers are alive
JOIN_SECONDS = 5            # how long close() waits for a worker to finish before terminating it


def worker_spec(model, load) -> dict:
    """What a worker needs to rebuild the parent's model: files, backend, dtype, the recipe as it is now, and
    the function that loads it (minibert.load, passed in: api sits above this module and imports it)."""
    return {"source": model.source, "backend": model.backend, "dtype": np.dtype(model.dtype).name,
            "recipe": model.recipe, "truncate_dim": model.truncate_dim, "load": load}


def worker_main(spec, threads, tasks, results):
    """A worker's life: load, say ready, encode chunks until told to stop (None) or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C goes to the whole process group: the parent decides
    try:
        from ..backends.threads import set_thread_count
        set_thread_count(threads)
        model = spec["load"](spec["source"], backend=spec["backend"], dtype=spec["dtype"])
        model.recipe = spec["recipe"]
        model.truncate_dim = spec["truncate_dim"]
    except BaseException as e:           # noqa: BLE001 - reported to the parent, which raises it
        results.put(("failed", None, error_payload(e), []))
        return
    results.put(("ready", os.getpid(), None, []))
    parent = multiprocessing.parent_process()
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return
            continue
        if task is None:
            return
        chunk, first, texts, pairs, options = task
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            row = FIRST_ROW.set(first)           # warnings name the input's rows, not the chunk's
            try:
                vectors = model.encode(texts, text_pairs=pairs, progress=False, **options)
            except BaseException as e:   # noqa: BLE001
                results.put(("failed", chunk, error_payload(e), []))
                continue
            finally:
                FIRST_ROW.reset(row)
        results.put(("done", chunk, vectors, [(str(w.message), w.category.__name__) for w in caught]))


def error_payload(e):
    return type(e).__name__, str(e)


def raise_payload(payload, where):
    """The worker's error raised here, as its minibert class where it has one."""
    name, message = payload
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, MiniBertError)):
        cls, message = MiniBertError, f"{name}: {message}"
    raise cls(f"{message} ({where})")


class ProcessPool:
    """Worker processes that each hold the model; see the module's doc. Made by Model.start_multi_process_pool."""

    def __init__(self, model, load, processes=None, *, threads_per_process=None):
        from ..backends.threads import thread_count
        processes = (os.cpu_count() or 1) if processes is None else processes
        if isinstance(processes, bool) or not isinstance(processes, (int, np.integer)) or processes < 1:
            raise InputError(f"processes must be an int >= 1, found {processes!r}")
        if threads_per_process is not None and (isinstance(threads_per_process, bool) or
                                                not isinstance(threads_per_process, (int, np.integer))
                                                or threads_per_process < 1):
            raise InputError(f"threads_per_process must be an int >= 1 or None (the cores shared out), found "
                             f"{threads_per_process!r}")
        threads = threads_per_process or max(1, thread_count() // processes)
        context = multiprocessing.get_context("spawn")
        self.tasks, self.results = context.Queue(), context.Queue()
        self.spec = worker_spec(model, load)
        self.workers = [context.Process(target=worker_main, args=(self.spec, threads, self.tasks, self.results),
                                        daemon=True, name=f"minibert-encode-{i}") for i in range(processes)]
        self.closed = False
        # Ends the workers even when the pool is dropped without close() (the interpreter exits, an exception).
        self._finalizer = weakref.finalize(self, end_workers, self.workers, self.tasks, self.results, 0)
        try:
            for worker in self.workers:
                worker.start()
            for _ in self.workers:
                kind, _, payload, _ = self.next_result("starting")
                if kind == "failed":
                    raise_payload(payload, "while a worker process loaded the model")
        except BaseException:
            self.terminate()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else f"{len(self.workers)} worker processes"
        return f"minibert.ProcessPool({self.spec['source']!r}, {state})"

    @property
    def pids(self) -> list:
        return [w.pid for w in self.workers]

    def next_result(self, doing):
        """The next message from a worker; a MiniBertError when a worker died, even if the others could go on:
        a pool that lost a worker is broken (a chunk it held would never come back), so it is reported at once."""
        while True:
            try:
                message = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                message = None
            if message is not None and message[0] == "failed":
                return message                  # the worker's own error says more than its exit code
            dead = [w for w in self.workers if w.exitcode is not None]
            if dead:
                last = self.last_words()        # an error it sent as it ended may still be on its way
                if last is not None and last[0] == "failed":
                    return last
                self.raise_dead(dead, doing)
            if message is not None:
                return message

    def last_words(self):
        try:
            return self.results.get(timeout=POLL_SECONDS)
        except queue.Empty:
            return None

    @staticmethod
    def raise_dead(dead, doing):
        code = dead[0].exitcode
        why = ("killed by a signal: out of memory?" if code < 0 else
               "its error is printed above; a script needs `if __name__ == \"__main__\":` for spawn")
        raise MiniBertError(f"worker process {dead[0].pid} exited with code {code} while {doing} ({why}); "
                            "the pool is closed")

    def encode(self, texts, text_pairs=None, *, chunk_size=None, progress=None, **options):
        """model.encode(texts, **options) over the workers: the per-text results in input order, an array
        [N, ...] (a list for pooling="none"). progress: as encode's, over the whole input."""
        if self.closed:
            raise InputError("this process pool is closed; start another with model.start_multi_process_pool()")
        N = len(texts)
        if chunk_size is None:
            chunk_size = min(5000, max(1, math.ceil(N / (4 * len(self.workers)))))
        elif isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise InputError(f"chunk_size must be an int >= 1, found {chunk_size!r}")
        starts = list(range(0, N, chunk_size))
        done, pieces = 0, {}
        try:
            for chunk, start in enumerate(starts):
                pairs = None if text_pairs is None else text_pairs[start:start + chunk_size]
                self.tasks.put((chunk, start, texts[start:start + chunk_size], pairs, options))
            for _ in progress_bar(range(len(starts)), progress, N) if not callable(progress) else range(len(starts)):
                kind, chunk, payload, caught = self.next_result("encoding")
                for message, category in caught:      # the workers' warnings, in the caller
                    errors.warn_caller(message, getattr(builtins, category, UserWarning))
                if kind == "failed":
                    first = starts[chunk]
                    raise_payload(payload, f"in a worker process, texts {first}-{min(first + chunk_size, N) - 1}")
                pieces[chunk] = payload
                done += len(payload)
                if callable(progress):
                    progress(done, N)
        except BaseException:
            self.terminate()        # an error or Ctrl-C: nothing left running, no chunk half-answered
            raise
        ordered = [pieces[i] for i in range(len(starts))]
        if isinstance(ordered[0], list):
            return [vector for piece in ordered for vector in piece]
        return np.concatenate(ordered)

    def close(self):
        """Ask the workers to finish, wait for them a little, terminate those that do not."""
        if not self.closed:
            self.closed = True
            self._finalizer.detach()
            end_workers(self.workers, self.tasks, self.results, JOIN_SECONDS)

    def terminate(self):
        """End the workers now."""
        if not self.closed:
            self.closed = True
            self._finalizer.detach()
            end_workers(self.workers, self.tasks, self.results, 0)


def start_pool(model, load, processes=None, threads_per_process=None):
    """Model.start_multi_process_pool: processes is a count, or as sentence-transformers' target_devices a
    list of "cpu" (one process each)."""
    if isinstance(processes, (list, tuple)):
        if not processes or any(device != "cpu" for device in processes):
            raise InputError(f"target devices {processes!r}: minibert's pool runs on CPU processes; pass a "
                             "count, or a list of 'cpu'")
        processes = len(processes)
    return ProcessPool(model, load, processes, threads_per_process=threads_per_process)


def encode_in_pool(model, pool, texts, text_pairs, chunk_size, progress, capture, **options):
    """Model.encode(..., pool=): the pool checked against the model, the texts sent to its workers."""
    from ..tokenizer import as_text_list
    if not isinstance(pool, ProcessPool):
        raise InputError(f"pool must come from model.start_multi_process_pool(), found {type(pool).__name__}")
    if pool.spec["source"] != model.source:
        raise InputError(f"this pool holds {pool.spec['source']}, not this model ({model.source})")
    if capture is not None:
        raise InputError("capture= is not supported with pool=: encode without the pool to capture internals")
    check_dense(model, options.get("pooling"))          # here, not in every worker
    texts = as_text_list(texts, "texts")
    if text_pairs is not None:
        text_pairs = as_text_list(text_pairs, "text_pairs")
    if not texts:
        return encode(model, texts, **{k: v for k, v in options.items() if k != "truncate_dim"})
    return pool.encode(texts, text_pairs, chunk_size=chunk_size, progress=progress, **options)


def end_workers(workers, tasks, results, wait):
    """Stop each worker (None on the queue; terminate, then kill, whoever has not ended) and free the queues."""
    for worker in workers:
        if worker.is_alive() and wait:
            try:
                tasks.put(None)
            except (OSError, ValueError):
                pass
    for worker in workers:
        if worker.pid is None:                  # never started
            continue
        worker.join(wait)
        if worker.is_alive():
            worker.terminate()
            worker.join(JOIN_SECONDS)
        if worker.is_alive():
            worker.kill()
            worker.join()
    for q in (tasks, results):
        q.cancel_join_thread()                  # items nobody will read must not block the parent's exit
        q.close()
