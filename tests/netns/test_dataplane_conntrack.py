"""Existing connections with real conntrack: every S-CT-2 row, S-CT-1, S-CT-3, anti-spoofing
and neighbour discovery, with real agents on both nodes of a lab (``ksgctk``).

For each row of the S-CT-2 table a scenario (manifests of namespace ``ct``, compiled by the
real compiler, re-checks raised by ``plan_clearing`` + its carriers as the operator does:
group and set counters, and the epochs of pods they do not reach)
opens long-lived TCP, UDP and ICMP flows — IPv4 and IPv6, same node, across nodes, from
several outside addresses — BEFORE the change. After every agent applied the change:

* the planner names exactly the pods the row names (``Step.rechecked``);
* a flow to a re-checked pod whose ingress now denies it stops at its next packet, and a
  flow the new policy still allows keeps working — the SAME connection (socket, ports,
  ICMP id), twice in a row; flows of pods that are not re-checked, and outbound flows
  (S-CT-1), continue whatever the new egress rules say;
* when the pod speaks first on a cut flow, the exchange fails and ``conntrack -L`` on both
  nodes shows no entry with the pod as the original source for that 5-tuple (no direction
  flip, docs/nftables.md#a-deleted-tcp-entry-comes-back-with-its-direction-flipped);
* new connections for every flow's 5-tuple follow the evaluator's verdict of the new policy.

Then, the agent's post-commit sweep (``secgroups_agent/sweeping.py``): after a revocation
nothing the pod sends on the cut flow reaches the client any more — not even a one-way UDP
stream from the pod — and the entry carries the tombstone, unflipped; an inbound flow the
change still allows keeps both directions, re-stamped with the pod's new mark before any
packet, so a pod that only sends keeps reaching its client; outbound flows of a re-checked
pod keep mark 0 and both directions (S-CT-1). And: S-CT-3 timeouts read back from
``conntrack -L``; a deleted entry never comes back flipped (the TCP non-SYN guard); forged
sources from a pod are dropped (and arrive when the pod has no policy); IPv6 neighbour
discovery works after the caches are flushed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pytest
from tests.dataplane_harness import (
    ALLOWED_TIMEOUT,
    DENIED_TIMEOUT,
    Alias,
    CtEntry,
    DataplaneLab,
    Oracle,
    Step,
    closing_flows,
    conntrack_list,
    dataplane_unavailable,
)
from tests.dataplanecases import (
    CLIENTS,
    CT,
    CT_PODS,
    CT_PROBE_PORTS,
    PARTNERS_V4,
    PARTNERS_V6,
    Manifest,
    ct_manifests,
    ct_rule,
    ipag,
)

from secgroups.compiled import CompiledPod
from secgroups.nft.epochs import MARK_TOMBSTONE, pod_mark
from secgroups_lab.matrix import Case, Family, Target, run_matrix
from secgroups_lab.network import PodNet, run_in
from secgroups_lab.probes import Endpoint, Flow, ProbeClient, ProbeResult, Proto, Seen

_why = dataplane_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netns

PREFIX = "ksgctk"
ALIVE_TIMEOUT = ALLOWED_TIMEOUT  # a check that should pass answers in a millisecond
T = TypeVar("T")
R = TypeVar("R")


@pytest.fixture(scope="module")
def dp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataplaneLab]:
    workdir = tmp_path_factory.mktemp("ct-agents")
    with DataplaneLab(PREFIX, CT_PODS, workdir, probe_ports=CT_PROBE_PORTS) as dp:
        yield dp


def parallel(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(items))) as pool:
        return list(pool.map(fn, items))


# ----------------------------------------------------------------------------- flows
@dataclass(frozen=True)
class FlowSpec:
    """A long-lived flow: ``client`` (a pod name, ``outside`` or ``outside/<alias>``)
    to ``server`` (a pod name or ``outside``)."""

    client: str
    server: str
    proto: Proto
    family: Family = 4
    port: int = 80

    @property
    def case(self) -> Case:
        return Case(self.proto, self.port if self.proto in ("tcp", "udp") else 0, self.family)

    def __str__(self) -> str:
        return f"{self.client} -> {self.server} {self.case.label}"


def endpoint(dp: DataplaneLab, name: str) -> Endpoint:
    if name == "outside":
        return dp.outside
    if name.startswith("outside/"):
        return dp.alias(name.removeprefix("outside/"))
    return dp.pods[name]


@dataclass
class Live:
    spec: FlowSpec
    client: Endpoint
    server: Endpoint
    flow: Flow

    def close(self) -> None:
        self.flow.close()

    @property
    def server_pod(self) -> PodNet | None:
        return self.server if isinstance(self.server, PodNet) else None


def open_flow(dp: DataplaneLab, spec: FlowSpec) -> Live:
    c, s = endpoint(dp, spec.client), endpoint(dp, spec.server)
    case = spec.case
    src = case.address(c) if isinstance(c, Alias) else None
    client, server = ProbeClient(c), ProbeClient(s)
    handle = client.open_flow(
        spec.proto, case.address(s), case.port, timeout=ALLOWED_TIMEOUT, src=src
    )
    return Live(spec, c, s, Flow(client, server, handle))


def flipped_entries(dp: DataplaneLab, live: Live) -> list[CtEntry]:
    """Entries, on every node, whose ORIGINAL direction is the flow's server → client."""
    h = live.flow.handle
    found = []
    for i in (1, 2):
        for e in conntrack_list(dp.node_netns(i), live.spec.family, live.spec.proto):
            o = e.orig
            if (o.get("src"), o.get("dst")) == (h.dst, h.src) and (
                o.get("sport"),
                o.get("dport"),
            ) == (str(h.dport), str(h.sport)):
                found.append(e)
    return found


