"""A compiled object too large to publish (``quotas.MAX_COMPILED_OBJECT_BYTES``).

The operator holds such an object (the API server keeps the old version, agents keep
enforcing it) and reports ``TooLarge`` on its owner. ``lint`` passed the same group in
silence: plain CIDR rules count toward no S-L-1 quota, and under 1,000 rules there is no
``too-many-rules`` either, yet 954 rules with an 82-character name and a 255-character
description in Japanese (3 bytes a character in JSON) pass 1 MB. Checked here: the
compiler (full and incremental) reports it on the owner in the operator's words,
measured on the same JSON;
``lint`` exits 1 with one ``too-large`` error naming the group, its size and the limit,
and is silent one rule below; ``trace`` skips the held group as the agents do; an
address set too large is reported on its IP address group without holding the group
that uses it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml
from clirun import run
from sgdocs import ns as ns_doc
from sgdocs import pod as pod_doc
from sgdocs import rule as rule_doc
from sgdocs import sg as sg_doc
from tests.corecases import facts, ipag, ns, pod, rule, sg

from secgroups import naming, quotas
from secgroups.analysis import PolicyView
from secgroups.compiled import COMPILED_GROUP_KIND
from secgroups.compiling import compile_group, compile_policy, compile_rule
from secgroups.evaluating import Packet
from secgroups.facts import ClusterFacts
from secgroups.incremental import IncrementalCompiler
from secgroups.linting import Code, Severity, lint
from secgroups.models import SecurityGroupRule
from secgroups_operator.publishing import wanted_spec

WIDE = ("demo", "wide")
TARGET, CLIENT = "10.0.0.1", "10.0.0.2"
# 255 characters, 765 bytes of UTF-8 (the JSON is not ASCII-escaped).
DESCRIPTION = ("社外からの接続を許可する規則" * 20)[:255]


def _name(i: int) -> str:
    """Fixed width, so that every rule adds the same bytes to the compiled group."""
    return f"https-from-partner-network-{i:04d}-tokyo-osaka-nagoya-fukuoka-sapporo-sendai-hiroshima"


def _cidr(i: int) -> str:
    return f"203.{100 + i // 100}.{100 + i % 100}.0/24"  # fixed width too (i < 1000)


def wide_rules(n: int) -> list[SecurityGroupRule]:
    return [
        rule(_name(i), "wide", protocol="TCP", ports="443", cidr=_cidr(i), description=DESCRIPTION)
        for i in range(n)
    ]


def size_of(n: int) -> int:
    """The bytes of group ``wide``'s compiled JSON with ``n`` rules, as the publisher
    measures them."""
    spec, _ = compile_group(WIDE, [compile_rule(r) for r in wide_rules(n)])
    return len(quotas.spec_text(spec))


@functools.cache
def just_over() -> int:
    """The fewest rules that take ``wide`` over the bound (the size grows by the same
    step with every rule)."""
    step = size_of(2) - size_of(1)
    n = (quotas.MAX_COMPILED_OBJECT_BYTES - size_of(1)) // step + 2
    assert size_of(n - 1) <= quotas.MAX_COMPILED_OBJECT_BYTES < size_of(n)
    assert n <= quotas.MAX_RULES_PER_GROUP  # not a too-many-rules case
    return n


def cluster(n: int) -> ClusterFacts:
    return facts(
        ns(),
        sg("wide"),
        pod("target", TARGET, groups="wide"),
        pod("client", CLIENT),
        *wide_rules(n),
        nodes=("n1",),
    )


# ----------------------------------------------------------------------------- compile


def test_the_compiler_reports_a_group_just_over_the_size_bound() -> None:
    n = just_over()
    size = size_of(n)
    full = compile_policy(cluster(n))
    [problem] = [p for p in full.problems if p.kind == "SecurityGroup"]
    assert (problem.namespace, problem.name, problem.severity, problem.reason) == (
        *WIDE,
        "Error",
        "TooLarge",
    )
    assert problem.message == (
        f"its compiled form is {size:,} bytes; at most 1,000,000 can be published"
    )
    assert IncrementalCompiler(cluster(n)).problems() == full.problems
    assert [p for p in compile_policy(cluster(n - 1)).problems if p.kind == "SecurityGroup"] == []


def test_the_operator_holds_it_in_the_same_words() -> None:
    """One writer: the publisher's held text is ``TooLarge: `` and the compiler's message."""
    full = compile_policy(cluster(just_over()))
    [problem] = [p for p in full.problems if p.reason == "TooLarge"]
    spec = full.policy.groups[naming.compiled_group_name(*WIDE)]
    w = wanted_spec(COMPILED_GROUP_KIND, spec)
    assert w.held == f"{problem.reason}: {problem.message}"
    assert w.size == size_of(just_over())
    below = compile_policy(cluster(just_over() - 1)).policy.groups
    assert wanted_spec(COMPILED_GROUP_KIND, below[naming.compiled_group_name(*WIDE)]).held is None


def test_trace_skips_the_held_group_as_agents_do() -> None:
    https = Packet.make(CLIENT, TARGET, "tcp", 443)
    assert PolicyView(cluster(just_over() - 1)).trace(https).allowed is False  # CLIENT: no rule
    view = PolicyView(cluster(just_over()))
    assert WIDE in view.held
    [check] = view.trace(https).ingress.checks
    assert (check.group, check.rule, check.held) == (WIDE, None, view.held[WIDE])


# ----------------------------------------------------------------------------- lint


def _manifests(tmp_path: Path, n: int) -> str:
    docs: list[dict[str, Any]] = [
        ns_doc("demo"),
        sg_doc("wide"),
        pod_doc("target", TARGET, groups="wide"),
        *(
            rule_doc(
                _name(i),
                "wide",
                direction="Ingress",
                protocol="TCP",
                ports="443",
                remote={"cidr": _cidr(i)},
                description=DESCRIPTION,
            )
            for i in range(n)
        ),
    ]
    path = tmp_path / f"wide-{n}.yaml"
    path.write_text(yaml.safe_dump_all(docs, allow_unicode=True), encoding="utf-8")
    return str(path)


def test_lint_fails_on_a_group_just_over_the_size_bound(tmp_path: Path) -> None:
    n = just_over()
    message = quotas.too_large_error(size_of(n))
    assert message is not None
    r = run("lint", "-f", _manifests(tmp_path, n), "--no-color")
    assert r.code == 1, r.err
    [line] = [x for x in r.out.splitlines() if x.startswith("error")]
    assert line.split()[:4] == ["error", "too-large", "demo", "sg/wide"]
    assert line.endswith(message) and f"{size_of(n):,} bytes" in line and "1,000,000" in line
    assert "1 error(s), 0 warning(s)" in r.out
    r = run("lint", "-f", _manifests(tmp_path, n), "-o", "json")
    assert r.json()["findings"] == [
        {
            "severity": "error",
            "code": "too-large",
            "requirement": "",
            "kind": "SecurityGroup",
            "namespace": "demo",
            "name": "wide",
            "message": message,
            "source": r.json()["findings"][0]["source"],
        }
    ]
    # One rule fewer fits: nothing to say.
    r = run("lint", "-f", _manifests(tmp_path, n - 1))
    assert (r.code, r.out.strip()) == (0, "no findings (--fail-on error: passed)")


# ----------------------------------------------------------------------------- sets


def test_an_address_set_too_large_is_reported_on_its_address_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sets that large need 10,000 IPv6 CIDRs or tens of thousands of member pods: the
    bound is lowered instead. The group using the set is not held (its own compiled
    form fits); the set's owner is told."""
    f = facts(
        ns(),
        sg("app"),
        pod("target", TARGET, groups="app"),
        ipag("partners", *(f"198.51.{i}.7" for i in range(40))),  # not merged
        rule("from-partners", "app", protocol="TCP", ports="443", remote_ipag="partners"),
        nodes=("n1",),
    )
    policy = compile_policy(f).policy
    set_size = len(quotas.spec_text(policy.sets[naming.ipag_set_name("demo", "partners")]))
    group_size = len(quotas.spec_text(policy.groups[naming.compiled_group_name("demo", "app")]))
    assert group_size < set_size
    monkeypatch.setattr(quotas, "MAX_COMPILED_OBJECT_BYTES", set_size - 1)
    full = compile_policy(f)
    [problem] = [p for p in full.problems if p.severity == "Error"]
    assert (problem.kind, problem.namespace, problem.name, problem.reason) == (
        "IPAddressGroup",
        "demo",
        "partners",
        "SetTooLarge",
    )
    assert problem.message == quotas.too_large_error(set_size)
    assert IncrementalCompiler(f).problems() == full.problems
    assert PolicyView(f).held == {}
    found = [x for x in lint(f) if x.code is Code.TOO_LARGE]
    assert [(x.kind, x.name, x.severity, x.message) for x in found] == [
        ("IPAddressGroup", "partners", Severity.ERROR, problem.message)
    ]
