"""encode over worker processes (minibert.embed.process_pool): results in input order, bit-identical to one process in
float64, progress over the whole input, and no worker left running after close, an error, a killed worker or
Ctrl-C. Each pool start spawns fresh interpreters (seconds each), so the tests share one where they can."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from conftest import FIXTURES

import minibert
from minibert.errors import InputError, MiniBertError

pytestmark = pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")
MODEL = str(FIXTURES / "surface_query_document")
TEXTS = [f"the cat sat on the mat {'hello ' * (i % 5)}{i}" for i in range(120)]


def running(pid) -> bool:
    """Whether a process is alive (a zombie awaiting its parent counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def all_ended(pids, within=20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(running(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def model():
    return minibert.load(MODEL, dtype="float64")


@pytest.fixture(scope="module")
def pool(model):
    with model.start_multi_process_pool(2) as pool:
        yield pool
    assert all_ended(pool.pids)


def test_float64_vectors_equal_the_single_process_bit_for_bit_in_input_order(model, pool):
    seen = []
    got = model.encode(TEXTS, pool=pool, chunk_size=7, progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_array_equal(got, model.encode(TEXTS))
    assert seen[-1] == (120, 120) and len(seen) == 18 and [d for d, _ in seen] == sorted(d for d, _ in seen)
    options = {"truncate_dim": 5, "normalize": True, "prompt_name": "query", "batch_size": 3}
    np.testing.assert_array_equal(model.encode(TEXTS[:20], pool=pool, **options), model.encode(TEXTS[:20], **options))
    pairs = TEXTS[::-1]
    np.testing.assert_array_equal(model.encode(TEXTS, text_pairs=pairs, pool=pool),
                                  model.encode(TEXTS, text_pairs=pairs))
    tokens = model.encode(TEXTS[:9], pooling="none", pool=pool, chunk_size=2)
    assert len(tokens) == 9 and all(np.array_equal(a, b) for a, b in zip(tokens, model.encode(TEXTS[:9],
                                                                                              pooling="none")))
    assert model.encode("hello", pool=pool).shape == (16,) and model.encode([], pool=pool).shape == (0, 16)
    quantized = model.encode(TEXTS, pool=pool, precision="ubinary")          # quantized once, after merging
    np.testing.assert_array_equal(quantized, model.encode(TEXTS, precision="ubinary"))


def test_worker_warnings_reach_the_caller_naming_the_input_rows(model, pool):
    texts = ["hello"] * 10 + [" ".join(["the cat"] * 20)] + ["hello"] * 9
    with pytest.warns(UserWarning, match=r"1 of 5 texts \(rows 10-14\) were longer than 16 tokens"):
        model.encode(texts, pool=pool, chunk_size=5)


def test_workers_carry_settings_made_on_the_model_after_load(model):
    model.max_seq_length, model.truncate_dim = 8, 6
    try:
        with model.start_multi_process_pool(1) as pool:
            np.testing.assert_array_equal(model.encode(TEXTS[:10], pool=pool), model.encode(TEXTS[:10]))
            assert model.encode(TEXTS[:10], pool=pool).shape == (10, 6)
    finally:
        model.max_seq_length, model.truncate_dim = 16, None


def test_an_error_in_a_worker_is_raised_here_and_ends_the_pool(model):
    pool = model.start_multi_process_pool(2)
    with pytest.raises(InputError, match=r"layer 7 does not exist.*\(in a worker process, texts \d+-\d+\)"):
        model.encode(TEXTS, pool=pool, layers=[7], combine="mean")
    assert pool.closed and all_ended(pool.pids)
    with pytest.raises(InputError, match="closed"):
        model.encode(TEXTS, pool=pool)


def test_a_killed_worker_is_reported_and_the_others_end(model):
    pool = model.start_multi_process_pool(2)
    os.kill(pool.pids[0], signal.SIGKILL)
    with pytest.raises(MiniBertError, match="exited with code -9"):
        model.encode(TEXTS * 50, pool=pool, chunk_size=10)
    assert all_ended(pool.pids)


def test_ctrl_c_leaves_no_worker_running(tmp_path):
    script = tmp_path / "encode_forever.py"
    script.write_text(textwrap.dedent(f"""
        import minibert
        if __name__ == "__main__":
            model = minibert.load({MODEL!r})
            pool = model.start_multi_process_pool(2)
            print("pids", *pool.pids, flush=True)
            while True:
                model.encode(["the cat sat on the mat"] * 400, pool=pool, chunk_size=5)
    """))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        # tokenizers 0.20 prints its own warnings on stdout (holes in a fixture's vocabulary): find our line.
        line = next((line for line in child.stdout if line.startswith("pids ")), "")
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2 and all(running(p) for p in pids), child.stderr.read()
        time.sleep(1.0)
        os.killpg(child.pid, signal.SIGINT)          # as Ctrl-C: the whole process group
        child.wait(timeout=60)
        assert "KeyboardInterrupt" in child.stderr.read()
        assert all_ended(pids), [p for p in pids if running(p)]
    finally:
        if child.poll() is None:
            child.kill()


def test_bad_pool_use_is_refused(model, pool):
    with pytest.raises(InputError, match="processes"):
        model.start_multi_process_pool(0)
    with pytest.raises(InputError, match="target devices"):
        model.start_multi_process_pool(["cuda:0"])
    with pytest.raises(InputError, match="capture"):
        model.encode(TEXTS, pool=pool, capture="layer1.query")
    with pytest.raises(InputError, match="start_multi_process_pool"):
        model.encode(TEXTS, pool=object())
    with pytest.raises(InputError, match="chunk_size"):
        model.encode(TEXTS, pool=pool, chunk_size=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = minibert.load(str(FIXTURES / "surface_dot"))
    with pytest.raises(InputError, match="not this model"):
        other.encode(TEXTS, pool=pool)


def test_threads_per_process_that_is_not_a_count_is_refused_here(model):
    """0 was taken as "not given", -1 and 2.5 failed in the worker, "x" too: each is refused in the caller."""
    for bad in (0, -1, 2.5, "x", True):
        with pytest.raises(InputError, match="threads_per_process must be an int >= 1"):
            model.start_multi_process_pool(1, threads_per_process=bad)


def test_a_worker_that_cannot_load_the_model_raises_its_own_error(tmp_path):
    """The worker sends its error and ends at once: the caller gets that error, never just "exited with code 0"
    (the pool reads what a dead worker sent before it reports the death)."""
    import shutil
    copy = tmp_path / "model"
    shutil.copytree(MODEL, copy)
    model = minibert.load(copy)
    (copy / "model.safetensors").unlink()          # the workers read the files; the parent already has them
    for _ in range(3):
        with pytest.raises(MiniBertError, match="while a worker process loaded the model") as caught:
            model.start_multi_process_pool(2)
        assert "exited with code" not in str(caught.value)
