"""``kubectl secgroups clone sg/SRC NEW``: copy a group and its rules to test changes (S-O-1).

The copy keeps the description and every rule (renamed ``<NEW>-<rule>``) but no
podSelector, so no pod joins it until one names it in its annotation; a rule whose
remote is the source group itself now names the clone. Both carry the annotation
``secgroups.dev/cloned-from``.

Online the objects are created with server-side apply (``--dry-run`` prints them
instead; ``--dry-run=server`` has the API server validate them without storing them).
Offline (``-f``) the YAML is printed, ready for ``kubectl apply -f -``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from secgroups.cloning import CloneError, clone_group, to_manifests
from secgroups.models import MSG_GROUP_NAME, SecurityGroup
from secgroups_cli.app import GROUP_WORDS, App, parse_ref
from secgroups_cli.errors import EXIT_OK, CliError
from secgroups_cli.render import Format, dump_all


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "clone",
        parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="copy a security group and its rules under a new name, with no members",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("source", metavar="sg/SRC", help="the group to copy (sg/NAME)")
    p.add_argument("new", metavar="NEW", help="name of the copy")
    p.add_argument(
        "--to-namespace", metavar="NS", help="namespace of the copy (default: the source's)"
    )
    p.add_argument(
        "--dry-run",
        nargs="?",
        const="client",
        default="none",
        choices=("none", "client", "server"),
        help="client (bare --dry-run): print, send nothing; server: validate on the server",
    )
    p.set_defaults(run=run)


def _check_name(name: str) -> None:
    try:
        SecurityGroup.model_validate({"metadata": {"name": name}})
    except ValidationError:
        raise CliError(f"invalid name {name!r}: {MSG_GROUP_NAME}") from None


def run(app: App, args: argparse.Namespace) -> int:
    snap = app.snapshot()
    src = parse_ref(args.source, GROUP_WORDS, "clone", snap.namespace)
    _check_name(args.new)
    target = (args.to_namespace or src[0], args.new)
    try:
        clone = clone_group(snap.facts, src, target)
    except CloneError as exc:
        raise CliError(str(exc)) from None
    manifests = to_manifests(clone.resources())
    if not snap.online or args.dry_run == "client":
        if app.fmt is Format.JSON:
            app.emit({"apiVersion": "v1", "kind": "List", "items": manifests})
        else:
            app.write(dump_all(manifests))
        return EXIT_OK
    from secgroups_cli.cluster import Cluster

    cluster = Cluster.connect(app.options)
    server_dry_run = args.dry_run == "server"
    applied = cluster.apply(manifests, dry_run=server_dry_run)
    if app.machine:
        app.emit({"apiVersion": "v1", "kind": "List", "items": applied})
        return EXIT_OK
    how = "validated (server dry run)" if server_dry_run else "created"
    app.write(
        f"securitygroup.secgroups.dev/{target[1]} {how} in {target[0]} "
        f"(clone of {src[0]}/{src[1]}, no members)\n"
    )
    for rule in clone.rules:
        app.write(f"securitygrouprule.secgroups.dev/{rule.metadata.name} {how}\n")
    return EXIT_OK
