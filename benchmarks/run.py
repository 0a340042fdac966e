"""Run every benchmark of issue 6 and print one table; exit 1 on any MISS.

    python -m benchmarks            # all (about 4 minutes on 2 idle cores)
    python -m benchmarks plan apply # some: plan, apply, build, memory, sharded, import, diff, infer, probe
    python -m benchmarks --settle 0 # do not wait for other processes to quiet down

Each benchmark runs in its own fresh interpreter (no allocator or GC state
carried over), with glibc's mmap threshold fixed so that every repetition gets
fresh pages as a training start does (``common.FRESH_MEMORY``), and prints its
rows; ratios are measured side by side in that process: the median over 5
repetitions of A/B pairs run back to back (9 for the sharded row).

Parallel fills need free cores, so before each benchmark the runner waits (up to
``--settle`` seconds, default 120) until other processes leave the machine's
cores idle, and it reports how many cores other processes kept busy while the
benchmark ran.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from .common import FRESH_MEMORY, MARK, Row

BENCHMARKS = ("plan", "apply", "build", "memory", "sharded", "import", "diff", "infer", "probe")
ROOT = Path(__file__).resolve().parent.parent


def run_one(name: str) -> tuple[list[Row], float, float, str]:
    """Rows, seconds, cores other processes kept busy meanwhile, error."""
    busy0, ours0, start = _busy_seconds(), _children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.bench_{name}"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONWARNINGS": "ignore", **FRESH_MEMORY})
    seconds = time.perf_counter() - start
    others = max(0.0, (_busy_seconds() - busy0) - (_children_cpu() - ours0)) / seconds
    rows = [Row(**json.loads(line[len(MARK):])) for line in proc.stdout.splitlines() if line.startswith(MARK)]
    error = "" if proc.returncode == 0 and rows else (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return rows, seconds, others, error


def _busy_seconds() -> float:
    """CPU seconds all processes have used on this machine (from /proc/stat)."""
    fields = list(map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]))
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def settle(limit: float) -> tuple[float, float]:
    """Wait (at most ``limit`` s) until other processes leave all cores but a quarter of one
    idle for 3 s running; returns (seconds waited, cores they kept busy in the last second)."""
    start, quiet = time.perf_counter(), 0
    while True:
        before = _busy_seconds()
        time.sleep(1.0)
        others = _busy_seconds() - before
        quiet = quiet + 1 if others < 0.25 else 0
        waited = time.perf_counter() - start
        if quiet >= 3 or waited >= limit:
            return waited, others


def machine() -> str:
    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = "CUDA" if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores ({cpu}), {gpu}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"load average {os.getloadavg()[0]:.2f}")


def table(rows: list[Row]) -> str:
    lines = ["| target | ratio | threshold | result | measured |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.3f}"
        threshold = "-" if r.threshold is None else f"<= {r.threshold:g}"
        lines.append(f"| {r.target} | {ratio} | {threshold} | {r.verdict} | {r.context} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    limit = 120.0
    if "--settle" in argv:
        at = argv.index("--settle")
        limit = float(argv[at + 1])
        argv = argv[:at] + argv[at + 2:]
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    print(f"initspec benchmarks, {datetime.date.today().isoformat()}, {machine()}", flush=True)
    rows: list[Row] = []
    for name in names:
        waited = settle(limit)[0] if limit > 0 else 0.0
        found, seconds, others, error = run_one(name)
        print(f"  {name}: {seconds:.0f} s (waited {waited:.0f} s for quiet cores; other processes kept "
              f"{others:.2f} of {os.cpu_count()} cores busy meanwhile)" + (f"  FAILED: {error}" if error else ""),
              flush=True)
        rows += found or [Row(f"{name} (did not run)", None, 0.0, error, ok=False)]
    print()
    print(table(rows))
    misses = [r.target for r in rows if r.verdict == "MISS"]
    print(f"\n{len(rows) - len(misses)} of {len(rows)} rows PASS or info" + (f"; MISS: {', '.join(misses)}" if misses else ""))
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
