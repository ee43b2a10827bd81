"""A pod naming a group that does not exist: the operator posts a Warning event on it and
publishes it in no group (fail-closed, docs/semantics.md decision 6), on the whole lab."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.cluster.kube import apply, pods_yaml, wait_until

from secgroups.compiled import CompiledNodeSpec
from secgroups_lab.cluster import LabCluster

pytestmark = pytest.mark.cluster

NS = "missing-group"


def published(lab: LabCluster, node: str, name: str) -> Any:
    out = lab.kubectl("get", "compilednodepolicy", node, "-o", "json", check=False)
    if not out.strip():
        return None
    spec = CompiledNodeSpec.model_validate(json.loads(out)["spec"])
    return next((p for p in spec.pods if (p.namespace, p.name) == (NS, name)), None)


def test_a_pod_naming_a_missing_group_gets_a_warning_event_and_no_group(
    lab_cluster: LabCluster,
) -> None:
    n1 = lab_cluster.node_names()[0]
    apply(
        lab_cluster,
        f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}, labels: {{secgroups.dev/enforce: "true"}}}}
""",
    )
    wait_until(
        "default ServiceAccount",
        lambda: lab_cluster.kubectl("get", "sa", "default", "-n", NS, check=False).strip(),
    )
    apply(lab_cluster, pods_yaml(NS, [("typo", n1, {}, "wbe")]))
    entry = wait_until("typo published", lambda: published(lab_cluster, n1, "typo"), 60)
    assert entry.groups == (), "no fallback to the default group"

    def event() -> Any:
        out = lab_cluster.kubectl(
            "get", "events", "-n", NS, "--field-selector",
            "involvedObject.name=typo,reason=UnknownGroup", "-o", "json",
        )  # fmt: skip
        items = json.loads(out)["items"]
        return items[0] if items else None

    ev = wait_until("a Warning event on the pod", event, 60)
    assert ev["type"] == "Warning"
    assert ev["involvedObject"]["kind"] == "Pod"
    assert ev["message"] == (
        "annotation names security group(s) that do not exist: wbe; they match nothing "
        "(fail-closed: no fallback to the default group)"
    )
