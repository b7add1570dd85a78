"""What a user's and an attacker's pass over serving, reranking and classifiers found, each a test that failed
before its fix: a cross-encoder's own token limit on every path, the API key and the listening address checked
at start, refusals that name the request's own fields, a cut prompt's pooling, slow, endless and vanishing
clients, shutdown past --graceful-timeout, and answers that keep the server's directories to itself.

Models: the tiny fixtures (st_max_dense_normalize: 32 tokens; ce_one_label, ce_three_labels: 24 tokens).
Servers run under Starlette's test client (no socket) or, for the command, on 127.0.0.1 and always stopped.
"""

import json
import shutil
import time
import warnings

import numpy as np
import pytest
from conftest import FIXTURES

import minibert
from minibert.errors import InputError

DENSE = FIXTURES / "st_max_dense_normalize"
PAIRS = [("cat", "a cat sat on the mat with a dog"), ("cat", "dog"),
         ("cat", "cat cat cat cat cat cat cat cat cat cat")]


def with_max_seq_length(tmp_path, case, limit):
    """A copy of a sentence-transformers 6 cross-encoder fixture whose sentence_bert_config.json says
    max_seq_length = limit (below its tokenizer's 24), as cross-encoder/ms-marco-* save theirs."""
    directory = shutil.copytree(FIXTURES / case, tmp_path / case)
    settings = directory / "sentence_bert_config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "max_seq_length": limit}))
    return directory


