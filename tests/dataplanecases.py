"""User-level scenarios for the dataplane tier: manifests (plain dictionaries) → ClusterFacts.

The netns tests write their policies the way users do — Namespaces, Pods, SecurityGroups,
SecurityGroupRules and IPAddressGroups — with the lab's real pod IPs and node names, and
compile them with the real compiler (``tests/dataplane_harness.py`` plays the operator).
The same manifests are written to YAML for the CLI (``test_cli_vs_probes.py``).

:func:`shop_manifests` is the scenario of ``tests/netns/test_dataplane_rules.py`` and
``tests/netns/test_cli_vs_probes.py``: every S-X rule form over TCP, UDP, ICMP/ICMPv6 and
GRE, IPv4 and IPv6 (the table in its docstring says which rule proves what).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from secgroups.facts import ClusterFacts
from secgroups.models import API_VERSION, ENFORCE_LABEL, GROUPS_ANNOTATION

Manifest = dict[str, Any]


class LabPod(Protocol):
    """What a manifest needs of a lab pod (``secgroups_lab.network.PodNet``)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def node(self) -> int: ...
    @property
    def ipv4(self) -> str: ...
    @property
    def ipv6(self) -> str: ...


def node_name(index: int) -> str:
    """The lab's node ``index`` as the agent and the compiled objects name it."""
    return f"n{index}"


# ----------------------------------------------------------------------------- builders
def namespace(name: str, *, enforced: bool = True) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {ENFORCE_LABEL: "true"} if enforced else {}},
    }


def pod(p: LabPod, groups: str | None = None, labels: Mapping[str, str] | None = None) -> Manifest:
    """A Pod on its lab node with the lab's addresses; ``groups`` is the annotation."""
    meta: Manifest = {"name": p.name, "namespace": p.namespace, "labels": dict(labels or {})}
    if groups is not None:
        meta["annotations"] = {GROUPS_ANNOTATION: groups}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node_name(p.node)},
        "status": {"phase": "Running", "podIPs": [{"ip": p.ipv4}, {"ip": p.ipv6}]},
    }


def group(
    ns: str, name: str, *, selector: Mapping[str, str] | None = None, sequence: int = 100
) -> Manifest:
    spec: Manifest = {"sequence": sequence}
    if selector is not None:
        spec["podSelector"] = {"matchLabels": dict(selector)}
    return {
        "apiVersion": API_VERSION,
        "kind": "SecurityGroup",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def rule(
    ns: str,
    name: str,
    group: str,
    direction: str,
    protocol: str,
    *,
    ports: str | None = None,
    family: str = "IPv4",
    action: str = "Allow",
    priority: int = 1,
    cidr: str | None = None,
    sg: str | None = None,
    ipag: str | None = None,
    icmp: tuple[int, int | None] | None = None,
    description: str = "",
) -> Manifest:
    """A SecurityGroupRule; at most one of ``cidr``/``sg``/``ipag`` (none = any address)."""
    spec: Manifest = {
        "securityGroup": group,
        "direction": direction,
        "action": action,
        "priority": priority,
        "ipFamily": family,
        "protocol": protocol,
    }
    if ports is not None:
        spec["ports"] = ports
    if icmp is not None:
        spec["icmp"] = {"type": icmp[0]} | ({"code": icmp[1]} if icmp[1] is not None else {})
    if cidr is not None:
        spec["remote"] = {"cidr": cidr}
    elif sg is not None:
        spec["remote"] = {"securityGroup": {"name": sg}}
    elif ipag is not None:
        spec["remote"] = {"ipAddressGroup": {"name": ipag}}
    if description:
        spec["description"] = description
    return {
        "apiVersion": API_VERSION,
        "kind": "SecurityGroupRule",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def ipag(ns: str, name: str, addresses: Sequence[str], *, family: str = "IPv4") -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "IPAddressGroup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ipFamily": family, "addresses": list(addresses)},
    }


def facts_of(docs: Iterable[Manifest], nodes: Sequence[str]) -> ClusterFacts:
    """Cluster facts of the manifests, with the lab's nodes (so that a node with no managed
    pod still gets its (empty) node object)."""
    facts = ClusterFacts.from_manifests(docs)
    return facts.model_copy(update={"nodes": tuple(sorted(set(facts.nodes) | set(nodes)))})


