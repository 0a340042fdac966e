"""The matcher agrees with the naive loop (fnmatchcase / re.fullmatch) on every name and pattern."""
import fnmatch
import random
import re

import pytest

from initspec.match import PatternError, PatternSet, compile_pattern, glob_captures
from conftest import assert_patterns_agree

PARTS = ["blocks", "layers", "h", "attn", "mlp", "fc1", "fc2", "ln_1", "q", "k", "weight", "bias", "0", "1", "12",
         "3", "c_proj", "wte", "x9", "running_mean"]


def random_name(rng):
    return ".".join(rng.choice(PARTS) for _ in range(rng.randint(1, 5)))


def random_pattern(rng, names):
    kind = rng.random()
    if kind < 0.2:
        return rng.choice(names)                                   # literal
    if kind < 0.3:
        base = re.escape(rng.choice(names)).replace(r"\.", r"\.").split(r"\.")
        cut = rng.randint(0, len(base))
        return "re:" + r"\.".join(base[:cut] + [r"\d+"] * (cut < len(base)) + [".*"] * rng.randint(0, 1))
    name = rng.choice(names).split(".")
    out = []
    for part in name:
        r = rng.random()
        out.append("*" if r < 0.25 else "?" * len(part) if r < 0.3 else
                   f"[{part[0]}x]{part[1:]}" if r < 0.35 else part)
    text = ".".join(out)
    if rng.random() < 0.3:
        text = "*" + text[rng.randint(0, len(text)):]
    if rng.random() < 0.2:
        text = text[: rng.randint(1, len(text))] + "*"
    return text or "*"


@pytest.mark.parametrize("seed", range(8))
def test_patternset_equals_naive(seed):
    rng = random.Random(seed)
    names = sorted({random_name(rng) for _ in range(400)})
    patterns = [random_pattern(rng, names) for _ in range(60)] + ["*", "*.weight", "re:.*", "blocks.1*", "*.1?.*"]
    assert_patterns_agree(patterns, names)


def test_invalid_patterns():
    with pytest.raises(PatternError):
        compile_pattern("re:(", 0)
    with pytest.raises(PatternError):
        compile_pattern("a[b", 0)
    with pytest.raises(PatternError):
        compile_pattern("", 0)


def test_captures():
    assert glob_captures("layers.*.fc?.weight", "layers.3.fc1.weight") == ("3", "1")
    assert glob_captures(r"re:h\.(\d+)\.w", "h.12.w") == ("12",)


def test_globs_answered_per_template_or_per_name_equal_fnmatch():
    """A glob without literal digits whose classes take all or none of the digits is answered once per
    template; any other is tried name by name. Either way every answer equals fnmatch."""
    by_template = {"*ln_?.weight": True, "*.[qk]_norm.weight": True, "*.[!a-z]x": True, "*[!#0-9]*": True,
                   "*.[0-4].w": False, "*.[+-;].w": False, "*.[!0-9]*": False, "*#*": False, "*[#]*": False,
                   "h.1?.x": False, "*.w2.weight": False, "*ln_[12].bias": False, "*.1a*": False, "*_1": False,
                   "*-3*": False, "*a#1*": False, "*.1[0-6].w3": False, "*[.a]1*": False, "*.w1?.*": False,
                   "*a?1*": False, "*[!.]1.*": False, "*[.a]x*": True}
    for text, expected in by_template.items():
        assert compile_pattern(text, 0).by_template is expected, text
    rng = random.Random(0)
    names = ["".join(rng.choice("ab.01#9_q") for _ in range(rng.randint(0, 6))) for _ in range(3000)]
    names += ["".join(rng.choice("w.12#_") for _ in range(rng.randint(0, 7))) for _ in range(3000)]
    names += ["h.1.ln_1.weight", "h.12.ln_2.weight", "h.3.q_norm.weight", "h.3.x_norm.weight", "h.#.ln_#.weight"]
    patterns = [*by_template, "*.?", "?[!a]*", "[!.]*", "*?.?", "*[.-:]*", "*[ab]?"]
    compiled = [compile_pattern(p, i) for i, p in enumerate(patterns)]
    for name, tags in zip(names, PatternSet(compiled).match(names)):
        assert list(tags) == [i for i, p in enumerate(patterns) if fnmatch.fnmatchcase(name, p)], name


def test_templates_write_every_digit_as_a_hash():
    from initspec.match import template_of
    assert template_of("layers.17.mlp.experts.3.w2.weight") == "layers.##.mlp.experts.#.w#.weight"
    assert template_of("blk12345.norm.weight") == "blk#####.norm.weight"
    assert template_of("h.#.ln_1.1#2.a#1") == "h.#.ln_#.###.a##"
    assert template_of("..0.") == "..#."


def test_prefix_suffix_and_simple_globs():
    """What each pattern promises about its matches: the ranges the index searches."""
    p = compile_pattern("layers.3.*", 0)
    assert (p.prefix, p.suffix, p.simple, p.by_template) == ("layers.3.", "", True, False)
    p = compile_pattern("*.experts.7.w1.weight", 0)
    assert (p.prefix, p.suffix, p.simple) == ("", ".experts.7.w1.weight", True)
    p = compile_pattern("h.*.attn.*.weight", 0)
    assert (p.prefix, p.suffix, p.simple, p.by_template) == ("h.", ".weight", False, True)
    assert compile_pattern(r"re:layers\.1\d\..*", 0).prefix == "layers.1"
    assert compile_pattern(r"re:ab?c", 0).prefix == "a"
    assert compile_pattern(r"re:abc|xyz", 0).prefix == ""
    assert (compile_pattern(r"re:a+b", 0).prefix, compile_pattern(r"re:a+b", 0).suffix) == ("", "b")


def test_a_name_matched_by_two_patterns_of_one_rule_counts_once():
    """Two template-safe globs of one rule both take q_norm.weight: one match, not two."""
    tags = PatternSet([compile_pattern("*norm.weight", 0), compile_pattern("*_norm.weight", 0)]).match(["a.q_norm.weight"])
    assert tags == [(0,)]
