"""Admission decisions (secgroups.admitting): quotas at admission (S-L-1, S-L-2, S-L-3),
size limits, and deleting what is in use — the pure part of the operator's webhook."""

from __future__ import annotations

from typing import Any

import pytest
from tests.corecases import facts, ipag, ns, pod, rule, sg

from secgroups import admitting, quotas
from secgroups.admitting import Decision, GroupUsers
from secgroups.linting import Code, lint
from secgroups.models import Direction, IPFamily, SecurityGroup, SecurityGroupRule

QUOTA = quotas.RULE_QUOTA


def _counted(
    n: int, group: str = "web", direction: str = "Ingress", family: str = "IPv4"
) -> list[Any]:
    """``n`` rules that count against S-L-1 (a remote group), named r000…"""
    return [rule(f"r{i:03d}", group, direction, ipFamily=family, remote_sg="db") for i in range(n)]


def _not_counted(n: int, group: str = "web") -> list[Any]:
    return [rule(f"plain{i:03d}", group, protocol="TCP", ports=str(1000 + i)) for i in range(n)]


NEW = rule("new", "web", remote_sg="db")


# ----------------------------------------------------------------------------- S-L-1


@pytest.mark.parametrize(
    ("existing", "new", "allowed"),
    [
        pytest.param(_counted(QUOTA - 1), NEW, True, id="S-L-1-120th-allowed"),
        pytest.param(_counted(QUOTA), NEW, False, id="S-L-1-121st-refused"),
        pytest.param(
            _counted(QUOTA),
            rule("new", "web", protocol="TCP", ports="22"),
            True,
            id="S-L-1-uncounted-rule-always-fits",
        ),
        pytest.param(
            _counted(QUOTA),
            rule("new", "web", "Egress", remote_sg="db"),
            True,
            id="S-L-1-other-direction-has-its-own-quota",
        ),
        pytest.param(
            _counted(QUOTA),
            rule("new", "web", ipFamily="IPv6", remote_sg="db"),
            True,
            id="S-L-1-other-family-has-its-own-quota",
        ),
        pytest.param(
            _counted(QUOTA),
            rule("new", "api", remote_sg="db"),
            True,
            id="S-L-1-other-group-has-its-own-quota",
        ),
        pytest.param(
            [*_counted(QUOTA - 1), *_not_counted(50)],
            NEW,
            True,
            id="S-L-1-only-counted-rules-count",
        ),
        pytest.param(
            _counted(QUOTA),
            rule("new", "web", protocol="TCP", ports="22,25,27"),
            False,
            id="S-L-1-inconsecutive-ports-count",
        ),
    ],
)
def test_rule_quota_at_admission(
    existing: list[SecurityGroupRule], new: SecurityGroupRule, allowed: bool
) -> None:
    d = admitting.admit_rule(new, None, existing)
    assert d.allowed is allowed, d.message
    if not allowed:
        assert d.reason == "QuotaExceeded"


def test_the_refusal_names_group_direction_type_and_count_in_lints_words() -> None:
    """The Must-show message, and `kubectl secgroups lint` says the same for the same rules."""
    existing = _counted(QUOTA)
    d = admitting.admit_rule(NEW, None, existing)
    assert d.message == (
        "S-L-1 quota: security group demo/web: 121 Ingress IPv4 rules with a remote group, "
        "a remote address group or inconsecutive ports; the limit is 120"
    )
    [finding] = [
        f for f in lint(facts(ns(), sg("web"), sg("db"), *existing, NEW)) if f.code is Code.QUOTA
    ]
    assert (finding.kind, finding.name, finding.requirement) == ("SecurityGroup", "web", "S-L-1")
    assert d.message.endswith(finding.message)
    assert finding.message == quotas.rule_quota_error(Direction.INGRESS, IPFamily.IPV4, 121)


def test_an_update_that_adds_nothing_to_its_bucket_passes_even_over_the_quota() -> None:
    """A group over the quota (created before the webhook) can still be edited."""
    existing = _counted(QUOTA + 5)
    edited = rule("r000", "web", remote_sg="db", description="edited")
    assert admitting.admit_rule(edited, existing[0], existing).allowed
    moved = rule("r000", "web", "Egress", remote_sg="db")  # into the empty egress bucket
    assert admitting.admit_rule(moved, existing[0], existing).allowed
    # An uncounted rule that starts counting adds to the bucket.
    plain = _not_counted(1)[0]
    now_counted = rule(plain.metadata.name, "web", remote_sg="db")
    assert not admitting.admit_rule(now_counted, plain, [*existing, plain]).allowed


def test_the_stored_copy_of_a_rule_is_not_counted_twice() -> None:
    existing = _counted(QUOTA)
    again = rule("r000", "web", remote_sg="db")  # re-applying a rule that is stored
    assert admitting.admit_rule(again, existing[0], existing).allowed
    assert admitting.admit_rule(again, None, existing).allowed  # a create racing itself


