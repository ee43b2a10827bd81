"""Label selectors, enforcement scope, and each managed pod's group sequence (S-M-1, S-D-1)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from tests.corecases import facts, ns, pod, sg

from secgroups import selectors
from secgroups.facts import ClusterFacts, PodFacts
from secgroups.membership import Scope, resolve
from secgroups.models import LabelSelector

# ----------------------------------------------------------------------------- selectors


def _sel(labels: dict[str, str] | None = None, *exprs: dict[str, Any]) -> LabelSelector:
    return LabelSelector.model_validate(
        {"matchLabels": labels or {}, "matchExpressions": list(exprs)}
    )


def _expr(key: str, op: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": op, "values": list(values)}


WEB = {"app": "web", "tier": "front"}


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        pytest.param(_sel(), {}, True, id="empty-selects-every-pod"),
        pytest.param(_sel(), WEB, True, id="empty-selects-labelled-pod"),
        pytest.param(_sel({"app": "web"}), WEB, True, id="matchLabels-subset"),
        pytest.param(_sel(WEB), WEB, True, id="matchLabels-all"),
        pytest.param(_sel({"app": "db"}), WEB, False, id="matchLabels-other-value"),
        pytest.param(_sel({"app": "web", "x": "y"}), WEB, False, id="matchLabels-all-required"),
        pytest.param(_sel(None, _expr("app", "In", "db", "web")), WEB, True, id="In"),
        pytest.param(_sel(None, _expr("app", "In", "db")), WEB, False, id="In-other-value"),
        pytest.param(_sel(None, _expr("zone", "In", "a")), WEB, False, id="In-missing-key"),
        pytest.param(_sel(None, _expr("app", "NotIn", "db")), WEB, True, id="NotIn"),
        pytest.param(_sel(None, _expr("app", "NotIn", "web")), WEB, False, id="NotIn-listed"),
        pytest.param(_sel(None, _expr("zone", "NotIn", "a")), WEB, True, id="NotIn-missing-key"),
        pytest.param(_sel(None, _expr("tier", "Exists")), WEB, True, id="Exists"),
        pytest.param(_sel(None, _expr("zone", "Exists")), WEB, False, id="Exists-missing"),
        pytest.param(_sel(None, _expr("zone", "DoesNotExist")), WEB, True, id="DoesNotExist"),
        pytest.param(_sel(None, _expr("app", "DoesNotExist")), WEB, False, id="DoesNotExist-set"),
        pytest.param(
            _sel({"app": "web"}, _expr("tier", "In", "back")),
            WEB,
            False,
            id="labels-AND-expressions",
        ),
        pytest.param(
            _sel(None, _expr("app", "Exists"), _expr("tier", "NotIn", "back")),
            WEB,
            True,
            id="expressions-AND-together",
        ),
    ],
)
def test_selector_matching(selector: LabelSelector, labels: dict[str, str], selected: bool) -> None:
    assert selectors.matches(selector, labels) is selected


@pytest.mark.parametrize(
    "expr",
    [
        pytest.param(_expr("app", "In"), id="In-needs-values"),
        pytest.param(_expr("app", "NotIn"), id="NotIn-needs-values"),
        pytest.param(_expr("app", "Exists", "web"), id="Exists-takes-no-values"),
        pytest.param(_expr("app", "Near", "web"), id="unknown-operator"),
    ],
)
def test_bad_selector_requirements_are_rejected(expr: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _sel(None, expr)


# ----------------------------------------------------------------------------- sequences


def _groups_of(f: ClusterFacts, name: str, namespace: str = "demo") -> tuple[str, ...] | None:
    ms = resolve(f)
    groups = ms.groups_of.get((namespace, name))
    return None if groups is None else tuple(f"{g[0]}/{g[1]}" for g in groups)


BASE: tuple[Any, ...] = (
    ns(),
    sg("web", selector={"app": "web"}, sequence=200),
    sg("api", selector={"app": "web"}, sequence=100),
    sg("aaa", selector={"app": "web"}, sequence=100),
    sg("ssh"),
    sg("db"),
)


@pytest.mark.parametrize(
    ("the_pod", "expected"),
    [
        pytest.param(
            pod("p", "10.0.0.1", groups="ssh,db"),
            ("demo/ssh", "demo/db"),
            id="S-M-1-annotation-order-is-the-sequence",
        ),
        pytest.param(
            pod("p", "10.0.0.1", groups="db,ssh"),
            ("demo/db", "demo/ssh"),
            id="S-M-1-annotation-order-reversed",
        ),
        pytest.param(
            pod("p", "10.0.0.1", labels={"app": "web"}),
            ("demo/aaa", "demo/api", "demo/web"),
            id="S-M-1-selected-by-sequence-then-name",
        ),
        pytest.param(
            pod("p", "10.0.0.1", labels={"app": "web"}, groups="ssh"),
            ("demo/ssh", "demo/aaa", "demo/api", "demo/web"),
            id="S-M-1-annotation-before-selected",
        ),
        pytest.param(
            pod("p", "10.0.0.1", labels={"app": "web"}, groups="web,ssh"),
            ("demo/web", "demo/ssh", "demo/aaa", "demo/api"),
            id="S-M-1-annotated-and-selected-keeps-annotation-place-once",
        ),
        pytest.param(
            pod("p", "10.0.0.1", groups=" ssh , db,ssh,, "),
            ("demo/ssh", "demo/db"),
            id="annotation-blanks-and-repeats-dropped",
        ),
        pytest.param(pod("p", "10.0.0.1"), ("demo/default",), id="S-D-1-no-group-gets-default"),
        pytest.param(
            pod("p", "10.0.0.1", groups="ghost"),
            (),
            id="decision-only-missing-names-fail-closed-no-default",
        ),
        pytest.param(
            pod("p", "10.0.0.1", groups="ghost", labels={"app": "web"}),
            ("demo/aaa", "demo/api", "demo/web"),
            id="decision-missing-name-matches-nothing-selected-groups-stay",
        ),
        pytest.param(
            pod("p", "10.0.0.1", groups="ghost,ssh"),
            ("demo/ssh",),
            id="decision-missing-annotated-name-matches-nothing",
        ),
        pytest.param(
            pod("p", "10.0.0.1", groups=" , "),
            ("demo/default",),
            id="S-D-1-blank-annotation-names-no-group",
        ),
        pytest.param(
            pod("p", "10.0.0.1", groups="default,ssh"),
            ("demo/default", "demo/ssh"),
            id="S-D-1-default-may-be-named-before-it-exists",
        ),
        pytest.param(
            pod("p", "10.0.0.1", groups="other/ssh"),
            (),
            id="annotation-names-groups-of-the-pod-namespace-only",
        ),
        pytest.param(
            pod("p", "10.0.0.1", phase="Pending"),
            ("demo/default",),
            id="pending-pod-is-managed",
        ),
        pytest.param(pod("p", "10.0.0.1", host_network=True), None, id="hostNetwork-never-managed"),
        pytest.param(pod("p", "10.0.0.1", phase="Succeeded"), None, id="succeeded-not-managed"),
        pytest.param(pod("p", "10.0.0.1", phase="Failed"), None, id="failed-not-managed"),
        pytest.param(pod("p", "10.0.0.1", ns="other"), None, id="unenforced-namespace-unmanaged"),
        pytest.param(pod("p", "10.0.0.1", ns="nowhere"), None, id="unknown-namespace-unmanaged"),
    ],
)
def test_group_sequence_of_a_pod(the_pod: PodFacts, expected: tuple[str, ...] | None) -> None:
    f = facts(*BASE, ns("other", enforced=False), the_pod)
    assert _groups_of(f, "p", the_pod.namespace) == expected


def test_unknown_annotated_names_are_reported_per_pod() -> None:
    f = facts(*BASE, pod("p", "10.0.0.1", groups="ghost,ssh,phantom"))
    assert resolve(f).unknown_annotated == {("demo", "p"): ("ghost", "phantom")}


def test_selectors_select_only_pods_of_their_own_namespace() -> None:
    f = facts(
        *BASE,
        ns("shop"),
        pod("p", "10.0.0.1", ns="shop", labels={"app": "web"}),
    )
    assert _groups_of(f, "p", "shop") == ("shop/default",)


def test_enforcement_label_must_say_true() -> None:
    f = facts(
        ns("demo", enforced=False, **{"secgroups.dev/enforce": "false"}),
        pod("p", "10.0.0.1"),
    )
    assert resolve(f).pods == {}


def test_enforcement_selector_is_configurable() -> None:
    f = facts(ns("demo", enforced=False, policy="strict"), pod("p", "10.0.0.1"))
    assert _groups_of(f, "p") is None
    ms = resolve(f, Scope(key="policy", value="strict"))
    assert ms.groups_of == {("demo", "p"): (("demo", "default"),)}


def test_sequence_ties_break_by_name() -> None:
    f = facts(
        ns(),
        sg("zeta", selector={}, sequence=5),
        sg("alpha", selector={}, sequence=5),
        sg("mid", selector={}, sequence=1),
        pod("p", "10.0.0.1"),
    )
    assert _groups_of(f, "p") == ("demo/mid", "demo/alpha", "demo/zeta")


def test_group_without_selector_selects_nobody_and_empty_selector_everybody() -> None:
    f = facts(ns(), sg("named-only"), sg("all", selector={}), pod("p", "10.0.0.1"))
    assert _groups_of(f, "p") == ("demo/all",)


def test_members_are_sorted_per_group() -> None:
    f = facts(
        ns(),
        sg("web", selector={"app": "web"}),
        pod("b", "10.0.0.2", labels={"app": "web"}),
        pod("a", "10.0.0.1", labels={"app": "web"}),
        pod("c", "10.0.0.3"),
    )
    assert resolve(f).members() == {
        ("demo", "default"): (("demo", "c"),),
        ("demo", "web"): (("demo", "a"), ("demo", "b")),
    }


def test_pod_facts_from_a_manifest() -> None:
    p = PodFacts.from_manifest(
        {
            "metadata": {
                "name": "web-1",
                "namespace": "shop",
                "uid": "u1",
                "labels": {"app": "web"},
                "annotations": {"secgroups.dev/security-groups": "web,ssh"},
            },
            "spec": {"nodeName": "n1", "hostNetwork": False},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]},
        }
    )
    assert (p.key, p.node, p.ips, p.annotated_groups()) == (
        ("shop", "web-1"),
        "n1",
        ("10.0.0.1", "fd00::1"),
        ("web", "ssh"),
    )
    assert p.effective_uid == "u1"
    legacy = PodFacts.from_manifest({"metadata": {"name": "x"}, "status": {"podIP": "10.0.0.9"}})
    assert (legacy.namespace, legacy.ips, legacy.effective_uid) == (
        "default",
        ("10.0.0.9",),
        "default/x",
    )
