"""The live-cluster side of ``sources``: read objects and apply clones.

The cluster is reached through :class:`secgroups_kube.Kube` and its one kubeconfig rule:
``--kubeconfig``, else the first existing file of ``$KUBECONFIG``, else the in-cluster
service account, else ``~/.kube/config``; the context is ``--context`` or the current
one, and its namespace is the default ``-n``. Every API or transport failure becomes a
:class:`CliError` with what was being done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from secgroups.kinds import plural
from secgroups.models import GROUP, RESOURCE_KINDS, VERSION
from secgroups_cli.errors import EXIT_BAD_INPUT, EXIT_CLUSTER, CliError
from secgroups_cli.sources import Options, Snapshot, build_snapshot, object_documents
from secgroups_kube import ApiError, Kube, KubeConfigError, TransportError

FIELD_MANAGER = "kubectl-secgroups"


# API statuses that say the request itself was wrong (the object exists, is invalid, …):
# bad input. Any other (unauthorized, forbidden, not installed, server errors) says the
# cluster could not be used.
_BAD_INPUT_STATUSES = frozenset({400, 409, 422})


@contextlib.contextmanager
def api_errors(what: str, server: str) -> Iterator[None]:
    """Turn API and transport errors into one-line CliErrors about ``what``."""
    try:
        yield
    except ApiError as exc:
        status = exc.status
        code = status.code if status is not None else None
        message = status.message if status is not None else str(exc)
        if code == 404 and what.startswith("list secgroups"):
            raise CliError(
                f"{what}: the {GROUP}/{VERSION} CRDs are not installed in this cluster ({message})",
                EXIT_CLUSTER,
            ) from None
        exit_code = EXIT_BAD_INPUT if code in _BAD_INPUT_STATUSES else EXIT_CLUSTER
        raise CliError(f"{what}: {message} (HTTP {code})", exit_code) from None
    except TransportError as exc:
        raise CliError(
            f"{what}: cannot reach the API server at {server}: {exc}", EXIT_CLUSTER
        ) from None


class Cluster:
    """A connected client plus the context's default namespace."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.server = kube.server

    @classmethod
    def connect(cls, options: Options) -> Cluster:
        try:
            kube = Kube.connect(
                options.kubeconfig, field_manager=FIELD_MANAGER, context=options.context
            )
        except KubeConfigError as exc:
            raise CliError(
                f"no usable kubeconfig ({exc}); pass --kubeconfig, or -f FILE to work offline",
                EXIT_CLUSTER,
            ) from None
        return cls(kube)

    @property
    def namespace(self) -> str:
        return self.kube.namespace

    def _list(self, what: str, kind: str) -> list[dict[str, Any]]:
        with api_errors(what, self.server):
            return self.kube.list(kind)

    def objects(self) -> list[dict[str, Any]]:
        """Namespaces, nodes, pods and our three kinds, in every namespace."""
        docs = self._list("list namespaces", "Namespace")
        # Nodes only name where pods run: a user without the right to list them still
        # gets every answer.
        with contextlib.suppress(CliError):
            docs += self._list("list nodes", "Node")
        docs += self._list("list pods", "Pod")
        for kind in RESOURCE_KINDS:
            docs += self._list(f"list secgroups {plural(kind)}", kind)
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
            meta = doc["metadata"]
            what = f"apply {doc['kind']} {meta.get('namespace')}/{meta['name']}"
            with api_errors(what, self.server):
                out.append(self.kube.apply(doc, dry_run=dry_run))
        return out
