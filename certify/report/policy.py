"""Deployment policy: thresholds a verified report must meet, evaluated fail-closed.

A policy is a mapping (YAML file for ``lipcert gate``, a dict in the job config) with these keys, all optional but
at least one check required (keys are documented in docs/verify.md):

- ``version``: 1
- ``min_clean_accuracy``: fraction
- ``min_certified_accuracy``: list of ``{norm, eps, min}``, each with an optional ``method`` (one of
  ``certify.defaults.CERTIFIERS``: that method's own certified accuracy, from ``certified.methods``; default: the
  best sound one, ``certified.accuracy``)
- ``min_attacked_accuracy``: list of ``{norm, eps, min}`` (worst case over the attacks run)
- ``max_lipschitz_upper``: the network's guaranteed Lipschitz upper bound must be at most this
- ``required_attack_preset``: the attacks must have been run with this preset or a stronger one
- ``max_age``: ``"<number><s|m|h|d|w>"``, the report's ``created`` time must be at most this old
- ``require_sanity_checks``: ``true`` (every sanity check passed, and there was at least one) or a list of names
  (each named check present and passed)
- ``trusted_keys``: key ids (sha256 hex of the DER public key); the report must be signed by one of them. Pinning
  the ids in the policy means a server that hands out another key cannot pass the gate. Evaluated by
  ``lipcert gate`` against the key that verified the signature; a job's own policy result leaves it out (the report
  is not signed yet).

Unknown keys and malformed values raise :class:`PolicyError`. A measurement the report lacks (a skipped stage, a
radius that was not evaluated, a bound that is null) makes its check fail with the reason; it never passes.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from certify.defaults import ATTACK_PRESETS, CERTIFIERS, NORMS
from certify.report.schema import eps_of, parse_created

_AGE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Allowed clock skew before a report dated in the future is refused.
FUTURE_SKEW_S = 300.0


class PolicyError(ValueError):
    """The policy itself is unusable (unknown key, wrong type, no checks): nothing can be evaluated."""


def parse_age(text: str) -> float:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"90s"``, ``"2w"`` -> seconds."""
    match = _AGE.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not an age like 7d, 12h, 30m, 90s or 2w")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _age_text(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m")) if v]
    return " ".join(parts) or f"{secs}s"


class _AccuracyThreshold(Schema):
    class Meta:
        unknown = RAISE

    norm = fields.String(required=True, validate=validate.OneOf(NORMS))
    eps = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))
    min = fields.Float(required=True, validate=validate.Range(min=0, max=1))


class _CertifiedThreshold(_AccuracyThreshold):
    method = fields.String(validate=validate.OneOf(CERTIFIERS, error="unknown method {input!r}; one of "
                                                   + ", ".join(CERTIFIERS)))


class PolicySchema(Schema):
    class Meta:
        unknown = RAISE

    version = fields.Integer(strict=True, validate=validate.Equal(1))
    min_clean_accuracy = fields.Float(validate=validate.Range(min=0, max=1))
    min_certified_accuracy = fields.List(fields.Nested(_CertifiedThreshold), validate=validate.Length(min=1))
    min_attacked_accuracy = fields.List(fields.Nested(_AccuracyThreshold), validate=validate.Length(min=1))
    max_lipschitz_upper = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    required_attack_preset = fields.String(validate=validate.OneOf([p for p in ATTACK_PRESETS if p != "none"]))
    max_age = fields.String()
    require_sanity_checks = fields.Raw()
    require_properties = fields.Raw(metadata={"description": "true: every VNN-LIB property of the job holds; or a "
                                                             "list of property names that must hold"})
    trusted_keys = fields.List(fields.String(validate=validate.Regexp(r"^[0-9a-f]{64}$", error="a key id is 64 "
                                                                      "lowercase hex digits (sha256 of the key)")),
                               validate=validate.Length(min=1))

    @validates_schema
    def _check(self, data, **_):
        if "max_age" in data:
            try:
                parse_age(data["max_age"])
            except ValueError as e:
                raise ValidationError(str(e), "max_age") from None
        for key, what in (("require_sanity_checks", "sanity check"), ("require_properties", "property")):
            required = data.get(key)
            if required is not None and not isinstance(required, bool):
                if not (isinstance(required, list) and required and all(isinstance(n, str) and n for n in required)):
                    raise ValidationError(f"true, false, or a non-empty list of {what} names", key)


