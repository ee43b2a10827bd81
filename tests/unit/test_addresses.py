"""IP addresses, CIDRs and ranges of rules and IP address groups (S-M-4)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from secgroups import addresses
from secgroups.models import IPAddressGroupSpec, SecurityGroupRuleSpec

N = ipaddress.ip_network


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("192.0.2.1", "192.0.2.1/32", id="S-M-4-ipv4-address-is-a-host"),
        pytest.param("192.0.2.0/24", "192.0.2.0/24", id="S-M-4-ipv4-cidr"),
        pytest.param("192.0.2.77/24", "192.0.2.0/24", id="S-M-4-host-bits-cleared"),
        pytest.param("0.0.0.0/0", "0.0.0.0/0", id="S-M-4-ipv4-anywhere"),
        pytest.param("2001:db8::1", "2001:db8::1/128", id="S-M-4-ipv6-address-is-a-host"),
        pytest.param("2001:db8::1/32", "2001:db8::/32", id="S-M-4-ipv6-host-bits-cleared"),
        pytest.param("2001:DB8::/32", "2001:db8::/32", id="S-M-4-ipv6-upper-case"),
        pytest.param("::/0", "::/0", id="S-M-4-ipv6-anywhere"),
    ],
)
def test_parse_network_accepts_ips_and_cidrs(text: str, expected: str) -> None:
    assert str(addresses.parse_network(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("hello", id="words"),
        pytest.param("192.0.2.256", id="octet-too-big"),
        pytest.param("01.2.3.4", id="leading-zero-octet"),
        pytest.param("192.0.2.0/33", id="prefix-too-long"),
        pytest.param("2001:db8::/129", id="ipv6-prefix-too-long"),
        pytest.param("192.0.2.0/", id="missing-prefix"),
        pytest.param("192.0.2.0/x", id="prefix-not-a-number"),
        pytest.param("192.0.2.0/²", id="prefix-unicode-digit"),
        pytest.param("192.0.2.0/24/8", id="two-prefixes"),
        pytest.param("192.0.2.0/255.255.255.0", id="netmask-form"),
        pytest.param("fe80::1%eth0", id="ipv6-zone-as-cel-isIP"),
        pytest.param("::ffff:192.0.2.1", id="ipv4-mapped-ipv6-as-cel-isIP"),
        pytest.param("::ffff:192.0.2.0/120", id="ipv4-mapped-ipv6-cidr"),
        pytest.param("192.0.2.1-192.0.2.9", id="range-is-not-a-cidr"),
        # Go's netip.ParsePrefix (the API server's isCIDR) refuses leading zeros and signs
        # in the length, which int() would read (issue 11).
        pytest.param("10.0.0.0/024", id="prefix-leading-zero"),
        pytest.param("10.0.0.0/08", id="prefix-leading-zero-short"),
        pytest.param("0.0.0.0/00", id="prefix-zero-zero"),
        pytest.param("2001:db8::/032", id="ipv6-prefix-leading-zero"),
        pytest.param("192.0.2.0/+24", id="prefix-plus-sign"),
        pytest.param("192.0.2.0/ 24", id="prefix-space"),
    ],
)
def test_parse_network_rejects_what_the_api_server_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        addresses.parse_network(text)


@pytest.mark.parametrize(
    ("text", "networks"),
    [
        pytest.param("192.0.2.7", ["192.0.2.7/32"], id="S-M-4-ipag-single-ip"),
        pytest.param("192.0.2.0/30", ["192.0.2.0/30"], id="S-M-4-ipag-cidr"),
        pytest.param(
            "192.0.2.1-192.0.2.9",
            ["192.0.2.1/32", "192.0.2.2/31", "192.0.2.4/30", "192.0.2.8/31"],
            id="S-M-4-ipag-range-exact-cidrs",
        ),
        pytest.param("192.0.2.5-192.0.2.5", ["192.0.2.5/32"], id="S-M-4-ipag-range-of-one"),
        pytest.param(
            "2001:db8::-2001:db8::ff", ["2001:db8::/120"], id="S-M-4-ipag-ipv6-aligned-range"
        ),
    ],
)
def test_address_group_entries(text: str, networks: list[str]) -> None:
    entry = addresses.parse_entry(text)
    assert [str(n) for n in entry.networks()] == networks
    assert addresses.collapse_entries([text]) in ((tuple(networks), ()), ((), tuple(networks)))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("192.0.2.9-192.0.2.1", id="range-high-low"),
        pytest.param("192.0.2.1-2001:db8::1", id="range-mixes-families"),
        pytest.param("192.0.2.1-", id="range-open"),
        pytest.param("192.0.2.0/24-192.0.3.0/24", id="range-of-cidrs"),
        pytest.param("fe80::1%eth0-fe80::2", id="range-with-zone"),
    ],
)
def test_bad_address_group_entries(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        addresses.parse_entry(text)


def test_collapse_merges_and_orders_ipv4_before_ipv6() -> None:
    nets = [N("2001:db8::/33"), N("10.0.0.1/32"), N("2001:db8:8000::/33"), N("10.0.0.0/32")]
    assert [str(n) for n in addresses.collapse(nets)] == ["10.0.0.0/31", "2001:db8::/32"]


def test_collapse_hosts_merges_neighbour_pods_per_family() -> None:
    ips = [ipaddress.ip_address(a) for a in ("10.0.0.3", "10.0.0.2", "fd00::1", "10.0.0.9")]
    assert addresses.collapse_hosts(ips) == (("10.0.0.2/31", "10.0.0.9/32"), ("fd00::1/128",))


def test_collapse_entries_merges_overlaps_across_entries() -> None:
    v4, v6 = addresses.collapse_entries(["10.0.0.0/25", "10.0.0.128-10.0.0.255", "10.0.0.7"])
    assert (v4, v6) == (("10.0.0.0/24",), ())


@pytest.mark.parametrize(
    ("ip", "inside"),
    [
        pytest.param("192.0.2.5", True, id="S-M-4-ipv4-in-ipv4-net"),
        pytest.param("192.0.3.5", False, id="S-M-4-ipv4-outside"),
        pytest.param("2001:db8::5", True, id="S-M-4-ipv6-in-ipv6-net"),
        pytest.param("::c000:205", False, id="S-M-4-ipv6-never-in-ipv4-net"),
    ],
)
def test_contains_keeps_families_apart(ip: str, inside: bool) -> None:
    nets = [N("192.0.2.0/24"), N("2001:db8::/64")]
    assert addresses.contains(nets, ipaddress.ip_address(ip)) is inside


def _rule(family: str, cidr: str) -> SecurityGroupRuleSpec:
    return SecurityGroupRuleSpec.model_validate(
        {
            "securityGroup": "web",
            "direction": "Ingress",
            "protocol": "All",
            "ipFamily": family,
            "remote": {"cidr": cidr},
        }
    )


@pytest.mark.parametrize(
    ("family", "cidr"),
    [
        pytest.param("IPv4", "2001:db8::/32", id="S-M-4-ipv6-cidr-in-ipv4-rule"),
        pytest.param("IPv6", "192.0.2.0/24", id="S-M-4-ipv4-cidr-in-ipv6-rule"),
    ],
)
def test_rule_cidr_must_be_of_the_rule_family(family: str, cidr: str) -> None:
    with pytest.raises(ValidationError, match="rule's ipFamily"):
        _rule(family, cidr)


def test_rule_cidr_of_the_right_family_is_kept_as_written() -> None:
    assert _rule("IPv6", "2001:db8::1/32").remote is not None
    assert _rule("IPv4", "192.0.2.9/24").remote.cidr == "192.0.2.9/24"  # type: ignore[union-attr]


def test_rule_remote_takes_exactly_one_kind() -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        SecurityGroupRuleSpec.model_validate(
            {
                "securityGroup": "web",
                "direction": "Ingress",
                "protocol": "All",
                "remote": {"cidr": "192.0.2.0/24", "securityGroup": {"name": "db"}},
            }
        )


@pytest.mark.parametrize(
    ("family", "entries", "message"),
    [
        pytest.param("IPv4", ["2001:db8::1"], "ipFamily", id="S-M-4-ipag-family-mismatch"),
        pytest.param("IPv6", ["192.0.2.0/24"], "ipFamily", id="S-M-4-ipag-ipv4-in-ipv6-group"),
        pytest.param("IPv4", ["192.0.2.1", "192.0.2.1"], "repeat", id="S-M-4-ipag-duplicates"),
        pytest.param("IPv4", ["192.0.2.1/40"], "each address", id="S-M-4-ipag-bad-cidr"),
    ],
)
def test_address_group_validation(family: str, entries: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        IPAddressGroupSpec.model_validate({"ipFamily": family, "addresses": entries})


def test_address_group_networks_collapse_ranges_and_cidrs() -> None:
    spec = IPAddressGroupSpec.model_validate(
        {"addresses": ["10.0.0.0-10.0.0.127", "10.0.0.128/25", "192.0.2.1"]}
    )
    assert [str(n) for n in spec.networks()] == ["10.0.0.0/24", "192.0.2.1/32"]


def _host_key_reference(text: str) -> addresses.HostKey:
    ip = ipaddress.ip_address(text)
    return ip.version, int(ip), str(ip), f"{ip}/{ip.max_prefixlen}"


def _agrees_with_ipaddress(text: str) -> None:
    try:
        want = _host_key_reference(text)
    except ValueError:
        with pytest.raises(ValueError):
            addresses.host_key.__wrapped__(text)
        return
    assert addresses.host_key.__wrapped__(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "192.0.2.1",
        "010.0.0.1",  # leading zeros: refused by both
        "1.2.3",
        "::ffff:192.0.2.1",  # IPv4-mapped: the C printer says ::ffff:192.0.2.1
        "::192.0.2.1",
        "::ffff:c000:201",
        "FD00::0:1",
        "fd00:0:0:1:0:0:0:1",
        "fd00:0:0:0:1:0:0:0",
        "0:0:1::",
        "::",
        "fe80::1%eth0",  # a zone: ipaddress keeps it
        "",
        "1.2.3.4\x00",
    ],
)
def test_host_key_agrees_with_ipaddress(text: str) -> None:
    """host_key parses with the C library first: same (version, value, canonical text)
    as ipaddress, or the same refusal."""
    _agrees_with_ipaddress(text)


@given(
    st.one_of(
        st.ip_addresses().map(str),
        st.ip_addresses(v=6).map(lambda ip: ip.exploded),
        st.ip_addresses(v=6).map(lambda ip: ip.exploded.upper()),
        st.text(alphabet="0123456789abcdefABCDEF:.%", max_size=45),
    )
)
def test_host_key_agrees_with_ipaddress_generated(text: str) -> None:
    _agrees_with_ipaddress(text)


@given(
    st.one_of(
        st.ip_addresses(),
        st.integers(0, 2**32 - 1).map(lambda v: ipaddress.IPv6Address((0xFFFF << 32) | v)),
        st.integers(0, 2**32 - 1).map(ipaddress.IPv6Address),
    )
)
def test_address_text_is_what_ipaddress_prints(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert addresses.address_text(int(ip), ip.version) == str(ip)
