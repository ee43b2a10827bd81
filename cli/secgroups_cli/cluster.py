"""The live-cluster side of ``sources``: read objects and apply clones, through lightkube.

The kubeconfig is found as kubectl finds it: ``--kubeconfig``, else the first file of
``$KUBECONFIG``, else ``~/.kube/config``, else the in-cluster service account; the
context is ``--context`` or the current one, and its namespace is the default ``-n``.
Every API or transport failure becomes a :class:`CliError` with what was being done.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightkube.core.generic_client as _generic_client
from lightkube import ALL_NS, ApiError, Client, ConfigError, KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Namespace, Node, Pod

from secgroups.kinds import plural
from secgroups.models import API_VERSION, GROUP, RESOURCE_KINDS, VERSION
from secgroups_cli.errors import CliError
from secgroups_cli.sources import Options, Snapshot, build_snapshot, object_documents

FIELD_MANAGER = "kubectl-secgroups"
# lightkube's HTTP library (httpx or a fork): its base error covers connection failures.
_HTTP_ERROR: type[Exception] = vars(_generic_client)["httpx"].HTTPError

RESOURCES = {
    kind: create_namespaced_resource(GROUP, VERSION, kind, plural(kind)) for kind in RESOURCE_KINDS
}


def _config(options: Options) -> SingleConfig:
    """The kubeconfig and context to use (see the module docstring)."""
    try:
        if options.kubeconfig:
            conf = KubeConfig.from_file(options.kubeconfig)
        else:
            env = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
            home = Path.home() / ".kube" / "config"
            path = next((p for p in env if Path(p).is_file()), None)
            if path is None and home.is_file():
                path = str(home)
            conf = KubeConfig.from_file(path) if path else KubeConfig.from_service_account()
        single = conf.get(context_name=options.context)
    except ConfigError as exc:
        raise CliError(
            f"no usable kubeconfig ({exc}); pass --kubeconfig, or -f FILE to work offline"
        ) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the kubeconfig: {exc}") from None
    if single is None:
        raise CliError(f"kubeconfig has no context {options.context or '(current)'}")
    return single


@contextlib.contextmanager
def api_errors(what: str, server: str) -> Iterator[None]:
    """Turn lightkube and transport errors into one-line CliErrors about ``what``."""
    try:
        yield
    except ApiError as exc:
        status = exc.status
        code = status.code if status is not None else None
        message = status.message if status is not None else str(exc)
        if code == 404 and what.startswith("list secgroups"):
            raise CliError(
                f"{what}: the {GROUP}/{VERSION} CRDs are not installed in this cluster ({message})"
            ) from None
        raise CliError(f"{what}: {message} (HTTP {code})") from None
    except _HTTP_ERROR as exc:
        raise CliError(f"{what}: cannot reach the API server at {server}: {exc}") from None


class Cluster:
    """A connected lightkube client plus the context's default namespace."""

    def __init__(self, client: Client, config: SingleConfig) -> None:
        self.client = client
        self.config = config
        self.server = config.cluster.server

    @classmethod
    def connect(cls, options: Options) -> Cluster:
        config = _config(options)
        try:
            client = Client(config=config, field_manager=FIELD_MANAGER)
        except ConfigError as exc:
            raise CliError(f"cannot use the kubeconfig: {exc}") from None
        return cls(client, config)

    @property
    def namespace(self) -> str:
        return self.config.namespace

    def _list(
        self, what: str, res: Any, api_version: str, kind: str, namespaced: bool
    ) -> list[dict[str, Any]]:
        with api_errors(what, self.server):
            items = self.client.list(res, namespace=ALL_NS) if namespaced else self.client.list(res)
            out = []
            for obj in items:
                doc: dict[str, Any] = obj.to_dict()
                # List items may come without them; the facts builder dispatches on them.
                doc.setdefault("apiVersion", api_version)
                doc.setdefault("kind", kind)
                out.append(doc)
            return out

    def objects(self) -> list[dict[str, Any]]:
        """Namespaces, nodes, pods and our three kinds, in every namespace."""
        docs = self._list("list namespaces", Namespace, "v1", "Namespace", False)
        # Nodes only name where pods run: a user without the right to list them still
        # gets every answer.
        with contextlib.suppress(CliError):
            docs += self._list("list nodes", Node, "v1", "Node", False)
        docs += self._list("list pods", Pod, "v1", "Pod", True)
        for kind, res in RESOURCES.items():
            docs += self._list(f"list secgroups {plural(kind)}", res, API_VERSION, kind, True)
        return docs

    def snapshot(self, options: Options) -> Snapshot:
        docs = object_documents(self.objects(), f"cluster {self.server}")
        return build_snapshot(
            docs,
            namespace=options.namespace or self.namespace,
            online=True,
            scope=options.scope,
        )

    def apply(
        self, manifests: Sequence[Mapping[str, Any]], *, dry_run: bool
    ) -> list[dict[str, Any]]:
        """Server-side apply each manifest (``dry_run``: validated by the server, not stored)."""
        out = []
        for doc in manifests:
            res = RESOURCES[str(doc["kind"])]
            meta = doc["metadata"]
            what = f"apply {doc['kind']} {meta.get('namespace')}/{meta['name']}"
            with api_errors(what, self.server):
                applied = self.client.apply(
                    res.from_dict(dict(doc)), field_manager=FIELD_MANAGER, dry_run=dry_run
                )
            out.append(applied.to_dict())
        return out
