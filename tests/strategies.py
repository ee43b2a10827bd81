"""Hypothesis strategies for the pure core: random clusters, rules, address groups, packets.

Reusable by every tier's property tests (compiler, evaluator, nft tracer, CLI). Names
come from small pools on purpose, so that generated objects refer to each other: rules
name groups that exist (or not), remotes name groups of this or another namespace and
IP address groups, pods name groups in their annotation, groups select pods by labels,
pod IPs sit next to each other (address sets collapse into wider CIDRs), priorities
and sequences tie. Every ``ClusterFacts`` has unique keys, and every pod unique IPs,
as in a real cluster.

Entry points: :func:`cluster_facts`, :func:`rules`, :func:`address_groups`,
:func:`pods`, :func:`packets`, :func:`events` (for the incremental compiler).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from secgroups.facts import ClusterFacts, NamespaceFacts, PodFacts
from secgroups.incremental import Delete, Event, Kind, Node, SetEpochs, Upsert
from secgroups.models import (
    DEFAULT_GROUP_NAME,
    ENFORCE_LABEL,
    IPAddressGroup,
    SecurityGroup,
    SecurityGroupRule,
)

NAMESPACES = ("alpha", "beta", "gamma")
NODES = ("node-1", "node-2", "node-3")
GROUP_NAMES = ("web", "db", "ssh", DEFAULT_GROUP_NAME)
UNKNOWN_GROUP = "ghost"  # named in annotations and remotes, never created
IPAG_NAMES = ("office", "partners")
POD_NAMES = tuple(f"pod-{i}" for i in range(6))
LABELS = {"app": ("web", "db"), "tier": ("front", "back")}
# Pod i has 10.0.0.i and/or fd00::i: neighbours, so sets collapse into wider CIDRs.
V4_BASE = ipaddress.IPv4Address("10.0.0.0")
V6_BASE = ipaddress.IPv6Address("fd00::")
# Addresses outside every pod, for remotes and packets.
OUTSIDE_V4 = ("192.0.2.1", "192.0.2.77", "198.51.100.9", "10.0.0.200")
OUTSIDE_V6 = ("2001:db8::1", "2001:db8::ff", "fd00::c8")
PORT_FORMS = ("22", "80-82", "22,25,27", "22-24,25", "443", "ssh", "https,http", "1-1024", "53")
ICMP_TYPES = (0, 3, 8, 128, 129)


def _labels() -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in LABELS.items()})


@st.composite
def selectors(draw: st.DrawFn) -> dict[str, Any] | None:
    """A podSelector: absent, empty (every pod), matchLabels or matchExpressions."""
    kind = draw(st.sampled_from(("none", "empty", "labels", "expression")))
    if kind == "none":
        return None
    if kind == "empty":
        return {}
    if kind == "labels":
        return {"matchLabels": draw(_labels().filter(bool))}
    key = draw(st.sampled_from(sorted(LABELS)))
    op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
    values = (
        draw(st.lists(st.sampled_from(LABELS[key]), min_size=1, max_size=2, unique=True))
        if op in ("In", "NotIn")
        else []
    )
    return {"matchExpressions": [{"key": key, "operator": op, "values": values}]}


def security_groups(namespace: str, name: str) -> st.SearchStrategy[SecurityGroup]:
    return st.builds(
        lambda selector, sequence: SecurityGroup.model_validate(
            {
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"sequence": sequence, "podSelector": selector},
            }
        ),
        selectors(),
        st.sampled_from((1, 50, 100)),
    )


def _ref(namespace: str, names: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A reference to a group or address group, in the rule's namespace or another one."""
    return st.builds(
        lambda name, ns: {"name": name, **({"namespace": ns} if ns else {})},
        st.sampled_from(names),
        st.sampled_from((None, None, None, *NAMESPACES)),
    )


