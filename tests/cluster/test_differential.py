"""The CLI's offline verdict on a manifest equals the API server's (issue 11).

Hypothesis draws manifests of our three kinds — valid ones, and ones wrong in each of
the ways the two once disagreed on (``tests/manifeststrategies.py``: leading-zero prefix
lengths, strings and booleans for integers, nulls on defaulted, optional and required
fields, names that are not DNS subdomains, unknown fields, a status, …). Each goes

* through what ``kubectl secgroups lint -f`` uses: ``sources.build_snapshot`` on the
  document (``decoding.parse_manifest`` and the models), accepted or an ``error:``;
* to the lab's real kube-apiserver with our CRDs: a create with ``dryRun=All`` and
  ``fieldValidation=Strict`` (what ``kubectl apply`` asks for) in a scratch namespace;

and the two verdicts must be equal for every manifest. Manifests go in batches of
:data:`BATCH` (one Hypothesis example), sent over a few kept-alive connections at once;
on a disagreement Hypothesis shrinks the batch and the failure prints each disagreeing
manifest with both answers. After the run every class of the strategy must have been
drawn at least :data:`MIN_PER_CLASS` times (targeted, not left to luck).

Size and time: :data:`EXAMPLES` batches of :data:`BATCH` = 4,000 manifests per run
(``KSG_DIFFERENTIAL_EXAMPLES`` changes the number of batches); about 40 s on the 2-core
test machine when idle, most of it the API server's CEL (measured figures in
docs/testing.md).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tests.manifeststrategies import CLASSES, labelled_manifests

from secgroups.kinds import plural
from secgroups.membership import Scope
from secgroups.models import API_VERSION
from secgroups_cli.errors import CliError
from secgroups_cli.manifests import Document
from secgroups_cli.sources import build_snapshot
from secgroups_lab import controlplane

# Above the 300 s default: a loaded CI machine may take several times the idle figure.
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]

BATCH = 100
EXAMPLES = int(os.environ.get("KSG_DIFFERENTIAL_EXAMPLES", "40"))
MIN_PER_CLASS = 20 if EXAMPLES >= 40 else 1
CONNECTIONS = 4


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    why: str


def offline(doc: dict[str, Any], namespace: str) -> Verdict:
    """What ``kubectl secgroups lint -f`` makes of ``doc``: facts, or an error."""
    try:
        build_snapshot(
            [Document(json.loads(json.dumps(doc)), "<generated>", None, 1)],
            namespace=namespace,
            online=False,
            scope=Scope(),
        )
    except CliError as exc:
        return Verdict(False, exc.message)
    return Verdict(True, "")


class Server:
    """Dry-run creates over kept-alive HTTPS connections, one per thread."""

    def __init__(self, cp: controlplane.ControlPlane, namespace: str) -> None:
        self.client = cp.client
        self.namespace = namespace
        self.local = threading.local()
        self.requests = 0
        self.seconds = 0.0  # waiting for the API server's answers
        self.offline_seconds = 0.0  # the offline verdicts

    def _conn(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                self.client.host, self.client.port, context=self.client.ctx, timeout=30
            )
            self.local.conn = conn
        return conn

    def verdict(self, doc: dict[str, Any]) -> Verdict:
        path = (
            f"/apis/{API_VERSION}/namespaces/{self.namespace}/{plural(doc['kind'])}"
            "?dryRun=All&fieldValidation=Strict"
        )
        body = json.dumps(doc).encode()
        for attempt in range(3):
            conn = self._conn()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.5)
        self.requests += 1
        if resp.status in (200, 201):
            return Verdict(True, "")
        if resp.status in (400, 422):
            return Verdict(False, json.loads(data).get("message", ""))
        raise AssertionError(f"HTTP {resp.status} from the API server: {data[:500]!r}")


@pytest.fixture(scope="module")
def server(control_plane: controlplane.ControlPlane, crds_installed: list[str]) -> Iterator[Server]:
    name = f"diff-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", name, timeout=30)
    yield Server(control_plane, name)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False, timeout=30)


def _disagreements(
    batch: list[tuple[tuple[str, ...], dict[str, Any]]],
    server: Server,
    pool: ThreadPoolExecutor,
    accepted: Counter[bool],
) -> list[str]:
    docs = [doc for _, doc in batch]
    t = time.monotonic()
    remote = list(pool.map(server.verdict, docs))
    server.seconds += time.monotonic() - t
    out = []
    for (classes, doc), there in zip(batch, remote, strict=True):
        accepted[there.accepted] += 1
        t = time.monotonic()
        here = offline(doc, server.namespace)
        server.offline_seconds += time.monotonic() - t
        if here.accepted != there.accepted:
            out.append(
                f"classes {', '.join(classes)}: API server "
                f"{'accepts' if there.accepted else 'rejects'}, lint -f "
                f"{'accepts' if here.accepted else 'rejects'}\n"
                f"  manifest: {json.dumps(doc, ensure_ascii=False)}\n"
                f"  API server: {there.why or 'created'}\n"
                f"  lint -f: {here.why or 'valid'}"
            )
    return out


def test_offline_verdicts_equal_the_api_servers(server: Server) -> None:
    drawn: Counter[str] = Counter()
    accepted: Counter[bool] = Counter()
    started = time.monotonic()
    with ThreadPoolExecutor(CONNECTIONS) as pool:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            # No shrinking: every step would send a batch again; the failure already
            # names each disagreeing manifest with both answers.
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(st.lists(labelled_manifests(), min_size=BATCH, max_size=BATCH))
        def check(batch: list[tuple[tuple[str, ...], dict[str, Any]]]) -> None:
            drawn.update(c for classes, _ in batch for c in set(classes))
            problems = _disagreements(batch, server, pool, accepted)
            assert not problems, (
                f"{len(problems)} of {len(batch)} manifests judged differently:\n"
                + "\n".join(problems)
            )

        check()
    elapsed = time.monotonic() - started
    total = server.requests
    print(
        f"\ndifferential: {total} manifests in {elapsed:.1f} s ({total / elapsed:.0f}/s), "
        f"{accepted[True]} accepted and {accepted[False]} rejected by both (API server "
        f"{server.seconds:.1f} s, offline {server.offline_seconds:.1f} s); classes drawn: "
        + ", ".join(f"{c} {drawn[c]}" for c in CLASSES)
    )
    missing = {c: drawn[c] for c in CLASSES if drawn[c] < MIN_PER_CLASS}
    assert not missing, f"classes drawn fewer than {MIN_PER_CLASS} times: {missing}"
