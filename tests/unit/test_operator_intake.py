"""The operator's intake: a status write that comes back through the watch is not parsed
again (the operator writes 21,000 statuses at a cold start at full size), while every
change the compiler reads still reaches it."""

from __future__ import annotations

import copy
from typing import Any

from secgroups.incremental import Delete, Event, Upsert
from secgroups_operator.intake import Intake


def rule(rv: int, generation: int | None = 1, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "allow-web",
        "namespace": "shop",
        "uid": "uid-1",
        "resourceVersion": str(rv),
    }
    if generation is not None:
        meta["generation"] = generation
    return {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "SecurityGroupRule",
        "metadata": meta,
        "spec": {
            "securityGroup": "web",
            "direction": "Ingress",
            "protocol": "TCP",
            "ports": "80",
            **spec,
        },
    }


def intake() -> tuple[Intake, list[Event]]:
    out: list[Event] = []
    return Intake(emit=out.append), out


def test_a_status_write_coming_back_is_not_parsed_again() -> None:
    take, out = intake()
    take.upsert("SecurityGroupRule", rule(10))
    assert len(out) == 1 and isinstance(out[0], Upsert)
    echoed = rule(11)
    echoed["status"] = {"observedGeneration": 1, "conditions": []}
    take.upsert("SecurityGroupRule", echoed)
    assert len(out) == 1, "a status-only version was parsed and emitted again"


def test_spec_labels_annotations_and_a_new_uid_still_reach_the_compiler() -> None:
    take, out = intake()
    take.upsert("SecurityGroupRule", rule(10))
    take.upsert("SecurityGroupRule", rule(11, generation=2, ports="443"))
    assert len(out) == 2 and isinstance(out[1], Upsert)
    assert out[1].obj.spec.ports == "443"  # type: ignore[union-attr]
    labelled = rule(12, generation=2, ports="443")
    labelled["metadata"]["labels"] = {"team": "a"}
    take.upsert("SecurityGroupRule", labelled)
    annotated = copy.deepcopy(labelled)
    annotated["metadata"]["resourceVersion"] = "13"
    annotated["metadata"]["annotations"] = {"note": "x"}
    take.upsert("SecurityGroupRule", annotated)
    recreated = rule(14, generation=1)  # deleted and created again, the delete unseen
    recreated["metadata"]["uid"] = "uid-2"
    take.upsert("SecurityGroupRule", recreated)
    assert len(out) == 5


def test_without_a_generation_every_version_is_parsed() -> None:
    take, out = intake()
    take.upsert("SecurityGroupRule", rule(10, generation=None))
    take.upsert("SecurityGroupRule", rule(11, generation=None, ports="443"))
    assert len(out) == 2
    assert out[1].obj.spec.ports == "443"  # type: ignore[union-attr]


def test_an_object_deleted_and_created_again_is_emitted() -> None:
    take, out = intake()
    take.upsert("SecurityGroupRule", rule(10))
    take.delete("SecurityGroupRule", rule(11))
    take.upsert("SecurityGroupRule", rule(12))
    assert [type(e) for e in out] == [Upsert, Delete, Upsert]
