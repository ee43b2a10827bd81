"""The dataplane tier's harness: a lab, real agents on every node, and an operator stand-in.

:class:`DataplaneLab` builds a lab network (2 nodes, the outside host, the given pods) and
one real ``secgroups-agent`` process per node (``tests/agent_harness.py``), all driven by
:class:`Operator`, which does in a few lines what the operator's reconciler does
(``operator/secgroups_operator/reconciling.py``): old facts → new facts →
``plan_clearing`` (S-CT-2) → its carriers raised (``Rechecks.bumped``: group and set
counters, the epochs of the pods they do not reach) → ``compile_policy(…)`` → the whole
compiled policy to every node's agent, each of which takes its node's slice, and waits
until every agent applied it.

:class:`Oracle` is the expected side of every comparison: the core evaluator's verdict
for a probe's first packet (a node as the sender is the node itself, S-X-2 and the
node → pod allowance). :func:`run_gre_matrix` probes GRE in two phases with conntrack
flushed between them (GRE conntrack keys on the address pair only). :func:`conntrack_list`
reads ``conntrack -L`` in a node netns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.agent_harness import AgentProcess
from tests.dataplanecases import OUTSIDE_ALIASES, Manifest, facts_of, node_name

from secgroups.clearing import ClearingPlan, Rechecks, plan_clearing
from secgroups.compiled import CompiledPolicy
from secgroups.compiling import CompileOptions, Problem, compile_policy
from secgroups.evaluating import Evaluator, Packet, Verdict
from secgroups.facts import ClusterFacts
from secgroups_lab.matrix import Case, Family, MatrixResult, Target, run_matrix
from secgroups_lab.network import (
    Lab,
    NodeHost,
    OutsideHost,
    PodNet,
    cleanup_leftovers,
    netns_unavailable,
    run_in,
)
from secgroups_lab.probes import Endpoint, ProbeClient

DENIED_TIMEOUT = 1.0  # seconds a probe that should be denied is given
ALLOWED_TIMEOUT = 5.0  # ...and one that should pass (it answers in milliseconds unless loaded)
GRE = (Case("gre", 0, 4), Case("gre", 0, 6))


def dataplane_unavailable() -> str | None:
    """Why the dataplane tier cannot run here (one line), or None."""
    why = netns_unavailable()
    if why:
        return why
    for tool in ("nft", "conntrack"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return None


# ----------------------------------------------------------------------------- endpoints
@dataclass(frozen=True)
class Alias:
    """Another address of the outside host, as a probe endpoint: probes from it are sent
    with ``src=`` (``run_matrix(bind_source=True)``, ``open_flow(src=…)``)."""

    label: str
    netns: str
    ipv4: str
    ipv6: str
    control_socket: Path

    @classmethod
    def of(cls, outside: OutsideHost, name: str, addresses: tuple[str, str]) -> Alias:
        return cls(f"outside/{name}", outside.netns, *addresses, outside.control_socket)


# ----------------------------------------------------------------------------- the operator
@dataclass(frozen=True)
class Step:
    """One change as the operator handles it."""

    facts: ClusterFacts
    plan: ClearingPlan
    rechecks: Rechecks
    policy: CompiledPolicy
    problems: tuple[Problem, ...]

    @property
    def rechecked(self) -> set[str]:
        """``namespace/name`` of the pods the plan re-checks (S-CT-2), by their epoch or
        a counter."""
        return {f"{ns}/{name}" for ns, name in self.plan.pods}


class Operator:
    """The operator's reconciler in a few lines, over real agents (see the module doc)."""

    def __init__(self, agents: Mapping[str, AgentProcess], nodes: Sequence[str]) -> None:
        self.agents = agents  # not copied: the lab fills it after creating the operator
        self.nodes = tuple(nodes)
        self.facts: ClusterFacts | None = None
        self.rechecks = Rechecks({}, {}, {})
        self.policy: CompiledPolicy | None = None

    def plan(self, facts: ClusterFacts) -> Step:
        """What the operator would publish for ``facts`` (nothing is applied)."""
        plan = ClearingPlan({}) if self.facts is None else plan_clearing(self.facts, facts)
        rechecks = self.rechecks.bumped(plan)
        options = CompileOptions(
            epochs=rechecks.epochs, group_rechecks=rechecks.groups, set_rechecks=rechecks.sets
        )
        compilation = compile_policy(facts, options)
        return Step(facts, plan, rechecks, compilation.policy, compilation.problems)

    def apply(self, docs: Sequence[Manifest] | ClusterFacts) -> Step:
        """Compile the manifests (or facts), give every agent the policy and wait until all
        applied it (each agent waits with a deadline)."""
        facts = docs if isinstance(docs, ClusterFacts) else facts_of(docs, self.nodes)
        step = self.plan(facts)

        # Started from this thread: an agent gets SIGKILL when the thread that started it
        # ends (PR_SET_PDEATHSIG follows the thread), so never from a pool's worker.
        running = []
        for agent in self.agents.values():
            if agent.process is None:
                agent.start(step.policy)
            else:
                running.append(agent)
        with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
            list(pool.map(lambda a: a.apply(step.policy), running))
        self.facts, self.rechecks, self.policy = facts, step.rechecks, step.policy
        return step


