"""The operator's validating admission webhook: HTTPS, one path, every replica.

The API server sends ``AdmissionReview`` (v1) requests for our three kinds (and, if the
configuration asks, Pods) to ``POST /validate``; this shell reads the few objects the
request needs — field-selected lists, so no cache: a standby replica answers the same
as the leader — and returns the core's decision (``secgroups.admitting``): refusals
with a message naming the group, the limit and the users; warnings (S-L-3, near the
S-L-1 quota, a pod naming a missing group) as admission warnings. A failed lookup
answers HTTP 500, so the configuration's ``failurePolicy`` decides (docs/admission.md).

TLS, in this order of preference:

1. files in ``--webhook-cert-dir`` (``tls.crt``, ``tls.key``; a Secret cert-manager
   fills, mounted), re-read when they change; the CA is injected by cert-manager;
2. the Secret ``--webhook-secret``: read if it holds a certificate for our names,
   else a CA and a serving certificate are made (``webhookcerts``) and stored there,
   so every replica serves the same; then the CA goes into the ``caBundle`` of
   ``--webhook-configuration``, re-checked every minute (an upgrade may reset it);
3. neither: made in memory at start (one replica only).

``--webhook-url`` (development, the lab): the API server calls that URL (the lab's API
server runs in its own network namespace and reaches the operator on the root-netns
end of its link); the certificate names the URL's host, and the operator writes the
whole ValidatingWebhookConfiguration itself, since no chart made one.

Neighbours: ``secgroups.admitting`` (decisions), ``webhookcerts`` (certificates),
``main`` (flags, task), ``secgroups_kube`` (the API).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from secgroups import admitting
from secgroups.admitting import Decision
from secgroups.facts import ClusterFacts, NamespaceFacts, PodFacts
from secgroups.membership import GroupKey, Scope
from secgroups.models import (
    GROUP,
    IPAddressGroup,
    SecurityGroup,
    SecurityGroupRule,
    parse_resource,
)
from secgroups_kube import ApiError, TransportError
from secgroups_operator import mutating, webhookcerts
from secgroups_operator.webhookcerts import Bundle

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/validate"
DEFAULT_PORT = 9443
DEFAULT_CERT_DIR = Path("/var/run/secgroups/webhook-tls")
MANAGED_BY = {"app.kubernetes.io/managed-by": "secgroups-operator"}
# Webhook names in a configuration the operator writes (--webhook-url); the chart names
# its own. The API server quotes the name in every refusal.
OBJECTS_WEBHOOK = "validate.secgroups.dev"
PODS_WEBHOOK = "pods.secgroups.dev"
MAINTAIN_S = 60.0
LIST_LIMIT = 500


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class WebhookSettings:
    """Where to listen, which names to serve, where the certificate and CA go."""

    port: int = DEFAULT_PORT
    address: str = "0.0.0.0"
    service: tuple[str, str] | None = None  # (namespace, name)
    url: str | None = None
    secret: tuple[str, str] | None = None  # (namespace, name)
    configuration: str | None = None
    cert_dir: Path = DEFAULT_CERT_DIR
    failure_policy: str = "Fail"
    pod_failure_policy: str = "Ignore"
    timeout_s: int = 10
    # The readiness gate's MutatingWebhookConfiguration (``mutating``, docs/cni.md).
    mutating_configuration: str | None = None
    gate_failure_policy: str = "Ignore"

    def hosts(self) -> list[str]:
        """The names (or IPs) the API server calls us by; the certificate must name them."""
        out: list[str] = []
        if self.url:
            host = urlsplit(self.url).hostname
            if host:
                out.append(host)
        if self.service:
            out += webhookcerts.service_hosts(*self.service)
        return out or ["localhost"]

    def client_config(self, ca: bytes | None) -> dict[str, Any]:
        """``clientConfig`` of the webhooks in a configuration the operator writes."""
        import base64

        conf: dict[str, Any]
        if self.url:
            conf = {"url": self.url.rstrip("/") + WEBHOOK_PATH}
        else:
            assert self.service is not None
            ns, name = self.service
            conf = {"service": {"namespace": ns, "name": name, "path": WEBHOOK_PATH, "port": 443}}
        if ca:
            conf["caBundle"] = base64.b64encode(ca).decode()
        return conf


def _ns_name(text: str, flag: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name:
        raise argparse.ArgumentTypeError(f"{flag} wants NAMESPACE/NAME, got {text!r}")
    return ns, name


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--webhook-*`` flags of ``secgroups-operator`` (docs/admission.md)."""
    g = p.add_argument_group("admission webhook (docs/admission.md)")
    g.add_argument("--no-webhook", action="store_true", help="serve no admission webhook")
    g.add_argument(
        "--webhook-port", type=int, default=DEFAULT_PORT, help="HTTPS port (default %(default)s)"
    )
    g.add_argument(
        "--webhook-address", default="0.0.0.0", help="address to listen on (default %(default)s)"
    )
    g.add_argument(
        "--webhook-service",
        metavar="NS/NAME",
        help="the Service the API server calls (the certificate names NAME.NS.svc)",
    )
    g.add_argument(
        "--webhook-url",
        metavar="URL",
        help="development and the lab: the API server calls URL (https://HOST:PORT); the "
        "operator then writes the whole --webhook-configuration itself",
    )
    g.add_argument(
        "--webhook-secret",
        metavar="NS/NAME",
        help="Secret holding the serving certificate and its CA (made here if absent, "
        "shared by every replica)",
    )
    g.add_argument(
        "--webhook-configuration",
        metavar="NAME",
        help="ValidatingWebhookConfiguration whose caBundle the operator keeps current",
    )
    g.add_argument(
        "--webhook-cert-dir",
        type=Path,
        default=DEFAULT_CERT_DIR,
        help="tls.crt and tls.key mounted from a cert-manager Secret; used when present "
        "(default %(default)s)",
    )
    g.add_argument(
        "--webhook-failure-policy",
        choices=("Fail", "Ignore"),
        default="Fail",
        help="with --webhook-url: failurePolicy for our kinds (default %(default)s)",
    )
    g.add_argument(
        "--webhook-pod-failure-policy",
        choices=("Fail", "Ignore"),
        default="Ignore",
        help="with --webhook-url: failurePolicy for Pods (default %(default)s)",
    )
    g.add_argument(
        "--webhook-mutating-configuration",
        metavar="NAME",
        help="MutatingWebhookConfiguration of the readiness gate (POST /mutate, docs/cni.md) "
        "whose caBundle the operator keeps current; with --webhook-url written whole",
    )
    g.add_argument(
        "--webhook-gate-failure-policy",
        choices=("Fail", "Ignore"),
        default="Ignore",
        help="with --webhook-url: failurePolicy of the readiness gate (default %(default)s)",
    )
    g.add_argument(
        "--webhook-only",
        action="store_true",
        help="serve admission only: no watches, no reconciling (tests; a webhook apart "
        "from the reconciler)",
    )


