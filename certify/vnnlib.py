"""Reading VNN-LIB properties: the subset the verification competition (VNN-COMP) uses.

A VNN-LIB file declares inputs ``X_i`` and outputs ``Y_j`` and asserts the property's *negation*: any input that
satisfies every assertion is a counterexample. The reader tokenizes and parses s-expressions (never evaluates
text), turns the assertions into disjunctive normal form and returns a :class:`Property`: a list of cases, each an
input box with the unsafe output set as a disjunction of conjunctions ``C y <= d``. Inputs may only be bounded
variable by variable (boxes, possibly a disjunction of boxes); outputs may be constrained by linear combinations.
Malformed or unsupported input raises ``ModelRejected("invalid_vnnlib", ...)`` naming the line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from certify.errors import ModelRejected

MAX_BYTES = 64 * 2**20
MAX_DEPTH = 64
MAX_VARIABLES = 2**22
MAX_TERMS = 10_000  # conjunctions after expanding the disjunctions

_TOKEN = re.compile(r"\n|;[^\n]*|\(|\)|[^\s();]+")  # other whitespace separates tokens
_VARIABLE = re.compile(r"([XY])_(0|[1-9][0-9]*)")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_COMPARISONS = {"<=", ">=", "<", ">", "="}


def invalid(line: int | None, message: str) -> ModelRejected:
    where = f"line {line}: " if line else ""
    return ModelRejected("invalid_vnnlib", where + message)


@dataclass(frozen=True)
class Conjunction:
    """``C y <= d`` row by row (``strict`` rows need ``<``): the outputs are unsafe where every row holds."""

    C: np.ndarray
    d: np.ndarray
    strict: np.ndarray

    def violation(self, y: np.ndarray) -> float:
        """``max_i (C y - d)_i``: <= 0 (< 0 on strict rows) exactly where ``y`` is unsafe; -inf without rows."""
        if len(self.d) == 0:
            return -math.inf
        return float(np.max(self.C @ np.asarray(y, dtype=np.float64) - self.d))

    def satisfied_by(self, y: np.ndarray) -> bool:
        if len(self.d) == 0:
            return True
        gap = self.C @ np.asarray(y, dtype=np.float64) - self.d
        return bool(np.all(np.where(self.strict, gap < 0, gap <= 0)))


@dataclass(frozen=True)
class Case:
    """Inputs in ``lower <= x <= upper`` whose outputs satisfy any of ``unsafe`` are counterexamples."""

    lower: np.ndarray
    upper: np.ndarray
    unsafe: list[Conjunction] = field(default_factory=list)


@dataclass(frozen=True)
class Property:
    """A parsed VNN-LIB file: counterexamples are the union over ``cases`` (none: the property holds vacuously)."""

    n_inputs: int
    n_outputs: int
    cases: list[Case]


# --- s-expressions -------------------------------------------------------------------------------------------------
class SList(list):
    """A parenthesised list, with the line of its opening parenthesis (atoms are plain strings)."""

    def __init__(self, line: int):
        super().__init__()
        self.line = line


def parse_sexprs(text: str) -> list[SList]:
    """Top-level s-expressions of ``text`` (iterative, so nesting depth is capped, not the Python stack)."""
    stack: list[SList] = []
    top: list[SList] = []
    line = 1
    for token in _TOKEN.findall(text):
        if token == "\n":
            line += 1
        elif token == "(":
            if len(stack) >= MAX_DEPTH:
                raise invalid(line, f"nesting deeper than {MAX_DEPTH}")
            stack.append(SList(line))
        elif token == ")":
            if not stack:
                raise invalid(line, "unbalanced ')'")
            done = stack.pop()
            (stack[-1] if stack else top).append(done)
        elif token[0] == ";":
            continue
        elif stack:
            stack[-1].append(token)
        else:
            raise invalid(line, f"{token[:40]!r} outside parentheses")
    if stack:
        raise invalid(stack[-1].line, "'(' is never closed")
    return top


# --- linear expressions and formulas -------------------------------------------------------------------------------
Linear = tuple[dict[str, float], float]  # coefficients by variable name, constant


def _number(atom: str, line: int) -> float | None:
    if not _NUMBER.fullmatch(atom):
        return None
    value = float(atom)
    if not math.isfinite(value):
        raise invalid(line, f"number {atom[:40]!r} out of range")
    return value


class _Reader:
    def __init__(self):
        self.declared: dict[str, int] = {}  # name -> line
        self.base: list[tuple] = []  # atoms asserted outside any disjunction
        self.compound: list = []  # other assertions, in DNF later

    def read(self, exprs: list[SList]) -> None:
        for expr in exprs:
            head = expr[0] if expr and isinstance(expr[0], str) else None
            if head == "declare-const":
                self._declare(expr)
            elif head == "assert":
                if len(expr) != 2:
                    raise invalid(expr.line, "assert takes one formula")
                formula = self._formula(expr[1], expr.line)
                if formula[0] == "atom":
                    self.base.extend(formula[1])
                else:
                    self.compound.append(formula)
            else:
                raise invalid(expr.line, f"unsupported command {str(head)[:40]!r}; "
                                         "only declare-const and assert are supported")

    def _declare(self, expr: SList) -> None:
        if len(expr) != 3 or not all(isinstance(e, str) for e in expr[1:]):
            raise invalid(expr.line, "expected (declare-const NAME Real)")
        name, sort = expr[1], expr[2]
        if sort != "Real":
            raise invalid(expr.line, f"{name[:40]} has sort {sort[:40]!r}; only Real is supported")
        if not _VARIABLE.fullmatch(name):
            raise invalid(expr.line, f"variable {name[:40]!r}: only X_<i> (inputs) and Y_<j> (outputs) are supported")
        if name in self.declared:
            raise invalid(expr.line, f"{name} declared twice (first on line {self.declared[name]})")
        if len(self.declared) >= MAX_VARIABLES:
            raise invalid(expr.line, f"more than {MAX_VARIABLES} variables")
        self.declared[name] = expr.line

    def _formula(self, expr, line: int):
        """('atom', [(coeffs, bound, strict, line)]) or ('and'|'or', [formulas]); ``line``: the enclosing list's."""
        if not isinstance(expr, SList) or not expr or not isinstance(expr[0], str):
            raise invalid(getattr(expr, "line", line), "expected a formula (and ...), (or ...) or a comparison")
        head = expr[0]
        if head in ("and", "or"):
            if len(expr) < 2:
                raise invalid(expr.line, f"({head}) needs at least one argument")
            return (str(head), [self._formula(e, expr.line) for e in expr[1:]])
        if head in _COMPARISONS:
            if len(expr) != 3:
                raise invalid(expr.line, f"({head} ...) takes two arguments")
            return ("atom", self._comparison(head, expr))
        raise invalid(expr.line, f"unsupported operator {head[:40]!r} in a formula")

    def _comparison(self, op: str, expr: SList) -> list:
        (la, ca), (lb, cb) = self._linear(expr[1], expr.line), self._linear(expr[2], expr.line)
        if op in (">=", ">"):
            (la, ca), (lb, cb) = (lb, cb), (la, ca)
        coeffs = dict(la)
        for name, v in lb.items():
            coeffs[name] = coeffs.get(name, 0.0) - v
        coeffs = {k: v for k, v in coeffs.items() if v != 0.0}
        row = (coeffs, cb - ca, op in ("<", ">"), expr.line)  # coeffs . vars <= bound
        if op == "=":
            negated = ({k: -v for k, v in coeffs.items()}, ca - cb, False, expr.line)
            return [row, negated]
        return [row]

    def _linear(self, expr, line: int) -> Linear:
        if isinstance(expr, str):
            value = _number(expr, line)
            if value is not None:
                return {}, value
            if expr not in self.declared:
                raise invalid(line, f"{expr[:40]!r} is neither a number nor a declared variable")
            return {str(expr): 1.0}, 0.0
        if not expr or not isinstance(expr[0], str):
            raise invalid(expr.line, "expected a linear term")
        head, args = expr[0], [self._linear(e, expr.line) for e in expr[1:]]
        if head == "+" and args:
            return _combine(args, [1.0] * len(args))
        if head == "-" and len(args) == 1:
            return _combine(args, [-1.0])
        if head == "-" and args:
            return _combine(args, [1.0] + [-1.0] * (len(args) - 1))
        if head == "*" and len(args) == 2:
            (la, ca), (lb, cb) = args
            if la and lb:
                raise invalid(expr.line, "product of two variables: only linear constraints are supported")
            scale, (terms, const) = (ca, args[1]) if not la else (cb, args[0])
            return {k: scale * v for k, v in terms.items()}, scale * const
        raise invalid(expr.line, f"unsupported term ({head[:40]} ...): only +, -, * by a constant")


