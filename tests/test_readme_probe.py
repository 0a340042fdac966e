"""The README's probe, LSUV and coordinate-check blocks, run as they stand (in a temporary directory), and the
output they quote checked against what the code prints now, so the documentation cannot drift from the code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(title: str, language: str) -> list[str]:
    text = README.read_text()
    section = text[text.index(f"## {title}\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def run(code: str, tmp_path: Path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_block"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def quoted_rows(title: str) -> list[str]:
    """The lines of the section's first text block, but the '...' that marks trimmed rows."""
    return [line.rstrip() for line in blocks(title, "text")[0].splitlines() if line.strip() not in ("", "...")]


def test_probe_block(tmp_path, monkeypatch, capsys):
    ns = run(blocks("Signal flow at init: initspec probe", "python")[0], tmp_path, monkeypatch)
    result = ns["result"]
    assert round(result.module("transformer.h.0.ln_1").std, 4) == 0.9936
    assert round(result.param("transformer.wte.weight").grad_to_weight, 4) == 0.3522
    assert (tmp_path / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    for line in quoted_rows("Signal flow at init: initspec probe"):   # the quoted table is today's output
        assert line.strip() in (p.strip() for p in printed), line


def test_lsuv_block(tmp_path, monkeypatch, capsys):
    title = "LSUV: a data-dependent step"
    (spec,) = blocks(title, "yaml")
    (tmp_path / spec.splitlines()[0].removeprefix("# ")).write_text(spec)   # the file the block names
    ns = run(blocks(title, "python")[0], tmp_path, monkeypatch)
    row = ns["report"].data_results[1]
    assert (row["layer"], round(row["std_before"], 4), round(row["std_after"], 4), row["iterations"]) == (
        "2", 0.6297, 1.0, 1)
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()]
    for line in quoted_rows(title):
        assert line.strip() in printed, line


def test_coordcheck_block(tmp_path, monkeypatch):
    title = "Coordinate checks: --sweep"
    ns = run(blocks(title, "python")[0], tmp_path, monkeypatch)
    check = ns["check"]
    assert check.stable and f"{check.slope('readout', 3):+.3f}" == "-0.060"
    mup_row = next(line for line in README.read_text().splitlines() if line.startswith("| µP (`mup`"))
    assert mup_row.split(" | ")[1:5] == [f"{check.slope('readout', s):+.3f}" for s in range(4)]
    assert (tmp_path / "coordcheck.png").exists()
