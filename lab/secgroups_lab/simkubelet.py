"""A simulated kubelet for the lab's nodes (kwok-style "simulated-pod mode", docs/lab.md).

It registers one Node object per lab node (named like its netns, e.g. ``ksg-n1``, with
``spec.podCIDRs`` and its underlay addresses) and then does for Pods what a kubelet
and a routed-veth CNI would: a Pod bound to one of its nodes (``spec.nodeName``) gets a
network namespace with a probe daemon (``network.Lab.add_pod``), and its
``status.podIPs``, ``hostIP``, phase ``Running`` and ``Ready`` condition are patched; a
Pod being deleted loses its namespace and is then removed with grace period 0, as a
kubelet confirms a deletion. hostNetwork pods get the node's addresses and no netns.

With a :class:`CniConfig` it also runs the real ``secgroups-cni`` plugin binary the way
a container runtime runs a chained plugin (docs/cni.md): once the pod's veth and
addresses exist (the lab's routed veth plays ptp's part and hands them on as
``prevResult``) and before its probe daemon — the pod's "container" — starts; ``DEL``
before the namespace goes. An ADD that fails tears the sandbox down, records a Warning
event ``FailedCreatePodSandBox`` with the plugin's message (what ``kubectl describe
pod`` shows on a real node) and is retried with backoff (1 s doubling to 10 s), as the
kubelet retries. A pod's ``Ready`` condition honours ``spec.readinessGates``.

The lab's network (:class:`~secgroups_lab.network.Lab`) lives in this process: run it
as a daemon (``secgroups-lab sim-kubelet``) or in a thread (tests). It publishes what it
made in a JSON state file that the demo, the tests and the CLI read to find each pod's
probe socket.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import EventSource, NodeSpec, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Node, Pod
from lightkube.types import PatchType

from secgroups_lab.network import Lab, NodeNet, PodNet

log = logging.getLogger(__name__)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class CniConfig:
    """How the simulated runtime calls the chained plugin: the binary, where each node's
    agent socket is (``socket_dir/<node>/cni.sock``), the plugin's timeout."""

    plugin: Path
    socket_dir: Path
    timeout_s: float = 10.0
    network: str = "ksg-lab"
    add_seconds: list[float] = field(default_factory=list)  # successful ADDs, for reports

    def socket(self, node: str) -> Path:
        return self.socket_dir / node / "cni.sock"


class SandboxError(RuntimeError):
    """The CNI chain failed; the message is the runtime's, as the kubelet reports it."""


@dataclass
class _Retry:
    due: float
    attempt: int
    pod: dict[str, Any]