@st.composite
def rule_specs(draw: st.DrawFn, namespace: str) -> dict[str, Any]:
    """A rule spec of any shape: every protocol, port form, ICMP match and remote kind."""
    v6 = draw(st.booleans())
    protocol = draw(st.sampled_from(("TCP", "UDP", "ICMP", "GRE", "All")))
    spec: dict[str, Any] = {
        "securityGroup": draw(st.sampled_from((*GROUP_NAMES, UNKNOWN_GROUP))),
        "direction": draw(st.sampled_from(("Ingress", "Egress"))),
        "action": draw(st.sampled_from(("Allow", "Deny"))),
        "priority": draw(st.sampled_from((1, 2, 50, 100))),
        "ipFamily": "IPv6" if v6 else "IPv4",
        "protocol": protocol,
        "description": draw(st.sampled_from(("", "from the office"))),
    }
    if protocol in ("TCP", "UDP") and draw(st.booleans()):
        spec["ports"] = draw(st.sampled_from(PORT_FORMS))
    if protocol == "ICMP" and draw(st.booleans()):
        icmp: dict[str, int] = {"type": draw(st.sampled_from(ICMP_TYPES))}
        if draw(st.booleans()):
            icmp["code"] = draw(st.sampled_from((0, 1)))
        spec["icmp"] = icmp
    remote = draw(st.sampled_from(("any", "cidr", "group", "ipag")))
    if remote == "cidr":
        cidrs = (
            ("fd00::/120", "fd00::4/126", "2001:db8::/32", "fd00::3")
            if v6
            else ("10.0.0.0/28", "10.0.0.4/30", "192.0.2.0/24", "10.0.0.3", "10.0.0.5/29")
        )
        spec["remote"] = {"cidr": draw(st.sampled_from(cidrs))}
    elif remote == "group":
        spec["remote"] = {"securityGroup": draw(_ref(namespace, (*GROUP_NAMES, UNKNOWN_GROUP)))}
    elif remote == "ipag":
        spec["remote"] = {"ipAddressGroup": draw(_ref(namespace, (*IPAG_NAMES, "nowhere")))}
    return spec


def rules(namespace: str, name: str) -> st.SearchStrategy[SecurityGroupRule]:
    return rule_specs(namespace).map(
        lambda spec: SecurityGroupRule.model_validate(
            {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
        )
    )


@st.composite
def address_groups(draw: st.DrawFn, namespace: str, name: str) -> IPAddressGroup:
    """An IP address group of one family with IPs, CIDRs and ranges (near the pods)."""
    v6 = draw(st.booleans())
    pool = (
        ("fd00::1", "fd00::/126", "fd00::2-fd00::9", "2001:db8::/64", "fd00::8/125")
        if v6
        else ("10.0.0.1", "10.0.0.0/30", "10.0.0.2-10.0.0.9", "192.0.2.0/25", "10.0.0.8/29")
    )
    entries = draw(st.lists(st.sampled_from(pool), max_size=3, unique=True))
    return IPAddressGroup.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ipFamily": "IPv6" if v6 else "IPv4", "addresses": entries},
        }
    )


def pod_index(namespace: str, name: str) -> int:
    """A number unique to each pod key of the pools, 1 to 18: its IPs' last part."""
    return NAMESPACES.index(namespace) * len(POD_NAMES) + POD_NAMES.index(name) + 1


@st.composite
def pods(draw: st.DrawFn, namespace: str, name: str) -> PodFacts:
    """A pod; its key fixes its IPs (10.0.0.n, fd00::n, n = pod_index) so IPs stay unique."""
    index = pod_index(namespace, name)
    family = draw(st.sampled_from(("v4", "v6", "dual", "dual", "dual", "none")))
    ips: list[str] = []
    if family in ("v4", "dual"):
        ips.append(str(V4_BASE + index))
    if family in ("v6", "dual"):
        ips.append(str(V6_BASE + index))
    annotated = draw(
        st.lists(st.sampled_from((*GROUP_NAMES, UNKNOWN_GROUP)), max_size=3, unique=True)
    )
    annotation = draw(st.sampled_from((",", ", "))).join(annotated) if annotated else None
    return PodFacts(
        namespace=namespace,
        name=name,
        uid=f"uid-{namespace}-{name}",
        node=draw(st.sampled_from((*NODES, *NODES, None))) if ips else None,
        ips=tuple(ips),
        labels=draw(_labels()),
        groups_annotation=annotation,
        host_network=draw(st.booleans().map(lambda b: b and index % 5 == 4)),
        phase=draw(st.sampled_from(("Running", "Running", "Running", "Pending", "Succeeded"))),
    )


