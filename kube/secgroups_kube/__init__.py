"""The one Kubernetes client wrapper of the operator, the node agent and the CLI (lightkube).

* :mod:`~secgroups_kube.config` — the one kubeconfig rule (explicit path, ``$KUBECONFIG``,
  in-cluster service account, ``~/.kube/config``) and kopf's login fields;
* :mod:`~secgroups_kube.resources` — resource classes for our kinds, made from the one
  table of kinds (:mod:`secgroups.kinds`), and the core kinds we read;
* :mod:`~secgroups_kube.clients` — :class:`AsyncKube` and :class:`Kube`: list, watch,
  server-side apply, delete and status patches in kind names and dictionaries;
* :mod:`~secgroups_kube.reflector` — the one list-then-watch loop (paged lists, resumed
  watches, 410 relists, jittered backoff) of the operator's and the agent's reflectors.

The names below are loaded on first use, so importing :mod:`secgroups_kube.reflector`
does not load lightkube (an agent reading a policy file never does). The pure core
never imports this package; the shells import it and not each other (import-linter
contracts in ``pyproject.toml``). Why lightkube and not the official client:
``docs/architecture.md``, "Dependencies and why".
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOME = {
    "ApiError": "clients",
    "AsyncKube": "clients",
    "Kube": "clients",
    "TransportError": "clients",
    "is_not_found": "clients",
    "Credentials": "config",
    "KubeConfigError": "config",
    "credentials": "config",
    "load_config": "config",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"secgroups_kube.{home}"), name)
    globals()[name] = value  # once: later lookups do not come here
    return value
