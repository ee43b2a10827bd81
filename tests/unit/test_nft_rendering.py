"""The nft renderer: golden rulesets, layout invariants, determinism, inconsistent input.

Golden files live in ``tests/data/golden/<scenario>.nft`` and are compared after
``reading.canonical`` (objects and elements sorted, rules in order). Regenerate them
with ``SECGROUPS_UPDATE_GOLDEN=1 pytest tests/unit/test_nft_rendering.py`` and read
the diff before committing it.
"""

from __future__ import annotations

import difflib
import os
import random
import re
from pathlib import Path

import pytest
from tests import agentcases as ac
from tests import nftcases as nc

from secgroups import naming
from secgroups.compiled import CompiledNodeSpec, CompiledPolicy
from secgroups.nft import names
from secgroups.nft.elements import Mark
from secgroups.nft.epochs import epoch_mark
from secgroups.nft.objects import Chain, Map, Ruleset, Set
from secgroups.nft.reading import canonical
from secgroups.nft.rendering import RenderError, RenderOptions, render
from secgroups.nft.statements import NAME_PATTERN

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
UPDATE = os.environ.get("SECGROUPS_UPDATE_GOLDEN") == "1"
SCENARIOS = [pytest.param(make, id=make().name) for make in nc.SCENARIOS]


def _render(s: nc.Scenario) -> Ruleset:
    return render(s.policy, nc.NODE, s.pod_interfaces, s.options)


@pytest.mark.parametrize("make", SCENARIOS)
def test_golden_ruleset(make: type[nc.Scenario]) -> None:
    """S-X-1, S-M-3, S-M-4, S-D-1: the whole table of representative nodes, byte for byte."""
    scenario = make()
    text = _render(scenario).text()
    path = GOLDEN / f"{scenario.name}.nft"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    want, got = canonical(path.read_text()), canonical(text)
    diff = "".join(
        difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "rendered")
    )
    assert got == want, f"{path.name} differs (SECGROUPS_UPDATE_GOLDEN=1 to accept):\n{diff}"


def test_golden_text_is_already_canonical_order_of_definitions() -> None:
    """Ruleset.text() is what nft -f loads; canonical() only re-sorts elements by text."""
    text = _render(nc.web_and_db()).text()
    assert canonical(canonical(text)) == canonical(text)


@pytest.mark.parametrize("make", SCENARIOS)
def test_group_chains_are_first_match_wins(make: type[nc.Scenario]) -> None:
    """S-X-1: every compiled rule ends in accept/drop; S-X-2: a group list ends in drop.
    The other rules of group chains are dispatch (secgroups.nft.dispatch): a port map, a
    protocol's sub-chain, a segment chain.

    And no anonymous set in a compiled rule (multi-range ports use named ps_ sets;
    docs/nftables.md#anonymous-sets-in-rules-load-30-times-slower).
    """
    rs = _render(make())
    dispatch = re.compile(r"(tcp|udp) dport vmap @gd_\w+|meta l4proto [\w-]+ goto g_\w+|jump g_\w+")
    for chain in rs.chains:
        if chain.name.startswith("g_"):
            for r in chain.rules:
                if r.comment is None:
                    assert dispatch.fullmatch(r.text()), r.text()
                else:
                    assert r.text().split(" comment ")[0].endswith(("accept", "drop")), r.text()
                assert "{" not in r.text(), r.text()
        if chain.name.startswith("gl_"):
            assert chain.rules[-1].text().startswith("drop")
            assert all(r.text().startswith("jump g_") for r in chain.rules[:-1])


def test_rules_follow_the_compiled_order_exactly() -> None:
    """S-X-1: the chain holds the compiled rules in order; a two-CIDR rule becomes two rules."""
    s = nc.web_and_db()
    key = naming.compiled_group_name("shop", "web")
    spec = s.policy.groups[key]
    rs = _render(s)
    for direction, rules in (("in", spec.ingress), ("eg", spec.egress)):
        chain = rs.chain(
            names.group_chain(key, "shop", "web", nc.IN if direction == "in" else nc.EG)
        )
        got = [r.comment for r in chain.rules]
        want = [r.id for r in rules for _ in (r.remote.cidrs or [None])]
        assert got == want


