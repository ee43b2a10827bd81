"""The Go side of the CNI plugin (``cni/``): gofmt, go vet and its Go tests, from pytest, so
``make test`` runs them (docs/cni.md, "Tests"). Skipped with one line where Go is missing,
except in CI."""

from __future__ import annotations

import os
import subprocess

import pytest

from secgroups_lab.binaries import cache_dir
from secgroups_lab.cnibin import go_binary, source_dir

pytestmark = pytest.mark.slow


def _go(*args: str) -> subprocess.CompletedProcess[str]:
    go = go_binary()
    if go is None:
        if os.environ.get("CI"):
            pytest.fail("`go` is not installed (CI must build the CNI plugin)")
        pytest.skip("`go` is not installed")
    cache = cache_dir() / "go"
    env = dict(
        os.environ,
        GOMODCACHE=str(cache / "mod"),
        GOCACHE=str(cache / "build"),
        GOFLAGS="-mod=mod -buildvcs=false",
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
    )
    return subprocess.run(
        [go, *args], cwd=source_dir(), env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip


def test_go_sources_are_formatted() -> None:
    assert _go("version").returncode == 0  # skips without Go
    go = go_binary()
    assert go is not None
    gofmt = os.path.join(os.path.dirname(go), "gofmt")
    listed = subprocess.run(
        [gofmt, "-l", "."], cwd=source_dir(), capture_output=True, text=True, check=False
    )
    assert listed.stdout == "", f"not gofmt-ed: {listed.stdout}"


def test_go_vet_and_go_test_pass() -> None:
    vet = _go("vet", "./...")
    assert vet.returncode == 0, vet.stdout + vet.stderr
    tests = _go("test", "-count=1", "./...")
    assert tests.returncode == 0, tests.stdout + tests.stderr
