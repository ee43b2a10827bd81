"""The admission webhook with the lab's real kube-apiserver calling the operator.

The operator runs in the root network namespace with ``--webhook-only`` (so it cannot
fight a lab operator another module may have started) and ``--webhook-url`` on the
root-netns end of the control plane's link, which is how the API server in its own
netns reaches it; it makes its certificate, keeps it in a Secret and writes the
ValidatingWebhookConfiguration with the CA. Then, as users see it with kubectl:

* the 121st counted ingress IPv4 rule of a group is refused with the group, direction,
  type and count — the words ``kubectl secgroups lint`` prints for the same rules;
* deleting a SecurityGroup with members (or that another namespace's rule names) is
  refused with their names, and so is deleting an IPAddressGroup a Deny rule uses;
  deleting their namespace still works;
* a pod naming a missing group gets an admission warning; a pod joining a full group
  is refused;
* with the operator down, ``failurePolicy: Fail`` refuses writes ("failed calling
  webhook") and ``Ignore`` lets them through;
* the whole operator as a standby (another replica holds its Lease) answers the same,
  with the certificate from the same Secret.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from secgroups.quotas import RULE_QUOTA
from secgroups_lab import controlplane

pytestmark = pytest.mark.cluster

ControlPlane = controlplane.ControlPlane
REPO = Path(__file__).resolve().parents[2]
CONFIG = "ksg-test-admission"
SYSTEM_NS = "adm-system"
REFUSED_BY = 'admission webhook "validate.secgroups.dev" denied the request: '


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def kubectl(
    cp: ControlPlane, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return cp.kubectl(*args, input_text=stdin, check=False, timeout=120)


def ok(cp: ControlPlane, *args: str, stdin: str | None = None) -> str:
    out = kubectl(cp, *args, stdin=stdin)
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
    return out.stdout + out.stderr


def manifests(*docs: dict[str, Any]) -> str:
    return "\n---\n".join(json.dumps(d) for d in docs)


def namespace(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"secgroups.dev/enforce": "true"}},
    }


def group(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "SecurityGroup",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def rule(name: str, grp: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "SecurityGroupRule",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"securityGroup": grp, "direction": "Ingress", "protocol": "All", **spec},
    }


def ipag(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "IPAddressGroup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"addresses": ["198.51.100.0/24"]},
    }


def pod(name: str, ns: str, groups: str | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels}
    if groups is not None:
        meta["annotations"] = {"secgroups.dev/security-groups": groups}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": "localhost/none"}]},
    }


def namespaces(cp: ControlPlane, *names: str) -> None:
    """Create enforced namespaces and wait for their default ServiceAccount (pods need it)."""
    ok(cp, "apply", "-f", "-", stdin=manifests(*(namespace(n) for n in names)))
    for n in names:

        def has_account(n: str = n) -> bool:
            return kubectl(cp, "get", "serviceaccount", "default", "-n", n).returncode == 0

        wait_until(f"ServiceAccount {n}/default", has_account)


def deny_office(ns: str) -> dict[str, Any]:
    return rule(
        "deny-office", "web", ns, action="Deny", remote={"ipAddressGroup": {"name": "office"}}
    )


def counted(i: int, ns: str) -> dict[str, Any]:
    """A rule that counts against S-L-1: its remote is a group."""
    return rule(f"web-{i:03d}", "web", ns, remote={"securityGroup": {"name": "db"}})


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


class WebhookProcess:
    """``secgroups-operator --webhook-only`` in the root netns, reachable by the API server."""

    def __init__(self, cp: ControlPlane, log: Path, config: str = CONFIG) -> None:
        self.cp = cp
        address = cp.addresses.root_side
        self.port = _free_port(address)
        self.url = f"https://{address}:{self.port}"
        self.log = log
        self.argv = [
            sys.executable, "-m", "secgroups_operator.main",
            "--kubeconfig", str(cp.kubeconfig),
            "--webhook-only",
            "--webhook-address", address,
            "--webhook-port", str(self.port),
            "--webhook-url", self.url,
            "--webhook-configuration", config,
            "--webhook-secret", f"{SYSTEM_NS}/{CONFIG}-tls",
            "--webhook-failure-policy", "Fail",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="module")
def webhook(
    control_plane: ControlPlane, crds_installed: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookProcess]:
    cp = control_plane
    ok(cp, "create", "namespace", SYSTEM_NS)
    proc = WebhookProcess(cp, tmp_path_factory.mktemp("admission") / "operator.log")
    proc.start()
    try:
        # Ready when the API server refuses a dry-run delete of a group with a member.
        canary = "adm-canary"
        namespaces(cp, canary)
        ok(cp, "apply", "-f", "-", stdin=manifests(
            group("canary", canary), pod("c1", canary, groups="canary")
        ))  # fmt: skip

        def refusing() -> bool:
            assert proc.proc is not None
            if proc.proc.poll() is not None:
                pytest.fail(f"the operator exited:\n{proc.tail()}")
            out = kubectl(cp, "delete", "sg", "canary", "-n", canary, "--dry-run=server")
            return out.returncode != 0 and "is in use" in out.stderr

        wait_until("the API server calls the webhook", refusing, timeout=90)
        yield proc
    finally:
        for name in (CONFIG, f"{CONFIG}-standby"):
            kubectl(cp, "delete", "validatingwebhookconfiguration", name, "--ignore-not-found")
        proc.stop()
        for ns in (
            SYSTEM_NS,
            "adm-canary",
            "adm-quota",
            "adm-del",
            "adm-far",
            "adm-pods",
            "adm-gone",
        ):
            kubectl(cp, "delete", "namespace", ns, "--ignore-not-found", "--wait=false")


def test_the_configuration_carries_the_ca_from_the_shared_secret(webhook: WebhookProcess) -> None:
    cp = webhook.cp
    vwc = json.loads(ok(cp, "get", "validatingwebhookconfiguration", CONFIG, "-o", "json"))
    secret = json.loads(ok(cp, "get", "secret", "-n", SYSTEM_NS, f"{CONFIG}-tls", "-o", "json"))
    assert secret["type"] == "kubernetes.io/tls"
    objects, pods = vwc["webhooks"]
    assert objects["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert objects["clientConfig"]["url"] == f"{webhook.url}/validate"
    assert (objects["failurePolicy"], pods["failurePolicy"]) == ("Fail", "Ignore")


def test_the_121st_counted_ingress_ipv4_rule_is_refused_as_lint_says(
    webhook: WebhookProcess, tmp_path: Path
) -> None:
    """Must show: kubectl apply of a 121st counted (S-L-1) ingress IPv4 rule is refused by
    the API server with a message naming group, direction, type and count; `kubectl
    secgroups lint` says the same of the same rules."""
    cp, ns = webhook.cp, "adm-quota"
    namespaces(cp, ns)
    base = [namespace(ns), group("web", ns), group("db", ns)]
    rules = [counted(i, ns) for i in range(RULE_QUOTA)]
    ok(cp, "apply", "-f", "-", stdin=manifests(*base, *rules[:-1]))
    last = ok(cp, "apply", "-f", "-", stdin=manifests(rules[-1]))  # the 120th: allowed, warned
    assert "Warning: S-L-1 quota: security group adm-quota/web: 120 of 120 Ingress IPv4" in last

    extra = counted(RULE_QUOTA, ns)
    out = kubectl(cp, "apply", "-f", "-", stdin=manifests(extra))
    assert out.returncode != 0
    expected = (
        "S-L-1 quota: security group adm-quota/web: 121 Ingress IPv4 rules with a remote "
        "group, a remote address group or inconsecutive ports; the limit is 120"
    )
    assert REFUSED_BY + expected in out.stderr, out.stderr
    assert kubectl(cp, "get", "sgr", extra["metadata"]["name"], "-n", ns).returncode != 0
    # Other buckets still have room: egress, IPv6, rules that do not count.
    ok(cp, "apply", "-f", "-", stdin=manifests(
        rule("web-egress", "web", ns, direction="Egress", remote={"securityGroup": {"name": "db"}}),
        rule("web-v6", "web", ns, ipFamily="IPv6", remote={"securityGroup": {"name": "db"}}),
        rule("web-plain", "web", ns, protocol="TCP", ports="80"),
    ))  # fmt: skip

    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "all.yaml").write_text(manifests(*base, *rules, extra), encoding="utf-8")
    plugin = str(Path(sys.executable).parent / "kubectl-secgroups")
    lint = subprocess.run(
        [plugin, "lint", "-f", str(folder), "-o", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    findings = json.loads(lint.stdout)["findings"]
    quota = [f for f in findings if f["code"] == "quota"]
    assert [(f["kind"], f["namespace"], f["name"]) for f in quota] == [("SecurityGroup", ns, "web")]
    assert expected.endswith(quota[0]["message"]), (expected, quota[0]["message"])


def test_deleting_a_group_with_members_is_refused_naming_them(webhook: WebhookProcess) -> None:
    """Must show: deleting a SecurityGroup with members is refused with the members' names."""
    cp, ns, far = webhook.cp, "adm-del", "adm-far"
    namespaces(cp, ns, far)
    ok(cp, "apply", "-f", "-", stdin=manifests(
        group("web", ns, podSelector={"matchLabels": {"app": "web"}}),
        group("api", far),
        pod("w1", ns, app="web"), pod("w2", ns, groups="web"), pod("x1", ns),
        rule("from-web", "api", far, remote={"securityGroup": {"name": "web", "namespace": ns}}),
        ipag("office", ns),
        deny_office(ns),
    ))  # fmt: skip

    out = kubectl(cp, "delete", "sg", "web", "-n", ns)
    assert out.returncode != 0
    assert (
        REFUSED_BY + f"security group {ns}/web is in use: 2 member pods ({ns}/w1, {ns}/w2) "
        f"and it is the remote of 1 rule ({far}/from-web)"
    ) in out.stderr, out.stderr
    out = kubectl(cp, "delete", "ipag", "office", "-n", ns)
    assert out.returncode != 0
    assert f"IP address group {ns}/office is in use" in out.stderr
    assert f"({ns}/deny-office)" in out.stderr
    assert kubectl(cp, "get", "sg", "web", "-n", ns).returncode == 0

    # Take the users away: then the deletes go through.
    ok(cp, "delete", "pod", "w1", "w2", "-n", ns, "--grace-period=0", "--force")
    ok(cp, "delete", "sgr", "from-web", "-n", far)
    ok(cp, "delete", "sgr", "deny-office", "-n", ns)
    ok(cp, "delete", "ipag", "office", "-n", ns)
    ok(cp, "delete", "sg", "web", "-n", ns)


