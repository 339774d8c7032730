"""Signing keys: generation, PEM files, and the key id that names a public key.

Two kinds are supported: ``ecdsa-p256`` (ECDSA on NIST P-256 with SHA-256, DER-encoded signatures; the default,
because cosign and the Sigstore tools verify it with a plain key file) and ``ed25519``.

The key id of a public key is the lowercase hex SHA-256 of its DER-encoded SubjectPublicKeyInfo, i.e. of the bytes
``openssl pkey -pubin -in key.pub.pem -outform DER`` prints. It depends on the public key only, so anyone holding the
public key can recompute it; envelopes name their signing key by it.

A :class:`Signer` holds a private key and never shows it: its repr names the kind and key id only, and it refuses
to be pickled or copied, so it cannot leak into logs, task queues or responses by accident.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

ECDSA_P256 = "ecdsa-p256"
ED25519 = "ed25519"
KEY_KINDS = (ECDSA_P256, ED25519)

_MAX_KEY_FILE = 64 * 1024


def generate_private_key(kind: str = ECDSA_P256):
    """A fresh private key of ``kind`` (a ``cryptography`` key object)."""
    if kind == ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if kind == ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {kind!r}; one of {', '.join(KEY_KINDS)}")


def _kind_of(key) -> str:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP256R1):
            return ECDSA_P256
        raise ValueError(f"unsupported elliptic curve {key.curve.name}; only P-256 (secp256r1) is accepted")
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ED25519
    raise ValueError(f"unsupported key type {type(key).__name__}; use {' or '.join(KEY_KINDS)}")


def public_pem(public_key) -> str:
    """The SubjectPublicKeyInfo PEM of ``public_key``."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_id(public_key) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo of ``public_key``.

    Accepts a ``cryptography`` public key, a private key (reduced to its public half), a TrustedKey or a Signer.
    """
    if isinstance(public_key, (TrustedKey, Signer)):
        return public_key.keyid
    if isinstance(public_key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        public_key = public_key.public_key()
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def write_keypair(private_path, public_path, kind: str = ECDSA_P256, *, overwrite: bool = False) -> str:
    """Write a new private key (PKCS#8 PEM, file mode 0600) and its public key (PEM); returns the key id.

    Existing files are refused unless ``overwrite``; the private key file is created with mode 0600 from the start
    (never world-readable, not even briefly).
    """
    private = generate_private_key(kind)
    private_bytes = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    if not overwrite and os.path.exists(public_path):
        raise FileExistsError(errno.EEXIST, "file exists", os.fspath(public_path))
    fd = os.open(private_path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(private_bytes)
    Path(public_path).write_text(public_pem(private.public_key()))
    return key_id(private)


def _pem_bytes(path_or_pem) -> bytes:
    """PEM text given inline (str/bytes starting with ``-----BEGIN``) or read from a file path.

    A value that is neither is never echoed in the error: it may be a mangled secret from an environment variable.
    """
    if isinstance(path_or_pem, (bytes, bytearray)):
        if bytes(path_or_pem).lstrip().startswith(b"-----BEGIN"):
            return bytes(path_or_pem)
        raise ValueError("the key bytes are not PEM text (expected '-----BEGIN ...')")
    if isinstance(path_or_pem, str) and path_or_pem.lstrip().startswith("-----BEGIN"):
        return path_or_pem.encode()
    if not isinstance(path_or_pem, (str, os.PathLike)):
        raise TypeError(f"expected a path or PEM text, got {type(path_or_pem).__name__}")
    path = os.fspath(path_or_pem)
    shown = path if len(path) <= 300 and path.isprintable() else "(value not shown: neither a file path nor PEM)"
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the "path"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not a readable file"
        raise ValueError(f"cannot read key file {shown}: {reason}") from None
    if len(data) > _MAX_KEY_FILE:
        raise ValueError(f"key file {shown} is too large for a PEM key")
    return data


class Signer:
    """A private key that signs; shows only its kind and key id."""

    __slots__ = ("_private", "kind", "keyid", "public_pem")

    def __init__(self, private_key):
        self.kind = _kind_of(private_key)
        self._private = private_key
        self.keyid = key_id(private_key)
        self.public_pem = public_pem(private_key.public_key())

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256/SHA-256 (DER) or Ed25519 signature of ``data``."""
        if self.kind == ECDSA_P256:
            return self._private.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._private.sign(data)

    def public_key(self) -> TrustedKey:
        return TrustedKey(self._private.public_key())

    def __repr__(self) -> str:
        return f"Signer(kind={self.kind!r}, keyid={self.keyid!r})"

    __str__ = __repr__

    def __reduce_ex__(self, protocol):
        raise TypeError("a Signer holds a private key and cannot be pickled or copied")


class TrustedKey:
    """A public key that reports are checked against."""

    __slots__ = ("public_key", "kind", "keyid", "pem")

    def __init__(self, public_key):
        self.kind = _kind_of(public_key)
        self.public_key = public_key
        self.keyid = key_id(public_key)
        self.pem = public_pem(public_key)

    def verify(self, sig: bytes, data: bytes) -> bool:
        """True when ``sig`` is this key's signature of ``data``."""
        try:
            if self.kind == ECDSA_P256:
                self.public_key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
            else:
                self.public_key.verify(sig, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def __eq__(self, other) -> bool:
        return isinstance(other, TrustedKey) and other.keyid == self.keyid

    def __hash__(self) -> int:
        return hash(self.keyid)

    def __repr__(self) -> str:
        return f"TrustedKey(kind={self.kind!r}, keyid={self.keyid!r})"


def load_signer(path_or_pem, password: bytes | None = None) -> Signer:
    """A :class:`Signer` from a private key PEM (inline text, e.g. from an environment variable, or a file path).

    Errors are ``ValueError`` whose message never contains key material.
    """
    data = _pem_bytes(path_or_pem)
    try:
        private = serialization.load_pem_private_key(data, password=password)
    except TypeError as e:
        raise ValueError(f"private key: {e}") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not a PEM private key ({type(e).__name__})") from None
    return Signer(private)


def load_public_key(path_or_pem) -> TrustedKey:
    """A :class:`TrustedKey` from a public key PEM (inline text or a file path)."""
    data = _pem_bytes(path_or_pem)
    if b"PRIVATE KEY" in data:
        raise ValueError("this is a private key; give the public key (PEM 'PUBLIC KEY') to verify with")
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not a PEM public key ({type(e).__name__})") from None
    return TrustedKey(public)


def load_trusted_keys(sources) -> list[TrustedKey]:
    """Several public keys (key rotation: a report signed by any of them is accepted); duplicates are dropped."""
    keys: dict[str, TrustedKey] = {}
    for source in sources:
        key = source if isinstance(source, TrustedKey) else load_public_key(source)
        keys.setdefault(key.keyid, key)
    return list(keys.values())
