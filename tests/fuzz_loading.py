"""Fuzz minibert.load with mutated model files; run by tests/test_loading.py in a child process, so that a
crash (a Rust panic that escapes, a segfault) or a hang fails the test instead of taking pytest down.

    python tests/fuzz_loading.py WORKDIR --seed 0 --iterations 300

Each iteration copies a valid checkpoint (a tiny BERT with vocab.txt, the RoBERTa fixture with
tokenizer.json, or the torch-saved pytorch_model.bin fixture), mutates one of its files (weights, config,
tokenizer files) with seeded random byte-level
or structure-aware mutations, then loads it (and, when that succeeds, runs a forward pass). The only acceptable
outcomes are success or a
minibert.MiniBertError; anything else is reported. Among the mutations are hostile header numbers (sizes of
4,300 digits, 100 KB integers referenced many times through the pickle's memo, more than 64 dimensions), which
once took minutes: the slowest refusal's time is reported. Prints one JSON line: counts, the slowest refusal
and the failures.
"""

import argparse
import io
import json
import pickle
import random
import shutil
import struct
import sys
import time
import traceback
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import minibert  # noqa: E402
from tiny import write_tiny  # noqa: E402

FAMILIES = Path(__file__).parent / "fixtures" / "families"
TORCH_BIN = Path(__file__).parent / "fixtures" / "torch_bin" / "views"
# Three starting points: a tiny BERT with vocab.txt, the RoBERTa fixture with tokenizer.json (byte-level BPE),
# and a torch-saved pytorch_model.bin whose tensors are views (offsets, strides) of shared storages.
TARGETS = {"tiny": ("model.safetensors", "config.json", "tokenizer_config.json", "vocab.txt"),
           "roberta": ("model.safetensors", "config.json", "tokenizer.json", "special_tokens_map.json"),
           "torch": ("pytorch_model.bin", "pytorch_model.bin")}
HUGE = int("9" * 4300)       # the longest int JSON text converts to by default
HOSTILE_SHAPES = [[HUGE] * 1000, [HUGE] * 20, [1] * 65, [2 ** 62, 2 ** 62, 0], [2 ** 70], [2 ** 61, 1]]
INTERESTING_NUMBERS = [0, 1, -1, 2, 7, 255, 256, 65535, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 63 - 1, 2 ** 63,
                       2 ** 64, -(2 ** 63), 10 ** 30, 0.5, -0.0, 1e308, float("nan")]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.choice(["flip", "set", "truncate", "insert", "delete", "splice", "length"])
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "set":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.choice([0, 0xFF, 0x7F, 0x80, ord("{"), ord('"'), ord("9")])
    elif kind == "truncate":
        del data[rng.randrange(len(data)):]
    elif kind == "insert":
        i = rng.randrange(len(data) + 1)
        data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "delete":
        i = rng.randrange(len(data))
        del data[i:i + rng.randint(1, 64)]
    elif kind == "splice":
        i, j = sorted(rng.randrange(len(data)) for _ in range(2))
        data[i:i] = data[j:j + rng.randint(1, 128)]
    else:                                                    # the 8-byte header length of safetensors
        old = struct.unpack("<Q", bytes(data[:8]).ljust(8, b"\0"))[0]
        length = rng.choice([0, 1, 2, len(data), len(data) - 8, 2 ** 63, 2 ** 64 - 1, old + rng.randint(-9, 9)])
        data[:8] = struct.pack("<Q", length % 2 ** 64)
    return bytes(data)


def mutate_json_value(value, rng: random.Random):
    """Replace, drop or retype one value somewhere inside a JSON document."""
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        action = rng.random()
        if action < 0.15:
            del value[key]
        elif action < 0.25:
            value[key + rng.choice(["_x", ""]) if rng.random() < 0.5 else "extra"] = rng.choice(INTERESTING_NUMBERS)
        else:
            value[key] = mutate_json_value(value[key], rng)
        return value
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        if rng.random() < 0.2:
            del value[i]
        else:
            value[i] = mutate_json_value(value[i], rng)
        return value
    return rng.choice(INTERESTING_NUMBERS + [None, True, False, "", "gelu", "bert", [], {}, [1, 2], "\ud800x",
                                             "x" * 1000, [[[[]]]]])


