"""Re-check counters with real packets: established inbound flows re-checked by a raised
group or set counter alone, the node object and every epoch unchanged (S-CT-2).

Node 1 of a lab runs a real agent (``tests/agent_harness.py``) fed a policy file: ``a1`` is
in group ``web`` (http from anyone), ``a2`` in group ``db`` (5432 from the address set
``trusted``, which holds ``b1`` on node 2). A long-lived TCP flow is opened to each BEFORE
a change. Each step below changes one thing:

* a rule or a member goes but no counter is raised: not re-checked, the flow continues
  (what S-CT-2 says of a pod whose re-check was not asked for);
* then ONLY the counter is raised (same rules, same members, same node object, same
  epoch): the pod's mark changes, so the flow is judged again — cut; the agent's sweep
  tombstoned it first, so even the pod speaking first reaches nobody;
* a counter raised while the rule still allows the flow: the flow survives, both ways.

The marks themselves come from ``secgroups.nft.epochs.pod_mark``; these tests only look at
packets and at conntrack.
"""

from __future__ import annotations

import contextlib

import pytest
from tests import nftcases as nc
from tests.agent_harness import AgentProcess

from secgroups.compiled import CompiledPolicy
from secgroups.nft.epochs import MARK_TOMBSTONE, pod_mark
from secgroups_lab.network import Lab, PodNet, netns_unavailable, run_in
from secgroups_lab.probes import FlowHandle, ProbeClient

_why = netns_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("fresh_conntrack")]

NODE = "n1"
DENIED_TIMEOUT = 1.0
ALLOWED_TIMEOUT = 5.0  # an allowed exchange answers in milliseconds; the machine is loaded
WEB = nc.group("default", "web", [])[0]
TRUSTED = nc.ipag_set("default", "trusted")[0]


def policy(
    pods: dict[str, PodNet],
    *,
    http: bool = True,
    web_recheck: int = 0,
    trusted: bool = True,
    trusted_recheck: int = 0,
) -> CompiledPolicy:
    """a1 in web (TCP 80 from anyone if ``http``), a2 in db (TCP 5432 from ``trusted``: b1's
    address if ``trusted``), both egress to anything; the counters as given."""
    a1, a2, b1 = pods["a1"], pods["a2"], pods["b1"]
    web_rules = [nc.rule("default/out4", nc.EG, "All")]
    if http:
        web_rules.append(nc.rule("default/http", nc.IN, "TCP", [80]))
    key, web = nc.group("default", "web", web_rules)
    db_key, db = nc.group(
        "default",
        "db",
        [
            nc.rule("default/pg", nc.IN, "TCP", [5432], nc.ref(TRUSTED)),
            nc.rule("default/out4", nc.EG, "All"),
        ],
    )
    set_key, members = nc.ipag_set("default", "trusted", [f"{b1.ipv4}/32"] if trusted else [])
    return nc.policy(
        [
            (key, web.model_copy(update={"recheck": web_recheck})),
            (db_key, db),
        ],
        [(set_key, members.model_copy(update={"recheck": trusted_recheck}))],
        [
            nc.pod("default", "a1", a1.ips, [key]),
            nc.pod("default", "a2", a2.ips, [db_key]),
        ],
        node=NODE,
    )


