"""Typed nft objects: one serialiser each, canonical element order, closed references; epochs."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secgroups.nft.elements import DataType, Ifname, Mark, element
from secgroups.nft.epochs import MARK_TOMBSTONE, MARK_UNSTAMPED, epoch_mark
from secgroups.nft.objects import (
    BaseSpec,
    Chain,
    CtTimeout,
    Hook,
    Map,
    Priority,
    Ruleset,
    Set,
    Table,
)
from secgroups.nft.statements import (
    ACCEPT,
    DROP,
    AddrField,
    AddrMatch,
    CtMarkSetFromMap,
    CtState,
    CtStateMatch,
    CtTimeoutSet,
    DaddrMarkInSet,
    IcmpMatch,
    Icmpv6TypeIn,
    Iface,
    IfaceInSet,
    IfaceSaddrInSet,
    L4Proto,
    MetaNfproto,
    Part,
    PortMatch,
    Rule,
    SetRef,
    TcpNotSyn,
    VmapLookup,
    goto,
    jump,
)
from secgroups.ports import PortRange

NET = ipaddress.ip_network
IP = ipaddress.ip_address


@pytest.mark.parametrize(
    ("part", "text"),
    [
        pytest.param(MetaNfproto(6), "meta nfproto ipv6", id="nfproto"),
        pytest.param(
            AddrMatch(4, AddrField.SADDR, NET("192.0.2.0/24")), "ip saddr 192.0.2.0/24", id="cidr"
        ),
        pytest.param(
            AddrMatch(6, AddrField.DADDR, NET("2001:db8::1/128")),
            "ip6 daddr 2001:db8::1",
            id="host-v6",
        ),
        pytest.param(
            AddrMatch(4, AddrField.DADDR, SetRef("rg_x_4"), negate=True),
            "ip daddr != @rg_x_4",
            id="set-negated",
        ),
        pytest.param(
            PortMatch(L4Proto.UDP, PortRange(8000, 8080)), "udp dport 8000-8080", id="port-range"
        ),
        pytest.param(PortMatch(L4Proto.TCP, SetRef("ps_a")), "tcp dport @ps_a", id="port-set"),
        pytest.param(IcmpMatch(4, 8, 0), "icmp type 8 icmp code 0", id="icmp-type-code"),
        pytest.param(IcmpMatch(6, None, 4), "icmpv6 code 4", id="icmpv6-code-only"),
        pytest.param(
            Icmpv6TypeIn(("nd-neighbor-solicit", "nd-neighbor-advert")),
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }",
            id="nd-types",
        ),
        pytest.param(
            CtStateMatch(frozenset({CtState.RELATED, CtState.ESTABLISHED})),
            "ct state established,related",
            id="ct-states-in-nft-order",
        ),
        pytest.param(
            CtStateMatch(frozenset({CtState.NEW}), negate=True),
            "ct state != new",
            id="ct-state-negated",
        ),
        pytest.param(TcpNotSyn(), "tcp flags & (fin|syn|rst|ack) != syn", id="non-syn-guard"),
        pytest.param(
            IfaceInSet(Iface.OIF, SetRef("pod_ifaces"), negate=True),
            "oifname != @pod_ifaces",
            id="oifname",
        ),
        pytest.param(
            IfaceSaddrInSet(6, SetRef("pod_src6")),
            "iifname . ip6 saddr @pod_src6",
            id="anti-spoof-pair",
        ),
        pytest.param(
            DaddrMarkInSet(4, SetRef("in_valid4")),
            "ip daddr . ct mark @in_valid4",
            id="epoch-fast-path",
        ),
        pytest.param(
            CtMarkSetFromMap(6, SetRef("in_epoch6")),
            "ct mark set ip6 daddr map @in_epoch6",
            id="stamp",
        ),
        pytest.param(CtTimeoutSet("tcp4_x"), 'ct timeout set "tcp4_x"', id="ct-timeout"),
        pytest.param(
            VmapLookup(4, AddrField.SADDR, SetRef("eg_disp4")), "ip saddr vmap @eg_disp4", id="vmap"
        ),
        pytest.param(goto("gl_a_in"), "goto gl_a_in", id="goto"),
    ],
)
def test_part_text(part: Part, text: str) -> None:
    assert part.text() == text


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: AddrMatch(4, AddrField.SADDR, NET("2001:db8::/32")), id="family-mismatch"
        ),
        pytest.param(lambda: PortMatch(L4Proto.GRE, PortRange(1, 2)), id="ports-on-gre"),
        pytest.param(lambda: IcmpMatch(4, None, None), id="empty-icmp"),
        pytest.param(lambda: Icmpv6TypeIn(("nd-bogus",)), id="unknown-icmpv6-name"),
        pytest.param(lambda: SetRef("Bad-Name"), id="bad-set-name"),
        pytest.param(lambda: jump("fwd x"), id="bad-chain-name"),
        pytest.param(lambda: Rule((ACCEPT, DROP)), id="verdict-not-last"),
        pytest.param(lambda: Rule((DROP,), 'say "hi"'), id="quote-in-comment"),
        pytest.param(lambda: Rule((DROP,), "x" * 129), id="comment-too-long"),
        pytest.param(lambda: Ifname("veth-with-a-long-name"), id="ifname-too-long"),
        pytest.param(lambda: Mark(1 << 32), id="mark-too-big"),
        pytest.param(
            lambda: CtTimeout("icmp4", L4Proto.ICMP, 4, (("timeout", 30),)),
            id="icmp-timeout-object",
        ),
        pytest.param(
            lambda: CtTimeout("tcp4", L4Proto.TCP, 4, (("replied", 30),)), id="udp-state-in-tcp"
        ),
    ],
)
def test_invalid_objects_are_rejected_at_construction(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_set_elements_are_sorted_and_checked() -> None:
    s = Set(
        "s", (DataType.IPV4_ADDR,), elements=(element(IP("10.0.0.10")), element(IP("10.0.0.9")))
    )
    assert [e.text() for e in s.elements] == ["10.0.0.9", "10.0.0.10"]  # numeric, not text order
    with pytest.raises(ValueError, match="duplicate"):
        Set("s", (DataType.IPV4_ADDR,), elements=(element(IP("10.0.0.1")), element(IP("10.0.0.1"))))
    with pytest.raises(ValueError, match="does not fit"):
        Set("s", (DataType.IPV4_ADDR,), elements=(element(NET("10.0.0.0/24")),))  # hash set, a CIDR
    with pytest.raises(ValueError, match="overlapping"):
        Set(
            "s",
            (DataType.IPV4_ADDR,),
            interval=True,
            elements=(element(NET("10.0.0.0/24")), element(NET("10.0.0.128/25"))),
        )
    ports = Set(
        "p",
        (DataType.INET_SERVICE,),
        interval=True,
        elements=(element(PortRange(80, 82)), element(PortRange(22, 22))),
    )
    assert ports.lines() == [
        "\tset p {",
        "\t\ttype inet_service",
        "\t\tflags interval",
        "\t\telements = {",
        "\t\t\t22,",
        "\t\t\t80-82",
        "\t\t}",
        "\t}",
    ]


def test_concatenated_and_map_elements() -> None:
    pair = element(Ifname("veth1"), IP("100.64.0.2"))
    assert pair.text() == '"veth1" . 100.64.0.2'
    m = Map(
        "m", (DataType.IPV4_ADDR,), DataType.MARK, (element(IP("100.64.0.2"), value=Mark(0x1234)),)
    )
    assert m.elements[0].text() == "100.64.0.2 : 0x00001234"
    with pytest.raises(ValueError, match="bad value"):
        Map(
            "m",
            (DataType.IPV4_ADDR,),
            DataType.VERDICT,
            (element(IP("100.64.0.2"), value=Mark(1)),),
        )


def test_base_chain_and_ct_timeout_text() -> None:
    chain = Chain("c", (Rule((DROP,)),), BaseSpec(Hook.PREROUTING, Priority("raw")))
    assert chain.lines() == [
        "\tchain c {",
        "\t\ttype filter hook prerouting priority raw; policy accept;",
        "\t\tdrop",
        "\t}",
    ]
    assert Priority("filter", -5).text() == "filter - 5" and Priority("filter", 10).value == 10
    t = CtTimeout("udp6_x", L4Proto.UDP, 6, (("unreplied", 30), ("replied", 180)))
    assert t.lines()[2:4] == ["\t\tl3proto ip6", "\t\tpolicy = { unreplied: 30, replied: 180 }"]


def _chain(name: str, *parts: Part) -> Chain:
    return Chain(name, (Rule(parts),) if parts else ())


def test_ruleset_is_closed_under_references() -> None:
    table = Table()
    with pytest.raises(ValueError, match="missing set rg_x_4"):
        Ruleset.of(table, [_chain("c", AddrMatch(4, AddrField.SADDR, SetRef("rg_x_4")), ACCEPT)])
    with pytest.raises(ValueError, match="missing chain d"):
        Ruleset.of(table, [_chain("c", jump("d"))])
    with pytest.raises(ValueError, match="missing ct timeout"):
        Ruleset.of(table, [_chain("c", CtTimeoutSet("tcp4_x"))])
    base = Chain("b", (), BaseSpec(Hook.FORWARD, Priority("filter")))
    with pytest.raises(ValueError, match="base chain"):
        Ruleset.of(table, [base, _chain("c", goto("b"))])
    with pytest.raises(ValueError, match="missing chain gl"):
        Ruleset.of(
            table,
            [
                Map(
                    "m",
                    (DataType.IPV4_ADDR,),
                    DataType.VERDICT,
                    (element(IP("1.2.3.4"), value=goto("gl")),),
                )
            ],
        )
    with pytest.raises(ValueError, match="duplicate"):
        Ruleset.of(table, [Set("x", (DataType.MARK,)), Map("x", (DataType.MARK,), DataType.MARK)])


def test_ruleset_order_is_canonical() -> None:
    objs = [
        _chain("zz"),
        Chain("in", (), BaseSpec(Hook.INPUT, Priority("filter", 10))),
        Chain("pre", (), BaseSpec(Hook.PREROUTING, Priority("raw"))),
        Set("b", (DataType.MARK,)),
        Set("a", (DataType.MARK,)),
        CtTimeout("udp4_x", L4Proto.UDP, 4, (("replied", 180),)),
    ]
    rs = Ruleset.of(Table(), objs)
    assert [o.name for o in rs.objects] == ["udp4_x", "a", "b", "pre", "in", "zz"]
    assert Ruleset.of(Table(), reversed(objs)) == rs
    with pytest.raises(ValueError, match="canonical order"):
        Ruleset(Table(), sets=(Set("b", (DataType.MARK,)), Set("a", (DataType.MARK,))))


# ----------------------------------------------------------------------------- epochs


@settings(max_examples=100)
@given(st.text(max_size=40), st.integers(0, 2**40))
def test_epoch_marks_avoid_the_reserved_values(uid: str, epoch: int) -> None:
    mark = epoch_mark(uid, epoch)
    assert MARK_UNSTAMPED < mark < MARK_TOMBSTONE


def test_epoch_marks_are_stable_and_change_with_the_epoch_and_the_pod() -> None:
    """A restart computes the same marks; a bump or a new pod (new UID) gets a new one."""
    assert (
        epoch_mark("uid-1", 0) == epoch_mark("uid-1", 0) == 0x704ACB42
    )  # pinned: a change would re-check every flow at upgrade
    marks = {epoch_mark(f"uid-{u}", e) for u in range(50) for e in range(50)}
    assert len(marks) == 2500
    with pytest.raises(ValueError):
        epoch_mark("uid-1", -1)
