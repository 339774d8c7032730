"""A report as text for people: plain tables that read well in a terminal and in a CI log.

The columns of the per-record tables (layers, minimal perturbations, stages) are the schema's fields.
"""

from __future__ import annotations

from certify.report.schema import fields


def fmt(value) -> str:
    """One cell: ``-`` for missing, 4 significant digits for floats, yes/no for booleans."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(fmt(v) for v in value) if value else "none"
    return str(value)


def format_table(headers: list[str], rows: list[list], indent: str = "  ") -> str:
    """Left-aligned text columns under a header line."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _skipped(section) -> str | None:
    if isinstance(section, dict) and section.get("status") == "skipped":
        return f"skipped: {section.get('reason')}"
    return None


def _tensors(items) -> str:
    return ", ".join(f"{t.get('name')} {t.get('dtype')}[{fmt(t.get('shape'))}]" for t in items or []) or "none"


def _model_lines(p: dict) -> list[str]:
    m = p.get("model") or {}
    ops = ", ".join(f"{k} x{v}" for k, v in (m.get("operators") or {}).items())
    unsupported = ", ".join(f"{k} x{v}" for k, v in (m.get("unsupported_operators") or {}).items()) or "none"
    lines = [
        "Model",
        f"  opset {m.get('opset')}, {fmt(m.get('nodes'))} nodes, {m.get('parameters', 0):,} parameters",
        f"  inputs       {_tensors(m.get('inputs'))}",
        f"  outputs      {_tensors(m.get('outputs'))}",
        f"  operators    {ops}",
        f"  unsupported  {unsupported}",
    ]
    ds = p.get("dataset")
    lines.append("  dataset      " + (f"{ds.get('samples')} samples, sha256 {ds.get('sha256')}" if ds else "none"))
    conv = p.get("conversion")
    lines.append("  conversion   " + (_skipped(conv) or conversion_line(conv)))
    conv = p.get("converter")
    lines.append("  converter    " + (_skipped(conv) or f"{conv.get('version')}, weights sha256 "
                                      f"{conv.get('weights_sha256')}"))
    return lines


def conversion_line(conv: dict) -> str:
    """The conversion check in one line: verdict, output differences, and the node to look at."""
    status = conv.get("status")
    text = (f"{status}: " if status else "") + (f"max_abs_diff {fmt(conv.get('max_abs_diff'))}, max_rel_diff "
                                                f"{fmt(conv.get('max_rel_diff'))} (vs onnxruntime)")
    if conv.get("nodes") is not None:
        text += f", {conv.get('nodes_checked')} of {conv.get('nodes')} nodes checked on identical inputs"
    node = conv.get("first_divergent") or (conv.get("amplification") if status == "ill_conditioned" else None)
    if isinstance(node, dict):
        what = "first divergent node" if status == "mismatch" else "amplified at"
        text += f"; {what} {node.get('node')} ({node.get('op')})"
    return text


def _bounds_lines(p: dict) -> list[str]:
    b = p.get("bounds")
    if _skipped(b):
        return ["Lipschitz bounds", "  " + _skipped(b)]
    title = "Lipschitz bounds" + (f" ({b['norm']})" if b.get("norm") else "")
    keys = fields("layer")
    rows = [[row.get(k) for k in keys] for row in b.get("layers") or []]
    n = b.get("network") or {}
    network = (f"  network: upper {fmt(n.get('upper'))} (guaranteed), product of layers {fmt(n.get('product'))}, "
               f"lower {fmt(n.get('lower'))}, ratio {fmt(n.get('ratio'))}, method {fmt(n.get('method'))}")
    if n.get("reason"):
        network += f"; {n['reason']}"
    return [title, format_table(keys, rows), network]


