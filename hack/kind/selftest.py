"""Run inside a probe pod by `hack/kind.sh selftest` (fed on stdin; argv: a JSON plan).

Probes, through this pod's own probe daemon (secgroups_lab.probes): every pod IP of the plan
with TCP/80, UDP/80, ICMP and GRE; the Service's ClusterIP (TCP/UDP 80) and its DNS name; the
NodePort on every node IP; and an address outside the cluster, which the node's egress guard
must refuse at once. Prints one JSON object per probe. With the argument `seen`: the source
addresses of every probe this pod received, as a JSON list.
"""

import json
import socket
import sys
import time

from secgroups_lab.probes import ProbeClient

client = ProbeClient("/run/probed.sock")
if sys.argv[1] == "seen":  # the source addresses of the probes this pod received
    print(json.dumps(sorted({s.src for s in client.seen()})))
    sys.exit(0)
plan = json.loads(sys.argv[1])


def emit(target: str, what: str, ok: bool, detail: str, expect: bool = True) -> None:
    row = {"target": target, "what": what, "ok": ok, "expect": expect, "detail": detail}
    print(json.dumps(row), flush=True)


def probe(target: str, proto: str, addr: str, port: int = 0, expect: bool = True) -> None:
    res = client.probe(proto, addr, port, timeout=3 if expect else 2)
    what = f"{proto}/{port}" if port else proto
    emit(target, what, res.ok, res.reason or f"{res.latency_ms} ms", expect)


for pod, ip in plan["pods"].items():
    for proto in ("tcp", "udp"):
        probe(pod, proto, ip, 80)
    probe(pod, "icmp", ip)
    probe(pod, "gre", ip)
for proto in ("tcp", "udp"):
    probe("service", proto, plan["cluster_ip"], 80)
try:
    addr = socket.getaddrinfo(plan["service_name"], 80, socket.AF_INET)[0][4][0]
    emit("service", "dns", addr == plan["cluster_ip"], f"{plan['service_name']} -> {addr}")
except OSError as exc:
    emit("service", "dns", False, str(exc))
for node, ip in plan["nodes"].items():
    probe(f"nodeport@{node}", "tcp", ip, plan["node_port"])
# outside the cluster: refused inside the node (no packet leaves it), and quickly
t0 = time.monotonic()
res = client.probe("tcp", plan["outside"], 80, timeout=3)
took = time.monotonic() - t0
emit("outside", "tcp/80 refused", not res.ok and took < 2.5, f"{res.reason}, {took:.2f} s")
