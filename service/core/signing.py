"""Which key signs reports: ``LIPCERT_SIGNING_KEY`` (a PEM path) or one generated into the data directory."""

from __future__ import annotations

import os

from service.core.settings import Settings

DEFAULT_PRIVATE = "signing-key.pem"
DEFAULT_PUBLIC = "signing-key.pub.pem"


def signing_key_path(settings: Settings) -> str:
    return settings.signing_key or os.path.join(settings.data_dir, DEFAULT_PRIVATE)


def ensure_signing_key(settings: Settings) -> str:
    """Create the default key pair on first start (private key mode 0600); returns the private key path."""
    from certify.report.keys import write_keypair

    path = signing_key_path(settings)
    if not os.path.exists(path):
        if settings.signing_key:
            raise ValueError(f"LIPCERT_SIGNING_KEY={path}: no such file")
        os.makedirs(settings.data_dir, exist_ok=True)
        write_keypair(path, os.path.join(settings.data_dir, DEFAULT_PUBLIC))
    return path


def load_signer(settings: Settings):
    from certify.report.keys import load_signer as _load

    return _load(signing_key_path(settings))


def public_keys(settings: Settings) -> list:
    """The public keys reports may be signed with: the signing key's and any extra ones (rotation)."""
    from certify.report.keys import load_public_key, load_trusted_keys

    sources = []
    path = signing_key_path(settings)
    public_path = os.path.join(settings.data_dir, DEFAULT_PUBLIC)
    if not settings.signing_key and os.path.exists(public_path):
        sources.append(load_public_key(public_path))
    elif os.path.exists(path):
        sources.append(load_signer(settings).public_key())
    sources.extend(settings.public_keys)
    return load_trusted_keys(sources)
