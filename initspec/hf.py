"""Fine-tuning from a transformers checkpoint: the spec initializes only what the checkpoint did not provide.

    model = initspec.hf.from_pretrained(AutoModelForSequenceClassification, path, spec="bert", num_labels=3)

transformers loads every tensor the checkpoint has and gives the rest (a new
classification head, a pooler, tensors whose shape changed under
``ignore_mismatched_sizes=True``, the new rows of resized token embeddings) to
the model's ``_init_weights``, drawn from the global RNG. Here those tensors get
the spec instead, from initspec's per-tensor streams; every loaded tensor stays
bitwise as in the checkpoint, and the global RNG is left as it was.

How: transformers' own loading info (``output_loading_info=True``: missing and
mismatched keys) names the new tensors; the spec is planned against the whole
model (so a rule that matches nothing anywhere is still reported), then narrowed
through the public API: every rule gets the loaded tensors' names as
``exclude:`` patterns, ``default`` becomes ``keep`` and the spec's ``ties:`` are
dropped (the model's own ties, made by transformers' ``tie_weights``, stand). A
tensor that grew (``resize_token_embeddings``) keeps its old rows: the rule that
wins it is narrowed with ``part: {sizes: [old, new - old], index: 1}``, so only
the new rows are filled (a piece is filled as a tensor of its own: its fans are
the new rows' block).

initspec.hf never imports transformers itself: it calls the class and the model you pass.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from .api import apply, load_spec, plan
from .errors import InitSpecError
from .report import Report
from .results import Entry


class NewRows(NamedTuple):
    """Rows ``[old, new)`` along ``dim`` of a tensor that grew; rows ``[0, old)`` were kept."""

    dim: int
    old: int
    new: int


def from_pretrained(model_class: Any, path: Any, spec: Any, *, seed: int | None = None,
                    vars: Mapping[str, Any] | None = None, allow_fn: Iterable[str] = (),
                    threads: int | None = None, vocab_size: int | None = None, **kwargs: Any) -> Any:
    """``model_class.from_pretrained(path, **kwargs)`` whose new tensors are initialized by ``spec``.

    ``model_class`` is a transformers model class or Auto class. Tensors the
    checkpoint did not provide (missing keys, and mismatched ones under
    ``ignore_mismatched_sizes=True``) are filled by ``spec``; loaded tensors stay
    bitwise as in the checkpoint. ``vocab_size`` larger than the checkpoint's loads
    the checkpoint as it is, then grows the token embeddings (as
    :func:`resize_token_embeddings`): old rows stay, new rows get the spec.
    Returns the model, or ``(model, info)`` with ``output_loading_info=True``:
    transformers' loading info plus ``info["initspec"]``, the :class:`Report`.
    """
    wants_info = kwargs.pop("output_loading_info", False)
    checked = load_spec(spec, vars=vars)                     # spec mistakes surface before any loading
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1):
        raise InitSpecError("vocab_size", f"vocab_size must be a positive integer, got {vocab_size!r}",
                            "pass the tokenizer's size, e.g. vocab_size=len(tokenizer)")
    with torch.random.fork_rng():      # transformers' _init_weights draws from it; vocab_size is the checkpoint's
        model, info = model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    whole = set(info.get("missing_keys", ())) | {key[0] for key in info.get("mismatched_keys", ())}
    grown = _resize(model, vocab_size) if vocab_size is not None else {}
    report = initialize_new(model, checked, whole=whole, grown=grown, seed=seed, allow_fn=allow_fn,
                            threads=threads)
    return (model, {**info, "initspec": report}) if wants_info else model


def resize_token_embeddings(model: nn.Module, new_num_tokens: int, spec: Any, *, seed: int | None = None,
                            vars: Mapping[str, Any] | None = None, allow_fn: Iterable[str] = (),
                            threads: int | None = None, pad_to_multiple_of: int | None = None) -> Report:
    """``model.resize_token_embeddings(new_num_tokens)`` whose new rows are initialized by ``spec``.

    The old rows of the input embeddings, of an untied output head and of its bias
    stay bitwise; rows ``[old, new)`` are filled by the rule of ``spec`` that wins
    each tensor, run on the new rows only. Returns the :class:`Report`.
    """
    checked = load_spec(spec, vars=vars)
    old_num_tokens = model.get_input_embeddings().weight.shape[0]
    grown = _resize(model, new_num_tokens, pad_to_multiple_of)
    try:
        return initialize_new(model, checked, whole=(), grown=grown, seed=seed, allow_fn=allow_fn, threads=threads)
    except InitSpecError:
        _resize(model, old_num_tokens)      # the spec does not fit the new rows: back to the old size and values
        raise


def init_missing(model: nn.Module, loading_info: Mapping[str, Any], spec: Any, *, seed: int | None = None,
                 vars: Mapping[str, Any] | None = None, allow_fn: Iterable[str] = (),
                 threads: int | None = None) -> Report:
    """After your own ``from_pretrained(..., output_loading_info=True)``: fill the tensors
    ``loading_info`` lists as missing or mismatched by ``spec``; nothing else changes."""
    whole = set(loading_info.get("missing_keys", ())) | {k[0] for k in loading_info.get("mismatched_keys", ())}
    return initialize_new(model, load_spec(spec, vars=vars), whole=whole, grown={}, seed=seed,
                          allow_fn=allow_fn, threads=threads)


def initialize_new(model: nn.Module, spec: Any, *, whole: Iterable[str], grown: Mapping[str, NewRows],
                   seed: int | None = None, allow_fn: Iterable[str] = (), threads: int | None = None,
                   device: Any = None) -> Report:
    """Fill the tensors named in ``whole`` entirely and the ``grown`` ones on their new rows,
    by ``spec`` narrowed to them; every other tensor is left bitwise as it is."""
    user = load_spec(spec)
    whole, grown = set(whole), dict(grown)
    full = plan(model, user.model_copy(update={"ties": {}, "default": "keep"}), seed=seed, allow_fn=allow_fn)
    fill_whole = [e for e in full.entries if whole & _names(e)]
    fill_rows = [e for e in full.entries if grown.keys() & _names(e) and not whole & _names(e)]
    untouched = [e for e in full.entries if not (whole | grown.keys()) & _names(e)]
    _refuse_offloaded(model, untouched)
    data = user.to_data()
    keep_out = sorted(name for e in (*untouched, *fill_rows) for name in _names(e))
    rules = {name: {**rule, "exclude": [*_as_list(rule.get("exclude")), *keep_out], "optional": True}
             for name, rule in data["rules"].items()} if fill_whole else {}
    groups: dict[tuple[str, NewRows], list[Entry]] = {}
    for entry in fill_rows:
        _refuse_parts(entry, grown)
        if entry.action == "fill":
            rows = grown[min(grown.keys() & _names(entry))]
            groups.setdefault((entry.rule, rows), []).append(entry)
    for (winner, rows), entries in groups.items():
        rules.update(_new_rows_rules(model, data["rules"][winner], winner, rows, entries, taken=rules))
    narrowed = {**data, "rules": rules, "ties": {}, "default": "keep", "strict": False}
    result = plan(model, narrowed, seed=seed, allow_fn=allow_fn)
    _check_coverage(user, result, [e.name for e in (*fill_whole, *fill_rows)])
    return apply(model, narrowed, seed=seed, allow_fn=allow_fn, threads=threads, device=device)


def _names(entry: Entry) -> set[str]:
    return {entry.name, *entry.aliases}


def _as_list(value: Any) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _refuse_parts(entry: Entry, grown: Mapping[str, NewRows]) -> None:
    """A grown tensor that a ``part:`` rule cuts: that rule cannot also be cut to the new rows."""
    if entry.parts:
        rows = grown[min(grown.keys() & _names(entry))]
        raise InitSpecError(f"initspec.rules.{entry.parts[0].rule}.part",
                            f"{entry.name!r} grew to {rows.new} along dim {rows.dim}, and a part: rule cannot "
                            f"also be narrowed to its new rows [{rows.old}:{rows.new}]",
                            f"exclude {entry.name!r} from that rule, or give its new rows a rule without part:")


def _new_rows_rules(model: nn.Module, winner: dict, name: str, rows: NewRows, entries: list[Entry],
                    taken: Mapping[str, Any]) -> dict[str, dict]:
    """The rule ``winner`` (which wins ``entries`` in the full plan) run on their new rows only; its
    ``padding_zero`` steps become a rule of their own for a padding row that is new."""
    steps = [s for s in _as_list(winner["init"]) if s != "padding_zero"]
    names = sorted(n for entry in entries for n in _names(entry))
    tag = f"{name} (new rows)" if f"{name} (new rows)" not in taken else f"{name} (new rows {rows.old}:{rows.new})"
    out = {tag: {**winner, "match": names, "exclude": [], "optional": True, "init": steps,
                 "part": {"dim": rows.dim, "sizes": [rows.old, rows.new - rows.old], "index": 1}}}
    if len(steps) == len(_as_list(winner["init"])):
        return out
    for entry in entries:
        padding = getattr(model.get_submodule(entry.name.rpartition(".")[0]), "padding_idx", None)
        if padding is not None and rows.old <= padding < rows.new:
            sizes = [padding, 1, rows.new - padding - 1] if padding + 1 < rows.new else [padding, 1]
            out[f"{tag} padding row of {entry.name}"] = {
                "match": sorted(_names(entry)), "optional": True, "init": "zeros",
                "priority": winner.get("priority", 0) + 1, "part": {"dim": rows.dim, "sizes": sizes, "index": 1}}
    return out


def _check_coverage(user: Any, result: Any, targets: list[str]) -> None:
    """The user's ``strict`` and ``default: error``, said of the new tensors only."""
    covered = {e.name for e in result.entries if e.action == "fill" or e.parts}
    missed = [name for name in targets if name not in covered]
    if user.strict and targets and len(missed) == len(targets):
        raise InitSpecError("initspec.rules", f"no rule covers any tensor the checkpoint did not provide "
                            f"({_listed(missed)}): they would keep transformers' own initialization",
                            f"add a rule for them (e.g. {{match: '{missed[0]}', init: {{name: normal, std: 0.02}}}}), "
                            "or set strict: false to keep transformers' initialization")
    if user.default == "error" and missed:
        raise InitSpecError("initspec.default", f"default: error, and no rule covers {_listed(missed)} "
                            "(not in the checkpoint)", "add a rule for them, or set default: keep")


