"""The operator's Kubernetes port: what the reflectors, the publisher, the leader election
and the event recorder need from an API server, in kind names and plain dictionaries.

* reads: one **page** of a list (``limit``/``continue``, so no list of 30,000 pods is
  ever held whole) and a **watch** from a resourceVersion with bookmarks
  (``allowWatchBookmarks``) — raw dictionaries, reduced to slim facts at once by the
  reader. These two are the shared :class:`secgroups_kube.reflector.ListWatchApi`, so
  the reflectors (``watching``) are the shared loop;
* writes: server-side apply under a field manager (the spec and the node labels of a
  compiled object have different managers, so each can change without the other),
  create-if-absent (default groups: never overwrite a user's edits), delete, status
  merge patches, replace-with-resourceVersion (leases), Events.

Errors the callers distinguish: :class:`GoneError` (410: the resourceVersion is too old,
relist), :class:`ConflictError` (409 on a replace), :class:`RequestError` (anything else the
API server refused, with its HTTP code; transport errors are raised as they come).

The real port is :class:`secgroups_operator.kube.KubeCluster` (on the shared
``secgroups_kube`` client); :class:`secgroups_operator.fake.FakeCluster` is an
in-memory API server for unit tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from secgroups_kube.reflector import ListWatchApi

FIELD_MANAGER = "secgroups-operator"
#: The manager of the ``node.secgroups.dev/<node>`` labels of compiled objects.
PLACEMENT_MANAGER = "secgroups-operator-placement"


class GoneError(Exception):
    """410 Gone: the watch's resourceVersion is too old; list again."""

    code = 410  # what secgroups_kube.reflector.status_code reads


class ConflictError(Exception):
    """409 Conflict: the object changed since it was read (or already exists)."""


class RequestError(Exception):
    """The API server refused a request (``code`` is the HTTP status)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Cluster(ListWatchApi, Protocol):
    """``list_page`` and ``watch_events`` (:class:`~secgroups_kube.reflector.ListWatchApi`:
    a too old resourceVersion or continue token raises :class:`GoneError`), and the
    writes below."""

    async def apply(
        self, body: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER
    ) -> dict[str, Any]:
        """Server-side apply (forced: we own what we write); returns the stored object."""
        ...

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create ``body``; None if an object of that name exists (it is left alone)."""
        ...

    async def get(
        self, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None: ...

    async def replace(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Update with ``metadata.resourceVersion`` as a precondition (:class:`ConflictError`)."""
        ...

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete; an object already gone is fine."""
        ...

    async def patch_status(
        self, kind: str, name: str, namespace: str | None, status: Mapping[str, Any]
    ) -> None:
        """Merge-patch the status subresource; a missing object is fine."""
        ...

    async def post_event(self, body: Mapping[str, Any]) -> None:
        """Create a core/v1 Event."""
        ...


def selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """The label selectors the operator and agent use: ``key`` (exists) or ``key=value``,
    comma-separated (for fakes; the API server evaluates the real ones)."""
    if not selector:
        return True
    for term in selector.split(","):
        key, eq, value = term.partition("=")
        if eq:
            if labels.get(key) != value:
                return False
        elif key not in labels:
            return False
    return True
