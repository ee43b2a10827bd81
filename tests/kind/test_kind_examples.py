"""examples/ (the spec's Sg-A/Sg-B, and a pod in the default group) end to end, the same
test bodies on both e2e providers (``[kind]``: the chart's pods on a 3-node kind cluster;
``[lab]``: the netns lab):

* the reachability truth table from inside the real pods, on three nodes, equals the core
  evaluator's over what the API server holds (printed side by side on a mismatch);
* one S-CT-2 row with live TCP connections (row 5: an inbound rule of Sg-A modified, so
  every pod of Sg-A is re-checked — the operator raises Sg-A's re-check counter in its
  compiled group, which changes the epoch marks of exactly a1 and a2): the connection
  the new rule still allows carries on
  (the same socket, twice), the one it denies stops at its next packet — from either end,
  with no conntrack entry flipped to the pod's side — a connection to a pod of another
  group is untouched, and new connections follow the evaluator.
"""

from __future__ import annotations

from typing import Any

from tests.kind.conftest import NS, PODS, Examples, wait_until
from tests.kind.providers import apply, get

from secgroups.compiled import CompiledAddressSetSpec, CompiledGroupSpec, CompiledPod
from secgroups.nft.epochs import pod_mark
from secgroups_lab import demo
from secgroups_lab.matrix import Case, cases, run_matrix
from secgroups_lab.probes import Flow, ProbeClient

DENIED = 1.0  # seconds a probe expected denied is given
ALLOWED = 5.0  # ... and one expected allowed (a loaded machine answers late, never wrongly)


def test_examples_matrix_from_real_pods_equals_the_evaluator(examples: Examples) -> None:
    """S-X-1..3, S-D-1/2, S-M-4/5: every pod to every pod (TCP 22 and 80, UDP 80, ICMP;
    IPv6 too in the lab) on three nodes, observed = the evaluator's verdict."""
    c = examples.cluster
    nodes = {c.node_of(NS, p) for p in PODS}
    assert len(nodes) == 3, f"the demo pods must spread over three nodes: {nodes}"
    result = run_matrix(
        [examples.pods[p] for p in PODS],
        cases(protos=("tcp", "udp", "icmp"), ports=(22, 80), families=c.families),
        demo.expectation(c.facts()),
        timeout=DENIED,
        allowed_timeout=ALLOWED,
    )
    print(result.render())
    result.assert_matches()
    allowed = sum(result.expected.values())
    assert 0 < allowed < result.probes, "the matrix must hold allowed and denied cells"


def a02(protocol: str, ports: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "securityGroup": "sg-a",
        "direction": "Ingress",
        "ipFamily": "IPv4",
        "protocol": protocol,
        "remote": {"securityGroup": {"name": "sg-a"}},
        "description": "A02 members of Sg-A talk to each other",
    }
    if ports:
        spec["ports"] = ports
    return {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "SecurityGroupRule",
        "metadata": {"name": "a02", "namespace": NS},
        "spec": spec,
    }


def flipped(examples: Examples, server: str, client: str, port: int) -> list[str]:
    """conntrack entries on the server pod's node with the SERVER as the original source
    of that connection (a flipped entry would make the client's packets replies)."""
    c = examples.cluster
    proc = c.node_run(
        c.node_of(NS, server),
        ["conntrack", "-L", "-p", "tcp", "--orig-src", examples.ip(server),
         "--orig-dst", examples.ip(client), "--sport", str(port)],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith("tcp")]


