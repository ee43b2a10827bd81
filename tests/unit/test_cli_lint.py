"""kubectl secgroups lint: S-O-2 warnings, broken references, exit codes for CI, and clear
file:line errors for malformed manifests (offline)."""

from __future__ import annotations

import pytest
from clirun import INVALID, SCENARIO, run

SANDBOX = f"{SCENARIO}/40-sandbox.json"


def test_findings_with_codes_objects_and_sources() -> None:
    r = run("lint", "-f", str(SCENARIO), "-o", "json")
    assert r.code == 1  # errors present, --fail-on error by default
    doc = r.json()
    got = [(f["severity"], f["code"], f["name"], f.get("source")) for f in doc["findings"]]
    assert got == [
        ("error", "group-missing", "orphan", f"{SANDBOX}:54"),
        ("error", "remote-missing", "partners-https", f"{SANDBOX}:47"),
        ("warning", "unused-group", "legacy-admin", f"{SANDBOX}:5"),
        ("warning", "all-ports-open-to-world", "all-v6", f"{SANDBOX}:40"),
        ("warning", "database-port-open-to-world", "mysql-anywhere", f"{SANDBOX}:33"),
        ("warning", "shadowed-rule", "no-ssh-from-lab", f"{SANDBOX}:25"),
        ("warning", "admin-port-open-to-world", "ssh-anywhere", f"{SANDBOX}:11"),
        ("warning", "shadowed-rule", "ssh-office", f"{SANDBOX}:18"),
    ]
    assert doc["summary"] == {"errors": 2, "warnings": 6}
    assert doc["failed"] is True
    messages = {f["name"]: f["message"] for f in doc["findings"]}
    assert messages["mysql-anywhere"].startswith(
        "internal database port(s) mysql 3306, redis 6379 reachable from the world"
    )
    assert "its Deny never applies" in messages["no-ssh-from-lab"]
    assert "it is redundant" in messages["ssh-office"]


def test_table_output_and_summary_line() -> None:
    r = run("lint", "-f", str(SCENARIO))
    header = r.out.splitlines()[0].split()
    assert header == ["SEVERITY", "CODE", "NAMESPACE", "OBJECT", "SOURCE", "MESSAGE"]
    assert "sgr/ssh-anywhere" in r.out
    assert r.out.endswith("2 error(s), 6 warning(s) (--fail-on error: failed)\n")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        pytest.param(["-n", "demo", "--fail-on", "warning"], 0, id="demo-is-clean"),
        pytest.param(["-n", "sandbox"], 1, id="sandbox-has-errors"),
        pytest.param(["-n", "sandbox", "--fail-on", "never"], 0, id="never-fails"),
    ],
)
def test_exit_code_for_ci(args: list[str], code: int) -> None:
    assert run("lint", "-f", str(SCENARIO), *args).code == code


def test_warnings_fail_only_when_asked() -> None:
    only_warnings = f"{SCENARIO}/10-sg-a.yaml"
    extra = '{"apiVersion": "secgroups.dev/v1alpha1", "kind": "SecurityGroup",'
    extra += ' "metadata": {"name": "spare", "namespace": "demo"}}'
    assert run("lint", "-f", only_warnings, "-f", "-", stdin=extra).code == 0
    r = run("lint", "-f", only_warnings, "-f", "-", "--fail-on", "warning", stdin=extra)
    assert r.code == 1
    assert "unused-group" in r.out and "<stdin>:1" in r.out


def test_malformed_manifests_are_reported_with_file_and_line() -> None:
    r = run("lint", "-f", str(INVALID / "bad-rule.yaml"))
    assert r.code == 2
    assert r.err == (
        "error: invalid manifests:\n"
        f"  {INVALID}/bad-rule.yaml:12: spec.priority: should be less than or equal to 100\n"
        f"  {INVALID}/bad-rule.yaml:23: spec.ports: "
        "ports are allowed only when protocol is TCP or UDP\n"
    )
    assert "Traceback" not in r.err


def test_yaml_syntax_errors_name_the_line() -> None:
    r = run("lint", "-f", str(INVALID / "bad-yaml.yaml"))
    assert r.code == 2
    assert r.err.startswith(f"error: {INVALID}/bad-yaml.yaml:6: not valid YAML: ")


def test_bad_pod_ips_and_duplicates() -> None:
    r = run("lint", "-f", str(INVALID / "bad-pod.yaml"))
    assert r.err == (
        "error: invalid manifests:\n"
        f"  {INVALID}/bad-pod.yaml:11: status.podIPs[1].ip: not an IP address: not-an-ip\n"
    )
    r = run("lint", "-f", str(SCENARIO), "-f", str(INVALID / "duplicate.yaml"))
    assert r.code == 2
    assert (
        f"{INVALID}/duplicate.yaml:1: SecurityGroup demo/sg-a is defined twice "
        f"(first at {SCENARIO}/10-sg-a.yaml:3)"
    ) in r.err
