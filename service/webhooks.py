"""Which webhook targets a worker may call.

A webhook URL comes from a tenant, and the worker that calls it sits inside the deployment's network. So a target
that resolves to a loopback, private, link-local (cloud metadata), multicast or reserved address is refused,
unless an operator allows that network with ``LIPCERT_WEBHOOK_ALLOW_NETS`` (comma-separated CIDRs). The check runs
when the job is created and again just before the call, since DNS answers can change in between.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


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


def _internal(address) -> bool:
    return (address.is_loopback or address.is_private or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified)


def check_webhook_target(url: str, allowed_networks=()) -> None:
    """Raise WebhookRefused unless every address ``url``'s host resolves to is public or explicitly allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("a webhook must be an http(s) URL with a host")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as e:
        raise WebhookRefused(f"host {parts.hostname!r} does not resolve: {e}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if _internal(address) and not any(address in net for net in allowed_networks):
            raise WebhookRefused(f"host {parts.hostname!r} resolves to the internal address {address}; "
                                 "internal webhook targets must be allowed with LIPCERT_WEBHOOK_ALLOW_NETS")
