"""Transaction text: full replace and incremental diff (the real kernel check is in tests/netns)."""

from __future__ import annotations

import dataclasses

import pytest
from tests import nftcases as nc
from tests.nftmodel import NftModel

from secgroups.compiled import CompiledPolicy
from secgroups.nft.objects import Ruleset
from secgroups.nft.reading import canonical
from secgroups.nft.rendering import RenderOptions, render
from secgroups.nft.transactions import (
    Inventory,
    diff_transaction,
    full_staging,
    full_transaction,
    staged_diff,
)

S = nc.web_and_db()


def _rs(policy: CompiledPolicy | None = None, options: RenderOptions | None = None) -> Ruleset:
    return render(policy or S.policy, nc.NODE, S.pod_interfaces, options)


def _with_pods(pods: list[nc.CompiledPod]) -> CompiledPolicy:
    spec = S.policy.nodes[nc.NODE].model_copy(update={"pods": tuple(pods)})
    return S.policy.model_copy(update={"nodes": {nc.NODE: spec}})


def _commands(text: str) -> list[str]:
    """Top-level commands (a block counts as one `table …` command)."""
    return [line for line in text.splitlines() if line and not line.startswith(("\t", "}"))]


def test_full_transaction_replaces_without_deleting_the_table() -> None:
    text = full_transaction(_rs())
    cmds = _commands(text)
    assert cmds[:3] == [
        "add table inet secgroups",
        "flush table inet secgroups",
        "table inet secgroups {",
    ]
    assert "delete table" not in text and "delete ct timeout" not in text
    flushed = [c.split()[1:] for c in cmds if c.startswith("flush ") and "table" not in c]
    assert {name for _, _, _, name in flushed} == {s.name for s in _rs().sets}
    assert text.endswith(_rs().text())  # the whole table after the preamble


def test_full_transaction_with_an_inventory_deletes_stale_and_redeclared_objects() -> None:
    present = Inventory(
        chains={"g_old_in": ("chain",), "egress_fwd": ("base", "filter", "forward", 99, "accept")},
        sets={
            "rg_old_4": ("set", ("ipv4_addr",), False),
            "pods4": ("set", ("ipv4_addr",), True),
            "in_disp4": ("map", ("ipv4_addr",), "verdict", False),
        },
        ct_timeouts=frozenset({"tcp4_old"}),
    )
    cmds = _commands(full_transaction(_rs(), present))
    assert cmds[2:5] == [
        "flush map inet secgroups in_disp4",
        "flush set inet secgroups pods4",
        "flush set inet secgroups rg_old_4",
    ]
    assert "delete chain inet secgroups egress_fwd" in cmds  # priority changed: re-created
    assert "delete chain inet secgroups g_old_in" in cmds
    assert "delete set inet secgroups pods4" in cmds  # became an interval set somewhere: re-created
    assert "delete set inet secgroups rg_old_4" in cmds
    assert "delete map inet secgroups in_disp4" not in cmds  # same declaration: kept, flushed
    assert not any("tcp4_old" in c for c in cmds)  # live flows may use it


