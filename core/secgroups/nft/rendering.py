"""Render one node's compiled policy into the desired nftables :class:`Ruleset`.

Role: the pure function between the compiled objects (``secgroups.compiled``) and
the node agent, which turns the result into an nft transaction
(``transactions``) and runs it. The layout is documented in ``docs/nftables.md``:

* one table ``inet secgroups``; static base chains; per-pod state only in set and
  map elements, so a pod that comes or goes changes elements, not rules;
* anti-spoofing in ``prerouting`` at ``raw`` (before conntrack), by
  ``{interface . source IP}`` pairs of every routed pod address (``pod_interfaces``:
  managed pods or not), and no local pod address from another interface;
* policy gates by pod **IP** (``pods4``/``pods6``), not by interface, so a pod is
  enforced as soon as its IP is in the node object, whatever the CNI;
* one chain per group and direction (``g_…_in``/``g_…_eg``), shared by all pods of
  the group, rules in compiled order with terminal verdicts (S-X-1: first match
  wins; a chain that matches nothing returns); runs of protocol-specific rules
  dispatched by protocol and destination port to sub-chains that hold only the
  rules that can match (``dispatch``; same verdicts, fewer rules walked); one chain
  per distinct ordered group list (``gl_…``) that jumps to each group and ends in
  ``drop`` (S-X-2);
* egress (``filter + 10``) and ingress (``filter + 20``) as separate base chains on
  ``forward``, so same-node pod→pod traffic is checked by both
  (docs/nftables.md#an-accept-ends-only-its-base-chain);
* stateful (S-X-3) with the epoch stamp for S-CT-2 (docs/nftables.md, "Epochs": a pod's
  mark is ``epochs.pod_mark`` of its epoch and of its groups' and sets' re-check counters)
  and the TCP non-SYN guard; ``ct timeout`` objects for S-CT-3 on new pod flows.

Neighbours: ``basechains`` (the static part), ``names`` (object names), ``epochs``
(mark values), ``dispatch`` (group chains by protocol and port), ``statements``,
``elements`` and ``objects`` (what is built),
``transactions`` (what the agent applies), ``tracing`` (runs packets through it).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from secgroups.compiled import (
    CompiledAddressSetSpec,
    CompiledGroupSpec,
    CompiledNodeSpec,
    CompiledPod,
    CompiledPolicy,
    CompiledRule,
    RemoteKind,
    SourceKind,
)
from secgroups.compiling import gc_paused
from secgroups.models import Action, Direction, Protocol
from secgroups.naming import bounded
from secgroups.nft import names
from secgroups.nft.basechains import FAMILIES, static_objects
from secgroups.nft.dispatch import Classified, Limits, dispatch_chain
from secgroups.nft.elements import DataType, Element, Ifname, Mark, element
from secgroups.nft.epochs import pod_mark
from secgroups.nft.names import fam
from secgroups.nft.objects import (
    Chain,
    Map,
    Ruleset,
    Set,
    Table,
    TableObject,
)
from secgroups.nft.sealing import seal_set
from secgroups.nft.statements import (
    ACCEPT,
    DROP,
    AddrField,
    AddrMatch,
    Counter,
    CtMarkSetFromMap,
    Family,
    IcmpMatch,
    L4Proto,
    MetaL4proto,
    MetaNfproto,
    Part,
    PortMatch,
    Rule,
    SetRef,
    jump,
)
from secgroups.ports import PortRange, merge_ranges

# S-CT-3. "FIN-WAIT 30 s" is read as the whole closing phase
# (docs/nftables.md#conntrack-timeouts-and-ct-timeout-objects).
TCP_TIMEOUTS: tuple[tuple[str, int], ...] = (
    ("established", 600),
    ("fin_wait", 30),
    ("close_wait", 30),
    ("last_ack", 30),
    ("time_wait", 30),
)
UDP_TIMEOUTS: tuple[tuple[str, int], ...] = (("unreplied", 30), ("replied", 180))

# A remote security group's members go into a hash set of single addresses; the
# compiled set holds them collapsed into CIDRs, which we expand back. Pod IPs are
# at most 6,000 per group (S-L-2); this bound only guards against a wrong input.
MAX_HASH_SET_ADDRESSES = 1 << 16


class RenderError(ValueError):
    """The compiled input cannot be rendered (a missing group or set, duplicate pod IPs, …)."""


@dataclass(frozen=True)
class RenderOptions:
    """Node-level knobs of the ruleset (Helm values of the agent)."""

    allow_node_to_pod: bool = True  # kubelet probes etc.; k8s says pods cannot block their node
    tcp_timeouts: tuple[tuple[str, int], ...] = TCP_TIMEOUTS
    udp_timeouts: tuple[tuple[str, int], ...] = UDP_TIMEOUTS
    counters: bool = False  # a `counter` on every compiled rule (per-rule hit statistics)
    # Group chains dispatched by protocol and destination port where it pays (``dispatch``);
    # None: every group chain is one linear list of rules.
    dispatch: Limits | None = field(default_factory=Limits)
    table: Table = field(default_factory=Table)


@dataclass
class _Context:
    """What rendering the group rules discovers: the address-set twins and port sets used."""

    policy: CompiledPolicy
    counters: bool
    dispatch: Limits | None = None
    address_sets: dict[tuple[str, Family], str] = field(default_factory=dict)
    port_sets: dict[tuple[PortRange, ...], str] = field(default_factory=dict)

    def address_set(self, key: str, family: Family) -> str | None:
        """The nft set of one family of compiled set ``key``; None if the set is missing."""
        spec = self.policy.sets.get(key)
        if spec is None:
            return None
        is_group = spec.source_kind is SourceKind.SECURITY_GROUP
        name = names.address_set(key, spec.source.namespace, spec.source.name, is_group, family)
        self.address_sets[(key, family)] = name
        return name

    def port_set(self, ranges: tuple[PortRange, ...]) -> str:
        return self.port_sets.setdefault(ranges, names.port_set(ranges))


def render(
    policy: CompiledPolicy,
    node: str,
    pod_interfaces: Mapping[str, str],
    options: RenderOptions | None = None,
    *,
    pending: Iterable[str] = (),
) -> Ruleset:
    """The whole desired ``table inet secgroups`` of ``node``.

    ``policy`` may be the cluster policy or its node slice (``for_node``); only the
    groups of the node's pods and the sets their rules use are rendered.
    ``pod_interfaces`` maps every routed pod address of the node, managed or not, to
    its host-side interface (the agent reads them from host routes): each interface may
    send only its own addresses, and those addresses arrive from nowhere else. Managed
    pods whose IP is missing there are still enforced (the gates match IPs) but not
    anti-spoofed (a CNI without host routes: a bridge).
    References that cannot be resolved are rendered as absent, as the evaluator
    judges them: a missing group is skipped in its pods' group lists, a rule whose
    remote set is missing matches nothing (and is left out), a CIDR of the other
    family never matches. Two pods with one IP: the later in (namespace, name)
    order owns it, as in the evaluator. ``pending`` are the IPs behind the fail-closed
    placeholder (docs/cni.md): pods the CNI plugin announced whose own policy is not in
    force yet; the node agent decides which. Raises :class:`RenderError` only for input
    nft cannot hold (a malformed IP or interface name, an oversized member set).
    """
    # gc paused: a cold render allocates ~10 objects per set member and no cycles; the
    # collections it triggers walked the heap for ~1/3 of the time (bench/nft_render.py).
    with gc_paused():
        return _render(policy, node, pod_interfaces, options or RenderOptions(), pending)


def clear_cache() -> None:
    """Forget the memoised address sets (benchmarks of a cold render; tests)."""
    _address_set.cache_clear()


def _render(
    policy: CompiledPolicy,
    node: str,
    pod_interfaces: Mapping[str, str],
    opts: RenderOptions,
    pending: Iterable[str] = (),
) -> Ruleset:
    spec = policy.nodes.get(node) or CompiledNodeSpec(node=node)
    ctx = _Context(policy=policy, counters=opts.counters, dispatch=opts.dispatch)
    objects: list[TableObject] = []

    pods = sorted(spec.pods, key=lambda p: (p.namespace, p.name))
    used_groups = sorted({g for pod in pods for g in pod.groups if g in policy.groups})
    for key in used_groups:
        objects.extend(_group_objects(key, policy.groups[key], ctx))

    used = {r.name for obj in objects for r in obj.refs()}  # dispatched rules drop port sets
    objects.extend(_address_sets(ctx))
    objects.extend(
        Set(
            name,
            (DataType.INET_SERVICE,),
            interval=True,
            elements=tuple(element(r) for r in ranges),
        )
        for ranges, name in ctx.port_sets.items()
        if name in used
    )
    objects.extend(pod_objects(policy.groups, policy.sets, pods))
    objects.extend(antispoof_sets(pod_interfaces))
    objects.append(seal_set())  # empty: the agent writes the seal (sealing.py)
    objects.extend(pending_sets(pending))
    objects.extend(static_objects(opts.allow_node_to_pod, opts.tcp_timeouts, opts.udp_timeouts))
    return Ruleset.of(opts.table, objects)


# ----------------------------------------------------------------------------- groups


def _group_chain_name(key: str, group: CompiledGroupSpec, direction: Direction) -> str:
    return names.group_chain(key, group.group.namespace, group.group.name, direction)


def _group_objects(key: str, group: CompiledGroupSpec, ctx: _Context) -> list[Chain | Map]:
    """The group's chain per direction, plus the sub-chains and maps of its dispatch."""
    out: list[Chain | Map] = []
    for direction in Direction:
        rules: list[Classified] = []
        for rule in group.rules(direction):  # compiled match order, kept exactly (S-X-1)
            if rule.direction is not direction:
                raise RenderError(f"rule {rule.id} of {key} is listed under {direction}")
            rules.extend(_compiled_rule(rule, ctx))
        done = dispatch_chain(_group_chain_name(key, group, direction), rules, ctx.dispatch)
        out += [done.chain, *done.chains, *done.maps]
    return out


