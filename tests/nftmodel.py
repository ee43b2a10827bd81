"""An in-memory model of our nft table that applies the agent's transactions (unit tests).

Understands exactly the commands ``secgroups.nft.transactions`` writes: ``add table``,
``flush table|chain|set|map``, ``delete element|chain|set|map`` and ``table … { … }``
blocks in the renderer's layout (parsed with ``secgroups.nft.reading``), with nft's
semantics as far as these tests need them: a transaction applies completely or not at
all; a block declares missing objects (an existing one must have the same
declaration), adds elements and appends rules; ``flush table`` empties chains only;
deleting a missing element, chain or set fails. :meth:`text` is the table in
``Ruleset.text()`` layout, for comparison with the renderer after ``reading.canonical``.
It also produces the terse JSON listing and per-set listings the drift checker reads.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from secgroups.nft.reading import TextChain, TextCtTimeout, TextSet, parse_table


class ModelError(ValueError):
    """The transaction would fail in nft (nothing was applied)."""


def _element_key(text: str, is_map: bool) -> str:
    return text.split(" : ", 1)[0] if is_map else text


@dataclass
class _Set:
    decl: TextSet
    elements: dict[str, str] = field(default_factory=dict)  # key text -> element text


@dataclass
class NftModel:
    family: str = "inet"
    name: str = "secgroups"
    exists: bool = False
    timeouts: dict[str, TextCtTimeout] = field(default_factory=dict)
    sets: dict[str, _Set] = field(default_factory=dict)
    chains: dict[str, TextChain] = field(default_factory=dict)
    applied: int = 0

    @property
    def table(self) -> str:
        return f"{self.family} {self.name}"

    # ------------------------------------------------------------------ apply
    def apply(self, text: str) -> None:
        """Apply one transaction atomically (raises ModelError, leaving the model as it was)."""
        work = copy.deepcopy(self)
        lines = text.split("\n")
        i = 0
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                i += 1
                continue
            if line == f"table {self.table} {{":
                end = lines.index("}", i)
                work._block("\n".join(lines[i : end + 1]))
                i = end + 1
                continue
            work._command(line)
            i += 1
        work.applied += 1
        self.__dict__.update(work.__dict__)

    def _need_table(self) -> None:
        if not self.exists:
            raise ModelError(f"no table {self.table}")

    def _command(self, line: str) -> None:
        t = re.escape(self.table)
        if line == f"add table {self.table}":
            self.exists = True
            return
        if line == f"flush table {self.table}":
            self._need_table()
            for name, chain in self.chains.items():
                self.chains[name] = TextChain(
                    name, (), chain.hook, chain.priority, chain.policy, chain.type, chain.spec
                )
            return
        m = re.fullmatch(rf"flush (chain|set|map) {t} (\w+)", line)
        if m:
            kind, name = m.groups()
            if kind == "chain":
                chain = self._chain(name)
                self.chains[name] = TextChain(
                    name, (), chain.hook, chain.priority, chain.policy, chain.type, chain.spec
                )
            else:
                self._set(name).elements.clear()
            return
        m = re.fullmatch(rf"delete element {t} (\w+) \{{ (.*) \}}", line)
        if m:
            name, body = m.groups()
            s = self._set(name)
            for key in body.split(", "):
                if key not in s.elements:
                    raise ModelError(f"delete element {name} {{ {key} }}: no such element")
                del s.elements[key]
            return
        m = re.fullmatch(rf"delete (chain|set|map) {t} (\w+)", line)
        if m:
            kind, name = m.groups()
            if kind == "chain":
                self._chain(name)
                pattern = re.compile(rf"\b(goto|jump) {name}\b")
                if any(
                    pattern.search(el) for s in self.sets.values() for el in s.elements.values()
                ):
                    raise ModelError(f"delete chain {name}: still referenced by a map (EBUSY)")
                del self.chains[name]
            else:
                self._set(name)
                del self.sets[name]
            return
        raise ModelError(f"model does not understand {line!r}")

    def _chain(self, name: str) -> TextChain:
        self._need_table()
        if name not in self.chains:
            raise ModelError(f"no chain {name}")
        return self.chains[name]

    def _set(self, name: str) -> _Set:
        self._need_table()
        if name not in self.sets:
            raise ModelError(f"no set or map {name}")
        return self.sets[name]

    def _block(self, text: str) -> None:
        self.exists = True
        parsed = parse_table(text)
        for name, t in parsed.ct_timeouts.items():
            self.timeouts.setdefault(name, t)
        for name, s in parsed.sets.items():
            decl = TextSet(name, s.key, s.value, s.interval, ())
            have = self.sets.get(name)
            if have is None:
                have = self.sets[name] = _Set(decl)
            elif have.decl != decl:
                raise ModelError(f"{s.kind} {name} exists with another declaration")
            for el in s.elements:
                have.elements[_element_key(el, s.value is not None)] = el
        for name, c in parsed.chains.items():
            have_c = self.chains.get(name)
            if have_c is None:
                self.chains[name] = c
            else:
                if (have_c.hook, have_c.priority) != (c.hook, c.priority):
                    raise ModelError(f"chain {name} exists with another declaration")
                self.chains[name] = TextChain(
                    name,
                    have_c.rules + c.rules,
                    have_c.hook,
                    have_c.priority,
                    have_c.policy,
                    have_c.type,
                    have_c.spec,
                )

    # ------------------------------------------------------------------ views
    def text(self) -> str:
        """The table in the renderer's layout (compare after ``reading.canonical``)."""
        out = [f"table {self.table} {{"]
        blocks: list[list[str]] = []
        for t in self.timeouts.values():
            policy = ", ".join(f"{k}: {v}" for k, v in t.policy)
            blocks.append(
                [
                    f"\tct timeout {t.name} {{",
                    f"\t\tprotocol {t.protocol}",
                    f"\t\tl3proto {t.l3proto}",
                    f"\t\tpolicy = {{ {policy} }}",
                    "\t}",
                ]
            )
        for s in self.sets.values():
            d = s.decl
            typ = " . ".join(d.key) + (f" : {d.value}" if d.value is not None else "")
            lines = [f"\t{d.kind} {d.name} {{", f"\t\ttype {typ}"]
            if d.interval:
                lines.append("\t\tflags interval")
            if s.elements:
                els = list(s.elements.values())
                lines.append("\t\telements = {")
                lines += [f"\t\t\t{e}," for e in els[:-1]] + [f"\t\t\t{els[-1]}"]
                lines.append("\t\t}")
            lines.append("\t}")
            blocks.append(lines)
        for c in self.chains.values():
            lines = [f"\tchain {c.name} {{"]
            if c.spec is not None:
                lines.append(f"\t\t{c.spec}")
            lines += [f"\t\t{r}" for r in c.rules]
            lines.append("\t}")
            blocks.append(lines)
        for i, b in enumerate(blocks):
            if i:
                out.append("")
            out += b
        out.append("}")
        return "\n".join(out) + "\n"

    def listing(self, target: str, terse: bool) -> dict[str, Any] | None:
        """What ``nft -j [-t] list <target>`` would show (shapes the drift checker reads)."""
        if not self.exists:
            return (
                {"nftables": [{"metainfo": {"json_schema_version": 1}}]}
                if target == "ruleset"
                else None
            )
        head = [{"metainfo": {"json_schema_version": 1}}]
        base = {"family": self.family, "table": self.name}
        if target in (f"table {self.table}", "ruleset"):
            items: list[dict[str, Any]] = [{"table": {"family": self.family, "name": self.name}}]
            for t in self.timeouts.values():
                items.append({"ct timeout": {**base, "name": t.name, "protocol": t.protocol}})
            for s in self.sets.values():
                items.append({s.decl.kind: self._set_json(s, with_elements=not terse)})
            for c in self.chains.values():
                obj: dict[str, Any] = {**base, "name": c.name}
                if c.hook is not None:
                    obj.update(type=c.type, hook=c.hook, prio=c.priority, policy=c.policy)
                items.append({"chain": obj})
            for c in self.chains.values():
                for r in c.rules:
                    items.append({"rule": {**base, "chain": c.name, "expr": [r]}})
            return {"nftables": head + items}
        m = re.fullmatch(rf"(set|map) {re.escape(self.table)} (\w+)", target)
        if m and m.group(2) in self.sets:
            s = self.sets[m.group(2)]
            return {"nftables": [*head, {s.decl.kind: self._set_json(s, with_elements=True)}]}
        return None

    def _set_json(self, s: _Set, *, with_elements: bool) -> dict[str, Any]:
        d = s.decl
        key: Any = list(d.key) if len(d.key) > 1 else d.key[0]
        obj: dict[str, Any] = {
            "family": self.family,
            "table": self.name,
            "name": d.name,
            "type": key,
        }
        if d.value is not None:
            obj["map"] = d.value
        if d.interval:
            obj["flags"] = ["interval"]
        if with_elements and s.elements:
            if d.value == "mark":  # as nft -j lists a mark map: [key, integer]
                obj["elem"] = [[k, int(e.split(" : ", 1)[1], 16)] for k, e in s.elements.items()]
            else:
                obj["elem"] = list(s.elements.values())
        return obj