def marks(examples: Examples) -> dict[str, int]:
    """Each demo pod's epoch mark, from the compiled objects the API server holds: its
    epoch and the re-check counters of its groups and of the sets they name inbound (what
    the operator raises for the pods S-CT-2 re-checks; the agents re-check the connections
    stamped with an older mark)."""
    c = examples.cluster
    groups = {
        o["metadata"]["name"]: CompiledGroupSpec.model_validate(o["spec"])
        for o in get(c, "compiledsecuritygroups")["items"]
    }
    sets = {
        o["metadata"]["name"]: CompiledAddressSetSpec.model_validate(o["spec"])
        for o in get(c, "compiledaddresssets")["items"]
    }
    return {
        p["name"]: pod_mark(CompiledPod.model_validate(p), groups, sets)
        for o in get(c, "compilednodepolicies")["items"]
        for p in (o["spec"].get("pods") or [])
        if p["namespace"] == NS
    }


def test_s_ct_2_row_5_live_tcp_connections(examples: Examples) -> None:
    """S-CT-2 row 5, S-CT-1: A02 (Sg-A members: any protocol) becomes TCP 80 only. Live
    connections opened before: a2→a1:80 (still allowed), a2→a1:22 (now denied),
    b2→b1:80 (Sg-B, not re-checked)."""
    c = examples.cluster
    a1, a2 = ProbeClient(examples.pods["a1"]), ProbeClient(examples.pods["a2"])
    b1, b2 = ProbeClient(examples.pods["b1"]), ProbeClient(examples.pods["b2"])
    flows = {
        "a2->a1:80 (allowed after)": Flow.open(a2, a1, "tcp", examples.ip("a1"), 80),
        "a2->a1:22 (denied after)": Flow.open(a2, a1, "tcp", examples.ip("a1"), 22),
        "b2->b1:80 (Sg-B, untouched)": Flow.open(b2, b1, "tcp", examples.ip("b1"), 80),
    }
    keep, cut, other = flows.values()
    assert get(c, "sgr", "-n", NS, "a02")["spec"]["protocol"] == "All"
    before = marks(examples)
    try:
        assert all(f.check(timeout=ALLOWED).ok for f in flows.values())
        apply(c, [a02("TCP", "80")])
        wait_until(
            "the change enforced: a new a2->a1:22 connection refused",
            lambda: not a2.probe("tcp", examples.ip("a1"), 22, timeout=DENIED).ok,
            60,
        )
        after = wait_until(
            "the marks of Sg-A's pods changed",
            lambda: (e := marks(examples))["a1"] != before["a1"] and e["a2"] != before["a2"] and e,
            60,
        )
        raised = sorted(p for p in PODS if after[p] != before[p])
        problems = [] if raised == ["a1", "a2"] else [f"re-checked {raised}, S-CT-2 row 5: a1, a2"]
        for name, flow, want in (
            ("next packet", cut, False),
            ("next packet", keep, True),
            ("again, the same connection", keep, True),
            ("next packet", other, True),
        ):
            res = flow.check(timeout=ALLOWED if want else DENIED)
            if res.ok != want:
                problems.append(f"{flow_name(flows, flow)} {name}: {res}")
        res = cut.check(from_server=True, timeout=DENIED)
        if res.ok:
            problems.append("a1 speaking first on the cut connection reached a2")
        if left := flipped(examples, "a1", "a2", 22):
            problems.append(f"a flipped conntrack entry for the cut connection: {left}")
        expected = demo.expectation(c.facts())
        for port in (22, 80):
            want = expected(examples.pods["a2"], examples.pods["a1"], Case("tcp", port, 4))
            assert want == (port == 80)
            res = a2.probe("tcp", examples.ip("a1"), port, timeout=ALLOWED if want else DENIED)
            if res.ok != want:
                problems.append(f"new a2->a1:{port}: evaluator {want}, observed {res}")
        assert problems == [], "\n".join(problems)
    finally:
        for f in flows.values():
            f.close()
        apply(c, [a02("All")])
        wait_until(
            "A02 restored: a2 reaches a1:22 again",
            lambda: a2.probe("tcp", examples.ip("a1"), 22, timeout=DENIED).ok,
            60,
        )


def flow_name(flows: dict[str, Flow], flow: Flow) -> str:
    return next(name for name, f in flows.items() if f is flow)
