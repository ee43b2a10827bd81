"""Fault loops under a continuous tokened probe stream (docs/failure-modes.md).

A lab of its own (control plane, 2 nodes, the real operator and agents), so that killing
its parts disturbs no other test. Namespace ``flt`` is enforced:

* ``srv`` (node 1, group ``server``): ingress UDP 80 (IPv4 and IPv6) and TCP 80 from
  members of ``client``; UDP 443 from them only while the rule ``toggle`` exists;
* ``cli`` (node 2, group ``client``): egress anywhere.

Throughout every loop ``cli`` sends, in rounds every 20 ms, one UDP datagram per class to
``srv``, each carrying a token that srv's probe daemon records (``ProbeClient.forge`` /
``seen``, from cli's own addresses): UDP 80 over IPv4 and IPv6 — **allowed**; UDP 3306
over IPv4 and IPv6 — **denied**, and only node 1's ingress stands in the way (cli's
egress allows everything); UDP 443 — the class the loops toggle. The datagrams are never
answered, so conntrack keeps each one NEW: every one is judged by the rules in force
when it arrives. A TCP connection cli → srv:80 opened before the loop is checked after
every fault (the same connection, both ways).

The loops (counts as the issue asks; each prints its figures):

* ``kill -9`` node 1's agent 50 times; convergence = restart → ready (the table adopted);
* ``kill -9`` the operator 20 times; convergence = a rule change made right after the
  restart → its effect on the dataplane (the toggled class flips);
* stop the API server 5 times (5 s down; node 1's agent is also killed and restarted
  while it is down: it cannot list, stays not ready and leaves its table alone);
  convergence = API server ready again → the agent ready (its table adopted) and a rule
  change made then in the dataplane (the watches have reconnected);
* flush node 1's table by hand 20 times; convergence = the flush → every rule back;
* trust, once: a compiled group patched by hand (``kubectl patch``, the operator
  stopped) is refused by the agent; the operator, back, writes it again.

Every time: no denied datagram delivered, the established connection not cut; allowed
datagrams are never lost except while a flushed table forwards nothing (counted).
Runtime on the 2-vCPU test machine: lab ≈ 1 min, agent loop ≈ 3–6 min, operator loop
≈ 1–3 min, API server loop ≈ 2–4 min, flush loop ≈ 10 s, trust ≈ 15 s (more under load).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from tests.agent_harness import in_netns
from tests.cluster.conftest import TEST_PREFIX
from tests.cluster.kube import apply, get, wait_until

from secgroups_lab import binaries, controlplane
from secgroups_lab.cluster import AGENT_METRICS_PORT, LabCluster
from secgroups_lab.probes import Flow, ProbeClient, ProbeError

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NS = "flt"
AGENT_KILLS, OPERATOR_KILLS, APISERVER_STOPS, FLUSHES = 50, 20, 5, 20
APISERVER_DOWN = 5.0  # seconds the API server stays down each time
ROUND_PAUSE = 0.02
DEADLINE = 120.0  # for any one convergence (a deadline, not a figure)
TABLE = "inet secgroups"

# (family, port) -> allowed (True), denied (False), toggled (None)
CLASSES: dict[tuple[int, int], bool | None] = {
    (4, 80): True,
    (6, 80): True,
    (4, 3306): False,
    (6, 3306): False,
    (4, 443): None,
}

POLICY = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}, labels: {{secgroups.dev/enforce: "true"}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroup
metadata: {{name: server, namespace: {NS}}}
spec: {{}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroup
metadata: {{name: client, namespace: {NS}}}
spec: {{}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: udp80, namespace: {NS}}}
spec: {{securityGroup: server, direction: Ingress, ipFamily: IPv4, protocol: UDP, ports: "80",
        remote: {{securityGroup: {{name: client}}}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: udp80-6, namespace: {NS}}}
spec: {{securityGroup: server, direction: Ingress, ipFamily: IPv6, protocol: UDP, ports: "80",
        remote: {{securityGroup: {{name: client}}}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: tcp80, namespace: {NS}}}
spec: {{securityGroup: server, direction: Ingress, ipFamily: IPv4, protocol: TCP, ports: "80",
        remote: {{securityGroup: {{name: client}}}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: out, namespace: {NS}}}
spec: {{securityGroup: client, direction: Egress, ipFamily: IPv4, protocol: All}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: out6, namespace: {NS}}}
spec: {{securityGroup: client, direction: Egress, ipFamily: IPv6, protocol: All}}
"""