def _listed(names: list[str], most: int = 6) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _refuse_offloaded(model: nn.Module, entries: list[Entry]) -> None:
    """Loaded tensors left on the meta device (device_map offloading) cannot be kept by apply()."""
    meta = [e.name for e in entries if _tensor(model, e.name).is_meta]
    if meta:
        raise InitSpecError("device_map", f"{_listed(meta, 3)} stayed on the meta device (offloaded by device_map)",
                            "load onto one device (device_map=None, 'cpu' or 'cuda:0'), then dispatch the model")


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        return model.get_buffer(name)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in (*model.named_parameters(remove_duplicate=False),
                                                 *model.named_buffers(remove_duplicate=False))}


def _resize(model: nn.Module, new_num_tokens: int, pad_to_multiple_of: int | None = None) -> dict[str, NewRows]:
    """Resize with transformers (its new rows drawn under a forked RNG, and left to the spec);
    the tensors that grew, with the rows that are new."""
    if not hasattr(model, "resize_token_embeddings"):
        raise InitSpecError("model", f"a {type(model).__name__} has no resize_token_embeddings()",
                            "pass a transformers PreTrainedModel")
    before = _shapes(model)
    with torch.random.fork_rng():
        model.resize_token_embeddings(new_num_tokens, pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    grown = {}
    for name, shape in _shapes(model).items():
        old = before.get(name)
        changed = [d for d in range(len(shape)) if old is not None and len(old) == len(shape) and old[d] != shape[d]]
        if len(changed) == 1 and shape[changed[0]] > old[changed[0]]:
            grown[name] = NewRows(changed[0], old[changed[0]], shape[changed[0]])
    return grown