def quiet(function, *args, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the truncation warning: what is measured is the scores
        return function(*args, **options)


# ---- a cross-encoder's max_seq_length on every path ---------------------------------------------------------

def test_load_classifier_cuts_pairs_at_the_cross_encoders_max_seq_length(tmp_path):
    """Before: load_classifier read the tokenizer's 24 and ignored sentence_bert_config.json's 12, so predict
    and predict_proba scored long pairs on tokens CrossEncoder never reads (0.085 apart on these pairs)."""
    directory = with_max_seq_length(tmp_path, "ce_one_label", 12)
    cross = minibert.load_cross_encoder(directory)
    classifier = minibert.load_classifier(directory)
    assert classifier.max_length == cross.max_length == 12
    want = quiet(cross.predict, PAIRS)
    logits = quiet(classifier.logits, [q for q, _ in PAIRS], [p for _, p in PAIRS])[:, 0].astype(np.float64)
    assert np.abs(1 / (1 + np.exp(-logits)) - want).max() <= 1e-6
    three = with_max_seq_length(tmp_path, "ce_three_labels", 12)
    np.testing.assert_allclose(quiet(minibert.load_classifier(three).predict_proba, [q for q, _ in PAIRS],
                                     [p for _, p in PAIRS]),
                               quiet(minibert.load_cross_encoder(three).predict, PAIRS, apply_softmax=True),
                               rtol=0, atol=1e-6)


def test_a_bad_max_seq_length_is_refused_by_load_classifier_too(tmp_path):
    directory = with_max_seq_length(tmp_path, "ce_one_label", 2)
    with pytest.raises(minibert.errors.ConfigError, match="max_seq_length must be an int >= 3, found 2"):
        minibert.load_classifier(directory)


def test_rerank_route_scores_as_the_cross_encoder_with_its_max_seq_length(tmp_path):
    """Before: /rerank (the reranker loaded with load_classifier) scored the pairs at 24 tokens: scores 0.085
    from CrossEncoder's, and a pair over 12 tokens was not refused without truncate."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient
    from minibert.serve.app import create_app
    directory = with_max_seq_length(tmp_path, "ce_one_label", 12)
    want = quiet(minibert.load_cross_encoder(directory).predict, PAIRS)
    app = create_app(minibert.load(DENSE), reranker=minibert.load_classifier(directory), log=lambda line: None)
    texts = [p for _, p in PAIRS]
    with TestClient(app) as client:
        refused = client.post("/rerank", json={"query": "cat", "texts": texts})
        assert refused.status_code == 413 and "12 tokens" in refused.json()["error"]
        ranked = quiet(client.post, "/rerank", json={"query": "cat", "texts": texts, "truncate": True}).json()
    got = np.zeros(len(texts))
    got[[r["index"] for r in ranked]] = [r["score"] for r in ranked]
    assert np.abs(got - want).max() <= 1e-6


def test_predict_command_scores_as_the_cross_encoder_with_its_max_seq_length(tmp_path, capsys):
    from minibert.cli import train as train_cli
    directory = with_max_seq_length(tmp_path, "ce_one_label", 12)
    want = quiet(minibert.load_cross_encoder(directory).predict, PAIRS)
    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(json.dumps({"text": q, "pair": p}) + "\n" for q, p in PAIRS))
    assert quiet(train_cli.main, ["predict", str(directory), str(rows), "--pair-col", "pair"]) == 0
    got = [json.loads(line)["score"] for line in capsys.readouterr().out.splitlines()]
    assert np.abs(np.array(got) - want).max() <= 1e-6          # rounded to 6 digits by predict


@pytest.mark.parametrize("documents", [{"a cat", "a dog"}, {"a cat": 1}], ids=["set", "dict"])
def test_rank_refuses_documents_without_an_order(documents):
    """Before: a set or dict was scored, then return_documents raised a raw TypeError or KeyError (corpus_id
    indexes the documents)."""
    cross = minibert.load_cross_encoder(FIXTURES / "ce_one_label")
    with pytest.raises(InputError, match=f"documents must be a list of str, found {type(documents).__name__}"):
        cross.rank("cat", documents, return_documents=True)
    assert [r["corpus_id"] for r in cross.rank("cat", ("a cat", "a dog"))] != []      # a tuple is a list


# ---- the serve command's API key and address ------------------------------------------------------------------

class NotListening:
    """uvicorn.Server's stand-in: the command runs up to listening and stops there (nothing is bound)."""

    def __init__(self, config, state, keyed):
        self.started = True

    def run(self):
        pass


@pytest.mark.parametrize("key", ["", "two words", "clé", " padded "])
def test_an_api_key_no_client_can_send_is_refused_at_start(key, capsys, monkeypatch):
    """Before: --api-key '' started a server saying api_key=required that let every 'Authorization: Bearer'
    through; a key with spaces or 'clé' started one that answered 401 to the very key it was given."""
    pytest.importorskip("uvicorn")
    from minibert.cli import main
    from minibert.cli import serve as serve_cli
    monkeypatch.setattr(serve_cli, "make_server_class", lambda: NotListening)    # never a real server
    assert main(["serve", str(DENSE), "--port", "0", "--api-key", key]) == 1
    assert "a key must be one or more printable ASCII characters without spaces" in capsys.readouterr().err
    pytest.importorskip("starlette")
    from minibert.serve.app import create_app
    with pytest.raises(InputError, match="printable ASCII"):
        create_app(minibert.load(DENSE), api_key=key)


@pytest.mark.parametrize("host, key, warned", [("0.0.0.0", None, True), ("::", None, True),
                                               ("192.168.1.5", None, True), ("0.0.0.0", "k3y", False),
                                               ("127.0.0.1", None, False), ("localhost", None, False),
                                               ("::1", None, False)])
def test_a_server_open_beyond_loopback_without_a_key_warns(host, key, warned, capsys, monkeypatch):
    """Before: --host 0.0.0.0 without a key served the model to the whole network without a word."""
    pytest.importorskip("uvicorn")
    from minibert.cli import main
    from minibert.cli import serve as serve_cli
    monkeypatch.setattr(serve_cli, "make_server_class", lambda: NotListening)
    monkeypatch.delenv("MINIBERT_API_KEY", raising=False)
    assert main(["serve", str(DENSE), "--host", host, "--port", "0", *(["--api-key", key] if key else [])]) == 0
    err = capsys.readouterr().err
    assert ("no --api-key is set: anyone who reaches the port can use the server" in err) is warned, err


# ---- refusals that name the request's own fields --------------------------------------------------------------

def test_a_long_text_refusal_names_the_routes_field_and_its_remedy():
    """Before: every route said 'inputs[0] ... shorten it or set truncate': OpenAI's route has `input` and no
    truncate field (only the server's --auto-truncate cuts there), and one string is no list."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient
    from minibert.serve.app import create_app
    long = "cat " * 100
    with TestClient(create_app(minibert.load(DENSE), log=lambda line: None)) as client:
        openai_error = client.post("/v1/embeddings", json={"input": ["a", long]})
        assert openai_error.status_code == 413
        assert openai_error.json()["error"]["message"] == (
            "input[1] has more than the model's 32 tokens; shorten it, or start the server with --auto-truncate "
            "(OpenAI's API has no truncate field)")
        assert client.post("/v1/embeddings", json={"input": long}).json()["error"]["message"].startswith(
            "input has more than")
        assert client.post("/embed", json={"inputs": long}).json()["error"] == \
            "inputs has more than the model's 32 tokens; shorten it or set truncate"
        assert client.post("/embed_all", json={"inputs": ["a", long]}).json()["error"].startswith("inputs[1] has")
    with TestClient(create_app(minibert.load(FIXTURES / "heads" / "bert"), log=lambda line: None)) as client:
        assert client.post("/embed_sparse", json={"inputs": "cat " * 600}).json()["error"].startswith(
            "inputs has more than")


# ---- the vectors -----------------------------------------------------------------------------------------------

def test_left_truncation_pools_the_texts_tokens_when_the_prompt_is_cut():
    """A recipe that leaves its prompt out of the pooling (st_prompt_excluded: 'hello cat: ', 4 tokens with
    [CLS]) and truncation_direction Left: the cut takes the prompt, so only [CLS] is left out. Before: the
    first 3 tokens of the text's end were left out instead (0.024 from these numbers)."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient
    from minibert.serve.app import create_app
    from minibert.tokenizer import encode_batch
    model = minibert.load(FIXTURES / "st_prompt_excluded")
    text = "the cat sat on the mat " * 20
    with TestClient(create_app(model, log=lambda line: None)) as client:
        got = client.post("/embed", json={"inputs": text, "prompt_name": "query", "truncate": True,
                                          "truncation_direction": "Left"}).json()[0]
        limit = client.get("/info").json()["max_input_length"]
    [whole] = encode_batch(model.tokenizer.backend, ["hello cat: " + text], None)
    ids = np.array([whole.ids[:1] + whole.ids[len(whole.ids) - (limit - 1):]])                  # [1, limit]
    hidden = model.forward(ids, np.ones_like(ids), np.zeros_like(ids)).last_hidden_state[0]       # [limit, H]
    want = hidden[1:].astype(np.float64).mean(axis=0)                                            # mean, no [CLS]
    assert np.abs(np.array(got) - want / np.linalg.norm(want)).max() <= 1e-6


# ---- slow clients ----------------------------------------------------------------------------------------------

def test_a_client_slow_to_send_its_body_holds_no_slot():
    """--max-concurrent-requests counts requests running the model. Before: a client that sent its headers
    and then its body slowly (or never) held a slot from the first byte, so that a few idle connections
    answered every real client 429."""
    import socket
    pytest.importorskip("uvicorn")
    from test_serve import running
    from minibert.serve.app import Limits
    with running(minibert.load(DENSE), Limits(max_concurrent_requests=1)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"inputs\": ")           # 11 of its 100 bytes, then nothing
            time.sleep(0.5)                                   # its route is reading the body by now
            with server.client() as http:
                answered = http.post("/embed", json={"inputs": "a cat"})
                assert answered.status_code == 200, answered.text
                assert "minibert_requests_in_flight 0" in http.get("/metrics").text


def test_serve_reads_a_reranker_as_rerank_reads_it(tmp_path, capsys, monkeypatch):
    """A sentence-transformers cross-encoder whose modules.json keeps the classifier in 0_Transformer/: the
    rerank command scores with it. Before: serve --reranker refused it ('config.json not found')."""
    pytest.importorskip("uvicorn")
    from minibert.cli import main
    from minibert.cli import serve as serve_cli
    directory = tmp_path / "ce"
    shutil.copytree(FIXTURES / "ce_one_label", directory / "0_Transformer")
    for name in ("modules.json", "config_sentence_transformers.json"):
        (directory / "0_Transformer" / name).rename(directory / name)
    modules = json.loads((directory / "modules.json").read_text())
    (directory / "modules.json").write_text(json.dumps([{**modules[0], "path": "0_Transformer"}]))
    seen = []
    monkeypatch.setattr(serve_cli, "make_server_class",
                        lambda: lambda config, state, keyed: seen.append(state) or NotListening(config, state, keyed))
    assert main(["serve", str(DENSE), "--port", "0", "--reranker", str(directory)]) == 0, capsys.readouterr().err
    logit = seen[0].reranker.logits(["cat"], ["a cat"])[0, 0]
    assert abs(1 / (1 + np.exp(-logit)) - minibert.load_cross_encoder(directory).predict(("cat", "a cat"))) <= 1e-7


def test_a_request_cut_by_the_graceful_timeout_gets_a_503_and_logs_no_traceback(caplog):
    """Before: a request still running when --graceful-timeout passed (here a body never sent whole) ended in
    'Exception in ASGI application' and a 40-line CancelledError traceback in the server's log."""
    import logging
    import socket
    import threading
    uvicorn = pytest.importorskip("uvicorn")
    from minibert.serve.app import create_app
    app = create_app(minibert.load(DENSE), log=lambda line: None)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                                           lifespan="on", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        with caplog.at_level(logging.ERROR), socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"inputs\": ")
            time.sleep(0.3)
            server.should_exit = True
            thread.join(15)
            answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"stopped before this request finished" in answer
        assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


