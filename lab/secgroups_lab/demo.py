"""The README's demo: the spec's own example (Sg-A, Sg-B, rules A01, A02, B01, B02) live.

``secgroups-lab demo up`` starts the lab (3 nodes, operator, agents), applies
``examples/``, waits until every pod runs and every node agent has applied its
compiled policy, then prints the connectivity matrix: expected (the core's evaluator
over what the API server holds) beside observed (real probes between the pods' network
namespaces and the outside host), and their difference. ``secgroups-lab demo down``
removes it all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secgroups.compiling import compile_policy
from secgroups.evaluating import Evaluator, Packet
from secgroups.facts import ClusterFacts
from secgroups_lab.cluster import REPO, LabCluster, LabError
from secgroups_lab.matrix import Case, MatrixResult, Target, cases, run_matrix
from secgroups_lab.probes import Endpoint

EXAMPLES = REPO / "examples"
KINDS = "namespaces,nodes,pods,securitygroups,securitygrouprules,ipaddressgroups"


def cluster_facts(lab: LabCluster) -> ClusterFacts:
    """What the API server holds, as the compiler's input (the same objects the operator sees)."""
    items = json.loads(lab.kubectl("get", KINDS, "-A", "-o", "json"))["items"]
    return ClusterFacts.from_manifests(items)


def expectation(facts: ClusterFacts) -> Callable[[Endpoint, Target, Case], bool]:
    """The evaluator's verdict for one matrix cell (a new connection's first packet)."""
    evaluator = Evaluator(compile_policy(facts).policy)

    def expected(src: Endpoint, dst: Target, case: Case) -> bool:
        src_ip = src.ipv4 if case.family == 4 else src.ipv6
        dst_ip = case.address(dst)
        packet = Packet.make(src_ip, dst_ip, case.proto, case.port or None)
        return evaluator.evaluate(packet).allowed

    return expected


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, say: Callable[[str], None]
) -> None:
    t0 = time.monotonic()
    deadline = t0 + timeout
    while not check():
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)
    say(f"{what} ({time.monotonic() - t0:.1f} s)")


def pods_running(lab: LabCluster, namespace: str) -> bool:
    pods = json.loads(lab.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    return bool(pods) and all((p.get("status") or {}).get("phase") == "Running" for p in pods)


def agents_applied(lab: LabCluster) -> bool:
    """Every node's CompiledNodePolicy has been applied by its agent at its current generation."""
    out = lab.kubectl("get", "compilednodepolicies", "-o", "json", check=False)
    try:
        items = json.loads(out)["items"]
    except ValueError:
        return False
    if len(items) < lab.nodes:
        return False
    return all(
        (i.get("status") or {}).get("appliedGeneration") == i["metadata"].get("generation")
        for i in items
    )


def matrix(lab: LabCluster, namespace: str = "demo") -> MatrixResult:
    pods, outside = lab.endpoints()
    sources: list[Any] = [p for k, p in sorted(pods.items()) if k.startswith(f"{namespace}/")]
    if outside is not None:
        sources.append(outside)
    facts = cluster_facts(lab)
    return run_matrix(
        sources,
        cases(protos=("tcp", "icmp"), ports=(22, 80), families=(4, 6)),
        expectation(facts),
        timeout=1.0,
    )


def up(prefix: str = "ksg", nodes: int = 3) -> int:
    lab = LabCluster(prefix=prefix, nodes=nodes)
    lab.up()
    say = lab.progress
    files = examples()
    # The examples name the default lab's nodes (ksg-n1…); another prefix has other names.
    text = "\n---\n".join(
        f.read_text().replace("nodeName: ksg-n", f"nodeName: {prefix}-n") for f in files
    )
    lab.kubectl("apply", "--server-side", "-f", "-", input_text=text)
    say(f"applied {', '.join(f'examples/{f.name}' for f in files)}")
    wait_for("demo pods running", lambda: pods_running(lab, "demo"), 60.0, say)
    wait_for("node agents applied the compiled policy", lambda: agents_applied(lab), 60.0, say)
    result = matrix(lab)
    print(result.render())
    print(
        f"\n{result.probes} probes, {len(result.mismatches)} mismatches. "
        f"The lab keeps running: export KUBECONFIG={lab.kubeconfig}; "
        f"`secgroups-lab demo down` removes it."
    )
    return 1 if result.mismatches else 0


def down(prefix: str = "ksg") -> int:
    LabCluster(prefix=prefix).down()
    return 0


def examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))
