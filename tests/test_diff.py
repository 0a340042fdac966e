"""``initspec.diff`` and ``initspec diff``: each verdict with its reason, ties, names on one side
only, mistakes, the collapsed table, JSON, histograms and determinism.

Tensors are big enough (512 x 512) that a 10% std error or a truncation shows; the tensors of one
init are drawn by seeded generators, so every verdict below is fixed.
"""
from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import initspec
from initspec.compare import SAMPLE
from initspec.models.gpt import gpt2_small, gpt_tiny
from conftest import cli, table_row
from test_cli import run

N = (512, 512)


def holding(tensor: torch.Tensor) -> nn.Module:
    """A module whose one parameter, ``w``, is ``tensor``."""
    module = nn.Module()
    module.w = nn.Parameter(tensor, requires_grad=False)
    return module


def verdict_of(x: torch.Tensor, y: torch.Tensor):
    """The row of ``w`` when a module holding ``x`` is compared with one holding ``y``."""
    report = initspec.diff(holding(x), holding(y))
    assert len(report.rows) == 1
    return report.row("w")


def normal(seed: int, std: float = 0.02, shape=N) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


def rendered_rows(text: str) -> int:
    """Rows of a table ``explain()`` printed (rows are separated by lines, show_lines=True)."""
    return sum(line.startswith("├") for line in text.splitlines()) + 1


def gpt_tiny_gpt2(seed: int | None = None) -> nn.Module:
    return initspec.build(gpt_tiny, "gpt2", vars={"n_layer": 2}, seed=seed)[0]


# ------------------------------------------------------------------ verdicts and reasons

def test_identical_means_the_same_bits():
    row = verdict_of(normal(0), normal(0))
    assert (row.verdict, row.reason, row.ok) == ("identical", "", True)
    assert row.a == row.b and row.a.shape == N and row.a.numel == 512 * 512


@pytest.mark.parametrize("x, y, reason", [
    (torch.zeros(1000), torch.zeros(1000, dtype=torch.bfloat16), "constant 0; dtype float32 vs bfloat16"),
    (torch.ones(1000), torch.ones(1000, dtype=torch.float64), "constant 1; dtype float32 vs float64"),
    (torch.zeros(1000), -torch.zeros(1000), "constant 0"),          # other bits: not identical
])
def test_same_constant_when_bits_differ(x, y, reason):
    row = verdict_of(x, y)
    assert (row.verdict, row.reason, row.ok) == ("same constant", reason, True)


def test_two_seeds_of_one_normal_init_are_the_same_distribution():
    row = verdict_of(normal(0), normal(1))
    assert row.verdict == "same distribution" and row.ok
    assert re.fullmatch(r"KS p=0\.\d+", row.reason), row.reason
    assert row.ks.pvalue >= 1e-6 and row.ks.sample_a == row.ks.sample_b == SAMPLE
    small = verdict_of(normal(0, shape=(8, 8)), normal(1, shape=(8, 8)))
    assert small.verdict == "same distribution"
    assert re.search(r"small: 64 vs 64 values, std known to ±\d+%$", small.reason), small.reason


def test_three_values_against_three_say_the_std_is_not_pinned_down():
    row = verdict_of(normal(0, shape=(3,)), normal(1, shape=(3,)))
    assert row.verdict == "same distribution"
    assert row.reason.endswith("small: 3 vs 3 values, std not pinned down (tolerance over a factor 10)"), row.reason


@pytest.mark.parametrize("x, y, verdict, reason", [
    (torch.full((4,), float("inf")), torch.full((4,), float("inf")).double(), "differs",
     "NaN/inf values: 4 vs 4; dtype float32 vs float64"),                  # inf is no constant
    (torch.full((4,), float("nan")), torch.full((4,), float("nan")).half(), "differs",
     "NaN/inf values: 4 vs 4; dtype float32 vs float16"),
    (torch.zeros(0, 3), torch.zeros(0, 3).double(), "same constant", "no values; dtype float32 vs float64"),
    (torch.zeros(0, 3), torch.zeros(3, 0), "differs", "shape 0x3 vs 3x0; 0 vs 0 values"),
])
def test_non_finite_and_empty_tensors(x, y, verdict, reason):
    row = verdict_of(x, y)
    assert (row.verdict, row.reason) == (verdict, reason)


