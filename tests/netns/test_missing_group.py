"""A pod naming a group that does not exist receives nothing its other groups do not allow.

Fail-closed (docs/semantics.md, decision 6): the missing group matches nothing and the
pod does not fall back to its namespace's default group (whose egress allows everything
and whose members may reach each other). Real agents on two nodes, real packets; every
cell is the evaluator's verdict, and the cells below pin what the fallback would have
opened:

=========  ===============  ===============================================================
pod        annotation       receives / sends
=========  ===============  ===============================================================
web-1      ``web``          TCP 80 from anywhere; TCP 443 out
typo-1     ``web,wbe``      exactly web-1's policy: ``wbe`` adds nothing (and no TCP 22)
lost-2     ``wbe``          nothing in, nothing out (the default group would send anywhere
                            and admit dflt-2)
dflt-2     —                the default group (S-D-1): everything out, in from its members
=========  ===============  ===============================================================

Then the group is created (lost-2 and typo-1 join it, as S-CT-2 row 1 additions), and
``web`` is deleted under web-1 (which then has no group: nothing, not the default).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.dataplane_harness import (
    ALLOWED_TIMEOUT,
    DENIED_TIMEOUT,
    DataplaneLab,
    Oracle,
    assert_all_match,
    dataplane_unavailable,
)
from tests.dataplanecases import Manifest, group, namespace, pod, rule, without

from secgroups_lab.matrix import Case, MatrixResult, Target, run_matrix
from secgroups_lab.probes import Endpoint

_why = dataplane_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netns

PREFIX = "ksgmis"
NS = "app"
PODS = ((1, NS, "web-1"), (1, NS, "typo-1"), (2, NS, "lost-2"), (2, NS, "dflt-2"))
PORTS = (22, 80, 443)
CASES = [Case("tcp", p, f) for f in (4, 6) for p in PORTS] + [Case("icmp", 0, 4)]
OUT = "outside"
WEB1, TYPO1, LOST2, DFLT2 = (f"{NS}/{n}" for n in ("web-1", "typo-1", "lost-2", "dflt-2"))


def manifests(dp: DataplaneLab) -> list[Manifest]:
    p = dp.pods
    docs: list[Manifest] = [
        namespace(NS),
        group(NS, "web"),
        pod(p["web-1"], "web"),
        pod(p["typo-1"], "web,wbe"),
        pod(p["lost-2"], "wbe"),
        pod(p["dflt-2"]),
    ]
    for fam in ("IPv4", "IPv6"):
        sfx = "" if fam == "IPv4" else "6"
        docs += [
            rule(NS, f"web-http{sfx}", "web", "Ingress", "TCP", ports="80", family=fam),
            rule(NS, f"web-out{sfx}", "web", "Egress", "TCP", ports="443", family=fam),
        ]
    return docs


def wbe(dp: DataplaneLab) -> list[Manifest]:
    """The missing group, created: SSH in."""
    return [group(NS, "wbe"), rule(NS, "wbe-ssh", "wbe", "Ingress", "TCP", ports="22")]


@pytest.fixture(scope="module")
def dp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataplaneLab]:
    with DataplaneLab(
        PREFIX, PODS, tmp_path_factory.mktemp("missing-group"), probe_ports=PORTS
    ) as dp:
        yield dp


def probe(dp: DataplaneLab, oracle: Oracle) -> MatrixResult:
    everyone: list[Endpoint] = [*dp.pods.values(), dp.outside]
    targets: list[Target] = [*dp.pods.values(), dp.outside]
    result = run_matrix(
        everyone,
        CASES,
        oracle,
        destinations=targets,
        timeout=DENIED_TIMEOUT,
        allowed_timeout=ALLOWED_TIMEOUT,
    )
    assert_all_match([result])
    return result


def cell(result: MatrixResult, src: str, dst: str, case: Case) -> bool:
    """The observed verdict of one cell (equal to the expected one: ``assert_all_match``)."""
    key = (result.sources.index(src), result.destinations.index(dst), result.cases.index(case))
    return bool(result.observed[key].ok)


def tcp(port: int, family: Any = 4) -> Case:
    return Case("tcp", port, family)


def test_a_pod_naming_a_missing_group_gets_nothing_its_other_groups_do_not_allow(
    dp: DataplaneLab,
) -> None:
    step = dp.operator.apply(manifests(dp))
    assert sorted((p.reason, p.name) for p in step.problems) == [
        ("UnknownGroup", "lost-2"),
        ("UnknownGroup", "typo-1"),
    ]
    pods = {p.name: p for n in step.policy.nodes.values() for p in n.pods}
    assert pods["lost-2"].groups == (), "no fallback to the default group"
    assert pods["typo-1"].groups == ("sg.app.web",)
    assert pods["dflt-2"].groups == ("sg.app.default",)

    seen = probe(dp, Oracle(step.policy))
    # typo-1 gets exactly what web gives: port 80 in, 443 out; wbe adds nothing.
    assert cell(seen, OUT, TYPO1, tcp(80)) and cell(seen, OUT, TYPO1, tcp(80, 6))
    assert not cell(seen, OUT, TYPO1, tcp(22))
    assert cell(seen, TYPO1, OUT, tcp(443)) and not cell(seen, TYPO1, OUT, tcp(80))
    # lost-2 gets nothing: what the default group would have given is denied.
    assert not cell(seen, LOST2, OUT, tcp(443)), "the default group's egress would allow this"
    assert not cell(seen, LOST2, OUT, tcp(22, 6))
    assert not cell(seen, DFLT2, LOST2, tcp(80)), "default members would reach each other"
    assert not cell(seen, OUT, LOST2, tcp(80))
    assert not cell(seen, LOST2, DFLT2, tcp(22))
    # The default group itself is untouched (S-D-1) for a pod that names no group.
    assert cell(seen, DFLT2, OUT, tcp(22))


def test_the_missing_group_created_later_is_joined(dp: DataplaneLab) -> None:
    step = dp.operator.apply([*manifests(dp), *wbe(dp)])
    assert step.problems == ()
    assert {"app/lost-2", "app/typo-1"} <= step.rechecked  # S-CT-2 row 1: added to wbe
    seen = probe(dp, Oracle(step.policy))
    assert cell(seen, OUT, LOST2, tcp(22)) and cell(seen, OUT, TYPO1, tcp(22))
    assert not cell(seen, LOST2, OUT, tcp(443)), "wbe has no egress rule"


def test_a_group_deleted_under_its_pod_leaves_it_nothing(dp: DataplaneLab) -> None:
    """Without the admission webhook (which refuses this delete), the pods of a deleted
    group are denied everything rather than moved to the default group."""
    docs = without([*manifests(dp), *wbe(dp)], "SecurityGroup", "web")
    step = dp.operator.apply(docs)
    pods = {p.name: p for n in step.policy.nodes.values() for p in n.pods}
    assert pods["web-1"].groups == ()
    seen = probe(dp, Oracle(step.policy))
    assert not cell(seen, WEB1, OUT, tcp(443)) and not cell(seen, WEB1, OUT, tcp(22))
    assert not cell(seen, OUT, WEB1, tcp(80))
    assert not cell(seen, DFLT2, WEB1, tcp(80))
