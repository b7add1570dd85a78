"""`minibert serve` (minibert/serve/): real clients against a server started here on 127.0.0.1 with a free
port, always stopped. The official `openai` client and httpx check the routes' shapes and that every vector is
model.encode's; a bounded load test checks batching across requests (the token budget, equal results, 429
only past the concurrency limit); a server in a subprocess is stopped with SIGTERM under load.

Models: the tiny sentence-transformers fixtures (max pooling + Dense + Normalize; a prompt left out of the
pooling), a tiny cross-encoder written here, and the bundled model for one equality check.
"""

import base64
import contextlib
import json
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import FIXTURES
from tiny import tiny_config, tiny_tensors, write_tiny

for package in ("starlette", "uvicorn", "httpx", "openai"):
    pytest.importorskip(package, reason=f"tests/test_serve.py needs {package}: pip install -e '.[serve,test]'")

import httpx  # noqa: E402
import openai  # noqa: E402
import uvicorn  # noqa: E402

import minibert  # noqa: E402
from minibert.serve.app import Limits, create_app  # noqa: E402
from minibert.serve.batcher import plan  # noqa: E402

DENSE = FIXTURES / "st_max_dense_normalize"      # max pooling, Dense 16 -> 12 (tanh), Normalize; 32 tokens
PROMPTED = FIXTURES / "st_prompt_excluded"        # mean, Normalize, prompt "query" left out of the pooling
TEXTS = ["the cat sat on the mat", "a dog ran", "hello world", "the cats ran on the mat, the dog sat", "b"]
TOL = 1e-6                                        # float32, another batch: OpenBLAS rounds a row by its place


def close(got, want, tol=TOL):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.abs(got - want).max() <= tol, np.abs(got - want).max()


class Running:
    def __init__(self, url, state, log, thread):
        self.url, self.state, self.log, self.thread = url, state, log, thread

    def client(self, **options):
        return httpx.Client(base_url=self.url, timeout=60, **options)


@contextlib.contextmanager
def running(model, limits=Limits(), **options):
    """The app under uvicorn in a thread, on 127.0.0.1 and a port the system picks; stopped on exit."""
    log = []
    app = create_app(model, limits, log=log.append, **options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(f"http://127.0.0.1:{port}", app.server, log, thread)
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def dense_model():
    return minibert.load(str(DENSE))


def metric(text, name):
    """The value of an unlabelled sample `name` in Prometheus text."""
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


def test_openai_client_gets_encodes_vectors_float_and_base64(dense_model):
    model = dense_model
    want = model.encode(TEXTS)                                                   # [5, 12], normalised
    with running(model) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        floats = client.embeddings.create(input=TEXTS, model="any", encoding_format="float")
        close([d.embedding for d in floats.data], want)
        assert [d.index for d in floats.data] == list(range(len(TEXTS))) and floats.object == "list"
        tokens = int(model.tokenize(TEXTS).attention_mask.sum())
        assert floats.usage.prompt_tokens == floats.usage.total_tokens == tokens
        assert floats.model == "st_max_dense_normalize"
        # The client asks for base64 when not told, and decodes it as little-endian float32.
        default = client.embeddings.create(input=TEXTS, model="any")
        close([d.embedding for d in default.data], want)
        with server.client() as http:       # the same input alone, so the same batch: the same float32 bits
            b64, alone = (http.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": encoding}).json()
                          for encoding in ("base64", "float"))
        decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.array(alone["data"][0]["embedding"], dtype=np.float32))
        # dimensions: cut, then normalised again (the recipe normalises), as sentence-transformers'
        # encode(truncate_dim=4, normalize_embeddings=True).
        cut = client.embeddings.create(input=TEXTS, model="any", dimensions=4, encoding_format="float")
        expected = want[:, :4] / np.linalg.norm(want[:, :4], axis=1, keepdims=True)
        close([d.embedding for d in cut.data], expected)
        assert client.models.list().data[0].id == "st_max_dense_normalize"


