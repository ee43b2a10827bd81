"""The pure parts of secgroups_lab.kind: examples/ made into probe pods on kind's nodes,
and finding a container's processes from the host's /proc (a fake one here)."""

from __future__ import annotations

from pathlib import Path

from secgroups_lab import kind as kindlib

NODES = ["ksg-control-plane", "ksg-worker", "ksg-worker2"]


def test_examples_for_kind_keep_everything_but_the_pods() -> None:
    docs = kindlib.examples_for(NODES, "kube-secgroups/probe:0.1.0")
    kinds = [d["kind"] for d in docs]
    assert kinds.count("SecurityGroup") == 2 and kinds.count("Namespace") == 1
    pods = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Pod"}
    # examples/30-pods.yaml: a1 on ksg-n1, a2 and b1 on ksg-n2, b2 and d1 on ksg-n3
    assert {n: p["spec"]["nodeName"] for n, p in pods.items()} == {
        "a1": "ksg-control-plane",
        "a2": "ksg-worker",
        "b1": "ksg-worker",
        "b2": "ksg-worker2",
        "d1": "ksg-worker2",
    }
    a1 = pods["a1"]
    assert a1["metadata"]["labels"] == {"tier": "a"} and "labels" in pods["d1"]["metadata"]
    (container,) = a1["spec"]["containers"]
    assert container["image"] == "kube-secgroups/probe:0.1.0"
    assert container["args"] == ["--name", "a1", "--control", "/run/probed.sock"]
    sysctls = a1["spec"]["securityContext"]["sysctls"]
    assert {"name": "net.ipv4.ping_group_range", "value": "0 2147483647"} in sysctls


def test_container_pids_and_rss_from_proc(tmp_path: Path) -> None:
    cid = "ab" * 32
    for pid, cgroup, rss in (
        (7, f"12:memory:/docker/n1/kubelet.slice/cri-containerd-{cid}.scope\n", 1000),
        (9, f"0::/system.slice/cri-containerd-{cid}.scope\n", 24),
        (8, "12:memory:/docker/n1/kubelet.slice/other.scope\n", 5000),
    ):
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "cgroup").write_text(cgroup)
        (d / "status").write_text(f"Name:\tx\nVmRSS:\t {rss} kB\n")
    (tmp_path / "self").mkdir()
    assert kindlib.container_pids(cid, tmp_path) == [7, 9]
    assert kindlib.rss_kib([7, 9, 12345], tmp_path) == 1024


def test_pod_endpoint_reaches_the_daemon_through_proc() -> None:
    ep = kindlib.PodEndpoint(label="demo/a1", node="n", ipv4="100.91.0.5", ipv6="", pid=4242)
    assert ep.control_socket == Path("/proc/4242/root/run/probed.sock")
    assert ep.netns == ""


def test_container_ids_only_running_containers() -> None:
    pod = {
        "status": {
            "containerStatuses": [
                {"name": "probe", "containerID": "containerd://abc", "state": {"running": {}}},
                {"name": "old", "containerID": "containerd://def", "state": {"terminated": {}}},
                {"name": "new", "state": {"waiting": {}}},
            ]
        }
    }
    assert kindlib.container_ids(pod) == {"probe": "abc"}
