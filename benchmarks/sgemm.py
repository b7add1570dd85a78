"""The sgemm libraries a user can install, timed on the model's projection shapes: is one faster than NumPy's?

    python benchmarks/sgemm.py --venv /work/bench/venv-sgemm [--torch-python PATH] [--rounds 5]
        [--threads 1 2 2x1] [--rows 16 64 256 1024 4096] [--coretype Haswell SkylakeX] [--mkl-isa AVX2 AVX512]
        [--json out.json]

C = A @ W for A [rows, K], W [K, N] float32 (row-major, C preallocated as minibert's linear does; the bias
and activation are minibert's own epilogue kernel whatever the library, so they are not timed), on the
projection shapes of MiniLM / BERT-base / BERT-large: (K, N) = (H, H), (H, 4H), (4H, H) for H 384, 768, 1024.

Candidates (rounds interleave them, and the table shows the median over rounds of each round's median;
one-thread calls of the first four share a process and take turns measurement by measurement, every
other case has a process of its own, so that one library's spinning thread pool cannot slow the next):
  numpy        NumPy's bundled OpenBLAS (np.matmul with out=)
  openblas-new the `scipy-openblas32` wheel's newer OpenBLAS, cblas_sgemm through ctypes
  mkl          the `mkl` wheel's libmkl_rt, cblas_sgemm
  mkl-packed   the same, W packed once (cblas_sgemm_pack) and cblas_sgemm_compute per call
  onednn       the `onednn` wheel's libdnnl, dnnl_sgemm (its TBB pool: held to one thread by CPU affinity
               at threads "1"; at "2x1" nothing holds a call to one thread, so its pieces may share both)
  torch        torch.mm(out=) from --torch-python, the yardstick
--coretype X adds "numpy[X]" and "openblas-new[X]" (OPENBLAS_CORETYPE=X); --mkl-isa X adds "mkl[X]" and
"mkl-packed[X]" (MKL_ENABLE_INSTRUCTIONS=X: MKL caps its code path at X, and ignores an X the CPU lacks).
A variant whose process dies (an AVX-512 kernel on a CPU without it) is reported with its exit status.

Threads: "1" and "2" set each library's own count (threadpoolctl for NumPy, openblas_set_num_threads,
mkl_set_num_threads, torch.set_num_threads); "2x1" is how minibert's "cpu" backend runs a matmul on two
threads: the rows cut in two pieces, each a one-thread call on a thread of its own (ctypes and torch
release the GIL).

Each process first checks its results against NumPy's float32 matmul on every (K, N) at 64 rows (max
|difference| / (max |A| * max |W| * K), printed), then times every shape: one warm-up call, then `--reps`
measurements of at least 20 ms each (the call repeated), the candidates of a process taking turns
measurement by measurement. Wall time, and for one thread also the process's CPU time (the time the
thread held a core: on a machine shared with other jobs, the less noisy of the two). The record starts
with the machine: CPU model, its SIMD flags, the kernel, each library's version and chosen kernel, and
MKL_VERBOSE's line and the kernel library MKL loads (the code path it takes on this CPU).
"""

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SIZES = (384, 768, 1024)
SHAPES = tuple((k, n) for h in SIZES for k, n in ((h, h), (h, 4 * h), (4 * h, h)))   # (K, N)
BASE = ("numpy", "openblas-new", "mkl", "mkl-packed", "onednn", "torch")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default="/work/bench/venv-sgemm",
                        help="the venv holding numpy, mkl, scipy-openblas32, onednn, threadpoolctl")
    parser.add_argument("--torch-python", default=None, help="a Python with torch (its candidate is skipped without)")
    parser.add_argument("--candidates", nargs="+", default=list(BASE))
    parser.add_argument("--coretype", nargs="*", default=[])
    parser.add_argument("--mkl-isa", nargs="*", default=[])
    parser.add_argument("--threads", nargs="+", default=["1", "2", "2x1"])
    parser.add_argument("--rows", nargs="+", type=int, default=[16, 64, 256, 1024, 4096])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the record here (after every round)")
    parser.add_argument("--report", default=None, metavar="JSON", help="print the tables of a record --json wrote")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


