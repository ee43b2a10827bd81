#!/usr/bin/env python3
"""JSON schemas for kubeconform, made offline from an API server's OpenAPI v2 document.

kubeconform fetches its schemas from GitHub by default, which CI cannot reach. The API
server we test against publishes the same information: ``kubectl get --raw /openapi/v2``
holds every built-in kind of its version and every installed CRD. This script turns that
document into one self-contained schema file per kind, named the way kubeconform looks
them up with ``-schema-location 'DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json'``:

    deployment-apps-v1.json, pod-v1.json, clusterrole-rbac-v1.json,
    securitygroup-secgroups-v1alpha1.json, ...

Each file is the kind's definition with every definition it reaches copied under
``definitions`` (references stay ``#/definitions/...``, so recursive types such as a
CRD's ``JSONSchemaProps`` need no inlining). Three adjustments make the schemas judge
manifests as the API server does:

* ``format: int-or-string`` (ports, maxUnavailable) accepts a string or an integer;
* a ``Quantity`` (``cpu: 1``, ``memory: 64Mi``) accepts a string or a number;
* objects with ``properties`` and no ``additionalProperties`` get
  ``additionalProperties: false`` (strict: an unknown field is an error, as
  ``kubectl apply --validate=strict`` says), unless they preserve unknown fields.

Usage:
    kubectl get --raw /openapi/v2 | hack/openapi2jsonschema.py --out DIR
    hack/openapi2jsonschema.py --input openapi-v2.json --out DIR
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REF_PREFIX = "#/definitions/"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def refs(node: Any) -> Iterator[str]:
    """Names of the definitions ``node`` refers to (directly)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            yield ref[len(REF_PREFIX) :]
        for v in node.values():
            yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def closure(definitions: dict[str, Any], root: str) -> list[str]:
    """``root`` and every definition reachable from it, sorted."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in definitions:
            continue
        seen.add(name)
        todo.extend(refs(definitions[name]))
    return sorted(seen)


def adjust(node: Any) -> Any:
    """The three adjustments of the module docstring, on a copy."""
    if isinstance(node, list):
        return [adjust(v) for v in node]
    if not isinstance(node, dict):
        return node
    if node.get("format") == "int-or-string":
        out = {k: v for k, v in node.items() if k not in ("type", "format")}
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
        return out
    out = {k: adjust(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def kind_suffix(group: str, version: str) -> str:
    """kubeconform's ``KindSuffix``: ``-v1``, ``-apps-v1``, ``-rbac-v1``."""
    return f"-{group.split('.', maxsplit=1)[0].lower()}-{version}" if group else f"-{version}"


def schemas(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{file name: schema}`` for every kind in an OpenAPI v2 document."""
    definitions = {name: adjust(d) for name, d in document.get("definitions", {}).items()}
    if QUANTITY in definitions:
        quantity = {k: v for k, v in definitions[QUANTITY].items() if k not in ("type", "format")}
        quantity["oneOf"] = [{"type": "string"}, {"type": "number"}]
        definitions[QUANTITY] = quantity
    out: dict[str, dict[str, Any]] = {}
    for name, definition in sorted(definitions.items()):
        gvks = definition.get("x-kubernetes-group-version-kind") or []
        if len(gvks) != 1:  # WatchEvent, DeleteOptions...: not something one applies
            continue
        gvk = gvks[0]
        schema = copy.deepcopy(definition)
        schema["$schema"] = "http://json-schema.org/schema#"
        # The root too: a kind may reach itself (references resolve within the file).
        schema["definitions"] = {n: definitions[n] for n in closure(definitions, name)}
        file = f"{gvk['kind'].lower()}{kind_suffix(gvk.get('group', ''), gvk['version'])}.json"
        out[file] = schema
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, help="OpenAPI v2 JSON file (default: stdin)")
    p.add_argument("--out", type=Path, required=True, help="directory for the schema files")
    args = p.parse_args(argv)
    text = args.input.read_text() if args.input else sys.stdin.read()
    document = json.loads(text)
    if document.get("swagger") != "2.0":
        print("error: not an OpenAPI v2 document (want /openapi/v2)", file=sys.stderr)
        return 2
    files = schemas(document)
    args.out.mkdir(parents=True, exist_ok=True)
    for file, schema in files.items():
        (args.out / file).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    version = document.get("info", {}).get("version", "?")
    print(f"wrote {len(files)} schemas ({version}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
