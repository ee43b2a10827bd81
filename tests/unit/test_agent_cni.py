"""The agent's CNI side with fakes: bindings, pending addresses, the socket, readiness.

The sync loop runs for real against ``tests/nftmodel.py`` (a model kernel that applies
every transaction as nft would), so "the placeholder is in force" means: the model's
``pending4``/``pending6`` hold the address after a commit. The socket tests talk to a
real unix socket in a temporary directory. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests import nftcases as nc
from tests.nftmodel import ModelError, NftModel

from secgroups.compiled import CompiledNodeSpec, CompiledPod, CompiledPolicy
from secgroups.nft.rendering import render
from secgroups_agent.cni import (
    STATE_PLACEHOLDER,
    STATE_POLICY,
    STATE_UNMANAGED,
    Binding,
    BindingStore,
    CniError,
    CniState,
    StaticNamespaces,
    canonical_ips,
    claimants,
    pending_ips,
    protection,
)
from secgroups_agent.cnikube import GATE, PodInfo, Readiness, in_force
from secgroups_agent.cniserver import CniServer
from secgroups_agent.conntrack import FakeConntrack
from secgroups_agent.interfaces import FakeInterfaces
from secgroups_agent.metrics import Metrics
from secgroups_agent.nftables import FakeNft, NftError
from secgroups_agent.planning import Planner
from secgroups_agent.server import Health
from secgroups_agent.sources import StaticSource, slice_policy
from secgroups_agent.status import FakeStatus, StatusReporter
from secgroups_agent.syncing import SyncConfig, SyncLoop

NODE = nc.NODE
T = TypeVar("T")
WEB1, WEB1_6 = nc.WEB1
OLD_UID = "uid-shop-web-1"  # the scenario's web-1
NEW_UID = "uid-new-pod"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120.0))


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def binding(
    ips: tuple[str, ...],
    uid: str = NEW_UID,
    ns: str = "shop",
    managed: bool = True,
    cleaned: bool = True,
) -> Binding:
    return Binding(f"c-{uid}", ns, "p", uid, ips, None, managed, cleaned=cleaned)


# ----------------------------------------------------------------------------- decisions


def mkpod(name: str, uid: str, ips: tuple[str, ...], groups: list[str]) -> CompiledPod:
    return nc.pod("shop", name, ips, groups).model_copy(update={"uid": uid})


def node_with(*pods: tuple[str, str, tuple[str, ...]]) -> CompiledNodeSpec:
    return nc.policy([], [], [mkpod(n, u, ips, []) for n, u, ips in pods]).nodes[NODE]


@pytest.mark.parametrize(
    ("holders", "managed", "pending"),
    [
        pytest.param((("p", NEW_UID),), True, False, id="its-own-policy-holds-it"),
        pytest.param((), True, True, id="managed-new-pod-waits-for-its-policy"),
        pytest.param((), False, False, id="unmanaged-new-pod-nobody-else-s-address"),
        pytest.param((("old", OLD_UID),), True, True, id="ip-reuse-managed"),
        pytest.param((("old", OLD_UID),), False, True, id="ip-reuse-unmanaged-still-pending"),
        pytest.param(
            (("old", OLD_UID), ("p", NEW_UID)), True, True, id="two-uids-claim-it-pending"
        ),
    ],
)
def test_which_addresses_are_pending(
    holders: tuple[tuple[str, str], ...], managed: bool, pending: bool
) -> None:
    node = node_with(*((name, uid, (WEB1,)) for name, uid in holders))
    b = binding((WEB1,), managed=managed)
    got = pending_ips([b], claimants(node), lambda x: x.managed)
    assert (WEB1 in got) is pending


@pytest.mark.parametrize(
    ("holders", "managed", "pending"),
    [
        pytest.param((("p", NEW_UID),), True, True, id="own-policy-but-old-entries-left"),
        pytest.param((), False, False, id="unmanaged-nobody-s-address-needs-no-clean-up"),
        pytest.param((("p", NEW_UID),), False, True, id="unmanaged-own-policy-waits-too"),
    ],
)
def test_an_address_waits_for_its_conntrack_clean_up(
    holders: tuple[tuple[str, str], ...], managed: bool, pending: bool
) -> None:
    node = node_with(*((name, uid, (WEB1,)) for name, uid in holders))
    b = binding((WEB1,), managed=managed, cleaned=False)
    assert (WEB1 in pending_ips([b], claimants(node), lambda x: x.managed)) is pending


def test_protection_of_a_committed_table() -> None:
    b = binding((WEB1, WEB1_6))
    assert protection(b, frozenset({WEB1, WEB1_6}), {}, True) == STATE_PLACEHOLDER
    assert protection(b, frozenset(), {WEB1: NEW_UID, WEB1_6: NEW_UID}, True) == STATE_POLICY
    assert protection(b, frozenset(), {}, False) == STATE_UNMANAGED
    assert protection(b, frozenset(), {WEB1: NEW_UID}, True) is None  # v6 not yet
    assert protection(b, frozenset(), {WEB1: OLD_UID, WEB1_6: NEW_UID}, False) is None


def test_addresses_are_read_as_the_plugin_sends_them() -> None:
    assert canonical_ips(["100.64.1.2/24", "fd64:5ec:0:1:0::2/64", "100.64.1.2"]) == (
        "100.64.1.2",
        "fd64:5ec:0:1::2",
    )
    with pytest.raises(CniError, match="not an IP address"):
        canonical_ips(["100.64.1.300/32"])


def test_bindings_survive_a_restart(tmp_path: Path) -> None:
    store = BindingStore(tmp_path / "state")
    b = binding((WEB1,))
    store.save(b)
    (tmp_path / "state" / "junk.json").write_text("{not json")
    assert BindingStore(tmp_path / "state").load() == {b.container_id: b}
    store.remove(b.container_id)
    store.remove(b.container_id)  # twice is fine
    assert BindingStore(tmp_path / "state").load() == {}


# ----------------------------------------------------------------------------- the planner


def test_the_planner_puts_pending_addresses_where_render_does() -> None:
    s = nc.web_and_db()
    snap = slice_policy(s.policy, NODE)
    planner = Planner(NODE, s.options)
    steps = [frozenset({WEB1}), frozenset({WEB1, "fd64:5ec:0:1::9"}), frozenset()]
    model = NftModel()
    model.apply(planner.plan(snap, s.pod_interfaces, full=True).text)
    planner.commit(planner.plan(snap, s.pod_interfaces, full=True))
    for pending in steps:
        plan = planner.plan(snap, s.pod_interfaces, pending=pending)
        assert "pending" in plan.text  # elements only, nothing else
        model.apply(plan.stage + plan.text)
        planner.commit(plan)
        want = render(s.policy, NODE, s.pod_interfaces, s.options, pending=pending)
        assert planner.full_ruleset(planner.applied).text() == want.text()  # type: ignore[arg-type]
        assert set(model.sets["pending4"].elements) | set(model.sets["pending6"].elements) == {
            str(ip) for ip in pending
        }


# ----------------------------------------------------------------------------- with the loop


class Rig:
    """A sync loop (model kernel) with a CniState, as the agent wires them."""

    def __init__(self, policy: CompiledPolicy, store: BindingStore | None = None, **kw: Any):
        self.model = NftModel()
        self.source = StaticSource()
        self.source.set(slice_policy(policy, NODE))
        self.conntrack = FakeConntrack()

        def apply(_: FakeNft, text: str) -> None:
            try:
                self.model.apply(text)
            except ModelError as exc:
                raise NftError(f"Error: {exc}") from exc

        self.loop = SyncLoop(
            source=self.source,
            planner=Planner(NODE),
            nft=FakeNft(on_apply=apply, lister=self.model.listing),
            conntrack=self.conntrack,
            interfaces=FakeInterfaces(),
            reporter=StatusReporter(FakeStatus(), min_interval=0.0),
            metrics=Metrics(),
            health=Health(),
            config=SyncConfig(drift_period=3600.0, min_interval=0.0, retry_backoff=(0.01, 0.05)),
        )
        self.state = CniState(
            store or BindingStore(None),
            kw.pop("namespaces", StaticNamespaces(["shop"])),
            changed=self.loop.changed,
            conntrack=self.conntrack,
            **kw,
        )
        self.loop.placeholder = self.state

    def publish(self, policy: CompiledPolicy) -> None:
        self.source.set(slice_policy(policy, NODE))

    def pending(self) -> set[str]:
        return set(self.model.sets["pending4"].elements) | set(self.model.sets["pending6"].elements)

    async def __aenter__(self) -> Rig:
        self.tasks = [
            asyncio.create_task(self.source.run(self.loop.changed)),
            asyncio.create_task(self.loop.run()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def add(uid: str, ips: list[str], ns: str = "shop", cid: str | None = None) -> dict[str, Any]:
    return {
        "version": 1,
        "command": "ADD",
        "containerID": cid or f"c-{uid}",
        "namespace": ns,
        "name": f"pod-{uid}",
        "uid": uid,
        "ips": ips,
        "timeoutMs": 60_000,
    }


def with_pod(policy: CompiledPolicy, name: str, uid: str, ips: tuple[str, ...]) -> CompiledPolicy:
    group = next(iter(policy.groups))
    node = policy.nodes[NODE]
    pods = (*node.pods, mkpod(name, uid, ips, [group]))
    return policy.model_copy(update={"nodes": {NODE: node.model_copy(update={"pods": pods})}})


def without_pod(policy: CompiledPolicy, name: str) -> CompiledPolicy:
    node = policy.nodes[NODE]
    pods = tuple(p for p in node.pods if p.name != name)
    return policy.model_copy(update={"nodes": {NODE: node.model_copy(update={"pods": pods})}})


NEW4, NEW6 = "100.64.1.9", "fd64:5ec:0:1::9"


def test_add_answers_once_the_placeholder_is_in_force_and_the_policy_replaces_it() -> None:
    policy = nc.web_and_db().policy

    async def main() -> None:
        async with Rig(policy) as rig:
            reply = await rig.state.handle(add(NEW_UID, [f"{NEW4}/32", f"{NEW6}/128"]))
            assert reply["ok"] and reply["state"] == STATE_PLACEHOLDER, reply
            assert rig.pending() == {NEW4, NEW6}  # in the kernel before the answer
            await wait_until(
                lambda: {NEW4, NEW6} <= set(rig.conntrack.deleted_ips), "the conntrack clean-up"
            )
            rig.publish(with_pod(policy, "new", NEW_UID, (NEW4, NEW6)))
            await wait_until(lambda: not rig.pending(), "the policy replacing the placeholder")
            # The kernel (model) is written in the loop's worker thread just before the
            # loop hears of the commit: wait for that too.
            await wait_until(lambda: rig.state.last.owners.get(NEW4) == NEW_UID, "the commit")
            check = await rig.state.handle({**add(NEW_UID, []), "command": "CHECK"})
            assert check == {"ok": True, "state": STATE_POLICY}

    run(main())


def test_ip_reuse_stays_pending_until_the_new_uid_holds_the_address() -> None:
    """web-1's address is given to a new pod while the node object still lists web-1."""
    policy = nc.web_and_db().policy

    async def main() -> None:
        async with Rig(policy) as rig:
            reply = await rig.state.handle(add(NEW_UID, [f"{WEB1}/32"]))
            assert reply["state"] == STATE_PLACEHOLDER
            assert rig.pending() == {WEB1}
            # The operator drops web-1 but has not compiled the new pod yet: still pending.
            rig.publish(without_pod(policy, "web-1"))
            await wait_until(lambda: rig.state.last.owners.get(WEB1) is None, "web-1 gone")
            assert rig.pending() == {WEB1}
            rig.publish(with_pod(without_pod(policy, "web-1"), "new", NEW_UID, (WEB1,)))
            await wait_until(lambda: not rig.pending(), "the new pod's own policy")

    run(main())


