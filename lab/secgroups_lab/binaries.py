"""Locate (and if needed build) the lab's pinned binaries.

Versions are pinned in ``hack/versions.env``; ``hack/build-binaries.sh`` builds them from the Go
module proxy into ``${KSG_CACHE:-~/.cache/kube-secgroups}/bin/<component>-<version>/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

COMPONENTS: tuple[str, ...] = (
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "etcd",
    "helm",
)
CONTROL_PLANE: tuple[str, ...] = ("kube-apiserver", "kube-controller-manager", "kubectl", "etcd")


class BinaryMissingError(RuntimeError):
    """A pinned binary is not in the cache and could not be built."""


def repo_root() -> Path:
    """The repository holding ``hack/versions.env`` (``$KSG_REPO`` overrides the search)."""
    env = os.environ.get("KSG_REPO")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "hack" / "versions.env").is_file():
            return parent
    raise BinaryMissingError(
        f"cannot find hack/versions.env above {here}; set KSG_REPO to the repository root"
    )


def versions_file() -> Path:
    return repo_root() / "hack" / "versions.env"


def build_script() -> Path:
    return repo_root() / "hack" / "build-binaries.sh"


def read_versions(path: Path | None = None) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines (comments and blank lines ignored)."""
    result: dict[str, str] = {}
    text = (path or versions_file()).read_text(encoding="utf-8")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not KEY=VALUE: {raw!r}")
        result[key.strip()] = value.strip().strip("'\"")
    return result


def cache_dir() -> Path:
    env = os.environ.get("KSG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kube-secgroups"


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the pinned binaries (they may not exist yet)."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    etcd: Path
    helm: Path
    kubernetes_version: str
    etcd_version: str
    helm_version: str

    def path(self, component: str) -> Path:
        return {
            "kube-apiserver": self.kube_apiserver,
            "kube-controller-manager": self.kube_controller_manager,
            "kubectl": self.kubectl,
            "etcd": self.etcd,
            "helm": self.helm,
        }[component]

    def missing(self, components: Iterable[str] = COMPONENTS) -> list[str]:
        return [c for c in components if not os.access(self.path(c), os.X_OK)]


def paths() -> Binaries:
    """Where the pinned binaries are (or will be) in the cache."""
    v = read_versions()
    k8s, etcd, helm = v["KUBERNETES_VERSION"], v["ETCD_VERSION"], v["HELM_VERSION"]
    bin_dir = cache_dir() / "bin"
    kdir = bin_dir / f"kubernetes-{k8s}"
    return Binaries(
        kube_apiserver=kdir / "kube-apiserver",
        kube_controller_manager=kdir / "kube-controller-manager",
        kubectl=kdir / "kubectl",
        etcd=bin_dir / f"etcd-{etcd}" / "etcd",
        helm=bin_dir / f"helm-{helm}" / "helm",
        kubernetes_version=k8s,
        etcd_version=etcd,
        helm_version=helm,
    )


def ensure(components: Iterable[str] = CONTROL_PLANE, *, build: bool = True) -> Binaries:
    """Return the binaries, building the missing ones with ``hack/build-binaries.sh``.

    Raises BinaryMissingError naming what is missing if ``build`` is False or the build fails.
    """
    wanted = list(components)
    unknown = [c for c in wanted if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown}; known: {list(COMPONENTS)}")
    bins = paths()
    missing = bins.missing(wanted)
    if not missing:
        return bins
    where = ", ".join(f"{c} ({bins.path(c)})" for c in missing)
    if not build:
        raise BinaryMissingError(f"missing {where}; build them with {build_script()}")
    print(f"[lab] building missing binaries: {', '.join(missing)}", file=sys.stderr, flush=True)
    # The script's output goes to file descriptor 2, so its progress lines are visible.
    proc = subprocess.run(["bash", str(build_script()), *missing], stdout=2, check=False)
    still = bins.missing(wanted)
    if proc.returncode != 0 or still:
        where = ", ".join(f"{c} ({bins.path(c)})" for c in still or missing)
        raise BinaryMissingError(
            f"{build_script()} exited {proc.returncode}; still missing: {where}"
        )
    return bins