TOGGLE = f"""
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: toggle, namespace: {NS}}}
spec: {{securityGroup: server, direction: Ingress, ipFamily: IPv4, protocol: UDP, ports: "443",
        remote: {{securityGroup: {{name: client}}}}}}
"""


def pod_yaml(name: str, node: str, group: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "annotations": {"secgroups.dev/security-groups": group},
            },
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "localhost/x"}]},
        }
    )


# ----------------------------------------------------------------------------- the stream
@dataclass
class Stream:
    """cli → srv, one tokened datagram per class per round, until stopped."""

    sender: ProbeClient
    receiver: ProbeClient
    cli: Any
    srv: Any
    sent: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    send_errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)
    idle: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def one(self, family: int, port: int) -> str | None:
        src = self.cli.ipv4 if family == 4 else self.cli.ipv6
        dst = self.srv.ipv4 if family == 4 else self.srv.ipv6
        try:
            return self.sender.forge("udp", src, dst, port)
        except ProbeError:  # not sent (ENOBUFS, a daemon busy): counted neither way
            self.send_errors += 1
            return None

    def run(self) -> None:
        while not self.stop.is_set():
            if self.paused.is_set():
                self.idle.set()
                time.sleep(0.01)
                continue
            self.idle.clear()
            for cls in CLASSES:
                token = self.one(*cls)
                if token is not None:
                    with self.lock:
                        self.sent.setdefault(cls, []).append(token)
            time.sleep(ROUND_PAUSE)

    def collect(self) -> dict[tuple[int, int], tuple[int, int]]:
        """Pause, let datagrams in flight land, read and clear what srv recorded: per class
        (sent, arrived). The stream resumes."""
        self.paused.set()
        try:
            self.idle.wait(10)
            time.sleep(0.3)
            seen = {s.token for s in self.receiver.seen()}
            self.receiver.call({"op": "clear_seen"}, 10)
            with self.lock:
                out = {
                    cls: (len(tokens), sum(t in seen for t in tokens))
                    for cls, tokens in self.sent.items()
                }
                self.sent = {}
        finally:
            self.paused.clear()
        return out

    def delivered(self, port: int, timeout: float = 1.0) -> bool:
        """One extra datagram of the toggled class (IPv4): did it arrive?"""
        token = self.one(4, port)
        return token is not None and bool(self.receiver.wait_seen(token, timeout=timeout))


@dataclass
class Ledger:
    """What one loop saw."""

    name: str
    convergence: list[float] = field(default_factory=list)
    sent: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    arrived: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    lost_by_round: list[int] = field(default_factory=list)
    flow_checks: int = 0
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, counts: dict[tuple[int, int], tuple[int, int]]) -> None:
        lost = 0
        for cls, (sent, arrived) in counts.items():
            want = CLASSES[cls]
            if want is None:
                continue
            self.sent[want] += sent
            self.arrived[want] += arrived
            if want:
                lost += sent - arrived
        self.lost_by_round.append(lost)

    def report(self) -> str:
        c = self.convergence
        return (
            f"\n{self.name}: {len(c)} times in {time.monotonic() - self.started:.0f} s; "
            f"convergence p50 {statistics.median(c) * 1000:.0f} ms, "
            f"max {max(c) * 1000:.0f} ms; "
            f"denied delivered {self.arrived[False]} of {self.sent[False]}; "
            f"allowed lost {self.sent[True] - self.arrived[True]} of {self.sent[True]}; "
            f"established connection checked {self.flow_checks} times, never cut"
            + "".join(f"; {n}" for n in self.notes)
        )


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lab(lab_binaries: binaries.Binaries) -> Iterator[LabCluster]:
    prefix = (TEST_PREFIX + "f")[:8]
    cp = controlplane.ControlPlane(prefix, bins=lab_binaries)
    cp.start()
    lab = LabCluster(prefix=prefix, nodes=2, cp=cp)
    try:
        lab.up()
        apply(lab, POLICY)
        apply(lab, pod_yaml("srv", f"{prefix}-n1", "server"))
        apply(lab, pod_yaml("cli", f"{prefix}-n2", "client"))
        yield lab
    finally:
        try:
            lab.down()
        finally:
            cp.stop()


