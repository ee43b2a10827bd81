"""Properties of the compiler, the evaluator and the incremental compiler (Hypothesis).

(a) determinism: the same facts in any order compile to byte-identical objects;
(b) adding a shadowed rule never changes a verdict;
(c) compiled objects round-trip through the models and through JSON text;
(d) the incremental compiler equals the full compiler after any event sequence (its
    policy and its problems, also with groups over the per-group rule limit), and
    the changes it returns are exactly the difference between the two policies.

Example counts stay moderate (the unit tier must stay fast); the strategies in
``tests/strategies.py`` keep the pools small so that objects refer to each other.
"""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tests import strategies as sgst

from secgroups import quotas
from secgroups.addresses import (
    collapse,
    collapse_entries,
    collapse_host_keys,
    collapse_hosts,
    host_key,
    parse_entry,
)
from secgroups.clearing import plan_clearing
from secgroups.compiled import CompiledPolicy
from secgroups.compiling import compile_policy
from secgroups.evaluating import Evaluator, Packet
from secgroups.facts import ClusterFacts
from secgroups.incremental import Changes, IncrementalCompiler, Kind, Node, Upsert
from secgroups.models import SecurityGroupRule
from secgroups.ports import merge_ranges, parse_ports

PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _verdicts(policy: CompiledPolicy, pkts: list[tuple[Any, ...]]) -> list[bool]:
    ev = Evaluator(policy)
    return [ev.evaluate(Packet.make(*p)).allowed for p in pkts]


# ----------------------------------------------------------------------------- (a)


@PROFILE
@given(sgst.facts_and_permutation())
def test_compile_is_byte_identical_under_any_input_order(
    pair: tuple[ClusterFacts, ClusterFacts],
) -> None:
    facts, permuted = pair
    one, two = compile_policy(facts), compile_policy(permuted)
    assert one.policy.model_dump_json(by_alias=True) == two.policy.model_dump_json(by_alias=True)
    assert one.problems == two.problems


# ----------------------------------------------------------------------------- (b)


@st.composite
def facts_with_shadowed_rule(
    draw: st.DrawFn,
) -> tuple[ClusterFacts, ClusterFacts, list[tuple[Any, ...]]]:
    """Facts, the same facts plus a rule shadowed by one of theirs, and packets to try.

    The shadowed copy matches the same packets or fewer (same direction, family,
    protocol, remote; ports and ICMP narrowed or kept) and comes later in match order
    (a larger priority number), so the earlier rule always decides first.
    """
    facts = draw(sgst.cluster_facts(max_rules=10))
    assume(facts.rules)
    original = draw(st.sampled_from(facts.rules))
    assume(original.spec.priority < 100)
    spec = original.spec.model_dump(by_alias=True, exclude_none=True)
    spec["priority"] = draw(st.integers(original.spec.priority + 1, 100))
    spec["action"] = draw(st.sampled_from(("Allow", "Deny")))
    ranges = original.spec.port_ranges()
    if len(ranges) > 0 and draw(st.booleans()):  # narrow to one port of the original's
        r = draw(st.sampled_from(ranges))
        spec["ports"] = str(draw(st.integers(r.lo, r.hi)))
    if original.spec.protocol.value == "ICMP" and "icmp" not in spec and draw(st.booleans()):
        spec["icmp"] = {"type": 8}
    shadow = SecurityGroupRule.model_validate(
        {
            "metadata": {"name": "zz-shadow", "namespace": original.metadata.namespace},
            "spec": spec,
        }
    )
    more = facts.model_copy(update={"rules": (*facts.rules, shadow)})
    pkts = draw(st.lists(sgst.packets(facts), min_size=1, max_size=25))
    return facts, more, pkts


@PROFILE
@given(facts_with_shadowed_rule())
def test_a_shadowed_rule_never_changes_a_verdict(
    case: tuple[ClusterFacts, ClusterFacts, list[tuple[Any, ...]]],
) -> None:
    facts, more, pkts = case
    assert _verdicts(compile_policy(more).policy, pkts) == _verdicts(
        compile_policy(facts).policy, pkts
    )


# ----------------------------------------------------------------------------- (c)


@PROFILE
@given(sgst.cluster_facts())
def test_compiled_policy_round_trips_through_the_models_and_json(facts: ClusterFacts) -> None:
    policy = compile_policy(facts).policy
    as_data = policy.model_dump(by_alias=True, mode="json")
    assert CompiledPolicy.model_validate(as_data) == policy
    text = policy.model_dump_json(by_alias=True)
    again = CompiledPolicy.model_validate_json(text)
    assert again == policy
    assert again.model_dump_json(by_alias=True) == text


