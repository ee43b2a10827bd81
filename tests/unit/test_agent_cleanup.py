"""The node cleanup of ``helm uninstall`` (secgroups_agent.cleanup) with fakes: it never
deletes the table while the node's agent still answers, reports ready only once the
table is gone, and deletes it again if it comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from secgroups_agent.cleanup import Cleanup, answers, cni_leftovers
from secgroups_agent.nftables import NftError
from secgroups_agent.server import Health


class Node:
    def __init__(self) -> None:
        self.agent = True
        self.table = True
        self.deletes = 0
        self.fail = False

    async def agent_running(self, addr: str) -> bool:
        assert addr == "127.0.0.1:9750"
        return self.agent

    def remove(self) -> bool:
        if self.fail:
            raise NftError("Operation not permitted")
        self.deletes += 1
        had, self.table = self.table, False
        return had


def cleanup(node: Node) -> Cleanup:
    return Cleanup("127.0.0.1:9750", Health(), node.agent_running, node.remove)


def test_waits_for_the_agent_then_deletes_the_table() -> None:
    node = Node()
    c = cleanup(node)
    asyncio.run(c.step())
    assert (c.health.ready, node.table, node.deletes) == (False, True, 0)
    assert "still answers at 127.0.0.1:9750" in c.health.not_ready_reason
    node.agent = False
    asyncio.run(c.step())
    assert (c.health.ready, node.table) == (True, False)


def test_a_table_that_comes_back_is_deleted_again() -> None:
    node = Node()
    node.agent = False
    c = cleanup(node)
    asyncio.run(c.step())
    node.agent, node.table = True, True  # a slow agent repaired it
    asyncio.run(c.step())
    assert not c.health.ready
    node.agent = False
    asyncio.run(c.step())
    assert (c.health.ready, node.table, node.deletes) == (True, False, 2)


def test_a_failed_delete_is_not_ready_and_says_why() -> None:
    node = Node()
    node.agent, node.fail = False, True
    c = cleanup(node)
    asyncio.run(c.step())
    assert not c.health.ready
    assert "Operation not permitted" in c.health.not_ready_reason


def test_answers_is_false_where_nothing_listens() -> None:
    async def probe() -> tuple[bool, bool]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        up = await answers(f"127.0.0.1:{port}")
        server.close()
        await server.wait_closed()
        return up, await answers(f"127.0.0.1:{port}")

    assert asyncio.run(probe()) == (True, False)


def test_the_cni_socket_and_bindings_go_once_the_agent_has(tmp_path: Path) -> None:
    run = tmp_path / "secgroups"
    (run / "cni-state").mkdir(parents=True)
    (run / "cni-state" / "sandbox.json").write_text("{}")
    (run / "cni.sock").write_text("")
    (run / "other").write_text("")  # not ours to delete
    node = Node()
    c = Cleanup(
        "127.0.0.1:9750",
        Health(),
        node.agent_running,
        node.remove,
        leftovers=cni_leftovers(run / "cni.sock", None),
    )
    asyncio.run(c.step())
    assert sorted(p.name for p in run.iterdir()) == ["cni-state", "cni.sock", "other"]
    node.agent = False
    asyncio.run(c.step())
    assert sorted(p.name for p in run.iterdir()) == ["other"]
    assert c.health.ready
    assert cni_leftovers(None, None) == []