def namespaces(name: str) -> st.SearchStrategy[NamespaceFacts]:
    return st.builds(
        lambda enforced, extra: NamespaceFacts(
            name=name, labels={**({ENFORCE_LABEL: "true"} if enforced else {}), **extra}
        ),
        st.booleans().map(lambda b: b or name == NAMESPACES[0]),  # keep one enforced
        st.sampled_from(({}, {"team": "blue"})),
    )


@st.composite
def cluster_facts(
    draw: st.DrawFn, max_pods: int = 8, max_rules: int = 12, min_pods: int = 0
) -> ClusterFacts:
    """A random cluster with unique keys and unique pod IPs."""
    ns_names = draw(st.lists(st.sampled_from(NAMESPACES), min_size=1, unique=True))
    if NAMESPACES[0] not in ns_names:
        ns_names.insert(0, NAMESPACES[0])
    nss = [draw(namespaces(n)) for n in ns_names]
    pod_keys = draw(
        st.lists(
            st.tuples(st.sampled_from(ns_names), st.sampled_from(POD_NAMES)),
            min_size=min_pods,
            max_size=max_pods,
            unique=True,
        )
    )
    pod_list = [draw(pods(ns, name)) for ns, name in pod_keys]
    group_keys = draw(
        st.lists(
            st.tuples(st.sampled_from(ns_names), st.sampled_from(GROUP_NAMES)),
            max_size=6,
            unique=True,
        )
    )
    group_list = [draw(security_groups(ns, name)) for ns, name in group_keys]
    n_rules = draw(st.integers(0, max_rules))
    rule_list = [draw(rules(draw(st.sampled_from(ns_names)), f"rule-{i}")) for i in range(n_rules)]
    ipag_keys = draw(
        st.lists(
            st.tuples(st.sampled_from(ns_names), st.sampled_from(IPAG_NAMES)),
            max_size=3,
            unique=True,
        )
    )
    ipag_list = [draw(address_groups(ns, name)) for ns, name in ipag_keys]
    node_list = draw(st.lists(st.sampled_from(NODES), unique=True))
    return ClusterFacts(
        namespaces=tuple(nss),
        nodes=tuple(node_list),
        pods=tuple(pod_list),
        groups=tuple(group_list),
        rules=tuple(rule_list),
        address_groups=tuple(ipag_list),
    )


