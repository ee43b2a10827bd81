"""Lab lifecycle: teardown leaves nothing behind, and a run killed with SIGKILL is cleaned up
by the next one (its probe daemons exit by themselves)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from secgroups_lab import underlay
from secgroups_lab._cmd import run
from secgroups_lab.network import (
    Lab,
    LabNetworkError,
    cleanup_leftovers,
    lab_netns,
    netns_unavailable,
    network_owner,
    pod_hash,
)

_why = netns_unavailable()
if _why:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netns


def _root_links() -> set[str]:
    out = run(["ip", "-o", "link", "show"]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _probe_processes(run_dir: Path) -> list[int]:
    """PIDs of probe daemons whose control socket is under ``run_dir`` (like ``ps``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"secgroups_lab.probed" in cmd and any(str(run_dir).encode() in a for a in cmd):
            pids.append(int(entry.name))
    return pids


def _wait_until(cond: object, timeout: float, what: str) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def test_teardown_leaves_nothing_behind() -> None:
    prefix = "ksgtd"
    cleanup_leftovers(prefix)
    links_before = _root_links()
    lab = Lab(prefix, nodes=2)
    with lab:
        lab.add_pods([(1, "x", "a"), (2, "x", "b")])
        lab.node_host(2)
        pids = lab.daemon_pids()
        run_dir = lab.run_dir
        assert len(pids) == 4  # two pods, the outside, node 2
        assert sorted(_probe_processes(run_dir)) == pids
        assert set(lab_netns(prefix)) == set(lab.netns_names())
        assert underlay.netns_exists(f"{prefix}-ul")
    assert lab_netns(prefix) == []
    assert not underlay.netns_exists(f"{prefix}-ul")  # this lab made it
    assert [n for n in underlay.netns_list() if n.startswith(f"{prefix}-")] == []
    # Nothing of ours in the root netns (other labs may add their own links meanwhile).
    ours = re.compile(rf"^({prefix}|ksg[0-9a-f]{{8}}$|eth0$|n\d+-eth0$|ext-eth0$|br0$)")
    assert [n for n in _root_links() - links_before if ours.match(n)] == []
    assert _probe_processes(run_dir) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    assert not run_dir.exists()
    # The blackholes go with the last lab (another lab may be up, e.g. the session's).
    assert underlay.blackholes_present() == [] or underlay.other_labs(prefix)
    # A second teardown is harmless.
    lab.teardown()


_KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    from secgroups_lab.network import Lab
    lab = Lab("ksgkill", nodes=1)
    lab.up()
    lab.add_pod(1, "x", "victim")
    print(" ".join(map(str, lab.daemon_pids())), flush=True)
    time.sleep(600)
    """
)


def test_a_killed_run_is_cleaned_up() -> None:
    prefix = "ksgkill"
    cleanup_leftovers(prefix)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        # The child prints its daemons' PIDs once its lab is up.
        ready, _, _ = select.select([proc.stdout], [], [], 60.0)
        assert ready, "the child lab did not come up within 60 s"
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
        # While its process runs, the lab is not leftovers: another session's cleanup
        # refuses, names that process, and removes nothing.
        with pytest.raises(LabNetworkError, match=rf"in use by process {proc.pid} "):
            cleanup_leftovers(prefix)
        assert all(Path(f"/proc/{p}").exists() for p in pids)
        assert network_owner(prefix) == proc.pid
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # The probe daemons notice that their parent is gone and exit by themselves.
    _wait_until(
        lambda: not any(Path(f"/proc/{p}").exists() for p in pids),
        10.0,
        "probe daemons exit after their lab process was killed",
    )
    victim = f"{prefix}-p-{pod_hash('x', 'victim')}"
    assert set(lab_netns(prefix)) == {f"{prefix}-n1", f"{prefix}-ext", victim}
    removed = cleanup_leftovers(prefix)
    assert f"{prefix}-n1" in removed and f"{prefix}-ul" in removed
    assert [n for n in underlay.netns_list() if n.startswith(f"{prefix}-")] == []
    assert cleanup_leftovers(prefix) == []
