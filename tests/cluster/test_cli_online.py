"""kubectl secgroups online: the CLI scenario on a real kube-apiserver gives the answers the
same files give offline.

The scenario of ``tests/data/cli/scenario`` (the spec's Sg-A/Sg-B example, an address
group, pods, a namespace that is not enforced and a group to lint) is applied to the
lab's API server with its names prefixed (namespaces and nodes), so it cannot collide
with other tests of the session. Pods are plain Pod objects bound to Node objects with
``spec.nodeName``; their ``status.podIPs`` are patched in, as kwok does — nothing runs.
Then every command is run online (``--kubeconfig``) and offline (``-f`` on the same,
prefixed files), and the machine outputs must be equal, apart from ``source``
(``file:line``, offline only).

What this does not show: that the verdicts match packets on real nodes. That needs the
node agent programming nftables in the lab's node namespaces; the lab's probes will
compare them with the same evaluator (docs/testing.md).
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from secgroups_cli.main import main
from secgroups_lab import controlplane

pytestmark = pytest.mark.cluster

SCENARIO = Path(__file__).resolve().parents[1] / "data" / "cli" / "scenario"
NAMESPACES = ("demo", "legacy", "sandbox")
NODES = ("node-1", "node-2")


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def renamed(docs: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The scenario with namespaces and nodes prefixed (``demo`` → ``<prefix>demo``)."""

    def fix(doc: dict[str, Any]) -> dict[str, Any]:
        doc = json.loads(json.dumps(doc))
        if doc["kind"] == "List":
            doc["items"] = [fix(i) for i in doc["items"]]
            return doc
        meta = doc["metadata"]
        if doc["kind"] in ("Namespace", "Node"):
            meta["name"] = prefix + meta["name"]
        elif "namespace" in meta:
            meta["namespace"] = prefix + meta["namespace"]
        if doc["kind"] == "Pod":
            doc["spec"]["nodeName"] = prefix + doc["spec"]["nodeName"]
        return doc

    return [fix(d) for d in docs]


def scenario_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(SCENARIO.iterdir()):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


def cli(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(stdin) if stdin else None)
    return code, out.getvalue(), err.getvalue()


def without_source(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: without_source(v) for k, v in data.items() if k != "source"}
    if isinstance(data, list):
        return [without_source(v) for v in data]
    return data


class Both:
    """Run one command online and offline; return both results."""

    def __init__(self, kubeconfig: Path, files: Path, prefix: str) -> None:
        self.kubeconfig = kubeconfig
        self.files = files
        self.prefix = prefix

    def ns(self, name: str) -> str:
        return self.prefix + name

    def online(self, *argv: str) -> tuple[int, str, str]:
        return cli(*argv, "--kubeconfig", str(self.kubeconfig))

    def offline(self, *argv: str) -> tuple[int, str, str]:
        return cli(*argv, "-f", str(self.files))

    def same_json(self, *argv: str) -> tuple[int, Any]:
        on, off = self.online(*argv, "-o", "json"), self.offline(*argv, "-o", "json")
        assert on[0] == off[0], (argv, on[2], off[2])
        assert on[2] == off[2]  # the same notes, and no warnings about skipped objects
        on_doc, off_doc = json.loads(on[1]), json.loads(off[1])
        assert without_source(on_doc) == without_source(off_doc), argv
        return on[0], on_doc


@pytest.fixture(scope="module")
def scenario(
    control_plane: controlplane.ControlPlane, crds_installed: list[str], tmp_path_factory: Any
) -> Iterator[Both]:
    prefix = f"cli{uuid.uuid4().hex[:4]}-"
    docs = renamed(scenario_docs(), prefix)
    folder = tmp_path_factory.mktemp("cli-scenario")
    (folder / "scenario.yaml").write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    base = [d for d in docs if d["kind"] in ("Namespace", "Node")]
    rest = [d for d in docs if d["kind"] not in ("Namespace", "Node")]
    cp = control_plane
    try:
        cp.kubectl("apply", "--server-side", "-f", "-", input_text=yaml.safe_dump_all(base))
        for ns in NAMESPACES:  # pods need the namespace's default ServiceAccount
            wait_until(
                f"serviceaccount {prefix}{ns}/default",
                lambda ns=ns: (
                    cp.kubectl("get", "sa", "default", "-n", prefix + ns, check=False).returncode
                    == 0
                ),
            )
        cp.kubectl("apply", "--server-side", "-f", "-", input_text=yaml.safe_dump_all(rest))
        for pod in (d for d in docs if d["kind"] == "Pod"):
            meta = pod["metadata"]
            patch = json.dumps({"status": pod["status"]})
            cp.kubectl(
                "patch", "pod", meta["name"], "-n", meta["namespace"], "--subresource=status",
                "--type=merge", "-p", patch,
            )  # fmt: skip
        yield Both(cp.kubeconfig, folder, prefix)
    finally:
        cp.kubectl(
            "delete", "namespace", *(prefix + n for n in NAMESPACES), "--wait=false",
            "--ignore-not-found", check=False,
        )  # fmt: skip
        cp.kubectl(
            "delete", "node", *(prefix + n for n in NODES), "--ignore-not-found", check=False
        )


def test_explain_every_pod(scenario: Both) -> None:
    for ns, pod in [("demo", p) for p in ("a1", "a2", "b1", "b2", "jump", "c1")] + [
        ("legacy", "old")
    ]:
        code, doc = scenario.same_json("explain", f"pod/{pod}", "-n", scenario.ns(ns))
        assert code == 0
        assert doc["pod"]["managed"] is (ns == "demo")
    _, doc = scenario.same_json("explain", "pod/jump", "-n", scenario.ns("demo"))
    assert [g["why"] for g in doc["groups"]] == ["annotation", "selector"]
    assert [r["name"] for r in doc["ingress"]] == ["b01", "b02", "b03", "a01", "a02", "a02-v6"]


