"""``kubectl secgroups`` answers what the packets do (issue 7: "trace agrees with real probes
in the lab for a scenario matrix").

The shop scenario of ``test_dataplane_rules.py`` (``tests/dataplanecases.py``) is written as
YAML manifests — Namespaces, Pods with the lab's real ``status.podIPs`` and
``spec.nodeName``, SecurityGroups, rules, IP address groups — into a folder; the same
objects, compiled, run on real agents in a 2-node lab (``ksgcli``). Then the real console
script ``kubectl-secgroups`` answers offline from the folder:

* ``matrix -f DIR -A --ip … -o json`` for IPv4 and IPv6 (TCP on eight ports, UDP on two,
  ICMP, GRE), and every cell of its grids that the lab can probe (pods and outside
  addresses; not outside → outside) is probed: the CLI's verdict must be what the packets
  did — its grids are the ``expected`` of the lab's matrix;
* ``trace`` for a handful of connections (pods and IPs, both families): its verdict and
  exit status must be what a real probe of that connection does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.dataplane_harness import (
    ALLOWED_TIMEOUT,
    DENIED_TIMEOUT,
    Alias,
    DataplaneLab,
    Oracle,
    assert_all_match,
    dataplane_unavailable,
    run_gre_matrix,
)
from tests.dataplanecases import (
    OUTSIDE_ALIASES,
    OUTSIDE_CANONICAL,
    SHOP,
    SHOP_PODS,
    SHOP_PROBE_PORTS,
    Manifest,
    shop_manifests,
)

from secgroups_lab.matrix import Case, Family, MatrixResult, Target, run_matrix
from secgroups_lab.probes import Endpoint, ProbeClient, Proto

_why = dataplane_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netns

PREFIX = "ksgcli"
CLI = Path(sys.executable).with_name("kubectl-secgroups")
PORTS = ",".join([*(f"tcp/{p}" for p in SHOP_PROBE_PORTS), "udp/5432", "udp/8080", "icmp", "gre"])


def kubectl_secgroups(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed console script (the kubectl plugin), with a deadline."""
    return subprocess.run(
        [str(CLI), *argv], capture_output=True, text=True, timeout=60, check=False
    )


@dataclass
class Scenario:
    dp: DataplaneLab
    folder: Path
    oracle: Oracle

    def endpoints(self) -> list[Endpoint]:
        return [*self.dp.pods.values(), self.dp.outside, *self.dp.aliases()]


