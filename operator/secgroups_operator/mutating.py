"""The operator's mutating webhook: the readiness gate on new pods of enforced namespaces.

``POST /mutate`` beside ``/validate`` (same server, port and certificate:
``admission``). For a Pod CREATE in an enforced namespace that is not hostNetwork, it
adds ``spec.readinessGates: [{conditionType: secgroups.dev/policy-applied}]`` (a JSON
patch); the node agent sets that condition True once the pod's own policy is in force on
its node (``secgroups_agent.cnikube``), so the pod is not Ready — and Services do not
send to it — before then (docs/cni.md, "The readiness gate").

Readiness gates cannot be added to a pod that exists (the field is immutable), so this is
the only place to add them. Everything else passes unchanged: other kinds, updates,
hostNetwork pods (never managed: nobody would set the condition), pods that already
name the gate, namespaces that are not enforced (the configuration's namespaceSelector
already keeps them away; the namespace is read again here, so a configuration written
for another label cannot gate pods that no policy covers). A failed namespace lookup
answers HTTP 500 and the configuration's ``failurePolicy`` decides; the default is
``Ignore``: the gate is for availability (no traffic to a pod before its policy), the
placeholder already keeps the pod closed (docs/cni.md).

Neighbours: ``admission`` (server, certificates, configurations), ``secgroups_kube``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from secgroups.membership import Scope

log = logging.getLogger(__name__)

MUTATE_PATH = "/mutate"
GATE = "secgroups.dev/policy-applied"
GATE_WEBHOOK = "gate.pods.secgroups.dev"


class NamespaceApi(Protocol):
    async def get(
        self, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None: ...


def gate_patch(pod: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The JSON patch that adds the gate to ``pod``, or None when it needs none."""
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        return None
    gates = spec.get("readinessGates")
    if any((g or {}).get("conditionType") == GATE for g in gates or ()):
        return None
    if not gates:
        return [{"op": "add", "path": "/spec/readinessGates", "value": [{"conditionType": GATE}]}]
    return [{"op": "add", "path": "/spec/readinessGates/-", "value": {"conditionType": GATE}}]


async def mutation(req: Mapping[str, Any], api: NamespaceApi, scope: Scope) -> dict[str, Any]:
    """The AdmissionReview ``response`` for one request (raises the API's errors)."""
    out: dict[str, Any] = {"uid": str(req.get("uid", "")), "allowed": True}
    kind = req.get("kind") or {}
    if (kind.get("group"), kind.get("kind"), req.get("operation")) != ("", "Pod", "CREATE"):
        return out
    pod = req.get("object") or {}
    patch = gate_patch(pod)
    if patch is None:
        return out
    namespace = req.get("namespace") or (pod.get("metadata") or {}).get("namespace")
    ns = await api.get("Namespace", str(namespace)) if namespace else None
    labels = ((ns or {}).get("metadata") or {}).get("labels") or {}
    if labels.get(scope.key) != scope.value:
        return out
    out["patchType"] = "JSONPatch"
    out["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return out


def add_routes(app: web.Application, api: NamespaceApi, scope: Scope) -> None:
    """``POST /mutate`` on the admission server's application."""

    async def mutate(request: web.Request) -> web.Response:
        try:
            review = await request.json()
            req = review.get("request") or {}
        except (ValueError, AttributeError):
            return web.json_response({"error": "not an AdmissionReview"}, status=400)
        try:
            response = await mutation(req, api, scope)
        except Exception as exc:  # the API's errors: failurePolicy decides
            log.error("admission: cannot decide the readiness gate: %s", exc)
            return web.json_response({"error": str(exc)}, status=500)
        return web.json_response(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )

    app.router.add_post(MUTATE_PATH, mutate)


def mutating_configuration(
    name: str,
    client_config: Mapping[str, Any],
    scope: Scope,
    *,
    failure_policy: str = "Ignore",
    timeout_s: int = 10,
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration the operator writes with ``--webhook-url`` (the
    chart's template is its twin): Pod CREATE in enforced namespaces → ``/mutate``."""
    client = dict(client_config)
    if "url" in client:
        client["url"] = str(client["url"]).rsplit("/", 1)[0] + MUTATE_PATH
    elif "service" in client:
        client["service"] = {**client["service"], "path": MUTATE_PATH}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "secgroups-operator"},
        },
        "webhooks": [
            {
                "name": GATE_WEBHOOK,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "timeoutSeconds": timeout_s,
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "Never",
                "failurePolicy": failure_policy,
                "clientConfig": client,
                "namespaceSelector": {"matchLabels": {scope.key: scope.value}},
                "objectSelector": {},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
            }
        ],
    }