TRACES = [
    ("pod/a1", "pod/b1", ["tcp", "--port", "22"], 0, "b01"),
    ("pod/a1", "pod/b1", ["tcp", "--port", "80"], 1, None),
    ("pod/b1", "pod/a1", ["tcp", "--port", "22"], 1, None),
    ("pod/a1", "pod/jump", ["tcp", "--port", "80"], 0, "a02"),
    ("172.16.0.9", "pod/a1", ["tcp", "--port", "22"], 0, "a01"),
    ("203.0.113.15", "pod/b1", ["tcp", "--port", "443"], 0, "b03"),
    ("pod/a1", "pod/a2", ["icmp", "--family", "IPv6"], 0, "a02-v6"),
    ("pod/c1", "pod/a1", ["udp", "--port", "53"], 1, None),
]


@pytest.mark.parametrize(("src", "dst", "proto", "code", "rule"), TRACES)
def test_trace(
    scenario: Both, src: str, dst: str, proto: list[str], code: int, rule: str | None
) -> None:
    got, doc = scenario.same_json(
        "trace", "--from", src, "--to", dst, "--proto", *proto, "-n", scenario.ns("demo")
    )
    assert got == code
    expected = f"{scenario.ns('demo')}/{rule}" if rule else None
    assert doc["decidedBy"]["rule"] == expected


def test_trace_across_namespaces(scenario: Both) -> None:
    old = f"pod/{scenario.ns('legacy')}/old"
    code, doc = scenario.same_json(
        "trace", "--from", old, "--to", "pod/a1", "--proto", "icmp", "-n", scenario.ns("demo")
    )
    assert code == 1 and doc["egress"]["filtered"] is False


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_matrix(scenario: Both, family: str) -> None:
    code, doc = scenario.same_json(
        "matrix", "-n", scenario.ns("demo"), "--family", family, "--ip",
        "172.16.0.9" if family == "IPv4" else "fd00::9",
    )  # fmt: skip
    assert code == 0
    if family == "IPv4":
        assert doc["grids"][0]["rows"][0] == "....X.."  # a1 → a2 b1 b2 c1 jump ip, tcp/22


def test_lint(scenario: Both) -> None:
    code, doc = scenario.same_json("lint", "-n", scenario.ns("sandbox"))
    assert code == 1
    assert doc["summary"] == {"errors": 2, "warnings": 6}
    code, doc = scenario.same_json("lint", "-n", scenario.ns("demo"), "--fail-on", "warning")
    assert (code, doc["findings"]) == (0, [])


def test_clone_dry_runs_then_creates(
    scenario: Both, control_plane: controlplane.ControlPlane
) -> None:
    demo = scenario.ns("demo")
    args = ("clone", "sg/sg-a", "sg-a-next", "-n", demo)
    on = scenario.online(*args, "--dry-run")
    off = scenario.offline(*args)
    assert on[0] == off[0] == 0, (on[2], off[2])
    assert on[1] == off[1]  # the same YAML
    assert control_plane.kubectl("get", "sg", "sg-a-next", "-n", demo, check=False).returncode

    code, out, err = scenario.online(*args, "--dry-run=server")
    assert code == 0, err
    assert "validated (server dry run)" in out
    assert control_plane.kubectl("get", "sg", "sg-a-next", "-n", demo, check=False).returncode

    code, out, err = scenario.online(*args)
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"securitygroup.secgroups.dev/sg-a-next created in {demo} "
        f"(clone of {demo}/sg-a, no members)"
    )
    rules = json.loads(control_plane.kubectl("get", "sgr", "-n", demo, "-o", "json").stdout)[
        "items"
    ]
    clones = {r["metadata"]["name"]: r["spec"] for r in rules if r["spec"]["securityGroup"] ==
              "sg-a-next"}  # fmt: skip
    assert sorted(clones) == [
        "sg-a-next-a-egress", "sg-a-next-a-egress-v6", "sg-a-next-a01", "sg-a-next-a02",
        "sg-a-next-a02-v6",
    ]  # fmt: skip
    assert clones["sg-a-next-a02"]["remote"] == {"securityGroup": {"name": "sg-a-next"}}
    # The files plus the printed clone equal the cluster now: lint agrees on the new group.
    (scenario.files / "clone.yaml").write_text(off[1], encoding="utf-8")
    try:
        code, doc = scenario.same_json("lint", "-n", demo)
        assert [(f["code"], f["name"]) for f in doc["findings"]] == [("unused-group", "sg-a-next")]
        again = scenario.online(*args)
        assert again[0] == 2
        assert again[2] == f"error: security group {demo}/sg-a-next already exists\n"
    finally:
        (scenario.files / "clone.yaml").unlink()


def test_online_errors_are_one_line(scenario: Both, tmp_path: Path) -> None:
    code, _, err = scenario.online("explain", "pod/nope", "-n", scenario.ns("demo"))
    assert code == 2
    assert err == (
        f"error: pod {scenario.ns('demo')}/nope not found; pods in {scenario.ns('demo')}: "
        "a1, a2, b1, b2, c1, jump\n"
    )
    broken = tmp_path / "kubeconfig"
    broken.write_text(scenario.kubeconfig.read_text().replace(":6443", ":1"), encoding="utf-8")
    code, _, err = cli("lint", "--kubeconfig", str(broken))
    assert code == 3  # the cluster could not be used (docs/cli.md, "Exit status")
    assert err.startswith("error: list namespaces: cannot reach the API server at https://")
    assert err.count("\n") == 1
    code, _, err = cli("lint", "--kubeconfig", str(tmp_path / "missing"))
    assert code == 3 and err.startswith("error: ")
