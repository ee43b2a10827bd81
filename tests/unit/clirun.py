"""Run ``kubectl secgroups`` in-process for the CLI tests; the scenario of tests/data/cli."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secgroups_cli.main import main

DATA = Path(__file__).resolve().parents[1] / "data" / "cli"
SCENARIO = DATA / "scenario"
INVALID = DATA / "invalid"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run(*argv: str, stdin: str | None = None) -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        list(argv),
        stdout=out,
        stderr=err,
        stdin=io.StringIO(stdin) if stdin is not None else None,
    )
    return Result(code, out.getvalue(), err.getvalue())


def offline(*argv: str) -> Result:
    """A command over the scenario files, default namespace demo."""
    return run(*argv, "-f", str(SCENARIO), "-n", "demo")