def _combine(args: list[Linear], signs: list[float]) -> Linear:
    coeffs: dict[str, float] = {}
    const = 0.0
    for (terms, c), s in zip(args, signs):
        const += s * c
        for k, v in terms.items():
            coeffs[k] = coeffs.get(k, 0.0) + s * v
    return coeffs, const


def _dnf(formula) -> list[list]:
    """A formula as a list of conjunctions (lists of rows), refused beyond MAX_TERMS."""
    kind, body = formula
    if kind == "atom":
        return [list(body)]
    parts = [_dnf(f) for f in body]
    if kind == "or":
        return _capped([t for p in parts for t in p])
    return _product(parts)


def _capped(terms: list[list]) -> list[list]:
    if len(terms) > MAX_TERMS:
        raise invalid(None, f"the disjunctions expand to more than {MAX_TERMS} cases")
    return terms


def _product(parts: list[list[list]]) -> list[list]:
    """The conjunction of DNFs; single-term parts extend every term in place (linear in the number of atoms)."""
    terms: list[list] = [[]]
    for part in parts:
        if len(part) == 1:
            for t in terms:
                t.extend(part[0])
        else:
            terms = _capped([t + u for t in terms for u in part])
    return terms


def _indices(reader: _Reader, letter: str) -> int:
    names = sorted(int(n[2:]) for n in reader.declared if n[0] == letter)
    if not names:
        raise invalid(None, f"no {letter}_<i> variables declared")
    if names != list(range(len(names))):
        missing = next(i for i, n in enumerate(names) if n != i)
        raise invalid(None, f"{letter}_{missing} is not declared (indices must run from 0 without gaps)")
    return len(names)


