"""minibert's own threads, and NumPy's BLAS held to one thread while they run matmuls.

The "cpu" backend cuts each op into row pieces and runs them on `WORKERS`; each piece's matmul must run
on the thread that owns the piece, so the BLAS library's own thread pool is held to one thread meanwhile
(`BLAS`), and no idle BLAS thread spins on a core the next kernel needs. Nothing here knows about models
or kernels; analysis/lbfgs.py, the training loop and ray_data.py use the same handles.
"""

import itertools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor


def numba_threading_started():
    """Whether Numba has started its threading layer. Asking numba.get_num_threads() starts it (its
    thread pool and, with it, tens of MiB and a slower start), so minibert reads this flag first; it is a
    private attribute of numba, read in this one place only."""
    from numba.np.ufunc import parallel
    return bool(getattr(parallel, "_is_initialized", True))


def thread_count():
    """How many threads an op may use: numba.get_num_threads() (NUMBA_NUM_THREADS, or numba.set_num_threads
    at run time), without starting Numba's threading layer just to ask."""
    import numba
    if numba_threading_started():
        return numba.get_num_threads()
    return numba.config.NUMBA_NUM_THREADS


def set_thread_count(n):
    """Hold minibert's ops to n threads; returns the count in force. Before numba is imported this is
    NUMBA_NUM_THREADS itself (a fresh Ray actor's usual case), which keeps Numba's own thread pool unstarted;
    after, numba.set_num_threads (at most NUMBA_NUM_THREADS), which applies to the calling thread only."""
    n = max(1, int(n))             # a fractional CPU still needs one thread
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(n)
        return n
    import numba
    if numba.config.NUMBA_NUM_THREADS == n and not numba_threading_started():
        return n                   # already right, and Numba's own thread pool is best left unstarted
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


class Workers:
    """Runs the pieces of one op on `thread_count()` threads: the calling thread and helper threads each take
    the next piece as they finish one, so a thread slowed by other programs on the machine just does fewer.

    The helpers sleep on a queue between ops (no spinning). Re-created after a fork.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._pool, self._size, self._pid = None, 0, None

    def _executor(self, helpers):
        with self._lock:
            if self._pool is None or self._pid != os.getpid() or self._size < helpers:
                if self._pool is not None and self._pid == os.getpid():
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="minibert")
                self._size, self._pid = helpers, os.getpid()
            return self._pool

    def run(self, function, pieces):
        """function(*piece) for every piece; returns when all are done. On an error the pieces not yet
        started are skipped and the first error is raised."""
        threads = min(len(pieces), thread_count())
        if threads <= 1:
            for piece in pieces:
                function(*piece)
            return
        claim = itertools.count()           # next() on it is atomic under the GIL
        errors = []

        def work():
            while not errors:
                i = next(claim)
                if i >= len(pieces):
                    return
                try:
                    function(*pieces[i])
                except BaseException as error:
                    errors.append(error)
                    return

        pool = self._executor(threads - 1)
        futures = [pool.submit(work) for _ in range(threads - 1)]
        try:
            work()
        finally:
            for future in futures:          # every piece has finished before the op returns
                future.result()
        if errors:
            raise errors[0]


WORKERS = Workers()


def split(n, parts, cost=None):
    """Cut range(n) into at most `parts` contiguous [lo, hi) ranges of about equal total cost."""
    import numpy as np
    parts = max(1, min(parts, n))
    if cost is None:
        bounds = [n * p // parts for p in range(parts + 1)]
    else:
        cumulative = np.concatenate([[0], np.cumsum(cost, dtype=np.float64)])
        targets = cumulative[-1] * np.arange(1, parts) / parts
        bounds = [0, *np.searchsorted(cumulative, targets, side="left").tolist(), n]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


class BlasThreads:
    """Holds the thread count of NumPy's BLAS at 1 while minibert runs matmuls on its own threads.

    The libraries are found by threadpoolctl (OpenBLAS under any of its symbol names, MKL, BLIS: whatever
    NumPy loaded), once, on first use. Nested and concurrent users share one hold; the counts the process
    had are put back when the last one leaves. `available` is False when threadpoolctl finds no BLAS it
    can control: then matmuls keep the BLAS's own threading and only the other work is split.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._libraries = None
        self._holders, self._saved = 0, None

    def libraries(self):
        """threadpoolctl's controllers of the BLAS libraries loaded in this process (found once)."""
        if self._libraries is None:
            try:
                import numpy  # noqa: F401  (the BLAS to find is the one NumPy loads)
                from threadpoolctl import ThreadpoolController
                self._libraries = ThreadpoolController().select(user_api="blas").lib_controllers
            except Exception:          # any surprise here only costs speed, never correctness
                self._libraries = []
        return self._libraries

    @property
    def available(self):
        return bool(self.libraries())

    def thread_counts(self):
        return [library.get_num_threads() for library in self.libraries()]

    def _set(self, counts):
        for library, count in zip(self.libraries(), counts):
            if count is None:
                continue
            # threadpoolctl lets only one "controlling" thread set a process-wide OpenBLAS pool; holds are
            # serialised by our lock, so whichever thread takes or releases the hold may set it.
            clear = getattr(library, "clear_controlling_thread", None)
            if clear is not None:
                clear(force=True)
            library.set_num_threads(count)

    def __enter__(self):
        if self.libraries():
            with self._lock:
                if self._holders == 0:
                    self._saved = self.thread_counts()
                    if any(count != 1 for count in self._saved):
                        self._set([1] * len(self._saved))
                self._holders += 1
        return self

    def __exit__(self, *exc):
        if self.libraries():
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and any(count not in (None, 1) for count in self._saved):
                    self._set(self._saved)
        return False


BLAS = BlasThreads()