def settings_from_args(args: argparse.Namespace) -> WebhookSettings | None:
    """The webhook's settings, or None when it is off.

    Off with ``--no-webhook``, and when nothing says how the API server reaches us (no
    ``--webhook-service`` or ``--webhook-url``): then there is nobody to serve, and a
    lab running several operators on one machine does not fight over the port.
    """
    if args.no_webhook or not (args.webhook_service or args.webhook_url):
        return None
    if args.webhook_url and urlsplit(args.webhook_url).scheme != "https":
        raise SystemExit("--webhook-url must be an https:// URL (the API server insists)")
    return WebhookSettings(
        port=args.webhook_port,
        address=args.webhook_address,
        service=_ns_name(args.webhook_service, "--webhook-service")
        if args.webhook_service
        else None,
        url=args.webhook_url,
        secret=_ns_name(args.webhook_secret, "--webhook-secret") if args.webhook_secret else None,
        configuration=args.webhook_configuration,
        cert_dir=args.webhook_cert_dir,
        failure_policy=args.webhook_failure_policy,
        pod_failure_policy=args.webhook_pod_failure_policy,
        mutating_configuration=args.webhook_mutating_configuration,
        gate_failure_policy=args.webhook_gate_failure_policy,
    )


# ----------------------------------------------------------------------------- the API