def _compiled_rule(rule: CompiledRule, ctx: _Context) -> list[Classified]:
    """One compiled rule as nft rules (one per inline CIDR), all with the same terminal verdict,
    each with what it requires of the packet's protocol and port (for ``dispatch``)."""
    family: Family = rule.family.version
    field_ = AddrField.SADDR if rule.direction is Direction.INGRESS else AddrField.DADDR
    remote = rule.remote
    addrs: list[Part]
    if remote.kind is RemoteKind.ANY:
        addrs = [MetaNfproto(family)]
    elif remote.kind is RemoteKind.CIDR:
        nets = [n for n in remote.networks() if n.version == family]
        addrs = [AddrMatch(family, field_, n) for n in nets]  # none: the rule matches nothing
    else:
        name = None if remote.set is None else ctx.address_set(remote.set, family)
        addrs = [] if name is None else [AddrMatch(family, field_, SetRef(name))]

    proto = _protocol_parts(rule, family, ctx)
    l4, ports = _l4(rule, family)
    tail: list[Part] = [Counter()] if ctx.counters else []
    if rule.action is Action.DENY:
        tail.append(DROP)
    elif rule.direction is Direction.INGRESS:
        tail += [CtMarkSetFromMap(family, SetRef(fam("in_epoch", family))), ACCEPT]
    else:
        tail.append(ACCEPT)
    comment = bounded(
        "".join(c if c.isprintable() and c not in '"\\' else "_" for c in rule.id), 128
    )
    return [Classified(Rule((addr, *proto, *tail), comment or None), l4, ports) for addr in addrs]


