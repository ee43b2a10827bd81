"""``kubectl secgroups``: entry point, argument parsing and dispatch.

Every command reads either manifest files (``-f``, offline) or the cluster of the
kubeconfig (online), through ``sources``, and prints a table (``-o json|yaml`` for
machines). Common options may come before or after the command name.

Exit statuses (``errors``, docs/cli.md): 0 success; 1 a negative answer (``trace``:
denied, ``lint``: findings at or above ``--fail-on``); 2 bad input; 3 the cluster could
not be used; 4 a bug. Every failure is one line ``error: …`` on stderr — never a
traceback (``KSG_DEBUG=1`` adds one for a bug).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from secgroups.compiling import gc_paused
from secgroups.membership import Scope
from secgroups.models import ENFORCE_LABEL
from secgroups_cli import clone, explain, lint, matrix, trace
from secgroups_cli.app import App
from secgroups_cli.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
)
from secgroups_cli.render import Format, Style, use_color
from secgroups_cli.sources import Options

PROG = "kubectl secgroups"
COMMANDS = (explain, trace, matrix, lint, clone)
# Defaults of the common options; they are SUPPRESSed in the parsers so that a value
# given before the command is not overwritten by the command's own default.
COMMON_DEFAULTS: dict[str, Any] = {
    "filenames": [],
    "namespace": None,
    "kubeconfig": None,
    "context": None,
    "output": Format.TABLE.value,
    "no_color": False,
    "enforced_only": False,
    "enforce_label": f"{ENFORCE_LABEL}=true",
    "all_namespaces": False,
}


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("input (offline with -f, else the cluster of the kubeconfig)")
    g.add_argument(
        "-f",
        "--filename",
        dest="filenames",
        action="append",
        metavar="PATH",
        help="manifest file or folder (recursive), '-' for stdin; repeatable",
    )
    g.add_argument("-n", "--namespace", metavar="NS", help="namespace of the objects named")
    g.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file (online)")
    g.add_argument("--context", metavar="NAME", help="kubeconfig context (online)")
    g.add_argument(
        "--enforced-only",
        action="store_true",
        help="offline: namespaces without a Namespace object are not enforced (default: "
        "they are assumed enforced)",
    )
    g.add_argument(
        "--enforce-label",
        metavar="KEY=VALUE",
        help=f"label of enforced namespaces (default {ENFORCE_LABEL}=true, the Helm value)",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "-o", "--output", choices=[f.value for f in Format], help="table (default), json, yaml"
    )
    o.add_argument(
        "--no-color", action="store_true", help="no colour (also: NO_COLOR set, not a terminal)"
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Explain, trace, lint and clone pod security groups, online or offline.",
        epilog=(
            "Exit status: 0 ok; 1 trace denied / lint failed; 2 bad input; 3 cluster "
            "unusable; 4 a bug. See docs/cli.md."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub, [common])
    # -A only makes sense for matrix; it is declared there.
    return parser


def _scope(text: str) -> Scope:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise CliError(f"--enforce-label {text}: expected KEY=VALUE")
    return Scope(key=key, value=value)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    for name, value in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    run: Callable[[App, argparse.Namespace], int] = args.run
    try:
        options = Options(
            filenames=tuple(args.filenames),
            namespace=args.namespace,
            kubeconfig=args.kubeconfig,
            context=args.context,
            enforced_only=args.enforced_only,
            scope=_scope(args.enforce_label),
        )
        app = App(
            options=options,
            out=out,
            err=err,
            style=Style(use_color(out, args.no_color)),
            fmt=Format(args.output),
            stdin=stdin,
        )
        # No cyclic GC while a command runs: it keeps what it reads until it ends, so
        # collections only rescan a growing heap (10,000 rules linted: 5.2 s of CPU
        # with them, 2.7 s without, same 210 MB peak; bench/lint.py).
        with gc_paused():
            return run(app, args)
    except CliError as exc:
        err.write(f"error: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `kubectl secgroups matrix | head`
        return 0
    except RecursionError:  # input shaped to outrun the reader's own limits
        err.write("error: the input is nested too deeply to read\n")
        return EXIT_BAD_INPUT
    except MemoryError:
        err.write("error: out of memory: the input is too large\n")
        return EXIT_BAD_INPUT
    except Exception as exc:  # a bug: still one line, unless asked for more
        if os.environ.get("KSG_DEBUG"):
            traceback.print_exception(exc, file=err)
        err.write(
            f"error: internal error ({type(exc).__name__}: {_first_line(exc)}); this is a bug — "
            "KSG_DEBUG=1 shows the traceback\n"
        )
        return EXIT_INTERNAL


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


if __name__ == "__main__":
    sys.exit(main())
