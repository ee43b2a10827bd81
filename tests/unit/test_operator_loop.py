"""The operator process against an in-memory API server (``secgroups_operator.fake``):
reflectors, intake, incremental compile in a thread, publishing, statuses, Events,
default groups and leader election — what one object's problem does to everyone else.

The real API server path (and the size limit of etcd itself) is exercised by
``tests/cluster/test_operator_isolation.py``; here failures are injected per object.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from secgroups import naming
from secgroups.compiled import NodeAgentStatus
from secgroups.quotas import MAX_RULES_PER_GROUP, too_many_rules_error
from secgroups_agent.status import report_body
from secgroups_operator.fake import FakeCluster
from secgroups_operator.main import Operator
from secgroups_operator.ports import RequestError
from secgroups_operator.reconciling import Options

API = "secgroups.dev/v1alpha1"
ENFORCE = {"secgroups.dev/enforce": "true"}


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": ENFORCE}}


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def pod(
    namespace: str, name: str, node_name: str, ip: str, groups: str | None = None, **labels: str
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if groups:
        meta["annotations"] = {"secgroups.dev/security-groups": groups}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node_name},
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]},
    }


def sg(namespace: str, name: str, selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if selector:
        spec["podSelector"] = {"matchLabels": selector}
    return {
        "apiVersion": API,
        "kind": "SecurityGroup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def rule(namespace: str, name: str, group: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "SecurityGroupRule",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"securityGroup": group, "direction": "Ingress", "protocol": "TCP", **spec},
    }


def ipag(namespace: str, name: str, family: str, addresses: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "IPAddressGroup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ipFamily": family, "addresses": addresses},
    }


def world(fake: FakeCluster) -> None:
    for obj in (
        ns("a"),
        ns("b"),
        node("n1"),
        node("n2"),
        sg("a", "web", {"app": "web"}),
        sg("a", "db"),
        rule("a", "db-from-web", "db", ports="5432", remote={"securityGroup": {"name": "web"}}),
        pod("a", "w1", "n1", "100.64.1.2", app="web"),
        pod("a", "d1", "n2", "100.64.2.2", groups="db"),
        sg("b", "app"),
        pod("b", "x1", "n1", "100.64.1.3", groups="app"),
    ):
        fake.put(obj)


async def wait_until(what: str, probe: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


class Running:
    def __init__(self, fake: FakeCluster, **kw: Any) -> None:
        opts = Options(debounce_s=0.0, status_interval_s=0.05)
        self.op = Operator(fake, kw.pop("options", opts), page=3, **kw)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Operator:
        self.task = asyncio.create_task(self.op.run(self.stop))
        await asyncio.wait_for(self.op.ready.wait(), 15)
        return self.op

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 15)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 60))


def settled(op: Operator) -> bool:
    rec = op.reconciler
    return not rec._queue and rec.publisher.converged() and not rec.statuses.wanted


def must(fake: FakeCluster, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
    obj = fake.get_obj(kind, name, namespace)
    assert obj is not None, f"{kind} {namespace}/{name} does not exist"
    return obj


def node_pods(fake: FakeCluster, name: str) -> dict[str, Any]:
    obj = fake.get_obj("CompiledNodePolicy", name)
    if obj is None:
        return {}
    return {f"{p['namespace']}/{p['name']}": p for p in obj["spec"].get("pods", ())}


def ready(fake: FakeCluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    obj = fake.get_obj(kind, name, namespace)
    for cond in ((obj or {}).get("status") or {}).get("conditions") or ():
        if cond["type"] == "Ready":
            return dict(cond)
    return None


# ----------------------------------------------------------------------------- basics


def test_publishes_labelled_objects_and_a_restart_writes_nothing() -> None:
    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and node_pods(fake, "n2"))
            web = fake.get_obj("CompiledAddressSet", "sg.a.web")
            assert web is not None and web["spec"]["ipv4"] == ["100.64.1.2/32"]
            # the set is used by db's rule, and db is on n2 only
            assert set(web["metadata"]["labels"]) >= {"node.secgroups.dev/n2"}
            assert "node.secgroups.dev/n1" not in web["metadata"]["labels"]
            group = fake.get_obj("CompiledSecurityGroup", "sg.a.web")
            assert group is not None and "node.secgroups.dev/n1" in group["metadata"]["labels"]
            assert ready(fake, "SecurityGroup", "a", "db") is not None
        writes = len(fake.writes)
        async with Running(fake) as op:
            await wait_until("settled again", lambda: settled(op))
            await asyncio.sleep(0.2)
        assert fake.writes[writes:] == [], "a restart rewrote objects"

    run(go)


def test_the_build_leaves_the_collector_on_and_its_result_frozen() -> None:
    """The initial build runs with the garbage collector off (a build makes no cycles; full
    collections over the growing heap were a fifth of it): it must be on again once the
    operator is ready, or cyclic garbage would never be freed, with the build frozen out
    of its walks."""

    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        gc.unfreeze()
        assert gc.isenabled()
        async with Running(fake) as op:
            assert gc.isenabled()
            assert gc.get_freeze_count() > 0
            await wait_until("settled", lambda: settled(op))
            assert gc.isenabled()

    run(go)


def test_the_lists_are_compiled_as_they_come_and_nothing_is_written_before_the_last_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the pods' list is still coming (its later pages held), what has arrived is
    compiled (``Reconciler.preload``), nothing is written, and once the last page is in
    the operator publishes what an operator that compiled everything at the end does."""
    from secgroups_operator import reconciling

    monkeypatch.setattr(reconciling, "PRELOAD_MIN_EVENTS", 1)

    def many(fake: FakeCluster) -> None:
        world(fake)
        for i in range(12):
            fake.put(pod("a", f"p{i:02d}", f"n{1 + i % 2}", f"100.64.3.{i + 2}", app="web"))
            fake.put(pod("b", f"q{i:02d}", f"n{1 + i % 2}", f"100.64.4.{i + 2}", groups="app"))

    def published(fake: FakeCluster) -> dict[tuple[str, str, str], Any]:
        """Compiled objects, and the statuses of users' objects (without timestamps)."""
        out: dict[tuple[str, str, str], Any] = {}
        for key, obj in fake.objects.items():
            if key[0].startswith("Compiled"):
                out[key] = (obj.get("spec"), obj["metadata"].get("labels"))
            elif key[0].startswith("Security"):
                status = dict(obj.get("status") or {})
                status["conditions"] = [
                    {k: v for k, v in c.items() if k != "lastTransitionTime"}
                    for c in status.get("conditions") or ()
                ]
                out[key] = status
        return out

    async def go() -> None:
        at_end = FakeCluster()
        many(at_end)
        async with Running(at_end, options=Options(debounce_s=0.0, preload_s=0.0)) as op:
            await wait_until("settled", lambda: settled(op) and node_pods(at_end, "n2"))
            assert op.reconciler.preloads == 0
        fake = FakeCluster()
        many(fake)
        gate = fake.hold["list:Pod"] = asyncio.Event()
        opts = Options(debounce_s=0.0, status_interval_s=0.05, preload_s=0.01)
        running = Running(fake, options=opts)
        running.task = asyncio.create_task(running.op.run(running.stop))
        rec = running.op.reconciler
        await wait_until("a preload", lambda: rec.preloads >= 1)
        assert fake.writes == [], "written before the lists were complete"
        assert rec.lists_done is None and rec.compiler is None
        gate.set()
        await asyncio.wait_for(running.op.ready.wait(), 15)
        await wait_until("settled", lambda: settled(running.op) and node_pods(fake, "n2"))
        assert rec.preloaded_events >= 1
        assert published(fake) == published(at_end)
        # The rule index was kept by the preload too: a deleted rule updates its group.
        fake.remove("SecurityGroupRule", "db-from-web", "a")
        db = ("SecurityGroup", "a", "db")
        await wait_until("db's status", lambda: fake.objects[db]["status"]["ruleCount"] == 0)
        await running.__aexit__()

    run(go)


