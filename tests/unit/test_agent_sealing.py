"""Fail-static and the seal (docs/failure-modes.md; ``secgroups.nft.sealing``).

* The planner's digest of a state reached by incremental plans equals a fresh planner's
  digest of the same inputs: a restarted agent recognises the table its predecessor
  left (and any change of content changes the digest).
* The seal's text loads into the model kernel and reads back.
* A table whose rules someone flushed forwards nothing (the forward chains drop by
  policy) while traffic to and from the node itself still passes.
* The sync loop: a full sync seals the table in its own transaction; an incremental one
  unseals it and the loop seals again once idle; a new loop over a sealed table adopts
  it without a transaction; a table sealed but changed, or sealed for other content, is
  rewritten.
"""

from __future__ import annotations

import ipaddress
import random

from tests import agentcases as ac
from tests import nftcases as nc
from tests.nftmodel import NftModel
from tests.unit.test_agent_planning import Driver
from tests.unit.test_agent_syncing import Rig, run, wait_until

from secgroups.compiled import CompiledPolicy
from secgroups.nft.objects import Table
from secgroups.nft.rendering import render
from secgroups.nft.sealing import SEAL, read_seal, seal_text
from secgroups.nft.tracing import TracePacket, Tracer
from secgroups_agent.interfaces import FakeInterfaces
from secgroups_agent.planning import Planner
from secgroups_agent.sources import StaticSource, slice_policy
from secgroups_agent.syncing import SyncConfig

NODE = nc.NODE


def fresh_digest(policy: CompiledPolicy, ifaces: dict[str, str], generation: int) -> str:
    planner = Planner(NODE)
    plan = planner.plan(slice_policy(policy, NODE, generation), ifaces, full=True)
    return planner.digest(plan.state)


def test_the_digest_of_incremental_plans_is_the_digest_of_a_fresh_start() -> None:
    rng = random.Random(11)
    policy = ac.big_node(pods=8, groups=4, rules=6, sets=3, members=30)
    ifaces = nc.interfaces(policy.nodes[NODE].pods)
    d = Driver()
    d.step(policy, ifaces)
    seen = {d.planner.digest(d.planner.applied)} if d.planner.applied else set()
    for _ in range(25):
        what = rng.choice(["member", "epoch", "iface"])
        node = policy.nodes[NODE]
        if what == "member":
            key = rng.choice(sorted(policy.sets))
            extra = f"10.201.{rng.randrange(256)}.{rng.randrange(1, 255)}/32"
            policy = ac.with_members(policy, key, sorted({*policy.sets[key].ipv4, extra}))
        elif what == "epoch":
            pods = list(node.pods)
            i = rng.randrange(len(pods))
            pods[i] = pods[i].model_copy(update={"epoch": pods[i].epoch + 1})
            policy = policy.model_copy(
                update={"nodes": {NODE: node.model_copy(update={"pods": tuple(pods)})}}
            )
        else:
            ip = rng.choice(sorted(ifaces))
            ifaces = {**ifaces, ip: f"veth-r{rng.randrange(1000)}"}
        d.step(policy, ifaces)
        state = d.planner.applied
        assert state is not None
        digest = d.planner.digest(state)
        assert digest == fresh_digest(policy, ifaces, d.generation)
        seen.add(digest)
    assert len(seen) > 20  # every change of content is a new digest


def test_the_seal_loads_and_reads_back() -> None:
    s = nc.web_and_db()
    kernel = NftModel()
    kernel.apply(render(s.policy, NODE, s.pod_interfaces, s.options).text())
    assert read_seal(kernel.listing(f"set inet secgroups {SEAL}", terse=False)) is None
    digest = "0123456789abcdef0123456789abcdef"
    kernel.apply(seal_text(Table(), digest))
    assert read_seal(kernel.listing(f"set inet secgroups {SEAL}", terse=False)) == digest
    kernel.apply(seal_text(Table(), "f" * 32))  # a new seal replaces the old
    assert read_seal(kernel.listing(f"set inet secgroups {SEAL}", terse=False)) == "f" * 32


