"""Extraction on Ray Data (minibert.corpus.ray_data): the same files as the single-machine engine, rows checked.

The first group needs no Ray (the row-order checks, the Parquet reader, the errors a user sees without
Ray or without a reachable cluster) and runs in `make test`. The rest start a local Ray cluster
(2 CPUs, no dashboard) and run in `make ray-test`; without Ray they are skipped, saying so.
"""

import importlib.util
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

import minibert
from minibert.corpus import extract as local
from minibert.corpus import readers
from minibert.errors import InputError, MiniBertError
from minibert.corpus.ray_data import ChunkEmbedder, OrderedRows, check_reachable, require_ray

HAVE_RAY = importlib.util.find_spec("ray") is not None
if os.environ.get("MINIBERT_RAY_TEST") == "1" and not HAVE_RAY:      # `make ray-test`: skipping is failing
    raise ImportError("MINIBERT_RAY_TEST=1 but Ray is not importable: pip install 'minibert-numpy[ray]'")
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed: `make ray-test` runs these "
                                                    "(pip install 'minibert-numpy[ray]')")
needs_pyarrow = pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")


def corpus(n, seed=0):
    """Varied sentences: lengths from 1 to ~80 words, punctuation, digits, accents, a few empty texts."""
    rng = random.Random(seed)
    subjects = ["The cat", "A man", "Our new neighbour", "The committee", "Marie-Claire", "The old river bank",
                "Some investors", "A child in Zürich", "The 3rd runner", "Nobody"]
    verbs = ["sat on", "bought", "sold", "walked past", "reviewed", "painted", "ignored", "described", "fixed"]
    objects = ["the mat", "a guitar", "shares of ACME Corp.", "the proposal", "an old café", "42 apples",
               "the broken fence", "a long report about the economy", "the north tower"]
    tails = ["", " yesterday", " quickly", " before the storm", ", or so they say", " (again!)", " in 1999"]
    texts = []
    for i in range(n):
        if i % 397 == 5:
            texts.append("")
            continue
        clauses = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}"
                   for _ in range(rng.choice([1, 1, 1, 2, 3, 6]))]
        text = "; ".join(clauses) + rng.choice([".", "!", "?", "..."])
        texts.append(text if rng.random() > 0.1 else text.split()[0])
    return texts


def blocks_of(values, sizes, first=0):
    """values[first:] cut into blocks of the given sizes, as (index, values) pairs."""
    out, start = [], first
    for size in sizes:
        out.append((np.arange(start, start + size), values[start:start + size]))
        start += size
    return out


# ---------------------------------------------------------------------------------------------------
# Without Ray