def test_epochs_listed_after_the_preload_began_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart whose pods are compiled before the node objects (with their epochs) are
    all listed: the build raises the preloaded pods to the published epochs, so nothing is
    written and no epoch goes back (a lower epoch would un-re-check a pod's flows)."""
    from secgroups_operator import reconciling

    monkeypatch.setattr(reconciling, "PRELOAD_MIN_EVENTS", 1)

    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        for i in (1, 2, 3):  # node objects m1-m3 fill the list's first page (3 a page)
            fake.put(node(f"m{i}"))
            fake.put(pod("b", f"m{i}", f"m{i}", f"100.64.5.{i}", groups="app"))
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and node_pods(fake, "m3"))
            fake.put(pod("a", "w1", "n1", "100.64.1.2", app="other"))  # leaves web
            await wait_until("w1's epoch", lambda: node_pods(fake, "n1")["a/w1"].get("epoch"))
            await wait_until(  # w1 is in a's default group now: created, then compiled
                "settled",
                lambda: (
                    settled(op)
                    and fake.get_obj("SecurityGroup", "default", "a")
                    and fake.get_obj("CompiledSecurityGroup", "sg.a.web") is None
                ),
            )
            await asyncio.sleep(0.2)
            await wait_until("settled", lambda: settled(op))
        epoch = node_pods(fake, "n1")["a/w1"]["epoch"]
        writes = len(fake.writes)
        gate = fake.hold["list:CompiledNodePolicy"] = asyncio.Event()
        opts = Options(debounce_s=0.0, status_interval_s=0.05, preload_s=0.01)
        running = Running(fake, options=opts)
        running.task = asyncio.create_task(running.op.run(running.stop))
        rec = running.op.reconciler
        await wait_until(
            "w1 preloaded",
            lambda: rec.preloads and not rec._queue and ("Pod", "a", "w1") in rec.intake.versions,
        )
        assert ("a", "w1") not in rec._published_epochs  # n1's object is on the held page
        gate.set()
        await asyncio.wait_for(running.op.ready.wait(), 15)
        await wait_until("settled", lambda: settled(running.op))
        await asyncio.sleep(0.2)
        await running.__aexit__()
        assert node_pods(fake, "n1")["a/w1"]["epoch"] == epoch
        assert fake.writes[writes:] == [], "the restart rewrote objects"

    run(go)


