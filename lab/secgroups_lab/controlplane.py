"""The lab's control plane: etcd + kube-apiserver + kube-controller-manager in a netns.

Layout (``<prefix>`` defaults to ``ksg``; ``slot`` defaults to 0)::

    root netns                     <prefix>-cp netns                  <prefix>-ul netns
    <prefix>-cp 100.64.255.1/30 ── eth0 100.64.255.2/30
                                   eth1 100.64.254.254/24 ───────────  cp-eth1 ── br0 ── nodes
                                   etcd 127.0.0.1:2379
                                   kube-apiserver 0.0.0.0:6443
                                   kube-controller-manager 127.0.0.1:10257

* From the root netns (tests, kubectl): ``https://100.64.255.2:6443`` (``admin.kubeconfig``).
  Slot ``n`` uses the /30 ``100.64.255.4n/30`` instead, so labs with different prefixes can
  run side by side (each has its own underlay bridge, so the underlay address repeats).
* From node netns on the underlay: ``https://100.64.254.254:6443`` (``admin-node.kubeconfig``).
* Services: ``100.65.0.0/16`` (the ``kubernetes`` Service is ``100.65.0.1``).
* Work dir: ``${KSG_LAB_DIR:-/run/kube-secgroups-lab}/<prefix>`` (PKI, kubeconfigs, etcd data,
  logs, ``state.json``); removed on stop unless ``keep_workdir``.

Daemons are started with ``nsenter --net=/run/netns/<prefix>-cp`` in their own session, so a
lab started by ``python -m secgroups_lab.controlplane up`` outlives that command;
``down`` (or :func:`cleanup`) finds them again by name, netns and command line.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from secgroups_lab import binaries as binaries_mod
from secgroups_lab import certs, underlay
from secgroups_lab._cmd import Progress, in_netns, ip, run, sigint_ignored
from secgroups_lab.ownership import Owner, down_command

DEFAULT_PREFIX = "ksg"
DEFAULT_LAB_DIR = Path("/run/kube-secgroups-lab")
APISERVER_PORT = 6443
KCM_PORT = 10257
ETCD_CLIENT_URL = "http://127.0.0.1:2379"
ETCD_PEER_URL = "http://127.0.0.1:2380"
UNDERLAY_ADDRESS = "100.64.254.254"
UNDERLAY_IFNAME = "eth1"
ROOT_IFNAME_IN_CP = "eth0"
ROOT_LINK_BLOCK = ipaddress.IPv4Network(underlay.ROOT_LINK_BLOCK)
SERVICE_CIDR = "100.65.0.0/16"
KUBERNETES_SERVICE_IP = "100.65.0.1"
# Run every controller except those that need real node heartbeats or cloud providers;
# the namespace, garbage-collector, serviceaccount and token controllers are the ones tests need.
DEFAULT_CONTROLLERS = (
    "*,-node-lifecycle-controller,-node-ipam-controller,-cloud-node-lifecycle-controller"
)
SERVING_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
DAEMONS = ("etcd", "kube-apiserver", "kube-controller-manager")
STOP_ORDER: tuple[tuple[str, ...], ...] = (("kube-controller-manager", "kube-apiserver"), ("etcd",))
FIELD_MANAGER = "secgroups-lab"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (the message holds the reason and log tails)."""


def lab_dir() -> Path:
    env = os.environ.get("KSG_LAB_DIR")
    return Path(env) if env else DEFAULT_LAB_DIR


def default_workdir(prefix: str) -> Path:
    return lab_dir() / underlay.validate_prefix(prefix)


def cp_netns(prefix: str) -> str:
    return f"{underlay.validate_prefix(prefix)}-cp"


def root_link(prefix: str) -> str:
    """The root-netns end of the veth to the control plane (same name as the netns)."""
    return cp_netns(prefix)