def replace_doc(docs: Sequence[Manifest], new: Manifest) -> list[Manifest]:
    """``docs`` with the object of ``new``'s kind, namespace and name replaced (or added)."""

    def key(d: Manifest) -> tuple[str, str, str]:
        meta = d["metadata"]
        return (d["kind"], meta.get("namespace", ""), meta["name"])

    out = [d for d in docs if key(d) != key(new)]
    return [*out, new]


def without(docs: Sequence[Manifest], kind: str, name: str) -> list[Manifest]:
    return [d for d in docs if not (d["kind"] == kind and d["metadata"]["name"] == name)]


# ----------------------------------------------------------------------------- outside
OUTSIDE_CANONICAL = ("100.64.250.10", "fd64:5ec:0:fa::a")
# Other addresses of the outside host, by what the shop scenario makes of them.
OUTSIDE_ALIASES: dict[str, tuple[str, str]] = {
    "partner-ip": ("100.64.250.20", "fd64:5ec:0:fa::14"),  # partners: the single IP entry
    "partner-cidr": ("100.64.250.40", "fd64:5ec:0:fa::28"),  # partners: inside the CIDR entry
    "partner-range": ("100.64.250.65", "fd64:5ec:0:fa::41"),  # partners: inside the range entry
    "stranger": ("100.64.250.100", "fd64:5ec:0:fa::64"),  # in no rule but the /24 ones
}
PARTNERS_V4 = ("100.64.250.20", "100.64.250.32/28", "100.64.250.60-100.64.250.70")
PARTNERS_V6 = ("fd64:5ec:0:fa::14", "fd64:5ec:0:fa::20/124", "fd64:5ec:0:fa::3c-fd64:5ec:0:fa::46")

# ----------------------------------------------------------------------------- the shop
SHOP = "shop"
LEGACY = "legacy"
# name → lab node; legacy/free is in a namespace that is not enforced.
SHOP_PODS: tuple[tuple[int, str, str], ...] = (
    (1, SHOP, "web-1"),
    (1, SHOP, "db-1"),
    (1, SHOP, "seq-1"),
    (1, SHOP, "dflt-1"),
    (2, SHOP, "web-2"),
    (2, SHOP, "client-2"),
    (2, SHOP, "dflt-2"),
    (2, LEGACY, "free"),
)
SHOP_PROBE_PORTS = (22, 80, 82, 83, 443, 3306, 5432, 8080)


def _twin(
    name: str, group: str, direction: str, protocol: str, v4: str | None, v6: str | None, **kw: Any
) -> list[Manifest]:
    """An IPv4 rule and its IPv6 twin (``<name>6``); ``v4``/``v6`` are CIDR remotes or None."""
    return [
        rule(SHOP, name, group, direction, protocol, cidr=v4, **kw),
        rule(SHOP, f"{name}6", group, direction, protocol, cidr=v6, family="IPv6", **kw),
    ]