def test_rerank_command_on_a_several_label_model_points_to_a_command(tmp_path, capsys):
    """Before: 'rank needs a one-label cross-encoder ...: use predict(pairs)', a Python method, to a user of
    the command line."""
    from minibert.cli import main
    passages = tmp_path / "passages.txt"
    passages.write_text("a cat\na dog\n")
    assert main(["rerank", "cat", str(passages), "--model", str(FIXTURES / "ce_three_labels")]) == 1
    err = capsys.readouterr().err
    assert "this one has 3 labels" in err and "score the pairs with minibert predict" in err, err


def test_rerank_with_truncate_writes_no_warning_to_the_servers_log():
    """Before: each /rerank with truncate: true whose pairs were cut printed Python's UserWarning, located in
    anyio's thread pool, to the server's stderr: the client asked for the cut."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient
    from minibert.serve.app import create_app
    app = create_app(minibert.load(DENSE), reranker=minibert.load_classifier(FIXTURES / "ce_one_label"),
                     log=lambda line: None)
    with TestClient(app) as client, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answer = client.post("/rerank", json={"query": "cat", "texts": ["cat " * 40, "dog"], "truncate": True})
    assert answer.status_code == 200 and len(answer.json()) == 2
    assert not [w for w in caught if "truncated" in str(w.message)], [str(w.message) for w in caught]


def test_a_body_without_end_is_refused_while_it_is_still_sent():
    """Before: a chunked body over --max-body-bytes was read to its end before the 413, so one that never ends
    kept the server reading (and the connection open) for as long as the client sent."""
    import socket
    pytest.importorskip("uvicorn")
    from test_serve import running
    from minibert.serve.app import Limits
    with running(minibert.load(DENSE), Limits(max_body_bytes=1000)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as endless:
            endless.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n")
            endless.settimeout(0.05)
            answer = b""
            for _ in range(400):                           # 400 KiB at most, 400 times the limit
                try:
                    endless.sendall(b"400\r\n" + b" " * 1024 + b"\r\n")
                    answer += endless.recv(4096)
                except (socket.timeout, TimeoutError):
                    continue
                except OSError:                            # closed by the server after its answer
                    break
                if answer:
                    break
            endless.settimeout(5)
            while answer and not answer.endswith(b"}"):          # the rest of the JSON answer
                more = endless.recv(4096)
                if not more:
                    break
                answer += more
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"over the server's limit of 1000 bytes" in answer


def test_token_ids_with_a_prompt_name_are_refused():
    """Before: prompt_name with token ids was dropped without a word: the vector of the ids alone, 0.22 from
    the text's with its prompt on st_prompt_excluded."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient
    from minibert.serve.app import create_app
    with TestClient(create_app(minibert.load(FIXTURES / "st_prompt_excluded"), log=lambda line: None)) as client:
        refused = client.post("/embed", json={"inputs": [2, 47, 36, 3], "prompt_name": "query"})
        assert refused.status_code == 422 and refused.json()["error"].startswith("prompt_name applies to texts")
        assert client.post("/embed", json={"inputs": [2, 47, 36, 3]}).status_code == 200
        long = client.post("/embed", json={"inputs": [2] + [47] * 40 + [3], "truncate": True})
        assert long.status_code == 413 and "token ids are never truncated" in long.json()["error"]