def write_manifests(folder: Path, docs: Sequence[Manifest]) -> None:
    """One multi-document YAML file per kind, as a user's repository would hold them."""
    by_kind: dict[str, list[Manifest]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for kind, items in by_kind.items():
        (folder / f"{kind.lower()}s.yaml").write_text(yaml.safe_dump_all(items, sort_keys=False))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    if not CLI.exists():
        pytest.skip(f"the console script {CLI} is not installed (pip install -e '.[cli]')")
    workdir = tmp_path_factory.mktemp("cli-agents")
    folder = tmp_path_factory.mktemp("cli-manifests")
    with DataplaneLab(PREFIX, SHOP_PODS, workdir, probe_ports=SHOP_PROBE_PORTS) as dp:
        docs = shop_manifests(dp.pods)
        step = dp.operator.apply(docs)
        write_manifests(folder, docs)
        yield Scenario(dp, folder, Oracle(step.policy))


# ----------------------------------------------------------------------------- matrix
@dataclass(frozen=True)
class CliMatrix:
    """The CLI's grids for one family: (from, to, port text) → allowed."""

    family: Family
    peers: dict[str, str]  # CLI name → IP
    cells: dict[tuple[str, str, str], bool]

    @classmethod
    def run(cls, scenario: Scenario, family: Family) -> CliMatrix:
        ips = [
            OUTSIDE_CANONICAL[family == 6],
            *(a[family == 6] for a in OUTSIDE_ALIASES.values()),
        ]
        proc = kubectl_secgroups(
            "matrix",
            "-f",
            str(scenario.folder),
            "-A",
            "--ports",
            PORTS,
            "--family",
            f"IPv{family}",
            *(arg for ip in ips for arg in ("--ip", ip)),
            "-o",
            "json",
        )
        assert proc.returncode == 0, proc.stderr
        doc: dict[str, Any] = json.loads(proc.stdout)
        peers = {p["name"]: p["ip"] for p in doc["peers"]}
        cells = {
            (c["from"], c["to"], g["port"]): bool(c["allowed"])
            for g in doc["grids"]
            for c in g["cells"]
        }
        return cls(family, peers, cells)

    def name_of(self, ep: Endpoint | Target) -> str:
        """The CLI's name for a lab endpoint: ``namespace/name`` for pods, else its IP."""
        ip = ep.ipv4 if self.family == 4 else ep.ipv6
        for name, peer_ip in self.peers.items():
            if peer_ip == ip:
                return name
        raise KeyError(f"{ep.label} ({ip}) is not a peer of the CLI's matrix")

    def __call__(self, src: Endpoint, dst: Target, case: Case) -> bool:
        port = f"{case.proto}/{case.port}" if case.proto in ("tcp", "udp") else case.proto
        return self.cells[(self.name_of(src), self.name_of(dst), port)]


def cases_of(family: Family) -> list[Case]:
    return [
        *(Case("tcp", p, family) for p in SHOP_PROBE_PORTS),
        Case("udp", 5432, family),
        Case("udp", 8080, family),
        Case("icmp", 0, family),
    ]


@pytest.mark.parametrize("family", [4, 6], ids=["IPv4", "IPv6"])
def test_cli_matrix_is_what_the_packets_do(scenario: Scenario, family: Family) -> None:
    """Every probe-able cell of ``kubectl-secgroups matrix -o json``: the CLI's verdict is
    the observed one (TCP, UDP, ICMP; GRE in two conntrack-flushed phases)."""
    cli = CliMatrix.run(scenario, family)
    dp = scenario.dp
    pods: list[Target] = list(dp.pods.values())
    outside: list[Target] = [dp.outside, *dp.aliases()]
    senders = scenario.endpoints()
    assert {cli.name_of(e) for e in senders} == set(cli.peers)  # the CLI saw every endpoint
    kw: dict[str, Any] = {
        "timeout": DENIED_TIMEOUT,
        "allowed_timeout": ALLOWED_TIMEOUT,
        "bind_source": True,
    }
    results: list[MatrixResult] = [
        run_matrix(senders, cases_of(family), cli, destinations=pods, **kw),
        run_matrix(list(dp.pods.values()), cases_of(family), cli, destinations=outside, **kw),
    ]
    gre = run_gre_matrix(dp, senders, [*pods, dp.outside], cli, families=[family])
    assert_all_match([*results, *gre])
    denied = sum(1 for r in results for ok in r.expected.values() if not ok)
    assert 0 < denied < sum(r.probes for r in results)


@pytest.mark.parametrize("family", [4, 6], ids=["IPv4", "IPv6"])
def test_cli_matrix_is_the_compiled_policys_evaluator(scenario: Scenario, family: Family) -> None:
    """The CLI reads the manifests itself; its cells equal the evaluator over what the
    compiler gave the agents (so a difference above would be the dataplane's)."""
    cli = CliMatrix.run(scenario, family)
    eps = scenario.endpoints()
    differ = [
        f"{s.label} -> {d.label} {c.label}: cli {cli(s, d, c)}"
        for s in eps
        for d in eps
        if s.label != d.label
        for c in [*cases_of(family), Case("gre", 0, family)]
        if cli(s, d, c) != scenario.oracle(s, d, c)
    ]
    assert differ == []


# ----------------------------------------------------------------------------- trace
@dataclass(frozen=True)
class TraceCell:
    src: str  # a shop pod name, or an outside alias name / "outside"
    dst: str
    proto: Proto
    port: int = 0
    family: Family = 4


TRACES = [
    TraceCell("outside", "web-1", "tcp", 22),  # CIDR remote
    TraceCell("partner-ip", "web-1", "tcp", 22),  # another outside address: outside the CIDR
    TraceCell("partner-range", "web-2", "tcp", 443, 6),  # IPAG range entry, named port
    TraceCell("client-2", "web-2", "tcp", 80),  # the sender's egress denies
    TraceCell("client-2", "web-1", "tcp", 3306, 6),  # SG remote, across nodes
    TraceCell("outside", "seq-1", "tcp", 80),  # first group's Deny wins
    TraceCell("outside", "seq-1", "tcp", 22),  # second group decides
    TraceCell("web-1", "db-1", "tcp", 3306),  # both sides allow; db has no egress (S-X-3)
    TraceCell("outside", "db-1", "udp", 5432),  # priority 5 Deny before 10 Allow
    TraceCell("dflt-1", "dflt-2", "icmp", 0, 6),  # default group (S-D-1)
    TraceCell("client-2", "partner-ip", "udp", 8080),  # egress Deny to an IPAG
    TraceCell("outside", "web-2", "gre", 0, 6),  # GRE: Deny before Allow, equal priority
]


def _ep(scenario: Scenario, name: str) -> Endpoint:
    dp = scenario.dp
    if name == "outside":
        return dp.outside
    if name in OUTSIDE_ALIASES:
        return dp.alias(name)
    return dp.pods[name]


@pytest.mark.parametrize(
    "cell", TRACES, ids=lambda c: f"{c.src}-{c.dst}-{c.proto}{c.port}-v{c.family}"
)
def test_trace_agrees_with_a_real_probe(scenario: Scenario, cell: TraceCell) -> None:
    """``kubectl-secgroups trace … -o json``: verdict and exit status (0 allowed, 1 denied)
    are what a real probe of the same connection observes."""
    src, dst = _ep(scenario, cell.src), _ep(scenario, cell.dst)
    case = Case(cell.proto, cell.port, cell.family)

    def ref(name: str, ep: Endpoint) -> str:
        return f"pod/{name}" if name in scenario.dp.pods else case.address(ep)

    argv = [
        "trace",
        "-f",
        str(scenario.folder),
        "-n",
        SHOP,
        "--from",
        ref(cell.src, src),
        "--to",
        ref(cell.dst, dst),
        "--proto",
        cell.proto,
        "--family",
        f"IPv{cell.family}",
        "-o",
        "json",
    ]
    if cell.proto in ("tcp", "udp"):
        argv += ["--port", str(cell.port)]
    if cell.proto == "gre":
        scenario.dp.flush_conntrack()  # GRE entries key on the address pair only
    proc = kubectl_secgroups(*argv)
    assert proc.returncode in (0, 1), proc.stderr
    answer = json.loads(proc.stdout)
    src_ip = case.address(src) if isinstance(src, Alias) else None
    wait = ALLOWED_TIMEOUT if answer["allowed"] else DENIED_TIMEOUT
    observed = ProbeClient(src).probe(
        case.proto, case.address(dst), case.port, timeout=wait, src=src_ip
    )
    decided = answer.get("decidedBy") or {}
    why = f"trace says {answer['verdict']} (rule {decided.get('rule')}); probe {observed}"
    assert answer["allowed"] == observed.ok, why
    assert proc.returncode == (0 if observed.ok else 1), why