# ----------------------------------------------------------------------------- (d)


@st.composite
def event_sequences(draw: st.DrawFn) -> tuple[ClusterFacts, list[Any]]:
    facts = draw(sgst.cluster_facts(max_pods=6, max_rules=8))
    return facts, draw(st.lists(sgst.events(facts), min_size=1, max_size=12))


def _diff(old: CompiledPolicy, new: CompiledPolicy) -> Changes:
    out = Changes()
    for attr in ("groups", "sets", "nodes"):
        before, after = getattr(old, attr), getattr(new, attr)
        target = getattr(out, attr)
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                target[name] = after.get(name)
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sequences())
def test_incremental_compiler_equals_the_full_compiler_after_any_events(
    case: tuple[ClusterFacts, list[Any]],
) -> None:
    _check_incremental_against_full(case)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sequences())
def test_incremental_problems_equal_the_full_compilers_with_groups_over_the_rule_limit(
    case: tuple[ClusterFacts, list[Any]],
) -> None:
    """The same with the per-group rule limit lowered to 2: groups in use go over it
    and back (``TooManyRules``), which 1,000 real rules per example would make slow."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quotas, "MAX_RULES_PER_GROUP", 2)
        _check_incremental_against_full(case)


def _check_incremental_against_full(case: tuple[ClusterFacts, list[Any]]) -> None:
    facts, events = case
    inc = IncrementalCompiler(facts)
    assert inc.problems() == compile_policy(facts).problems
    assert inc.policy == compile_policy(facts).policy
    for event in events:
        before = inc.policy
        changes = inc.apply(event)
        full = compile_policy(inc.facts(), inc.options)
        assert inc.policy.model_dump_json() == full.policy.model_dump_json(), event
        assert inc.problems() == full.problems, event
        assert changes == _diff(before, full.policy), event


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sequences())
def test_a_batch_of_events_gives_the_same_policy_as_one_at_a_time(
    case: tuple[ClusterFacts, list[Any]],
) -> None:
    facts, events = case
    one, batch = IncrementalCompiler(facts), IncrementalCompiler(facts)
    for event in events:
        one.apply(event)
    batch.apply_all(events)
    assert batch.policy == one.policy


def _as_lists(facts: ClusterFacts) -> list[Any]:
    """The facts as the operator's initial lists bring them: one upsert per object."""
    objects: list[Any] = [*facts.namespaces, *(Node(n) for n in facts.nodes)]
    objects += [*facts.groups, *facts.rules, *facts.address_groups, *facts.pods]
    return [Upsert(o) for o in objects]


def _written(changes: Changes) -> dict[str, Any]:
    """What a load's changes give the operator: objects and failures (a None says an
    earlier preload's object or failure is gone: nothing to write at a start)."""
    return {
        attr: {k: v for k, v in getattr(changes, attr).items() if v is not None}
        for attr in ("groups", "sets", "nodes", "failed")
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sequences(), st.lists(st.integers(0, 40), max_size=4))
def test_preloading_part_of_the_initial_lists_compiles_what_one_load_does(
    case: tuple[ClusterFacts, list[Any]], cuts: list[int]
) -> None:
    """The operator compiles the initial lists as their pages arrive (``preload``) and
    ends with one ``load``: wherever the lists are cut, the result is one load's."""
    facts, events = case
    lists = [*_as_lists(facts), *events]
    one = IncrementalCompiler()
    whole = one.load(lists)
    split = IncrementalCompiler()
    start = 0
    for cut in sorted({min(c, len(lists)) for c in cuts}):
        split.preload(lists[start:cut])
        start = cut
    got = split.load(lists[start:])
    assert split.policy.model_dump_json() == one.policy.model_dump_json()
    full = compile_policy(split.facts(), split.options)
    assert split.policy.model_dump_json() == full.policy.model_dump_json()
    assert split.problems() == full.problems
    assert _written(got) == _written(whole)


# ----------------------------------------------------------------------------- S-CT-2


PROBES = (
    ("tcp", 22, None),
    ("tcp", 80, None),
    ("udp", 53, None),
    ("icmp", None, 8),
    ("gre", None, None),
)