@dataclass
class Rig:
    lab: LabCluster
    stream: Stream
    flow: Flow
    thread: threading.Thread

    @property
    def node1(self) -> str:
        return f"{self.lab.prefix}-n1"

    def agent_metrics(self) -> dict[str, float]:
        def get_metrics() -> str:
            with socket.create_connection(("127.0.0.1", AGENT_METRICS_PORT), timeout=2) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks).partition(b"\r\n\r\n")[2].decode()

        out: dict[str, float] = {}
        with contextlib.suppress(OSError, TimeoutError):
            for line in in_netns(self.node1, get_metrics, timeout=10).splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    out[name] = float(value)
        return out

    def ready_agent_metrics(self) -> dict[str, float] | None:
        """The agent's metrics once it is ready (its first sync committed), else None."""
        m = self.agent_metrics()
        return m if m.get("secgroups_agent_ready") == 1.0 else None

    def toggle(self, on: bool) -> None:
        if on:
            apply(self.lab, TOGGLE)
        else:
            self.lab.kubectl("delete", "sgr", "-n", NS, "toggle", "--ignore-not-found")

    def toggled(self, on: bool) -> float:
        """Seconds until the toggled class is ``on`` in the dataplane (deadline DEADLINE)."""
        t0 = time.monotonic()
        wait_until(
            f"udp/443 {'allowed' if on else 'denied'}",
            lambda: self.stream.delivered(443, timeout=0.3) == on,
            DEADLINE,
            interval=0.05,
        )
        return time.monotonic() - t0

    def settle(self, ledger: Ledger) -> None:
        """After one fault: the connection still works (the same one), then the stream's
        counts go to the ledger."""
        assert self.flow.check(timeout=10.0).ok, f"{ledger.name}: the established flow was cut"
        assert self.flow.check(from_server=True, timeout=10.0).ok
        ledger.flow_checks += 1
        ledger.add(self.stream.collect())
        if ledger.flow_checks % 10 == 0:  # progress: long loops on a busy machine
            print(f"  {ledger.name}: {ledger.flow_checks} done", flush=True)


@pytest.fixture(scope="module")
def rig(lab: LabCluster) -> Iterator[Rig]:
    pods = wait_until("srv and cli running", lambda: _endpoints(lab), 120)
    srv, cli = pods
    sender, receiver = ProbeClient(cli), ProbeClient(srv)
    stream = Stream(sender, receiver, cli, srv)
    # Until srv's policy is in force srv is open to everything: wait for the denial.
    wait_until("udp/3306 denied", lambda: not stream.delivered(3306), 120, interval=0.2)
    wait_until("udp/80 allowed", lambda: stream.delivered(80), 60, interval=0.2)
    wait_until("tcp/80 allowed", lambda: sender.probe("tcp", srv.ipv4, 80, timeout=1.0).ok, 60)
    flow = Flow.open(sender, receiver, "tcp", srv.ipv4, 80)
    receiver.call({"op": "clear_seen"}, 10)
    thread = threading.Thread(target=stream.run, name="stream", daemon=True)
    thread.start()
    try:
        yield Rig(lab, stream, flow, thread)
    finally:
        stream.stop.set()
        thread.join(10)
        with contextlib.suppress(Exception):
            flow.close()


def _endpoints(lab: LabCluster) -> tuple[Any, Any] | None:
    pods, _ = lab.endpoints()
    srv, cli = pods.get(f"{NS}/srv"), pods.get(f"{NS}/cli")
    return (srv, cli) if srv is not None and cli is not None else None


def check(ledger: Ledger, *, allowed_may_be_lost: bool = False) -> None:
    print(ledger.report())
    assert ledger.arrived[False] == 0, f"{ledger.name}: a denied datagram was delivered"
    assert ledger.sent[True] > 0 and ledger.sent[False] > 0
    if not allowed_may_be_lost:
        lost = ledger.sent[True] - ledger.arrived[True]
        assert lost == 0, f"{ledger.name}: {lost} allowed datagrams lost ({ledger.lost_by_round})"


