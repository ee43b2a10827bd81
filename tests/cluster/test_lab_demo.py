"""The demo as a user runs it: `secgroups-lab demo up` (what `make demo` runs) as a process,
a second `demo up` while the lab is up, and Ctrl-C (SIGINT to the process group, as a
terminal sends it) before and after the lab is up (docs/lab.md, "The demo"); and the
walkthrough of docs/cli.md ("Debug a denied connection"), its commands run as written
against the demo's lab with the `export` line the demo prints.

Each test uses its own prefix, so it runs beside the session's lab (and a user's `ksg`).
They need the control-plane binaries, like the rest of this tier, and take a lab start
each (10-30 s on a loaded 2-core machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secgroups_lab import binaries, controlplane, underlay
from secgroups_lab.cluster import LabCluster, lab_state

REPO = Path(__file__).resolve().parents[2]
LAB_START = 240.0  # seconds a lab may take to come up on a loaded machine


def demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "secgroups_lab.main", "demo", *args]


def what_is_left(prefix: str) -> list[str]:
    """Everything of lab ``prefix`` that still exists (empty after a clean teardown)."""
    lab = LabCluster(prefix=prefix)
    left = [f"netns {n}" for n in underlay.netns_list() if n.startswith(f"{prefix}-")]
    if underlay.link_exists(controlplane.root_link(prefix)):
        left.append(f"link {controlplane.root_link(prefix)}")
    left += [f"process {n}[{p}]" for p, n in controlplane.find_daemons(lab.workdir).items()]
    state = lab_state(prefix)
    if state.status not in ("absent", "leftovers"):
        left.append(f"lab state {state.status}")
    left += [f for f in state.found if f.startswith("process ")]
    return left


class Demo:
    """`demo up` in its own process group (the terminal's foreground job), stderr read line
    by line as it comes."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # A terminal's foreground job gets SIGINT; a test run started in the background
        # (`cmd &` without job control) has SIGINT ignored, children inherit that, and
        # Python then never raises KeyboardInterrupt: the demo ran to its end and exited 0
        # under the "Ctrl-C". A handler of ours is reset to the default across exec.
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        if ignored:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.proc = self._start(prefix)
        finally:
            if ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.err: list[str] = []
        self._partial = b""

    @staticmethod
    def _start(prefix: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            demo("up", "--prefix", prefix),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )

    def wait_for_line(self, needle: str, timeout: float = LAB_START) -> None:
        """Read stderr (unbuffered: a line is seen as soon as it is written) until a line
        contains ``needle``."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            self.err += [line.decode() for line in lines]
            if any(needle in line.decode() for line in lines):
                return
        pytest.fail(f"no {needle!r} on stderr within {timeout:.0f} s:\n" + "\n".join(self.err))

    def ctrl_c(self) -> tuple[int, str, list[str]]:
        """SIGINT to the process group, as Ctrl-C in a terminal; the exit status, stdout and
        the stderr lines printed after the signal."""
        seen = len(self.err)
        os.killpg(self.proc.pid, signal.SIGINT)
        out, rest = self.proc.communicate(timeout=120)
        self.err += (self._partial.decode() + rest).splitlines()
        return self.proc.returncode, out, self.err[seen:]


@pytest.fixture
def prefix(request: pytest.FixtureRequest, lab_binaries: binaries.Binaries) -> Iterator[str]:
    """A fresh lab prefix for this test; whatever the test leaves is removed afterwards."""
    name = {
        "test_a_second_demo_says_the_lab_is_up_and_changes_nothing": "ksgd2",
        "test_ctrl_c_before_the_lab_is_up_removes_what_was_started": "ksgdi",
        "test_ctrl_c_after_the_lab_is_up_leaves_it_running_and_says_so": "ksgda",
    }[request.node.name]
    LabCluster(prefix=name).down()
    yield name
    with contextlib.suppress(Exception):
        LabCluster(prefix=name).down()


def walkthrough() -> list[tuple[str, str]]:
    """(command, shown output) of every ``$ …`` line of docs/cli.md's walkthrough, in order;
    a here-document belongs to its command."""
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text[
        text.index("## Debug a denied connection") : text.index("## What `trace` and `matrix`")
    ]
    steps: list[tuple[str, str]] = []
    for block in re.findall(r"```console\n(.*?)\n *```", section, re.S):
        lines = textwrap.dedent(block).splitlines()
        i = 0
        while i < len(lines):
            assert lines[i].startswith("$ "), lines[i]
            command = [lines[i][2:]]
            i += 1
            if "<<'EOF'" in command[0]:
                while lines[i] != "EOF":
                    command.append(lines[i])
                    i += 1
                command.append(lines[i])
                i += 1
            shown = []
            while i < len(lines) and not lines[i].startswith("$ "):
                shown.append(lines[i])
                i += 1
            steps.append(("\n".join(command), "\n".join(shown)))
    return steps


def run_walkthrough(prefix: str, reach: str) -> None:
    """Every walkthrough command, in a shell after the demo's ``export`` line ``reach``; its
    output must be what the page shows (the default lab's node names become ``prefix``'s)."""
    steps = walkthrough()
    assert len(steps) >= 8
    for command, shown in steps:
        script = command.replace("ksg-n", f"{prefix}-n")
        proc = subprocess.run(
            ["bash", "-c", f"{reach}\n{script}"], cwd=REPO, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert proc.stderr == "", (script, proc.stderr)
        expected = shown.replace("ksg-n", f"{prefix}-n")
        assert proc.stdout.rstrip("\n") == expected.rstrip("\n"), script


def daemon_pids(prefix: str) -> dict[str, int]:
    lab = LabCluster(prefix=prefix)
    pids = {f"cp {n}": p for p, n in controlplane.find_daemons(lab.workdir).items()}
    record = json.loads(lab.lab_file.read_text())
    pids.update({n: d["pid"] for n, d in record["daemons"].items()})
    return pids


@pytest.mark.slow
def test_a_second_demo_says_the_lab_is_up_and_changes_nothing(prefix: str) -> None:
    first = subprocess.run(
        demo("up", "--prefix", prefix), cwd=REPO, capture_output=True, text=True,
        timeout=LAB_START + 120, check=False,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "0 mismatches" in first.stdout
    # The closing lines: how to use the lab, and the command that removes it, last.
    down = f".venv/bin/secgroups-lab down --prefix {prefix}"
    assert first.stdout.rstrip().splitlines()[-1] == f"`{down}` removes it."
    assert f"KUBECONFIG=/run/kube-secgroups-lab/{prefix}/admin.kubeconfig" in first.stdout
    before = daemon_pids(prefix)
    assert len(before) == 3 + 1 + 1 + 3  # etcd, apiserver, kcm; kubelet; operator; 3 agents

    second = subprocess.run(
        demo("up", "--prefix", prefix), cwd=REPO, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr and "leftover" not in second.stdout + second.stderr
    assert second.stdout.startswith(f"The lab {prefix} is up (started by `")
    assert "nothing was changed" in second.stdout
    assert f"KUBECONFIG=/run/kube-secgroups-lab/{prefix}/admin.kubeconfig" in second.stdout
    assert down in second.stdout
    # Untouched: the same processes, all alive, and the API server still has the demo.
    assert daemon_pids(prefix) == before
    assert lab_state(prefix).status == "up"
    cp = controlplane.status(prefix)
    assert cp["readyz"] == 200

    # The README's walkthrough works as written with what the demo printed.
    reach = next(line.strip() for line in first.stdout.splitlines() if "KUBECONFIG=" in line)
    assert reach.startswith("export PATH=") and (Path(sys.prefix) / "bin" / "kubectl").exists()
    run_walkthrough(prefix, reach)

    gone = subprocess.run(
        demo("down", "--prefix", prefix), cwd=REPO, capture_output=True, text=True,
        timeout=180, check=False,
    )  # fmt: skip
    assert gone.returncode == 0, gone.stderr
    assert what_is_left(prefix) == []


@pytest.mark.slow
def test_ctrl_c_before_the_lab_is_up_removes_what_was_started(prefix: str) -> None:
    run = Demo(prefix)
    run.wait_for_line("starting kube-apiserver")
    rc, out, after = run.ctrl_c()
    assert rc == 130, "\n".join(run.err)
    text = "\n".join(run.err)
    assert "Traceback" not in text and "last lines of" not in text
    # One line, the last, naming where the logs are; no component log in the terminal
    # (progress lines printed as the signal arrived may come before it).
    lines = [line for line in after if line.strip()]
    assert [line for line in lines if "interrupted" in line] == lines[-1:], after
    assert lines[-1].startswith("[lab] interrupted after ")
    assert lines[-1].endswith(
        f": stopped and removed what was started; logs: /run/kube-secgroups-lab/{prefix}/logs"
    )
    assert all(line.startswith("[lab] ") for line in lines), after
    assert out == ""
    assert what_is_left(prefix) == []
    # A new demo is not confused by what the interrupted one kept (its logs).
    assert lab_state(prefix).status in ("absent", "leftovers")


@pytest.mark.slow
def test_ctrl_c_after_the_lab_is_up_leaves_it_running_and_says_so(prefix: str) -> None:
    run = Demo(prefix)
    run.wait_for_line(f"lab {prefix} up (")
    rc, _, after = run.ctrl_c()
    assert rc == 130, "\n".join(run.err)
    assert "Traceback" not in "\n".join(run.err)
    lines = [line for line in after if line.strip()]
    assert [line for line in lines if "interrupted" in line] == lines[-1:], after
    assert lines[-1] == (
        f"[lab] interrupted: the lab is still up; "
        f"`.venv/bin/secgroups-lab down --prefix {prefix}` removes it"
    ), after
    assert all(line.startswith("[lab] ") for line in lines), after
    # Still up, every process of it, and a second demo says so.
    assert lab_state(prefix).status == "up"
    assert controlplane.status(prefix)["readyz"] == 200
    again = subprocess.run(
        demo("up", "--prefix", prefix), cwd=REPO, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert again.returncode == 0 and "is up" in again.stdout, again.stdout + again.stderr
    gone = subprocess.run(
        demo("down", "--prefix", prefix), cwd=REPO, capture_output=True, text=True,
        timeout=180, check=False,
    )  # fmt: skip
    assert gone.returncode == 0, gone.stderr
    assert what_is_left(prefix) == []
