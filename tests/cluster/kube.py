"""Small helpers for cluster-tier tests: kubectl with YAML/JSON, and deadline polling."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from secgroups_lab.cluster import LabCluster

T = TypeVar("T")


def apply(lab: LabCluster, text: str) -> None:
    lab.kubectl("apply", "--server-side", "-f", "-", input_text=text)


def get(lab: LabCluster, *args: str) -> Any:
    return json.loads(lab.kubectl("get", *args, "-o", "json"))


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last value: {last!r})")


def pods_yaml(namespace: str, pods: list[tuple[str, str, dict[str, str], str | None]]) -> str:
    """Pod manifests: (name, node, labels, groups annotation or None)."""
    docs = []
    for name, node, labels, groups in pods:
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
        if groups:
            meta["annotations"] = {"secgroups.dev/security-groups": groups}
        docs.append(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": meta,
                    "spec": {
                        "nodeName": node,
                        "containers": [{"name": "app", "image": "localhost/x"}],
                    },
                }
            )
        )
    return "\n---\n".join(docs)