def test_one_pod_churn_writes_its_node_and_its_sets_only() -> None:
    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and node_pods(fake, "n2"))
            before = len(fake.writes)
            fake.put(pod("a", "w2", "n1", "100.64.1.9", app="web"))
            await wait_until("w2 published", lambda: "a/w2" in node_pods(fake, "n1"))
            await wait_until("settled", lambda: settled(op))
            written = {(k, n) for verb, k, n in fake.writes[before:] if verb != "status"}
            assert written == {
                ("CompiledNodePolicy", "n1"),
                ("CompiledAddressSet", "sg.a.web"),
            }

    run(go)


def test_node_objects_are_created_and_updated_never_applied() -> None:
    """Node objects are written whole: created, then updated with the version last seen
    as a precondition — also over another writer's version, and after a 409 when the
    version the operator holds is behind — and never by apply (an apply would not remove
    what an update wrote)."""

    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and node_pods(fake, "n1"))
            created = [v for v, k, _ in fake.writes if k == "CompiledNodePolicy"]
            assert created and set(created) == {"create"}, created
            before = len(fake.writes)
            fake.put(pod("a", "w2", "n1", "100.64.1.9", app="web"))
            await wait_until("w2 published", lambda: "a/w2" in node_pods(fake, "n1"))
            # Someone else writes n1: written back whole.
            n1 = must(fake, "CompiledNodePolicy", "n1")
            fake.put({**n1, "spec": {**n1["spec"], "pods": []}})
            await wait_until("n1's pods back", lambda: "a/w2" in node_pods(fake, "n1"))
            # The version the operator holds is behind: 409, read again, written.
            await wait_until("settled", lambda: settled(op))
            op.reconciler.publisher.stored[("CompiledNodePolicy", "n1")].rv -= 1
            fake.put(pod("a", "w3", "n1", "100.64.1.10", app="web"))
            await wait_until("w3 published", lambda: "a/w3" in node_pods(fake, "n1"))
            assert "a/w2" in node_pods(fake, "n1")
            nodes = [v for v, k, _ in fake.writes[before:] if k == "CompiledNodePolicy"]
            assert nodes and set(nodes) == {"replace"}, nodes

    run(go)


