"""``lipcert gate``: the deployment gate for CI: verify the report, then hold it to a policy.

Exit 0: verified and every policy check passed. Exit 1: denied, with the reasons: the report failed verification
(unsigned, tampered, another model's, unreadable), it records a conversion mismatch (a converted node that
disagrees with onnxruntime: its numbers are not about the model), or a check failed (a threshold not met, a
measurement missing, a stale report). Exit 2: the gate could not evaluate: the policy file is unreadable or invalid
(an unknown key included), or a --key file is unusable.
"""

from __future__ import annotations

import json
import sys

import click

from certify.cli import main, refusals_exit_2
from certify.cli.verify import load_keys, trusted_keys_option, verification_lines, verification_summary
from certify.errors import ModelRejected


def _emit_denied(as_json: bool, report: str, error, verification: dict | None = None) -> None:
    """Denied before the policy: an unverifiable report, or (``verification`` given) a verified one that records a
    conversion mismatch."""
    if as_json:
        verification = verification or {"verified": False, "error": error.to_dict()}
        click.echo(json.dumps({"verdict": "fail", "exit_code": 1, "report": report, "verification": verification,
                               "policy": None, "error": error.to_dict()}, indent=2))
    else:
        what = "records a conversion mismatch" if verification else "is not a verified report"
        click.echo(f"FAIL: {report} {what}: {error.code}: {error.message}")


@main.command()
@click.argument("report", type=click.Path(dir_okay=False))
@trusted_keys_option
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The model file being deployed; the report must be about its exact bytes.")
@click.option("--policy", "policy_path", required=True, type=click.Path(dir_okay=False),
              help="Policy file (YAML); see docs/verify.md.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@refusals_exit_2
def gate(report, keys, model, policy_path, as_json):
    """Verify REPORT for MODEL, then evaluate the policy. Exit 0 pass, 1 denied, 2 could not evaluate."""
    from certify.report.policy import PolicyError, conversion_refusal, evaluate_policy, read_policy
    from certify.report.render import policy_lines
    from certify.report.verify import VerificationError, verify_report

    try:
        policy = read_policy(policy_path)
    except PolicyError as e:
        raise ModelRejected("invalid_policy", str(e)) from None
    trusted = load_keys(keys)
    try:
        verified = verify_report(report, trusted, model=model)
    except VerificationError as e:
        _emit_denied(as_json, report, e)
        sys.exit(1)
    refused = conversion_refusal(verified.predicate)
    if refused:
        _emit_denied(as_json, report, ModelRejected("conversion_mismatch", refused),
                     verification_summary(verified, model))
        sys.exit(1)
    result = evaluate_policy(policy, verified.predicate, keyid=verified.keyid or "")
    code = 0 if result["verdict"] == "pass" else 1
    if as_json:
        click.echo(json.dumps({"verdict": result["verdict"], "exit_code": code, "report": report,
                               "verification": verification_summary(verified, model), "policy": result}, indent=2))
        sys.exit(code)
    failed = [c["name"] for c in result["checks"] if c["verdict"] != "pass"]
    click.echo(f"lipcert gate: {report} for {model} against {policy_path}")
    click.echo("verified")
    click.echo("\n".join(verification_lines(verified, trusted, model)))
    click.echo("\n".join(policy_lines(result)))
    total = len(result["checks"])
    if failed:
        click.echo(f"FAIL: {len(failed)} of {total} checks failed: {', '.join(failed)}")
    else:
        click.echo(f"PASS: all {total} checks passed")
    sys.exit(code)
