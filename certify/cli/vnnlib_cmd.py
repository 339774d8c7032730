"""``lipcert vnnlib``: decide a VNN-LIB property on an ONNX model.

Prints ``holds``, ``violated`` or ``unknown``. Exit 0: the property holds (proved). Exit 1: violated (a
counterexample confirmed in onnxruntime). Exit 3: unknown (not decided within the time budget). Exit 2: bad input
(unreadable or invalid model or property, or the two do not match), one ``error: <code>: <message>`` line.
"""

from __future__ import annotations

import json
import sys

import click

from certify.cli import main, refusals_exit_2

EXIT_CODES = {"holds": 0, "violated": 1, "unknown": 3}


@main.command("vnnlib")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("prop", metavar="PROPERTY", type=click.Path(dir_okay=False))
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Time budget in seconds (model loading not included).")
@click.option("--counterexample", "result_path", type=click.Path(dir_okay=False),
              help="Write the result in the competition's format: sat with the assignment, unsat, or unknown.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@refusals_exit_2
def vnnlib(model, prop, timeout, result_path, seed, as_json):
    """Decide PROPERTY (a .vnnlib file) on MODEL. Exit 0 holds, 1 violated, 3 unknown, 2 bad input."""
    from certify.decide import load_decider, vnncomp_result
    from certify.vnnlib import read_vnnlib

    parsed = read_vnnlib(prop)
    decider = load_decider(model, parsed, seed=seed)
    verdict = decider.decide(parsed, timeout)
    if result_path:
        with open(result_path, "w") as f:
            f.write(vnncomp_result(verdict))
    code = EXIT_CODES[verdict.result]
    if as_json:
        click.echo(json.dumps({"model": model, "property": prop, "exit_code": code,
                               "bounds": decider.bounds is not None, **verdict.to_dict()}, indent=2))
    else:
        detail = f" ({verdict.reason})" if verdict.reason else ""
        click.echo(f"{verdict.result}  method {verdict.method}  {verdict.seconds:.2f} s{detail}")
    sys.exit(code)