def _apply_input(lower: np.ndarray, upper: np.ndarray, row) -> None:
    coeffs, bound, _, _ = row
    ((name, a),) = coeffs.items()
    i = int(name[2:])
    if a > 0:
        upper[i] = min(upper[i], bound / a)
    else:
        lower[i] = max(lower[i], bound / a)


def _split(rows: list) -> tuple[list, list] | None:
    """Rows on inputs (single-variable bounds) and rows on outputs; constant rows are decided here (None: one
    is false, so the conjunction is empty)."""
    inputs, outputs = [], []
    for row in rows:
        coeffs, bound, strict, line = row
        kinds = {k[0] for k in coeffs}
        if not kinds:
            holds = 0 < bound if strict else 0 <= bound
            if not holds:
                return None
            continue
        if kinds == {"X"}:
            if len(coeffs) != 1:
                raise invalid(line, "constraints over several inputs are not supported; inputs must form a box")
            inputs.append(row)
        elif kinds == {"Y"}:
            outputs.append(row)
        else:
            raise invalid(line, "a constraint mixing inputs and outputs is not supported")
    return inputs, outputs


def _conjunction(rows: list, n_outputs: int) -> Conjunction:
    C = np.zeros((len(rows), n_outputs))
    d = np.empty(len(rows))
    strict = np.zeros(len(rows), dtype=bool)
    for r, (coeffs, bound, is_strict, _) in enumerate(rows):
        for name, a in coeffs.items():
            C[r, int(name[2:])] = a
        d[r], strict[r] = bound, is_strict
    return Conjunction(C, d, strict)


def parse_vnnlib(text: str) -> Property:
    """Parse VNN-LIB text; raise ``ModelRejected("invalid_vnnlib")`` for malformed or unsupported input."""
    if len(text) > MAX_BYTES:
        raise invalid(None, f"file larger than {MAX_BYTES} bytes")
    reader = _Reader()
    reader.read(parse_sexprs(text))
    n_in, n_out = _indices(reader, "X"), _indices(reader, "Y")
    base = _split(reader.base)
    if base is None:
        return Property(n_in, n_out, [])
    base_in, base_out = base
    lower, upper = np.full(n_in, -math.inf), np.full(n_in, math.inf)
    for row in base_in:
        _apply_input(lower, upper, row)
    cases: dict[tuple, Case] = {}
    for term in _product([_dnf(f) for f in reader.compound]):
        split = _split(term)
        if split is None:
            continue
        rows_in, rows_out = split
        lo, hi = lower.copy(), upper.copy()
        for row in rows_in:
            _apply_input(lo, hi, row)
        unbounded = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))
        if unbounded.size:
            raise invalid(None, f"X_{unbounded[0]} has no finite lower and upper bound; inputs must form a box")
        if np.any(lo > hi):
            continue  # an empty box has no counterexample
        key = (lo.tobytes(), hi.tobytes())
        case = cases.setdefault(key, Case(lo, hi, []))
        case.unsafe.append(_conjunction(base_out + rows_out, n_out))
    return Property(n_in, n_out, list(cases.values()))


def read_vnnlib(source) -> Property:
    """Parse a VNN-LIB file (a path, or its bytes as uploaded; UTF-8 or ASCII), refusing one over the size cap
    before reading it whole."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source[:MAX_BYTES + 1])
    else:
        try:
            with open(source, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as e:
            raise ModelRejected("file_not_found", f"cannot read {source}: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise invalid(None, f"file larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(data.count(b"\n", 0, e.start) + 1, "not UTF-8 text") from None
    return parse_vnnlib(text)


def check_sizes(n_inputs: int, n_outputs: int, model_inputs: int | None, model_outputs: int | None) -> None:
    """Refuse (``property_mismatch``) a property of ``n_inputs`` X and ``n_outputs`` Y variables on a model with
    other sizes per sample (None: not known here, left to a later check)."""
    for what, declared, model_size in (("inputs", n_inputs, model_inputs), ("outputs", n_outputs, model_outputs)):
        if model_size is not None and model_size != declared:
            raise ModelRejected("property_mismatch", f"the property has {declared} {what}, the model {model_size}")
