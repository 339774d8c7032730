"""``lipcert verify``: is this report signed by a trusted key, well-formed, and about this model?

Exit 0 when every check holds, 1 when one does not (including an unreadable or truncated report), with the reason;
2 for a usage error (an unreadable --key file, a missing --model file).
"""

from __future__ import annotations

import json
import sys

import click

from certify.cli import main, refusals_exit_2
from certify.errors import ModelRejected


def trusted_keys_option(func):
    """``--key PUB.pem`` (repeatable: any of the keys is trusted, for key rotation)."""
    return click.option("--key", "keys", multiple=True, required=True, type=click.Path(dir_okay=False),
                        metavar="PUB.pem", help="Trusted public key (PEM); repeat to trust several.")(func)


def load_keys(paths) -> list:
    """The trusted keys of ``--key``; an unusable key file is a refusal (exit 2), never a pass."""
    from certify.report.keys import load_trusted_keys

    try:
        return load_trusted_keys(paths)
    except ValueError as e:
        raise ModelRejected("bad_key", str(e)) from None


def verification_summary(verified, model) -> dict:
    """What a verification established, for the JSON output of verify, gate and show."""
    return {
        "verified": True,
        "keyid": verified.keyid,
        "subject": verified.subject,
        "model_checked": verified.model_checked,
        "model": model,
        "predicateType": verified.statement["predicateType"],
        "created": verified.predicate.get("created"),
    }


def verification_lines(verified, keys, model) -> list[str]:
    kind = next((k.kind for k in keys if k.keyid == verified.keyid), "?")
    s = verified.subject
    bound = f"matches {model}" if verified.model_checked else "NOT compared with a model file (no --model given)"
    return [
        f"  signed by   key {verified.keyid} ({kind})",
        f"  subject     {s['name']} sha256 {s['sha256']}: {bound}",
        f"  predicate   {verified.statement['predicateType']} (schema valid)",
        f"  created     {verified.predicate.get('created')}",
    ]


@main.command()
@click.argument("report", type=click.Path(dir_okay=False))
@trusted_keys_option
@click.option("--model", type=click.Path(exists=True, dir_okay=False), help="The model file the report must be about.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@refusals_exit_2
def verify(report, keys, model, as_json):
    """Verify REPORT (a DSSE envelope): signature by a trusted key, statement, schema, and the model's digest."""
    from certify.report.verify import VerificationError, verify_report

    trusted = load_keys(keys)
    try:
        verified = verify_report(report, trusted, model=model)
    except VerificationError as e:
        if as_json:
            click.echo(json.dumps({"verified": False, "error": e.to_dict()}))
        else:
            click.echo(f"FAILED: {report}: {e.code}: {e.message}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(verification_summary(verified, model), indent=2))
        return
    click.echo(f"OK: {report} verified")
    click.echo("\n".join(verification_lines(verified, trusted, model)))
