"""``lipcert policy init``: write a commented example policy to start from (the format is in docs/verify.md)."""

from __future__ import annotations

import os
from importlib import resources

import click

from certify.cli import main, refusals_exit_2
from certify.errors import ModelRejected


def example_policy() -> str:
    """The packaged example: every check, each with a comment saying what it holds the report to."""
    return resources.files("certify.report").joinpath("policy_example.yaml").read_text(encoding="utf-8")


@main.group()
def policy():
    """Deployment policies for `lipcert gate`."""


@policy.command()
@click.argument("path", default="policy.yaml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@refusals_exit_2
def init(path, force):
    """Write a commented example policy to PATH (default policy.yaml); '-' writes it to stdout."""
    text = example_policy()
    if path == "-":
        click.echo(text, nl=False)
        return
    if os.path.exists(path) and not force:
        raise ModelRejected("file_exists", f"{path} exists; pass --force to overwrite it")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise ModelRejected("cannot_write", f"cannot write {path}: {e.strerror}") from None
    click.echo(f"wrote {path}: edit the thresholds, then `lipcert gate REPORT --key KEY --model MODEL "
               f"--policy {path}`", err=True)
