"""The node agent's Kubernetes port against a real kube-apiserver with our CRDs.

:class:`~secgroups_agent.sources.KubeSource` lists and watches its node's
``CompiledNodePolicy`` (by field selector) and the groups and sets labelled for its node
(one label-selected watch per kind: another node's objects never reach it); the
generations it requires gate readiness; :class:`~secgroups_agent.status.KubeReport`
writes the node's ``NodeAgentReport``, owned by the node object (the garbage collector
deletes it with that object). Then the whole agent process runs in a node-like netns on
the underlay, with the node kubeconfig, and programs its table from the API server.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from tests import nftcases as nc

from secgroups.compiled import (
    COMPILED_GROUP_KIND,
    COMPILED_NODE_KIND,
    COMPILED_SET_KIND,
    NODE_REPORT_KIND,
    CompiledPolicy,
    NodeAgentStatus,
)
from secgroups.kinds import plural
from secgroups.models import API_VERSION
from secgroups.naming import node_label
from secgroups_agent.sources import KubeSource
from secgroups_agent.status import KubeReport
from secgroups_kube import AsyncKube
from secgroups_lab import controlplane, underlay
from secgroups_lab._cmd import in_netns

pytestmark = pytest.mark.cluster
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120.0))


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _policy(tag: str, node: str) -> CompiledPolicy:
    """Two groups and an address set in a namespace of their own (unique per test)."""
    ns = f"agt{tag}"
    web_set = nc.sg_set(ns, "web", ["100.64.1.2/32"], ["fd64:5ec:0:1::2/128"])
    web = nc.group(
        ns, "web", [nc.rule(f"{ns}/http", nc.IN, "TCP", [80]), nc.rule(f"{ns}/out", nc.EG, "All")]
    )
    client = nc.group(
        ns, "client", [nc.rule(f"{ns}/from-web", nc.IN, "All", remote=nc.ref(web_set[0]))]
    )
    pods = [
        nc.pod(ns, "a1", ["100.64.1.2", "fd64:5ec:0:1::2"], [web[0]]),
        nc.pod(ns, "a2", ["100.64.1.3"], [client[0]]),
    ]
    return nc.policy([web, client], [web_set], pods, node=node)


def _objects(policy: CompiledPolicy, labelled: bool = True) -> list[dict[str, Any]]:
    """The objects as the operator writes them: groups and sets labelled for the node."""
    (node,) = policy.nodes
    out: list[dict[str, Any]] = []
    for kind, items in (
        (COMPILED_GROUP_KIND, policy.groups),
        (COMPILED_SET_KIND, policy.sets),
        (COMPILED_NODE_KIND, policy.nodes),
    ):
        for name, spec in items.items():
            meta: dict[str, Any] = {"name": name}
            if kind != COMPILED_NODE_KIND:
                meta["labels"] = {node_label(node): ""} if labelled else {}
            out.append(
                {
                    "apiVersion": API_VERSION,
                    "kind": kind,
                    "metadata": meta,
                    "spec": spec.model_dump(by_alias=True, mode="json", exclude_none=True),
                }
            )
    return out


class Api:
    """kubectl on the test's control plane."""

    def __init__(self, cp: controlplane.ControlPlane) -> None:
        self.cp = cp

    def apply(self, objects: list[dict[str, Any]]) -> None:
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        # As the operator writes them: the agent enforces only its objects (trust.py).
        self.cp.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=secgroups-operator",
            "-f",
            "-",
            input_text=doc,
        )

    def delete(self, kind: str, name: str) -> None:
        self.cp.kubectl("delete", f"{plural(kind)}.secgroups.dev", name, "--ignore-not-found")

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = self.cp.kubectl("get", f"{plural(kind)}.secgroups.dev", name, "-o", "json").stdout
        return dict(json.loads(out))

    def names(self, kind: str) -> set[str]:
        out = self.cp.kubectl("get", f"{plural(kind)}.secgroups.dev", "-o", "json").stdout
        return {i["metadata"]["name"] for i in json.loads(out)["items"]}


@pytest.fixture
def api(control_plane: controlplane.ControlPlane, crds_installed: list[str]) -> Iterator[Api]:
    yield Api(control_plane)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:6]


def _cleanup(api: Api, policy: CompiledPolicy) -> None:
    for obj in _objects(policy):
        api.delete(obj["kind"], obj["metadata"]["name"])


