"""How a fine-tuning run reports itself while it runs: a tqdm bar with the running loss when the stream is a
terminal, a log line every so often when it is not (a file, a pipe, a CI log, where a bar's carriage
returns would pile up into one unreadable line).

The running loss is the mean of the epoch's step losses so far: one batch's loss jumps with what the
batch holds, and the mean is what the epoch's train_loss will be.
"""

import time


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
