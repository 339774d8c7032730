"""``lipcert certify``: the whole pipeline in-process, with progress per stage and a signed report."""

from __future__ import annotations

import json
import sys

import click

from certify.cli import main, parse_input_shapes, refusals_exit_2
from certify.cli._options import (
    analyses_option,
    attacks_option,
    certifiers_option,
    eps_option,
    input_range_option,
    norms_option,
    preprocessing,
    preprocessing_options,
    properties_options,
)
from certify.defaults import DEFAULTS
from certify.errors import ModelRejected


@main.command("certify")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(dir_okay=False), help=".npz with x (float) and y (int labels).")
@norms_option
@eps_option
@certifiers_option
@attacks_option
@input_range_option
@preprocessing_options
@click.option("--samples", type=int, help=f"Samples of the dataset to use. [default: {DEFAULTS['samples']}]")
@click.option("--seed", type=int, help=f"[default: {DEFAULTS['seed']}]")
@click.option("--device", help=f"auto, cpu, cuda or cuda:N. [default: {DEFAULTS['device']}]")
@click.option("--input-shape", multiple=True, metavar="NAME=D1,D2,...", help="Pin dynamic input dimensions.")
@click.option("--transfer-to", multiple=True, type=click.Path(dir_okay=False),
              help="Another ONNX model to evaluate this model's adversarial examples on (repeatable).")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), help="YAML policy to evaluate.")
@click.option("--key", "key_path", type=click.Path(dir_okay=False), help="Private key (PEM) that signs the report.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the report (JSON).")
@click.option("--json", "as_json", is_flag=True, help="Print the report's predicate as JSON.")
@analyses_option
@properties_options
@click.option("-q", "--quiet", is_flag=True, help="No progress display on stderr.")
@refusals_exit_2
def certify_command(model, data, norms, epsilons, certifiers, attacks, input_range, scale, mean, std, channels_last,
                    samples, seed, device, input_shape, transfer_to, policy_path, key_path, output, as_json, quiet,
                    analyses, properties, property_timeout):
    """Certify MODEL: conversion check, Lipschitz bounds, certified and attacked accuracy, a signed report."""
    given = {"norms": norms, "epsilons": epsilons, "certifiers": certifiers, "attacks": attacks,
             "input_range": input_range, "preprocessing": preprocessing(scale, mean, std, channels_last),
             "analyses": analyses, "samples": samples, "seed": seed, "device": device, "properties": properties,
             "property_timeout_s": property_timeout}
    config = {k: v for k, v in given.items() if v is not None}  # the job configuration fills in the defaults
    config["input_shapes"] = parse_input_shapes(input_shape)
    from certify.config import load_config

    load_config(config)  # refuse a bad configuration before the pipeline imports torch
    from certify.pipeline import run_pipeline
    from certify.progress import StageProgress
    from certify.report.dsse import dump_envelope
    from certify.report.keys import load_signer
    from certify.report.policy import PolicyError, read_policy
    from certify.report.render import render_report

    if policy_path:
        try:
            config["policy"] = read_policy(policy_path)
        except PolicyError as e:
            raise ModelRejected("invalid_policy", str(e)) from None
    signer = None
    if key_path:
        try:
            signer = load_signer(key_path)
        except (OSError, ValueError) as e:
            raise ModelRejected("bad_key", f"cannot load signing key {key_path}: {e}") from None
    progress = StageProgress(quiet=quiet)
    try:
        result = run_pipeline(model, config, dataset=data, progress=progress, signer=signer, transfer_to=transfer_to)
    finally:
        progress.close()
    document = result.envelope if result.envelope is not None else result.statement
    if output:
        with open(output, "wb") as f:
            f.write(dump_envelope(document) if result.envelope is not None else json.dumps(document, indent=2).encode())
    if as_json:
        click.echo(json.dumps(result.statement["predicate"], indent=2))
    else:
        state = f"signed by key {signer.keyid}" if signer else "not signed (pass --key to sign)"
        click.echo(render_report(result.statement, state))
    for stage in result.stages:
        if stage["status"] == "skipped":
            click.echo(f"skipped {stage['stage']}: {stage['reason']}", err=True)
    for warning in result.statement["predicate"].get("warnings") or []:
        click.echo(f"warning: {warning}", err=True)
    if output:
        signed = f"signed by key {signer.keyid}" if signer else "UNSIGNED (pass --key to sign)"
        click.echo(f"report written to {output} ({signed})", err=True)
    policy = result.statement["predicate"].get("policy")
    if policy and policy.get("verdict") != "pass":
        click.echo("policy: FAIL", err=True)
        sys.exit(1)
