"""Node-agent test inputs: a realistic big node and small edits of it.

Shared by the agent's unit tests, netns tests and benchmarks. Built with the
renderer's builders (``tests/nftcases.py``). The big node is the sizing of
the reference node of docs/performance.md: 100 pods, 20 groups x 50 rules, 20 remote
groups x 6,000 IPs (120k set elements). Addresses: pods from 100.64.0.0/16 and fd64:5ec::/48; remote
members from 10.0.0.0/8 (not routed in the lab).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from tests import nftcases as nc

from secgroups import naming
from secgroups.compiled import CompiledAddressSetSpec, CompiledPolicy, CompiledRule
from secgroups.models import IPFamily

NODE = nc.NODE


def member_ips(index: int, count: int) -> tuple[str, ...]:
    """``count`` distinct IPv4 /32s for remote group ``index`` (10.<index>.x.y)."""
    base = int(ipaddress.IPv4Address(f"10.{index}.0.0"))
    return tuple(f"{ipaddress.IPv4Address(base + 1 + i)}/32" for i in range(count))


def big_node(
    pods: int = 100,
    groups: int = 20,
    rules: int = 50,
    sets: int = 20,
    members: int = 6000,
    node: str = NODE,
) -> CompiledPolicy:
    """A node with ``pods`` pods in ``groups`` groups of ``rules`` rules each; the groups
    reference ``sets`` remote security groups of ``members`` IPv4 members."""
    set_items = [nc.sg_set("remote", f"r{i}", member_ips(i, members)) for i in range(sets)]
    group_items = []
    for g in range(groups):
        rs: list[CompiledRule] = []
        for r in range(rules):
            kind = r % 5
            prio = 1 + r % 100
            rid = f"app/g{g}-r{r}"
            if kind == 0:
                remote = nc.ref(set_items[(g + r) % sets][0]) if sets else nc.ANY
                rs.append(nc.rule(rid, nc.IN, "TCP", [8000 + r], remote, priority=prio))
            elif kind == 1:
                rs.append(
                    nc.rule(rid, nc.IN, "TCP", [22, 80, (8000, 8080)], nc.cidr(f"203.0.{r}.0/24"),
                            priority=prio)
                )  # fmt: skip
            elif kind == 2:
                rs.append(
                    nc.rule(rid, nc.IN, "UDP", [53], nc.ANY, priority=prio, family=IPFamily.IPV6)
                )
            elif kind == 3:
                remote = nc.ref(set_items[(g * 3 + r) % sets][0]) if sets else nc.ANY
                rs.append(nc.rule(rid, nc.EG, "TCP", [5432 + r], remote, priority=prio))
            else:
                rs.append(
                    nc.rule(rid, nc.EG, "All", remote=nc.cidr(f"198.51.{r}.0/24"), priority=prio,
                            action=nc.DENY)
                )  # fmt: skip
        group_items.append(nc.group("app", f"g{g}", rs))
    pod_items = []
    for p in range(pods):
        ips = (f"100.64.{1 + p // 200}.{2 + p % 200}", f"fd64:5ec:0:1::{p + 2:x}")
        mine = [group_items[p % groups][0]]
        if groups > 1 and p % 3 == 0:
            mine.append(group_items[(p + 7) % groups][0])
        pod_items.append(nc.pod("app", f"p{p}", ips, mine))
    return nc.policy(group_items, set_items, pod_items, node=node)


def with_members(
    policy: CompiledPolicy, set_key: str, ipv4: Iterable[str], ipv6: Iterable[str] | None = None
) -> CompiledPolicy:
    """``policy`` with the members of ``set_key`` replaced."""
    old = policy.sets[set_key]
    spec: CompiledAddressSetSpec = old.model_copy(
        update={"ipv4": tuple(ipv4), "ipv6": tuple(old.ipv6 if ipv6 is None else ipv6)}
    )
    return policy.model_copy(update={"sets": {**policy.sets, set_key: spec}})


def remote_key(index: int) -> str:
    return naming.sg_set_name("remote", f"r{index}")


def web_http_revoked(web1_epoch: int = 3) -> CompiledPolicy:
    """nftcases' web-and-db after web's inbound ``shop/http`` rule (IPv4) was deleted, with
    web-1's epoch raised from 2 to ``web1_epoch`` (S-CT-2 row 4; web-2 is left at its epoch,
    as if the operator had not re-checked it): ssh from the office and http over IPv6 stay
    allowed, http over IPv4 does not."""
    base = nc.web_and_db().policy
    key = next(k for k, g in base.groups.items() if g.group.name == "web")
    web = base.groups[key]
    web = web.model_copy(update={"ingress": tuple(r for r in web.ingress if r.id != "shop/http")})
    node = base.nodes[NODE]
    pods = tuple(
        p.model_copy(update={"epoch": web1_epoch}) if p.name == "web-1" else p for p in node.pods
    )
    return base.model_copy(
        update={
            "groups": {**base.groups, key: web},
            "nodes": {NODE: node.model_copy(update={"pods": pods})},
        }
    )


def with_group(policy: CompiledPolicy, key: str, **update: object) -> CompiledPolicy:
    """``policy`` with fields of group ``key`` replaced (e.g. ``recheck=1``)."""
    spec = policy.groups[key].model_copy(update=update)
    return policy.model_copy(update={"groups": {**policy.groups, key: spec}})


def with_set(policy: CompiledPolicy, key: str, **update: object) -> CompiledPolicy:
    """``policy`` with fields of address set ``key`` replaced (e.g. ``recheck=1``)."""
    spec = policy.sets[key].model_copy(update=update)
    return policy.model_copy(update={"sets": {**policy.sets, key: spec}})