def test_inventory_from_nft_json() -> None:
    doc = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "secgroups", "handle": 1}},
            {
                "ct timeout": {
                    "family": "inet",
                    "name": "tcp4_x",
                    "table": "secgroups",
                    "protocol": "tcp",
                }
            },
            {
                "set": {
                    "family": "inet",
                    "name": "pod_src4",
                    "table": "secgroups",
                    "type": ["ifname", "ipv4_addr"],
                }
            },
            {
                "set": {
                    "family": "inet",
                    "name": "ps_a",
                    "table": "secgroups",
                    "type": "inet_service",
                    "flags": ["interval"],
                }
            },
            {
                "map": {
                    "family": "inet",
                    "name": "in_epoch4",
                    "table": "secgroups",
                    "type": "ipv4_addr",
                    "map": "mark",
                }
            },
            {
                "chain": {
                    "family": "inet",
                    "table": "secgroups",
                    "name": "egress_fwd",
                    "type": "filter",
                    "hook": "forward",
                    "prio": 10,
                    "policy": "drop",
                }
            },
            {"chain": {"family": "inet", "table": "secgroups", "name": "g_x_in"}},
            {"chain": {"family": "inet", "table": "other", "name": "not_ours"}},
            {"rule": {"family": "inet", "table": "secgroups", "chain": "g_x_in", "expr": []}},
        ]
    }
    inv = Inventory.from_json(doc)
    rs = _rs()
    assert inv.chains["egress_fwd"] == rs.chain("egress_fwd").decl()
    assert inv.chains == {"egress_fwd": inv.chains["egress_fwd"], "g_x_in": ("chain",)}
    assert inv.sets["pod_src4"] == rs.set("pod_src4").decl()
    assert inv.sets["in_epoch4"] == rs.set("in_epoch4").decl()
    assert inv.sets["ps_a"] == ("set", ("inet_service",), True)
    assert inv.ct_timeouts == {"tcp4_x"}


def test_nothing_changed_is_the_empty_transaction() -> None:
    assert diff_transaction(_rs(), _rs()) == ""


def test_a_new_pod_of_an_existing_group_list_is_element_adds_only() -> None:
    """Per-pod state lives in elements; no rule is rewritten (docs/nftables.md, "Transactions")."""
    old_pods = list(S.policy.nodes[nc.NODE].pods)
    new = _with_pods(
        [
            *old_pods,
            nc.pod(
                "shop", "web-3", ("100.64.1.9",), [nc.naming.compiled_group_name("shop", "web")]
            ),
        ]
    )
    text = diff_transaction(
        _rs(), render(new, nc.NODE, {**S.pod_interfaces, "100.64.1.9": "veth-web-3"})
    )
    assert "flush" not in text and "delete" not in text and "\tchain " not in text
    assert "100.64.1.9 : jump gl_web_" in text and '"veth-web-3" . 100.64.1.9' in text


def test_an_epoch_bump_swaps_two_elements_per_ip() -> None:
    """S-CT-2: the pod's new epoch, in_epoch and in_valid swapped in one transaction."""
    pods = [
        p.model_copy(update={"epoch": p.epoch + 1}) if p.name == "db-1" else p
        for p in S.policy.nodes[nc.NODE].pods
    ]
    text = diff_transaction(_rs(), _rs(_with_pods(pods)))
    cmds = _commands(text)
    assert cmds[0] == "delete element inet secgroups in_epoch4 { 100.64.1.4 }"
    assert cmds[1].startswith("delete element inet secgroups in_valid4 { 100.64.1.4 . 0x")
    assert cmds[2] == "table inet secgroups {" and len(cmds) == 3
    assert text.count("100.64.1.4") == 4


def test_a_rule_change_flushes_and_refills_one_chain() -> None:
    key = nc.naming.compiled_group_name("shop", "db")
    db = S.policy.groups[key]
    changed = db.model_copy(update={"ingress": db.ingress[:1]})
    new = S.policy.model_copy(update={"groups": {**S.policy.groups, key: changed}})
    text = diff_transaction(_rs(), _rs(new))
    cmds = _commands(text)
    assert cmds[0].startswith("flush chain inet secgroups g_shop_db_") and cmds[0].endswith("_in")
    assert cmds[1] == "table inet secgroups {" and len(cmds) == 2
    assert 'comment "shop/pg-from-web"' in text and "gre-office" not in text


def test_removals_come_after_the_references_are_gone() -> None:
    """A removed group: its map elements go first, its chains and sets last."""
    pods = [p for p in S.policy.nodes[nc.NODE].pods if p.name != "db-1"]
    text = diff_transaction(_rs(), _rs(_with_pods(pods)))
    cmds = _commands(text)
    first_delete_chain = next(i for i, c in enumerate(cmds) if c.startswith("delete chain"))
    assert all(c.startswith("delete ") for c in cmds[first_delete_chain:])
    element_deletes = [i for i, c in enumerate(cmds) if c.startswith("delete element")]
    assert max(element_deletes) < first_delete_chain
    assert any(
        c.startswith("delete set inet secgroups rg_shop_web_") for c in cmds
    )  # only db used it
    flushed = {c.split()[-1] for c in cmds if c.startswith("flush chain")}
    deleted = {c.split()[-1] for c in cmds if c.startswith("delete chain")}
    assert deleted <= flushed


