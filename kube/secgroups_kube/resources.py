"""The lightkube resource classes of every kind we read or write, made once.

Our six kinds (three user kinds, namespaced; three compiled kinds, cluster-scoped) come
from the one table of kinds, :data:`secgroups.kinds.KINDS`: adding a kind there gives it
a resource class here, with the same plural and scope as its CRD. The core kinds the
operator and the CLI read (``Namespace``, ``Node``, ``Pod``) are lightkube's typed models.

Neighbours: :mod:`secgroups_kube.clients` looks classes up by kind name (the shells speak
in kind names and dictionaries, never in lightkube classes).
"""

from __future__ import annotations

from typing import Any

from lightkube.generic_resource import (
    GenericGlobalResource,
    GenericNamespacedResource,
    create_global_resource,
    create_namespaced_resource,
)
from lightkube.resources.core_v1 import Namespace, Node, Pod

from secgroups.kinds import KINDS
from secgroups.models import API_VERSION, GROUP, VERSION

#: Our namespaced kinds (``SecurityGroup``, ``SecurityGroupRule``, ``IPAddressGroup``).
NAMESPACED: dict[str, type[GenericNamespacedResource]] = {
    k.kind: create_namespaced_resource(GROUP, VERSION, k.kind, k.plural)
    for k in KINDS.values()
    if k.namespaced
}
#: Our cluster-scoped kinds (the compiled objects).
GLOBAL: dict[str, type[GenericGlobalResource]] = {
    k.kind: create_global_resource(GROUP, VERSION, k.kind, k.plural)
    for k in KINDS.values()
    if not k.namespaced
}
#: The core kinds we read, with their apiVersion.
CORE: dict[str, tuple[type[Namespace] | type[Node] | type[Pod], str]] = {
    "Namespace": (Namespace, "v1"),
    "Node": (Node, "v1"),
    "Pod": (Pod, "v1"),
}

NamespacedResource = type[GenericNamespacedResource] | type[Pod]
GlobalResource = type[GenericGlobalResource] | type[Namespace] | type[Node]


def namespaced(kind: str) -> bool:
    """Whether objects of ``kind`` live in a namespace (KeyError for a kind we do not use)."""
    if kind not in CORE and kind not in KINDS:
        raise KeyError(kind)
    return kind == "Pod" or kind in NAMESPACED


def namespaced_resource(kind: str) -> NamespacedResource:
    """The resource class of a namespaced ``kind``."""
    return Pod if kind == "Pod" else NAMESPACED[kind]


def global_resource(kind: str) -> GlobalResource:
    """The resource class of a cluster-scoped ``kind``."""
    if kind == "Namespace":
        return Namespace
    return Node if kind == "Node" else GLOBAL[kind]


def api_version(kind: str) -> str:
    """``v1`` for the core kinds, ``secgroups.dev/v1alpha1`` for ours."""
    if kind == "Lease":
        return "coordination.k8s.io/v1"
    if kind in ("Event", "Secret"):
        return "v1"
    if kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        return "admissionregistration.k8s.io/v1"
    return CORE[kind][1] if kind in CORE else API_VERSION


def to_dict(obj: Any, kind: str) -> dict[str, Any]:
    """A stored object as a plain dictionary, with ``apiVersion`` and ``kind`` set.

    List items can come without them; everything downstream dispatches on them.
    """
    data: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    data.setdefault("apiVersion", api_version(kind))
    data.setdefault("kind", kind)
    return data


#: Kinds we only reach through raw requests (``AsyncKube.list_page`` and friends):
#: (API group path, plural, namespaced).
_RAW_CORE = {
    "Namespace": ("api/v1", "namespaces", False),
    "Node": ("api/v1", "nodes", False),
    "Pod": ("api/v1", "pods", True),
    "Event": ("api/v1", "events", True),
    "Lease": ("apis/coordination.k8s.io/v1", "leases", True),
    # The operator's admission webhook: its certificate's Secret, its configuration.
    "Secret": ("api/v1", "secrets", True),
    "ValidatingWebhookConfiguration": (
        "apis/admissionregistration.k8s.io/v1",
        "validatingwebhookconfigurations",
        False,
    ),
    # The readiness gate's webhook (secgroups_operator.mutating).
    "MutatingWebhookConfiguration": (
        "apis/admissionregistration.k8s.io/v1",
        "mutatingwebhookconfigurations",
        False,
    ),
}


def api_path(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    """The REST path of ``kind`` (every namespace when ``namespace`` is None), or of one
    object: ``/api/v1/pods``, ``/apis/secgroups.dev/v1alpha1/namespaces/ns/securitygroups/x``."""
    if kind in _RAW_CORE:
        base, plural, is_namespaced = _RAW_CORE[kind]
    else:
        k = KINDS[kind]
        base, plural, is_namespaced = f"apis/{GROUP}/{VERSION}", k.plural, k.namespaced
    path = f"/{base}"
    if is_namespaced and namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    return path