def shop_manifests(pods: Mapping[str, LabPod]) -> list[Manifest]:
    """The rules scenario, keyed by pod name (``web-1``, ``db-1``, … ``free``).

    ==========  ======================  ==============================================
    pod         groups (sequence)       what it demonstrates
    ==========  ======================  ==============================================
    web-1, -2   web (annotation)        port forms single/range/list/mixed/named
                                        (S-M-3, S-O-3); CIDR, SG, IPAG remotes (S-M-4);
                                        own group as remote (S-M-5); ICMP type/code;
                                        GRE Deny before Allow at equal priority (S-X-1)
    db-1        db (podSelector)        priority order both ways (S-X-1); no egress
                                        rule at all, yet replies pass (S-X-3)
    client-2    client (annotation)     no ingress rule (replies only, S-X-3); egress
                                        denies: the sender's egress decides although
                                        the receiver allows (S-X-2), IPAG as egress remote
    seq-1       first, second           first match wins across groups (S-X-1); Deny
                                        before Allow at equal priority; ICMP type/code
                                        that echo does not match
    dflt-1, -2  default (S-D-1)         synthesized default group, on both nodes
    legacy/free —                       namespace not enforced: never filtered
    ==========  ======================  ==============================================

    Node → local pod is always allowed; another node is judged by the rules.
    """
    out_v4, out_v6 = "100.64.250.0/24", "fd64:5ec:0:fa::/64"
    docs: list[Manifest] = [
        namespace(SHOP),
        namespace(LEGACY, enforced=False),
        ipag(SHOP, "partners", PARTNERS_V4),
        ipag(SHOP, "partners6", PARTNERS_V6, family="IPv6"),
        group(SHOP, "web"),
        group(SHOP, "db", selector={"app": "db"}),
        group(SHOP, "client"),
        group(SHOP, "first"),
        group(SHOP, "second"),
        pod(pods["web-1"], "web"),
        pod(pods["web-2"], "web"),
        pod(pods["db-1"], labels={"app": "db"}),
        pod(pods["client-2"], "client"),
        pod(pods["seq-1"], "first,second"),
        pod(pods["dflt-1"]),
        pod(pods["dflt-2"]),
        pod(pods["free"], "web"),  # the annotation means nothing: legacy is not enforced
    ]
    # --- web: every port form and remote kind.
    docs += [
        rule(SHOP, "web-ssh", "web", "Ingress", "TCP", ports="22", cidr="100.64.250.0/28"),
        rule(
            SHOP,
            "web-ssh6",
            "web",
            "Ingress",
            "TCP",
            ports="22",
            cidr="fd64:5ec:0:fa::/124",
            family="IPv6",
        ),
        *_twin("web-http", "web", "Ingress", "TCP", None, None, ports="80-82"),
        rule(SHOP, "web-udp", "web", "Ingress", "UDP", ports="5432,8080", ipag="partners"),
        rule(
            SHOP,
            "web-udp6",
            "web",
            "Ingress",
            "UDP",
            ports="5432,8080",
            ipag="partners6",
            family="IPv6",
        ),
        rule(SHOP, "web-mixed", "web", "Ingress", "TCP", ports="3306-3307,8080", sg="client"),
        rule(
            SHOP,
            "web-mixed6",
            "web",
            "Ingress",
            "TCP",
            ports="3306-3307,8080",
            sg="client",
            family="IPv6",
        ),
        rule(SHOP, "web-https", "web", "Ingress", "TCP", ports="https", ipag="partners"),
        rule(
            SHOP,
            "web-https6",
            "web",
            "Ingress",
            "TCP",
            ports="https",
            ipag="partners6",
            family="IPv6",
        ),
        rule(SHOP, "web-self", "web", "Ingress", "All", sg="web"),
        rule(SHOP, "web-self6", "web", "Ingress", "All", sg="web", family="IPv6"),
        rule(SHOP, "web-ping", "web", "Ingress", "ICMP", icmp=(8, 0)),
        rule(SHOP, "web-ping6", "web", "Ingress", "ICMP", icmp=(128, None), family="IPv6"),
        # Deny and Allow at the same priority: the Deny wins although "web-a-gre" sorts first.
        *_twin("web-a-gre", "web", "Ingress", "GRE", None, None),
        *_twin("web-no-gre-outside", "web", "Ingress", "GRE", out_v4, out_v6, action="Deny"),
        *_twin("web-out", "web", "Egress", "All", None, None),
    ]
    # --- db: priority order; no egress rules.
    docs += [
        rule(SHOP, "db-mysql", "db", "Ingress", "TCP", ports="mysql", sg="web"),
        rule(SHOP, "db-mysql6", "db", "Ingress", "TCP", ports="mysql", sg="web", family="IPv6"),
        rule(SHOP, "db-pg-allow", "db", "Ingress", "TCP", ports="5432", priority=5),
        rule(
            SHOP,
            "db-pg-deny",
            "db",
            "Ingress",
            "TCP",
            ports="5432",
            priority=10,
            action="Deny",
            cidr=out_v4,
        ),
        rule(
            SHOP,
            "db-udp-deny",
            "db",
            "Ingress",
            "UDP",
            ports="5432",
            priority=5,
            action="Deny",
            cidr=out_v4,
        ),
        rule(SHOP, "db-udp-allow", "db", "Ingress", "UDP", ports="5432", priority=10),
        rule(SHOP, "db-pg6", "db", "Ingress", "TCP", ports="postgresql", family="IPv6"),
    ]
    # --- client: no ingress; egress denies first, then allows everything.
    docs += [
        *_twin("cl-no-ssh", "client", "Egress", "TCP", None, None, ports="ssh", action="Deny"),
        rule(
            SHOP, "cl-no-web-http", "client", "Egress", "TCP", ports="80", sg="web", action="Deny"
        ),
        rule(
            SHOP,
            "cl-no-partners",
            "client",
            "Egress",
            "All",
            ipag="partners",
            priority=2,
            action="Deny",
        ),
        *_twin("cl-out", "client", "Egress", "All", None, None, priority=50),
    ]
    # --- first, then second (seq-1): first match wins across groups.
    docs += [
        *_twin("fi-no-80", "first", "Ingress", "TCP", None, None, ports="80", action="Deny"),
        rule(SHOP, "fi-443", "first", "Ingress", "TCP", ports="443"),
        rule(SHOP, "fi-icmp-timestamp", "first", "Ingress", "ICMP", icmp=(13, None)),
        rule(SHOP, "fi-icmp6-code1", "first", "Ingress", "ICMP", icmp=(128, 1), family="IPv6"),
        *_twin("se-80", "second", "Ingress", "TCP", None, None, ports="80"),
        rule(SHOP, "se-no-443", "second", "Ingress", "TCP", ports="443", action="Deny"),
        *_twin("se-22", "second", "Ingress", "TCP", None, None, ports="22"),
        rule(SHOP, "se-a-udp", "second", "Ingress", "UDP", ports="8080", priority=3),
        rule(
            SHOP,
            "se-no-udp",
            "second",
            "Ingress",
            "UDP",
            ports="8080",
            priority=3,
            action="Deny",
        ),
        *_twin("se-out", "second", "Egress", "All", None, None),
    ]
    return docs


