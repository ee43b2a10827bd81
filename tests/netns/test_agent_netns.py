"""The node agent as a real process in a lab node netns, driven by a policy file.

Node 1 of the shared lab runs the agent (``tests/agent_harness.py``); its pods ``a1``
(group web) and ``a2`` (group client) are managed, node 2's pods and the outside host
are not. Real probes (``secgroups_lab.probes``) check that what the kernel does matches
the core evaluator, that a policy change never opens a window, that drift is repaired,
that a deleted pod's conntrack entries go, and that the libnftables worker can die. The
conntrack port's mark operations (the post-commit sweep's reads and writes) are checked
against the kernel in node 2's netns, where no agent runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import threading
from pathlib import Path
from typing import Any

import pytest
from tests import nftcases as nc
from tests.agent_harness import AgentProcess, in_netns

from secgroups.compiled import CompiledPolicy
from secgroups.evaluating import Evaluator, Packet
from secgroups.nft.rendering import render
from secgroups.nft.transactions import full_transaction
from secgroups_lab.matrix import Case, Target, run_matrix
from secgroups_lab.network import OUTSIDE_V4, Lab, PodNet, netns_unavailable, run_in
from secgroups_lab.probes import Endpoint, ProbeClient

_why = netns_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("fresh_conntrack")]

NODE = "n1"
DENIED_TIMEOUT = 1.0
CASES = [
    Case("tcp", 80, 4),
    Case("tcp", 22, 4),
    Case("tcp", 443, 4),
    Case("udp", 5432, 4),
    Case("icmp", 0, 4),
    Case("tcp", 80, 6),
    Case("tcp", 22, 6),
    Case("icmp", 0, 6),
]


# ----------------------------------------------------------------------------- policy
def lab_policy(
    pods: dict[str, PodNet], *, https: bool = False, with_a1: bool = True, a2_epoch: int = 0
) -> CompiledPolicy:
    """a1 in group web (http from anyone, ssh and no GRE from the outside, ping), a2 in
    group client (anything from web, udp/5432, out to web ports)."""
    a1, a2 = pods["a1"], pods["a2"]
    outside = str(OUTSIDE_V4)
    web_set = nc.sg_set(
        "default",
        "web",
        [f"{a1.ipv4}/32"] if with_a1 else [],
        [f"{a1.ipv6}/128"] if with_a1 else [],
    )
    web_rules = [
        nc.rule("default/http", nc.IN, "TCP", [80]),
        nc.rule("default/http6", nc.IN, "TCP", [80], family=nc.V6),
        nc.rule("default/ssh-outside", nc.IN, "TCP", [22], nc.cidr(outside), priority=5),
        nc.rule("default/ping", nc.IN, "ICMP", icmp_type=8, priority=10),
        nc.rule(
            "default/no-gre-outside",
            nc.IN,
            "GRE",
            remote=nc.cidr(outside),
            priority=20,
            action=nc.DENY,
        ),
        nc.rule("default/gre", nc.IN, "GRE", priority=30),
        nc.rule("default/out4", nc.EG, "All"),
        nc.rule("default/out6", nc.EG, "All", family=nc.V6),
    ]
    if https:
        web_rules.append(nc.rule("default/https", nc.IN, "TCP", [443], priority=40))
    web = nc.group("default", "web", web_rules)
    client = nc.group(
        "default",
        "client",
        [
            nc.rule("default/from-web", nc.IN, "All", remote=nc.ref(web_set[0])),
            nc.rule("default/from-web6", nc.IN, "All", remote=nc.ref(web_set[0]), family=nc.V6),
            nc.rule("default/pg", nc.IN, "UDP", [5432], priority=2),
            nc.rule("default/to-web", nc.EG, "TCP", [80, 443, 22]),
            nc.rule("default/to-web6", nc.EG, "TCP", [80], family=nc.V6),
            nc.rule("default/ping-out", nc.EG, "ICMP"),
        ],
    )
    members = [nc.pod("default", "a2", a2.ips, [client[0]], epoch=a2_epoch)]
    if with_a1:
        members.append(nc.pod("default", "a1", a1.ips, [web[0]]))
    return nc.policy([web, client], [web_set], members, node=NODE)


def expected_by(policy: CompiledPolicy) -> Any:
    ev = Evaluator(policy)

    def expected(src: Endpoint, dst: Target, case: Case) -> bool:
        s = src.ipv4 if case.family == 4 else src.ipv6
        d = case.address(dst)
        return ev.evaluate(Packet.make(s, d, case.proto, case.port or None)).allowed

    return expected


def check_matrix(lab: Lab, pods: dict[str, PodNet], policy: CompiledPolicy) -> None:
    """Probes vs the evaluator. GRE has no ports, so conntrack sees one flow per address
    pair whatever the direction: GRE is probed inbound first, then outbound, so that an
    allowed packet one way never turns the other way's first packet into a reply."""
    assert lab.outside is not None
    expected = expected_by(policy)
    hosts: list[Any] = [pods["a1"], pods["a2"], pods["b1"], lab.outside]
    no_gre = [c for c in CASES if c.proto != "gre"]
    run_matrix(hosts, no_gre, expected, timeout=DENIED_TIMEOUT).assert_matches()
    gre = [Case("gre", 0, 4), Case("gre", 0, 6)]
    managed: list[Any] = [pods["a1"], pods["a2"]]
    others: list[Any] = [pods["b1"], lab.outside]
    for sources, destinations in ((others, managed), (managed, others)):
        result = run_matrix(
            sources, gre, expected, destinations=destinations, timeout=DENIED_TIMEOUT
        )
        result.assert_matches()


