"""Build (once per source content) the ``secgroups-cni`` plugin for the lab and the tests.

The plugin is Go (``cni/``, docs/cni.md). The lab's simulated kubelet runs the real
binary the way a container runtime does, so tests need it built: ``go build`` of the
module into ``${KSG_CACHE:-~/.cache/kube-secgroups}/bin/secgroups-cni-<digest>/``, where
``<digest>`` hashes the module's files — a changed source builds again, an unchanged one
never calls Go. The Go caches are the project's (as ``hack/build-binaries.sh`` sets
them); dependencies come from the Go module proxy, checked against ``cni/go.sum``. A
build takes ~10-30 s cold on two busy cores, nothing when cached.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from secgroups_lab.binaries import cache_dir, repo_root

NAME = "secgroups-cni"
_GO_DIRS = ("/usr/local/go/bin", "/usr/lib/go/bin", str(Path.home() / "go" / "bin"))


class PluginBuildError(RuntimeError):
    """Go is missing or the build failed (the message says which, with Go's output)."""


def source_dir() -> Path:
    return repo_root() / "cni"


def digest(src: Path | None = None) -> str:
    """A hash of the module's files (Go sources, go.mod, go.sum), 12 hex digits."""
    src = src or source_dir()
    h = hashlib.sha256()
    for path in sorted(src.rglob("*")):
        if path.is_file() and (path.suffix == ".go" or path.name in ("go.mod", "go.sum")):
            h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def go_binary() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    for d in _GO_DIRS:
        if (Path(d) / "go").is_file():
            return str(Path(d) / "go")
    return None


def plugin_path(src: Path | None = None) -> Path:
    """Where the plugin of the current sources is (or will be) built."""
    return cache_dir() / "bin" / f"{NAME}-{digest(src)}" / NAME


def build_plugin(src: Path | None = None, *, timeout: float = 900.0) -> Path:
    """The plugin binary of the current sources, built if it is not there yet."""
    src = src or source_dir()
    out = plugin_path(src)
    if out.is_file():
        return out
    go = go_binary()
    if go is None:
        raise PluginBuildError("`go` is not installed (needed to build the secgroups-cni plugin)")
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent.parent / f"{NAME}.lock"
    with lock.open("a") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another test session may be building the same
        if out.is_file():
            return out
        cache = cache_dir() / "go"
        env = dict(
            os.environ,
            GOMODCACHE=str(cache / "mod"),
            GOCACHE=str(cache / "build"),
            GOFLAGS="-mod=mod -buildvcs=false",
            GOTOOLCHAIN="local",
            CGO_ENABLED="0",
        )
        tmp = out.with_suffix(".tmp")
        cmd = [go, "build", "-trimpath", "-ldflags", f"-s -w -X main.Version=lab-{digest(src)}"]
        try:
            done = subprocess.run(
                [*cmd, "-o", str(tmp), "./cmd/secgroups-cni"],
                check=False,
                cwd=src,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise PluginBuildError(f"go build of {src} took more than {timeout:.0f} s") from None
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise PluginBuildError(f"go build of {src} failed:\n{tail}")
        os.replace(tmp, out)
    return out
