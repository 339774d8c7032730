"""Which webhook targets a worker may call, and calling them without being steered elsewhere.

A webhook URL comes from a tenant, and the worker that calls it sits inside the deployment's network. So a target
must resolve only to globally routable addresses (no loopback, private, carrier-grade NAT, link-local cloud
metadata, multicast, reserved or unspecified ones, also not when wrapped in an IPv6 form such as ``::ffff:a.b.c.d``,
NAT64, 6to4 or Teredo), unless an operator allows that network with ``LIPCERT_WEBHOOK_ALLOW_NETS``.

The check runs when the job is created and again before every attempt to call it. A call connects to the very
address that was vetted (the name is resolved once per attempt and pinned; the ``Host`` header and, for https, the
TLS server name and certificate check still use the host name), so a DNS answer that changes between the check and
the connection (rebinding) cannot redirect it. Redirects are never followed: a 3xx answer ends the attempt.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger("lipcert.webhooks")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class WebhookRefused(ValueError):
    """The URL's host is not an allowed webhook target; the message says why."""


def parse_networks(text: str) -> tuple:
    """``"127.0.0.1/32,10.1.0.0/16"`` -> networks; a bad entry raises ValueError naming it."""
    nets = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"LIPCERT_WEBHOOK_ALLOW_NETS: {part!r} is not a network (CIDR)") from None
    return tuple(nets)


def _embedded_ipv4(address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo client), if any."""
    if address.version != 6:
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[1]
    return None


def _allowed(address, allowed_networks) -> bool:
    """Globally routable unicast (``is_global``, so 100.64.0.0/10 is out), or inside an allowed network."""
    candidates = [address] + [a for a in [_embedded_ipv4(address)] if a is not None]
    if any(any(a in net for net in allowed_networks if a.version == net.version) for a in candidates):
        return True
    return all(a.is_global and not a.is_multicast for a in candidates)


@dataclass(frozen=True)
class Target:
    """A vetted webhook target: where to connect (``address``) and what to call it (``host``)."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def check_webhook_target(url: str, allowed_networks=(), resolve=socket.getaddrinfo) -> Target:
    """Resolve ``url``'s host once; raise WebhookRefused unless every address is allowed; return the pinned one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("a webhook must be an http(s) URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = resolve(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError) as e:
        raise WebhookRefused(f"host {parts.hostname!r} does not resolve: {e}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise WebhookRefused(f"host {parts.hostname!r} does not resolve")
    for address in addresses:
        if not _allowed(address, allowed_networks):
            raise WebhookRefused(f"host {parts.hostname!r} resolves to the internal address {address}; "
                                 "internal webhook targets must be allowed with LIPCERT_WEBHOOK_ALLOW_NETS")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, path, str(addresses[0]))


def _connection(target: Target, timeout: float) -> http.client.HTTPConnection:
    """A connection to ``target.host`` whose socket goes to the pinned address (no second DNS lookup)."""
    if target.scheme == "https":
        conn = http.client.HTTPSConnection(target.host, target.port, timeout=timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)

    def pinned(address, timeout, source_address=None):
        return socket.create_connection((target.address, address[1]), timeout, source_address)

    conn._create_connection = pinned  # http.client's own hook for opening the socket; TLS still uses target.host
    return conn


def post_webhook(url: str, body: bytes, allowed_networks=(), timeout: float = 5.0, attempts: int = 3,
                 resolve=socket.getaddrinfo) -> int | None:
    """POST ``body`` to ``url``; returns the final HTTP status, or None when no answer came. Never raises.

    Each attempt re-resolves and re-vets the host. A 2xx or 4xx answer ends it; a 3xx is not followed (and not
    retried); connection errors and 5xx are retried with a short backoff.
    """
    status = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.5 * 2 ** (attempt - 1))
        try:
            target = check_webhook_target(url, allowed_networks, resolve)
        except WebhookRefused as e:
            log.warning("webhook %s not called: %s", url, e)
            return None
        conn = _connection(target, timeout)
        try:
            conn.request("POST", target.path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read(64 * 1024)
            status = response.status
        except (OSError, http.client.HTTPException) as e:
            log.warning("webhook %s attempt %d failed: %s", url, attempt + 1, e)
            continue
        finally:
            conn.close()
        if 300 <= status < 400:
            log.warning("webhook %s answered %d; redirects are not followed", url, status)
            return status
        if status < 500:
            return status
    return status
