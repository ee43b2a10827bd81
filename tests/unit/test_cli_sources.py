"""Offline input of kubectl secgroups: files, folders, stdin, namespaces, output options."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from clirun import SCENARIO, run

from secgroups_cli.render import Style, use_color

RULE = """\
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroupRule
metadata: {name: ssh}
spec: {securityGroup: web, direction: Ingress, protocol: TCP, ports: "22"}
---
apiVersion: secgroups.dev/v1alpha1
kind: SecurityGroup
metadata: {name: web, namespace: team}
spec: {podSelector: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: team}
status: {podIPs: [{ip: 10.1.0.1}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
"""


def test_stdin_objects_without_namespace_take_the_one_of_n() -> None:
    r = run("explain", "pod/p1", "-n", "team", "-f", "-", "-o", "json", stdin=RULE)
    assert r.code == 0, r.err
    doc = r.json()
    assert [x["id"] for x in doc["ingress"]] == ["team/ssh"]
    assert doc["ingress"][0]["source"] == "<stdin>:1"
    assert "note: ignored objects of other kinds: Deployment (1)" in r.err


def test_namespaces_without_an_object_are_assumed_enforced_with_a_note() -> None:
    r = run("explain", "pod/p1", "-n", "team", "-f", "-", stdin=RULE)
    assert "not managed" not in r.out
    assert (
        "note: no Namespace object in the files for team: assumed enforced "
        "(secgroups.dev/enforce=true); use --enforced-only to treat them as not enforced"
    ) in r.err
    r = run("explain", "pod/p1", "-n", "team", "-f", "-", "--enforced-only", stdin=RULE)
    assert "not managed: namespace team is not enforced" in r.out
    assert "not enforced (--enforced-only)" in r.err


def test_a_namespace_object_in_the_files_decides() -> None:
    # legacy has a Namespace object without the label: not enforced, no note.
    r = run("explain", "pod/legacy/old", "-f", str(SCENARIO))
    assert "not managed: namespace legacy is not enforced" in r.out
    assert r.err == ""


def test_enforce_label_can_be_changed() -> None:
    r = run(
        "explain", "pod/legacy/old", "-f", str(SCENARIO), "--enforce-label", "team=blue", "-o",
        "json",
    )  # fmt: skip
    assert "team=blue" in r.json()["pod"]["unmanagedReason"]


def test_folders_are_read_recursively(tmp_path: Path) -> None:
    (tmp_path / "nested" / ".hidden").mkdir(parents=True)
    (tmp_path / "nested" / "objects.yml").write_text(RULE)
    (tmp_path / "nested" / ".hidden" / "junk.yaml").write_text(": not yaml :")
    (tmp_path / "README.md").write_text("# not read")
    r = run("explain", "pod/p1", "-n", "team", "-f", str(tmp_path), "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["ingress"][0]["source"] == f"{tmp_path}/nested/objects.yml:1"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/nonexistent/x.yaml", "/nonexistent/x.yaml: no such file or folder"),
    ],
)
def test_missing_paths(path: str, message: str) -> None:
    r = run("lint", "-f", path)
    assert (r.code, r.err) == (2, f"error: {message}\n")


def test_empty_folder_and_non_objects(tmp_path: Path) -> None:
    r = run("lint", "-f", str(tmp_path))
    assert r.err == f"error: {tmp_path}: no .yaml, .yml or .json files in this folder\n"
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    r = run("lint", "-f", str(tmp_path / "list.yaml"))
    assert r.err == f"error: {tmp_path}/list.yaml:1: expected a Kubernetes object (a mapping)\n"


def test_missing_name_and_wrong_api_version(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(
        "apiVersion: secgroups.dev/v1\nkind: SecurityGroup\nmetadata: {name: a}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata:\n  labels: {}\n"
    )
    r = run("lint", "-f", str(f))
    assert r.err == (
        "error: invalid manifests:\n"
        f"  {f}:1: apiVersion: should be secgroups.dev/v1alpha1, got secgroups.dev/v1\n"
        f"  {f}:7: metadata.name: required field is missing\n"
    )


def test_unknown_fields_are_named(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(
        "apiVersion: secgroups.dev/v1alpha1\nkind: SecurityGroupRule\nmetadata: {name: a}\n"
        "spec:\n  securityGroup: g\n  direction: Ingress\n  protocol: TCP\n  prority: 3\n"
    )
    r = run("lint", "-f", str(f))
    assert f"  {f}:8: spec.prority: unknown field\n" in r.err


def test_json_file_with_tabs_is_read(tmp_path: Path) -> None:
    f = tmp_path / "g.json"
    f.write_text(
        '{\n\t"apiVersion": "secgroups.dev/v1alpha1",\n\t"kind": "SecurityGroup",\n'
        '\t"metadata": {"name": "g", "namespace": "x"}\n}\n'
    )
    r = run("lint", "-f", str(f), "-o", "json")
    assert r.code == 0, r.err
    assert [x["code"] for x in r.json()["findings"]] == ["unused-group"]


def test_common_options_may_come_before_the_command() -> None:
    r = run("-f", str(SCENARIO), "-n", "demo", "-o", "json", "explain", "pod/a1")
    assert r.code == 0, r.err
    assert r.json()["pod"]["name"] == "a1"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("trace", "-f", str(SCENARIO)).code == 2
    assert "required: --from, --to, --proto" in capsys.readouterr().err
    assert run("nope").code == 2


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(Tty(), no_color=False)
    assert not use_color(io.StringIO(), no_color=False)
    assert not use_color(Tty(), no_color=True)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty(), no_color=False)
    assert Style(True).verdict(False) == "\x1b[31mdenied\x1b[0m"
    assert Style(False).verdict(False) == "denied"