def test_deleting_the_namespace_deletes_groups_in_use(webhook: WebhookProcess) -> None:
    """The namespace controller deletes groups while their pods are still there: allowed
    because the namespace is terminating, or namespace deletion would hang."""
    cp, ns = webhook.cp, "adm-gone"
    namespaces(cp, ns)
    ok(cp, "apply", "-f", "-", stdin=manifests(
        group("web", ns), pod("w1", ns, groups="web"), ipag("office", ns),
        deny_office(ns),
    ))  # fmt: skip
    assert kubectl(cp, "delete", "sg", "web", "-n", ns, "--dry-run=server").returncode != 0
    ok(cp, "delete", "namespace", ns, "--wait=false")
    wait_until(
        f"namespace {ns} gone",
        lambda: kubectl(cp, "get", "namespace", ns).returncode != 0,
        timeout=120,
    )


def test_pods_get_warnings_and_cannot_join_a_full_group(webhook: WebhookProcess) -> None:
    cp, ns = webhook.cp, "adm-pods"
    namespaces(cp, ns)
    ok(cp, "apply", "-f", "-", stdin=manifests(group("web", ns), group("full", ns)))
    out = ok(cp, "apply", "-f", "-", stdin=manifests(pod("typo", ns, groups="web,wbe")))
    assert (
        "Warning: pod adm-pods/typo: annotation names security group(s) that do not exist: wbe"
        in out
    )
    many = ",".join(f"g{i}" for i in range(6))
    ok(cp, "apply", "-f", "-", stdin=manifests(*(group(f"g{i}", ns) for i in range(6))))
    out = ok(cp, "apply", "-f", "-", stdin=manifests(pod("busy", ns, groups=many)))
    assert "Warning: S-L-3: pod adm-pods/busy in 6 security groups; at most 5 are advised" in out

    # The operator reports 6,000 members in status (patched here: no reconciler runs in
    # this module, but one started by another module may overwrite it, hence the retry).
    def refused() -> str | None:
        kubectl(cp, "patch", "sg", "full", "-n", ns, "--subresource=status", "--type=merge",
                "-p", '{"status": {"memberCount": 6000}}')  # fmt: skip
        out = kubectl(cp, "apply", "-f", "-", stdin=manifests(pod("late", ns, groups="full")))
        if out.returncode == 0:
            kubectl(cp, "delete", "pod", "late", "-n", ns, "--grace-period=0", "--force")
            return None
        return out.stderr

    err = wait_until("a pod joining a full group is refused", refused, timeout=60)
    assert (
        REFUSED_BY.replace("validate.secgroups.dev", "pods.secgroups.dev")
        + (
            f"S-L-2: security group {ns}/full: 6001 member pods; the limit is 6000; "
            f"pod {ns}/late cannot join it"
        )
        in err
    )


