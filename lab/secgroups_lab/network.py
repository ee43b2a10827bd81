"""The lab network: nodes, pods and an outside host as network namespaces with real traffic.

Topology (addresses in ``docs/lab.md``, section "Network")::

    <prefix>-ul: bridge br0 (secgroups_lab.underlay) ── 100.64.254.0/24, fd64:5ec:0:fe::/64
       │                  │                     │
    <prefix>-n1 eth0   <prefix>-n2 eth0     <prefix>-ext eth0 (.200) + 100.64.250.0/24 on lo
       │ ksg<hash> (100.64.1.1/32, fe80::1)     (the "outside": any address of its prefixes)
    <prefix>-p-<hash> eth0 100.64.1.2/32, fd64:5ec:0:1::2/128, default via the host veth

* A **node** is a netns with IPv4/IPv6 forwarding, an underlay veth ``eth0`` and routes to
  the other nodes' pod CIDRs (via their underlay address) and to the outside prefixes. No
  default route. It is also where a kubelet will run later, so nothing node-specific is
  in the root netns.
* A **pod** is a netns joined to its node by a routed veth (Calico/kindnet/CNI ``ptp``
  style): the pod has its /32 and /128 on ``eth0`` and default routes to the gateway
  (the pod CIDR's first address, and ``fe80::1``) that sits on the host veth; the node has a
  /32 and a /128 route to the pod. So pod traffic crosses the node's ``forward`` hook and
  node→pod traffic its ``output`` hook.
* Every pod (and the outside host) runs a probe daemon (:mod:`secgroups_lab.probes`).

Sysctls are set only inside lab netns. IPv6 DAD is off on lab interfaces. Names are
deterministic: pod netns ``<prefix>-p-<h>`` and host veth ``ksg<h>`` with ``h`` = 8 hex of
sha256(``namespace/name``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from secgroups_lab import underlay
from secgroups_lab._cmd import Progress, in_netns, ip, run
from secgroups_lab.probes import ProbeClient, ProbeDaemon, start_daemon, stop_daemons, wait_ready
from secgroups_lab.probewire import DEFAULT_PORTS

UNDERLAY_V4 = ipaddress.IPv4Network("100.64.254.0/24")
UNDERLAY_V6 = ipaddress.IPv6Network("fd64:5ec:0:fe::/64")
OUTSIDE_INDEX = 200  # the outside host's underlay host number (100.64.254.200, fd64:5ec:0:fe::c8)
OUTSIDE_V4 = ipaddress.IPv4Network("100.64.250.0/24")
OUTSIDE_V6 = ipaddress.IPv6Network("fd64:5ec:0:fa::/64")
OUTSIDE_ADDR_V4 = "100.64.250.10"
OUTSIDE_ADDR_V6 = "fd64:5ec:0:fa::a"
GATEWAY_V6 = "fe80::1"
MAX_NODE_INDEX = 249  # 100.64.250-255 are the outside, the underlay and the API /30s
DEFAULT_RUN_ROOT = Path("/run/kube-secgroups-lab")

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# Sysctls of every lab netns. rp_filter off: anti-spoofing is the agent's job, and the lab
# must deliver forged packets when no policy is loaded so that tests can see the difference.
_COMMON_SYSCTLS: dict[str, str] = {
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv4.ping_group_range": "0 2147483647",  # ICMP "ping" sockets for the probes
}
_ROUTER_SYSCTLS: dict[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv6.conf.default.forwarding": "1",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
}


class LabNetworkError(RuntimeError):
    """A lab network operation failed."""


# ------------------------------------------------------------------------ netns helpers
def netns_path(netns: str) -> Path:
    return underlay.NETNS_DIR / netns


def run_in(
    netns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``netns`` (``nsenter --net``) and capture its output."""
    return run(in_netns(netns, argv), check=check, timeout=timeout)


def set_sysctls(netns: str, values: Mapping[str, str], *, timeout: float = 10.0) -> None:
    """Write ``values`` (dotted sysctl names) inside ``netns``, without a subprocess.

    /proc/sys/net is resolved against the network namespace of the *calling thread*, so a
    short-lived thread joins the netns (setns), writes, and ends; the process is untouched.
    """
    errors: list[BaseException] = []

    def work() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            for key, value in values.items():
                Path("/proc/sys", *key.split(".")).write_text(value)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=work, name=f"sysctl-{netns}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise LabNetworkError(f"setting sysctls in {netns} took more than {timeout} s")
    if errors:
        raise LabNetworkError(f"sysctls in {netns}: {errors[0]}") from errors[0]


