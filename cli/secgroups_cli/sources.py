"""Where the plugin's facts come from: manifest files (``-f``) or a live cluster.

Both paths end in the same place — Kubernetes objects as dictionaries, validated with
the core's models and turned into one ``ClusterFacts`` by ``ClusterFacts.from_manifests``
— so every command gives the same answer offline and online.

**Offline** (``-f``, repeatable): objects without ``metadata.namespace`` go to the
namespace of ``-n`` (else ``default``), as ``kubectl apply -f`` would put them. A
namespace decides enforcement by its ``Namespace`` object when the files contain one
(label ``secgroups.dev/enforce=true``); a namespace the objects use but the files do
not define is **assumed enforced** — the files are usually a what-if about enforced
namespaces — and a note says so on stderr; ``--enforced-only`` treats such namespaces
as not enforced instead. Invalid objects stop the command with ``file:line`` errors.

**Online** (no ``-f``): the kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, the
in-cluster service account, or ``~/.kube/config``) and its context (``--context``) are
used through ``secgroups_kube``; namespaces, nodes, pods and the three
``secgroups.dev/v1alpha1`` kinds of every namespace are read. An object the core cannot
parse (say, written before a CRD upgrade) is skipped with a warning instead of stopping
the command.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TextIO

from pydantic import ValidationError

from secgroups import models
from secgroups.analysis import PolicyView
from secgroups.decoding import parse_manifest
from secgroups.facts import ClusterFacts, NamespaceFacts, PodFacts
from secgroups.membership import Scope
from secgroups.models import API_VERSION, GROUP, RESOURCE_KINDS, parse_resource
from secgroups_cli.errors import CliError
from secgroups_cli.manifests import Document, Loc, loc_text, read_paths, validation_errors

CORE_KINDS = ("Namespace", "Node", "Pod")
NAMESPACED_KINDS = frozenset({"Pod", *RESOURCE_KINDS})
# Cross-field rules report on the object; point at the field instead, as the CRD's CEL
# rules do with their fieldPath.
CROSS_FIELD_PATHS: dict[str, Loc] = {
    models.MSG_PORTS_PROTOCOL: ("spec", "ports"),
    models.MSG_ICMP_PROTOCOL: ("spec", "icmp"),
    models.MSG_CIDR_FAMILY: ("spec", "remote", "cidr"),
    models.MSG_REMOTE_ONE: ("spec", "remote"),
}
ObjectId = tuple[str, str, str]  # (kind, namespace, name); namespace "" if cluster-scoped
# PodFacts field → where it comes from in a Pod object (for error locations).
_POD_FIELDS: dict[str, tuple[str, ...]] = {
    "namespace": ("metadata", "namespace"),
    "name": ("metadata", "name"),
    "uid": ("metadata", "uid"),
    "labels": ("metadata", "labels"),
    "groups_annotation": ("metadata", "annotations"),
    "node": ("spec", "nodeName"),
    "host_network": ("spec", "hostNetwork"),
    "ips": ("status", "podIPs"),
    "phase": ("status", "phase"),
}


@dataclass(frozen=True)
class Options:
    """The source-related command-line options, shared by every command."""

    filenames: tuple[str, ...] = ()
    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    enforced_only: bool = False
    scope: Scope = field(default_factory=Scope)

    @property
    def offline(self) -> bool:
        return bool(self.filenames)


@dataclass
class Snapshot:
    """The facts one command works on, and where each object came from."""

    facts: ClusterFacts
    namespace: str  # the namespace of -n, or the default one
    online: bool
    scope: Scope
    origins: dict[ObjectId, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @cached_property
    def view(self) -> PolicyView:
        return PolicyView(self.facts, self.scope)

    def origin(self, kind: str, namespace: str, name: str) -> str | None:
        """``file:line`` of an object read from files; None online."""
        return self.origins.get((kind, namespace, name))

    def pod(self, namespace: str, name: str) -> PodFacts:
        """The pod ``namespace/name``, or a CliError listing the pods that do exist."""
        for p in self.facts.pods:
            if p.namespace == namespace and p.name == name:
                return p
        names = sorted(p.name for p in self.facts.pods if p.namespace == namespace)
        where = "in the files" if not self.online else "in the cluster"
        if names:
            raise CliError(f"pod {namespace}/{name} not found; pods in {namespace}: {_some(names)}")
        spaces = sorted({p.namespace for p in self.facts.pods})
        hint = f" (namespaces with pods: {', '.join(spaces)})" if spaces else ""
        raise CliError(f"pod {namespace}/{name} not found: no pods in {namespace} {where}{hint}")

    def pods_in(self, namespace: str | None) -> list[PodFacts]:
        """Pods of one namespace (None: all), sorted by namespace then name."""
        return sorted(
            (p for p in self.facts.pods if namespace is None or p.namespace == namespace),
            key=lambda p: p.key,
        )


def _some(names: Sequence[str], limit: int = 20) -> str:
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ----------------------------------------------------------------------------- validation


def _name_of(doc: Document) -> str | None:
    meta = doc.data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name else None


def _check_pod(doc: Document) -> list[str]:
    try:
        pod = PodFacts.from_manifest(doc.data)
    except ValidationError as exc:
        return validation_errors(doc, exc, rename=_POD_FIELDS)
    except (KeyError, TypeError, AttributeError) as exc:
        return [f"{doc.where(('status',))}: not a valid Pod object ({exc!s})"]
    errors = []
    ips = (doc.data.get("status") or {}).get("podIPs") or ()
    for i, ip in enumerate(pod.ips):
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            loc: Loc = ("status", "podIPs", i, "ip") if ips else ("status", "podIP")
            errors.append(f"{doc.where(loc)}: {loc_text(loc)}: not an IP address: {ip}")
    return errors


def _check(doc: Document, online: bool) -> tuple[list[str], models.Resource | None]:
    """Why ``doc`` cannot be used (empty when it can), and one of our kinds parsed.

    Offline, our kinds are checked as ``kubectl apply`` would be (``decoding``): what
    the API server rejects is an error here too, and nothing it accepts is.
    """
    kind, api = doc.data.get("kind"), doc.data.get("apiVersion")
    if kind in CORE_KINDS or api != API_VERSION or _name_of(doc) is None:
        return _check_core(doc), None
    try:
        resource = parse_resource(doc.data) if online else parse_manifest(doc.data)
    except ValidationError as exc:
        return validation_errors(doc, exc, fields=CROSS_FIELD_PATHS), None
    except ValueError as exc:
        return [f"{doc.where()}: {exc}"], None
    return [], resource


def _check_core(doc: Document) -> list[str]:
    kind, api = doc.data.get("kind"), doc.data.get("apiVersion")
    if _name_of(doc) is None:
        return [f"{doc.where(('metadata', 'name'))}: metadata.name: required field is missing"]
    if kind in CORE_KINDS:
        if kind == "Pod":
            return _check_pod(doc)
        if kind == "Namespace":
            try:
                NamespaceFacts(
                    name=doc.data["metadata"]["name"],
                    labels=doc.data["metadata"].get("labels") or {},
                )
            except ValidationError as exc:
                return validation_errors(doc, exc, rename={"labels": ("metadata", "labels")})
        return []
    return [f"{doc.where(('apiVersion',))}: apiVersion: should be {API_VERSION}, got {api}"]


def _ours(doc: Document) -> bool:
    kind, api = doc.data.get("kind"), doc.data.get("apiVersion")
    if kind in CORE_KINDS:
        return api == "v1"
    return kind in RESOURCE_KINDS and isinstance(api, str) and api.startswith(f"{GROUP}/")


def _with_namespace(doc: Document, namespace: str) -> Document:
    """The document with ``metadata.namespace`` filled in for namespaced kinds."""
    meta = doc.data.get("metadata")
    if doc.data.get("kind") not in NAMESPACED_KINDS or not isinstance(meta, dict):
        return doc
    if meta.get("namespace") not in (None, ""):
        return doc  # given (a value of the wrong type stays, and is refused as such)
    data = {**doc.data, "metadata": {**meta, "namespace": namespace}}
    return Document(data, doc.source, doc.node, doc.line)


def _object_id(doc: Document) -> ObjectId:
    meta = doc.data["metadata"]
    kind = str(doc.data["kind"])
    return (
        kind,
        str(meta.get("namespace") or "") if kind in NAMESPACED_KINDS else "",
        meta["name"],
    )


def _used_namespaces(facts: ClusterFacts) -> set[str]:
    used = {p.namespace for p in facts.pods}
    metas = [r.metadata for r in facts.groups] + [r.metadata for r in facts.rules]
    metas += [r.metadata for r in facts.address_groups]
    used.update(m.namespace or "default" for m in metas)
    for rule in facts.rules:
        remote = rule.spec.remote
        for ref in (remote.security_group, remote.ip_address_group) if remote else ():
            if ref is not None and ref.namespace:
                used.add(ref.namespace)
    return used


def build_snapshot(
    docs: Iterable[Document],
    *,
    namespace: str,
    online: bool,
    scope: Scope,
    enforced_only: bool = False,
) -> Snapshot:
    """Validate ``docs`` and build the facts (see the module docstring for the rules)."""
    errors: list[str] = []
    notes: list[str] = []
    kept: list[Document] = []  # Namespaces, Nodes, Pods
    resources: list[models.Resource] = []  # our kinds, parsed once
    seen: dict[ObjectId, str] = {}
    ignored: dict[str, int] = {}
    for raw in docs:
        if not _ours(raw):
            label = str(raw.data.get("kind") or "<no kind>")
            ignored[label] = ignored.get(label, 0) + 1
            continue
        doc = _with_namespace(raw, namespace)
        problems, resource = _check(doc, online)
        if problems:
            if online:
                notes.extend(f"warning: skipping {p}" for p in problems)
            else:
                errors.extend(problems)
            continue
        oid = _object_id(doc)
        if oid in seen:
            errors.append(
                f"{doc.where()}: {oid[0]} {'/'.join(x for x in oid[1:] if x)} is defined twice "
                f"(first at {seen[oid]})"
            )
            continue
        seen[oid] = doc.where()
        if resource is not None:
            resources.append(resource)
        else:
            kept.append(doc)
    if errors:
        raise CliError("invalid manifests:\n" + "\n".join(f"  {e}" for e in errors))
    if ignored and not online:
        kinds = ", ".join(f"{k} ({n})" for k, n in sorted(ignored.items()))
        notes.append(f"note: ignored objects of other kinds: {kinds}")
    facts = ClusterFacts.from_manifests(d.data for d in kept).model_copy(
        update={
            "groups": tuple(r for r in resources if isinstance(r, models.SecurityGroup)),
            "rules": tuple(r for r in resources if isinstance(r, models.SecurityGroupRule)),
            "address_groups": tuple(r for r in resources if isinstance(r, models.IPAddressGroup)),
        }
    )
    if not online:
        facts = _assume_namespaces(facts, scope, enforced_only, notes)
    origins = seen if not online else {}
    return Snapshot(facts, namespace, online, scope, origins, notes)


def _assume_namespaces(
    facts: ClusterFacts, scope: Scope, enforced_only: bool, notes: list[str]
) -> ClusterFacts:
    defined = {n.name for n in facts.namespaces}
    missing = sorted(_used_namespaces(facts) - defined)
    if not missing:
        return facts
    if enforced_only:
        notes.append(
            f"note: no Namespace object in the files for {', '.join(missing)}: "
            "not enforced (--enforced-only)"
        )
        return facts
    notes.append(
        f"note: no Namespace object in the files for {', '.join(missing)}: assumed enforced "
        f"({scope.key}={scope.value}); use --enforced-only to treat them as not enforced"
    )
    extra = tuple(NamespaceFacts(name=n, labels={scope.key: scope.value}) for n in missing)
    return facts.model_copy(update={"namespaces": (*facts.namespaces, *extra)})


# ----------------------------------------------------------------------------- entry points


def load_files(options: Options, stdin: TextIO | None = None) -> Snapshot:
    docs = read_paths(options.filenames, stdin)
    return build_snapshot(
        docs,
        namespace=options.namespace or "default",
        online=False,
        scope=options.scope,
        enforced_only=options.enforced_only,
    )


def load(options: Options, stdin: TextIO | None = None) -> Snapshot:
    """The snapshot the options ask for: from files with ``-f``, else from the cluster."""
    if options.offline:
        return load_files(options, stdin)
    from secgroups_cli.cluster import Cluster

    return Cluster.connect(options).snapshot(options)


def object_documents(objects: Iterable[Mapping[str, Any]], source: str) -> list[Document]:
    """Objects read from a cluster as documents (no file, no line)."""
    out = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace")
        label = f"{obj.get('kind')} {ns + '/' if ns else ''}{meta.get('name')} ({source})"
        out.append(Document(dict(obj), label, None, 0))
    return out
