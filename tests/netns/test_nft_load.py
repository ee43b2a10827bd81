"""The renderer's transactions against a real kernel: nft 1.0.6 in throwaway network namespaces.

* every representative ruleset loads, and loads again (resync) without deleting the table;
* ``diff_transaction(old, new)`` applied onto ``old`` gives exactly the listing of a
  fresh ``new`` (``nft -j list table``, canonicalised), for Hypothesis-random pairs
  (render options too: linear and dispatched group chains), and so does
  ``staged_diff``'s stage then switch;
* ``nft -c`` accepts the full transaction of random compiled policies (real compiler);
* the nft behaviours the transactions rely on (``transactions`` module docstring);
* S-CT-3: a live flow keeps its ``ct timeout`` policy across a full resync.

Needs root, ``ip`` and ``nft`` (and ``conntrack`` + python in netns for the live test);
skipped with a one-line reason otherwise. Every namespace made here is deleted again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import nftcases as nc  # noqa: E402
from tests import nftstrategies as nst  # noqa: E402
from tests import strategies as sgst  # noqa: E402

from secgroups.compiled import CompiledPolicy  # noqa: E402
from secgroups.compiling import compile_policy  # noqa: E402
from secgroups.nft.rendering import RenderOptions, render  # noqa: E402
from secgroups.nft.transactions import (  # noqa: E402
    Inventory,
    diff_transaction,
    full_transaction,
    staged_diff,
)

PREFIX = "sgnft"
TABLE = "inet secgroups"
TIMEOUT = 60.0


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command"
    return None


pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable())),
]


def run(
    ns: str, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=check,
    )


def nft(ns: str, text: str, *, check_only: bool = False) -> None:
    args = ["nft", "-c", "-f", "-"] if check_only else ["nft", "-f", "-"]
    proc = run(ns, *args, stdin=text, check=False)
    if proc.returncode != 0:
        numbered = "\n".join(f"{i + 1:5} {line}" for i, line in enumerate(text.splitlines()[:400]))
        raise AssertionError(f"nft failed: {proc.stderr.strip()}\n{numbered}")


def listing(ns: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(run(ns, "nft", "-j", "list", "table", *TABLE.split()).stdout)
    return doc


def table_handle(ns: str) -> int:
    doc = json.loads(run(ns, "nft", "-j", "list", "tables").stdout)
    return next(
        i["table"]["handle"]
        for i in doc["nftables"]
        if i.get("table", {}).get("name") == "secgroups"
    )


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("handle", "index")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def canonical_listing(doc: dict[str, Any]) -> dict[str, Any]:
    """Objects by kind and name, handles dropped, elements sorted, rules in chain order."""
    out: dict[str, Any] = {}
    for item in doc["nftables"]:
        ((kind, obj),) = item.items()
        if kind in ("metainfo", "table"):
            continue
        obj = _strip(obj)
        if kind == "rule":
            out.setdefault(f"rules {obj['chain']}", []).append(obj)
            continue
        if "elem" in obj:
            obj["elem"] = sorted(obj["elem"], key=lambda e: json.dumps(e, sort_keys=True))
        out[f"{kind} {obj['name']}"] = obj
    return dict(sorted(out.items()))


@pytest.fixture(scope="module")
def namespaces() -> Iterator[tuple[str, str]]:
    """Two throwaway namespaces (``a``: the one we transact on, ``b``: a fresh reference)."""
    for name in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    ).stdout.split():
        if name.startswith(PREFIX):  # leftovers of a killed run of this module
            subprocess.run(["ip", "netns", "del", name], timeout=TIMEOUT, check=False)
    tag = uuid.uuid4().hex[:6]
    made = [f"{PREFIX}{tag}a", f"{PREFIX}{tag}b"]
    try:
        for name in made:
            subprocess.run(["ip", "netns", "add", name], timeout=TIMEOUT, check=True)
        yield made[0], made[1]
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], timeout=TIMEOUT, check=False)


def _reset(*nss: str) -> None:
    for ns in nss:
        run(ns, "nft", "flush", "ruleset")


def _ruleset(
    policy: CompiledPolicy, node: str = nc.NODE, options: RenderOptions | None = None
) -> Any:
    pods = policy.nodes[node].pods if node in policy.nodes else ()
    return render(policy, node, nc.interfaces(pods), options)


SCENARIOS = [pytest.param(make, id=make().name) for make in nc.SCENARIOS]


@pytest.mark.parametrize("make", SCENARIOS)
def test_full_ruleset_loads_and_resyncs_in_place(namespaces: tuple[str, str], make: Any) -> None:
    a, _ = namespaces
    _reset(a)
    s = make()
    rs = render(s.policy, nc.NODE, s.pod_interfaces, s.options)
    nft(a, full_transaction(rs))
    handle, first = table_handle(a), canonical_listing(listing(a))
    nft(a, full_transaction(rs))  # periodic resync over itself
    assert table_handle(a) == handle  # never deleted
    assert canonical_listing(listing(a)) == first
    assert len(first) > 10


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(pair=nst.policy_pairs(), options=nst.render_options(), new_options=nst.render_options())
def test_diff_onto_old_equals_fresh_new(
    namespaces: tuple[str, str],
    pair: tuple[CompiledPolicy, CompiledPolicy],
    options: RenderOptions,
    new_options: RenderOptions,
) -> None:
    a, b = namespaces
    _reset(a, b)
    old, new = _ruleset(pair[0], options=options), _ruleset(pair[1], options=new_options)
    nft(a, full_transaction(old))
    handle = table_handle(a)
    text = diff_transaction(old, new)
    assert "delete table" not in text
    if text:
        nft(a, text)
    nft(b, full_transaction(new))
    fresh = canonical_listing(listing(b))
    assert canonical_listing(listing(a)) == fresh
    assert table_handle(a) == handle
    # What the agent applies: new interval sets and maps (and the chains they send to) one
    # transaction ahead, then the switch.
    _reset(a)
    nft(a, full_transaction(old))
    stage, switch = staged_diff(old, new)
    for step in (stage, switch):
        if step:
            nft(a, step)
    assert canonical_listing(listing(a)) == fresh


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(facts=sgst.cluster_facts(max_pods=10, max_rules=20))
def test_nft_accepts_random_compiled_policies(namespaces: tuple[str, str], facts: Any) -> None:
    """`nft -c` (parse + kernel-side validation, no commit) of every node's full transaction."""
    a, _ = namespaces
    policy = compile_policy(facts).policy
    texts = [full_transaction(_ruleset(policy, node)) for node in sorted(policy.nodes) or ["none"]]
    _reset(a)
    for text in texts:
        nft(a, text, check_only=True)


