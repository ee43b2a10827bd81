"""kube-secgroups' pure core: models, compiler, evaluator, clearing planner, quotas, renderer.

Nothing in this package does I/O: no Kubernetes client, no kopf, no netlink,
no subprocess, no asyncio (enforced by import-linter contracts in pyproject.toml).
The operator, the node agent and the kubectl plugin are thin shells around it.
"""
