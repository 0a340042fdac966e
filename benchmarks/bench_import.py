"""Target 7: ``import initspec`` stays light: under 0.5 s more than ``import torch`` alone.

Each side is a fresh interpreter (nothing cached in the process), run alternately
(torch, initspec, initspec, torch, ...): one runs ``import torch``, the other
``import torch, initspec``, each timing its imports from the first statement. The
row is the median over pairs of the difference in seconds. The second side also
lists the optional packages (lightning, transformers, accelerate, scipy,
matplotlib) that ended up imported: there must be none.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

from .common import REPEATS, Row, main, ms, paired

OPTIONAL = ("lightning", "pytorch_lightning", "transformers", "accelerate", "scipy", "matplotlib")
CHILD = """
import json, sys, time
start = time.perf_counter()
import torch
torch_done = time.perf_counter()
if sys.argv[1] == "initspec":
    import initspec
end = time.perf_counter()
print(json.dumps({"seconds": end - start, "torch": torch_done - start,
                  "optional": sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)}))
"""


def run_child(which: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, which, json.dumps(OPTIONAL)], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout)


def run() -> list[Row]:
    results: dict[str, list[dict]] = {"torch": [], "initspec": []}
    run_child("initspec")                                     # warm the file cache for both sides
    paired(lambda: results["torch"].append(run_child("torch")),
           lambda: results["initspec"].append(run_child("initspec")), repeats=REPEATS + 2)
    torch_s = [r["seconds"] for r in results["torch"]]
    both_s = [r["seconds"] for r in results["initspec"]]
    extra = statistics.median(b - a for a, b in zip(torch_s, both_s))
    optional = sorted({m for r in results["initspec"] for m in r["optional"]})
    return [Row("7. import initspec: seconds more than import torch (fresh interpreters)", extra, 0.5,
                f"import torch {ms(statistics.median(torch_s))}, import torch, initspec "
                f"{ms(statistics.median(both_s))} ({len(torch_s)} pairs); optional packages imported: "
                + (", ".join(optional) if optional else "none"), not optional)]


if __name__ == "__main__":
    main(run, "benchmarks.bench_import")
