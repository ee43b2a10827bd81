"""Reading manifest files: ``-f`` paths → documents that remember their file and line.

* A path may be a file, a folder (read recursively: ``*.yaml``, ``*.yml``, ``*.json``,
  hidden entries skipped, in sorted order) or ``-`` for stdin.
* A file holds one or more YAML documents (JSON is read as YAML); ``kind: List`` objects
  are unpacked into their items.
* Every document keeps its YAML node, so a validation error can name the line of the
  offending field: ``examples/bad.yaml:12: spec.priority: should be less than or equal
  to 100``.

Neighbours: ``sources`` validates the documents and builds the cluster facts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from secgroups_cli.errors import CliError

SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Document:
    """One Kubernetes object read from a file, with the YAML node it came from."""

    data: dict[str, Any]
    source: str
    node: yaml.Node | None
    line: int  # 1-based line where the object starts; 0 for objects read from a cluster

    def where(self, loc: Loc = ()) -> str:
        """``file:line`` of the field at ``loc`` (or of the object when not found)."""
        if self.node is not None:
            return f"{self.source}:{locate(self.node, loc)}"
        return f"{self.source}:{self.line}" if self.line else self.source


def locate(node: yaml.Node, loc: Loc) -> int:
    """1-based line of the deepest node of ``loc`` that exists under ``node``.

    A mapping key is located at its key (``priority: 200`` → that line), so an error about
    a whole sub-object (``spec``) points at the line that names it.
    """
    line = node.start_mark.line + 1
    current: yaml.Node = node
    for part in loc:
        if isinstance(current, yaml.MappingNode) and isinstance(part, str):
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    line = key.start_mark.line + 1
                    current = value
                    break
            else:
                return line
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(current.value):
                return line
            current = current.value[part]
            line = current.start_mark.line + 1
        else:
            return line
    return line


def loc_text(loc: Loc) -> str:
    """``('spec', 'ports')`` → ``spec.ports``; list indexes as ``[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def pydantic_message(err: Mapping[str, Any]) -> str:
    """A pydantic error message worded for a manifest author."""
    kind = err.get("type")
    msg = str(err.get("msg", ""))
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if msg.startswith("Input should"):
        msg = "should" + msg[len("Input should") :]
    return msg


def validation_errors(
    doc: Document,
    exc: ValidationError,
    rename: Mapping[str, Loc] | None = None,
    fields: Mapping[str, Loc] | None = None,
) -> list[str]:
    """One ``file:line: field: message`` per pydantic error.

    ``rename`` maps the model's top-level field names to document paths (for slim facts
    such as PodFacts); ``fields`` maps the message of a cross-field rule to the field it
    is about, when that field is present in the document.
    """
    out = []
    for err in exc.errors():
        loc: Loc = tuple(p for p in err["loc"] if isinstance(p, str | int))
        if rename and loc and isinstance(loc[0], str) and loc[0] in rename:
            loc = (*rename[loc[0]], *loc[1:])
        message = pydantic_message(err)
        better = (fields or {}).get(message)
        if better is not None and better[: len(loc)] == loc and _present(doc.data, better):
            loc = better
        field = loc_text(loc)
        out.append(
            f"{doc.where(loc)}: {field}: {message}" if field else f"{doc.where()}: {message}"
        )
    return out


def _present(data: Any, loc: Loc) -> bool:
    for part in loc:
        in_map = isinstance(data, dict) and isinstance(part, str) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_map or in_list):
            return False
        data = data[part]
    return True


# ----------------------------------------------------------------------------- reading


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Files to read, in order: folders walked recursively and sorted; ``-`` kept."""
    out: list[str] = []
    for raw in paths:
        if raw == STDIN:
            out.append(STDIN)
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix in SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise CliError(f"{raw}: no .yaml, .yml or .json files in this folder")
            out.extend(str(p) for p in found)
        elif path.is_file():
            out.append(str(path))
        else:
            raise CliError(f"{raw}: no such file or folder")
    return out


def _yaml_documents(text: str, source: str) -> Iterator[tuple[Any, yaml.Node]]:
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            yield loader.construct_document(node), node
    finally:
        loader.dispose()


def _syntax_error(source: str, exc: yaml.YAMLError) -> CliError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return CliError(f"{where}: not valid YAML: {detail}")


def read_text(text: str, source: str) -> list[Document]:
    """The objects in one file's text (``kind: List`` unpacked); CliError on bad syntax."""
    raw: list[tuple[Any, yaml.Node | None]] = []
    try:
        raw = list(_yaml_documents(text, source))
    except yaml.YAMLError as exc:
        if not source.endswith(".json"):
            raise _syntax_error(source, exc) from None
        try:  # JSON that PyYAML (YAML 1.1) does not read, e.g. with tab indentation
            raw = [(json.loads(text), None)]
        except json.JSONDecodeError as jexc:
            raise CliError(f"{source}:{jexc.lineno}: not valid JSON: {jexc.msg}") from None
    out: list[Document] = []
    for data, node in raw:
        if data is None:
            continue
        line = node.start_mark.line + 1 if node is not None else 1
        doc = Document({}, source, node, line)
        if not isinstance(data, dict):
            raise CliError(f"{doc.where()}: expected a Kubernetes object (a mapping)")
        if data.get("kind") == "List" and isinstance(data.get("items"), list):
            items_node = _child(node, "items")
            for i, item in enumerate(data["items"]):
                inode = items_node.value[i] if isinstance(items_node, yaml.SequenceNode) else None
                iline = inode.start_mark.line + 1 if inode is not None else line
                if not isinstance(item, dict):
                    raise CliError(f"{source}:{iline}: expected a Kubernetes object (a mapping)")
                out.append(Document(item, source, inode, iline))
            continue
        out.append(Document(data, source, node, line))
    return out


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v  # type: ignore[no-any-return]
    return None


def read_paths(paths: Sequence[str], stdin: TextIO | None = None) -> list[Document]:
    """Every object of every path, in order (see the module docstring)."""
    out: list[Document] = []
    for source in expand_paths(paths):
        if source == STDIN:
            text = (stdin or sys.stdin).read()
            name = "<stdin>"
        else:
            try:
                text = Path(source).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CliError(f"{source}: cannot read: {exc}") from None
            name = source
        out.extend(read_text(text, name))
    return out