def test_unmanaged_pods_get_no_placeholder_unless_their_address_is_someone_elses() -> None:
    policy = nc.web_and_db().policy

    async def main() -> None:
        async with Rig(policy) as rig:
            free = await rig.state.handle(add("u-free", [NEW4], ns="elsewhere"))
            assert free["state"] == STATE_UNMANAGED and not rig.pending()
            reused = await rig.state.handle(add("u-reuse", [WEB1], ns="elsewhere"))
            assert reused["state"] == STATE_PLACEHOLDER and rig.pending() == {WEB1}
            await rig.state.handle({"version": 1, "command": "DEL", "containerID": "c-u-reuse"})
            await wait_until(lambda: not rig.pending(), "DEL releasing the address")

    run(main())


def test_add_fails_readably_while_the_agent_has_no_input() -> None:
    async def main() -> None:
        rig = Rig(nc.web_and_db().policy)
        rig.source.set(None)  # not ready: the node object not listed yet
        async with rig:
            req = {**add(NEW_UID, [NEW4]), "timeoutMs": 300}
            reply = await rig.state.handle(req)
            assert not reply["ok"] and "not ready" in reply["error"], reply

    run(main())


def test_a_restarted_agent_keeps_pending_what_was_pending(tmp_path: Path) -> None:
    policy = nc.web_and_db().policy
    store = BindingStore(tmp_path / "cni-state")

    async def main() -> None:
        async with Rig(policy, store) as rig:
            await rig.state.handle(add(NEW_UID, [NEW4]))
            assert rig.pending() == {NEW4}
        async with Rig(policy, BindingStore(tmp_path / "cni-state")) as again:
            await wait_until(lambda: again.state.last.seq > 0, "the first sync")
            assert again.pending() == {NEW4}

    run(main())