class AdmissionApi(Protocol):
    """What the webhook asks of the API server (``secgroups_kube.AsyncKube`` has it)."""

    async def get(
        self, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None: ...

    async def list_page(
        self,
        kind: str,
        *,
        limit: int = ...,
        cont: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> tuple[list[dict[str, Any]], str, str | None]: ...

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any] | None: ...

    async def replace(self, body: Mapping[str, Any]) -> dict[str, Any]: ...


async def _list(api: AdmissionApi, kind: str, fields: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cont: str | None = None
    while True:
        items, _, cont = await api.list_page(
            kind, limit=LIST_LIMIT, cont=cont, fields=",".join(fields) or None
        )
        out += items
        if not cont:
            return out


async def _rules(
    api: AdmissionApi, selector: str, value: str, namespace: str | None = None
) -> list[SecurityGroupRule]:
    """Rules whose ``selector`` field is ``value`` (in ``namespace``, or everywhere).

    A field-selected list (the CRD's selectableFields); where the API server does not
    support that (before Kubernetes 1.31), every rule of the scope, which the core's
    decisions filter the same way.
    """
    base = [f"metadata.namespace={namespace}"] if namespace else []
    try:
        docs = await _list(api, "SecurityGroupRule", [*base, f"{selector}={value}"])
    except ApiError as exc:
        if exc.status is None or exc.status.code != 400:
            raise
        docs = await _list(api, "SecurityGroupRule", base)
    return [r for r in map(_parse, docs) if isinstance(r, SecurityGroupRule)]


def _parse(doc: Mapping[str, Any] | None) -> Any:
    """One of our objects as its model (status left out), or None if it does not parse."""
    if not doc:
        return None
    try:
        return parse_resource({k: v for k, v in doc.items() if k != "status"})
    except ValueError as exc:
        meta = doc.get("metadata") or {}
        log.warning(
            "admission: %s %s/%s does not parse: %s",
            doc.get("kind"),
            meta.get("namespace"),
            meta.get("name"),
            exc,
        )
        return None


@dataclass(frozen=True)
class _Namespace:
    facts: NamespaceFacts
    terminating: bool


async def _namespace(api: AdmissionApi, name: str) -> _Namespace | None:
    doc = await api.get("Namespace", name)
    if doc is None:
        return None
    meta = doc.get("metadata") or {}
    terminating = bool(meta.get("deletionTimestamp")) or (
        (doc.get("status") or {}).get("phase") == "Terminating"
    )
    facts = NamespaceFacts(name=name, labels=dict(meta.get("labels") or {}))
    return _Namespace(facts, terminating)


def _enforced(ns: _Namespace | None, scope: Scope) -> bool:
    return ns is not None and ns.facts.labels.get(scope.key) == scope.value


async def _groups_of_namespace(
    api: AdmissionApi, namespace: str
) -> tuple[list[SecurityGroup], dict[GroupKey, int]]:
    """The namespace's SecurityGroups and the member counts their status reports."""
    docs = await _list(api, "SecurityGroup", [f"metadata.namespace={namespace}"])
    groups, counts = [], {}
    for doc in docs:
        group = _parse(doc)
        if not isinstance(group, SecurityGroup):
            continue
        groups.append(group)
        count = (doc.get("status") or {}).get("memberCount")
        if isinstance(count, int):
            counts[(namespace, group.metadata.name)] = count
    return groups, counts


async def _pods_of_namespace(api: AdmissionApi, namespace: str) -> list[PodFacts]:
    docs = await _list(api, "Pod", [f"metadata.namespace={namespace}"])
    return [PodFacts.from_manifest(d) for d in docs]


# ----------------------------------------------------------------------------- decisions


async def decide(req: Mapping[str, Any], api: AdmissionApi, scope: Scope) -> Decision:
    """The decision for one AdmissionReview ``request`` (lookups through ``api``)."""
    kind = req.get("kind") or {}
    group, name = kind.get("group", ""), kind.get("kind", "")
    op = req.get("operation", "")
    new, old = req.get("object"), req.get("oldObject")
    if group == "" and name == "Pod" and op in ("CREATE", "UPDATE"):
        return await _pod(new, old, api, scope)
    if group != GROUP:
        return Decision.allow()
    if name == "SecurityGroupRule" and op in ("CREATE", "UPDATE"):
        rule = _parse(new)
        if not isinstance(rule, SecurityGroupRule):
            return Decision.allow()
        ns = rule.metadata.namespace or req.get("namespace") or "default"
        siblings = await _rules(api, "spec.securityGroup", rule.spec.security_group, ns)
        previous = _parse(old)
        return admitting.admit_rule(
            rule, previous if isinstance(previous, SecurityGroupRule) else None, siblings
        )
    if name == "IPAddressGroup" and op in ("CREATE", "UPDATE"):
        ipag = _parse(new)
        if not isinstance(ipag, IPAddressGroup):
            return Decision.allow()
        return admitting.admit_address_group(ipag)
    if name == "IPAddressGroup" and op == "DELETE":
        return await _address_group_delete(old, req, api)
    if name == "SecurityGroup" and op in ("CREATE", "UPDATE"):
        return await _group_write(new, old, api, scope)
    if name == "SecurityGroup" and op == "DELETE":
        return await _group_delete(old, req, api, scope)
    return Decision.allow()


def _key_of(doc: Mapping[str, Any] | None, req: Mapping[str, Any]) -> tuple[str, str]:
    meta = (doc or {}).get("metadata") or {}
    return (
        meta.get("namespace") or req.get("namespace") or "default",
        meta.get("name") or req.get("name") or "",
    )


async def _address_group_delete(
    old: Mapping[str, Any] | None, req: Mapping[str, Any], api: AdmissionApi
) -> Decision:
    key = _key_of(old, req)
    ns = await _namespace(api, key[0])
    if ns is None or ns.terminating:
        return Decision.allow()
    rules = await _rules(api, "spec.remote.ipAddressGroup.name", key[1])
    return admitting.admit_address_group_delete(key, admitting.address_group_users(rules, key))


async def _group_delete(
    old: Mapping[str, Any] | None, req: Mapping[str, Any], api: AdmissionApi, scope: Scope
) -> Decision:
    key = _key_of(old, req)
    ns = await _namespace(api, key[0])
    if ns is None or ns.terminating:
        return Decision.allow()
    rules = await _rules(api, "spec.remote.securityGroup.name", key[1])
    pods: list[PodFacts] = []
    groups: list[SecurityGroup] = []
    if _enforced(ns, scope):  # elsewhere no pod is managed, so none is a member
        pods = await _pods_of_namespace(api, key[0])
        groups, _ = await _groups_of_namespace(api, key[0])
        if not any((g.metadata.namespace, g.metadata.name) == key for g in groups):
            deleted = _parse(old)
            groups += [deleted] if isinstance(deleted, SecurityGroup) else []
    facts = ClusterFacts(
        namespaces=(ns.facts,), pods=tuple(pods), groups=tuple(groups), rules=tuple(rules)
    )
    return admitting.admit_group_delete(key, admitting.group_users(facts, key, scope))


async def _group_write(
    new: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    api: AdmissionApi,
    scope: Scope,
) -> Decision:
    group, previous = _parse(new), _parse(old)
    if not isinstance(group, SecurityGroup):
        return Decision.allow()
    previous = previous if isinstance(previous, SecurityGroup) else None
    if not admitting.group_write_needs_pods(group, previous):
        return Decision.allow()
    namespace = group.metadata.namespace or "default"
    ns = await _namespace(api, namespace)
    if ns is None or not _enforced(ns, scope):
        return Decision.allow()
    pods = await _pods_of_namespace(api, namespace)
    groups, _ = await _groups_of_namespace(api, namespace)
    facts = ClusterFacts(namespaces=(ns.facts,), pods=tuple(pods), groups=tuple(groups))
    return admitting.admit_group_write(group, previous, facts, scope)


def _membership_fields(doc: Mapping[str, Any] | None) -> tuple[Any, ...]:
    meta = (doc or {}).get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = (doc or {}).get("spec") or {}
    return (
        meta.get("labels") or {},
        annotations.get("secgroups.dev/security-groups"),
        bool(spec.get("hostNetwork")),
    )


async def _pod(
    new: Mapping[str, Any] | None, old: Mapping[str, Any] | None, api: AdmissionApi, scope: Scope
) -> Decision:
    if not new:
        return Decision.allow()
    if old is not None and _membership_fields(old) == _membership_fields(new):
        return Decision.allow()  # most pod updates: nothing that decides membership
    pod = PodFacts.from_manifest(new)
    ns = await _namespace(api, pod.namespace)
    if not _enforced(ns, scope):
        return Decision.allow()
    assert ns is not None
    groups, counts = await _groups_of_namespace(api, pod.namespace)
    before = PodFacts.from_manifest(old) if old else None
    return admitting.admit_pod(pod, before, ns.facts, groups, counts, scope)


def response(uid: str, decision: Decision) -> dict[str, Any]:
    """The AdmissionReview (v1) answer."""
    body: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if decision.warnings:
        body["warnings"] = list(decision.warnings)
    if not decision.allowed:
        body["status"] = {"code": 403, "reason": "Forbidden", "message": decision.message}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": body}


# ----------------------------------------------------------------------------- the server


@dataclass
class Counters:
    """What the webhook answered, for logs and tests."""

    allowed: int = 0
    denied: int = 0
    failed: int = 0
    warned: int = 0


def make_app(api: AdmissionApi, scope: Scope, counters: Counters | None = None) -> web.Application:
    """The aiohttp application: ``POST /validate`` and ``GET /healthz``."""
    seen = counters or Counters()

    async def validate(request: web.Request) -> web.Response:
        try:
            review = await request.json()
            req = review.get("request") or {}
        except (ValueError, AttributeError):
            return web.json_response({"error": "not an AdmissionReview"}, status=400)
        t0 = time.perf_counter()
        try:
            decision = await decide(req, api, scope)
        except (ApiError, TransportError) as exc:
            # The API server applies the configuration's failurePolicy to a 500.
            seen.failed += 1
            log.error("admission: cannot decide %s: %s", _describe(req), exc)
            return web.json_response({"error": str(exc)}, status=500)
        if decision.allowed:
            seen.allowed += 1
        else:
            seen.denied += 1
            log.info("admission: refused %s: %s", _describe(req), decision.message)
        seen.warned += bool(decision.warnings)
        log.debug("admission: %s in %.1f ms", _describe(req), (time.perf_counter() - t0) * 1e3)
        return web.json_response(response(str(req.get("uid", "")), decision))

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post(WEBHOOK_PATH, validate)
    mutating.add_routes(app, api, scope)  # POST /mutate: the readiness gate (docs/cni.md)
    app.router.add_get("/healthz", healthz)
    return app


def _describe(req: Mapping[str, Any]) -> str:
    kind = (req.get("kind") or {}).get("kind", "?")
    ns = req.get("namespace")
    name = req.get("name") or ((req.get("object") or {}).get("metadata") or {}).get("name")
    return f"{req.get('operation', '?')} {kind} {f'{ns}/' if ns else ''}{name}"


@dataclass
class _Tls:
    """The serving certificate on disk (for ``ssl``) and the CA to publish, if ours."""

    context: ssl.SSLContext
    directory: Path
    ca: bytes | None = None
    source: str = ""
    stamp: tuple[float, ...] = ()
    bundle: Bundle | None = None

    def load(self, cert: Path, key: Path) -> None:
        self.context.load_cert_chain(str(cert), str(key))


@dataclass
class AdmissionServer:
    """Serves the webhook and keeps its certificate and CA current (see module docstring)."""

    settings: WebhookSettings
    api: AdmissionApi
    scope: Scope = field(default_factory=Scope)
    now: Callable[[], dt.datetime] = field(default_factory=lambda: _utcnow)
    counters: Counters = field(default_factory=Counters)
    _runner: web.AppRunner | None = field(default=None, init=False)
    _tls: _Tls | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def ca(self) -> bytes | None:
        """The CA the configuration's caBundle must hold (None: not ours to publish)."""
        return self._tls.ca if self._tls else None

    @property
    def port(self) -> int:
        """The port actually bound (``--webhook-port 0`` picks a free one)."""
        assert self._runner is not None
        for address in self._runner.addresses:
            return int(address[1])
        raise RuntimeError("the admission webhook is not listening")

    async def start(self) -> None:
        self._tls = await self._provision()
        self._runner = web.AppRunner(make_app(self.api, self.scope, self.counters))
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.settings.address, self.settings.port, ssl_context=self._tls.context
        )
        await site.start()
        log.info(
            "admission webhook: https://%s:%d%s, certificate from %s for %s",
            self.settings.address,
            self.port,
            WEBHOOK_PATH,
            self._tls.source,
            ", ".join(self.settings.hosts()),
        )
        await self._publish_ca()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def run(self, stop: asyncio.Event) -> None:
        """Start, keep the certificate and caBundle current every minute, stop."""
        await self.start()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    # not wait_for: it can swallow a cancel, and the task never ends
                    async with asyncio.timeout(MAINTAIN_S):
                        await stop.wait()
                if stop.is_set():
                    break
                try:
                    await self.maintain()
                except (ApiError, TransportError, OSError, ValueError) as exc:
                    log.warning("admission webhook: upkeep failed (retrying): %s", exc)
        finally:
            await self.stop()

    async def maintain(self) -> None:
        """Re-read mounted files or the Secret (renewing when due); re-assert the caBundle."""
        assert self._tls is not None
        tls = self._tls
        cert_dir = self.settings.cert_dir
        if tls.source == str(cert_dir):
            stamp = _stamp(cert_dir)
            if stamp != tls.stamp:
                tls.load(cert_dir / webhookcerts.TLS_CRT, cert_dir / webhookcerts.TLS_KEY)
                tls.stamp = stamp
                log.info("admission webhook: reloaded the certificate from %s", cert_dir)
        elif self.settings.secret is not None:
            bundle = await self._secret_bundle()
            if bundle is not None and bundle != tls.bundle:
                self._install(tls, bundle)
                log.info("admission webhook: certificate renewed from the Secret")
        elif tls.bundle is not None:
            fresh = webhookcerts.renewed(tls.bundle, self.settings.hosts(), self.now())
            if fresh is not None:
                self._install(tls, fresh)
        await self._publish_ca()

    # -- certificates

    async def _provision(self) -> _Tls:
        self._tmp = tempfile.TemporaryDirectory(prefix="secgroups-webhook-")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        tls = _Tls(context, Path(self._tmp.name))
        cert_dir = self.settings.cert_dir
        if (cert_dir / webhookcerts.TLS_CRT).is_file() and (
            cert_dir / webhookcerts.TLS_KEY
        ).is_file():
            tls.load(cert_dir / webhookcerts.TLS_CRT, cert_dir / webhookcerts.TLS_KEY)
            tls.source, tls.stamp = str(cert_dir), _stamp(cert_dir)
            return tls  # cert-manager's: its cainjector fills caBundle
        bundle = None
        if self.settings.secret is not None:
            try:
                bundle = await self._secret_bundle()
                tls.source = "Secret {}/{}".format(*self.settings.secret)
            except ApiError as exc:
                log.error(
                    "admission webhook: cannot use Secret %s/%s (%s); certificate in memory, "
                    "not shared with other replicas",
                    *self.settings.secret,
                    exc,
                )
        if bundle is None:
            bundle = webhookcerts.new_bundle(self.settings.hosts(), self.now())
            tls.source = "memory (self-signed)"
        self._install(tls, bundle)
        return tls

    def _install(self, tls: _Tls, bundle: Bundle) -> None:
        cert, key = tls.directory / "tls.crt", tls.directory / "tls.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(bundle.key)
        cert.write_bytes(bundle.cert)
        tls.load(cert, key)
        tls.bundle = bundle
        # Publish our CA only: a CA we did not make (cert-manager's) is injected by its owner.
        tls.ca = bundle.ca_cert if bundle.ca_key is not None else None

    async def _secret_bundle(self) -> Bundle | None:
        """The bundle in the Secret, made and stored (or renewed) when needed.

        Two replicas starting together both try; the second write fails (409: create of
        an existing Secret, or a stale resourceVersion) and that replica reads the
        winner's. A Secret this operator did not make is used as it is, never written.
        """
        assert self.settings.secret is not None
        ns, name = self.settings.secret
        hosts = self.settings.hosts()
        for _ in range(3):
            doc = await self.api.get("Secret", name, ns)
            current = Bundle.from_secret_data((doc or {}).get("data"))
            ours = doc is None or current is None or current.ca_key is not None
            if doc is not None and current is not None and not ours:
                return current
            fresh = webhookcerts.renewed(current, hosts, self.now())
            if fresh is None:
                return current
            body: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": ns, "labels": dict(MANAGED_BY)},
                "type": "kubernetes.io/tls",
                "data": fresh.secret_data(),
            }
            try:
                if doc is None:
                    if await self.api.create(body) is None:
                        continue  # another replica made it first: read theirs
                else:
                    body["metadata"]["resourceVersion"] = doc["metadata"]["resourceVersion"]
                    await self.api.replace(body)
            except ApiError as exc:
                if exc.status is not None and exc.status.code == 409:
                    continue
                raise
            log.info(
                "admission webhook: stored a new serving certificate in Secret %s/%s", ns, name
            )
            return fresh
        raise RuntimeError(f"Secret {ns}/{name}: lost the race to write it three times")

    # -- the webhook configuration

    async def _publish_ca(self) -> None:
        gate = self.settings.mutating_configuration
        if gate:
            if self.settings.url:
                await self._write_mutating(gate)
            elif self.ca is not None:
                await self._patch_ca_bundle(gate, self.ca, "MutatingWebhookConfiguration")
        name = self.settings.configuration
        if not name:
            return
        if self.settings.url:
            await self._write_configuration(name)
            return
        if self.ca is None:
            return
        await self._patch_ca_bundle(name, self.ca)

    async def _write_mutating(self, name: str) -> None:
        body = mutating.mutating_configuration(
            name,
            self.settings.client_config(self.ca),
            self.scope,
            failure_policy=self.settings.gate_failure_policy,
            timeout_s=self.settings.timeout_s,
        )
        doc = await self.api.get("MutatingWebhookConfiguration", name)
        if doc is None:
            await self.api.create(body)
            log.info("admission webhook: created MutatingWebhookConfiguration %s", name)
        elif doc.get("webhooks") != body["webhooks"]:
            body["metadata"]["resourceVersion"] = doc["metadata"]["resourceVersion"]
            await self.api.replace(body)
            log.info("admission webhook: updated MutatingWebhookConfiguration %s", name)

    async def _patch_ca_bundle(
        self, name: str, ca: bytes, kind: str = "ValidatingWebhookConfiguration"
    ) -> None:
        import base64

        want = base64.b64encode(ca).decode()
        for _ in range(3):
            doc = await self.api.get(kind, name)
            if doc is None:
                log.warning("admission webhook: %s %s not found", kind, name)
                return
            hooks = doc.get("webhooks") or []
            if all((h.get("clientConfig") or {}).get("caBundle") == want for h in hooks):
                return
            for hook in hooks:
                hook.setdefault("clientConfig", {})["caBundle"] = want
            try:
                await self.api.replace(doc)
            except ApiError as exc:
                if exc.status is not None and exc.status.code == 409:
                    continue
                raise
            log.info("admission webhook: caBundle of %s set (%d webhooks)", name, len(hooks))
            return

    async def _write_configuration(self, name: str) -> None:
        body = webhook_configuration(name, self.settings, self.ca, self.scope)
        doc = await self.api.get("ValidatingWebhookConfiguration", name)
        if doc is None:
            await self.api.create(body)
            log.info("admission webhook: created ValidatingWebhookConfiguration %s", name)
            return
        if doc.get("webhooks") == body["webhooks"]:
            return
        body["metadata"]["resourceVersion"] = doc["metadata"]["resourceVersion"]
        await self.api.replace(body)
        log.info("admission webhook: updated ValidatingWebhookConfiguration %s", name)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stamp(directory: Path) -> tuple[float, ...]:
    out = []
    for name in (webhookcerts.TLS_CRT, webhookcerts.TLS_KEY):
        try:
            out.append((directory / name).stat().st_mtime)
        except OSError:
            out.append(0.0)
    return tuple(out)


