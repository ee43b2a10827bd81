"""Fail-static with a real agent and a real kernel (docs/failure-modes.md).

Node 1 of the shared lab runs the agent (``tests/agent_harness.py``) from a policy file:

* stopped (SIGTERM) or killed (SIGKILL), the agent leaves its table as it is — the
  policy stays in force, established flows continue — and the next agent **adopts** it:
  the seal matches (``secgroups.nft.sealing``), nothing is written, the rule handles are
  the same;
* a table changed while no agent ran (a chain flushed by hand, another policy) is
  rewritten at the start, not adopted;
* a table flushed or deleted by hand while the agent runs is restored at once (the
  agent's nf_tables event monitor, ``secgroups_agent.tamper``): 20 flushes and 5
  deletions, each timed from the tampering command to the moment the table holds all its
  rules again (figures printed), while the agent's own changes are never taken for
  tampering. Between the flush and the restore, the forward chains drop by policy.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.agent_harness import AgentProcess, in_netns
from tests.netns.test_agent_netns import DENIED_TIMEOUT, NODE, check_matrix, lab_policy

from secgroups.compiled import CompiledPolicy
from secgroups.nft.sealing import SEAL, read_seal
from secgroups_lab.network import Lab, PodNet, netns_unavailable, run_in

_why = netns_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netns

TABLE = "inet secgroups"
FLUSHES = 20
DELETIONS = 5
RESTORE_DEADLINE = 10.0  # a wait's deadline, not the figure (that is printed)


def listing(agent: AgentProcess) -> str:
    """The table with rule handles: a rewrite gives every rule a new handle."""
    return agent.nft(f"-a list table {TABLE}")


def sealed(agent: AgentProcess) -> str | None:
    return read_seal(json.loads(agent.nft(f"-j list set {TABLE} {SEAL}")))


def metric(agent: AgentProcess, name: str) -> float:
    return agent.metrics().get(name, 0.0)


def fresh_matrix(lab: Lab, pods: dict[str, PodNet], policy: CompiledPolicy) -> None:
    """check_matrix with conntrack flushed first (GRE entries key on addresses only)."""
    run_in(lab.node_netns(1), ["conntrack", "-F"], check=False)
    check_matrix(lab, pods, policy)


@pytest.fixture
def node1(lab: Lab) -> Iterator[str]:
    netns = lab.node_netns(1)
    run_in(netns, ["nft", "delete", "table", *TABLE.split()], check=False)
    run_in(netns, ["conntrack", "-F"], check=False)
    yield netns
    run_in(netns, ["nft", "delete", "table", *TABLE.split()], check=False)


def test_stop_and_kill_leave_the_table_and_the_next_agent_adopts_it(
    lab: Lab, pods: dict[str, PodNet], node1: str, tmp_path: Path
) -> None:
    assert lab.outside is not None
    outside = lab.client(lab.outside)
    policy, https = lab_policy(pods), lab_policy(pods, https=True)
    agents = [
        AgentProcess(node1, NODE, tmp_path / str(i), delete_table_on_stop=False) for i in range(5)
    ]
    flow = None
    try:
        agents[0].start(policy)
        assert sealed(agents[0]) is not None  # the full sync sealed in its own transaction
        before = listing(agents[0])
        flow = outside.open_flow("tcp", pods["a1"].ipv4, 80)
        assert agents[0].stop() == 0  # SIGTERM
        assert listing(agents[0]) == before
        assert not outside.probe("tcp", pods["a1"].ipv4, 443, timeout=DENIED_TIMEOUT).ok
        assert outside.check(flow).ok

        agents[1].start(policy)
        assert metric(agents[1], "secgroups_agent_table_adoptions_total") == 1
        assert metric(agents[1], 'secgroups_agent_syncs_total{kind="full"}') == 0
        assert listing(agents[1]) == before  # the same rules: nothing was rewritten
        agents[1].kill()  # kill -9: no shutdown path at all
        assert listing(agents[1]) == before
        assert outside.check(flow).ok

        agents[2].start(policy)
        assert metric(agents[2], "secgroups_agent_table_adoptions_total") == 1
        assert listing(agents[2]) == before
        # A change is applied incrementally; once idle the table is sealed again.
        agents[2].apply(https)
        agents[2].wait_for(lambda: sealed(agents[2]) is not None, "the table sealed again")
        changed = listing(agents[2])
        assert changed != before
        agents[2].kill()

        agents[3].start(https)
        assert metric(agents[3], "secgroups_agent_table_adoptions_total") == 1
        assert listing(agents[3]) == changed
        assert outside.check(flow).ok
        fresh_matrix(lab, pods, https)
    finally:
        if flow is not None:
            with contextlib.suppress(Exception):
                outside.close(flow)
        for a in agents:
            with contextlib.suppress(Exception):
                a.stop()


def test_a_table_changed_while_no_agent_ran_is_rewritten(
    lab: Lab, pods: dict[str, PodNet], node1: str, tmp_path: Path
) -> None:
    policy = lab_policy(pods)
    first = AgentProcess(node1, NODE, tmp_path / "1", delete_table_on_stop=False)
    first.start(policy)
    first.stop()
    # Someone flushed a chain while no agent ran: the seal is intact, the rules are not.
    first.nft(f"flush chain {TABLE} pod_ingress")
    with AgentProcess(node1, NODE, tmp_path / "2", delete_table_on_stop=False) as second:
        second.start(policy)
        assert metric(second, "secgroups_agent_table_adoptions_total") == 0
        assert "ip daddr vmap @in_disp4" in second.nft(f"list chain {TABLE} pod_ingress")
        fresh_matrix(lab, pods, policy)
    # Another policy than the one sealed: rewritten too.
    with AgentProcess(node1, NODE, tmp_path / "3", delete_table_on_stop=False) as third:
        third.start(lab_policy(pods, https=True))
        assert metric(third, "secgroups_agent_table_adoptions_total") == 0
        fresh_matrix(lab, pods, lab_policy(pods, https=True))


def _restore_times(
    netns: str, command: str, rules: int, times: int, between: Callable[[], None]
) -> list[float]:
    """``command`` run ``times`` times in ``netns`` (libnftables in this process: another
    process than the agent), each timed until the table holds ``rules`` rules again."""
    from secgroups_agent.nftables import OUTPUT_JSON
    from secgroups_agent.nftworker import LibNftables

    def count(nft: LibNftables) -> int:
        rc, out, _ = nft.run(f"list table {TABLE}".encode(), OUTPUT_JSON)
        if rc != 0:
            return -1
        return sum(1 for item in json.loads(out)["nftables"] if "rule" in item)

    def run() -> list[float]:
        nft = LibNftables()
        out: list[float] = []
        for _ in range(times):
            t0 = time.monotonic()
            rc, _, err = nft.run(command.encode())
            assert rc == 0, err
            deadline = t0 + RESTORE_DEADLINE
            while count(nft) != rules:
                assert time.monotonic() < deadline, f"not restored after {command!r}"
                time.sleep(0.002)
            out.append(time.monotonic() - t0)
            between()
        return out

    return in_netns(netns, run, timeout=times * (RESTORE_DEADLINE + 5))


def test_a_table_flushed_or_deleted_by_hand_is_restored_at_once(
    lab: Lab, pods: dict[str, PodNet], node1: str, tmp_path: Path
) -> None:
    policy = lab_policy(pods)
    # The periodic drift check is far away: the event monitor must do it.
    with AgentProcess(node1, NODE, tmp_path, drift_period=3600.0) as agent:
        agent.start(policy)
        rules = sum(1 for item in agent.table_json()["nftables"] if "rule" in item)
        # The agent's own changes are not tampering.
        agent.apply(lab_policy(pods, https=True))
        agent.apply(policy)
        agent.wait_for(lambda: sealed(agent) is not None, "the table sealed")
        assert metric(agent, "secgroups_agent_drift_detected_total") == 0

        def settle() -> None:
            time.sleep(0.05)

        flushed = _restore_times(node1, f"flush table {TABLE}", rules, FLUSHES, settle)
        deleted = _restore_times(node1, f"delete table {TABLE}", rules, DELETIONS, settle)
        assert metric(agent, "secgroups_agent_drift_detected_total") >= FLUSHES + DELETIONS
        fresh_matrix(lab, pods, policy)
    for what, xs in (("flushed", flushed), ("deleted", deleted)):
        print(
            f"\ntable {what} by hand {len(xs)} times, restored after: "
            f"p50 {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms "
            f"(all: {', '.join(f'{x * 1000:.0f}' for x in xs)} ms)"
        )