# ----------------------------------------------------------------------------- the oracle
class Oracle:
    """Expected verdicts from the core evaluator, as ``run_matrix(expected=…)`` wants them."""

    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        self.evaluator = Evaluator(policy)

    @staticmethod
    def packet(src: Endpoint | Target, dst: Target, case: Case) -> Packet:
        """The first packet of the probe ``src`` → ``dst`` (echo request for ICMP)."""
        pkt = Packet.make(case.address(src), case.address(dst), case.proto, case.port or None)
        if isinstance(src, NodeHost):  # the node itself sends
            pkt = dataclasses.replace(pkt, from_node=src.node.name)
        return pkt

    def verdict(self, src: Endpoint | Target, dst: Target, case: Case) -> Verdict:
        return self.evaluator.evaluate(self.packet(src, dst, case))

    def __call__(self, src: Endpoint | Target, dst: Target, case: Case) -> bool:
        return self.verdict(src, dst, case).allowed


Expected = Callable[[Endpoint, Target, Case], bool]


def run_gre_matrix(
    lab: DataplaneLab,
    sources: Sequence[Endpoint],
    destinations: Sequence[Target],
    expected: Expected,
    *,
    families: Sequence[Family] = (4, 6),
    timeout: float = DENIED_TIMEOUT,
) -> list[MatrixResult]:
    """GRE (over ``families``) from every source to every destination, against ``expected``.

    GRE version 0 has no ports or keys that conntrack uses, so one entry stands for both
    directions of an address pair: a packet one way would make the other way's first
    packet a reply. Cells are therefore probed in two phases — source before destination
    in one order of all endpoints, then the reverse — with conntrack flushed on every node
    before each phase.
    """
    cases = [Case("gre", 0, f) for f in families]
    order: dict[str, int] = {}
    for ep in [*sources, *destinations]:
        order.setdefault(ep.label, len(order))
    results: list[MatrixResult] = []
    for forward in (True, False):
        lab.flush_conntrack()
        plan: list[tuple[Endpoint, list[Target]]] = []
        for s in sources:
            ds = [
                d
                for d in destinations
                if d.label != s.label and (order[s.label] < order[d.label]) == forward
            ]
            if ds:
                plan.append((s, ds))

        def one(item: tuple[Endpoint, list[Target]]) -> MatrixResult:
            s, ds = item
            return run_matrix(
                [s],
                cases,
                expected,
                destinations=ds,
                timeout=timeout,
                bind_source=True,
                allowed_timeout=ALLOWED_TIMEOUT,
            )

        with ThreadPoolExecutor(max_workers=max(1, len(plan))) as pool:
            results += list(pool.map(one, plan))
    return results


def assert_all_match(results: Sequence[MatrixResult]) -> None:
    bad = [r.render(only_mismatching=True) for r in results if r.mismatches]
    if bad:
        raise AssertionError("connectivity differs from expected:\n" + "\n\n".join(bad))


# ----------------------------------------------------------------------------- conntrack
_TUPLE_KEYS = frozenset({"src", "dst", "sport", "dport", "type", "code", "id", "srckey", "dstkey"})


@dataclass(frozen=True)
class CtEntry:
    """One line of ``conntrack -L``: protocol, seconds left, TCP state, the original and
    reply tuples, flags (``ASSURED``, ``UNREPLIED``) and the mark."""

    proto: str
    timeout: int
    state: str
    orig: Mapping[str, str]
    reply: Mapping[str, str]
    flags: frozenset[str]
    mark: int
    line: str = field(compare=False)


