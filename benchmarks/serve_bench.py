"""Requests per second and p50/p99 latency of `minibert serve` at 1, 8 and 32 concurrent clients, short
(~12 tokens) and long (~200 tokens) inputs, over OpenAI's embeddings route; optionally the same load
against peers serving the same model on the same machine:

    python benchmarks/serve_bench.py                                   # minibert serve, the bundled model
    python benchmarks/serve_bench.py --infinity /venv-inf/bin/python   # + infinity-emb (torch)
    python benchmarks/serve_bench.py --st /venv-st/bin/python          # + sentence-transformers, minimal server

Each server runs in its own process, started and stopped here, on 127.0.0.1; its peak resident memory
(VmHWM) is read from /proc at the end. Peers' environments: install torch first and pinned
(`pip install torch==2.13.0`, the CPU wheel; an unpinned torch pulls a multi-GB CUDA build), then
`infinity-emb[server]` or `sentence-transformers`. The clients share the machine with the server: on a
small machine, read the numbers as a comparison between servers, not as the server's capacity.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

SHORT = "The quick brown fox jumps over the lazy dog near the river."             # ~12 tokens + specials
LONG = " ".join(["Embedding servers batch concurrent requests so that the matrix multiplications stay large, "
                 "which keeps every core busy while each client waits only for its own texts."] * 7)  # ~200 tokens


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, process, timeout):
    """Until the server answers `url` with anything but a server error (a peer's route may differ)."""
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode} before answering")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"no answer from {url} within {timeout} s")


def start_minibert(model, threads, extra):
    port = free_port()
    command = [sys.executable, "-m", "minibert", "serve", "--port", str(port), *extra] + ([model] if model else [])
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)} if threads else None
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    return process, f"http://127.0.0.1:{port}", "/v1/embeddings", "/health"


def start_infinity(python, model, threads, options):
    """infinity-emb's server (its `infinity_emb v2` command beside `python`), OpenAI's route under /v1. Its
    command line has changed between releases: --infinity-options replaces the engine options given here."""
    port = free_port()
    command = [os.path.join(os.path.dirname(python), "infinity_emb"), "v2", "--model-id", model, "--port", str(port),
               "--host", "127.0.0.1", "--url-prefix", "/v1", *options.split()]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    return process, f"http://127.0.0.1:{port}", "/v1/embeddings", "/v1/models"


def start_st(python, model, threads):
    port = free_port()
    command = [python, os.path.abspath(__file__), "--st-server", model, "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    return process, f"http://127.0.0.1:{port}", "/v1/embeddings", "/health"


def st_server(model, port):
    """sentence-transformers behind the standard library's threaded HTTP server: one encode per request (no
    batching across requests, as a user's own minimal server does), under a lock."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sentence_transformers import SentenceTransformer
    encoder, lock = SentenceTransformer(model, device="cpu"), threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            with lock:
                vectors = encoder.encode(texts)
            data = json.dumps({"object": "list", "model": model, "data": [
                {"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def peak_memory_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            found = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
        return int(found.group(1)) / 1024 if found else None
    except OSError:
        return None


def load(url, route, text, clients, requests, texts_per_request):
    """`clients` threads, each sending `requests` requests one after another on its own connection ->
    (requests per second, latencies in seconds, failures)."""
    import httpx
    latencies, failures = [], []
    body = {"input": [text] * texts_per_request, "model": "bench", "encoding_format": "float"}

    def client():
        with httpx.Client(base_url=url, timeout=600) as http:
            for _ in range(requests):
                started = time.perf_counter()
                answer = http.post(route, json=body)
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    failures.append(answer.status_code)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return clients * requests / (time.perf_counter() - started), sorted(latencies), failures


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: the bundled all-MiniLM-L6-v2; peers need "
                   "a directory or hub id they can load)")
    p.add_argument("--clients", default="1,8,32", help="comma-separated concurrent clients")
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--inputs", default="short,long")
    p.add_argument("--threads", type=int, default=None, help="compute threads per server (default: every core)")
    p.add_argument("--minibert-options", default="", help="more `minibert serve` flags, e.g. '--max-batch-tokens 8192'")
    p.add_argument("--infinity", metavar="PYTHON", help="a python with infinity-emb[server] installed")
    p.add_argument("--infinity-options", default="--engine torch --device cpu",
                   help="infinity's engine options (default: %(default)s)")
    p.add_argument("--st", metavar="PYTHON", help="a python with sentence-transformers installed")
    p.add_argument("--startup-timeout", type=int, default=300)
    p.add_argument("--json", action="store_true", help="one JSON document of the results")
    p.add_argument("--st-server", metavar="MODEL", help=argparse.SUPPRESS)    # the peer server, in its python
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.st_server:
        return st_server(args.st_server, args.port)
    model = args.model
    if (args.infinity or args.st) and model is None:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from minibert.api import default_model_dir
        model = str(default_model_dir())
    servers = [("minibert", lambda: start_minibert(model, args.threads, args.minibert_options.split()))]
    if args.infinity:
        servers.append(("infinity", lambda: start_infinity(args.infinity, model, args.threads, args.infinity_options)))
    if args.st:
        servers.append(("sentence-transformers", lambda: start_st(args.st, model, args.threads)))
    inputs = {"short": SHORT, "long": LONG}
    results = []
    for name, start in servers:
        process, url, route, health = start()
        try:
            wait_ready(url + health, process, args.startup_timeout)
            load(url, route, SHORT, 1, 3, 1)                                    # warm-up
            for input_name in args.inputs.split(","):
                for clients in map(int, args.clients.split(",")):
                    rate, latencies, failures = load(url, route, inputs[input_name], clients, args.requests,
                                                     args.texts_per_request)
                    row = {"server": name, "input": input_name, "clients": clients, "requests_per_s": round(rate, 2),
                           "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
                           "p99_ms": round(1000 * percentile(latencies, 0.99), 1), "failures": len(failures)}
                    results.append(row)
                    if not args.json:
                        print(f"{name:22} {input_name:5} {clients:3} clients  {row['requests_per_s']:8.2f} req/s  "
                              f"p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms"
                              + (f"  {len(failures)} failed" if failures else ""), flush=True)
            memory = peak_memory_mib(process.pid)
            for row in results:
                if row["server"] == name:
                    row["peak_rss_mib"] = memory
            if not args.json:
                print(f"{name:22} peak resident memory {memory:.0f} MiB" if memory else f"{name}: memory unknown")
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    if args.json:
        print(json.dumps({"results": results, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                            time.gmtime())}))


if __name__ == "__main__":
    sys.exit(main())
