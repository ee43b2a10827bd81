"""The kind tier's fixtures (docs/testing.md, "The kind tier"): one e2e cluster fixture,
``e2e``, with two providers (tests/kind/providers.py), and the kind cluster itself.

* **kind** (marker ``kind``): the 3-node cluster of ``hack/kind.sh`` — reused when one is
  healthy, else brought up by ``hack/kind.sh up`` (the one way the project makes it: our
  address plan, the offline node image, the readiness waits) after ``hack/images.sh
  build``; then driven through pytest-kind-ng's ``KindCluster`` with our own kind binary
  and kubectl (it never downloads when given both), which reuses the running cluster and
  loads our images; then ``helm upgrade --install`` of the chart with its default values.
  All of that happens once, before the first test runs (no test timeout covers it), and
  prints its times.
* **lab** (marker ``cluster``): a netns lab of its own (prefix ``<KSG_TEST_PREFIX>e``).

The kind tier runs when it can: as root, with the kind artefacts built once (``sudo make
kind-up``; cold, after the control plane: ≈ 480 s for kind and the node image plus ≈ 6 min
for our images, at a load average of 10 on 2 cores — docs/performance.md, "kind") or a
cluster already up. Otherwise it is skipped with a one-line reason — except in CI (``CI``
set), where anything missing is built and a failure fails. ``KSG_KIND=0`` skips it.

A cluster this session brought up is removed at the end by ``make kind-down`` in
``test_kind_teardown.py`` (which checks that nothing is left); one that was already up is
kept.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.kind.providers import E2ECluster, KindProvider, LabProvider, apply, get

from secgroups_lab import binaries
from secgroups_lab import kind as kindlib
from secgroups_lab.cluster import LabCluster

REPO = Path(__file__).resolve().parents[2]
LAB_PREFIX = os.environ.get("KSG_TEST_PREFIX", "ksgt")[:7] + "e"
LOG_DIR = Path(os.environ.get("KSG_CACHE", Path.home() / ".cache" / "kube-secgroups")) / "logs"
# Files whose tests run last, in this order (they change or remove the release/cluster).
LAST = ("test_kind_teardown.py",)


@dataclass
class KindSession:
    """What the bring-up before the tests did: the cluster, whether this session made it,
    its phase times, or why the tier cannot run."""

    kind: kindlib.Kind | None = None
    driver: Any = None  # pytest_kind.KindCluster
    created: bool = False
    times: dict[str, float] = field(default_factory=dict)
    skip: str | None = None
    error: str | None = None


SESSION = KindSession()


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def kind_unavailable(env: kindlib.KindEnv | None) -> str | None:
    """Why the kind tier cannot run here (one line), or None."""
    if os.environ.get("KSG_KIND") == "0":
        return "kind tier skipped: KSG_KIND=0"
    if os.geteuid() != 0:
        return "kind tier needs root (Docker, kind)"
    if env is None:
        return "kind tier: `hack/kind.sh env` failed"
    if in_ci() or kindlib.Kind(env).healthy():
        return None
    if not env.kind.exists() or not (env.kubectl.parent / "kubeadm").exists():
        return (
            "kind tier: kind and the node image are not built yet (`sudo make kind-up` builds "
            "them once, ≈ 35 min cold; CI builds them)"
        )
    return None


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[kind] {line}")
    else:
        print(f"[kind] {line}", file=sys.stderr)


def _hack(config: pytest.Config, what: str, argv: list[str]) -> float:
    """Run a hack/ script, its output into a log; the time it took. RuntimeError with the
    log's tail if it fails."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"kind-tier-{what.split(maxsplit=1)[0].replace('/', '-')}.log"
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False, cwd=REPO)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{what} exited {proc.returncode} after {took:.0f} s ({log}):\n{tail}")
    _say(config, f"{what}: {took:.1f} s (log {log})")
    return took


