"""``lipcert bounds``: the per-layer Lipschitz table (Szegedy et al.'s Table 5 style) and the network bounds."""

from __future__ import annotations

import json
import sys

import click

from certify.cli import main, parse_input_shapes, refusals_exit_2
from certify.cli._options import (
    certifiers_option,
    eps_option,
    input_range_option,
    preprocessing,
    preprocessing_options,
    single_norm_option,
)
from certify.defaults import DEFAULTS
from certify.errors import ModelRejected


def _fmt(value, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _method(row: dict) -> str:
    if row.get("fused_into"):
        return f"{row['method']} (fused into {row['fused_into']})"
    return row["method"] or ""


def _print_table(result: dict) -> None:
    header = f"{'node':<28} {'op':<18} {'shape':<16} {'lower':>10} {'upper':>10} {'up/low':>8} {'ms':>8}  method"
    click.echo(header)
    click.echo("-" * len(header))
    for row in result["layers"]:
        shape = "x".join(str(d) for d in row["shape"]) or "-"
        click.echo(f"{row['node'][:28]:<28} {row['op'][:18]:<18} {shape[:16]:<16} {_fmt(row['lower']):>10} "
                   f"{_fmt(row['upper']):>10} {_fmt(row['ratio'], '.3f'):>8} {row['ms']:>8.1f}  {_method(row)}")
        if row.get("fused"):
            fused = row["fused"]
            click.echo(f"{'  fused: ' + ' + '.join(row['fused_nodes']):<64} {_fmt(fused['lower']):>10} "
                       f"{_fmt(fused['upper']):>10} {_fmt(fused['ratio'], '.3f'):>8} {fused['ms']:>8.1f}  "
                       f"{fused['method']}")
        if row.get("reason"):
            click.echo(f"  unbounded: {row['reason']}")
    net = result["network"]
    click.echo("")
    click.echo(f"network ({net['norm']})  product {_fmt(net['product'])}   composed upper {_fmt(net['upper'])}   "
               f"lower {_fmt(net['lower'])}   upper/lower {_fmt(net['ratio'], '.3f')}")
    click.echo(f"method   {net['method']}")
    if net.get("reason"):
        click.echo(f"no finite bound: {net['reason']}")
    cert = result.get("certified")
    if cert:
        accs = "   ".join(f"eps {eps}: {acc:.3f}" for eps, acc in cert["certified_accuracy"].items())
        click.echo(f"certified ({cert['norm']}, {cert['samples']} samples)  clean accuracy {cert['clean_accuracy']:.3f}"
                   f"   {accs}   median radius {_fmt(cert['radius']['median'])}")
        rounding = cert.get("float_error") or {}
        click.echo(f"float error of the logits (L2, taken from every margin)  at the samples <= "
                   f"{_fmt(rounding.get('max_at_sample'))}   growth per unit radius <= "
                   f"{_fmt(rounding.get('max_growth'))}")


def _verdicts(module, dataset, norm, epsilons, certifiers, result, input_range, progress, analysis) -> dict:
    """Every certifier's certified accuracy per eps (``methods``, ``ms_per_sample``, ``best_method``, ``local``,
    ``accuracy``: the best sound one) and the local layer rows, as the pipeline reports them."""
    from certify import verdicts
    from certify.lipschitz.network import pair_bounds
    from certify.report.schema import eps_key

    by_norm = {norm: verdicts.certify_norm(
        module, *dataset, norm, epsilons, certifiers, result, input_range, global_pairs=pair_bounds(analysis),
        progress=lambda fraction, message: progress("certified", fraction, message))}
    return {"verdicts": verdicts.section(by_norm, epsilons, eps_key),
            "local_layers": verdicts.layer_rows(by_norm, eps_key)[norm]}


def _print_verdicts(result: dict) -> None:
    from certify.report.render import format_table, local_layer_table, method_table

    section = result["verdicts"]
    click.echo("certified accuracy per method (best: a sample counts when any method certified it)")
    click.echo(format_table(*method_table({"certified": section})))
    for norm, by_eps in section["ms_per_sample"].items():
        for eps, timing in by_eps.items():
            click.echo(f"  ms per sample ({norm}, eps {eps}): "
                       + "   ".join(f"{m} {ms:.3g}" for m, ms in timing.items()))
    for norm, local in section["local"].items():
        for why in [local.get("skipped"), *(local.get("skipped_methods") or {}).values()]:
            if why:
                click.echo(f"  local certification skipped ({norm}): {why}")
    headers, rows = local_layer_table({"bounds": {"local_layers": {result["network"]["norm"]:
                                                                   result["local_layers"]}}})
    if rows:
        click.echo("local layerwise Lipschitz bounds within the eps-balls")
        click.echo(format_table(headers, rows))


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--data", type=click.Path(dir_okay=False), help="A .npz with arrays x (inputs) and y (labels).")
@single_norm_option
@eps_option
@certifiers_option
@click.option("--samples", type=click.IntRange(1, 100_000), default=DEFAULTS["samples"], show_default=True)
@input_range_option
@preprocessing_options
@click.option("--input-shape", multiple=True, metavar="NAME=D1,D2,...", help="Pin dynamic input dimensions.")
@click.option("--json-lines", "json_lines", is_flag=True,
              help="One JSON object per line: each layer's row as it is computed, then the whole result.")
@click.option("--lower-budget", type=click.FloatRange(0, 86_400), default=10.0, show_default=True, metavar="SECONDS",
              help="Time for the empirical lower bound (its screening and gradient ascent; reported apart from the "
                   "bound's time).")
@click.option("--chain-budget", type=click.FloatRange(0, 86_400), default=None, metavar="SECONDS",
              help="Cap on the joint bounds of layer chains; chains reached after it keep the plain product "
                   "(sound, looser). Default: no cap, the tightest bound.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar on stderr.")
@refusals_exit_2
def bounds(model, as_json, data, norm, epsilons, certifiers, samples, input_range, scale, mean, std, channels_last,
           input_shape, lower_budget, chain_budget, json_lines, quiet):
    """Per-layer Lipschitz bounds of MODEL, the network bound, and with --data certified radii and each certifier's
    certified accuracy."""
    from certify.convert import to_torch
    from certify.lipschitz.certificate import certificate
    from certify.load import load_onnx
    from certify.preprocess import apply
    from certify.progress import StageProgress

    shapes = parse_input_shapes(input_shape)
    proto = apply(load_onnx(model, input_shapes=shapes), preprocessing(scale, mean, std, channels_last), shapes)
    module = to_torch(proto)
    if len(module.input_names) != 1:
        raise ModelRejected("unsupported_model", "bounds need a model with exactly one input")
    declared = module.shapes.get(module.input_names[0])
    if not declared or any(d is None for d in declared[1:]):
        raise ModelRejected("dynamic_shape", "the input shape is not fully known; pin it with --input-shape")
    declared = (1, *declared[1:])  # one sample; the batch dimension may be dynamic
    dataset = None
    if data:
        from certify.datasets import load_dataset

        x, y, _ = load_dataset(data, tuple(declared[1:]), samples, input_range or DEFAULTS["input_range"])
        dataset = (x, y)
    progress = StageProgress(quiet=quiet or as_json, lines=False)

    def row_line(row: dict) -> None:
        click.echo(json.dumps({"type": "layer", **row}))
        sys.stdout.flush()

    analyses = []
    try:
        result = certificate(module, declared, dataset=dataset, norm=norm, epsilons=epsilons or DEFAULTS["epsilons"],
                             samples=samples, input_range=tuple(input_range or DEFAULTS["input_range"]),
                             progress=lambda fraction, message: progress("bounds", fraction, message),
                             on_layer=row_line if json_lines else None, on_analysis=analyses.append,
                             lower_budget_s=lower_budget, chain_budget_s=chain_budget)
        if dataset is not None:
            result.update(_verdicts(module, dataset, norm, epsilons or DEFAULTS["epsilons"],
                                    certifiers or DEFAULTS["certifiers"], result,
                                    tuple(input_range or DEFAULTS["input_range"]), progress, analyses[0]))
    except ValueError as e:
        raise ModelRejected("bounds_failed", str(e)) from None
    finally:
        progress.close()
    if json_lines:
        click.echo(json.dumps({"type": "result", **result}))
    elif as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print_table(result)
        if "verdicts" in result:
            _print_verdicts(result)