def _flatten_messages(messages, path: str = "") -> list[str]:
    """marshmallow's nested error dict as ``key[0].sub: message`` lines."""
    if isinstance(messages, dict):
        out = []
        for key, value in sorted(messages.items(), key=lambda kv: str(kv[0])):
            sub = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
            out += _flatten_messages(value, sub)
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{path or 'policy'}: {' '.join(messages)}"]
    if isinstance(messages, list):
        return [line for m in messages for line in _flatten_messages(m, path)]
    return [f"{path or 'policy'}: {messages}"]


def load_policy(data) -> dict:
    """The validated policy; PolicyError naming every bad key otherwise."""
    if not isinstance(data, dict):
        raise PolicyError(f"a policy is a mapping of checks, not {type(data).__name__}")
    try:
        policy = PolicySchema().load(data)
    except ValidationError as e:
        raise PolicyError("invalid policy: " + "; ".join(_flatten_messages(e.normalized_messages()))) from None
    if not any(k != "version" and policy[k] is not False for k in policy):
        raise PolicyError("the policy has no checks; an empty policy would let every report pass")
    return policy


def _strict_yaml_loader():
    """A safe YAML loader that refuses a key given twice (the later one would silently win)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def read_policy(path) -> dict:
    """A policy from a YAML (or JSON) file; PolicyError if it cannot be read or is invalid."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_strict_yaml_loader())  # a SafeLoader subclass: no arbitrary objects
    except OSError as e:
        raise PolicyError(f"cannot read policy {path}: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy {path} is not valid YAML: {e}") from None
    return load_policy(data)


# --- reading measurements out of a predicate (any of which may be missing) ------------------------------------


class _Missing(Exception):
    """The report lacks a measurement; the message says why."""


def _section(predicate: dict, name: str) -> dict:
    section = predicate.get(name) if isinstance(predicate, dict) else None
    if section is None:
        raise _Missing(f"the report has no {name} section")
    if not isinstance(section, dict):
        raise _Missing(f"the report's {name} section is malformed")
    if section.get("status") == "skipped":
        raise _Missing(f"the {name} stage was skipped: {section.get('reason') or 'no reason given'}")
    return section


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Missing(f"{what} is not in the report")
    return float(value)


def _at_eps(table, eps: float, what: str):
    """The cell for ``eps``; keys are matched as numbers (a report written elsewhere may spell 0.1 as 0.10)."""
    if not isinstance(table, dict):
        raise _Missing(f"{what}: not in the report")
    for key, value in table.items():
        radius = eps_of(key)
        if radius is not None and math.isclose(radius, eps, rel_tol=1e-9, abs_tol=0.0):
            return value
    have = ", ".join(sorted(table, key=lambda k: math.inf if eps_of(k) is None else eps_of(k))) or "none"
    raise _Missing(f"{what}: eps={eps:g} was not evaluated (evaluated: {have})")


def _clean_accuracy(predicate: dict) -> tuple[float, str]:
    found, missing = {}, []
    for name in ("certified", "attacks"):
        try:
            found[name] = _number(_section(predicate, name).get("clean_accuracy"), f"{name}.clean_accuracy")
        except _Missing as e:
            missing.append(str(e))
    if not found:
        raise _Missing("no clean accuracy: " + "; ".join(missing))
    source = min(found, key=found.get)
    return found[source], ", ".join(f"{k} {v:.4g}" for k, v in found.items()) + f" (lowest: {source})"


def _certified_accuracy(predicate: dict, norm: str, eps: float, method: str | None = None) -> tuple[float, str]:
    certified = _section(predicate, "certified")
    table = certified.get("accuracy" if method is None else "methods")
    by_eps = table.get(norm) if isinstance(table, dict) else None
    if by_eps is None:
        raise _Missing(f"no certified accuracy for norm {norm}" + (f" by method {method}" if method else ""))
    cell = _at_eps(by_eps, eps, f"certified {norm}")
    if method is None:
        return _number(cell, f"certified accuracy at {norm} eps={eps:g}"), ""
    value = cell.get(method) if isinstance(cell, dict) else None
    if value is None:
        raise _Missing(f"method {method} did not certify at {norm} eps={eps:g} (not among the certifiers run)")
    return _number(value, f"{method} certified accuracy at {norm} eps={eps:g}"), f"method {method}"