def test_a_removed_inbound_allow_raises_the_groups_counter_in_one_write() -> None:
    """Row 4 re-checks every member of the group: its counter goes up in the same write
    as the rule's removal — no node object is written, whatever the number of nodes —
    and the group ``requires`` the sets it names as stored."""

    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        fake.put(rule("a", "db-from-lab", "db", ports="22", remote={"cidr": "100.64.9.0/24"}))
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and node_pods(fake, "n2"))
            epoch = node_pods(fake, "n2")["a/d1"].get("epoch", 0)
            recheck = must(fake, "CompiledSecurityGroup", "sg.a.db")["spec"].get("recheck", 0)
            before = len(fake.writes)
            fake.remove("SecurityGroupRule", "db-from-lab", "a")

            def counter() -> int:
                spec = must(fake, "CompiledSecurityGroup", "sg.a.db")["spec"]
                return int(spec.get("recheck", 0))

            await wait_until("counter raised", lambda: counter() == recheck + 1)
            await wait_until("settled", lambda: settled(op))
            group = must(fake, "CompiledSecurityGroup", "sg.a.db")
            assert [r["id"] for r in group["spec"]["ingress"]] == ["a/db-from-web"]
            compiled = {(k, n) for _, k, n in fake.writes[before:] if k.startswith("Compiled")}
            assert compiled == {("CompiledSecurityGroup", "sg.a.db")}
            assert node_pods(fake, "n2")["a/d1"].get("epoch", 0) == epoch
            web = must(fake, "CompiledAddressSet", "sg.a.web")
            assert group["spec"]["requires"] == {"set/sg.a.web": web["metadata"]["generation"]}

    run(go)


def test_a_group_change_does_not_wait_behind_slow_node_objects_and_keeps_the_order() -> None:
    """Node objects are written in the background: while one is stuck on a slow API
    server, the next change's group is published; a pod's epoch raised meanwhile still
    reaches the node object with ``requires`` of the group it was raised for. (The pods
    are running ones that join ``db``: a new pod's first IPs raise its epoch too, but it
    has no flow to re-check and is not held to that order.)"""

    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        fake.put(pod("a", "d2", "n2", "100.64.2.3", app="web"))
        fake.put(pod("a", "d3", "n2", "100.64.2.4", app="web"))
        async with Running(fake) as op:

            def epoch(name: str) -> int:
                return int(node_pods(fake, "n2").get(f"a/{name}", {}).get("epoch", 0))

            await wait_until("settled", lambda: settled(op) and "a/d3" in node_pods(fake, "n2"))
            slow = fake.hold["CompiledNodePolicy"] = asyncio.Event()
            e2, e3 = epoch("d2"), epoch("d3")  # their first IPs raised them once already

            def db_rules() -> list[str]:
                spec = must(fake, "CompiledSecurityGroup", "sg.a.db")["spec"]
                return [r["id"] for r in spec.get("ingress", ())]

            fake.put(pod("a", "d2", "n2", "100.64.2.3", groups="db"))  # row 1: d2's epoch
            fake.put(rule("a", "db-from-b", "db", ports="5432", remote={"cidr": "100.64.9.0/24"}))
            await wait_until("the next change's group, beside the stuck node object", db_rules)
            await wait_until("d2's node object in flight", op.reconciler.publisher.tail_running)
            assert not slow.is_set() and epoch("d2") == e2
            fake.remove("SecurityGroupRule", "db-from-web", "a")  # row 4: db's counter
            await wait_until("the group without it", lambda: "a/db-from-web" not in db_rules())
            fake.put(pod("a", "d3", "n2", "100.64.2.4", groups="db"))  # raised meanwhile
            rec = op.reconciler
            await wait_until(
                "d3's epoch raised while d2's write is in flight",
                lambda: rec.compiler is not None and rec.compiler.epoch(("a", "d3")) > e3,
            )
            assert not slow.is_set()
            slow.set()
            await wait_until("settled", lambda: settled(op) and epoch("d3") > e3)
            assert epoch("d2") > e2
            group = must(fake, "CompiledSecurityGroup", "sg.a.db")
            n2 = must(fake, "CompiledNodePolicy", "n2")
            assert n2["spec"]["requires"]["group/sg.a.db"] == group["metadata"]["generation"]

    run(go)