def method_table(p: dict) -> tuple[list[str], list[list]]:
    """Per norm and eps, each certifier's certified accuracy beside the best sound one and the attacked accuracy
    (the true robust accuracy lies between best and attacked)."""
    c = p.get("certified") if isinstance(p.get("certified"), dict) else {}
    a = p.get("attacks") if isinstance(p.get("attacks"), dict) and not _skipped(p.get("attacks")) else {}
    methods = c.get("methods") or {}
    names = list(dict.fromkeys(m for by_eps in methods.values() for cell in by_eps.values() for m in cell))
    attacked = a.get("results") or {}
    rows = []
    for norm, by_eps in (c.get("accuracy") or {}).items():
        for eps, best in by_eps.items():
            cell = (methods.get(norm) or {}).get(eps) or {}
            hit = (attacked.get(norm) or {}).get(eps)
            rows.append([norm, eps, *(cell.get(m) for m in names), best]
                        + ([hit.get("robust_accuracy") if isinstance(hit, dict) else None] if attacked else []))
    return ["norm", "eps", *names, "best (certified)"] + (["attacked"] if attacked else []), rows


def local_layer_table(p: dict) -> tuple[list[str], list[list]]:
    """Table-5 rows: each dense layer's global bound and its local bounds within the eps-balls."""
    b = p.get("bounds") if isinstance(p.get("bounds"), dict) else {}
    rows = [[norm, eps, r.get("node"), r.get("op"), r.get("global_upper"), r.get("local_mean"), r.get("local_max")]
            for norm, by_eps in (b.get("local_layers") or {}).items() for eps, layer in by_eps.items()
            for r in layer]
    return ["norm", "eps", "node", "op", "global upper", "local upper (mean)", "local upper (max)"], rows


def _certified_lines(p: dict) -> list[str]:
    c = p.get("certified")
    if _skipped(c):
        return ["Certified accuracy", "  " + _skipped(c)]
    head = f"Certified accuracy (clean accuracy {fmt(c.get('clean_accuracy'))}"
    head += f", {c['samples']} samples)" if "samples" in c else ")"
    lines = [head, format_table(*method_table(p))]
    for norm, local in (c.get("local") or {}).items():
        if local.get("skipped"):
            lines.append(f"  local certification skipped ({norm}): {local['skipped']}")
    headers, rows = local_layer_table(p)
    if rows:
        lines += ["  local layerwise Lipschitz bounds within the eps-balls", format_table(headers, rows, "    ")]
    return lines


def _attack_lines(p: dict) -> list[str]:
    a = p.get("attacks")
    if _skipped(a):
        return ["Attacks", "  " + _skipped(a)]
    names = list(a.get("attacks_run") or [])
    preset = f"preset {a['preset']}: " if a.get("preset") else ""
    lines = [f"Attacks ({preset}{', '.join(names) or 'none'}; clean accuracy {fmt(a.get('clean_accuracy'))})"]
    rows = []
    for norm, by_eps in (a.get("results") or {}).items():
        for eps, cell in by_eps.items():
            per = cell.get("per_attack") or {}
            rows.append([norm, eps, cell.get("robust_accuracy"), cell.get("success_rate")]
                        + [(per.get(n) or {}).get("robust_accuracy") for n in names])
    lines.append(format_table(["norm", "eps", "worst-case accuracy", "success rate"] + names, rows))
    minimal = a.get("minimal_perturbation") or {}
    if minimal:
        lines.append("  minimal perturbation found (an upper bound on the distance to the nearest misclassification)")
        keys = fields("perturbationStats")
        rows = [[norm, *(s.get(k) for k in keys)] for norm, s in minimal.items()]
        lines.append(format_table(["norm", *keys], rows, "    "))
    checks = a.get("sanity_checks") or []
    lines.append("  sanity checks" + ("" if checks else ": none"))
    lines += [f"    {'PASS' if c.get('passed') else 'FAIL'}  {c.get('name')}"
              + (f": {c['detail']}" if c.get("detail") else "") for c in checks]
    lines += [f"  warning: {w}" for w in a.get("warnings") or []]
    return lines


def policy_lines(result: dict | None, title: str = "Policy") -> list[str]:
    """A policy evaluation: one line per check, then the verdict."""
    if not result:
        return [f"{title}: none evaluated"]
    from certify.report.policy import check_cells

    rows = [[c["verdict"].upper(), c["name"], *check_cells(c), c.get("detail")] for c in result.get("checks", [])]
    return [f"{title}: {str(result.get('verdict')).upper()}",
            format_table(["verdict", "check", "value", "threshold", "detail"], rows)]