# ---------------------------------------------------------------- worker: one candidate, one thread setting

def make_numpy(threads):
    import numpy as np
    from threadpoolctl import threadpool_limits
    threadpool_limits(threads, user_api="blas")

    def prepare(w):
        return lambda a, c: np.matmul(a, w, out=c)
    return prepare


def make_openblas_new(threads):
    import scipy_openblas32
    lib = ctypes.CDLL(os.path.join(os.path.dirname(scipy_openblas32.__file__), "lib", "libscipy_openblas.so"))
    lib.scipy_openblas_set_num_threads(threads)
    sgemm = lib.scipy_cblas_sgemm
    return cblas_prepare(sgemm)


def cblas_prepare(sgemm):
    f = ctypes.c_float
    sgemm.argtypes = [ctypes.c_int] * 3 + [ctypes.c_int] * 3 + [f, ctypes.c_void_p, ctypes.c_int,
                                                                  ctypes.c_void_p, ctypes.c_int, f,
                                                                  ctypes.c_void_p, ctypes.c_int]
    sgemm.restype = None

    def prepare(w):
        K, N = w.shape

        def run(a, c):               # row-major (101), no transposes (111)
            sgemm(101, 111, 111, a.shape[0], N, K, 1.0, a.ctypes.data, K, w.ctypes.data, N, 0.0, c.ctypes.data, N)
        return run
    return prepare


def mkl_library():
    return ctypes.CDLL(os.path.join(sys.prefix, "lib", "libmkl_rt.so.3"))


def make_mkl(threads):
    lib = mkl_library()
    lib.mkl_set_num_threads(ctypes.byref(ctypes.c_int(threads)))
    return cblas_prepare(lib.cblas_sgemm)


def make_mkl_packed(threads):
    import numpy as np
    lib = mkl_library()
    lib.mkl_set_num_threads(ctypes.byref(ctypes.c_int(threads)))
    lib.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
    lib.cblas_sgemm_pack_get_size.argtypes = [ctypes.c_int] * 4
    lib.cblas_sgemm_pack.argtypes = ([ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                                           ctypes.c_void_p])
    lib.cblas_sgemm_compute.argtypes = ([ctypes.c_int] * 6 + [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                                              ctypes.c_int, ctypes.c_float, ctypes.c_void_p,
                                                              ctypes.c_int])
    keep = []

    def prepare(w):
        K, N = w.shape
        size = lib.cblas_sgemm_pack_get_size(162, 1024, N, K)          # CblasBMatrix; m is only a hint
        packed = np.empty(size, dtype=np.uint8)
        keep.append(packed)
        lib.cblas_sgemm_pack(101, 162, 111, 1024, N, K, 1.0, w.ctypes.data, N, packed.ctypes.data)

        def run(a, c):               # CblasPacked (151) for B
            lib.cblas_sgemm_compute(101, 111, 151, a.shape[0], N, K, a.ctypes.data, K, packed.ctypes.data, N,
                                    0.0, c.ctypes.data, N)
        return run
    return prepare


def make_onednn(threads):
    if threads == 1:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})   # TBB sizes its arena by affinity
    lib = ctypes.CDLL(os.path.join(sys.prefix, "lib", "libdnnl.so.3"))
    sgemm = lib.dnnl_sgemm
    i64, f = ctypes.c_int64, ctypes.c_float
    sgemm.argtypes = [ctypes.c_char, ctypes.c_char, i64, i64, i64, f, ctypes.c_void_p, i64, ctypes.c_void_p, i64,
                      f, ctypes.c_void_p, i64]
    sgemm.restype = ctypes.c_int

    def prepare(w):
        K, N = w.shape

        def run(a, c):
            status = sgemm(b"N", b"N", a.shape[0], N, K, 1.0, a.ctypes.data, K, w.ctypes.data, N, 0.0,
                           c.ctypes.data, N)
            if status:
                raise RuntimeError(f"dnnl_sgemm returned {status}")
        return run
    return prepare


def make_torch(threads):
    import torch
    torch.set_num_threads(threads)

    def prepare(w):
        wt = torch.from_numpy(w)
        return lambda a, c: torch.mm(torch.from_numpy(a), wt, out=torch.from_numpy(c))
    return prepare


