"""The operator's intake: raw watch objects → slim facts → incremental-compiler events.

Every object a reflector lists or watches passes through :meth:`Intake.upsert` or
:meth:`Intake.delete`, on the event loop, and leaves as at most one event for
:class:`secgroups.incremental.IncrementalCompiler` (queued; the reconciler hands the
queue to the compiler in a worker thread). What is kept here is small: per object its
resourceVersion (so a version seen before — a relist, a replayed event — costs
nothing: **parsing is cached per object version**) and what was wrong with it.

Each object is reduced at the edge (``secgroups.facts``: labels, node, IPs, the groups
annotation; the user kinds as parsed models), so nothing large outlives its event.
Objects that cannot be used are kept out of the compiler and reported, one object at a
time — never failing the rest:

* a custom object that does not parse (an older CRD version may have let it in);
* a pod IP that is not a valid IP (the API server's legacy validation accepts
  ``010.0.0.1``; kubelets write such addresses): the pod is kept without IPs (it is in
  no address set and on no node object) until its IPs are valid;
* an IP address group that compiles to more CIDRs than
  ``quotas.MAX_ADDRESS_GROUP_CIDRS``: refused before it is compiled (5,000 IPv6 ranges
  are about a million CIDRs), so the compiler sees it as absent; the reconciler keeps
  the compiled set that is already published (``Intake.refused``).

A deletion leaves a tombstone (its resourceVersion) so that a late list item cannot
resurrect the object. A relist (after 410 Gone) is a mark-and-sweep: objects the new
list does not have are deleted.

**Status writes come back unparsed.** The operator writes the status of every group, rule
and address group it reports on (21,000 at a cold start at full size), and each write
comes back through the watch as a new version. What the compiler reads of these kinds
changes only with the spec (which raises ``metadata.generation``: their CRDs have a
status subresource), the labels, the annotations or the UID. So a version whose
fingerprint of those equals the last one's is skipped before it is parsed: it used to be
parsed again, recompiled with its group, and its statuses recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from secgroups import naming
from secgroups.addresses import check_ip
from secgroups.facts import NamespaceFacts, PodFacts
from secgroups.incremental import Delete, Event, Kind, Node, Upsert
from secgroups.models import IPAddressGroup, SecurityGroup, SecurityGroupRule, parse_resource
from secgroups.quotas import MAX_ADDRESS_GROUP_CIDRS, address_group_cidrs
from secgroups.sharing import intern

log = logging.getLogger(__name__)

#: The kinds the compiler is fed from, in the order the initial lists are taken (pods
#: last: the biggest list, and memberships are resolved once the groups are known).
KINDS = ("Namespace", "Node", "SecurityGroup", "SecurityGroupRule", "IPAddressGroup", "Pod")
#: The custom kinds whose status the operator writes (module docstring: fingerprints).
FINGERPRINTED = frozenset({"SecurityGroup", "SecurityGroupRule", "IPAddressGroup"})
Key = tuple[str, str, str]  # (kind, namespace or "", name)


@dataclass(frozen=True)
class Problem:
    """Why an object (or part of it) is not used: reported on its status and as an Event."""

    key: Key
    reason: str  # CamelCase: Invalid, InvalidPodIP, TooLarge
    message: str
    uid: str = ""


def rv_of(obj: Mapping[str, Any]) -> int:
    """The object's resourceVersion as an integer (etcd revisions; 0 if absent or opaque)."""
    text = (obj.get("metadata") or {}).get("resourceVersion") or "0"
    try:
        return int(text)
    except ValueError:
        return 0


