"""service/providers/base.py: finding the client address and checking a request's source."""

from __future__ import annotations

import ipaddress

import pytest

from service.providers.base import Network, Unauthenticated, check_source, client_address

PROXIES: tuple[Network, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("192.168.1.0/24"),
    ipaddress.ip_network("2001:db8:ffff::/48"),
)
ALLOWED: tuple[Network, ...] = (
    ipaddress.ip_network("52.42.57.125/32"),
    ipaddress.ip_network("2001:db8:1::/64"),
)
TOKEN = "a-url-token-of-some-length"


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# --- client_address ------------------------------------------------------------------------------


def test_peer_without_forwarded_for() -> None:
    assert client_address("203.0.113.5", [], PROXIES) == ip("203.0.113.5")


def test_untrusted_peer_ignores_forwarded_for() -> None:
    # A client talking to us directly can write any X-Forwarded-For it likes.
    assert client_address("203.0.113.5", ["52.42.57.125"], PROXIES) == ip("203.0.113.5")


def test_forwarded_for_is_ignored_when_no_proxy_is_trusted() -> None:
    assert client_address("10.0.0.1", ["52.42.57.125"], ()) == ip("10.0.0.1")


def test_trusted_peer_gives_the_forwarded_client() -> None:
    assert client_address("10.0.0.1", ["203.0.113.5"], PROXIES) == ip("203.0.113.5")


def test_trusted_peer_takes_the_right_most_untrusted_entry() -> None:
    # The left entry was written by the client itself; only the right one was written by us.
    forwarded = ["52.42.57.125, 203.0.113.5"]
    assert client_address("10.0.0.1", forwarded, PROXIES) == ip("203.0.113.5")


def test_several_trusted_proxies() -> None:
    forwarded = ["198.51.100.7, 203.0.113.5, 192.168.1.20, 10.1.2.3"]
    assert client_address("10.0.0.1", forwarded, PROXIES) == ip("203.0.113.5")


def test_several_headers_are_joined_in_order() -> None:
    forwarded = ["198.51.100.7, 203.0.113.5", "192.168.1.20", "10.1.2.3"]
    assert client_address("10.0.0.1", forwarded, PROXIES) == ip("203.0.113.5")


def test_header_order_matters() -> None:
    forwarded = ["10.1.2.3", "203.0.113.5", "198.51.100.7"]
    assert client_address("10.0.0.1", forwarded, PROXIES) == ip("198.51.100.7")


def test_spaces_around_entries_are_ignored() -> None:
    assert client_address("10.0.0.1", [" 203.0.113.5 ,10.1.1.1 "], PROXIES) == ip("203.0.113.5")


@pytest.mark.parametrize(
    "forwarded",
    [
        ["not-an-ip"],
        ["203.0.113.5, garbage"],
        ["203.0.113.5:8080"],
        ["203.0.113.5,"],
        ["999.1.1.1"],
    ],
)
def test_malformed_entry_gives_no_address(forwarded: list[str]) -> None:
    assert client_address("10.0.0.1", forwarded, PROXIES) is None


def test_malformed_entry_left_of_the_client_is_not_read() -> None:
    assert client_address("10.0.0.1", ["garbage, 203.0.113.5"], PROXIES) == ip("203.0.113.5")


def test_all_hops_trusted_gives_the_left_most() -> None:
    forwarded = ["192.168.1.9, 10.2.2.2"]
    assert client_address("10.0.0.1", forwarded, PROXIES) == ip("192.168.1.9")


def test_trusted_peer_without_forwarded_for_is_the_client() -> None:
    assert client_address("10.0.0.1", [], PROXIES) == ip("10.0.0.1")


@pytest.mark.parametrize("peer", [None, "", "unix-socket", "300.1.1.1"])
def test_missing_or_malformed_peer(peer: str | None) -> None:
    assert client_address(peer, ["203.0.113.5"], PROXIES) is None