def mark_of(lab: Lab, flow: FlowHandle) -> int | None:
    """The ``ct mark`` of ``flow``'s entry on node 1 (None: no entry)."""
    proc = run_in(
        lab.node_netns(1),
        [
            "conntrack", "-L", "-p", "tcp",
            "--orig-src", flow.src, "--orig-dst", flow.dst,
            "--sport", str(flow.sport), "--dport", str(flow.dport),
        ],
        check=False,
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        for word in line.split():
            if word.startswith("mark="):
                return int(word.removeprefix("mark="))
    return None


def mark_now(p: CompiledPolicy, name: str) -> int:
    pod = next(x for x in p.nodes[NODE].pods if x.name == name)
    return pod_mark(pod, p.groups, p.sets)


def alive(client: ProbeClient, server: ProbeClient, flow: FlowHandle) -> tuple[bool, bool]:
    """(the pod answers the client, the pod speaking first reaches the client)."""
    return (
        client.check(flow, timeout=ALLOWED_TIMEOUT).ok,
        server.check_peer(flow, timeout=ALLOWED_TIMEOUT).ok,
    )


def cut(client: ProbeClient, server: ProbeClient, flow: FlowHandle) -> tuple[bool, bool]:
    """(the pod's side reaches nobody, the client's next packet goes nowhere): the pod
    speaks first — only the sweep's tombstone stops a reply-direction packet."""
    return (
        not server.check_peer(flow, timeout=DENIED_TIMEOUT).ok,
        not client.check(flow, timeout=DENIED_TIMEOUT).ok,
    )


# ----------------------------------------------------------------------------- tests
def test_a_raised_group_counter_alone_cuts_the_flows_its_rules_no_longer_allow(
    lab: Lab, pods: dict[str, PodNet], agent: AgentProcess
) -> None:
    assert lab.outside is not None
    outside, a1 = lab.client(lab.outside), pods["a1"]
    base = policy(pods)
    agent.start(base)
    flow = outside.open_flow("tcp", a1.ipv4, 80)
    try:
        assert mark_of(lab, flow) == mark_now(base, "a1")
        # The http rule goes, nothing is re-checked: the established flow continues.
        revoked = policy(pods, http=False)
        agent.apply(revoked)
        assert alive(outside, lab.client(a1), flow) == (True, True)
        assert not outside.probe("tcp", a1.ipv4, 80, timeout=DENIED_TIMEOUT).ok  # new: denied
        # Only web's counter is raised: a1's mark changes and the flow is cut.
        raised = policy(pods, http=False, web_recheck=1)
        assert raised.nodes[NODE] == revoked.nodes[NODE]
        assert mark_now(raised, "a1") != mark_now(revoked, "a1")
        agent.apply(raised)
        assert mark_of(lab, flow) == MARK_TOMBSTONE  # swept before the status said applied
        assert cut(outside, lab.client(a1), flow) == (True, True)
        m = agent.metrics()
        assert m['secgroups_agent_conntrack_flows_rechecked_total{verdict="cut"}'] >= 1
    finally:
        with contextlib.suppress(Exception):
            outside.close(flow)


def test_a_raised_set_counter_alone_cuts_a_client_the_set_no_longer_holds(
    lab: Lab, pods: dict[str, PodNet], agent: AgentProcess
) -> None:
    b1, a2 = lab.client(pods["b1"]), pods["a2"]
    base = policy(pods)
    agent.start(base)
    flow = b1.open_flow("tcp", a2.ipv4, 5432)
    try:
        assert mark_of(lab, flow) == mark_now(base, "a2")
        # b1 leaves the set, nothing is re-checked: the established flow continues.
        gone = policy(pods, trusted=False)
        agent.apply(gone)
        assert alive(b1, lab.client(a2), flow) == (True, True)
        assert not b1.probe("tcp", a2.ipv4, 5432, timeout=DENIED_TIMEOUT).ok
        # Only the set's counter is raised (db names it inbound): a2 is re-checked.
        raised = policy(pods, trusted=False, trusted_recheck=1)
        assert raised.nodes[NODE] == gone.nodes[NODE] and raised.groups == gone.groups
        agent.apply(raised)
        assert mark_of(lab, flow) == MARK_TOMBSTONE
        assert cut(b1, lab.client(a2), flow) == (True, True)
    finally:
        with contextlib.suppress(Exception):
            b1.close(flow)


def test_a_raised_counter_keeps_the_flows_the_rules_still_allow(
    lab: Lab, pods: dict[str, PodNet], agent: AgentProcess
) -> None:
    """Both counters raised, nothing else: a1's and a2's flows are re-checked, still
    allowed, re-stamped with the new marks, and keep both directions."""
    assert lab.outside is not None
    outside, b1 = lab.client(lab.outside), lab.client(pods["b1"])
    a1, a2 = pods["a1"], pods["a2"]
    base = policy(pods)
    agent.start(base)
    web_flow = outside.open_flow("tcp", a1.ipv4, 80)
    pg_flow = b1.open_flow("tcp", a2.ipv4, 5432)
    try:
        raised = policy(pods, web_recheck=1, trusted_recheck=1)
        agent.apply(raised)
        for flow, name in ((web_flow, "a1"), (pg_flow, "a2")):
            assert mark_now(raised, name) != mark_now(base, name)
            assert mark_of(lab, flow) == mark_now(raised, name)  # the sweep re-stamped it
        assert alive(outside, lab.client(a1), web_flow) == (True, True)
        assert alive(b1, lab.client(a2), pg_flow) == (True, True)
        m = agent.metrics()
        assert m['secgroups_agent_conntrack_flows_rechecked_total{verdict="kept"}'] >= 2
    finally:
        for client, flow in ((outside, web_flow), (b1, pg_flow)):
            with contextlib.suppress(Exception):
                client.close(flow)