def shuffled(draw: st.DrawFn, facts: ClusterFacts) -> ClusterFacts:
    """``facts`` with every tuple in a random order: the objects, each pod's IPs, each
    address group's entries and each selector's expressions. (A pod's annotation keeps
    its order: that order is the pod's sequence, S-M-1.)"""

    def perm(items: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(draw(st.permutations(items))) if items else items

    def group(g: SecurityGroup) -> SecurityGroup:
        selector = g.spec.pod_selector
        if selector is None or not selector.match_expressions:
            return g
        selector = selector.model_copy(
            update={"match_expressions": perm(selector.match_expressions)}
        )
        return g.model_copy(update={"spec": g.spec.model_copy(update={"pod_selector": selector})})

    def ipag(a: IPAddressGroup) -> IPAddressGroup:
        spec = a.spec.model_copy(update={"addresses": perm(a.spec.addresses)})
        return a.model_copy(update={"spec": spec})

    return ClusterFacts(
        namespaces=perm(facts.namespaces),
        nodes=perm(facts.nodes),
        pods=perm(tuple(p.model_copy(update={"ips": perm(p.ips)}) for p in facts.pods)),
        groups=perm(tuple(group(g) for g in facts.groups)),
        rules=perm(facts.rules),
        address_groups=perm(tuple(ipag(a) for a in facts.address_groups)),
    )


@st.composite
def facts_and_permutation(draw: st.DrawFn) -> tuple[ClusterFacts, ClusterFacts]:
    facts = draw(cluster_facts())
    return facts, shuffled(draw, facts)


# ----------------------------------------------------------------------------- packets

PROTOCOLS = ("tcp", "udp", "icmp", "gre", "132")  # 132 = SCTP: matched only by "All"


@st.composite
def packets(draw: st.DrawFn, facts: ClusterFacts) -> tuple[str, str, str, int | None, int | None]:
    """(src, dst, proto, dport, icmp_type) between pods of ``facts`` and outside hosts."""
    v6 = draw(st.booleans())
    pod_ips = [ip for p in facts.pods for ip in p.ips if (":" in ip) == v6]
    outside = list(OUTSIDE_V6 if v6 else OUTSIDE_V4)
    endpoints = st.sampled_from(pod_ips + outside) if pod_ips else st.sampled_from(outside)
    src = draw(endpoints)
    dst = draw(endpoints.filter(lambda ip: ip != src))
    proto = draw(st.sampled_from(PROTOCOLS))
    ports = st.sampled_from((22, 25, 26, 53, 80, 443, 8080))
    dport = draw(ports) if proto in ("tcp", "udp") else None
    icmp_type = draw(st.sampled_from(ICMP_TYPES)) if proto == "icmp" else None
    return src, dst, proto, dport, icmp_type


# ----------------------------------------------------------------------------- events


@st.composite
def events(
    draw: st.DrawFn, facts: ClusterFacts, kinds: Sequence[Kind | str] | None = None
) -> Event:
    """One watch event against ``facts``: an upsert (new or changed object) or a delete.

    ``kinds`` restricts (and, with repeats, weights) the kinds drawn; ``"epochs"``
    stands for a SetEpochs event.

    Biased towards objects that exist (a pod that changes IPs, labels or annotation; a
    group whose selector changes; a namespace that stops being enforced), since those
    are the events whose effects reach furthest.
    """
    kind = draw(st.sampled_from(kinds or [*Kind, "epochs"]))
    delete = draw(st.integers(0, 3)) == 0
    known_ns = [n.name for n in facts.namespaces]
    ns = draw(st.sampled_from(known_ns) if draw(st.integers(0, 4)) else st.sampled_from(NAMESPACES))
    if kind == "epochs":
        keys = [p.key for p in facts.pods] or [(NAMESPACES[0], POD_NAMES[0])]
        chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True))
        return SetEpochs({k: draw(st.integers(1, 5)) for k in chosen})
    if kind is Kind.NAMESPACE:
        return Delete(Kind.NAMESPACE, ns) if delete else Upsert(draw(namespaces(ns)))
    if kind is Kind.NODE:
        node = draw(st.sampled_from(NODES))
        return Delete(Kind.NODE, node) if delete else Upsert(Node(node))
    if kind is Kind.POD:
        existing = [p.key for p in facts.pods]
        if existing and draw(st.integers(0, 3)) > 0:
            ns, name = draw(st.sampled_from(existing))
        else:
            name = draw(st.sampled_from(POD_NAMES))
        return Delete(Kind.POD, name, ns) if delete else Upsert(draw(pods(ns, name)))
    if kind is Kind.SECURITY_GROUP:
        name = draw(st.sampled_from(GROUP_NAMES))
        return Delete(kind, name, ns) if delete else Upsert(draw(security_groups(ns, name)))
    if kind is Kind.SECURITY_GROUP_RULE:
        existing = [(r.metadata.namespace or "default", r.metadata.name) for r in facts.rules]
        if existing and draw(st.integers(0, 2)) > 0:
            ns, name = draw(st.sampled_from(existing))
        else:
            name = draw(st.sampled_from(("rule-new-1", "rule-new-2")))
        return Delete(kind, name, ns) if delete else Upsert(draw(rules(ns, name)))
    name = draw(st.sampled_from(IPAG_NAMES))
    return Delete(kind, name, ns) if delete else Upsert(draw(address_groups(ns, name)))