def conntrack_lines(lab: Lab, ip: str) -> list[str]:
    """Entries of node 1 whose original or reply source is ``ip``."""
    family = "ipv6" if ":" in ip else "ipv4"
    out: list[str] = []
    for flag in ("--orig-src", "--reply-src"):
        proc = run_in(lab.node_netns(1), ["conntrack", "-L", "-f", family, flag, ip], check=False)
        out += [line for line in proc.stdout.splitlines() if line.strip()]
    return out


# ----------------------------------------------------------------------------- tests
def test_agent_enforces_the_policy_and_serves_health_and_metrics(
    lab: Lab, pods: dict[str, PodNet], agent: AgentProcess
) -> None:
    policy = lab_policy(pods)
    agent.start(policy)
    status = agent.status()
    assert status is not None and status.pods == 2 and status.rules > 0
    check_matrix(lab, pods, policy)
    assert agent.http("/healthz")[0] == 200
    assert agent.http("/readyz")[0] == 200
    m = agent.metrics()
    assert m["secgroups_agent_ready"] == 1.0
    assert m['secgroups_agent_syncs_total{kind="full"}'] >= 1
    assert m["secgroups_agent_rules"] == status.rules
    assert m['secgroups_agent_set_elements{set="pods4"}'] == 2.0
    assert agent.worker_pid() is not None
    records = agent.log_records()
    assert any(r["msg"] == "applied" and r["fields"]["kind"] == "full" for r in records)
    assert all({"time", "level", "msg"} <= r.keys() for r in records)


def test_a_policy_change_is_applied_atomically(
    lab: Lab, pods: dict[str, PodNet], agent: AgentProcess
) -> None:
    """Rule rewrites of a1's group flip https on and off while the outside keeps opening
    connections to http (always allowed) and an established flow keeps talking: no
    attempt may fail, and https follows the policy."""
    assert lab.outside is not None
    outside = lab.client(lab.outside)
    a1 = pods["a1"]
    agent.start(lab_policy(pods))
    flow = outside.open_flow("tcp", a1.ipv4, 80)
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = outside.probe("tcp", a1.ipv4, 80, timeout=2.0)
            if not r.ok:
                failures.append(f"new connection: {r.reason}")
            c = outside.check(flow, timeout=2.0)
            if not c.ok:
                failures.append(f"established flow: {c.reason}")

    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    try:
        for i in range(12):
            agent.apply(lab_policy(pods, https=i % 2 == 0))
    finally:
        stop.set()
        t.join(30)
    outside.close(flow)
    assert failures == []
    final = lab_policy(pods, https=True)
    agent.apply(final)
    assert outside.probe("tcp", a1.ipv4, 443, timeout=DENIED_TIMEOUT).ok
    agent.apply(lab_policy(pods))
    assert not outside.probe("tcp", a1.ipv4, 443, timeout=DENIED_TIMEOUT).ok
    m = agent.metrics()
    assert m['secgroups_agent_syncs_total{kind="incremental"}'] >= 13