def ip_batch(
    commands: Sequence[str],
    *,
    netns: str | None = None,
    timeout: float = 30.0,
    check: bool = True,
) -> None:
    """Run ``ip [-n netns] -batch -`` with one command per line (one process for all).
    With ``check=False`` every line is tried (``-force``) and failures are ignored."""
    if not commands:
        return
    force = [] if check else ["-force"]
    cmd = ["ip", *(["-n", netns] if netns else []), *force, "-batch", "-"]
    run(cmd, input_text="\n".join(commands) + "\n", timeout=timeout, check=check)


def check_lab_network(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """Raise ValueError unless ``net`` lies inside the lab supernets (100.64.0.0/10 and the
    ULA fd64:5ec::/48, which the root netns blackholes). Note: ``fd64:5ec:1::/64`` is NOT
    inside the /48; lab subnets are ``fd64:5ec:0:<subnet>::/64``."""
    if isinstance(net, ipaddress.IPv6Network):
        inside = net.subnet_of(ipaddress.IPv6Network(underlay.LAB_V6_SUPERNET))
    else:
        inside = net.subnet_of(ipaddress.IPv4Network(underlay.LAB_V4_SUPERNET))
    if not inside:
        sup = underlay.LAB_V6_SUPERNET if net.version == 6 else underlay.LAB_V4_SUPERNET
        raise ValueError(f"{net} is not inside the lab supernet {sup}")


def pod_hash(namespace: str, name: str) -> str:
    return hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]


def _v6_host(net: ipaddress.IPv6Network, host: int) -> str:
    return str(net.network_address + host)


def _netns_processes(names: Iterable[str]) -> list[int]:
    """PIDs of the processes whose network namespace is one of the named ones."""
    inodes = set()
    for n in names:
        with contextlib.suppress(OSError):
            inodes.add(netns_path(n).stat().st_ino)
    if not inodes:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            link = os.readlink(entry / "ns" / "net")
        except OSError:
            continue
        if link.startswith("net:[") and int(link[5:-1]) in inodes:
            pids.append(int(entry.name))
    return pids