def test_ordered_rows_serve_ranges_across_any_block_sizes():
    values = np.arange(100, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    rows = OrderedRows(lambda first: blocks_of(values, [7, 1, 30, 40, 22], first), 100)
    got = [rows(a, b) for a, b in [(0, 32), (32, 64), (64, 96), (96, 100)]]
    assert np.array_equal(np.concatenate(got), values)


def test_ordered_rows_skip_ranges_the_caller_does_not_ask_for():
    values = np.arange(50, dtype=np.float64)[:, None]
    rows = OrderedRows(lambda first: blocks_of(values, [25, 15], first), 50)
    assert np.array_equal(rows(10, 20), values[10:20])        # opened at row 10
    assert np.array_equal(rows(30, 50), values[30:50])        # rows 20..30 skipped
    with pytest.raises(MiniBertError, match="ranges must increase"):
        rows(0, 5)


def test_ordered_rows_keep_token_level_rows_as_arrays():
    ragged = np.empty(4, dtype=object)
    ragged[:] = [np.ones((n, 2)) * n for n in (3, 1, 4, 2)]
    rows = OrderedRows(lambda first: [(np.arange(0, 3), ragged[:3]), (np.arange(3, 4), ragged[3:])], 4)
    got = rows(0, 2) + rows(2, 4)
    assert [v.shape for v in got] == [(3, 2), (1, 2), (4, 2), (2, 2)]
    assert all(np.array_equal(a, b) for a, b in zip(got, ragged))


@pytest.mark.parametrize("damage, message", [
    ("duplicate", "returned row 9 where row 10 was due"),
    ("gap", "returned row 11 where row 10 was due"),
    ("swap", "returned row 20 where row 10 was due"),
    ("short", "ended after 20 of 30 rows: 10 are missing"),
    ("extra", "past the end of the 30 texts"),
])
def test_ordered_rows_refuse_duplicated_missing_or_reordered_rows(damage, message):
    values = np.arange(40, dtype=np.float32)[:, None]
    index = {"duplicate": [np.arange(0, 10), np.arange(9, 19)], "gap": [np.arange(0, 10), np.arange(11, 21)],
             "swap": [np.arange(0, 10), np.arange(20, 30), np.arange(10, 20)],
             "short": [np.arange(0, 10), np.arange(10, 20)],
             "extra": [np.arange(0, 10), np.arange(10, 20), np.arange(20, 30), np.arange(30, 31)]}[damage]
    rows = OrderedRows(lambda first: [(i, values[i]) for i in index], 30)
    with pytest.raises(MiniBertError, match=message):
        for start in range(0, 30, 10):
            rows(start, start + 10)


def test_extract_through_encode_range_writes_the_local_files(tmp_path, monkeypatch):
    """The seam the Ray engine uses: extract fed by OrderedRows from chunked encode calls, as Ray serves
    them, writes the same bytes as extract with its own encode."""
    model = minibert.load()
    monkeypatch.setattr(local, "CHUNK", 48)
    texts = corpus(120)

    def stream(first):
        for s in range(first, len(texts), 48):
            block = model.encode(texts[s:s + 48])
            for k in range(0, len(block), 25):                 # Ray's blocks need not be the chunks
                yield np.arange(s + k, s + min(k + 25, len(block))), block[k:k + 25]
    for fmt in ("npy", "safetensors"):
        a = local.extract(model, texts, tmp_path / f"local-{fmt}", fmt=fmt)
        b = local.extract(model, texts, tmp_path / f"seam-{fmt}", fmt=fmt, encode_range=OrderedRows(stream, 120),
                          engine={"name": "test"})
        assert np.array_equal(minibert.load_embeddings(tmp_path / f"local-{fmt}").vectors,
                              minibert.load_embeddings(tmp_path / f"seam-{fmt}").vectors)
        assert a["engine"] == {"name": "local"} and b["engine"] == {"name": "test"}


def test_embedder_outside_ray_is_encode_on_the_batch_and_starts_no_cluster():
    """Called directly (as Ray calls it) on one batch, Embedder gives encode's bits for that batch, keeps the
    other columns, refuses a missing text column, and does not start Ray by asking for its CPUs."""
    from minibert.corpus.ray_data import Embedder
    texts = corpus(40, seed=3)
    stage = Embedder(layers=[-1, 0], pooling="none", output_column="tokens")
    out = stage({"id": np.arange(40), "text": np.array(texts, dtype=object)})
    want = minibert.load().encode(texts, layers=[-1, 0], pooling="none")
    assert out["tokens"].dtype == object and np.array_equal(out["id"], np.arange(40))
    assert all(np.array_equal(a, b) for a, b in zip(out["tokens"], want))
    with pytest.raises(InputError, match=r"no column 'text' in the batch; columns are \['body'\]"):
        stage({"body": np.array(texts, dtype=object)})
    if HAVE_RAY:
        import ray
        assert not ray.is_initialized()


def test_without_ray_the_error_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)               # import ray -> ImportError
    with pytest.raises(MiniBertError, match=r"pip install 'minibert-numpy\[ray\]'"):
        require_ray()
    from minibert.cli import main
    (tmp_path / "in.txt").write_text("a\nb\n")
    assert main(["extract", str(tmp_path / "in.txt"), "--out", str(tmp_path / "o"), "--engine", "ray"]) == 1
    assert "pip install 'minibert-numpy[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_engine_options_need_the_ray_engine(tmp_path, capsys):
    from minibert.cli import main
    (tmp_path / "in.txt").write_text("a\n")
    assert main(["extract", str(tmp_path / "in.txt"), "--out", str(tmp_path / "o"), "--workers", "2"]) == 1
    assert "options of --engine ray" in capsys.readouterr().err


def test_unreachable_or_malformed_address_fails_fast():
    import socket
    with socket.socket() as s:                 # a port nothing listens on: bind, then close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        t = time.perf_counter()
        with pytest.raises(MiniBertError, match="cannot be reached"):
            check_reachable(address, timeout=5)
        assert time.perf_counter() - t < 6
    with pytest.raises(InputError, match="expected auto, HOST:PORT"):
        check_reachable("no-port-here", timeout=5)


