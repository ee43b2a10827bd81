"""Prometheus metrics of the agent, in a registry of their own (served by ``server``).

Names follow Prometheus conventions (``_seconds``, ``_total``); every metric is
prefixed ``secgroups_agent_``. The sync loop is the only writer.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Incremental syncs take ~1 ms, full resyncs of a big node up to ~1 s.
SYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The agent's collectors; :meth:`render` gives the text exposition format."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sync_duration = Histogram(
            "secgroups_agent_sync_duration_seconds",
            "Time from the start of a sync to its commit (compute + nft), by kind.",
            ["kind"],
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.change_latency = Histogram(
            "secgroups_agent_change_to_commit_seconds",
            "Time from the first input change a sync includes to its commit (agent side).",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.syncs = Counter(
            "secgroups_agent_syncs_total", "Syncs that committed, by kind.", ["kind"], registry=r
        )
        self.sync_errors = Counter(
            "secgroups_agent_sync_errors_total", "Syncs that failed, by reason.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            "secgroups_agent_last_successful_sync_timestamp_seconds",
            "Unix time of the last sync that committed.",
            registry=r,
        )
        self.rules = Gauge("secgroups_agent_rules", "nft rules in our table.", registry=r)
        self.pods = Gauge(
            "secgroups_agent_pods", "Managed pods programmed on this node.", registry=r
        )
        self.set_elements = Gauge(
            "secgroups_agent_set_elements", "Elements per nft set or map.", ["set"], registry=r
        )
        self.drift = Counter(
            "secgroups_agent_drift_detected_total",
            "Times our table was found changed by someone else (repaired by a full resync).",
            registry=r,
        )
        self.worker_restarts = Counter(
            "secgroups_agent_nft_worker_restarts_total",
            "Restarts of the libnftables worker process (after it died).",
            registry=r,
        )
        self.conntrack_deleted = Counter(
            "secgroups_agent_conntrack_entries_deleted_total",
            "Conntrack entries deleted for pods that went away.",
            registry=r,
        )
        self.conntrack_errors = Counter(
            "secgroups_agent_conntrack_errors_total",
            "Failed conntrack cleanups and sweeps.",
            registry=r,
        )
        self.conntrack_rechecked = Counter(
            "secgroups_agent_conntrack_flows_rechecked_total",
            "Inbound flows of re-checked pods swept after a commit, by verdict: kept "
            "(re-stamped with the pod's current epoch) or cut (tombstoned: the pod's "
            "replies are dropped).",
            ["verdict"],
            registry=r,
        )
        self.adoptions = Counter(
            "secgroups_agent_table_adoptions_total",
            "Starts that found the table sealed with the wanted content and kept it as is.",
            registry=r,
        )
        self.refused = Gauge(
            "secgroups_agent_refused_objects",
            "Groups and group lists refused (their pods isolated) because another object holds "
            'their nft name or they cannot be rendered (docs/nftables.md, "Names").',
            registry=r,
        )
        self.ready = Gauge(
            "secgroups_agent_ready", "1 once the initial sync has been applied.", registry=r
        )
        self._set_names: set[str] = set()

    def set_sizes(self, sizes: Mapping[str, int]) -> None:
        """Replace the per-set element gauges (sets that went away are removed)."""
        for gone in self._set_names - set(sizes):
            self.set_elements.remove(gone)
        for name, n in sizes.items():
            self.set_elements.labels(name).set(n)
        self._set_names = set(sizes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