def test_answers_do_not_show_the_servers_directories(tmp_path):
    """Before: /info's reranker and /embed_sparse's 422 gave the absolute directories on the server's disk to
    any client (without a key, anyone who reaches the port)."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient
    from minibert.serve.app import create_app
    reranker = shutil.copytree(FIXTURES / "ce_one_label", tmp_path / "secret_place" / "my_reranker")
    model_dir = shutil.copytree(DENSE, tmp_path / "secret_place" / "my_model")
    app = create_app(minibert.load(model_dir), reranker=minibert.load_classifier(reranker), log=lambda line: None)
    with TestClient(app) as client:
        info = client.get("/info")
        sparse = client.post("/embed_sparse", json={"inputs": "a cat"})
    assert info.json()["reranker"] == "my_reranker"
    assert sparse.status_code == 422 and "no masked-LM head" in sparse.json()["error"]
    for answer in (info, sparse):
        assert "secret_place" not in answer.text, answer.text
    sparse_encoder = shutil.copytree(FIXTURES / "heads" / "splade", tmp_path / "secret_place" / "my_splade")
    with TestClient(create_app(minibert.load(sparse_encoder), log=lambda line: None)) as client:
        dense = client.post("/embed", json={"inputs": "a cat"})
    assert dense.status_code == 422 and "my_splade is a SparseEncoder" in dense.json()["error"]
    assert "secret_place" not in dense.text, dense.text


def test_a_client_gone_before_its_body_ended_logs_one_line_not_a_traceback(caplog):
    """Before: a client that closed its connection partway through its body (or after 'Expect: 100-continue')
    left starlette's ClientDisconnect traceback, as a fault of the server, in the log."""
    import logging
    import socket
    pytest.importorskip("uvicorn")
    from test_serve import running
    with caplog.at_level(logging.ERROR), running(minibert.load(DENSE)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as gone:
            gone.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"inputs\": ")
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while not any('"path": "/embed"' in line for line in server.log) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any('"path": "/embed", "status": 400' in line for line in server.log), server.log
        with server.client() as http:
            assert http.post("/embed", json={"inputs": "a cat"}).status_code == 200
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


