"""Which cluster to talk to: the one kubeconfig rule of the operator, the agent and the CLI.

The first source that exists wins:

1. an explicit path (``--kubeconfig``; a missing file is an error, never skipped), or an
   explicit ``in_cluster`` (the agent's ``--in-cluster``);
2. ``$KUBECONFIG``: the first file of its list (``os.pathsep``-separated) that exists;
3. the in-cluster service account (its token file and ``$KUBERNETES_SERVICE_HOST``),
   which is what the operator's Deployment and the agent's DaemonSet use;
4. ``~/.kube/config``.

The context is the one named (the CLI's ``--context``) or the file's current one.
Failures become :class:`KubeConfigError` with a one-line reason. :func:`credentials`
turns the chosen context into plain connection fields for kopf's login, so the
operator's watches and its writes authenticate the same way.

Neighbours: :mod:`secgroups_kube.clients` connects with the result; the shells only
pass the path (and the CLI the context).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lightkube import ConfigError, KubeConfig, SingleConfig

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
HOME_CONFIG = Path("~/.kube/config")
IN_CLUSTER = "in-cluster service account"


class KubeConfigError(Exception):
    """No usable kubeconfig, or one that cannot be read (the message says which)."""


def config_source(
    path: str | os.PathLike[str] | None,
    *,
    in_cluster: bool = False,
    environ: Mapping[str, str] = os.environ,
    service_account: Path = SERVICE_ACCOUNT,
    home_config: Path = HOME_CONFIG,
) -> Path | None:
    """The kubeconfig file the rule picks, or None for the in-cluster service account.

    Raises :class:`KubeConfigError` when no source exists.
    """
    if path:
        return Path(path)
    if in_cluster:
        return None
    for entry in environ.get("KUBECONFIG", "").split(os.pathsep):
        if entry and Path(entry).expanduser().is_file():
            return Path(entry).expanduser()
    if (service_account / "token").is_file() and environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    home = home_config.expanduser()
    if home.is_file():
        return home
    raise KubeConfigError(
        f"no kubeconfig: no --kubeconfig, no existing file in $KUBECONFIG, no {IN_CLUSTER}, "
        f"no {home}"
    )


def load_config(
    path: str | os.PathLike[str] | None = None,
    context: str | None = None,
    *,
    in_cluster: bool = False,
    environ: Mapping[str, str] = os.environ,
    service_account: Path = SERVICE_ACCOUNT,
    home_config: Path = HOME_CONFIG,
) -> SingleConfig:
    """The context to connect with, found by the rule of the module docstring."""
    source = config_source(
        path,
        in_cluster=in_cluster,
        environ=environ,
        service_account=service_account,
        home_config=home_config,
    )
    where = IN_CLUSTER if source is None else str(source)
    try:
        if source is None:
            conf = KubeConfig.from_service_account(service_account)
        else:
            conf = KubeConfig.from_file(source)
        single = conf.get(context_name=context)
    except ConfigError as exc:
        raise KubeConfigError(f"{where}: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KubeConfigError(f"cannot read the kubeconfig {where}: {exc}") from None
    if single is None:  # only when a default is passed to get(); kept for the type checker
        raise KubeConfigError(f"{where} has no context {context or '(current)'}")
    return single


@dataclass(frozen=True)
class Credentials:
    """One context as plain connection fields (the names of ``kopf.ConnectionInfo``).

    Paths are absolute; the ``*_data`` fields stay base64 as in the kubeconfig; a token
    file is read now (a projected service-account token rotates, and kopf logs in again
    after a 401).
    """

    server: str
    ca_path: str | None = None
    ca_data: str | None = None
    insecure: bool | None = None
    token: str | None = None
    certificate_path: str | None = None
    certificate_data: str | None = None
    private_key_path: str | None = None
    private_key_data: str | None = None
    username: str | None = None
    password: str | None = None
    default_namespace: str | None = None


def credentials(config: SingleConfig) -> Credentials:
    """The connection fields of ``config`` (exec and auth-provider users are not supported)."""
    cluster, user = config.cluster, config.user

    def path(name: str | None) -> str | None:
        return None if name is None else str(config.abs_file(name))

    token = user.token if user else None
    if user and user.token_file:
        token = Path(path(user.token_file) or "").read_text().strip()
    return Credentials(
        server=cluster.server,
        ca_path=path(cluster.certificate_auth),
        ca_data=cluster.certificate_auth_data,
        insecure=cluster.insecure or None,
        token=token,
        certificate_path=path(user.client_cert) if user else None,
        certificate_data=user.client_cert_data if user else None,
        private_key_path=path(user.client_key) if user else None,
        private_key_data=user.client_key_data if user else None,
        username=user.username if user else None,
        password=user.password if user else None,
        default_namespace=config.context.namespace,
    )
