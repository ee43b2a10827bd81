"""kubectl secgroups explain: a pod's groups (with why) and rules in match order, offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from clirun import SCENARIO, offline, run


def test_groups_in_sequence_order_with_the_reason() -> None:
    r = offline("explain", "pod/jump")
    assert r.code == 0, r.err
    groups = r.out.split("Groups", 1)[1].split("Ingress", 1)[0]
    lines = [line.split() for line in groups.strip().splitlines()[2:]]
    assert [(cells[0], cells[1]) for cells in lines] == [("1", "sg-b"), ("2", "sg-a")]
    assert "annotation secgroups.dev/security-groups (item 1)" in groups
    assert "podSelector {tier=a} (sequence 10)" in groups


def test_rules_in_match_order_with_ports_as_numbers_and_resolved_remotes() -> None:
    r = offline("explain", "pod/jump")
    ingress = r.out.split("Ingress rules", 1)[1].split("Egress rules", 1)[0]
    rows = [line.split() for line in ingress.strip().splitlines()[2:]]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("1", "sg-b", "b01"),
        ("2", "sg-b", "b02"),
        ("3", "sg-b", "b03"),  # priority 10: after sg-b's priority-1 rules
        ("4", "sg-a", "a01"),
        ("5", "sg-a", "a02"),
        ("6", "sg-a", "a02-v6"),
    ]
    b01 = ingress.splitlines()[2]
    assert b01.split()[3:8] == ["1", "Allow", "IPv4", "TCP", "22"]  # "ssh" shown as 22
    assert "group sg-a: a1, a2, jump" in b01
    assert "443,8443  address group demo/office (172.16.0.0/24, 198.51.100.7, " in ingress
    assert "203.0.113.10-203.0.113.20)" in ingress
    assert "172.16.0.0/24" in rows[3]
    egress = r.out.split("Egress rules", 1)[1]
    assert "b-egress     1         Allow   IPv4    All       all    any (0.0.0.0/0)" in egress


def test_json_names_every_rule_and_where_it_was_written() -> None:
    r = offline("explain", "pod/b1", "-o", "json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["pod"] == {
        "namespace": "demo",
        "name": "b1",
        "ips": ["10.244.1.20", "fd00:10:244:1::20"],
        "node": "node-1",
        "managed": True,
        "unmanagedReason": None,
    }
    assert [g["group"] for g in doc["groups"]] == ["demo/sg-b"]
    assert [(x["id"], x["priority"], x["action"]) for x in doc["ingress"]] == [
        ("demo/b01", 1, "Allow"),
        ("demo/b02", 1, "Allow"),
        ("demo/b03", 10, "Allow"),
    ]
    b01, b03 = doc["ingress"][0], doc["ingress"][2]
    assert b01["ports"] == [{"lo": 22, "hi": 22}]
    assert b01["remote"]["members"] == ["demo/a1", "demo/a2", "demo/jump"]
    assert b01["source"] == f"{SCENARIO}/20-sg-b.yaml:11"
    assert b03["remote"]["type"] == "ipAddressGroup"
    assert b03["remote"]["entries"] == [
        "172.16.0.0/24",
        "198.51.100.7",
        "203.0.113.10-203.0.113.20",
    ]
    assert [x["id"] for x in doc["egress"]] == ["demo/b-egress", "demo/b-egress-v6"]


def test_yaml_output_is_the_same_document() -> None:
    as_json = offline("explain", "pod/a1", "-o", "json").json()
    assert yaml.safe_load(offline("explain", "pod/a1", "-o", "yaml").out) == as_json


def test_a_pod_without_groups_is_in_the_default_group() -> None:
    doc = offline("explain", "pod/c1", "-o", "json").json()
    assert [(g["group"], g["why"], g["exists"]) for g in doc["groups"]] == [
        ("demo/default", "default", False)
    ]
    assert [x["id"] for x in doc["ingress"]] == [
        "demo/default:ingress-ipv4",
        "demo/default:ingress-ipv6",
    ]


def test_unmanaged_pod_says_why() -> None:
    r = offline("explain", "pod/legacy/old")
    assert r.code == 0
    assert "not managed: namespace legacy is not enforced" in r.out


def test_unknown_pod_lists_the_pods_of_the_namespace() -> None:
    r = offline("explain", "pod/x")
    assert r.code == 2
    assert r.err == "error: pod demo/x not found; pods in demo: a1, a2, b1, b2, c1, jump\n"
    r = offline("explain", "pod/nowhere/x")
    assert r.err.startswith("error: pod nowhere/x not found: no pods in nowhere in the files")
    r = offline("explain", "deployment/x")
    assert (r.code, r.err) == (
        2,
        "error: deployment/x: expected pod/NAME (or pod/NAMESPACE/NAME)\n",
    )


TYPO_POD = """
apiVersion: v1
kind: Pod
metadata:
  name: typo
  namespace: demo
  annotations: {secgroups.dev/security-groups: "sg-bb"}
spec:
  nodeName: node-1
  containers: [{name: app, image: registry.k8s.io/pause:3.10}]
status:
  phase: Running
  podIPs: [{ip: 10.244.1.99}]
"""


def _with_typo_pod(tmp_path: Path) -> Path:
    folder = tmp_path / "scenario"
    shutil.copytree(SCENARIO, folder)
    (folder / "50-typo.yaml").write_text(TYPO_POD, encoding="utf-8")
    return folder


def test_a_pod_naming_a_missing_group_is_in_no_group_not_the_default(tmp_path: Path) -> None:
    """Fail-closed (docs/semantics.md, decision 6): no fallback to the default group."""
    folder = _with_typo_pod(tmp_path)
    doc = run("explain", "pod/typo", "-f", str(folder), "-n", "demo", "-o", "json").json()
    assert doc["groups"] == []
    assert doc["unknownGroups"] == ["sg-bb"]
    assert (doc["ingress"], doc["egress"]) == ([], [])
    text = run("explain", "pod/typo", "-f", str(folder), "-n", "demo").out
    assert "security group(s) that do not exist: sg-bb; they match nothing" in text
    assert "no fallback to the default group" in text
    assert "(none: the pod is in no group, so everything to and from it is denied)" in text


def test_trace_from_a_pod_naming_a_missing_group_is_denied_and_says_why(tmp_path: Path) -> None:
    folder = _with_typo_pod(tmp_path)
    argv = ("trace", "--from", "pod/typo", "--to", "pod/c1", "--proto", "tcp", "--port", "80")
    r = run(*argv, "-f", str(folder), "-n", "demo")
    assert r.code != 0
    assert "DENIED" in r.out
    assert "no rule matched: default deny (egress of demo/typo, S-X-2)" in r.out
    assert "do not exist: sg-bb; they match nothing" in r.out
    doc = run(*argv, "-f", str(folder), "-n", "demo", "-o", "json").json()
    assert "sg-bb" in doc["egress"]["note"]
