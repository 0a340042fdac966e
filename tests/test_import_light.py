"""``import initspec`` imports no optional dependency: the launcher integrations (initspec.hf,
initspec.lightning) and the plots load theirs on first use. Its time is a benchmark row
(benchmarks/bench_import.py), not a test."""
import json
import subprocess
import sys

OPTIONAL = ("lightning", "pytorch_lightning", "transformers", "accelerate", "scipy", "matplotlib")


def imported_after(code: str) -> list[str]:
    """The optional packages present in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {OPTIONAL!r} if m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_initspec_imports_no_optional_package():
    assert imported_after("import initspec") == []


def test_the_launcher_helpers_import_none_either_until_used():
    assert imported_after("import initspec\ninitspec.hf, initspec.lightning") == []
