"""The Helm chart (charts/kube-secgroups) as users run it, against the lab's real API server.

One lab of its own (2 nodes; a separate control plane, since the chart installs
cluster-wide objects — CRDs, admission policies, roles — that would change the other
modules' cluster), and the pinned ``helm``:

* static: ``helm lint --strict`` with every values file of ``ci/``; the rendered
  manifests against JSON schemas made from this API server's ``/openapi/v2``
  (kubeconform, offline: hack/openapi2jsonschema.py); ``helm template | kubectl apply
  --dry-run=server``;
* a real ``helm install --wait`` in a PodSecurity-``privileged`` namespace. The lab has no
  scheduler and its kubelet runs no containers, so :class:`tests.cluster.chart_pods.ChartPods`
  binds the chart's pods and runs their commands as processes — **each with a token of
  the chart's own ServiceAccount, bound to its pod** — so the operator and the agents
  run with exactly the chart's RBAC; then a smoke scenario (groups, rules, pods on two
  nodes, real packets) must behave;
* a ``kubectl auth can-i`` matrix of what each component (and a namespace user with the
  built-in ``view``/``edit`` roles) may and may not do, and the admission policy that
  refuses an agent's write to another node's status;
* ``helm upgrade`` with changed values (the enforced-namespace label, the agents' log
  level) reaching the processes and the traffic; the documented CRD upgrade path;
* ``helm uninstall``: the post-delete cleanup removes ``table inet secgroups`` from
  every node, and nothing of ours is left but what docs/install.md says stays.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.chart_pods import ChartPods
from tests.cluster.conftest import TEST_PREFIX
from tests.cluster.kube import apply, get, wait_until

from secgroups.compiled import applied_nodes
from secgroups.kinds import KINDS
from secgroups_lab import binaries
from secgroups_lab._cmd import in_netns
from secgroups_lab.cluster import LabCluster
from secgroups_lab.probes import ProbeClient

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kube-secgroups"
PREFIX = TEST_PREFIX[:7] + "c"
RELEASE = "ksg"
NS = "ksg-system"
SMOKE = "smoke"
GATE = "secgroups.dev/policy-applied"  # the readiness gate (docs/cni.md)
# The operator runs in a node's network namespace (operator.hostNetwork): the lab's API
# server reaches node addresses, not pod addresses, and must reach its admission port.
# The agents keep NET_ADMIN only (the chart's default).
# No CNI plugin: the lab's nodes share this machine's filesystem, so two agents would
# share one /var/run/secgroups/cni.sock, and the simulated kubelet runs no chain from
# /etc/cni/net.d (tests/cluster/test_cni.py covers the plugin; the kind tier the chart's).
INSTALL_VALUES = [
    "--set", "operator.hostNetwork=true",
    "--set", "operator.healthPort=9802",
    "--set", "cni.enabled=false",
]  # fmt: skip
# The chart pods' logs and kubeconfigs: outside pytest's temporary directories (which
# concurrent sessions rotate away), kept after the run for reading.
PODS_DIR = Path(tempfile.gettempdir()) / f"kube-secgroups-chart-{PREFIX}"
PSA_LABELS = {
    f"pod-security.kubernetes.io/{mode}": "privileged" for mode in ("enforce", "audit", "warn")
}


@dataclass
class Tools:
    helm: Path
    kubeconform: Path
    kubectl: Path
    env: dict[str, str]


@dataclass
class Lab:
    lab: LabCluster
    tools: Tools
    schemas: Path
    work: Path

    def helm(self, *args: str, check: bool = True, timeout: float = 400) -> str:
        proc = subprocess.run(
            [str(self.tools.helm), "--kubeconfig", str(self.lab.kubeconfig), *args],
            capture_output=True,
            text=True,
            env=self.tools.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}")
        return proc.stdout + proc.stderr

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        return self.lab.kubectl(*args, input_text=input_text, check=check)

    def template(self, *values: str) -> str:
        return self.helm("template", RELEASE, str(CHART), "-n", NS, "--include-crds", *values)


def _binary(component: str) -> Path:
    """A pinned binary not covered by secgroups_lab.binaries (kubeconform), built if missing."""
    script = REPO / "hack" / "build-binaries.sh"
    path = Path(
        subprocess.run(
            [str(script), "--print-paths", component], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    if not os.access(path, os.X_OK):
        proc = subprocess.run([str(script), component], stdout=2, check=False)
        if proc.returncode != 0 or not os.access(path, os.X_OK):
            raise binaries.BinaryMissingError(f"{script} {component} exited {proc.returncode}")
    return path


@pytest.fixture(scope="module")
def tools(lab_binaries: binaries.Binaries, tmp_path_factory: pytest.TempPathFactory) -> Tools:
    try:
        helm = binaries.ensure(["helm"]).helm
        kubeconform = _binary("kubeconform")
    except binaries.BinaryMissingError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"helm or kubeconform unavailable: {exc}")
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())
    env.pop("KUBECONFIG", None)
    return Tools(helm, kubeconform, lab_binaries.kubectl, env)


@pytest.fixture(scope="module")
def chart_lab(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A 2-node lab without operator or agents; JSON schemas from its API server; then its
    CRDs removed again, so that ``helm install`` is the one to create them."""
    lab = LabCluster(prefix=PREFIX, nodes=2, operator=False, agents=False)
    lab.up()
    try:
        work = tmp_path_factory.mktemp("chart")
        schemas = work / "schemas"
        openapi = lab.kubectl("get", "--raw", "/openapi/v2")
        subprocess.run(
            [sys.executable, str(REPO / "hack" / "openapi2jsonschema.py"), "--out", str(schemas)],
            input=openapi,
            text=True,
            check=True,
            capture_output=True,
        )

        def crds() -> list[str]:
            return [n for n in lab.kubectl("get", "crd", "-o", "name").split() if "secgroups" in n]

        # Each kind listed first: a CRD deleted while its storage is still starting can
        # stall its own deletion (InstanceDeletionFailed: storage is (re)initializing).
        for crd in crds():
            kind = crd.split("/", 1)[1]
            wait_until(f"{kind} served", lambda k=kind: _lists(lab, k), 60)
        lab.kubectl("delete", "--wait=false", *crds())
        try:
            wait_until("the lab's CRDs deleted", lambda: not crds(), 120)
        except AssertionError as exc:
            state = lab.kubectl("get", "crd", "-o", "yaml", check=False)
            raise AssertionError(f"{exc}\n{state}") from None
        yield Lab(lab, tools, schemas, work)
    finally:
        lab.down()


