"""secgroups_lab.binaries: pinned versions and cache paths (no build, no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from secgroups_lab import binaries


def test_versions_are_pinned_in_one_file() -> None:
    v = binaries.read_versions()
    assert v["KUBERNETES_VERSION"].startswith("v1.")
    assert v["ETCD_VERSION"].startswith("v3.")
    assert v["HELM_VERSION"].startswith("v3.")
    # The committed wrapper modules build exactly the pinned versions.
    root = binaries.repo_root()
    k8s_mod = (root / "hack" / "k8sbin" / "go.mod").read_text()
    assert f"require k8s.io/kubernetes {v['KUBERNETES_VERSION']}\n" in k8s_mod
    etcd_mod = (root / "hack" / "etcdbin" / "go.mod").read_text()
    assert f"go.etcd.io/etcd/server/v3 {v['ETCD_VERSION']}" in etcd_mod


def test_paths_live_in_the_cache_by_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSG_CACHE", str(tmp_path))
    b = binaries.paths()
    assert b.kube_apiserver == tmp_path / "bin" / f"kubernetes-{b.kubernetes_version}" / (
        "kube-apiserver"
    )
    assert b.etcd == tmp_path / "bin" / f"etcd-{b.etcd_version}" / "etcd"
    assert b.missing() == list(binaries.COMPONENTS)


def test_ensure_without_build_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSG_CACHE", str(tmp_path))
    etcd = binaries.paths().etcd
    etcd.parent.mkdir(parents=True)
    etcd.write_text("#!/bin/sh\n")
    etcd.chmod(0o755)
    with pytest.raises(binaries.BinaryMissingError) as err:
        binaries.ensure(["kube-apiserver", "etcd"], build=False)
    assert str(err.value).startswith("missing kube-apiserver (")
    assert "etcd (" not in str(err.value)
    assert binaries.ensure(["etcd"], build=False).etcd == etcd


def test_read_versions_parses_key_value_lines(tmp_path: Path) -> None:
    f = tmp_path / "versions.env"
    f.write_text("# comment\n\nA=1\nB = 'two'\n")
    assert binaries.read_versions(f) == {"A": "1", "B": "two"}
