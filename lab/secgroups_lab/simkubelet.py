"""A simulated kubelet for the lab's nodes (kwok-style "simulated-pod mode", docs/lab.md).

It registers one Node object per lab node (named like its netns, e.g. ``ksg-n1``, with
``spec.podCIDRs`` and its underlay addresses) and then does for Pods what a kubelet
and a routed-veth CNI would: a Pod bound to one of its nodes (``spec.nodeName``) gets a
network namespace with a probe daemon (``network.Lab.add_pod``), and its
``status.podIPs``, ``hostIP``, phase ``Running`` and ``Ready`` condition are patched; a
Pod being deleted loses its namespace and is then removed with grace period 0, as a
kubelet confirms a deletion. hostNetwork pods get the node's addresses and no netns.

The lab's network (:class:`~secgroups_lab.network.Lab`) lives in this process: run it
as a daemon (``secgroups-lab sim-kubelet``) or in a thread (tests). It publishes what it
made in a JSON state file that the demo, the tests and the CLI read to find each pod's
probe socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import NodeSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Pod
from lightkube.types import PatchType

from secgroups_lab.network import Lab, NodeNet, PodNet

log = logging.getLogger(__name__)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class SimKubelet:
    """Serves Pods of the lab's nodes; see the module docstring."""

    lab: Lab
    client: Client
    state_file: Path
    nodes: dict[str, NodeNet] = field(default_factory=dict)  # node name -> node
    pods: dict[str, PodNet] = field(default_factory=dict)  # "ns/name" -> pod
    host_pods: dict[str, str] = field(default_factory=dict)  # hostNetwork "ns/name" -> node
    ready: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_kubeconfig(cls, lab: Lab, kubeconfig: Path, state_file: Path) -> SimKubelet:
        return cls(lab, Client(KubeConfig.from_file(kubeconfig)), state_file)

    # ------------------------------------------------------------------ nodes
    def register_nodes(self) -> None:
        """Create or update a Ready Node object for every lab node."""
        for node in self.lab.nodes.values():
            name = node.netns
            self.nodes[name] = node
            body = Node(
                metadata=ObjectMeta(
                    name=name,
                    labels={
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "secgroups.dev/lab-node": "true",
                    },
                ),
                spec=NodeSpec(
                    podCIDR=str(node.pod_cidr_v4),
                    podCIDRs=[str(node.pod_cidr_v4), str(node.pod_cidr_v6)],
                ),
            )
            with contextlib.suppress(ApiError):
                self.client.create(body)
            status = {
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": node.underlay_v4},
                        {"type": "InternalIP", "address": node.underlay_v6},
                        {"type": "Hostname", "address": name},
                    ],
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "SimulatedKubeletReady",
                            "message": "kube-secgroups lab node (simulated kubelet)",
                            "lastHeartbeatTime": _now(),
                            "lastTransitionTime": _now(),
                        }
                    ],
                    "nodeInfo": {
                        "kubeletVersion": "lab",
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                        "containerRuntimeVersion": "lab://netns",
                        "kernelVersion": os.uname().release,
                        "osImage": "kube-secgroups lab",
                        "kubeProxyVersion": "",
                        "machineID": "",
                        "systemUUID": "",
                        "bootID": "",
                    },
                }
            }
            self.client.patch(Node.Status, name, status, patch_type=PatchType.MERGE)
        self.write_state()

    # ------------------------------------------------------------------ pods
    def handle(self, event: str, pod: Mapping[str, Any]) -> None:
        """Bring the lab in line with one Pod event (idempotent)."""
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        node_name = spec.get("nodeName")
        if node_name not in self.nodes:
            return
        key = f"{meta.get('namespace')}/{meta['name']}"
        if event == "DELETED":
            self._remove(key)
            return
        if meta.get("deletionTimestamp"):
            self._remove(key)
            with contextlib.suppress(ApiError):
                self.client.delete(Pod, meta["name"], namespace=meta["namespace"], grace_period=0)
            return
        phase = (pod.get("status") or {}).get("phase")
        if key in self.pods or key in self.host_pods:
            if phase != "Running":  # someone reset the status: report it again
                self._report_running(pod, node_name)
            return
        node = self.nodes[node_name]
        if spec.get("hostNetwork"):
            self.host_pods[key] = node_name
        else:
            self.pods[key] = self.lab.add_pod(node.index, meta["namespace"], meta["name"])
        self._report_running(pod, node_name)
        self.write_state()

    def _report_running(self, pod: Mapping[str, Any], node_name: str) -> None:
        meta = pod["metadata"]
        node = self.nodes[node_name]
        key = f"{meta['namespace']}/{meta['name']}"
        net = self.pods.get(key)
        ips = [net.ipv4, net.ipv6] if net else [node.underlay_v4, node.underlay_v6]
        now = _now()
        status = {
            "status": {
                "phase": "Running",
                "hostIP": node.underlay_v4,
                "hostIPs": [{"ip": node.underlay_v4}, {"ip": node.underlay_v6}],
                "podIP": ips[0],
                "podIPs": [{"ip": ip} for ip in ips],
                "startTime": now,
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": now}
                    for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                ],
                "containerStatuses": [
                    {
                        "name": c.get("name", "app"),
                        "image": c.get("image", ""),
                        "imageID": "",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    }
                    for c in (pod.get("spec") or {}).get("containers") or ()
                ],
            }
        }
        try:
            self.client.patch(
                Pod.Status,
                meta["name"],
                status,
                namespace=meta["namespace"],
                patch_type=PatchType.MERGE,
            )
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    def _remove(self, key: str) -> None:
        net = self.pods.pop(key, None)
        self.host_pods.pop(key, None)
        if net is not None:
            self.lab.delete_pod(net)
            self.write_state()

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event) -> None:
        """List, then watch Pods until ``stop``; re-list after any watch error."""
        while not stop.is_set():
            try:
                items = list(self.client.list(Pod, namespace="*"))
                listed = set()
                for pod in items:
                    d = pod.to_dict()
                    listed.add(f"{d['metadata']['namespace']}/{d['metadata']['name']}")
                    self.handle("ADDED", d)
                for key in [k for k in (*self.pods, *self.host_pods) if k not in listed]:
                    self._remove(key)
                self.ready.set()
                self.write_state()
                # A watch without resourceVersion starts with the current objects (ADDED),
                # so nothing created between the list and the watch is missed.
                for kind, obj in self.client.watch(Pod, namespace="*", server_timeout=60):
                    self.handle(kind, obj.to_dict())
                    if stop.is_set():
                        break
            except Exception:
                if stop.is_set():
                    break
                log.exception("pod watch failed; re-listing")
                stop.wait(1.0)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        out = self.lab.outside
        return {
            "prefix": self.lab.prefix,
            "ready": self.ready.is_set(),
            "nodes": {
                name: {
                    "index": n.index,
                    "netns": n.netns,
                    "ipv4": n.underlay_v4,
                    "ipv6": n.underlay_v6,
                    "podCIDRs": [str(n.pod_cidr_v4), str(n.pod_cidr_v6)],
                }
                for name, n in sorted(self.nodes.items())
            },
            "pods": {
                key: {
                    "netns": p.netns,
                    "node": self.lab.node_netns(p.node),
                    "ipv4": p.ipv4,
                    "ipv6": p.ipv6,
                    "controlSocket": str(p.control_socket),
                    "hostInterface": p.host_ifname,
                }
                for key, p in sorted(self.pods.items())
            },
            "outside": None
            if out is None
            else {
                "netns": out.netns,
                "ipv4": out.ipv4,
                "ipv6": out.ipv6,
                "controlSocket": str(out.control_socket),
            },
        }

    def write_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=1, sort_keys=True))
        tmp.replace(self.state_file)


@dataclass(frozen=True)
class Endpoint:
    """A probe endpoint read back from the state file (satisfies probes.Endpoint)."""

    label: str
    netns: str
    ipv4: str
    ipv6: str
    control_socket: Path


def read_endpoints(state_file: Path) -> tuple[dict[str, Endpoint], Endpoint | None]:
    """The pods ("ns/name" → endpoint) and the outside host, from a sim-kubelet state file."""
    state = json.loads(state_file.read_text())
    pods = {
        key: Endpoint(key, p["netns"], p["ipv4"], p["ipv6"], Path(p["controlSocket"]))
        for key, p in state["pods"].items()
    }
    out = state.get("outside")
    outside = (
        Endpoint("outside", out["netns"], out["ipv4"], out["ipv6"], Path(out["controlSocket"]))
        if out
        else None
    )
    return pods, outside