def _ready(pod: Mapping[str, Any]) -> bool:
    """Ready as the kubelet computes it here: containers always are; every readiness gate's
    condition must be True (the node agent sets ``secgroups.dev/policy-applied``)."""
    gates = [g.get("conditionType") for g in (pod.get("spec") or {}).get("readinessGates") or ()]
    conds = {
        c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or ()
    }
    return all(conds.get(g) == "True" for g in gates)


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
    cni: CniConfig | None = None
    sandboxes: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (id, uid)
    waiting: dict[str, _Retry] = field(default_factory=dict)  # sandboxes to retry
    _lock: threading.RLock = field(default_factory=threading.RLock)

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
        with self._lock:
            self._handle(event, pod)

    def _handle(self, event: str, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        node_name = spec.get("nodeName")
        if node_name not in self.nodes:
            return
        key = f"{meta.get('namespace')}/{meta['name']}"
        if event == "DELETED":
            self.waiting.pop(key, None)
            self._remove(key)
            return
        if meta.get("deletionTimestamp"):
            self.waiting.pop(key, None)
            self._remove(key)
            with contextlib.suppress(ApiError):
                self.client.delete(Pod, meta["name"], namespace=meta["namespace"], grace_period=0)
            return
        status = pod.get("status") or {}
        if key in self.pods or key in self.host_pods:
            ready = any(
                c.get("type") == "Ready" and c.get("status") == ("True" if _ready(pod) else "False")
                for c in status.get("conditions") or ()
            )
            if status.get("phase") != "Running" or not ready:
                self._report_running(pod, node_name)  # reset, or a readiness gate changed
            return
        retry = self.waiting.get(key)
        if retry is not None:
            retry.pod = dict(pod)
            if time.monotonic() < retry.due:
                return  # backing off, as the kubelet does after a failed sandbox
        node = self.nodes[node_name]
        if spec.get("hostNetwork"):
            self.host_pods[key] = node_name
        else:
            try:
                self.pods[key] = self._create_sandbox(pod, node)
            except SandboxError as exc:
                self._sandbox_failed(pod, node_name, str(exc))
                return
        self.waiting.pop(key, None)
        self._report_running(pod, node_name)
        self.write_state()

    # ------------------------------------------------------------------ CNI
    def _create_sandbox(self, pod: Mapping[str, Any], node: NodeNet) -> PodNet:
        """The pod's network namespace and veth, then the CNI chain, then its daemon."""
        meta = pod["metadata"]
        if self.cni is None:
            return self.lab.add_pod(node.index, meta["namespace"], meta["name"])
        sandbox = f"lab-{uuid.uuid4().hex[:24]}"

        def cni_add(nets: list[PodNet]) -> None:
            try:
                self._cni("ADD", meta, nets[0], sandbox)
            except SandboxError:
                with contextlib.suppress(SandboxError):  # the runtime's cleanup of a failed ADD
                    self._cni("DEL", meta, nets[0], sandbox)
                raise

        net = self.lab.add_pod(node.index, meta["namespace"], meta["name"], before_daemons=cni_add)
        self.sandboxes[f"{meta['namespace']}/{meta['name']}"] = (sandbox, str(meta.get("uid")))
        return net

    def _cni(self, command: str, meta: Mapping[str, Any], net: PodNet, sandbox: str) -> None:
        """Run the plugin binary once, as a runtime does (environment + config on stdin)."""
        cfg = self.cni
        assert cfg is not None
        node = self.lab.node_netns(net.node)
        netns = f"/run/netns/{net.netns}"
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": cfg.network,
            "type": "secgroups-cni",
            "socket": str(cfg.socket(node)),
            "timeoutSeconds": cfg.timeout_s,
        }
        if command != "DEL":
            conf["prevResult"] = {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": net.host_ifname}, {"name": "eth0", "sandbox": netns}],
                "ips": [
                    {"address": f"{net.ipv4}/32", "interface": 1},
                    {"address": f"{net.ipv6}/128", "interface": 1},
                ],
            }
        args = ";".join(
            [
                "IgnoreUnknown=1",
                f"K8S_POD_NAMESPACE={meta['namespace']}",
                f"K8S_POD_NAME={meta['name']}",
                f"K8S_POD_INFRA_CONTAINER_ID={sandbox}",
                f"K8S_POD_UID={meta.get('uid', '')}",
            ]
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": sandbox,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(cfg.plugin.parent),
            "CNI_ARGS": args,
        }
        t0 = time.monotonic()
        try:
            done = subprocess.run(
                [str(cfg.plugin)],
                input=json.dumps(conf),
                env=env,
                capture_output=True,
                text=True,
                timeout=cfg.timeout_s + 10.0,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SandboxError(f"plugin {cfg.plugin} did not return ({command})") from None
        if done.returncode != 0:
            try:
                err = json.loads(done.stdout)
                msg = str(err.get("msg", "")) + (
                    f"; {err['details']}" if err.get("details") else ""
                )
            except ValueError:
                msg = (done.stdout + done.stderr).strip()
            raise SandboxError(
                f'plugin type="secgroups-cni" name="{cfg.network}" failed '
                f"({command.lower()}): {msg}"
            )
        if command == "ADD":
            cfg.add_seconds.append(time.monotonic() - t0)
            log.info(
                "CNI ADD %s/%s: %.1f ms", meta["namespace"], meta["name"], cfg.add_seconds[-1] * 1e3
            )

    def _sandbox_failed(self, pod: Mapping[str, Any], node_name: str, error: str) -> None:
        meta = pod["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        was = self.waiting.get(key)
        attempt = was.attempt + 1 if was else 1
        delay = min(2.0 ** (attempt - 1), 10.0)
        self.waiting[key] = _Retry(time.monotonic() + delay, attempt, dict(pod))
        message = f"Failed to create pod sandbox: {error}"
        log.warning("pod %s: %s (retry in %.0f s)", key, message, delay)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        name = f"{meta['name']}.{uuid.uuid4().hex[:16]}"
        event = Event(
            metadata=ObjectMeta(name=name, namespace=meta["namespace"]),
            involvedObject=ObjectReference(
                apiVersion="v1", kind="Pod", name=meta["name"],
                namespace=meta["namespace"], uid=meta.get("uid"),
            ),
            reason="FailedCreatePodSandBox",
            message=message,
            type="Warning",
            source=EventSource(component="kubelet", host=node_name),
            firstTimestamp=now,
            lastTimestamp=now,
            count=1,
        )  # fmt: skip
        try:
            self.client.create(event)
        except ApiError as exc:
            log.warning("cannot record the event for %s: %s", key, exc)

    def retry_loop(self, stop: threading.Event) -> None:
        """Retry failed sandboxes when their backoff is over (a thread beside the watch)."""
        while not stop.wait(0.2):
            with self._lock:
                due = [r.pod for r in self.waiting.values() if r.due <= time.monotonic()]
            for pod in due:
                try:
                    self.handle("MODIFIED", pod)
                except Exception:
                    log.exception("sandbox retry failed")

    def _report_running(self, pod: Mapping[str, Any], node_name: str) -> None:
        meta = pod["metadata"]
        node = self.nodes[node_name]
        key = f"{meta['namespace']}/{meta['name']}"
        net = self.pods.get(key)
        ips = [net.ipv4, net.ipv6] if net else [node.underlay_v4, node.underlay_v6]
        now = _now()
        ready = "True" if _ready(pod) else "False"
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
                    for t in ("PodScheduled", "Initialized", "ContainersReady")
                ]
                + [{"type": "Ready", "status": ready, "lastTransitionTime": now}],
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
                # Conditions merge by type: the node agent's readiness condition stays.
                patch_type=PatchType.STRATEGIC,
            )
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    def _remove(self, key: str) -> None:
        net = self.pods.pop(key, None)
        self.host_pods.pop(key, None)
        sandbox = self.sandboxes.pop(key, None)
        if net is not None:
            if sandbox is not None and self.cni is not None:
                ns, _, name = key.partition("/")
                meta = {"namespace": ns, "name": name, "uid": sandbox[1]}
                try:
                    self._cni("DEL", meta, net, sandbox[0])
                except SandboxError as exc:
                    log.warning("CNI DEL of %s failed: %s", key, exc)
            self.lab.delete_pod(net)
            self.write_state()

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event) -> None:
        """List, then watch Pods until ``stop``; re-list after any watch error. Failed
        sandboxes are retried by a thread beside it."""
        threading.Thread(target=self.retry_loop, args=(stop,), daemon=True).start()
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