def _attacked_accuracy(predicate: dict, norm: str, eps: float) -> tuple[float, str]:
    attacks = _section(predicate, "attacks")
    results = attacks.get("results")
    by_eps = results.get(norm) if isinstance(results, dict) else None
    if by_eps is None:
        raise _Missing(f"no attack results for norm {norm}")
    cell = _at_eps(by_eps, eps, f"attacks {norm}")
    value = _number(cell.get("robust_accuracy") if isinstance(cell, dict) else None,
                    f"robust accuracy under attack at {norm} eps={eps:g}")
    run = attacks.get("attacks_run")
    return value, "worst case over " + (", ".join(run) if isinstance(run, list) and run else "the attacks run")


def _lipschitz_upper(predicate: dict) -> tuple[float, str]:
    bounds = _section(predicate, "bounds")
    network = bounds.get("network") if isinstance(bounds.get("network"), dict) else {}
    if network.get("upper") is None:
        raise _Missing(f"no guaranteed network bound: {network.get('reason') or 'upper is null'}")
    norm = bounds.get("norm")
    return _number(network["upper"], "bounds.network.upper"), (f"norm {norm}" if norm else "")


def _attack_preset(predicate: dict) -> tuple[str, str]:
    preset = _section(predicate, "attacks").get("preset")
    if not isinstance(preset, str):
        raise _Missing("the attacks were not run from a preset (a custom attack list)")
    return preset, ""


def _report_age(predicate: dict, now: datetime) -> tuple[float, str]:
    created = predicate.get("created") if isinstance(predicate, dict) else None
    try:
        moment = parse_created(created)
    except (TypeError, ValueError, AttributeError):
        raise _Missing(f"the report's creation time {created!r} is missing or unreadable") from None
    age = (now - moment).total_seconds()
    if age < -FUTURE_SKEW_S:
        raise _Missing(f"the report is dated {created}, in the future")
    age = max(round(age), 0)
    return age, f"created {created}, {_age_text(age)} ago"


def _unmet(states: dict, required, ok, empty: str) -> tuple[list[str], list[str]]:
    """(the names ``required`` asks for, those whose state is not ``ok``): every name in ``states`` when
    ``required`` is true (none at all is missing: ``empty``), else the names it lists."""
    if required is True and not states:
        raise _Missing(empty)
    names = sorted(states) if required is True else list(required)
    return names, [n for n in names if states.get(n) != ok]


def _sanity_failures(predicate: dict, required) -> tuple[list[str], str]:
    checks = _section(predicate, "attacks").get("sanity_checks")
    if not isinstance(checks, list):
        raise _Missing("the report lists no sanity checks")
    passed = {c.get("name"): c.get("passed") is True for c in checks if isinstance(c, dict)}
    names, unmet = _unmet(passed, required, True, "the report lists no sanity checks")
    failing = [n if n in passed else f"{n} (missing)" for n in unmet]
    return failing, f"{len(names) - len(failing)} of {len(names)} passed"


def _property_failures(predicate: dict, required) -> tuple[list[str], str]:
    """The required properties that were not proved to hold (violated, unknown, or not in the report)."""
    section = _section(predicate, "properties")
    results = section.get("results")
    if not isinstance(results, list):
        raise _Missing(f"the properties were not decided: {section.get('reason', 'no results')}")
    verdicts = {r.get("name"): r.get("result") for r in results if isinstance(r, dict)}
    names, unmet = _unmet(verdicts, required, "holds", "the report decides no property")
    failing = [f"{n} ({verdicts[n]})" if n in verdicts else f"{n} (missing)" for n in unmet]
    return failing, f"{len(names) - len(failing)} of {len(names)} hold"


def conversion_refusal(predicate: dict) -> str | None:
    """Why a report cannot be deployed whatever the policy: its conversion check found (or could not rule out) a
    converted node that disagrees with onnxruntime. None when the check passed (``ok`` or ``ill_conditioned``).
    """
    try:
        conversion = _section(predicate, "conversion")
    except _Missing as e:
        return str(e)
    status = conversion.get("status")
    if status in ("ok", "ill_conditioned"):
        return None
    if status is None:
        return "the report predates the node-by-node conversion check; certify the model again"
    node = conversion.get("first_divergent") if isinstance(conversion.get("first_divergent"), dict) else {}
    where = f" at node {node.get('node')} ({node.get('op')})" if node else ""
    return f"the conversion check found a mismatch with onnxruntime{where}: the numbers are not about this model"