def _lists(lab: LabCluster, resource: str) -> bool:
    assert lab.cp is not None
    return lab.cp.kubectl("get", resource, "-A", "-o", "name", check=False).returncode == 0


# --------------------------------------------------------------------------- static checks

VALUES_FILES = sorted((CHART / "ci").glob("*.yaml"))
VALUE_SETS = [[]] + [["-f", str(f)] for f in VALUES_FILES]
VALUE_IDS = ["defaults"] + [f.stem for f in VALUES_FILES]


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_helm_lint_strict(tools: Tools, values: list[str]) -> None:
    proc = subprocess.run(
        [str(tools.helm), "lint", "--strict", str(CHART), *values],
        capture_output=True,
        text=True,
        env=tools.env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_values_schema_refuses_a_typo(tools: Tools) -> None:
    """values.schema.json is strict: a misspelt key fails before anything is rendered."""
    proc = subprocess.run(
        [str(tools.helm), "template", "x", str(CHART), "--set", "agent.logLvel=debug"],
        capture_output=True,
        text=True,
        env=tools.env,
        check=False,
    )
    assert proc.returncode != 0
    assert "additional properties 'logLvel' not allowed" in proc.stderr


def kubeconform(chart_lab: Lab, manifests: str) -> subprocess.CompletedProcess[str]:
    location = f"{chart_lab.schemas}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json"
    return subprocess.run(
        [
            str(chart_lab.tools.kubeconform), "-strict", "-summary", "-output", "text",
            "-schema-location", location,
            # cert-manager's kinds: not served by the lab's API server (no cert-manager).
            "-skip", "Certificate,Issuer",
            "-",
        ],
        input=manifests, capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_rendered_manifests_match_the_api_schemas(chart_lab: Lab, values: list[str]) -> None:
    """Every rendered object (CRDs and hooks included) against the v1.36 API's own schemas,
    strictly: an unknown or misspelt field is an error."""
    proc = kubeconform(chart_lab, chart_lab.template(*values))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Invalid: 0, Errors: 0" in proc.stdout


def test_the_schema_check_catches_a_misspelt_field(chart_lab: Lab) -> None:
    broken = chart_lab.template().replace("hostNetwork: true", "hostNetwrok: true", 1)
    proc = kubeconform(chart_lab, broken)
    assert proc.returncode != 0
    assert "additional properties 'hostNetwrok' not allowed" in proc.stdout


@pytest.mark.parametrize(
    "values", [v for v in VALUE_SETS if "full" not in " ".join(v)], ids=["defaults", "minimal"]
)
def test_server_side_dry_run(chart_lab: Lab, values: list[str]) -> None:
    """``helm template | kubectl apply --dry-run=server``: the API server (admission,
    validation, defaulting) accepts every object. (Not the full values: they name
    cert-manager kinds the lab does not serve.)"""
    chart_lab.kubectl("apply", "-f", "-", input_text=namespace_yaml(NS, PSA_LABELS))
    out = chart_lab.kubectl(
        "apply", "--dry-run=server", "-f", "-", input_text=chart_lab.template(*values)
    )
    assert "(server dry run)" in out
    assert "daemonset.apps/ksg-agent created (server dry run)" in out


def namespace_yaml(name: str, labels: dict[str, str]) -> str:
    return json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )


def test_pod_security_of_the_release_namespace(chart_lab: Lab) -> None:
    """What docs/install.md says about the namespace labels: under PodSecurity ``baseline``
    the agent's pods would be refused (host network, added capabilities), and the chart's
    notes warn about it; the operator's pods pass even ``restricted``."""
    ns = "psa-baseline"
    chart_lab.kubectl(
        "apply", "-f", "-",
        input_text=namespace_yaml(ns, {"pod-security.kubernetes.io/enforce": "baseline"}),
    )  # fmt: skip
    notes = chart_lab.helm("install", RELEASE, str(CHART), "-n", ns, "--dry-run=server")
    assert 'WARNING: namespace psa-baseline enforces the "baseline" Pod Security level' in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    manifests = chart_lab.helm("template", RELEASE, str(CHART), "-n", ns)
    daemonsets = [d for d in yaml.safe_load_all(manifests) if d and d["kind"] == "DaemonSet"]
    agent = next(d for d in daemonsets if d["metadata"]["name"] == f"{RELEASE}-agent")
    operator = next(d for d in yaml.safe_load_all(manifests) if d and d["kind"] == "Deployment")
    for workload, level, refused in ((agent, "baseline", True), (operator, "restricted", False)):
        assert chart_lab.lab.cp is not None
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "psa-probe", "namespace": ns},
            "spec": {**workload["spec"]["template"]["spec"], "serviceAccountName": "default"},
        }
        chart_lab.kubectl(
            "label", "namespace", ns, f"pod-security.kubernetes.io/enforce={level}", "--overwrite"
        )
        out = chart_lab.lab.cp.kubectl(
            "create", "--dry-run=server", "-f", "-", input_text=json.dumps(pod), check=False
        )
        if refused:
            assert out.returncode != 0
            assert 'violates PodSecurity "baseline:latest"' in out.stderr, out.stderr
            assert "hostNetwork=true" in out.stderr and "NET_ADMIN" in out.stderr, out.stderr
        else:
            assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- installed


