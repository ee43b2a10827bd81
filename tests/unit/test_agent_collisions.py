"""Name collisions are refused, reported and never merged (docs/nftables.md, "Names").

nft names end in a 128-bit digest of the user-chosen identity (``secgroups.nft.names``),
so a real collision is out of reach; these tests force one by patching the digest
(``names.digest``) so that two tenants' objects get one name. The planner must refuse the
newcomer, isolate its pods and report it, and nothing of the holder may change: not a
chain, not an element. The kernel is ``tests/nftmodel.py``; verdicts come from the
tracer over what the model holds.

The scenario of the issue: a port set named by a (then 32-bit) digest of its port list.
Tenant ``b``'s list 1, 3, …, 19, 22000 was made to collide with tenant ``a``'s 1, 3, …,
19, 21 (their readable parts are equal: the first 24 characters). A planner that merged
objects by name let ``b``'s list replace ``a``'s, and ``a``'s pod accepted TCP 22000.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable

import pytest
from tests import nftcases as nc
from tests.nftmodel import NftModel
from tests.unit.test_agent_syncing import Rig, run, wait_until

from secgroups.compiled import CompiledPolicy
from secgroups.nft import names
from secgroups.nft.dispatch import Limits
from secgroups.nft.reading import canonical
from secgroups.nft.rendering import RenderOptions, render
from secgroups.nft.tracing import TracePacket, Tracer
from secgroups.ports import PortRange, merge_ranges
from secgroups_agent.interfaces import FakeInterfaces
from secgroups_agent.planning import Plan, Planner
from secgroups_agent.sources import StaticSource, slice_policy

NODE = nc.NODE
A_PORTS = [*range(1, 20, 2), 21]
B_PORTS = [*range(1, 20, 2), 22000]
A_IP, B_IP, CLIENT = "100.64.1.2", "100.64.1.3", "203.0.113.9"
TCP = 6


def _ranges(ports: list[int]) -> tuple[PortRange, ...]:
    return tuple(merge_ranges(PortRange(p, p) for p in ports))


def _ports_text(ports: list[int]) -> str:
    """The identity ``names.port_set`` digests."""
    return ",".join(str(r) for r in _ranges(ports))


@pytest.fixture
def collide(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], None]:
    """``collide(x, y)``: identity ``y`` gets identity ``x``'s digest from now on."""
    real = names.digest
    same: dict[str, str] = {}

    def digest(identity: str) -> str:
        return real(same.get(identity, identity))

    monkeypatch.setattr(names, "digest", digest)
    return lambda x, y: same.__setitem__(y, x)


def tenant(ns: str, ports: list[int], ip: str) -> CompiledPolicy:
    g = nc.group(ns, "web", [nc.rule(f"{ns}/web", nc.IN, "TCP", ports)])
    return nc.policy([g], [], [nc.pod(ns, "web-1", (ip,), [g[0]])])


def both(*parts: CompiledPolicy) -> CompiledPolicy:
    groups = {k: v for p in parts for k, v in p.groups.items()}
    pods = [pod for p in parts for pod in p.nodes[NODE].pods]
    return nc.policy(groups.items(), [], pods)


class Node:
    """A planner over a model kernel (linear group chains: the port sets stay in use)."""

    def __init__(self) -> None:
        self.options = RenderOptions(dispatch=None)
        self.planner = Planner(NODE, self.options)
        self.kernel = NftModel()
        self.generation = 0

    def step(self, policy: CompiledPolicy, ifaces: dict[str, str]) -> Plan:
        self.generation += 1
        plan = self.planner.plan(slice_policy(policy, NODE, self.generation), ifaces)
        if plan.stage:
            self.kernel.apply(plan.stage)
        if plan.text:
            self.kernel.apply(plan.text)
        self.planner.commit(plan)
        return plan

    def allowed(self, dst: str, port: int) -> bool:
        packet = TracePacket(
            ipaddress.ip_address(CLIENT),
            ipaddress.ip_address(dst),
            TCP,
            dport=port,
            iif=nc.UPLINK,
            oif="veth-x",
        )
        return Tracer(self.kernel.text()).trace(packet).verdict == "accept"


