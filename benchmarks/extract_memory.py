"""Peak memory of `minibert extract` on a synthetic corpus: all layers, mean-pooled, written to .npy.

    python benchmarks/extract_memory.py [--texts 100000] [--layers all]

Runs the command in a fresh process and reads its peak RSS (ru_maxrss of the child), so the figure
includes the interpreter, Numba, the model and every buffer. The output itself is memory-mapped.
"""

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a of to and in is was for on that with as by at from it his an were are which this be or "
         "has had not but have one first new after also two who they their time year city may other its "
         "over between during world people state music film team school river music language history").split()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=100_000)
    p.add_argument("--layers", default="all")
    args = p.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))).capitalize() + "."
                                    for _ in range(args.texts)) + "\n")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "minibert", "extract", str(corpus), "--out", str(Path(tmp) / "out"),
                        "--layers", args.layers, "--quiet"], check=True)
        wall = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        out_mib = (Path(tmp) / "out" / "vectors.npy").stat().st_size / 2**20
    print(f"{args.texts} texts, layers {args.layers}, mean pooling: peak RSS {peak_mib:.0f} MiB, "
          f"output {out_mib:.0f} MiB on disk, {wall:.0f} s ({args.texts / wall:.0f} texts/s)")


if __name__ == "__main__":
    main()