# ----------------------------------------------------------------------------- changes
@dataclass(frozen=True)
class Change:
    """One S-CT-2 situation: the manifests before and after (as members, rules, address
    groups of namespace ``ct``), the pods the row names, and the flows open across it."""

    members: Mapping[str, str]
    rules: tuple[Manifest, ...]
    rechecked: frozenset[str]
    flows: tuple[FlowSpec, ...]
    new_members: Mapping[str, str] | None = None
    new_rules: tuple[Manifest, ...] | None = None
    address_groups: tuple[Manifest, ...] = ()
    new_address_groups: tuple[Manifest, ...] | None = None
    no_egress_rules: tuple[str, ...] = ()
    cuts: bool = True  # some flow is expected to stop (False: the row re-checks, all pass)
    new_egress_denies: bool = False  # new outbound connections are expected to be denied

    def before(self, pods: Mapping[str, PodNet]) -> list[Manifest]:
        return ct_manifests(
            pods,
            self.members,
            self.rules,
            address_groups=self.address_groups,
            no_egress_rules=self.no_egress_rules,
        )

    def after(self, pods: Mapping[str, PodNet]) -> list[Manifest]:
        groups = self.new_address_groups
        return ct_manifests(
            pods,
            self.members if self.new_members is None else self.new_members,
            self.rules if self.new_rules is None else self.new_rules,
            address_groups=self.address_groups if groups is None else groups,
            no_egress_rules=self.no_egress_rules,
        )


def flows(
    client: str,
    server: str,
    protos: Sequence[Proto] = ("tcp", "udp", "icmp"),
    families: Sequence[Family] = (4,),
    port: int = 80,
) -> tuple[FlowSpec, ...]:
    return tuple(FlowSpec(client, server, p, f, port) for f in families for p in protos)


def twin(name: str, group: str, v4: str | None, v6: str | None, **kw: Any) -> tuple[Manifest, ...]:
    """A rule (ingress unless ``direction=``) and its IPv6 twin; ``v4``/``v6`` are CIDR
    remotes or None (any address)."""
    return (
        ct_rule(name, group, cidr=v4, **kw),
        ct_rule(f"{name}6", group, cidr=v6, family="IPv6", **kw),
    )


OUT4, OUT6 = "100.64.250.0/24", "fd64:5ec:0:fa::/64"
ANY_IN = twin("svc-any", "svc", None, None)
FROM_10 = twin("from-10", "svc", "100.64.250.10/32", "fd64:5ec:0:fa::a/128")
FROM_20 = twin("from-20", "svc", "100.64.250.20/32", "fd64:5ec:0:fa::14/128")
OUT, P_IP, P_CIDR, P_RANGE = (
    "outside",
    "outside/partner-ip",
    "outside/partner-cidr",
    "outside/partner-range",
)