def _l4(rule: CompiledRule, family: Family) -> tuple[L4Proto | None, tuple[PortRange, ...] | None]:
    """The protocol (None: any) and destination ports (None: every port) a rule matches."""
    if rule.protocol in (Protocol.TCP, Protocol.UDP):
        ranges = merge_ranges(PortRange(s.lo, s.hi) for s in rule.ports)
        return (L4Proto.TCP if rule.protocol is Protocol.TCP else L4Proto.UDP), ranges or None
    if rule.protocol is Protocol.ICMP:
        return (L4Proto.ICMP if family == 4 else L4Proto.ICMPV6), None
    if rule.protocol is Protocol.GRE:
        return L4Proto.GRE, None
    return None, None


def _protocol_parts(rule: CompiledRule, family: Family, ctx: _Context) -> list[Part]:
    if rule.ports and rule.protocol not in (Protocol.TCP, Protocol.UDP):
        raise RenderError(f"rule {rule.id}: ports on protocol {rule.protocol}")
    if rule.protocol in (Protocol.TCP, Protocol.UDP):
        l4 = L4Proto.TCP if rule.protocol is Protocol.TCP else L4Proto.UDP
        ranges = merge_ranges(PortRange(s.lo, s.hi) for s in rule.ports)
        if not ranges:
            return [MetaL4proto(l4)]
        if len(ranges) == 1:
            return [PortMatch(l4, ranges[0])]
        # A named set, never an anonymous one (docs/nftables.md, "Anonymous sets ...").
        return [PortMatch(l4, SetRef(ctx.port_set(ranges)))]
    if rule.protocol is Protocol.ICMP:
        if rule.icmp_type is None and rule.icmp_code is None:
            return [MetaL4proto(L4Proto.ICMP if family == 4 else L4Proto.ICMPV6)]
        return [IcmpMatch(family, rule.icmp_type, rule.icmp_code)]
    if rule.protocol is Protocol.GRE:
        return [MetaL4proto(L4Proto.GRE)]
    return []