def test_near_the_quota_the_write_passes_with_a_warning() -> None:
    d = admitting.admit_rule(NEW, None, _counted(95))
    assert d.allowed
    assert d.warnings == (
        "S-L-1 quota: security group demo/web: 96 of 120 Ingress IPv4 quota rules used",
    )
    assert admitting.admit_rule(NEW, None, _counted(94)).warnings == ()


def test_a_group_holds_at_most_max_rules_of_any_kind() -> None:
    limit = quotas.MAX_RULES_PER_GROUP
    existing = _not_counted(limit)
    d = admitting.admit_rule(rule("one-more", "web"), None, existing)
    assert (d.allowed, d.reason) == (False, "TooManyRules")
    assert f"{limit + 1} rules; at most {limit}" in d.message
    assert admitting.admit_rule(rule("one-more", "web"), None, existing[1:]).allowed


# ----------------------------------------------------------------------------- address groups


def test_an_address_group_must_compile_to_a_bounded_number_of_cidrs() -> None:
    assert admitting.admit_address_group(ipag("office", "192.0.2.0/24")).allowed
    ranges = [f"fd00:{i:x}::1-fd00:{i:x}::ffff" for i in range(700)]
    d = admitting.admit_address_group(ipag("huge", *ranges, family="IPv6"))
    assert (d.allowed, d.reason) == (False, "TooLarge")
    assert "IP address group demo/huge" in d.message


# ----------------------------------------------------------------------------- pods


def _with_members(name: str, count: int, **kw: Any) -> tuple[SecurityGroup, int]:
    return sg(name, **kw), count


@pytest.mark.parametrize(
    ("groups", "the_pod", "old", "allowed"),
    [
        pytest.param(
            [_with_members("web", quotas.MEMBER_LIMIT - 1)],
            pod("p", groups="web"),
            None,
            True,
            id="S-L-2-6000th-member-joins",
        ),
        pytest.param(
            [_with_members("web", quotas.MEMBER_LIMIT)],
            pod("p", groups="web"),
            None,
            False,
            id="S-L-2-6001st-member-refused",
        ),
        pytest.param(
            [_with_members("web", quotas.MEMBER_LIMIT, selector={"app": "web"})],
            pod("p", labels={"app": "web"}),
            pod("p"),
            False,
            id="S-L-2-relabel-into-a-full-group-refused",
        ),
        pytest.param(
            [_with_members("web", quotas.MEMBER_LIMIT)],
            pod("p", groups="web", labels={"new": "label"}),
            pod("p", groups="web"),
            True,
            id="S-L-2-a-member-already-is-not-joining",
        ),
        pytest.param(
            [_with_members("web", quotas.MEMBER_LIMIT)],
            pod("p", ns="other", groups="web"),
            None,
            True,
            id="S-L-2-unmanaged-pods-join-nothing",
        ),
        pytest.param(
            [sg("web")], pod("p", groups="web"), None, True, id="S-L-2-no-count-reported-yet"
        ),
    ],
)
def test_member_limit_at_pod_admission(
    groups: list[tuple[SecurityGroup, int] | SecurityGroup], the_pod: Any, old: Any, allowed: bool
) -> None:
    namespace = ns() if the_pod.namespace == "demo" else ns(the_pod.namespace, enforced=False)
    counts = {("demo", g[0].metadata.name): g[1] for g in groups if isinstance(g, tuple)}
    objs = [g[0] if isinstance(g, tuple) else g for g in groups]
    d = admitting.admit_pod(the_pod, old, namespace, objs, counts)
    assert d.allowed is allowed, d.message
    if not allowed:
        assert d.reason == "TooManyMembers"
        assert d.message == (
            "S-L-2: security group demo/web: 6001 member pods; the limit is 6000; "
            "pod demo/p cannot join it"
        )


def test_more_than_five_groups_is_a_warning_not_a_refusal() -> None:
    groups = [sg(f"g{i}") for i in range(6)]
    d = admitting.admit_pod(pod("p", groups="g0,g1,g2,g3,g4,g5"), None, ns(), groups, {})
    assert d.allowed
    assert d.warnings == ("S-L-3: pod demo/p in 6 security groups; at most 5 are advised",)
    five = pod("p", groups="g0,g1,g2,g3,g4")
    assert admitting.admit_pod(five, None, ns(), groups, {}).warnings == ()


def test_a_pod_naming_a_missing_group_is_admitted_with_a_warning() -> None:
    d = admitting.admit_pod(pod("p", groups="web,wbe"), None, ns(), [sg("web")], {})
    assert d.allowed
    assert d.warnings == (
        "pod demo/p: annotation names security group(s) that do not exist: wbe; they match "
        "nothing (fail-closed: no fallback to the default group)",
    )


# ----------------------------------------------------------------------------- group writes


