"""The readiness gate's mutating webhook: which pods get the gate, the patch, the config.

The API server applies the JSON patch itself; here it is applied to the pod the way RFC
6902 says, so a wrong path shows up as a wrong pod, not as a string.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from typing import Any

import pytest

from secgroups.membership import Scope
from secgroups_operator.mutating import GATE, gate_patch, mutating_configuration, mutation


class Namespaces:
    def __init__(self, labels: dict[str, dict[str, str]]) -> None:
        self.labels = labels
        self.calls = 0

    async def get(
        self, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        assert kind == "Namespace"
        self.calls += 1
        if name not in self.labels:
            return None
        return {"metadata": {"name": name, "labels": self.labels[name]}}


API = Namespaces({"shop": {"secgroups.dev/enforce": "true"}, "open": {}})


def review(pod: dict[str, Any], op: str = "CREATE", ns: str = "shop") -> dict[str, Any]:
    return {
        "uid": "req-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": op,
        "namespace": ns,
        "object": pod,
    }


def pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": [], **spec}}


def apply_patch(doc: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for op in patch:
        assert op["op"] == "add"
        parts = op["path"].strip("/").split("/")
        target = out
        for p in parts[:-1]:
            target = target[p]
        if parts[-1] == "-":
            target.append(op["value"])
        else:
            assert parts[-1] not in target, "add of an existing member replaces it"
            target[parts[-1]] = op["value"]
    return out


def decide(req: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(mutation(req, API, Scope()))


def gates_after(req: dict[str, Any]) -> list[dict[str, Any]]:
    resp = decide(req)
    assert resp["allowed"] and resp["uid"] == "req-1"
    obj = req["object"]
    if "patch" in resp:
        assert resp["patchType"] == "JSONPatch"
        obj = apply_patch(obj, json.loads(base64.b64decode(resp["patch"])))
    return list(obj["spec"].get("readinessGates") or [])


def test_a_new_pod_of_an_enforced_namespace_gets_the_gate() -> None:
    assert gates_after(review(pod())) == [{"conditionType": GATE}]


def test_other_gates_are_kept() -> None:
    other = {"conditionType": "example.com/warm"}
    assert gates_after(review(pod(readinessGates=[other]))) == [other, {"conditionType": GATE}]


@pytest.mark.parametrize(
    "req",
    [
        pytest.param(review(pod(), ns="open"), id="namespace-not-enforced"),
        pytest.param(review(pod(), ns="gone"), id="namespace-missing"),
        pytest.param(review(pod(hostNetwork=True)), id="host-network-never-managed"),
        pytest.param(review(pod(readinessGates=[{"conditionType": GATE}])), id="already-gated"),
        pytest.param(review(pod(), op="UPDATE"), id="updates-cannot-add-gates"),
        pytest.param(
            {**review(pod()), "kind": {"group": "apps", "kind": "Deployment"}}, id="other-kind"
        ),
    ],
)
def test_everything_else_passes_unchanged(req: dict[str, Any]) -> None:
    resp = decide(req)
    assert resp == {"uid": "req-1", "allowed": True}


def test_the_patch_needs_no_lookup_when_there_is_nothing_to_add() -> None:
    api = Namespaces({})
    asyncio.run(mutation(review(pod(hostNetwork=True)), api, Scope()))
    assert api.calls == 0
    assert gate_patch(pod(readinessGates=[{"conditionType": GATE}])) is None


def test_the_configuration_sends_pod_creations_of_enforced_namespaces_to_mutate() -> None:
    conf = mutating_configuration(
        "ksg-gate", {"url": "https://100.64.0.1:9443/validate", "caBundle": "Q0E="}, Scope()
    )
    (hook,) = conf["webhooks"]
    assert conf["kind"] == "MutatingWebhookConfiguration"
    assert hook["clientConfig"] == {"url": "https://100.64.0.1:9443/mutate", "caBundle": "Q0E="}
    assert hook["namespaceSelector"] == {"matchLabels": {"secgroups.dev/enforce": "true"}}
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    assert hook["rules"][0]["operations"] == ["CREATE"]
    service = mutating_configuration(
        "g",
        {"service": {"namespace": "s", "name": "op", "path": "/validate", "port": 443}},
        Scope(),
    )
    assert service["webhooks"][0]["clientConfig"]["service"]["path"] == "/mutate"
