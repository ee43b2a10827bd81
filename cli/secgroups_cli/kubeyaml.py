"""YAML values as kubectl reads them: plain scalars and mapping keys the Go way.

``kubectl apply -f`` (v1.36) turns each YAML document into JSON with sigs.k8s.io/yaml
v1.6.0, which parses with go-yaml v2 (go.yaml.in/yaml/v2 v2.4.3) and converts what it
read to JSON; the API server only ever sees that JSON. PyYAML resolves plain (unquoted)
scalars by YAML 1.1's rules, which are not go-yaml v2's: ``1:30`` is 90 for PyYAML and a
string for kubectl, ``0o10`` and ``1e2`` are strings for PyYAML and 8 and 100 for
kubectl, ``2001-12-14`` a date for PyYAML and a string for kubectl. So ``lint -f`` would
judge another object than ``kubectl apply`` sends. The loaders here keep PyYAML's parser
(libyaml when present: its speed) and replace resolution and construction:

* a **plain scalar** is resolved as go-yaml v2's ``resolve`` does (:func:`plain_value`):
  ``~``, ``null``, ``Null``, ``NULL`` and nothing are null; ``y``, ``yes``, ``on``,
  ``true`` (three spellings each: ``y``/``Y``, ``yes``/``Yes``/``YES``...) are true and
  ``n``, ``no``, ``off``, ``false`` false; Go integer syntax after removing every ``_``
  (``0x1F``, ``0o17``, ``0b101``, a leading ``0`` is octal: ``010`` is 8); a decimal
  float (``1e2``, ``.5``, ``08``), out-of-range ones staying strings; ``.inf``/``.nan``;
  everything else a string — dates and times, ``1:30``, ``+inf``, ``0x1p3`` included;
* **the JSON step**: a float with an integral value below 10^21 is written by Go as an
  integer (``1e2`` and ``5.0`` reach the API server as ``100`` and ``5``), so it is one
  here; infinities and NaN have no JSON and kubectl refuses the document;
* **mapping keys** become strings as sigs.k8s.io/yaml makes them: integers in decimal
  (``0x10: a`` is key ``"16"``), booleans ``"true"``/``"false"`` (a key ``y:`` or ``on:``
  is ``"true"``), floats in Go's shortest float32 form; a null key is refused;
* **merge keys** (``<<``) as go-yaml v2 merges: at their place in the mapping, so a key
  written *before* ``<<`` is overridden by the merged one (PyYAML lets it win), and of
  a merged list the earlier maps win;
* **explicit tags**: ``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null`` and
  ``!!timestamp`` check the value as go-yaml does (``!!int 1.5`` is refused, ``!!float
  1`` is 1.0), ``!!binary`` is decoded to text; any other tag is ignored (a scalar is
  its text, a collection by its kind), where PyYAML builds sets and pairs or refuses.

What kubectl refuses, these loaders refuse with :class:`KubectlRefuses` (a
``yaml.YAMLError``, so the reader reports it on one line with its file and line).
``tests/unit/test_kubeyaml.py`` holds a table of tricky scalars with kubectl's answers
and runs the Go decoder itself on generated ones when a Go toolchain is there.
Not covered: how the text is split into documents and tokens (PyYAML's scanner and
kubectl's ``---`` splitting agree on manifests; corner cases of both are not modelled).

Neighbours: ``manifests`` reads files with these loaders.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_TAG = "tag:yaml.org,2002:"
STR_TAG, SEQ_TAG, MAP_TAG = _TAG + "str", _TAG + "seq", _TAG + "map"
NULL_TAG, BOOL_TAG, INT_TAG, FLOAT_TAG = _TAG + "null", _TAG + "bool", _TAG + "int", _TAG + "float"
TIMESTAMP_TAG, BINARY_TAG, MERGE_TAG = _TAG + "timestamp", _TAG + "binary", _TAG + "merge"
# The tag this module gives every plain scalar; its value is decided when constructed.
PLAIN_TAG = "tag:kube-secgroups.dev,2026:plain"

INT64 = (-(1 << 63), (1 << 63) - 1)
UINT64_MAX = (1 << 64) - 1
JSON_INTEGRAL_LIMIT = 1e21  # Go's encoding/json writes smaller integral floats as integers
EXACT_INTEGERS = 2.0**53  # up to which a float's shortest digits are the integer itself


class KubectlRefuses(yaml.YAMLError):
    """A document kubectl cannot turn into JSON: ``problem`` at ``problem_mark``."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class Uint64(int):
    """An integer only Go's uint64 holds (2^63 to 2^64 - 1): such a map key is refused."""