@dataclass
class Release:
    lab: Lab
    pods: ChartPods

    def agent_kubeconfig(self, node: str) -> Path:
        proc = next(p for p in self.pods.running("agent") if p.node == node)
        return self.pods.workdir / f"{proc.pod}.kubeconfig"


@pytest.fixture(scope="module")
def release(chart_lab: Lab) -> Iterator[Release]:
    """``helm install --wait`` into a namespace labelled as docs/install.md says, with the
    chart's pods run by ChartPods."""
    chart_lab.kubectl("apply", "-f", "-", input_text=namespace_yaml(NS, PSA_LABELS))
    shutil.rmtree(PODS_DIR, ignore_errors=True)
    pods = ChartPods(chart_lab.lab, NS, RELEASE, PODS_DIR).start()
    try:
        out = chart_lab.helm(
            "install", RELEASE, str(CHART), "-n", NS, "--wait", "--timeout", "5m",
            *INSTALL_VALUES,
        )  # fmt: skip
        assert "STATUS: deployed" in out, out
        pods.wait_ready("operator", 1)
        pods.wait_ready("agent", 2)
        yield Release(chart_lab, pods)
    except BaseException:
        print(pods.logs())
        raise
    finally:
        chart_lab.helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m", check=False)
        pods.stop()


def test_helm_installs_the_crds(release: Release) -> None:
    lab = release.lab
    names = sorted(lab.kubectl("get", "crd", "-o", "name").split())
    assert [n for n in names if "secgroups.dev" in n] == [
        f"customresourcedefinition.apiextensions.k8s.io/{p}.secgroups.dev"
        for p in sorted(
            [
                "compiledaddresssets", "compilednodepolicies", "compiledsecuritygroups",
                "ipaddressgroups", "nodeagentreports", "securitygrouprules", "securitygroups",
            ]
        )
    ]  # fmt: skip


SMOKE_OBJECTS = f"""
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroup
metadata: {{name: web, namespace: {SMOKE}}}
spec: {{podSelector: {{matchLabels: {{tier: web}}}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: web-http, namespace: {SMOKE}}}
spec: {{securityGroup: web, direction: Ingress, protocol: TCP, ports: http,
        remote: {{securityGroup: {{name: client}}}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroup
metadata: {{name: client, namespace: {SMOKE}}}
spec: {{podSelector: {{matchLabels: {{tier: client}}}}}}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {{name: client-out, namespace: {SMOKE}}}
spec: {{securityGroup: client, direction: Egress, protocol: All}}
"""


def pod_json(name: str, node: str, tier: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": SMOKE, "labels": {"tier": tier}},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "localhost/x"}]},
        }
    )


def agents_applied(lab: LabCluster) -> bool:
    items = get(lab, "compilednodepolicies")["items"]
    reports = get(lab, "nodeagentreports")["items"]
    return len(items) == lab.nodes and len(applied_nodes(items, reports)) == lab.nodes


