"""``lipcert keygen``: a signing key pair for reports."""

from __future__ import annotations

import json

import click

from certify.cli import main, refusals_exit_2
from certify.errors import ModelRejected


@main.command()
@click.option("--private", "private_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the private key (PEM, file mode 0600).")
@click.option("--public", "public_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the public key (PEM).")
@click.option("--type", "kind", type=click.Choice(["ecdsa-p256", "ed25519"]), default="ecdsa-p256",
              show_default=True, help="Key type; ECDSA P-256 is what cosign verifies.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@refusals_exit_2
def keygen(private_path, public_path, kind, force, as_json):
    """Write a new private key and its public key; prints the key id (hex sha256 of the public key's DER)."""
    from certify.report.keys import write_keypair

    try:
        keyid = write_keypair(private_path, public_path, kind, overwrite=force)
    except FileExistsError as e:
        raise ModelRejected("file_exists", f"{e.filename} exists; use --force to overwrite") from None
    except OSError as e:
        raise ModelRejected("cannot_write", f"{e.filename}: {e.strerror}") from None
    if as_json:
        click.echo(json.dumps({"keyid": keyid, "type": kind, "private": private_path, "public": public_path}))
        return
    click.echo(f"private key  {private_path} (mode 0600; keep it secret)")
    click.echo(f"public key   {public_path}")
    click.echo(f"key id       {keyid} ({kind})")
