"""A group in use with more rules than one compiled group holds (issue 11: ``lint -f`` and
``trace`` ended in "internal error", exit 4).

The operator never publishes such a group: the incremental compiler leaves out a group the
compiled models refuse (more than ``MAX_RULES_PER_DIRECTION`` rules in one direction;
``failures()``), and the publisher holds one over ``quotas.MAX_RULES_PER_GROUP`` rules in
all. Agents skip a group a node object names but they do not have. Checked here: the full
compiler leaves out the same group as the incremental one and says why in the webhook's
words; ``lint`` reports it as an error; the evaluator, ``explain`` and ``trace`` skip it
exactly as the operator's published policy does; the CLI exits 1 with the finding.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import yaml
from clirun import run
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.corecases import facts, ns, pod, rule, sg

from secgroups import naming
from secgroups.admitting import admit_rule
from secgroups.analysis import PolicyView
from secgroups.compiled import COMPILED_GROUP_KIND, MAX_RULES_PER_DIRECTION, CompiledPolicy
from secgroups.compiling import compile_policy
from secgroups.evaluating import Evaluator, Packet
from secgroups.facts import ClusterFacts
from secgroups.incremental import IncrementalCompiler
from secgroups.linting import Code, Severity, lint
from secgroups.models import SecurityGroupRule
from secgroups.quotas import MAX_RULES_PER_GROUP, too_many_rules_error

BIG = ("demo", "big")
TARGET, CLIENT = "10.0.0.1", "10.0.0.2"


def big_rules(ingress: int, egress: int = 0) -> list[SecurityGroupRule]:
    """Rules of group ``big``: Allow TCP port i+1 from (to) anywhere, one per port."""
    return [
        rule(f"in-{i}", "big", "Ingress", protocol="TCP", ports=str(1 + i)) for i in range(ingress)
    ] + [rule(f"out-{i}", "big", "Egress", protocol="TCP", ports=str(1 + i)) for i in range(egress)]


def cluster(rules: list[SecurityGroupRule]) -> ClusterFacts:
    """``target`` is in ``big`` then ``after`` (HTTP in, DNS out); ``client`` in the default
    group. ``big``'s rules allow ports 1..N, so whether it is skipped decides port 22."""
    return facts(
        ns(),
        sg("big"),
        sg("after"),
        pod("target", TARGET, groups="big,after"),
        pod("client", CLIENT),
        rule("http", "after", "Ingress", protocol="TCP", ports="80"),
        rule("dns", "after", "Egress", protocol="UDP", ports="53"),
        *rules,
        nodes=("n1",),
    )