def test_port_lists_share_one_named_set_and_families_pick_their_twin() -> None:
    """S-M-3: `80,443,8000-8080` in a v4 and a v6 rule is one ps_ set; S-M-4 set twins _4/_6."""
    rs = _render(nc.web_and_db())
    port_sets = [s for s in rs.sets if s.name.startswith("ps_")]
    # 53,123 (db egress) and 80,443,8000-8080 (web ingress v4 and v6): each once.
    assert sorted(len(s.elements) for s in port_sets) == [2, 3]
    text = rs.text()
    assert "ip saddr @rg_shop_web_" in text and "_4 tcp dport 5432" in text
    web6 = [s.name for s in rs.sets if s.name.startswith("rg_shop_web_") and s.name.endswith("_6")]
    assert web6 == []  # no v6 rule refers to the web members: only the referenced twin exists


def test_names_are_bounded_readable_and_unique() -> None:
    long_ns, long_name = "n" * 63, "a-very-long-group-name." * 10
    assert len(names.group_chain("k1", long_ns, long_name, nc.IN)) <= 64
    a = names.group_chain("sg.x.a-b", "x", "a-b", nc.IN)
    b = names.group_chain("sg.x.a.b", "x", "a.b", nc.IN)
    assert a != b and a.startswith("g_x_a_b_") and b.startswith("g_x_a_b_")

    for s in nc.SCENARIOS:
        for obj in _render(s()).objects:
            assert re.fullmatch(NAME_PATTERN, obj.name), obj.name


def _shuffled(s: nc.Scenario, seed: int) -> nc.Scenario:
    rnd = random.Random(seed)
    pol = s.policy
    spec = pol.nodes[nc.NODE]
    pods = list(spec.pods)
    rnd.shuffle(pods)
    groups, sets, ifaces = (
        list(pol.groups.items()),
        list(pol.sets.items()),
        list(s.pod_interfaces.items()),
    )
    for items in (groups, sets, ifaces):
        rnd.shuffle(items)
    node = CompiledNodeSpec(node=nc.NODE, pods=tuple(pods), groups=spec.groups, sets=spec.sets)
    policy = CompiledPolicy(groups=dict(groups), sets=dict(sets), nodes={nc.NODE: node})
    return nc.Scenario(s.name, policy, dict(ifaces), s.options)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("make", SCENARIOS)
def test_same_input_in_any_order_renders_identical_text(make: type[nc.Scenario], seed: int) -> None:
    """Determinism: a restart (or a watch cache in another order) changes nothing."""
    s = make()
    assert _render(_shuffled(s, seed)).text() == _render(s).text()


def test_the_cluster_policy_and_its_node_slice_render_the_same() -> None:
    s = nc.web_and_db()
    other = nc.pod("x", "elsewhere", ("100.64.9.9",), ["sg.x.none"])
    whole = s.policy.model_copy(
        update={"nodes": {**s.policy.nodes, "n2": CompiledNodeSpec(node="n2", pods=(other,))}}
    )
    assert (
        render(whole, nc.NODE, s.pod_interfaces).text()
        == render(whole.for_node(nc.NODE), nc.NODE, s.pod_interfaces).text()
    )


def test_unknown_node_renders_the_static_table() -> None:
    rs = render(nc.web_and_db().policy, "not-here", {})
    assert not [c for c in rs.chains if c.name.startswith(("g_", "gl_"))]
    assert all(not s.elements for s in rs.sets)


def test_missing_references_render_as_absent_like_the_evaluator() -> None:
    """A missing group is skipped; a rule whose set is missing matches nothing (left out)."""
    s = nc.web_and_db()
    db_key = naming.compiled_group_name("shop", "db")
    web_members = naming.sg_set_name("shop", "web")
    groups = {k: v for k, v in s.policy.groups.items() if k != db_key}
    sets = {k: v for k, v in s.policy.sets.items() if k != web_members}
    rs = render(
        s.policy.model_copy(update={"groups": groups, "sets": sets}), nc.NODE, s.pod_interfaces
    )
    db_lists = [
        c for c in rs.chains if c.name.startswith("gl_") and "jump g_shop_db" in c.lines()[1]
    ]
    assert db_lists == []
    assert not any(c.name.startswith("g_shop_db_") for c in rs.chains)