def test_a_std_ten_percent_off_differs():
    row = verdict_of(normal(0, std=0.022), normal(1, std=0.02))
    assert row.verdict == "differs" and not row.ok
    assert re.match(r"std 0\.0220 vs 0\.0200 \(\+9\.\d%; allowed -1\.\d% to \+1\.\d%\)", row.reason), row.reason


def test_a_normal_truncated_at_3_sigma_differs_from_a_normal_of_the_same_std():
    truncated = nn.init.trunc_normal_(torch.empty(N), std=1, a=-3, b=3, generator=torch.Generator().manual_seed(0))
    truncated = truncated / truncated.std() * 0.02          # the same std: only the tails tell them apart
    row = verdict_of(truncated, normal(1))
    assert row.verdict == "differs"
    assert re.fullmatch(r"bounded at ±0\.06\d+ vs unbounded \(0\.\d% of b's values outside a's range\)",
                        row.reason), row.reason


@pytest.mark.parametrize("x, y, reason", [
    (torch.zeros(100), torch.ones(100), r"constant 0 vs 1"),
    (normal(0, std=1.0, shape=1000), torch.zeros(1000), r"random vs constant 0: std 1\.0\d vs 0, zeros 0% vs 100%"),
    (torch.full((64,), 0.5), normal(0, shape=64), r"constant 0\.500 vs random: std 0 vs 0\.0\d+"),
    (normal(0, shape=(64, 32)), normal(1, shape=(32, 64)), r"shape 64x32 vs 32x64 \(values: same distribution\)"),
    (torch.zeros(64), torch.zeros(32), r"shape 64 vs 32 \(values: constant 0\)"),
])
def test_differs_with_its_reason(x, y, reason):
    row = verdict_of(x, y)
    assert row.verdict == "differs" and not row.ok
    assert re.fullmatch(reason, row.reason), row.reason


def test_a_dtype_alone_is_noted_not_a_difference():
    x = normal(0)
    row = verdict_of(x, x.double())     # the same values: each side sampled at positions of its own
    assert row.verdict == "same distribution" and row.ok
    assert re.fullmatch(r"KS p=0\.\d+; dtype float32 vs float64", row.reason), row.reason
    assert (row.a.dtype, row.b.dtype) == ("float32", "float64")


# ------------------------------------------------------------------ ties and names

def test_a_tie_on_one_side_only_differs_even_with_equal_values():
    tied = gpt_tiny_gpt2()
    untied = gpt_tiny(tie_embeddings=False)
    untied.load_state_dict(tied.state_dict())
    report = initspec.diff(tied, untied, labels=("tied", "untied"))
    assert not report.ok and report.counts == {"differs": 2, "identical": 27}
    wte, head = report.row("transformer.wte.weight"), report.row("lm_head.weight")
    assert wte.reason == "tied to lm_head.weight in tied, not in untied; values: identical"
    assert head.tie == "tied to transformer.wte.weight in tied, not in untied"
    assert [r.name for r in report.tie_differences] == ["transformer.wte.weight", "lm_head.weight"]
    assert "tied on one side only: transformer.wte.weight, lm_head.weight" in report.explain()

    same = initspec.diff(tied, gpt_tiny_gpt2())
    assert same.ok and same.counts == {"identical": 28}
    assert same.row("lm_head.weight").name == "transformer.wte.weight"
    assert same.row("lm_head.weight").aliases == ("lm_head.weight",)


def test_a_seed_checkpoint_keeps_its_ties(capsys, tmp_path):
    seed_file = tmp_path / "seed.safetensors"
    assert cli(capsys, "apply", "--out", str(seed_file), "model=gpt_tiny", "initspec=gpt2")[0] == 0
    tied = gpt_tiny_gpt2()
    report = initspec.diff(seed_file, tied)
    assert report.ok and report.counts == {"identical": 28}
    assert report.row("lm_head.weight").aliases == ("lm_head.weight",)

    untied = gpt_tiny(tie_embeddings=False)
    untied.load_state_dict(tied.state_dict())
    report = initspec.diff(str(seed_file), untied)
    assert report.counts == {"differs": 2, "identical": 27}
    assert report.row("lm_head.weight").reason == "tied to transformer.wte.weight in a, not in b; values: identical"

    code, out, _ = cli(capsys, "diff", "spec", str(seed_file), "model=gpt_tiny", "initspec=gpt2")
    assert code == 0 and "28 tensors: 28 identical" in out