@needs_pyarrow
def test_parquet_input_for_the_local_engine(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    texts = corpus(50)
    pq.write_table(pa.table({"id": list(range(50)), "body": texts}), tmp_path / "c.parquet")
    assert readers.read_texts(tmp_path / "c.parquet", "body") == texts
    with pytest.raises(InputError, match=r"no column 'text'; columns are \['id', 'body'\]"):
        readers.read_texts(tmp_path / "c.parquet", "text")
    with pytest.raises(InputError, match="holds int64, not strings"):
        readers.read_texts(tmp_path / "c.parquet", "id")
    pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "n.parquet")
    with pytest.raises(InputError, match="null in 1 row.*row 1"):
        readers.read_texts(tmp_path / "n.parquet", "text")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="cannot read as Parquet"):
        readers.read_texts(tmp_path / "bad.parquet", "text")


def test_parquet_without_pyarrow_says_how_to_get_it(tmp_path, monkeypatch):
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(InputError, match="reading Parquet needs pyarrow: pip install pyarrow"):
        readers.read_texts(tmp_path / "c.parquet", "text")


# ---------------------------------------------------------------------------------------------------
# On a local Ray cluster

@pytest.fixture(scope="module")
def ray_cluster():
    if not HAVE_RAY:
        pytest.skip("Ray is not installed: `make ray-test` runs these (pip install 'minibert-numpy[ray]')")
    import ray
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the test's embedder subclasses
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def with_threads(n, fn):
    """fn() with this thread's minibert/Numba thread count at n (the local engine's results depend on it:
    each thread's matmul covers its own rows, and OpenBLAS rounds a row by its place in the call)."""
    import numba
    numba.set_num_threads(n)
    try:
        return fn()
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


@pytest.fixture(scope="module")
def texts():
    return corpus(3000)


@pytest.fixture(scope="module")
def reference_1_thread(texts, tmp_path_factory):
    """The single-machine extract at 1 thread, chunks of 1,000 texts."""
    out = tmp_path_factory.mktemp("local") / "vecs"
    model = minibert.load()
    saved, local.CHUNK = local.CHUNK, 1000
    try:
        with_threads(1, lambda: local.extract(model, texts, out))
    finally:
        local.CHUNK = saved
    return minibert.load_embeddings(out).vectors


@needs_ray
def test_ray_engine_gives_the_local_vectors_bit_for_bit_in_input_order(ray_cluster, texts, reference_1_thread,
                                                                       tmp_path, monkeypatch):
    """2 workers x 1 CPU against the local engine at 1 thread: identical bits. Against the local engine at
    2 threads (each thread's matmul takes its own rows, so OpenBLAS rounds differently): measured max |diff|
    8.6e-7 on the first chunk, 3.3e-7 relative to its largest component (2.6), i.e. ~3.5 float32 ulp; held
    to 1e-6 relative to the largest component."""
    from minibert.corpus.ray_data import extract
    monkeypatch.setattr(local, "CHUNK", 1000)       # 3 chunks for 2 workers
    (tmp_path / "report").mkdir()
    stage = type("Report", (ReportThreads,), {"report_dir": str(tmp_path / "report")})
    manifest = extract(texts, tmp_path / "ray", workers=2, cpus_per_worker=1, progress=False, embedder_class=stage)
    got = minibert.load_embeddings(tmp_path / "ray")
    assert got.vectors.shape == (3000, 384)
    assert np.array_equal(got.vectors, reference_1_thread)
    engine = manifest["engine"]
    assert engine["name"] == "ray" and engine["workers"] == 2 and engine["cpus_per_worker"] == 1
    assert engine["threads_per_worker"] == [1] and 1 <= engine["actor_processes"] <= 2
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["engine"] == engine
    reports = thread_reports(tmp_path / "report")        # each actor: 1 Numba thread, OpenBLAS at 1
    assert reports and all(r == {"numba": 1, "openblas": 1, "omp_env": "1"} for r in reports), reports

    two_threads = tmp_path / "local2"                     # the first chunk is enough: chunks are independent
    with_threads(2, lambda: local.extract(minibert.load(), texts[:1000], two_threads))
    diff = np.abs(minibert.load_embeddings(two_threads).vectors - got.vectors[:1000]).max()
    scale = np.abs(got.vectors[:1000]).max()
    print(f"ray (1 thread per worker) vs local at 2 threads: max |diff| {diff:.2e}, relative {diff / scale:.2e}")
    assert diff <= 1e-6 * scale


# Test stages, made per test with type(...) so that their settings travel with them (class attributes are
# pickled by value); environment variables set now would not reach workers of a cluster already started.