def test_token_id_inputs_are_the_texts_own_vectors(dense_model):
    model = dense_model
    batch = model.tokenize(TEXTS[:3])
    ids = [batch.input_ids[b, :n].tolist() for b, n in enumerate(batch.attention_mask.sum(axis=1))]
    want = model.encode(TEXTS[:3])
    with running(model) as server, server.client() as http:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        close([d.embedding for d in client.embeddings.create(input=ids, model="m").data], want)
        close(client.embeddings.create(input=ids[0], model="m").data[0].embedding, want[0])
        close(http.post("/embed", json={"inputs": ids[1]}).json()[0], want[1])
        outside = http.post("/embed", json={"inputs": [ids[0], [2, 49, 3]]})
        assert outside.status_code == 400 and outside.json()["error"].startswith("inputs[1][1] = 49 is not a token")
        bad = http.post("/v1/embeddings", json={"input": [ids[0], [2, 49, 3]]})
        assert bad.status_code == 400
        assert bad.json()["error"]["message"].startswith("input[1][1] = 49 is not a token id of this model's")
        flat = http.post("/v1/embeddings", json={"input": [2, -1]}).json()["error"]["message"]
        assert flat.startswith("input[1] = -1 is not a token id")


def test_bundled_model_vectors_equal_encode(model_for):
    model = model_for("cpu")
    texts = ["The quick brown fox jumps over the lazy dog.", "Embeddings over HTTP", "a"]
    with running(model) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        got = client.embeddings.create(input=texts, model="all-MiniLM-L6-v2", encoding_format="float")
        close([d.embedding for d in got.data], model.encode(texts))


