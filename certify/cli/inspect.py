"""``lipcert inspect``: the model summary and the conversion check."""

from __future__ import annotations

import json
import sys

import click

from certify.cli import main, parse_input_shapes, parse_range, refusals_exit_2
from certify.report.render import conversion_line


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--input-shape", multiple=True, metavar="NAME=D1,D2,...", help="Pin dynamic input dimensions.")
@click.option("--input-range", default="0,1", show_default=True, metavar="LO HI",
              help="Range of the check inputs, LO HI or LO,HI.")
@refusals_exit_2
def inspect(model, as_json, input_shape, input_range):
    """Summarise MODEL and check its conversion against onnxruntime, node by node.

    Exit 0: the converted model agrees with onnxruntime (or differs only where the model itself amplifies rounding:
    ill-conditioned). Exit 1: a converted node disagrees with onnxruntime on identical inputs (conversion mismatch;
    the node is named). Exit 2: the model is refused.
    """
    from certify.convert import to_torch
    from certify.load import load_onnx
    from certify.summary import summarize
    from certify.verify import mismatch_message, verify_conversion

    proto = load_onnx(model, input_shapes=parse_input_shapes(input_shape))
    summary = summarize(proto)
    module = to_torch(proto)
    summary["conversion"] = verify_conversion(proto, module, input_range=parse_range(input_range))
    conv = summary["conversion"]
    failed = conv["status"] == "mismatch"
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        sys.exit(1 if failed else 0)
    click.echo(f"model      {model}")
    click.echo(f"opset      {summary['opset']}   nodes {summary['nodes']}   parameters {summary['parameters']:,}")
    for kind in ("inputs", "outputs"):
        for t in summary[kind]:
            click.echo(f"{kind[:-1]:<10} {t['name']}  {t['dtype']}{t['shape']}")
    ops = ", ".join(f"{k} x{v}" for k, v in summary["operators"].items())
    click.echo(f"operators  {ops}")
    click.echo(f"conversion {conversion_line(conv)}")
    if failed:
        click.echo(f"error: conversion_mismatch: {mismatch_message(conv)}", err=True)
        sys.exit(1)
