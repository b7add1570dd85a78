"""The server's counters and histograms, written in Prometheus' text exposition format (version 0.0.4).

Updated from the event loop and from the batcher's worker thread, hence the lock.
"""

import threading

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKENS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Histogram:
    def __init__(self, bounds):
        self.bounds, self.counts, self.total, self.count = bounds, [0] * len(bounds), 0.0, 0

    def observe(self, value):
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name, labels=""):
        sep = "," if labels else ""
        for bound, count in zip(self.bounds, self.counts):
            yield f'{name}_bucket{{{labels}{sep}le="{bound}"}} {count}'
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}'
        yield f"{name}_sum{{{labels}}} {self.total}" if labels else f"{name}_sum {self.total}"
        yield f"{name}_count{{{labels}}} {self.count}" if labels else f"{name}_count {self.count}"


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}                       # (route, status) -> count
        self.latency = {}                        # route -> Histogram of seconds
        self.tokens = 0                          # input tokens embedded (the tokenizer's count)
        self.inputs = 0                          # input texts or id lists embedded
        self.in_flight = 0
        self.batch_rows, self.batch_tokens = Histogram(ROWS), Histogram(TOKENS)
        self.largest_batch_tokens = 0            # the largest forward batch, rows x longest row
        self.queue = Histogram(SECONDS)

    def observe_request(self, route, status, seconds):
        with self.lock:
            self.requests[route, status] = self.requests.get((route, status), 0) + 1
            self.latency.setdefault(route, Histogram(SECONDS)).observe(seconds)

    def observe_inputs(self, inputs, tokens):
        with self.lock:
            self.inputs += inputs
            self.tokens += tokens

    def observe_batch(self, rows, padded_tokens):
        with self.lock:
            self.batch_rows.observe(rows)
            self.batch_tokens.observe(padded_tokens)
            self.largest_batch_tokens = max(self.largest_batch_tokens, padded_tokens)

    def observe_queue(self, seconds):
        with self.lock:
            self.queue.observe(seconds)

    def text(self) -> str:
        with self.lock:
            lines = ["# HELP minibert_requests_total HTTP requests answered, by route and status code.",
                     "# TYPE minibert_requests_total counter"]
            lines += [f'minibert_requests_total{{route="{route}",status="{status}"}} {count}'
                      for (route, status), count in sorted(self.requests.items())]
            lines += ["# HELP minibert_request_duration_seconds Time from request to response, by route.",
                      "# TYPE minibert_request_duration_seconds histogram"]
            for route, histogram in sorted(self.latency.items()):
                lines += histogram.lines("minibert_request_duration_seconds", f'route="{route}"')
            lines += ["# HELP minibert_inputs_total Texts and token-id lists embedded.",
                      "# TYPE minibert_inputs_total counter", f"minibert_inputs_total {self.inputs}",
                      "# HELP minibert_input_tokens_total Tokens of the inputs embedded (before padding).",
                      "# TYPE minibert_input_tokens_total counter", f"minibert_input_tokens_total {self.tokens}",
                      "# HELP minibert_requests_in_flight Inference requests being answered now.",
                      "# TYPE minibert_requests_in_flight gauge", f"minibert_requests_in_flight {self.in_flight}",
                      "# HELP minibert_batch_rows Rows per forward batch.", "# TYPE minibert_batch_rows histogram",
                      *self.batch_rows.lines("minibert_batch_rows"),
                      "# HELP minibert_batch_tokens Tokens per forward batch after padding (rows x longest row).",
                      "# TYPE minibert_batch_tokens histogram", *self.batch_tokens.lines("minibert_batch_tokens"),
                      "# HELP minibert_batch_tokens_max The largest forward batch so far, tokens after padding.",
                      "# TYPE minibert_batch_tokens_max gauge",
                      f"minibert_batch_tokens_max {self.largest_batch_tokens}",
                      "# HELP minibert_queue_seconds Time a request waited for its first forward batch.",
                      "# TYPE minibert_queue_seconds histogram", *self.queue.lines("minibert_queue_seconds")]
        return "\n".join(lines) + "\n"
