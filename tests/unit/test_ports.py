"""Port syntax (S-M-3) and named service ports (S-O-3): parsing, merging, errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from secgroups import ports
from secgroups.models import SecurityGroupRuleSpec
from secgroups.ports import PortRange, PortSyntaxError, parse_ports

R = PortRange


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("22", (R(22, 22),), id="S-M-3-single-port"),
        pytest.param("80-82", (R(80, 82),), id="S-M-3-range"),
        pytest.param("22,25,27", (R(22, 22), R(25, 25), R(27, 27)), id="S-M-3-inconsecutive-list"),
        pytest.param("22-24,25", (R(22, 25),), id="S-M-3-mixed-range-and-port-merge"),
        pytest.param("1", (R(1, 1),), id="S-M-3-lowest-port"),
        pytest.param("65535", (R(65535, 65535),), id="S-M-3-highest-port"),
        pytest.param("1-65535", (R(1, 65535),), id="S-M-3-every-port-as-range"),
        pytest.param("80-80", (R(80, 80),), id="S-M-3-range-of-one"),
        pytest.param("27,25,22", (R(22, 22), R(25, 25), R(27, 27)), id="S-M-3-list-sorted"),
        pytest.param("10-20,15-30", (R(10, 30),), id="S-M-3-overlapping-ranges-merge"),
        pytest.param("10-20,21-30", (R(10, 30),), id="S-M-3-adjacent-ranges-merge"),
        pytest.param("10-20,22-30", (R(10, 20), R(22, 30)), id="S-M-3-gap-kept"),
        pytest.param("22,22", (R(22, 22),), id="S-M-3-repeat-collapses"),
        pytest.param("ssh", (R(22, 22),), id="S-O-3-ssh-is-22"),
        pytest.param("rdp", (R(3389, 3389),), id="S-O-3-rdp-is-3389"),
        pytest.param("https,http", (R(80, 80), R(443, 443)), id="S-O-3-names-in-a-list"),
        pytest.param("ssh,22-23", (R(22, 23),), id="S-O-3-name-merges-with-numbers"),
        pytest.param("http-alt", (R(8080, 8080),), id="S-O-3-name-with-dash"),
    ],
)
def test_valid_port_text_parses_to_merged_ranges(
    text: str, expected: tuple[PortRange, ...]
) -> None:
    assert parse_ports(text) == expected
    assert ports.validate_ports(text) == text


@pytest.mark.parametrize(
    ("name", "port"),
    [
        pytest.param("ssh", 22, id="S-O-3-ssh"),
        pytest.param("rdp", 3389, id="S-O-3-rdp"),
        pytest.param("http", 80, id="S-O-3-http"),
        pytest.param("https", 443, id="S-O-3-https"),
        pytest.param("mysql", 3306, id="S-O-3-mysql"),
        pytest.param("postgresql", 5432, id="S-O-3-postgresql"),
        pytest.param("redis", 6379, id="S-O-3-redis"),
        pytest.param("mongodb", 27017, id="S-O-3-mongodb"),
        pytest.param("dns", 53, id="S-O-3-dns"),
        pytest.param("mssql", 1433, id="S-O-3-mssql"),
    ],
)
def test_named_ports_are_the_well_known_numbers(name: str, port: int) -> None:
    assert ports.NAMED_PORTS[name] == port
    assert parse_ports(name) == (R(port, port),)


def test_named_port_table_is_sorted_and_in_range() -> None:
    names = list(ports.NAMED_PORTS)
    assert names == sorted(names)
    assert all(1 <= p <= 65535 for p in ports.NAMED_PORTS.values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", ports.MSG_SYNTAX, id="S-M-3-empty-text-rejected"),
        pytest.param("0", ports.MSG_BOUNDS, id="S-M-3-port-0-out-of-range"),
        pytest.param("65536", ports.MSG_BOUNDS, id="S-M-3-port-65536-out-of-range"),
        pytest.param("0-10", ports.MSG_BOUNDS, id="S-M-3-range-from-0"),
        pytest.param("99999", ports.MSG_BOUNDS, id="S-M-3-five-digits-too-big"),
        pytest.param("82-80", ports.MSG_ORDER, id="S-M-3-range-high-low"),
        pytest.param("22 ,25", ports.MSG_SYNTAX, id="S-M-3-space-rejected"),
        pytest.param(" 22", ports.MSG_SYNTAX, id="S-M-3-leading-space-rejected"),
        pytest.param("22;25", ports.MSG_SYNTAX, id="S-M-3-semicolon-rejected"),
        pytest.param("22,", ports.MSG_SYNTAX, id="S-M-3-trailing-comma"),
        pytest.param(",22", ports.MSG_SYNTAX, id="S-M-3-leading-comma"),
        pytest.param("-22", ports.MSG_SYNTAX, id="S-M-3-negative"),
        pytest.param("22-", ports.MSG_SYNTAX, id="S-M-3-open-range"),
        pytest.param("1-2-3", ports.MSG_SYNTAX, id="S-M-3-three-part-range"),
        pytest.param("123456", ports.MSG_SYNTAX, id="S-M-3-six-digits"),
        pytest.param("22\n", ports.MSG_SYNTAX, id="S-M-3-trailing-newline-as-on-the-api-server"),
        pytest.param("sshx", ports.MSG_NAME, id="S-O-3-unknown-name"),
        pytest.param("SSH", ports.MSG_SYNTAX, id="S-O-3-names-are-lower-case"),
        pytest.param("ssh-http", ports.MSG_NAME, id="S-O-3-no-ranges-of-names"),
        pytest.param("1," * 128 + "1", ports.MSG_SYNTAX, id="S-M-3-longer-than-256"),
    ],
)
def test_invalid_port_text_is_rejected_with_the_rule_it_breaks(text: str, message: str) -> None:
    with pytest.raises(PortSyntaxError) as info:
        parse_ports(text)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        pytest.param("22", False, id="S-L-1-single-port-not-inconsecutive"),
        pytest.param("80-82", False, id="S-L-1-range-not-inconsecutive"),
        pytest.param("22,25,27", True, id="S-L-1-list-is-inconsecutive"),
        pytest.param("22-24,25", True, id="S-L-1-mixed-is-inconsecutive"),
        pytest.param("22,23", True, id="S-L-1-adjacent-list-counts-as-written"),
        pytest.param("ssh,https", True, id="S-L-1-list-of-names"),
    ],
)
def test_inconsecutive_means_a_comma_list_as_written(text: str, counts: bool) -> None:
    assert ports.is_inconsecutive(text) is counts


def test_format_ranges_is_the_canonical_text() -> None:
    assert ports.format_ranges(parse_ports("25,22-24,80,ssh")) == "22-25,80"
    assert ports.format_ranges(()) == ""


@pytest.mark.parametrize(
    ("lo", "hi"),
    [
        pytest.param(0, 1, id="zero"),
        pytest.param(5, 4, id="reversed"),
        pytest.param(1, 65536, id="too-high"),
    ],
)
def test_port_range_refuses_impossible_bounds(lo: int, hi: int) -> None:
    with pytest.raises(PortSyntaxError):
        PortRange(lo, hi)


def test_port_range_membership() -> None:
    assert 81 in R(80, 82)
    assert 83 not in R(80, 82)
    assert "81" not in R(80, 82)
    assert str(R(80, 82)) == "80-82"
    assert str(R(22, 22)) == "22"


def _spec(**fields: object) -> SecurityGroupRuleSpec:
    return SecurityGroupRuleSpec.model_validate(
        {"securityGroup": "web", "direction": "Ingress", **fields}
    )


@pytest.mark.parametrize(
    "protocol",
    [
        pytest.param("ICMP", id="S-M-3-no-ports-for-icmp"),
        pytest.param("GRE", id="S-M-3-no-ports-for-gre"),
        pytest.param("All", id="S-M-3-no-ports-for-all"),
    ],
)
def test_ports_only_for_tcp_and_udp(protocol: str) -> None:
    with pytest.raises(ValidationError, match="ports are allowed only when protocol is TCP or UDP"):
        _spec(protocol=protocol, ports="22")


@pytest.mark.parametrize("protocol", ["TCP", "UDP"])
def test_tcp_and_udp_rules_take_ports_and_default_to_all(protocol: str) -> None:
    assert _spec(protocol=protocol, ports="22,25").port_ranges() == (R(22, 22), R(25, 25))
    assert _spec(protocol=protocol).port_ranges() == ()


def test_a_rule_with_bad_ports_is_rejected_by_the_model() -> None:
    with pytest.raises(ValidationError, match="low <= high"):
        _spec(protocol="TCP", ports="80-22")