class ReportThreads(ChunkEmbedder):
    """Writes the actor's thread settings (as encode sees them) into report_dir."""
    report_dir = None

    def encode_chunk(self, start, texts):
        from minibert.backends.threads import BLAS, thread_count
        counts = BLAS.thread_counts()
        report = {"numba": thread_count(), "openblas": counts[0] if counts else None,
                  "omp_env": os.environ.get("OMP_NUM_THREADS")}
        with open(os.path.join(self.report_dir, f"{os.getpid()}.json"), "w") as f:
            json.dump(report, f)
        return super().encode_chunk(start, texts)


def thread_reports(directory):
    return [json.loads(p.read_text()) for p in directory.iterdir()]


class FailOnce(ChunkEmbedder):
    """At the chunk starting at row 600, the first time (a marker file in marker_dir outlives the actor):
    fault "kill" ends the actor's process, fault "raise" raises."""
    marker_dir, fault = None, None

    def encode_chunk(self, start, texts):
        marker = os.path.join(self.marker_dir, f"{self.fault}-{start}")
        if start == 600 and not os.path.exists(marker):
            open(marker, "w").close()
            if self.fault == "kill":
                os._exit(1)
            raise RuntimeError("an injected failure")
        return super().encode_chunk(start, texts)


@needs_ray
def test_workers_run_as_many_threads_as_cpus_and_token_level_output(ray_cluster, tmp_path, monkeypatch):
    """1 worker x 2 CPUs: the actor's Numba and OpenBLAS counts are 2 (not the node's count), and its
    token-level output (a ragged column) equals the local engine's at 2 threads, bit for bit."""
    from minibert.corpus.ray_data import extract
    texts = corpus(400, seed=1)
    monkeypatch.setattr(local, "CHUNK", 150)
    (tmp_path / "report").mkdir()
    stage = type("Report", (ReportThreads,), {"report_dir": str(tmp_path / "report")})
    manifest = extract(texts, tmp_path / "ray", workers=1, cpus_per_worker=2, pooling="none", layers=[0, -1],
                       progress=False, embedder_class=stage)
    reference = tmp_path / "local"
    with_threads(2, lambda: local.extract(minibert.load(), texts, reference, pooling="none", layers=[0, -1]))
    got, want = minibert.load_embeddings(tmp_path / "ray"), minibert.load_embeddings(reference)
    assert np.array_equal(got.offsets, want.offsets) and np.array_equal(got.tokens, want.tokens)
    assert got.tokens.shape[1:] == (2, 384)
    assert manifest["engine"]["threads_per_worker"] == [2]
    reports = thread_reports(tmp_path / "report")
    assert reports and all(r == {"numba": 2, "openblas": 2, "omp_env": "2"} for r in reports), reports


@needs_ray
@pytest.mark.parametrize("fault", ["kill", "raise"])
def test_a_failed_chunk_is_retried_and_every_row_is_written_once(ray_cluster, texts, fault, tmp_path, monkeypatch):
    """kill: the actor dies mid-run; Ray Data restarts it and reruns the chunk. raise: the chunk's encode
    raises once; the actor tries it again. Either way the output is the reference, row for row."""
    from minibert.corpus.ray_data import extract
    monkeypatch.setattr(local, "CHUNK", 200)
    part = texts[:1000]
    stage = type("FailOnce", (FailOnce,), {"marker_dir": str(tmp_path), "fault": fault})
    manifest = extract(part, tmp_path / "ray", workers=2, progress=False, embedder_class=stage)
    assert (tmp_path / f"{fault}-600").exists()                       # the fault did happen
    got = minibert.load_embeddings(tmp_path / "ray")
    reference = tmp_path / "local"                                    # the local engine, same chunks of 200
    with_threads(1, lambda: local.extract(minibert.load(), part, reference))
    assert np.array_equal(got.vectors, minibert.load_embeddings(reference).vectors)
    assert manifest["count"] == 1000 and manifest["engine"]["name"] == "ray" and manifest["complete"]


@needs_ray
def test_a_chunk_that_keeps_failing_stops_the_run_with_one_line_and_no_manifest(ray_cluster, tmp_path,
                                                                                 monkeypatch):
    from minibert.corpus.ray_data import extract
    monkeypatch.setattr(local, "CHUNK", 100)
    stage = type("FailAlways", (FailOnce,), {"marker_dir": str(tmp_path / "nowhere"), "fault": "raise"})
    with pytest.raises(MiniBertError, match="the Ray run failed: .*FileNotFoundError"):   # no marker can be made
        extract(corpus(700), tmp_path / "ray", workers=1, retries=1, progress=False, embedder_class=stage)
    assert not (tmp_path / "ray" / "manifest.json").exists()


