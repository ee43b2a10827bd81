"""The README's demo: the spec's own example (Sg-A, Sg-B, rules A01, A02, B01, B02) live.

``secgroups-lab demo up`` (``make demo-lab``) starts the lab (3 nodes, operator, agents),
applies ``examples/``, waits until every pod runs and every node agent has applied its
compiled policy, then prints the connectivity matrix: expected (the core's evaluator
over what the API server holds) beside observed (real probes between the pods' network
namespaces and the outside host), and their difference, and how to use the lab that
keeps running. ``secgroups-lab demo down`` (``make demo-lab-down``) removes it all.

A second ``demo up`` while the lab runs changes nothing: it says so and how to reach the
lab (``--replace`` starts it afresh). Ctrl-C before the lab is up removes what was started;
after that, the lab stays up and the message says how to remove it. Either way one line,
exit status 130. The demo puts the pinned kubectl beside the plugin in the virtualenv's
``bin``, so the README's ``export PATH=$PWD/.venv/bin:$PATH`` finds both.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secgroups.compiled import COMPILED_NODE_KIND, NODE_REPORT_KIND, applied_nodes
from secgroups.compiling import compile_policy
from secgroups.evaluating import Evaluator, Packet
from secgroups.facts import ClusterFacts
from secgroups_lab import binaries, controlplane
from secgroups_lab._cmd import sigint_ignored
from secgroups_lab.cluster import REPO, LabCluster, LabError, LabState, lab_state
from secgroups_lab.matrix import Case, MatrixResult, Target, cases, run_matrix
from secgroups_lab.ownership import down_command
from secgroups_lab.probes import Endpoint

# The exit status of a command ended by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

EXAMPLES = REPO / "examples"
KINDS = "namespaces,nodes,pods,securitygroups,securitygrouprules,ipaddressgroups"


def cluster_facts(lab: LabCluster) -> ClusterFacts:
    """What the API server holds, as the compiler's input (the same objects the operator sees)."""
    items = json.loads(lab.kubectl("get", KINDS, "-A", "-o", "json"))["items"]
    return ClusterFacts.from_manifests(items)


def expectation(facts: ClusterFacts) -> Callable[[Endpoint, Target, Case], bool]:
    """The evaluator's verdict for one matrix cell (a new connection's first packet)."""
    evaluator = Evaluator(compile_policy(facts).policy)

    def expected(src: Endpoint, dst: Target, case: Case) -> bool:
        src_ip = src.ipv4 if case.family == 4 else src.ipv6
        dst_ip = case.address(dst)
        packet = Packet.make(src_ip, dst_ip, case.proto, case.port or None)
        return evaluator.evaluate(packet).allowed

    return expected


def wait_for(what: str, check: Callable[[], bool], timeout: float, lab: LabCluster) -> None:
    """Poll ``check`` until True; LabError at the deadline, or at once (naming its log) if a
    process of the lab exits meanwhile."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while not check():
        lab.check_alive(what)
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not within {timeout:.0f} s (logs: {lab.workdir / 'logs'})")
        time.sleep(0.2)
    lab.progress(f"{what} ({time.monotonic() - t0:.1f} s)")


def pods_running(lab: LabCluster, namespace: str) -> bool:
    pods = json.loads(lab.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    return bool(pods) and all((p.get("status") or {}).get("phase") == "Running" for p in pods)


def agents_applied(lab: LabCluster) -> bool:
    """Every node's CompiledNodePolicy has been applied by its agent at its current generation."""
    out = lab.kubectl("get", "compilednodepolicies,nodeagentreports", "-o", "json", check=False)
    try:
        items = json.loads(out)["items"]
    except ValueError:
        return False
    nodes = [i for i in items if i.get("kind") == COMPILED_NODE_KIND]
    reports = [i for i in items if i.get("kind") == NODE_REPORT_KIND]
    return len(nodes) >= lab.nodes and len(applied_nodes(nodes, reports)) == len(nodes)


def matrix(lab: LabCluster, namespace: str = "demo") -> MatrixResult:
    pods, outside = lab.endpoints()
    sources: list[Any] = [p for k, p in sorted(pods.items()) if k.startswith(f"{namespace}/")]
    if outside is not None:
        sources.append(outside)
    facts = cluster_facts(lab)
    return run_matrix(
        sources,
        cases(protos=("tcp", "icmp"), ports=(22, 80), families=(4, 6)),
        expectation(facts),
        timeout=1.0,
    )


