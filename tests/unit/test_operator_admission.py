"""The operator's admission webhook (secgroups_operator.admission) with an in-memory API:
the requests it answers and the lookups it makes, the AdmissionReview it returns, the
certificate it makes, shares through a Secret and publishes as caBundle, and HTTPS.

The real API server calling it is in tests/cluster/test_admission_apiserver.py.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import json
import ssl
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from secgroups.membership import Scope
from secgroups.quotas import RULE_QUOTA
from secgroups_operator import admission, webhookcerts
from secgroups_operator.admission import AdmissionServer, WebhookSettings

ENFORCED = {"secgroups.dev/enforce": "true"}


def _get_path(obj: Mapping[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


class FakeApi:
    """Objects by (kind, namespace, name); list pages honour field selectors."""

    def __init__(self, *, selectable: bool = True) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.selectable = selectable
        self.calls: list[tuple[str, str, str | None]] = []
        self.rv = 0

    def add(self, doc: dict[str, Any]) -> None:
        meta = doc["metadata"]
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[(doc["kind"], meta.get("namespace") or "", meta["name"])] = copy.deepcopy(doc)

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Any:
        self.calls.append(("get", kind, name))
        doc = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(doc) if doc else None

    async def list_page(
        self,
        kind: str,
        *,
        limit: int = 500,
        cont: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> tuple[list[dict[str, Any]], str, str | None]:
        self.calls.append(("list", kind, fields))
        wanted = [tuple(f.split("=", 1)) for f in (fields or "").split(",") if f]
        if not self.selectable and any(not k.startswith("metadata.") for k, _ in wanted):
            raise ApiError(status=Status(code=400, message="field label not supported"))
        out = [
            copy.deepcopy(d)
            for (k, _, _), d in sorted(self.objects.items())
            if k == kind and all(str(_get_path(d, key)) == value for key, value in wanted)
        ]
        start = int(cont or 0)
        page = out[start : start + limit]
        nxt = str(start + limit) if start + limit < len(out) else None
        return page, str(self.rv), nxt

    async def create(self, body: Mapping[str, Any]) -> Any:
        meta = body["metadata"]
        key = (body["kind"], meta.get("namespace") or "", meta["name"])
        if key in self.objects:
            return None
        self.add(copy.deepcopy(dict(body)))
        return copy.deepcopy(self.objects[key])

    async def replace(self, body: Mapping[str, Any]) -> Any:
        meta = body["metadata"]
        key = (body["kind"], meta.get("namespace") or "", meta["name"])
        if self.objects[key]["metadata"]["resourceVersion"] != meta.get("resourceVersion"):
            raise ApiError(status=Status(code=409, message="conflict"))
        self.add(copy.deepcopy(dict(body)))
        return copy.deepcopy(self.objects[key])


def namespace(name: str = "demo", enforced: bool = True, terminating: bool = False) -> Any:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": ENFORCED if enforced else {}},
        "status": {"phase": "Terminating" if terminating else "Active"},
    }
    return doc


def group(
    name: str, ns: str = "demo", selector: dict[str, str] | None = None, members: int | None = None
) -> Any:
    doc: dict[str, Any] = {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "SecurityGroup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {} if selector is None else {"podSelector": {"matchLabels": selector}},
    }
    if members is not None:
        doc["status"] = {"memberCount": members}
    return doc


def rule(name: str, grp: str, ns: str = "demo", **spec: Any) -> Any:
    return {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "SecurityGroupRule",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"securityGroup": grp, "direction": "Ingress", "protocol": "All", **spec},
    }


def ipag(name: str, ns: str = "demo") -> Any:
    return {
        "apiVersion": "secgroups.dev/v1alpha1",
        "kind": "IPAddressGroup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"addresses": ["192.0.2.0/24"]},
    }


def pod(name: str, ns: str = "demo", groups: str | None = None, **labels: str) -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels}
    if groups is not None:
        meta["annotations"] = {"secgroups.dev/security-groups": groups}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": []}}


def request(op: str, obj: Any = None, old: Any = None) -> dict[str, Any]:
    doc = obj or old
    api_version = doc["apiVersion"]
    grp, _, version = api_version.rpartition("/")
    return {
        "uid": "u-1",
        "kind": {"group": grp, "version": version, "kind": doc["kind"]},
        "operation": op,
        "namespace": doc["metadata"].get("namespace"),
        "name": doc["metadata"]["name"],
        "object": obj,
        "oldObject": old,
    }


def decide(api: FakeApi, req: dict[str, Any]) -> Any:
    return asyncio.run(admission.decide(req, api, Scope()))


def counted(i: int) -> Any:
    return rule(f"r{i:03d}", "web", remote={"securityGroup": {"name": "db"}})


# ----------------------------------------------------------------------------- decisions


@pytest.mark.parametrize("selectable", [True, False], ids=["selectable-fields", "fallback"])
def test_the_121st_counted_rule_is_refused_after_listing_its_groups_rules(selectable: bool) -> None:
    api = FakeApi(selectable=selectable)
    api.add(namespace())
    for i in range(RULE_QUOTA):
        api.add(counted(i))
    api.add(rule("other-group", "api", remote={"securityGroup": {"name": "db"}}))
    d = decide(api, request("CREATE", counted(RULE_QUOTA)))
    assert not d.allowed
    assert "security group demo/web: 121 Ingress IPv4 rules" in d.message
    lists = [c for c in api.calls if c[0] == "list"]
    if selectable:
        assert lists == [
            ("list", "SecurityGroupRule", "metadata.namespace=demo,spec.securityGroup=web")
        ]
    else:  # the API server refused the field: the namespace's rules, filtered here
        assert lists[-1] == ("list", "SecurityGroupRule", "metadata.namespace=demo")
    api.objects.pop(("SecurityGroupRule", "demo", "r000"))
    assert decide(api, request("CREATE", counted(RULE_QUOTA))).allowed


def test_deleting_a_group_with_members_or_remote_users_is_refused_naming_them() -> None:
    api = FakeApi()
    api.add(namespace())
    api.add(namespace("other"))
    api.add(group("web", selector={"app": "web"}))
    api.add(group("db"))
    api.add(pod("w1", app="web"))
    api.add(pod("w2", groups="web"))
    api.add(pod("x1"))
    api.add(
        rule(
            "far", "api", ns="other", remote={"securityGroup": {"name": "web", "namespace": "demo"}}
        )
    )
    d = decide(api, request("DELETE", old=group("web", selector={"app": "web"})))
    assert not d.allowed
    assert d.message.startswith(
        "security group demo/web is in use: 2 member pods (demo/w1, demo/w2) and it is the "
        "remote of 1 rule (other/far)"
    )
    assert decide(api, request("DELETE", old=group("db"))).allowed


def test_deletes_pass_in_a_terminating_namespace() -> None:
    api = FakeApi()
    api.add(namespace(terminating=True))
    api.add(group("web"))
    api.add(pod("w1", groups="web"))
    api.add(rule("uses-office", "web", remote={"ipAddressGroup": {"name": "office"}}))
    assert decide(api, request("DELETE", old=group("web"))).allowed
    assert decide(api, request("DELETE", old=ipag("office"))).allowed


def test_an_address_group_a_rule_uses_cannot_be_deleted() -> None:
    api = FakeApi()
    api.add(namespace())
    api.add(
        rule("deny-office", "web", action="Deny", remote={"ipAddressGroup": {"name": "office"}})
    )
    d = decide(api, request("DELETE", old=ipag("office")))
    assert not d.allowed
    assert "IP address group demo/office is in use" in d.message
    assert "demo/deny-office" in d.message


def test_a_pod_joining_a_full_group_is_refused_and_others_are_warned() -> None:
    api = FakeApi()
    api.add(namespace())
    api.add(group("web", members=6000))
    api.add(group("db", members=10))
    d = decide(api, request("CREATE", pod("p", groups="web")))
    assert not d.allowed
    assert "S-L-2: security group demo/web: 6001 member pods" in d.message
    d = decide(api, request("CREATE", pod("p", groups="db,dbb")))
    assert d.allowed
    assert d.warnings and "dbb" in d.warnings[0]


def test_pod_updates_that_keep_labels_and_annotation_need_no_lookup() -> None:
    api = FakeApi()
    old = pod("p", groups="web", app="x")
    new = copy.deepcopy(old)
    new["status"] = {"podIP": "10.0.0.1"}
    assert decide(api, request("UPDATE", new, old)).allowed
    assert api.calls == []


def test_pods_of_unenforced_namespaces_are_not_looked_at_further() -> None:
    api = FakeApi()
    api.add(namespace("free", enforced=False))
    assert decide(api, request("CREATE", pod("p", ns="free", groups="web"))).allowed
    assert api.calls == [("get", "Namespace", "free")]


# ----------------------------------------------------------------------------- HTTP


async def _post(client: TestClient[Any, Any], review: Any) -> tuple[int, Any]:
    resp = await client.post(admission.WEBHOOK_PATH, json=review)
    return resp.status, await resp.json()


def test_the_http_answer_is_an_admission_review_with_status_and_warnings() -> None:
    api = FakeApi()
    api.add(namespace())
    for i in range(RULE_QUOTA):
        api.add(counted(i))

    async def go() -> list[tuple[int, Any]]:
        async with TestClient(TestServer(admission.make_app(api, Scope()))) as client:
            refused = await _post(client, {"request": request("CREATE", counted(RULE_QUOTA))})
            warned = await _post(client, {"request": request("CREATE", pod("p", groups="wbe"))})
            return [refused, warned]

    (code, refused), (_, warned) = asyncio.run(go())
    assert code == 200
    assert refused["apiVersion"] == "admission.k8s.io/v1"
    assert refused["response"]["uid"] == "u-1"
    assert refused["response"]["allowed"] is False
    assert refused["response"]["status"]["code"] == 403
    assert "121 Ingress IPv4 rules" in refused["response"]["status"]["message"]
    assert warned["response"]["allowed"] is True
    assert "status" not in warned["response"]
    assert warned["response"]["warnings"] == [
        "pod demo/p: annotation names security group(s) that do not exist: wbe; they match "
        "nothing (fail-closed: no fallback to the default group)"
    ]


def test_a_failed_lookup_is_a_500_so_the_failure_policy_decides() -> None:
    class Broken(FakeApi):
        async def list_page(self, *a: Any, **k: Any) -> Any:
            raise ApiError(status=Status(code=403, message="forbidden"))

    async def go() -> tuple[int, Any]:
        async with TestClient(TestServer(admission.make_app(Broken(), Scope()))) as client:
            return await _post(client, {"request": request("CREATE", counted(0))})

    code, _ = asyncio.run(go())
    assert code == 500


# ----------------------------------------------------------------------------- certificates


NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def test_a_certificate_is_renewed_under_the_same_ca_before_it_expires() -> None:
    hosts = webhookcerts.service_hosts("ksg-system", "ksg-webhook")
    bundle = webhookcerts.new_bundle(hosts, NOW)
    assert webhookcerts.covers(bundle.cert, hosts, NOW)
    assert webhookcerts.renewed(bundle, hosts, NOW + dt.timedelta(days=300)) is None
    later = NOW + dt.timedelta(days=340)  # within 30 days of the end of its year
    fresh = webhookcerts.renewed(bundle, hosts, later)
    assert fresh is not None and fresh.ca_cert == bundle.ca_cert and fresh.cert != bundle.cert
    assert webhookcerts.covers(fresh.cert, hosts, later)
    other = webhookcerts.renewed(bundle, ["elsewhere.svc"], NOW)  # a new name: new cert, same CA
    assert other is not None and other.ca_cert == bundle.ca_cert
    data = bundle.secret_data()
    assert webhookcerts.Bundle.from_secret_data(data) == bundle


def _settings(tmp_path: Path, **kw: Any) -> WebhookSettings:
    return WebhookSettings(
        port=0, address="127.0.0.1", cert_dir=tmp_path / "no-mounted-certs", **kw
    )


def _vwc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{"name": "validate.secgroups.dev", "clientConfig": {"service": {}}}],
    }


def test_replicas_share_the_certificate_in_the_secret_and_publish_its_ca(tmp_path: Path) -> None:
    api = FakeApi()
    api.add(_vwc("ksg-webhook"))
    settings = _settings(
        tmp_path,
        service=("ksg-system", "ksg-webhook"),
        secret=("ksg-system", "ksg-webhook-tls"),
        configuration="ksg-webhook",
    )

    async def go() -> tuple[bytes | None, bytes | None]:
        one, two = AdmissionServer(settings, api), AdmissionServer(settings, api)
        await one.start()
        await two.start()
        try:
            return one.ca, two.ca
        finally:
            await one.stop()
            await two.stop()

    ca_one, ca_two = asyncio.run(go())
    assert ca_one is not None and ca_one == ca_two
    secret = api.objects[("Secret", "ksg-system", "ksg-webhook-tls")]
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt", "ca.key"}
    hook = api.objects[("ValidatingWebhookConfiguration", "", "ksg-webhook")]["webhooks"][0]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == ca_one
    assert hook["clientConfig"]["service"] == {}, "only caBundle is ours to write"


def test_a_secret_someone_else_made_is_used_and_never_written(tmp_path: Path) -> None:
    theirs = webhookcerts.new_bundle(["ksg-webhook.ksg-system.svc"], NOW)
    data = webhookcerts.Bundle(theirs.cert, theirs.key, theirs.ca_cert).secret_data()
    api = FakeApi()
    api.add(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "tls", "namespace": "ksg-system"},
            "data": data,
        }
    )
    rv = api.objects[("Secret", "ksg-system", "tls")]["metadata"]["resourceVersion"]
    settings = _settings(
        tmp_path, service=("ksg-system", "ksg-webhook"), secret=("ksg-system", "tls")
    )

    async def go() -> bytes | None:
        server = AdmissionServer(settings, api)
        await server.start()
        await server.stop()
        return server.ca

    assert asyncio.run(go()) is None, "cert-manager's CA is injected by cert-manager"
    assert api.objects[("Secret", "ksg-system", "tls")]["metadata"]["resourceVersion"] == rv


def test_url_mode_serves_https_and_writes_the_whole_configuration(tmp_path: Path) -> None:
    api = FakeApi()
    settings = _settings(
        tmp_path,
        url="https://127.0.0.1:9443",
        configuration="ksg-lab-webhook",
        failure_policy="Ignore",
    )

    async def go() -> tuple[bytes, dict[str, Any]]:
        server = AdmissionServer(settings, api)
        await server.start()
        try:
            assert server.ca is not None
            ctx = ssl.create_default_context(cadata=server.ca.decode())
            url = f"https://127.0.0.1:{server.port}{admission.WEBHOOK_PATH}"
            body = json.dumps({"request": request("DELETE", old=ipag("office"))}).encode()

            def call() -> Any:
                req = urllib.request.Request(
                    url, data=body, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                    return json.loads(resp.read())

            answer = await asyncio.to_thread(call)
            return server.ca, answer
        finally:
            await server.stop()

    ca, answer = asyncio.run(go())
    assert answer["response"]["allowed"] is True  # no namespace: nothing to protect
    vwc = api.objects[("ValidatingWebhookConfiguration", "", "ksg-lab-webhook")]
    objects, pods = vwc["webhooks"]
    assert objects["clientConfig"]["url"] == "https://127.0.0.1:9443/validate"
    assert base64.b64decode(objects["clientConfig"]["caBundle"]) == ca
    assert objects["failurePolicy"] == "Ignore"
    assert pods["failurePolicy"] == "Ignore"
    assert pods["namespaceSelector"] == {"matchLabels": ENFORCED}
    assert pods["rules"][0]["resources"] == ["pods"]


def test_the_webhook_is_off_unless_told_how_the_api_server_reaches_it() -> None:
    import argparse

    p = argparse.ArgumentParser()
    admission.add_arguments(p)
    assert admission.settings_from_args(p.parse_args([])) is None
    on = admission.settings_from_args(p.parse_args(["--webhook-service", "ns/svc"]))
    assert on is not None and on.port == 9443
    assert on.hosts() == ["svc.ns.svc", "svc.ns.svc.cluster.local", "svc.ns"]
    off = p.parse_args(["--webhook-service", "ns/svc", "--no-webhook"])
    assert admission.settings_from_args(off) is None
    with pytest.raises(SystemExit):
        admission.settings_from_args(p.parse_args(["--webhook-url", "http://x:1"]))
