"""docs/cli.md stays true: every offline example (``$ kubectl secgroups … -f $S``, no pipe)
prints exactly what the page shows."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from clirun import SCENARIO, run

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    """(command line, expected output) of each runnable example."""
    out = []
    for block in BLOCK.findall(DOC.read_text(encoding="utf-8")):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if not line.startswith("$ kubectl secgroups ") or "|" in line or "$S" not in line:
                continue
            expected = []
            while i < len(lines) and not lines[i].startswith("$ "):
                expected.append(lines[i])
                i += 1
            out.append((line[2:], "\n".join(expected) + "\n"))
    return out


EXAMPLES = examples()


def test_the_page_has_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize(("command", "expected"), EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_example_output_is_current(
    command: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(DOC.parents[1])  # the page shows paths relative to the repository
    scenario = str(SCENARIO.relative_to(DOC.parents[1]))
    argv = [a.replace("$S", scenario) for a in shlex.split(command)[2:]]
    result = run(*argv)
    assert result.out.rstrip("\n") == expected.rstrip("\n"), result.err
