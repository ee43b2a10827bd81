"""kube-secgroups node agent: keeps the node's ``inet secgroups`` table equal to its policy.

A thin shell over the pure core (``secgroups``): it watches the node's compiled
objects (:mod:`secgroups_agent.sources`), renders and applies one atomic nft
transaction per sync (:mod:`secgroups_agent.syncing`, :mod:`secgroups_agent.nftables`),
cleans conntrack (:mod:`secgroups_agent.conntrack`) and reports status
(:mod:`secgroups_agent.status`). Every I/O port is a Protocol with a real and a fake
implementation. Keep this file free of imports: the libnftables worker
(``python -m secgroups_agent.nftworker``) starts through it.
"""
