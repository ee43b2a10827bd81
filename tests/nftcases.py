"""Compiled-policy builders and representative node scenarios for the nft renderer's tests.

Shared by ``tests/unit/test_nft_*.py`` (golden rulesets, packet tables) and
``tests/netns/test_nft_load.py`` (the same rulesets loaded into a real kernel).
Every scenario is one node ``n1`` with a few pods; addresses come from
100.64.0.0/16 (pods), fd64:5ec::/48 (pods, IPv6) and the documentation ranges
(remotes), none of which the test machines route.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from secgroups import naming
from secgroups.compiled import (
    CompiledAddressSetSpec,
    CompiledGroupSpec,
    CompiledNodeSpec,
    CompiledPod,
    CompiledPolicy,
    CompiledRemote,
    CompiledRule,
    ObjectKey,
    PortSpan,
    RemoteKind,
    SourceKind,
)
from secgroups.compiling import default_rules
from secgroups.models import Action, Direction, IPFamily, Protocol
from secgroups.nft.dispatch import Limits
from secgroups.nft.rendering import RenderOptions

NODE = "n1"
UPLINK = "eth0"  # a host interface that is not a pod's
ANY = CompiledRemote(kind=RemoteKind.ANY)
IN, EG = Direction.INGRESS, Direction.EGRESS
ALLOW, DENY = Action.ALLOW, Action.DENY
V4, V6 = IPFamily.IPV4, IPFamily.IPV6


def cidr(*cidrs: str) -> CompiledRemote:
    return CompiledRemote(kind=RemoteKind.CIDR, cidrs=cidrs)


def ref(set_key: str) -> CompiledRemote:
    return CompiledRemote(kind=RemoteKind.SET, set=set_key)


def rule(
    id: str,
    direction: Direction,
    protocol: Protocol | str = Protocol.TCP,
    ports: Iterable[tuple[int, int] | int] = (),
    remote: CompiledRemote = ANY,
    *,
    action: Action = ALLOW,
    priority: int = 1,
    family: IPFamily = V4,
    icmp_type: int | None = None,
    icmp_code: int | None = None,
) -> CompiledRule:
    spans = tuple(
        PortSpan(lo=p, hi=p) if isinstance(p, int) else PortSpan(lo=p[0], hi=p[1]) for p in ports
    )
    return CompiledRule(
        id=id,
        direction=direction,
        action=action,
        priority=priority,
        family=family,
        protocol=Protocol(protocol),
        ports=spans,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
        remote=remote,
    )


def group(ns: str, name: str, rules: Iterable[CompiledRule]) -> tuple[str, CompiledGroupSpec]:
    """A compiled group; rules are sorted in match order (S-X-1) as the compiler does."""
    ordered = sorted(rules, key=CompiledRule.sort_key)
    spec = CompiledGroupSpec(
        group=ObjectKey(namespace=ns, name=name),
        ingress=tuple(r for r in ordered if r.direction is IN),
        egress=tuple(r for r in ordered if r.direction is EG),
    )
    return naming.compiled_group_name(ns, name), spec


def sg_set(
    ns: str, name: str, v4: Iterable[str] = (), v6: Iterable[str] = ()
) -> tuple[str, CompiledAddressSetSpec]:
    return naming.sg_set_name(ns, name), CompiledAddressSetSpec(
        source_kind=SourceKind.SECURITY_GROUP,
        source=ObjectKey(namespace=ns, name=name),
        ipv4=tuple(v4),
        ipv6=tuple(v6),
    )


def ipag_set(
    ns: str, name: str, v4: Iterable[str] = (), v6: Iterable[str] = ()
) -> tuple[str, CompiledAddressSetSpec]:
    return naming.ipag_set_name(ns, name), CompiledAddressSetSpec(
        source_kind=SourceKind.IP_ADDRESS_GROUP,
        source=ObjectKey(namespace=ns, name=name),
        ipv4=tuple(v4),
        ipv6=tuple(v6),
    )


def pod(
    ns: str, name: str, ips: Iterable[str], groups: Iterable[str], epoch: int = 0
) -> CompiledPod:
    return CompiledPod(
        namespace=ns,
        name=name,
        uid=f"uid-{ns}-{name}",
        ips=tuple(ips),
        groups=tuple(groups),
        epoch=epoch,
    )


@dataclass(frozen=True)
class Scenario:
    """One node's rendering input, plus the interface of each pod IP."""

    name: str
    policy: CompiledPolicy
    pod_interfaces: Mapping[str, str]
    options: RenderOptions = field(default_factory=RenderOptions)

    def iface(self, ip: str) -> str:
        return self.pod_interfaces.get(ip, UPLINK)