def test_float64_vectors_are_encodes_bit_for_bit():
    """Each text in a request of its own, batched with the others as they come: the float64 forward is
    batch-invariant. (A recipe with Dense modules is not, in encode either: its matmul over [N, H] rounds a
    row by N, measured 1.1e-16 on DENSE between encode(texts) and encode of each text alone.)"""
    model = minibert.load(str(PROMPTED), dtype="float64")
    want = model.encode(TEXTS)
    with running(model) as server, server.client() as http:
        results = [None] * len(TEXTS)

        def ask(i):
            results[i] = http.post("/embed", json={"inputs": TEXTS[i]}).json()[0]
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(TEXTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        np.testing.assert_array_equal(np.array(results), want)


def test_tei_routes_answer_in_teis_shapes(monkeypatch):
    model = minibert.load(str(PROMPTED))
    with running(model) as server, server.client() as http:
        got = http.post("/embed", json={"inputs": TEXTS})
        assert got.status_code == 200 and got.headers["content-type"] == "application/json"
        close(got.json(), model.encode(TEXTS))
        query = http.post("/embed", json={"inputs": TEXTS[:2], "prompt_name": "query"}).json()
        close(query, model.encode(TEXTS[:2], prompt_name="query"))          # the prompt left out of the pooling
        raw = http.post("/embed", json={"inputs": TEXTS[:2], "normalize": False}).json()
        close(raw, model.encode(TEXTS[:2], normalize=False))
        # Token vectors of any layer; layers=-1 (the default) the last.
        for layer in (-1, 0, 1):
            all_tokens = http.post("/embed_all", json={"inputs": TEXTS[:3], "layers": layer}).json()
            for tokens, want in zip(all_tokens, model.encode(TEXTS[:3], pooling="none", layers=layer)):
                close(tokens, want)
        from huggingface_hub import InferenceClient, constants   # the hub's client for TEI posts to /
        # HF_HUB_OFFLINE=1 (read once, when huggingface_hub is first imported: machines without network set it)
        # blocks every request of the client, even to this loopback server.
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        close(np.asarray(InferenceClient(server.url).feature_extraction("the cat sat")).reshape(-1),
              model.encode("the cat sat"))
        tokens = http.post("/tokenize", json={"inputs": ["hello cats"]}).json()
        assert tokens == [[{"id": 2, "text": "[CLS]", "special": True, "start": None, "stop": None},
                           {"id": 45, "text": "hello", "special": False, "start": 0, "stop": 5},
                           {"id": 36, "text": "cat", "special": False, "start": 6, "stop": 9},
                           {"id": 42, "text": "s", "special": False, "start": 9, "stop": 10},
                           {"id": 3, "text": "[SEP]", "special": True, "start": None, "stop": None}]]
        assert [t["id"] for t in tokens[0]] == model.tokenize("hello cats").input_ids[0].tolist()
        info = http.get("/info").json()
        assert info["model_id"] == "st_prompt_excluded" and info["max_input_length"] == 32
        assert info["max_batch_tokens"] == 16384 and info["max_client_batch_size"] == 32
        assert info["model_type"] == {"embedding": {"pooling": "mean"}}
        assert http.get("/health").status_code == 200
        sparse = http.post("/embed_sparse", json={"inputs": "a"})       # an embedding model: no masked-LM head
        assert sparse.status_code == 422 and "gives no sparse vectors" in sparse.json()["error"]
        text = http.get("/metrics").text
        assert 'minibert_requests_total{route="/embed",status="200"} 3' in text
        assert 'minibert_requests_total{route="/",status="200"} 1' in text
        assert "# TYPE minibert_request_duration_seconds histogram" in text
        assert metric(text, "minibert_input_tokens_total") > 0 and metric(text, "minibert_batch_rows_count") > 0
    assert len(server.log) >= 10 and json.loads(server.log[0])["path"] == "/embed"       # one JSON line each


def test_truncation_right_and_left(dense_model):
    model = dense_model
    long = "a dog ran " + " ".join(["the cat sat"] * 20)           # 65 tokens, the limit is 32
    with running(model) as server, server.client() as http:
        refused = http.post("/embed", json={"inputs": ["a", long]})
        assert refused.status_code == 413 and "inputs[1] has more than the model's 32 tokens" in refused.json()["error"]
        right = http.post("/embed", json={"inputs": long, "truncate": True}).json()[0]
        with pytest.warns(UserWarning, match="truncated"):
            close(right, model.encode(long))
        left = http.post("/embed", json={"inputs": long, "truncate": True, "truncation_direction": "Left"}).json()[0]
        full = model.tokenizer.backend.encode(long).ids                                   # [CLS] ... [SEP]
        end = [full[0]] + full[-31:]                                                     # [CLS] + last 30 + [SEP]
        close(left, http.post("/embed", json={"inputs": end}).json()[0])
        assert np.abs(np.array(left) - np.array(right)).max() > 1e-3                     # not the same tokens


def test_recipe_limit_above_the_tokenizers_own(tmp_path):
    """max_seq_length 24 in sentence_bert_config.json, model_max_length 16 in tokenizer_config.json: encode cuts
    at 24, so the server does too (through model.tokenize every text was refused: 'exceeds the model's 16')."""
    shutil.copytree(DENSE, tmp_path / "m")
    for name, key, value in (("sentence_bert_config.json", "max_seq_length", 24),
                             ("tokenizer_config.json", "model_max_length", 16)):
        path = tmp_path / "m" / name
        path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    model = minibert.load(str(tmp_path / "m"))
    text = "the cat sat on the mat " * 3                                     # 20 tokens
    with running(model) as server, server.client() as http:
        assert http.get("/info").json()["max_input_length"] == 24
        close(http.post("/embed", json={"inputs": text}).json()[0], model.encode(text))


def write_cross_encoder(directory, outputs=1):
    """A tiny one-output BertForSequenceClassification, as transformers saves a cross-encoder."""
    config = tiny_config(architectures=["BertForSequenceClassification"],
                         id2label={str(i): f"LABEL_{i}" for i in range(outputs)},
                         label2id={f"LABEL_{i}": i for i in range(outputs)})
    rng = np.random.default_rng(1)
    tensors = {**tiny_tensors(config, seed=1, prefix="bert."),
               "classifier.weight": rng.standard_normal((outputs, 16)).astype(np.float32),
               "classifier.bias": np.full(outputs, 0.1, dtype=np.float32)}
    return write_tiny(directory, config=config, tensors=tensors)


def test_rerank_scores_with_the_cross_encoder(tmp_path, dense_model):
    reranker = minibert.load_classifier(write_cross_encoder(tmp_path / "ce"))
    query, texts = "the cat", ["a dog ran", "the cat sat on the mat", "hello world", "b"]
    logits = reranker.logits([query] * len(texts), texts)[:, 0].astype(np.float64)
    with running(dense_model, reranker=reranker) as server, server.client() as http:
        ranked = http.post("/rerank", json={"query": query, "texts": texts}).json()
        assert [r["index"] for r in ranked] == list(np.argsort(-logits, kind="stable"))
        assert set(ranked[0]) == {"index", "score"}
        close([r["score"] for r in ranked], 1 / (1 + np.exp(-logits[[r["index"] for r in ranked]])))
        raw = http.post("/rerank", json={"query": query, "texts": texts, "raw_scores": True,
                                         "return_text": True}).json()
        close([r["score"] for r in raw], logits[[r["index"] for r in raw]])
        assert [r["text"] for r in raw] == [texts[r["index"]] for r in raw]
    with running(dense_model) as server, server.client() as http:
        missing = http.post("/rerank", json={"query": query, "texts": texts})
        assert missing.status_code == 422 and "--reranker" in missing.json()["error"]


def test_serve_command_refuses_what_cannot_work(tmp_path, capsys, monkeypatch):
    from minibert.cli import main
    assert main(["serve", str(DENSE), "--max-batch-tokens", "16", "--port", "0"]) == 1
    assert "--max-batch-tokens 16 is less than the model's input limit 32" in capsys.readouterr().err
    assert main(["serve", str(DENSE), "--reranker", str(write_cross_encoder(tmp_path / "three", outputs=3))]) == 1
    assert "a reranker is a cross-encoder with one output (a score); this classifier has 3 sequence outputs" in \
        capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(DENSE), "--port", str(port)]) == 1
    assert f"could not serve on 127.0.0.1:{port}" in capsys.readouterr().err
    for flag, value in (("--port", "70000"), ("--max-batch-tokens", "0"), ("--threads", "two")):
        with pytest.raises(SystemExit) as exit:                        # argparse: one line, exit 2
            main(["serve", str(DENSE), flag, value])
        assert exit.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "uvicorn", None)                  # as if the serve extra were not installed
    assert main(["serve", str(DENSE)]) == 1
    assert "serve needs the serve extra (uvicorn is missing): pip install 'minibert-numpy[serve]'" in \
        capsys.readouterr().err