# ----------------------------------------------------------------------------- the loops
@pytest.mark.timeout(2400)
def test_kill_the_agent_50_times(rig: Rig) -> None:
    """The agent leaves its table on SIGKILL; each new agent adopts it in place."""
    name = f"agent-{rig.node1}"
    ledger = Ledger(f"kill -9 the agent ({rig.node1})")
    adopted = 0
    for _ in range(AGENT_KILLS):
        rig.lab.stop_daemon(name, signal.SIGKILL)
        t0 = time.monotonic()
        rig.lab.start_daemon(name)
        metrics: dict[str, float] = wait_until(
            "the restarted agent ready", rig.ready_agent_metrics, DEADLINE, interval=0.05
        )
        ledger.convergence.append(time.monotonic() - t0)
        adopted += int(metrics.get("secgroups_agent_table_adoptions_total", 0))
        rig.settle(ledger)
    ledger.notes.append(f"table adopted in place {adopted} of {AGENT_KILLS} times")
    check(ledger)
    assert adopted == AGENT_KILLS, "a restarted agent rewrote a table it should have adopted"


@pytest.mark.timeout(1200)
def test_kill_the_operator_20_times(rig: Rig) -> None:
    """The agents keep the last policy while the operator is down; a change made right
    after its restart reaches the dataplane."""
    ledger = Ledger("kill -9 the operator")
    on = False
    for _ in range(OPERATOR_KILLS):
        rig.lab.stop_daemon("operator", signal.SIGKILL)
        time.sleep(0.5)  # down for a moment, with the stream running
        rig.lab.start_daemon("operator")
        on = not on
        rig.toggle(on)
        ledger.convergence.append(rig.toggled(on))
        rig.settle(ledger)
    rig.toggle(False)
    rig.toggled(False)
    check(ledger)


@pytest.mark.timeout(1200)
def test_stop_the_api_server_5_times(rig: Rig) -> None:
    """The agents and the operator lose their watches; the policy in force stays — also
    across a restart of node 1's agent while the API server is down (it cannot list: not
    ready, its table untouched); once the API server is back, that agent adopts its table
    and a change reaches the dataplane."""
    cp = rig.lab.cp
    assert cp is not None
    agent = f"agent-{rig.node1}"
    ledger = Ledger(f"stop the API server ({APISERVER_DOWN:.0f} s down, agent restarted)")
    on = False
    adopted = 0
    for _ in range(APISERVER_STOPS):
        cp.stop_apiserver()
        rig.lab.stop_daemon(agent, signal.SIGKILL)
        rig.lab.start_daemon(agent)
        time.sleep(APISERVER_DOWN)
        assert rig.ready_agent_metrics() is None, "an agent without its API server is not ready"
        cp.start_apiserver()
        on = not on
        t0 = time.monotonic()
        wait_until("kubectl works", lambda: _kubectl_ok(rig.lab), DEADLINE)
        # First the restarted agent's own start (nothing changed: it adopts), then a change.
        metrics: dict[str, float] = wait_until(
            "the agent ready", rig.ready_agent_metrics, DEADLINE, interval=0.05
        )
        adopted += int(metrics.get("secgroups_agent_table_adoptions_total", 0))
        rig.toggle(on)
        rig.toggled(on)
        ledger.convergence.append(time.monotonic() - t0)
        rig.settle(ledger)
    ledger.notes.append(
        f"node 1's agent, restarted while it was down, adopted its table {adopted} of "
        f"{APISERVER_STOPS} times"
    )
    assert adopted == APISERVER_STOPS
    rig.toggle(False)
    rig.toggled(False)
    check(ledger)


def _kubectl_ok(lab: LabCluster) -> bool:
    try:
        get(lab, "namespace", NS)
    except Exception:
        return False
    return True


@pytest.mark.timeout(900)
def test_flush_the_table_by_hand_20_times(rig: Rig) -> None:
    """A flushed table forwards nothing until the agent has rewritten it (its nf_tables
    event monitor sees the flush): denied datagrams never pass; allowed ones sent in the
    window are lost (counted), the established connection survives (TCP retransmits)."""
    ledger = Ledger(f"flush the table by hand ({rig.node1})")
    for _ in range(FLUSHES):
        ledger.convergence.append(_flush_and_wait(rig.node1))
        rig.settle(ledger)
    check(ledger, allowed_may_be_lost=True)


