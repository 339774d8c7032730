"""Webhook targets: only globally routable addresses unless allowed; calls are pinned and never redirected."""

from __future__ import annotations

import socket

import pytest
from service_fixtures import RecordingServer

from service.core.webhooks import WebhookRefused, check_webhook_target, parse_networks, post_webhook


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://[::1]/hook", "http://10.1.2.3/", "http://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/", "http://localhost/",
    "http://100.64.0.1/", "http://100.127.255.254/",  # carrier-grade NAT (some clouds' metadata live there)
    "http://169.254.170.2/v2/credentials", "http://[::ffff:127.0.0.1]/", "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/",  # NAT64 and 6to4 forms of 127.0.0.1
    "http://224.0.0.1/", "http://[ff02::1]/", "http://[fd00::1]/", "http://[::]/", "http://240.0.0.1/",
    "http://198.18.0.1/",
])
def test_internal_targets_are_refused(url):
    with pytest.raises(WebhookRefused, match="internal address"):
        check_webhook_target(url)


def test_an_allowed_network_is_accepted_and_only_that_one():
    allowed = parse_networks("127.0.0.0/8, 10.1.0.0/16")
    check_webhook_target("http://127.0.0.1:8080/hook", allowed)
    check_webhook_target("https://10.1.200.3/hook", allowed)
    check_webhook_target("http://[::ffff:127.0.0.1]/hook", allowed)  # the same address, IPv6-mapped
    with pytest.raises(WebhookRefused):
        check_webhook_target("http://10.2.0.1/hook", allowed)
    with pytest.raises(WebhookRefused):
        check_webhook_target("http://100.64.0.1/hook", allowed)


def test_public_address_is_accepted_and_pinned():
    target = check_webhook_target("https://93.184.216.34/hook?x=1")
    assert (target.address, target.port, target.path) == ("93.184.216.34", 443, "/hook?x=1")


@pytest.mark.parametrize("url", ["ftp://93.184.216.34/x", "http:///nohost", "file:///etc/passwd"])
def test_non_http_or_hostless_urls_are_refused(url):
    with pytest.raises(WebhookRefused, match="http"):
        check_webhook_target(url)


def test_bad_allow_list_names_the_entry():
    with pytest.raises(ValueError, match="'not-a-net'"):
        parse_networks("127.0.0.0/8,not-a-net")


@pytest.fixture
def servers():
    started = []

    def make(**kw):
        started.append(RecordingServer(**kw))
        return started[-1]

    yield make
    for s in started:
        s.shutdown()
        s.server_close()


LOOPBACK = parse_networks("127.0.0.1/32")


def test_a_redirect_is_not_followed(servers):
    """An allowed receiver answers 302 to another (loopback) address: the worker does not go there."""
    secret = servers()
    hook = servers(status=302, location=secret.url + "/latest/meta-data/iam")
    assert post_webhook(hook.url + "/hook", b"{}", LOOPBACK) == 302
    assert hook.hits == [("POST", "/hook", hook.url.removeprefix("http://"))]
    assert secret.hits == []


def test_the_connection_goes_to_the_vetted_address_with_the_host_header(servers):
    """The name resolves once per attempt; the socket is opened to that answer, the Host header keeps the name."""
    receiver = servers()
    port = receiver.server_address[1]
    lookups = []

    def resolve(host, port_, proto=0):
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, proto, "", ("127.0.0.1", port_))]

    # 'hook.invalid' does not resolve in DNS: reaching the receiver proves the pinned address was used
    assert post_webhook(f"http://hook.invalid:{port}/h", b"{}", LOOPBACK, resolve=resolve) == 204
    assert receiver.hits == [("POST", "/h", f"hook.invalid:{port}")] and lookups == ["hook.invalid"]


def test_every_attempt_is_vetted_again(servers):
    """A name that turns internal between attempts (rebinding) is refused on the retry, never connected to."""
    failing = servers(status=503)
    port = failing.server_address[1]
    answers = iter(["127.0.0.1", "169.254.169.254"])

    def resolve(host, port_, proto=0):
        return [(socket.AF_INET, socket.SOCK_STREAM, proto, "", (next(answers), port_))]

    assert post_webhook(f"http://hook.invalid:{port}/", b"{}", LOOPBACK, resolve=resolve) is None
    assert len(failing.hits) == 1


def test_a_dead_receiver_is_retried_then_given_up():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    assert post_webhook(f"http://127.0.0.1:{port}/", b"{}", LOOPBACK, attempts=2) is None
