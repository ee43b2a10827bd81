"""Reading manifest files: ``-f`` paths → documents that remember their file and line.

* A path may be a file, a folder (read recursively: ``*.yaml``, ``*.yml``, ``*.json``,
  hidden entries skipped, in sorted order) or ``-`` for stdin.
* A file holds one or more YAML documents (JSON is read as YAML); ``kind: List`` objects
  are unpacked into their items.
* Every document keeps its YAML node, so a validation error can name the line of the
  offending field: ``examples/bad.yaml:12: spec.priority: should be less than or equal
  to 100``.
* Input that is not a manifest is refused before anything walks it, with one line:
  files over :data:`MAX_FILE_BYTES`, text that is not UTF-8, nesting deeper than
  :data:`MAX_DEPTH`, and documents that aliases (``&a``/``*a``) expand to more than
  :data:`MAX_VALUES` values or into a cycle (a "billion laughs" file is 1 KB).

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
from secgroups_cli.kubeyaml import GoResolution, KubectlRefuses, kubectl_rules

SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"
# Limits of what is read (docs/cli.md, "Offline input"). A real manifest is far below
# each: the API server takes at most 3 MiB per object, our schemas are 8 levels deep
# (Kubernetes objects read back with managedFields, about 20).
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_DEPTH = 100
MAX_VALUES = 2_000_000

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


@kubectl_rules
class _Loader(GoResolution, yaml.SafeLoader):
    """SafeLoader that resolves values as kubectl does (``kubeyaml``) and refuses nesting
    deeper than MAX_DEPTH while composing.

    PyYAML's composer recurses once per level, so 500 nested ``[`` would end in a
    RecursionError (a traceback) before any later check could run.
    """

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise CliError(
                    f"{self.source}:{mark.line + 1}: nested deeper than {MAX_DEPTH} levels: "
                    "not a Kubernetes manifest"
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases expand into a cycle, deeper than MAX_DEPTH or to
    more than MAX_VALUES values; each distinct node is looked at once (no expansion)."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) once expanded
    path: set[int] = set()  # nodes being expanded: the ancestors of the current one
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    where = f"{source}:{root.start_mark.line + 1}"
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            path.discard(key)
            kids = [done[id(k)] for k in _children(node)]
            values = 1 + sum(v for v, _ in kids)
            depth = 1 + max((d for _, d in kids), default=0)
            if values > MAX_VALUES:
                raise CliError(
                    f"{where}: aliases expand this document to more than {MAX_VALUES:,} "
                    "values: not a Kubernetes manifest"
                )
            if depth > MAX_DEPTH:
                raise CliError(
                    f"{where}: nested deeper than {MAX_DEPTH} levels (aliases expanded): "
                    "not a Kubernetes manifest"
                )
            done[key] = (values, depth)
            continue
        if key in done:
            continue
        path.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) in path:
                line = kid.start_mark.line + 1
                raise CliError(f"{source}:{line}: an alias refers to itself: a cycle")
            if id(kid) not in done:
                stack.append((kid, False))


def check_nesting(root: yaml.Node, source: str) -> None:
    """Refuse a document (without aliases) nested deeper than MAX_DEPTH: the cheap walk
    for the common case, :func:`check_expansion` when aliases may be present."""
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CliError(
                f"{source}:{node.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels: "
                "not a Kubernetes manifest"
            )
        kids = _children(node)
        stack.extend((k, depth + 1) for k in kids if not isinstance(k, yaml.ScalarNode))


def check_depth(data: Any, source: str) -> None:
    """Refuse data (read as JSON) nested deeper than MAX_DEPTH."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CliError(f"{source}: nested deeper than {MAX_DEPTH} levels: not a manifest")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


# libyaml when PyYAML has it: 8x faster (10,000 rules: 3 s instead of 25 s), and its
# parser refuses nesting past 1,000 levels itself; values resolved as kubectl does too.
_CLoader: type[Any] | None = None
if hasattr(yaml, "CSafeLoader"):

    @kubectl_rules
    class _CKubeLoader(GoResolution, yaml.CSafeLoader):
        """libyaml's parser, values as kubectl reads them."""

    _CLoader = _CKubeLoader


def _loader(text: str, source: str) -> Any:
    return _CLoader(text) if _CLoader is not None else _Loader(text, source)


def _yaml_documents(text: str, source: str) -> Iterator[tuple[Any, yaml.Node]]:
    loader = _loader(text, source)
    # Without an '&' there is no anchor, so no alias: nesting is all there is to check.
    check = check_expansion if "&" in text else check_nesting
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            check(node, source)
            yield loader.construct_document(node), node
    finally:
        loader.dispose()


def _char(c: int | str | bytes) -> str:
    code = c if isinstance(c, int) else ord(c) if len(c) == 1 else None
    return f"U+{code:04X}" if code is not None else repr(c)


def _syntax_error(source: str, exc: yaml.YAMLError) -> CliError:
    if isinstance(exc, yaml.reader.ReaderError):  # str() of it spans two lines
        return CliError(
            f"{source}: not valid YAML: character {_char(exc.character)} is not allowed "
            f"(position {exc.position})"
        )
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    if isinstance(exc, KubectlRefuses):
        return CliError(f"{where}: kubectl cannot convert this YAML to JSON: {exc.problem}")
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return CliError(f"{where}: not valid YAML: {detail}")


def read_text(text: str, source: str) -> list[Document]:
    """The objects in one file's text (``kind: List`` unpacked); CliError on bad syntax."""
    raw: list[tuple[Any, yaml.Node | None]] = []
    try:
        raw = list(_yaml_documents(text, source))
    except KubectlRefuses as exc:
        raise _syntax_error(source, exc) from None
    except yaml.YAMLError as exc:
        if not source.endswith(".json"):
            raise _syntax_error(source, exc) from None
        try:  # JSON that PyYAML (YAML 1.1) does not read, e.g. with tab indentation
            raw = [(json.loads(text), None)]
        except json.JSONDecodeError as jexc:
            raise CliError(f"{source}:{jexc.lineno}: not valid JSON: {jexc.msg}") from None
        except RecursionError:
            raise CliError(
                f"{source}: nested deeper than {MAX_DEPTH} levels: not a manifest"
            ) from None
        check_depth(raw[0][0], source)
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
            text = (stdin or sys.stdin).read(MAX_FILE_BYTES + 1)
            name = "<stdin>"
            if len(text) > MAX_FILE_BYTES:
                raise CliError(f"{name}: larger than {_mib(MAX_FILE_BYTES)}: not a manifest file")
        else:
            text = _read_file(Path(source))
            name = source
        out.extend(read_text(text, name))
    return out


def _mib(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB"


def _read_file(path: Path) -> str:
    """The text of one file: at most MAX_FILE_BYTES, UTF-8 (a BOM is skipped)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise CliError(
            f"{path}: larger than {_mib(MAX_FILE_BYTES)}: not a manifest file (split it)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CliError(
            f"{path}: not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r}): "
            "not a manifest file"
        ) from None
