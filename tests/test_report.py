"""The signed report: keys, DSSE envelopes, the statement and its schema, verification, and the verify/show/keygen
commands. Every way a report must be refused has its own test."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from report_example import example_predicate

from certify.cli import main
from certify.report.dsse import (
    PAYLOAD_TYPE,
    STATEMENT_TYPE,
    VerificationError,
    canonical_json,
    dump_envelope,
    open_envelope,
    pae,
    sign_payload,
    sign_statement,
    verify_signatures,
)
from certify.report.keys import (
    Signer,
    generate_private_key,
    key_id,
    load_public_key,
    load_signer,
    load_trusted_keys,
    write_keypair,
)
from certify.report.schema import predicate_schema
from certify.report.statement import (
    PREDICATE_TYPE,
    build_statement,
    environment,
    skipped,
    validate_predicate,
    weights_sha256,
)
from certify.report.verify import verify_report

REPO = Path(__file__).resolve().parent.parent
MODEL_BYTES = b"\x08\x07model bytes standing in for an ONNX file" * 3


def _signer(kind: str = "ecdsa-p256") -> Signer:
    return Signer(generate_private_key(kind))


@pytest.fixture(scope="module")
def signer() -> Signer:
    return _signer()


@pytest.fixture(scope="module")
def trusted(signer):
    return [signer.public_key()]


def _statement(predicate=None, model=MODEL_BYTES, name="model.onnx") -> dict:
    return build_statement(model_name=name, model_sha256=hashlib.sha256(model).hexdigest(),
                           predicate=predicate or example_predicate())


@pytest.fixture(scope="module")
def envelope(signer) -> dict:
    return sign_statement(_statement(), signer)


@pytest.fixture()
def files(tmp_path, signer, envelope):
    """A key pair, a model, and its signed report on disk."""
    pem = signer._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    (tmp_path / "key.pem").write_bytes(pem)
    (tmp_path / "key.pub.pem").write_text(signer.public_pem)
    (tmp_path / "model.onnx").write_bytes(MODEL_BYTES)
    (tmp_path / "other.onnx").write_bytes(MODEL_BYTES + b"!")
    (tmp_path / "report.json").write_bytes(dump_envelope(envelope))
    return tmp_path


def _code(report, keys, **kwargs) -> str:
    with pytest.raises(VerificationError) as info:
        verify_report(report, keys, **kwargs)
    return info.value.code


# --- keys ------------------------------------------------------------------------------------------------------


def test_pae_matches_the_dsse_specification_example():
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("t\u00e9", b"") == b"DSSEv1 3 t\xc3\xa9 0 "  # lengths count UTF-8 bytes


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ed25519"])
def test_key_id_is_sha256_of_the_der_public_key_in_the_pem(tmp_path, kind):
    keyid = write_keypair(tmp_path / "k.pem", tmp_path / "k.pub.pem", kind)
    pem = (tmp_path / "k.pub.pem").read_text()
    der = base64.b64decode("".join(line for line in pem.splitlines() if not line.startswith("-----")))
    assert keyid == hashlib.sha256(der).hexdigest()
    assert load_public_key(tmp_path / "k.pub.pem").keyid == keyid
    assert load_signer(tmp_path / "k.pem").keyid == keyid
    assert key_id(load_signer(tmp_path / "k.pem").public_key().public_key) == keyid


def test_keypair_files_private_mode_0600_and_no_overwrite(tmp_path):
    write_keypair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o600
    assert (tmp_path / "k.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "k.pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = (tmp_path / "k.pem").read_bytes()
    with pytest.raises(FileExistsError):
        write_keypair(tmp_path / "k.pem", tmp_path / "new.pub.pem")
    with pytest.raises(FileExistsError):
        write_keypair(tmp_path / "new.pem", tmp_path / "k.pub.pem")
    assert (tmp_path / "k.pem").read_bytes() == before
    os.chmod(tmp_path / "k.pem", 0o644)
    write_keypair(tmp_path / "k.pem", tmp_path / "k.pub.pem", overwrite=True)
    assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o600
    assert (tmp_path / "k.pem").read_bytes() != before


def test_signer_loads_from_inline_pem_and_never_shows_the_private_key(tmp_path):
    write_keypair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    pem = (tmp_path / "k.pem").read_text()
    from_text, from_bytes = load_signer(pem), load_signer(pem.encode())  # e.g. from an environment variable
    assert from_text.keyid == from_bytes.keyid == load_signer(str(tmp_path / "k.pem")).keyid
    secret = str(from_text._private.private_numbers().private_value)
    body = pem.splitlines()[1]
    for text in (repr(from_text), str(from_text), f"{from_text}"):
        assert secret not in text and body not in text and from_text.keyid in text
    with pytest.raises(TypeError):
        pickle.dumps(from_text)
    with pytest.raises(TypeError):
        copy.deepcopy(from_text)


def test_key_loading_refusals(tmp_path):
    write_keypair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    with pytest.raises(ValueError, match="public key"):
        load_public_key(tmp_path / "k.pem")
    with pytest.raises(ValueError, match="private key"):
        load_signer(tmp_path / "k.pub.pem")
    with pytest.raises(ValueError, match="cannot read"):
        load_public_key(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        load_public_key(p384.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ValueError, match="unknown key type"):
        generate_private_key("rsa")
    mangled = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgTOPSECRET\nMORE"  # a PEM body without its header
    for value in (mangled, mangled.encode(), "-----BEGIN PRIVATE KEY-----\nTOPSECRET\n-----END PRIVATE KEY-----\n"):
        with pytest.raises(ValueError) as info:
            load_signer(value)
        assert "TOPSECRET" not in str(info.value)


# --- envelope and statement ------------------------------------------------------------------------------------


def test_envelope_format(envelope, signer):
    assert set(envelope) == {"payloadType", "payload", "signatures"}
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    payload = base64.b64decode(envelope["payload"], validate=True)
    assert base64.b64encode(payload).decode() == envelope["payload"]  # standard, padded
    statement = json.loads(payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE == "https://lipcert.dev/robustness-report/v1"
    digest = hashlib.sha256(MODEL_BYTES).hexdigest()
    assert statement["subject"] == [{"name": "model.onnx", "digest": {"sha256": digest}}]
    assert payload == canonical_json(statement)
    [sig] = envelope["signatures"]
    assert sig["keyid"] == signer.keyid
    r, s = decode_dss_signature(base64.b64decode(sig["sig"]))  # ECDSA signatures are DER
    assert r > 0 and s > 0
    assert signer.public_key().verify(base64.b64decode(sig["sig"]), pae(PAYLOAD_TYPE, payload))


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ed25519"])
def test_round_trip(kind):
    signer = _signer(kind)
    statement = _statement()
    opened, keyid = open_envelope(sign_statement(statement, signer), [signer.public_key()])
    assert opened == statement and keyid == signer.keyid
    verified = verify_report(dump_envelope(sign_statement(statement, signer)), [signer.public_key()],
                             model=MODEL_BYTES)
    assert verified.model_checked and verified.subject["name"] == "model.onnx"
    assert verified.predicate == statement["predicate"]


def test_build_statement_refuses_what_no_verifier_would_accept():
    with pytest.raises(ValueError, match="64 lowercase hex"):
        build_statement(model_name="m.onnx", model_sha256="ABC", predicate=example_predicate())
    with pytest.raises(ValueError, match="model_name"):
        build_statement(model_name="", model_sha256="0" * 64, predicate=example_predicate())
    bad = example_predicate()
    del bad["bounds"]
    with pytest.raises(ValueError, match=r"'bounds' is a required property"):
        build_statement(model_name="m.onnx", model_sha256="0" * 64, predicate=bad)


# --- schema ----------------------------------------------------------------------------------------------------


def test_published_schema_is_the_one_the_package_loads():
    packaged = (REPO / "certify" / "report" / "predicate.schema.json").read_bytes()
    assert (REPO / "docs" / "report-schema.json").read_bytes() == packaged
    assert predicate_schema() == json.loads(packaged)


def test_full_and_skipped_predicates_are_valid():
    assert validate_predicate(example_predicate()) == []
    partial = example_predicate(skipped_stages=True)
    assert validate_predicate(partial) == []
    assert partial["attacks"] == {"status": "skipped", "reason": "no dataset was given"}
    assert partial["dataset"] is None


def test_bounds_may_have_no_guaranteed_network_upper_bound():
    p = example_predicate()
    p["bounds"]["network"].update(upper=None, ratio=None, reason="no rule for operator Softmax")
    p["bounds"]["layers"][0].update(upper=None, reason="no rule")
    assert validate_predicate(p) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p.pop("attacks"), "predicate: 'attacks' is a required property"),
        (lambda p: p.update(attacks={"status": "skipped"}), "predicate.attacks: 'reason' is a required property"),
        (lambda p: p.update(bounds={"status": "done", "reason": "x"}), "predicate.bounds.status"),
        (lambda p: p["bounds"]["layers"][1].update(upper="big"), "predicate.bounds.layers[1].upper"),
        (lambda p: p["certified"]["accuracy"]["l2"].update({"0.2": 1.5}), "predicate.certified.accuracy.l2.0.2"),
        (lambda p: p["certified"]["accuracy"].update(l3={}), "predicate.certified.accuracy: 'l3'"),
        (lambda p: p["attacks"]["results"]["linf"].update({"a lot": p["attacks"]["results"]["linf"]["0.1"]}),
         "predicate.attacks.results.linf: 'a lot'"),
        (lambda p: p["attacks"]["sanity_checks"].append({"name": "x"}), "'passed' is a required property"),
        (lambda p: p["conversion"].update(max_abs_diff=float("inf")), "not a finite number"),
        (lambda p: p["converter"].update(weights_sha256="xyz"), "predicate.converter.weights_sha256"),
        (lambda p: p.update(created="2026-13-01T00:00:00Z"), "predicate.created: not an RFC 3339 time"),
        (lambda p: p.update(created="yesterday"), "predicate.created"),
        (lambda p: p.update(extra=1), "Additional properties are not allowed"),
        (lambda p: p["environment"].pop("seed"), "predicate.environment: 'seed' is a required property"),
        (lambda p: p["stages"].append({"stage": "x", "status": "maybe"}), "predicate.stages[7].status"),
    ],
)
def test_schema_errors_name_the_field(change, expected):
    p = example_predicate()
    change(p)
    errors = validate_predicate(p)
    assert any(expected in e for e in errors), errors


def test_weights_digest_depends_on_values_names_and_shapes_not_on_order():
    import numpy as np
    import torch

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.zeros(3, dtype=np.float32)
    base = weights_sha256([("fc.weight", w), ("fc.bias", b)])
    assert base == weights_sha256([("fc.bias", torch.from_numpy(b)), ("fc.weight", torch.from_numpy(w))])
    assert base == weights_sha256([("fc.weight", w.astype(">f4")), ("fc.bias", b)])  # byte order normalised
    changed = w.copy()
    changed[1, 2] = np.nextafter(changed[1, 2], np.float32(np.inf))
    others = [
        [("fc.weight", changed), ("fc.bias", b)],
        [("fc.weight", w.reshape(3, 2)), ("fc.bias", b)],
        [("fc.weight", w.astype(np.float64)), ("fc.bias", b)],
        [("fc.w", w), ("fc.bias", b)],
        [("fc.weight", w)],
    ]
    digests = {weights_sha256(o) for o in others}
    assert len(digests) == len(others) and base not in digests


def test_environment_section_fits_the_schema():
    p = example_predicate()
    p["environment"] = environment(device="cpu", seed=3)
    assert validate_predicate(p) == []
    assert p["environment"]["torch"].startswith("2.") and p["environment"]["seed"] == 3


def test_skipped_marker_needs_a_reason():
    assert skipped("no dataset") == {"status": "skipped", "reason": "no dataset"}
    with pytest.raises(ValueError):
        skipped("")


# --- verification failures -------------------------------------------------------------------------------------


def test_every_single_byte_change_of_a_stored_envelope_fails(envelope, trusted):
    data = dump_envelope(envelope)
    assert verify_report(data, trusted, model=MODEL_BYTES).keyid == trusted[0].keyid
    codes = set()
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        codes.add(_code(bytes(tampered), trusted, model=MODEL_BYTES))
    assert {"bad_signature", "unknown_key", "malformed_json"} <= codes


@pytest.mark.parametrize("position", ["payload", "sig", "payloadType", "keyid"])
def test_tampered_fields_fail(envelope, trusted, position):
    env = copy.deepcopy(envelope)
    target = env["signatures"][0] if position in ("sig", "keyid") else env
    text = target[position]
    middle = len(text) // 2
    target[position] = text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1:]
    assert _code(env, trusted) in {"bad_signature", "unknown_key", "bad_encoding"}


def test_non_canonical_base64_fails(envelope, trusted):
    env = copy.deepcopy(envelope)
    payload = env["payload"]
    assert payload.endswith("=")  # ensure unused low bits in the last character before the padding
    body = payload.rstrip("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(body[-1])
    twin = body[:-1] + alphabet[last ^ 1] + payload[len(body):]
    assert base64.b64decode(twin) == base64.b64decode(payload)  # decodes to the same bytes...
    env["payload"] = twin
    assert _code(env, trusted) == "bad_encoding"  # ...but is still refused


def test_truncated_file_fails(envelope, trusted, files):
    data = dump_envelope(envelope)
    for cut in (0, 1, 40, len(data) // 2, len(data) - 2, len(data) - 1):
        assert _code(data[:cut], trusted) == "truncated"
    (files / "cut.json").write_bytes(data[: len(data) // 3])
    assert _code(files / "cut.json", trusted) == "truncated"
    assert _code(files / "missing.json", trusted) == "unreadable"
    assert _code(b"\xff\xfe not utf-8", trusted) == "malformed_json"


def test_unknown_key_fails_and_rotation_accepts_any_trusted_key(envelope, trusted, signer):
    other = _signer()
    assert _code(envelope, [other.public_key()]) == "unknown_key"
    assert _code(envelope, []) == "no_trusted_keys"
    verified = verify_report(envelope, [other.public_key(), signer.public_key()])
    assert verified.keyid == signer.keyid
    keys = load_trusted_keys([other.public_pem, signer.public_pem, signer.public_key()])  # duplicates dropped
    assert [k.keyid for k in keys] == [other.keyid, signer.keyid]


def test_signature_under_a_claimed_keyid_of_another_key_fails(envelope, signer):
    impostor = _signer()
    env = sign_statement(_statement(), impostor)
    env["signatures"][0]["keyid"] = signer.keyid  # claims to be the trusted key
    assert _code(env, [signer.public_key()]) == "bad_signature"


def test_another_models_report_fails(envelope, trusted, files):
    assert _code(envelope, trusted, model=files / "other.onnx") == "subject_mismatch"
    assert _code(envelope, trusted, model_sha256="0" * 64) == "subject_mismatch"
    assert verify_report(envelope, trusted, model=files / "model.onnx").model_checked
    unchecked = verify_report(envelope, trusted)
    assert not unchecked.model_checked


def test_signature_over_a_different_payload_type_fails(signer, trusted):
    payload = canonical_json(_statement())
    honest = sign_payload("application/json", payload, signer)  # a valid signature, but not for in-toto
    assert _code(honest, trusted) == "wrong_payload_type"
    relabelled = copy.deepcopy(honest)
    relabelled["payloadType"] = PAYLOAD_TYPE  # the signature covers the other type: the PAE differs
    assert _code(relabelled, trusted) == "bad_signature"


def test_unsigned_and_malformed_envelopes_fail(envelope, trusted):
    assert _code({**envelope, "signatures": []}, trusted) == "unsigned"
    assert _code(_statement(), trusted) == "malformed_envelope"  # a bare statement is not signed
    assert _code({**envelope, "extra": 1}, trusted) == "malformed_envelope"
    assert _code([envelope], trusted) == "malformed_envelope"
    duplicated = dump_envelope(envelope).replace(b'{"payloadType"', b'{"payload":"e30=","payloadType"', 1)
    assert _code(duplicated, trusted) == "malformed_json"


@pytest.mark.parametrize(
    ("statement_change", "code"),
    [
        (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "wrong_statement_type"),
        (lambda s: s.update(predicateType="https://slsa.dev/provenance/v1"), "wrong_predicate_type"),
        (lambda s: s.update(subject=[]), "malformed_statement"),
        (lambda s: s["subject"][0]["digest"].update(sha256="XYZ"), "malformed_statement"),
        (lambda s: s["predicate"].pop("stages"), "schema"),
        (lambda s: s["predicate"]["attacks"].update(clean_accuracy=7), "schema"),
    ],
)
def test_signed_but_wrong_statements_fail(signer, trusted, statement_change, code):
    statement = _statement()
    statement_change(statement)
    env = sign_payload(PAYLOAD_TYPE, canonical_json(statement), signer)
    assert _code(env, trusted, model=MODEL_BYTES) == code


_ED25519 = Signer(generate_private_key("ed25519"))


@settings(max_examples=40, deadline=None)
@given(payload_type=st.text(max_size=40), payload=st.binary(max_size=300), data=st.data())
def test_any_payload_round_trips_and_any_changed_byte_fails(payload_type, payload, data):
    envelope = sign_payload(payload_type, payload, _ED25519)
    key = _ED25519.public_key()
    assert verify_signatures(envelope, [key]) == (payload, _ED25519.keyid)
    if payload:
        i = data.draw(st.integers(0, len(payload) - 1))
        flip = data.draw(st.integers(1, 255))
        changed = bytearray(payload)
        changed[i] ^= flip
        forged = {**envelope, "payload": base64.b64encode(bytes(changed)).decode()}
        with pytest.raises(VerificationError, match="bad_signature"):
            verify_signatures(forged, [key])
    with pytest.raises(VerificationError, match="bad_signature"):
        verify_signatures({**envelope, "payloadType": payload_type + "x"}, [key])


def test_signing_refuses_a_non_statement(signer):
    with pytest.raises(ValueError, match="in-toto"):
        sign_statement({"_type": "x"}, signer)
    assert STATEMENT_TYPE == "https://in-toto.io/Statement/v1"


# --- interoperability -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ed25519"])
def test_securesystemslib_verifies_our_envelopes_and_we_verify_theirs(kind):
    dsse = pytest.importorskip("securesystemslib.dsse")
    sslib_signer = pytest.importorskip("securesystemslib.signer")
    signer = _signer(kind)
    ours = sign_statement(_statement(), signer)
    key = sslib_signer.SSlibKey.from_crypto(signer.public_key().public_key, keyid=signer.keyid)
    theirs = dsse.Envelope.from_dict(copy.deepcopy(ours))
    assert list(theirs.verify([key], 1)) == [signer.keyid]
    assert theirs.pae() == pae(ours["payloadType"], base64.b64decode(ours["payload"]))

    tampered = copy.deepcopy(ours)
    tampered["payload"] = base64.b64encode(base64.b64decode(ours["payload"]).replace(b"0.984", b"0.999")).decode()
    from securesystemslib.exceptions import VerificationError as SSlibVerificationError

    with pytest.raises(SSlibVerificationError):
        dsse.Envelope.from_dict(tampered).verify([key], 1)

    foreign = dsse.Envelope(payload=canonical_json(_statement()), payload_type=PAYLOAD_TYPE, signatures={})
    foreign.sign(sslib_signer.CryptoSigner(signer._private, key))
    statement, keyid = open_envelope(foreign.to_dict(), [signer.public_key()])
    assert keyid == signer.keyid and statement["predicateType"] == PREDICATE_TYPE


# --- commands --------------------------------------------------------------------------------------------------


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_keygen_command(tmp_path):
    result = _run("keygen", "--private", tmp_path / "a.pem", "--public", tmp_path / "a.pub.pem", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["type"] == "ecdsa-p256" and info["keyid"] == load_public_key(tmp_path / "a.pub.pem").keyid
    assert stat.S_IMODE(os.stat(tmp_path / "a.pem").st_mode) == 0o600
    assert "PRIVATE" not in result.output
    again = _run("keygen", "--private", tmp_path / "a.pem", "--public", tmp_path / "b.pub.pem")
    assert again.exit_code == 2 and "error: file_exists:" in again.output
    ed = _run("keygen", "--private", tmp_path / "e.pem", "--public", tmp_path / "e.pub.pem", "--type", "ed25519")
    assert ed.exit_code == 0 and load_signer(tmp_path / "e.pem").kind == "ed25519"


def test_verify_command_exit_codes(files, signer):
    ok = _run("verify", files / "report.json", "--key", files / "key.pub.pem", "--model", files / "model.onnx")
    assert ok.exit_code == 0, ok.output
    assert f"key {signer.keyid}" in ok.output and "matches" in ok.output

    other_key = files / "other.pub.pem"
    other_key.write_text(_signer().public_pem)
    rotated = _run("verify", files / "report.json", "--key", other_key, "--key", files / "key.pub.pem", "--json")
    assert rotated.exit_code == 0
    info = json.loads(rotated.output)
    assert info["verified"] and info["keyid"] == signer.keyid and info["model_checked"] is False

    wrong_model = _run("verify", files / "report.json", "--key", files / "key.pub.pem", "--model", files / "other.onnx")
    assert wrong_model.exit_code == 1 and "subject_mismatch" in wrong_model.output

    unknown = _run("verify", files / "report.json", "--key", other_key, "--json")
    assert unknown.exit_code == 1 and json.loads(unknown.output)["error"]["code"] == "unknown_key"

    data = (files / "report.json").read_bytes()
    (files / "cut.json").write_bytes(data[:100])
    cut = _run("verify", files / "cut.json", "--key", files / "key.pub.pem")
    assert cut.exit_code == 1 and "truncated" in cut.output
    missing = _run("verify", files / "nothing.json", "--key", files / "key.pub.pem")
    assert missing.exit_code == 1 and "unreadable" in missing.output

    bad_key = _run("verify", files / "report.json", "--key", files / "model.onnx")
    assert bad_key.exit_code == 2 and "error: bad_key:" in bad_key.output
    no_key = _run("verify", files / "report.json")
    assert no_key.exit_code == 2


def test_show_command(files, signer):
    unverified = _run("show", files / "report.json")
    assert unverified.exit_code == 0, unverified.output
    text = unverified.output
    assert "NOT VERIFIED" in text
    for needle in ("Lipschitz bounds (l2)", "conv1", "BatchNormalization", "Certified accuracy", "0.962",
                   "worst-case accuracy", "pgd", "sanity checks", "PASS  monotone_in_eps", "Stages"):
        assert needle in text, needle

    verified = _run("show", files / "report.json", "--key", files / "key.pub.pem", "--model", files / "model.onnx")
    assert verified.exit_code == 0 and f"VERIFIED: signed by trusted key {signer.keyid}" in verified.output

    other_key = files / "other.pub.pem"
    other_key.write_text(_signer().public_pem)
    refused = _run("show", files / "report.json", "--key", other_key)
    assert refused.exit_code == 1 and "unknown_key" in refused.output

    partial = sign_statement(_statement(example_predicate(skipped_stages=True)), signer)
    (files / "partial.json").write_bytes(dump_envelope(partial))
    shown = _run("show", files / "partial.json")
    assert shown.exit_code == 0 and "skipped: no dataset was given" in shown.output

    (files / "statement.json").write_text(json.dumps(_statement()))
    bare = _run("show", files / "statement.json", "--json")
    assert bare.exit_code == 0 and json.loads(bare.output)["verified"] is False


def test_the_documented_securesystemslib_recipe_verifies_a_report(files, monkeypatch):
    pytest.importorskip("securesystemslib")
    text = (REPO / "docs" / "verify.md").read_text()
    [recipe] = [b for b in text.split("```python\n")[1:] if "securesystemslib" in b]
    recipe = recipe.split("```")[0]
    (files / "report-schema.json").write_bytes((REPO / "docs" / "report-schema.json").read_bytes())
    monkeypatch.chdir(files)
    exec(compile(recipe, "docs/verify.md", "exec"), {})
    (files / "model.onnx").write_bytes(MODEL_BYTES + b"changed")
    with pytest.raises(AssertionError):
        exec(compile(recipe, "docs/verify.md", "exec"), {})


def test_eps_keys_read_back_as_the_radius_they_stand_for():
    from certify.report.schema import eps_key, eps_of

    for eps in (0.1, 1 / 255, 8 / 255, 2.0, 1e-7):
        assert eps_of(eps_key(eps)) == eps
    assert eps_key(0.1) == "0.1" and eps_key(2) == "2.0"
    assert eps_of("0.10") == 0.1 and eps_of("best") is None and eps_of(None) is None
