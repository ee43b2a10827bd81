"""``secgroups_operator.publishing``: what the publisher keeps of node objects' ``requires``."""

from __future__ import annotations

import json
import sys
from typing import Any

from secgroups.compiled import COMPILED_NODE_KIND, NODE_REPORT_KIND
from secgroups.models import API_VERSION
from secgroups_operator.fake import FakeCluster
from secgroups_operator.publishing import Publisher, Requires


def node_object(name: str, generation: int, rv: int, requires: dict[str, int]) -> dict[str, Any]:
    obj = {
        "apiVersion": API_VERSION,
        "kind": COMPILED_NODE_KIND,
        "metadata": {"name": name, "generation": generation, "resourceVersion": str(rv)},
        "spec": {"node": name, "requires": requires},
    }
    return dict(json.loads(json.dumps(obj)))  # decoded as from the watch: new strings


def report(name: str, applied: int, rv: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": NODE_REPORT_KIND,
        "metadata": {"name": name, "resourceVersion": str(rv)},
        "status": {"appliedGeneration": applied},
    }


def test_requires_seen_in_the_watch_are_kept_with_shared_names() -> None:
    pub = Publisher(FakeCluster())
    wanted = {"group/sg.a.web": 3, "set/sg.a.db": 7}
    for n in ("n1", "n2"):
        pub.observe(node_object(n, 2, 10, wanted))
    one = pub.stored[(COMPILED_NODE_KIND, "n1")].requires
    two = pub.stored[(COMPILED_NODE_KIND, "n2")].requires
    assert dict(one.items()) == wanted
    assert all(a is b for a, b in zip(one.names, two.names, strict=True))  # one string each
    assert one.names[0] is sys.intern("group/sg.a.web")
    assert pub.requires_of("n1", wanted, ()) == wanted  # carried until the agent applies


def test_requires_are_dropped_once_the_agent_applied_the_node_object() -> None:
    pub = Publisher(FakeCluster())
    wanted = {"group/sg.a.web": 3}
    pub.observe(node_object("n1", 2, 10, wanted))
    pub.observe_report(report("n1", 1, 11))  # an older generation: still needed
    assert dict(pub.stored[(COMPILED_NODE_KIND, "n1")].requires.items()) == wanted
    pub.observe_report(report("n1", 2, 12))
    assert len(pub.stored[(COMPILED_NODE_KIND, "n1")].requires) == 0
    assert pub.requires_of("n1", wanted, ()) == {}
    pub.observe(node_object("n1", 2, 13, wanted))  # seen again, already applied: not kept
    assert pub.stored[(COMPILED_NODE_KIND, "n1")].requires == Requires()
