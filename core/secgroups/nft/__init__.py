"""nftables for kube-secgroups: typed objects, the renderer, transactions and a packet tracer.

Pure like the rest of the core (no subprocess, no netlink): the node agent runs
the text these modules produce. Modules:

* ``statements`` / ``elements`` / ``objects`` — typed rule parts, set elements and
  table objects (``Ruleset``), one serialiser each;
* ``names`` / ``epochs`` — object names and ``ct mark`` epoch stamps;
* ``rendering`` (+ ``basechains``, the static part) —
  ``render(policy, node, pod_interfaces, options) -> Ruleset``;
* ``transactions`` — ``full_transaction`` / ``diff_transaction`` (nft -f text);
* ``reading`` / ``tracing`` — parse our text back; run packets through it.

See ``docs/nftables.md`` for the layout.
"""