def test_drift_is_repaired(lab: Lab, pods: dict[str, PodNet], agent: AgentProcess) -> None:
    assert lab.outside is not None
    outside = lab.client(lab.outside)
    a1 = pods["a1"]
    policy = lab_policy(pods)
    agent.start(policy)
    status = agent.status()
    assert status is not None
    rules = status.rules

    def kernel_rules() -> int:
        doc = agent.table_json()
        return sum(1 for item in doc["nftables"] if "rule" in item)

    assert kernel_rules() == rules
    agent.nft("flush table inet secgroups")  # someone flushed our rules: all traffic passes
    agent.wait_for(lambda: kernel_rules() == rules, "the rules to come back")
    assert not outside.probe("tcp", a1.ipv4, 443, timeout=DENIED_TIMEOUT).ok
    agent.nft("delete table inet secgroups")  # or deleted the whole table
    agent.wait_for(
        lambda: "secgroups" in agent.nft("list tables") and kernel_rules() == rules,
        "the table to come back",
    )
    agent.nft("delete element inet secgroups pods4 { " + a1.ipv4 + " }")  # or one element
    agent.wait_for(
        lambda: a1.ipv4 in agent.nft("list set inet secgroups pods4"), "the element to come back"
    )
    check_matrix(lab, pods, policy)
    assert agent.metrics()["secgroups_agent_drift_detected_total"] >= 3


def test_a_deleted_pods_conntrack_entries_are_deleted(
    lab: Lab, pods: dict[str, PodNet], agent: AgentProcess
) -> None:
    assert lab.outside is not None
    outside = lab.client(lab.outside)
    a1, a2 = pods["a1"], pods["a2"]
    agent.start(lab_policy(pods))
    flows = [
        outside.open_flow("tcp", a1.ipv4, 80),
        outside.open_flow("tcp", a1.ipv6, 80),
        lab.client(a2).open_flow("tcp", a1.ipv4, 80),
        outside.open_flow("icmp", a1.ipv4),
    ]
    other = lab.client(a1).open_flow("tcp", a2.ipv4, 80)  # a1 -> a2: a1 is orig-src
    try:
        assert conntrack_lines(lab, a1.ipv4) and conntrack_lines(lab, a1.ipv6)
        before_a2 = conntrack_lines(lab, a2.ipv4)
        agent.apply(lab_policy(pods, with_a1=False))  # a1 deleted
        assert conntrack_lines(lab, a1.ipv4) == []
        assert conntrack_lines(lab, a1.ipv6) == []
        # a2's own entries (a2 -> a1 went: it involved a1; others stay)
        assert len(conntrack_lines(lab, a2.ipv4)) <= len(before_a2)
        assert agent.metrics()["secgroups_agent_conntrack_entries_deleted_total"] >= 4
    finally:
        for f in flows:
            with contextlib.suppress(Exception):
                ProbeClient(f.owner).close(f)
        with contextlib.suppress(Exception):
            lab.client(a1).close(other)


def _pending_bytes(pid: int, fd: int) -> int:
    """Bytes waiting in the pipe that is ``fd`` of process ``pid`` (not consumed)."""
    rfd = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    try:
        buf = bytearray(4)
        fcntl.ioctl(rfd, termios.FIONREAD, buf)
        return int.from_bytes(buf, "little")
    finally:
        os.close(rfd)


def test_the_agent_survives_its_libnftables_worker_being_killed(
    lab: Lab, pods: dict[str, PodNet], agent: AgentProcess
) -> None:
    policy = lab_policy(pods)
    agent.start(policy)
    # Killed between transactions: the next change starts a new worker.
    first = agent.worker_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    agent.apply(lab_policy(pods, https=True))
    second = agent.worker_pid()
    assert second not in (None, first)
    assert agent.metrics()["secgroups_agent_nft_worker_restarts_total"] == 1.0

    # Killed in the middle of a transaction: the agent reports it and resyncs in full.
    os.kill(second, signal.SIGSTOP)
    req_fd = int(Path(f"/proc/{second}/cmdline").read_bytes().split(b"\0")[3])
    gen = agent.generation + 1
    agent._write(policy)  # the agent reads it and sends the transaction to the frozen worker
    agent.wait_for(lambda: _pending_bytes(second, req_fd) > 0, "a transaction in flight")
    os.kill(second, signal.SIGKILL)
    agent.wait_applied(gen)
    m = agent.metrics()
    assert m['secgroups_agent_sync_errors_total{reason="NftWorkerCrashed"}'] == 1.0
    assert m['secgroups_agent_syncs_total{kind="full"}'] >= 2
    assert agent.http("/healthz")[0] == 200
    agent.apply(lab_policy(pods, https=True))  # and the worker is used again afterwards
    assert agent.worker_pid() not in (None, first, second)
    check_matrix(lab, pods, lab_policy(pods, https=True))