def policy(
    groups: Iterable[tuple[str, CompiledGroupSpec]],
    sets: Iterable[tuple[str, CompiledAddressSetSpec]],
    pods: Iterable[CompiledPod],
    node: str = NODE,
) -> CompiledPolicy:
    gs, ss, ps = dict(groups), dict(sets), tuple(sorted(pods, key=lambda p: (p.namespace, p.name)))
    spec = CompiledNodeSpec(
        node=node,
        pods=ps,
        groups=tuple(sorted({g for p in ps for g in p.groups})),
        sets=tuple(sorted(ss)),
    )
    return CompiledPolicy(groups=gs, sets=ss, nodes={node: spec})


def interfaces(pods: Iterable[CompiledPod]) -> dict[str, str]:
    """``veth-<name>`` for every IP of every pod (host side of the pod's veth)."""
    return {ip: f"veth-{p.name}"[:15] for p in pods for ip in p.ips}


# ----------------------------------------------------------------------------- scenarios

WEB1 = ("100.64.1.2", "fd64:5ec:0:1::2")
WEB2 = ("100.64.1.3", "fd64:5ec:0:1::3")
DB1 = ("100.64.1.4",)
OFFICE = "203.0.113.0/24"
BLOCKED = ("198.51.100.0/24", "192.0.2.7/32")


def default_group() -> Scenario:
    """S-D-1: two pods with no group of their own, in namespace ``shop``'s default group."""
    key = naming.compiled_group_name("shop", "default")
    spec = CompiledGroupSpec(
        group=ObjectKey(namespace="shop", name="default"),
        synthesized=True,
        ingress=tuple(r for r in default_rules("shop") if r.direction is IN),
        egress=tuple(r for r in default_rules("shop") if r.direction is EG),
    )
    pods = [pod("shop", "a", WEB1, [key]), pod("shop", "b", WEB2, [key])]
    members = sg_set("shop", "default", [WEB1[0], WEB2[0]], [WEB1[1], WEB2[1]])
    return Scenario("default-group", policy([(key, spec)], [members], pods), interfaces(pods))


def web_and_db() -> Scenario:
    """S-X-1/S-M-3/S-M-4: a web tier (ssh from the office, http(s) from anywhere, a blocked
    address group denied first) and a db tier that only web pods may reach on 5432."""
    web_key, db_key = (
        naming.compiled_group_name("shop", "web"),
        naming.compiled_group_name("shop", "db"),
    )
    blocked = ipag_set("shop", "blocked", BLOCKED)
    web_members = sg_set("shop", "web", [WEB1[0], WEB2[0]], [WEB1[1], WEB2[1]])
    web = group(
        "shop",
        "web",
        [
            rule("shop/deny-blocked", IN, "All", remote=ref(blocked[0]), action=DENY),
            rule("shop/ssh-office", IN, "TCP", [22], cidr(OFFICE), priority=10),
            rule("shop/http", IN, "TCP", [80, 443, (8000, 8080)], priority=20),
            rule("shop/http6", IN, "TCP", [80, 443, (8000, 8080)], priority=20, family=V6),
            rule("shop/ping", IN, "ICMP", icmp_type=8, priority=30),
            rule("shop/ping6", IN, "ICMP", icmp_type=128, priority=30, family=V6),
            rule("shop/no-smtp", EG, "TCP", [25], action=DENY, priority=5),
            rule("shop/db", EG, "TCP", [5432], ref(naming.sg_set_name("shop", "db")), priority=10),
            rule(
                "shop/dns", EG, "UDP", [53], cidr("192.0.2.53/32", "198.51.100.53/32"), priority=10
            ),
            rule("shop/all4", EG, "All", priority=50),
            rule("shop/all6", EG, "All", priority=50, family=V6),
        ],
    )
    db = group(
        "shop",
        "db",
        [
            rule("shop/pg-from-web", IN, "TCP", [5432], ref(web_members[0])),
            rule("shop/gre-office", IN, "GRE", remote=cidr(OFFICE), priority=2),
            rule("shop/db-out", EG, "UDP", [53, 123]),
        ],
    )
    db_members = sg_set("shop", "db", list(DB1))
    pods = [
        pod("shop", "web-1", WEB1, [web[0]], epoch=2),
        pod("shop", "web-2", WEB2, [web[0]]),
        pod("shop", "db-1", DB1, [db[0], web[0]]),
    ]
    del web_key, db_key
    return Scenario(
        "web-and-db", policy([web, db], [blocked, web_members, db_members], pods), interfaces(pods)
    )