CHANGES = [
    pytest.param(
        Change(
            members={"srv-1": "open"},
            new_members={"srv-1": "strict,open"},
            rules=(
                *twin("open-any", "open", None, None),
                *twin("strict-no-outside", "strict", OUT4, OUT6, action="Deny"),
            ),
            rechecked=frozenset({"srv-1"}),
            flows=(
                *flows(OUT, "srv-1", families=(4, 6)),
                *flows("cli-2", "srv-1"),
                *flows("cli-1", "srv-1", ("tcp",), (6,)),
            ),
        ),
        id="S-CT-2-row-1-added-pod-rechecked",
    ),
    pytest.param(
        Change(
            members={"srv-2": "guarded", "mover-1": CLIENTS},
            new_members={"srv-2": "guarded", "mover-1": f"{CLIENTS},vip"},
            rules=(
                ct_rule("no-vip", "guarded", sg="vip", action="Deny"),
                ct_rule("no-vip6", "guarded", sg="vip", action="Deny", family="IPv6"),
                *twin("guarded-any", "guarded", None, None, priority=2),
            ),
            rechecked=frozenset({"mover-1", "srv-2"}),
            flows=(
                *flows("mover-1", "srv-2"),
                *flows("mover-1", "srv-2", ("tcp",), (6,)),
                *flows("cli-2", "srv-2"),
                *flows(OUT, "srv-2", ("tcp",), (6,)),
            ),
        ),
        id="S-CT-2-row-1-group-denying-the-joined-group-rechecked",
    ),
    pytest.param(
        Change(
            members={"srv-1": "team", "srv-2": "team", "mover-1": "team"},
            new_members={"srv-1": "team", "srv-2": "team", "mover-1": CLIENTS},
            rules=(
                ct_rule("team-self", "team", sg="team"),
                ct_rule("team-self6", "team", sg="team", family="IPv6"),
            ),
            rechecked=frozenset({"srv-1", "srv-2", "mover-1"}),
            flows=(
                *flows("mover-1", "srv-1"),
                *flows("mover-1", "srv-2", ("tcp",), (6,)),
                *flows("srv-1", "mover-1", ("tcp",)),
                *flows("srv-2", "srv-1"),
                *flows("srv-1", "srv-2", ("udp",), (6,)),
            ),
        ),
        id="S-CT-2-row-2-all-pods-of-the-group-left",
    ),
    pytest.param(
        Change(
            members={"srv-2": "api", "cli-1": f"{CLIENTS},api-users", "mover-1": "api-users"},
            new_members={"srv-2": "api", "cli-1": f"{CLIENTS},api-users", "mover-1": CLIENTS},
            rules=(
                ct_rule("from-users", "api", sg="api-users"),
                ct_rule("from-users6", "api", sg="api-users", family="IPv6"),
            ),
            rechecked=frozenset({"srv-2", "cli-1", "mover-1"}),
            flows=(
                *flows("mover-1", "srv-2"),
                *flows("mover-1", "srv-2", ("tcp",), (6,)),
                *flows("cli-1", "srv-2"),
                *flows("cli-1", "srv-2", ("udp",), (6,)),
            ),
        ),
        id="S-CT-2-row-2-group-allowing-the-left-group-rechecked",
    ),
    pytest.param(
        Change(
            members={"srv-1": "svc"},
            rules=twin("svc-any", "svc", None, None, priority=10),
            new_rules=(
                *twin("svc-any", "svc", None, None, priority=10),
                *twin("no-10", "svc", "100.64.250.10/32", "fd64:5ec:0:fa::a/128", action="Deny"),
            ),
            rechecked=frozenset({"srv-1"}),
            flows=(
                *flows(OUT, "srv-1", families=(4, 6)),
                *flows(P_IP, "srv-1", families=(4, 6)),
                *flows("cli-2", "srv-1", ("tcp",)),
            ),
        ),
        id="S-CT-2-row-3-inbound-deny-added",
    ),
    pytest.param(
        Change(
            members={"srv-1": "svc"},
            rules=ANY_IN,
            new_rules=(
                *ANY_IN,
                ct_rule("no-out", "svc", "Egress", cidr=OUT4, action="Deny"),
                ct_rule("no-out6", "svc", "Egress", cidr=OUT6, action="Deny", family="IPv6"),
            ),
            rechecked=frozenset({"srv-1"}),
            flows=(
                *flows(OUT, "srv-1"),
                *flows("srv-1", OUT, families=(4, 6)),
            ),
            cuts=False,
            new_egress_denies=True,
        ),
        id="S-CT-2-row-3-outbound-deny-added-S-CT-1-outbound-flows-continue",
    ),
    pytest.param(
        Change(
            members={"srv-1": "svc", "srv-2": "svc"},
            rules=(*FROM_10, *FROM_20),
            new_rules=FROM_20,
            rechecked=frozenset({"srv-1", "srv-2"}),
            flows=(
                *flows(OUT, "srv-1"),
                *flows(OUT, "srv-2", ("tcp", "icmp"), (6,)),
                *flows(P_IP, "srv-1"),
                *flows(P_IP, "srv-2", ("udp",), (6,)),
            ),
        ),
        id="S-CT-2-row-4-inbound-allow-deleted",
    ),
    pytest.param(
        Change(
            members={"srv-1": "svc"},
            rules=(*ANY_IN, *twin("svc-out", "svc", None, None, direction="Egress")),
            new_rules=ANY_IN,
            no_egress_rules=("svc",),
            rechecked=frozenset(),
            flows=(
                *flows("srv-1", OUT, families=(4, 6)),
                *flows(OUT, "srv-1", ("tcp",)),
            ),
            cuts=False,
            new_egress_denies=True,
        ),
        id="S-CT-2-row-4-outbound-allow-deleted-S-CT-1-nothing-rechecked",
    ),
    pytest.param(
        Change(
            members={"srv-1": "svc"},
            rules=twin("web", "svc", None, None, protocol="TCP", ports="80-82"),
            new_rules=twin("web", "svc", None, None, protocol="TCP", ports="82"),
            rechecked=frozenset({"srv-1"}),
            flows=(
                *flows(OUT, "srv-1", ("tcp",), (4, 6), port=80),
                *flows(OUT, "srv-1", ("tcp",), (4, 6), port=82),
            ),
        ),
        id="S-CT-2-row-5-inbound-rule-ports-modified",
    ),
    pytest.param(
        Change(
            members={"srv-1": "svc"},
            rules=(ct_rule("r10", "svc", cidr="100.64.250.10/32"), *FROM_20),
            new_rules=(ct_rule("r10", "svc", cidr="100.64.250.10/32", action="Deny"), *FROM_20),
            rechecked=frozenset({"srv-1"}),
            flows=(*flows(OUT, "srv-1"), *flows(P_IP, "srv-1")),
        ),
        id="S-CT-2-row-5-inbound-rule-action-modified",
    ),
    pytest.param(
        Change(
            members={"srv-1": "svc"},
            rules=twin("r", "svc", "100.64.250.0/27", "fd64:5ec:0:fa::/123"),
            new_rules=twin("r", "svc", "100.64.250.16/28", "fd64:5ec:0:fa::10/124"),
            rechecked=frozenset({"srv-1"}),
            flows=(*flows(OUT, "srv-1", families=(4, 6)), *flows(P_IP, "srv-1", families=(4, 6))),
        ),
        id="S-CT-2-row-5-inbound-rule-remote-modified",
    ),
    pytest.param(
        Change(
            members={"srv-1": "svc"},
            rules=(
                ct_rule("allow-all", "svc", priority=10),
                ct_rule("deny-10", "svc", cidr="100.64.250.10/32", action="Deny", priority=20),
            ),
            new_rules=(
                ct_rule("allow-all", "svc", priority=10),
                ct_rule("deny-10", "svc", cidr="100.64.250.10/32", action="Deny", priority=5),
            ),
            rechecked=frozenset({"srv-1"}),
            flows=(*flows(OUT, "srv-1"), *flows(P_IP, "srv-1")),
        ),
        id="S-CT-2-row-5-inbound-rule-priority-modified",
    ),
    pytest.param(
        Change(
            members={"srv-1": "svc"},
            rules=(
                *twin("r", "svc", None, None, protocol="TCP"),
                *twin("ping", "svc", None, None, protocol="ICMP"),
            ),
            new_rules=(
                *twin("r", "svc", None, None, protocol="UDP"),
                *twin("ping", "svc", None, None, protocol="ICMP"),
            ),
            rechecked=frozenset({"srv-1"}),
            flows=flows(OUT, "srv-1", ("tcp", "icmp"), (4, 6)),
        ),
        id="S-CT-2-row-5-inbound-rule-protocol-modified",
    ),
    pytest.param(
        Change(
            members={"srv-1": "svc", "srv-2": "svc"},
            rules=(
                ct_rule("partners", "svc", ipag="partners"),
                ct_rule("partners6", "svc", ipag="partners6", family="IPv6"),
            ),
            address_groups=(
                ipag(CT, "partners", PARTNERS_V4),
                ipag(CT, "partners6", PARTNERS_V6, family="IPv6"),
            ),
            new_address_groups=(
                ipag(CT, "partners", PARTNERS_V4[1:]),
                ipag(CT, "partners6", PARTNERS_V6[1:], family="IPv6"),
            ),
            rechecked=frozenset({"srv-1", "srv-2"}),
            flows=(
                *flows(P_IP, "srv-1"),
                *flows(P_IP, "srv-2", ("tcp",), (6,)),
                *flows(P_CIDR, "srv-1", ("tcp", "udp")),
                *flows(P_RANGE, "srv-2", ("icmp",)),
                *flows(P_RANGE, "srv-2", ("tcp",), (6,)),
            ),
        ),
        id="S-CT-2-row-6-address-group-entries-changed",
    ),
]


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)

    def expect(self, what: str, want: bool, got: ProbeResult | bool) -> None:
        ok = got if isinstance(got, bool) else got.ok
        if ok != want:
            self.problems.append(f"{what}: expected {'ok' if want else 'cut'}, got {got}")


