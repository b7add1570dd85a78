"""`minibert serve`: an embedding server speaking OpenAI's embeddings API and text-embeddings-inference's
routes, with batching across requests (docs/serving.md). Needs the `serve` extra (Starlette, uvicorn).

    engine.py    the model's recipe on token rows: encode's vectors, batch by batch
    batcher.py   rows of concurrent requests -> forward batches under a token budget, on a worker thread
    app.py       the routes, their JSON shapes and errors, limits, API key, access log
    metrics.py   Prometheus text
(the `serve` command itself, its arguments, start-up line and graceful shutdown: minibert/cli/serve.py)
"""