def webhook_configuration(
    name: str, settings: WebhookSettings, ca: bytes | None, scope: Scope
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration the operator writes with ``--webhook-url``.

    Two webhooks: our three kinds (``failurePolicy`` from ``--webhook-failure-policy``),
    and Pods in enforced namespaces (``--webhook-pod-failure-policy``, Ignore by
    default: pods must start while the operator is down). The reference for a chart.
    """
    client = settings.client_config(ca)
    common = {
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "timeoutSeconds": settings.timeout_s,
        "matchPolicy": "Equivalent",
        "clientConfig": client,
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": dict(MANAGED_BY)},
        "webhooks": [
            {
                "name": OBJECTS_WEBHOOK,
                **common,
                "failurePolicy": settings.failure_policy,
                "namespaceSelector": {},
                "objectSelector": {},
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE", "DELETE"],
                        "resources": ["securitygroups", "securitygrouprules", "ipaddressgroups"],
                        "scope": "Namespaced",
                    }
                ],
            },
            {
                "name": PODS_WEBHOOK,
                **common,
                "failurePolicy": settings.pod_failure_policy,
                "namespaceSelector": {"matchLabels": {scope.key: scope.value}},
                "objectSelector": {},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
            },
        ],
    }


async def run(
    settings: WebhookSettings, api: AdmissionApi, scope: Scope, stop: asyncio.Event
) -> None:
    """Serve admission until ``stop`` is set (the operator's task)."""
    await AdmissionServer(settings, api, scope).run(stop)


def start(
    args: argparse.Namespace, api: AdmissionApi, scope: Scope, stop: asyncio.Event
) -> asyncio.Task[None] | None:
    """The operator's admission task, per its flags (None when the webhook is off).

    A webhook that fails (its port taken, say) is logged and leaves the reconciler
    running: enforcement matters more than admission, and the readiness probe on the
    admission port shows the failure.
    """
    settings = settings_from_args(args)
    if settings is None:
        if args.webhook_only:
            raise SystemExit("--webhook-only needs --webhook-service or --webhook-url")
        log.info("admission webhook: off (no --webhook-service or --webhook-url)")
        return None
    task = asyncio.create_task(run(settings, api, scope, stop), name="admission-webhook")

    def report(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("admission webhook stopped: %r", t.exception())

    task.add_done_callback(report)
    return task


async def serve_only(task: asyncio.Task[None] | None, stop: asyncio.Event) -> None:
    """``--webhook-only``: serve until SIGTERM or SIGINT."""
    import signal

    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await task


def dumps(obj: Any) -> str:  # for debugging and docs: the configuration as JSON
    return json.dumps(obj, indent=2, sort_keys=True)
