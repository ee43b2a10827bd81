"""Short builders of core inputs (typed facts and models) for table-driven unit tests.

``rule("ssh-in", "web", "Ingress", protocol="TCP", ports="22", cidr="192.0.2.0/24")``
reads like the manifest it stands for. Everything lives in namespace ``demo``
unless ``ns=`` says otherwise; ``facts(...)`` sorts objects into a ClusterFacts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from secgroups.compiled import CompiledPolicy
from secgroups.compiling import Compilation, CompileOptions, compile_policy
from secgroups.evaluating import Evaluator, Packet, Verdict
from secgroups.facts import ClusterFacts, NamespaceFacts, PodFacts
from secgroups.models import (
    ENFORCE_LABEL,
    IPAddressGroup,
    SecurityGroup,
    SecurityGroupRule,
)

DEMO = "demo"


def ns(name: str = DEMO, *, enforced: bool = True, **labels: str) -> NamespaceFacts:
    return NamespaceFacts(
        name=name, labels={**labels, **({ENFORCE_LABEL: "true"} if enforced else {})}
    )


def pod(
    name: str,
    *ips: str,
    ns: str = DEMO,
    node: str | None = "n1",
    labels: dict[str, str] | None = None,
    groups: str | None = None,
    host_network: bool = False,
    phase: str = "Running",
) -> PodFacts:
    return PodFacts(
        namespace=ns,
        name=name,
        uid=f"uid-{ns}-{name}",
        node=node,
        ips=ips,
        labels=labels or {},
        groups_annotation=groups,
        host_network=host_network,
        phase=phase,
    )


def sg(
    name: str,
    *,
    ns: str = DEMO,
    selector: dict[str, str] | None = None,
    expressions: list[dict[str, Any]] | None = None,
    sequence: int = 100,
) -> SecurityGroup:
    spec: dict[str, Any] = {"sequence": sequence}
    if selector is not None or expressions is not None:
        spec["podSelector"] = {
            "matchLabels": selector or {},
            "matchExpressions": expressions or [],
        }
    return SecurityGroup.model_validate({"metadata": {"name": name, "namespace": ns}, "spec": spec})


def rule(
    name: str,
    group: str,
    direction: str = "Ingress",
    *,
    ns: str = DEMO,
    protocol: str = "All",
    cidr: str | None = None,
    remote_sg: str | None = None,
    remote_ipag: str | None = None,
    remote_ns: str | None = None,
    **spec: Any,
) -> SecurityGroupRule:
    """A rule; extra keyword arguments are spec fields in their manifest spelling."""
    body: dict[str, Any] = {
        "securityGroup": group,
        "direction": direction,
        "protocol": protocol,
        **spec,
    }
    ref = {"namespace": remote_ns} if remote_ns else {}
    if cidr is not None:
        body["remote"] = {"cidr": cidr}
    elif remote_sg is not None:
        body["remote"] = {"securityGroup": {"name": remote_sg, **ref}}
    elif remote_ipag is not None:
        body["remote"] = {"ipAddressGroup": {"name": remote_ipag, **ref}}
    return SecurityGroupRule.model_validate(
        {"metadata": {"name": name, "namespace": ns}, "spec": body}
    )


def ipag(name: str, *addresses: str, ns: str = DEMO, family: str = "IPv4") -> IPAddressGroup:
    return IPAddressGroup.model_validate(
        {
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ipFamily": family, "addresses": list(addresses)},
        }
    )


Obj = NamespaceFacts | PodFacts | SecurityGroup | SecurityGroupRule | IPAddressGroup


def facts(*objs: Obj, nodes: tuple[str, ...] = ()) -> ClusterFacts:
    """ClusterFacts of the objects given (any order), plus ``nodes``."""
    return ClusterFacts(
        namespaces=tuple(o for o in objs if isinstance(o, NamespaceFacts)),
        nodes=nodes,
        pods=tuple(o for o in objs if isinstance(o, PodFacts)),
        groups=tuple(o for o in objs if isinstance(o, SecurityGroup)),
        rules=tuple(o for o in objs if isinstance(o, SecurityGroupRule)),
        address_groups=tuple(o for o in objs if isinstance(o, IPAddressGroup)),
    )


def replace(base: ClusterFacts, *objs: Obj, drop: tuple[str, ...] = ()) -> ClusterFacts:
    """``base`` with objects upserted (matched by kind, namespace and name) and some dropped.

    ``drop`` names objects as ``Kind/name`` (``Pod/a2``, ``SecurityGroupRule/r1``,
    ``IPAddressGroup/office``, ``SecurityGroup/web``), all in namespace demo.
    """

    def ident(o: Obj) -> str:
        if isinstance(o, NamespaceFacts):
            return f"Namespace/{o.name}"
        if isinstance(o, PodFacts):
            return f"Pod/{o.name}" if o.namespace == DEMO else f"Pod/{o.namespace}/{o.name}"
        meta = o.metadata
        where = "" if (meta.namespace or DEMO) == DEMO else f"{meta.namespace}/"
        return f"{o.kind}/{where}{meta.name}"

    everything: list[Obj] = [
        *base.namespaces,
        *base.pods,
        *base.groups,
        *base.rules,
        *base.address_groups,
    ]
    current = {ident(o): o for o in everything}
    for name in drop:
        assert name in current, f"nothing to drop: {name}"
        del current[name]
    for o in objs:
        current[ident(o)] = o
    return facts(*current.values(), nodes=base.nodes)


def compile_facts(f: ClusterFacts, **options: Any) -> Compilation:
    return compile_policy(f, CompileOptions(**options))


def verdict(policy: CompiledPolicy, *packet: Any, from_node: str | None = None) -> Verdict:
    pkt = Packet.make(*packet)
    if from_node is not None:
        pkt = dataclasses.replace(pkt, from_node=from_node)
    return Evaluator(policy).evaluate(pkt)