def parse_conntrack(text: str) -> list[CtEntry]:
    out: list[CtEntry] = []
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) < 3 or not tokens[2].isdigit():
            continue
        state = ""
        tuples: list[dict[str, str]] = []
        flags: set[str] = set()
        mark = 0
        for tok in tokens[3:]:
            if tok.startswith("["):
                flags.add(tok.strip("[]"))
            elif "=" in tok:
                key, _, value = tok.partition("=")
                if key == "src" and (not tuples or "src" in tuples[-1]) and len(tuples) < 2:
                    tuples.append({})
                if key in _TUPLE_KEYS and tuples:
                    tuples[-1][key] = value
                elif key == "mark":
                    mark = int(value)
            elif not tuples:
                state = tok
        if len(tuples) == 2:
            out.append(
                CtEntry(
                    tokens[0],
                    int(tokens[2]),
                    state,
                    tuples[0],
                    tuples[1],
                    frozenset(flags),
                    mark,
                    line,
                )
            )
    return out


def conntrack_list(netns: str, family: int, proto: str | None = None) -> list[CtEntry]:
    """The conntrack entries of ``netns`` (``conntrack -L -f ipv4|ipv6 [-p proto]``; ``icmp``
    means ICMPv6 for IPv6)."""
    argv = ["conntrack", "-L", "-f", "ipv6" if family == 6 else "ipv4"]
    if proto:
        argv += ["-p", "icmpv6" if proto == "icmp" and family == 6 else proto]
    proc = run_in(netns, argv, check=False, timeout=15.0)
    return parse_conntrack(proc.stdout)


# ----------------------------------------------------------------------------- the lab
class DataplaneLab:
    """A 2-node lab with the given pods, the outside host (and its aliases) and one agent per
    node, all driven by :attr:`operator`. Use as a context manager (module fixtures)."""

    def __init__(
        self,
        prefix: str,
        pods: Sequence[tuple[int, str, str]],
        workdir: Path,
        *,
        probe_ports: Sequence[int],
        nodes: int = 2,
    ) -> None:
        self.prefix = prefix
        self.pod_specs = list(pods)
        self.workdir = workdir
        self.lab = Lab(prefix, nodes=nodes, probe_ports=probe_ports)
        self.node_names = [node_name(i) for i in range(1, nodes + 1)]
        self.agents: dict[str, AgentProcess] = {}
        self.operator = Operator(self.agents, self.node_names)
        self.pods: dict[str, PodNet] = {}

    def __enter__(self) -> DataplaneLab:
        cleanup_leftovers(self.prefix)
        try:
            self.lab.up()
            for p in self.lab.add_pods(self.pod_specs):
                self.pods[p.name] = p
            for i, name in enumerate(self.node_names, start=1):
                # Drift checks spawn nft processes; the tier needs no fast drift repair.
                self.agents[name] = AgentProcess(
                    self.lab.node_netns(i), name, self.workdir / name, drift_period=5.0
                )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        self.lab.teardown()

    # -------------------------------------------------------------- endpoints
    @property
    def outside(self) -> OutsideHost:
        assert self.lab.outside is not None
        return self.lab.outside

    def alias(self, name: str) -> Alias:
        return Alias.of(self.outside, name, OUTSIDE_ALIASES[name])

    def aliases(self) -> list[Alias]:
        return [self.alias(name) for name in OUTSIDE_ALIASES]

    def node_host(self, index: int) -> NodeHost:
        return self.lab.node_host(index)

    def client(self, ep: Endpoint) -> ProbeClient:
        return ProbeClient(ep)

    def node_netns(self, pod_or_index: PodNet | int) -> str:
        index = pod_or_index if isinstance(pod_or_index, int) else pod_or_index.node
        return self.lab.node_netns(index)

    def flush_conntrack(self) -> None:
        for i in range(1, len(self.node_names) + 1):
            run_in(self.lab.node_netns(i), ["conntrack", "-F"], check=False)

    def agent_logs(self) -> str:
        return "\n".join(f"--- {n}\n{a.log_tail()}" for n, a in self.agents.items())


@contextlib.contextmanager
def closing_flows(flows: list[Any]) -> Iterator[list[Any]]:
    """Close every ``secgroups_lab.probes.Flow`` put in the list, whatever happens."""
    try:
        yield flows
    finally:
        for f in flows:
            with contextlib.suppress(Exception):
                f.close()
