"""The one Kubernetes client wrapper of the operator, the node agent and the CLI (lightkube).

* :mod:`~secgroups_kube.config` — the one kubeconfig rule (explicit path, ``$KUBECONFIG``,
  in-cluster service account, ``~/.kube/config``) and kopf's login fields;
* :mod:`~secgroups_kube.resources` — resource classes for our kinds, made from the one
  table of kinds (:mod:`secgroups.kinds`), and the core kinds we read;
* :mod:`~secgroups_kube.clients` — :class:`AsyncKube` and :class:`Kube`: list, watch,
  server-side apply, delete and status patches in kind names and dictionaries.

The pure core never imports this package (nor lightkube); the shells import it and not
each other (import-linter contracts in ``pyproject.toml``). Why lightkube and not the
official client: ``docs/architecture.md``, "Dependencies and why".
"""

from secgroups_kube.clients import ApiError, AsyncKube, Kube, TransportError, is_not_found
from secgroups_kube.config import Credentials, KubeConfigError, credentials, load_config

__all__ = [
    "ApiError",
    "AsyncKube",
    "Credentials",
    "Kube",
    "KubeConfigError",
    "TransportError",
    "credentials",
    "is_not_found",
    "load_config",
]