def shop_changed(pods: Mapping[str, LabPod], docs: Sequence[Manifest]) -> list[Manifest]:
    """Live changes (S-M-4): dflt-2 joins client (so web's SG-remote rule web-mixed now
    covers it, and it leaves the default group), seq-1 joins web (web-self: S-M-5), and
    the partners address groups swap their single IP entry for the stranger's address."""
    out = replace_doc(docs, pod(pods["dflt-2"], "client"))
    out = replace_doc(out, pod(pods["seq-1"], "first,second,web"))
    v4 = [OUTSIDE_ALIASES["stranger"][0], *PARTNERS_V4[1:]]
    v6 = [OUTSIDE_ALIASES["stranger"][1], *PARTNERS_V6[1:]]
    out = replace_doc(out, ipag(SHOP, "partners", v4))
    return replace_doc(out, ipag(SHOP, "partners6", v6, family="IPv6"))


# ----------------------------------------------------------------------------- conntrack
CT = "ct"
CT_PODS: tuple[tuple[int, str, str], ...] = (
    (1, CT, "srv-1"),
    (1, CT, "cli-1"),
    (1, CT, "mover-1"),
    (2, CT, "srv-2"),
    (2, CT, "cli-2"),
)
CT_PROBE_PORTS = (80, 82, 443)
CLIENTS = "clients"  # every pod not placed otherwise: no ingress rule, egress anywhere


def ct_rule(name: str, group: str, direction: str = "Ingress", **kw: Any) -> Manifest:
    """A rule of the conntrack scenarios (namespace ``ct``); protocol defaults to All."""
    protocol = kw.pop("protocol", "All")
    return rule(CT, name, group, direction, protocol, **kw)


def ct_manifests(
    pods: Mapping[str, LabPod],
    members: Mapping[str, str],
    rules: Sequence[Manifest],
    *,
    address_groups: Sequence[Manifest] = (),
    no_egress_rules: Sequence[str] = (),
) -> list[Manifest]:
    """Namespace ``ct``: every pod with the annotation ``members`` gives it (default
    ``clients``), every group used there or by ``rules`` with an egress Allow to anywhere
    (IPv4 and IPv6, ``<group>-out[6]``) unless named in ``no_egress_rules``, then ``rules``.
    Groups named only as a rule's remote exist too, with no member until one joins."""
    used = {g for groups in members.values() for g in groups.split(",") if g}
    used |= {CLIENTS} | {r["spec"]["securityGroup"] for r in rules}
    used |= {r["spec"]["remote"]["securityGroup"]["name"] for r in rules if _sg_remote(r)}
    docs: list[Manifest] = [namespace(CT), *address_groups]
    docs += [group(CT, g) for g in sorted(used)]
    docs += [pod(p, members.get(name, CLIENTS)) for name, p in sorted(pods.items())]
    for g in sorted(used):
        if g not in no_egress_rules:
            docs.append(ct_rule(f"{g}-out", g, "Egress"))
            docs.append(ct_rule(f"{g}-out6", g, "Egress", family="IPv6"))
    return [*docs, *rules]


def _sg_remote(r: Manifest) -> bool:
    return "securityGroup" in (r["spec"].get("remote") or {})