def _ingress_allowed(ev: Evaluator, src: str, dst: str, proto: str, dport: Any, icmp: Any) -> bool:
    verdict = ev.evaluate(Packet.make(src, dst, proto, dport, icmp))
    return verdict.ingress is None or verdict.ingress.allowed


# Rule events weigh most: they are what the S-CT-2 table is mostly about.
CHANGE_KINDS = (
    *[Kind.SECURITY_GROUP_RULE] * 4,
    Kind.POD,
    Kind.POD,
    Kind.SECURITY_GROUP,
    Kind.IP_ADDRESS_GROUP,
    Kind.NAMESPACE,
)


@st.composite
def changes(draw: st.DrawFn) -> tuple[ClusterFacts, list[Any]]:
    facts = draw(sgst.cluster_facts(max_pods=10, max_rules=14, min_pods=4))
    return facts, draw(st.lists(sgst.events(facts, CHANGE_KINDS), min_size=1, max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes())
def test_every_pod_whose_inbound_verdict_narrows_is_rechecked(
    case: tuple[ClusterFacts, list[Any]],
) -> None:
    """The point of S-CT-2: if an inbound flow to a pod was allowed before a change and
    is denied after it, the planner re-checks that pod (so the flow is cut)."""
    old, events = case
    inc = IncrementalCompiler(old)
    inc.apply_all(events)
    new = inc.facts()
    plan = plan_clearing(old, new)
    before, after = Evaluator(compile_policy(old).policy), Evaluator(compile_policy(new).policy)
    sources = [ip for p in (*old.pods, *new.pods) for ip in p.ips]
    sources += [*sgst.OUTSIDE_V4, *sgst.OUTSIDE_V6]
    for node in after.policy.nodes.values():
        for pod in node.pods:
            if (pod.namespace, pod.name) in plan.pods:
                continue
            for dst in pod.ips:
                for src in {s for s in sources if (":" in s) == (":" in dst) and s != dst}:
                    for proto, dport, icmp in PROBES:
                        if _ingress_allowed(before, src, dst, proto, dport, icmp):
                            assert _ingress_allowed(after, src, dst, proto, dport, icmp), (
                                f"{proto} {src} -> {pod.namespace}/{pod.name} {dst} was allowed, "
                                f"is denied, and the pod is not re-checked; events {events}"
                            )


# ----------------------------------------------------------------------------- helpers


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 70), max_size=30),
    st.lists(st.integers(2**32 - 40, 2**32 - 1), max_size=10),
    st.lists(st.integers(0, 300), max_size=30),
)
def test_fast_host_collapse_equals_ipaddress_collapse(
    low: list[int], high: list[int], six: list[int]
) -> None:
    ips = [ipaddress.IPv4Address(i) for i in low + high] + [ipaddress.IPv6Address(i) for i in six]
    nets = collapse(ipaddress.ip_network(ip) for ip in ips)
    expected = (
        tuple(str(n) for n in nets if n.version == 4),
        tuple(str(n) for n in nets if n.version == 6),
    )
    assert collapse_hosts(ips) == expected
    # the compiler's path: pod IPs as text through host_key (the C library's parser)
    assert collapse_host_keys(host_key(str(ip)) for ip in ips) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 600), st.integers(0, 80), st.sampled_from(("range", "cidr"))),
        max_size=8,
    )
)
def test_fast_entry_collapse_equals_ipaddress_collapse(items: list[tuple[int, int, str]]) -> None:
    entries = []
    for lo, width, form in items:
        first = ipaddress.IPv4Address(lo)
        if form == "range":
            entries.append(f"{first}-{first + width}")
        else:
            entries.append(f"{first}/{32 - width % 9}")
    nets = collapse(n for e in entries for n in parse_entry(e).networks())
    assert collapse_entries(entries) == (tuple(str(n) for n in nets), ())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 200), st.integers(0, 20)), min_size=1, max_size=8))
def test_port_lists_merge_to_exactly_the_ports_written(items: list[tuple[int, int]]) -> None:
    text = ",".join(f"{lo}-{lo + w}" if w else str(lo) for lo, w in items)
    written = {p for lo, w in items for p in range(lo, lo + w + 1)}
    merged = parse_ports(text)
    assert {p for r in merged for p in range(r.lo, r.hi + 1)} == written
    assert all(a.hi + 1 < b.lo for a, b in itertools.pairwise(merged))
    assert merge_ranges(merged) == merged