# ----------------------------------------------------------------------------- scalars

# go-yaml v2's resolve table: exact spellings, tried first when the first character is
# one of "yYnNtTfFoO~" or "." or a digit or sign (and for the empty scalar).
_WORDS: dict[str, tuple[str, Any]] = {
    **{
        w: (BOOL_TAG, True)
        for w in ["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"]
    },
    **{
        w: (BOOL_TAG, False)
        for w in ["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"]
    },
    **{w: (NULL_TAG, None) for w in ("", "~", "null", "Null", "NULL")},
    **{w: (FLOAT_TAG, math.nan) for w in (".nan", ".NaN", ".NAN")},
    **{w: (FLOAT_TAG, math.inf) for w in (".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF")},
    **{w: (FLOAT_TAG, -math.inf) for w in ("-.inf", "-.Inf", "-.INF")},
}
_HINTED = frozenset("yYnNtTfFoO~.+-0123456789")
_DIGITS_OR_SIGN = frozenset("+-0123456789")
# strconv.ParseInt(s, 0, 64) / ParseUint syntax once go-yaml removed the underscores.
_GO_INT = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
# go-yaml v2's yamlStyleFloat, then strconv.ParseFloat.
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?")  # ParseFloat of text starting '.'
_BINARY = re.compile(r"([+-]?)([01]+)")  # strconv.ParseInt(s, 2, 64)
_BASES = {"x": 16, "X": 16, "o": 8, "O": 8, "b": 2, "B": 2}


def _go_int(text: str) -> int | None:
    """``strconv.ParseInt(text, 0, 64)``, else ``ParseUint`` (a :class:`Uint64`)."""
    m = _GO_INT.fullmatch(text)
    if m is None:
        return None
    sign, body = m.groups()
    if len(body) > 1 and body[1] in _BASES:
        value = int(body[2:], _BASES[body[1]])
    else:
        value = int(body, 8 if body.startswith("0") else 10)
    value = -value if sign == "-" else value
    if INT64[0] <= value <= INT64[1]:
        return value
    if not sign and value <= UINT64_MAX:  # ParseUint takes no sign
        return Uint64(value)
    return None


def _go_float(text: str, pattern: re.Pattern[str]) -> float | None:
    """``strconv.ParseFloat`` of decimal text: None when out of range (Go's ErrRange)."""
    if pattern.fullmatch(text) is None:
        return None
    value = float(text)
    return None if math.isinf(value) else value


def resolve_plain(text: str, timestamps: bool = True) -> tuple[str, Any]:
    """go-yaml v2's ``resolve`` of a scalar: (tag, value); a timestamp's value is its text.

    ``timestamps`` False: an explicit tag other than ``!!timestamp`` is being checked,
    which go-yaml does without trying the text as a time.
    """
    if text and text[0] not in _HINTED:
        return STR_TAG, text
    word = _WORDS.get(text)
    if word is not None:
        return word
    first = text[0]
    if first == ".":
        value = _go_float(text, _DOT_FLOAT)
        return (FLOAT_TAG, value) if value is not None else (STR_TAG, text)
    if first not in _DIGITS_OR_SIGN:
        return STR_TAG, text
    if timestamps and is_timestamp(text):
        return TIMESTAMP_TAG, text
    plain = text.replace("_", "")
    number = _go_int(plain)
    if number is not None:
        return INT_TAG, number
    value = _go_float(plain, _YAML_FLOAT)
    if value is not None:
        return FLOAT_TAG, value
    if plain.startswith("0b"):  # after ParseInt(plain, 0): "0b+101" is 5
        m = _BINARY.fullmatch(plain[2:])
        if m is not None:
            number = int(m.group(2), 2) * (-1 if m.group(1) == "-" else 1)
            if INT64[0] <= number <= INT64[1]:
                return INT_TAG, number
            if not m.group(1) and number <= UINT64_MAX:
                return INT_TAG, Uint64(number)
    return STR_TAG, text