class Smoke:
    """c1 (group client, node 2) → s1 (group web, node 1): TCP 80 allowed, 22 not."""

    def __init__(self, release: Release) -> None:
        self.lab = release.lab.lab
        pods, _ = self.lab.endpoints()
        self.c1 = ProbeClient(pods[f"{SMOKE}/c1"])
        self.s1 = pods[f"{SMOKE}/s1"].ipv4

    def reaches(self, port: int) -> bool:
        return self.c1.probe("tcp", self.s1, port, timeout=1.0).ok


def waited(release: Release, what: str, probe: Any, timeout: float) -> Any:
    """wait_until, with the chart pods' logs in the failure message."""
    try:
        return wait_until(what, probe, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{release.pods.logs()}") from None


@pytest.fixture(scope="module")
def smoke(release: Release) -> Smoke:
    lab = release.lab.lab
    n1, n2 = lab.node_names()
    apply(lab, namespace_yaml(SMOKE, {"secgroups.dev/enforce": "true"}))
    apply(lab, SMOKE_OBJECTS)
    apply(lab, pod_json("s1", n1, "web") + "\n---\n" + pod_json("c1", n2, "client"))
    waited(
        release,
        "smoke pods published on both nodes",
        lambda: (
            sum(
                len([p for p in (i["spec"].get("pods") or []) if p["namespace"] == SMOKE])
                for i in get(lab, "compilednodepolicies")["items"]
            )
            == 2
        ),
        90,
    )
    waited(release, "both agents applied their node's policy", lambda: agents_applied(lab), 90)
    return Smoke(release)


def test_smoke_scenario_with_the_charts_service_accounts(release: Release, smoke: Smoke) -> None:
    """The operator (compiling, publishing, writing status) and the agents (reading their
    node's objects, programming nftables, reporting status) work with the chart's RBAC
    alone: their only credentials are tokens of the chart's ServiceAccounts."""
    waited(release, "c1 reaches s1 on TCP 80", lambda: smoke.reaches(80), 30)
    assert not smoke.reaches(22), "web allows only HTTP from client"
    lab = release.lab
    status = get(lab.lab, "securitygroup", "-n", SMOKE, "web")["status"]
    assert status.get("memberCount") == 1, status  # written with the operator's token
    for proc in release.pods.running("operator") + release.pods.running("agent"):
        kubeconfig = release.pods.workdir / f"{proc.pod}.kubeconfig"
        assert set(yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]) == {"token"}
        assert proc.node is not None  # both run in their node's netns (host network)
        whoami = [str(lab.tools.kubectl), "--kubeconfig", str(kubeconfig), "auth", "whoami"]
        out = subprocess.run(
            in_netns(proc.node, [*whoami, "-o", "json"]), capture_output=True, text=True, check=True
        )
        user = json.loads(out.stdout)["status"]["userInfo"]
        assert user["username"] == f"system:serviceaccount:{NS}:{RELEASE}-{proc.component}"
        # The token is bound to the pod, and so names the pod's node (what the admission
        # policy checks the agents' writes against).
        assert user["extra"]["authentication.kubernetes.io/node-name"] == [proc.node]
    forbidden = [
        p.pod for p in release.pods.history if p.component in ("operator", "agent")
        and "forbidden" in p.output().lower()
    ]  # fmt: skip
    assert not forbidden, f"403s in the logs of {forbidden}:\n{release.pods.logs()}"