def test_a_new_pods_node_object_goes_out_beside_its_set_an_existing_pods_epoch_after() -> None:
    """A new pod's entry needs its groups and sets placed, not their latest specs: its
    node object is written while its group's member set is still being written (one
    write's latency, not two in series). A running pod that joins a group has flows to
    re-check: its new epoch waits for the set and requires its generation."""

    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        fake.put(pod("a", "w2", "n2", "100.64.2.5", app="web"))  # web is placed on n2
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and "a/w2" in node_pods(fake, "n2"))

            def web_set_generation() -> int:
                return int(must(fake, "CompiledAddressSet", "sg.a.web")["metadata"]["generation"])

            slow = fake.hold["CompiledAddressSet"] = asyncio.Event()
            generation = web_set_generation()
            fake.put(pod("a", "w3", "n2", "100.64.2.6", app="web"))  # new: its first IPs
            await wait_until(
                "w3 in n2's object while web's set is held", lambda: "a/w3" in node_pods(fake, "n2")
            )
            assert not slow.is_set() and web_set_generation() == generation
            slow.set()
            await wait_until("settled", lambda: settled(op) and web_set_generation() > generation)

            def d1_epoch() -> int:
                return int(node_pods(fake, "n2")["a/d1"].get("epoch", 0))

            slow = fake.hold["CompiledAddressSet"] = asyncio.Event()
            before = d1_epoch()
            fake.put(pod("a", "d1", "n2", "100.64.2.2", groups="db", app="web"))  # joins web
            rec = op.reconciler
            await wait_until(
                "d1's epoch raised",
                lambda: rec.compiler is not None and rec.compiler.epoch(("a", "d1")) > before,
            )
            await asyncio.sleep(0.3)
            assert d1_epoch() == before, "d1's new epoch was published before web's set"
            slow.set()
            await wait_until("d1's epoch published", lambda: settled(op) and d1_epoch() > before)
            n2 = must(fake, "CompiledNodePolicy", "n2")
            assert n2["spec"]["requires"]["set/sg.a.web"] == web_set_generation()

    run(go)


def test_a_new_pod_on_a_node_new_to_its_group_waits_for_labels_not_for_specs() -> None:
    """The first pod of group web on n2: the group must carry n2's label before n2's object
    names it, and that label is written first in the round — the pod's entry goes out while
    the specs (the group's and its set's, slow here) are still being written."""

    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and "a/d1" in node_pods(fake, "n2"))
            web = must(fake, "CompiledSecurityGroup", "sg.a.web")
            assert naming.node_label("n2") not in web["metadata"].get("labels", {})
            slow = asyncio.Event()
            fake.hold["CompiledAddressSet:secgroups-operator"] = slow
            fake.hold["CompiledSecurityGroup:secgroups-operator"] = slow
            fake.put(pod("a", "w3", "n2", "100.64.2.6", app="web"))  # new: its first IPs
            await wait_until(
                "w3 in n2's object while the specs are held",
                lambda: "a/w3" in node_pods(fake, "n2"),
            )
            assert not slow.is_set()
            web = must(fake, "CompiledSecurityGroup", "sg.a.web")
            assert naming.node_label("n2") in web["metadata"]["labels"]
            slow.set()
            await wait_until("settled", lambda: settled(op))

    run(go)


def test_with_new_pods_wait_a_new_pods_node_object_waits_for_its_set() -> None:
    """``--new-pods-wait`` (for comparisons: bench/scale.py --compare new-pods) keeps the
    behaviour before: the new pod's entry goes out only after its group's set is written."""

    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        fake.put(pod("a", "w2", "n2", "100.64.2.5", app="web"))
        options = Options(debounce_s=0.0, status_interval_s=0.05, new_pods_early=False)
        async with Running(fake, options=options) as op:
            await wait_until("settled", lambda: settled(op) and "a/w2" in node_pods(fake, "n2"))
            slow = fake.hold["CompiledAddressSet"] = asyncio.Event()
            fake.put(pod("a", "w3", "n2", "100.64.2.6", app="web"))
            rec = op.reconciler
            await wait_until(
                "w3 compiled",
                lambda: rec.compiler is not None and rec.compiler.epoch(("a", "w3")) >= 1,
            )
            await asyncio.sleep(0.3)
            assert "a/w3" not in node_pods(fake, "n2"), "w3 published before web's set"
            slow.set()
            await wait_until("w3 published", lambda: "a/w3" in node_pods(fake, "n2"))

    run(go)


# ----------------------------------------------------------------------------- isolation


