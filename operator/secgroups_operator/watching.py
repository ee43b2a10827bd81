"""The operator's reflectors: the shared list-then-watch loop over its ``Cluster`` port.

One :class:`Reflector` per kind the operator reads (``main.Operator``): the shared
:class:`secgroups_kube.reflector.Reflector` — paged lists, watches resumed from the last
resourceVersion with bookmarks, 410 relists as a mark-and-sweep through the sink,
jittered backoff (0.2 s doubling to 30 s) — reading through
:class:`secgroups_operator.ports.Cluster` (the shared client in production, the
in-memory ``FakeCluster`` in unit tests). The sinks (:class:`Sink`) are the reconciler's
(``reconciling``): the intake reduces each input object to slim facts at once, the
compiled sink tracks what is published; both run on the event loop and must be quick.
"""

from __future__ import annotations

from secgroups_kube.reflector import Reflector, Sink

__all__ = ["Reflector", "Sink"]
