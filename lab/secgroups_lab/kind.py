"""The kind cluster of ``hack/kind.sh`` from Python: kubectl, helm and the chart, probe pods
and their daemons, the nodes' nftables (docs/kind.md, docs/testing.md "The kind tier").

Used by the product demo (:mod:`secgroups_lab.kinddemo`, ``make demo``) and the kind tier
(``tests/kind``). The cluster itself is made and removed only by ``hack/kind.sh up`` /
``down`` (``make kind-up`` / ``make kind-down``): the address plan, the offline node image
and the readiness waits live there, in one place; this module only uses a running one.

Probe daemons in pods are given their orders without ``kubectl exec``: kind's nodes are
containers of this machine, so a pod's probe daemon is a process of this machine too, and
its control socket ``/run/probed.sock`` is reachable from the host as
``/proc/<pid>/root/run/probed.sock`` (root, like the rest of the lab). Only the orders take
that way; the probes leave from the pod's own network namespace, through the node's
nftables, as any workload's packets do. The endpoints satisfy
:class:`secgroups_lab.probes.Endpoint`, so :func:`secgroups_lab.matrix.run_matrix` and
:class:`secgroups_lab.probes.Flow` work on them unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from secgroups.compiled import applied_nodes
from secgroups.facts import ClusterFacts
from secgroups_lab import binaries
from secgroups_lab.probes import ProbeClient

REPO = Path(__file__).resolve().parents[2]
KIND_SH = REPO / "hack" / "kind.sh"
IMAGES_SH = REPO / "hack" / "images.sh"
CHART = REPO / "charts" / "kube-secgroups"
EXAMPLES = REPO / "examples"
# The names README.md's "Install with Helm" uses.
RELEASE = "kube-secgroups"
NAMESPACE = "kube-secgroups"
PROBE_SOCKET = "run/probed.sock"  # inside the pod's root
# Objects the compiler reads (as the operator sees them).
FACT_KINDS = "namespaces,nodes,pods,securitygroups,securitygrouprules,ipaddressgroups"
# The release namespace runs the agents (hostNetwork, NET_ADMIN): Pod Security "privileged".
PSA_PRIVILEGED = {
    f"pod-security.kubernetes.io/{mode}": "privileged" for mode in ("enforce", "audit", "warn")
}


class KindError(RuntimeError):
    """The kind cluster is missing, unhealthy, or a command against it failed."""


def _run(
    argv: Sequence[str],
    *,
    input_text: str | None = None,
    timeout: float = 120.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as exc:
        raise KindError(f"{' '.join(argv[:4])}…: no answer within {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip()
        raise KindError(f"{' '.join(argv[:6])} exited {proc.returncode}: {why}")
    return proc


# ------------------------------------------------------------------------------ the cluster
@dataclass(frozen=True)
class KindEnv:
    """What ``hack/kind.sh env`` says: the kubeconfig, kind and kubectl, the cluster's name."""

    kubeconfig: Path
    kind: Path
    kubectl: Path
    cluster: str
    config: Path

    @classmethod
    def read(cls) -> KindEnv:
        out = _run([str(KIND_SH), "env"], timeout=30).stdout
        values: dict[str, str] = {}
        for line in out.splitlines():
            if not line.startswith("export "):
                continue
            for word in line.removeprefix("export ").split():
                key, _, value = word.partition("=")
                values[key] = value
        dirs = [Path(p) for p in values.get("PATH", "").split(":") if p and p != "$PATH"]
        kind = next((d / "kind" for d in dirs if d.name.startswith("kind-")), None)
        kubectl = next((d / "kubectl" for d in dirs if d.name.startswith("kubernetes-")), None)
        if kind is None or kubectl is None or "KUBECONFIG" not in values:
            raise KindError(f"cannot read `hack/kind.sh env`:\n{out}")
        return cls(
            kubeconfig=Path(values["KUBECONFIG"]),
            kind=kind,
            kubectl=kubectl,
            cluster=values.get("KSG_KIND_CLUSTER", "ksg"),
            config=Path(values.get("KSG_KIND_CONFIG", REPO / "kind-config.yaml")),
        )


