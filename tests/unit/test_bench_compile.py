"""bench/compile.py keeps working: its synthetic cluster is valid and, at a small scale,
every case runs and the incremental compiler ends equal to the full one (the script
asserts that). No timing is checked here: benchmarks report, tests do not time."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "compile.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_compile", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bench_runs_every_case_at_a_small_scale() -> None:
    bench = _bench()
    facts = bench.synthetic_cluster(
        namespaces=8, pods_per_ns=12, groups_per_ns=20, rules_per_group=3, nodes=4
    )
    assert len(facts.pods) == 96 and len(facts.rules) == 480
    results = bench.run(facts, 2)
    assert [r.case for r in results][:2] == ["full compile, first in process", "full compile"]
    assert all(r.samples for r in results)
    assert {r.case for r in results if r.goal == bench.INCREMENTAL_GOAL} == {
        "incremental: rule added",
        "incremental: rule deleted",
        "incremental: rule with a new remote",
        "incremental: rule priority changed",
    }