def test_an_object_the_api_server_refuses_stalls_only_itself() -> None:
    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        fake.fail[("CompiledAddressSet", "sg.a.web")] = RequestError(500, "injected")
        async with Running(fake) as op:
            await wait_until("b's pod published", lambda: "b/x1" in node_pods(fake, "n1"))
            fake.put(pod("b", "x2", "n2", "100.64.2.7", groups="app"))
            await wait_until("b's new pod published", lambda: "b/x2" in node_pods(fake, "n2"))
            cond = await wait_until(
                "web reports the failure",
                lambda: (
                    (c := ready(fake, "SecurityGroup", "a", "web"))
                    and c["reason"] == "PublishFailed"
                    and c
                ),
            )
            assert "injected" in cond["message"]
            retry = op.reconciler.publisher.retry[("CompiledAddressSet", "sg.a.web")]
            assert retry.failures >= 1
            # The group naming the set waits for it: never published against older members.
            assert fake.get_obj("CompiledSecurityGroup", "sg.a.db") is None
            del fake.fail[("CompiledAddressSet", "sg.a.web")]
            await wait_until(
                "written after the backoff",
                lambda: fake.get_obj("CompiledAddressSet", "sg.a.web") is not None,
            )
            group = await wait_until(
                "then the group", lambda: fake.get_obj("CompiledSecurityGroup", "sg.a.db")
            )
            web = must(fake, "CompiledAddressSet", "sg.a.web")
            assert group["spec"]["requires"] == {"set/sg.a.web": web["metadata"]["generation"]}

    run(go)


def test_an_address_group_too_large_to_compile_is_refused_and_reported() -> None:
    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        fake.put(ipag("a", "office", "IPv4", ["198.51.100.0/24"]))
        fake.put(
            rule("a", "db-office", "db", ports="22", remote={"ipAddressGroup": {"name": "office"}})
        )
        async with Running(fake):
            await wait_until(
                "office published", lambda: fake.get_obj("CompiledAddressSet", "ipag.a.office")
            )
            ranges = [f"fd00:{i:x}::1-fd00:{i:x}::ffff:ffff:ffff:fffe" for i in range(5000)]
            fake.put(ipag("a", "office", "IPv6", ranges))
            cond = await wait_until(
                "TooLarge",
                lambda: (
                    (c := ready(fake, "IPAddressGroup", "a", "office"))
                    and c["reason"] == "TooLarge"
                    and c
                ),
            )
            assert "CIDRs" in cond["message"]
            fake.put(pod("b", "x3", "n2", "100.64.2.9", groups="app"))
            await wait_until("b's new pod published", lambda: "b/x3" in node_pods(fake, "n2"))
            kept = fake.get_obj("CompiledAddressSet", "ipag.a.office")
            assert kept is not None and kept["spec"]["ipv4"] == ["198.51.100.0/24"]
            assert any(e["reason"] == "TooLarge" for e in fake.events)

    run(go)


# Ingress only: over the compiled model's bound per direction (the compiler refuses it);
# both directions: within it, over the per-group limit only (the publisher holds it).
@pytest.mark.parametrize("directions", [("Ingress",), ("Ingress", "Egress")])
def test_a_group_with_too_many_rules_is_held_and_reported(directions: tuple[str, ...]) -> None:
    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and node_pods(fake, "n2"))
            gen = must(fake, "CompiledSecurityGroup", "sg.a.db")["metadata"]["generation"]
            for i in range(MAX_RULES_PER_GROUP + 1):
                fake.put(
                    rule(
                        "a",
                        f"cidr-{i}",
                        "db",
                        direction=directions[i % len(directions)],
                        ports=str(1 + i),
                        remote={"cidr": "192.0.2.0/24"},
                    )
                )
            # db-from-web and the new ones, in the webhook's and the compiler's words
            # (the rules arrive one by one: a count on the way may show first).
            message = too_many_rules_error(("a", "db"), MAX_RULES_PER_GROUP + 2)
            await wait_until(
                "TooManyRules",
                lambda: (
                    (c := ready(fake, "SecurityGroup", "a", "db"))
                    and (c["reason"], c["message"]) == ("TooManyRules", message)
                ),
                timeout=40,
            )
            await wait_until(
                "its Event",
                lambda: any(
                    e["reason"] == "TooManyRules" and e["message"].endswith(message)
                    for e in fake.events
                ),
            )
            fake.put(pod("b", "x4", "n2", "100.64.2.10", groups="app"))
            await wait_until("b's new pod published", lambda: "b/x4" in node_pods(fake, "n2"))
            held = must(fake, "CompiledSecurityGroup", "sg.a.db")
            assert held["metadata"]["generation"] == gen

    run(go)


