"""One progress report for a long run (a whole extraction): a tqdm bar with rate and ETA on a terminal; a
log line every `interval` seconds otherwise, so a run under nohup, a scheduler or CI still says how far
it is and when it will end without filling its log with bar redraws."""

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
        self.lines = show is None and not self.stream.isatty()
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