def _stage_lines(p: dict) -> list[str]:
    keys = fields("stage")
    rows = [[s.get(k) for k in keys] for s in p.get("stages") or []]
    env = p.get("environment") or {}
    return ["Stages", format_table(keys, rows),
            "Environment", "  " + ", ".join(f"{k} {fmt(v)}" for k, v in env.items())]


def units_lines(u: dict, directions: bool = True) -> list[str]:
    """Units versus random directions (``analyses.units``, or ``lipcert units``): per direction, then the comparison."""
    if _skipped(u):
        return ["  " + _skipped(u)]
    lines = [f"  node {u.get('node')}, width {fmt(u.get('width'))}, {fmt(u.get('samples'))} samples, top "
             f"{fmt(u.get('top_n'))} per direction, units by {u.get('unit_choice')}, seed {fmt(u.get('seed'))}"]
    if directions:
        rows = [[f"unit {d.get('unit')}" if d.get("kind") == "unit" else "random", d.get("purity"), d.get("cosine"),
                 " ".join(str(v) for v in d.get("labels") or [])] for d in u.get("directions") or []]
        lines.append(format_table(["direction", "purity", "cosine", "top labels"], rows))
    rows = [[key, (u.get(key) or {}).get("unit_mean"), (u.get(key) or {}).get("random_mean"),
             (u.get(key) or {}).get("difference"), (u.get(key) or {}).get("p_value")] for key in ("purity", "cosine")]
    lines.append(format_table(["coherence", "units", "random", "difference", "p"], rows))
    lines.append(f"  p: two-sided permutation test of the difference of means ({fmt(u.get('permutations'))} "
                 "permutations); cosine: of the top inputs' activations at the node")
    return lines


def _analysis_lines(p: dict) -> list[str]:
    analyses = p.get("analyses") or {}
    if "units" not in analyses:
        return []
    return ["Units versus random directions (Szegedy et al. 2013)", *units_lines(analyses["units"], False)]


def property_table(p: dict) -> tuple[list[str], list[list]]:
    """The VNN-LIB properties' verdicts: one row per property."""
    results = (p.get("properties") or {}).get("results") or []
    rows = [[r.get("name"), r.get("result"), r.get("method"), r.get("seconds"), r.get("reason") or ""]
            for r in results if isinstance(r, dict)]
    return ["property", "result", "method", "seconds", "reason"], rows


def _property_lines(p: dict) -> list[str]:
    section = p.get("properties")
    if section is None:
        return []
    if skipped := _skipped(section):
        return ["VNN-LIB properties", f"  {skipped}"]
    return [f"VNN-LIB properties (at most {fmt(section.get('timeout_s'))} s each; holds = proved, float32 error "
            "included; violated = counterexample confirmed in onnxruntime)", format_table(*property_table(p))]


def render_report(statement: dict, verification: str) -> str:
    """The whole report as text; ``verification`` is one line saying whether (and by whom) it was verified."""
    p = statement.get("predicate") or {}
    subjects = statement.get("subject") or [{}]
    subject = subjects[0] if isinstance(subjects[0], dict) else {}
    sections = [
        [f"Robustness report: {subject.get('name')}",
         f"  {verification}",
         f"  model sha256  {(subject.get('digest') or {}).get('sha256')}",
         f"  created       {p.get('created')}",
         f"  predicate     {statement.get('predicateType')}",
         *([f"  eps space     {p['input'].get('description')}"] if isinstance(p.get("input"), dict) else []),
         *(f"  WARNING       {w}" for w in p.get("warnings") or [])],
        _model_lines(p),
        _bounds_lines(p),
        _certified_lines(p),
        _attack_lines(p),
        _property_lines(p),
        policy_lines(p.get("policy"), "Policy embedded at creation"),
        _stage_lines(p),
        _analysis_lines(p),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"