def still_allowed(step: Step, oracle: Oracle, live: Live) -> bool:
    """Whether the flow must keep working after ``step``: inbound flows of re-checked pods
    only if the receiver's ingress still allows them; everything else continues."""
    pod = live.server_pod
    if pod is None or f"{pod.namespace}/{pod.name}" not in step.rechecked:
        return True
    ingress = oracle.verdict(live.client, live.server, live.spec.case).ingress
    return ingress is None or ingress.allowed


@pytest.mark.parametrize("change", CHANGES)
def test_existing_connections_after_a_change(dp: DataplaneLab, change: Change) -> None:
    """S-CT-2 (the row in the id), S-CT-1: see the module docstring for what is checked."""
    base = dp.operator.apply(change.before(dp.pods))
    assert base.problems == ()
    before = Oracle(base.policy)
    with closing_flows([]) as opened:
        for spec in change.flows:
            c, s = endpoint(dp, spec.client), endpoint(dp, spec.server)
            assert before(c, s, spec.case), f"the base policy must allow {spec}"
        opened.extend(parallel(lambda spec: open_flow(dp, spec), change.flows))

        step = dp.operator.apply(change.after(dp.pods))
        assert step.problems == ()
        want = {f"{CT}/{name}" for name in change.rechecked}
        assert step.rechecked == want, f"S-CT-2 names {want}; the planner {step.plan.reasons}"
        oracle = Oracle(step.policy)
        keep = [still_allowed(step, oracle, live) for live in opened]
        assert (not all(keep)) == change.cuts, "the scenario must cut flows iff it says so"
        if step.rechecked:
            assert any(
                k
                for k, live in zip(keep, opened, strict=True)
                if live.server_pod is not None
                and f"{live.server_pod.namespace}/{live.server_pod.name}" in step.rechecked
            ), "some flow of a re-checked pod must continue (the re-check allows it)"

        out = Outcome()
        # The client's next packet: cut flows stop, the others go on (the same connection).
        firsts = parallel(
            lambda lk: lk[0].flow.check(timeout=ALIVE_TIMEOUT if lk[1] else DENIED_TIMEOUT),
            list(zip(opened, keep, strict=True)),
        )
        for live, k, res in zip(opened, keep, firsts, strict=True):
            out.expect(f"{live.spec}: next packet", k, res)
        alive = [live for live, k in zip(opened, keep, strict=True) if k]
        for live, res in zip(
            alive, parallel(lambda lv: lv.flow.check(timeout=ALIVE_TIMEOUT), alive), strict=True
        ):
            out.expect(f"{live.spec}: again", True, res)

        # The server end speaks first (TCP, UDP): never a flipped flow.
        speak = [(lv, k) for lv, k in zip(opened, keep, strict=True) if lv.spec.proto != "icmp"]
        peers = parallel(
            lambda lk: lk[0].flow.check(
                from_server=True, timeout=ALIVE_TIMEOUT if lk[1] else DENIED_TIMEOUT
            ),
            speak,
        )
        for (live, k), res in zip(speak, peers, strict=True):
            out.expect(f"{live.spec}: server speaks first", k, res)
            if not k:
                flipped = flipped_entries(dp, live)
                out.expect(f"{live.spec}: no flipped conntrack entry {flipped}", True, not flipped)

        # New connections follow the new policy.
        def probe(live: Live) -> ProbeResult:
            case = live.spec.case
            src = case.address(live.client) if isinstance(live.client, Alias) else None
            ok = oracle(live.client, live.server, case)
            return ProbeClient(live.client).probe(
                case.proto,
                case.address(live.server),
                case.port,
                timeout=ALIVE_TIMEOUT if ok else DENIED_TIMEOUT,
                src=src,
            )

        news = parallel(probe, opened)
        for live, res in zip(opened, news, strict=True):
            out.expect(
                f"{live.spec}: new connection",
                oracle(live.client, live.server, live.spec.case),
                res,
            )
        if change.new_egress_denies:
            assert any(not oracle(lv.client, lv.server, lv.spec.case) for lv in opened), (
                "the change must deny some new outbound connection"
            )
        assert out.problems == [], "\n".join(out.problems)


