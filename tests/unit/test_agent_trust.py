"""The agent enforces compiled objects only as the operator wrote them (``trust.py``;
docs/failure-modes.md, "Trust"): the writer check on managedFields, and the source
keeping the last accepted version of a refused object. The real API server's
managedFields are checked in ``tests/cluster/test_faults.py``."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from tests import agentcases as ac
from tests import nftcases as nc
from tests.unit.test_agent_syncing import run, wait_until

from secgroups.compiled import COMPILED_GROUP_KIND, COMPILED_NODE_KIND, COMPILED_SET_KIND
from secgroups_agent.sources import FakeKubeApi, KubeSource
from secgroups_agent.trust import OPERATOR_MANAGERS, writer_problem

NODE = nc.NODE


def entry(
    manager: str, fields: dict[str, Any], *, operation: str = "Apply", sub: str = ""
) -> dict[str, Any]:
    e: dict[str, Any] = {
        "manager": manager,
        "operation": operation,
        "apiVersion": "secgroups.dev/v1alpha1",
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    }
    if sub:
        e["subresource"] = sub
    return e


SPEC: dict[str, Any] = {"f:spec": {"f:ingress": {}}}
LABELS: dict[str, Any] = {"f:metadata": {"f:labels": {"f:node.secgroups.dev/n1": {}}}}
OPERATOR = entry("secgroups-operator", SPEC)
PLACEMENT = entry("secgroups-operator-placement", LABELS)
STATUS = entry("secgroups-agent", {"f:status": {"f:pods": {}}}, operation="Update", sub="status")
EDIT = entry("kubectl-edit", SPEC, operation="Update")


def obj(*managed: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "x", "managedFields": list(managed)}, "spec": {}}


def test_only_the_operator_may_own_the_spec() -> None:
    check = functools.partial(writer_problem, trusted=OPERATOR_MANAGERS)
    assert check(obj(OPERATOR, PLACEMENT, STATUS)) is None
    assert check(obj(OPERATOR, EDIT)) == "spec written by kubectl-edit (Update)"
    assert check(obj(entry("kubectl", SPEC))) == "spec written by kubectl (Apply)"
    assert check(obj(PLACEMENT, STATUS)) == "no trusted manager owns the spec"
    assert (
        check({"metadata": {"name": "x"}, "spec": {}}) == "no managedFields: the writer is unknown"
    )
    # The agent's status writes are a subresource: they never count.
    agent_spec = entry("secgroups-agent", SPEC, operation="Update", sub="status")
    assert check(obj(OPERATOR, agent_spec)) is None


def _managed(api: FakeKubeApi, kind: str, name: str, *entries: dict[str, Any]) -> None:
    api.objects[(kind, name)]["metadata"]["managedFields"] = list(entries)


def test_a_refused_object_leaves_the_last_accepted_version_in_force() -> None:
    policy = ac.big_node(pods=2, groups=1, rules=2, sets=1, members=3)
    group = next(iter(policy.groups))
    set_key = next(iter(policy.sets))

    async def body() -> None:
        api = FakeKubeApi()

        def put(kind: str, name: str, spec: Any, generation: int, *managed: dict[str, Any]) -> None:
            dumped = spec.model_dump(by_alias=True, mode="json")
            api.put(
                kind, name, dumped, generation, nodes=[NODE] if kind != COMPILED_NODE_KIND else ()
            )
            # Before the watch sees it (no await in between): what the API server records.
            api.objects[(kind, name)]["metadata"]["managedFields"] = list(managed)

        put(COMPILED_GROUP_KIND, group, policy.groups[group], 1, OPERATOR, PLACEMENT)
        put(COMPILED_SET_KIND, set_key, policy.sets[set_key], 1, OPERATOR, PLACEMENT)
        put(COMPILED_NODE_KIND, NODE, policy.nodes[NODE], 1, OPERATOR)
        trust = functools.partial(writer_problem, trusted=OPERATOR_MANAGERS)
        src = KubeSource(api, NODE, backoff=(0.01, 0.05), trust=trust)
        task = asyncio.create_task(src.run(lambda: None))
        try:
            await wait_until(lambda: src.snapshot() is not None, "the first snapshot")
            assert src.problem() is None
            # Someone edits the group with kubectl: refused, the operator's version stays.
            edited = policy.groups[group].model_copy(update={"ingress": ()})
            put(COMPILED_GROUP_KIND, group, edited, 2, OPERATOR, PLACEMENT, EDIT)
            await wait_until(lambda: src.problem() is not None, "the refusal reported")
            problem = src.problem()
            assert problem is not None and problem.reason == "UntrustedWriter"
            assert "kubectl-edit" in problem.message
            snap = src.snapshot()
            assert snap is not None and snap.groups[group] == policy.groups[group]
            # The operator writes it again (it owns every field): accepted.
            put(COMPILED_GROUP_KIND, group, edited, 3, OPERATOR, PLACEMENT)
            await wait_until(lambda: src.problem() is None, "accepted again")
            snap = src.snapshot()
            assert snap is not None and snap.groups[group].ingress == ()
            # A node object nobody trusted yet: nothing to enforce from it (not ready).
            put(COMPILED_NODE_KIND, NODE, policy.nodes[NODE], 2, EDIT)
            await wait_until(lambda: src.problem() is not None, "the node refused")
            assert src.snapshot() is not None  # the accepted node object stays in force
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body())
