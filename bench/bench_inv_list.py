"""How much slower `inv --list` is here than on a bare invoke project.

`inv --list` loads tasks.py; the workspace keeps it cheap by importing
boto3 and pulumi only inside task bodies.  Target: a ratio of at most 1.3.

    .venv/bin/python bench/bench_inv_list.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INV = Path(sys.executable).parent / "inv"
BARE_TASKS = '''from invoke import task


@task
def hello(c):
    """Say hello."""
    print("hello")
'''


def median_seconds(folder: Path, runs: int) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([str(INV), "--list"], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as bare:
        (Path(bare) / "tasks.py").write_text(BARE_TASKS)
        median_seconds(Path(bare), 2)  # warm the file cache
        baseline = median_seconds(Path(bare), args.runs)
    median_seconds(REPO, 2)
    ours = median_seconds(REPO, args.runs)
    ratio = ours / baseline
    print(f"inv --list: workspace {ours * 1000:.0f} ms, bare invoke "
          f"{baseline * 1000:.0f} ms, ratio {ratio:.2f} (target <= 1.30)")


if __name__ == "__main__":
    main()
