"""The HTTP routes: OpenAI's embeddings API and text-embeddings-inference's (TEI), answering in their shapes.

    POST /v1/embeddings   OpenAI           GET /v1/models
    POST /embed (and /)  /embed_all  /embed_sparse  /rerank  /tokenize   GET /health  /info  /metrics   TEI

Errors: OpenAI's {"error": {"message", "type", "param", "code"}} under /v1/, TEI's {"error", "error_type"}
elsewhere, never a traceback. Status codes: 400 malformed JSON, empty input or a bad token id (and every
refusal under /v1/, as OpenAI), 422 a wrong field on TEI's routes (as its JSON extractor), 401 missing or
wrong key, 404 unknown route, 405 wrong method, 408 a body slower than --body-timeout, 413 body, client
batch or input over a limit, 429 past --max-concurrent-requests, 422 /embed_sparse on a model without a
masked-LM head, 503 a request still running when --graceful-timeout ends a shutdown.
"""

import asyncio
import base64
import hmac
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import InputError, ModelFileError
from .batcher import Batcher
from .engine import Engine, TooLong, cut_dimensions, tokens_of
from .metrics import Metrics
from .requests import ApiError, error_response, option, parse_inputs, read_json, refusal


@dataclass(frozen=True)
class Limits:
    max_batch_tokens: int = 16384          # TEI's defaults
    max_client_batch_size: int = 32
    max_concurrent_requests: int = 512
    max_body_bytes: int = 2_000_000
    body_timeout: float = 60.0             # seconds a request's body may take to arrive (408 after)
    threads: object = None                 # compute threads for the forward pass; None: NUMBA_NUM_THREADS (every core)
    auto_truncate: bool = False            # truncate over-long texts when a request does not say (OpenAI's route)


# ---- the application ---------------------------------------------------------------------------------------

class Server:
    """What the routes share: the engine, the batcher, the metrics, the limits."""

    def __init__(self, model, limits, reranker=None, model_id=None, log=None):
        self.engine, self.limits, self.reranker, self.model = Engine(model), limits, reranker, model
        self.model_id = model_id or default_model_id(model)
        self.metrics = Metrics()
        self.batcher = Batcher(self.engine.forward, limits.max_batch_tokens, self.metrics, limits.threads)
        self.rerank_lock = threading.Lock()
        self.log = log if log is not None else (lambda line: print(line, file=sys.stderr, flush=True))
        if limits.max_batch_tokens < self.engine.max_input_length:
            raise InputError(f"--max-batch-tokens {limits.max_batch_tokens} is less than the model's input limit "
                             f"{self.engine.max_input_length}: one long input could never run")

    async def embed(self, rows):
        """Rows through the batcher -> their outputs, awaited without holding the event loop."""
        self.metrics.observe_inputs(len(rows), sum(len(row.ids) for row in rows))
        return await asyncio.wrap_future(self.batcher.submit(rows))

    async def rows(self, inputs, *, param, layer=None, normalize=None, **options):
        """Parsed inputs -> the engine's rows (texts tokenized in a worker thread: a long text never holds the
        event loop); the engine's refusals as ApiErrors naming the request's field."""
        kind, values, nested = inputs
        if kind == "ids" and options.get("prompt_name") is not None:     # ignoring it gave other vectors silently
            raise ApiError(422, "prompt_name applies to texts; token ids are the whole input as sent: send the "
                           "text, or put the prompt's ids in the sequence", "invalid", "prompt_name")
        try:
            if kind == "ids":
                return self.engine.id_rows(values, normalize=normalize, layer=layer, what=param, nested=nested)
            return await run_in_threadpool(self.engine.text_rows, values, normalize=normalize, layer=layer,
                                           what=param, nested=nested, **options)
        except TooLong as e:
            raise refusal(e, param) from None
        except InputError as e:        # an id outside the vocabulary is a 400 on every route, as a malformed id
            raise ApiError(400 if kind == "ids" else 422, str(e), "invalid", param) from None

    def rerank_logits(self, query, texts, truncate):
        """The reranker's logits [N, 1] for (query, text) pairs; pairs over its limit refused unless truncate."""
        classifier = self.reranker
        with self.rerank_lock:               # one reranker forward at a time, beside the embedding batches
            try:
                batch = classifier.tokenizer([query] * len(texts), texts, max_length=classifier.max_length)
                if not truncate and batch.truncated.any():
                    i = int(np.argmax(batch.truncated))
                    raise TooLong(f"the pair (query, texts[{i}]) has more than the reranker's "
                                  f"{classifier.max_length or classifier.tokenizer.max_length} tokens; set truncate")
                # The request asked for the cut: a warning would be a line in the server's log per request.
                return classifier.logits([query] * len(texts), texts, batch_size=len(texts), warn=False)
            except InputError as e:
                raise refusal(e, "texts") from None


