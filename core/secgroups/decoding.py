"""What the API server does to a manifest before it validates it, done offline.

``kubectl apply`` sends a manifest as JSON; before any OpenAPI or CEL rule runs, the API
server's decoder for custom resources (apiextensions-apiserver, v1.36) has already:

1. **rejected unknown fields** — anywhere in the object, metadata and status included
   (``kubectl`` asks for strict field validation by default);
2. **pruned nulls**: a ``null`` on a field with no ``nullable: true`` (none of ours is
   nullable) is dropped when the schema has no default for it, and replaced by the
   default when it has one — ``action: null`` becomes ``Allow``, ``ports: null`` is
   absent, ``matchLabels: {a: null}`` is ``{}``;
3. **decoded metadata** into Go's ObjectMeta: a ``null`` label or annotation value, or
   finalizer, is the empty string; then checked it as for every object (``metarules``: the name a
   DNS-1123 subdomain, the namespace a DNS-1123 label, labels, annotations, finalizers);
4. **dropped the status** (the kinds have a status subresource: a create ignores it, so
   its contents are never validated — only its field names, by step 1).

:func:`parse_manifest` does the same, with the CRD schemas ``crdgen`` generates (the
very schemas the API server holds), then parses the result with the models. Both steps
were checked against a real kube-apiserver (``tests/cluster/test_differential.py``).
Nothing here guesses: each rule above is the behaviour measured there.

Neighbours: ``models`` (the kinds and ``parse_resource``, for objects as the API server
stores them), ``metarules`` (names, labels, annotations), ``crdgen`` (the schemas).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from secgroups import crdgen, metarules, models

# The fields of metav1.ObjectMeta, by JSON name: any other key under metadata is unknown.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
_ENVELOPE = ("apiVersion", "kind", "metadata")

Loc = tuple[str | int, ...]


@functools.cache
def schema_of(kind: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` the API server holds for ``kind`` (one of ours)."""
    return crdgen.resource_schema(models.RESOURCE_KINDS[kind])


def unknown_fields(value: Any, schema: Mapping[str, Any], loc: Loc = ()) -> list[Loc]:
    """Paths of the fields of ``value`` that ``schema`` does not declare (strict decoding).

    Walks as the API server's pruning does: into objects by ``properties`` (or every key
    of an ``additionalProperties`` map) and into arrays by ``items``; a value of the
    wrong type is not walked (validation reports it later).
    """
    out: list[Loc] = []
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if props is not None and key in props:
                out.extend(unknown_fields(sub, props[key], (*loc, key)))
            elif isinstance(extra, Mapping):
                out.extend(unknown_fields(sub, extra, (*loc, key)))
            elif props is not None:
                out.append((*loc, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            out.extend(unknown_fields(item, schema["items"], (*loc, i)))
    return out


def prune_nulls(value: Any, schema: Mapping[str, Any]) -> Any:
    """``value`` with every ``null`` field dropped, or set to its schema default if any.

    The API server's PruneNonNullableNullsWithoutDefaults followed by its defaulting of
    non-nullable nulls; a ``null`` array item is kept (validation rejects it).
    """
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for key, sub in value.items():
            sub_schema = props.get(key, extra if isinstance(extra, Mapping) else None)
            if sub_schema is None:
                out[key] = sub  # unknown: reported by unknown_fields
            elif sub is None:
                if "default" in sub_schema:
                    out[key] = copy.deepcopy(sub_schema["default"])
            else:
                out[key] = prune_nulls(sub, sub_schema)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune_nulls(item, schema["items"]) for item in value]
    return value


def _metadata(meta: Any) -> tuple[Any, list[Loc]]:
    """ObjectMeta as Go decodes it: unknown keys, null fields absent, null strings ''."""
    if not isinstance(meta, dict):
        return meta, []
    unknown: list[Loc] = [("metadata", k) for k in meta if k not in OBJECT_META_FIELDS]
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if value is None:
            continue
        if key in ("labels", "annotations") and isinstance(value, dict):
            out[key] = {k: "" if v is None else v for k, v in value.items()}
        elif key == "finalizers" and isinstance(value, list):
            out[key] = ["" if v is None else v for v in value]
        else:
            out[key] = value
    return out, unknown


def decode(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` (one of our kinds) as the API server validates it; ValidationError if it
    has unknown fields. See the module docstring for the steps."""
    kind = doc.get("kind")
    if kind not in models.RESOURCE_KINDS:
        return dict(doc)  # parse_resource says what is wrong
    schema = schema_of(str(kind))
    body_schema = {**schema, "properties": _body_props(schema)}
    body = {k: v for k, v in doc.items() if k not in _ENVELOPE}
    meta, unknown = _metadata(doc.get("metadata"))
    unknown += unknown_fields(body, body_schema)
    if unknown:
        # Strict decoding fails before any validation runs, as on the API server.
        raise ValidationError.from_exception_data(
            str(kind),
            [
                InitErrorDetails(type="extra_forbidden", loc=loc, input=_at(doc, loc))
                for loc in unknown
            ],
        )
    out = prune_nulls(body, body_schema)
    out.pop("status", None)
    envelope = {k: doc[k] for k in _ENVELOPE if k in doc and doc[k] is not None}
    if "metadata" in envelope:
        envelope["metadata"] = meta
    return {**envelope, **out}


def metadata_errors(meta: Any) -> list[tuple[Loc, str]]:
    """What the API server's ObjectMeta validation says about ``meta`` (decoded), by field.

    Type errors (a name that is not a string, …) are left to the models.
    """
    if not isinstance(meta, dict):
        return []
    out: list[tuple[Loc, str]] = []
    checks: list[tuple[str, Callable[[Any], list[str]], type]] = [
        ("name", metarules.dns1123_subdomain, str),
        ("namespace", metarules.dns1123_label, str),
        ("labels", metarules.check_labels, dict),
        ("annotations", metarules.check_annotations, dict),
        ("finalizers", metarules.check_finalizers, list),
    ]
    for key, check, typ in checks:
        value = meta.get(key)
        if isinstance(value, typ) and _all_strings(value):
            out.extend((("metadata", key), problem) for problem in check(value))
    return out


def _all_strings(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    return True


def _body_props(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema["properties"].items() if k not in _ENVELOPE}


def _at(doc: Any, loc: Loc) -> Any:
    for part in loc:
        doc = doc[part]
    return doc


def parse_manifest(doc: Mapping[str, Any]) -> models.Resource:
    """One manifest as ``kubectl apply`` would have it: :func:`decode`, the metadata
    checks (``metarules``), then the models.

    Accepts exactly what the API server accepts (tested against a real one); raises
    ValueError (pydantic's ValidationError for anything about the fields, every problem
    at once) otherwise.
    """
    decoded = decode(doc)
    errors = [
        InitErrorDetails(
            type=PydanticCustomError("value_error", "Value error, {error}", {"error": msg}),
            loc=loc,
            input=_at(decoded, loc),
        )
        for loc, msg in metadata_errors(decoded.get("metadata"))
    ]
    try:
        resource = models.parse_resource(decoded)
    except ValidationError as exc:
        if not errors:
            raise
        for err in exc.errors():
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError(err["type"], "{msg}", {"msg": err["msg"]}),
                    loc=err["loc"],
                    input=err["input"],
                )
            )
    if errors:
        raise ValidationError.from_exception_data(str(doc.get("kind")), errors)
    return resource