def strict_node() -> Scenario:
    """RenderOptions.allow_node_to_pod off, counters on; one pod, one rule."""
    g = group("ops", "probe", [rule("ops/probe", IN, "TCP", [8080], cidr("100.64.0.1/32"))])
    pods = [pod("ops", "p", ("100.64.2.2",), [g[0]])]
    return Scenario(
        "strict-node",
        policy([g], [], pods),
        interfaces(pods),
        RenderOptions(allow_node_to_pod=False, counters=True),
    )


def dispatched() -> Scenario:
    """Group chains dispatched by protocol and port (``secgroups.nft.dispatch``), both ways:
    the ``api`` group's ingress has a run of ten specific rules (overlapping TCP ranges, a
    port-less TCP rule, UDP, ICMP, ICMPv6, GRE), an All rule, then a run of three; with
    ``min_rules=3`` both runs are dispatched, the first through a segment chain. Its egress
    has two specific rules: too few, linear."""
    blocked = ipag_set("shop", "blocked", BLOCKED)
    web = sg_set("shop", "web", [WEB1[0], WEB2[0]], [WEB1[1], WEB2[1]])
    api = group(
        "shop",
        "api",
        [
            rule("shop/deny-blocked", IN, "All", remote=ref(blocked[0]), action=DENY),
            rule("shop/ssh-office", IN, "TCP", [22], cidr(OFFICE), priority=10),
            rule("shop/no-8080-office", IN, "TCP", [8080], cidr(OFFICE), priority=15, action=DENY),
            rule("shop/http", IN, "TCP", [80, 443], priority=20),
            rule("shop/alt-from-web", IN, "TCP", [(8000, 8090)], ref(web[0]), priority=20),
            rule("shop/tcp-office", IN, "TCP", remote=cidr(OFFICE), priority=30),
            rule("shop/dns", IN, "UDP", [53], priority=30),
            rule("shop/media", IN, "UDP", [(5000, 6000)], ref(web[0]), priority=30),
            rule("shop/ping", IN, "ICMP", icmp_type=8, priority=40),
            rule("shop/ping6", IN, "ICMP", icmp_type=128, priority=40, family=V6),
            rule("shop/gre-office", IN, "GRE", remote=cidr(OFFICE), priority=40),
            rule("shop/all-from-web", IN, "All", remote=ref(web[0]), priority=50),
            rule("shop/no-9000", IN, "TCP", [9000], priority=60, action=DENY),
            rule("shop/syslog", IN, "UDP", [514], priority=60),
            rule("shop/metrics", IN, "TCP", [9000, 9100], cidr(OFFICE), priority=70),
            rule("shop/no-smtp", EG, "TCP", [25], action=DENY, priority=5),
            rule("shop/dns-out", EG, "UDP", [53], priority=10),
            rule("shop/all4", EG, "All", priority=50),
        ],
    )
    pods = [pod("shop", "api-1", WEB1, [api[0]])]
    return Scenario(
        "dispatched",
        policy([api], [blocked, web], pods),
        interfaces(pods),
        RenderOptions(dispatch=Limits(min_rules=3)),
    )


def empty_node() -> Scenario:
    """No managed pod: only the static part (and empty sets and maps)."""
    return Scenario("empty-node", policy([], [], []), {})


SCENARIOS = (default_group, web_and_db, strict_node, dispatched, empty_node)