def _ifaces(policy: CompiledPolicy) -> dict[str, str]:
    return nc.interfaces(policy.nodes[NODE].pods)


def test_a_colliding_port_list_is_refused_and_the_holders_ports_stay(
    collide: Callable[[str, str], None],
) -> None:
    collide(_ports_text(A_PORTS), _ports_text(B_PORTS))
    a, b = tenant("a", A_PORTS, A_IP), tenant("b", B_PORTS, B_IP)
    assert names.port_set(_ranges(A_PORTS)) == names.port_set(_ranges(B_PORTS))
    node = Node()
    node.step(a, _ifaces(a))
    held = node.kernel.text()
    assert node.allowed(A_IP, 21) and not node.allowed(A_IP, 22000)

    plan = node.step(both(a, b), _ifaces(both(a, b)))

    assert [r.claimant for r in plan.state.refused] == ["group sg.b.web"]
    refusal = plan.state.refused[0]
    assert refusal.name == names.port_set(_ranges(A_PORTS))
    assert refusal.holder == f"port set {_ports_text(A_PORTS)}"
    assert "refused" in refusal.text() and refusal.name in refusal.text()
    # The holder's objects are untouched by the transaction and by the table.
    a_objects = [
        line.split()[1]
        for line in held.splitlines()
        if line.startswith("\t") and line.split()[0] in ("chain", "set") and "_a_web_" in line
    ]
    assert a_objects  # g_a_web_…, gl_web_…
    for name in [*a_objects, refusal.name]:
        assert name not in plan.stage + plan.text, f"the transaction touched {name}"
    assert node.allowed(A_IP, 21) and not node.allowed(A_IP, 22000)
    # The newcomer's pod is isolated (no group: everything denied), not left open.
    assert not node.allowed(B_IP, 1) and not node.allowed(B_IP, 22000)
    # Once the holder is gone, the newcomer gets the name.
    plan = node.step(b, _ifaces(b))
    assert plan.state.refused == ()
    assert node.allowed(B_IP, 22000) and node.allowed(B_IP, 1)
    assert canonical(node.kernel.text()) == canonical(
        render(b, NODE, _ifaces(b), node.options).text()
    )


def test_colliding_group_chains_the_newcomer_is_refused(
    collide: Callable[[str, str], None],
) -> None:
    """Groups ``a-b/c`` and ``a/b-c`` squeeze to one readable part; with one digest they
    would share their chains."""
    g1 = nc.group("a-b", "c", [nc.rule("a-b/c", nc.IN, "TCP", [80])])
    g2 = nc.group("a", "b-c", [nc.rule("a/b-c", nc.IN, "TCP", [22])])
    collide(g1[0], g2[0])
    assert names.group_chain(g1[0], "a-b", "c", nc.IN) == names.group_chain(
        g2[0], "a", "b-c", nc.IN
    )
    first = nc.policy([g1], [], [nc.pod("a-b", "p", (A_IP,), [g1[0]])])
    second = nc.policy(
        [g1, g2], [], [nc.pod("a-b", "p", (A_IP,), [g1[0]]), nc.pod("a", "q", (B_IP,), [g2[0]])]
    )
    node = Node()
    node.step(first, _ifaces(first))
    plan = node.step(second, _ifaces(second))
    assert [r.claimant for r in plan.state.refused] == [f"group {g2[0]}"]
    assert plan.state.refused[0].holder == f"group {g1[0]}"
    assert node.allowed(A_IP, 80) and not node.allowed(A_IP, 22)
    assert not node.allowed(B_IP, 22) and not node.allowed(B_IP, 80)


def test_at_a_fresh_start_the_first_by_key_holds_and_the_other_is_reported(
    collide: Callable[[str, str], None],
) -> None:
    """No committed table to go by (an agent restart): the order is fixed by the keys, and
    either way the loser's pods are isolated, never given the winner's rules."""
    collide(_ports_text(A_PORTS), _ports_text(B_PORTS))
    pol = both(tenant("a", A_PORTS, A_IP), tenant("b", B_PORTS, B_IP))
    node = Node()
    plan = node.step(pol, _ifaces(pol))
    assert [r.claimant for r in plan.state.refused] == ["group sg.b.web"]
    assert node.allowed(A_IP, 21) and not node.allowed(A_IP, 22000)
    assert not node.allowed(B_IP, 22000)


