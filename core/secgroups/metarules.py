"""The API server's rules for object metadata, restated: names, labels, annotations, finalizers.

Every object the API server creates passes apimachinery's ``ValidateObjectMetaAccessor``
first (custom resources with ``NameIsDNSSubdomain``), whatever its CRD says. These
functions answer the same question offline, with the API server's own wording, so that
``kubectl secgroups lint -f`` rejects what ``kubectl apply`` rejects (docs/semantics.md,
decision 12). Each returns the list of problems, empty when the value is valid, as
apimachinery's ``validation.Is…`` functions do.

Lengths are counted in bytes, as Go's ``len`` does; every pattern is ASCII-only, so a
value that matches has as many bytes as characters.

Neighbours: ``models`` (``ObjectMeta`` and the kinds call these), ``decoding`` (the rest
of what the API server does to a manifest before validating it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_NAME_MAX = 63
LABEL_VALUE_MAX = 63
ANNOTATIONS_MAX_BYTES = 256 * 1024

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
_LABEL_KEY_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"

# fullmatch, never match + '$': Python's '$' also matches before a trailing newline.
_LABEL_RE = re.compile(_LABEL)
_SUBDOMAIN_RE = re.compile(_SUBDOMAIN)
_LABEL_KEY_NAME_RE = re.compile(_LABEL_KEY_NAME)

MSG_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character"
)
MSG_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character"
)
MSG_LABEL_KEY_NAME = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character"
)
MSG_QUALIFIED_NAME = (
    "a valid label key must consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character, with an optional DNS subdomain prefix and "
    "'/' (e.g. 'example.com/MyName')"
)
MSG_LABEL_VALUE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character"
)


def _too_long(limit: int) -> str:
    return f"must be no more than {limit} characters"


def dns1123_label(value: str) -> list[str]:
    """Problems of ``value`` as a DNS-1123 label (namespaces, security group names)."""
    out = []
    if len(value.encode()) > DNS1123_LABEL_MAX:
        out.append(_too_long(DNS1123_LABEL_MAX))
    if not _LABEL_RE.fullmatch(value):
        out.append(MSG_LABEL)
    return out


def dns1123_subdomain(value: str) -> list[str]:
    """Problems of ``value`` as a DNS-1123 subdomain (the name of every custom resource)."""
    out = []
    if len(value.encode()) > DNS1123_SUBDOMAIN_MAX:
        out.append(_too_long(DNS1123_SUBDOMAIN_MAX))
    if not _SUBDOMAIN_RE.fullmatch(value):
        out.append(MSG_SUBDOMAIN)
    return out


def label_key(value: str) -> list[str]:
    """Problems of ``value`` as a label key (a "qualified name": ``[prefix/]name``)."""
    parts = value.split("/")
    if len(parts) > 2:
        return [MSG_QUALIFIED_NAME]
    out: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            out.append("prefix part must be non-empty")
        else:
            out.extend(f"prefix part {m}" for m in dns1123_subdomain(prefix))
    if not name:
        out.append("name part must be non-empty")
    elif len(name.encode()) > LABEL_NAME_MAX:
        out.append(f"name part {_too_long(LABEL_NAME_MAX)}")
    if not _LABEL_KEY_NAME_RE.fullmatch(name):
        out.append(MSG_LABEL_KEY_NAME)
    return out


def label_value(value: str) -> list[str]:
    """Problems of ``value`` as a label value (may be empty)."""
    out = []
    if len(value.encode()) > LABEL_VALUE_MAX:
        out.append(_too_long(LABEL_VALUE_MAX))
    if value and not _LABEL_KEY_NAME_RE.fullmatch(value):
        out.append(MSG_LABEL_VALUE)
    return out


def check_labels(values: Mapping[str, str]) -> list[str]:
    """Problems of a ``metadata.labels`` map, each naming the key or value at fault."""
    out: list[str] = []
    for key, value in values.items():
        out.extend(f"label key {key!r}: {m}" for m in label_key(key))
        out.extend(f"label value {value!r}: {m}" for m in label_value(value))
    return out


def check_annotations(values: Mapping[str, str]) -> list[str]:
    """Problems of a ``metadata.annotations`` map: keys are label keys in any case; the
    keys and values together hold at most 256 KiB."""
    out: list[str] = []
    for key in values:
        out.extend(f"annotation key {key!r}: {m}" for m in label_key(key.lower()))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
    if size > ANNOTATIONS_MAX_BYTES:
        out.append(f"annotations: Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes")
    return out


# Finalizers the garbage collector owns; an object may not ask for both.
ORPHAN_FINALIZER = "orphan"
FOREGROUND_FINALIZER = "foregroundDeletion"


def check_finalizers(values: Sequence[str]) -> list[str]:
    """Problems of a ``metadata.finalizers`` list: each a label key (a qualified name)."""
    out = [f"finalizer {v!r}: {m}" for v in values for m in label_key(v)]
    if ORPHAN_FINALIZER in values and FOREGROUND_FINALIZER in values:
        out.append(f"finalizer {ORPHAN_FINALIZER} and {FOREGROUND_FINALIZER} cannot be both set")
    return out
