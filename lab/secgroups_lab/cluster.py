"""The whole lab: control plane + nodes + simulated kubelet + operator + node agents.

``secgroups-lab up`` starts, in order, each step printed with its time:

1. the control plane (:mod:`~secgroups_lab.controlplane`) and the CRDs of ``crds/``;
2. the simulated kubelet daemon (:mod:`~secgroups_lab.simkubelet`), which builds the
   network (:mod:`~secgroups_lab.network`: N node netns, the outside host), registers the
   Node objects and serves Pods;
3. the operator, in the root netns with the admin kubeconfig;
4. one node agent per node, inside the node's netns (as a hostNetwork DaemonSet pod
   would run), talking to the API server over the underlay.

Every process runs in its own session with its log under the lab's work dir, so the
command returns and the lab keeps running; ``secgroups-lab down`` stops exactly those
processes (pids recorded in ``lab.json``, and found again by command line if that file
is gone) and tears everything down. :class:`LabCluster` is the same as a context manager
for tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from secgroups_lab import network, underlay
from secgroups_lab._cmd import Progress, in_netns
from secgroups_lab.controlplane import ControlPlane, Daemon, default_workdir, terminate

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
AGENT_METRICS_PORT = 9750


class LabError(RuntimeError):
    pass


@dataclass
class LabCluster:
    prefix: str = "ksg"
    nodes: int = 3
    operator: bool = True
    agents: bool = True
    progress: Callable[[str], None] = field(default_factory=Progress)
    # A control plane that is already running (tests share one per session); when None,
    # up() starts one and down() stops it.
    cp: ControlPlane | None = None
    daemons: dict[str, Daemon] = field(default_factory=dict)
    _own_cp: bool = False

    # ------------------------------------------------------------------ paths
    @property
    def workdir(self) -> Path:
        return default_workdir(self.prefix)

    @property
    def state_file(self) -> Path:
        """Written by the simulated kubelet: nodes, pods and their probe sockets."""
        return self.workdir / "pods.json"

    @property
    def lab_file(self) -> Path:
        return self.workdir / "lab.json"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def node_kubeconfig(self) -> Path:
        return self.workdir / "admin-node.kubeconfig"

    def node_names(self) -> list[str]:
        return [f"{self.prefix}-n{i}" for i in range(1, self.nodes + 1)]

    # ------------------------------------------------------------------ up
    def __enter__(self) -> LabCluster:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> LabCluster:
        t0 = time.monotonic()
        if self.cp is None:
            self.cp = ControlPlane(self.prefix, progress=self.progress)
            self._own_cp = True
            self.cp.start()
        t = time.monotonic()
        self.cp.apply_manifests(sorted(CRDS.glob("*.yaml")))
        self.progress(f"CRDs installed ({time.monotonic() - t:.1f} s)")
        t = time.monotonic()
        self._spawn(
            "sim-kubelet",
            [
                sys.executable,
                "-m",
                "secgroups_lab.simkubelet_main",
                "--prefix",
                self.prefix,
                "--nodes",
                str(self.nodes),
                "--kubeconfig",
                str(self.kubeconfig),
                "--state-file",
                str(self.state_file),
            ],
        )
        self._wait("nodes and the simulated kubelet", self._kubelet_ready, 60.0)
        self.progress(
            f"{self.nodes} nodes up, simulated kubelet serving pods ({time.monotonic() - t:.1f} s)"
        )
        if self.operator:
            self._spawn(
                "operator",
                [
                    sys.executable,
                    "-m",
                    "secgroups_operator.main",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--liveness",
                    "",
                ],
            )
            self.progress("operator started")
        if self.agents:
            for name in self.node_names():
                self._spawn(
                    f"agent-{name}",
                    in_netns(
                        name,
                        [
                            sys.executable,
                            "-m",
                            "secgroups_agent.main",
                            "--node",
                            name,
                            "--kubeconfig",
                            str(self.node_kubeconfig),
                            "--metrics-addr",
                            f"127.0.0.1:{AGENT_METRICS_PORT}",
                        ],
                    ),
                )
            self.progress(f"{self.nodes} node agents started")
        self._save()
        self.progress(
            f"lab {self.prefix} up ({time.monotonic() - t0:.1f} s); "
            f"export KUBECONFIG={self.kubeconfig}"
        )
        return self

    def _spawn(self, name: str, argv: Sequence[str]) -> Daemon:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", KSG_LAB_WORKDIR=str(self.workdir))
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
                env=env,
            )
        d = Daemon(name, popen.pid, log, popen)
        self.daemons[name] = d
        return d

    def _kubelet_ready(self) -> bool:
        try:
            return bool(json.loads(self.state_file.read_text()).get("ready"))
        except (OSError, ValueError):
            return False

    def _wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            dead = [d for d in self.daemons.values() if not d.alive()]
            if dead:
                raise LabError(
                    f"{', '.join(d.name for d in dead)} exited while waiting for "
                    f"{what}; log:\n" + _tail(dead[0].log)
                )
            if time.monotonic() > deadline:
                raise LabError(f"{what} not ready within {timeout:.0f} s")
            time.sleep(0.1)

    def _save(self) -> None:
        data = {name: {"pid": d.pid, "log": str(d.log)} for name, d in self.daemons.items()}
        self.lab_file.write_text(
            json.dumps({"prefix": self.prefix, "nodes": self.nodes, "daemons": data}, indent=1)
        )

    # ------------------------------------------------------------------ down
    def down(self) -> None:
        t0 = time.monotonic()
        daemons = list(self.daemons.values()) or _recorded_daemons(self.lab_file)
        daemons += [
            d for d in _stray_processes(self.workdir) if d.pid not in {x.pid for x in daemons}
        ]
        # Agents and operator first, the kubelet (which owns the network) next.
        order = sorted(daemons, key=lambda d: (d.name == "sim-kubelet", d.name))
        terminate([d for d in order if d.name != "sim-kubelet"], grace=10.0)
        terminate([d for d in order if d.name == "sim-kubelet"], grace=20.0)
        self.daemons.clear()
        network.cleanup_leftovers(self.prefix)
        with contextlib.suppress(FileNotFoundError):
            self.lab_file.unlink()
        if self.cp is None or self._own_cp:
            (self.cp or ControlPlane(self.prefix, progress=self.progress)).stop()
            underlay.remove_underlay(self.prefix)
        self.progress(f"lab {self.prefix} down ({time.monotonic() - t0:.1f} s)")

    # ------------------------------------------------------------------ helpers
    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        assert self.cp is not None
        return self.cp.kubectl(*args, input_text=input_text, check=check).stdout

    def endpoints(self) -> tuple[dict[str, Any], Any]:
        from secgroups_lab.simkubelet import read_endpoints

        return read_endpoints(self.state_file)


def _recorded_daemons(lab_file: Path) -> list[Daemon]:
    try:
        data = json.loads(lab_file.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for name, d in data.get("daemons", {}).items():
        out.append(Daemon(name, int(d["pid"]), Path(d["log"])))
    return out


def _stray_processes(workdir: Path) -> list[Daemon]:
    """Our Python daemons of this lab that no record names (a killed `up`)."""
    marker = str(workdir).rstrip("/") + "/"
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.startswith("secgroups_") for a in argv) and any(marker in a for a in argv):
            name = next(a for a in argv if a.startswith("secgroups_"))
            out.append(Daemon(name, int(entry.name), workdir / "logs" / f"{name}.log"))
    return out


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def send(daemons: Sequence[Daemon], sig: signal.Signals) -> None:
    for d in daemons:
        d.signal(sig)