def up(prefix: str = "ksg", nodes: int = 3, *, replace: bool = False) -> int:
    """The demo; the exit status: 0 (no mismatch, or the lab was already up), 1 (a
    mismatch, or the lab cannot start: LabError), 130 (Ctrl-C)."""
    try:
        controlplane.preflight()  # root, tools, the address blocks: before a long build
    except controlplane.ControlPlaneError as exc:
        raise LabError(str(exc)) from None
    state = lab_state(prefix)
    if state.live:
        if not replace or state.status == "busy":
            return already_up(state)
        say(f"--replace: removing the running lab {prefix}")
        LabCluster(prefix=prefix).down()
    lab = LabCluster(prefix=prefix, nodes=nodes, detached=True)
    t0 = time.monotonic()
    try:
        lab.up()
        link_kubectl()
        run_examples(lab)
        result = matrix(lab)
    except KeyboardInterrupt:
        return interrupted(lab, t0)
    except (LabError, RuntimeError) as exc:
        if not lab.is_up:
            raise
        raise LabError(f"{exc}\nThe lab is still up; `{down_command(prefix)}` removes it.") from exc
    print(result.render())
    print(usage(lab))
    return 1 if result.mismatches else 0


def run_examples(lab: LabCluster) -> None:
    """Apply examples/ and wait until the pods run and every agent applied its policy."""
    files = examples()
    # The examples name the default lab's nodes (ksg-n1…); another prefix has other names.
    text = "\n---\n".join(
        f.read_text().replace("nodeName: ksg-n", f"nodeName: {lab.prefix}-n") for f in files
    )
    lab.kubectl("apply", "--server-side", "-f", "-", input_text=text)
    lab.progress(f"applied {', '.join(f'examples/{f.name}' for f in files)}")
    wait_for("demo pods running", lambda: pods_running(lab, "demo"), 60.0, lab)
    wait_for("node agents applied the compiled policy", lambda: agents_applied(lab), 60.0, lab)


def say(message: str) -> None:
    print(f"[lab] {message}", file=sys.stderr, flush=True)


def venv_bin() -> Path | None:
    """The virtualenv's ``bin`` (where ``kubectl-secgroups`` is), if we run in one."""
    return Path(sys.prefix) / "bin" if sys.prefix != sys.base_prefix else None


def link_kubectl() -> Path | None:
    """Put the pinned kubectl into the virtualenv's ``bin`` (a symbolic link), so that the
    README's ``export PATH=$PWD/.venv/bin:$PATH`` finds it beside the plugin. A kubectl
    there that is not a link is left alone."""
    where = venv_bin()
    if where is None:
        return None
    link = where / "kubectl"
    target = binaries.paths().kubectl
    if link.is_symlink() and link.resolve() != target.resolve():
        link.unlink()
    if not link.exists() and not link.is_symlink():
        link.symlink_to(target)
    return link


def reach(lab: LabCluster) -> str:
    """The shell line that makes `kubectl` (ours, with the plugin) talk to this lab."""
    where = venv_bin()
    path = f"PATH={where}:$PATH " if where is not None else ""
    return f"export {path}KUBECONFIG={lab.kubeconfig}"


def usage(lab: LabCluster) -> str:
    """The demo's closing lines: the lab keeps running, how to use it, how to remove it."""
    return "\n".join(
        [
            "",
            f"The lab keeps running ({lab.nodes} nodes, the operator, an agent per node). "
            'To use it (README.md, "Debug a denied connection"):',
            f"  {reach(lab)}",
            "  kubectl secgroups trace --from pod/b1 --to pod/a1 --proto tcp --port 22 -n demo",
            f"`{down_command(lab.prefix)}` removes it.",
        ]
    )


def already_up(state: LabState) -> int:
    """A second `demo up`: say what runs and how to reach or remove it; change nothing."""
    lab = LabCluster(prefix=state.prefix)
    down = down_command(state.prefix)
    again = "make demo-lab REPLACE=1" if state.prefix == "ksg" else f"{down} && make demo-lab"
    print(f"{state.describe()}; nothing was changed.")
    if state.status in ("up", "degraded"):
        link_kubectl()
        print(f"  use it:    {reach(lab)}")
    if state.status == "degraded":
        print(f"  logs:      {lab.workdir / 'logs'}")
    if state.status != "busy":
        print(f"  remove it: {down}   (or start it afresh: {again})")
    return 0 if state.status == "up" else 1


def interrupted(lab: LabCluster, t0: float) -> int:
    """Ctrl-C: one line saying what is running now. Interrupted before the lab was up,
    up() has removed what it started."""
    with sigint_ignored():
        if lab.is_up or lab_state(lab.prefix).status in ("up", "degraded"):
            print(
                f"\n[lab] interrupted: the lab is still up; `{down_command(lab.prefix)}` "
                "removes it",
                file=sys.stderr,
            )
        else:
            logs = lab.workdir / "logs"
            kept = f"; logs: {logs}" if logs.is_dir() else ""
            print(
                f"\n[lab] interrupted after {time.monotonic() - t0:.0f} s: "
                f"stopped and removed what was started{kept}",
                file=sys.stderr,
            )
    return EXIT_INTERRUPTED


def down(prefix: str = "ksg") -> int:
    LabCluster(prefix=prefix).down()
    return 0


def examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))