def test_names_on_one_side_only_and_a_shape_mismatch():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    b = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.LayerNorm(3))
    b[0].load_state_dict(a[0].state_dict())
    report = initspec.diff(a, b)
    assert [(r.name, r.verdict) for r in report.rows] == [
        ("0.weight", "identical"), ("0.bias", "identical"), ("2.weight", "differs"), ("2.bias", "differs"),
        ("3.weight", "only in b"), ("3.bias", "only in b")]
    assert report.row("2.weight").reason.startswith("shape 2x8 vs 3x8 (values: ")
    assert report.row("3.weight").reason == "not in a" and report.row("3.weight").a is None
    assert report.only_in_a == () and report.only_in_b == ("3.weight", "3.bias")
    assert not report.ok and report.counts == {"identical": 2, "differs": 2, "only in b": 2}
    text = report.explain()
    assert "6 tensors: 2 identical, 2 differs, 2 only in b" in text and "only in b: 3.weight, 3.bias" in text


def test_a_model_against_a_file_of_other_names_lists_every_name_as_one_sided(tmp_path):
    path = tmp_path / "gpt.safetensors"
    initspec.save_checkpoint(gpt_tiny_gpt2(), path)
    report = initspec.diff(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), path)
    assert not report.ok and report.counts == {"only in a": 4, "only in b": 28}
    assert report.only_in_a == ("0.weight", "0.bias", "1.weight", "1.bias")
    assert len(report.only_in_b) == 29 and "lm_head.weight" in report.only_in_b   # the alias too


# ------------------------------------------------------------------ mistakes

def test_mistakes_raise_initspec_error_naming_the_side(tmp_path):
    model = nn.Linear(2, 2)
    not_safetensors = tmp_path / "notes.safetensors"
    not_safetensors.write_text("hello, not a safetensors file")
    empty_file = tmp_path / "empty.safetensors"
    from safetensors.torch import save_file
    save_file({}, str(empty_file))
    with torch.device("meta"):
        on_meta = nn.Linear(2, 2)
    cases = [
        ((model, not_safetensors), {}, "b", r"is not a readable safetensors file"),
        ((model, tmp_path / "missing.safetensors"), {}, "b", r"missing\.safetensors' does not exist"),
        ((tmp_path, model), {}, "a", r"is not a file"),
        ((nn.ReLU(), model), {}, "a", r"the model has no parameters or buffers: there is nothing to compare"),
        ((model, nn.ReLU()), {"labels": ("mine", "theirs")}, "b (theirs)", r"the model has no parameters"),
        ((model, empty_file), {}, "b", r"holds no tensors"),
        ((model, 3), {}, "b", r"expected a torch\.nn\.Module or a safetensors path, got int"),
        ((on_meta, model), {}, "a", r"2 tensor\(s\) are on the meta device"),
        ((model, model), {"sample": 1}, "sample", r"sample must be an integer >= 2, got 1"),
    ]
    for args, kwargs, path, what in cases:
        with pytest.raises(initspec.InitSpecError, match=what) as info:
            initspec.diff(*args, **kwargs)
        assert info.value.paths == (path,), (args, info.value)
        assert info.value.problems[0].fix, "every mistake says how to fix it"


# ------------------------------------------------------------------ the collapsed table

def test_gpt2_small_two_seeds_collapse_to_one_row_per_template():
    spec = initspec.load_spec("gpt2", vars={"n_layer": 12})
    a, _ = initspec.build(gpt2_small, spec, seed=0)
    b, _ = initspec.build(gpt2_small, spec, seed=1)
    report = initspec.diff(a, b, labels=("seed0", "seed1"))
    assert report.ok and len(report.rows) == 148
    assert report.counts == {"same distribution": 50, "identical": 98}
    text = report.explain()
    # wte (= lm_head), wpe, 12 per-layer templates, ln_f weight and bias
    assert rendered_rows(text) == 16
    assert text.count("(12 tensors)") == 12
    assert "(= lm_head.weight)" in text and "148 tensors: 98 identical, 50 same distribution" in text
    assert "same distribution" in table_row(text, "transformer.h.*.attn.c_proj.weight")
    assert rendered_rows(report.explain(collapse=False)) == 148