def fingerprint(obj: Mapping[str, Any]) -> bytes | None:
    """What the compiler reads of a custom object, beyond its spec, as a digest: UID,
    generation (raised by every spec change), labels and annotations. None without a
    generation (nothing then says whether the spec changed)."""
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    if not isinstance(generation, int):
        return None
    what = [meta.get("uid"), generation, meta.get("labels"), meta.get("annotations")]
    text = json.dumps(what, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def key_of(kind: str, obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    return (kind, intern(namespace) if isinstance(namespace, str) else namespace, meta["name"])


@dataclass
class Intake:
    """See the module docstring. ``emit`` receives each compiler event in order;
    ``report`` each problem found (or ``None``-cleared: :attr:`problems`)."""

    emit: Callable[[Event], None]
    report: Callable[[Problem], None] = lambda _: None
    versions: dict[Key, int] = field(default_factory=dict)
    tombstones: dict[Key, int] = field(default_factory=dict)
    problems: dict[Key, Problem] = field(default_factory=dict)
    #: custom objects: the fingerprint of the version last reduced (module docstring)
    fingerprints: dict[Key, bytes] = field(default_factory=dict)
    #: IP address groups refused for their size: the compiler sees them as absent.
    refused: set[tuple[str, str]] = field(default_factory=set)
    _sweep: dict[str, set[Key]] = field(default_factory=dict)
    events: int = 0  # events emitted (a counter for logs and benchmarks)

    # ------------------------------------------------------------------ events

    def upsert(self, kind: str, obj: Mapping[str, Any]) -> None:
        """An added or modified object (a list item, or a watch ADDED/MODIFIED)."""
        key = key_of(kind, obj)
        if kind in self._sweep:
            self._sweep[kind].discard(key)
        rv = rv_of(obj)
        if rv and (rv <= self.versions.get(key, 0) or rv <= self.tombstones.get(key, 0)):
            return  # seen this version (or a newer one) already
        self.versions[key] = rv
        self.tombstones.pop(key, None)
        if kind in FINGERPRINTED:
            fp = fingerprint(obj)
            if fp is None:
                self.fingerprints.pop(key, None)
            elif self.fingerprints.get(key) == fp:
                return  # a status write: nothing the compiler reads has changed
            else:
                self.fingerprints[key] = fp
        try:
            event = self._reduce(kind, key, obj)
        except (ValidationError, ValueError, KeyError, TypeError) as exc:
            self._problem(key, obj, "Invalid", _short(exc))
            self._emit(_delete(kind, key))  # an older valid version must not stay in force
            return
        if event is not None:
            self._emit(event)

    def delete(self, kind: str, obj: Mapping[str, Any]) -> None:
        """A deleted object (a watch DELETED, or swept after a relist)."""
        key = key_of(kind, obj)
        self.tombstones[key] = max(rv_of(obj), self.versions.pop(key, 0))
        self.fingerprints.pop(key, None)
        self._clear(key)
        if kind == "IPAddressGroup":
            self.refused.discard((key[1], key[2]))
        self._emit(_delete(kind, key))

    def begin_list(self, kind: str) -> None:
        """A full list of ``kind`` starts: what it does not return is deleted at the end."""
        self._sweep[kind] = {k for k in self.versions if k[0] == kind}

    def end_list(self, kind: str) -> None:
        for key in sorted(self._sweep.pop(kind, set())):
            _, ns, name = key
            meta: dict[str, Any] = {"name": name}
            if ns:
                meta["namespace"] = ns
            self.delete(kind, {"metadata": meta})

    # ------------------------------------------------------------------ reduction

    def _emit(self, event: Event) -> None:
        self.events += 1
        self.emit(event)

    def _reduce(self, kind: str, key: Key, obj: Mapping[str, Any]) -> Event | None:
        meta = obj.get("metadata") or {}
        if kind == "Namespace":
            self._clear(key)
            return Upsert(NamespaceFacts(name=meta["name"], labels=dict(meta.get("labels") or {})))
        if kind == "Node":
            self._clear(key)
            return Upsert(Node(str(meta["name"])))
        if kind == "Pod":
            return Upsert(self._pod(key, obj))
        doc = {k: v for k, v in obj.items() if k in ("apiVersion", "kind", "metadata", "spec")}
        doc["kind"] = kind
        doc["metadata"] = {
            k: _shared(v) if k != "uid" else v
            for k, v in meta.items()
            if k in ("name", "namespace", "uid", "generation", "labels", "annotations")
        }
        if "spec" in doc:
            doc["spec"] = _shared(doc["spec"])
        resource = parse_resource(doc)
        assert isinstance(resource, SecurityGroup | SecurityGroupRule | IPAddressGroup)
        if isinstance(resource, IPAddressGroup):
            return self._ipag(key, resource)
        self._clear(key)
        return Upsert(resource)

    def _pod(self, key: Key, obj: Mapping[str, Any]) -> PodFacts:
        fact = PodFacts.from_manifest(obj)
        bad = [ip for ip in fact.ips if not _valid_ip(ip)]
        if bad:
            self._problem(
                key,
                obj,
                "InvalidPodIP",
                f"pod IPs {', '.join(bad)} are not valid IP addresses; the pod is not "
                "programmed on its node nor added to any address set until they are",
            )
            return fact.model_copy(update={"ips": ()})
        self._clear(key)
        return fact

    def _ipag(self, key: Key, ipag: IPAddressGroup) -> Event:
        ref = (key[1], key[2])
        count = address_group_cidrs(ipag.spec.addresses, MAX_ADDRESS_GROUP_CIDRS)
        if count > MAX_ADDRESS_GROUP_CIDRS:
            self.refused.add(ref)
            self._problem(
                key,
                {"metadata": ipag.metadata.model_dump(by_alias=True)},
                "TooLarge",
                f"its entries compile to more than {MAX_ADDRESS_GROUP_CIDRS} CIDRs; "
                f"address set {naming.ipag_set_name(*ref)} keeps its published entries "
                "(none if it was never published) until the group is made smaller",
            )
            return Delete(Kind.IP_ADDRESS_GROUP, key[2], key[1])
        self.refused.discard(ref)
        self._clear(key)
        return Upsert(ipag)

    def _problem(self, key: Key, obj: Mapping[str, Any], reason: str, message: str) -> None:
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        problem = Problem(key, reason, message, uid)
        if self.problems.get(key) != problem:
            self.problems[key] = problem
            log.warning("%s %s/%s: %s: %s", key[0], key[1], key[2], reason, message)
            self.report(problem)

    def _clear(self, key: Key) -> None:
        self.problems.pop(key, None)


def _shared(value: Any) -> Any:
    """``value`` with its short strings interned (a decoded object has its own copy of
    every namespace, group name, port list and remote: 20,000 rules repeat them)."""
    if isinstance(value, str):
        return intern(value) if len(value) <= 100 else value
    if isinstance(value, dict):
        return {_shared(k): _shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared(v) for v in value]
    return value


def _valid_ip(text: str) -> bool:
    try:
        check_ip(text)
    except ValueError:
        return False
    return True


def _delete(kind: str, key: Key) -> Delete:
    return Delete(Kind(kind), key[2], key[1])


def _short(exc: BaseException, limit: int = 400) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
