"""Batching across requests: rows from every waiting request are sorted by length and cut into forward
batches of at most `max_batch_tokens` tokens after padding (rows x longest row), run one at a time on a
worker thread, never on the event loop.

A round takes every request waiting when it starts; requests that arrive during a round wait for the
next. The queue is bounded by the server's limit on concurrent requests, not here.
"""

import threading
import time
from concurrent.futures import Future


class Job:
    """One request's rows and the Future its handler awaits: the outputs in row order."""

    def __init__(self, rows):
        self.rows, self.outputs, self.left = rows, [None] * len(rows), len(rows)
        self.future, self.enqueued, self.started = Future(), time.perf_counter(), None


def plan(entries, budget):
    """(length, item) pairs sorted by length -> batches whose padded size len(batch) x longest <= budget.
    Sorted ascending, a row is the longest of its batch so far. A row longer than the budget alone is the
    caller's to refuse (the server checks max_batch_tokens >= the model's input limit at start)."""
    batches, current = [], []
    for length, item in entries:
        if current and (len(current) + 1) * length > budget:
            batches.append(current)
            current = []
        current.append(item)
    return batches + ([current] if current else [])


class Batcher:
    def __init__(self, forward, max_batch_tokens, metrics, threads=None):
        self.forward, self.budget, self.metrics, self.threads = forward, max_batch_tokens, metrics, threads
        self.waiting, self.stopping = [], False
        self.ready = threading.Condition()
        self.thread = threading.Thread(target=self.loop, name="minibert-batcher", daemon=True)

    def start(self):
        self.thread.start()

    def submit(self, rows) -> Future:
        job = Job(rows)
        with self.ready:
            if self.stopping:
                raise RuntimeError("the server is shutting down")
            self.waiting.append(job)
            self.ready.notify()
        return job.future

    def stop(self):
        """Finish every job already submitted, then end the worker."""
        with self.ready:
            self.stopping = True
            self.ready.notify()
        self.thread.join()

    def loop(self):
        if self.threads is not None:        # Numba's thread count is set per calling thread: this one runs the model
            from ..backends.threads import set_thread_count
            set_thread_count(self.threads)
        while True:
            with self.ready:
                while not self.waiting and not self.stopping:
                    self.ready.wait()
                if not self.waiting:
                    return
                jobs, self.waiting = self.waiting, []
            self.run_round(jobs)

    def run_round(self, jobs):
        entries = sorted(((len(row.ids), (job, i)) for job in jobs for i, row in enumerate(job.rows)),
                         key=lambda entry: entry[0])
        for batch in plan(entries, self.budget):
            rows = [job.rows[i] for job, i in batch]
            now = time.perf_counter()
            for job, _ in batch:
                if job.started is None:
                    job.started = now
                    self.metrics.observe_queue(now - job.enqueued)
            try:
                outputs = self.forward(rows)
            except Exception as e:                  # a fault of the model, not of one request: each caller hears it
                for job in {job for job, _ in batch}:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            self.metrics.observe_batch(len(rows), len(rows) * max(len(row.ids) for row in rows))
            for (job, i), output in zip(batch, outputs):
                job.outputs[i] = output
                job.left -= 1
                if job.left == 0 and not job.future.done():
                    job.future.set_result(job.outputs)
