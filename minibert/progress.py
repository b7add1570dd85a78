"""Progress reports for long runs: a tqdm bar on a terminal; a log line every so often otherwise, so a run
under nohup, a scheduler or CI still says how far it is without filling its log with a bar's carriage
returns. RowProgress for an extraction (rows, rate, ETA); reporter() for fine-tuning (steps, the running
loss: the mean of the epoch's step losses so far, what the epoch's train_loss will be, since one batch's
loss jumps with what the batch holds).
"""

import sys
import time


def format_seconds(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class RowProgress:
    """Rows done out of `total`, starting at `done` (a resumed run counts its rate from where it resumed).

    show: None picks by the stream (a bar on a terminal, log lines elsewhere), True forces the bar, False
    reports nothing. Use as a context manager; call advance(rows_now_done) after each step."""

    def __init__(self, total, done=0, *, show=None, what="rows", label="minibert extract", interval=30.0,
                 stream=None, clock=time.monotonic):
        self.total, self.start_rows, self.rows = total, done, done
        self.what, self.label, self.interval, self.clock = what, label, interval, clock
        self.stream = sys.stderr if stream is None else stream
        self.started = self.last_line = clock()
        self.bar = None
        self.lines = show is None and not is_terminal(self.stream)
        if show or (show is None and not self.lines):
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=done, desc=label, unit=what[:-1] if what.endswith("s") else what,
                            file=self.stream, dynamic_ncols=True)

    def advance(self, rows):
        if self.bar is not None:
            self.bar.update(rows - self.rows)
        self.rows = rows
        now = self.clock()
        if self.lines and now - self.last_line >= self.interval and rows < self.total:
            self.last_line = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now):
        elapsed = now - self.started
        rate = (self.rows - self.start_rows) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {format_seconds((self.total - self.rows) / rate)}" if rate > 0 else ""
        return (f"{self.label}: {self.rows}/{self.total} {self.what} ({self.rows / max(self.total, 1):.0%}), "
                f"{rate:.1f} {self.what}/s, {format_seconds(elapsed)} elapsed{eta}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False

def is_terminal(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):     # no isatty, or a closed stream
        return False


class LineReporter:
    """A line at each epoch's first and last step, and between them whenever `interval` seconds have gone
    by since the last line:  epoch 2/3 step 31/60 loss 0.4123 running 0.5012 lr 1.20e-05"""

    def __init__(self, stream, total_steps, epochs, *, interval=10.0, clock=time.monotonic):
        self.stream, self.total_steps, self.epochs = stream, total_steps, epochs
        self.interval, self.clock = interval, clock
        self.last = None

    def step(self, *, epoch, step, loss, running, lr, epoch_end):
        now = self.clock()
        if self.last is None or epoch_end or now - self.last >= self.interval:
            print(f"epoch {epoch}/{self.epochs} step {step}/{self.total_steps} loss {loss:.4f} running "
                  f"{running:.4f} lr {lr:.2e}", file=self.stream, flush=True)
            self.last = now
        if epoch_end:
            self.last = None               # the next epoch's first step gets its line

    def message(self, text):
        print(text, file=self.stream, flush=True)

    def close(self):
        pass


class BarReporter:
    """One tqdm bar over every step of the run, the epoch in its description and the running loss after it."""

    def __init__(self, stream, total_steps, epochs, *, initial=0):
        from tqdm.auto import tqdm
        self.epochs = epochs
        self.bar = tqdm(total=total_steps, initial=initial, file=stream, unit="step", dynamic_ncols=True)

    def step(self, *, epoch, step, loss, running, lr, epoch_end):
        self.bar.set_description(f"epoch {epoch}/{self.epochs}", refresh=False)
        self.bar.set_postfix_str(f"loss {running:.4f} lr {lr:.1e}", refresh=False)
        self.bar.update(1)

    def message(self, text):
        self.bar.write(text, file=self.bar.fp)

    def close(self):
        self.bar.close()


class Silent:
    def step(self, **_):
        pass

    def message(self, text):
        pass

    def close(self):
        pass


def reporter(stream, total_steps, epochs, *, initial=0, interval=10.0):
    """A bar on a terminal, lines elsewhere, nothing for stream None."""
    if stream is None:
        return Silent()
    if is_terminal(stream):
        return BarReporter(stream, total_steps, epochs, initial=initial)
    return LineReporter(stream, total_steps, epochs, interval=interval)
