"""Bearer tokens mapped to tenants; only their SHA-256 is kept, and lookups compare digests in constant time.

Sources: ``LIPCERT_TOKENS`` (``tenant:token[:ro],...``) and a tokens file with one entry a line, either
``tenant:token[:ro]`` or ``tenant:sha256=<hex>[:ro]`` (what ``lipcert serve`` writes, so the token itself is never
stored). ``ro`` marks a read-only token (for CI gates: it may read jobs and reports but not upload or submit).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass

_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Tenant:
    name: str
    read_only: bool = False


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _parse_entry(entry: str, where: str) -> tuple[bytes, Tenant]:
    parts = entry.split(":")
    read_only = False
    if len(parts) == 3 and parts[2] == "ro":
        read_only = True
        parts = parts[:2]
    if len(parts) != 2 or not _TENANT.match(parts[0]) or not parts[1]:
        raise ValueError(f"{where}: bad token entry (expected tenant:token[:ro])")
    tenant, secret = parts
    if secret.startswith("sha256="):
        hexpart = secret[len("sha256="):]
        if not re.fullmatch(r"[0-9a-f]{64}", hexpart):
            raise ValueError(f"{where}: sha256= needs 64 hex digits")
        return bytes.fromhex(hexpart), Tenant(tenant, read_only)
    if len(secret) < 16:
        raise ValueError(f"{where}: tokens must be at least 16 characters")
    return _digest(secret), Tenant(tenant, read_only)


class TokenRegistry:
    def __init__(self, entries: list[tuple[bytes, Tenant]]):
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_sources(cls, env_value: str = "", path: str | None = None) -> TokenRegistry:
        entries = [_parse_entry(e.strip(), f"LIPCERT_TOKENS entry {i + 1}")
                   for i, e in enumerate(env_value.split(",")) if e.strip()]
        if path:
            with open(path) as f:
                for n, line in enumerate(f, 1):
                    line = line.strip()
                    if line and not line.startswith("#"):
                        entries.append(_parse_entry(line, f"{path} line {n}"))
        return cls(entries)

    def lookup(self, token: str) -> Tenant | None:
        """The tenant of ``token``; every entry is compared so the time does not depend on which one matches."""
        presented = _digest(token)
        found = None
        for stored, tenant in self._entries:
            if hmac.compare_digest(stored, presented) and found is None:
                found = tenant
        return found


def new_token() -> str:
    return "lc_" + secrets.token_urlsafe(32)


def create_tokens_file(path: str, tenant: str = "default") -> str:
    """Write a tokens file holding the hash of a fresh token for ``tenant``; returns the token (shown once)."""
    token = new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# lipcert API tokens: tenant:sha256=<hex of the token>[:ro] or tenant:token[:ro]\n")
        f.write(f"{tenant}:sha256={hashlib.sha256(token.encode()).hexdigest()}\n")
    return token