@dataclass(frozen=True)
class Addresses:
    """Where the API server is reached from; see the module docstring."""

    slot: int
    root_side: str  # in the root netns
    cp_side: str  # the API server's address as seen from the root netns
    root_prefixlen: int
    underlay: str  # the API server's address as seen from node netns

    @property
    def root_url(self) -> str:
        return f"https://{self.cp_side}:{APISERVER_PORT}"

    @property
    def node_url(self) -> str:
        return f"https://{self.underlay}:{APISERVER_PORT}"


def addresses(slot: int = 0) -> Addresses:
    subnets = list(ROOT_LINK_BLOCK.subnets(new_prefix=30))
    if not 0 <= slot < len(subnets):
        raise ValueError(f"slot must be in 0..{len(subnets) - 1}")
    net = subnets[slot]
    return Addresses(
        slot=slot,
        root_side=str(net[1]),
        cp_side=str(net[2]),
        root_prefixlen=30,
        underlay=UNDERLAY_ADDRESS,
    )


def free_slot() -> int:
    """The first slot whose root-side address is not assigned in the root netns."""
    taken = ip("-o", "-4", "addr", "show", check=False)
    for slot in range(ROOT_LINK_BLOCK.num_addresses // 4):
        if f" {addresses(slot).root_side}/" not in taken:
            return slot
    raise ControlPlaneError(f"no free /30 left in {ROOT_LINK_BLOCK}")


# --------------------------------------------------------------------------- API access


class ApiClient:
    """A minimal HTTPS client for readiness checks (client-certificate auth)."""

    def __init__(self, url: str, ca: Path, cert: Path, key: Path) -> None:
        parsed = url.removeprefix("https://")
        host, _, port = parsed.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.ctx.load_cert_chain(str(cert), str(key))

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str, timeout: float = 5.0) -> Any:
        status, data = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {data[:200]!r}")
        return json.loads(data)

    def status(self, path: str, timeout: float = 5.0) -> int:
        """HTTP status of GET ``path``; 0 if the server cannot be reached."""
        try:
            return self.request("GET", path, timeout=timeout)[0]
        except (OSError, http.client.HTTPException):
            return 0