def _normalized(doc: dict[str, Any]) -> list[str]:
    """A listing without handles: objects sorted, elements sorted, rules grouped by chain
    (in their order within the chain: the kernel lists chains in creation order)."""
    objects: list[str] = []
    rules: dict[str, list[str]] = {}
    for item in doc["nftables"]:
        (kind, obj), *_ = item.items()
        if kind == "metainfo":
            continue
        obj = {k: v for k, v in obj.items() if k != "handle"}
        if "elem" in obj:
            obj["elem"] = sorted(obj["elem"], key=json.dumps)
        text = json.dumps({kind: obj}, sort_keys=True)
        if kind == "rule":
            rules.setdefault(obj["chain"], []).append(text)
        else:
            objects.append(text)
    return sorted(objects) + [r for chain in sorted(rules) for r in rules[chain]]


def test_incremental_changes_leave_the_same_table_as_a_full_load(
    lab: Lab, pods: dict[str, PodNet], agent: AgentProcess, tmp_path: Path
) -> None:
    agent.start(lab_policy(pods))
    agent.apply(lab_policy(pods, https=True))
    agent.apply(lab_policy(pods, https=True, a2_epoch=3))
    agent.apply(lab_policy(pods, with_a1=False, a2_epoch=3))
    final = lab_policy(pods, https=True, a2_epoch=4)
    agent.apply(final)
    incremental = _normalized(agent.table_json())
    ifaces = {ip: p.host_ifname for p in (pods["a1"], pods["a2"]) for ip in p.ips}
    text = full_transaction(render(final, NODE, ifaces))
    scratch = "ksgagent-scratch"
    subprocess.run(["ip", "netns", "add", scratch], check=True)
    try:
        subprocess.run(
            ["nsenter", f"--net=/run/netns/{scratch}", "--", "nft", "-f", "-"],
            input=text,
            text=True,
            check=True,
            capture_output=True,
        )
        listing = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{scratch}",
                "--",
                "nft",
                "-j",
                "list",
                "table",
                "inet",
                "secgroups",
            ],
            text=True,
            check=True,
            capture_output=True,
        ).stdout
    finally:
        subprocess.run(["ip", "netns", "del", scratch], check=False)
    assert incremental == _normalized(json.loads(listing))


def test_a_restart_keeps_enforcing_and_keeps_established_flows(
    lab: Lab, pods: dict[str, PodNet], tmp_path: Path
) -> None:
    assert lab.outside is not None
    outside = lab.client(lab.outside)
    a1 = pods["a1"]
    policy = lab_policy(pods)
    first = AgentProcess(lab.node_netns(1), NODE, tmp_path, delete_table_on_stop=False)
    first.start(policy)
    flow = outside.open_flow("tcp", a1.ipv4, 80)
    try:
        assert first.stop() == 0
        # Stopped: the table stays, so the policy is still enforced.
        assert not outside.probe("tcp", a1.ipv4, 443, timeout=DENIED_TIMEOUT).ok
        with AgentProcess(lab.node_netns(1), NODE, tmp_path / "second") as second:
            second.start(policy)
            assert outside.check(flow).ok
            check_matrix(lab, pods, policy)
    finally:
        with contextlib.suppress(Exception):
            outside.close(flow)


def test_the_cli_backend_applies_and_changes_policy(
    lab: Lab, pods: dict[str, PodNet], tmp_path: Path
) -> None:
    assert lab.outside is not None
    outside = lab.client(lab.outside)
    with AgentProcess(lab.node_netns(1), NODE, tmp_path, backend="cli") as agent:
        agent.start(lab_policy(pods))
        assert agent.worker_pid() is None
        agent.apply(lab_policy(pods, https=True))
        assert outside.probe("tcp", pods["a1"].ipv4, 443, timeout=DENIED_TIMEOUT).ok


