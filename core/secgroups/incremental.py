"""The incremental compiler: one watch event in, the compiled objects it changes out.

``compiling.compile_policy`` recompiles the whole cluster (about a second for
10,000 pods and 20,000 rules); the operator cannot do that for every pod or rule
event. :class:`IncrementalCompiler` holds the cluster's facts plus indexes built
from them, applies one event (upsert or delete of a namespace, node, pod, security
group, rule or IP address group, or new ingress epochs) and returns only the
compiled objects that changed: group, set or node name → new spec, or ``None``
when the object must be deleted. Its :attr:`~IncrementalCompiler.policy` is always
equal, byte for byte once dumped, to ``compile_policy`` of :meth:`facts` — the
property tests check exactly that after random event sequences.

How: an event marks what it may affect as dirty (pods whose membership must be
recomputed, groups whose rules changed, address sets whose members changed, nodes
whose pods changed); :meth:`_flush` then recomputes just those, in dependency order
(memberships → groups → sets → nodes), with the same per-object functions the full
compiler uses. Reference counts keep "which sets exist" and "which groups and sets
each node needs" exact without rescanning (the reason for the split of the compiled
objects, docs/architecture.md#compiled-objects: one rule change writes O(1) objects).

Besides the objects, a flush reports what the operator needs around them, each
equal to what the full-cluster functions give for the same two states (property
tests): the pods whose inbound connections must be re-checked
(``clearing.plan_clearing`` of the facts before and after the flush, computed from
what the flush touched), the groups and sets whose set of nodes changed (a compiled
object is labelled with the nodes that use it, so each agent watches only its own),
and the groups whose member count changed (their status).

Pure: no I/O; the operator feeds it from its watches and writes what it returns.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from secgroups import naming, quotas
from secgroups.addresses import collapse_entries
from secgroups.compiled import (
    COMPILED_GROUP_KIND,
    COMPILED_NODE_KIND,
    COMPILED_SET_KIND,
    CompiledAddressSetSpec,
    CompiledGroupSpec,
    CompiledNodeSpec,
    CompiledPod,
    CompiledPolicy,
    CompiledRule,
    SourceKind,
)
from secgroups.compiling import (
    CompileOptions,
    Problem,
    SetSource,
    compile_group,
    compile_group_set,
    compile_ipag_set,
    compile_pod,
    compile_rule,
    default_rules,
    gc_paused,
    missing_remote_problem,
    orphan_rule_problem,
    rule_group,
    too_large_problems,
    too_many_rules_problem,
    uncompilable_group_problem,
    unknown_group_problem,
)
from secgroups.facts import ClusterFacts, NamespaceFacts, PodFacts
from secgroups.membership import (
    GroupKey,
    Memberships,
    PodKey,
    Selection,
    is_managed,
    sequence_of,
)
from secgroups.models import (
    DEFAULT_GROUP_NAME,
    Action,
    Direction,
    IPAddressGroup,
    SecurityGroup,
    SecurityGroupRule,
)

RuleKey = tuple[str, str]  # (namespace, name)
_T = TypeVar("_T")


class Kind(StrEnum):
    """The kinds of object an event can be about."""

    NAMESPACE = "Namespace"
    NODE = "Node"
    POD = "Pod"
    SECURITY_GROUP = "SecurityGroup"
    SECURITY_GROUP_RULE = "SecurityGroupRule"
    IP_ADDRESS_GROUP = "IPAddressGroup"


@dataclass(frozen=True)
class Node:
    """A cluster node, by name (ClusterFacts keeps nodes as bare names)."""

    name: str


Object = NamespaceFacts | Node | PodFacts | SecurityGroup | SecurityGroupRule | IPAddressGroup


@dataclass(frozen=True)
class Upsert:
    """An object was created or changed (a watch ADDED or MODIFIED event)."""

    obj: Object


@dataclass(frozen=True)
class Delete:
    """An object was deleted; ``namespace`` is empty for namespaces and nodes."""

    kind: Kind
    name: str
    namespace: str = ""


@dataclass(frozen=True)
class SetEpochs:
    """New ingress epochs for some pods, and new re-check counters for some compiled
    groups and address sets by name (the operator's S-CT-2 plan).

    See docs/architecture.md#existing-connections-epochs.
    """

    epochs: Mapping[PodKey, int]
    groups: Mapping[str, int] = field(default_factory=dict)
    sets: Mapping[str, int] = field(default_factory=dict)


Event = Upsert | Delete | SetEpochs


@dataclass
class Changes:
    """Compiled objects to write: name → new spec, or None to delete the object.

    The other fields say what else the flush changed (they do not take part in
    equality, which compares the objects only): ``recheck`` — the pods whose inbound
    connections must be re-checked (S-CT-2, as ``clearing.plan_clearing``), and how:
    ``recheck_groups`` and ``recheck_sets`` — whose counters go up — and
    ``recheck_direct`` — the pods whose own epoch does (``ClearingPlan``);
    ``placed_groups`` / ``placed_sets`` — compiled objects whose set of nodes changed
    (:meth:`IncrementalCompiler.nodes_of_group`); ``member_groups`` — groups whose
    member count changed; ``new_refs`` — per node, the groups and sets its object
    references now and did not before (``group/<name>``, ``set/<name>``); ``first_ips``
    — managed pods that got their first IPs (none before, or not there at all): no flow
    of theirs exists yet, so nothing of theirs waits to be re-checked; ``failed`` —
    objects that could not be built, or (None) can again
    (:meth:`IncrementalCompiler.failures`).
    """

    groups: dict[str, CompiledGroupSpec | None] = field(default_factory=dict)
    sets: dict[str, CompiledAddressSetSpec | None] = field(default_factory=dict)
    nodes: dict[str, CompiledNodeSpec | None] = field(default_factory=dict)
    recheck: set[PodKey] = field(default_factory=set, compare=False)
    recheck_groups: set[GroupKey] = field(default_factory=set, compare=False)
    recheck_sets: set[str] = field(default_factory=set, compare=False)
    recheck_direct: set[PodKey] = field(default_factory=set, compare=False)
    placed_groups: set[str] = field(default_factory=set, compare=False)
    placed_sets: set[str] = field(default_factory=set, compare=False)
    member_groups: set[GroupKey] = field(default_factory=set, compare=False)
    new_refs: dict[str, set[str]] = field(default_factory=dict, compare=False)
    first_ips: set[PodKey] = field(default_factory=set, compare=False)
    failed: dict[tuple[str, str], str | None] = field(default_factory=dict, compare=False)

    def __bool__(self) -> bool:
        return bool(self.groups or self.sets or self.nodes)

    def __len__(self) -> int:
        return len(self.groups) + len(self.sets) + len(self.nodes)

    def merge(self, later: Changes) -> None:
        """Fold ``later`` (the changes of a following event) into these."""
        self.groups.update(later.groups)
        self.sets.update(later.sets)
        self.nodes.update(later.nodes)
        self.recheck |= later.recheck
        self.recheck_groups |= later.recheck_groups
        self.recheck_sets |= later.recheck_sets
        self.recheck_direct |= later.recheck_direct
        self.placed_groups |= later.placed_groups
        self.placed_sets |= later.placed_sets
        self.member_groups |= later.member_groups
        self.first_ips |= later.first_ips
        for node, refs in later.new_refs.items():
            self.new_refs.setdefault(node, set()).update(refs)
        self.failed.update(later.failed)


@dataclass(frozen=True, slots=True)
class _EffRule:
    """An effective rule of a group, as S-CT-2 compares them (``clearing``'s rows 3-6).

    Effective: attached to a group that exists, or one of the S-D-1 rules of a
    namespace's default group that is in use and has no object.
    """

    group: GroupKey
    rule: CompiledRule
    remote_group: GroupKey | None
    remote_ipag: GroupKey | None

    @property
    def inbound(self) -> bool:
        return self.rule.direction is Direction.INGRESS

    def identity(self) -> tuple[object, ...]:
        return (self.group, self.rule.direction, self.rule.family)

    def match_fields(self) -> tuple[object, ...]:
        r = self.rule
        return (r.priority, r.action, r.protocol, r.ports, r.icmp_type, r.icmp_code, r.remote)

    def meaning(self) -> tuple[object, ...]:
        return (*self.identity(), *self.match_fields())


def _eff_rule(group: GroupKey, crule: CompiledRule, source: SetSource | None) -> _EffRule:
    remote_group = remote_ipag = None
    if source is not None:
        kind, key = source
        if kind is SourceKind.SECURITY_GROUP:
            remote_group = key
        else:
            remote_ipag = key
    return _EffRule(group, crule, remote_group, remote_ipag)


# Where a managed pod is, as S-CT-2 rows 1-2 compare it: its IPs and its node.
_Place = tuple[tuple[str, ...], str | None]


# One pod's change in a flush: key, groups before/after (None: not managed), places.
_Delta = tuple[
    PodKey, tuple[GroupKey, ...] | None, tuple[GroupKey, ...] | None, _Place | None, _Place | None
]
# One effective rule's change: id, before (None: added), after (None: deleted).
_RuleChange = tuple[str, "_EffRule | None", "_EffRule | None"]


def _entries(ipag: IPAddressGroup | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An address group's entries as collapsed CIDRs (what S-CT-2 row 6 compares)."""
    return collapse_entries(ipag.spec.addresses) if ipag is not None else ((), ())


def _added(before: tuple[str, ...], after: tuple[str, ...]) -> list[str]:
    if before is after:
        return []
    old = set(before)
    return [x for x in after if x not in old]


def _arrived(now: _Place, before: _Place | None) -> bool:
    """The member brings its group something new: an IP, or a (new) node."""
    if before is None:
        return True
    return bool(set(now[0]) - set(before[0])) or (now[1] is not None and now[1] != before[1])


def _key(namespace: str | None, name: str) -> tuple[str, str]:
    return (namespace or "default", name)


class IncrementalCompiler:
    """Cluster facts plus the indexes that let one event be compiled in O(its reach)."""

    def __init__(self, facts: ClusterFacts | None = None, options: CompileOptions | None = None):
        options = options or CompileOptions()
        self.scope = options.scope
        # --- inputs
        self._namespaces: dict[str, NamespaceFacts] = {}
        self._nodes: set[str] = set()
        self._pods: dict[PodKey, PodFacts] = {}
        self._groups: dict[GroupKey, SecurityGroup] = {}
        self._rules: dict[RuleKey, SecurityGroupRule] = {}
        self._ipags: dict[GroupKey, IPAddressGroup] = {}
        self._epochs: dict[PodKey, int] = dict(options.epochs)
        self._group_rechecks: dict[str, int] = dict(options.group_rechecks)
        self._set_rechecks: dict[str, int] = dict(options.set_rechecks)
        # --- indexes over the inputs
        self._pods_in_ns: dict[str, set[PodKey]] = defaultdict(set)
        self._groups_in_ns: dict[str, dict[str, SecurityGroup]] = defaultdict(dict)
        self._selection: dict[str, Selection] = {}
        self._enforced: set[str] = set()
        self._rules_of: dict[GroupKey, dict[RuleKey, tuple[CompiledRule, SetSource | None]]] = (
            defaultdict(dict)
        )
        # --- memberships (managed pods only)
        self._groups_of: dict[PodKey, tuple[GroupKey, ...]] = {}
        self._unknown: dict[PodKey, tuple[str, ...]] = {}
        self._members: dict[GroupKey, set[PodKey]] = defaultdict(set)
        # --- outputs and their reference counts
        self._out_groups: dict[str, CompiledGroupSpec] = {}
        self._group_sets: dict[str, frozenset[str]] = {}  # compiled group → sets it uses
        self._set_users: dict[str, set[str]] = defaultdict(set)  # set → groups using it
        self._set_source: dict[str, SetSource] = {}
        self._out_sets: dict[str, CompiledAddressSetSpec] = {}
        self._pod_place: dict[PodKey, tuple[str, CompiledPod]] = {}  # node, compiled pod
        self._node_pods: dict[str, dict[PodKey, CompiledPod]] = defaultdict(dict)
        self._node_groups: dict[str, _SortedCounts] = defaultdict(_SortedCounts)
        self._node_sets: dict[str, _SortedCounts] = defaultdict(_SortedCounts)
        self._group_nodes: dict[str, set[str]] = defaultdict(set)
        self._out_nodes: dict[str, CompiledNodeSpec] = {}
        # --- S-CT-2 bookkeeping: managed pods' places, effective rules and their indexes
        self._places: dict[PodKey, _Place] = {}  # also the IPs its groups' sets list
        self._eff_of: dict[GroupKey, dict[str, _EffRule]] = {}
        self._meanings: Counter[tuple[object, ...]] = Counter()
        self._inbound_from_group: dict[GroupKey, dict[str, _EffRule]] = defaultdict(dict)
        self._inbound_from_ipag: dict[GroupKey, dict[str, _EffRule]] = defaultdict(dict)
        self._ipag_before: dict[GroupKey, IPAddressGroup | None] = {}
        self._loading = False
        # --- dirty marks, cleared by _flush
        self._dirty_pods: set[PodKey] = set()
        self._dirty_groups: set[GroupKey] = set()
        self._dirty_sets: set[str] = set()
        self._dirty_nodes: set[str] = set()  # its object may change; and in particular:
        self._dirty_node_pods: set[str] = set()  # its pod list changed
        self._dirty_node_groups: set[str] = set()  # the groups its pods use changed
        self._dirty_node_sets: set[str] = set()  # the sets those groups use changed
        self._changes = Changes()  # what the next flush reports beside the objects
        # Objects that cannot be built (a compiled model refuses them): what was built
        # before stays, the rest of the cluster compiles on (see ``failures``).
        self._failed: dict[tuple[str, str], str] = {}
        self._node_failed: set[str] = set()
        if facts is not None:
            self._load(facts)

    # ------------------------------------------------------------------ reading

    @property
    def policy(self) -> CompiledPolicy:
        """The compiled policy, equal to ``compile_policy(self.facts(), options).policy``."""
        return CompiledPolicy(
            groups=dict(sorted(self._out_groups.items())),
            sets=dict(sorted(self._out_sets.items())),
            nodes=dict(sorted(self._out_nodes.items())),
        )

    @property
    def options(self) -> CompileOptions:
        return CompileOptions(
            scope=self.scope,
            epochs=dict(self._epochs),
            group_rechecks=dict(self._group_rechecks),
            set_rechecks=dict(self._set_rechecks),
        )

    def facts(self) -> ClusterFacts:
        """The current inputs, in a canonical order."""
        return ClusterFacts(
            namespaces=tuple(v for _, v in sorted(self._namespaces.items())),
            nodes=tuple(sorted(self._nodes)),
            pods=tuple(v for _, v in sorted(self._pods.items())),
            groups=tuple(v for _, v in sorted(self._groups.items())),
            rules=tuple(v for _, v in sorted(self._rules.items())),
            address_groups=tuple(v for _, v in sorted(self._ipags.items())),
        )

    def failures(self) -> dict[tuple[str, str], str]:
        """Objects the compiled models refused, by (kind, name): a group with more rules
        than a compiled group may hold, a set or node object over its bounds, a pod in
        more groups than a compiled pod may list. Each keeps what was compiled before
        (a pod: it is left off its node object) while the rest of the cluster compiles."""
        return dict(self._failed)

    def _build(self, kind: str, name: str, make: Callable[[], _T]) -> _T | None:
        try:
            out = make()
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            text = " ".join(str(exc).split())[:500]
            if self._failed.get((kind, name)) != text:
                self._failed[(kind, name)] = text
                self._changes.failed[(kind, name)] = text
            return None
        if self._failed.pop((kind, name), None) is not None:
            self._changes.failed[(kind, name)] = None
        return out

    def nodes_of_group(self, name: str) -> frozenset[str]:
        """Nodes whose pods use compiled group ``name`` (its node object lists it)."""
        return frozenset(self._group_nodes.get(name, ()))

    def nodes_of_set(self, name: str) -> frozenset[str]:
        """Nodes whose node object lists address set ``name``.

        Scanned (one dict lookup per node) rather than indexed: an index of sets to
        nodes costs tens of MB at 1,000 nodes, and few sets move per event.
        """
        return frozenset(n for n, sets in self._node_sets.items() if name in sets.counts)

    def member_count(self, group: GroupKey) -> int:
        """Managed pods in ``group`` (its status's member count)."""
        return len(self._members.get(group, ()))

    def group_exists(self, group: GroupKey) -> bool:
        return group in self._groups

    def ipag_exists(self, key: GroupKey) -> bool:
        return key in self._ipags

    def rules_of(self, group: GroupKey) -> dict[RuleKey, SecurityGroupRule]:
        """The rule objects attached to ``group`` (whether or not the group exists)."""
        return {k: self._rules[k] for k in self._rules_of.get(group, {})}

    def epoch(self, pod: PodKey) -> int:
        return self._epochs.get(pod, 0)

    def group_recheck(self, name: str) -> int:
        """The re-check counter of compiled group ``name``."""
        return self._group_rechecks.get(name, 0)

    def set_recheck(self, name: str) -> int:
        """The re-check counter of address set ``name``."""
        return self._set_rechecks.get(name, 0)

    def node_of(self, pod: PodKey) -> str | None:
        """The node whose object lists ``pod`` (None if it is on none)."""
        place = self._pod_place.get(pod)
        return place[0] if place is not None else None

    def group(self, key: GroupKey) -> SecurityGroup | None:
        return self._groups.get(key)

    def rule(self, key: RuleKey) -> SecurityGroupRule | None:
        return self._rules.get(key)

    def ipag(self, key: GroupKey) -> IPAddressGroup | None:
        return self._ipags.get(key)

    def pod(self, key: PodKey) -> PodFacts | None:
        return self._pods.get(key)

    def unknown_annotated(self) -> dict[PodKey, tuple[str, ...]]:
        """Managed pods whose annotation names groups that do not exist, with those names
        (fail-closed: they match nothing). Kept as pods change: a copy, cheap to take."""
        return dict(self._unknown)

    def members(self, group: GroupKey) -> frozenset[PodKey]:
        return frozenset(self._members.get(group, ()))

    def set_users(self, name: str) -> frozenset[str]:
        """Compiled groups whose rules use address set ``name``."""
        return frozenset(self._set_users.get(name, ()))

    def pods_on(self, node: str) -> frozenset[PodKey]:
        return frozenset(self._node_pods.get(node, ()))

    def group_keys(self) -> list[GroupKey]:
        return list(self._groups)

    def rule_keys(self) -> list[RuleKey]:
        return list(self._rules)

    def ipag_keys(self) -> list[GroupKey]:
        return list(self._ipags)

    def compiled(
        self,
    ) -> tuple[
        dict[str, CompiledGroupSpec], dict[str, CompiledAddressSetSpec], dict[str, CompiledNodeSpec]
    ]:
        """Every compiled group, set and node object now (the compiler's own dicts: read
        them, do not keep them across events)."""
        return self._out_groups, self._out_sets, self._out_nodes

    def nodes_of_every_set(self) -> dict[str, set[str]]:
        """:meth:`nodes_of_set` of every set at once (one pass over the nodes)."""
        out: defaultdict[str, set[str]] = defaultdict(set)  # no new set per pair
        for node, counts in self._node_sets.items():
            for name in counts.counts:
                out[name].add(node)
        return out

    def compiled_group(self, name: str) -> CompiledGroupSpec | None:
        return self._out_groups.get(name)

    def compiled_set(self, name: str) -> CompiledAddressSetSpec | None:
        return self._out_sets.get(name)

    def compiled_node(self, name: str) -> CompiledNodeSpec | None:
        return self._out_nodes.get(name)

    def load(self, events: Iterable[Event]) -> Changes:
        """Apply the first batch (the initial lists): like :meth:`apply_all`, with the
        collector paused and no S-CT-2 plan (there is no earlier state to compare).
        After :meth:`preload`, what it returns includes what the preloads did."""
        self._loading = True
        try:
            with gc_paused():
                return self.apply_all(events)
        finally:
            self._loading = False

    def preload(self, events: Iterable[Event]) -> None:
        """Apply part of the initial lists while the rest is still coming, before
        :meth:`load`: the inputs, the pods' memberships and places, the effective rules
        and the compiled groups are brought up to date; the address sets and node
        objects, which every later pod changes again, wait for :meth:`load`. Any split
        of the lists into preloads and a load compiles what one load of all of them
        does (a property in ``tests/unit/test_properties.py``)."""
        self._loading = True  # load() ends it
        with gc_paused():
            self._dispatch(events)
            self._flush(partial=True)

    def memberships(self) -> Memberships:
        keys = sorted(self._groups_of)
        return Memberships(
            pods={k: self._pods[k] for k in keys},
            groups_of={k: self._groups_of[k] for k in keys},
            unknown_annotated=dict(sorted(self._unknown.items())),
        )

    def problems(self) -> tuple[Problem, ...]:
        """The problems ``compile_policy`` reports for the same facts (computed on demand)."""
        out = [unknown_group_problem(p, missing) for p, missing in self._unknown.items()]
        out.extend(
            orphan_rule_problem(r)
            for r in self._rules.values()
            if rule_group(r) not in self._groups
        )
        for source in self._set_source.values():
            kind, key = source
            if kind is SourceKind.SECURITY_GROUP:
                if key not in self._groups and key[1] != DEFAULT_GROUP_NAME:
                    out.append(missing_remote_problem(source))
            elif key not in self._ipags:
                out.append(missing_remote_problem(source))
        # Groups in use with too many rules, or that the models refuse: as compile_policy
        # reports them (a missing default group is synthesized, its rules ignored).
        held: list[GroupKey] = []  # their last compiled form (if any) is not measured
        for group, pods in self._members.items():
            if not pods or (group not in self._groups and group[1] == DEFAULT_GROUP_NAME):
                continue
            count = len(self._rules_of.get(group, ()))
            failed = self._failed.get((COMPILED_GROUP_KIND, naming.compiled_group_name(*group)))
            if failed is not None:
                out.append(uncompilable_group_problem(group, count, ValueError(failed)))
                held.append(group)
            elif count > quotas.MAX_RULES_PER_GROUP:
                out.append(too_many_rules_problem(group, count))
                held.append(group)
        # Compiled groups and sets too large to publish, as compile_policy measures them.
        out.extend(too_large_problems(self._out_groups.values(), self._out_sets.values(), held))
        return tuple(sorted(set(out)))

    # ------------------------------------------------------------------ events

    def apply(self, event: Event) -> Changes:
        """Apply one event; return the compiled objects it changed."""
        if isinstance(event, SetEpochs):
            self._set_epochs(event)
        elif isinstance(event, Delete):
            self._delete(event)
        else:
            self._upsert(event.obj)
        return self._flush()

    def apply_all(self, events: Iterable[Event]) -> Changes:
        """Apply several events and flush once (e.g. a batch of watch events)."""
        self._dispatch(events)
        return self._flush()

    def _dispatch(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, SetEpochs):
                self._set_epochs(event)
            elif isinstance(event, Delete):
                self._delete(event)
            else:
                self._upsert(event.obj)

    def upsert(self, obj: Object) -> Changes:
        return self.apply(Upsert(obj))

    def delete(self, kind: Kind, name: str, namespace: str = "") -> Changes:
        return self.apply(Delete(kind, name, namespace))

    def set_epochs(self, epochs: Mapping[PodKey, int]) -> Changes:
        return self.apply(SetEpochs(epochs))

    # ------------------------------------------------------------------ input bookkeeping

    def _load(self, facts: ClusterFacts) -> None:
        self._loading = True  # nothing to compare with: no S-CT-2 plan for the first build
        with gc_paused():  # see compiling.gc_paused: the first build is a full compile
            for ns in facts.namespaces:
                self._put_namespace(ns)
            for node in facts.nodes:
                self._put_node(node)
            for g in facts.groups:
                self._put_group(g)
            for r in facts.rules:
                self._put_rule(r)
            for a in facts.address_groups:
                self._put_ipag(a)
            for p in facts.pods:
                self._put_pod(p)
            self._flush()
        self._loading = False

    def _upsert(self, obj: Object) -> None:
        if isinstance(obj, PodFacts):
            self._put_pod(obj)
        elif isinstance(obj, SecurityGroupRule):
            self._put_rule(obj)
        elif isinstance(obj, SecurityGroup):
            self._put_group(obj)
        elif isinstance(obj, IPAddressGroup):
            self._put_ipag(obj)
        elif isinstance(obj, NamespaceFacts):
            self._put_namespace(obj)
        else:
            self._put_node(obj.name)

    def _delete(self, event: Delete) -> None:
        kind, name = event.kind, event.name
        if kind is Kind.POD:
            self._drop_pod(_key(event.namespace, name))
        elif kind is Kind.SECURITY_GROUP_RULE:
            self._drop_rule(_key(event.namespace, name))
        elif kind is Kind.SECURITY_GROUP:
            self._drop_group(_key(event.namespace, name))
        elif kind is Kind.IP_ADDRESS_GROUP:
            self._drop_ipag(_key(event.namespace, name))
        elif kind is Kind.NAMESPACE:
            self._drop_namespace(name)
        else:
            self._nodes.discard(name)
            self._dirty_nodes.add(name)

    def _put_pod(self, pod: PodFacts) -> None:
        key = pod.key  # one tuple for every index that keeps it (a new one per call)
        if self._pods.get(key) == pod:
            # Nothing the compiler reads changed: a kubelet's status write (readiness,
            # conditions, restarts) that left IPs, node, phase, labels and annotation as
            # they were. Everything the pod's entry depends on besides its facts marks it
            # dirty where that changes, so its compiled form is what it would be again.
            return
        self._pods[key] = pod
        self._pods_in_ns[pod.namespace].add(key)
        self._dirty_pods.add(key)

    def _drop_pod(self, key: PodKey) -> None:
        if self._pods.pop(key, None) is not None:
            self._pods_in_ns[key[0]].discard(key)
            self._dirty_pods.add(key)

    def _put_namespace(self, ns: NamespaceFacts) -> None:
        self._namespaces[ns.name] = ns
        self._set_enforced(ns.name, ns.labels.get(self.scope.key) == self.scope.value)

    def _drop_namespace(self, name: str) -> None:
        if self._namespaces.pop(name, None) is not None:
            self._set_enforced(name, False)

    def _set_enforced(self, name: str, enforced: bool) -> None:
        if enforced != (name in self._enforced):
            if enforced:
                self._enforced.add(name)
            else:
                self._enforced.discard(name)
            self._dirty_pods.update(self._pods_in_ns.get(name, ()))

    def _put_node(self, name: str) -> None:
        self._nodes.add(name)
        self._dirty_nodes.add(name)

    def _put_group(self, group: SecurityGroup) -> None:
        key = _key(group.metadata.namespace, group.metadata.name)
        old = self._groups.get(key)
        self._groups[key] = group
        self._groups_in_ns[key[0]][key[1]] = group
        if old is None:
            self._dirty_groups.add(key)  # its rules take effect (or replace S-D-1's)
        if old is None or (old.spec.pod_selector, old.spec.sequence) != (
            group.spec.pod_selector,
            group.spec.sequence,
        ):
            self._selection[key[0]] = Selection(key[0], self._groups_in_ns[key[0]].values())
            self._dirty_pods.update(self._pods_in_ns.get(key[0], ()))

    def _drop_group(self, key: GroupKey) -> None:
        if self._groups.pop(key, None) is None:
            return
        del self._groups_in_ns[key[0]][key[1]]
        self._selection[key[0]] = Selection(key[0], self._groups_in_ns[key[0]].values())
        self._dirty_groups.add(key)
        self._dirty_pods.update(self._pods_in_ns.get(key[0], ()))

    def _put_rule(self, rule: SecurityGroupRule) -> None:
        key = _key(rule.metadata.namespace, rule.metadata.name)
        self._drop_rule(key)
        self._rules[key] = rule
        group = rule_group(rule)
        self._rules_of[group][key] = compile_rule(rule)
        self._dirty_groups.add(group)

    def _drop_rule(self, key: RuleKey) -> None:
        old = self._rules.pop(key, None)
        if old is not None:
            group = rule_group(old)
            del self._rules_of[group][key]
            self._dirty_groups.add(group)

    def _put_ipag(self, ipag: IPAddressGroup) -> None:
        key = _key(ipag.metadata.namespace, ipag.metadata.name)
        self._ipag_before.setdefault(key, self._ipags.get(key))
        self._ipags[key] = ipag
        self._dirty_sets.add(naming.ipag_set_name(*key))

    def _drop_ipag(self, key: GroupKey) -> None:
        if key in self._ipags:
            self._ipag_before.setdefault(key, self._ipags[key])
            del self._ipags[key]
            self._dirty_sets.add(naming.ipag_set_name(*key))

    def _set_epochs(self, event: SetEpochs) -> None:
        for pod, epoch in event.epochs.items():
            self._epochs[pod] = epoch
            self._dirty_pods.add(pod)
        for name, n in event.groups.items():
            self._group_rechecks[name] = n
            spec = self._out_groups.get(name)
            if spec is not None:  # in use; else it takes its counter when it is again
                self._dirty_groups.add((spec.group.namespace, spec.group.name))
        for name, n in event.sets.items():
            self._set_rechecks[name] = n
            self._dirty_sets.add(name)

    # ------------------------------------------------------------------ recompilation

    def _flush(self, *, partial: bool = False) -> Changes:
        """Recompile what the events since the last flush made dirty, and return it.
        ``partial`` (:meth:`preload` only): up to the compiled groups; what it found
        stays in ``_changes`` for the next flush to return."""
        changes = self._changes
        deltas: list[_Delta] = []
        for pod in sorted(self._dirty_pods):
            self._refresh_pod(pod, deltas)
        self._dirty_pods.clear()
        rules, had = self._refresh_effective_rules(sorted(self._dirty_groups))
        for group in sorted(self._dirty_groups):
            self._refresh_group(group, changes)
        self._dirty_groups.clear()
        if partial:
            assert self._loading, "a partial flush has no S-CT-2 plan: loading only"
            return changes
        if not self._loading:
            self._plan(deltas, rules, had, changes)
        self._ipag_before.clear()
        for name in sorted(self._dirty_sets):
            self._refresh_set(name, changes)
        self._dirty_sets.clear()
        for node in sorted(self._dirty_nodes):
            self._refresh_node(node, changes)
        self._dirty_nodes.clear()
        self._dirty_node_pods.clear()
        self._dirty_node_groups.clear()
        self._dirty_node_sets.clear()
        self._changes = Changes()
        return changes

    # ------------------------------------------------------------------ S-CT-2

    def _effective(self, group: GroupKey) -> dict[str, _EffRule]:
        """The group's effective rules by id (see :class:`_EffRule`)."""
        if group in self._groups:
            return {
                crule.id: _eff_rule(group, crule, source)
                for crule, source in self._rules_of.get(group, {}).values()
            }
        if group[1] == DEFAULT_GROUP_NAME and self._members.get(group):
            own: SetSource = (SourceKind.SECURITY_GROUP, group)
            return {
                crule.id: _eff_rule(group, crule, own if crule.remote.set else None)
                for crule in default_rules(group[0])
            }
        return {}

    def _refresh_effective_rules(
        self, groups: Iterable[GroupKey]
    ) -> tuple[list[_RuleChange], dict[tuple[object, ...], bool]]:
        """Bring the effective rules of ``groups`` up to date.

        Returns the rules that changed, by id (a rule that moved between groups is one
        change), and, for the meaning of every new rule, whether some effective rule
        had that meaning before.
        """
        old_by_id: dict[str, _EffRule] = {}
        new_by_id: dict[str, _EffRule] = {}
        for group in groups:
            old = self._eff_of.get(group, {})
            new = self._effective(group)
            if old == new:
                continue
            old_by_id.update(old)
            new_by_id.update(new)
            if new:
                self._eff_of[group] = new
            else:
                self._eff_of.pop(group, None)
        changed = [
            (rid, old_by_id.get(rid), new_by_id.get(rid))
            for rid in sorted(old_by_id.keys() | new_by_id.keys())
            if old_by_id.get(rid) != new_by_id.get(rid)
        ]
        had = {n.meaning(): self._meanings[n.meaning()] > 0 for _, _, n in changed if n}
        for rid, o, n in changed:
            if o is not None:
                m = o.meaning()
                self._meanings[m] -= 1
                if not self._meanings[m]:
                    del self._meanings[m]
                self._index_inbound(rid, o, remove=True)
            if n is not None:
                self._meanings[n.meaning()] += 1
                self._index_inbound(rid, n, remove=False)
        return changed, had

    def _index_inbound(self, rid: str, rule: _EffRule, *, remove: bool) -> None:
        if not rule.inbound:
            return
        for index, remote in (
            (self._inbound_from_group, rule.remote_group),
            (self._inbound_from_ipag, rule.remote_ipag),
        ):
            if remote is None:
                continue
            if remove:
                users = index[remote]
                users.pop(rid, None)
                if not users:
                    del index[remote]
            else:
                index[remote][rid] = rule

    def _plan(
        self,
        deltas: list[_Delta],
        rules: list[_RuleChange],
        had: Mapping[tuple[object, ...], bool],
        changes: Changes,
    ) -> None:
        """The S-CT-2 plan of this flush (``clearing.plan_clearing``'s rows and carriers,
        by delta)."""
        recheck, direct = changes.recheck, changes.recheck_direct
        left: dict[GroupKey, set[PodKey]] = defaultdict(set)
        added: dict[GroupKey, set[PodKey]] = defaultdict(set)
        removed: dict[GroupKey, set[PodKey]] = defaultdict(set)
        for pod, old_groups, new_groups, old_place, new_place in deltas:
            before, after = old_groups or (), new_groups or ()
            if new_place is not None and new_place[0] and (old_place is None or not old_place[0]):
                changes.first_ips.add(pod)
            for g in before:
                assert old_place is not None
                if g not in after:
                    left[g].add(pod)
                    removed[g].add(pod)
                elif new_place is not None and set(old_place[0]) - set(new_place[0]):
                    removed[g].add(pod)  # it lost an IP
            for g in after:
                assert new_place is not None
                if _arrived(new_place, old_place if g in before else None):
                    added[g].add(pod)
            # A pod in no group at all (its annotation names only missing groups) is
            # denied everything: re-checked when it arrives as a member would be.
            if new_groups == () and new_place is not None:
                before_place = old_place if old_groups is not None else None
                if _arrived(new_place, before_place):
                    recheck.add(pod)
                    direct.add(pod)
            # Same groups in another order: S-X-1 makes the order decide verdicts.
            same_set = old_groups and new_groups and set(old_groups) == set(new_groups)
            if same_set and old_groups != new_groups:
                recheck.add(pod)
                direct.add(pod)

        def reach(group: GroupKey) -> None:
            recheck.update(self._members.get(group, ()))
            recheck.update(left.get(group, ()))
            direct.update(left.get(group, ()))  # a counter of the group no longer reaches them

        def recheck_group(group: GroupKey) -> None:
            reach(group)
            if self._members.get(group):
                changes.recheck_groups.add(group)

        def recheck_users(group: GroupKey, named: GroupKey) -> None:
            reach(group)
            if self._members.get(group):
                changes.recheck_sets.add(naming.sg_set_name(*named))

        # Rows 1 and 2: membership, judged by the inbound rules in force now.
        for g in sorted(added.keys() | removed.keys()):
            users = self._inbound_from_group.get(g, {}).values()
            if added.get(g):
                recheck |= added[g]
                direct |= added[g]
                for r in users:
                    if r.rule.action is Action.DENY:
                        recheck_users(r.group, g)
            if removed.get(g):
                recheck_group(g)
                for r in users:
                    if r.rule.action is Action.ALLOW:
                        recheck_users(r.group, g)

        # Rows 3, 4 and 5: rules, by meaning (a rename or a duplicate changes nothing).
        def rule_added(n: _EffRule) -> None:
            if n.rule.action is Action.DENY and not had[n.meaning()]:
                recheck_group(n.group)

        def rule_deleted(o: _EffRule) -> None:
            if o.inbound and o.rule.action is Action.ALLOW and not self._meanings.get(o.meaning()):
                recheck_group(o.group)

        for _, o, n in rules:
            if o is None:
                if n is not None:
                    rule_added(n)
            elif n is None:
                rule_deleted(o)
            elif o.identity() != n.identity():
                rule_deleted(o)
                rule_added(n)
            elif n.inbound and o.match_fields() != n.match_fields():
                recheck_group(n.group)

        # Row 6: entries of an IP address group that an inbound rule uses.
        for key, before_ipag in sorted(self._ipag_before.items()):
            users_of = {r.group for r in self._inbound_from_ipag.get(key, {}).values()}
            users_of |= {
                o.group for _, o, _ in rules if o is not None and o.inbound and o.remote_ipag == key
            }
            if users_of and _entries(before_ipag) != _entries(self._ipags.get(key)):
                for g in users_of:
                    recheck_group(g)

    # ------------------------------------------------------------------ recompilation

    def _refresh_pod(self, key: PodKey, deltas: list[_Delta]) -> None:
        """Recompute one pod's memberships and its entry in its node object."""
        pod = self._pods.get(key)
        old_groups = self._groups_of.get(key, ())
        old_place = self._places.get(key)
        old_ips = old_place[0] if old_place is not None else ()
        was_managed = key in self._groups_of
        new_groups: tuple[GroupKey, ...] = ()
        new_ips: tuple[str, ...] = ()
        new_place: _Place | None = None
        cpod: CompiledPod | None = None
        self._unknown.pop(key, None)
        if pod is not None and is_managed(pod, self._enforced):
            where = self._selection.get(pod.namespace)
            selected = where.selected(pod.labels) if where is not None else ()
            new_groups, missing = sequence_of(pod, self._groups, selected)
            new_ips = pod.ips
            if missing:
                self._unknown[key] = missing
            epoch = self._epochs.get(key, 0)
            cpod = self._build(
                "Pod", f"{key[0]}/{key[1]}", lambda: compile_pod(pod, new_groups, epoch)
            )
            self._groups_of[key] = new_groups
            new_place = (pod.ips, pod.node)
            self._places[key] = new_place
        else:
            self._groups_of.pop(key, None)
            self._places.pop(key, None)
        if (old_groups, old_place) != (new_groups, new_place):
            deltas.append(
                (
                    key,
                    old_groups if was_managed else None,
                    new_groups if new_place is not None else None,
                    old_place,
                    new_place,
                )
            )

        before, after = set(old_groups), set(new_groups)
        for g in before - after:
            members = self._members[g]
            members.discard(key)
            if not members:
                del self._members[g]
                self._dirty_groups.add(g)  # no longer in use
        for g in after - before:
            if not self._members[g]:
                self._dirty_groups.add(g)  # newly in use
            self._members[g].add(key)
        self._changes.member_groups |= before ^ after
        touched = before ^ after if old_ips == new_ips else before | after
        self._dirty_sets.update(naming.sg_set_name(*g) for g in touched)
        self._place_pod(key, cpod)

    def _place_pod(self, key: PodKey, cpod: CompiledPod | None) -> None:
        old = self._pod_place.get(key)
        pod = self._pods.get(key)
        node = pod.node if pod is not None else None
        if old is not None and cpod is not None and old == (node, cpod):
            return
        if old is not None and cpod is not None and old[0] == node and old[1].groups == cpod.groups:
            # Same node, same groups (an epoch bump, a new IP): the node's group and set
            # counts stay; only its pod entry changes (a re-check bumps every pod of a
            # group: counting each pod's groups out and in again was most of it).
            self._node_pods[node][key] = cpod
            self._dirty_nodes.add(node)
            self._dirty_node_pods.add(node)
            self._pod_place[key] = (node, cpod)
            return
        if old is not None:
            old_node, old_cpod = old
            del self._node_pods[old_node][key]
            self._count_groups(old_node, old_cpod.groups, -1)
            self._dirty_nodes.add(old_node)
            self._dirty_node_pods.add(old_node)
            del self._pod_place[key]
        if cpod is not None and node is not None:
            self._node_pods[node][key] = cpod
            self._count_groups(node, cpod.groups, +1)
            self._dirty_nodes.add(node)
            self._dirty_node_pods.add(node)
            self._pod_place[key] = (node, cpod)

    def _count_groups(self, node: str, groups: Iterable[str], delta: int) -> None:
        node_groups, node_sets = self._node_groups[node], self._node_sets[node]
        for g in groups:
            if delta > 0 and node_groups.add_one(g):  # the group appears on the node
                self._group_nodes[g].add(node)
                self._changes.placed_groups.add(g)
                self._dirty_node_groups.add(node)
                self._place_sets(node, node_sets.add(self._group_sets.get(g, ())))
            elif delta < 0 and node_groups.remove_one(g):  # the group leaves the node
                nodes = self._group_nodes[g]
                nodes.discard(node)
                if not nodes:
                    del self._group_nodes[g]
                self._changes.placed_groups.add(g)
                self._dirty_node_groups.add(node)
                self._place_sets(node, node_sets.remove(self._group_sets.get(g, ())))

    def _place_sets(self, node: str, names: list[str]) -> None:
        """Sets that appeared on or left ``node``'s list."""
        if not names:
            return
        self._dirty_node_sets.add(node)
        self._dirty_nodes.add(node)
        self._changes.placed_sets.update(names)

    def _refresh_group(self, key: GroupKey, changes: Changes) -> None:
        """Recompile one group if it is in use (has members); delete it if not."""
        gname = naming.compiled_group_name(*key)
        old_spec = self._out_groups.get(gname)
        old_sets = self._group_sets.get(gname, frozenset())
        if self._members.get(key):
            rules = None
            if key in self._groups or key[1] != DEFAULT_GROUP_NAME:
                rules = self._rules_of.get(key, {}).values()
            recheck = self._group_rechecks.get(gname, 0)
            built = self._build(
                COMPILED_GROUP_KIND, gname, lambda: compile_group(key, rules, recheck)
            )
            if built is None:  # cannot be compiled: what was compiled before stays
                return
            spec, sources = built
            new_sets = frozenset(sources)
            self._set_source.update(sources)
            if spec != old_spec:
                self._out_groups[gname] = spec
                changes.groups[gname] = spec
        else:
            new_sets = frozenset()
            self._build(COMPILED_GROUP_KIND, gname, lambda: None)  # clears a failure
            if old_spec is not None:
                del self._out_groups[gname]
                changes.groups[gname] = None
        if new_sets == old_sets:
            return
        if new_sets:
            self._group_sets[gname] = new_sets
        else:
            self._group_sets.pop(gname, None)
        for s in old_sets - new_sets:
            self._set_users[s].discard(gname)
            self._dirty_sets.add(s)
        for s in new_sets - old_sets:
            self._set_users[s].add(gname)
            self._dirty_sets.add(s)
        for node in sorted(self._group_nodes.get(gname, ())):
            node_sets = self._node_sets[node]
            self._place_sets(node, node_sets.remove(old_sets - new_sets))
            self._place_sets(node, node_sets.add(new_sets - old_sets))

    def _refresh_set(self, name: str, changes: Changes) -> None:
        old = self._out_sets.get(name)
        if not self._set_users.get(name):
            self._set_users.pop(name, None)
            self._set_source.pop(name, None)
            self._build(COMPILED_SET_KIND, name, lambda: None)  # clears a failure
            if old is not None:
                del self._out_sets[name]
                changes.sets[name] = None
            return
        kind, key = self._set_source[name]
        recheck = self._set_rechecks.get(name, 0)
        spec: CompiledAddressSetSpec | None
        if kind is SourceKind.SECURITY_GROUP:
            ips = [ip for pod in self._members.get(key, ()) for ip in self._places[pod][0]]
            spec = self._build(
                COMPILED_SET_KIND, name, lambda: compile_group_set(key, ips, recheck)
            )
        else:
            ipag = self._ipags.get(key)
            spec = self._build(
                COMPILED_SET_KIND, name, lambda: compile_ipag_set(key, ipag, recheck)
            )
        if spec is not None and spec != old:
            self._out_sets[name] = spec
            changes.sets[name] = spec

    def _refresh_node(self, node: str, changes: Changes) -> None:
        old = self._out_nodes.get(node)
        pods = self._node_pods.get(node)
        if not pods and node not in self._nodes:
            self._node_pods.pop(node, None)
            self._node_groups.pop(node, None)
            self._node_sets.pop(node, None)
            if old is not None:
                del self._out_nodes[node]
                changes.nodes[node] = None
            return
        # Re-sort only what moved: a rule change that adds a remote touches every node
        # of the group, but only their set lists (hundreds of names, a hundred pods).
        if node in self._node_failed:
            old = None  # the last compile of this node failed: build it all again
        if old is None or node in self._dirty_node_pods:
            ordered = tuple(v for _, v in sorted((pods or {}).items()))
        else:
            ordered = old.pods
        if old is None or node in self._dirty_node_groups:
            group_names = tuple(self._node_groups[node].names)
        else:
            group_names = old.groups
        if old is None or node in self._dirty_node_sets:
            set_names = tuple(self._node_sets[node].names)
        else:
            set_names = old.sets
        spec = self._build(
            COMPILED_NODE_KIND,
            node,
            lambda: CompiledNodeSpec(node=node, pods=ordered, groups=group_names, sets=set_names),
        )
        if spec is None:
            self._node_failed.add(node)
            return
        self._node_failed.discard(node)
        old = self._out_nodes.get(node)
        if spec != old:
            self._out_nodes[node] = spec
            changes.nodes[node] = spec
            # interned (naming): the operator keeps them per node (``requires``)
            added = list(map(naming.group_ref, _added(old.groups if old else (), group_names)))
            added += map(naming.set_ref, _added(old.sets if old else (), set_names))
            if added:
                changes.new_refs.setdefault(node, set()).update(added)


class _SortedCounts:
    """A multiset of names that keeps its distinct names sorted: a node's groups or sets.

    ``add`` and ``remove`` return the names that appeared or went (empty when the
    distinct names did not change); ``names`` is sorted when read. One name appearing
    is inserted in place (bisect), so a node object never re-sorts hundreds of set
    names when one rule adds a remote; several at once (a group's sets placed on a
    node: half a million names in a build at 1,000 nodes, where inserting each was a
    fifth of the build) are appended and sorted once, when ``names`` is next read.
    """

    __slots__ = ("_names", "_sorted", "counts")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._names: list[str] = []
        self._sorted = True

    @property
    def names(self) -> list[str]:
        if not self._sorted:
            self._names.sort()
            self._sorted = True
        return self._names

    def add(self, items: Iterable[str]) -> list[str]:
        # add_one's count, inlined: the build's hottest loop (a call per name showed)
        counts = self.counts
        appeared = []
        for item in items:
            n = counts.get(item, 0)
            counts[item] = n + 1
            if not n:
                appeared.append(item)
        if len(appeared) == 1 and self._sorted:
            bisect.insort(self._names, appeared[0])
        elif appeared:
            self._names.extend(appeared)
            self._sorted = False
        return appeared

    def remove(self, items: Iterable[str]) -> list[str]:
        return [item for item in items if self.remove_one(item)]

    def add_one(self, item: str) -> bool:
        """Count ``item`` once more; True when it appeared."""
        counts = self.counts
        n = counts.get(item, 0)
        counts[item] = n + 1
        if n:
            return False
        if self._sorted:
            bisect.insort(self._names, item)
        else:
            self._names.append(item)
        return True

    def remove_one(self, item: str) -> bool:
        """Count ``item`` once less; True when it went."""
        counts = self.counts
        n = counts[item] - 1
        if n:
            counts[item] = n
            return False
        del counts[item]
        names = self.names
        del names[bisect.bisect_left(names, item)]
        return True
