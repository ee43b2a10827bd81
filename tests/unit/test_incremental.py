"""The incremental compiler, event by event: which compiled objects each event rewrites.

The random-sequence property (tests/unit/test_properties.py) proves the result equals
the full compiler; these cases pin down that an event reaches only what it must
(docs/architecture.md#compiled-objects: one change writes O(1) objects).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from tests.corecases import facts, ipag, ns, pod, rule, sg

from secgroups.compiling import compile_policy
from secgroups.incremental import (
    Changes,
    Delete,
    IncrementalCompiler,
    Kind,
    Node,
    SetEpochs,
    _SortedCounts,
)

BASE: tuple[Any, ...] = (
    ns(),
    sg("web", selector={"app": "web"}),
    sg("db"),
    ipag("office", "192.0.2.0/28"),
    pod("w1", "10.0.0.1", labels={"app": "web"}, node="n1"),
    pod("w2", "10.0.0.2", labels={"app": "web"}, node="n2"),
    pod("d1", "10.0.1.1", groups="db", node="n1"),
    rule("db-from-web", "db", protocol="TCP", ports="5432", remote_sg="web"),
    rule("web-office", "web", remote_ipag="office"),
)


def _compiler(*extra: Any) -> IncrementalCompiler:
    return IncrementalCompiler(facts(*BASE, *extra, nodes=("n1", "n2")))


def _names(changes: Changes) -> dict[str, list[str]]:
    return {
        "groups": sorted(changes.groups),
        "sets": sorted(changes.sets),
        "nodes": sorted(changes.nodes),
    }


def _check(inc: IncrementalCompiler) -> None:
    assert inc.policy == compile_policy(inc.facts(), inc.options).policy


def test_initial_state_equals_the_full_compile() -> None:
    inc = _compiler()
    full = compile_policy(facts(*BASE, nodes=("n1", "n2")))
    assert inc.policy.model_dump_json() == full.policy.model_dump_json()
    assert inc.problems() == full.problems
    assert inc.memberships() == full.memberships


def test_rule_with_a_cidr_rewrites_only_its_group() -> None:
    inc = _compiler()
    changes = inc.upsert(rule("ssh", "web", protocol="TCP", ports="22", cidr="198.51.100.0/24"))
    assert _names(changes) == {"groups": ["sg.demo.web"], "sets": [], "nodes": []}
    assert [r.id for r in inc.policy.groups["sg.demo.web"].ingress] == [
        "demo/ssh",
        "demo/web-office",
    ]
    _check(inc)


def test_rule_with_a_new_remote_adds_the_set_and_tells_the_nodes() -> None:
    inc = _compiler()
    changes = inc.upsert(rule("to-db", "web", "Egress", remote_sg="db"))
    assert _names(changes) == {
        "groups": ["sg.demo.web"],
        "sets": ["sg.demo.db"],
        "nodes": ["n1", "n2"],
    }
    assert changes.sets["sg.demo.db"] is not None
    assert changes.sets["sg.demo.db"].ipv4 == ("10.0.1.1/32",)
    _check(inc)


def test_deleting_the_last_user_of_a_set_deletes_the_set() -> None:
    inc = _compiler()
    changes = inc.delete(Kind.SECURITY_GROUP_RULE, "web-office", "demo")
    assert changes.sets == {"ipag.demo.office": None}
    assert changes.groups.keys() == {"sg.demo.web"}
    assert sorted(changes.nodes) == ["n1", "n2"], "nodes stop watching the set"
    _check(inc)


def test_new_pod_rewrites_its_node_and_the_sets_it_joins() -> None:
    inc = _compiler()
    changes = inc.upsert(pod("w3", "10.0.0.3", labels={"app": "web"}, node="n2"))
    assert _names(changes) == {"groups": [], "sets": ["sg.demo.web"], "nodes": ["n2"]}
    assert changes.sets["sg.demo.web"] is not None
    assert changes.sets["sg.demo.web"].ipv4 == ("10.0.0.1/32", "10.0.0.2/31")
    _check(inc)


def test_first_ips_name_the_pods_that_had_none() -> None:
    """A pod's first IPs (created with them, or given them later) are first_ips: no flow of
    it exists yet. A pod that gains a second IP, or joins a group, is not."""
    inc = _compiler()
    assert inc.upsert(pod("w3", "10.0.0.3", labels={"app": "web"}, node="n2")).first_ips == {
        ("demo", "w3")
    }
    assert inc.upsert(pod("w4", labels={"app": "web"}, node="n2")).first_ips == set()
    given = inc.upsert(pod("w4", "10.0.0.4", labels={"app": "web"}, node="n2"))
    assert given.first_ips == {("demo", "w4")} and ("demo", "w4") in given.recheck_direct
    second = inc.upsert(pod("w4", "10.0.0.4", "fd00::4", labels={"app": "web"}, node="n2"))
    assert second.first_ips == set() and ("demo", "w4") in second.recheck_direct
    joined = inc.upsert(pod("w1", "10.0.0.1", labels={"app": "web"}, groups="db", node="n1"))
    assert joined.first_ips == set() and ("demo", "w1") in joined.recheck_direct
    _check(inc)


def test_last_member_leaving_deletes_the_group() -> None:
    inc = _compiler()
    changes = inc.delete(Kind.POD, "d1", "demo")
    assert changes.groups == {"sg.demo.db": None}
    assert changes.nodes.keys() == {"n1"}
    _check(inc)


def test_address_group_edit_rewrites_only_its_set() -> None:
    inc = _compiler()
    changes = inc.upsert(ipag("office", "192.0.2.0/28", "198.51.100.1"))
    assert _names(changes) == {"groups": [], "sets": ["ipag.demo.office"], "nodes": []}
    _check(inc)


def test_unused_address_group_changes_nothing() -> None:
    inc = _compiler()
    assert not inc.upsert(ipag("partners", "203.0.113.0/24"))


def test_same_object_again_changes_nothing() -> None:
    inc = _compiler()
    assert not inc.upsert(pod("w1", "10.0.0.1", labels={"app": "web"}, node="n1"))
    assert not inc.upsert(rule("web-office", "web", remote_ipag="office"))
    assert not inc.upsert(sg("web", selector={"app": "web"}))


def test_a_pod_whose_facts_are_unchanged_is_not_recompiled(monkeypatch: Any) -> None:
    # A kubelet's status write (readiness, conditions) reduces to the same facts: the
    # pod is not compiled again (intake and compiler: 34 -> 19 us a pod at 30,050 pods).
    from secgroups import incremental

    inc = _compiler()
    compiled: list[str] = []
    real = incremental.compile_pod

    def counting(p: Any, *args: Any) -> Any:
        compiled.append(p.name)
        return real(p, *args)

    monkeypatch.setattr(incremental, "compile_pod", counting)
    assert not inc.upsert(pod("w1", "10.0.0.1", labels={"app": "web"}, node="n1"))
    assert compiled == []
    changes = inc.upsert(pod("w1", "10.0.0.1", labels={"app": "web", "v": "2"}, node="n1"))
    assert compiled == ["w1"]
    assert not changes  # a label no selector reads: compiled again, nothing to write
    _check(inc)


def test_selector_change_moves_pods_between_groups() -> None:
    inc = _compiler()
    changes = inc.upsert(sg("web", selector={"app": "none"}))
    assert changes.groups == {
        "sg.demo.web": None,
        "sg.demo.default": changes.groups["sg.demo.default"],
    }
    assert changes.groups["sg.demo.default"] is not None
    assert changes.groups["sg.demo.default"].synthesized
    _check(inc)


def test_namespace_leaving_enforcement_removes_its_objects() -> None:
    inc = _compiler()
    changes = inc.upsert(ns(enforced=False))
    assert all(v is None for v in (*changes.groups.values(), *changes.sets.values()))
    assert inc.policy.groups == {} and inc.policy.sets == {}
    assert [n.pods for n in inc.policy.nodes.values()] == [(), ()]
    _check(inc)


def test_epochs_rewrite_only_the_node_of_the_pod() -> None:
    inc = _compiler()
    changes = inc.set_epochs({("demo", "d1"): 3})
    assert _names(changes) == {"groups": [], "sets": [], "nodes": ["n1"]}
    assert {p.name: p.epoch for p in inc.policy.nodes["n1"].pods} == {"d1": 3, "w1": 0}
    assert inc.options.epochs == {("demo", "d1"): 3}


def test_nodes_come_and_go() -> None:
    inc = _compiler()
    assert _names(inc.upsert(Node("n3")))["nodes"] == ["n3"]
    assert inc.delete(Kind.NODE, "n3").nodes == {"n3": None}
    changes = inc.delete(Kind.NODE, "n1")
    assert changes.nodes == {}, "a node with managed pods keeps its object"
    _check(inc)


def test_group_created_after_the_pods_that_name_it() -> None:
    inc = _compiler(pod("late", "10.0.2.1", groups="cache", node="n2"))
    assert [p.reason for p in inc.problems()] == ["UnknownGroup"]
    assert inc.unknown_annotated() == {("demo", "late"): ("cache",)}
    late = inc.pod(("demo", "late"))
    assert late is not None and late.uid == "uid-demo-late"
    inc.upsert(sg("cache"))
    assert inc.problems() == ()
    assert inc.unknown_annotated() == {}
    assert next(p for p in inc.policy.nodes["n2"].pods if p.name == "late").groups == (
        "sg.demo.cache",
    )
    _check(inc)


def test_default_group_object_replaces_the_synthesized_one() -> None:
    inc = _compiler(pod("plain", "10.0.3.1", node="n1"))
    assert inc.policy.groups["sg.demo.default"].synthesized
    changes = inc.upsert(sg("default"))
    spec = changes.groups["sg.demo.default"]
    assert spec is not None and not spec.synthesized and spec.ingress == ()
    _check(inc)


def test_apply_all_flushes_once_and_merge_folds_changes() -> None:
    inc = _compiler()
    changes = inc.apply_all(
        [Delete(Kind.POD, "w1", "demo"), Delete(Kind.POD, "w2", "demo"), SetEpochs({})]
    )
    assert changes.groups["sg.demo.web"] is None
    total = Changes()
    total.merge(changes)
    total.merge(Changes(nodes={"n9": None}))
    assert len(total) == len(changes) + 1
    _check(inc)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "add_one", "remove", "remove_one"]),
            st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=5),
        ),
        max_size=40,
    )
)
def test_sorted_counts_is_a_multiset_with_sorted_names(ops: list[tuple[str, list[str]]]) -> None:
    """A node's group and set names (_SortedCounts): whatever mix of single inserts in
    place and batches sorted later, ``names`` is the sorted distinct names and each call
    returns what appeared or went."""
    counts = _SortedCounts()
    ref: Counter[str] = Counter()
    for op, drawn in ops:
        items = drawn
        if op.startswith("remove"):  # only what is there, once each
            items = [i for i in dict.fromkeys(drawn) if ref[i] > 0]
        if op.endswith("_one"):
            items = items[:1]
            if not items:
                continue
            changed = [items[0]] if getattr(counts, op)(items[0]) else []
        else:
            changed = getattr(counts, op)(items)
        before = +ref
        if op.startswith("add"):
            ref.update(items)
        else:
            ref.subtract(items)
        ref = +ref
        assert sorted(changed) == sorted(set(ref) ^ set(before))
        assert counts.names == sorted(ref)
        assert counts.counts == dict(ref)
