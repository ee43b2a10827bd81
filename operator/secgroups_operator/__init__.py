"""The kube-secgroups operator: a thin kopf shell around the pure core.

It watches Namespaces, Nodes, Pods and the three secgroups.dev kinds, keeps slim
facts (``store``), and one reconcile loop (``reconciling``) compiles them and publishes
the compiled per-group, per-set and per-node objects the node agents enforce.
"""