# (who, verb, resource, namespace or "" for cluster scope / all namespaces, expected)
OPERATOR = f"system:serviceaccount:{NS}:{RELEASE}-operator"
AGENT = f"system:serviceaccount:{NS}:{RELEASE}-agent"
VIEWER, EDITOR = "alice", "bob"  # bound to the built-in view / edit roles in `smoke`
CAN_I: list[tuple[str, str, str, str, bool]] = [
    # The operator: reads the cluster's pods, nodes and namespaces; writes compiled
    # objects, user objects' status and the default groups; nothing else.
    (OPERATOR, "watch", "pods", "", True),
    (OPERATOR, "list", "nodes", "", True),
    (OPERATOR, "watch", "namespaces", "", True),
    (OPERATOR, "create", "pods", SMOKE, False),
    (OPERATOR, "delete", "pods", SMOKE, False),
    (OPERATOR, "patch", "nodes", "", False),
    (OPERATOR, "patch", "namespaces", "", False),
    (OPERATOR, "get", "secrets", SMOKE, False),
    (OPERATOR, "list", "secrets", NS, False),
    (OPERATOR, "get", "configmaps", NS, False),
    (OPERATOR, "create", "compilednodepolicies.secgroups.dev", "", True),
    (OPERATOR, "patch", "compiledsecuritygroups.secgroups.dev", "", True),
    (OPERATOR, "delete", "compiledaddresssets.secgroups.dev", "", True),
    (OPERATOR, "patch", "compilednodepolicies.secgroups.dev/status", "", False),
    (OPERATOR, "watch", "nodeagentreports.secgroups.dev", "", True),
    (OPERATOR, "patch", "nodeagentreports.secgroups.dev", "", False),
    (OPERATOR, "create", "securitygroups.secgroups.dev", SMOKE, True),
    (OPERATOR, "patch", "securitygrouprules.secgroups.dev/status", SMOKE, True),
    (OPERATOR, "delete", "securitygroups.secgroups.dev", SMOKE, False),
    (OPERATOR, "delete", "ipaddressgroups.secgroups.dev", SMOKE, False),
    (OPERATOR, "create", "events", SMOKE, True),
    (OPERATOR, "create", "leases.coordination.k8s.io", NS, True),
    (OPERATOR, "update", f"leases.coordination.k8s.io/{RELEASE}-operator", NS, True),
    (OPERATOR, "update", "leases.coordination.k8s.io/someone-else", NS, False),
    (OPERATOR, "create", "leases.coordination.k8s.io", SMOKE, False),
    (OPERATOR, "patch", "validatingwebhookconfigurations/other", "", False),
    (OPERATOR, "update", f"validatingwebhookconfigurations/{RELEASE}-webhook", "", True),
    (OPERATOR, "update", f"mutatingwebhookconfigurations/{RELEASE}-gate", "", True),
    (OPERATOR, "update", "mutatingwebhookconfigurations/other", "", False),
    (OPERATOR, "create", "validatingwebhookconfigurations", "", False),
    (OPERATOR, "get", f"secrets/{RELEASE}-webhook-tls", NS, True),
    (OPERATOR, "update", f"secrets/{RELEASE}-webhook-tls", NS, True),
    (OPERATOR, "get", "secrets/other", NS, False),
    (OPERATOR, "create", "clusterrolebindings", "", False),
    (OPERATOR, "create", "customresourcedefinitions", "", False),
    (OPERATOR, "create", "serviceaccounts/token", NS, False),
    # The agent: reads compiled objects, writes its node's report (admission narrows it to
    # its own node); no user objects, no core objects, no secrets.
    (AGENT, "watch", "compilednodepolicies.secgroups.dev", "", True),
    (AGENT, "watch", "compiledsecuritygroups.secgroups.dev", "", True),
    (AGENT, "watch", "compiledaddresssets.secgroups.dev", "", True),
    (AGENT, "patch", "nodeagentreports.secgroups.dev", "", True),
    (AGENT, "create", "nodeagentreports.secgroups.dev", "", True),
    (AGENT, "delete", "nodeagentreports.secgroups.dev", "", False),
    (AGENT, "patch", "compilednodepolicies.secgroups.dev/status", "", False),
    (AGENT, "patch", "compilednodepolicies.secgroups.dev", "", False),
    (AGENT, "create", "compilednodepolicies.secgroups.dev", "", False),
    (AGENT, "delete", "compilednodepolicies.secgroups.dev", "", False),
    (AGENT, "patch", "compiledsecuritygroups.secgroups.dev", "", False),
    (AGENT, "get", "securitygroups.secgroups.dev", SMOKE, False),
    (AGENT, "create", "securitygrouprules.secgroups.dev", SMOKE, False),
    (AGENT, "delete", "ipaddressgroups.secgroups.dev", SMOKE, False),
    (AGENT, "watch", "pods", "", True),  # its node's (a field selector RBAC cannot see)
    (AGENT, "watch", "namespaces", "", True),
    (AGENT, "patch", "pods/status", SMOKE, True),  # the readiness condition (admission)
    (AGENT, "patch", "pods", SMOKE, False),
    (AGENT, "delete", "pods", SMOKE, False),
    (AGENT, "create", "pods/eviction", SMOKE, False),
    (AGENT, "patch", "namespaces", "", False),
    (AGENT, "get", "nodes", "", False),
    (AGENT, "get", "secrets", NS, False),
    (AGENT, "create", "events", NS, False),
    # Namespace users through the aggregated roles: our three kinds, never status or the
    # compiled objects.
    (VIEWER, "list", "securitygroups.secgroups.dev", SMOKE, True),
    (VIEWER, "get", "securitygrouprules.secgroups.dev", SMOKE, True),
    (VIEWER, "watch", "ipaddressgroups.secgroups.dev", SMOKE, True),
    (VIEWER, "create", "securitygroups.secgroups.dev", SMOKE, False),
    (VIEWER, "list", "securitygroups.secgroups.dev", NS, False),
    (EDITOR, "create", "securitygroups.secgroups.dev", SMOKE, True),
    (EDITOR, "delete", "securitygrouprules.secgroups.dev", SMOKE, True),
    (EDITOR, "patch", "ipaddressgroups.secgroups.dev", SMOKE, True),
    (EDITOR, "patch", "securitygroups.secgroups.dev/status", SMOKE, False),
    (EDITOR, "create", "securitygroups.secgroups.dev", NS, False),
    (EDITOR, "list", "compilednodepolicies.secgroups.dev", "", False),
    (EDITOR, "patch", "compiledsecuritygroups.secgroups.dev", "", False),
]