# ----------------------------------------------------------------------------- no flips
def svc_open_to_outside(dp: DataplaneLab) -> list[Manifest]:
    """srv-1 in svc: everything inbound from the outside addresses, everything outbound."""
    return ct_manifests(dp.pods, {"srv-1": "svc"}, twin("svc-outside", "svc", OUT4, OUT6))


@pytest.mark.parametrize("family", [4, 6])
def test_a_deleted_entry_never_comes_back_flipped(dp: DataplaneLab, family: Family) -> None:
    """docs/nftables.md#a-deleted-tcp-entry-comes-back-with-its-direction-flipped: once a
    live TCP flow's conntrack entry is gone (an admin's ``conntrack -D``, an expiry), a
    packet from the pod must not re-create it with the pod as the originator (which would
    make the remote's packets replies, bypassing ingress, S-CT-2). The non-SYN guard drops
    the pod's mid-stream packet: no entry appears, and the remote's own mid-stream packets
    are not picked up either; a new connection still works."""
    dp.operator.apply(svc_open_to_outside(dp))
    with closing_flows([]) as opened:
        live = open_flow(dp, FlowSpec(OUT, "srv-1", "tcp", family))
        opened.append(live)
        h = live.flow.handle
        family_arg = "ipv6" if family == 6 else "ipv4"
        tuple_args = ["--orig-src", h.src, "--orig-dst", h.dst, "--sport", str(h.sport)]
        deleted = run_in(
            dp.node_netns(1),
            ["conntrack", "-D", "-f", family_arg, "-p", "tcp", *tuple_args],
            check=False,
        )
        assert deleted.returncode == 0, deleted.stderr
        assert not live.flow.check(from_server=True, timeout=DENIED_TIMEOUT).ok
        assert flipped_entries(dp, live) == []
        assert not live.flow.check(timeout=DENIED_TIMEOUT).ok
        assert flipped_entries(dp, live) == []
        dst = live.spec.case.address(dp.pods["srv-1"])
        fresh = ProbeClient(dp.outside).probe("tcp", dst, 80, timeout=ALLOWED_TIMEOUT)
        assert fresh.ok, fresh


def compiled_pod(step: Step, name: str) -> CompiledPod:
    pods = [p for spec in step.policy.nodes.values() for p in spec.pods]
    return next(p for p in pods if (p.namespace, p.name) == (CT, name))


def mark_of(step: Step, name: str) -> int:
    """The epoch mark of pod ``name`` after ``step`` (its epoch and counters)."""
    return pod_mark(compiled_pod(step, name), step.policy.groups, step.policy.sets)