def mutate_torch_archive(data: bytes, rng: random.Random) -> bytes:
    """A valid zip whose data.pkl is mutated (bytes, or one pickle opcode's argument), or whose storage
    records are cut short, dropped or swapped."""
    source = zipfile.ZipFile(io.BytesIO(data))
    entries = {info.filename: source.read(info) for info in source.infolist()}
    pkl = next(name for name in entries if name.endswith("/data.pkl"))
    records = [name for name in entries if "/data/" in name]
    kind = rng.choice(["pickle", "pickle", "int", "huge", "record", "drop", "swap"])
    if kind == "pickle":
        entries[pkl] = mutate_bytes(entries[pkl], rng)
    elif kind == "huge":             # one int becomes a 100 KB one (LONG4, memo 250); later ints refer to it
        raw = bytearray(entries[pkl])
        spots = [i for i, b in enumerate(raw[:-1]) if b in (ord("K"), ord("M"))]
        if spots:
            first = rng.randrange(len(spots))
            for i in rng.sample(spots[first + 1:], min(len(spots) - first - 1, rng.choice([1, 10, 40]))):
                raw[i:i + 2] = b"h\xfa"                    # BINGET 250 (both 2 bytes: later spots stay put)
            i = spots[first]
            big = pickle.dumps((1 << 800_000) - 1, protocol=2)[2:-1] + b"q\xfa"    # LONG4 ..., BINPUT 250
            raw[i:i + (3 if raw[i] == ord("M") else 2)] = big
        entries[pkl] = bytes(raw)
    elif kind == "int":              # BININT1 / BININT2 arguments: offsets, sizes, strides, numel
        raw = bytearray(entries[pkl])
        spots = [i for i, b in enumerate(raw[:-1]) if b in (ord("K"), ord("M"))]
        if spots:
            i = rng.choice(spots)
            raw[i + 1] = rng.choice([0, 1, 2, 15, 16, 17, 255])
        entries[pkl] = bytes(raw)
    elif kind == "record":
        name = rng.choice(records)
        entries[name] = entries[name][: rng.randrange(len(entries[name]) + 1)]
    elif kind == "drop":
        del entries[rng.choice(records)]
    else:
        a, b = rng.choice(records), rng.choice(records)
        entries[a], entries[b] = entries[b], entries[a]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, content in entries.items():
            z.writestr(name, content)
    return out.getvalue()


def mutate_structured(name: str, data: bytes, rng: random.Random) -> bytes:
    if name == "pytorch_model.bin":
        return mutate_torch_archive(data, rng)
    if name == "model.safetensors":
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
        if rng.random() < 0.2:      # hostile numbers in one entry
            entry = header[rng.choice([name for name in header if name != "__metadata__"])]
            if rng.random() < 0.8:
                entry["shape"] = list(rng.choice(HOSTILE_SHAPES))
            else:
                entry["data_offsets"] = [rng.choice([HUGE, 2 ** 70, 2 ** 63])] * 2
        else:
            header = mutate_json_value(header, rng)
        text = json.dumps(header).encode("utf-8", "surrogatepass")
        keep_length = rng.random() < 0.3                      # sometimes leave the old length in place
        return struct.pack("<Q", length if keep_length else len(text)) + text + data[8 + length:]
    if name == "vocab.txt" or name == "merges.txt":
        lines = data.decode("utf-8").splitlines()
        i = rng.randrange(len(lines))
        lines[i] = rng.choice(["", "[CLS]", "x" * 300, "\x00", lines[rng.randrange(len(lines))]])
        if rng.random() < 0.3:
            lines += [f"extra{k}" for k in range(rng.randint(1, 40))]
        return "\n".join(lines).encode("utf-8")
    return json.dumps(mutate_json_value(json.loads(data), rng)).encode("utf-8", "surrogatepass")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    work = Path(args.workdir)
    pristine = {"tiny": write_tiny(work / "pristine"), "roberta": work / "roberta", "torch": work / "torch"}
    shutil.copytree(FAMILIES / "roberta", pristine["roberta"], dirs_exist_ok=True)
    shutil.copytree(TORCH_BIN, pristine["torch"], dirs_exist_ok=True)
    originals = {(kind, name): (pristine[kind] / name).read_bytes()
                 for kind, names in TARGETS.items() for name in names}
    rng = random.Random(args.seed)
    counts = {"loaded": 0, "minibert_error": 0}
    slowest = (0.0, None)                   # the longest refusal: seconds, case
    failures = []
    start = time.perf_counter()
    for i in range(args.iterations):
        kind = rng.choice(list(TARGETS))
        name = rng.choice(TARGETS[kind])
        case = work / "case"
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(pristine[kind], case)
        structured = rng.random() < 0.5
        original = originals[kind, name]
        try:
            data = mutate_structured(name, original, rng) if structured else mutate_bytes(original, rng)
        except (ValueError, UnicodeDecodeError):
            data = mutate_bytes(original, rng)
        (case / name).write_bytes(data)
        began = time.perf_counter()
        try:
            model = minibert.load(str(case), backend="cpu")
            model(["the cat sat on the mat", ""])
            counts["loaded"] += 1
        except minibert.MiniBertError:
            counts["minibert_error"] += 1
            slowest = max(slowest, (time.perf_counter() - began, f"{i}: {kind}/{name}"))
        except BaseException as e:  # noqa: BLE001 - the point is to catch everything else
            failures.append({"iteration": i, "file": f"{kind}/{name}", "structured": structured,
                             "error": f"{type(e).__module__}.{type(e).__name__}: {e}"[:300],
                             "where": traceback.format_exc().splitlines()[-3:]})
    import resource
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"iterations": args.iterations, "seconds": round(time.perf_counter() - start, 2),
                      "peak_rss_mib": peak_rss_mib,
                      **counts, "slowest_refusal": [round(slowest[0], 3), slowest[1]], "failures": failures}))


if __name__ == "__main__":
    main()
