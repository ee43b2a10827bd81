"""The agent's small ports and shells: nft errors and fallback, status writes, HTTP
endpoints, JSON logs and drift comparison (no kernel needed)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests import nftcases as nc
from tests.nftmodel import NftModel

from secgroups.compiled import NodeAgentStatus
from secgroups_agent import logs
from secgroups_agent.drift import DriftChecker, element_count, observe
from secgroups_agent.metrics import Metrics
from secgroups_agent.nftables import (
    FakeNft,
    NftError,
    NftTimeoutError,
    NftWorkerCrashedError,
    NftWorkerUnavailableError,
    WorkerWithCliFallback,
    first_error,
    make_backend,
)
from secgroups_agent.planning import Planner
from secgroups_agent.server import Health, Server, parse_addr
from secgroups_agent.sources import slice_policy
from secgroups_agent.status import FakeStatus, FileStatus, StatusReporter, read_status_file

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30.0))


# ----------------------------------------------------------------------------- nft
def test_first_error_keeps_nfts_first_error_line() -> None:
    err = (
        "/dev/stdin:3:1-40: Error: Could not process rule: No such file or directory\n"
        "add rule inet secgroups nochain accept\n^^^^^^^^^^^\n"
        "/dev/stdin:4:1-5: Error: syntax error\n"
    )
    assert first_error(err) == (
        "/dev/stdin:3:1-40: Error: Could not process rule: No such file or directory"
    )
    assert first_error("\n  weird output\n") == "weird output"
    assert first_error("") == "nft failed without a message"


class _Stub:
    def __init__(self, name: str, fail: list[NftError] | None = None) -> None:
        self.name = name
        self.calls: list[str] = []
        self.fail = fail or []

    def apply(self, text: str, *, timeout: float = 30.0) -> None:
        self.calls.append(text)
        if self.fail:
            raise self.fail.pop(0)

    def list_json(self, target: str, *, terse: bool = False, timeout: float = 30.0) -> None:
        return None

    def close(self) -> None:
        pass


@pytest.mark.parametrize("crash", [NftWorkerCrashedError("died"), NftTimeoutError("slow")])
def test_after_a_worker_crash_the_next_transaction_goes_through_the_cli(crash: NftError) -> None:
    worker, cli = _Stub("lib", [crash]), _Stub("cli")
    backend = WorkerWithCliFallback(worker, cli)  # type: ignore[arg-type]
    with pytest.raises(type(crash)):
        backend.apply("t1")
    backend.apply("t2 (full resync)")
    backend.apply("t3")
    assert worker.calls == ["t1", "t3"] and cli.calls == ["t2 (full resync)"]


def test_an_ordinary_nft_error_does_not_switch_backends() -> None:
    worker, cli = _Stub("lib", [NftError("Error: syntax")]), _Stub("cli")
    backend = WorkerWithCliFallback(worker, cli)  # type: ignore[arg-type]
    with pytest.raises(NftError):
        backend.apply("t1")
    backend.apply("t2")
    assert worker.calls == ["t1", "t2"] and cli.calls == []


def test_a_worker_that_cannot_start_means_the_cli_for_good() -> None:
    worker = _Stub("lib", [NftWorkerUnavailableError("Error: cannot load libnftables")])
    cli = _Stub("cli")
    backend = WorkerWithCliFallback(worker, cli)  # type: ignore[arg-type]
    backend.apply("t1")
    backend.apply("t2")
    assert worker.calls == ["t1"] and cli.calls == ["t1", "t2"] and backend.cli_only


def test_backend_factory() -> None:
    assert make_backend("cli").name == "cli"
    lib = make_backend("lib")
    assert lib.name == "lib"
    lib.close()  # never started: nothing to stop
    with pytest.raises(ValueError, match="unknown nft backend"):
        make_backend("json")


def test_fake_nft_records_and_fails_on_demand() -> None:
    nft = FakeNft(listing={"nftables": []})
    nft.fail_next.append(NftError("Error: nope"))
    with pytest.raises(NftError):
        nft.apply("a")
    nft.apply("b")
    assert nft.applied == ["b"] and nft.attempts == 2
    assert nft.list_json("table inet secgroups") == {"nftables": []}
    assert nft.list_json("set inet secgroups pods4") is None


# ----------------------------------------------------------------------------- status
def _status(gen: int, at: str = "2026-01-01T00:00:00.000Z", **kw: Any) -> NodeAgentStatus:
    return NodeAgentStatus(applied_generation=gen, applied_at=at, **kw)


def test_status_reporter_writes_changes_only_and_the_latest_value() -> None:
    async def body() -> None:
        writer = FakeStatus()
        rep = StatusReporter(writer, min_interval=0.0)
        task = asyncio.create_task(rep.run())
        try:
            rep.update(_status(1))
            for _ in range(100):
                await asyncio.sleep(0)
            assert [s.applied_generation for s in writer.written] == [1]
            rep.update(_status(1, at="2026-01-01T00:00:09.000Z"))  # only the time: no write
            rep.update(_status(2))
            rep.update(_status(3))  # coalesced: 3 replaces 2 before the write
            for _ in range(100):
                await asyncio.sleep(0)
            assert [s.applied_generation for s in writer.written][-1] == 3
            writer.fail_next.append(RuntimeError("api down"))
            rep.update(_status(4, error="x", reason="NftApplyFailed"))
            for _ in range(200):
                await asyncio.sleep(0)
            assert writer.written[-1].reason == "NftApplyFailed" and rep.errors == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(body())


def test_file_status_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "status.json"
    assert read_status_file(path) is None
    run(FileStatus(path).write(_status(5, pods=2, rules=10, set_elements=4)))
    got = read_status_file(path)
    assert got is not None and got.applied_generation == 5 and got.pods == 2
    assert json.loads(path.read_text())["appliedGeneration"] == 5
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]


# ----------------------------------------------------------------------------- server
def test_health_endpoints_and_metrics() -> None:
    health, metrics = Health(stale_after=30.0), Metrics()
    server = Server(health, metrics, "127.0.0.1:0")
    assert server.respond("/healthz")[0] == 200
    code, _, body = server.respond("/readyz")
    assert code == 503 and b"initial sync" in body
    health.ready = True
    assert server.respond("/readyz")[0] == 200
    assert server.respond("/nope")[0] == 404
    health.heartbeat -= 60
    code, _, body = server.respond("/healthz")
    assert code == 503 and b"silent" in body
    assert b"secgroups_agent_sync_errors_total" in server.respond("/metrics")[2]
    assert parse_addr("[::1]:9750") == ("::1", 9750) and parse_addr(":80") == ("0.0.0.0", 80)
    with pytest.raises(ValueError):
        parse_addr("localhost")


def test_http_server_answers_over_tcp() -> None:
    async def get(port: int, path: str) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    async def body() -> None:
        server = Server(Health(), Metrics(), "127.0.0.1:0")
        await server.start()
        try:
            assert (await get(server.port, "/healthz"))[0] == 200
            assert (await get(server.port, "/readyz"))[0] == 503
            code, text = await get(server.port, "/metrics")
            assert code == 200 and b"secgroups_agent_ready 0.0" in text
        finally:
            await server.stop()

    run(body())


# ----------------------------------------------------------------------------- logs
def test_json_logs_one_object_per_line() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        log = logs.setup("debug", stream)
        log.info("applied", extra=logs.fields(kind="full", ms=1.5))
        try:
            raise ValueError("bad")
        except ValueError:
            logs.get("sync").exception("failed")
        logging.getLogger("lightkube").warning("library line")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["msg"] == "applied" and lines[0]["level"] == "info"
    assert lines[0]["fields"] == {"kind": "full", "ms": 1.5}
    assert lines[0]["time"].endswith("Z") and "T" in lines[0]["time"]
    assert lines[1]["fields"]["error"] == "bad" and "Traceback" in lines[1]["fields"]["traceback"]
    assert lines[1]["fields"]["logger"] == "secgroups_agent.sync"
    assert lines[2]["fields"]["logger"] == "lightkube"


# ----------------------------------------------------------------------------- drift
def _committed() -> tuple[Planner, NftModel]:
    s = nc.web_and_db()
    planner, model = Planner(nc.NODE), NftModel()
    plan = planner.plan(slice_policy(s.policy, nc.NODE), s.pod_interfaces, full=True)
    assert plan.stage == ""  # no table yet: nothing to stage
    model.apply(plan.text)
    planner.commit(plan)
    return planner, model


def test_drift_checker_finds_nothing_on_an_intact_table_and_each_kind_of_tampering() -> None:
    planner, model = _committed()
    state = planner.applied
    assert state is not None
    nft = FakeNft(lister=model.listing)
    checker = DriftChecker(nft)
    assert checker.check(state) == []
    assert checker.check(state) == []  # the rule digests recorded by the first check hold
    first_chain = next(iter(model.chains))
    chain = model.chains[first_chain]
    model.chains[first_chain] = type(chain)(
        chain.name, (*chain.rules[:-1], "accept"), chain.hook, chain.priority, chain.policy,
        chain.type, chain.spec,
    )  # fmt: skip
    assert checker.check(state) == [f"rules of chain {first_chain} changed"]
    model.chains[first_chain] = chain
    model.apply("add table inet secgroups\ntable inet secgroups {\n\tchain extra {\n\t}\n}\n")
    assert checker.check(state) == ["unexpected chain extra"]
    model.apply("delete chain inet secgroups extra\n")
    model.apply("delete element inet secgroups in_epoch4 { 100.64.1.2 }\n")
    assert checker.check(state) == ["map in_epoch4 has 2 elements, want 3"]
    model.exists = False
    assert checker.check(state) == ["table inet secgroups is missing"]


def test_observe_reads_nfts_json_shapes() -> None:
    planner, model = _committed()
    doc = model.listing("table inet secgroups", terse=True)
    assert doc is not None
    seen = observe(doc, "inet", "secgroups")
    state = planner.applied
    assert state is not None
    assert seen.rules == {c.name: len(c.rules) for c in state.chains}
    one = model.listing("map inet secgroups in_disp4", terse=False)
    assert one is not None and element_count(one) == 3
