"""The agent's planner: per-object parts add up to the renderer's table, and incremental
transactions take the kernel there.

A model of the table (``tests/nftmodel.py``) applies every transaction; after any
sequence of plans it must hold exactly ``render`` of the final inputs, and each kind of
change must produce the small transaction it should (element updates for members and
pods, chain rewrites for rules).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from tests import agentcases as ac
from tests import nftcases as nc
from tests.nftmodel import NftModel

from secgroups import naming
from secgroups.compiled import CompiledPolicy
from secgroups.nft.dispatch import Limits
from secgroups.nft.reading import canonical
from secgroups.nft.rendering import RenderError, RenderOptions, render
from secgroups_agent.parts import cidr_elements, member_block
from secgroups_agent.planning import Planner
from secgroups_agent.sources import slice_policy

NODE = nc.NODE


def _expected(policy: CompiledPolicy, ifaces: dict[str, str], opts: RenderOptions) -> str:
    return canonical(render(policy, NODE, ifaces, opts).text())


class Driver:
    """A planner and a model kernel, stepped through policies."""

    def __init__(self, options: RenderOptions | None = None) -> None:
        self.options = options or RenderOptions()
        self.planner = Planner(NODE, self.options)
        self.kernel = NftModel()
        self.generation = 0

    def step(self, policy: CompiledPolicy, ifaces: dict[str, str], *, full: bool = False) -> str:
        self.generation += 1
        snap = slice_policy(policy, NODE, self.generation)
        plan = self.planner.plan(snap, ifaces, full=full)
        if plan.stage:  # every new object, one transaction ahead of the switch
            self.kernel.apply(plan.stage)
        present = set(self.kernel.chains) | set(self.kernel.sets)
        if plan.text:
            self.kernel.apply(plan.text)
        if plan.kind != "full":  # nothing new in the switch (transactions.staged_diff)
            created = (set(self.kernel.chains) | set(self.kernel.sets)) - present
            assert not created, f"the switch created {sorted(created)}"
        self.planner.commit(plan)
        assert canonical(self.kernel.text()) == _expected(policy, ifaces, self.options)
        state = plan.state
        listed = sum(len(s.elements) for s in self.kernel.sets.values())
        assert state.set_elements == listed
        assert state.rules == sum(len(c.rules) for c in self.kernel.chains.values())
        return plan.stage + plan.text


SCENARIOS = [pytest.param(make, id=make().name) for make in nc.SCENARIOS]


@pytest.mark.parametrize("make", SCENARIOS)
def test_assembled_parts_equal_the_renderer(make: Callable[[], nc.Scenario]) -> None:
    s = make()
    planner = Planner(NODE, s.options)
    plan = planner.plan(slice_policy(s.policy, NODE), s.pod_interfaces, full=True)
    assert (
        planner.full_ruleset(plan.state).text()
        == render(s.policy, NODE, s.pod_interfaces, s.options).text()
    )


def test_big_node_parts_equal_the_renderer() -> None:
    policy = ac.big_node(pods=20, groups=6, rules=12, sets=4, members=300)
    ifaces = nc.interfaces(policy.nodes[NODE].pods)
    planner = Planner(NODE)
    plan = planner.plan(slice_policy(policy, NODE), ifaces, full=True)
    assert planner.full_ruleset(plan.state).text() == render(policy, NODE, ifaces).text()


@pytest.mark.parametrize(
    ("kind", "cidrs"),
    [
        ("sg", ["100.64.1.2/32", "100.64.2.0/30", "fd64:5ec::1/128", "fd64:5ec::10/126"]),
        ("ipag", ["198.51.100.0/24", "192.0.2.7/32", "2001:db8::/64"]),
    ],
)
def test_member_elements_follow_the_renderer(kind: str, cidrs: list[str]) -> None:
    v4 = [c for c in cidrs if ":" not in c]
    v6 = [c for c in cidrs if ":" in c]
    key, spec = (nc.sg_set if kind == "sg" else nc.ipag_set)("ns", "x", v4, v6)
    g = nc.group(
        "ns",
        "g",
        [
            nc.rule("ns/r4", nc.IN, "All", remote=nc.ref(key)),
            nc.rule("ns/r6", nc.IN, "All", remote=nc.ref(key), family=nc.V6),
        ],
    )
    pol = nc.policy([g], [(key, spec)], [nc.pod("ns", "p", ["100.64.9.2"], [g[0]])])
    rendered = render(pol, NODE, {})
    for fam, items in ((4, v4), (6, v6)):
        name = next(s.name for s in rendered.sets if s.name.endswith(f"_{fam}") and "_x_" in s.name)
        mine = sorted(e.text() for c in items for e in cidr_elements(spec, c))
        assert mine == sorted(e.text() for e in rendered.set(name).elements)


@pytest.mark.parametrize(
    ("kind", "cidrs"),
    [
        ("sg", ["100.64.1.9/32", "100.64.1.2/32", "10.0.0.1/32"]),  # the fast path, unsorted
        ("sg", ["100.64.1.2/32", "100.64.2.0/30", "fd64:5ec::1/128", "fd64:5ec::10/126"]),
        ("sg", ["fd64:5ec::a/128", "fd64:5ec:0:1::2/128", "::ffff:100.64.1.2/128"]),
        ("sg", ["::ffff:6440:102/128", "FD64:5EC::B/128"]),  # not the renderer's text
        ("sg", ["100.64.1.2"]),
        ("sg", []),
        ("ipag", ["198.51.100.0/24", "192.0.2.7/32", "2001:db8::/64"]),
    ],
)
def test_member_blocks_print_what_the_renderer_prints(kind: str, cidrs: list[str]) -> None:
    v4 = [c for c in cidrs if ":" not in c]
    v6 = [c for c in cidrs if ":" in c]
    key, spec = (nc.sg_set if kind == "sg" else nc.ipag_set)("ns", "x", v4, v6)
    g = nc.group(
        "ns",
        "g",
        [
            nc.rule("ns/r4", nc.IN, "All", remote=nc.ref(key)),
            nc.rule("ns/r6", nc.IN, "All", remote=nc.ref(key), family=nc.V6),
        ],
    )
    pol = nc.policy([g], [(key, spec)], [nc.pod("ns", "p", ["100.64.9.2"], [g[0]])])
    rendered = render(pol, NODE, {})
    for fam in (4, 6):
        name = next(s.name for s in rendered.sets if s.name.endswith(f"_{fam}") and "_x_" in s.name)
        want = rendered.set(name)
        count, body = member_block(spec, fam)
        assert count == len(want.elements)
        assert want.lines()[len(want.spec_lines()) + 1 : -1] == (body.split("\n") if body else [])


@pytest.mark.parametrize(
    "cidrs", [["100.64.1.2/32", "100.64.1.2/32"], ["100.64.1.2/32", "100.64.1.0/30"]]
)  # text that is no CIDR at all ("x/32") never gets this far: the model refuses it
def test_member_blocks_refuse_what_the_renderer_refuses(cidrs: list[str]) -> None:
    key, spec = nc.sg_set("ns", "x", cidrs)
    g = nc.group("ns", "g", [nc.rule("ns/r4", nc.IN, "All", remote=nc.ref(key))])
    pol = nc.policy([g], [(key, spec)], [nc.pod("ns", "p", ["100.64.9.2"], [g[0]])])
    with pytest.raises(RenderError):
        render(pol, NODE, {})
    with pytest.raises(RenderError):
        member_block(spec, 4)


def _web_db() -> tuple[CompiledPolicy, dict[str, str]]:
    s = nc.web_and_db()
    return s.policy, dict(s.pod_interfaces)


def test_nothing_changed_is_a_noop() -> None:
    policy, ifaces = _web_db()
    d = Driver()
    assert d.step(policy, ifaces).startswith("add table inet secgroups\nflush table")
    assert d.step(policy, ifaces) == ""
    # A re-parsed but equal policy (the file source) is a no-op too.
    again = CompiledPolicy.model_validate(policy.model_dump(by_alias=True, mode="json"))
    assert d.step(again, ifaces) == ""


def test_member_change_updates_only_set_elements() -> None:
    policy, ifaces = _web_db()
    d = Driver()
    d.step(policy, ifaces)
    web_set = next(k for k in policy.sets if k.startswith("sg.shop.web"))
    added = ac.with_members(policy, web_set, [*policy.sets[web_set].ipv4, "100.64.7.7/32"])
    text = d.step(added, ifaces)
    assert text.startswith("table inet secgroups {") and "100.64.7.7" in text
    assert "chain" not in text and "flush" not in text and "delete" not in text
    text = d.step(policy, ifaces)
    assert text.startswith("delete element inet secgroups rg_shop_web_") and "100.64.7.7" in text
    assert text[-1] == "\n" and text.count("\n") == 1


def test_ip_address_group_entries_move_between_networks() -> None:
    policy, ifaces = _web_db()
    d = Driver()
    d.step(policy, ifaces)
    blocked = next(k for k in policy.sets if k.startswith("ipag."))
    split = ac.with_members(
        policy, blocked, ["198.51.100.0/25", "198.51.100.128/26", "192.0.2.7/32"]
    )
    text = d.step(split, ifaces)
    assert "delete element" in text and "198.51.100.0/25" in text
    d.step(ac.with_members(split, blocked, []), ifaces)
    d.step(policy, ifaces)


def test_epoch_bump_rewrites_only_that_pods_marks() -> None:
    policy, ifaces = _web_db()
    d = Driver()
    d.step(policy, ifaces)
    node = policy.nodes[NODE]
    pods = tuple(
        p.model_copy(update={"epoch": p.epoch + 1}) if p.name == "web-2" else p for p in node.pods
    )
    bumped = policy.model_copy(update={"nodes": {NODE: node.model_copy(update={"pods": pods})}})
    text = d.step(bumped, ifaces)
    assert "in_epoch4" in text and "in_valid4" in text and "100.64.1.3" in text
    assert "chain" not in text and "100.64.1.2" not in text


def test_a_raised_counter_rewrites_only_the_marks_of_the_pods_it_rechecks() -> None:
    """A group's or an inbound set's re-check counter raised (the node object unchanged)
    changes its pods' in_epoch/in_valid elements in one incremental transaction, and no
    chain; an egress-only set's counter changes nothing. The Driver checks every step
    against a fresh render."""
    policy, ifaces = _web_db()
    d = Driver()
    d.step(policy, ifaces)
    web = naming.compiled_group_name("shop", "web")
    db = naming.compiled_group_name("shop", "db")
    web_set, db_set = naming.sg_set_name("shop", "web"), naming.sg_set_name("shop", "db")
    blocked = naming.ipag_set_name("shop", "blocked")

    def marks_of(text: str) -> set[str]:
        return set(re.findall(r"100\.64\.1\.\d+(?= :)", text))

    policy = ac.with_group(policy, db, recheck=1)
    text = d.step(policy, ifaces)
    assert marks_of(text) == {"100.64.1.4"} and "in_valid4" in text  # db-1 only
    assert "chain" not in text and "flush" not in text
    assert d.planner.plan(slice_policy(policy, NODE), ifaces).noop
    policy = ac.with_group(policy, web, recheck=3)  # web-1, web-2 and db-1
    text = d.step(policy, ifaces)
    assert marks_of(text) == {"100.64.1.2", "100.64.1.3", "100.64.1.4"}
    assert "fd64:5ec:0:1::2 :" in text and "chain" not in text
    policy = ac.with_set(policy, blocked, recheck=1)  # named by web's inbound deny
    text = d.step(policy, ifaces)
    assert marks_of(text) == {"100.64.1.2", "100.64.1.3", "100.64.1.4"}
    assert "198.51.100" not in text and "chain" not in text  # the members stay
    policy = ac.with_set(policy, web_set, recheck=2)  # named by db's inbound rule
    assert marks_of(d.step(policy, ifaces)) == {"100.64.1.4"}
    policy = ac.with_set(policy, db_set, recheck=5)  # named by web's egress rule only
    assert d.step(policy, ifaces) == ""
    # A counter back at 0 (a re-created object): the mark follows, whatever the way.
    policy = ac.with_group(policy, db, recheck=0)
    assert marks_of(d.step(policy, ifaces)) == {"100.64.1.4"}


def test_pod_add_and_delete_with_a_new_group_list() -> None:
    policy, ifaces = _web_db()
    d = Driver()
    d.step(policy, ifaces)
    node = policy.nodes[NODE]
    db, web = sorted(policy.groups)
    new_pod = nc.pod("shop", "mixed", ["100.64.1.9", "fd64:5ec:0:1::9"], [web, db])
    grown = policy.model_copy(
        update={"nodes": {NODE: node.model_copy(update={"pods": (*node.pods, new_pod)})}}
    )
    more = {**ifaces, "100.64.1.9": "veth-mixed", "fd64:5ec:0:1::9": "veth-mixed"}
    text = d.step(grown, more)
    assert "chain gl_web_db_" in text and "flush chain" not in text
    plan = d.planner.plan(slice_policy(policy, NODE), ifaces)
    assert plan.removed_ips == {"100.64.1.9", "fd64:5ec:0:1::9"}
    text = d.step(policy, ifaces)
    assert "delete chain inet secgroups gl_web_db_" in text


def test_group_rule_change_rewrites_that_groups_chain() -> None:
    policy, ifaces = _web_db()
    d = Driver()
    d.step(policy, ifaces)
    db = min(policy.groups)
    spec = policy.groups[db]
    changed = policy.model_copy(
        update={
            "groups": {**policy.groups, db: spec.model_copy(update={"ingress": spec.ingress[:1]})}
        }
    )
    text = d.step(changed, ifaces)
    assert text.startswith("flush chain inet secgroups g_shop_db_") and "_in\n" in text
    assert "rg_" not in text.split("{", 1)[0]


def test_interfaces_appear_later_and_pods_are_enforced_meanwhile() -> None:
    policy, ifaces = _web_db()
    d = Driver()
    d.step(policy, {})
    text = d.step(policy, ifaces)
    assert "pod_src4" in text and "pod_ifaces" in text and "chain" not in text


def test_a_pod_ip_taken_over_by_a_new_pod_is_reported_removed() -> None:
    policy, ifaces = _web_db()
    d = Driver()
    d.step(policy, ifaces)
    node = policy.nodes[NODE]
    pods = tuple(
        p.model_copy(update={"uid": "new-uid"}) if p.name == "web-1" else p for p in node.pods
    )
    replaced = policy.model_copy(update={"nodes": {NODE: node.model_copy(update={"pods": pods})}})
    plan = d.planner.plan(slice_policy(replaced, NODE), ifaces)
    assert plan.removed_ips == set(nc.WEB1)


def test_after_forget_the_next_plan_is_full_and_still_reports_removed_pods() -> None:
    policy, ifaces = _web_db()
    d = Driver()
    d.step(policy, ifaces)
    d.planner.forget()
    node = policy.nodes[NODE]
    fewer = policy.model_copy(
        update={"nodes": {NODE: node.model_copy(update={"pods": node.pods[1:]})}}
    )
    plan = d.planner.plan(slice_policy(fewer, NODE), ifaces)
    assert plan.kind == "full"
    assert plan.removed_ips == set(node.pods[0].ips)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(RenderOptions(), id="default"),
        pytest.param(RenderOptions(dispatch=Limits(min_rules=1, max_growth=1e9)), id="dispatched"),
    ],
)
def test_random_walk_of_changes_keeps_the_kernel_equal_to_the_renderer(
    options: RenderOptions,
) -> None:
    """Members, epochs, re-check counters, pods, rules and interfaces change in turn; after every
    incremental transaction the model kernel equals a fresh render. Also with every
    group chain dispatched by protocol and port (rule changes then replace sub-chains and
    dispatch maps, created one transaction ahead)."""
    import random

    rng = random.Random(7)
    policy = ac.big_node(pods=12, groups=5, rules=10, sets=3, members=40)
    ifaces = nc.interfaces(policy.nodes[NODE].pods)
    d = Driver(options)
    d.step(policy, ifaces)
    for _ in range(60):
        node = policy.nodes[NODE]
        what = rng.choice(["member", "epoch", "pod-out", "pod-in", "rules", "iface", "recheck"])
        if what == "member":
            key = rng.choice(sorted(policy.sets))
            members = list(policy.sets[key].ipv4)
            if members and rng.random() < 0.5:
                members.pop(rng.randrange(len(members)))
            else:
                members.append(f"10.200.{rng.randrange(256)}.{rng.randrange(1, 255)}/32")
            policy = ac.with_members(policy, key, sorted(set(members)))
        elif what in ("epoch", "pod-out") and node.pods:
            i = rng.randrange(len(node.pods))
            pods = list(node.pods)
            if what == "epoch":
                pods[i] = pods[i].model_copy(update={"epoch": pods[i].epoch + 1})
            else:
                pods.pop(i)
            policy = policy.model_copy(
                update={"nodes": {NODE: node.model_copy(update={"pods": tuple(pods)})}}
            )
        elif what == "pod-in":
            n = rng.randrange(100, 250)
            groups = rng.sample(sorted(policy.groups), rng.randrange(1, 3))
            pod = nc.pod("app", f"extra{n}", [f"100.64.3.{n}"], groups)
            pods = [p for p in node.pods if p.name != pod.name] + [pod]
            policy = policy.model_copy(
                update={"nodes": {NODE: node.model_copy(update={"pods": tuple(pods)})}}
            )
            ifaces = {**ifaces, f"100.64.3.{n}": f"veth-x{n}"}
        elif what == "rules":
            g = rng.choice(sorted(policy.groups))
            spec = policy.groups[g]
            rules = list(spec.ingress)
            if rules:
                rules.pop(rng.randrange(len(rules)))
            policy = policy.model_copy(
                update={
                    "groups": {
                        **policy.groups,
                        g: spec.model_copy(update={"ingress": tuple(rules)}),
                    }
                }
            )
        elif what == "recheck":  # a group's or a set's re-check counter (S-CT-2)
            if rng.random() < 0.5:
                g = rng.choice(sorted(policy.groups))
                policy = ac.with_group(policy, g, recheck=policy.groups[g].recheck + 1)
            else:
                k = rng.choice(sorted(policy.sets))
                policy = ac.with_set(policy, k, recheck=policy.sets[k].recheck + 1)
        elif what == "iface" and ifaces:
            ip = rng.choice(sorted(ifaces))
            ifaces = {k: v for k, v in ifaces.items() if k != ip}
        d.step(policy, ifaces)
    d.step(policy, ifaces, full=True)
