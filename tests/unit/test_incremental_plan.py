"""What a flush of the incremental compiler reports beside the objects, against the
full-cluster functions on the same two states (Hypothesis):

* ``Changes.recheck`` equals ``clearing.plan_clearing(old facts, new facts).pods``
  for any batch of events, and its carriers (``recheck_groups``, ``recheck_sets``,
  ``recheck_direct``) the plan's — the operator raises counters and epochs from them
  without re-planning the whole cluster;
* raising those carriers gives every pod of the plan still on a node a new epoch mark
  (``pod_mark``): nothing the plan names is left on the fast path;
* ``nodes_of_group`` / ``nodes_of_set`` equal the nodes whose compiled node object
  lists the group or set, and ``placed_*`` names exactly those whose nodes changed
  (the labels that let each agent watch only its own objects);
* ``member_groups`` names exactly the groups whose member count changed;
* ``new_refs`` names, per node, the groups and sets its object references that it did
  not before (they must be published and labelled before the node object is written).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests import strategies as sgst
from tests.corecases import facts, ns, pod, rule, sg

from secgroups import naming
from secgroups.clearing import plan_clearing
from secgroups.compiled import CompiledPolicy
from secgroups.facts import ClusterFacts
from secgroups.incremental import Delete, IncrementalCompiler, Kind, SetEpochs, Upsert
from secgroups.membership import PodKey
from secgroups.nft.epochs import pod_mark


def _marks(policy: CompiledPolicy) -> dict[PodKey, tuple[str, int]]:
    """Each pod on a node → (its UID, its epoch mark)."""
    return {
        (p.namespace, p.name): (p.uid, pod_mark(p, policy.groups, policy.sets))
        for spec in policy.nodes.values()
        for p in spec.pods
    }


def _where(policy: CompiledPolicy) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    groups: dict[str, set[str]] = {}
    sets: dict[str, set[str]] = {}
    for node, spec in policy.nodes.items():
        for g in spec.groups:
            groups.setdefault(g, set()).add(node)
        for s in spec.sets:
            sets.setdefault(s, set()).add(node)
    return groups, sets


def _counts(inc: IncrementalCompiler) -> dict[Any, int]:
    members = inc.memberships().members()
    return {g: len(p) for g, p in members.items()}


@st.composite
def batches(draw: st.DrawFn) -> tuple[ClusterFacts, list[list[Any]]]:
    start = draw(sgst.cluster_facts(max_pods=8, max_rules=10))
    steps = draw(st.lists(st.lists(sgst.events(start), min_size=1, max_size=4), max_size=4))
    return start, steps


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_a_flush_reports_what_the_full_functions_say(
    case: tuple[ClusterFacts, list[list[Any]]],
) -> None:
    start, steps = case
    inc = IncrementalCompiler(start)
    for batch in steps:
        old = inc.facts()
        old_groups, old_sets = _where(inc.policy)
        old_counts = _counts(inc)
        old_policy = inc.policy
        old_marks = _marks(inc.policy)
        changes = inc.apply_all(batch)
        new = inc.facts()
        plan = plan_clearing(old, new, inc.scope)
        assert changes.recheck == set(plan.pods), batch
        assert changes.recheck_groups == set(plan.groups), batch
        assert changes.recheck_sets == set(plan.sets), batch
        assert changes.recheck_direct == set(plan.direct), batch
        # What the operator does next: raise each carrier by one.
        bumped = SetEpochs(
            {p: inc.epoch(p) + 1 for p in changes.recheck_direct},
            {
                n: inc.group_recheck(n) + 1
                for n in (naming.compiled_group_name(*g) for g in changes.recheck_groups)
            },
            {n: inc.set_recheck(n) + 1 for n in changes.recheck_sets},
        )
        inc.apply(bumped)
        new_marks = _marks(inc.policy)
        for key in plan.pods:
            if key in old_marks and key in new_marks and old_marks[key][0] == new_marks[key][0]:
                assert new_marks[key] != old_marks[key], (key, plan.reasons[key], batch)
        groups, sets = _where(inc.policy)
        for name in groups.keys() | old_groups.keys():
            assert inc.nodes_of_group(name) == groups.get(name, set())
        for name in sets.keys() | old_sets.keys():
            assert inc.nodes_of_set(name) == sets.get(name, set())
        moved = {n for n in groups.keys() | old_groups.keys() if groups.get(n) != old_groups.get(n)}
        assert moved <= changes.placed_groups
        moved_sets = {n for n in sets.keys() | old_sets.keys() if sets.get(n) != old_sets.get(n)}
        assert moved_sets <= changes.placed_sets
        for node, spec in inc.policy.nodes.items():
            before = old_policy.nodes.get(node)
            refs = {f"group/{g}" for g in spec.groups} | {f"set/{x}" for x in spec.sets}
            if before is not None:
                refs -= {f"group/{g}" for g in before.groups} | {f"set/{x}" for x in before.sets}
            assert changes.new_refs.get(node, set()) == refs
        counts = _counts(inc)
        recounted = {
            g for g in counts.keys() | old_counts.keys() if counts.get(g) != old_counts.get(g)
        }
        assert recounted <= changes.member_groups


def test_rule_deleted_rechecks_the_group_and_a_pod_churn_touches_only_itself() -> None:
    inc = IncrementalCompiler(
        facts(
            ns(),
            sg("web", selector={"app": "web"}),
            sg("db"),
            pod("w1", "100.64.1.2", labels={"app": "web"}, node="n1"),
            pod("d1", "100.64.2.2", groups="db", node="n2"),
            rule("db-from-web", "db", protocol="TCP", ports="5432", remote_sg="web"),
            nodes=("n1", "n2"),
        )
    )
    changes = inc.upsert(pod("w2", "100.64.1.3", labels={"app": "web"}, node="n1"))
    assert changes.recheck == {("demo", "w2")}
    assert set(changes.sets) == {"sg.demo.web"}
    assert set(changes.nodes) == {"n1"}
    assert changes.placed_groups == set()  # web was on n1 already
    changes = inc.delete(Kind.SECURITY_GROUP_RULE, "db-from-web", "demo")
    assert changes.recheck == {("demo", "d1")}
    changes = inc.apply_all([Delete(Kind.POD, "w1", "demo"), Delete(Kind.POD, "w2", "demo")])
    assert changes.placed_groups == {"sg.demo.web"}
    assert inc.nodes_of_group("sg.demo.web") == frozenset()


def test_an_object_the_compiled_models_refuse_keeps_its_last_form_and_stalls_nothing() -> None:
    from secgroups.compiled import MAX_RULES_PER_DIRECTION

    inc = IncrementalCompiler(
        facts(
            ns(),
            sg("web", selector={"app": "web"}),
            sg("db"),
            pod("w1", "100.64.1.2", labels={"app": "web"}, node="n1"),
            pod("d1", "100.64.2.2", groups="db", node="n2"),
            rule("db-ssh", "db", protocol="TCP", ports="22"),
            nodes=("n1", "n2"),
        )
    )
    before = inc.policy.groups["sg.demo.db"]
    many = [
        rule(f"r{i}", "db", protocol="TCP", ports=str(1 + i), cidr="192.0.2.0/24")
        for i in range(MAX_RULES_PER_DIRECTION + 1)
    ]
    changes = inc.apply_all([Upsert(r) for r in many])
    assert "sg.demo.db" not in changes.groups
    assert inc.policy.groups["sg.demo.db"] == before
    assert set(changes.failed) == {("CompiledSecurityGroup", "sg.demo.db")}
    changes = inc.upsert(pod("w2", "100.64.1.3", labels={"app": "web"}, node="n1"))
    assert set(changes.nodes) == {"n1"}  # the rest compiles on
    changes = inc.apply_all(
        [
            Delete(Kind.SECURITY_GROUP_RULE, "r0", "demo"),
            Delete(Kind.SECURITY_GROUP_RULE, "r1", "demo"),
        ]
    )
    assert changes.failed == {("CompiledSecurityGroup", "sg.demo.db"): None}
    assert len(inc.policy.groups["sg.demo.db"].ingress) == MAX_RULES_PER_DIRECTION
    assert inc.failures() == {}