def arrivals(client: ProbeClient, before: set[str], src: str) -> list[Seen]:
    """What ``client`` received from ``src`` since ``before`` (tokens seen until then)."""
    return [s for s in client.seen() if s.token not in before and s.src == src]


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_revoked_client_receives_nothing_more_from_the_pod(
    dp: DataplaneLab, proto: Proto
) -> None:
    """S-CT-2 "denied flows are interrupted", read strictly: after the revocation, what the
    pod sends on the flow never reaches the client — before the client sends anything (a
    one-way stream from the pod), after the client's own packet was dropped, and again. The
    agent's sweep gave the entry the tombstone, whose replies ``pod_egress`` drops; the entry
    is neither deleted nor flipped."""
    base_step = dp.operator.apply(svc_open_to_outside(dp))
    outside = ProbeClient(dp.outside)
    srv = dp.pods["srv-1"]
    with closing_flows([]) as opened:
        live = open_flow(dp, FlowSpec(OUT, "srv-1", proto))
        opened.append(live)
        assert entry_of(dp, live).mark == mark_of(base_step, "srv-1")
        step = dp.operator.apply(ct_manifests(dp.pods, {"srv-1": "svc"}, ()))  # allow deleted
        assert step.rechecked == {f"{CT}/srv-1"}
        assert entry_of(dp, live).mark == MARK_TOMBSTONE
        for who in ("server", "client", "server"):
            seen_before = {s.token for s in outside.seen()}
            res = live.flow.check(from_server=who == "server", timeout=DENIED_TIMEOUT)
            assert not res.ok, f"{who} spoke: {res}"
            assert arrivals(outside, seen_before, srv.ipv4) == [], f"after the {who} spoke"
        assert flipped_entries(dp, live) == []
        assert entry_of(dp, live).mark == MARK_TOMBSTONE


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_an_allowed_flow_keeps_both_directions_after_a_recheck(
    dp: DataplaneLab, proto: Proto
) -> None:
    """S-CT-2 "allowed flows continue unaffected", when only the pod sends: a change raises
    srv-1's epoch (an inbound Deny for another address is added, S-CT-2 row 3) and the
    flow from the outside is still allowed. Before any packet crosses, the sweep has
    re-stamped the entry with srv-1's new mark; the pod's messages reach the client, and
    the client's own exchange continues on the same connection."""
    dp.operator.apply(svc_open_to_outside(dp))
    outside = ProbeClient(dp.outside)
    srv = dp.pods["srv-1"]
    deny_other = twin("no-20", "svc", "100.64.250.20/32", "fd64:5ec:0:fa::14/128", action="Deny")
    with closing_flows([]) as opened:
        live = open_flow(dp, FlowSpec(OUT, "srv-1", proto))
        opened.append(live)
        step = dp.operator.apply([*svc_open_to_outside(dp), *deny_other])
        assert step.rechecked == {f"{CT}/srv-1"}
        new_mark = mark_of(step, "srv-1")
        assert entry_of(dp, live).mark == new_mark  # swept: nothing has crossed yet
        for _ in range(2):
            seen_before = {s.token for s in outside.seen()}
            res = live.flow.check(from_server=True, timeout=ALIVE_TIMEOUT)
            assert res.ok, res
            assert arrivals(outside, seen_before, srv.ipv4), "the pod's message must arrive"
        assert live.flow.check(timeout=ALIVE_TIMEOUT).ok
        assert entry_of(dp, live).mark == new_mark


def test_outbound_flows_of_a_rechecked_pod_are_untouched(dp: DataplaneLab) -> None:
    """S-CT-1: srv-1's inbound allow is deleted (its epoch raised, its inbound flow cut), but
    its outbound flows to the outside carry no epoch mark: the sweep never reads them, they
    keep mark 0, and both of their ends keep talking."""
    dp.operator.apply(svc_open_to_outside(dp))
    specs = [*flows("srv-1", OUT, ("tcp", "udp"), (4, 6)), FlowSpec(OUT, "srv-1", "udp")]
    with closing_flows([]) as opened:
        opened.extend(parallel(lambda s: open_flow(dp, s), specs))
        *outbound, inbound = opened
        step = dp.operator.apply(ct_manifests(dp.pods, {"srv-1": "svc"}, ()))
        assert step.rechecked == {f"{CT}/srv-1"}
        assert entry_of(dp, inbound).mark == MARK_TOMBSTONE
        for live in outbound:
            assert entry_of(dp, live).mark == 0, live.spec
            for from_server in (True, False, True):
                res = live.flow.check(from_server=from_server, timeout=ALIVE_TIMEOUT)
                assert res.ok, f"{live.spec} ({'outside' if from_server else 'pod'}): {res}"
            assert entry_of(dp, live).mark == 0, live.spec


# ----------------------------------------------------------------------------- S-CT-3
def entry_of(dp: DataplaneLab, live: Live) -> CtEntry:
    """The conntrack entry of ``live`` on srv-1's node (node 1), in either orientation."""
    h = live.flow.handle
    ends = {h.src, h.dst}
    for e in conntrack_list(dp.node_netns(1), live.spec.family, live.spec.proto):
        if {e.orig.get("src"), e.orig.get("dst")} != ends:
            continue
        if live.spec.proto in ("tcp", "udp") and str(h.sport) not in (
            e.orig.get("sport"),
            e.orig.get("dport"),
        ):
            continue
        if live.spec.proto == "icmp" and e.orig.get("id") != str(h.sport):
            continue
        return e
    raise AssertionError(f"no conntrack entry for {live.spec} ({h})")


