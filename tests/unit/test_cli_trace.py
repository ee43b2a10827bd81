"""kubectl secgroups trace: verdicts, deciding rules and exit codes on the spec's Sg-A/Sg-B
example (seed "Security Group Examples"; S-X-1, S-X-2), offline."""

from __future__ import annotations

import pytest
from clirun import offline

CASES = [
    # from, to, protocol args, exit code, deciding rule (None: default deny), deciding side
    ("pod/a1", "pod/b1", ["tcp", "--port", "22"], 0, "demo/b01", "Ingress"),  # B01: SSH from Sg-A
    ("pod/jump", "pod/b1", ["tcp", "--port", "ssh"], 0, "demo/b01", "Ingress"),
    ("pod/a1", "pod/b1", ["tcp", "--port", "80"], 1, None, "Ingress"),
    ("pod/b1", "pod/a1", ["tcp", "--port", "22"], 1, None, "Ingress"),  # A01 is 172.16.0.0/24
    ("pod/b1", "pod/b2", ["udp", "--port", "53"], 0, "demo/b02", "Ingress"),  # B02: Sg-B itself
    ("pod/a1", "pod/a2", ["udp", "--port", "53"], 0, "demo/a02", "Ingress"),  # A02: Sg-A itself
    ("pod/a1", "pod/a2", ["icmp"], 0, "demo/a02", "Ingress"),
    ("pod/a1", "pod/a2", ["gre"], 0, "demo/a02", "Ingress"),
    ("172.16.0.9", "pod/a1", ["tcp", "--port", "22"], 0, "demo/a01", "Ingress"),
    ("172.16.1.9", "pod/a1", ["tcp", "--port", "22"], 1, None, "Ingress"),
    ("198.51.100.7", "pod/b1", ["tcp", "--port", "8443"], 0, "demo/b03", "Ingress"),
    ("203.0.113.15", "pod/b1", ["tcp", "--port", "443"], 0, "demo/b03", "Ingress"),  # a range
    ("203.0.113.21", "pod/b1", ["tcp", "--port", "443"], 1, None, "Ingress"),
    ("pod/c1", "pod/a1", ["tcp", "--port", "22"], 1, None, "Ingress"),
    ("pod/a1", "pod/c1", ["tcp", "--port", "80"], 1, None, "Ingress"),  # S-D-1 default group
    ("pod/legacy/old", "pod/a1", ["icmp"], 1, None, "Ingress"),
    ("pod/a1", "pod/legacy/old", ["tcp", "--port", "80"], 0, "demo/a-egress", "Egress"),
    ("pod/b1", "192.0.2.1", ["tcp", "--port", "443"], 0, "demo/b-egress", "Egress"),
]


def test_a_pod_to_itself_is_not_filtered() -> None:
    r = offline("trace", "--from", "pod/c1", "--to", "pod/c1", "--proto", "tcp", "--port", "1")
    assert r.code == 0
    assert "verdict: ALLOWED: neither end is a managed pod: not filtered" not in r.out
    assert "same address: loopback inside the pod, never filtered" in r.out


@pytest.mark.parametrize(
    ("src", "dst", "proto", "code", "rule", "side"),
    [pytest.param(*c, id=f"{c[0]}-{c[1]}-{'-'.join(c[2])}") for c in CASES],
)
def test_verdict_and_deciding_rule(
    src: str, dst: str, proto: list[str], code: int, rule: str | None, side: str
) -> None:
    r = offline("trace", "--from", src, "--to", dst, "--proto", *proto, "-o", "json")
    assert r.code == code, r.err
    doc = r.json()
    assert doc["verdict"] == ("allowed" if code == 0 else "denied")
    assert doc["decidedBy"]["rule"] == rule
    assert doc["decidedBy"]["defaultDeny"] is (rule is None)
    assert doc["decidedBy"]["direction"] == side


def test_both_directions_are_shown() -> None:
    r = offline("trace", "--from", "pod/a1", "--to", "pod/b1", "--proto", "tcp", "--port", "80")
    assert r.code == 1
    lines = r.out.splitlines()
    assert lines[0] == "tcp 10.244.1.10 (demo/a1) -> 10.244.1.20:80 (demo/b1)  [IPv4]"
    assert lines[1] == "verdict: DENIED: no rule matched: default deny (ingress of demo/b1, S-X-2)"
    assert "Egress of demo/a1 (sender)" in r.out
    assert "allowed by rule demo/a-egress of group demo/sg-a" in r.out
    assert "Ingress of demo/b1 (receiver)" in r.out
    assert "no match (3 ingress rules)" in r.out
    assert r.out.rstrip().endswith("no rule matched: default deny (S-X-2)")


def test_allowed_trace_names_the_rule_and_mentions_replies() -> None:
    r = offline("trace", "--from", "pod/a1", "--to", "pod/b1", "--proto", "tcp", "--port", "22")
    assert r.code == 0
    assert "verdict: ALLOWED: rule demo/b01 of group demo/sg-b (ingress of demo/b1)" in r.out
    assert "(S-X-3)" in r.out


def test_groups_are_checked_in_sequence_until_one_matches() -> None:
    doc = offline(
        "trace", "--from", "pod/a1", "--to", "pod/jump", "--proto", "tcp", "--port", "80",
        "-o", "json",
    ).json()  # fmt: skip
    assert doc["ingress"]["checks"] == [
        {"group": "demo/sg-b", "rule": None},
        {"group": "demo/sg-a", "rule": "demo/a02"},
    ]


def test_unfiltered_ends_say_why() -> None:
    r = offline("trace", "--from", "pod/legacy/old", "--to", "pod/a1", "--proto", "icmp")
    assert "not filtered: namespace legacy is not enforced" in r.out
    r = offline("trace", "--from", "172.16.0.9", "--to", "pod/a1", "--proto", "tcp", "--port", "22")
    assert "Egress of 172.16.0.9 (sender)\n  not a pod address: not filtered here" in r.out


def test_family_follows_the_addresses_or_the_flag() -> None:
    doc = offline(
        "trace", "--from", "pod/a1", "--to", "pod/a2", "--proto", "tcp", "--port", "22",
        "--family", "IPv6", "-o", "json",
    ).json()  # fmt: skip
    assert doc["packet"]["src"] == "fd00:10:244:1::10"
    assert doc["decidedBy"]["rule"] == "demo/a02-v6"
    r = offline("trace", "--from", "fd00::1", "--to", "pod/a1", "--proto", "icmp", "-o", "json")
    assert r.code == 1
    assert r.json()["packet"]["protocol"] == "icmpv6"
    assert r.json()["packet"]["icmpType"] == 128


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "pod/a1", "--to", "pod/b1", "--proto", "tcp"], "--port is required for tcp"),
        (["--from", "pod/a1", "--to", "pod/b1", "--proto", "icmp", "--port", "1"],
         "--port applies to tcp and udp only, not icmp"),
        (["--from", "pod/b2", "--to", "pod/b1", "--proto", "gre", "--family", "IPv6"],
         "--family IPv6: demo/b2 and demo/b1 do not both have an IPv6 address"),
        (["--from", "fd00::1", "--to", "pod/b2", "--proto", "gre"],
         "fd00::1 (fd00::1) and demo/b2 (10.244.2.21) have no IP family in common"),
        (["--from", "pod/nope", "--to", "pod/b1", "--proto", "gre"],
         "pod demo/nope not found; pods in demo: a1, a2, b1, b2, c1, jump"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    r = offline("trace", *args)
    assert (r.code, r.err) == (2, f"error: {message}\n")
