"""The scheduler and kubelet of the chart's pods in the lab, which has neither.

The lab's nodes are network namespaces served by a simulated kubelet that gives each pod
bound to a node a network namespace (or, for ``hostNetwork``, the node's) and reports it
Running and Ready, but runs no containers; and there is no kube-scheduler. So after a real
``helm install``, the Deployment, DaemonSet and Job controllers of the lab's
kube-controller-manager create the chart's pods, and :class:`ChartPods` does for each
what the scheduler and the kubelet would, from the pod spec alone:

* picks its node (a DaemonSet pod's node from its node affinity; a host-network
  operator's the first node where no replica's process still runs, and none — the pod
  stays Pending — while every node has one; the uninstall Job's pod stays unbound: the
  simulated kubelet ignores it) and
  binds it (``pods/binding``, as the scheduler does);
* runs its container's command and args as a process from this repository's venv — in
  the node's network namespace for ``hostNetwork`` pods, else in the root netns — with
  its environment (the downward API fields it names) and, unless the pod opts out of
  token mounting, a kubeconfig holding a **token of the pod's own ServiceAccount,
  bound to the pod** (TokenRequest), exactly what the kubelet would mount: the
  operator and the agents run with the chart's RBAC, and an agent's token carries its
  node's name for the admission policy;
* keeps a pod with a readiness probe not Ready until the probe answers 200, so Services,
  DaemonSet status and rollouts see what a kubelet would show. The simulated kubelet
  reports a bound pod Ready at once: a pod without a token (the node cleanup, whose
  readiness the uninstall Job waits for) is bound only once its probe answers; a pod
  with one must be bound first (the token names its node), and the runner turns its
  Ready back a moment later — tests wait with :meth:`ChartPods.wait_ready` after
  ``helm --wait``. It reports the Job's pod Succeeded or Failed with its exit code;
* runs it as its ``securityContext`` says: as its user and group, and with only the
  capabilities it adds when it drops ``ALL`` (``setpriv``), so the agents prove that
  ``NET_ADMIN`` is enough and the operator that it needs none;
* stops a pod's process when the pod is deleted (a rollout, ``helm uninstall``).

Images are ignored: the processes are the same code the images hold. Each process logs
to ``<workdir>/<pod>.log``; :meth:`ChartPods.logs` returns the tails for failure messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

from secgroups_lab import binaries
from secgroups_lab._cmd import in_netns, run
from secgroups_lab.cluster import LabCluster

# The chart's container commands, as modules of this repository (their console scripts
# in pyproject.toml have the same names; tests/unit/test_chart_files.py checks that).
COMMANDS = {
    "secgroups-operator": "secgroups_operator.main",
    "secgroups-agent": "secgroups_agent.main",
    "secgroups-operator-uninstall": "secgroups_operator.uninstall",
}


# _node_for's answer for a pod no node can take yet.
PENDING = "<pending>"


@dataclass
class Process:
    """One pod's process."""

    pod: str
    uid: str
    component: str
    node: str | None
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    bound: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)  # its probe answered
    error: str | None = None
    argv: list[str] = field(default_factory=list)  # the command and args run

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def output(self) -> str:
        """What the process wrote ("" if it never started: its pod went first)."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


class ChartPods:
    """Runs the chart's pods of release ``instance`` in ``namespace`` (module docstring)."""

    def __init__(self, lab: LabCluster, namespace: str, instance: str, workdir: Path) -> None:
        self.lab = lab
        self.namespace = namespace
        self.instance = instance
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.client = Client(KubeConfig.from_file(str(lab.kubeconfig)))
        admin = yaml.safe_load(lab.kubeconfig.read_text())
        ca = admin["clusters"][0]["cluster"]["certificate-authority-data"]
        self.ca = {"certificate-authority-data": ca}
        # The API server's address from the root netns and from the nodes (the underlay).
        self.root_url = admin["clusters"][0]["cluster"]["server"]
        node = yaml.safe_load(lab.node_kubeconfig.read_text())
        self.node_url = node["clusters"][0]["cluster"]["server"]
        self.kubectl = binaries.paths().kubectl
        self.processes: dict[str, Process] = {}  # pod uid -> process
        self.history: list[Process] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="chart-pods", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ChartPods:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        with self._lock:
            procs = list(self.processes.values())
        for p in procs:
            p.stop()
        self.client.close()

    def running(self, component: str) -> list[Process]:
        """Live processes of ``component`` (operator, agent, cleanup, cleanup-job)."""
        with self._lock:
            return [p for p in self.processes.values() if p.component == component and p.alive()]

    def wait_ready(self, component: str, count: int, timeout: float = 120.0) -> list[Process]:
        """Wait until ``count`` live processes of ``component`` have passed their readiness
        probe. (The simulated kubelet reports a pod Ready for a moment before this runner
        can say otherwise, so ``helm --wait`` alone may return early.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = [p for p in self.running(component) if p.ready.is_set()]
            if len(ready) >= count:
                return ready
            time.sleep(0.2)
        raise AssertionError(
            f"{count} ready {component} processes: not within {timeout:.0f} s\n{self.logs()}"
        )

    def logs(self, lines: int = 15) -> str:
        out = []
        for p in self.history:
            try:
                tail = p.log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            state = "running" if p.alive() else f"exited {p.popen and p.popen.returncode}"
            head = f"--- {p.component} {p.pod} on {p.node} ({state}; {p.error or 'ok'})"
            out.append("\n".join([head, *tail]))
        return "\n".join(out)

    def _kubectl(self, *args: str, input_text: str | None = None) -> str:
        cmd = [str(self.kubectl), "--kubeconfig", str(self.lab.kubeconfig), *args]
        return run(cmd, input_text=input_text, timeout=60).stdout

    # ------------------------------------------------------------------ the loop
    def _pods(self) -> list[dict[str, Any]]:
        items = self.client.list(
            Pod, namespace=self.namespace, labels={"app.kubernetes.io/instance": self.instance}
        )
        return [p.to_dict() for p in items]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                pods = self._pods()
            except Exception:  # the API server is busy: try again
                self._stop.wait(1.0)
                continue
            live = {p["metadata"]["uid"]: p for p in pods}
            with self._lock:
                for uid, proc in list(self.processes.items()):
                    pod = live.get(uid)
                    if pod is None or pod["metadata"].get("deletionTimestamp"):
                        threading.Thread(target=proc.stop, daemon=True).start()
                        del self.processes[uid]
                for uid, pod in live.items():
                    if uid in self.processes or pod["metadata"].get("deletionTimestamp"):
                        continue
                    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                        continue
                    if pod["spec"].get("nodeName") and not self._ours(uid):
                        continue  # bound by someone else: not ours to run
                    proc = self._new(pod)
                    if proc is None:
                        continue  # Pending: every node's ports are held; tried again next pass
                    self.processes[uid] = proc
                    self.history.append(proc)
                    threading.Thread(target=self._launch, args=(proc, pod), daemon=True).start()
            self._stop.wait(0.3)

    def _ours(self, uid: str) -> bool:
        return any(p.uid == uid for p in self.history)

    def _new(self, pod: dict[str, Any]) -> Process | None:
        meta = pod["metadata"]
        component = meta.get("labels", {}).get("app.kubernetes.io/component", "?")
        node = self._node_for(pod, component)
        if node == PENDING:
            return None
        return Process(
            pod=meta["name"],
            uid=meta["uid"],
            component=component,
            node=node,
            log=self.workdir / f"{meta['name']}.log",
        )

    def _node_for(self, pod: dict[str, Any], component: str) -> str | None:
        terms = (
            ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
                "requiredDuringSchedulingIgnoredDuringExecution"
            )
            or {}
        ).get("nodeSelectorTerms") or []
        for term in terms:  # a DaemonSet pod names its node by field
            for f in term.get("matchFields") or []:
                if f.get("key") == "metadata.name" and f.get("values"):
                    return str(f["values"][0])
        if component == "cleanup-job":
            return None  # runs anywhere; unbound so that the simulated kubelet ignores it
        # A host-network replica's ports are the node's: one per node, as the scheduler does.
        # A replica being stopped still holds them — the scheduler counts a terminating pod
        # until the kubelet has stopped it and the pod is gone — so a rollout's new replica
        # waits (Pending) rather than starting beside it and failing to bind.
        taken = {p.node for p in self.processes.values() if p.component == component}
        taken |= {p.node for p in self.history if p.component == component and p.alive()}
        free = [n for n in self.lab.node_names() if n not in taken]
        if free:
            return free[0]
        return PENDING if pod["spec"].get("hostNetwork") else self.lab.node_names()[0]

    # ------------------------------------------------------------------ one pod
    def _launch(self, proc: Process, pod: dict[str, Any]) -> None:
        try:
            self._run(proc, pod)
        except Exception as exc:  # shown by logs() and by the waits that time out
            proc.error = f"{type(exc).__name__}: {exc}"
        finally:
            proc.done.set()

    def _run(self, proc: Process, pod: dict[str, Any]) -> None:
        spec = pod["spec"]
        container = spec["containers"][0]
        host_network = bool(spec.get("hostNetwork"))
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        wants_token = spec.get("automountServiceAccountToken", True) is not False
        # A pod with a token is bound first (the token names its node); one without (the
        # node cleanup) only once its probe answers, so that its Ready is never early.
        bind_late = bool(proc.node and probe and not wants_token)
        if proc.node and not bind_late:
            self._bind(proc)
            if probe:  # not Ready until the probe says so (the simulated kubelet says at once)
                self._set_ready(proc, False)
        module = COMMANDS[container["command"][0]]
        argv = [sys.executable, "-m", module]
        argv += container["command"][1:] + container.get("args", [])
        if wants_token:
            kubeconfig = self._kubeconfig(proc, pod, host_network)
            os.chown(kubeconfig, *_ids(pod, container))  # as the kubelet's token mount
            argv += ["--kubeconfig", str(kubeconfig)]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["PYTHONUNBUFFERED"] = "1"
        for e in container.get("env") or []:
            env[e["name"]] = self._env_value(e, pod, proc)
        proc.argv = list(argv)
        argv = _as_securitycontext(pod, container, argv)
        if host_network:
            assert proc.node, f"{proc.pod}: hostNetwork pod without a node"
            argv = in_netns(proc.node, argv)
        with proc.log.open("ab") as out:
            proc.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        if proc.node and probe:
            self._wait_ready(proc, container, probe)
            if bind_late:
                self._bind(proc)
            else:
                self._set_ready(proc, True)
        proc.ready.set()
        if proc.node is None:  # the Job's pod: report how it ended
            rc = proc.popen.wait()
            self._report_exit(proc, container["name"], rc)

    def _bind(self, proc: Process) -> None:
        assert proc.node is not None
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": proc.pod, "namespace": self.namespace, "uid": proc.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": proc.node},
        }
        self._kubectl("create", "-f", "-", input_text=json.dumps(binding))
        proc.bound = True

    def _set_ready(self, proc: Process, ready: bool) -> None:
        """Set the pod's Ready and ContainersReady conditions, once the simulated kubelet
        has reported it Running (it only reports again when the phase is not Running)."""
        deadline = time.monotonic() + 60
        while True:
            pod = self.client.get(Pod, proc.pod, namespace=self.namespace).to_dict()
            if (pod.get("status") or {}).get("phase") == "Running":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.pod}: not reported Running within 60 s")
            time.sleep(0.2)
        value = "True" if ready else "False"
        conditions = [
            {**c, "status": value} if c["type"] in ("Ready", "ContainersReady") else c
            for c in pod["status"].get("conditions") or []
        ]
        self.client.patch(
            Pod.Status,
            proc.pod,
            {"status": {"conditions": conditions}},
            namespace=self.namespace,
            patch_type=PatchType.STRATEGIC,
        )

    def _wait_ready(self, proc: Process, container: dict[str, Any], probe: Any) -> None:
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
        url = f"http://{probe.get('host') or '127.0.0.1'}:{port}{probe.get('path', '/')}"
        assert proc.node is not None
        while proc.alive() and not self._stop.is_set():
            check = in_netns(proc.node, ["curl", "-sf", "-m", "2", "-o", "/dev/null", url])
            if subprocess.run(check, check=False, capture_output=True).returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{proc.pod} exited or was stopped before {url} answered 200")

    def _env_value(self, e: dict[str, Any], pod: dict[str, Any], proc: Process) -> str:
        if "value" in e:
            return str(e["value"])
        path = e["valueFrom"]["fieldRef"]["fieldPath"]
        values = {
            "spec.nodeName": proc.node or "",
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": pod["metadata"]["namespace"],
        }
        return values[path]

    def _kubeconfig(self, proc: Process, pod: dict[str, Any], host_network: bool) -> Path:
        sa = pod["spec"].get("serviceAccountName") or "default"
        token = self._kubectl(
            "create", "token", sa, "-n", self.namespace, "--duration", "2h",
            "--bound-object-kind", "Pod", "--bound-object-name", proc.pod,
            "--bound-object-uid", proc.uid,
        ).strip()  # fmt: skip
        server = self.node_url if host_network else self.root_url
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "lab",
                    "cluster": {"server": server, **self.ca},
                }
            ],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": sa, "context": {"cluster": "lab", "user": sa}}],
            "current-context": sa,
        }
        path = self.workdir / f"{proc.pod}.kubeconfig"
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def _report_exit(self, proc: Process, container: str, rc: int) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "status": {
                "phase": "Succeeded" if rc == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": container,
                        "image": "",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": rc, "finishedAt": now}},
                    }
                ],
            }
        }
        with contextlib.suppress(ApiError):
            self.client.patch(
                Pod.Status, proc.pod, status, namespace=self.namespace, patch_type=PatchType.MERGE
            )


def _ids(pod: dict[str, Any], container: dict[str, Any]) -> tuple[int, int]:
    """(uid, gid) the container runs as (its securityContext, else the pod's; root)."""
    psc, sc = pod["spec"].get("securityContext") or {}, container.get("securityContext") or {}
    uid = int(sc.get("runAsUser", psc.get("runAsUser", 0)))
    return uid, int(sc.get("runAsGroup", psc.get("runAsGroup", uid)))


def _as_securitycontext(
    pod: dict[str, Any], container: dict[str, Any], argv: list[str]
) -> list[str]:
    """``argv`` run as the container would be: its user and group, and — when it drops ALL
    capabilities — only the ones it adds (the bounding set), without privilege escalation."""
    sc = container.get("securityContext") or {}
    uid, gid = _ids(pod, container)
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    caps = sc.get("capabilities") or {}
    if "ALL" in (caps.get("drop") or []):
        keep = ",".join(f"+{c.lower()}" for c in caps.get("add") or [])
        prefix += [f"--bounding-set=-all{',' + keep if keep else ''}", "--inh-caps=-all"]
    if sc.get("allowPrivilegeEscalation") is False:
        prefix.append("--no-new-privs")
    return [*prefix, *argv]
