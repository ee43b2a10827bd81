"""``kubectl secgroups lint``: best-practice warnings (S-O-2), limits (S-L-1..3), broken refs.

The checks live in ``secgroups.linting``; this shell filters them by namespace, prints
them (with ``file:line`` when read from files) and sets the exit status for CI: 1 when
any finding is at or above ``--fail-on`` (default ``error``), else 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from secgroups.linting import Finding, Severity, lint_view
from secgroups_cli.app import App
from secgroups_cli.errors import EXIT_NEGATIVE, EXIT_OK
from secgroups_cli.render import table
from secgroups_cli.sources import Snapshot

FAIL_ON = ("warning", "error", "never")
SHORT_KINDS = {"SecurityGroup": "sg", "SecurityGroupRule": "sgr", "IPAddressGroup": "ipag"}


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lint",
        parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="risky, shadowed, unused or broken rules and groups; quota usage (exit 1 for CI)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        default="error",
        help="exit 1 when a finding has at least this severity (default: error)",
    )
    p.set_defaults(run=run)


def failing(findings: tuple[Finding, ...], fail_on: str) -> bool:
    if fail_on == "never":
        return False
    threshold = Severity(fail_on).rank
    return any(f.severity.rank >= threshold for f in findings)


def finding_dict(snap: Snapshot, f: Finding) -> dict[str, Any]:
    out: dict[str, Any] = {
        "severity": f.severity.value,
        "code": f.code.value,
        "requirement": f.requirement,
        "kind": f.kind,
        "namespace": f.namespace,
        "name": f.name,
        "message": f.message,
    }
    origin = snap.origin(f.kind, f.namespace, f.name)
    if origin:
        out["source"] = origin
    return out


def run(app: App, args: argparse.Namespace) -> int:
    snap = app.snapshot()
    namespace = args.namespace  # lint looks at every namespace unless -n is given
    findings = tuple(
        sorted(
            (f for f in lint_view(snap.view) if namespace is None or f.namespace == namespace),
            key=lambda f: (-f.severity.rank, f.namespace, f.kind, f.name, f.code),
        )
    )
    errors = sum(f.severity is Severity.ERROR for f in findings)
    warnings = len(findings) - errors
    failed = failing(findings, args.fail_on)
    if app.machine:
        app.emit(
            {
                "findings": [finding_dict(snap, f) for f in findings],
                "summary": {"errors": errors, "warnings": warnings},
                "failOn": args.fail_on,
                "failed": failed,
            }
        )
    else:
        style = app.style
        with_source = any(snap.origin(f.kind, f.namespace, f.name) for f in findings)
        headers = ["SEVERITY", "CODE", "NAMESPACE", "OBJECT", "MESSAGE"]
        if with_source:
            headers.insert(4, "SOURCE")
        rows = []
        for f in findings:
            obj = f"{SHORT_KINDS.get(f.kind, f.kind.lower())}/{f.name}"
            row = [style.severity(f.severity.value), f.code.value, f.namespace, obj, f.message]
            if with_source:
                row.insert(4, snap.origin(f.kind, f.namespace, f.name) or "-")
            rows.append(row)
        app.write(table(headers, rows, style))
        verdict = f"{errors} error(s), {warnings} warning(s)"
        if not findings:
            verdict = "no findings"
        suffix = f" (--fail-on {args.fail_on}: {'failed' if failed else 'passed'})"
        app.write(("\n" if findings else "") + verdict + suffix + "\n")
    return EXIT_NEGATIVE if failed else EXIT_OK