@pytest.fixture(scope="module")
def namespace_users(release: Release, smoke: Smoke) -> None:
    for user, role in ((VIEWER, "view"), (EDITOR, "edit")):
        release.lab.kubectl(
            "create", "rolebinding", f"{user}-{role}", "-n", SMOKE,
            f"--clusterrole={role}", f"--user={user}",
        )  # fmt: skip


def _can_i(lab: Lab, who: str, verb: str, resource: str, namespace: str) -> bool:
    what, _, name = resource.partition("/")
    sub = ""
    if name in ("status", "token", "eviction"):
        sub, name = name, ""
    args = ["auth", "can-i", verb, f"{what}/{name}" if name else what, f"--as={who}"]
    args += [f"--subresource={sub}"] if sub else []
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    out = lab.kubectl(*args, check=False).strip()
    assert out in ("yes", "no"), out
    return out == "yes"


def test_can_i_matrix(release: Release, namespace_users: None) -> None:
    """What each component may do, and what it may not (docs/install.md, "What each
    component may do"): one row per question, all answered by the API server's RBAC."""
    wrong = [
        f"{who} {verb} {res} {ns or '(cluster)'}: expected {'yes' if want else 'no'}"
        for who, verb, res, ns, want in CAN_I
        if _can_i(release.lab, who, verb, res, ns) != want
    ]
    assert not wrong, "\n".join(wrong)


