"""Where the agent's inputs come from: the policy file and the three Kubernetes watches
(its node object by name, the groups and sets labelled for its node)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import yaml
from tests import nftcases as nc

from secgroups import naming
from secgroups.compiled import (
    COMPILED_GROUP_KIND,
    COMPILED_NODE_KIND,
    COMPILED_SET_KIND,
    CompiledGroupSpec,
    CompiledNodeSpec,
    CompiledPolicy,
    ObjectKey,
)
from secgroups_agent.sources import (
    FakeKubeApi,
    FileSource,
    KubeSource,
    parse_policy_document,
    required_generations,
    slice_policy,
)

NODE = nc.NODE
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60.0))


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def _policy() -> CompiledPolicy:
    return nc.web_and_db().policy


def _dump(policy: CompiledPolicy) -> dict[str, Any]:
    return policy.model_dump(by_alias=True, mode="json")


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- file
def test_policy_documents_json_yaml_and_envelope() -> None:
    policy = _policy()
    assert parse_policy_document(json.dumps(_dump(policy))) == (policy, None)
    assert parse_policy_document(yaml.safe_dump(_dump(policy))) == (policy, None)
    envelope = json.dumps({"generation": 9, "policy": _dump(policy)})
    assert parse_policy_document(envelope) == (policy, 9)


def test_slice_takes_the_node_and_what_it_references() -> None:
    policy = _policy()
    other = nc.policy([], [], [nc.pod("x", "y", ["100.64.5.5"], [])], node="n2")
    both = CompiledPolicy(
        groups=policy.groups, sets=policy.sets, nodes={**policy.nodes, **other.nodes}
    )
    snap = slice_policy(both, NODE, 3)
    assert snap.node == policy.nodes[NODE]
    assert set(snap.groups) == set(policy.groups) and set(snap.sets) == set(policy.sets)
    assert snap.generation == 3 and snap.missing == ()
    assert snap.policy() == policy.for_node(NODE)
    empty = slice_policy(both, "n9")
    assert empty.node.pods == () and empty.groups == {}
    dangling = CompiledPolicy(groups={}, sets={}, nodes=policy.nodes)
    assert slice_policy(dangling, NODE).missing == tuple(
        sorted([f"group/{g}" for g in policy.groups] + [f"set/{s}" for s in policy.sets])
    )


def test_file_source_reads_reloads_and_rejects(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    src = FileSource(path, NODE)
    assert not src.poll() and src.snapshot() is None
    problem = src.problem()
    assert problem is not None and problem.reason == "WaitingForInitialList"
    policy = _policy()
    _write(path, json.dumps({"generation": 1, "policy": _dump(policy)}))
    assert src.poll()
    snap = src.snapshot()
    assert snap is not None and snap.generation == 1 and src.problem() is None
    assert not src.poll()  # unchanged file: nothing to do
    _write(path, "{not json")
    assert src.poll()
    problem = src.problem()
    assert problem is not None and problem.reason == "SourceInvalid"
    assert src.snapshot() is snap  # the last good input stays
    _write(path, yaml.safe_dump(_dump(policy)))  # a bare dump: generation = load count
    assert src.poll()
    again = src.snapshot()
    assert again is not None and again.generation == 2 and again.node == snap.node
    path.unlink()
    assert src.poll()
    problem = src.problem()
    assert problem is not None and problem.reason == "SourceMissing"


def test_file_source_task_notifies_on_change(tmp_path: Path) -> None:
    async def body() -> None:
        path = tmp_path / "p.json"
        src = FileSource(path, NODE, interval=0.01)
        calls: list[int] = []
        task = asyncio.create_task(src.run(lambda: calls.append(1)))
        try:
            _write(path, json.dumps({"generation": 5, "policy": _dump(_policy())}))
            await wait_until(lambda: src.snapshot() is not None and bool(calls), "a load")
            snap = src.snapshot()
            assert snap is not None and snap.generation == 5
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


# ----------------------------------------------------------------------------- kube
def _load(api: FakeKubeApi, policy: CompiledPolicy, node_generation: int = 1) -> None:
    for key, g in policy.groups.items():
        api.put(COMPILED_GROUP_KIND, key, g.model_dump(by_alias=True, mode="json"), nodes=[NODE])
    for key, s in policy.sets.items():
        api.put(COMPILED_SET_KIND, key, s.model_dump(by_alias=True, mode="json"), nodes=[NODE])
    node = policy.nodes[NODE].model_dump(by_alias=True, mode="json")
    api.put(COMPILED_NODE_KIND, NODE, node, generation=node_generation)


LABEL = f"node.secgroups.dev/{NODE}"


def test_kube_source_holds_three_watches_whatever_the_node_uses() -> None:
    async def body() -> None:
        policy = _policy()
        api = FakeKubeApi()
        _load(api, policy)
        api.put(
            COMPILED_GROUP_KIND,
            "sg.other.unused",
            {"group": {"namespace": "o", "name": "u"}},
            nodes=["n2"],
        )
        api.put(COMPILED_NODE_KIND, "n2", {"node": "n2"})
        src = KubeSource(api, NODE)
        task = asyncio.create_task(src.run(lambda: None))
        try:
            await wait_until(lambda: src.snapshot() is not None, "ready")
            wanted = {
                (COMPILED_GROUP_KIND, LABEL),
                (COMPILED_SET_KIND, LABEL),
                (COMPILED_NODE_KIND, f"metadata.name={NODE}"),
            }
            await wait_until(lambda: set(api.watching) == wanted, "exactly three watches")
            assert api.lists[:2] == [(COMPILED_GROUP_KIND, LABEL), (COMPILED_SET_KIND, LABEL)]
            snap = src.snapshot()
            assert snap is not None and snap.policy() == policy.for_node(NODE)
            assert (COMPILED_GROUP_KIND, "sg.other.unused") not in src.watched

            # The node stops using the db group and set; the operator then unlabels them.
            node = policy.nodes[NODE]
            db = min(policy.groups)
            pods = tuple(
                p.model_copy(update={"groups": tuple(g for g in p.groups if g != db)})
                for p in node.pods
            )
            sets = tuple(s for s in node.sets if not s.startswith("sg.shop.db"))
            fewer = node.model_copy(
                update={
                    "pods": pods,
                    "groups": tuple(g for g in node.groups if g != db),
                    "sets": sets,
                }
            )
            api.put(COMPILED_NODE_KIND, NODE, fewer.model_dump(by_alias=True, mode="json"), 2)
            api.label(COMPILED_GROUP_KIND, db, [])
            api.label(COMPILED_SET_KIND, "sg.shop.db", [])
            await wait_until(
                lambda: (s := src.snapshot()) is not None and s.generation == 2, "generation 2"
            )
            snap = src.snapshot()
            assert snap is not None and db not in snap.groups and not snap.missing
            await wait_until(lambda: (COMPILED_GROUP_KIND, db) not in src.watched, "forgotten")
            assert set(api.watching) == wanted  # still three

            # A member change arrives through the sets' watch.
            web = next(k for k in policy.sets if k.startswith("sg.shop.web"))
            spec = policy.sets[web].model_copy(update={"ipv4": ("100.64.9.9/32",)})
            api.put(COMPILED_SET_KIND, web, spec.model_dump(by_alias=True, mode="json"), 2, [NODE])
            await wait_until(
                lambda: (
                    (s := src.snapshot()) is not None and s.sets[web].ipv4 == ("100.64.9.9/32",)
                ),
                "the member change",
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert api.watching == {}

    run(body())


def test_an_object_leaving_the_selection_is_kept_while_the_node_references_it() -> None:
    """The streams are separate: the unlabel can arrive before the node object that
    stopped referencing the object. Until then the agent keeps its last content."""

    async def body() -> None:
        policy = _policy()
        api = FakeKubeApi()
        _load(api, policy)
        src = KubeSource(api, NODE)
        task = asyncio.create_task(src.run(lambda: None))
        try:
            await wait_until(lambda: src.snapshot() is not None, "ready")
            db = min(policy.groups)
            revision = src.snapshot().group_revision  # type: ignore[union-attr]
            api.label(COMPILED_GROUP_KIND, db, [])  # before the node object changes
            await wait_until(
                lambda: (
                    (s := src.snapshot()) is not None and (s.group_revision or 0) > (revision or 0)
                ),
                "the unlabel seen",
            )
            snap = src.snapshot()
            assert snap is not None and db in snap.groups and not snap.missing
            api.label(COMPILED_GROUP_KIND, db, [NODE])  # and back: the same content
            api.delete(COMPILED_GROUP_KIND, db)  # deleted while referenced: kept too
            await asyncio.sleep(0.05)
            snap = src.snapshot()
            assert snap is not None and snap.groups[db] == policy.groups[db]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_kube_source_waits_for_the_generations_the_node_requires() -> None:
    async def body() -> None:
        policy = _policy()
        api = FakeKubeApi()
        _load(api, policy)
        src = KubeSource(api, NODE)
        task = asyncio.create_task(src.run(lambda: None))
        try:
            await wait_until(lambda: src.snapshot() is not None, "ready")
            web = next(k for k in policy.sets if k.startswith("sg.shop.web"))
            node = policy.nodes[NODE].model_copy(update={"requires": {f"set/{web}": 3}})
            api.put(COMPILED_NODE_KIND, NODE, node.model_dump(by_alias=True, mode="json"), 2)
            await wait_until(lambda: src.snapshot() is None, "waiting for the set")
            problem = src.problem()
            assert problem is not None and problem.reason == "WaitingForReferences"
            assert f"set/{web} generation 3" in problem.message
            spec = policy.sets[web].model_copy(update={"ipv4": ()})
            api.put(COMPILED_SET_KIND, web, spec.model_dump(by_alias=True, mode="json"), 3, [NODE])
            await wait_until(lambda: src.snapshot() is not None, "ready again")
            snap = src.snapshot()
            assert snap is not None and snap.generation == 2 and snap.sets[web].ipv4 == ()

            # A group newly referenced, required, and not labelled yet: wait for it.
            extra = "sg.shop.extra"
            pods = (
                tuple(p.model_copy(update={"groups": (*p.groups, extra)}) for p in node.pods[:1])
                + node.pods[1:]
            )
            more = node.model_copy(
                update={
                    "pods": pods,
                    "groups": (*node.groups, extra),
                    "requires": {f"group/{extra}": 1},
                }
            )
            api.put(COMPILED_NODE_KIND, NODE, more.model_dump(by_alias=True, mode="json"), 3)
            await wait_until(lambda: src.snapshot() is None, "waiting for the new group")
            api.put(
                COMPILED_GROUP_KIND,
                extra,
                {"group": {"namespace": "shop", "name": "extra"}},
                1,
                [NODE],
            )
            await wait_until(
                lambda: (s := src.snapshot()) is not None and extra in s.groups, "the new group"
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_kube_source_waits_for_the_generations_a_referenced_group_requires() -> None:
    """db's re-check counter raised for a change of web's members (db names them inbound):
    the group object requires the set's new generation, and the agent applies neither
    before it holds both — the node object, unchanged, requires nothing."""

    async def body() -> None:
        policy = _policy()
        api = FakeKubeApi()
        _load(api, policy)
        src = KubeSource(api, NODE)
        task = asyncio.create_task(src.run(lambda: None))
        try:
            await wait_until(lambda: src.snapshot() is not None, "ready")
            db = naming.compiled_group_name("shop", "db")
            web = naming.sg_set_name("shop", "web")
            raised = policy.groups[db].model_copy(
                update={"recheck": 1, "requires": {f"set/{web}": 2}}
            )
            api.put(
                COMPILED_GROUP_KIND, db, raised.model_dump(by_alias=True, mode="json"), 2, [NODE]
            )
            await wait_until(lambda: src.snapshot() is None, "waiting for the set")
            problem = src.problem()
            assert problem is not None and problem.reason == "WaitingForReferences"
            assert problem.message == f"waiting for set/{web} generation 2"
            fewer = policy.sets[web].model_copy(update={"ipv4": policy.sets[web].ipv4[:1]})
            api.put(COMPILED_SET_KIND, web, fewer.model_dump(by_alias=True, mode="json"), 2, [NODE])
            await wait_until(lambda: src.snapshot() is not None, "ready again")
            snap = src.snapshot()
            assert snap is not None and snap.groups[db].recheck == 1
            assert snap.sets[web].ipv4 == fewer.ipv4 and src.problem() is None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_required_generations_are_the_highest_of_the_node_and_its_groups() -> None:
    node = CompiledNodeSpec(node=NODE, requires={"set/a": 4, "set/b": 1, "group/g": 2})
    groups = [
        CompiledGroupSpec(group=ObjectKey(namespace="x", name="g"), requires={"set/a": 3}),
        CompiledGroupSpec(group=ObjectKey(namespace="x", name="h"), requires={"set/b": 5}),
        CompiledGroupSpec(group=ObjectKey(namespace="x", name="i"), requires={"set/c": 0}),
        None,  # an invalid object: no spec
    ]
    assert required_generations(node, groups) == {
        "set/a": 4,
        "set/b": 5,
        "group/g": 2,
        "set/c": 0,
    }
    assert required_generations(node, []) == node.requires


def test_kube_source_missing_node_object_means_no_pods_and_resumes_after_errors() -> None:
    async def body() -> None:
        api = FakeKubeApi()
        api.fail_watch.add(COMPILED_NODE_KIND)
        src = KubeSource(api, NODE, backoff=(0.01, 0.05))
        task = asyncio.create_task(src.run(lambda: None))
        try:
            await wait_until(lambda: src.snapshot() is not None, "ready")
            snap = src.snapshot()
            assert snap is not None and snap.node.pods == () and snap.generation is None
            node_watch = (COMPILED_NODE_KIND, f"metadata.name={NODE}")
            await wait_until(lambda: node_watch in api.watching, "the watch resumed")
            assert api.lists.count(node_watch) == 1  # resumed from its version, no relist
            _load(api, _policy(), node_generation=6)
            await wait_until(
                lambda: (s := src.snapshot()) is not None and s.generation == 6, "the node object"
            )
            api.delete(COMPILED_NODE_KIND, NODE)
            await wait_until(
                lambda: (s := src.snapshot()) is not None and s.node.pods == (), "deletion"
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_a_compacted_version_relists_and_sweeps_what_went() -> None:
    async def body() -> None:
        policy = _policy()
        api = FakeKubeApi()
        _load(api, policy)
        src = KubeSource(api, NODE, backoff=(0.01, 0.05))
        task = asyncio.create_task(src.run(lambda: None))
        try:
            await wait_until(lambda: src.snapshot() is not None, "ready")
            groups, _, _ = src.reflectors
            # The db group is unlabelled, and the API server forgets that history before
            # the watch reads it (410 Gone): the agent relists and sweeps.
            db = min(policy.groups)
            api.label(COMPILED_GROUP_KIND, db, [])
            api.compacted = api.rv
            await wait_until(lambda: groups.lists >= 2, "a relist")
            assert groups.entries[db].gone  # swept, kept while the node references it
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_an_invalid_node_object_is_reported() -> None:
    async def body() -> None:
        api = FakeKubeApi()
        api.put(COMPILED_NODE_KIND, NODE, {"node": NODE, "pods": "not a list"})
        src = KubeSource(api, NODE)
        task = asyncio.create_task(src.run(lambda: None))
        try:
            await wait_until(
                lambda: (p := src.problem()) is not None and p.reason == "SourceInvalid",
                "the problem",
            )
            assert src.snapshot() is None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_a_reloaded_file_keeps_the_objects_that_did_not_change(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    policy = _policy()
    src = FileSource(path, NODE)
    _write(path, json.dumps({"generation": 1, "policy": _dump(policy)}))
    assert src.poll()
    first = src.snapshot()
    node = policy.nodes[NODE]
    pods = tuple(p.model_copy(update={"epoch": 9}) if p.name == "web-1" else p for p in node.pods)
    bumped = policy.model_copy(update={"nodes": {NODE: node.model_copy(update={"pods": pods})}})
    _write(path, json.dumps({"generation": 2, "policy": _dump(bumped)}))
    assert src.poll()
    second = src.snapshot()
    assert first is not None and second is not None
    assert all(second.groups[k] is first.groups[k] for k in first.groups)
    assert all(second.sets[k] is first.sets[k] for k in first.sets)
    same = [p for p in second.node.pods if p.name != "web-1"]
    assert all(any(p is q for q in first.node.pods) for p in same)
    assert next(p for p in second.node.pods if p.name == "web-1").epoch == 9
