"""Group chains dispatched by protocol and port (``secgroups.nft.dispatch``): same verdicts.

* a property: for random groups of up to 40 rules (overlapping port ranges, port-less
  TCP/UDP rules, All rules between runs, ICMP with and without type, GRE, Allow and Deny)
  and packets aimed at every port edge (and port 0 or no port at all), the tracer over the
  dispatched table gives exactly what it gives over the linear one: verdict, deciding
  rule, ``ct mark``. The linear table is itself checked against the evaluator
  (``test_nft_properties.py``, which also traces the dispatched layout);
* the shape: pieces of the port space, deduplicated sub-chains, segment chains, the
  limits that keep a chain linear, content-addressed names, port sets left out.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests import nftcases as nc

from secgroups import naming
from secgroups.compiled import CompiledPolicy, CompiledRule
from secgroups.models import Action, Direction, IPFamily, Protocol
from secgroups.nft import names
from secgroups.nft.dispatch import Limits
from secgroups.nft.objects import Map, Ruleset
from secgroups.nft.reading import ICMP, ICMPV6, TCP, UDP, UnsupportedTextError
from secgroups.nft.rendering import RenderOptions, render
from secgroups.nft.tracing import TracePacket, Tracer, UnsupportedShapeError

GRE = 47
POD4, POD6 = "100.64.1.2", "fd64:5ec:0:1::2"
REMOTES = {
    4: ["192.0.2.1", "192.0.2.200", "198.51.100.7", "100.64.1.9"],
    6: ["2001:db8::1", "2001:db8::ff", "fd64:5ec:0:1::9"],
}
CIDRS = {4: ["192.0.2.0/25", "198.51.100.7/32", "0.0.0.0/0"], 6: ["2001:db8::/127", "::/0"]}
SPANS = [(22, 22), (80, 80), (79, 81), (443, 443), (1, 1024), (8000, 8080), (8080, 8090)]
SPANS += [(65535, 65535), (53, 53), (5000, 6000), (5500, 5500)]
MEMBERS = ("192.0.2.200", "100.64.1.9", "2001:db8::ff")
DISPATCH_ALWAYS = Limits(min_rules=1, max_growth=1e9)


@st.composite
def rules(draw: st.DrawFn, n: int) -> CompiledRule:
    family = draw(st.sampled_from((IPFamily.IPV4, IPFamily.IPV4, IPFamily.IPV6)))
    v = family.version
    protocol = draw(
        st.sampled_from([Protocol.TCP] * 4 + [Protocol.UDP] * 2 + list(Protocol))
    )  # mostly TCP/UDP: the dispatched protocols
    ports: list[tuple[int, int]] = []
    if protocol in (Protocol.TCP, Protocol.UDP) and draw(st.integers(0, 3)):
        ports = draw(st.lists(st.sampled_from(SPANS), min_size=1, max_size=3, unique=True))
    icmp_type = icmp_code = None
    if protocol is Protocol.ICMP and draw(st.booleans()):
        icmp_type = draw(st.sampled_from((8, 0) if v == 4 else (128, 129)))
        icmp_code = draw(st.sampled_from((None, 0)))
    remote = draw(
        st.sampled_from(
            [nc.ANY, nc.ANY, nc.ref("sg.x.members"), nc.ref("sg.x.missing")]
            + [nc.cidr(c) for c in CIDRS[v]]
        )
    )
    return nc.rule(
        f"x/r{n}",
        draw(st.sampled_from((Direction.INGRESS, Direction.INGRESS, Direction.EGRESS))),
        protocol,
        ports,
        remote,
        action=draw(st.sampled_from((Action.ALLOW, Action.ALLOW, Action.DENY))),
        priority=draw(st.integers(1, 5)),  # ties: Deny first, then by id (S-X-1)
        family=family,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
    )


@st.composite
def big_groups(draw: st.DrawFn) -> CompiledPolicy:
    n = draw(st.integers(1, 40))
    group = nc.group("x", "g", [draw(rules(i)) for i in range(n)])
    members = nc.sg_set("x", "members", [m for m in MEMBERS if ":" not in m], ["2001:db8::ff"])
    pod = nc.pod("x", "p", (POD4, POD6), [group[0]], epoch=1)
    return nc.policy([group], [members], [pod])


def _packets(policy: CompiledPolicy) -> list[TracePacket]:
    """Every protocol both ways; TCP/UDP at every edge of every span the group uses, port 0
    and no port at all; the remote address cycles through members, CIDRs and others."""
    ports: set[int] = {0, 1, 65535}
    for g in policy.groups.values():
        for r in (*g.ingress, *g.egress):
            for s in r.ports:
                ports.update((s.lo - 1, s.lo, s.hi, min(s.hi + 1, 65535)))
    cases: list[tuple[int, int | None, int | None]] = [(GRE, None, None), (132, None, None)]
    cases += [(proto, port, None) for proto in (TCP, UDP) for port in [None, *sorted(ports)]]
    out = []
    for v in (4, 6):
        pod = ipaddress.ip_address(POD4 if v == 4 else POD6)
        icmp = ICMP if v == 4 else ICMPV6
        types = (8, 0) if v == 4 else (128, 129)
        for i, (proto, port, itype) in enumerate([*cases, *((icmp, None, t) for t in types)]):
            remote = ipaddress.ip_address(REMOTES[v][i % len(REMOTES[v])])
            code = None if itype is None else 0
            out.append(TracePacket(remote, pod, proto, port, itype, code, nc.UPLINK, "veth-p"))
            out.append(TracePacket(pod, remote, proto, port, itype, code, "veth-p", nc.UPLINK))
    return out


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    big_groups(), st.sampled_from([DISPATCH_ALWAYS, Limits(), Limits(min_rules=3, max_growth=2)])
)
def test_dispatch_changes_no_verdict(policy: CompiledPolicy, limits: Limits) -> None:
    linear = Tracer(
        render(policy, nc.NODE, {POD4: "veth-p", POD6: "veth-p"}, RenderOptions(dispatch=None))
    )
    fast = render(policy, nc.NODE, {POD4: "veth-p", POD6: "veth-p"}, RenderOptions(dispatch=limits))
    dispatched = Tracer(fast)
    for packet in _packets(policy):
        want, got = linear.trace(packet), dispatched.trace(packet)
        context = f"{want.explain()}\n--- dispatched:\n{got.explain()}"
        assert got.verdict == want.verdict, context
        for base in ("egress_fwd", "ingress_fwd"):
            assert got.decided_by(base) == want.decided_by(base), context
        assert got.ct_mark == want.ct_mark, context


# ----------------------------------------------------------------------------- shape

D = nc.dispatched()
API = naming.compiled_group_name("shop", "api")


def _render(options: RenderOptions = D.options, policy: CompiledPolicy = D.policy) -> Ruleset:
    return render(policy, nc.NODE, D.pod_interfaces, options)


def _chain_in(rs: Ruleset) -> str:
    return names.group_chain(API, "shop", "api", Direction.INGRESS)


def test_pieces_hold_the_rules_that_match_all_of_them_in_order() -> None:
    rs = _render()
    maps = {s.name: s for s in rs.sets if isinstance(s, Map)}
    first = rs.chain(_chain_in(rs)).rules[1]  # jump to the first segment's chain
    segment = rs.chain(first.text().split()[-1])
    tcp = maps[segment.rules[0].text().split("@")[1]]
    pieces = {el.key_text(): rs.chain(el.text().split()[-1]) for el in tcp.elements}
    assert list(pieces) == ["22", "80", "443", "8000-8079", "8080", "8081-8090"]
    comments = {k: [r.comment for r in c.rules] for k, c in pieces.items()}
    assert comments["8080"] == ["shop/no-8080-office", "shop/alt-from-web", "shop/tcp-office"]
    assert comments["8000-8079"] == ["shop/alt-from-web", "shop/tcp-office"]
    assert pieces["80"] is pieces["443"] or pieces["80"].name == pieces["443"].name  # deduplicated
    # The port-less TCP rule also takes every port without an element (and port 0).
    assert (
        segment.rules[1].text()
        == f"meta l4proto tcp goto {rs.chain(segment.rules[1].text().split()[-1]).name}"
    )
    # Sub-chain rules lost their protocol and port match, nothing else.
    assert all(
        "dport" not in r.text() and "l4proto" not in r.text()
        for c in pieces.values()
        for r in c.rules
    )


def test_port_sets_of_dispatched_rules_are_not_rendered() -> None:
    policy = D.policy
    spec = policy.groups[API]
    extra = nc.rule("shop/list", nc.IN, "TCP", [25, 587], priority=35)
    groups = {**policy.groups, API: spec.model_copy(update={"ingress": (*spec.ingress, extra)})}
    changed = policy.model_copy(update={"groups": groups})
    assert any(
        s.name.startswith("ps_") for s in _render(RenderOptions(dispatch=None), changed).sets
    )
    assert not any(s.name.startswith("ps_") for s in _render(D.options, changed).sets)


def test_limits_keep_small_or_costly_runs_linear() -> None:
    linear = _render(RenderOptions(dispatch=None))
    assert not any(s.name.startswith("gd_") for s in linear.sets)
    assert _render(RenderOptions(dispatch=Limits(min_rules=11))).rule_count == linear.rule_count
    first_run_only = _render(RenderOptions(dispatch=Limits(min_rules=4)))
    chain = first_run_only.chain(_chain_in(first_run_only))
    assert chain.rules[1].text().startswith("jump ") and chain.rules[-1].comment == "shop/metrics"
    # A port rule over a range copied into several pieces: growth 1.0 forbids it.
    assert (
        _render(RenderOptions(dispatch=Limits(min_rules=3, max_growth=1.0))).rule_count
        < _render().rule_count
    )


def test_names_are_content_addressed() -> None:
    """A changed rule gives new sub-chains and a new map only where it is; the others keep
    their names (so a diff touches only those, and never edits a live interval map)."""
    before = _render()
    spec = D.policy.groups[API]
    ingress = tuple(
        r.model_copy(update={"ports": (nc.PortSpan(lo=5353, hi=5353),)})
        if r.id == "shop/dns"
        else r
        for r in spec.ingress
    )
    groups = {**D.policy.groups, API: spec.model_copy(update={"ingress": ingress})}
    after = _render(policy=D.policy.model_copy(update={"groups": groups}))
    old = {o.name for o in before.objects}
    new = {o.name for o in after.objects}
    gone, came = sorted(old - new), sorted(new - old)
    assert [n for n in gone if n.startswith("gd_")] == [m for m in gone if "_udp_" in m]
    assert len([n for n in came if n.startswith("gd_")]) == 1
    assert all(not n.startswith("gd_") or "_udp_" in n for n in came)
    assert render(D.policy, nc.NODE, D.pod_interfaces, D.options) == before  # deterministic


# ----------------------------------------------------------------------------- tracer


def test_the_tracer_models_port_dispatch_strictly() -> None:
    text = _render().text()
    tracer = Tracer(text)
    web1 = ipaddress.ip_address(nc.WEB1[0])
    office = ipaddress.ip_address("203.0.113.9")
    got = tracer.trace(TracePacket(office, web1, TCP, 8080, iif=nc.UPLINK, oif="veth-api-1"))
    assert got.verdict == "drop" and got.decided_by("ingress_fwd") == "shop/no-8080-office"
    got = tracer.trace(TracePacket(office, web1, TCP, 0, iif=nc.UPLINK, oif="veth-api-1"))
    assert got.decided_by("ingress_fwd") == "shop/tcp-office"  # no element: port-less rules
    hashed = text.replace(
        "\t\ttype inet_service : verdict\n\t\tflags interval\n", "\t\ttype inet_service : verdict\n"
    )
    with pytest.raises(UnsupportedShapeError):
        Tracer(hashed).trace(TracePacket(office, web1, TCP, 22, iif=nc.UPLINK, oif="veth-api-1"))
    dangling = re.sub(r"(22 : goto )g_\w+", r"\1pod_ingress_nowhere", text)
    with pytest.raises(UnsupportedShapeError, match="bad jump target"):
        Tracer(dangling)
    with pytest.raises(UnsupportedTextError, match="unknown token 'th'"):
        Tracer(text.replace("\t\ttcp dport vmap @", "\t\tth dport vmap @", 1))