def test_with_the_operator_down_fail_refuses_and_ignore_lets_through(
    webhook: WebhookProcess,
) -> None:
    """The two failurePolicy choices (docs/admission.md). Runs last: it kills the operator."""
    cp, ns = webhook.cp, "adm-quota"
    webhook.kill()
    out = kubectl(cp, "apply", "-f", "-", stdin=manifests(rule("while-down", "db", ns)))
    assert out.returncode != 0
    assert 'failed calling webhook "validate.secgroups.dev"' in out.stderr, out.stderr
    # Pods keep being admitted (the pods webhook is Ignore): workloads start without us.
    ok(cp, "apply", "-f", "-", stdin=manifests(pod("while-down", ns)))

    patch = [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]
    ok(
        cp,
        "patch",
        "validatingwebhookconfiguration",
        CONFIG,
        "--type=json",
        "-p",
        json.dumps(patch),
    )

    def admitted() -> bool:
        out = kubectl(cp, "apply", "-f", "-", stdin=manifests(rule("while-down", "db", ns)))
        return out.returncode == 0

    wait_until("failurePolicy Ignore lets the write through", admitted, timeout=30)


def test_a_standby_replica_answers_admission_too(webhook: WebhookProcess, tmp_path: Path) -> None:
    """The whole operator, not leading (another replica holds its Lease), serves the same
    decisions: they need no cache. Runs after the operator above is gone, with its own
    configuration, so every answer is the standby's."""
    cp = webhook.cp
    webhook.kill()
    kubectl(cp, "delete", "validatingwebhookconfiguration", CONFIG, "--ignore-not-found")
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "held", "namespace": SYSTEM_NS},
        "spec": {"holderIdentity": "the-leader", "leaseDurationSeconds": 3600, "renewTime": now},
    }
    ok(cp, "apply", "-f", "-", stdin=manifests(lease))
    standby = WebhookProcess(cp, tmp_path / "standby.log", config=f"{CONFIG}-standby")
    standby.argv.remove("--webhook-only")
    standby.argv += [
        "--leader-election-lease", f"{SYSTEM_NS}/held", "--identity", "standby-1",
        "--liveness", "",
    ]  # fmt: skip
    standby.start()
    try:
        ns = "adm-canary"

        def refusing() -> str | None:
            assert standby.proc is not None
            if standby.proc.poll() is not None:
                pytest.fail(f"the standby exited:\n{standby.tail()}")
            out = kubectl(cp, "delete", "sg", "canary", "-n", ns, "--dry-run=server")
            return out.stderr if out.returncode != 0 and "is in use" in out.stderr else None

        err = wait_until("the standby refuses deleting a group in use", refusing, timeout=90)
        assert f"security group {ns}/canary is in use: 1 member pod ({ns}/c1)" in err
        held = json.loads(ok(cp, "get", "lease", "held", "-n", SYSTEM_NS, "-o", "json"))
        assert held["spec"]["holderIdentity"] == "the-leader", "it stayed a standby"
    finally:
        kubectl(cp, "delete", "validatingwebhookconfiguration", f"{CONFIG}-standby")
        standby.stop()