def _flush_and_wait(netns: str) -> float:
    from secgroups_agent.nftables import OUTPUT_JSON
    from secgroups_agent.nftworker import LibNftables

    def rules(nft: LibNftables) -> int:
        rc, out, _ = nft.run(f"list table {TABLE}".encode(), OUTPUT_JSON)
        return sum(1 for i in json.loads(out)["nftables"] if "rule" in i) if rc == 0 else -1

    def run() -> float:
        nft = LibNftables()
        want = rules(nft)
        assert want > 0
        t0 = time.monotonic()
        rc, _, err = nft.run(f"flush table {TABLE}".encode())
        assert rc == 0, err
        while rules(nft) != want:
            assert time.monotonic() - t0 < DEADLINE, "the flushed table was not restored"
            time.sleep(0.002)
        return time.monotonic() - t0

    result: float = in_netns(netns, run, timeout=DEADLINE + 10)
    return result


@pytest.mark.timeout(600)
def test_a_compiled_group_edited_by_hand_is_refused(rig: Rig) -> None:
    """Trust (docs/failure-modes.md): with the operator stopped (so that it does not
    rewrite the object at once, as it does when it runs), someone with write access adds
    a rule to srv's compiled group with ``kubectl patch`` — UDP 3306 from the clients. The
    API server records the writer (managedFields: ``kubectl-patch``); node 1's agent
    refuses the object, keeps the operator's version in force and says so in its status.
    The operator, back, writes the object again; the agent takes it."""
    group = "sg.flt.server"
    node = f"{rig.lab.prefix}-n1"
    stored = get(rig.lab, "compiledsecuritygroups.secgroups.dev", group)
    rule = next(r for r in stored["spec"]["ingress"] if r["protocol"] == "UDP")
    injected = {**rule, "id": f"{NS}/injected", "ports": [{"lo": 3306, "hi": 3306}]}
    patch = [{"op": "add", "path": "/spec/ingress/0", "value": injected}]
    ledger = Ledger("a compiled group patched by hand (operator stopped)")
    rig.lab.stop_daemon("operator")
    try:
        rig.lab.kubectl(
            "patch", "compiledsecuritygroups.secgroups.dev", group, "--type=json", "-p",
            json.dumps(patch),
        )  # fmt: skip
        assert "kubectl-patch" in _writers(rig.lab, group)
        reported = wait_until("the refusal in status", lambda: _status(rig.lab, node), DEADLINE)
        assert "kubectl-patch" in reported.get("error", ""), reported
        for _ in range(5):
            time.sleep(1.0)  # the stream runs: UDP 3306 must stay denied
            rig.settle(ledger)
        assert not rig.stream.delivered(3306, timeout=1.0)
    finally:
        rig.lab.start_daemon("operator")
    t0 = time.monotonic()
    wait_until(
        "the operator writes the group again",
        lambda: "kubectl-patch" not in _writers(rig.lab, group),
        DEADLINE,
    )
    wait_until("the agent takes it", lambda: _status(rig.lab, node) is None, DEADLINE)
    ledger.convergence.append(time.monotonic() - t0)
    rig.settle(ledger)
    ledger.notes.append(f"agent status meanwhile: UntrustedWriter: {reported.get('error')}")
    check(ledger)


def _writers(lab: LabCluster, group: str) -> set[str]:
    shown = lab.kubectl(
        "get", "compiledsecuritygroups.secgroups.dev", group, "-o", "json",
        "--show-managed-fields",
    )  # fmt: skip
    return {str(e["manager"]) for e in json.loads(shown)["metadata"]["managedFields"]}


def _status(lab: LabCluster, node: str) -> dict[str, Any] | None:
    """The agent's report while it says an untrusted writer, else None."""
    obj = get(lab, "nodeagentreports.secgroups.dev", node)
    status: dict[str, Any] = obj.get("status") or {}
    return status if status.get("reason") == "UntrustedWriter" else None
