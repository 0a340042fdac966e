"""Target 4: peak resident memory of ``initspec.build`` (GPT-2 small, gpt2) over the interpreter's baseline.

Runs in a fresh subprocess: imports everything, reads its current resident set
(``VmRSS``) as the baseline, builds once, and reads the peak (``ru_maxrss``).
The peak counts everything since the process started, so an import-time peak
can only make the build look worse. Compared with the model's parameter bytes
(each unique tensor once): no second copy of the weights may appear.
"""
from __future__ import annotations

import json
import subprocess
import sys

from .common import Row, main

CHILD = r"""
import json, resource
import torch
import initspec
from initspec.models.gpt import gpt2_small
spec = initspec.load_spec("gpt2", vars={"n_layer": 12})
with torch.device("meta"):
    initspec.plan(gpt2_small(), spec)          # lazy imports and caches, as a launcher's first call would

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

before = rss_kib()
model, report = initspec.build(gpt2_small, spec, device="cpu")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
params = {id(p): p.numel() * p.element_size() for p in model.parameters()}
print(json.dumps({"baseline_kib": before, "peak_kib": peak, "param_bytes": sum(params.values()),
                  "after_kib": rss_kib()}))
"""


def measure() -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run() -> list[Row]:
    results = [measure() for _ in range(3)]   # memory is not noisy, but take the worst of three
    ratios = [(r["peak_kib"] - r["baseline_kib"]) * 1024 / r["param_bytes"] for r in results]
    worst = max(range(3), key=ratios.__getitem__)
    r = results[worst]
    mib = 1 / 1024
    return [Row("4. peak RSS of build over baseline / parameter bytes", ratios[worst], 1.15,
                f"baseline {r['baseline_kib'] * mib:.0f} MiB, peak {r['peak_kib'] * mib:.0f} MiB, parameters "
                f"{r['param_bytes'] / 2**20:.0f} MiB (worst of 3 subprocesses; ratios "
                + ", ".join(f"{x:.3f}" for x in ratios) + ")")]


if __name__ == "__main__":
    main(run, "benchmarks.bench_memory")
