"""Connectivity matrices: probe every (source, destination, case) at once and compare with
what was expected, printed side by side as the Kubernetes network-policy e2e tests do.

``expected(src, dst, case) -> bool`` is a plain callable (later: the core's evaluator). Rows
are sources, columns destinations; ``.`` allowed, ``X`` denied, ``-`` not probed (a host to
itself), and in the diff grid ``!`` where observed differs from expected. The rendering
starts with that legend (:data:`LEGEND`, once) and ends with one summary line::

    == tcp/80 IPv4: 1 mismatch ==
                  expected   observed   diff
                  1 2 3 4    1 2 3 4    1 2 3 4
    1 default/a   - . X .    - . . .    - . ! .
    2 default/b   . - X .    . - X .    . - . .
    3 other/c     . . - .    . . - .    . . - .
    columns: 1=default/a, 2=default/b, 3=other/c, 4=outside
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, Protocol

from secgroups_lab.probes import Endpoint, ProbeClient, ProbeResult, ProbeSpec, Proto

Family = Literal[4, 6]


class Target(Protocol):
    """Anything with addresses that can be probed (pods, the outside host, plain addresses)."""

    @property
    def label(self) -> str: ...
    @property
    def ipv4(self) -> str: ...
    @property
    def ipv6(self) -> str: ...


@dataclass(frozen=True)
class Address:
    """A destination that is just addresses, e.g. another address of the outside host."""

    label: str
    ipv4: str
    ipv6: str


@dataclass(frozen=True)
class Case:
    """One column group of the matrix: a protocol, a port (TCP/UDP only) and an IP family."""

    proto: Proto
    port: int = 0
    family: Family = 4

    @property
    def label(self) -> str:
        where = f"/{self.port}" if self.proto in ("tcp", "udp") else ""
        return f"{self.proto}{where} IPv{self.family}"

    def address(self, target: Target) -> str:
        return target.ipv4 if self.family == 4 else target.ipv6


def cases(
    protos: Sequence[Proto] = ("tcp", "udp", "icmp", "gre"),
    ports: Sequence[int] = (80,),
    families: Sequence[Family] = (4, 6),
) -> list[Case]:
    """Every protocol x family; TCP and UDP once per port, ICMP and GRE once."""
    out = []
    for family in families:
        for proto in protos:
            for port in ports if proto in ("tcp", "udp") else (0,):
                out.append(Case(proto, port, family))
    return out


Expected = Callable[[Endpoint, Target, Case], bool]


def allow_all(_src: Endpoint, _dst: Target, _case: Case) -> bool:
    return True


@dataclass(frozen=True)
class Mismatch:
    src: str
    dst: str
    case: Case
    expected: bool
    observed: ProbeResult

    def __str__(self) -> str:
        want = "allowed" if self.expected else "denied"
        got = "allowed" if self.observed.ok else f"denied ({self.observed.reason})"
        return f"{self.src} -> {self.dst} {self.case.label}: expected {want}, observed {got}"


Cell = tuple[int, int, int]  # (source index, destination index, case index)

LEGEND = (
    "Rows are sources, columns destinations (numbered, named under each grid); "
    "one grid per case.\n"
    ". allowed   X denied   - not probed (a host to itself)   "
    "! observed differs from expected"
)


@dataclass
class MatrixResult:
    sources: list[str]
    destinations: list[str]
    cases: list[Case]
    expected: dict[Cell, bool]
    observed: dict[Cell, ProbeResult]
    elapsed: float
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def probes(self) -> int:
        return len(self.observed)

    def render(self, *, only_mismatching: bool = False) -> str:
        """The legend, expected, observed and diff grids per case, then one summary line
        and the list of mismatches."""
        blocks = [LEGEND]
        for ci, case in enumerate(self.cases):
            bad = sum(
                1
                for cell, res in self.observed.items()
                if cell[2] == ci and res.ok != self.expected[cell]
            )
            if only_mismatching and not bad:
                continue
            blocks.append(self._grid(ci, case, bad))
        n = len(self.mismatches)
        tail = [
            f"{self.probes} probes in {self.elapsed:.2f} s; {n} mismatch{'es' if n != 1 else ''}"
        ]
        tail += [f"  {m}" for m in self.mismatches]
        return "\n\n".join([*blocks, "\n".join(tail)])

    def _grid(self, ci: int, case: Case, bad: int) -> str:
        cols = len(self.destinations)
        width = len(str(cols))
        row_labels = [f"{i + 1:>{width}} {s}" for i, s in enumerate(self.sources)]
        label_w = max([len(r) for r in row_labels] + [1])
        grid_w = max(cols * (width + 1) - 1, len("expected"))
        header = " ".join(f"{j + 1:>{width}}" for j in range(cols))

        def cell(si: int, di: int, kind: str) -> str:
            c = (si, di, ci)
            if c not in self.observed:
                return "-"
            exp = self.expected[c]
            obs = self.observed[c].ok
            if kind == "expected":
                return "." if exp else "X"
            if kind == "observed":
                return "." if obs else "X"
            return "." if exp == obs else "!"

        lines = [
            f"== {case.label}: {bad} mismatch{'es' if bad != 1 else ''} ==",
            " " * label_w
            + "   "
            + "   ".join(f"{t:<{grid_w}}" for t in ("expected", "observed", "diff")).rstrip(),
            " " * label_w + "   " + "   ".join(f"{header:<{grid_w}}" for _ in range(3)).rstrip(),
        ]
        for si, label in enumerate(row_labels):
            grids = []
            for kind in ("expected", "observed", "diff"):
                row = " ".join(f"{cell(si, di, kind):>{width}}" for di in range(cols))
                grids.append(f"{row:<{grid_w}}")
            lines.append(f"{label:<{label_w}}   " + "   ".join(grids).rstrip())
        legend = ", ".join(f"{j + 1}={d}" for j, d in enumerate(self.destinations))
        lines.append(f"columns: {legend}")
        return "\n".join(lines)

    def assert_matches(self) -> None:
        """Raise AssertionError with the grids of the mismatching cases, if any."""
        if self.mismatches:
            raise AssertionError(
                f"connectivity differs from expected:\n{self.render(only_mismatching=True)}"
            )


def run_matrix(
    sources: Sequence[Endpoint],
    cases: Sequence[Case],
    expected: Expected = allow_all,
    *,
    destinations: Sequence[Target] | None = None,
    timeout: float = 2.0,
    include_self: bool = False,
    bind_source: bool = False,
    allowed_timeout: float | None = None,
) -> MatrixResult:
    """Probe from every source to every destination (default: the sources) for every case,
    all at once: one batch per source daemon, run in parallel. A host is not probed from
    itself unless ``include_self`` (that traffic never leaves its netns).

    ``bind_source``: send each probe from the source's own address of the case's family
    (``src=``), so that a source may be another address of a host that owns several, e.g.
    an endpoint with the outside host's control socket and ``100.64.250.20``.

    ``allowed_timeout``: the timeout of the cells ``expected`` allows (``timeout`` is then
    only for the others), so that a matrix whose denied cells wait a short time does not
    fail an allowed cell that a loaded machine answers late."""
    dsts: Sequence[Target] = destinations if destinations is not None else sources
    cases = list(cases)
    plan: list[list[tuple[Cell, ProbeSpec]]] = []
    expect: dict[Cell, bool] = {}
    for si, src in enumerate(sources):
        batch = []
        for di, dst in enumerate(dsts):
            if not include_self and dst.label == src.label:
                continue
            for ci, case in enumerate(cases):
                cell = (si, di, ci)
                expect[cell] = bool(expected(src, dst, case))
                src_ip = case.address(src) if bind_source else None
                wait = allowed_timeout if allowed_timeout and expect[cell] else timeout
                spec = ProbeSpec(case.proto, case.address(dst), case.port, wait, src_ip)
                batch.append((cell, spec))
        plan.append(batch)

    def run_batch(si: int) -> list[ProbeResult]:
        return ProbeClient(sources[si]).probe_many([spec for _, spec in plan[si]])

    t0 = time.monotonic()
    observed: dict[Cell, ProbeResult] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(64, len(sources)))) as pool:
        for si, results in enumerate(pool.map(run_batch, range(len(sources)))):
            for (cell, _), res in zip(plan[si], results, strict=True):
                observed[cell] = res
    elapsed = time.monotonic() - t0
    result = MatrixResult(
        sources=[s.label for s in sources],
        destinations=[d.label for d in dsts],
        cases=cases,
        expected=expect,
        observed=observed,
        elapsed=elapsed,
    )
    for cell in sorted(observed):
        si, di, ci = cell
        if observed[cell].ok != expect[cell]:
            result.mismatches.append(
                Mismatch(
                    src=result.sources[si],
                    dst=result.destinations[di],
                    case=cases[ci],
                    expected=expect[cell],
                    observed=observed[cell],
                )
            )
    return result
