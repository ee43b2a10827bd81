"""The re-check of live inbound flows (``secgroups.rechecking``): the decision behind the
agent's post-commit conntrack sweep (S-CT-2). Rows on the web-and-db scenario of
``tests/nftcases.py``; the property that it equals the kernel's re-check (the tracer over
the rendered ruleset) is in ``test_nft_properties.py``."""

from __future__ import annotations

import pytest
from tests import nftcases as nc

from secgroups.evaluating import GRE, ICMP, ICMPV6, TCP, UDP, Evaluator
from secgroups.rechecking import InboundFlow, ingress_verdicts, still_allowed

S = nc.web_and_db()
POLICY = S.policy
PODS = {p.name: p for p in POLICY.nodes[nc.NODE].pods}
WEB1, WEB1_6 = nc.WEB1
DB1 = nc.DB1[0]
OFFICE_HOST = "203.0.113.9"
BLOCKED_HOST = "198.51.100.7"
OUTSIDE = "192.0.2.99"
SCTP = 132


@pytest.mark.parametrize(
    ("pod", "flow", "allowed"),
    [
        pytest.param("web-1", InboundFlow.make(OFFICE_HOST, WEB1, TCP, 22), True, id="ssh-office"),
        pytest.param("web-1", InboundFlow.make(OUTSIDE, WEB1, TCP, 22), False, id="ssh-outside"),
        pytest.param("web-1", InboundFlow.make(OUTSIDE, WEB1, TCP, 8080), True, id="http-range"),
        pytest.param("web-1", InboundFlow.make(OUTSIDE, WEB1, UDP, 80), False, id="udp-not-tcp"),
        pytest.param(
            "web-1", InboundFlow.make(BLOCKED_HOST, WEB1, TCP, 80), False, id="deny-first"
        ),
        pytest.param(
            "web-1", InboundFlow.make("2001:db8::1", WEB1_6, TCP, 443), True, id="https-v6"
        ),
        pytest.param(
            "web-1", InboundFlow.make(OUTSIDE, WEB1, ICMP, None, 8, 0), True, id="echo-request"
        ),
        pytest.param(
            "web-1", InboundFlow.make(OUTSIDE, WEB1, ICMP, None, 13, 0), False, id="timestamp"
        ),
        pytest.param(
            "web-1",
            InboundFlow.make("2001:db8::1", WEB1_6, ICMPV6, None, 128, 0),
            True,
            id="echo-request-v6",
        ),
        pytest.param("db-1", InboundFlow.make(OFFICE_HOST, DB1, GRE), True, id="gre-office"),
        pytest.param("db-1", InboundFlow.make(OUTSIDE, DB1, GRE), False, id="gre-outside"),
        pytest.param("db-1", InboundFlow.make(WEB1, DB1, TCP, 5432), True, id="pg-from-web"),
        pytest.param("db-1", InboundFlow.make(OUTSIDE, DB1, TCP, 5432), False, id="pg-outside"),
        pytest.param("db-1", InboundFlow.make(OUTSIDE, DB1, SCTP), False, id="sctp"),
    ],
)
def test_still_allowed(pod: str, flow: InboundFlow, allowed: bool) -> None:
    assert still_allowed(POLICY, PODS[pod], [flow]) == [allowed]


def test_the_pods_port_is_the_reply_source_port() -> None:
    """Service traffic: the client asked the VIP on some port, the pod answers from its own
    (post-DNAT) port, and that is the port the pod's rules (and the kernel) see."""
    flow = InboundFlow.make(OUTSIDE, WEB1, TCP, pod_port=80)
    assert flow.packet().dport == 80
    assert still_allowed(POLICY, PODS["web-1"], [flow]) == [True]


def test_ports_and_icmp_fields_only_where_they_mean_something() -> None:
    """A port on a non-TCP/UDP flow (GRE keys travel in the same attributes) and ICMP fields
    on a TCP flow are ignored, as the kernel's rules ignore them."""
    gre = InboundFlow.make(OFFICE_HOST, DB1, GRE, pod_port=7, icmp_type=8)
    assert (gre.packet().dport, gre.packet().icmp_type) == (None, None)
    tcp = InboundFlow.make(OFFICE_HOST, WEB1, TCP, 22, icmp_type=8, icmp_code=0)
    assert (tcp.packet().dport, tcp.packet().icmp_type) == (22, None)


def test_only_the_pods_own_ingress_decides() -> None:
    """Not the remote's egress (web-1 → db-1 passed web-1's egress when it started) and not
    some other pod's rules: the verdict names the pod and the deciding rule."""
    (verdict,) = ingress_verdicts(POLICY, PODS["db-1"], [InboundFlow.make(WEB1, DB1, TCP, 5432)])
    assert verdict.allowed and verdict.pod == PODS["db-1"].key
    assert verdict.rule is not None and verdict.rule.id == "shop/pg-from-web"


def test_a_missing_group_is_skipped_and_nothing_matched_is_denied() -> None:
    pod = PODS["web-1"].model_copy(update={"groups": ("no-such-group",)})
    assert still_allowed(POLICY, pod, [InboundFlow.make(OFFICE_HOST, WEB1, TCP, 22)]) == [False]


def test_many_flows_keep_their_order_and_share_an_evaluator() -> None:
    flows = [
        InboundFlow.make(OFFICE_HOST, WEB1, TCP, 22),
        InboundFlow.make(OUTSIDE, WEB1, TCP, 22),
        InboundFlow.make(OUTSIDE, WEB1, TCP, 443),
    ]
    ev = Evaluator(POLICY)
    assert still_allowed(POLICY, PODS["web-1"], flows, evaluator=ev) == [True, False, True]
    with pytest.raises(ValueError, match="same policy"):
        still_allowed(POLICY.model_copy(), PODS["web-1"], flows, evaluator=ev)


def test_a_flow_of_two_families_is_rejected() -> None:
    with pytest.raises(ValueError, match="different families"):
        InboundFlow.make(OUTSIDE, WEB1_6, TCP, 80)