@dataclass
class Kind:
    """A running kind cluster: kubectl, helm, ``docker exec`` on its nodes."""

    env: KindEnv

    @classmethod
    def connect(cls) -> Kind:
        """The cluster ``hack/kind.sh up`` made; KindError naming the fix if none answers."""
        kind = cls(KindEnv.read())
        if not kind.healthy():
            raise KindError(
                f"no kind cluster answers ({kind.env.kubeconfig}): `sudo make kind-up` makes one"
            )
        return kind

    def kubectl(
        self,
        *args: str,
        input_text: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> str:
        argv = [str(self.env.kubectl), "--kubeconfig", str(self.env.kubeconfig), *args]
        return _run(argv, input_text=input_text, timeout=timeout, check=check).stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, docs: Iterable[Mapping[str, Any]] | str) -> None:
        text = docs if isinstance(docs, str) else "\n---\n".join(json.dumps(d) for d in docs)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_text=text)

    def helm(self, *args: str, timeout: float = 600.0) -> str:
        helm = binaries.ensure(("helm",)).helm
        argv = [str(helm), "--kubeconfig", str(self.env.kubeconfig), *args]
        return _run(argv, timeout=timeout).stdout

    def healthy(self) -> bool:
        if not self.env.kubeconfig.exists() or not self.env.kubectl.exists():
            return False
        return self.kubectl("get", "--raw", "/readyz", check=False, timeout=15) == "ok"

    def nodes(self) -> list[str]:
        """Node names, the control plane first (kind names it ``<cluster>-control-plane``)."""
        names = [n["metadata"]["name"] for n in self.get("nodes")["items"]]
        return sorted(names, key=lambda n: (not n.endswith("-control-plane"), n))

    def node_ips(self) -> dict[str, str]:
        return {
            n["metadata"]["name"]: next(
                a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"
            )
            for n in self.get("nodes")["items"]
        }

    def node_exec(
        self, node: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in a node container (its network namespace: the node's)."""
        return _run(["docker", "exec", node, *argv], check=check, timeout=timeout)

    def tables(self, node: str) -> list[str]:
        """``nft list tables`` on ``node``: ``["inet secgroups", "ip kube-proxy", …]``."""
        out = self.node_exec(node, ["nft", "list", "tables"]).stdout
        return [line.removeprefix("table ").strip() for line in out.splitlines() if line.strip()]

    def facts(self) -> ClusterFacts:
        """What the API server holds, as the compiler's input (what the operator sees)."""
        return ClusterFacts.from_manifests(self.get(FACT_KINDS, "-A")["items"])


def our_images() -> dict[str, str]:
    """``hack/images.sh names``: target → reference (operator, agent, probe)."""
    out = _run([str(IMAGES_SH), "names"], timeout=30).stdout.split()
    return {ref.split("/")[-1].split(":")[0]: ref for ref in out}


# ------------------------------------------------------------------------------ the chart
def install_chart(
    kind: Kind,
    values: Sequence[str] = (),
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    timeout: str = "5m",
) -> str:
    """``helm upgrade --install`` of charts/kube-secgroups as README.md says (the release
    namespace labelled for Pod Security ``privileged``), waiting until every pod is ready.
    ``values``: ``--set`` arguments. Returns helm's output."""
    kind.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace, "labels": PSA_PRIVILEGED},
            }
        ]
    )
    sets = [arg for v in values for arg in ("--set", v)]
    return kind.helm(
        "upgrade", "--install", release, str(CHART), "-n", namespace,
        "--wait", "--timeout", timeout, *sets,
    )  # fmt: skip


def chart_installed(kind: Kind, release: str = RELEASE, namespace: str = NAMESPACE) -> bool:
    out = kind.helm("list", "-n", namespace, "-o", "json")
    return any(r["name"] == release and r["status"] == "deployed" for r in json.loads(out))


def agents_applied(kind: Kind) -> bool:
    """Every node has a CompiledNodePolicy, applied by its agent at its current generation."""
    try:
        items = kind.get("compilednodepolicies")["items"]
        reports = kind.get("nodeagentreports")["items"]
    except (KindError, ValueError):
        return False
    return set(kind.nodes()) <= applied_nodes(items, reports)


def published_pods(kind: Kind, namespace: str) -> set[str]:
    """The pods of ``namespace`` that the operator put into some node's object."""
    return {
        p["name"]
        for o in kind.get("compilednodepolicies")["items"]
        for p in (o["spec"].get("pods") or [])
        if p["namespace"] == namespace
    }


# ------------------------------------------------------------------------------ probe pods
def probe_pod(
    name: str,
    namespace: str,
    node: str,
    image: str,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A pod of our probe image pinned to ``node`` (docs/images.md, "The probe image in
    tests"): TCP/UDP echo on 22, 80, 443, 3306, 5432, 8080, ICMP, GRE."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
            # ICMP probes use ping sockets, which containerd leaves closed to every group.
            "securityContext": {
                "sysctls": [{"name": "net.ipv4.ping_group_range", "value": "0 2147483647"}]
            },
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["--name", name, "--control", f"/{PROBE_SOCKET}"],
                }
            ],
        },
    }