def test_the_same_pair_gives_the_same_report_twice():
    a, b = gpt_tiny_gpt2(seed=0), gpt_tiny_gpt2(seed=1)
    first = initspec.diff(a, b).to_json()
    assert initspec.diff(a, b).to_json() == first
    data = json.loads(first)
    assert data["ok"] and data["counts"] == {"same distribution": 2 + 4 * 2, "identical": 18}
    assert all(t["ks"]["pvalue"] >= 1e-6 for t in data["tensors"] if t["verdict"] == "same distribution")


# ------------------------------------------------------------------ the command

def test_command_spec_against_native_exits_1_and_against_itself_0(capsys):
    code, out, err = cli(capsys, "diff", "spec", "native", "model=gpt_tiny", "initspec=gpt2", "--width", "400")
    assert code == 1, err
    assert "initspec diff: spec (a) vs native (b)" in out
    assert "constant 0 vs random" in table_row(out, "transformer.h.0.attn.c_attn.bias")
    # N(0, 0.02) against nn.Linear's U(±1/sqrt(64)), on one line at this width
    assert "unbounded vs bounded at ±0.125" in table_row(out, "transformer.h.0.attn.c_attn.weight")
    assert "28 tensors: 10 identical, 18 differs" in out
    assert "same distribution: KS p >= 1e-06 on <= 32768 sampled values per side" in out
    code, out, err = cli(capsys, "diff", "spec", "spec", "model=gpt_tiny", "initspec=gpt2")
    assert code == 0 and "28 tensors: 28 identical" in out, err


@pytest.mark.parametrize("words, message", [
    (["spec", "nativ"], "'nativ' is neither spec, native nor an existing file. Did you mean 'native'?"),
    (["spec"], "diff compares two initializations, got 1 word(s): spec"),
    ([], "diff compares two initializations, got 0 word(s)"),
])
def test_command_word_mistakes_exit_2(capsys, words, message):
    code, out, err = cli(capsys, "diff", *words, "model=gpt_tiny", "initspec=gpt2")
    assert code == 2 and out == ""
    assert message in err and "Fix: " in err and "Traceback" not in err


def test_command_json_and_plot(capsys, tmp_path):
    plot = tmp_path / "diff.png"
    code, out, err = cli(capsys, "diff", "spec", "native", "model=gpt_tiny", "initspec=gpt2",
                         "--format", "json", "--plot", str(plot))
    assert code == 1, err
    data = json.loads(out)
    assert (data["a"], data["b"], data["ok"]) == ("spec", "native", False)
    assert data["counts"] == {"differs": 18, "identical": 10} and len(data["tensors"]) == 28
    wte = data["tensors"][0]
    assert (wte["name"], wte["aliases"], wte["verdict"]) == ("transformer.wte.weight", ["lm_head.weight"], "differs")
    assert wte["a"]["shape"] == [128, 64] and wte["ks"]["sample_a"] == 128 * 64
    assert data["method"]["same distribution"]["ks_p_min"] == 1e-6
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, again, _ = cli(capsys, "diff", "spec", "native", "model=gpt_tiny", "initspec=gpt2", "--format", "json")
    assert again == out


def test_plot_shows_the_finite_values_of_a_tensor_holding_nan(tmp_path):
    from matplotlib.image import imread
    torch.manual_seed(0)
    a, b = nn.Linear(64, 64), nn.Linear(64, 64)
    with torch.no_grad():
        a.weight[0, 0] = float("nan")
        b.bias[3] = float("inf")
    report = initspec.diff(a, b)
    assert [r.reason for r in report.rows] == ["NaN/inf values: 1 vs 0", "NaN/inf values: 0 vs 1"]
    report.plot(str(tmp_path / "nan.png"))
    pixels = imread(str(tmp_path / "nan.png"))[..., :3]
    colored = (pixels.max(-1) - pixels.min(-1)) > 0.1           # the bars; axes and text are gray
    assert colored.mean() > 0.05, "the histograms are empty"


@pytest.mark.slow
def test_console_script_exit_code_and_stderr():
    code, out, err = run("diff", "spec", "native", "model=gpt_tiny", "initspec=gpt2", "--format", "json")
    assert code == 1, err
    assert json.loads(out)["counts"] == {"differs": 18, "identical": 10}
    code, out, err = run("diff", "spec", "model=gpt_tiny", "initspec=gpt2")
    assert code == 2 and out == "" and "got 1 word(s)" in err and "Traceback" not in err