def test_several_authorization_headers_are_refused():
    """Before: the last Authorization header counted: 'Bearer wrong' then 'Bearer KEY' passed, the other
    order did not."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient
    from minibert.serve.app import create_app
    with TestClient(create_app(minibert.load(DENSE), api_key="k3y", log=lambda line: None)) as client:
        for keys in (["wrong", "k3y"], ["k3y", "wrong"], ["k3y", "k3y"]):
            headers = [("authorization", f"Bearer {key}") for key in keys]
            answer = client.post("/embed", json={"inputs": "a"}, headers=headers)
            assert answer.status_code == 401 and answer.json()["error"].startswith("several Authorization"), keys
        assert client.post("/embed", json={"inputs": "a"}, headers={"Authorization": "Bearer k3y"}).status_code == 200


def test_a_body_slower_than_the_body_timeout_is_answered_408_and_the_connection_closed():
    """A client that declares a body and sends it a few bytes at a time (or never) is answered 408 once
    --body-timeout has passed, instead of holding its connection, and the server's memory for it, for as long as
    it likes; a body that arrives in time is served as before."""
    import socket
    pytest.importorskip("uvicorn")
    from test_serve import running
    from minibert.serve.app import Limits
    with running(minibert.load(DENSE), Limits(body_timeout=0.5)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"inputs\"")
            started = time.monotonic()
            answer = b""
            while True:                                    # bounded by the socket's 10 s timeout
                more = slow.recv(4096)
                if not more:                               # closed by the server after its answer
                    break
                answer += more
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within 0.5 s (--body-timeout)" in answer
        assert 0.4 < waited < 3                           # closed with the answer, not at keep-alive's end
        httpx = pytest.importorskip("httpx")
        reply = httpx.post(server.url + "/embed", json={"inputs": "in time"}, timeout=30)
        assert reply.status_code == 200 and len(reply.json()[0]) == 12