def test_ipv6_peer() -> None:
    assert client_address("2001:db8:1::7", ["203.0.113.5"], PROXIES) == ip("2001:db8:1::7")


def test_trusted_ipv6_peer_with_ipv6_client() -> None:
    forwarded = ["2001:db8:1::7"]
    assert client_address("2001:db8:ffff::1", forwarded, PROXIES) == ip("2001:db8:1::7")


def test_bracketed_ipv6_entry() -> None:
    forwarded = ["[2001:db8:1::7]"]
    assert client_address("10.0.0.1", forwarded, PROXIES) == ip("2001:db8:1::7")


def test_ipv4_mapped_peer_is_its_ipv4_address() -> None:
    address = client_address("::ffff:203.0.113.5", [], PROXIES)
    assert address == ip("203.0.113.5")
    assert isinstance(address, ipaddress.IPv4Address)


def test_ipv4_mapped_peer_is_recognised_as_a_trusted_proxy() -> None:
    assert client_address("::ffff:10.0.0.1", ["203.0.113.5"], PROXIES) == ip("203.0.113.5")


def test_ipv4_mapped_forwarded_entry_is_its_ipv4_address() -> None:
    address = client_address("10.0.0.1", ["::ffff:52.42.57.125"], PROXIES)
    assert address == ip("52.42.57.125")
    assert isinstance(address, ipaddress.IPv4Address)


def test_ipv4_mapped_forwarded_proxy_is_skipped() -> None:
    forwarded = ["203.0.113.5, ::ffff:10.9.9.9"]
    assert client_address("10.0.0.1", forwarded, PROXIES) == ip("203.0.113.5")


# --- check_source --------------------------------------------------------------------------------


def test_allowed_address_passes() -> None:
    check_source(ALLOWED, ip("52.42.57.125"), "", None)


def test_allowed_ipv6_address_passes() -> None:
    check_source(ALLOWED, ip("2001:db8:1::42"), "", None)


@pytest.mark.parametrize("client", [ip("52.42.57.126"), ip("2001:db8:2::1"), None])
def test_address_not_allowed(client: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> None:
    with pytest.raises(Unauthenticated) as info:
        check_source(ALLOWED, client, "", None)
    assert info.value.reason == "source_ip"
    assert info.value.status == 403


@pytest.mark.parametrize("client", [ip("8.8.8.8"), ip("2001:db8::1"), None])
def test_empty_allowlist_allows_any_source(
    client: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
) -> None:
    check_source((), client, "", None)


def test_right_token_passes() -> None:
    check_source((), None, TOKEN, TOKEN)


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper()])
def test_wrong_token(token: str | None) -> None:
    with pytest.raises(Unauthenticated) as info:
        check_source((), None, TOKEN, token)
    assert info.value.reason == "token"


def test_non_ascii_token_is_refused_not_an_error() -> None:
    with pytest.raises(Unauthenticated) as info:
        check_source((), None, TOKEN, "t\u00f6ken\ud800")
    assert info.value.reason == "token"


def test_source_is_checked_before_the_token() -> None:
    with pytest.raises(Unauthenticated) as info:
        check_source(ALLOWED, ip("8.8.8.8"), TOKEN, "wrong")
    assert info.value.reason == "source_ip"


def test_allowed_source_with_wrong_token() -> None:
    with pytest.raises(Unauthenticated) as info:
        check_source(ALLOWED, ip("52.42.57.125"), TOKEN, "wrong")
    assert info.value.reason == "token"


def test_allowed_source_with_right_token() -> None:
    check_source(ALLOWED, ip("52.42.57.125"), TOKEN, TOKEN)


def test_spoofed_forwarded_for_does_not_pass_the_allowlist() -> None:
    client = client_address("203.0.113.5", ["52.42.57.125"], PROXIES)
    with pytest.raises(Unauthenticated):
        check_source(ALLOWED, client, "", None)
