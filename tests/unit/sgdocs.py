"""Builders of manifests (plain dictionaries) for the analysis, linting and cloning tests."""

from __future__ import annotations

from typing import Any

ENFORCED = {"secgroups.dev/enforce": "true"}


def ns(name: str, enforced: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": ENFORCED if enforced else {}},
    }


def pod(
    name: str,
    ip: str,
    *,
    namespace: str = "demo",
    labels: dict[str, str] | None = None,
    groups: str | None = None,
    node: str | None = "n1",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if groups is not None:
        meta["annotations"] = {"secgroups.dev/security-groups": groups}
    spec = {"nodeName": node} if node else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": spec,
        "status": {"podIPs": [{"ip": ip}]},
    }


def sg(name: str, selector: dict[str, str] | None = None, sequence: int = 100) -> dict[str, Any]:
    spec: dict[str, Any] = {"sequence": sequence}
    if selector is not None:
        spec["podSelector"] = {"matchLabels": selector}
    return {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "SecurityGroup",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": spec,
    }


def rule(name: str, group: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "SecurityGroupRule",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"securityGroup": group, **spec},
    }


def ipag(name: str, *addresses: str) -> dict[str, Any]:
    return {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "IPAddressGroup",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"addresses": list(addresses)},
    }