BAD = [  # (route, body, status, words in the message)
    ("/embed", b"{bad", 400, "not valid JSON"),
    ("/v1/embeddings", b"{bad", 400, "not valid JSON"),
    ("/embed", [1, 2], 422, "must be a JSON object"),
    ("/embed", {"inputs": 5}, 422, "must be a string or a list"),
    ("/v1/embeddings", {"input": {"a": 1}}, 400, "must be a string or a list"),
    ("/embed", {"inputs": [True]}, 422, "not a mix"),
    ("/embed", {"inputs": []}, 400, "empty list"),
    ("/v1/embeddings", {"model": "m"}, 400, "input is required"),
    ("/embed", {"inputs": ["a"] * 10_000}, 413, "10000 inputs, more than the server's 32"),
    ("/v1/embeddings", {"input": ["a"] * 10_000}, 413, "10000 inputs"),
    ("/embed", {"inputs": "a" * 10_000_000}, 413, "over the server's limit of 2000000 bytes"),
    ("/v1/embeddings", {"input": [[2, 3], [2, 1000, 3]]}, 400, "input[1][1] = 1000 is not a token id"),
    ("/v1/embeddings", {"input": [[2, "x"]]}, 400, "input[0][1] = \"x\" is not a token id"),
    ("/embed", {"inputs": "a", "prompt_name": "nope"}, 422, "prompt_name 'nope' is not one of this model's prompts"),
    ("/embed", {"inputs": "a", "normalize": "yes"}, 422, "normalize must be true or false"),
    ("/embed", {"inputs": "a", "truncation_direction": "up"}, 422, "truncation_direction must be one of"),
    ("/embed_all", {"inputs": "a", "layers": 7}, 422, "layers must be between -3 and 2"),
    ("/v1/embeddings", {"input": "a", "dimensions": 0}, 400, "dimensions must be between 1 and 12"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 400, "encoding_format must be one of"),
    ("/embed", b'{"inputs": "\\ud800 cat"}', 422, "lone surrogate"),
    ("/nowhere", {"inputs": "a"}, 404, "no route POST /nowhere"),
    ("/v1/nowhere", {"input": "a"}, 404, "no route POST /v1/nowhere"),
    ("/v1/models", {"input": "a"}, 405, "/v1/models does not take POST; it takes "),     # GET, HEAD: any order
]