def test_ct_timeout_objects_are_never_deleted() -> None:
    """Deleting one would strip the timeouts of live flows (nf_ct_untimeout)."""
    longer = RenderOptions(tcp_timeouts=(("established", 900),))
    text = diff_transaction(_rs(), _rs(options=longer))
    assert "delete ct timeout" not in text
    assert "established: 900" in text
    assert text.count("ct timeout set") == 4  # the ct_timeouts chain is refilled


def test_a_redeclared_set_is_deleted_after_its_users_are_flushed() -> None:
    old = _rs()
    name = next(s.name for s in old.sets if s.name.startswith("ag_shop_blocked_"))
    changed = dataclasses.replace(old.set(name), interval=False, elements=())  # type: ignore[type-var]
    new = Ruleset.of(old.table, [changed if o.name == name else o for o in old.objects])
    cmds = _commands(diff_transaction(old, new))
    flush = next(
        i for i, c in enumerate(cmds) if c.startswith("flush chain") and "g_shop_web_" in c
    )
    delete = cmds.index(f"delete set inet secgroups {name}")
    assert flush < delete < cmds.index("table inet secgroups {")


def test_tables_must_match() -> None:
    other = dataclasses.replace(_rs(), table=nc.RenderOptions().table.__class__(name="other"))
    with pytest.raises(ValueError):
        diff_transaction(_rs(), other)


def _with_db_ports(ports: list[int | tuple[int, int]]) -> CompiledPolicy:
    key = nc.naming.compiled_group_name("shop", "db")
    db = S.policy.groups[key]
    web_set = nc.naming.sg_set_name("shop", "web")
    changed = db.model_copy(
        update={"ingress": (nc.rule("shop/pg-from-web", nc.IN, "TCP", ports, nc.ref(web_set)),)}
    )
    return S.policy.model_copy(update={"groups": {**S.policy.groups, key: changed}})


def _switch_creates(old: Ruleset, stage: str, switch: str) -> set[str]:
    """The objects the switch transaction creates, applied after ``old`` and ``stage``."""
    model = NftModel()
    model.apply(full_transaction(old))
    if stage:
        model.apply(stage)
    present = set(model.chains) | set(model.sets)
    model.apply(switch)
    return (set(model.chains) | set(model.sets)) - present


def test_a_new_interval_set_is_created_one_transaction_ahead_of_its_rules() -> None:
    """A rule change that introduces a port set: the set comes in `stage`, the rule in the
    switch, which no longer declares the set (staged_diff's docstring)."""
    old, new = _rs(), _rs(_with_db_ports([5432, 6432]))
    stage, switch = staged_diff(old, new)
    assert stage.startswith("table inet secgroups {")
    assert "flags interval" in stage and "5432" in stage and "6432" in stage
    assert "chain " not in stage  # the rule goes into an existing chain, refilled in the switch
    new_set = next(line.split()[1] for line in stage.splitlines() if line.startswith("\tset "))
    assert f"\tset {new_set} " not in switch and f"@{new_set}" in switch
    assert _switch_creates(old, stage, switch) == set()
    # Stage then switch reaches exactly what the one-step diff reaches.
    assert diff_transaction(old, new) != switch


