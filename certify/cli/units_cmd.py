"""``lipcert units``: are a hidden layer's units more meaningful than random directions? (Szegedy et al. 2013)"""

from __future__ import annotations

import json

import click

from certify.cli import main, parse_input_shapes, refusals_exit_2
from certify.errors import ModelRejected


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="A .npz with arrays x (inputs) and y (labels).")
@click.option("--node", default=None, help="ONNX tensor name of the hidden layer [default: the input of the last "
                                           "Gemm/MatMul/Conv].")
@click.option("--directions", type=click.IntRange(2, 4096), default=16, show_default=True,
              help="Units, and as many random directions.")
@click.option("--top", "top_n", type=click.IntRange(2, 1000), default=8, show_default=True,
              help="Inputs per direction.")
@click.option("--units", "unit_choice", type=click.Choice(["variance", "random"]), default="variance",
              show_default=True, help="Which units: the highest-variance ones, or seeded random ones.")
@click.option("--permutations", type=click.IntRange(100, 100_000), default=2000, show_default=True)
@click.option("--samples", type=click.IntRange(2, 1_000_000), default=100_000, show_default=True,
              help="Use at most this many inputs of the dataset.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--input-shape", multiple=True, metavar="NAME=D1,D2,...", help="Pin dynamic input dimensions.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@refusals_exit_2
def units(model, data, node, directions, top_n, unit_choice, permutations, samples, seed, input_shape, as_json):
    """Top inputs of MODEL's hidden units and of random directions, and whether units are more coherent."""
    from certify.convert import to_torch
    from certify.datasets import load_dataset
    from certify.load import load_onnx
    from certify.report.render import units_lines
    from certify.units import units_vs_random

    module = to_torch(load_onnx(model, input_shapes=parse_input_shapes(input_shape)))
    if len(module.input_names) != 1:
        raise ModelRejected("unsupported_model", "units need a model with exactly one input")
    declared = module.shapes.get(module.input_names[0])
    if not declared or any(d is None for d in declared[1:]):
        raise ModelRejected("dynamic_shape", "the input shape is not fully known; pin it with --input-shape")
    x, y, _ = load_dataset(data, tuple(declared[1:]), samples)
    result = units_vs_random(module, x, y, node=node, directions=directions, top_n=top_n, seed=seed,
                             unit_choice=unit_choice, permutations=permutations).to_dict()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo("\n".join(units_lines(result)))