def test_a_malformed_pod_ip_is_skipped_with_an_event() -> None:
    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        fake.put(pod("a", "bad", "n1", "010.0.0.1", app="web"))
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and node_pods(fake, "n2"))
            assert "a/bad" not in node_pods(fake, "n1")
            assert "a/w1" in node_pods(fake, "n1")
            events = [e for e in fake.events if e["reason"] == "InvalidPodIP"]
            assert events and events[0]["involvedObject"]["name"] == "bad"

    run(go)


def test_a_pod_naming_a_missing_group_gets_a_warning_event_and_no_group() -> None:
    """Fail-closed (docs/semantics.md, decision 6): no fallback to the default group."""

    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        fake.put(pod("a", "typo", "n1", "100.64.1.9", groups="wbe"))
        async with Running(fake) as op:
            await wait_until("typo published", lambda: "a/typo" in node_pods(fake, "n1"))
            assert node_pods(fake, "n1")["a/typo"]["groups"] == []
            events = await wait_until(
                "UnknownGroup event",
                lambda: [e for e in fake.events if e["reason"] == "UnknownGroup"],
            )
            assert [e["involvedObject"]["name"] for e in events] == ["typo"]
            assert events[0]["type"] == "Warning"
            assert "do not exist: wbe; they match nothing" in events[0]["message"]
            await wait_until("settled", lambda: settled(op))
            assert len([e for e in fake.events if e["reason"] == "UnknownGroup"]) == 1

    run(go)


def test_default_groups_are_created_once_and_never_overwrite_edits() -> None:
    async def go() -> None:
        fake = FakeCluster()
        for obj in (ns("c"), ns("d"), node("n1")):
            fake.put(obj)
        edited = rule("c", "default-egress-ipv4", "default", direction="Egress", ports="443")
        fake.put(edited)
        fake.fail[("SecurityGroup", "default")] = RequestError(403, "namespace is terminating")
        fake.put(pod("c", "p1", "n1", "100.64.1.5"))
        fake.put(pod("d", "p2", "n1", "100.64.1.6"))
        async with Running(fake) as op:
            await wait_until(
                "both pods published",
                lambda: {"c/p1", "d/p2"} <= set(node_pods(fake, "n1")),
            )
            await wait_until(
                "an event for the refusal",
                lambda: any(e["reason"] == "DefaultGroupNotCreated" for e in fake.events),
            )
            del fake.fail[("SecurityGroup", "default")]
            await wait_until(
                "created after the backoff",
                lambda: (
                    fake.get_obj("SecurityGroup", "default", "c")
                    and fake.get_obj("SecurityGroup", "default", "d")
                ),
                timeout=20,
            )
            kept = fake.get_obj("SecurityGroupRule", "default-egress-ipv4", "c")
            assert kept is not None and kept["spec"]["ports"] == "443"
            assert not any(v == "apply" and k == "SecurityGroupRule" for v, k, _ in fake.writes)
            del op

    run(go)


# ----------------------------------------------------------------------------- failover


def test_the_standby_takes_over_and_publishes_the_next_change_without_flapping() -> None:
    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        lease = ("kube-system", "ksg-operator")
        async with Running(fake, identity="one", lease=lease, lease_s=1.0) as one:
            await wait_until("one leads", lambda: one.leading)
            await wait_until("settled", lambda: settled(one) and node_pods(fake, "n2"))
            standby = Running(fake, identity="two", lease=lease, lease_s=1.0)
            two = await standby.__aenter__()
            await asyncio.sleep(0.3)
            assert not two.leading
            generations = {
                (k[0], k[2]): o["metadata"]["generation"]
                for k, o in fake.objects.items()
                if k[0].startswith("Compiled")
            }
            before = len(fake.writes)
        # one stopped (lease released): two takes over
        try:
            await wait_until("two leads", lambda: two.leading, timeout=10)
            assert [w for w in fake.writes[before:] if w[0] != "status" and w[0] != "replace"] == []
            fake.put(pod("b", "x9", "n2", "100.64.2.99", groups="app"))
            await wait_until("two publishes", lambda: "b/x9" in node_pods(fake, "n2"))
            for (kind, name), gen in generations.items():
                obj = fake.get_obj(kind, name)
                if obj is not None and (kind, name) != ("CompiledNodePolicy", "n2"):
                    assert obj["metadata"]["generation"] == gen, (kind, name)
        finally:
            await standby.__aexit__()

    run(go)