def bring_up(config: pytest.Config) -> None:
    """The cluster with our images and the chart, or SESSION.skip / SESSION.error."""
    try:
        env: kindlib.KindEnv | None = kindlib.KindEnv.read()
    except (kindlib.KindError, OSError):
        env = None
    SESSION.skip = kind_unavailable(env)
    if SESSION.skip and in_ci() and os.environ.get("KSG_KIND") != "0":
        SESSION.error, SESSION.skip = SESSION.skip, None  # CI: nothing is skipped
    if SESSION.skip or SESSION.error or env is None:
        return
    from pytest_kind import KindCluster  # pytest-kind-ng

    t_all = time.monotonic()
    try:
        kind = kindlib.Kind(env)
        SESSION.created = not kind.healthy()
        SESSION.times["images"] = _hack(config, "hack/images.sh build", ["hack/images.sh", "build"])
        SESSION.times["cluster"] = _hack(
            config,
            "hack/kind.sh up" + ("" if SESSION.created else " (cluster kept)"),
            ["hack/kind.sh", "up"],
        )
        t0 = time.monotonic()
        driver = KindCluster(
            env.cluster, kubeconfig=env.kubeconfig, kind_path=env.kind, kubectl_path=env.kubectl
        )
        driver.create(config_file=env.config)  # the running cluster: reused, never re-made
        for image in kindlib.our_images().values():
            driver.load_docker_image(image)  # kind skips nodes that have it already
        SESSION.times["load"] = time.monotonic() - t0
        _say(
            config, f"pytest-kind-ng: cluster reused, images loaded: {SESSION.times['load']:.1f} s"
        )
        t0 = time.monotonic()
        kindlib.install_chart(kind)
        SESSION.times["chart"] = time.monotonic() - t0
        _say(
            config,
            f"helm upgrade --install kube-secgroups: ready in {SESSION.times['chart']:.1f} s",
        )
        SESSION.kind, SESSION.driver = kind, driver
        SESSION.times["ready"] = time.monotonic() - t_all
        _say(config, f"cluster with the chart ready: {SESSION.times['ready']:.1f} s")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        SESSION.error = str(exc)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Bring the cluster up before the first test (outside every test's timeout)."""
    if session.config.option.collectonly or not any(
        item.get_closest_marker("kind") for item in session.items
    ):
        return
    capman = session.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            bring_up(session.config)
    else:
        bring_up(session.config)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of LAST run after everything else (after pytest's own reordering)."""

    def rank(item: pytest.Item) -> int:
        name = Path(str(item.fspath)).name
        return LAST.index(name) + 1 if name in LAST else 0

    items.sort(key=rank)  # stable: the order within each rank stays


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def kind_session() -> KindSession:
    if SESSION.skip:
        pytest.skip(SESSION.skip)
    if SESSION.error or SESSION.kind is None:
        pytest.fail(f"the kind cluster could not be brought up: {SESSION.error}", pytrace=False)
    return SESSION


@pytest.fixture(scope="session")
def kind_provider(kind_session: KindSession) -> KindProvider:
    assert kind_session.kind is not None
    return KindProvider(kind_session.kind, kindlib.our_images()["probe"])


@pytest.fixture(scope="session")
def lab_provider() -> Iterator[LabProvider]:
    from tests.cluster.conftest import _environment_skip_reason

    reason = _environment_skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        binaries.ensure(binaries.CONTROL_PLANE)
    except binaries.BinaryMissingError as exc:
        if in_ci():
            raise
        pytest.skip(f"control-plane binaries unavailable: {exc}")
    lab = LabCluster(prefix=LAB_PREFIX, nodes=3)
    lab.up()
    try:
        yield LabProvider(lab)
    finally:
        lab.down()


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("lab", marks=pytest.mark.cluster),
        pytest.param("kind", marks=pytest.mark.kind),
    ],
)
def e2e(request: pytest.FixtureRequest) -> E2ECluster:
    """The e2e cluster: the netns lab or kind (the test id says which)."""
    provider: E2ECluster = request.getfixturevalue(f"{request.param}_provider")
    return provider


# ------------------------------------------------------------------------------ examples/
NS = "demo"
PODS = ("a1", "a2", "b1", "b2", "d1")


@dataclass
class Examples:
    """examples/ applied and enforced: the provider and the demo pods' probe endpoints."""

    cluster: E2ECluster
    pods: dict[str, Any]  # name → Endpoint

    def ip(self, pod: str) -> str:
        return str(self.pods[pod].ipv4)


def published(cluster: E2ECluster, namespace: str) -> set[str]:
    return {
        p["name"]
        for o in get(cluster, "compilednodepolicies")["items"]
        for p in (o["spec"].get("pods") or [])
        if p["namespace"] == namespace
    }


def wait_until(what: str, check: Any, timeout: float, interval: float = 0.3) -> Any:
    """Poll ``check`` until truthy; AssertionError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {value!r})")
        time.sleep(interval)


_EXAMPLES: dict[str, Examples] = {}


def examples_on(cluster: E2ECluster) -> Examples:
    """examples/ applied (its pods on three nodes), every pod published and every agent's
    policy applied; once per provider and session."""
    if cluster.name not in _EXAMPLES:
        apply(cluster, cluster.examples())
        pods = cluster.endpoints(NS, PODS)
        wait_until("every demo pod published", lambda: published(cluster, NS) >= set(PODS), 120)
        wait_until("every agent applied its policy", cluster.settled, 120)
        _EXAMPLES[cluster.name] = Examples(cluster, pods)
    return _EXAMPLES[cluster.name]


@pytest.fixture(scope="session")
def examples(e2e: E2ECluster) -> Examples:
    """examples/ on the e2e cluster (both providers)."""
    return examples_on(e2e)


@pytest.fixture(scope="session")
def kind_examples(kind_provider: KindProvider) -> Examples:
    """examples/ on kind (tests that need kube-proxy, the DaemonSet or the chart)."""
    return examples_on(kind_provider)