# time.Parse with go-yaml v2's layouts: "2006-1-2T15:4:5.999999999Z07:00" (T or t),
# "2006-1-2 15:4:5.999999999" and "2006-1-2"; months, days and times by their ranges.
_TIMESTAMP = re.compile(
    r"(?P<y>[0-9]{4})-(?P<m>[0-9]{1,2})-(?P<d>[0-9]{1,2})"
    r"(?:(?:[Tt](?P<t1>[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2})(?:\.[0-9]+)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9]))"
    r"|(?: (?P<t2>[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2})(?:\.[0-9]+)?))?"
)
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_timestamp(text: str) -> bool:
    """Whether go-yaml v2 reads ``text`` as a timestamp (its ``parseTimestamp``)."""
    if len(text) < 5 or text[4] != "-" or not text[:4].isdigit():
        return False
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        return False
    year, month, day = int(m["y"]), int(m["m"]), int(m["d"])
    if not 1 <= month <= 12 or not 1 <= day <= _MONTH_DAYS[month - 1]:
        return False
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if month == 2 and day == 29 and not leap:
        return False
    clock = m["t1"] or m["t2"]
    if clock is not None:
        h, mi, s = (int(x) for x in clock.split(":"))
        return h < 24 and mi < 60 and s < 60
    return True


def plain_value(text: str) -> Any:
    """The value of a plain scalar, as go-yaml v2 gives it (before the JSON step)."""
    return resolve_plain(text)[1]


def tagged_value(tag: str, text: str, mark: Any) -> Any:
    """A scalar with an explicit tag, as go-yaml v2 decodes it into an interface{}."""
    if tag == STR_TAG:
        return text
    if tag == BINARY_TAG:
        try:
            data = base64.b64decode(text.replace("\n", "").replace("\r", ""), validate=True)
        except ValueError:
            raise KubectlRefuses(f"!!binary value is not base64: {text!r}", mark) from None
        # Go keeps the bytes; its JSON writes each invalid UTF-8 byte as U+FFFD.
        return data.decode("utf-8", "surrogateescape").translate(_SURROGATES)
    if tag not in (NULL_TAG, BOOL_TAG, INT_TAG, FLOAT_TAG, TIMESTAMP_TAG):
        return text  # a tag go-yaml cannot resolve: the text as it is
    rtag, value = resolve_plain(text, timestamps=tag == TIMESTAMP_TAG)
    if rtag == tag:
        return value
    if tag == FLOAT_TAG and rtag == INT_TAG:
        return float(value)
    raise KubectlRefuses(
        f"cannot decode !!{rtag[len(_TAG) :]} `{text}` as a !!{tag[len(_TAG) :]}", mark
    )


_SURROGATES = {code: "\ufffd" for code in range(0xDC80, 0xDD00)}