def test_bad_input_gets_one_clear_error_each(dense_model):
    with running(dense_model) as server, server.client() as http:
        for route, body, status, words in BAD:
            sent = http.post(route, content=body) if isinstance(body, bytes) else http.post(route, json=body)
            assert sent.status_code == status, (route, body if len(str(body)) < 200 else "...", sent.text[:300])
            error = sent.json()["error"]
            if route.startswith("/v1/"):                       # OpenAI's shape
                assert set(error) == {"message", "type", "param", "code"}, error
                error = error["message"]
            else:                                              # TEI's
                assert set(sent.json()) == {"error", "error_type"}, sent.json()
            assert words in error, (route, error)
        assert http.get("/health").status_code == 200          # and it still serves


def test_api_key_on_every_route_but_health(dense_model):
    with running(dense_model, api_key="sekret") as server, server.client() as http:
        assert http.get("/health").status_code == 200
        for method, route in (("POST", "/embed"), ("GET", "/info"), ("GET", "/metrics"), ("POST", "/v1/embeddings")):
            missing = http.request(method, route, json={"inputs": "a", "input": "a"})
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            wrong = http.request(method, route, json={"inputs": "a"}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        assert "missing API key" in http.post("/embed", json={"inputs": "a"}).json()["error"]
        assert http.post("/v1/embeddings", json={"input": "a"}).json()["error"]["code"] == "invalid_api_key"
        good = http.post("/embed", json={"inputs": "a"}, headers={"Authorization": "Bearer sekret"})
        assert good.status_code == 200
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0)
        assert len(client.embeddings.create(input="a", model="m").data[0].embedding) == 12
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).embeddings.create(
                input="a", model="m")


def test_plan_never_exceeds_the_budget():
    rng = random.Random(0)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 32) for _ in range(rng.randint(1, 60)))
        batches = plan([(n, i) for i, n in enumerate(lengths)], 64)
        assert [i for batch in batches for i in batch] == list(range(len(lengths)))
        assert all(len(batch) * max(lengths[i] for i in batch) <= 64 for batch in batches)


def load_texts(rng):
    words = ["the cat", "a dog ran", "on the mat", "hello world"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 2))]


def test_load_batches_across_requests_within_the_budget(dense_model):
    """8 clients x 25 requests of 1-2 texts of mixed lengths: every answer is the sequential one, no forward
    batch is over 64 tokens after padding, some batch joined several requests, no 429 at 8 for a limit of 8."""
    model, rng = dense_model, random.Random(1)
    work = [[load_texts(rng) for _ in range(25)] for _ in range(8)]
    want = {text: vector for texts in sum(work, []) for text, vector in zip(texts, model.encode(texts))}
    limits = Limits(max_batch_tokens=64, max_concurrent_requests=8)
    failures, statuses = [], []
    with running(model, limits) as server:
        def client(requests):
            with server.client() as http:
                for texts in requests:
                    answer = http.post("/embed", json={"inputs": texts})
                    statuses.append(answer.status_code)
                    if answer.status_code != 200 or \
                            np.abs(np.array(answer.json()) - np.stack([want[t] for t in texts])).max() > TOL:
                        failures.append((texts, answer.status_code, answer.text[:200]))
        threads = [threading.Thread(target=client, args=(requests,)) for requests in work]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert time.monotonic() - started < 60
        text = server.client().get("/metrics").text
    assert not failures, failures[:3]
    assert statuses == [200] * 200
    assert 0 < metric(text, "minibert_batch_tokens_max") <= 64
    rows = sum(len(texts) for texts in sum(work, []))
    assert metric(text, "minibert_batch_rows_sum") == rows
    # A batch of 3 or more rows holds texts of at least two requests (each sends 1 or 2).
    assert float(re.search(r'minibert_batch_rows_bucket\{le="2"\} (\S+)', text).group(1)) < \
        metric(text, "minibert_batch_rows_count")


def slowed(server, seconds):
    forward = server.state.batcher.forward
    seen = []

    def slow(rows):
        seen.append(server.state.metrics.in_flight)
        time.sleep(seconds)
        return forward(rows)
    server.state.batcher.forward = slow
    return seen