def test_kube_source_watches_its_labelled_objects_and_gates_on_required_generations(
    api: Api, control_plane: controlplane.ControlPlane, tag: str
) -> None:
    node = f"agt-{tag}"
    policy = _policy(tag, node)
    decoy = _policy(f"{tag}x", f"agt-{tag}-other")  # another node's objects: never watched
    api.apply(_objects(policy) + _objects(decoy))

    async def body() -> None:
        client = AsyncKube.connect(control_plane.kubeconfig, field_manager="secgroups-agent")
        src = KubeSource(client, node, backoff=(0.1, 1.0))
        changes: list[int] = []
        task = asyncio.create_task(src.run(lambda: changes.append(1)))
        try:
            await wait_until(lambda: src.snapshot() is not None, "the initial lists")
            snap = src.snapshot()
            assert snap is not None
            assert snap.policy() == policy.for_node(node)
            assert snap.generation == 1
            assert set(src.watched) == {(COMPILED_GROUP_KIND, g) for g in policy.groups} | {
                (COMPILED_SET_KIND, s) for s in policy.sets
            }

            # A member change arrives through the set's own watch.
            web_set = next(iter(policy.sets))
            grown = policy.sets[web_set].model_copy(
                update={"ipv4": ("100.64.1.2/32", "100.64.1.9/32")}
            )
            obj = _objects(policy.model_copy(update={"sets": {web_set: grown}}))[2]
            api.apply([obj])
            await wait_until(
                lambda: (s := src.snapshot()) is not None and len(s.sets[web_set].ipv4) == 2,
                "the member change",
            )
            set_gen = api.get(COMPILED_SET_KIND, web_set)["metadata"]["generation"]

            # The node now requires a set generation the agent has not seen: not ready.
            spec = policy.nodes[node].model_copy(
                update={"requires": {f"set/{web_set}": set_gen + 1}}
            )
            node_obj = {
                **_objects(policy)[-1],
                "spec": spec.model_dump(by_alias=True, mode="json", exclude_none=True),
            }
            api.apply([node_obj])
            await wait_until(lambda: src.snapshot() is None, "waiting for the set generation")
            problem = src.problem()
            assert problem is not None and problem.reason == "WaitingForReferences"
            shrunk = grown.model_copy(update={"ipv4": ("100.64.1.2/32",)})
            api.apply(
                [{**obj, "spec": shrunk.model_dump(by_alias=True, mode="json", exclude_none=True)}]
            )
            await wait_until(
                lambda: (
                    (s := src.snapshot()) is not None and s.sets[web_set].ipv4 == ("100.64.1.2/32",)
                ),
                "ready again with the new set",
            )

            # The node drops the client group, then the operator unlabels it: forgotten.
            client_group = max(policy.groups)
            pods = tuple(p for p in spec.pods if client_group not in p.groups)
            fewer = spec.model_copy(update={"pods": pods, "groups": (min(policy.groups),)})
            api.apply(
                [
                    {
                        **node_obj,
                        "spec": fewer.model_dump(by_alias=True, mode="json", exclude_none=True),
                    }
                ]
            )
            unlabelled = next(
                o for o in _objects(policy, labelled=False) if o["metadata"]["name"] == client_group
            )
            api.apply([unlabelled])
            await wait_until(
                lambda: (COMPILED_GROUP_KIND, client_group) not in src.watched, "forgotten"
            )
            status = NodeAgentStatus(
                applied_generation=3,
                applied_at="2026-01-01T00:00:00.000Z",
                pods=1,
                rules=9,
                set_elements=5,
                error=None,
                reason=None,
            )
            await KubeReport(client, node, src.node_uid).write(status)
            # No node object: nothing to report on, nothing written.
            await KubeReport(client, "no-such-node", lambda: None).write(status)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()

    try:
        run(body())
        stored = api.get(COMPILED_NODE_KIND, node)
        report = api.get(NODE_REPORT_KIND, node)
        assert report["status"]["appliedGeneration"] == 3 and report["status"]["rules"] == 9
        assert "error" not in report["status"]
        (owner,) = report["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == (COMPILED_NODE_KIND, stored["metadata"]["uid"])
        assert stored["metadata"]["generation"] == 3  # the report does not touch the node object
        assert "no-such-node" not in api.names(NODE_REPORT_KIND)
        # The node object deleted: the garbage collector deletes its report.
        api.delete(COMPILED_NODE_KIND, node)
        deadline = time.monotonic() + 60
        while node in api.names(NODE_REPORT_KIND) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert node not in api.names(NODE_REPORT_KIND)
    finally:
        _cleanup(api, policy)
        _cleanup(api, decoy)


@pytest.fixture
def node_netns(control_plane: controlplane.ControlPlane) -> Iterator[str]:
    """A node-like netns on the lab underlay (as a lab node, without pods)."""
    name = f"{control_plane.prefix}-ag{uuid.uuid4().hex[:4]}"
    underlay.create_netns(name)
    try:
        underlay.attach(control_plane.prefix, name, "eth0", ["100.64.254.11/24"])
        yield name
    finally:
        underlay.delete_netns(name)


def test_the_agent_process_programs_its_table_from_the_api_server(
    api: Api, control_plane: controlplane.ControlPlane, node_netns: str, tag: str
) -> None:
    node = f"agt-{tag}"
    policy = _policy(tag, node)
    api.apply(_objects(policy))
    argv = [
        sys.executable,
        "-m",
        "secgroups_agent.main",
        "--node",
        node,
        "--kubeconfig",
        str(control_plane.node_kubeconfig),
        "--metrics-addr",
        "127.0.0.1:9750",
    ]
    proc = subprocess.Popen(
        in_netns(node_netns, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60.0
        status: dict[str, Any] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            if node in api.names(NODE_REPORT_KIND):
                status = api.get(NODE_REPORT_KIND, node).get("status") or {}
                if status.get("appliedGeneration") == 1:
                    break
            time.sleep(0.2)
        assert status.get("appliedGeneration") == 1, status
        assert status["pods"] == 2 and status.get("error") is None

        def pods4() -> str:
            return subprocess.run(
                in_netns(node_netns, ["nft", "list", "set", "inet", "secgroups", "pods4"]),
                capture_output=True,
                text=True,
                check=True,
            ).stdout

        listing = pods4()
        assert "100.64.1.2" in listing and "100.64.1.3" in listing

        # The node object's spec is not validated by the API server (open schema, for the
        # cost of a write): an invalid one is accepted there, refused by the agent, which
        # says why in its report and keeps enforcing what it had.
        node_obj = next(o for o in _objects(policy) if o["kind"] == COMPILED_NODE_KIND)
        api.apply([{**node_obj, "spec": {**node_obj["spec"], "pods": "not a list"}}])
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and status.get("reason") != "SourceInvalid":
            status = api.get(NODE_REPORT_KIND, node).get("status") or {}
            time.sleep(0.2)
        assert status.get("reason") == "SourceInvalid", status
        assert "pods" in status["error"]
        assert pods4() == listing
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=5)
        _cleanup(api, policy)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