# Over the compiled model's bound (held by the incremental compiler), and over the
# webhook's limit only (held by the publisher).
SHAPES = {
    "one-direction": (MAX_RULES_PER_DIRECTION + 1, 0),
    "both-directions": (MAX_RULES_PER_GROUP // 2 + 1, MAX_RULES_PER_GROUP // 2),
}


@functools.cache
def shaped(shape: str) -> ClusterFacts:
    return cluster(big_rules(*SHAPES[shape]))


def admission_message(rules: list[SecurityGroupRule]) -> str:
    """What the webhook answers to the write of the last of ``rules``."""
    decision = admit_rule(rules[-1], None, rules[:-1])
    assert (decision.allowed, decision.reason) == (False, "TooManyRules")
    return decision.message


def published(f: ClusterFacts) -> CompiledPolicy:
    """The policy as the operator publishes it for ``f`` from scratch: the incremental
    compiler's objects, less the groups the publisher holds — more than
    MAX_RULES_PER_GROUP compiled rules (``secgroups_operator.publishing.wanted_spec``;
    restated, as the operator is not imported by the core's tests)."""
    policy = IncrementalCompiler(f).policy
    groups = {
        name: spec
        for name, spec in policy.groups.items()
        if len(spec.ingress) + len(spec.egress) <= MAX_RULES_PER_GROUP
    }
    return policy.model_copy(update={"groups": groups})


# ----------------------------------------------------------------------------- compile


def test_a_group_the_models_refuse_is_left_out_as_the_incremental_compiler_does() -> None:
    f = shaped("one-direction")
    full = compile_policy(f)  # raised a ValidationError before
    inc = IncrementalCompiler(f)
    name = naming.compiled_group_name(*BIG)
    assert set(inc.failures()) == {(COMPILED_GROUP_KIND, name)}
    assert name not in full.policy.groups
    assert full.policy.model_dump_json() == inc.policy.model_dump_json()
    # The pod's node entry still names it (agents skip it), with the group after it.
    [target] = [p for p in full.policy.nodes["n1"].pods if p.name == "target"]
    assert target.groups == (name, naming.compiled_group_name("demo", "after"))
    [problem] = [p for p in full.problems if p.reason == "TooManyRules"]
    assert (problem.kind, problem.namespace, problem.name) == ("SecurityGroup", *BIG)
    assert problem.severity == "Error"
    assert problem.message == admission_message(big_rules(*SHAPES["one-direction"]))


def test_a_group_over_the_webhook_limit_compiles_and_is_reported() -> None:
    f = shaped("both-directions")
    full = compile_policy(f)
    name = naming.compiled_group_name(*BIG)
    assert name in full.policy.groups  # the models hold it; the publisher does not
    assert full.policy == IncrementalCompiler(f).policy
    [problem] = [p for p in full.problems if p.reason == "TooManyRules"]
    assert problem.message == too_many_rules_error(BIG, MAX_RULES_PER_GROUP + 1)
    assert PolicyView(f).held == {BIG: problem.message}


def test_a_group_at_the_limit_is_neither_reported_nor_held() -> None:
    f = cluster(big_rules(MAX_RULES_PER_GROUP))
    assert [p for p in compile_policy(f).problems if p.kind == "SecurityGroup"] == []
    view = PolicyView(f)
    assert view.held == {}
    assert view.trace(Packet.make(CLIENT, TARGET, "tcp", 22)).allowed
    assert not [x for x in lint(f) if x.code is Code.TOO_MANY_RULES]


def test_a_group_the_models_refuse_for_another_reason_is_left_out_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from secgroups import compiling

    real = compiling.compile_group

    def refuse_after(key: Any, rules: Any, recheck: int = 0) -> Any:
        if key == ("demo", "after"):
            raise ValueError("1 validation error for CompiledGroupSpec\n  something")
        return real(key, rules, recheck)

    monkeypatch.setattr(compiling, "compile_group", refuse_after)
    full = compiling.compile_policy(cluster([]))
    assert naming.compiled_group_name("demo", "after") not in full.policy.groups
    [problem] = [p for p in full.problems if p.kind == "SecurityGroup"]
    assert (problem.name, problem.reason) == ("after", "CannotCompile")
    assert problem.message == (
        "cannot be compiled: 1 validation error for CompiledGroupSpec something"
    )


# ----------------------------------------------------------------------------- lint


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_lint_reports_the_webhooks_refusal_as_an_error(shape: str) -> None:
    rules = big_rules(*SHAPES[shape])
    found = [x for x in lint(shaped(shape)) if x.code is Code.TOO_MANY_RULES]
    assert [(x.kind, x.namespace, x.name, x.severity) for x in found] == [
        ("SecurityGroup", "demo", "big", Severity.ERROR)
    ]
    assert found[0].message == admission_message(rules)


def test_lint_counts_what_the_webhook_counts_members_or_not() -> None:
    """No member pods (nothing compiled), or no SecurityGroup object at all: the webhook
    refuses the rule all the same."""
    rules = [
        rule(f"r{i}", "ghost", protocol="TCP", ports=str(1 + i))
        for i in range(MAX_RULES_PER_GROUP + 1)
    ]
    found = [x for x in lint(facts(ns(), sg("idle"), *rules)) if x.code is Code.TOO_MANY_RULES]
    assert [(x.name, x.message) for x in found] == [("ghost", admission_message(rules))]


# ----------------------------------------------------------------------------- the view


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_explain_and_trace_skip_the_held_group_and_say_why(shape: str) -> None:
    view = PolicyView(shaped(shape))
    why = view.held[BIG]
    policy = view.pod_policy(("demo", "target"))
    assert [(m.group, m.held) for m in policy.groups] == [(BIG, why), (("demo", "after"), "")]
    assert [r.name for r in policy.ingress] == ["http"]  # none of big's
    t = view.trace(Packet.make(CLIENT, TARGET, "tcp", 22))  # big would allow it
    assert not t.allowed
    assert [(c.group, c.rule, c.held) for c in t.ingress.checks] == [
        (BIG, None, why),
        (("demo", "after"), None, ""),
    ]
    t = view.trace(Packet.make(CLIENT, TARGET, "tcp", 80))
    assert t.allowed and t.ingress.checks[-1].rule is not None
    assert t.ingress.checks[-1].rule.id == "demo/http"


PACKETS = st.builds(
    lambda pair, proto, port: Packet.make(*pair, proto, port),
    st.sampled_from([(CLIENT, TARGET), (TARGET, CLIENT)]),
    st.sampled_from(["tcp", "udp"]),
    st.integers(1, 1100),
)


@settings(max_examples=150, deadline=None)
@given(shape=st.sampled_from(sorted(SHAPES)), packet=PACKETS)
def test_verdicts_are_those_of_the_policy_the_operator_publishes(
    shape: str, packet: Packet
) -> None:
    f = shaped(shape)
    view = _view(shape)
    want = _operator_evaluator(shape).evaluate(packet)
    got = view.trace(packet)
    assert got.verdict == want
    for side, verdict in ((got.egress, want.egress), (got.ingress, want.ingress)):
        assert verdict is not None
        decided = [c for c in side.checks if c.rule is not None]
        assert [c.rule for c in decided] == ([verdict.rule] if verdict.rule else [])
        assert all(not c.held or c.group in view.held for c in side.checks)
    assert f is view.facts


@functools.cache
def _view(shape: str) -> PolicyView:
    return PolicyView(shaped(shape))


@functools.cache
def _operator_evaluator(shape: str) -> Evaluator:
    return Evaluator(published(shaped(shape)))


# ----------------------------------------------------------------------------- the CLI


def _manifests(tmp_path: Any) -> str:
    from sgdocs import ns as ns_doc
    from sgdocs import pod as pod_doc
    from sgdocs import rule as rule_doc
    from sgdocs import sg as sg_doc

    docs = [
        ns_doc("demo"),
        sg_doc("big"),
        sg_doc("after"),
        pod_doc("target", TARGET, groups="big,after"),
        pod_doc("client", CLIENT),
        rule_doc("http", "after", direction="Ingress", protocol="TCP", ports="80"),
        *(
            rule_doc(f"in-{i}", "big", direction="Ingress", protocol="TCP", ports=str(1 + i))
            for i in range(MAX_RULES_PER_DIRECTION + 1)
        ),
    ]
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    return str(path)


def test_the_cli_answers_instead_of_failing(tmp_path: Any) -> None:
    path = _manifests(tmp_path)
    message = too_many_rules_error(BIG, MAX_RULES_PER_DIRECTION + 1)
    r = run("lint", "-f", path, "-o", "json")
    assert (r.code, r.err) == (1, "")  # was 4, "internal error"
    [finding] = [x for x in r.json()["findings"] if x["code"] == "too-many-rules"]
    assert (finding["severity"], finding["name"], finding["message"]) == ("error", "big", message)
    r = run("trace", "-f", path, "--from", "pod/demo/client", "--to", "pod/demo/target",
            "--proto", "tcp", "--port", "22")  # fmt: skip
    assert r.code == 1, r.err
    assert "skipped: held" in r.out and message in r.out
    r = run("explain", "-f", path, "pod/demo/target", "-o", "json")
    assert r.code == 0, r.err
    assert [g.get("held") for g in r.json()["groups"]] == [message, None]