def examples_for(nodes: Sequence[str], image: str) -> list[dict[str, Any]]:
    """examples/ as the kind demo and tier apply it: every object as it is, except the pods,
    which become probe pods of ``image``; the lab node ``ksg-n<k>`` a pod names becomes the
    k-th of ``nodes`` (so the pods spread over the nodes as in the lab)."""
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc.get("kind") != "Pod":
                docs.append(doc)
                continue
            meta = doc["metadata"]
            lab_node = str(doc["spec"].get("nodeName", "ksg-n1"))
            k = int(lab_node.rsplit("-n", 1)[-1]) if lab_node.rsplit("-n", 1)[-1].isdigit() else 1
            docs.append(
                probe_pod(
                    meta["name"],
                    meta["namespace"],
                    nodes[(k - 1) % len(nodes)],
                    image,
                    labels=meta.get("labels"),
                    annotations=meta.get("annotations"),
                )
            )
    return docs


@dataclass(frozen=True)
class PodEndpoint:
    """A probe pod, as :class:`secgroups_lab.probes.Endpoint` (``netns`` is empty: the
    pod's network namespace has no name; nothing here enters it)."""

    label: str
    node: str
    ipv4: str
    ipv6: str
    pid: int
    netns: str = ""

    @property
    def control_socket(self) -> Path:
        return Path(f"/proc/{self.pid}/root/{PROBE_SOCKET}")


def container_pids(container_id: str, proc: Path = Path("/proc")) -> list[int]:
    """The host PIDs of a container's processes, in order (its cgroup path names the
    container's ID, on cgroup v1 and v2 alike); the first is the container's own."""
    found: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if container_id in (entry / "cgroup").read_text():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return sorted(found)


def rss_kib(pids: Iterable[int], proc: Path = Path("/proc")) -> int:
    """The sum of VmRSS of ``pids`` (processes that are gone count 0)."""
    total = 0
    for pid in pids:
        try:
            for line in (proc / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def container_ids(pod: Mapping[str, Any]) -> dict[str, str]:
    """Container name → runtime ID (without ``containerd://``) of a pod's running containers."""
    return {
        c["name"]: c["containerID"].split("://")[-1]
        for c in (pod.get("status") or {}).get("containerStatuses") or []
        if c.get("containerID") and "running" in (c.get("state") or {})
    }


def pod_endpoints(
    kind: Kind, namespace: str, names: Iterable[str] | None = None
) -> dict[str, PodEndpoint]:
    """The running probe pods of ``namespace`` (all, or ``names``) by pod name."""
    wanted = set(names) if names is not None else None
    out: dict[str, PodEndpoint] = {}
    for pod in kind.get("pods", "-n", namespace)["items"]:
        name = pod["metadata"]["name"]
        if wanted is not None and name not in wanted:
            continue
        status = pod.get("status") or {}
        ips = [p["ip"] for p in status.get("podIPs") or []]
        cid = container_ids(pod).get("probe")
        pids = container_pids(cid) if cid else []
        if status.get("phase") != "Running" or not ips or not pids:
            continue
        out[name] = PodEndpoint(
            label=f"{namespace}/{name}",
            node=pod["spec"]["nodeName"],
            ipv4=next((ip for ip in ips if ":" not in ip), ""),
            ipv6=next((ip for ip in ips if ":" in ip), ""),
            pid=pids[0],
        )
    return out


def wait_probes(
    kind: Kind, namespace: str, names: Iterable[str], timeout: float = 120.0
) -> dict[str, PodEndpoint]:
    """Wait until every named pod runs and its probe daemon answers; KindError at the
    deadline naming the pods still missing."""
    names = sorted(names)
    deadline = time.monotonic() + timeout
    while True:
        eps = pod_endpoints(kind, namespace, names)
        ready = {n: e for n, e in eps.items() if ProbeClient(e).ping(timeout=2.0)}
        if len(ready) == len(names):
            return ready
        if time.monotonic() > deadline:
            missing = sorted(set(names) - set(ready))
            raise KindError(f"probe pods not ready within {timeout:.0f} s: {', '.join(missing)}")
        time.sleep(0.5)


def wait_for(what: str, check: Callable[[], object], timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise KindError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