def test_new_chains_come_complete_in_the_stage_and_the_switch_only_points_at_them() -> None:
    """A new pod with a new group list: its group-list chains are created, with their
    rules, one transaction ahead; the switch adds only elements that name them (a packet
    crossing the switch's commit must never reach a chain with no rules in the previous
    generation: docs/nftables.md, "Transactions: nothing new in the switch")."""
    policy, ifaces = S.policy, S.pod_interfaces
    node = policy.nodes[nc.NODE]
    db, web = sorted(policy.groups)
    pod = nc.pod("shop", "mixed", ["100.64.1.9", "fd64:5ec:0:1::9"], [web, db])
    grown = policy.model_copy(
        update={"nodes": {nc.NODE: node.model_copy(update={"pods": (*node.pods, pod)})}}
    )
    more = {**ifaces, "100.64.1.9": "veth-mixed", "fd64:5ec:0:1::9": "veth-mixed"}
    old, new = render(policy, nc.NODE, ifaces), render(grown, nc.NODE, more)
    stage, switch = staged_diff(old, new)
    created = {c.name for c in new.chains} - {c.name for c in old.chains}
    assert created and all(f"\tchain {name} {{" in stage for name in created)
    assert "chain " not in switch and "jump gl_web_db_" in switch
    assert _switch_creates(old, stage, switch) == set()


def test_no_new_interval_set_means_no_stage() -> None:
    stage, switch = staged_diff(_rs(), _rs(_with_db_ports([5433])))
    assert stage == ""
    assert switch == diff_transaction(_rs(), _rs(_with_db_ports([5433])))


def test_a_full_resync_stages_interval_sets_the_kernel_lacks() -> None:
    rs = _rs()
    present = Inventory(chains={c.name: c.decl() for c in rs.chains}, sets={})
    stage, present2 = full_staging(rs, present)
    interval = {s.name for s in rs.sets if getattr(s, "interval", False)}
    assert interval and present2 is not None
    assert interval <= set(present2.sets)
    assert all(f"\tset {name} {{" in stage for name in interval)
    assert full_staging(rs, None) == ("", None)  # no table yet: nothing to keep in force
    assert full_staging(rs, Inventory()) == ("", Inventory())


def test_new_dispatch_maps_are_staged_with_the_sub_chains_they_send_to() -> None:
    """Interval verdict maps (secgroups.nft.dispatch) are interval sets for the kernel: a new
    one is created a transaction ahead, and with it the new chains its elements name (a
    map cannot name a chain that does not exist); the existing chains that use it are
    refilled in the switch, which creates nothing."""
    d = nc.dispatched()
    old = render(d.policy, nc.NODE, d.pod_interfaces, RenderOptions(dispatch=None))
    new = render(d.policy, nc.NODE, d.pod_interfaces, d.options)
    stage, switch = staged_diff(old, new)
    staged = {line.split()[1] for line in stage.splitlines() if line.startswith("\t")
              and line.split()[0] in ("map", "chain", "set")}  # fmt: skip
    maps = {s.name for s in new.sets if s.name.startswith("gd_")}
    targets = {el.text().split()[-1] for s in new.sets if s.name in maps for el in s.elements}
    assert maps and maps | targets <= staged
    assert _switch_creates(old, stage, switch) == set()
    assert not any(f"\tmap {m} " in switch for m in maps)
    model = NftModel()
    for text in (full_transaction(old), stage, switch):
        model.apply(text)
    assert canonical(model.text()) == canonical(new.text())


def test_a_full_resync_stages_dispatch_maps_and_their_chains() -> None:
    d = nc.dispatched()
    old = render(d.policy, nc.NODE, d.pod_interfaces, RenderOptions(dispatch=None))
    new = render(d.policy, nc.NODE, d.pod_interfaces, d.options)
    present = Inventory(
        chains={c.name: c.decl() for c in old.chains}, sets={s.name: s.decl() for s in old.sets}
    )
    stage, present2 = full_staging(new, present)
    assert present2 is not None
    maps = {s.name for s in new.sets if s.name.startswith("gd_")}
    assert maps <= set(present2.sets) and all(f"\tmap {m} {{" in stage for m in maps)
    assert set(present2.chains) - set(present.chains) == {
        line.split()[1] for line in stage.splitlines() if line.startswith("\tchain ")
    }
    model = NftModel()
    for text in (full_transaction(old), stage, full_transaction(new, present2)):
        model.apply(text)
    assert canonical(model.text()) == canonical(new.text())