def netns_unavailable() -> str | None:
    """Why lab network namespaces cannot be made here (a one-line reason), or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    name = f"ksgcheck{os.getpid()}"
    try:
        run(["ip", "netns", "add", name], timeout=10.0)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return f"`ip netns add` does not work here: {exc}"
    run(["ip", "netns", "del", name], check=False, timeout=10.0)
    return None


# ------------------------------------------------------------------------ topology data
@dataclass(frozen=True)
class NodeNet:
    """A node: its netns, underlay addresses and pod CIDRs."""

    index: int
    netns: str
    underlay_v4: str
    underlay_v6: str
    pod_cidr_v4: ipaddress.IPv4Network
    pod_cidr_v6: ipaddress.IPv6Network

    @property
    def gateway_v4(self) -> str:
        """The pods' IPv4 gateway: the pod CIDR's first address, on every host veth."""
        return str(self.pod_cidr_v4.network_address + 1)

    @property
    def gateway_v6(self) -> str:
        return GATEWAY_V6

    @property
    def name(self) -> str:
        return f"n{self.index}"


@dataclass(frozen=True)
class PodNet:
    """A pod: its netns, host veth (in the node netns), addresses and probe daemon."""

    namespace: str
    name: str
    node: int
    netns: str
    host_ifname: str
    ipv4: str
    ipv6: str
    control_socket: Path
    log: Path

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label(self) -> str:
        return self.key

    @property
    def ips(self) -> tuple[str, str]:
        return (self.ipv4, self.ipv6)


@dataclass(frozen=True)
class OutsideHost:
    """The outside: one netns on the underlay that owns all of 100.64.250.0/24 and
    fd64:5ec:0:fa::/64 (local routes, so every address there answers); ``ipv4``/``ipv6``
    are its canonical addresses and the source of its own probes."""

    netns: str
    underlay_v4: str
    underlay_v6: str
    control_socket: Path
    log: Path
    ipv4: str = OUTSIDE_ADDR_V4
    ipv6: str = OUTSIDE_ADDR_V6
    cidr_v4: ipaddress.IPv4Network = OUTSIDE_V4
    cidr_v6: ipaddress.IPv6Network = OUTSIDE_V6

    @property
    def label(self) -> str:
        return "outside"

    @property
    def ips(self) -> tuple[str, str]:
        return (self.ipv4, self.ipv6)


@dataclass(frozen=True)
class NodeHost:
    """A node seen as a probe endpoint (daemon in the node netns; started on request)."""

    node: NodeNet
    control_socket: Path
    log: Path

    @property
    def netns(self) -> str:
        return self.node.netns

    @property
    def label(self) -> str:
        return f"node/{self.node.name}"

    @property
    def ipv4(self) -> str:
        return self.node.underlay_v4

    @property
    def ipv6(self) -> str:
        return self.node.underlay_v6


@dataclass
class _PodSlot:
    pod: PodNet
    host_index: int


# ------------------------------------------------------------------------ the lab
@dataclass
class Timing:
    """Seconds spent, for reports and benchmarks."""

    up: float = 0.0
    last_pod_add: float = 0.0
    last_pod_delete: float = 0.0
    teardown: float = 0.0


class Lab:
    """Nodes, pods and an outside host as network namespaces, with probe daemons.

    ``Lab(prefix, nodes=N)`` only records the wanted shape; :meth:`up` (also run by
    ``with Lab(...)`` and by the first :meth:`add_node`/:meth:`add_pod`) builds the underlay,
    the outside host and the ``N`` nodes. :meth:`teardown` removes exactly what this object
    made; :func:`cleanup_leftovers` removes what a killed run left behind.
    """

    def __init__(
        self,
        prefix: str,
        nodes: int = 0,
        *,
        run_dir: Path | None = None,
        probe_ports: Sequence[int] = DEFAULT_PORTS,
        outside: bool = True,
        probes: bool = True,
        keep_logs: bool = False,
        verbose: bool = False,
    ) -> None:
        self.prefix = underlay.validate_prefix(prefix)
        self.run_dir = run_dir or default_run_dir(prefix)
        self.probe_ports = tuple(probe_ports)
        self.want_nodes = nodes
        self.want_outside = outside
        self.probes_enabled = probes
        self.keep_logs = keep_logs
        self.say = Progress(verbose)
        self.nodes: dict[int, NodeNet] = {}
        self.pods: dict[str, PodNet] = {}
        self.outside: OutsideHost | None = None
        self.node_hosts: dict[int, NodeHost] = {}
        self.timing = Timing()
        self._slots: dict[str, _PodSlot] = {}
        self._daemons: dict[str, ProbeDaemon] = {}  # by netns
        self._netns: list[str] = []  # created by us, in creation order
        # Netns that get routes to every node's pod CIDRs: netns -> (IPv4, IPv6) source.
        self._route_peers: dict[str, tuple[str | None, str | None]] = {}
        self._underlay_created = False
        self._made_run_dir = False
        self._is_up = False
        self._lock = threading.RLock()

    # -------------------------------------------------------------- context manager
    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    # -------------------------------------------------------------- names
    def node_netns(self, index: int) -> str:
        return f"{self.prefix}-n{index}"

    @property
    def outside_netns(self) -> str:
        return f"{self.prefix}-ext"

    def pod_netns(self, namespace: str, name: str) -> str:
        return f"{self.prefix}-p-{pod_hash(namespace, name)}"

    @staticmethod
    def host_ifname(namespace: str, name: str) -> str:
        return f"ksg{pod_hash(namespace, name)}"

    def _sock(self, short: str) -> Path:
        return self.run_dir / "probes" / f"{short}.sock"

    def _log(self, short: str) -> Path:
        return self.run_dir / "probes" / f"{short}.log"

    # -------------------------------------------------------------- lifecycle
    def up(self) -> Lab:
        """Build the underlay, the outside host and the wanted nodes (idempotent)."""
        with self._lock:
            if self._is_up:
                return self
            t0 = time.monotonic()
            underlay.check_host_routes()  # before anything is made (HostRouteConflictError)
            self._is_up = True
            if not self.run_dir.exists():
                self._made_run_dir = True
            (self.run_dir / "probes").mkdir(parents=True, exist_ok=True)
            ul = underlay.ensure_underlay(self.prefix)
            self._underlay_created = ul.created
            if self.want_outside:
                self._add_outside()
            for _ in range(self.want_nodes):
                self.add_node()
            self.timing.up = time.monotonic() - t0
            self.say.timed(f"lab {self.prefix} up: {len(self.nodes)} nodes", t0)
            return self

    def teardown(self, *, timeout: float = 10.0) -> None:
        """Stop the probe daemons and delete every netns this lab made (pods first), the
        underlay if this lab made it and nothing else is plugged into it, and the run dir."""
        with self._lock:
            t0 = time.monotonic()
            stop_daemons(list(self._daemons.values()), timeout=timeout)
            self._daemons.clear()
            # Anything else still running in our netns (started by a test) would keep the
            # netns alive after the unmount.
            self._kill(_netns_processes(self._netns), timeout)
            for peer in [p for p in self._route_peers if p not in self._netns]:
                for node in self.nodes.values():
                    if underlay.netns_exists(peer):
                        dels = [f"route del {node.pod_cidr_v4}", f"route del {node.pod_cidr_v6}"]
                        ip_batch(dels, netns=peer, check=False)
            self._route_peers.clear()
            pods = [n for n in self._netns if f"{self.prefix}-p-" in n]
            rest = [n for n in reversed(self._netns) if n not in pods]
            _detach_underlay(self.prefix, rest)
            ip_batch([f"netns del {n}" for n in pods + rest if underlay.netns_exists(n)])
            self._netns.clear()
            self.pods.clear()
            self._slots.clear()
            self.nodes.clear()
            self.node_hosts.clear()
            self.outside = None
            if self._underlay_created and not _bridge_ports(self.prefix):
                underlay.remove_underlay(self.prefix)
            self._underlay_created = False
            if not self.keep_logs and self._made_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            self._is_up = False
            self.timing.teardown = time.monotonic() - t0

    @staticmethod
    def _kill(pids: Sequence[int], timeout: float) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.02)

    def _new_netns(self, name: str, sysctls: Mapping[str, str]) -> None:
        if underlay.netns_exists(name):
            raise LabNetworkError(
                f"netns {name} already exists: lab {self.prefix} is running, or a killed run "
                f"left it (`.venv/bin/secgroups-lab down --prefix {self.prefix}` removes it)"
            )
        underlay.create_netns(name)
        self._netns.append(name)
        set_sysctls(name, sysctls)

    # -------------------------------------------------------------- outside host
    def _add_outside(self) -> None:
        ns = self.outside_netns
        self._new_netns(ns, {**_COMMON_SYSCTLS, "net.ipv6.ip_nonlocal_bind": "1"})
        u4 = str(UNDERLAY_V4.network_address + OUTSIDE_INDEX)
        u6 = _v6_host(UNDERLAY_V6, OUTSIDE_INDEX)
        underlay.attach(
            self.prefix,
            ns,
            "eth0",
            [f"{u4}/{UNDERLAY_V4.prefixlen}", f"{u6}/{UNDERLAY_V6.prefixlen}"],
        )
        ip_batch(
            [
                f"addr add {OUTSIDE_ADDR_V4}/32 dev lo",
                f"addr add {OUTSIDE_ADDR_V6}/128 dev lo nodad",
                # The whole prefixes are local ("AnyIP"): every address in them answers.
                f"route add local {OUTSIDE_V4} dev lo",
                f"route add local {OUTSIDE_V6} dev lo",
            ],
            netns=ns,
        )
        self.outside = OutsideHost(
            netns=ns,
            underlay_v4=u4,
            underlay_v6=u6,
            control_socket=self._sock("ext"),
            log=self._log("ext"),
        )
        # Outside → pods, sourced from the outside's canonical addresses.
        self.route_pods_from(ns, src_v4=OUTSIDE_ADDR_V4, src_v6=OUTSIDE_ADDR_V6)
        if self.probes_enabled:
            self._start_daemons([("outside", ns, "ext")])

    def route_pods_from(
        self, netns: str, *, src_v4: str | None = None, src_v6: str | None = None
    ) -> None:
        """Give ``netns`` (plugged into the underlay, e.g. a control plane's) routes to every
        node's pod CIDRs via the node, now and for nodes added later; removed again by
        :meth:`teardown`. ``src_*`` pin the source address of its traffic to pods."""
        with self._lock:
            self._route_peers[netns] = (src_v4, src_v6)
            for node in self.nodes.values():
                self._route_node_from(netns, node)

    def _route_node_from(self, netns: str, node: NodeNet) -> None:
        s4, s6 = self._route_peers[netns]
        ip_batch(
            [
                f"route replace {node.pod_cidr_v4} via {node.underlay_v4}"
                + (f" src {s4}" if s4 else ""),
                f"route replace {node.pod_cidr_v6} via {node.underlay_v6}"
                + (f" src {s6}" if s6 else ""),
            ],
            netns=netns,
        )

    def _unroute_node(self, node: NodeNet) -> None:
        """Remove the routes other hosts have to ``node``'s pod CIDRs."""
        dels = [f"route del {node.pod_cidr_v4}", f"route del {node.pod_cidr_v6}"]
        for other in self.nodes.values():
            if other.index != node.index:
                ip_batch(dels, netns=other.netns, check=False)
        for peer in self._route_peers:
            if underlay.netns_exists(peer):
                ip_batch(dels, netns=peer, check=False)

    # -------------------------------------------------------------- nodes
    def add_node(
        self,
        index: int | None = None,
        *,
        pod_cidr_v4: str | None = None,
        pod_cidr_v6: str | None = None,
    ) -> NodeNet:
        """Add node ``index`` (default: the next free one). Its pod CIDRs default to
        ``100.64.<i>.0/24`` and ``fd64:5ec:0:<i in hex>::/64``; pass the Node's
        ``spec.podCIDRs`` when a real control plane assigns them."""
        with self._lock:
            self.up()
            if index is None:
                index = next(i for i in range(1, MAX_NODE_INDEX + 1) if i not in self.nodes)
            if not 1 <= index <= MAX_NODE_INDEX or index in self.nodes:
                raise LabNetworkError(f"node index {index} is taken or out of 1..{MAX_NODE_INDEX}")
            c4 = ipaddress.IPv4Network(pod_cidr_v4 or f"100.64.{index}.0/24")
            c6 = ipaddress.IPv6Network(pod_cidr_v6 or f"fd64:5ec:0:{index:x}::/64")
            check_lab_network(c4)
            check_lab_network(c6)
            node = NodeNet(
                index=index,
                netns=self.node_netns(index),
                underlay_v4=str(UNDERLAY_V4.network_address + index),
                underlay_v6=_v6_host(UNDERLAY_V6, index),
                pod_cidr_v4=c4,
                pod_cidr_v6=c6,
            )
            self._new_netns(node.netns, {**_COMMON_SYSCTLS, **_ROUTER_SYSCTLS})
            underlay.attach(
                self.prefix,
                node.netns,
                "eth0",
                [
                    f"{node.underlay_v4}/{UNDERLAY_V4.prefixlen}",
                    f"{node.underlay_v6}/{UNDERLAY_V6.prefixlen}",
                ],
            )
            # Routes: this node → other nodes' pods and the outside; others → this node.
            cmds = [
                f"route add {OUTSIDE_V4} via {UNDERLAY_V4.network_address + OUTSIDE_INDEX}",
                f"route add {OUTSIDE_V6} via {_v6_host(UNDERLAY_V6, OUTSIDE_INDEX)}",
            ]
            for other in self.nodes.values():
                cmds += [
                    f"route add {other.pod_cidr_v4} via {other.underlay_v4}",
                    f"route add {other.pod_cidr_v6} via {other.underlay_v6}",
                ]
                ip_batch(
                    [
                        f"route add {c4} via {node.underlay_v4}",
                        f"route add {c6} via {node.underlay_v6}",
                    ],
                    netns=other.netns,
                )
            ip_batch(cmds, netns=node.netns)
            self.nodes[index] = node
            for peer in self._route_peers:
                self._route_node_from(peer, node)
            return node

    def delete_node(self, index: int) -> None:
        """Delete node ``index``, its pods, and the routes other hosts had to it."""
        with self._lock:
            node = self.nodes[index]
            self.delete_pods([p for p in self.pods.values() if p.node == index])
            host = self.node_hosts.pop(index, None)
            if host is not None:
                stop_daemons([self._daemons.pop(node.netns)])
            self._kill(_netns_processes([node.netns]), 5.0)
            self._unroute_node(node)
            _detach_underlay(self.prefix, [node.netns])
            ip_batch([f"netns del {node.netns}"])
            self._netns.remove(node.netns)
            del self.nodes[index]

    def node(self, index: int) -> NodeNet:
        return self.nodes[index]

    def node_host(self, index: int) -> NodeHost:
        """The node as a probe endpoint; starts a probe daemon in the node netns once."""
        with self._lock:
            if index not in self.node_hosts:
                node = self.nodes[index]
                host = NodeHost(node, self._sock(node.name), self._log(node.name))
                self._start_daemons([(host.label, node.netns, node.name)])
                self.node_hosts[index] = host
            return self.node_hosts[index]

    # -------------------------------------------------------------- pods
    def add_pod(
        self,
        node: int,
        namespace: str,
        name: str,
        *,
        before_daemons: Callable[[list[PodNet]], None] | None = None,
    ) -> PodNet:
        """Create pod ``namespace/name`` on ``node`` (netns, routed veth, probe daemon)."""
        return self.add_pods([(node, namespace, name)], before_daemons=before_daemons)[0]

    def add_pods(
        self,
        specs: Sequence[tuple[int, str, str]],
        *,
        before_daemons: Callable[[list[PodNet]], None] | None = None,
    ) -> list[PodNet]:
        """Create several pods at once (one ``ip`` batch per node, daemons in parallel).

        ``before_daemons`` runs once the network is plumbed and before any probe daemon
        starts (the simulated kubelet's CNI ADD: a runtime starts containers only after
        its CNI chain returned); if it raises, the pods are removed again."""
        with self._lock:
            self.up()
            t0 = time.monotonic()
            new: list[_PodSlot] = []
            used: dict[int, set[int]] = {}
            for s in self._slots.values():
                used.setdefault(s.pod.node, set()).add(s.host_index)
            for node_index, namespace, name in specs:
                key = f"{namespace}/{name}"
                if key in self.pods or any(s.pod.key == key for s in new):
                    raise LabNetworkError(f"pod {key} already exists")
                node = self.nodes.get(node_index)
                if node is None:
                    raise LabNetworkError(f"no node {node_index}")
                taken = used.setdefault(node_index, set())
                host_index = self._free_host(node, taken)
                taken.add(host_index)
                h = pod_hash(namespace, name)
                if any(p.host_ifname == f"ksg{h}" for p in self.pods.values()):
                    raise LabNetworkError(f"pod name hash collision for {key}")
                pod = PodNet(
                    namespace=namespace,
                    name=name,
                    node=node_index,
                    netns=self.pod_netns(namespace, name),
                    host_ifname=f"ksg{h}",
                    ipv4=str(node.pod_cidr_v4.network_address + host_index),
                    ipv6=_v6_host(node.pod_cidr_v6, host_index),
                    control_socket=self._sock(f"p-{h}"),
                    log=self._log(f"p-{h}"),
                )
                new.append(_PodSlot(pod, host_index))
            try:
                self._plumb_pods([s.pod for s in new])
                if before_daemons is not None:
                    before_daemons([s.pod for s in new])
                if self.probes_enabled:
                    self._start_daemons(
                        [
                            (s.pod.label, s.pod.netns, f"p-{pod_hash(s.pod.namespace, s.pod.name)}")
                            for s in new
                        ]
                    )
            except BaseException:
                self._remove_pods([s.pod for s in new])
                raise
            for s in new:
                self._slots[s.pod.key] = s
                self.pods[s.pod.key] = s.pod
            self.timing.last_pod_add = time.monotonic() - t0
            return [s.pod for s in new]

    @staticmethod
    def _free_host(node: NodeNet, taken: set[int]) -> int:
        last = node.pod_cidr_v4.num_addresses - 2  # the broadcast address stays unused
        for host in range(2, last + 1):
            if host not in taken:
                return host
        raise LabNetworkError(f"pod CIDR {node.pod_cidr_v4} of node {node.index} is full")

    def _plumb_pods(self, pods: Sequence[PodNet]) -> None:
        ip_batch([f"netns add {p.netns}" for p in pods])
        self._netns.extend(p.netns for p in pods)
        pod_sysctls = {**_COMMON_SYSCTLS, "net.ipv6.conf.all.forwarding": "0"}
        for p in pods:
            set_sysctls(p.netns, pod_sysctls)
        by_node: dict[int, list[str]] = {}
        for p in pods:
            node = self.nodes[p.node]
            by_node.setdefault(p.node, []).extend(
                [
                    f"link add {p.host_ifname} type veth peer name eth0 netns {p.netns}",
                    f"link set {p.host_ifname} up",
                    f"addr add {node.gateway_v4}/32 dev {p.host_ifname}",
                    f"addr add {GATEWAY_V6}/64 dev {p.host_ifname} nodad",
                    f"route add {p.ipv4}/32 dev {p.host_ifname} scope link",
                    f"route add {p.ipv6}/128 dev {p.host_ifname}",
                ]
            )
        for node_index, cmds in by_node.items():
            ip_batch(cmds, netns=self.nodes[node_index].netns)
        for p in pods:
            gw4 = self.nodes[p.node].gateway_v4
            ip_batch(
                [
                    "link set lo up",
                    "link set eth0 up",
                    f"addr add {p.ipv4}/32 dev eth0",
                    f"addr add {p.ipv6}/128 dev eth0 nodad",
                    f"route add {gw4}/32 dev eth0 scope link",
                    f"route add default via {gw4} dev eth0",
                    f"route add default via {GATEWAY_V6} dev eth0",
                ],
                netns=p.netns,
            )

    def delete_pod(self, pod: PodNet | str) -> None:
        """Delete a pod (by object or ``namespace/name``): daemon, veth, netns."""
        self.delete_pods([pod])

    def delete_pods(self, pods: Sequence[PodNet | str]) -> None:
        with self._lock:
            t0 = time.monotonic()
            objs = [self.pods[p] if isinstance(p, str) else self.pods[p.key] for p in pods]
            self._remove_pods(objs)
            for p in objs:
                self.pods.pop(p.key, None)
                self._slots.pop(p.key, None)
            self.timing.last_pod_delete = time.monotonic() - t0

    def _remove_pods(self, pods: Sequence[PodNet]) -> None:
        daemons = [self._daemons.pop(p.netns) for p in pods if p.netns in self._daemons]
        stop_daemons(daemons)
        self._kill(_netns_processes([p.netns for p in pods]), 5.0)
        by_node: dict[int, list[str]] = {}
        for p in pods:
            node = self.nodes.get(p.node)
            if node is not None and underlay.link_exists(p.host_ifname, node.netns):
                # Deleting the host end removes the pair and the routes synchronously; a
                # deleted netns would take its veth down only later, from a kernel worker.
                by_node.setdefault(p.node, []).append(f"link del {p.host_ifname}")
        for node_index, cmds in by_node.items():
            ip_batch(cmds, netns=self.nodes[node_index].netns)
        ip_batch([f"netns del {p.netns}" for p in pods if underlay.netns_exists(p.netns)])
        for p in pods:
            if p.netns in self._netns:
                self._netns.remove(p.netns)

    def pod(self, key: str) -> PodNet:
        return self.pods[key]

    # -------------------------------------------------------------- probes
    def _start_daemons(self, hosts: Sequence[tuple[str, str, str]]) -> None:
        """Start one daemon per ``(label, netns, short name)`` and wait until all answer."""
        started = [
            start_daemon(label, ns, self._sock(short), self._log(short), self.probe_ports)
            for label, ns, short in hosts
        ]
        for d in started:
            self._daemons[d.netns] = d
        wait_ready(started, timeout=30.0)

    def client(self, host: PodNet | OutsideHost | NodeHost | str) -> ProbeClient:
        """A probe client for a pod (object or ``namespace/name``), the outside or a node."""
        if isinstance(host, str):
            host = self.pods[host]
        return ProbeClient(host)

    def daemon_pids(self) -> list[int]:
        return sorted(d.pid for d in self._daemons.values())

    def run_in(
        self, netns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        return run_in(netns, argv, check=check, timeout=timeout)

    def endpoints(self) -> list[PodNet | OutsideHost]:
        """Every pod (sorted by node, then key) and then the outside host."""
        pods: list[PodNet] = sorted(self.pods.values(), key=_pod_order)
        eps: list[PodNet | OutsideHost] = [*pods]
        if self.outside is not None:
            eps.append(self.outside)
        return eps

    def netns_names(self) -> list[str]:
        return list(self._netns)


def _pod_order(pod: PodNet) -> tuple[int, str]:
    return (pod.node, pod.key)


# ------------------------------------------------------------------------ cleanup
def default_run_dir(prefix: str) -> Path:
    """``${KSG_LAB_DIR:-/run/kube-secgroups-lab}/<prefix>-net`` (the control plane uses
    ``<prefix>``; they are kept apart so that neither cleanup removes the other's files)."""
    env = os.environ.get("KSG_LAB_DIR")
    return (Path(env) if env else DEFAULT_RUN_ROOT) / f"{prefix}-net"


def _bridge_ports(prefix: str) -> list[str]:
    ul = underlay.underlay_netns(prefix)
    if not underlay.netns_exists(ul):
        return []
    out = ip("-o", "link", "show", "master", underlay.BRIDGE, netns=ul, check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _detach_underlay(prefix: str, netns: Sequence[str]) -> None:
    """Delete the underlay veths of ``netns`` now: a deleted netns releases its interfaces
    only later, from a kernel worker, and the bridge must be seen empty right away."""
    ul = underlay.underlay_netns(prefix)
    ports = set(_bridge_ports(prefix))
    peers = [underlay.peer_name(prefix, n, "eth0") for n in netns]
    ip_batch([f"link del {p}" for p in peers if p in ports], netns=ul)


def lab_netns(prefix: str) -> list[str]:
    """The netns this module names for ``prefix`` that exist now (nodes, pods, outside)."""
    p = underlay.validate_prefix(prefix)
    names = []
    for n in underlay.netns_list():
        rest = n.removeprefix(f"{p}-")
        if rest == n:
            continue
        if rest == "ext" or rest.startswith("p-") or (rest[:1] == "n" and rest[1:].isdigit()):
            names.append(n)
    return names


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])


def network_owner(prefix: str) -> int | None:
    """The live process that runs the network of ``Lab(prefix)`` (another test session, a
    simulated kubelet), or None if nobody does (then what exists of it is leftovers).

    The owner is the parent of the lab's probe daemons (other than us): a probe daemon
    exits by itself within a second once its parent is gone (``probed --parent-pid``), so
    one that runs has its owner alive.
    """
    for pid in _netns_processes(lab_netns(prefix)):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"secgroups_lab.probed" not in argv:
            continue
        parent = _parent(pid)
        if parent not in (0, 1, os.getpid()) and Path(f"/proc/{parent}").exists():
            return parent
    return None


def cleanup_leftovers(
    prefix: str, *, run_dir: Path | None = None, underlay_too: bool = True, timeout: float = 10.0
) -> list[str]:
    """Remove what a killed run of ``Lab(prefix)`` left: processes in its netns, the netns,
    its run dir, and (``underlay_too``) the underlay if no control plane (``<prefix>-cp``)
    exists and nothing is plugged into its bridge. Returns what was removed.

    A network that a live process still runs is not leftovers: LabNetworkError, nothing
    removed (two test sessions with the same prefix must not tear down each other's lab)."""
    owner = network_owner(prefix)
    if owner is not None:
        try:
            cmd = Path(f"/proc/{owner}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        raise LabNetworkError(
            f"lab network {prefix} is in use by process {owner} (`{cmd.strip()[:100]}`); "
            "nothing was removed: wait for it, or use another prefix"
        )
    removed: list[str] = []
    names = lab_netns(prefix)
    pids = _netns_processes(names)
    if pids:
        Lab._kill(pids, timeout)
        removed.append(f"{len(pids)} processes")
    if names:
        pods = [n for n in names if "-p-" in n]
        _detach_underlay(prefix, [n for n in names if n not in pods])
        ip_batch([f"netns del {n}" for n in pods + [n for n in names if n not in pods]])
        removed += names
    rd = run_dir or default_run_dir(prefix)
    if rd.exists():
        shutil.rmtree(rd, ignore_errors=True)
        removed.append(str(rd))
    cp = f"{prefix}-cp"
    ul = underlay.underlay_netns(prefix)
    if (
        underlay_too
        and underlay.netns_exists(ul)
        and not underlay.netns_exists(cp)
        and not _bridge_ports(prefix)
    ):
        underlay.remove_underlay(prefix)
        removed.append(ul)
    return removed
