"""The e2e cluster fixture's two providers, so that one test body runs on both:

* :class:`KindProvider` — the 3-node kind cluster of ``hack/kind.sh`` with the chart
  installed by helm: the operator and the agents are the chart's pods, the workloads are
  real containers made by the kubelet and the CNI, Services go through kube-proxy;
* :class:`LabProvider` — the netns lab (:class:`secgroups_lab.cluster.LabCluster`): the
  same operator and agents as processes, pods as network namespaces of the simulated
  kubelet, IPv6 too.

Both give the test the same things: kubectl, the node names, the examples' objects made
fit for the provider's nodes, probe endpoints of running pods (:class:`Endpoint`, so
:func:`secgroups_lab.matrix.run_matrix` and :class:`secgroups_lab.probes.Flow` work on
either), a command in a node's network namespace, and "every agent applied its policy".
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from secgroups.facts import ClusterFacts
from secgroups_lab import demo
from secgroups_lab import kind as kindlib
from secgroups_lab._cmd import in_netns
from secgroups_lab.cluster import LabCluster
from secgroups_lab.matrix import Family
from secgroups_lab.probes import Endpoint, ProbeClient


class E2ECluster(Protocol):
    name: str
    families: tuple[Family, ...]

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str: ...
    def nodes(self) -> list[str]: ...
    def examples(self) -> list[dict[str, Any]]: ...
    def endpoints(self, namespace: str, names: Iterable[str]) -> dict[str, Endpoint]: ...
    def node_run(self, node: str, argv: Sequence[str]) -> subprocess.CompletedProcess[str]: ...
    def node_of(self, namespace: str, pod: str) -> str: ...
    def settled(self) -> bool: ...
    def facts(self) -> ClusterFacts: ...


def apply(cluster: E2ECluster, docs: Iterable[Mapping[str, Any]]) -> None:
    text = "\n---\n".join(json.dumps(d) for d in docs)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_text=text)


def get(cluster: E2ECluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json"))


@dataclass
class KindProvider:
    kind: kindlib.Kind
    probe_image: str
    name: str = "kind"
    families: tuple[Family, ...] = (4,)  # kind-config.yaml: ipFamily ipv4

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        return self.kind.kubectl(*args, input_text=input_text, check=check)

    def nodes(self) -> list[str]:
        return self.kind.nodes()

    def examples(self) -> list[dict[str, Any]]:
        return kindlib.examples_for(self.nodes(), self.probe_image)

    def endpoints(self, namespace: str, names: Iterable[str]) -> dict[str, Endpoint]:
        return dict(kindlib.wait_probes(self.kind, namespace, names))

    def node_run(self, node: str, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return self.kind.node_exec(node, argv, check=False)

    def node_of(self, namespace: str, pod: str) -> str:
        return str(get(self, "pod", "-n", namespace, pod)["spec"]["nodeName"])

    def settled(self) -> bool:
        return kindlib.agents_applied(self.kind)

    def facts(self) -> ClusterFacts:
        return self.kind.facts()


@dataclass
class LabProvider:
    lab: LabCluster
    name: str = "lab"
    families: tuple[Family, ...] = (4, 6)

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        return self.lab.kubectl(*args, input_text=input_text, check=check)

    def nodes(self) -> list[str]:
        return self.lab.node_names()

    def examples(self) -> list[dict[str, Any]]:
        """examples/ as the lab demo applies them: the pods on this lab's nodes."""
        docs = []
        for path in demo.examples():
            text = path.read_text().replace("nodeName: ksg-n", f"nodeName: {self.lab.prefix}-n")
            docs += [d for d in yaml.safe_load_all(text) if d]
        return docs

    def endpoints(self, namespace: str, names: Iterable[str]) -> dict[str, Endpoint]:
        names = sorted(names)
        deadline = time.monotonic() + 60
        while True:
            pods, _ = self.lab.endpoints()
            eps = {n: pods[f"{namespace}/{n}"] for n in names if f"{namespace}/{n}" in pods}
            if len(eps) == len(names) and all(ProbeClient(e).ping() for e in eps.values()):
                return eps
            if time.monotonic() > deadline:
                raise AssertionError(f"lab pods not ready: {sorted(set(names) - set(eps))}")
            time.sleep(0.2)

    def node_run(self, node: str, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            in_netns(node, argv), capture_output=True, text=True, timeout=60, check=False
        )

    def node_of(self, namespace: str, pod: str) -> str:
        return str(get(self, "pod", "-n", namespace, pod)["spec"]["nodeName"])

    def settled(self) -> bool:
        return demo.agents_applied(self.lab)

    def facts(self) -> ClusterFacts:
        return demo.cluster_facts(self.lab)