def wait_entry(
    dp: DataplaneLab, live: Live, cond: Callable[[CtEntry], bool], what: str, timeout: float
) -> CtEntry:
    deadline = time.monotonic() + timeout
    while True:
        e = entry_of(dp, live)
        if cond(e):
            return e
        if time.monotonic() > deadline:
            raise AssertionError(f"{live.spec}: {what} not seen in {timeout} s; last: {e.line}")
        time.sleep(0.2)


def test_conntrack_timeouts_are_the_specs(dp: DataplaneLab) -> None:
    """S-CT-3, read back from ``conntrack -L`` in the node netns, for pod flows both ways
    and both families: TCP established 600 s (kernel default 432,000), after FIN 30 s
    (TIME_WAIT; kernel 120), ICMP 30 s, UDP 30 s unreplied and 180 s once replied (kernel
    120; the kernel moves to "replied" only ≥ 2 s after the first packet,
    docs/nftables.md#conntrack-timeouts-and-ct-timeout-objects),
    GRE 30 s / 180 s (the kernel defaults already say what the spec says)."""
    dp.operator.apply(svc_open_to_outside(dp))
    specs = [
        *flows(OUT, "srv-1", ("tcp", "icmp", "udp"), (4, 6)),
        *flows("srv-1", OUT, ("tcp", "icmp", "udp", "gre"), (4, 6)),
    ]
    with closing_flows([]) as opened:
        opened.extend(parallel(lambda s: open_flow(dp, s), specs))
        by = {(lv.spec.client, lv.spec.proto, lv.spec.family): lv for lv in opened}
        problems: list[str] = []
        for live in opened:
            e = entry_of(dp, live)
            proto = live.spec.proto
            if proto == "tcp" and not (e.state == "ESTABLISHED" and 590 <= e.timeout <= 600):
                problems.append(f"{live.spec}: TCP established, want ~600 s: {e.line}")
            if proto == "icmp" and not e.timeout <= 30:
                problems.append(f"{live.spec}: ICMP, want <= 30 s: {e.line}")
            if proto in ("udp", "gre") and not e.timeout <= 30:
                problems.append(f"{live.spec}: one exchange, want <= 30 s: {e.line}")
        assert problems == [], "\n".join(problems)

        # UDP and GRE: the conntrack entry counts as replied from the packet AFTER the
        # first reply, and UDP only >= 2 s after the first packet (the kernel's own rule;
        # not a threshold asserted).
        time.sleep(2.1)
        for live in [lv for lv in opened if lv.spec.proto in ("udp", "gre")]:
            assert live.flow.check(timeout=ALIVE_TIMEOUT).ok
            e = wait_entry(dp, live, lambda e: e.timeout > 30, "the replied timeout", 5.0)
            low = 120 if live.spec.proto == "udp" else 30  # the kernel's UDP default is 120
            assert low < e.timeout <= 180, f"{live.spec}: replied, want 180 s: {e.line}"

        # TCP: closed by the client -> FIN exchange -> TIME_WAIT with the spec's 30 s.
        tcps = [by[(OUT, "tcp", 4)], by[(OUT, "tcp", 6)], by[("srv-1", "tcp", 4)]]
        for live in tcps:
            live.flow.close()
            e = wait_entry(dp, live, lambda e: e.state == "TIME_WAIT", "TIME_WAIT", 5.0)
            assert e.timeout <= 30, f"{live.spec}: after FIN, want <= 30 s: {e.line}"
        opened[:] = [lv for lv in opened if lv not in tcps]

    # UDP unreplied: the outside does not serve port 9 (its ICMP error is no reply).
    pod = ProbeClient(dp.pods["srv-1"])
    for family in (4, 6):
        dst = dp.outside.ipv4 if family == 4 else dp.outside.ipv6
        res = pod.probe("udp", dst, 9, timeout=DENIED_TIMEOUT)
        assert not res.ok
        entries = [
            e
            for e in conntrack_list(dp.node_netns(1), family, "udp")
            if e.orig.get("dst") == dst and e.orig.get("dport") == "9"
        ]
        assert entries, f"no UDP entry to {dst}:9"
        for e in entries:
            assert "UNREPLIED" in e.flags and e.timeout <= 30, e.line


# ----------------------------------------------------------------------------- spoofing, ND
@pytest.mark.parametrize("family", [4, 6])
def test_a_forged_source_from_a_pod_is_dropped(dp: DataplaneLab, family: Family) -> None:
    """Anti-spoofing (docs/nftables.md#anti-spoofing): srv-1 sends UDP and ICMP with the
    address of its neighbour cli-1 (a pod the outside would accept) and with an unused
    pod-CIDR address: nothing arrives, while the same packets with its own address do.
    The same holds with srv-1 out of the policy (a pod of a namespace that is not
    enforced): every routed pod interface sends only its own addresses. (Without our
    table the lab delivers forged packets: tests/netns/test_lab_probes.py.)"""
    srv, cli = dp.pods["srv-1"], dp.pods["cli-1"]
    own = srv.ipv4 if family == 4 else srv.ipv6
    dst = dp.outside.ipv4 if family == 4 else dp.outside.ipv6
    forged = [
        cli.ipv4 if family == 4 else cli.ipv6,
        "100.64.1.250" if family == 4 else "fd64:5ec:0:1::fa",
    ]
    sender, receiver = ProbeClient(srv), ProbeClient(dp.outside)
    protos: tuple[Literal["udp", "icmp"], ...] = ("udp", "icmp")

    def send(src: str) -> list[str]:
        return [sender.forge(p, src, dst, 80) for p in protos]

    def arrived(tokens: list[str]) -> list[bool]:
        return parallel(lambda t: bool(receiver.wait_seen(t, timeout=DENIED_TIMEOUT)), tokens)

    dp.operator.apply(svc_open_to_outside(dp))
    assert arrived([t for src in forged for t in send(src)]) == [False] * 4
    assert arrived(send(own)) == [True, True]
    docs = svc_open_to_outside(dp)
    unmanaged = [d for d in docs if not (d["kind"] == "Pod" and d["metadata"]["name"] == "srv-1")]
    try:
        dp.operator.apply(unmanaged)
        assert arrived([t for src in forged for t in send(src)]) == [False] * 4
        assert arrived(send(own)) == [True, True]
    finally:
        dp.operator.apply(docs)


