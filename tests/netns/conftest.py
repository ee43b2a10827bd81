"""Fixtures of the dataplane tier: a small lab network (see ``secgroups_lab.network``).

The lab is shared by the tests of a session; a test that adds pods deletes them again.
Skipping (not root, no ``ip netns``) is decided by each module with
``secgroups_lab.network.netns_unavailable()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.agent_harness import AgentProcess

from secgroups_lab.network import Lab, PodNet, cleanup_leftovers, run_in

# Every lab lives in its own netns (underlay included), so two sessions run side by side
# when one sets another prefix (KSG_NETNS_PREFIX=ksgatm).
PREFIX = os.environ.get("KSG_NETNS_PREFIX", "ksgnet")


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """2 nodes x 2 pods (``default/a1``, ``default/a2`` on node 1, ``default/b1``,
    ``default/b2`` on node 2) plus the outside host."""
    cleanup_leftovers(PREFIX)
    with Lab(PREFIX, nodes=2) as lab:
        lab.add_pods(
            [(1, "default", "a1"), (1, "default", "a2"), (2, "default", "b1"), (2, "default", "b2")]
        )
        yield lab


@pytest.fixture
def pods(lab: Lab) -> dict[str, PodNet]:
    """The fixture pods by name: ``a1``, ``a2`` (node 1), ``b1``, ``b2`` (node 2)."""
    return {p.name: p for p in lab.pods.values() if p.namespace == "default"}


@pytest.fixture
def fresh_conntrack(lab: Lab) -> None:
    """Node 1's conntrack table emptied: flows left by earlier tests would make first
    packets look like replies (modules that need it: ``usefixtures``)."""
    run_in(lab.node_netns(1), ["conntrack", "-F"], check=False)


@pytest.fixture
def agent(lab: Lab, tmp_path: Path) -> Iterator[AgentProcess]:
    """A real agent process on node 1 (``n1``), fed a policy file."""
    with AgentProcess(lab.node_netns(1), "n1", tmp_path) as a:
        yield a