@pytest.mark.parametrize("kind", ["SecurityGroupRule", "IPAddressGroup"])
def test_an_invalid_custom_object_is_reported_on_itself(kind: str) -> None:
    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        bad = (
            rule("a", "broken", "db", ports="99999")
            if kind == "SecurityGroupRule"
            else ipag("a", "broken", "IPv4", ["300.1.2.3"])
        )
        fake.put(bad)
        async with Running(fake) as op:
            cond = await wait_until(
                "Invalid",
                lambda: (c := ready(fake, kind, "a", "broken")) and c["status"] == "False" and c,
            )
            assert cond["reason"] == "Invalid"
            await wait_until("others published", lambda: settled(op) and node_pods(fake, "n2"))

    run(go)


def test_group_status_reports_members_rules_quota_and_realization() -> None:
    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        # A second ingress rule that S-L-1 does not count: a CIDR remote, one port.
        fake.put(
            rule("a", "db-from-office", "db", ports="5432", remote={"cidr": "100.64.250.0/24"})
        )
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and node_pods(fake, "n2"))
            status = await wait_until(
                "db status", lambda: (fake.get_obj("SecurityGroup", "db", "a") or {}).get("status")
            )
            assert status["memberCount"] == 1
            assert status["ruleCount"] == 2
            assert status["rulesCountedTowardsQuota"] == {
                "ingressIPv4": 1,
                "ingressIPv6": 0,
                "egressIPv4": 0,
                "egressIPv6": 0,
            }
            assert status["conditions"][0]["status"] == "True"
            assert status["realization"]["nodes"] == "0/1"  # no agent has reported yet
            gen = must(fake, "CompiledSecurityGroup", "sg.a.db")["metadata"]["generation"]
            rev = int(must(fake, "CompiledSecurityGroup", "sg.a.db")["metadata"]["resourceVersion"])
            n2 = must(fake, "CompiledNodePolicy", "n2")
            fake.put(  # what n2's agent writes once it applied (status.KubeReport)
                report_body(
                    "n2",
                    n2["metadata"]["uid"],
                    NodeAgentStatus(
                        applied_generation=n2["metadata"]["generation"],
                        applied_group_revision=rev,
                    ),
                )
            )
            realized = await wait_until(
                "realized",
                lambda: (
                    (
                        r := (
                            (fake.get_obj("SecurityGroup", "db", "a") or {}).get("status") or {}
                        ).get("realization")
                    )
                    and r["nodesRealized"] == 1
                    and r
                ),
            )
            assert realized == {
                "nodesDesired": 1,
                "nodesRealized": 1,
                "nodes": "1/1",
                "generation": gen,
            }

    run(go)


def test_an_egress_change_reaches_no_epoch() -> None:
    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and node_pods(fake, "n2"))
            epochs = {k: p.get("epoch", 0) for k, p in node_pods(fake, "n1").items()}
            fake.put(rule("a", "web-out", "web", direction="Egress", ports="443"))
            await wait_until(
                "web rewritten",
                lambda: any(
                    r["id"] == "a/web-out"
                    for r in must(fake, "CompiledSecurityGroup", "sg.a.web")["spec"].get(
                        "egress", ()
                    )
                ),
            )
            await wait_until("settled", lambda: settled(op))
            assert {k: p.get("epoch", 0) for k, p in node_pods(fake, "n1").items()} == epochs

    run(go)


def test_a_restart_rechecks_what_changed_while_the_operator_was_down() -> None:
    async def go() -> None:
        fake = FakeCluster()
        world(fake)
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op) and node_pods(fake, "n2"))
        epochs = {k: p.get("epoch", 0) for k, p in node_pods(fake, "n1").items()}
        d1 = node_pods(fake, "n2")["a/d1"].get("epoch", 0)
        recheck = must(fake, "CompiledSecurityGroup", "sg.a.db")["spec"].get("recheck", 0)
        fake.put(rule("a", "db-deny", "db", action="Deny", protocol="All"))
        async with Running(fake) as op:
            await wait_until("settled", lambda: settled(op))
            await wait_until(
                "db's members re-checked",
                lambda: (
                    must(fake, "CompiledSecurityGroup", "sg.a.db")["spec"].get("recheck", 0)
                    == recheck + 1
                ),
            )
            # nothing else was re-checked
            assert node_pods(fake, "n2")["a/d1"].get("epoch", 0) == d1
            assert {k: p.get("epoch", 0) for k, p in node_pods(fake, "n1").items()} == epochs

    run(go)
