"""The agent's sync loop with fakes: when it syncs, what it applies, what it reports.

The kernel is ``tests/nftmodel.py`` behind a :class:`FakeNft`, so drift and failures
are real table states; sources, conntrack, interfaces and status are the fakes of
their ports. Every wait has a deadline; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tests import agentcases as ac
from tests import nftcases as nc
from tests.nftmodel import ModelError, NftModel

from secgroups import naming
from secgroups.compiled import (
    COMPILED_GROUP_KIND,
    COMPILED_NODE_KIND,
    COMPILED_SET_KIND,
    CompiledPolicy,
)
from secgroups.nft.epochs import MARK_TOMBSTONE, epoch_mark, pod_mark
from secgroups.nft.rendering import render
from secgroups.nft.sealing import SEAL
from secgroups.nft.transactions import full_transaction
from secgroups_agent.conntrack import CtFlow, FakeConntrack
from secgroups_agent.interfaces import FakeInterfaces
from secgroups_agent.metrics import Metrics
from secgroups_agent.nftables import FakeNft, NftError, NftWorkerCrashedError
from secgroups_agent.planning import Planner
from secgroups_agent.server import Health
from secgroups_agent.sources import (
    FakeKubeApi,
    KubeSource,
    Snapshot,
    Source,
    StaticSource,
    slice_policy,
)
from secgroups_agent.status import FakeStatus, StatusReporter
from secgroups_agent.syncing import SyncConfig, SyncLoop, TokenBucket

NODE = nc.NODE
DEADLINE = 10.0
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60.0))


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def kernel_nft(model: NftModel) -> FakeNft:
    def apply(_: FakeNft, text: str) -> None:
        try:
            model.apply(text)
        except ModelError as exc:
            raise NftError(f"Error: {exc}") from exc

    return FakeNft(on_apply=apply, lister=model.listing)


@dataclass
class Rig:
    """A sync loop wired to fakes, running as a task."""

    source: Source
    config: SyncConfig = field(
        default_factory=lambda: SyncConfig(
            drift_period=3600.0, min_interval=0.0, retry_backoff=(0.01, 0.05)
        )
    )
    model: NftModel = field(default_factory=NftModel)
    conntrack: FakeConntrack = field(default_factory=FakeConntrack)
    interfaces: FakeInterfaces = field(default_factory=FakeInterfaces)
    status: FakeStatus = field(default_factory=FakeStatus)
    health: Health = field(default_factory=Health)
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.nft = kernel_nft(self.model)
        self.loop = SyncLoop(
            source=self.source,
            planner=Planner(NODE),
            nft=self.nft,
            conntrack=self.conntrack,
            interfaces=self.interfaces,
            reporter=StatusReporter(self.status, min_interval=0.0),
            metrics=self.metrics,
            health=self.health,
            config=self.config,
        )

    async def __aenter__(self) -> Rig:
        self.tasks = [
            asyncio.create_task(self.source.run(self.loop.changed)),
            asyncio.create_task(self.loop.run()),
            asyncio.create_task(self.loop.reporter.run()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    @property
    def applied(self) -> list[str]:
        return self.nft.applied

    async def until_applied(self, n: int) -> None:
        await wait_until(lambda: len(self.applied) >= n, f"{n} transactions")

    async def until_status(self, cond: Callable[[Any], bool], what: str) -> None:
        await wait_until(lambda: self.status.last is not None and cond(self.status.last), what)


def _snap(policy: CompiledPolicy, generation: int = 1) -> Snapshot:
    return slice_policy(policy, NODE, generation)


def _policy() -> tuple[CompiledPolicy, dict[str, str]]:
    s = nc.web_and_db()
    return s.policy, dict(s.pod_interfaces)


def _without_pod(policy: CompiledPolicy, name: str) -> CompiledPolicy:
    node = policy.nodes[NODE]
    pods = tuple(p for p in node.pods if p.name != name)
    return policy.model_copy(update={"nodes": {NODE: node.model_copy(update={"pods": pods})}})


# ----------------------------------------------------------------------------- tests
def test_token_bucket_allows_a_burst_then_one_per_interval() -> None:
    b = TokenBucket(0.1, 2, now=0.0)
    assert b.take(0.0) == 0.0
    assert b.take(0.0) == 0.0
    assert 0.09 < b.take(0.0) <= 0.1
    assert b.take(0.1) == 0.0
    assert TokenBucket(0.0, 1, now=0.0).take(0.0) == 0.0


def test_no_sync_before_the_source_is_ready() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        src = StaticSource()
        async with Rig(src, interfaces=FakeInterfaces(ifaces)) as rig:
            src.set(None)  # a change notification while not ready
            await rig.until_status(lambda s: s.reason == "NotReady", "a not-ready status")
            assert rig.applied == [] and not rig.health.ready
            src.set(_snap(policy))
            await rig.until_applied(1)
            assert rig.applied[0].startswith("add table inet secgroups\nflush table")
            await rig.until_status(lambda s: s.applied_generation == 1, "status of generation 1")
            assert rig.health.ready

    run(body())


def test_kube_source_never_syncs_before_the_initial_lists_complete() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        api = FakeKubeApi(gate=asyncio.Event())
        node = policy.nodes[NODE]
        for key, spec in policy.groups.items():
            api.put(
                COMPILED_GROUP_KIND, key, spec.model_dump(by_alias=True, mode="json"), 1, [NODE]
            )
        for key, sspec in policy.sets.items():
            api.put(COMPILED_SET_KIND, key, sspec.model_dump(by_alias=True, mode="json"), 1, [NODE])
        api.put(COMPILED_NODE_KIND, NODE, node.model_dump(by_alias=True, mode="json"), generation=4)
        src = KubeSource(api, NODE)
        async with Rig(src, interfaces=FakeInterfaces(ifaces)) as rig:
            await asyncio.sleep(0.05)
            assert rig.applied == [] and rig.loop.syncs == 0
            assert api.gate is not None
            api.gate.set()
            await rig.until_applied(1)
            await rig.until_status(lambda s: s.applied_generation == 4, "generation 4 applied")
            text = rig.model.text()
            assert "rg_shop_web_" in text and "100.64.1.2" in text

    run(body())


def test_a_burst_of_changes_coalesces_into_one_sync() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        src = StaticSource(_snap(policy))
        async with Rig(src, interfaces=FakeInterfaces(ifaces)) as rig:
            await rig.until_applied(1)
            gate = threading.Event()
            rig.nft.gate = gate  # the kernel is slow: the next apply blocks
            src.set(_snap(_without_pod(policy, "web-1"), 2))
            await wait_until(lambda: rig.nft.attempts == 2, "the second apply to start")
            final = _without_pod(_without_pod(policy, "web-1"), "web-2")
            for gen in range(3, 53):  # 50 events while the apply is blocked
                src.set(_snap(final if gen == 52 else policy, gen))
            gate.set()
            await rig.until_status(lambda s: s.applied_generation == 52, "generation 52")
            assert rig.nft.attempts == 3  # initial, blocked one, ONE for the whole burst
            assert sorted(rig.model.sets["pods4"].elements) == ["100.64.1.4"]

    run(body())


def test_a_failed_apply_is_retried_as_a_full_resync_with_the_error_in_status() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        src = StaticSource(_snap(policy))
        async with Rig(src, interfaces=FakeInterfaces(ifaces)) as rig:
            await rig.until_applied(1)
            rig.nft.fail_next.append(NftError("Error: Could not process rule: No such file"))
            src.set(_snap(_without_pod(policy, "web-1"), 2))
            await rig.until_status(lambda s: s.reason == "NftApplyFailed", "the error")
            status = rig.status.last
            assert status is not None
            assert status.error == "Error: Could not process rule: No such file"
            assert status.applied_generation == 1  # what is still in the kernel
            await rig.until_status(lambda s: s.applied_generation == 2, "the retry")
            assert rig.applied[-1].startswith("add table inet secgroups\nflush table")
            assert rig.status.last is not None and rig.status.last.error is None
            assert rig.metrics.sync_errors.labels("NftApplyFailed")._value.get() == 1

    run(body())


def test_a_worker_crash_leads_to_a_full_resync() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        src = StaticSource(_snap(policy))
        async with Rig(src, interfaces=FakeInterfaces(ifaces)) as rig:
            await rig.until_applied(1)
            rig.nft.fail_next.append(NftWorkerCrashedError("the libnftables worker died"))
            src.set(_snap(policy, 2))
            web = next(k for k in policy.sets if k.startswith("sg.shop.web"))
            src.set(_snap(_members(policy, web, ["100.64.7.7/32"]), 3))
            await rig.until_status(lambda s: s.applied_generation == 3, "recovery")
            assert rig.applied[-1].startswith("add table inet secgroups\nflush table")
            assert "100.64.7.7" in rig.model.text()

    run(body())


def _members(policy: CompiledPolicy, key: str, extra: list[str]) -> CompiledPolicy:
    spec = policy.sets[key]
    new = spec.model_copy(update={"ipv4": (*spec.ipv4, *extra)})
    return policy.model_copy(update={"sets": {**policy.sets, key: new}})


def test_drift_is_repaired_by_a_full_resync() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        src = StaticSource(_snap(policy))
        cfg = SyncConfig(drift_period=0.02, min_interval=0.0, retry_backoff=(0.01, 0.05))
        async with Rig(src, config=cfg, interfaces=FakeInterfaces(ifaces)) as rig:
            await rig.until_applied(1)
            await wait_until(lambda: rig.loop.drift.checks >= 3, "a few clean drift checks")
            assert len(rig.applied) == 1
            good = rig.model.text()
            rig.model.apply("flush table inet secgroups\n")  # someone flushed our rules
            await rig.until_applied(2)
            assert rig.applied[1].startswith("add table inet secgroups\nflush table")
            assert rig.model.text() == good
            # Elements removed by hand are found too (the pod maps are checked every time).
            rig.model.apply("delete element inet secgroups pods4 { 100.64.1.2 }\n")
            await rig.until_applied(3)
            assert rig.model.text() == good
            assert rig.metrics.drift._value.get() == 2

    run(body())


def test_conntrack_is_cleaned_only_after_a_successful_apply() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        src = StaticSource(_snap(policy))
        async with Rig(src, interfaces=FakeInterfaces(ifaces)) as rig:
            await rig.until_applied(1)
            assert rig.conntrack.deleted_ips == []
            rig.nft.fail_next.append(NftError("Error: boom"))
            src.set(_snap(_without_pod(policy, "web-1"), 2))
            await rig.until_status(lambda s: s.reason == "NftApplyFailed", "the failure")
            assert rig.conntrack.deleted_ips == []  # the pod's rules may still be in the kernel
            await rig.until_status(lambda s: s.applied_generation == 2, "the full resync")
            assert sorted(rig.conntrack.deleted_ips) == sorted(nc.WEB1)

    run(body())


def test_a_failed_conntrack_cleanup_is_retried() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        src = StaticSource(_snap(policy))
        async with Rig(src, interfaces=FakeInterfaces(ifaces)) as rig:
            await rig.until_applied(1)
            rig.conntrack.fail_next.append(RuntimeError("netlink said no"))
            src.set(_snap(_without_pod(policy, "web-2"), 2))
            await rig.until_status(lambda s: s.reason == "ConntrackFailed", "the failure")
            await rig.until_status(lambda s: s.reason is None, "the retry")
            assert sorted(rig.conntrack.deleted_ips) == sorted(nc.WEB2)
            assert len(rig.applied) == 2  # the retry did not touch nft

    run(body())


def test_status_reports_what_is_in_the_kernel() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        src = StaticSource(_snap(policy, 7))
        async with Rig(src, interfaces=FakeInterfaces(ifaces)) as rig:
            await rig.until_status(lambda s: s.applied_generation == 7, "generation 7")
            s = rig.status.last
            assert s is not None
            assert s.pods == 3
            assert s.rules == sum(len(c.rules) for c in rig.model.chains.values())
            # The seal (secgroups.nft.sealing) is bookkeeping, not policy: not counted.
            kernel = sum(len(x.elements) for n, x in rig.model.sets.items() if n != SEAL)
            assert s.set_elements == kernel
            assert s.applied_at is not None and s.applied_at.endswith("Z")
            assert (s.error, s.reason) == (None, None)
            # A referenced set that does not exist is rendered as absent and reported.
            missing = CompiledPolicy(
                groups=policy.groups,
                sets={k: v for k, v in policy.sets.items() if not k.startswith("ipag.")},
                nodes=policy.nodes,
            )
            src.set(_snap(missing, 8))
            await rig.until_status(lambda s: s.reason == "MissingReferences", "missing refs")
            assert rig.status.last is not None and "set/ipag.shop.blocked" in (
                rig.status.last.error or ""
            )

    run(body())


def test_metrics_after_a_sync() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        src = StaticSource(_snap(policy))
        async with Rig(src, interfaces=FakeInterfaces(ifaces)) as rig:
            await rig.until_applied(1)
            await wait_until(lambda: rig.health.ready, "ready")
            text = rig.metrics.render().decode()
            assert 'secgroups_agent_sync_duration_seconds_count{kind="full"} 1.0' in text
            assert "secgroups_agent_last_successful_sync_timestamp_seconds" in text
            assert 'secgroups_agent_set_elements{set="pods4"} 3.0' in text
            assert "secgroups_agent_ready 1.0" in text

    run(body())


def test_a_render_error_is_reported_and_nothing_is_applied() -> None:
    async def body() -> None:
        policy, _ = _policy()
        src = StaticSource(_snap(policy))
        async with Rig(
            src, interfaces=FakeInterfaces({"100.64.1.2": "bad name with spaces"})
        ) as rig:
            await rig.until_status(lambda s: s.reason == "RenderFailed", "render error")
            assert rig.applied == []

    run(body())


def _unused(x: Awaitable[object]) -> None:  # keep the import of Awaitable meaningful for mypy
    del x


def test_a_source_problem_is_reported_while_the_last_good_policy_stays() -> None:
    async def body() -> None:
        from secgroups_agent.sources import SourceProblem

        policy, ifaces = _policy()
        src = StaticSource(_snap(policy, 3))
        async with Rig(src, interfaces=FakeInterfaces(ifaces)) as rig:
            await rig.until_status(lambda s: s.applied_generation == 3, "generation 3")
            src.set(_snap(policy, 3), SourceProblem("SourceInvalid", "policy.json: bad JSON"))
            await rig.until_status(lambda s: s.reason == "SourceInvalid", "the problem")
            assert rig.status.last is not None and rig.status.last.applied_generation == 3
            assert len(rig.applied) == 1

    run(body())


# ----------------------------------------------------------------------------- the sweep
OLD1, NEW1 = epoch_mark("uid-shop-web-1", 2), epoch_mark("uid-shop-web-1", 3)
WEB1 = nc.WEB1[0]
SSH = CtFlow(4, 6, "203.0.113.9", WEB1, WEB1, "203.0.113.9", 40000, 22, 22, mark=OLD1)
HTTP = CtFlow(4, 6, "192.0.2.99", WEB1, WEB1, "192.0.2.99", 40001, 80, 80, mark=OLD1)
OUTBOUND = CtFlow(4, 6, WEB1, "192.0.2.99", "192.0.2.99", WEB1, 40002, 443, 443)


def _marks(ct: FakeConntrack) -> list[int]:
    return [f.mark for f in ct.flows]


def test_a_raised_epoch_sweeps_the_pods_inbound_flows_before_the_status_says_applied() -> None:
    """S-CT-2 (sweeping.py): after the commit that raised web-1's epoch, its flows with the old
    mark are re-judged — still allowed: the new mark; denied: the tombstone — and only then
    is the generation reported. Outbound flows are never read (S-CT-1)."""

    async def body() -> None:
        policy, ifaces = _policy()
        src = StaticSource(_snap(policy))
        ct = FakeConntrack(flows=[SSH, HTTP, OUTBOUND])
        async with Rig(src, interfaces=FakeInterfaces(ifaces), conntrack=ct) as rig:
            await rig.until_status(lambda s: s.applied_generation == 1, "generation 1")
            assert ct.dumped_marks == []  # nothing was raised
            src.set(_snap(ac.web_http_revoked(), 2))
            await rig.until_status(lambda s: s.applied_generation == 2, "generation 2")
            assert _marks(ct) == [NEW1, MARK_TOMBSTONE, 0]
            assert ct.dumped_marks == [OLD1]
            assert rig.status.last is not None and rig.status.last.reason is None
            text = rig.metrics.render().decode()
            assert 'secgroups_agent_conntrack_flows_rechecked_total{verdict="kept"} 1.0' in text
            assert 'secgroups_agent_conntrack_flows_rechecked_total{verdict="cut"} 1.0' in text
            # A change that raises nothing sweeps nothing.
            src.set(_snap(_without_pod(ac.web_http_revoked(), "web-2"), 3))
            await rig.until_status(lambda s: s.applied_generation == 3, "generation 3")
            assert ct.dumped_marks == [OLD1]

    run(body())


def test_a_failed_sweep_is_retried_against_the_committed_policy() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        src = StaticSource(_snap(policy))
        ct = FakeConntrack(flows=[SSH, HTTP])
        async with Rig(src, interfaces=FakeInterfaces(ifaces), conntrack=ct) as rig:
            await rig.until_applied(1)
            ct.fail_next.append(RuntimeError("netlink said no"))
            src.set(_snap(ac.web_http_revoked(), 2))
            await rig.until_status(lambda s: s.reason == "ConntrackFailed", "the failure")
            last = rig.status.last
            assert last is not None and "netlink said no" in (last.error or "")
            await rig.until_status(lambda s: s.reason is None, "the retry")
            assert _marks(ct) == [NEW1, MARK_TOMBSTONE]
            assert len(rig.applied) == 2  # the retry did not touch nft

    run(body())


def test_a_started_agent_sweeps_epochs_raised_while_it_was_down() -> None:
    """The kernel still holds the table of an earlier agent (web-1 at epoch 2); the agent
    starts with web-1 at epoch 3: it reads the old marks from in_epoch* before its first
    commit and sweeps their flows."""

    async def body() -> None:
        policy, ifaces = _policy()
        ct = FakeConntrack(flows=[SSH, HTTP])
        src = StaticSource(_snap(ac.web_http_revoked(), 5))
        rig = Rig(src, interfaces=FakeInterfaces(ifaces), conntrack=ct)
        rig.model.apply(full_transaction(render(policy, NODE, ifaces)))
        async with rig:
            await rig.until_status(lambda s: s.applied_generation == 5, "generation 5")
            assert _marks(ct) == [NEW1, MARK_TOMBSTONE]

    run(body())


def test_a_restart_without_raised_epochs_sweeps_nothing() -> None:
    async def body() -> None:
        policy, ifaces = _policy()
        ct = FakeConntrack(flows=[SSH, HTTP])
        src = StaticSource(_snap(policy, 5))
        rig = Rig(src, interfaces=FakeInterfaces(ifaces), conntrack=ct)
        rig.model.apply(full_transaction(render(policy, NODE, ifaces)))
        async with rig:
            await rig.until_status(lambda s: s.applied_generation == 5, "generation 5")
            assert ct.dumped_marks == [] and _marks(ct) == [OLD1, OLD1]

    run(body())


# ----------------------------------------------------------------------------- re-check counters
DB1 = nc.DB1[0]
DB_KEY = naming.compiled_group_name("shop", "db")
WEB_SET = naming.sg_set_name("shop", "web")
DB1_MARK = epoch_mark("uid-shop-db-1", 0)
WEB1_MARK = epoch_mark("uid-shop-web-1", 2)
PG_FROM_WEB = CtFlow(4, 6, WEB1, DB1, DB1, WEB1, 40003, 5432, 5432, mark=DB1_MARK)
PG_FROM_OUTSIDE = CtFlow(4, 6, "192.0.2.99", DB1, DB1, "192.0.2.99", 40004, 5432, 5432)
SSH_WEB1 = dataclasses.replace(SSH, mark=WEB1_MARK)


async def _recheck(change: Callable[[CompiledPolicy], CompiledPolicy], counter: str) -> None:
    """db-1 has two inbound flows on 5432 stamped with its mark — one from web-1, which db's
    rule still allows, and one from outside the web group (as if admitted by a rule since
    gone) — and web-1 one. ``change`` raises only the counter ``counter`` of a group or set
    object (same node object, same epochs): the commit rewrites db-1's ``in_epoch`` and
    ``in_valid`` elements (nothing else), then db-1's flows with its old mark are re-judged;
    web-1's are not read."""
    policy, ifaces = _policy()
    outside = dataclasses.replace(PG_FROM_OUTSIDE, mark=DB1_MARK)
    ct = FakeConntrack(flows=[PG_FROM_WEB, outside, SSH_WEB1])
    src = StaticSource(_snap(policy))
    async with Rig(src, interfaces=FakeInterfaces(ifaces), conntrack=ct) as rig:
        await rig.until_status(lambda s: s.applied_generation == 1, "generation 1")
        assert ct.dumped_marks == []
        raised = change(policy)
        assert raised.nodes[NODE] is policy.nodes[NODE]  # the node object is unchanged
        src.set(_snap(raised, 2))
        await rig.until_status(lambda s: s.applied_generation == 2, "generation 2")
        new = pod_mark(raised.nodes[NODE].pods[0], raised.groups, raised.sets)
        assert raised.nodes[NODE].pods[0].name == "db-1" and new != DB1_MARK
        assert new == epoch_mark("uid-shop-db-1", 0, [(counter, 1)])
        text = rig.applied[-1]
        assert f"delete element inet secgroups in_epoch4 {{ {DB1} }}" in text
        assert f"delete element inet secgroups in_valid4 {{ {DB1} . 0x{DB1_MARK:08x} }}" in text
        assert f"{DB1} : 0x{new:08x}" in text and f"{DB1} . 0x{new:08x}" in text
        assert "chain" not in text and WEB1 not in text  # nothing else was rewritten
        result = rig.loop.results[-1]
        assert result.plan is not None
        assert sorted(result.plan.changed) == ["in_epoch4", "in_valid4"]
        assert ct.dumped_marks == [DB1_MARK]  # db-1's old mark only
        assert _marks(ct) == [new, MARK_TOMBSTONE, WEB1_MARK]


def test_a_raised_group_counter_alone_rechecks_the_groups_members() -> None:
    """S-CT-2 without a node object write: db's counter raised, nothing else changed."""
    run(_recheck(lambda p: ac.with_group(p, DB_KEY, recheck=1), f"group/{DB_KEY}"))


def test_a_raised_set_counter_rechecks_the_pods_whose_groups_name_it_inbound() -> None:
    """web's member set is named by db's inbound rule: its counter re-checks db-1 only."""
    run(_recheck(lambda p: ac.with_set(p, WEB_SET, recheck=1), f"set/{WEB_SET}"))