def test_cidr_of_the_other_family_never_matches() -> None:
    g = nc.group(
        "x", "g", [nc.rule("x/mixed", nc.IN, "TCP", [22], nc.cidr("2001:db8::/32", "192.0.2.0/24"))]
    )
    pods = [nc.pod("x", "p", ("100.64.3.2",), [g[0]])]
    rs = render(nc.policy([g], [], pods), nc.NODE, {})
    chain = next(c for c in rs.chains if c.name.startswith("g_x_g_") and c.name.endswith("_in"))
    assert [r.text().split(" ct mark")[0] for r in chain.rules] == [
        "ip saddr 192.0.2.0/24 tcp dport 22"
    ]


def test_a_pod_ip_held_twice_goes_to_the_later_pod() -> None:
    """Like the evaluator's pod index: the later pod in (namespace, name) order owns the IP."""
    g = nc.group("x", "g", [])
    h = nc.group("x", "h", [])
    pods = [nc.pod("x", "a", ("100.64.3.2",), [g[0]]), nc.pod("x", "b", ("100.64.3.2",), [h[0]])]
    rs = render(nc.policy([g, h], [], pods), nc.NODE, {})
    disp = rs.set("in_disp4")
    assert isinstance(disp, Map)
    assert [el.text() for el in disp.elements] == [
        f"100.64.3.2 : jump {names.group_list_chain([h[0]], ['h'], nc.IN)}"
    ]


@pytest.mark.parametrize(
    ("ips", "ifaces", "message"),
    [
        pytest.param(("100.64.3.300",), {}, "bad IP", id="bad-pod-ip"),
        pytest.param(("100.64.3.2",), {"100.64.3.2": 'veth"x'}, "interface", id="bad-interface"),
        pytest.param(("100.64.3.2",), {"nope": "veth0"}, "pod_interfaces", id="bad-interface-key"),
    ],
)
def test_input_nft_cannot_hold_is_a_render_error(
    ips: tuple[str, ...], ifaces: dict[str, str], message: str
) -> None:
    g = nc.group("x", "g", [])
    with pytest.raises(RenderError, match=message):
        render(nc.policy([g], [], [nc.pod("x", "p", ips, [g[0]])]), nc.NODE, ifaces)


def test_an_oversized_member_set_is_a_render_error() -> None:
    members = nc.sg_set("x", "big", ["100.64.0.0/10"])
    g = nc.group("x", "g", [nc.rule("x/r", nc.IN, "TCP", [1], nc.ref(members[0]))])
    with pytest.raises(RenderError, match="expands beyond"):
        render(nc.policy([g], [members], [nc.pod("x", "p", ("100.64.3.2",), [g[0]])]), nc.NODE, {})


def test_member_sets_are_hash_sets_of_addresses_and_address_groups_interval_sets() -> None:
    """S-M-4: a collapsed member CIDR (two adjacent pods = a /31) is expanded to its IPs."""
    rs = _render(nc.web_and_db())
    members = next(s for s in rs.sets if s.name.startswith("rg_shop_web_"))
    blocked = next(s for s in rs.sets if s.name.startswith("ag_shop_blocked_"))
    assert isinstance(members, Set) and isinstance(blocked, Set)
    assert not members.interval and blocked.interval
    assert [e.text() for e in members.elements] == ["100.64.1.2", "100.64.1.3"]
    assert [e.text() for e in blocked.elements] == ["192.0.2.7", "198.51.100.0/24"]


def test_pods_without_a_known_interface_are_enforced_but_not_anti_spoofed() -> None:
    s = nc.web_and_db()
    rs = render(s.policy, nc.NODE, {})
    assert rs.set("pod_src4").elements == () and rs.set("pod_ifaces").elements == ()
    assert len(rs.set("pods4").elements) == 3 and len(rs.set("eg_disp4").elements) == 3