MAKERS = {"numpy": make_numpy, "openblas-new": make_openblas_new, "mkl": make_mkl, "mkl-packed": make_mkl_packed,
          "onednn": make_onednn, "torch": make_torch}


def versions(base):
    """What this process's candidate is: library version and kernel."""
    out = {}
    if base in ("numpy",):
        from threadpoolctl import threadpool_info
        info = [i for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]
        out = {"blas": [(i["internal_api"], i["version"], i.get("architecture")) for i in info]}
    elif base == "openblas-new":
        import scipy_openblas32
        lib = ctypes.CDLL(os.path.join(os.path.dirname(scipy_openblas32.__file__), "lib", "libscipy_openblas.so"))
        lib.scipy_openblas_get_config.restype = lib.scipy_openblas_get_corename.restype = ctypes.c_char_p
        out = {"config": lib.scipy_openblas_get_config().decode(), "core": lib.scipy_openblas_get_corename().decode()}
    elif base.startswith("mkl"):
        buf = ctypes.create_string_buffer(256)
        mkl_library().mkl_get_version_string(buf, 256)
        out = {"version": buf.value.decode().strip()}
    elif base == "onednn":
        class Version(ctypes.Structure):
            _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                        ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]
        lib = ctypes.CDLL(os.path.join(sys.prefix, "lib", "libdnnl.so.3"))
        lib.dnnl_version.restype = ctypes.POINTER(Version)
        v = lib.dnnl_version().contents
        out = {"version": f"{v.major}.{v.minor}.{v.patch}", "cpu_runtime": v.cpu_runtime}
    elif base == "torch":
        import torch
        out = {"version": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}
    return out


