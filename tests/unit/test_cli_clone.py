"""kubectl secgroups clone, offline (S-O-1): prints the copy as YAML; the copy works."""

from __future__ import annotations

import yaml
from clirun import SCENARIO, offline, run


def test_clone_prints_the_group_and_its_renamed_rules() -> None:
    r = offline("clone", "sg/sg-a", "sg-a-next")
    assert r.code == 0, r.err
    docs = list(yaml.safe_load_all(r.out))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("SecurityGroup", "sg-a-next"),
        ("SecurityGroupRule", "sg-a-next-a-egress"),
        ("SecurityGroupRule", "sg-a-next-a-egress-v6"),
        ("SecurityGroupRule", "sg-a-next-a01"),
        ("SecurityGroupRule", "sg-a-next-a02"),
        ("SecurityGroupRule", "sg-a-next-a02-v6"),
    ]
    group = docs[0]
    assert "podSelector" not in group["spec"]
    assert group["spec"]["description"] == "Subnet-A servers"
    assert group["metadata"]["annotations"] == {"secgroups.dev/cloned-from": "demo/sg-a"}
    a02 = docs[4]["spec"]
    assert a02["securityGroup"] == "sg-a-next"
    assert a02["remote"] == {"securityGroup": {"name": "sg-a-next"}}  # self re-pointed


def test_clone_to_another_namespace_as_json() -> None:
    r = offline("clone", "sg/sg-b", "sg-b", "--to-namespace", "sandbox", "-o", "json")
    assert r.code == 0, r.err
    items = {i["metadata"]["name"]: i for i in r.json()["items"]}
    assert items["sg-b-b01"]["spec"]["remote"] == {
        "securityGroup": {"name": "sg-a", "namespace": "demo"}
    }
    assert items["sg-b-b03"]["spec"]["remote"] == {
        "ipAddressGroup": {"name": "office", "namespace": "demo"}
    }
    assert items["sg-b-b02"]["spec"]["remote"] == {"securityGroup": {"name": "sg-b"}}


def test_a_pod_moved_to_the_clone_keeps_its_verdicts() -> None:
    clone = offline("clone", "sg/sg-b", "sg-b-next").out
    moved = """\
apiVersion: v1
kind: Pod
metadata:
  name: b3
  namespace: demo
  annotations: {secgroups.dev/security-groups: sg-b-next}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 10.244.1.23}]}
"""
    stdin = clone + "---\n" + moved
    common = ["-f", str(SCENARIO), "-f", "-", "-n", "demo", "-o", "json"]
    ssh = run("trace", "--from", "pod/a1", "--to", "pod/b3", "--proto", "tcp", "--port", "22",
              *common, stdin=stdin)  # fmt: skip
    assert ssh.code == 0, ssh.err
    assert ssh.json()["decidedBy"]["rule"] == "demo/sg-b-next-b01"
    web = run("trace", "--from", "pod/a1", "--to", "pod/b3", "--proto", "tcp", "--port", "80",
              *common, stdin=stdin)  # fmt: skip
    assert web.code == 1
    # b1 stays in sg-b, so it is not a member of the clone: "itself" means the clone now.
    peer = run("trace", "--from", "pod/b1", "--to", "pod/b3", "--proto", "udp", "--port", "53",
               *common, stdin=stdin)  # fmt: skip
    assert peer.code == 1


def test_clone_errors() -> None:
    r = offline("clone", "sg/nope", "x")
    assert (r.code, r.err) == (2, "error: security group demo/nope not found; groups in demo: "
                                  "sg-a, sg-b\n")  # fmt: skip
    r = offline("clone", "sg/sg-a", "sg-b")
    assert r.err == "error: security group demo/sg-b already exists\n"
    r = offline("clone", "sg/sg-a", "Not_A_Label")
    assert r.err.startswith("error: invalid name 'Not_A_Label': security group names must be")
    r = offline("clone", "pod/a1", "x")
    assert r.err == "error: pod/a1: expected sg/NAME (or sg/NAMESPACE/NAME)\n"