def test_node_to_pod_option() -> None:
    allowed = _render(nc.web_and_db()).chain(names.INGRESS_OUTPUT)
    strict = render(
        nc.web_and_db().policy, nc.NODE, {}, RenderOptions(allow_node_to_pod=False)
    ).chain(names.INGRESS_OUTPUT)
    assert allowed.rules[0].text().startswith("ip daddr @pods4 accept")
    assert strict.rules[-1].text() == "ip6 daddr @pods6 goto pod_ingress"


def test_every_group_rule_of_every_scenario_is_a_chain_object() -> None:
    for make in nc.SCENARIOS:
        rs = _render(make())
        assert all(isinstance(c, Chain) for c in rs.chains)
        assert rs.rule_count == sum(len(c.rules) for c in rs.chains)


# ----------------------------------------------------------------------------- re-check counters
WEB_KEY = naming.compiled_group_name("shop", "web")
DB_KEY = naming.compiled_group_name("shop", "db")
BLOCKED_SET = naming.ipag_set_name("shop", "blocked")  # named by web's inbound deny
WEB_SET = naming.sg_set_name("shop", "web")  # named by db's inbound rule
DB_SET = naming.sg_set_name("shop", "db")  # named by web's egress rule only


def _in_epochs(policy: CompiledPolicy) -> dict[str, int]:
    """Pod IP → its ``in_epoch*`` mark, checked against the pod's ``in_valid*`` element."""
    rs = render(policy, nc.NODE, {})
    out: dict[str, int] = {}
    for f in (4, 6):
        epochs = rs.set(f"in_epoch{f}")
        for el in epochs.elements:
            assert isinstance(el.value, Mark)
            out[el.key_text()] = el.value.value
        valid = {el.key_text() for el in rs.set(f"in_valid{f}").elements}
        assert valid == {f"{ip} . {Mark(m)}" for ip, m in out.items() if (":" in ip) == (f == 6)}
    return out


def _pod_ips(policy: CompiledPolicy, *names_: str) -> set[str]:
    return {ip for p in policy.nodes[nc.NODE].pods if p.name in names_ for ip in p.ips}


def test_with_every_counter_at_zero_a_mark_is_the_pods_epoch_alone() -> None:
    """No needless re-check after an upgrade: counters at 0 leave the epoch-only mark."""
    policy = nc.web_and_db().policy
    marks = _in_epochs(policy)
    for pod in policy.nodes[nc.NODE].pods:
        for ip in pod.ips:
            assert marks[ip] == epoch_mark(pod.uid, pod.epoch)


def test_a_raised_group_counter_changes_the_marks_of_its_members_only() -> None:
    """S-CT-2: raising web's counter re-checks every web member (db-1 is one) at once,
    without touching the node object; the epochs stay."""
    policy = nc.web_and_db().policy
    before = _in_epochs(policy)
    raised = ac.with_group(policy, WEB_KEY, recheck=1)
    after = _in_epochs(raised)
    changed = {ip for ip in before if before[ip] != after[ip]}
    assert changed == _pod_ips(policy, "web-1", "web-2", "db-1")
    web1 = next(p for p in policy.nodes[nc.NODE].pods if p.name == "web-1")
    assert after[web1.ips[0]] == epoch_mark(web1.uid, 2, [(f"group/{WEB_KEY}", 1)])
    # db's counter: db-1 alone (web-1 and web-2 are not in db).
    db_raised = _in_epochs(ac.with_group(policy, DB_KEY, recheck=4))
    assert {ip for ip in before if before[ip] != db_raised[ip]} == _pod_ips(policy, "db-1")


def test_a_raised_set_counter_changes_the_marks_of_pods_whose_groups_name_it_inbound() -> None:
    policy = nc.web_and_db().policy
    before = _in_epochs(policy)

    def changed(key: str) -> set[str]:
        after = _in_epochs(ac.with_set(policy, key, recheck=1))
        return {ip for ip in before if before[ip] != after[ip]}

    # web names the blocked group inbound: every web member (db-1 too).
    assert changed(BLOCKED_SET) == _pod_ips(policy, "web-1", "web-2", "db-1")
    # db names web's members inbound: db-1 alone.
    assert changed(WEB_SET) == _pod_ips(policy, "db-1")
    # db's members are named by web's egress only: an egress remote is never re-checked
    # by a mark (outbound flows are not stamped, S-CT-1).
    assert changed(DB_SET) == set()
