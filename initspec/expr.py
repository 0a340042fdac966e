"""A small, whitelisting evaluator for numeric expressions in specs.

``std: "0.02 / sqrt(2 * n_layer)"`` is parsed with :mod:`ast` and walked
node by node; only arithmetic, comparisons, conditional expressions,
indexing into ``shape`` and the functions in :data:`FUNCTIONS` are allowed.
It never reaches ``eval``. Limits on expression length, node count,
exponent size and magnitude of intermediate results bound its time.
"""
from __future__ import annotations

import ast
import functools
import math
import operator
from typing import Any, Callable, Mapping

MAX_LENGTH = 500
MAX_NODES = 200
MAX_EXPONENT = 1000
MAX_MAGNITUDE = 1e300

FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt,
    "log": math.log,
    "log2": math.log2,
    "exp": math.exp,
    "abs": abs,
    "min": min,
    "max": max,
    "floor": math.floor,
    "ceil": math.ceil,
    "prod": math.prod,
}
CONSTANTS = {"pi": math.pi, "e": math.e, "inf": math.inf}

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_SYNTAX_NAMES = {
    ast.Attribute: "attribute access",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Call: "calls",
    ast.Subscript: "indexing",
    ast.NamedExpr: "assignment",
    ast.Starred: "starred arguments",
    ast.JoinedStr: "f-strings",
}


class ExprError(Exception):
    """An expression that cannot be evaluated; ``fix`` says what to do."""

    def __init__(self, what: str, fix: str = ""):
        super().__init__(what)
        self.what = what
        self.fix = fix


def is_expression(value: Any) -> bool:
    return isinstance(value, str)


def evaluate(text: str, names: Mapping[str, Any]) -> float | int:
    """Evaluate ``text`` with ``names`` (numbers, tuples of ints, or lazily raising lookups)."""
    result = _Walker(text, names).visit(_parse(text).body)
    if isinstance(result, tuple):
        raise ExprError(f"expression {text!r} gives a tuple, not a number", "index it, e.g. shape[0]")
    return result


def names_in(text: str) -> frozenset[str]:
    """The names an expression uses (empty for text that does not parse: evaluating it reports why)."""
    try:
        tree = _parse(text)
    except ExprError:
        return frozenset()
    return frozenset(node.id for node in ast.walk(tree) if isinstance(node, ast.Name))


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> ast.Expression:
    """The checked syntax tree of an expression, parsed once per text (planning evaluates
    the same few expressions for thousands of tensors). Errors are raised, never cached."""
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression is {len(text)} characters long (limit {MAX_LENGTH})",
                        "split the computation into vars")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"cannot parse expression {text!r}: {exc.msg}",
                        "write arithmetic such as '0.02 / sqrt(2 * n_layer)'") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > MAX_NODES:
        raise ExprError(f"expression has {nodes} syntax nodes (limit {MAX_NODES})",
                        "simplify it or precompute parts in vars")
    return tree


class _Walker:
    def __init__(self, text: str, names: Mapping[str, Any]):
        self.text = text
        self.names = names

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise ExprError(f"only numbers are allowed in expressions, not {node.value!r}",
                                "remove the literal")
            return node.value
        if isinstance(node, ast.Name):
            return self._name(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.visit(node.left), self.visit(node.right)
            self._numbers(left, right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ExprError(f"exponent {right} is too large (limit {MAX_EXPONENT})",
                                "use a smaller exponent")
            try:
                value = _BINARY[type(node.op)](left, right)
            except ZeroDivisionError:
                raise ExprError(f"division by zero in {self.text!r}",
                                "check the divisor (a var or fan of 0?)") from None
            except OverflowError:
                raise ExprError(f"overflow in {self.text!r}", "use smaller numbers") from None
            return self._bounded(value)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            value = self.visit(node.operand)
            self._numbers(value)
            return _UNARY[type(node.op)](value)
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            left = self.visit(node.left)
            for op, comparator in zip(node.ops, node.comparators):
                right = self.visit(comparator)
                self._numbers(left, right)
                if not _COMPARE[type(op)](left, right):
                    return 0
                left = right
            return 1
        if isinstance(node, ast.IfExp):
            return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Subscript):
            return self._subscript(node)
        kind = _SYNTAX_NAMES.get(type(node), type(node).__name__)
        if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp)):
            kind = f"operator {type(node.op).__name__}"
        elif isinstance(node, ast.Compare):
            kind = "comparison " + ", ".join(type(o).__name__ for o in node.ops)
        raise ExprError(f"{kind} not allowed in expression {self.text!r}",
                        "use only numbers, names, arithmetic and "
                        + ", ".join(sorted(FUNCTIONS)))

    def _name(self, name: str) -> Any:
        if name in self.names:
            value = self.names[name]
        elif name in CONSTANTS:
            value = CONSTANTS[name]
        else:
            known = sorted(set(self.names) | set(CONSTANTS))
            from .errors import suggest
            raise ExprError(f"unknown name {name!r} in expression {self.text!r}.{suggest(name, known)}",
                            f"use one of {', '.join(known)}, or define it under vars")
        return value

    def _call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise ExprError(f"call to {what!r} not allowed in expression {self.text!r}",
                            "allowed functions: " + ", ".join(sorted(FUNCTIONS)))
        if node.keywords:
            raise ExprError(f"keyword arguments not allowed in expression {self.text!r}", "")
        args = [self.visit(a) for a in node.args]
        if node.func.id == "prod" and len(args) == 1 and isinstance(args[0], tuple):
            args = [args[0]]
        else:
            self._numbers(*args)
        try:
            return self._bounded(FUNCTIONS[node.func.id](*args))
        except (ValueError, TypeError, OverflowError) as exc:
            raise ExprError(f"{node.func.id}() failed in {self.text!r}: {exc}",
                            "check the argument's domain") from None

    def _subscript(self, node: ast.Subscript) -> Any:
        target = self.visit(node.value)
        index = self.visit(node.slice)
        if not isinstance(target, tuple) or not isinstance(index, int):
            raise ExprError(f"only shape[<int>] indexing is allowed in {self.text!r}", "")
        try:
            return target[index]
        except IndexError:
            raise ExprError(f"index {index} out of range for shape {target} in {self.text!r}",
                            "check the tensor's number of dimensions") from None

    def _numbers(self, *values: Any) -> None:
        for value in values:
            if isinstance(value, tuple) or not isinstance(value, (int, float)):
                raise ExprError(f"{value!r} is not a number in {self.text!r}",
                                "index tuples, e.g. shape[0]")

    def _bounded(self, value: Any) -> Any:
        if isinstance(value, complex):
            raise ExprError(f"expression {self.text!r} gives a complex number", "check signs under roots and powers")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and math.isnan(value):
                raise ExprError(f"expression {self.text!r} is not a number (NaN)", "check its inputs")
            if not (isinstance(value, float) and math.isinf(value)) and abs(value) > MAX_MAGNITUDE:
                raise ExprError(f"intermediate value in {self.text!r} is too large (> {MAX_MAGNITUDE:g})",
                                "use smaller numbers")
        return value