def test_full_transaction_with_inventory_leaves_no_stale_objects(
    namespaces: tuple[str, str],
) -> None:
    a, b = namespaces
    _reset(a, b)
    old, new = _ruleset(nc.web_and_db().policy), _ruleset(nc.default_group().policy)
    nft(a, full_transaction(old))
    nft(a, full_transaction(new))  # without the inventory: stale chains and sets stay, empty
    assert any(k.startswith("chain g_shop_web_") for k in canonical_listing(listing(a)))
    nft(a, full_transaction(new, Inventory.from_json(listing(a))))
    nft(b, full_transaction(new))
    got, want = canonical_listing(listing(a)), canonical_listing(listing(b))
    assert {k for k in got if not k.startswith("ct timeout")} == {
        k for k in want if not k.startswith("ct timeout")
    }
    assert {k: v for k, v in got.items() if not k.startswith("ct timeout")} == {
        k: v for k, v in want.items() if not k.startswith("ct timeout")
    }


def test_a_changed_declaration_needs_the_inventory(namespaces: tuple[str, str]) -> None:
    """`add set` of an existing set with other flags fails (EEXIST); with the inventory the
    full transaction deletes and re-creates it in the same transaction."""
    a, _ = namespaces
    _reset(a)
    rs = _ruleset(nc.web_and_db().policy)
    run(a, "nft", "add", "table", *TABLE.split())
    run(a, "nft", "add", "set", *TABLE.split(), "pods4", "{ type ipv4_addr; flags interval; }")
    proc = run(a, "nft", "-f", "-", stdin=full_transaction(rs), check=False)
    assert proc.returncode != 0 and "File exists" in proc.stderr
    nft(a, full_transaction(rs, Inventory.from_json(listing(a))))
    assert "flags" not in canonical_listing(listing(a))["set pods4"]