def test_a_group_list_whose_chains_collide_isolates_only_its_pods(
    collide: Callable[[str, str], None],
) -> None:
    """The list [a-b] and the list [a, b] both read ``a_b``; with one digest they would
    share their group-list chains, and q would jump into p's group."""
    ab = nc.group("x", "a-b", [nc.rule("x/a-b", nc.IN, "TCP", [80])])
    a = nc.group("x", "a", [nc.rule("x/a", nc.IN, "TCP", [81])])
    b = nc.group("x", "b", [nc.rule("x/b", nc.IN, "TCP", [82])])
    collide(ab[0], "\n".join([a[0], b[0]]))
    p = nc.pod("x", "p", (A_IP,), [ab[0]])
    q = nc.pod("x", "q", (B_IP,), [a[0], b[0]])
    node = Node()
    first = nc.policy([ab, a, b], [], [p])
    node.step(first, _ifaces(first))
    second = nc.policy([ab, a, b], [], [p, q])
    plan = node.step(second, _ifaces(second))
    assert [r.claimant for r in plan.state.refused] == [f"group list [{a[0]}, {b[0]}]"]
    assert plan.state.refused[0].holder == f"group list [{ab[0]}]"
    assert node.allowed(A_IP, 80) and not node.allowed(A_IP, 81)
    assert not any(node.allowed(B_IP, port) for port in (80, 81, 82))


def test_a_group_the_renderer_cannot_hold_is_refused_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A render error of one group (here: its dispatch sub-chains forced under one name)
    refuses that group, not the node: the other tenant's policy still applies."""
    from secgroups.nft import dispatch

    many = [nc.rule(f"b/r{i}", nc.IN, "TCP", [1000 + i]) for i in range(10)]
    g_a = nc.group("a", "web", [nc.rule("a/web", nc.IN, "TCP", [80])])
    g_b = nc.group("b", "many", many)
    pol = nc.policy(
        [g_a, g_b], [], [nc.pod("a", "p", (A_IP,), [g_a[0]]), nc.pod("b", "q", (B_IP,), [g_b[0]])]
    )
    monkeypatch.setattr(dispatch, "short_hash", lambda text, length=8: "0" * length)
    planner = Planner(NODE, RenderOptions(dispatch=Limits()))
    plan = planner.plan(slice_policy(pol, NODE), _ifaces(pol))
    assert [r.claimant for r in plan.state.refused] == [f"group {g_b[0]}"]
    assert "collision" in plan.state.refused[0].error
    kernel = NftModel()
    kernel.apply(plan.stage + plan.text)
    node = Node()
    node.kernel = kernel
    assert node.allowed(A_IP, 80) and not node.allowed(B_IP, 1000)


def test_a_refusal_is_reported_in_status_and_metrics(
    collide: Callable[[str, str], None],
) -> None:
    collide(_ports_text(A_PORTS), _ports_text(B_PORTS))
    a = tenant("a", A_PORTS, A_IP)
    pol = both(a, tenant("b", B_PORTS, B_IP))

    async def body() -> None:
        src = StaticSource(slice_policy(a, NODE, 1))
        async with Rig(src, interfaces=FakeInterfaces(_ifaces(pol))) as rig:
            await rig.until_applied(1)
            src.set(slice_policy(pol, NODE, 2))
            await rig.until_status(lambda s: s.reason == "NameCollision", "the refusal")
            status = rig.status.last
            assert status is not None and status.applied_generation == 2
            assert status.error is not None and "group sg.b.web refused" in status.error
            text = rig.metrics.render().decode()
            assert "secgroups_agent_refused_objects 1.0" in text
            src.set(slice_policy(tenant("b", B_PORTS, B_IP), NODE, 3))
            await rig.until_status(lambda s: s.applied_generation == 3, "generation 3")
            await wait_until(
                lambda: rig.status.last is not None and rig.status.last.reason is None, "cleared"
            )
            assert "secgroups_agent_refused_objects 0.0" in rig.metrics.render().decode()
            await asyncio.sleep(0)

    run(body())