def _address_sets(ctx: _Context) -> Iterable[Set]:
    for (key, family), name in sorted(ctx.address_sets.items()):
        spec = ctx.policy.sets[key]
        cidrs = spec.ipv4 if family == 4 else spec.ipv6
        try:
            yield _address_set(name, family, spec.source_kind is SourceKind.SECURITY_GROUP, cidrs)
        except ValueError as exc:
            raise RenderError(f"address set {key} ({spec.source}): {exc}") from None


@functools.lru_cache(maxsize=256)
def _address_set(name: str, family: Family, is_group: bool, cidrs: tuple[str, ...]) -> Set:
    """One nft address set. Memoised: the sets are the bulk of a node's ruleset (120k of
    its 121k elements in the reference node of docs/performance.md) and rarely change between
    two renders, so an agent's re-render costs a hash of each member list, not a rebuild."""
    dtype = DataType.IPV4_ADDR if family == 4 else DataType.IPV6_ADDR
    if is_group:
        return Set(name, (dtype,), elements=tuple(element(ip) for ip in _hosts(cidrs, family)))
    nets = [ipaddress.ip_network(c) for c in cidrs]
    return Set(name, (dtype,), interval=True, elements=tuple(element(n) for n in nets))


def _hosts(
    cidrs: Iterable[str], family: Family
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address of ``cidrs`` (member IPs, collapsed by the compiler), in order.

    IPv4 is parsed by hand: ``ipaddress.ip_network`` costs tens of µs per call, and a
    node may hold 20 sets of 6,000 members (the reference node of docs/performance.md).
    """
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    bits = 32 if family == 4 else 128
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    for cidr in cidrs:
        addr, _, plen = cidr.partition("/")
        length = int(plen) if plen else bits
        if family == 4:
            a, b, c, d = map(int, addr.split("."))
            if not (0 <= a <= 255 and 0 <= b <= 255 and 0 <= c <= 255 and 0 <= d <= 255):
                raise ValueError(f"bad IPv4 address in {cidr!r}")
            base = a << 24 | b << 16 | c << 8 | d
        else:
            base = int(ipaddress.IPv6Address(addr))
        if not 0 <= length <= bits:
            raise ValueError(f"bad prefix length in {cidr!r}")
        if length == bits:
            out.append(make(base))
            continue
        size = 1 << (bits - length)
        if len(out) + size > MAX_HASH_SET_ADDRESSES:
            raise ValueError(f"expands beyond {MAX_HASH_SET_ADDRESSES} IPs")
        base &= ~(size - 1)
        out.extend([make(base + i) for i in range(size)])
    if len(out) > MAX_HASH_SET_ADDRESSES:
        raise ValueError(f"expands beyond {MAX_HASH_SET_ADDRESSES} IPs")
    return out


# ----------------------------------------------------------------------------- pods


def pod_objects(
    groups: Mapping[str, CompiledGroupSpec],
    sets: Mapping[str, CompiledAddressSetSpec],
    pods: Iterable[CompiledPod],
) -> Iterable[TableObject]:
    """What ``pods`` put in the table: their group-list chains, and the pod containers
    (``pods4/6``, the dispatch maps, ``in_epoch4/6``, ``in_valid4/6``) holding their
    elements only. ``groups`` and ``sets`` are the node's compiled objects (a group's
    name and chains, the re-check counters in a pod's mark); the groups' own chains and
    the address sets are not rendered here. ``render`` calls it for all of a node's pods;
    the agent for one pod whose part changed (its marks after a counter was raised), which
    costs a fraction of a whole render. Two pods with one IP: the later in (namespace,
    name) order owns it. Raises :class:`RenderError` for a malformed pod IP."""
    pods = sorted(pods, key=lambda p: (p.namespace, p.name))
    el: dict[str, list[Element]] = {}
    owner: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, CompiledPod] = {}
    lists: dict[tuple[str, ...], tuple[str, str]] = {}
    chains: list[Chain] = []
    marks: dict[tuple[str, str], Mark] = {}

    for pod in pods:
        for text in pod.ips:
            try:
                owner[ipaddress.ip_address(text)] = pod
            except ValueError:
                raise RenderError(f"pod {pod.namespace}/{pod.name}: bad IP {text!r}") from None

    for ip, pod in sorted(owner.items(), key=lambda item: (item[0].version, int(item[0]))):
        used = tuple(g for g in pod.groups if g in groups)
        if used not in lists:
            readable = [groups[g].group.name for g in used] or ["none"]
            gl = {d: names.group_list_chain(used, readable, d) for d in Direction}
            lists[used] = (gl[Direction.INGRESS], gl[Direction.EGRESS])
            for d in Direction:
                jumps = [Rule((jump(_group_chain_name(g, groups[g], d)),)) for g in used]
                chains.append(Chain(gl[d], (*jumps, Rule((DROP,), "no rule matched (S-X-2)"))))
        gl_in, gl_eg = lists[used]
        key = (pod.namespace, pod.name)
        if key not in marks:  # its epoch and its groups' and sets' re-check counters
            marks[key] = Mark(pod_mark(pod, groups, sets))
        mark = marks[key]
        f: Family = 4 if ip.version == 4 else 6
        el.setdefault(fam("pods", f), []).append(element(ip))
        el.setdefault(fam("eg_disp", f), []).append(element(ip, value=jump(gl_eg)))
        el.setdefault(fam("in_disp", f), []).append(element(ip, value=jump(gl_in)))
        el.setdefault(fam("in_epoch", f), []).append(element(ip, value=mark))
        el.setdefault(fam("in_valid", f), []).append(element(ip, mark))

    yield from chains
    for f in FAMILIES:
        addr = DataType.IPV4_ADDR if f == 4 else DataType.IPV6_ADDR
        yield Set(fam("pods", f), (addr,), elements=tuple(el.get(fam("pods", f), ())))
        for disp in ("eg_disp", "in_disp"):
            yield Map(fam(disp, f), (addr,), DataType.VERDICT, tuple(el.get(fam(disp, f), ())))
        yield Map(fam("in_epoch", f), (addr,), DataType.MARK, tuple(el.get(fam("in_epoch", f), ())))
        yield Set(
            fam("in_valid", f),
            (addr, DataType.MARK),
            elements=tuple(el.get(fam("in_valid", f), ())),
        )


def antispoof_sets(pod_interfaces: Mapping[str, str]) -> tuple[Set, ...]:
    """The anti-spoofing sets (``basechains``; docs/nftables.md, "Anti-spoofing") of every
    routed pod address of the node, managed or not: ``pod_ifaces`` (the interfaces),
    ``pod_src4/6`` ({interface . address}) and ``pod_addrs4/6`` (the addresses).
    Raises :class:`RenderError` for a malformed IP or interface name."""
    ifaces: set[str] = set()
    src: dict[Family, list[Element]] = {4: [], 6: []}
    addrs: dict[Family, list[Element]] = {4: [], 6: []}
    for text, iface in pod_interfaces.items():
        try:
            ip = ipaddress.ip_address(text)
        except ValueError as exc:
            raise RenderError(f"pod_interfaces: {exc}") from None
        try:
            ifname = Ifname(iface)
        except ValueError as exc:
            raise RenderError(f"pod_interfaces: {text}: {exc}") from None
        f: Family = 4 if ip.version == 4 else 6
        ifaces.add(iface)
        src[f].append(element(ifname, ip))
        addrs[f].append(element(ip))
    out = [
        Set(
            names.POD_IFACES, (DataType.IFNAME,), elements=tuple(element(Ifname(i)) for i in ifaces)
        )
    ]
    for f in FAMILIES:
        addr = DataType.IPV4_ADDR if f == 4 else DataType.IPV6_ADDR
        out.append(Set(fam("pod_src", f), (DataType.IFNAME, addr), elements=tuple(src[f])))
        out.append(Set(fam(names.POD_ADDRS, f), (addr,), elements=tuple(addrs[f])))
    return tuple(out)


def pending_sets(ips: Iterable[str]) -> tuple[Set, Set]:
    """``pending4`` and ``pending6``: the IPs behind the fail-closed placeholder
    (``basechains``; docs/cni.md). Raises :class:`RenderError` for a malformed IP."""
    by_family: dict[Family, list[Element]] = {4: [], 6: []}
    for text in ips:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise RenderError(f"pending pod IP {text!r} is not an IP address") from None
        by_family[4 if ip.version == 4 else 6].append(element(ip))
    return (
        Set(fam(names.PENDING, 4), (DataType.IPV4_ADDR,), elements=tuple(by_family[4])),
        Set(fam(names.PENDING, 6), (DataType.IPV6_ADDR,), elements=tuple(by_family[6])),
    )
