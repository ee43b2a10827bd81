"""Hypothesis strategies for raw manifests of our three kinds, as a user might write them —
valid, nearly valid, and wrong in each of the ways the API server and the offline models
once disagreed on (issue 11).

A manifest is drawn as a valid base object, then up to three **mutations**, each chosen
from a targeted class so that every class is reached often, not only by luck:

=========================  ==========================================================
class                      what it does
=========================  ==========================================================
``valid``                  nothing (the base object)
``prefix-leading-zero``    a CIDR or address-group entry with a ``/024``-style length
``address-text``           a CIDR or entry from a pool of tricky address spellings
``integer-as-string``      ``"5"`` for an integer field
``integer-as-bool``        ``true``/``false`` for an integer field
``integer-as-float``       ``5.0`` (integral) or ``5.5`` for an integer field
``integer-bounds``         an integer at, inside or outside a field's bounds
``null-defaulted``         ``null`` on a field that has a default
``null-optional``          ``null`` on an optional field without a default
``null-required``          ``null`` on a required field
``null-in-map``            a ``null`` value in matchLabels, labels or annotations
``null-in-list``           a ``null`` item in a list
``name``                   ``metadata.name`` from a pool: labels, subdomains, upper
                           case, unicode, 63/64/253/254/300 characters
``labels-annotations``     odd label and annotation keys and values
``unknown-field``          an unknown key at the root, in spec, nested, metadata, status
``snake-case-field``       a field by its Python name (``security_group``)
``status``                 a status with any content
``wrong-type``             a list, an object, a number or a string in the wrong place
``text``                   a string field set to generated text
``ports-text``             ports from a pool of tricky spellings
``missing``                a required field removed
=========================  ==========================================================

Entry point: :func:`labelled_manifests` — ``(class labels, manifest)``.
Names of groups and address groups are DNS labels of a small pool; the namespace is
never set (the caller's request namespace applies).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

API_VERSION = "secgroups.dev/v1alpha1"

# Text without surrogates (JSON carries them, Go replaces them: not a real manifest).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)

GOOD_NAMES = ("web", "db-1", "a", "x" * 63, "web.v2", "a.b.c", "0ab", "sg-b")
NAMES = (
    *GOOD_NAMES,
    "x" * 64,
    "-web",
    "web-",
    "Web",
    "web_1",
    "web.",
    ".web",
    "web..v2",
    "büro",
    "web 1",
    "",
    ".".join(["a" * 63] * 3) + "." + "b" * 61,  # 253 characters
    ".".join(["a" * 63] * 3) + "." + "b" * 62,  # 254 characters
    "a" * 300,
    "web/1",
    "web\n",
)
LABEL_KEYS = (
    "app",
    "example.com/app",
    "App_Name.v1",
    "a" * 63,
    "a" * 64,
    "a b",
    "/app",
    "example.com/",
    "a/b/c",
    "Example.com/app",
    "-app",
    "app-",
    "ключ",
    "",
)
LABEL_VALUES = ("web", "", "Web_1.x", "a" * 63, "a" * 64, "a b", "-x", "x-", "ü")

ADDRESSES_V4 = (
    "192.0.2.1",
    "192.0.2.0/24",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "192.0.2.1/32",
    "192.0.2.7/24",
    "10.0.0.0/024",
    "10.0.0.0/08",
    "0.0.0.0/00",
    "192.0.2.0/33",
    "192.0.2.0/+24",
    "192.0.2.0/ 24",
    "192.0.2.0/",
    "192.0.2.0//24",
    "010.0.0.1",
    "192.0.2.256",
    "192.0.2",
    "192.0.2.1 ",
    " 192.0.2.1",
    "192.0.2.1-192.0.2.9",
    "192.0.2.9-192.0.2.1",
    "192.0.2.1-192.0.2.1",
    "192.0.2.1-2001:db8::1",
    "192.0.2.1-192.0.2.9-192.0.2.10",
    "192.0.2.0/24-192.0.3.0/24",
    "٣.٣.٣.٣",
    "host.example",
)
ADDRESSES_V6 = (
    "2001:db8::1",
    "2001:db8::/32",
    "::/0",
    "::",
    "::1/128",
    "2001:db8::/032",
    "::/00",
    "2001:db8::/129",
    "::ffff:192.0.2.1",
    "::ffff:192.0.2.0/120",
    "::192.0.2.1",
    "fe80::1%eth0",
    "fe80::/10%eth0",
    "2001:DB8::1",
    "2001:db8:0:0:0:0:0:1",
    "2001:db8::1::2",
    "12345::1",
    "2001:db8::1-2001:db8::9",
    "2001:db8::9-2001:db8::1",
    "2001:0db8::1",
    "1:2:3:4:5:6:7:8/64",
    "1:2:3:4:5:6:7::/64",
)
PORTS = (
    "22",
    "80-82",
    "22,25,27",
    "22-24,25",
    "ssh",
    "https,http",
    "1-65535",
    "65535",
    "0",
    "65536",
    "022",
    "00022",
    "1-0",
    "80-80",
    "22,",
    ",22",
    "22 ",
    "22, 25",
    "SSH",
    "ssh-2",
    "22-ssh",
    "٢٢",
    "",
    "22\n",
    "1-2-3",
    "99999",
    "a" * 31,
    ",".join(["1"] * 129),
)
INTEGER_AS_STRING = ("5", "05", " 5", "5.0", "five", "", "1e2")
WRONG_TYPES: tuple[Any, ...] = ([], ["x"], {}, {"a": 1}, 5, 1.5, True, "x")


# ----------------------------------------------------------------------------- bases


@st.composite
def _rule_base(draw: st.DrawFn) -> dict[str, Any]:
    v6 = draw(st.booleans())
    spec: dict[str, Any] = {
        "securityGroup": draw(st.sampled_from(("web", "db", "sg-b"))),
        "direction": draw(st.sampled_from(("Ingress", "Egress"))),
        "protocol": draw(st.sampled_from(("TCP", "UDP", "ICMP", "GRE", "All"))),
    }
    for key, values in (
        ("action", ("Allow", "Deny")),
        ("priority", (1, 50, 100)),
        ("ipFamily", ("IPv6",) if v6 else ("IPv4",)),
        ("description", ("", "office SSH")),
    ):
        if draw(st.booleans()):
            spec[key] = draw(st.sampled_from(values))
    if spec["protocol"] in ("TCP", "UDP") and draw(st.booleans()):
        spec["ports"] = draw(st.sampled_from(PORTS[:7]))
    if spec["protocol"] == "ICMP" and draw(st.booleans()):
        icmp: dict[str, Any] = {"type": draw(st.sampled_from((0, 8, 128, 255)))}
        if draw(st.booleans()):
            icmp["code"] = draw(st.sampled_from((0, 4, 255)))
        spec["icmp"] = icmp
    remote = draw(st.sampled_from(("none", "cidr", "group", "ipag")))
    if remote == "cidr":
        pool = ADDRESSES_V6[:5] if v6 else ADDRESSES_V4[:6]
        spec["remote"] = {"cidr": draw(st.sampled_from(pool))}
    elif remote == "group":
        ref: dict[str, Any] = {"name": draw(st.sampled_from(("web", "sg-a")))}
        if draw(st.booleans()):
            ref["namespace"] = "other"
        spec["remote"] = {"securityGroup": ref}
    elif remote == "ipag":
        spec["remote"] = {"ipAddressGroup": {"name": draw(st.sampled_from(("office", "a.b")))}}
    return _object("SecurityGroupRule", draw(st.sampled_from(GOOD_NAMES)), spec)


@st.composite
def _group_base(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        spec["sequence"] = draw(st.sampled_from((1, 100, 10000)))
    if draw(st.booleans()):
        spec["description"] = "web servers"
    selector = draw(st.sampled_from(("none", "empty", "labels", "expressions")))
    if selector == "empty":
        spec["podSelector"] = {}
    elif selector == "labels":
        spec["podSelector"] = {"matchLabels": {"tier": "web"}}
    elif selector == "expressions":
        op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
        expr: dict[str, Any] = {"key": "tier", "operator": op}
        if op in ("In", "NotIn"):
            expr["values"] = ["web", "db"]
        spec["podSelector"] = {"matchExpressions": [expr]}
    name = draw(st.sampled_from([n for n in GOOD_NAMES if "." not in n]))
    keep: bool = draw(st.booleans())  # an empty spec written out, or none at all
    return _object("SecurityGroup", name, spec if spec or keep else None)


@st.composite
def _address_group_base(draw: st.DrawFn) -> dict[str, Any]:
    v6 = draw(st.booleans())
    pool = ADDRESSES_V6[:5] if v6 else ADDRESSES_V4[:6]
    spec: dict[str, Any] = {
        "addresses": draw(st.lists(st.sampled_from(pool), max_size=3, unique=True))
    }
    if v6 or draw(st.booleans()):
        spec["ipFamily"] = "IPv6" if v6 else "IPv4"
    return _object("IPAddressGroup", draw(st.sampled_from(GOOD_NAMES)), spec)


def _object(kind: str, name: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}}
    if spec is not None:
        doc["spec"] = spec
    return doc


# ----------------------------------------------------------------------------- fields

Path = tuple[str | int, ...]

# Per kind: integer fields (with bounds), fields with a default, optional fields without
# one, required fields, string fields, and address fields.
INTEGERS: dict[str, dict[Path, tuple[int, int]]] = {
    "SecurityGroupRule": {
        ("spec", "priority"): (1, 100),
        ("spec", "icmp", "type"): (0, 255),
        ("spec", "icmp", "code"): (0, 255),
    },
    "SecurityGroup": {("spec", "sequence"): (1, 10000)},
    "IPAddressGroup": {},
}
DEFAULTED: dict[str, tuple[Path, ...]] = {
    "SecurityGroupRule": (
        ("spec", "action"),
        ("spec", "priority"),
        ("spec", "ipFamily"),
        ("spec", "description"),
    ),
    "SecurityGroup": (
        ("spec",),
        ("spec", "sequence"),
        ("spec", "description"),
        ("spec", "podSelector", "matchExpressions"),
        ("spec", "podSelector", "matchExpressions", 0, "values"),
    ),
    "IPAddressGroup": (("spec",), ("spec", "addresses"), ("spec", "ipFamily")),
}
OPTIONAL: dict[str, tuple[Path, ...]] = {
    "SecurityGroupRule": (
        ("spec", "ports"),
        ("spec", "remote"),
        ("spec", "icmp"),
        ("spec", "icmp", "code"),
        ("spec", "remote", "cidr"),
        ("spec", "remote", "securityGroup"),
        ("spec", "remote", "securityGroup", "namespace"),
        ("spec", "remote", "ipAddressGroup", "namespace"),
        ("status",),
        ("metadata", "labels"),
        ("metadata", "namespace"),
    ),
    "SecurityGroup": (
        ("spec", "podSelector"),
        ("spec", "podSelector", "matchLabels"),
        ("status",),
        ("metadata", "annotations"),
    ),
    "IPAddressGroup": (("status",), ("spec", "description")),
}
REQUIRED: dict[str, tuple[Path, ...]] = {
    "SecurityGroupRule": (
        ("spec",),
        ("spec", "securityGroup"),
        ("spec", "direction"),
        ("spec", "protocol"),
        ("spec", "icmp", "type"),
        ("spec", "remote", "securityGroup", "name"),
        ("metadata", "name"),
        ("metadata",),
    ),
    "SecurityGroup": (
        ("spec", "podSelector", "matchExpressions", 0, "key"),
        ("spec", "podSelector", "matchExpressions", 0, "operator"),
        ("metadata", "name"),
    ),
    "IPAddressGroup": (("metadata", "name"),),
}
STRINGS: dict[str, tuple[Path, ...]] = {
    "SecurityGroupRule": (
        ("spec", "securityGroup"),
        ("spec", "direction"),
        ("spec", "action"),
        ("spec", "ipFamily"),
        ("spec", "protocol"),
        ("spec", "description"),
        ("spec", "ports"),
        ("spec", "remote", "securityGroup", "name"),
        ("spec", "remote", "ipAddressGroup", "name"),
        ("spec", "remote", "securityGroup", "namespace"),
    ),
    "SecurityGroup": (
        ("spec", "description"),
        ("spec", "podSelector", "matchExpressions", 0, "key"),
        ("spec", "podSelector", "matchExpressions", 0, "operator"),
        ("spec", "podSelector", "matchLabels", "tier"),
    ),
    "IPAddressGroup": (("spec", "description"), ("spec", "ipFamily")),
}
SNAKE = {
    "securityGroup": "security_group",
    "ipFamily": "ip_family",
    "podSelector": "pod_selector",
    "matchLabels": "match_labels",
    "ipAddressGroup": "ip_address_group",
}


def _set(doc: dict[str, Any], path: Path, value: Any) -> bool:
    """Set ``path`` (creating missing objects on the way); False if the way is blocked."""
    node: Any = doc
    for part in path[:-1]:
        if isinstance(part, int):
            if not isinstance(node, list) or len(node) <= part:
                return False
            node = node[part]
            continue
        if not isinstance(node, dict):
            return False
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or len(node) <= last:
            return False
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        return False
    return True


def _delete(doc: dict[str, Any], path: Path) -> bool:
    node: Any = doc
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(node, dict) and path[-1] in node:
        del node[path[-1]]
        return True
    return False


# ----------------------------------------------------------------------------- mutations

Mutation = Callable[[st.DrawFn, dict[str, Any]], None]


def _integer_as_string(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    path = draw(st.sampled_from(sorted(INTEGERS[doc["kind"]]) or [("spec", "x")]))
    _set(doc, path, draw(st.sampled_from(INTEGER_AS_STRING)))


def _integer_as_bool(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    path = draw(st.sampled_from(sorted(INTEGERS[doc["kind"]]) or [("spec", "x")]))
    _set(doc, path, draw(st.booleans()))


def _integer_as_float(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    fields = INTEGERS[doc["kind"]]
    if not fields:
        return
    path = draw(st.sampled_from(sorted(fields)))
    lo, hi = fields[path]
    _set(doc, path, draw(st.sampled_from((float(lo), float(hi), lo + 0.5, float(hi + 1), -0.0))))


def _integer_bounds(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    fields = INTEGERS[doc["kind"]]
    if not fields:
        return
    path = draw(st.sampled_from(sorted(fields)))
    lo, hi = fields[path]
    value = draw(st.sampled_from((lo - 1, lo, hi, hi + 1, -(2**63), 2**63, 2**64, 10**30)))
    _set(doc, path, value)


def _address(draw: st.DrawFn, doc: dict[str, Any], pool: tuple[str, ...]) -> None:
    value = draw(st.sampled_from(pool))
    if doc["kind"] == "IPAddressGroup":
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            spec = doc["spec"] = {}
        addresses = spec.get("addresses")
        if not isinstance(addresses, list):
            addresses = []
        addresses.append(value)
        spec["addresses"] = addresses
    elif doc["kind"] == "SecurityGroupRule":
        _set(doc, ("spec", "remote"), {"cidr": value})


def _prefix_leading_zero(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    base = draw(st.sampled_from(("10.0.0.0", "192.0.2.1", "0.0.0.0", "2001:db8::", "::")))
    length = draw(st.sampled_from(("00", "08", "024", "032", "0128", "000", "01")))
    _address(draw, doc, (f"{base}/{length}",))


def _address_text(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    _address(draw, doc, ADDRESSES_V4 + ADDRESSES_V6)


def _null_at(paths: dict[str, tuple[Path, ...]]) -> Mutation:
    def mutate(draw: st.DrawFn, doc: dict[str, Any]) -> None:
        _set(doc, draw(st.sampled_from(paths[doc["kind"]])), None)

    return mutate


def _null_in_map(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    where = draw(st.sampled_from(("labels", "annotations", "matchLabels")))
    if where == "matchLabels" and doc["kind"] == "SecurityGroup":
        _set(doc, ("spec", "podSelector", "matchLabels", "tier"), None)
    else:
        _set(doc, ("metadata", "labels" if where == "labels" else "annotations", "k"), None)


def _null_in_list(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    if doc["kind"] == "IPAddressGroup":
        _set(doc, ("spec", "addresses"), ["192.0.2.1", None])
    elif doc["kind"] == "SecurityGroup":
        _set(doc, ("spec", "podSelector", "matchExpressions"), [None])
    else:
        _set(doc, ("metadata", "finalizers"), [None])


def _name(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    doc["metadata"] = doc.get("metadata") or {}
    doc["metadata"]["name"] = draw(st.sampled_from(NAMES))


def _labels_annotations(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    doc["metadata"] = doc.get("metadata") or {}
    which = draw(st.sampled_from(("labels", "annotations", "finalizers")))
    if which == "finalizers":
        doc["metadata"]["finalizers"] = [draw(st.sampled_from(LABEL_KEYS))]
        return
    key = draw(st.sampled_from(LABEL_KEYS))
    value = draw(st.sampled_from(LABEL_VALUES))
    doc["metadata"][which] = {key: value}


def _unknown_field(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    where: Path = draw(
        st.sampled_from(
            (
                (),
                ("spec",),
                ("metadata",),
                ("status",),
                ("spec", "remote"),
                ("spec", "icmp"),
                ("spec", "podSelector"),
            )
        )
    )
    key = draw(st.sampled_from(("extra", "Priority", "labels ", "spec")))
    value: Any = draw(st.sampled_from((1, None, "x", {})))
    _set(doc, (*where, key), value)


def _snake_case(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return
    for camel, snake in SNAKE.items():
        if camel in spec:
            spec[snake] = spec.pop(camel)
            return
    spec["ip_family"] = "IPv4"


def _status(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    doc["status"] = draw(
        st.sampled_from(
            (
                {},
                {"observedGeneration": 1},
                {"observedGeneration": "one"},
                {"conditions": [{"type": "Ready"}]},
                {"conditions": "none"},
                {"memberCount": 3, "rulesCountedTowardsQuota": {"ingressIPv4": 1}},
                {"memberCount": 3, "members": 3},  # an unknown key
                {"conditions": [{"type": "Ready", "status": "True", "why": "x"}]},
                [],
                "ok",
            )
        )
    )


def _wrong_type(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    kind = doc["kind"]
    paths = (*STRINGS[kind], *INTEGERS[kind], *DEFAULTED[kind], *OPTIONAL[kind])
    # A copy: a later mutation may write into the value (``_address`` appends to a list
    # it finds, ``_set`` creates objects inside a dict), and the constants are shared by
    # every example — a shared ``{}`` set at ``spec`` and then at ``spec.description``
    # became a cycle that json.dumps refused.
    _set(doc, draw(st.sampled_from(paths)), copy.deepcopy(draw(st.sampled_from(WRONG_TYPES))))


def _text(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    _set(doc, draw(st.sampled_from(STRINGS[doc["kind"]])), draw(TEXT))


def _ports_text(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    if doc["kind"] == "SecurityGroupRule":
        _set(doc, ("spec", "ports"), draw(st.sampled_from(PORTS)))
        if draw(st.booleans()):
            _set(doc, ("spec", "protocol"), "TCP")


def _missing(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    _delete(doc, draw(st.sampled_from(REQUIRED[doc["kind"]])))


MUTATIONS: dict[str, Mutation] = {
    "prefix-leading-zero": _prefix_leading_zero,
    "address-text": _address_text,
    "integer-as-string": _integer_as_string,
    "integer-as-bool": _integer_as_bool,
    "integer-as-float": _integer_as_float,
    "integer-bounds": _integer_bounds,
    "null-defaulted": _null_at(DEFAULTED),
    "null-optional": _null_at(OPTIONAL),
    "null-required": _null_at(REQUIRED),
    "null-in-map": _null_in_map,
    "null-in-list": _null_in_list,
    "name": _name,
    "labels-annotations": _labels_annotations,
    "unknown-field": _unknown_field,
    "snake-case-field": _snake_case,
    "status": _status,
    "wrong-type": _wrong_type,
    "text": _text,
    "ports-text": _ports_text,
    "missing": _missing,
}
CLASSES = ("valid", *MUTATIONS)


@st.composite
def labelled_manifests(draw: st.DrawFn) -> tuple[tuple[str, ...], dict[str, Any]]:
    """A manifest and the classes of the mutations applied to it (``valid``: none)."""
    doc = copy.deepcopy(draw(st.one_of(_rule_base(), _group_base(), _address_group_base())))
    names = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3))
    for name in names:
        MUTATIONS[name](draw, doc)
    return (tuple(names) or ("valid",)), doc
