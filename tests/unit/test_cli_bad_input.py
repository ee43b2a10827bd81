"""Input that is not a manifest never ends in a traceback: ``lint`` and ``trace`` print one
``error:`` line and exit 2 ("bad input"), distinct from 1 (denied / lint failed) — issue 11
found a 1 KB YAML nested 500 deep answering with a traceback and exit 1. Also the other
shapes of hostile or broken input: deep JSON, alias bombs, alias cycles, huge files,
binary junk, NUL characters; and the last-resort handling of a bug (exit 4, one line)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from clirun import SCENARIO, run

from secgroups_cli import main as cli_main
from secgroups_cli import manifests
from secgroups_cli.errors import EXIT_BAD_INPUT, EXIT_INTERNAL

_LEVELS = "abcdefghi"
LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in itertools.pairwise(_LEVELS)]
)


def _nested_flow(depth: int) -> str:
    return "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: " + "[" * depth + "]" * depth


def _nested_block(depth: int) -> str:
    return "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "x: 1\n"


def _alias_chain(depth: int) -> str:
    lines = ["a0: &a0 [x]", *(f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, depth))]
    return "\n".join(lines) + "\n"


def _text(name: str, text: str) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(data)
        return path

    return write


def _sparse(name: str, size: int) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / name
        with path.open("wb") as f:
            f.truncate(size)
        return path

    return write


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "flow-nested-500": (_text("deep.yaml", _nested_flow(500)), "nested deeper than 100 levels"),
    "flow-nested-5000": (_text("deeper.yaml", _nested_flow(5000)), "not valid YAML"),
    "block-nested-500": (_text("block.yaml", _nested_block(500)), "nested deeper than 100"),
    "json-nested-3000": (_text("deep.json", "[" * 3000 + "]" * 3000), "nested deeper than 100"),
    "billion-laughs": (_text("laughs.yaml", LAUGHS), "aliases expand this document to more"),
    "alias-chain-300": (_text("chain.yaml", _alias_chain(300)), "(aliases expanded)"),
    "alias-cycle": (_text("cycle.yaml", "a: &a [*a]\n"), "an alias refers to itself"),
    "binary-junk": (_bytes("junk.yaml", bytes(range(256)) * 16), "not UTF-8 text"),
    "nul-character": (_bytes("nul.yaml", b"kind: Pod\x00\n"), "U+0000 is not allowed"),
    "huge-file": (_sparse("huge.yaml", manifests.MAX_FILE_BYTES + 1), "larger than 32 MiB"),
    "not-a-mapping": (_text("list.yaml", "- 1\n- 2\n"), "expected a Kubernetes object"),
}


def _assert_one_error_line(code: int, err: str, needle: str) -> None:
    assert code == EXIT_BAD_INPUT, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert needle in err


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_reports_bad_input_on_one_line(case: str, tmp_path: Path) -> None:
    write, needle = CASES[case]
    r = run("lint", "-f", str(write(tmp_path)))
    _assert_one_error_line(r.code, r.err, needle)
    assert r.out == ""


@pytest.mark.parametrize("case", ["flow-nested-500", "billion-laughs", "binary-junk"])
def test_trace_reports_bad_input_on_one_line(case: str, tmp_path: Path) -> None:
    write, needle = CASES[case]
    r = run(
        "trace", "-f", str(write(tmp_path)), "--from", "192.0.2.1", "--to", "192.0.2.2",
        "--proto", "tcp", "--port", "80",
    )  # fmt: skip
    _assert_one_error_line(r.code, r.err, needle)


def test_bad_input_on_stdin(tmp_path: Path) -> None:
    r = run("lint", "-f", "-", stdin=_nested_flow(500))
    _assert_one_error_line(r.code, r.err, "<stdin>")


def test_a_good_file_next_to_a_bad_one_does_not_help(tmp_path: Path) -> None:
    bad = CASES["flow-nested-500"][0](tmp_path)
    r = run("lint", "-f", str(SCENARIO), "-f", str(bad))
    _assert_one_error_line(r.code, r.err, str(bad))


def test_shallow_aliases_are_fine(tmp_path: Path) -> None:
    """Anchors and aliases themselves are allowed: a spec shared by two groups."""
    path = tmp_path / "aliases.yaml"
    path.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: secgroups.dev/v1alpha1, kind: SecurityGroup,\n"
        "   metadata: {name: a, namespace: demo}, spec: &spec {podSelector: {}}}\n"
        "- {apiVersion: secgroups.dev/v1alpha1, kind: SecurityGroup,\n"
        "   metadata: {name: b, namespace: demo}, spec: *spec}\n",
        encoding="utf-8",
    )
    r = run("lint", "-f", str(path), "--fail-on", "never")
    assert r.code == 0, r.err


def test_a_bug_is_one_line_too_and_exits_4(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(cli_main.lint, "run", broken)
    monkeypatch.delenv("KSG_DEBUG", raising=False)
    r = run("lint", "-f", str(SCENARIO))
    assert r.code == EXIT_INTERNAL
    assert r.err.startswith("error: internal error (KeyError: 'boom'); this is a bug")
    assert r.err.count("\n") == 1
    monkeypatch.setenv("KSG_DEBUG", "1")
    assert "Traceback" in run("lint", "-f", str(SCENARIO)).err


def test_limits_are_far_above_real_manifests() -> None:
    """The limits cannot refuse a real object: the API server's own are lower."""
    assert manifests.MAX_FILE_BYTES > 3 * 1024 * 1024  # one request body
    assert manifests.MAX_DEPTH >= 64