def _pods(n: int, **kw: Any) -> list[Any]:
    return [pod(f"p{i:05d}", f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}", **kw) for i in range(n)]


def test_a_selector_that_would_select_too_many_pods_is_refused() -> None:
    limit = quotas.MEMBER_LIMIT
    state = facts(ns(), *_pods(limit + 1, labels={"app": "web"}))
    d = admitting.admit_group_write(sg("web", selector={"app": "web"}), None, state)
    assert (d.allowed, d.reason) == (False, "TooManyMembers")
    assert d.message == "S-L-2: security group demo/web: 6001 member pods; the limit is 6000"
    assert admitting.admit_group_write(sg("web", selector={"app": "db"}), None, state).allowed
    assert admitting.admit_group_write(sg("web"), None, state).allowed  # selects nobody


def test_a_group_write_that_keeps_its_selector_needs_no_pods() -> None:
    old = sg("web", selector={"app": "web"})
    new = sg("web", selector={"app": "web"}, sequence=5)
    assert not admitting.group_write_needs_pods(new, old)
    assert admitting.group_write_needs_pods(sg("web", selector={"app": "x"}), old)
    assert admitting.group_write_needs_pods(new, None)


def test_a_group_already_over_the_member_limit_can_still_be_edited() -> None:
    limit = quotas.MEMBER_LIMIT
    old = sg("web", selector={"app": "web"})
    state = facts(ns(), old, *_pods(limit + 3, labels={"app": "web", "tier": "x"}))
    narrower = sg("web", selector={"app": "web", "tier": "x"})
    assert admitting.admit_group_write(narrower, old, state).allowed


# ----------------------------------------------------------------------------- deletions


def test_a_group_with_members_or_used_as_a_remote_is_in_use() -> None:
    state = facts(
        ns(),
        ns("other"),
        sg("web", selector={"app": "web"}),
        sg("db"),
        pod("w1", "10.0.0.1", labels={"app": "web"}),
        pod("w2", "10.0.0.2", groups="web"),
        pod("x1", "10.0.0.3"),
        rule("db-from-web", "db", remote_sg="web"),
        rule("far", "api", ns="other", remote_sg="web", remote_ns="demo"),
        rule("self", "web", remote_sg="web"),  # its own rule does not keep it alive
        rule("near-miss", "api", ns="other", remote_sg="web"),  # other/web, not demo/web
    )
    users = admitting.group_users(state, ("demo", "web"))
    assert users == GroupUsers(
        members=(("demo", "w1"), ("demo", "w2")),
        rules=(("demo", "db-from-web"), ("other", "far")),
    )
    d = admitting.admit_group_delete(("demo", "web"), users)
    assert (d.allowed, d.reason) == (False, "InUse")
    assert d.message == (
        "security group demo/web is in use: 2 member pods (demo/w1, demo/w2) and it is the "
        "remote of 2 rules (demo/db-from-web, other/far); take the pods out of the group "
        "(annotation, labels) or delete them and change or delete those rules first"
    )
    assert admitting.group_users(state, ("demo", "db")) == GroupUsers()
    assert admitting.admit_group_delete(("demo", "db"), GroupUsers()).allowed


def test_everything_may_go_when_the_namespace_is_being_deleted() -> None:
    users = GroupUsers(members=(("demo", "w1"),))
    assert admitting.admit_group_delete(("demo", "web"), users, namespace_terminating=True).allowed
    rules = (("demo", "r"),)
    assert admitting.admit_address_group_delete(("demo", "office"), rules, True).allowed


def test_the_default_group_with_members_is_in_use_too() -> None:
    state = facts(ns(), sg("default"), pod("x1", "10.0.0.3"))
    users = admitting.group_users(state, ("demo", "default"))
    assert users.members == (("demo", "x1"),)


def test_a_long_list_of_users_names_ten_then_counts() -> None:
    users = GroupUsers(members=tuple(("demo", f"p{i:02d}") for i in range(25)))
    d = admitting.admit_group_delete(("demo", "web"), users)
    assert "25 member pods (demo/p00, demo/p01," in d.message
    assert "demo/p09 and 15 more)" in d.message
    assert "demo/p10" not in d.message


def test_an_address_group_used_by_a_rule_is_in_use() -> None:
    rules = [
        rule("deny-office", "web", action="Deny", remote_ipag="office"),
        rule("far", "api", ns="other", remote_ipag="office", remote_ns="demo"),
        rule("other-office", "api", ns="other", remote_ipag="office"),
    ]
    users = admitting.address_group_users(rules, ("demo", "office"))
    assert users == (("demo", "deny-office"), ("other", "far"))
    d = admitting.admit_address_group_delete(("demo", "office"), users)
    assert (d.allowed, d.reason) == (False, "InUse")
    assert d.message == (
        "IP address group demo/office is in use: it is the remote of 2 rules "
        "(demo/deny-office, other/far); change or delete those rules first"
    )
    assert admitting.admit_address_group_delete(("demo", "unused"), ()).allowed


def test_decisions_are_plain_values() -> None:
    assert Decision.allow("w") == Decision(True, warnings=("w",))
    assert Decision.deny("InUse", "m") == Decision(False, "m", "InUse")