def test_nft_behaviours_the_transactions_rely_on(namespaces: tuple[str, str]) -> None:
    """Evidence for the transactions module docstring (nft 1.0.6 / this kernel)."""
    a, _ = namespaces
    _reset(a)
    nft(a, full_transaction(_ruleset(nc.web_and_db().policy)))
    run(a, "nft", "flush", "table", *TABLE.split())
    after = canonical_listing(listing(a))
    assert not any(k.startswith("rules ") for k in after)  # flush table: rules gone ...
    assert after["set pods4"].get("elem")  # ... but elements stay
    assert any(k.startswith("ct timeout ") for k in after)  # ... and so do ct timeout objects
    gl = next(k.split()[1] for k in after if k.startswith("chain gl_"))
    busy = run(a, "nft", "delete", "chain", *TABLE.split(), gl, check=False)
    assert (
        busy.returncode != 0 and "Device or resource busy" in busy.stderr
    )  # a map element pins it
    name = next(k.split(maxsplit=2)[2] for k in after if k.startswith("ct timeout tcp4_"))
    run(
        a,
        "nft",
        "add",
        "ct",
        "timeout",
        *TABLE.split(),
        name,
        "{ protocol tcp; l3proto ip; policy = { established: 7 }; }",
    )
    policy = canonical_listing(listing(a))[f"ct timeout {name}"]["policy"]
    assert policy["established"] == 600  # `add` of an existing object changed nothing


# ----------------------------------------------------------------------------- live conntrack

SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("100.64.1.1", 8080)); s.listen(1); print("ready", flush=True)
c, _ = s.accept()
while c.recv(10):
    pass
"""
CLIENT = """
import socket, sys
s = socket.create_connection(("100.64.1.1", 8080), timeout=5)
for line in sys.stdin:
    s.send(b"x")
"""


def _ct_timeout_of(ns: str) -> int:
    """The remaining timeout of the test flow's conntrack entry (waits for it to exist)."""
    deadline = time.monotonic() + 10
    while True:
        out = run(ns, "conntrack", "-L", "-p", "tcp", "--dport", "8080", check=False).stdout
        lines = [
            line for line in out.splitlines() if "dport=8080" in line and "ESTABLISHED" in line
        ]
        if lines:
            return int(lines[0].split()[2])
        if time.monotonic() > deadline:
            raise AssertionError(f"no established entry for the test flow: {out!r}")
        time.sleep(0.1)


@pytest.mark.skipif(shutil.which("conntrack") is None, reason="needs conntrack-tools")
def test_live_flow_keeps_its_ct_timeout_across_a_full_resync(namespaces: tuple[str, str]) -> None:
    """S-CT-3: a pod's TCP flow runs under established 600 s (kernel default 432000); a full
    resync keeps the object, so the flow's next packet still refreshes it to 600. Deleting
    the object instead (what transactions never do) sends the flow back to 432000."""
    node, _ = namespaces
    _reset(node)
    pod_ns = f"{node}p"
    subprocess.run(["ip", "netns", "add", pod_ns], timeout=TIMEOUT, check=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        run(
            node,
            "ip",
            "link",
            "add",
            "veth-p",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod_ns,
        )
        run(node, "ip", "addr", "add", "100.64.1.1/24", "dev", "veth-p")
        run(node, "ip", "link", "set", "veth-p", "up")
        run(pod_ns, "ip", "addr", "add", "100.64.1.2/24", "dev", "eth0")
        run(pod_ns, "ip", "link", "set", "eth0", "up")
        g = nc.group("x", "g", [nc.rule("x/out", nc.EG, "All")])
        policy = nc.policy([g], [], [nc.pod("x", "p", ("100.64.1.2",), [g[0]])])
        rs = render(policy, nc.NODE, {"100.64.1.2": "veth-p"})
        nft(node, full_transaction(rs))
        server = subprocess.Popen(
            ["ip", "netns", "exec", node, sys.executable, "-c", SERVER],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = subprocess.Popen(
            ["ip", "netns", "exec", pod_ns, sys.executable, "-c", CLIENT],
            stdin=subprocess.PIPE,
            text=True,
        )
        procs.append(client)
        assert client.stdin is not None

        def send() -> None:
            assert client.stdin is not None
            client.stdin.write("\n")
            client.stdin.flush()
            time.sleep(0.3)

        send()
        assert 500 < _ct_timeout_of(node) <= 600  # pod -> node: egress_input, tcp4 object
        nft(node, full_transaction(rs, Inventory.from_json(listing(node))))
        send()
        assert 500 < _ct_timeout_of(node) <= 600
        name = next(o.name for o in rs.ct_timeouts if o.name.startswith("tcp4_"))
        nft(node, f"flush chain {TABLE} ct_timeouts\ndelete ct timeout {TABLE} {name}\n")
        send()
        assert _ct_timeout_of(node) > 400000  # the kernel default took over
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        subprocess.run(["ip", "netns", "del", pod_ns], timeout=TIMEOUT, check=False)
