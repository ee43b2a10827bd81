"""The repository explains itself: no citation of material outside it, no dead doc links.

A maintainer who clones the repository has only the repository. Code comments,
docstrings, docs, manifests and scripts therefore cite the repository's own docs — the
spec in ``docs/spec.md`` (S- numbers), the kernel and nft facts in ``docs/nftables.md``,
the design in ``docs/architecture.md`` — never the project's working notes outside it (a
``../shared`` directory with a design brief, a spec file and measurement notes).

* Every tracked text file, except test data (``tests/data/``) and this file, is searched
  for citations of that outside material.
* Every relative link in ``README.md`` and ``docs/*.md`` must name a file or directory
  that exists, and its ``#anchor`` a heading of that Markdown file (GitHub's anchor
  rules); so must every ``docs/<name>.md#anchor`` cited in a tracked file.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()

# Citations of material outside the repository. The shared notes were dataplane.md,
# kind-offline.md, landscape.md, nft-observability.md, realnodes.md and testinfra.md; the
# measurements in dataplane.md were numbered M1-M10.
FORBIDDEN = {
    "../shared": re.compile(r"\.\./shared"),
    "DESIGN.md": re.compile(r"DESIGN\.md"),
    "SEMANTICS.md": re.compile(r"SEMANTICS\.md"),
    "notes/...": re.compile(r"\bnotes/[\w.-]+"),
    "dataplane.md": re.compile(r"\bdataplane\.md"),
    "STYLE.md": re.compile(r"STYLE\.md"),
    "recipes/...": re.compile(r"\brecipes/[\w.-]+\.sh"),
    "a shared note": re.compile(
        r"\b(?:testinfra|landscape|kind-offline|nft-observability|realnodes)\.md\b"
    ),
    "measurement M<n>": re.compile(r"(?<![\w/.-])M(?:10|[1-9])(?![\w-])"),
}
EXCLUDED_PREFIXES = ("tests/data/",)

LINK = re.compile(r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
CITED_DOC = re.compile(r"\bdocs/([\w-]+\.md)#([\w-]+)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def tracked_files() -> list[str]:
    """The repository's files as git knows them (a clean clone's content)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return sorted(p for p in out.decode().split("\0") if p)


def text_files() -> Iterator[tuple[str, str]]:
    for rel in tracked_files():
        if rel == THIS or rel.startswith(EXCLUDED_PREFIXES):
            continue
        path = REPO / rel
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        try:
            yield rel, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary


def outside_citations() -> list[str]:
    found = []
    for rel, text in text_files():
        for number, line in enumerate(text.splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    found.append(f"{rel}:{number}: cites {what}: {line.strip()[:120]}")
    return found


def test_nothing_cites_material_outside_the_repository() -> None:
    found = outside_citations()
    assert not found, (
        "cite docs/spec.md, docs/nftables.md or docs/architecture.md instead:\n" + "\n".join(found)
    )


def test_the_citation_patterns_catch_what_they_are_for() -> None:
    """Each pattern matches a citation of its kind and leaves ordinary text alone."""
    hits = {
        "../shared": "see ../shared/recipes/x.sh",
        "DESIGN.md": "(DESIGN.md §4)",
        "SEMANTICS.md": "refer to `SEMANTICS.md`",
        "notes/...": "notes/dataplane.md §3.3",
        "dataplane.md": "the flip of dataplane.md §3.3",
        "measurement M<n>": "drop ends the packet (M7)",
    }
    for what, text in hits.items():
        assert FORBIDDEN[what].search(text), what
    for text in ("docs/nftables.md#kernel-and-nft-facts-we-rely-on", "bench/dataplane.py", "M2M"):
        assert not any(p.search(text) for p in FORBIDDEN.values()), text


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    out.update(re.findall(r'<a (?:name|id)="([^"]+)"', path.read_text(encoding="utf-8")))
    return frozenset(out)


def markdown_links(path: Path) -> Iterator[tuple[int, str]]:
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        prose = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        for m in [*LINK.finditer(prose), *IMAGE.finditer(prose)]:
            yield number, m.group(1)


def broken(source: Path, target: str) -> str | None:
    """Why the link ``target`` written in ``source`` is dead, or None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return None
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / file_part).resolve() if file_part else source
    if not dest.exists():
        return f"{file_part}: no such file"
    if REPO not in dest.parents and dest != REPO:
        return f"{file_part}: outside the repository"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"#{anchor}: no such heading in {dest.relative_to(REPO)}"
    return None


def doc_files() -> list[Path]:
    """README.md and docs/*.md as tracked (a doc still being written is not checked)."""
    names = [p for p in tracked_files() if p == "README.md" or re.fullmatch(r"docs/[^/]+\.md", p)]
    return [REPO / p for p in names if (REPO / p).is_file()]


def test_relative_links_in_the_docs_resolve() -> None:
    dead = []
    for doc in doc_files():
        for number, target in markdown_links(doc):
            why = broken(doc, target)
            if why:
                dead.append(f"{doc.relative_to(REPO)}:{number}: ({target}) {why}")
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_doc_anchors_cited_anywhere_exist() -> None:
    dead = []
    for rel, text in text_files():
        for number, line in enumerate(text.splitlines(), 1):
            for name, anchor in CITED_DOC.findall(line):
                doc = REPO / "docs" / name
                if not doc.is_file():
                    dead.append(f"{rel}:{number}: docs/{name} does not exist")
                elif anchor not in anchors(doc):
                    dead.append(f"{rel}:{number}: docs/{name} has no heading #{anchor}")
    assert not dead, "\n".join(dead)


def test_slugs_follow_githubs_rules() -> None:
    assert slug("Existing connections: epochs") == "existing-connections-epochs"
    assert slug("`kubectl secgroups` — explain, trace") == "kubectl-secgroups--explain-trace"
    assert slug("S-CT-2: clearing table") == "s-ct-2-clearing-table"
    assert slug("Hooks and priorities") == "hooks-and-priorities"
