"""Webhook targets: internal addresses are refused unless an operator allows their network."""

from __future__ import annotations

import pytest

from service.webhooks import WebhookRefused, check_webhook_target, parse_networks


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://[::1]/hook", "http://10.1.2.3/", "http://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/", "http://localhost/",
])
def test_internal_targets_are_refused(url):
    with pytest.raises(WebhookRefused, match="internal address"):
        check_webhook_target(url)


def test_an_allowed_network_is_accepted_and_only_that_one():
    allowed = parse_networks("127.0.0.0/8, 10.1.0.0/16")
    check_webhook_target("http://127.0.0.1:8080/hook", allowed)
    check_webhook_target("https://10.1.200.3/hook", allowed)
    with pytest.raises(WebhookRefused):
        check_webhook_target("http://10.2.0.1/hook", allowed)


def test_public_address_is_accepted():
    check_webhook_target("https://93.184.216.34/hook")


@pytest.mark.parametrize("url", ["ftp://93.184.216.34/x", "http:///nohost", "file:///etc/passwd"])
def test_non_http_or_hostless_urls_are_refused(url):
    with pytest.raises(WebhookRefused, match="http"):
        check_webhook_target(url)


def test_bad_allow_list_names_the_entry():
    with pytest.raises(ValueError, match="'not-a-net'"):
        parse_networks("127.0.0.0/8,not-a-net")