def test_a_new_sandbox_with_the_same_addresses_replaces_the_stale_binding() -> None:
    async def main() -> None:
        async with Rig(nc.web_and_db().policy) as rig:
            await rig.state.handle(add("u-a", [NEW4], cid="sandbox-1"))
            await rig.state.handle(add("u-b", [NEW4], cid="sandbox-2"))  # DEL of 1 was lost
            assert set(rig.state.bindings) == {"sandbox-2"}

    run(main())


@pytest.mark.parametrize(
    ("req", "error"),
    [
        pytest.param({"version": 2, "command": "ADD"}, "protocol version", id="version"),
        pytest.param({"version": 1, "command": "SHRUG"}, "unknown command", id="command"),
        pytest.param({**add(NEW_UID, []), "uid": ""}, "no uid", id="no-uid"),
        pytest.param(add(NEW_UID, []), "no address", id="no-address"),
        pytest.param(add(NEW_UID, ["nope"]), "not an IP", id="bad-address"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(req: dict[str, Any], error: str) -> None:
    async def main() -> None:
        state = CniState(BindingStore(None), StaticNamespaces(["*"]))
        reply = await state.handle(req)
        assert not reply["ok"] and error in reply["error"], reply

    run(main())


# ----------------------------------------------------------------------------- the socket


def test_the_socket_speaks_one_json_line_each_way(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(nc.web_and_db().policy) as rig:
            server = CniServer(tmp_path / "run" / "cni.sock", rig.state)
            await server.start()
            try:
                assert (tmp_path / "run" / "cni.sock").stat().st_mode & 0o777 == 0o600

                async def ask(line: bytes) -> dict[str, Any]:
                    r, w = await asyncio.open_unix_connection(str(tmp_path / "run" / "cni.sock"))
                    w.write(line)
                    await w.drain()
                    out = json.loads(await r.readline())
                    w.close()
                    return out  # type: ignore[no-any-return]

                ok = await ask(json.dumps(add(NEW_UID, [NEW4])).encode() + b"\n")
                assert ok["ok"] and ok["state"] == STATE_PLACEHOLDER
                bad = await ask(b"[1, 2]\n")
                assert not bad["ok"] and "bad request" in bad["error"]
            finally:
                await server.stop()

    run(main())


# ----------------------------------------------------------------------------- readiness


class FakePods:
    def __init__(self, pods: list[PodInfo]) -> None:
        self.pods = {p.uid: p for p in pods}


class FakeNamespaces:
    def enforced(self, namespace: str) -> bool | None:
        return namespace == "shop"


class FakeStatusApi:
    def __init__(self) -> None:
        self.patches: list[tuple[str, str, dict[str, Any]]] = []

    async def patch_pod_status(
        self, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        self.patches.append((namespace, name, patch))
        return {}


def test_the_condition_is_set_when_the_policy_is_in_force_and_only_then() -> None:
    s = nc.web_and_db()
    snap = slice_policy(s.policy, NODE)
    planner = Planner(NODE, s.options)
    state = planner.plan(snap, s.pod_interfaces, full=True).state
    uids = {p.name: p.uid for p in snap.node.pods}
    pods = [
        PodInfo("shop", "web-1", uids["web-1"], True, False, False),
        PodInfo("shop", "web-2", uids["web-2"], True, False, False),
        PodInfo("shop", "db-1", uids["db-1"], True, True, False),  # already True
        PodInfo("shop", "late", "u-late", True, False, False),  # not compiled yet
        PodInfo("other", "plain", "u-plain", True, False, False),  # not enforced
        PodInfo("shop", "host", "u-host", True, False, True),  # hostNetwork
        PodInfo("shop", "nogate", "u-nogate", False, False, False),
    ]
    api = FakeStatusApi()

    async def main() -> None:
        r = Readiness(api, FakePods(pods), FakeNamespaces())  # type: ignore[arg-type]
        # web-2's address still pending (say, IP reuse): not in force.
        r.committed(snap, state, frozenset({nc.WEB2[0]}))
        assert sorted(p.name for p in r.due()) == ["host", "plain", "web-1"]
        task = asyncio.create_task(r.run())
        try:
            await wait_until(lambda: len(api.patches) == 3, "three patches")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(main())
    by_name = {name: patch for _, name, patch in api.patches}
    web1 = by_name["web-1"]
    assert web1["metadata"] == {"uid": uids["web-1"]}
    (cond,) = web1["status"]["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (GATE, "True", "PolicyApplied")
    assert by_name["plain"]["status"]["conditions"][0]["reason"] == "NotEnforced"
    assert in_force(snap, state, frozenset()) == set(uids.values())


def test_a_failed_conntrack_clean_up_keeps_the_pod_behind_the_placeholder() -> None:
    """Its own policy arrived, but entries of the address's previous sandbox may still be
    there: the address stays pending until the clean-up, retried, succeeds."""
    policy = nc.web_and_db().policy

    async def main() -> None:
        async with Rig(policy) as rig:
            rig.conntrack.fail_next = [OSError("netlink busy")]
            reply = await rig.state.handle(add(NEW_UID, [NEW4]))
            assert reply["state"] == STATE_PLACEHOLDER
            rig.publish(with_pod(policy, "new", NEW_UID, (NEW4,)))
            await wait_until(lambda: rig.state.last.owners.get(NEW4) == NEW_UID, "its policy")
            assert rig.pending() == {NEW4} or NEW4 in rig.conntrack.deleted_ips
            await wait_until(lambda: NEW4 in rig.conntrack.deleted_ips, "the retried clean-up")
            await wait_until(lambda: not rig.pending(), "the placeholder lifted")

    run(main())
