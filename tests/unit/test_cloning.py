"""secgroups.cloning (S-O-1): a clone has the rules, not the members, and talks to itself."""

from __future__ import annotations

from typing import Any

import pytest
from sgdocs import ns, pod, rule, sg

from secgroups.analysis import PolicyView
from secgroups.cloning import (
    CLONED_FROM_ANNOTATION,
    CloneError,
    clone_group,
    clone_rule_name,
    to_manifests,
)
from secgroups.evaluating import Packet
from secgroups.facts import ClusterFacts


def facts(*extra: dict[str, Any]) -> ClusterFacts:
    return ClusterFacts.from_manifests(
        [
            ns("demo"),
            ns("test"),
            sg("web", selector={"tier": "web"}, sequence=7),
            rule("ssh", "web", direction="Ingress", protocol="TCP", ports="ssh",
                 remote={"securityGroup": {"name": "admin"}}, description="admins"),
            rule("self", "web", direction="Ingress", protocol="All",
                 remote={"securityGroup": {"name": "web"}}),
            rule("office", "web", direction="Ingress", protocol="TCP", ports="443",
                 remote={"ipAddressGroup": {"name": "office"}}),
            rule("out", "web", direction="Egress", protocol="All"),
            rule("unrelated", "admin", direction="Egress", protocol="All"),
            sg("admin"),
            *extra,
        ]
    )  # fmt: skip


def test_clone_keeps_rules_drops_selector_and_repoints_self() -> None:
    clone = clone_group(facts(), ("demo", "web"), ("demo", "web-next"))
    g = clone.group
    assert g.metadata.name == "web-next" and g.metadata.namespace == "demo"
    assert g.spec.pod_selector is None and g.spec.sequence == 7
    assert g.metadata.annotations == {CLONED_FROM_ANNOTATION: "demo/web"}
    by_name = {r.metadata.name: r for r in clone.rules}
    assert sorted(by_name) == [
        "web-next-office",
        "web-next-out",
        "web-next-self",
        "web-next-ssh",
    ]
    assert {r.spec.security_group for r in clone.rules} == {"web-next"}
    self_remote = by_name["web-next-self"].spec.remote
    assert self_remote is not None and self_remote.security_group is not None
    assert self_remote.security_group.name == "web-next"
    ssh = by_name["web-next-ssh"]
    assert ssh.spec.remote is not None and ssh.spec.remote.security_group is not None
    assert ssh.spec.remote.security_group.name == "admin"  # other remotes keep pointing there
    assert ssh.spec.ports == "ssh" and ssh.spec.description == "admins"
    assert ssh.metadata.annotations == {CLONED_FROM_ANNOTATION: "demo/ssh"}


def test_clone_to_another_namespace_pins_the_namespace_of_other_remotes() -> None:
    clone = clone_group(facts(), ("demo", "web"), ("test", "web"))
    by_name = {r.metadata.name: r.spec.remote for r in clone.rules}
    ssh, office, me = by_name["web-ssh"], by_name["web-office"], by_name["web-self"]
    assert ssh is not None and ssh.security_group is not None
    assert (ssh.security_group.namespace, ssh.security_group.name) == ("demo", "admin")
    assert office is not None and office.ip_address_group is not None
    assert office.ip_address_group.namespace == "demo"
    assert me is not None and me.security_group is not None
    assert (me.security_group.namespace, me.security_group.name) == (None, "web")


def test_a_pod_annotated_with_the_clone_behaves_like_the_original() -> None:
    base = facts(
        pod("w1", "10.0.0.1", labels={"tier": "web"}),
        pod("w2", "10.0.0.2", labels={"tier": "web"}),
    )
    clone = clone_group(base, ("demo", "web"), ("demo", "web-next"))
    trial = ClusterFacts.from_manifests(
        [
            *to_manifests(clone.resources()),
            ns("demo"),
            pod("t1", "10.0.0.11", groups="web-next"),
            pod("t2", "10.0.0.12", groups="web-next"),
        ]
    )
    view = PolicyView(trial.model_copy(update={"rules": (*base.rules, *trial.rules)}))
    t = view.trace(Packet.make("10.0.0.11", "10.0.0.12", "tcp", 8080))
    assert t.allowed and t.ingress.verdict is not None and t.ingress.verdict.rule is not None
    assert t.ingress.verdict.rule.id == "demo/web-next-self"
    # The clone's members are not the original's: w1 cannot reach t1 through "self".
    assert not view.trace(Packet.make("10.0.0.1", "10.0.0.11", "tcp", 8080)).allowed


def test_clone_refuses_missing_source_and_taken_names() -> None:
    with pytest.raises(CloneError, match=r"demo/nope not found; groups in demo: admin, web"):
        clone_group(facts(), ("demo", "nope"), ("demo", "x"))
    with pytest.raises(CloneError, match="demo/admin already exists"):
        clone_group(facts(), ("demo", "web"), ("demo", "admin"))
    taken = rule("web2-out", "admin", direction="Egress", protocol="All")
    with pytest.raises(CloneError, match="rule demo/web2-out already exists"):
        clone_group(facts(taken), ("demo", "web"), ("demo", "web2"))


def test_clone_rule_names_stay_valid_object_names() -> None:
    name = clone_rule_name("g" * 63, "r" * 253)
    assert len(name) == 253
    assert name == clone_rule_name("g" * 63, "r" * 253)  # deterministic


def test_manifests_are_plain_and_have_no_status() -> None:
    docs = to_manifests(clone_group(facts(), ("demo", "web"), ("demo", "w2")).resources())
    assert docs[0] == {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "SecurityGroup",
        "metadata": {
            "name": "w2",
            "namespace": "demo",
            "annotations": {CLONED_FROM_ANNOTATION: "demo/web"},
        },
        "spec": {"description": "", "sequence": 7},
    }
    assert all("status" not in d for d in docs)