def apply_report(kubeconfig: Path, node: str, *, where: str) -> tuple[int, str]:
    """(HTTP status, body) of a server-side apply of ``node``'s NodeAgentReport with the
    token of ``kubeconfig`` — the request the agent makes — from the netns ``where``."""
    cfg = yaml.safe_load(kubeconfig.read_text())
    cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    ca = kubeconfig.with_suffix(".ca")
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    url = (
        f"{cluster['server']}/apis/secgroups.dev/v1alpha1/nodeagentreports/{node}"
        "?fieldManager=chart-test&force=true"
    )
    body = {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "NodeAgentReport",
        "metadata": {"name": node},
        "status": {"reason": "WrittenByTheChartTest"},
    }
    cmd = [
        "curl", "-sS", "-m", "10", "--cacert", str(ca), "-X", "PATCH", "-w", "\n%{http_code}",
        "-H", f"Authorization: Bearer {user['token']}",
        "-H", "Content-Type: application/apply-patch+yaml",
        "-d", json.dumps(body), url,
    ]  # fmt: skip
    out = subprocess.run(in_netns(where, cmd), capture_output=True, text=True, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def test_an_agent_may_write_only_its_own_nodes_report(release: Release, smoke: Smoke) -> None:
    """The ValidatingAdmissionPolicy: the agent's token (bound to its pod on n1) writes
    n1's NodeAgentReport, and is refused n2's — RBAC alone would allow both."""
    lab = release.lab
    n1, n2 = lab.lab.node_names()
    kc = release.agent_kubeconfig(n1)
    assert apply_report(kc, n1, where=n1)[0] in (200, 201)
    code, body = apply_report(kc, n2, where=n1)
    assert code == 403, body
    assert f"the agent of node {n1} may only write NodeAgentReport {n1}, not {n2}" in body
    # A token of the agent's ServiceAccount that is not bound to a pod names no node.
    token = lab.kubectl("create", "token", f"{RELEASE}-agent", "-n", NS).strip()
    cfg = yaml.safe_load(kc.read_text())
    cfg["users"][0]["user"] = {"token": token}
    unbound = release.pods.workdir / "agent-unbound.kubeconfig"
    unbound.write_text(yaml.safe_dump(cfg))
    code, body = apply_report(unbound, n1, where=n1)
    assert code == 403, body
    assert "not bound to a pod on a node" in body


def patch_pod_status(
    kubeconfig: Path, pod: str, status: dict[str, Any], *, where: str
) -> tuple[int, str]:
    """(HTTP status, body) of a strategic merge patch of pod ``smoke/<pod>``'s status with
    the token of ``kubeconfig`` — what the agent does for the readiness gate."""
    cfg = yaml.safe_load(kubeconfig.read_text())
    cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    ca = kubeconfig.with_suffix(".ca")
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    url = f"{cluster['server']}/api/v1/namespaces/{SMOKE}/pods/{pod}/status"
    cmd = [
        "curl", "-sS", "-m", "10", "--cacert", str(ca), "-X", "PATCH", "-w", "\n%{http_code}",
        "-H", f"Authorization: Bearer {user['token']}",
        "-H", "Content-Type: application/strategic-merge-patch+json",
        "-d", json.dumps({"status": status}), url,
    ]  # fmt: skip
    out = subprocess.run(in_netns(where, cmd), capture_output=True, text=True, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def test_an_agent_may_set_only_the_readiness_condition_of_its_nodes_pods(
    release: Release, smoke: Smoke
) -> None:
    """The second policy: n1's agent may set secgroups.dev/policy-applied on s1 (on n1),
    not on c1 (on n2), and may change nothing else of s1's status."""
    lab = release.lab
    n1, _ = lab.lab.node_names()
    kc = release.agent_kubeconfig(n1)
    gate = {"type": GATE, "status": "True", "reason": "ChartTest"}
    code, body = patch_pod_status(kc, "s1", {"conditions": [gate]}, where=n1)
    assert code == 200, body
    code, body = patch_pod_status(kc, "c1", {"conditions": [gate]}, where=n1)
    assert code == 403, body
    assert f"the agent of node {n1} may only change pods on its node, not {SMOKE}/c1" in body
    for change in ({"phase": "Failed"}, {"conditions": [{"type": "Ready", "status": "False"}]}):
        code, body = patch_pod_status(kc, "s1", change, where=n1)
        assert code == 403, (change, body)
        assert "may only set the condition secgroups.dev/policy-applied" in body


def ca_bundles(lab: Lab) -> list[str]:
    """The caBundle of every webhook of both configurations (the operator writes them)."""
    vwc = get(lab.lab, "validatingwebhookconfiguration", f"{RELEASE}-webhook")
    mwc = get(lab.lab, "mutatingwebhookconfiguration", f"{RELEASE}-gate")
    return [w["clientConfig"].get("caBundle", "") for w in vwc["webhooks"] + mwc["webhooks"]]


def gate_condition(lab: Lab, pod: str) -> bool:
    conditions = get(lab.lab, "pod", "-n", SMOKE, pod)["status"].get("conditions") or []
    return any(c["type"] == GATE and c["status"] == "True" for c in conditions)


def test_the_admission_webhook_is_wired(release: Release, smoke: Smoke) -> None:
    """The API server reaches the operator through the chart's Service and configuration:
    the operator made its certificate (Secret) and wrote the CA into both webhooks, and
    deleting a group in use is refused with the operator's words (docs/admission.md)."""
    lab = release.lab
    waited(release, "caBundle of the three webhooks written", lambda: all(ca_bundles(lab)), 60)
    secret = get(lab.lab, "secret", "-n", NS, f"{RELEASE}-webhook-tls")
    assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"])
    assert lab.lab.cp is not None
    refused = lab.lab.cp.kubectl(
        "delete", "securitygroup", "web", "-n", SMOKE, "--dry-run=server", check=False
    )
    out = refused.stdout + refused.stderr
    assert "denied the request" in out and "security group smoke/web is in use" in out, out
    assert "smoke/s1" in out, out  # the member named
    # The mutating webhook gave the smoke pods the readiness gate, and each node's agent
    # set it once the pod's policy was in force there.
    for pod in ("s1", "c1"):
        gates = get(lab.lab, "pod", "-n", SMOKE, pod)["spec"].get("readinessGates") or []
        assert {"conditionType": GATE} in gates, gates
        waited(
            release, f"{pod}'s readiness condition set", lambda p=pod: gate_condition(lab, p), 60
        )


# --------------------------------------------------------------------------- upgrades


def test_upgrade_with_changed_values(release: Release, smoke: Smoke) -> None:
    """``helm upgrade`` with another enforced-namespace label and agent log level: the
    operator and every agent are replaced with the new flags, and the new label decides
    which namespaces are managed."""
    lab = release.lab
    old_operator = {p.pod for p in release.pods.running("operator")}
    old_agents = {p.pod for p in release.pods.running("agent")}
    out = lab.helm(
        "upgrade", RELEASE, str(CHART), "-n", NS, "--reuse-values", "--wait", "--timeout", "5m",
        "--set", "enforcedNamespaceLabel=example.com/secgroups=on",
        "--set", "agent.logLevel=debug",
        "--set", "operator.replicas=2",
    )  # fmt: skip
    assert "has been upgraded" in out, out
    waited(
        release,
        "the old operator and agents replaced",
        lambda: (
            not ({p.pod for p in release.pods.running("operator")} & old_operator)
            and not ({p.pod for p in release.pods.running("agent")} & old_agents)
            and len(release.pods.running("agent")) == 2
            and len(release.pods.running("operator")) == 2
        ),
        120,
    )
    ops = release.pods.wait_ready("operator", 2)
    release.pods.wait_ready("agent", 2)
    assert len(ops) == 2 and all("--enforce-label=example.com/secgroups=on" in p.argv for p in ops)
    # Two replicas, one leader: the holder of the Lease <release>-operator (the old
    # operator's lease, unless it handed it over, runs out first).
    waited(
        release,
        "one of the new operators holds the Lease",
        lambda: (
            get(lab.lab, "lease", "-n", NS, f"{RELEASE}-operator")["spec"].get("holderIdentity")
            in {p.pod for p in ops}
        ),
        60,
    )
    assert all("--log-level=debug" in p.argv for p in release.pods.running("agent"))
    # smoke is labelled secgroups.dev/enforce=true only: no longer managed, so nothing
    # stands between c1 and s1's port 22 ...
    waited(release, "smoke unmanaged: c1 reaches s1:22", lambda: smoke.reaches(22), 60)
    # ... until it carries the new label.
    lab.kubectl("label", "namespace", SMOKE, "example.com/secgroups=on")
    waited(release, "smoke managed again: s1:22 closed", lambda: not smoke.reaches(22), 60)
    assert smoke.reaches(80)
    assert all(ca_bundles(lab)), "helm upgrade dropped the caBundle the operator wrote"
    history = lab.helm("history", RELEASE, "-n", NS, "-o", "json")
    assert [r["status"] for r in json.loads(history)][-2:] == ["superseded", "deployed"]


def test_crd_upgrade_path(release: Release) -> None:
    """Helm never upgrades crds/; the documented command does (docs/install.md)."""
    lab = release.lab
    crd = "securitygrouprules.secgroups.dev"
    chart_crd = yaml.safe_load(
        (CHART / "crds" / "secgroups.dev_securitygrouprules.yaml").read_text()
    )

    def columns() -> list[str]:
        live = get(lab.lab, "crd", crd)
        return [c["name"] for c in live["spec"]["versions"][0].get("additionalPrinterColumns", [])]

    want = [c["name"] for c in chart_crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns() == want
    # An older chart's CRD: one printer column fewer.
    lab.kubectl(
        "patch", "crd", crd, "--type=json",
        "-p", json.dumps([{"op": "remove", "path": "/spec/versions/0/additionalPrinterColumns/0"}]),
    )  # fmt: skip
    assert columns() == want[1:]
    lab.helm(
        "upgrade", RELEASE, str(CHART), "-n", NS, "--reuse-values", "--wait", "--timeout", "5m"
    )
    assert columns() == want[1:], "helm upgrade changed a CRD (it never should)"
    lab.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    assert columns() == want


# --------------------------------------------------------------------------- uninstall


def has_table(node: str) -> bool:
    proc = subprocess.run(
        in_netns(node, ["nft", "list", "table", "inet", "secgroups"]),
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0


def ours(lab: Lab) -> list[str]:
    """Every object (any kind, any namespace) labelled as this release's."""
    kinds = lab.kubectl("api-resources", "--verbs=list", "-o", "name").split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    out = lab.kubectl(
        "get", ",".join(kinds), "-A", "-l", f"app.kubernetes.io/instance={RELEASE}",
        "-o", "name", "--ignore-not-found",
    )  # fmt: skip
    return sorted(out.split())


def test_uninstall_leaves_only_what_the_docs_say(release: Release, smoke: Smoke) -> None:
    """Uninstall: no ``table inet secgroups`` on any node; none of the release's objects,
    no compiled object, no Lease or Secret of the operator. What stays: the CRDs, users'
    objects (smoke's groups and rules, the namespace default groups)."""
    lab = release.lab
    nodes = lab.lab.node_names()
    assert all(has_table(n) for n in nodes)
    assert get(lab.lab, "compilednodepolicies")["items"]
    # Until now no process of the chart was refused anything by RBAC. (Checked before the
    # uninstall: Helm deletes the roles while the pods are still terminating.)
    forbidden = [p.pod for p in release.pods.history if "forbidden" in p.output().lower()]
    assert not forbidden, f"403s in the logs of {forbidden}:\n{release.pods.logs()}"
    out = lab.helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m")
    assert "uninstalled" in out, out + release.pods.logs()
    assert [n for n in nodes if has_table(n)] == []
    assert ours(lab) == []
    for kind in ("compilednodepolicies", "compiledsecuritygroups", "compiledaddresssets"):
        assert get(lab.lab, kind)["items"] == [], kind
    # The reports go with their node objects (the garbage collector) or the cleanup job.
    wait_until("no NodeAgentReport", lambda: not get(lab.lab, "nodeagentreports")["items"], 60)
    left = lab.kubectl("get", "leases,secrets,pods,jobs,daemonsets", "-n", NS, "-o", "name")
    assert left.split() == [], left
    # What stays, as documented: the CRDs and users' objects.
    assert len(
        [n for n in lab.kubectl("get", "crd", "-o", "name").split() if "secgroups" in n]
    ) == len(KINDS)
    assert {
        g["metadata"]["name"] for g in get(lab.lab, "securitygroups", "-n", SMOKE)["items"]
    } >= {
        "web",
        "client",
    }
    cleanup = [p for p in release.pods.history if p.component == "cleanup"]
    assert sorted(p.node for p in cleanup if p.bound) == sorted(nodes)
    job = [p for p in release.pods.history if p.component == "cleanup-job"]
    assert job and job[-1].popen is not None and job[-1].popen.returncode == 0, release.pods.logs()
    cleanup_logs = "".join(p.output() for p in job + cleanup)
    assert "forbidden" not in cleanup_logs.lower(), release.pods.logs()