@pytest.mark.parametrize("family", [4, 6])
def test_an_unmanaged_pod_forging_a_trusted_pod_is_dropped(
    dp: DataplaneLab, family: Family
) -> None:
    """A pod of a namespace that is not enforced (srv-1, in no compiled object) forges the
    address of cli-1, which srv-2 (the other node) and mover-1 (the same node) trust:
    nothing arrives; cli-1's own packets do (the rule is in force), and so do srv-1's
    with its own address to the outside (the unmanaged pod is not held back)."""
    cli = dp.pods["cli-1"]
    cli_ip = cli.ipv4 if family == 4 else cli.ipv6
    trusting = twin("from-cli-1", "trusting", f"{cli.ipv4}/32", f"{cli.ipv6}/128")
    docs = ct_manifests(dp.pods, {"srv-2": "trusting", "mover-1": "trusting"}, trusting)
    docs = [d for d in docs if not (d["kind"] == "Pod" and d["metadata"]["name"] == "srv-1")]
    dp.operator.apply(docs)
    spoofer, honest = ProbeClient(dp.pods["srv-1"]), ProbeClient(cli)
    protos: tuple[Literal["udp", "icmp"], ...] = ("udp", "icmp")
    targets = [dp.pods["srv-2"], dp.pods["mover-1"]]

    def dst(p: PodNet) -> str:
        return p.ipv4 if family == 4 else p.ipv6

    def arrived(tokens: list[tuple[PodNet, str]]) -> list[bool]:
        return parallel(
            lambda x: bool(ProbeClient(x[0]).wait_seen(x[1], timeout=DENIED_TIMEOUT)), tokens
        )

    forged = [(t, spoofer.forge(p, cli_ip, dst(t), 80)) for t in targets for p in protos]
    real = [(t, honest.forge(p, cli_ip, dst(t), 80)) for t in targets for p in protos]
    assert arrived(forged) == [False] * 4
    assert arrived(real) == [True] * 4
    out = dp.outside.ipv4 if family == 4 else dp.outside.ipv6
    own = dp.pods["srv-1"].ipv4 if family == 4 else dp.pods["srv-1"].ipv6
    token = spoofer.forge("udp", own, out, 80)
    assert ProbeClient(dp.outside).wait_seen(token, timeout=ALLOWED_TIMEOUT)


def test_neighbour_discovery_works_after_flushing_caches(dp: DataplaneLab) -> None:
    """ICMPv6 ND (and ARP) under policy
    (docs/nftables.md#neighbour-discovery-is-untracked): srv-1 admits only TCP/80 — no
    ICMP rule at all — yet after every neighbour cache of the lab is flushed, IPv6 and
    IPv4 connections to and from it resolve their neighbours and behave as the evaluator
    says, and the pod has learnt its gateway fe80::1 again."""
    web = (
        ct_rule("web", "svc", protocol="TCP", ports="80"),
        ct_rule("web6", "svc", protocol="TCP", ports="80", family="IPv6"),
    )
    step = dp.operator.apply(ct_manifests(dp.pods, {"srv-1": "svc", "srv-2": "svc"}, web))
    for netns in [
        *(p.netns for p in dp.pods.values()),
        dp.node_netns(1),
        dp.node_netns(2),
        dp.outside.netns,
    ]:
        for fam in ("-4", "-6"):
            run_in(netns, ["ip", fam, "neigh", "flush", "all"], check=False)
    cases = [Case("tcp", 80, 6), Case("icmp", 0, 6), Case("tcp", 80, 4), Case("tcp", 443, 6)]
    hosts: list[Endpoint] = [dp.pods["srv-1"], dp.pods["cli-1"], dp.pods["srv-2"], dp.outside]
    targets: list[Target] = list(hosts)
    result = run_matrix(
        hosts,
        cases,
        Oracle(step.policy),
        destinations=targets,
        timeout=DENIED_TIMEOUT,
        allowed_timeout=ALLOWED_TIMEOUT,
    )
    result.assert_matches()
    assert any(not ok for ok in result.expected.values())  # ICMPv6 echo and 443 are denied
    neigh = run_in(dp.pods["srv-1"].netns, ["ip", "-6", "neigh", "show"]).stdout
    assert "fe80::1 " in neigh, neigh