def test_pod_interfaces_come_from_the_nodes_routes(
    lab: Lab, pods: dict[str, PodNet], agent: AgentProcess
) -> None:
    agent.start(lab_policy(pods))
    listing = agent.nft("list set inet secgroups pod_src4")
    for name in ("a1", "a2"):
        p = pods[name]
        assert f'"{p.host_ifname}" . {p.ipv4}' in listing
    from secgroups_agent.interfaces import RouteInterfaces

    found = in_netns(
        lab.node_netns(1),
        lambda: RouteInterfaces().resolve([pods["a1"].ipv4, pods["a1"].ipv6, pods["b1"].ipv4]),
    )
    assert found == {
        pods["a1"].ipv4: pods["a1"].host_ifname,
        pods["a1"].ipv6: pods["a1"].host_ifname,
    }
    # Every pod of the node, in the policy or not, and nothing through the uplink (which
    # carries subnet routes): the anti-spoofing map (docs/nftables.md#anti-spoofing).
    routed = in_netns(lab.node_netns(1), lambda: RouteInterfaces().routed())
    assert routed == {
        ip: p.host_ifname for p in (pods["a1"], pods["a2"]) for ip in (p.ipv4, p.ipv6)
    }


# ----------------------------------------------------------------------------- conntrack port
CT_ENTRIES = [  # conntrack -I arguments (after -s/-d), mark
    ("10.77.0.1 10.77.0.2 -p tcp --sport 40000 --dport 80 --state ESTABLISHED", 5),
    ("10.77.0.1 10.77.0.2 -p udp --sport 40001 --dport 53", 5),
    ("10.77.0.1 10.77.0.2 -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 7", 5),
    ("10.77.0.1 10.77.0.2 -p gre --srckey 0 --dstkey 0", 5),
    ("10.77.0.3 10.77.0.2 -p tcp --sport 40002 --dport 80 --state ESTABLISHED -w 7", 5),
    ("fd77::1 fd77::2 -p tcp --sport 40003 --dport 443 --state ESTABLISHED", 5),
    ("fd77::1 fd77::2 -p icmpv6 --icmpv6-type 128 --icmpv6-code 0 --icmpv6-id 9", 5),
    ("10.77.0.1 10.77.0.2 -p tcp --sport 40004 --dport 80 --state ESTABLISHED", 6),
]
PORT_SNIPPET = """
import dataclasses, json
from secgroups_agent.conntrack import NetlinkConntrack
ct = NetlinkConntrack(batch=3)  # several batches, the vanished entry in the last one
flows = ct.dump_marks([5])[5]
both = ct.dump_marks([5, 6])  # one walk (a filter on the bits they share) finds both
gone = dataclasses.replace(flows[0], orig_src="10.77.0.99" if flows[0].family == 4 else "fd77::99")
done = ct.set_marks([(f, 0xFFFFFFFF if i % 2 else 9) for i, f in enumerate(flows)] + [(gone, 9)])
after = ct.dump_marks([5, 6, 9, 0xFFFFFFFF])
print(json.dumps({"flows": [dataclasses.asdict(f) for f in flows], "done": done,
                  "both": {m: len(fs) for m, fs in both.items()},
                  "after": [len(after[m]) for m in (5, 6, 9, 0xFFFFFFFF)]}))
"""