def json_value(value: Any, mark: Any) -> Any:
    """What a value becomes through Go's JSON: see the module docstring."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise KubectlRefuses(f"{_go_float_text(value)} has no JSON form", mark)
        if value.is_integer() and abs(value) < JSON_INTEGRAL_LIMIT:
            # Go writes the shortest digits that read back, padded with zeros: the float
            # nearest -2^63 - 1 is written -9223372036854776000, not ...775808.
            return int(value) if abs(value) <= EXACT_INTEGERS else int(Decimal(repr(value)))
    elif kind is Uint64:
        return int(value)
    return value


def _go_float_text(value: float) -> str:
    return ".nan" if math.isnan(value) else ".inf" if value > 0 else "-.inf"


# ----------------------------------------------------------------------------- keys


def float32_text(value: float) -> str:
    """``strconv.FormatFloat(value, 'g', -1, 32)``, with sigs.k8s.io/yaml's names for the
    infinities and NaN."""
    if math.isnan(value):
        return ".nan"
    try:
        single = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        single = math.inf if value > 0 else -math.inf
    if math.isinf(single):
        return ".inf" if single > 0 else "-.inf"
    sign = "-" if math.copysign(1.0, single) < 0 else ""
    single = abs(single)
    if single == 0:
        return sign + "0"
    for digits in range(1, 10):  # the shortest decimal that reads back as this float32
        text = f"{single:.{digits - 1}e}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == single:
            break
    mantissa, exp_text = text.split("e")
    figures = mantissa.replace(".", "")
    exp = int(exp_text)
    if exp < -4 or exp >= 6:  # Go's %e for the shortest form: two exponent digits at least
        point = f"{figures[0]}.{figures[1:]}" if len(figures) > 1 else figures
        return f"{sign}{point}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{figures}"
    whole, frac = figures[: exp + 1].ljust(exp + 1, "0"), figures[exp + 1 :]
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def json_key(key: Any, node: Node) -> str:
    """A mapping key as sigs.k8s.io/yaml writes it to JSON (module docstring)."""
    if type(key) is str:
        return key
    if key is True or key is False:
        return "true" if key else "false"
    if type(key) is int:
        return str(key)
    if type(key) is float:
        return float32_text(key)
    what = {type(None): "<nil>", Uint64: "uint64"}.get(type(key), type(key).__name__)
    raise KubectlRefuses(f"unsupported map key of type: {what}", node.start_mark)


# ----------------------------------------------------------------------------- construction


def _merged_pairs(node: MappingNode) -> list[tuple[Node, Node]]:
    """The key/value pairs of ``node`` in go-yaml v2's order, merge keys expanded in place
    (later pairs win when keys repeat)."""
    out: list[tuple[Node, Node]] = []
    for key, value in node.value:
        if not (isinstance(key, ScalarNode) and key.tag == MERGE_TAG and key.value == "<<"):
            out.append((key, value))
        elif isinstance(value, MappingNode):
            out.extend(_merged_pairs(value))
        elif isinstance(value, SequenceNode):
            for item in reversed(value.value):  # the earlier maps take precedence
                if not isinstance(item, MappingNode):
                    raise KubectlRefuses(
                        "map merge requires map or sequence of maps as the value", item.start_mark
                    )
                out.extend(_merged_pairs(item))
        else:
            raise KubectlRefuses(
                "map merge requires map or sequence of maps as the value", value.start_mark
            )
    return out


class GoResolution:
    """Mixin for a PyYAML loader: resolution as described above (use with
    :func:`kubectl_rules`, which installs the construction)."""

    def resolve(self, kind: type[Node], value: str, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            if implicit[0]:
                return MERGE_TAG if value == "<<" else PLAIN_TAG
            return STR_TAG
        return SEQ_TAG if kind is SequenceNode else MAP_TAG


def _plain(loader: Any, node: ScalarNode) -> Any:
    return plain_value(node.value)


def _seq(loader: Any, node: SequenceNode) -> Iterator[list[Any]]:
    data: list[Any] = []
    yield data
    construct = loader.construct_object
    data.extend(json_value(construct(item, deep=False), item.start_mark) for item in node.value)


def _map(loader: Any, node: MappingNode) -> Iterator[dict[str, Any]]:
    data: dict[str, Any] = {}
    yield data
    construct = loader.construct_object
    for key_node, value_node in _merged_pairs(node):
        if not isinstance(key_node, ScalarNode):
            raise KubectlRefuses("a mapping or a list as a map key", key_node.start_mark)
        key = json_key(construct(key_node, deep=False), key_node)
        data[key] = json_value(construct(value_node, deep=False), value_node.start_mark)


def _by_kind(loader: Any, node: Node) -> Any:
    """Any tag: go-yaml decodes a collection by its kind, a scalar by :func:`tagged_value`."""
    if isinstance(node, SequenceNode):
        return _seq(loader, node)
    if isinstance(node, MappingNode):
        return _map(loader, node)
    return tagged_value(node.tag, node.value, node.start_mark)


# Every tag, known or not, goes to one of these (PyYAML's sets, pairs, dates and bytes
# never appear); plain scalars and the collections without a tag are the common case.
GO_CONSTRUCTORS: dict[str | None, Any] = {
    PLAIN_TAG: _plain,
    SEQ_TAG: _by_kind,
    MAP_TAG: _by_kind,
    None: _by_kind,
}

_L = TypeVar("_L")


def kubectl_rules(cls: type[_L]) -> type[_L]:
    """Class decorator: a loader class constructs with :data:`GO_CONSTRUCTORS` only."""
    target: Any = cls
    target.yaml_constructors = dict(GO_CONSTRUCTORS)
    target.yaml_multi_constructors = {}
    return cls
