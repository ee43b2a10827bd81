"""kopf handlers: every watch event of the six kinds updates the facts store and marks
the reconciler dirty. They are ``on.event`` handlers — silent, storing nothing on the
objects (kopf's per-object progress annotations would be one write per pod at scale) —
and hold no policy logic.
"""

from __future__ import annotations

from typing import Any, cast

import kopf

from secgroups.kinds import plural
from secgroups.models import GROUP
from secgroups_operator.reconciling import Reconciler
from secgroups_operator.store import FactsStore

WATCHED: tuple[tuple[str, str, str], ...] = (
    # (kind, group/version selector for kopf, plural)
    ("Namespace", "v1", "namespaces"),
    ("Node", "v1", "nodes"),
    ("Pod", "v1", "pods"),
    *(
        (kind, GROUP, plural(kind))
        for kind in ("SecurityGroup", "SecurityGroupRule", "IPAddressGroup")
    ),
)


def register(registry: kopf.OperatorRegistry, store: FactsStore, reconciler: Reconciler) -> None:
    """Register one event handler per watched kind, plus login, on ``registry``."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    for kind, group, resource in WATCHED:
        _register_kind(registry, store, reconciler, kind, group, resource)


def _register_kind(
    registry: kopf.OperatorRegistry,
    store: FactsStore,
    reconciler: Reconciler,
    kind: str,
    group: str,
    plural: str,
) -> None:
    def on_event(event: dict[str, Any], **_: Any) -> None:
        obj = event.get("object") or {}
        if not (obj.get("metadata") or {}).get("name"):
            return
        changed = (
            store.delete(kind, obj) if event.get("type") == "DELETED" else store.upsert(kind, obj)
        )
        if changed:
            reconciler.mark_dirty()

    selector = (group, plural) if group != "v1" else (plural,)
    # kopf's WatchingFn protocol spells out every kwarg; ours takes the one it needs.
    kopf.on.event(*selector, registry=registry, id=f"facts-{plural}")(cast(Any, on_event))