class WrongModel(ChunkEmbedder):
    """A worker whose model is not the driver's (here: told to expect another config hash)."""

    def __init__(self, model=None, **options):
        super().__init__(model, **{**options, "config_sha256": "0" * 64})


@needs_ray
def test_a_worker_with_another_model_is_refused(ray_cluster, tmp_path):
    from minibert.corpus.ray_data import extract
    t = time.perf_counter()
    with pytest.raises(MiniBertError, match=r"the Ray run failed: .*MiniBertError: this Ray worker's model .* is "
                                            r"not the driver's"):
        extract(corpus(20), tmp_path / "ray", workers=1, progress=False, embedder_class=WrongModel)
    assert time.perf_counter() - t < 120 and not (tmp_path / "ray" / "manifest.json").exists()


@needs_ray
def test_embedder_in_a_users_own_pipeline(ray_cluster):
    """Rows with a text column in, the same rows plus a fixed-shape tensor column (pooled) or a ragged
    column (token level) out. Ray's batches are not encode's, so a text's batch differs: measured max |diff|
    1.2e-7 on the normalised vectors (held to 1e-6) and 2.3e-6 on token vectors up to ~10 (held to 1e-5)."""
    from minibert.corpus.ray_data import Embedder
    ray = ray_cluster
    texts = corpus(120, seed=2)
    model = minibert.load()
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    out = ds.map_batches(Embedder, batch_size=50, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
                         fn_constructor_kwargs={"normalize": True, "layers": [-2, -1], "combine": "mean"}).take_all()
    out.sort(key=lambda r: r["id"])                     # Ray Data keeps order only when asked to
    assert [r["id"] for r in out] == list(range(120)) and [r["text"] for r in out] == texts
    want = model.encode(texts, normalize=True, layers=[-2, -1], combine="mean")
    got = np.stack([r["embedding"] for r in out])
    assert got.shape == (120, 384) and got.dtype == np.float32
    print(f"Embedder pooled vs model.encode: max |diff| {np.abs(got - want).max():.2e}")
    assert np.abs(got - want).max() <= 1e-6
    tokens = ds.map_batches(Embedder, batch_size=50, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
                            fn_constructor_kwargs={"pooling": "none", "output_column": "tokens"}).take_all()
    tokens.sort(key=lambda r: r["id"])
    want = model.encode(texts, pooling="none")
    assert [r["tokens"].shape for r in tokens] == [w.shape for w in want]
    diff = max(np.abs(r["tokens"] - w).max() for r, w in zip(tokens, want))
    print(f"Embedder token-level vs model.encode: max |diff| {diff:.2e}")
    assert diff <= 1e-5


@needs_ray
def test_cli_engine_ray_on_parquet(ray_cluster, texts, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from minibert.cli import main
    pq.write_table(pa.table({"body": texts[:300]}), tmp_path / "c.parquet")
    args = ["extract", str(tmp_path / "c.parquet"), "--field", "body", "--out", str(tmp_path / "o"),
            "--engine", "ray", "--workers", "2", "--format", "safetensors", "--dtype", "float16", "--quiet"]
    assert main(args) == 0
    assert "wrote 300 texts x [384] (safetensors, float16)" in capsys.readouterr().out
    got = minibert.load_embeddings(tmp_path / "o")
    want = minibert.load().encode(texts[:300])
    print(f"float16 output vs float32 encode: max |diff| {np.abs(got.vectors - want).max():.2e}")
    assert got.vectors.dtype == np.float16 and np.abs(got.vectors - want).max() <= 2e-3   # float16 rounding
    assert got.manifest["engine"]["workers"] == 2 and got.manifest["input"].endswith("c.parquet")
    assert main(args) == 1 and "--overwrite" in capsys.readouterr().err


@needs_ray
def test_cli_unreachable_cluster_is_a_one_line_error(tmp_path):
    (tmp_path / "in.txt").write_text("a\nb\n")
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "minibert", "extract", str(tmp_path / "in.txt"), "--out",
                          str(tmp_path / "o"), "--engine", "ray", "--address", "ray://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "Ray cluster at ray://127.0.0.1:9 cannot be reached" in run.stderr
    assert "Traceback" not in run.stderr and time.perf_counter() - t < 60