def default_model_id(model):
    if model.origin:
        return model.origin["hub_id"]
    name = Path(model.source).name
    return "all-MiniLM-L6-v2" if name in ("model_files", "model") else name      # the bundled default model


def inference(handler):
    """A route that runs the model, given its JSON body: counted against --max-concurrent-requests once the
    body has arrived (a client slow to send it holds no slot), refused with 429 past the limit."""
    async def route(request):
        server = request.app.state.server

        def refuse_when_full():
            if server.metrics.in_flight >= server.limits.max_concurrent_requests:
                raise ApiError(429, f"the server is answering its limit of {server.limits.max_concurrent_requests}"
                               " requests (--max-concurrent-requests); retry shortly", "overloaded")
        refuse_when_full()                        # before reading: an overloaded server reads no more bodies
        body = await read_json(request, server.limits.max_body_bytes, server.limits.body_timeout)
        refuse_when_full()
        server.metrics.in_flight += 1             # only the event loop's thread changes it
        try:
            return await handler(body, server)
        finally:
            server.metrics.in_flight -= 1
    return route


async def json_reply(build):
    """A JSON response whose body `build()` makes, made and serialised on a worker thread: a batch of token
    vectors is millions of floats, seconds the event loop (and /health) must not wait."""
    def body():
        return json.dumps(build(), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return Response(await run_in_threadpool(body), media_type="application/json")


def vector_json(vector, encoding_format):
    if encoding_format == "base64":               # as OpenAI's API: the little-endian float32 bytes
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


@inference
async def openai_embeddings(body, server):
    encoding_format = option(body, "encoding_format", str, "float", choices=("float", "base64"))
    dimensions = option(body, "dimensions", int, None, low=1, high=server.engine.dimension)
    option(body, "model", str)                      # any name: the server serves one model
    option(body, "user", str)
    inputs = parse_inputs(body.get("input"), "input", server.limits.max_client_batch_size)
    # OpenAI's API has no truncate field: the server's flag is the only way to have long texts cut.
    rows = await server.rows(inputs, param="input", truncate=server.limits.auto_truncate,
                             remedy="shorten it, or start the server with --auto-truncate (OpenAI's API has no "
                             "truncate field)")
    vectors = await server.embed(rows)
    tokens = sum(len(row.ids) for row in rows)
    return await json_reply(lambda: {
        "object": "list", "model": server.model_id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "data": [{"object": "embedding", "index": i,
                  "embedding": vector_json(cut_dimensions(v, dimensions, row.want.normalize), encoding_format)}
                 for i, (v, row) in enumerate(zip(vectors, rows))]})


async def openai_models(request):
    server = request.app.state.server
    return JSONResponse({"object": "list", "data": [{"id": server.model_id, "object": "model", "created": 0,
                                                     "owned_by": "minibert"}]})


def tei_options(body, server):
    return {"truncate": option(body, "truncate", bool, server.limits.auto_truncate),
            "direction": option(body, "truncation_direction", str, "right", choices=("right", "left")),
            "prompt_name": option(body, "prompt_name", str)}


@inference
async def tei_embed(body, server):
    normalize = option(body, "normalize", bool)
    dimensions = option(body, "dimensions", int, None, low=1, high=server.engine.dimension)
    options = tei_options(body, server)
    inputs = parse_inputs(body.get("inputs"), "inputs", server.limits.max_client_batch_size)
    rows = await server.rows(inputs, param="inputs", normalize=normalize, **options)
    vectors = await server.embed(rows)
    return await json_reply(lambda: [cut_dimensions(v, dimensions, row.want.normalize).tolist()
                                     for v, row in zip(vectors, rows)])


@inference
async def tei_embed_all(body, server):
    L = server.engine.num_layers
    layer = option(body, "layers", int, -1, low=-(L + 1), high=L)
    options = tei_options(body, server)
    inputs = parse_inputs(body.get("inputs"), "inputs", server.limits.max_client_batch_size)
    rows = await server.rows(inputs, param="inputs", layer=layer, **options)
    outputs = await server.embed(rows)
    return await json_reply(lambda: [tokens.tolist() for tokens in outputs])


@inference
async def tei_embed_sparse(body, server):
    """SPLADE vectors from the model's masked-LM head (model.encode_sparse), in TEI's shape: per input the
    non-zero [{"index": token id, "value": weight}], ids ascending. Run beside the batches, one at a time."""
    kind, texts, nested = parse_inputs(body.get("inputs"), "inputs", server.limits.max_client_batch_size)
    if kind != "texts":
        raise ApiError(422, "embed_sparse takes texts, not token ids", "invalid", "inputs")
    options = tei_options(body, server)       # truncate, truncation_direction, prompt_name: as /embed reads them

    def sparse():
        with server.rerank_lock:
            try:
                return server.engine.sparse(texts, nested=nested, **options)
            except ModelFileError as e:          # no masked-LM head in this checkpoint
                raise ApiError(422, f"this model gives no sparse vectors: {e}", "unsupported") from None
            except (TooLong, InputError) as e:
                raise refusal(e, "inputs") from None
    vectors = await run_in_threadpool(sparse)
    return await json_reply(lambda: [[{"index": int(i), "value": float(w)} for i, w in zip(ids, weights)]
                                     for ids, weights in zip(vectors.ids, vectors.weights)])


@inference
async def tei_rerank(body, server):
    if server.reranker is None:
        raise ApiError(422, "this server has no reranker; start it with --reranker DIR (a cross-encoder)", "invalid")
    query = option(body, "query", str)
    if query is None:
        raise ApiError(400, "query is required: a string", "empty", "query")
    texts = body.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ApiError(422, "texts must be a list of strings", "invalid", "texts")
    if not texts:
        raise ApiError(400, "texts is an empty list: nothing to rerank", "empty", "texts")
    if len(texts) > server.limits.max_client_batch_size:
        raise ApiError(413, f"texts holds {len(texts)} texts, more than the server's "
                       f"{server.limits.max_client_batch_size} per request (--max-client-batch-size)", "too_large")
    raw_scores = option(body, "raw_scores", bool, False)
    return_text = option(body, "return_text", bool, False)
    truncate = option(body, "truncate", bool, server.limits.auto_truncate)
    if option(body, "truncation_direction", str, "right", choices=("right", "left")) != "right":
        raise ApiError(422, "rerank truncates pairs from the right only", "invalid", "truncation_direction")
    logits = await run_in_threadpool(server.rerank_logits, query, texts, truncate)          # [N, 1]
    scores = logits[:, 0] if raw_scores else 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
    ranked = sorted(range(len(texts)), key=lambda i: -scores[i])
    return JSONResponse([{"index": i, "score": float(scores[i]), **({"text": texts[i]} if return_text else {})}
                         for i in ranked])


@inference
async def tei_tokenize(body, server):
    add_special_tokens = option(body, "add_special_tokens", bool, True)
    prompt_name = option(body, "prompt_name", str)
    kind, values, _ = parse_inputs(body.get("inputs"), "inputs", server.limits.max_client_batch_size)
    if kind != "texts":
        raise ApiError(422, "inputs must be text to tokenize", "invalid", "inputs")
    try:
        tokens = await run_in_threadpool(tokens_of, server.engine, values, prompt_name=prompt_name,
                                         add_special_tokens=add_special_tokens)
    except InputError as e:
        raise refusal(e, "inputs") from None
    return JSONResponse(tokens)


async def health(request):
    return Response(status_code=200)


async def info(request):
    from .. import __version__
    server = request.app.state.server
    model, limits = server.engine.model, server.limits
    recipe = {"kind": model.recipe.kind, "pooling": server.engine.pooling, "normalize": model.recipe.normalize,
              "dense": [d.path for d in model.recipe.dense], "prompts": dict(model.recipe.prompts)}
    return JSONResponse({"model_id": server.model_id, "model_sha": (model.origin or {}).get("revision"),
                         "model_dtype": np.dtype(model.dtype).name,
                         "model_type": {"embedding": {"pooling": server.engine.pooling}},
                         "max_concurrent_requests": limits.max_concurrent_requests,
                         "max_input_length": server.engine.max_input_length,
                         "max_batch_tokens": limits.max_batch_tokens, "max_batch_requests": None,
                         "max_client_batch_size": limits.max_client_batch_size,
                         "auto_truncate": limits.auto_truncate, "tokenization_workers": None,
                         "version": __version__, "sha": None, "docker_label": None,
                         "backend": model.backend, "threads": limits.threads, "dimensions": server.engine.dimension,
                         "recipe": recipe,
                         # its folder's name: clients need not learn the server's file system
                         "reranker": Path(server.reranker.source).name if server.reranker is not None else None})


async def metrics(request):
    return PlainTextResponse(request.app.state.server.metrics.text(), media_type="text/plain; version=0.0.4")


ROUTES = [Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
          Route("/v1/models", openai_models, methods=["GET"]),
          Route("/embed", tei_embed, methods=["POST"]), Route("/embed_all", tei_embed_all, methods=["POST"]),
          Route("/", tei_embed, methods=["POST"]),       # TEI's route for the hub's clients (InferenceClient)
          Route("/embed_sparse", tei_embed_sparse, methods=["POST"]), Route("/rerank", tei_rerank, methods=["POST"]),
          Route("/tokenize", tei_tokenize, methods=["POST"]), Route("/health", health, methods=["GET"]),
          Route("/info", info, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]
KNOWN = {route.path for route in ROUTES}


def without_directories(server, message):
    """A message for clients: the model's and the reranker's directories on the server's disk shown by their
    names (any client, without a key anyone who reaches the port, need not learn the server's file system)."""
    sources = [server.model.source, server.model.encoder_dir] + (
        [server.reranker.source] if server.reranker is not None else [])
    for source in sorted({str(Path(s)) for s in sources if s}, key=len, reverse=True):   # longest first
        message = message.replace(source, Path(source).name)
    return message


async def api_error(request, e):
    server = request.app.state.server
    return error_response(ApiError(e.status, without_directories(server, e.message), e.kind, e.param),
                          request.url.path)


async def http_error(request, e):
    kind = "not_found" if e.status_code in (404, 405) else "invalid"
    message = (f"no route {request.method} {request.url.path}; routes: {', '.join(sorted(KNOWN))}"
               if e.status_code == 404 else f"{request.url.path} does not take {request.method}; "
               f"it takes {e.headers.get('Allow', 'another method') if e.headers else 'another method'}"
               if e.status_code == 405 else str(e.detail))
    return error_response(ApiError(e.status_code, message, kind), request.url.path)


async def server_error(request, e):
    """A fault of the server (not of the request): one line to the client, the traceback to the log."""
    message = without_directories(request.app.state.server, f"the server failed on this request "
                                  f"({type(e).__name__}: {e})")
    return error_response(ApiError(500, message, "server"), request.url.path)


class FrontDoor:
    """ASGI middleware around the routes: the API key (every route but /health), one JSON access-log line
    per request, and the request counters and latency histograms."""

    def __init__(self, app, server, api_key):
        self.app, self.server, self.api_key = app, server, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, path, started = time.perf_counter(), [500], scope["path"], []

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started.append(True)
            await send(message)
        try:
            if self.api_key is not None and path != "/health" and not self.authorized(scope):
                given = sum(name == b"authorization" for name, _ in scope["headers"])
                error = ApiError(401, "wrong API key" if given == 1 else "missing API key: send the header "
                                 "'Authorization: Bearer KEY'" if not given else "several Authorization headers: "
                                 "send one, 'Authorization: Bearer KEY'", "unauthorized")
                await error_response(error, path)(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when --graceful-timeout has passed: the client hears a 503 (when
            # nothing was sent yet), the log one access line, not a traceback per request.
            if not started:
                error = ApiError(503, "the server stopped before this request finished (--graceful-timeout); "
                                 "retry", "stopping")
                await error_response(error, path)(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - start
            route = path if path in KNOWN else "other"
            self.server.metrics.observe_request(route, status[0], seconds)
            client = scope.get("client") or ("", 0)
            self.server.log(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                                        "client": f"{client[0]}:{client[1]}", "method": scope["method"],
                                        "path": path, "status": status[0], "ms": round(seconds * 1000, 2)}))

    def authorized(self, scope):
        """One Authorization header holding the key: with several, which one counts would depend on the order
        a client or proxy wrote them (the last one did: a wrong key then the right one passed)."""
        headers = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(headers) != 1:
            return False
        header = headers[0].decode("latin-1")
        scheme, _, key = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.api_key.encode())


def check_api_key(api_key):
    """A key a client can send: an empty one made every 'Authorization: Bearer' pass, and one with spaces or
    characters outside printable ASCII could never match (HTTP strips a header's spaces and carries bytes)."""
    if api_key is None:
        return
    if not isinstance(api_key, str) or not api_key or not all("!" <= c <= "~" for c in api_key):
        raise InputError(f"--api-key {api_key!r}: a key must be one or more printable ASCII characters without "
                         "spaces (it travels in the header 'Authorization: Bearer KEY')")


def create_app(model, limits=Limits(), *, reranker=None, api_key=None, model_id=None, log=None):
    """The ASGI application serving `model` (and a one-output cross-encoder `reranker` on /rerank). The batcher
    starts with the application's lifespan and, at shutdown, finishes every request it was given."""
    import contextlib
    if reranker is not None and (reranker.task != "sequence" or len(reranker.labels) != 1):
        raise InputError(f"--reranker {reranker.source}: a reranker is a cross-encoder with one output (a score); "
                         f"this classifier has {len(reranker.labels)} {reranker.task} outputs")
    check_api_key(api_key)
    server = Server(model, limits, reranker=reranker, model_id=model_id, log=log)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.batcher.start()
        # One small batch before listening: Numba compiles its kernels on first use (seconds), not on a client's.
        await run_in_threadpool(server.engine.forward, server.engine.text_rows(["warm up"], layer=-1))
        try:
            yield
        finally:
            await run_in_threadpool(server.batcher.stop)

    app = Starlette(routes=ROUTES, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.server = server
    return FrontDoor(app, server, api_key)