def test_the_conntrack_port_reads_and_marks_entries_by_mark(lab: Lab) -> None:
    """dump_marks: one kernel-side filter returns both families, every protocol's tuple (TCP,
    UDP, ICMP, GRE keys, ICMPv6) and the zone; set_marks finds each entry by its original
    tuple and zone (the pitfalls of docs/nftables.md#conntrack-over-netlink-filters-pitfalls-speed)
    and reports an entry that is gone."""
    netns = lab.node_netns(2)
    try:
        for args, mark in CT_ENTRIES:
            src, dst, *rest = args.split()
            cmd = ["conntrack", "-I", "-s", src, "-d", dst, *rest, "-t", "120", "-m", str(mark)]
            run_in(netns, cmd)
        proc = run_in(netns, [sys.executable, "-c", PORT_SNIPPET])
        got = json.loads(proc.stdout)
        flows = got["flows"]
        assert len(flows) == 7 and {f["mark"] for f in flows} == {5}
        assert {(f["family"], f["proto"]) for f in flows} == {
            (4, 6), (4, 17), (4, 1), (4, 47), (6, 6), (6, 58)
        }  # fmt: skip
        icmp = next(f for f in flows if f["proto"] == 1)
        assert (icmp["icmp_type"], icmp["icmp_code"], icmp["icmp_id"]) == (8, 0, 7)
        assert next(f for f in flows if f["proto"] == 47)["orig_sport"] == 0  # GRE key
        tcp = next(f for f in flows if f["orig_sport"] == 40003)
        assert (tcp["reply_src"], tcp["reply_sport"]) == ("fd77::2", 443)
        assert next(f for f in flows if f["orig_src"] == "10.77.0.3")["zone"] == 7
        assert got["both"] == {"5": 7, "6": 1}
        assert got["done"] == [True] * 7 + [False]
        assert got["after"] == [0, 1, 4, 3]  # mark 5 gone, 6 untouched, 9 and the tombstone
    finally:
        for family, src in (("ipv4", "10.77.0.1"), ("ipv4", "10.77.0.3"), ("ipv6", "fd77::1")):
            run_in(netns, ["conntrack", "-D", "-f", family, "-s", src], check=False)
            run_in(netns, ["conntrack", "-D", "-f", family, "-s", src, "-w", "7"], check=False)


DELETE_ENTRIES = [  # conntrack -I arguments: entries of 100.64.77.2 / fd77::2 as orig or reply
    "-s 100.64.77.1 -d 100.64.77.2 -p tcp --sport 41000 --dport 80 --state ESTABLISHED",
    "-s 100.64.77.2 -d 100.64.77.9 -p udp --sport 41001 --dport 53",
    "-s 100.64.77.1 -d 100.64.77.2 -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 3",
    "-s 100.64.77.1 -d 100.64.77.2 -p tcp --sport 41002 --dport 80 --state ESTABLISHED -w 7",
    "-s fd77::1 -d fd77::2 -p tcp --sport 41003 --dport 443 --state ESTABLISHED",
    "-s 100.64.77.1 -d 100.64.77.3 -p tcp --sport 41004 --dport 80 --state ESTABLISHED",
]
DELETE_SNIPPET = """
import json, sys
from secgroups_agent import conntrack
if sys.argv[1] == "filters":
    conntrack.ENTRIES_PER_WALK = 0  # as in a large table: two tuple-filtered dumps per IP
print(json.dumps(conntrack.NetlinkConntrack().delete_ips(["100.64.77.2", "fd77::2"])))
"""


@pytest.mark.parametrize("way", ["one walk", "filters"])
def test_the_conntrack_port_deletes_an_ips_entries_either_way(lab: Lab, way: str) -> None:
    """delete_ips: every entry whose original or reply source is one of the IPs (both
    families, every protocol, any zone), and nothing else — in one walk of the table
    that reads the namespace's entries, or by kernel-side tuple filters (a large table)."""
    netns = lab.node_netns(2)
    try:
        for args in DELETE_ENTRIES:
            run_in(netns, ["conntrack", "-I", *args.split(), "-t", "120"])
        proc = run_in(
            netns, [sys.executable, "-c", DELETE_SNIPPET, "filters" if way == "filters" else "-"]
        )
        assert json.loads(proc.stdout) == 5
        left = run_in(netns, ["conntrack", "-L", "-o", "extended"], check=False).stdout
        left += run_in(netns, ["conntrack", "-L", "-w", "7"], check=False).stdout
        assert "100.64.77.3" in left  # unrelated: kept
        assert "100.64.77.2" not in left and "fd77::2" not in left
    finally:
        for family, src in (("ipv4", "100.64.77.1"), ("ipv4", "100.64.77.2"), ("ipv6", "fd77::1")):
            run_in(netns, ["conntrack", "-D", "-f", family, "-s", src], check=False)
            run_in(netns, ["conntrack", "-D", "-f", family, "-s", src, "-w", "7"], check=False)
