"""The kube-secgroups operator: watches, an incremental compile and per-object publishing.

Reflectors (``watching``) feed slim facts (``intake``) to the incremental compiler in a
worker thread (``reconciling``); ``publishing`` writes the compiled per-group, per-set
and per-node objects the node agents enforce, one object at a time; ``statuses`` and
``events`` report; ``leader`` keeps one replica writing. Docs: docs/architecture.md.
"""