def worker(spec):
    """Time every candidate of spec["names"] (all loaded in this process) on every shape, interleaved: for each
    shape, `reps` rounds of one measurement per candidate."""
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor
    names, threads, rows = spec["names"], spec["threads"], spec["rows"]
    split = threads == "2x1"
    prepares = {name: MAKERS[base](1 if split else int(threads)) for name, base in names.items()}
    rng = np.random.default_rng(0)
    pool = ThreadPoolExecutor(1) if split else None
    result = {name: {"versions": versions(base), "check": {}, "seconds": {}, "cpu": {}}
              for name, base in names.items()}
    for K, N in SHAPES:
        w = rng.standard_normal((K, N), dtype=np.float32)
        runs = {name: prepare(w) for name, prepare in prepares.items()}
        a = rng.standard_normal((64, K), dtype=np.float32)
        scale = float(np.abs(a).max() * np.abs(w).max() * K)
        for name, run in runs.items():
            c = np.empty((64, N), dtype=np.float32)
            run(a, c)
            result[name]["check"][f"{K}x{N}"] = float(np.abs(c - a @ w).max() / scale)
        for M in rows:
            a = rng.standard_normal((M, K), dtype=np.float32)
            c = np.empty((M, N), dtype=np.float32)
            calls, repeats = {}, {}
            times, cpu = {name: [] for name in runs}, {name: [] for name in runs}
            for name, run in runs.items():
                if split:
                    def call(run=run, half=M // 2):
                        other = pool.submit(run, a[half:], c[half:])
                        run(a[:half], c[:half])
                        other.result()
                else:
                    def call(run=run):
                        run(a, c)
                start = time.perf_counter()
                call()                                             # warm-up, and the repeat count
                repeats[name] = max(1, int(0.02 / max(time.perf_counter() - start, 1e-7)))
                calls[name] = call
            for _ in range(spec["reps"]):
                for name, call in calls.items():
                    start, start_cpu = time.perf_counter(), time.process_time()
                    for _ in range(repeats[name]):
                        call()
                    times[name].append((time.perf_counter() - start) / repeats[name])
                    cpu[name].append((time.process_time() - start_cpu) / repeats[name])
            for name in runs:
                result[name]["seconds"][f"{M}x{K}x{N}"] = statistics.median(times[name])
                result[name]["cpu"][f"{M}x{K}x{N}"] = statistics.median(cpu[name])
    print(json.dumps(result))


# ---------------------------------------------------------------- driver

def machine(venv):
    flags = ""
    model = platform.processor()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    simd = [x for x in flags if x in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")]
    mkl = {}     # the code path MKL takes: MKL_VERBOSE's header and the kernel library it loaded
    for isa in ({}, {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, {"MKL_ENABLE_INSTRUCTIONS": "AVX512"}):
        verbose = subprocess.run(
            [os.path.join(venv, "bin", "python"), "-c",
             "import ctypes, os, sys, numpy as np\n"
             "lib = ctypes.CDLL(os.path.join(sys.prefix, 'lib', 'libmkl_rt.so.3'))\n"
             "a = np.ones((64, 64), np.float32); c = np.empty_like(a)\n"
             "f = ctypes.c_float\n"
             "lib.cblas_sgemm.argtypes = [ctypes.c_int] * 6 + [f, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,"
             " ctypes.c_int, f, ctypes.c_void_p, ctypes.c_int]\n"
             "lib.cblas_sgemm(101, 111, 111, 64, 64, 64, 1.0, a.ctypes.data, 64, a.ctypes.data, 64, 0.0,"
             " c.ctypes.data, 64)\n"
             "print(sorted({line.split('/')[-1] for line in open('/proc/self/maps') if 'libmkl_' in line}))\n"],
            env={**os.environ, "MKL_VERBOSE": "1", **isa}, capture_output=True, text=True)
        lines = verbose.stdout.strip().splitlines()
        mkl[isa.get("MKL_ENABLE_INSTRUCTIONS", "default")] = [line for line in lines if "oneMKL" in line] + lines[-1:]
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": model, "simd": simd,
            "cores": os.cpu_count(), "kernel": platform.release(), "mkl": mkl}


def candidates(args):
    """(name, base, environment) of every candidate."""
    out = []
    for base in args.candidates:
        out.append((base, base, {}))
        if base in ("numpy", "openblas-new"):
            out += [(f"{base}[{x}]", base, {"OPENBLAS_CORETYPE": x}) for x in args.coretype]
        if base in ("mkl", "mkl-packed"):
            out += [(f"{base}[{x}]", base, {"MKL_ENABLE_INSTRUCTIONS": x}) for x in args.mkl_isa]
    return out


def processes(cands, threads):
    """Groups of candidates that share one process: one-thread calls (threads "1", "2x1") of the libraries
    in the venv leave no thread pool spinning, so they interleave shape by shape in one process; a thread
    pool (threads "2"), onednn (its affinity hold), torch (another Python) or an environment variant get
    a process each."""
    shared = [(n, b, e) for n, b, e in cands if threads != "2" and not e and b not in ("onednn", "torch")]
    alone = [[c] for c in cands if c not in shared]
    return ([shared] if shared else []) + alone


def run_worker(args, group, threads):
    base, env = group[0][1], group[0][2]
    python = args.torch_python if base == "torch" else os.path.join(args.venv, "bin", "python")
    lib = os.path.join(args.venv, "lib")
    env = {**os.environ, **env, "LD_LIBRARY_PATH": lib if base == "onednn" else os.environ.get("LD_LIBRARY_PATH", "")}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1" if threads == "2x1" else threads      # pools start at the size each candidate is set to
    spec = {"names": {n: b for n, b, _ in group}, "threads": threads, "rows": args.rows, "reps": args.reps}
    # cwd /tmp: the repository's top-level kernels/ must not shadow anything torch imports
    proc = subprocess.run([python, os.path.abspath(__file__), "--worker", json.dumps(spec)], env=env, cwd="/tmp",
                          capture_output=True, text=True)
    time.sleep(0.3)                                          # the previous pool's threads stop spinning
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
        return {n: {"error": f"exit {proc.returncode} {tail}"} for n, _, _ in group}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    args = parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.report:
        return report_file(args)
    if args.torch_python is None and "torch" in args.candidates:
        args.candidates.remove("torch")
    args.venv = os.path.abspath(args.venv)                   # the workers run in /tmp
    if args.torch_python:
        args.torch_python = os.path.abspath(args.torch_python)
    record = {"machine": machine(args.venv), "rows": args.rows, "rounds": args.rounds}
    print(json.dumps(record["machine"], indent=1), flush=True)
    cands = candidates(args)
    runs = {}                       # (name, threads, clock) -> list of per-round {shape: seconds}
    info = {}
    for r in range(args.rounds):
        for threads in args.threads:
            for group in processes(cands, threads):
                for name, out in run_worker(args, group, threads).items():
                    if "error" in out:
                        info[(name, threads)] = out
                        print(f"round {r + 1}: {name} threads={threads}: {out['error']}", flush=True)
                        continue
                    info.setdefault((name, threads), {"versions": out["versions"], "check": out["check"]})
                    runs.setdefault((name, threads, "wall"), []).append(out["seconds"])
                    if threads == "1":     # one thread: its CPU time is the time it held a core
                        runs.setdefault((name, threads, "cpu"), []).append(out["cpu"])
        print(f"round {r + 1}/{args.rounds} done {time.strftime('%H:%M:%S')}", flush=True)
        table = {key: {shape: statistics.median(x[shape] for x in rounds) for shape in rounds[0]}
                 for key, rounds in runs.items()}
        if args.json:                # after every round: a long run cut short keeps what it measured
            record.update(rounds_done=r + 1, info={f"{n} {t}": v for (n, t), v in info.items()},
                          seconds={" ".join(key): v for key, v in table.items()},
                          per_round={" ".join(key): v for key, v in runs.items()})
            with open(args.json, "w") as f:
                json.dump(record, f, indent=1)
    report(args, cands, table, info)


def report_file(args):
    with open(args.report) as f:
        record = json.load(f)
    print(json.dumps(record["machine"], indent=1))
    print(f"rounds: {record.get('rounds_done', record['rounds'])} of {record['rounds']}")
    table = {tuple((key + " wall").split(" ")[:3]): v for key, v in record["seconds"].items()}
    info = {tuple(key.split(" ")): v for key, v in record["info"].items()}
    args.rows, args.threads = record["rows"], sorted({t for _, t, _ in table}, key=["1", "2x1", "2"].index)
    names = list(dict.fromkeys(n for n, _, _ in table))
    report(args, [(n, None, None) for n in names], table, info)


def gflops(shape, seconds):
    M, K, N = map(int, shape.split("x"))
    return 2 * M * K * N / seconds / 1e9


def report(args, cands, table, info):
    names = [name for name, _, _ in cands]
    for (name, threads), i in sorted(info.items()):
        print(f"{name:22s} threads={threads:3s} " + (i["error"] if "error" in i else
              f"{i['versions']}  check: max rel err {max(i['check'].values()):.1e}"))
    for threads, clock in [(t, "wall") for t in args.threads] + [("1", "cpu")] * ("1" in args.threads):
        base = table.get(("numpy", threads, clock))
        present = [n for n in names if (n, threads, clock) in table]
        if not present:
            continue
        print(f"\nthreads={threads}, {'wall time' if clock == 'wall' else 'the thread CPU time'}: GFLOP/s (median "
              f"over rounds); in brackets numpy's time / this one's (above 1: faster than numpy)")
        print(f"{'rows x K x N':18s}" + "".join(f"{n:>16s}" for n in present))
        for shape in table[(present[0], threads, clock)]:
            cells = []
            for n in present:
                s = table[(n, threads, clock)][shape]
                ratio = f" ({base[shape] / s:.2f})" if base else ""
                cells.append(f"{gflops(shape, s):.0f}{ratio}")
            print(f"{shape:18s}" + "".join(f"{c:>16s}" for c in cells))
        print("geometric mean of the ratios")
        for M in args.rows + ["all"]:
            cells = []
            for n in present:
                shapes = [s for s in table[(n, threads, clock)] if M == "all" or s.startswith(f"{M}x")]
                ratios = [base[s] / table[(n, threads, clock)][s] for s in shapes] if base else [1]
                cells.append(f"{statistics.geometric_mean(ratios):.2f}")
            print(f"{'  rows ' + str(M):18s}" + "".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
    main()