def test_a_flushed_table_forwards_nothing_and_leaves_the_node_alone() -> None:
    s = nc.web_and_db()
    text = render(s.policy, NODE, s.pod_interfaces, s.options).text()
    flushed = _flushed(text)
    tracer = Tracer(flushed)
    web1, outside, node = "100.64.1.2", "192.0.2.99", "100.64.0.1"

    def verdict(src: str, dst: str, iif: str | None, oif: str | None) -> str:
        pkt = TracePacket(
            ipaddress.ip_address(src), ipaddress.ip_address(dst), 6, 80, iif=iif, oif=oif
        )
        return tracer.trace(pkt).verdict

    assert verdict(outside, web1, "eth0", "veth-web-1") == "drop"  # to a pod
    assert verdict(web1, outside, "veth-web-1", "eth0") == "drop"  # from a pod
    assert verdict(outside, "198.51.100.1", "eth0", "eth1") == "drop"  # any forwarding
    assert verdict(outside, node, "eth0", None) == "accept"  # the node's own traffic
    assert verdict(node, outside, None, "eth0") == "accept"


def _flushed(text: str) -> str:
    """What ``nft flush table`` leaves: every chain without its rules, sets as they were."""
    out: list[str] = []
    in_chain = False
    for line in text.splitlines():
        if line.startswith("\tchain "):
            in_chain = True
        elif line == "\t}":
            in_chain = False
        elif in_chain and not line.strip().startswith("type "):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _loop_config() -> SyncConfig:
    return SyncConfig(
        drift_period=3600.0, min_interval=0.0, retry_backoff=(0.01, 0.05), seal_delay=0.05
    )


def _bump_first_epoch(policy: CompiledPolicy) -> CompiledPolicy:
    node = policy.nodes[NODE]
    first = node.pods[0].model_copy(update={"epoch": node.pods[0].epoch + 1})
    pods = (first, *node.pods[1:])
    return policy.model_copy(update={"nodes": {NODE: node.model_copy(update={"pods": pods})}})


def test_the_loop_seals_unseals_and_a_new_loop_adopts() -> None:
    s = nc.web_and_db()
    policy, fakes = s.policy, FakeInterfaces(dict(s.pod_interfaces))
    bumped = _bump_first_epoch(policy)

    async def body() -> None:
        model = NftModel()
        src = StaticSource(slice_policy(policy, NODE, 1))
        async with Rig(src, config=_loop_config(), model=model, interfaces=fakes) as rig:
            await rig.until_applied(1)
            first = rig.applied[0]
            assert f"set {SEAL} {{" in first  # the full sync sealed in its own transaction
            sealed = read_seal(model.listing(f"set inet secgroups {SEAL}", terse=False))
            assert sealed is not None
            src.set(slice_policy(bumped, NODE, 2))
            await rig.until_applied(2)
            assert rig.applied[1].startswith(f"flush set inet secgroups {SEAL}\n")
            await rig.until_applied(3)  # sealed again once idle
            resealed = read_seal(model.listing(f"set inet secgroups {SEAL}", terse=False))
            assert resealed is not None and resealed != sealed
        # A new agent over the same kernel, with the same inputs: nothing applied.
        src = StaticSource(slice_policy(bumped, NODE, 2))
        async with Rig(src, config=_loop_config(), model=model, interfaces=fakes) as rig:
            await rig.until_status(lambda s: s.applied_generation == 2, "generation 2")
            assert rig.applied == []
            assert rig.metrics.adoptions._value.get() == 1
            assert rig.loop.results[-1].outcome == "adopted"
        # Same inputs, but a chain flushed while no agent ran: the seal matches, the
        # structure does not, so the table is rewritten.
        model.apply("flush chain inet secgroups pod_ingress\n")
        async with Rig(src, config=_loop_config(), model=model, interfaces=fakes) as rig:
            await rig.until_applied(1)
            assert rig.applied[0].startswith("add table inet secgroups\nflush table")
            assert rig.metrics.adoptions._value.get() == 0
        # Other inputs than the sealed ones: rewritten.
        src = StaticSource(slice_policy(policy, NODE, 3))
        async with Rig(src, config=_loop_config(), model=model, interfaces=fakes) as rig:
            await rig.until_applied(1)
            assert rig.metrics.adoptions._value.get() == 0
            await wait_until(lambda: rig.status.last is not None, "status")

    run(body())
