"""``lipcert show``: a report for people, with tables for the layers and the accuracies.

With ``--key`` the report is verified first (exit 1 if it fails); without, it is shown marked NOT VERIFIED.
"""

from __future__ import annotations

import json
import sys

import click

from certify.cli import main, refusals_exit_2
from certify.cli.verify import load_keys
from certify.errors import ModelRejected


def _fail(as_json: bool, report: str, error) -> None:
    if as_json:
        click.echo(json.dumps({"verified": False, "error": error.to_dict()}))
    else:
        click.echo(f"FAILED: {report}: {error.code}: {error.message}", err=True)
    sys.exit(1)


@main.command()
@click.argument("report", type=click.Path(dir_okay=False))
@click.option("--key", "keys", multiple=True, type=click.Path(dir_okay=False), metavar="PUB.pem",
              help="Verify with this trusted public key first (repeatable).")
@click.option("--model", type=click.Path(exists=True, dir_okay=False),
              help="With --key: also check the report is about this model file.")
@click.option("--json", "as_json", is_flag=True, help="Print the statement as JSON instead of tables.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None, metavar="OUT.html",
              help="Also write the report as one self-contained HTML page (charts inline as SVG).")
@refusals_exit_2
def show(report, keys, model, as_json, html_path):
    """Print a readable summary of REPORT (a DSSE envelope, or an unsigned statement)."""
    from certify.report.dsse import VerificationError, check_envelope_shape, peek_statement, read_json_file
    from certify.report.render import render_report
    from certify.report.schema import validate_predicate
    from certify.report.verify import verify_report

    if model and not keys:
        raise ModelRejected("bad_argument", "--model needs --key: a model is only checked against a verified report")
    try:
        document = read_json_file(report)
        if keys:
            verified = verify_report(document, load_keys(keys), model=model)
            statement = verified.statement
            note = f"VERIFIED: signed by trusted key {verified.keyid}" + (
                f"; about {model}" if verified.model_checked else "; model file not checked (no --model)")
        elif isinstance(document, dict) and "_type" in document:
            statement = document
            note = "NOT VERIFIED: an unsigned statement, not a signed envelope"
        else:
            check_envelope_shape(document)
            statement = peek_statement(document)
            note = "NOT VERIFIED: signature not checked (give --key to verify)"
    except VerificationError as e:
        _fail(as_json, report, e)
    if html_path:
        import os

        from certify.report.html import render_report_html

        page = render_report_html(document, verified_keyid=verified.keyid if keys else None,
                                  report_name=os.path.basename(report))
        with open(html_path, "w", encoding="utf-8") as f:
            f.write(page)
    if as_json:
        click.echo(json.dumps({"verified": bool(keys), "statement": statement}, indent=2))
        return
    errors = [] if keys else validate_predicate(statement.get("predicate"))
    if errors:
        note += f"; the predicate does not satisfy the schema ({len(errors)} errors, first: {errors[0]})"
    try:
        click.echo(render_report(statement, note), nl=False)
    except (AttributeError, TypeError, KeyError, ValueError) as e:
        click.echo(f"{note}\ncannot render this predicate: {type(e).__name__}: {e}", err=True)
        sys.exit(1)