def test_429_only_past_the_concurrency_limit(dense_model):
    with running(dense_model, Limits(max_concurrent_requests=2)) as server:
        in_flight = slowed(server, 0.05)
        statuses = []

        def client():
            with server.client() as http:
                for _ in range(5):
                    answer = http.post("/embed", json={"inputs": "the cat sat"})
                    statuses.append(answer.status_code)
                    if answer.status_code == 429:
                        assert answer.json()["error_type"] == "overloaded"
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert set(statuses) == {200, 429} and len(statuses) == 40
    assert max(in_flight) <= 2


def test_one_batch_runs_before_the_server_listens():
    """Numba compiles on first use: the start-up runs a batch so that no client's request waits for that."""
    model = minibert.load(str(DENSE))
    calls = []
    for name in ("iter_layers", "iter_packed_layers"):      # padded batches, or packed where the backend packs
        def counted(*args, forward=getattr(model, name), **kwargs):
            calls.append(name)
            return forward(*args, **kwargs)
        setattr(model, name, counted)
    with running(model):
        assert len(calls) == 1, calls


def test_responses_are_serialised_off_the_event_loop(dense_model, monkeypatch):
    """Token vectors of a full request are millions of floats: turned into JSON on a worker thread, not on the
    thread that runs the event loop (which would hold /health meanwhile)."""
    import types

    from minibert.serve import app as module
    threads = []

    def dumps(value, **kwargs):
        if not (isinstance(value, dict) and "time" in value):         # not the access log's line
            threads.append(threading.current_thread())
        return json.dumps(value, **kwargs)
    monkeypatch.setattr(module, "json", types.SimpleNamespace(dumps=dumps, loads=json.loads))
    with running(dense_model) as server, server.client() as http:
        for route in ("/embed", "/embed_all", "/v1/embeddings"):
            assert http.post(route, json={"inputs": TEXTS, "input": TEXTS}).status_code == 200
        loop_thread = server.thread
    assert len(threads) == 3 and loop_thread not in threads


def test_threads_hold_the_forward_pass(dense_model):
    import numba
    with running(dense_model, Limits(threads=1)) as server, server.client() as http:
        forward, seen = server.state.batcher.forward, []
        server.state.batcher.forward = lambda rows: seen.append(numba.get_num_threads()) or forward(rows)
        assert http.post("/embed", json={"inputs": "a"}).status_code == 200
        assert http.get("/info").json()["threads"] == 1
    assert seen == [1]


def test_health_answers_during_a_long_batch(dense_model):
    with running(dense_model) as server, server.client() as http:
        slowed(server, 3.0)
        answer = []
        thread = threading.Thread(target=lambda: answer.append(http.post("/embed", json={"inputs": "a"})))
        thread.start()
        deadline = time.monotonic() + 10
        while server.state.metrics.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        assert http.get("/health").status_code == 200
        assert time.monotonic() - started < 1.0 and thread.is_alive()      # the batch holds the worker for 3 s
        thread.join(30)
        assert answer[0].status_code == 200


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_under_load_answers_every_accepted_request(dense_model, stop):
    """A server process stopped with SIGTERM (or Ctrl-C's SIGINT) while 4 clients send requests: it stops
    accepting, answers what it accepted (each a correct 200, as many as it logged), exits 0. A request sent
    after the signal may be refused at the connection, never answered wrongly."""
    texts = ["the cat sat on the mat " * 4] * 16 + ["a dog ran"] * 16
    want = dense_model.encode(texts)
    process = subprocess.Popen([sys.executable, "-m", "minibert", "serve", str(DENSE), "--port", "0"],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    try:
        port = None
        while port is None:
            line = process.stderr.readline()
            assert line, f"the server ended before listening (exit {process.poll()})"
            lines.append(line)
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            port = found and int(found.group(1))
        reader.start()
        results, terminated = [], []

        def client():
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                              limits=httpx.Limits(max_keepalive_connections=0)) as http:
                while True:
                    sent = time.monotonic()
                    try:
                        answer = http.post("/embed", json={"inputs": texts})
                    except httpx.TransportError as e:
                        results.append((sent, time.monotonic(), e))
                        return
                    results.append((sent, time.monotonic(), answer))
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        while len(results) < 20:
            time.sleep(0.01)
        terminated.append(time.monotonic())
        process.send_signal(stop)
        for t in threads:
            t.join(60)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(10)
    answered = [answer for _, _, answer in results if isinstance(answer, httpx.Response)]
    assert all(answer.status_code == 200 for answer in answered)
    for answer in answered:
        close(answer.json(), want)
    errors = [(sent, e) for sent, _, e in results if not isinstance(e, httpx.Response)]
    assert all(sent >= terminated[0] - 1.0 for sent, _ in errors), errors        # only around the stop
    logged = sum('"path": "/embed", "status": 200' in line for line in lines)
    assert logged == len(answered)                       # every request the server answered reached its client
    assert any(sent < terminated[0] < done for sent, done, answer in results
               if isinstance(answer, httpx.Response))    # some were in flight at SIGTERM, and were answered
    assert "minibert serve: stopped" in "".join(lines)