def write_kubeconfig(
    path: Path, server: str, ca: Path, client: certs.CertPair, name: str = "lab"
) -> Path:
    """A kubeconfig with embedded CA, client certificate and key."""

    def b64(p: Path) -> str:
        import base64

        return base64.b64encode(p.read_bytes()).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [
            {
                "name": name,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return path


def crd_names(paths: Sequence[Path]) -> list[str]:
    """Names of the CustomResourceDefinitions in these YAML files."""
    names = []
    for p in paths:
        for doc in yaml.safe_load_all(p.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                names.append(str(doc["metadata"]["name"]))
    return names


def apply_manifests(
    kubectl: Path, kubeconfig: Path, paths: Sequence[Path], timeout: float = 60.0
) -> list[str]:
    """Server-side apply ``paths``; wait until every CRD among them is Established.

    Returns the names of the CRDs that were waited for.
    """
    files = [Path(p) for p in paths]
    if not files:
        return []
    args = [str(kubectl), "--kubeconfig", str(kubeconfig)]
    cmd = [*args, "apply", "--server-side", "--force-conflicts"]
    cmd += [f"--field-manager={FIELD_MANAGER}"]
    for f in files:
        cmd += ["-f", str(f)]
    run(cmd, timeout=timeout)
    names = crd_names(files)
    if names:
        run(
            [
                *args, "wait", "--for=condition=Established", f"--timeout={int(timeout)}s",
                *(f"customresourcedefinition.apiextensions.k8s.io/{n}" for n in names),
            ],
            timeout=timeout + 10,
        )  # fmt: skip
    return names


# --------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def find_daemons(workdir: Path, netns: str | None = None) -> dict[int, str]:
    """Lab daemons left running: ``{pid: name}``.

    A process is ours if it runs one of our daemons with an argument inside ``workdir``, or if
    it runs inside ``netns`` (a namespace only the lab creates).
    """
    found: dict[int, str] = {}
    marker = str(workdir).rstrip("/") + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = _cmdline(pid)
        if not argv:
            continue
        name = Path(argv[0]).name
        if name in DAEMONS and any(marker in a for a in argv[1:]):
            found[pid] = name
    if netns and underlay.netns_exists(netns):
        for line in ip("netns", "pids", netns, check=False).split():
            if line.isdigit() and int(line) not in found and _pid_alive(int(line)):
                argv = _cmdline(int(line))
                found[int(line)] = Path(argv[0]).name if argv else "?"
    return found


@dataclass
class Daemon:
    name: str
    pid: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _pid_alive(self.pid)

    def signal(self, sig: signal.Signals) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, deadline: float) -> bool:
        """Wait until the process is gone or ``deadline`` (monotonic) passes; True if gone."""
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        return not self.alive()


def terminate(daemons: Sequence[Daemon], grace: float = 15.0) -> None:
    """SIGTERM ``daemons`` together; SIGKILL those still alive after ``grace`` seconds."""
    for d in daemons:
        d.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for d in daemons:
        d.wait(deadline)
    for d in daemons:
        if d.alive():
            d.signal(signal.SIGKILL)
            d.wait(time.monotonic() + 5.0)


def _stop_in_order(daemons: Sequence[Daemon], grace: float) -> None:
    """kube-apiserver and kcm before etcd (with etcd gone the API server is slow to exit)."""
    done: set[int] = set()
    for group in STOP_ORDER:
        batch = [d for d in daemons if d.name in group]
        terminate(batch, grace)
        done.update(d.pid for d in batch)
    terminate([d for d in daemons if d.pid not in done], grace)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no {path})"
    return "\n".join(text[-lines:])


# --------------------------------------------------------------------------- cleanup


def cleanup(
    prefix: str = DEFAULT_PREFIX,
    workdir: Path | None = None,
    *,
    keep_workdir: bool = False,
    remove_underlay: bool = True,
    progress: Callable[[str], None] | None = None,
    grace: float = 15.0,
) -> list[str]:
    """Remove what a control plane with ``prefix`` left, even after its runner was SIGKILLed.

    Stops our daemons (by name + workdir, and anything in ``<prefix>-cp``), deletes the cp
    netns and the root veth, the underlay if nothing else is plugged into it (and
    ``remove_underlay``), the blackhole routes if no lab remains, and the workdir.
    Returns what was removed.
    """
    say = progress or (lambda _m: None)
    wd = workdir or default_workdir(prefix)
    ns = cp_netns(prefix)
    removed: list[str] = []
    found = find_daemons(wd, ns)
    if found:
        say(f"stopping {', '.join(f'{n}[{p}]' for p, n in sorted(found.items()))}")
        _stop_in_order([Daemon(n, p, wd / "logs" / f"{n}.log") for p, n in found.items()], grace)
        removed += [f"process {n}[{p}]" for p, n in sorted(found.items())]
    if underlay.delete_netns(ns):
        removed.append(f"netns {ns}")
    if underlay.link_exists(root_link(prefix)):
        # Deleting the netns removes its veth's root end too, from a kernel worker, so the
        # link may be gone by the time we delete it: that is fine.
        ip("link", "del", root_link(prefix), check=False)
        removed.append(f"link {root_link(prefix)}")
    ul = underlay.underlay_netns(prefix)
    if remove_underlay and underlay.netns_exists(ul) and not bridge_ports(prefix):
        underlay.remove_underlay(prefix)
        removed.append(f"netns {ul}")
    if underlay.blackholes_present() and not lab_netns_exist():
        underlay.remove_blackholes()
        removed.append("blackhole routes")
    if not keep_workdir and wd.exists():
        shutil.rmtree(wd)
        removed.append(f"workdir {wd}")
    return removed


def running(prefix: str = DEFAULT_PREFIX, workdir: Path | None = None) -> str | None:
    """Why the control plane ``prefix`` counts as running — its daemons run and its owner
    (``state.json``, :mod:`secgroups_lab.ownership`) is alive — or None: then whatever exists
    of it is leftovers that :func:`cleanup` may remove."""
    wd = workdir or default_workdir(prefix)
    if not find_daemons(wd, cp_netns(prefix)):
        return None
    try:
        owner = Owner.from_json(json.loads((wd / "state.json").read_text()).get("owner"))
    except (OSError, ValueError, AttributeError):
        return None
    if owner is None or not owner.alive():
        return None
    return owner.describe()


def bridge_ports(prefix: str) -> list[str]:
    """Interfaces enslaved to the underlay bridge of ``prefix``."""
    ul = underlay.underlay_netns(prefix)
    if not underlay.netns_exists(ul):
        return []
    out = ip("-o", "link", "show", "master", underlay.BRIDGE, netns=ul, check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def lab_netns_exist() -> bool:
    return any(n.endswith(underlay.LAB_NETNS_SUFFIXES) for n in underlay.netns_list())


# --------------------------------------------------------------------------- the control plane


@dataclass
class Timings:
    etcd: float = 0.0
    apiserver: float = 0.0
    controller_manager: float = 0.0
    total: float = 0.0
    stop: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in the netns ``<prefix>-cp``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        prefix: str = DEFAULT_PREFIX,
        *,
        workdir: Path | None = None,
        slot: int | None = None,
        extra_sans: Sequence[str] = (),
        controllers: str = DEFAULT_CONTROLLERS,
        apiserver_args: Sequence[str] = (),
        controller_manager_args: Sequence[str] = (),
        keep_workdir: bool = False,
        ready_timeout: float = 120.0,
        stop_grace: float = 15.0,
        progress: Callable[[str], None] | None = None,
        bins: binaries_mod.Binaries | None = None,
        detached: bool = False,
    ) -> None:
        self.prefix = underlay.validate_prefix(prefix)
        self.workdir = (workdir or default_workdir(prefix)).absolute()
        self._slot = slot
        # Final once started: the slot is chosen in start() if not given.
        self.addresses = addresses(slot or 0)
        self.extra_sans = list(extra_sans)
        self.controllers = controllers
        self.apiserver_args = list(apiserver_args)
        self.controller_manager_args = list(controller_manager_args)
        self.keep_workdir = keep_workdir
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.say = progress or Progress()
        self._bins = bins
        self.netns = cp_netns(prefix)
        self.underlay_netns = underlay.underlay_netns(prefix)
        self.daemons: dict[str, Daemon] = {}
        self.pki: certs.Pki | None = None
        self.timings = Timings()
        self._started_underlay = False
        self._client: ApiClient | None = None
        # Owned by this process while it starts; afterwards by nobody if ``detached`` (it
        # runs until `down`), else by this process (ownership.py: live lab vs leftovers).
        self.detached = detached
        self.owner = Owner.me()

    # -- paths
    @property
    def bins(self) -> binaries_mod.Binaries:
        if self._bins is None:
            self._bins = binaries_mod.ensure(binaries_mod.CONTROL_PLANE)
        return self._bins

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig for the root netns (tests, kubectl on the host)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def node_kubeconfig(self) -> Path:
        """Admin kubeconfig for processes in node netns on the underlay."""
        return self.workdir / "admin-node.kubeconfig"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            pki = self._need_pki()
            admin = pki.client("admin")
            self._client = ApiClient(self.addresses.root_url, pki.ca.cert, admin.cert, admin.key)
        return self._client

    def _need_pki(self) -> certs.Pki:
        if self.pki is None:
            raise ControlPlaneError("the control plane has not been started")
        return self.pki

    # -- context manager
    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- start
    def start(self) -> ControlPlane:
        """Start etcd, kube-apiserver and kcm; ControlPlaneError if they cannot start (nothing
        is left behind) or if a live control plane of this prefix runs (it is not touched).

        What a run whose owner is gone left behind is removed first. On KeyboardInterrupt
        what was started is removed without a word and the interrupt goes on."""
        t0 = time.monotonic()
        preflight()
        why = running(self.prefix, self.workdir)
        if why:
            raise ControlPlaneError(
                f"control plane {self.prefix} is already running ({why}); "
                f"`{down_command(self.prefix)}` removes it"
            )
        bins = self.bins
        self.say(
            f"control plane {self.prefix}: kubernetes {bins.kubernetes_version}, "
            f"etcd {bins.etcd_version}, workdir {self.workdir}"
        )
        leftovers = cleanup(
            self.prefix,
            self.workdir,
            remove_underlay=False,  # someone else may have made it for us (network.py)
            grace=5.0,
        )
        if leftovers:
            self.say(f"removed what an earlier run left (nothing owned it): {', '.join(leftovers)}")
        self.addresses = addresses(free_slot() if self._slot is None else self._slot)
        self.owner = Owner.me()
        try:
            self._setup_files()
            self._write_state()
            self._setup_network()
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
        except KeyboardInterrupt:
            with sigint_ignored():
                self.say = _quiet
                self.keep_workdir = True  # the logs stay in files (their path is printed)
                self.stop()
            raise
        except BaseException as exc:
            self._report_failure(exc)
            self.stop()
            if isinstance(exc, ControlPlaneError | TimeoutError | OSError | RuntimeError):
                raise ControlPlaneError(f"control plane {self.prefix} failed: {exc}") from exc
            raise
        self.timings.total = self.say_timed("control plane ready", t0)
        self.owner = Owner.me(detached=self.detached)
        self._write_state()
        return self

    def detach(self) -> None:
        """From now on the control plane runs on its own, until `down` (a whole lab that its
        starter hands over once everything is up)."""
        self.detached = True
        self.owner = Owner.me(detached=True)
        self._write_state()

    def say_timed(self, message: str, started: float) -> float:
        elapsed = time.monotonic() - started
        self.say(f"{message} ({elapsed:.1f} s)")
        return elapsed

    def _report_failure(self, exc: BaseException) -> None:
        self.say(f"control plane {self.prefix} failed: {exc!r}")
        for name in DAEMONS:
            log = self.logs / f"{name}.log"
            if log.exists():
                self.say(f"--- last lines of {log} ---\n{tail(log)}")

    def _setup_files(self) -> None:
        t = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        self.logs.mkdir(exist_ok=True)
        a = self.addresses
        ips = ["127.0.0.1", a.cp_side, a.underlay, KUBERNETES_SERVICE_IP]
        dns = list(SERVING_DNS_NAMES)
        for san in self.extra_sans:
            try:
                ipaddress.ip_address(san)
                ips.append(san)
            except ValueError:
                dns.append(san)
        pki = certs.make_pki(self.workdir / "pki", dns, ips)
        self.pki = pki
        admin = certs.issue_client_cert(pki, "admin", "kubernetes-admin", ["system:masters"])
        kcm = certs.issue_client_cert(pki, "kcm", "system:kube-controller-manager")
        certs.issue_client_cert(
            pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"]
        )
        write_kubeconfig(self.kubeconfig, a.root_url, pki.ca.cert, admin, self.prefix)
        write_kubeconfig(self.node_kubeconfig, a.node_url, pki.ca.cert, admin, self.prefix)
        local = f"https://127.0.0.1:{APISERVER_PORT}"
        write_kubeconfig(self.workdir / "kcm.kubeconfig", local, pki.ca.cert, kcm, self.prefix)
        self.say_timed("certificates and kubeconfigs written", t)

    def write_kubeconfig(
        self, name: str, user: str, groups: Sequence[str] = (), *, where: str = "node"
    ) -> Path:
        """A kubeconfig for ``user`` in ``groups`` (e.g. ``system:node:n1``/``system:nodes``).

        ``where`` is ``node`` (underlay URL), ``root`` (root-netns URL) or ``local`` (inside
        the cp netns). Written to ``<workdir>/<name>.kubeconfig``.
        """
        pki = self._need_pki()
        server = {
            "node": self.addresses.node_url,
            "root": self.addresses.root_url,
            "local": f"https://127.0.0.1:{APISERVER_PORT}",
        }[where]
        pair = certs.issue_client_cert(pki, name, user, groups)
        return write_kubeconfig(
            self.workdir / f"{name}.kubeconfig", server, pki.ca.cert, pair, self.prefix
        )

    def _setup_network(self) -> None:
        t = time.monotonic()
        a = self.addresses
        rl = root_link(self.prefix)
        taken = ip("-o", "-4", "addr", "show", check=False)
        if f" {a.root_side}/" in taken:
            raise ControlPlaneError(
                f"{a.root_side} is already used in the root netns (another lab?): "
                f"use another slot than {a.slot}"
            )
        ul = underlay.ensure_underlay(self.prefix)
        self._started_underlay = ul.created
        underlay.create_netns(self.netns)
        ip(
            "link",
            "add",
            rl,
            "type",
            "veth",
            "peer",
            "name",
            ROOT_IFNAME_IN_CP,
            "netns",
            self.netns,
        )
        ip("addr", "add", f"{a.root_side}/{a.root_prefixlen}", "dev", rl)
        ip("link", "set", rl, "up")
        ip(
            "addr",
            "add",
            f"{a.cp_side}/{a.root_prefixlen}",
            "dev",
            ROOT_IFNAME_IN_CP,
            netns=self.netns,
        )
        ip("link", "set", ROOT_IFNAME_IN_CP, "up", netns=self.netns)
        underlay.attach(
            self.prefix,
            self.netns,
            UNDERLAY_IFNAME,
            [f"{a.underlay}/{underlay.UNDERLAY_V4_PREFIXLEN}"],
        )
        self.say_timed(
            f"netns {self.netns}: {a.cp_side} (from root), {a.underlay} (underlay "
            f"{self.underlay_netns}{', created' if ul.created else ''})",
            t,
        )

    def _spawn(self, name: str, binary: Path, args: Sequence[str]) -> Daemon:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                in_netns(self.netns, [str(binary), *args]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        d = Daemon(name, popen.pid, log, popen)
        self.daemons[name] = d
        return d

    def _wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        """Poll ``check`` until True; fail early if a daemon died; TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            dead = [d for d in self.daemons.values() if not d.alive()]
            if dead:
                names = ", ".join(f"{d.name}[{d.pid}]" for d in dead)
                raise ControlPlaneError(f"{names} exited while waiting for {what}")
            if check():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what} not within {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _start_etcd(self) -> None:
        t = time.monotonic()
        self.say("starting etcd")
        self._spawn(
            "etcd",
            self.bins.etcd,
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={ETCD_CLIENT_URL}",
                f"--advertise-client-urls={ETCD_CLIENT_URL}",
                f"--listen-peer-urls={ETCD_PEER_URL}",
                f"--initial-advertise-peer-urls={ETCD_PEER_URL}",
                f"--initial-cluster=default={ETCD_PEER_URL}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            cmd = in_netns(self.netns, ["curl", "-sf", "-m", "2", f"{ETCD_CLIENT_URL}/health"])
            proc = run(cmd, check=False, timeout=10)
            return proc.returncode == 0 and '"health":"true"' in proc.stdout

        self._wait("etcd /health", healthy, self.ready_timeout)
        self.timings.etcd = self.say_timed("etcd ready", t)

    def _start_apiserver(self) -> None:
        t = time.monotonic()
        self.say("starting kube-apiserver")
        pki = self._need_pki()
        kubelet_client = pki.client("apiserver-kubelet-client")
        a = self.addresses
        self._spawn(
            "kube-apiserver",
            self.bins.kube_apiserver,
            [
                f"--etcd-servers={ETCD_CLIENT_URL}",
                "--bind-address=0.0.0.0",
                f"--secure-port={APISERVER_PORT}",
                f"--advertise-address={a.underlay}",
                f"--cert-dir={pki.directory}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=lease",
                "--enable-aggregator-routing=true",
                f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
                f"--requestheader-allowed-names={certs.FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
                f"--proxy-client-key-file={pki.front_proxy_client.key}",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
                *self.apiserver_args,
            ],
        )
        self._wait(
            f"kube-apiserver /readyz at {a.root_url}",
            lambda: self.client.status("/readyz") == 200,
            self.ready_timeout,
        )
        self.timings.apiserver = self.say_timed("kube-apiserver ready", t)

    def _start_controller_manager(self) -> None:
        t = time.monotonic()
        self.say("starting kube-controller-manager")
        pki = self._need_pki()
        kc = self.workdir / "kcm.kubeconfig"
        self._spawn(
            "kube-controller-manager",
            self.bins.kube_controller_manager,
            [
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={KCM_PORT}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                f"--root-ca-file={pki.ca.cert}",
                f"--service-account-private-key-file={pki.sa_key}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--controllers={self.controllers}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cluster-name={self.prefix}",
                "--leader-elect=false",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                *self.controller_manager_args,
            ],
        )
        paths = (
            "/api/v1/namespaces/default/serviceaccounts/default",
            "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
        )
        self._wait(
            "ServiceAccount default/default and ConfigMap default/kube-root-ca.crt",
            lambda: all(self.client.status(p) == 200 for p in paths),
            self.ready_timeout,
        )
        self.timings.controller_manager = self.say_timed("kube-controller-manager ready", t)

    def _write_state(self) -> None:
        state = {
            "prefix": self.prefix,
            "slot": self.addresses.slot,
            "netns": self.netns,
            "underlay_netns": self.underlay_netns,
            "root_url": self.addresses.root_url,
            "node_url": self.addresses.node_url,
            "kubeconfig": str(self.kubeconfig),
            "node_kubeconfig": str(self.node_kubeconfig),
            "pids": {d.name: d.pid for d in self.daemons.values()},
            "kubernetes_version": self.bins.kubernetes_version,
            "etcd_version": self.bins.etcd_version,
            "owner": self.owner.to_json(),
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    # -- outages (tests/cluster/test_faults.py)
    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone (etcd and kcm keep running): an API server outage as
        the operator and the agents see it. :meth:`start_apiserver` brings it back."""
        d = self.daemons.pop("kube-apiserver", None)
        if d is None:
            raise ControlPlaneError("kube-apiserver is not running")
        terminate([d], grace=self.stop_grace)

    def start_apiserver(self) -> None:
        """Start kube-apiserver again with the flags it had; returns once /readyz is 200."""
        if "kube-apiserver" in self.daemons:
            raise ControlPlaneError("kube-apiserver is running")
        self._start_apiserver()
        self._write_state()

    # -- use
    def kubectl(
        self, *args: str, input_text: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl with the root-netns admin kubeconfig."""
        cmd = [str(self.bins.kubectl), "--kubeconfig", str(self.kubeconfig), *args]
        return run(cmd, check=check, timeout=timeout, input_text=input_text)

    def apply_manifests(self, paths: Sequence[Path], timeout: float = 60.0) -> list[str]:
        """Server-side apply ``paths``; wait for their CRDs to be Established."""
        return apply_manifests(self.bins.kubectl, self.kubeconfig, paths, timeout)

    # -- stop
    def stop(self) -> None:
        """Stop the daemons (API server and kcm before etcd), delete what start created."""
        t = time.monotonic()
        if self.daemons:
            _stop_in_order(list(self.daemons.values()), self.stop_grace)
            self.daemons.clear()
        cleanup(
            self.prefix,
            self.workdir,
            keep_workdir=self.keep_workdir,
            progress=self.say,
            grace=self.stop_grace,
        )
        self._client = None
        self.timings.stop = self.say_timed(f"control plane {self.prefix} stopped", t)


@contextlib.contextmanager
def control_plane(prefix: str = DEFAULT_PREFIX, **kwargs: Any) -> Iterator[ControlPlane]:
    """``with control_plane("ksg") as cp: ...`` (keyword arguments as for :class:`ControlPlane`)."""
    cp = ControlPlane(prefix, **kwargs)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def _quiet(_message: str) -> None:
    pass


def preflight() -> None:
    """Raise ControlPlaneError if this process cannot run the lab: not root, tools missing,
    or the host routes part of the lab's address blocks (underlay.check_host_routes)."""
    if os.geteuid() != 0:
        raise ControlPlaneError("the lab needs root (network namespaces)")
    missing = [t for t in ("ip", "nsenter", "openssl", "curl") if shutil.which(t) is None]
    if missing:
        raise ControlPlaneError(f"the lab needs these tools on PATH: {', '.join(missing)}")
    try:
        underlay.check_host_routes()
    except underlay.HostRouteConflictError as exc:
        raise ControlPlaneError(str(exc)) from None


def status(prefix: str = DEFAULT_PREFIX, workdir: Path | None = None) -> dict[str, Any]:
    """What is known about the control plane ``prefix`` (from its state file and /proc)."""
    wd = workdir or default_workdir(prefix)
    state_file = wd / "state.json"
    result: dict[str, Any] = {
        "prefix": prefix,
        "workdir": str(wd),
        "netns": underlay.netns_exists(cp_netns(prefix)),
        "underlay": underlay.netns_exists(underlay.underlay_netns(prefix)),
        "processes": {str(p): n for p, n in sorted(find_daemons(wd, cp_netns(prefix)).items())},
        "blackholes": underlay.blackholes_present(),
        "running": running(prefix, wd),
    }
    if state_file.exists():
        state = json.loads(state_file.read_text())
        result.update(
            {k: state[k] for k in ("root_url", "node_url", "kubeconfig", "node_kubeconfig")}
        )
        pki = wd / "pki"
        client = ApiClient(state["root_url"], pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
        result["readyz"] = client.status("/readyz", timeout=10)  # a busy machine is slow
    return result


# --------------------------------------------------------------------------- CLI


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="lab name prefix (default ksg)")
    p.add_argument("--workdir", type=Path, default=None, help="default $KSG_LAB_DIR/<prefix>")


def cmd_up(args: argparse.Namespace) -> int:
    cp = ControlPlane(
        args.prefix, workdir=args.workdir, slot=args.slot, keep_workdir=True, detached=True
    )
    try:
        cp.start()
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={cp.kubeconfig}")
    print(f"# from node netns: {cp.node_kubeconfig} ({cp.addresses.node_url})")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    t = time.monotonic()
    removed = cleanup(args.prefix, args.workdir, keep_workdir=args.keep, progress=Progress())
    print(f"removed: {', '.join(removed) or 'nothing'} ({time.monotonic() - t:.1f} s)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    st = status(args.prefix, args.workdir)
    print(json.dumps(st, indent=2))
    return 0 if st.get("readyz") == 200 else 1


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m secgroups_lab.controlplane")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start etcd, kube-apiserver and kcm; leave them running")
    add_cli_arguments(up)
    up.add_argument(
        "--slot", type=int, default=None, help="root-netns /30 slot (default: first free)"
    )
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the control plane and remove its netns and files")
    add_cli_arguments(down)
    down.add_argument("--keep", action="store_true", help="keep the workdir (logs)")
    down.set_defaults(func=cmd_down)
    st = sub.add_parser("status", help="print the state; exit 0 if /readyz answers 200")
    add_cli_arguments(st)
    st.set_defaults(func=cmd_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
