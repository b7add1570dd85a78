"""The `serve` command: an embedding server (minibert/serve/, docs/serving.md). Starlette and uvicorn are
imported only when it runs, so the rest of minibert never needs the `serve` extra.

    minibert serve [MODEL] [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--reranker DIR]
                   [--max-batch-tokens N] [--max-client-batch-size N] [--max-concurrent-requests N]
                   [--max-body-bytes N] [--body-timeout S] [--auto-truncate] [--threads N] [--graceful-timeout S]

SIGTERM or SIGINT: stop accepting, answer the requests already accepted (up to --graceful-timeout seconds),
exit 0.
"""

import argparse
import os
import signal
import sys

from ..embed.recipe import SPARSE_ENCODER
from ..errors import MiniBertError

INSTALL = "pip install 'minibert-numpy[serve]'"


def positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, found {text!r}")
    return value


def port_number(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 (any free port) to 65535, found {text!r}")
    return value


def add_commands(sub):
    add_serve(sub)


def add_serve(sub):
    p = sub.add_parser("serve", help="an embedding server: OpenAI's /v1/embeddings and text-embeddings-inference's "
                       "routes, batching across requests", epilog="example: minibert serve --port 8080 "
                       "(then: curl localhost:8080/embed -d '{\"inputs\": \"hello\"}' -H 'Content-Type: "
                       "application/json'); docs/serving.md")
    p.add_argument("model", nargs="?", default=None,
                   help="model directory or hub id (default: $MINIBERT_MODEL, else the bundled all-MiniLM-L6-v2)")
    p.add_argument("--backend", default="cpu", choices=["numpy", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only; 0.0.0.0 "
                   "for every interface, e.g. in a container)")
    p.add_argument("--port", type=port_number, default=8080, help="0 picks a free port (printed at start-up)")
    p.add_argument("--api-key", metavar="KEY", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: $MINIBERT_API_KEY, "
                        "else no key)")
    p.add_argument("--model-id", metavar="NAME", default=None,
                   help="the model's name in responses (default: the hub id or the folder's name)")
    p.add_argument("--reranker", metavar="DIR", default=None,
                   help="a cross-encoder directory (one output) to answer /rerank")
    p.add_argument("--max-batch-tokens", metavar="N", type=positive, default=16384,
                   help="tokens per forward batch after padding, rows x longest row (default 16384)")
    p.add_argument("--max-client-batch-size", metavar="N", type=positive, default=32,
                   help="inputs per request (default 32)")
    p.add_argument("--max-concurrent-requests", metavar="N", type=positive, default=512,
                   help="requests answered at once; more get 429 (default 512)")
    p.add_argument("--max-body-bytes", metavar="N", type=positive, default=2_000_000,
                   help="request body limit (default 2 MB)")
    p.add_argument("--body-timeout", metavar="S", type=positive, default=60,
                   help="seconds a request's body may take to arrive; slower gets 408 (default 60)")
    p.add_argument("--auto-truncate", action="store_true", help="truncate inputs over the model's limit when a "
                   "request does not say (OpenAI's route never says); default: refuse them (413)")
    p.add_argument("--threads", metavar="N", type=positive, default=None,
                   help="compute threads for the forward pass (default: NUMBA_NUM_THREADS, every core)")
    p.add_argument("--graceful-timeout", metavar="S", type=positive, default=30,
                   help="seconds to finish accepted requests after SIGTERM/SIGINT (default 30)")
    p.set_defaults(run=cmd_serve)


def cmd_serve(args):
    try:
        import uvicorn
        from ..serve.app import Limits, check_api_key, create_app
    except ImportError as e:
        raise MiniBertError(f"minibert serve needs the serve extra ({e.name} is missing): {INSTALL}") from None
    api_key = args.api_key if args.api_key is not None else (os.environ.get("MINIBERT_API_KEY") or None)
    check_api_key(api_key)                  # before the model loads: seconds of work for a refusal
    import minibert
    model = minibert.load(args.model, backend=args.backend, dtype=args.dtype)
    # As `minibert rerank` reads it: a sentence-transformers save may keep its classifier in a subfolder.
    reranker = minibert.load_cross_encoder(args.reranker).classifier if args.reranker else None
    limits = Limits(max_batch_tokens=args.max_batch_tokens, max_client_batch_size=args.max_client_batch_size,
                    max_concurrent_requests=args.max_concurrent_requests, max_body_bytes=args.max_body_bytes,
                    body_timeout=args.body_timeout, threads=args.threads, auto_truncate=args.auto_truncate)
    app = create_app(model, limits, reranker=reranker, api_key=api_key, model_id=args.model_id)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=args.graceful_timeout)
    if api_key is None and not is_loopback(args.host):
        print(f"minibert serve: warning: --host {args.host} listens beyond this machine and no --api-key is set: "
              "anyone who reaches the port can use the server (set --api-key or $MINIBERT_API_KEY)",
              file=sys.stderr, flush=True)
    server = make_server_class()(config, app.server, api_key is not None)
    # uvicorn handles SIGTERM/SIGINT while it runs (stop accepting, drain, shut down) and then raises the signal
    # again with the handlers it found: these, so that a drained shutdown exits 0 instead of dying by the signal.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    except SystemExit:                  # uvicorn's answer to an address it cannot bind, after logging why
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise MiniBertError(f"could not serve on {args.host}:{args.port} (the line above says why: an address in use "
                            "needs another --port)")
    print("minibert serve: stopped", file=sys.stderr, flush=True)


def is_loopback(host):
    """Whether `host` listens on this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:                  # a name: it may resolve to any interface
        return False


def startup_line(server, host, port, keyed):
    engine, limits, model = server.engine, server.limits, server.engine.model
    recipe = model.recipe
    shown = (f"{engine.pooling}" + "".join(f"+dense({d.path})" for d in recipe.dense)
             + ("+normalize" if recipe.normalize else ""))
    splade = model.splade_settings
    if recipe.kind == SPARSE_ENCODER:           # its vectors are /embed_sparse's, with the directory's settings
        shown = (f"splade({splade.pooling},{splade.activation}"
                 + (f",max_active_dims={splade.max_active_dims}" if splade.max_active_dims else "") + ")")
    return (f"minibert serve: listening on http://{host}:{port} model={server.model_id} ({model.source}) "
            f"backend={model.backend} threads={limits.threads or 'all'} dtype={model.dtype.__name__} "
            f"recipe={shown} dim={engine.dimension} "
            f"max_input_length={engine.max_input_length} max_batch_tokens={limits.max_batch_tokens} "
            f"max_client_batch_size={limits.max_client_batch_size} "
            f"max_concurrent_requests={limits.max_concurrent_requests} max_body_bytes={limits.max_body_bytes} "
            f"body_timeout={limits.body_timeout:g} auto_truncate={limits.auto_truncate} "
            f"api_key={'required' if keyed else 'none'}"
            + (f" reranker={server.reranker.source}" if server.reranker is not None else ""))


def make_server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, printing the start-up line once the socket is bound (the port 0 chose)."""

        def __init__(self, config, state, keyed):
            super().__init__(config)
            self.state, self.keyed = state, keyed

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                print(startup_line(self.state, host, port, self.keyed), file=sys.stderr, flush=True)
    return Server