def check_cells(check: dict) -> tuple:
    """A check's value and threshold as a reader should see them: ages with their unit, sanity checks in words."""
    value, threshold = check.get("value"), check.get("threshold")
    if check.get("name") == "max_age" and isinstance(value, (int, float)):
        value = f"{value:g}s" if value < 60 else f"{value:g}s ({_age_text(value)})"
    elif check.get("name") in ("require_sanity_checks", "require_properties"):
        if isinstance(value, list):
            value = "all passed" if not value else "failing: " + ", ".join(map(str, value))
        threshold = "all" if threshold is True else threshold
    return value, threshold


# --- evaluation --------------------------------------------------------------------------------------------------


def _check(name: str, threshold, measure, accept) -> dict:
    try:
        value, detail = measure()
    except _Missing as e:
        return {"name": name, "threshold": threshold, "value": None, "verdict": "fail", "detail": str(e)}
    verdict = "pass" if accept(value) else "fail"
    return {"name": name, "threshold": threshold, "value": value, "verdict": verdict, "detail": detail or None}


def _signing_key(keyid: str) -> tuple[str, str]:
    if not keyid:
        raise _Missing("no verified signature")
    return keyid, ""


def evaluate_policy(policy: dict, predicate: dict, now: datetime | None = None, keyid: str | None = None) -> dict:
    """Every check of ``policy`` against ``predicate``: ``{"verdict", "evaluated_at", "policy", "checks"}``.

    ``verdict`` is "pass" only when every check passes. ``now`` (aware datetime, default: the current time) is what
    ``max_age`` is measured against. ``keyid`` is the key that verified the report's signature (``lipcert gate``);
    with it, ``trusted_keys`` is checked ("" fails it); without it (None) ``trusted_keys`` is not evaluated.
    Raises PolicyError if the policy is invalid.
    """
    policy = load_policy(policy)
    now = now or datetime.now(UTC)
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    p = predicate if isinstance(predicate, dict) else {}
    checks = []
    if "min_clean_accuracy" in policy:
        t = policy["min_clean_accuracy"]
        checks.append(_check("min_clean_accuracy", t, lambda: _clean_accuracy(p), lambda v, t=t: v >= t))
    for key, measure in (("min_certified_accuracy", _certified_accuracy),
                         ("min_attacked_accuracy", _attacked_accuracy)):
        for entry in policy.get(key, []):
            norm, eps, t = entry["norm"], entry["eps"], entry["min"]
            extra = (entry["method"],) if "method" in entry else ()
            name = ",".join((norm, f"{eps:g}", *extra))
            checks.append(_check(f"{key}[{name}]", t, lambda m=measure, n=norm, e=eps, x=extra: m(p, n, e, *x),
                                 lambda v, t=t: v >= t))
    if "max_lipschitz_upper" in policy:
        t = policy["max_lipschitz_upper"]
        checks.append(_check("max_lipschitz_upper", t, lambda: _lipschitz_upper(p), lambda v, t=t: v <= t))
    if "required_attack_preset" in policy:
        t = policy["required_attack_preset"]
        rank = {name: i for i, name in enumerate(ATTACK_PRESETS)}
        checks.append(_check("required_attack_preset", t, lambda: _attack_preset(p),
                             lambda v, t=t: v in rank and rank[v] >= rank[t]))
    if "max_age" in policy:
        t = policy["max_age"]
        limit = parse_age(t)
        checks.append(_check("max_age", t, lambda: _report_age(p, now), lambda v: v <= limit))
    required = policy.get("require_sanity_checks", False)
    if required is not False:
        checks.append(_check("require_sanity_checks", required, lambda: _sanity_failures(p, required),
                             lambda failing: not failing))
    required = policy.get("require_properties", False)
    if required is not False:
        checks.append(_check("require_properties", required, lambda: _property_failures(p, required),
                             lambda failing: not failing))
    if "trusted_keys" in policy and keyid is not None:
        t = policy["trusted_keys"]
        checks.append(_check("trusted_keys", t, lambda: _signing_key(keyid), lambda v, t=t: v in t))
    verdict = "pass" if checks and all(c["verdict"] == "pass" for c in checks) else "fail"
    return {"verdict": verdict, "evaluated_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "policy": policy,
            "checks": checks}