def test_embed_sparse_gives_the_models_splade_vectors_in_teis_shape():
    """/embed_sparse on a checkpoint with its masked-LM head: per input TEI's [{"index", "value"}], the ids and
    weights model.encode_sparse gives (SPLADE: max over tokens of log1p(relu(logits)))."""
    model = minibert.load(str(FIXTURES / "heads" / "bert"))
    texts = ["the cat sat on the mat", "a dog ran"]
    want = model.encode_sparse(texts)
    with running(model) as server, server.client() as http:
        got = http.post("/embed_sparse", json={"inputs": texts}).json()
        for entries, ids, weights in zip(got, want.ids, want.weights):
            assert [e["index"] for e in entries] == ids.tolist()
            np.testing.assert_allclose([e["value"] for e in entries], weights, rtol=1e-6)
        too_long = http.post("/embed_sparse", json={"inputs": ["the cat " * 400]})
        assert too_long.status_code == 413 and "set truncate" in too_long.json()["error"]
        assert http.post("/embed_sparse", json={"inputs": ["the cat " * 400], "truncate": True}).status_code == 200


def test_embed_sparse_reads_truncation_direction_and_prompt_name_as_embed_does():
    """/embed_sparse with truncation_direction Left keeps a long text's end (the SPLADE vector of that end
    alone), and refuses a bad direction or an unknown prompt_name with /embed's 422: both were ignored."""
    model = minibert.load(str(FIXTURES / "heads" / "bert"))
    L = model.tokenizer.max_length
    # "the", "on" and "world" are one token each: the tail is the long text's last L - 2 tokens
    long, tail = "on " * 40 + "the " * (L + 20) + "world", "the " * (L - 3) + "world"
    want = model.encode_sparse([tail])
    with running(model) as server, server.client() as http:
        left = http.post("/embed_sparse", json={"inputs": [long], "truncate": True, "truncation_direction": "Left"})
        right = http.post("/embed_sparse", json={"inputs": [long], "truncate": True}).json()
        assert left.status_code == 200 and left.json() != right
        [entries] = left.json()
        assert [e["index"] for e in entries] == want.ids[0].tolist()
        np.testing.assert_allclose([e["value"] for e in entries], want.weights[0], rtol=1e-6)
        for body in ({"truncation_direction": "Sideways"}, {"prompt_name": "nope"}):
            sparse = http.post("/embed_sparse", json={"inputs": ["x"], **body})
            dense = http.post("/embed", json={"inputs": ["x"], **body})
            assert sparse.status_code == dense.status_code == 422
            assert sparse.json() == dense.json()


def test_a_sparse_encoder_directory_serves_embed_sparse_with_its_own_splade_settings():
    """A SparseEncoder directory (it was refused): /embed_sparse gives load_sparse's vectors (sum pooling,
    log1p_relu, max_active_dims from the directory), /embed refuses with a pointer to /embed_sparse."""
    source = str(FIXTURES / "heads" / "splade_sum")
    want = minibert.load_sparse(source).encode_sparse(["the cat sat on the mat", "a dog ran"])
    with running(minibert.load(source)) as server, server.client() as http:
        got = http.post("/embed_sparse", json={"inputs": ["the cat sat on the mat", "a dog ran"]}).json()
        for entries, ids, weights in zip(got, want.ids, want.weights):
            assert [e["index"] for e in entries] == ids.tolist()
            np.testing.assert_allclose([e["value"] for e in entries], weights, rtol=1e-6)
        dense = http.post("/embed", json={"inputs": ["a"]})
        assert dense.status_code == 422 and "/embed_sparse" in dense.json()["error"]
        assert http.post("/tokenize", json={"inputs": ["a"]}).status_code == 200
