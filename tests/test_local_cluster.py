"""The local Slurm cluster, exercised for real: daemons, multi-node jobs, GPU binding, sacct."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from inferx_slurm import localdev as lc
from inferx_slurm.localdev.daemons import is_ours, start_ticks
from inferx_slurm.localdev.layout import OWNER_ENV, PARTITION, load_state

pytestmark = pytest.mark.cluster

NODES, GPUS, CPUS = 2, 4, 4


STATE_ROOT = Path("/var/tmp")
OWNER_FILE = "pytest-owner"


def _reap_abandoned_clusters() -> None:
    """Stop clusters of earlier runs of this module that were killed before teardown."""
    for state_dir in STATE_ROOT.glob("ilc-test-*"):
        try:
            pid, ticks = (int(x) for x in (state_dir / OWNER_FILE).read_text().split())
        except (OSError, ValueError):
            continue  # no owner record: not ours to judge
        if start_ticks(pid) != ticks:
            lc.down(state_dir)
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root")
    _reap_abandoned_clusters()
    state_dir = STATE_ROOT / f"ilc-test-{uuid.uuid4().hex[:8]}"
    state_dir.mkdir()
    (state_dir / OWNER_FILE).write_text(f"{os.getpid()} {start_ticks(os.getpid())}")
    try:
        yield lc.up(nodes=NODES, gpus_per_node=GPUS, cpus_per_node=CPUS, state_dir=state_dir)
    finally:
        lc.down(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


def slurm(info: lc.ClusterInfo, *cmd: str, timeout: float = 60) -> str:
    res = subprocess.run(
        list(cmd), env={**os.environ, **info.env}, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr}"
    return res.stdout


def sbatch_wait(info: lc.ClusterInfo, tmp_path: Path, script: str, *args: str) -> tuple[str, str]:
    """Submit, block until the job ends, and return (job id, its output)."""
    out = tmp_path / "job.out"
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/bash\nset -eu\n" + script)
    job_id = slurm(
        info, "sbatch", "--parsable", "--wait", f"--output={out}", *args, str(path), timeout=90
    ).strip()
    return job_id, out.read_text()


def test_nodes_idle_with_gpus(cluster):
    assert cluster.up
    assert cluster.node_names == ["node1", "node2"]
    assert cluster.env["SLURM_CONF"] == str(cluster.slurm_conf)
    lines = slurm(cluster, "scontrol", "show", "node", "-o").splitlines()
    nodes = {}
    for line in lines:
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        nodes[fields["NodeName"]] = fields
    assert sorted(nodes) == ["node1", "node2"]
    for fields in nodes.values():
        assert fields["State"] == "IDLE"
        assert fields["Gres"] == f"gpu:{GPUS}"
        assert f"gres/gpu={GPUS}" in fields["CfgTRES"]
        assert fields["CPUTot"] == str(CPUS)
    partitions = slurm(cluster, "sinfo", "-h", "-o", "%P %a %D").split()
    assert partitions == [f"{PARTITION}*", "up", str(NODES)]


def test_two_node_job_step_spans_both_nodes(cluster, tmp_path):
    script = (
        "echo batch $(hostname)\n"
        "srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=2 "
        "bash -c 'echo step $(hostname) $SLURM_NODEID $CUDA_VISIBLE_DEVICES'\n"
    )
    job_id, out = sbatch_wait(
        cluster, tmp_path, script, "--nodes=2", "--gres=gpu:4", "--exclusive"
    )
    lines = out.split("\n")
    assert "batch node1" in lines, out
    steps = sorted(line.split()[1:] for line in lines if line.startswith("step "))
    assert steps == [["node1", "0", "0,1"], ["node2", "1", "0,1"]], out

    # slurmdbd records the end asynchronously; give it a moment (more on a busy machine).
    deadline = time.monotonic() + 60
    while True:
        rows = slurm(
            cluster, "sacct", "-j", job_id, "-X", "-n", "-P", "--format=JobID,State,ExitCode,NodeList"
        ).split()
        if rows and rows[0].split("|")[1] != "RUNNING" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rows == [f"{job_id}|COMPLETED|0:0|node[1-2]"]


def test_concurrent_gpu_steps_get_distinct_gpus(cluster, tmp_path):
    # Two 2-GPU steps on the first node must run at the same time: each waits (up to 60 s, the
    # launch skew a busy machine can add) for the other's marker file, so serialised steps,
    # where the second starts only once the first has given up, fail however long the wait.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    step = (
        "srun --exact --mem=0 --gpus-per-node=2 --nodes=1 --ntasks=1 --nodelist=$first "
        "bash -c 'touch {b}/$0; for i in $(seq 600); do [ -e {b}/$1 ] && break; sleep 0.1; done; "
        "[ -e {b}/$1 ] && echo $0 $CUDA_VISIBLE_DEVICES' {me} {other} &\n"
    )
    script = (
        'first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -1)\n'
        "srun --overlap --mem=0 --gpus-per-node=0 --nodes=1 --ntasks=1 --nodelist=$first "
        "bash -c 'echo infra ${CUDA_VISIBLE_DEVICES:-none}' &\n"
        + step.format(b=barrier, me="a", other="b")
        + step.format(b=barrier, me="b", other="a")
        + "wait\n"
    )
    _, out = sbatch_wait(cluster, tmp_path, script, "--nodes=2", "--gres=gpu:4", "--exclusive")
    seen = dict(line.split() for line in out.splitlines() if line.split()[:1] in (["a"], ["b"], ["infra"]))
    assert seen.get("infra") == "none", out
    assert {seen.get("a"), seen.get("b")} == {"0,1", "2,3"}, out


def test_scancel_kills_step_processes(cluster, tmp_path):
    tag = f"ilc-{uuid.uuid4().hex[:8]}"
    script = f"srun --nodes=2 --ntasks-per-node=1 bash -c 'exec -a {tag} sleep 300'\n"
    path = tmp_path / "sleep.sh"
    path.write_text("#!/bin/bash\n" + script)
    job_id = slurm(cluster, "sbatch", "--parsable", "--nodes=2", "-o", "/dev/null", str(path)).strip()

    def tagged() -> int:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        return sum(line.startswith(tag) for line in ps.splitlines())

    deadline = time.monotonic() + 60
    while tagged() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tagged() == 2, "the step's two tasks never started"
    slurm(cluster, "scancel", job_id)
    deadline = time.monotonic() + 60
    while tagged() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tagged() == 0
    # Leave the nodes idle for the next test: wait out the job's completion.
    while slurm(cluster, "squeue", "-h", "-j", job_id).strip() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_restart_node_after_slurmd_killed(cluster):
    old_pid = lc.kill_node("node2", cluster.state_dir)
    info = lc.restart_node("node2", cluster.state_dir)
    assert info.node_states == {"node1": "idle", "node2": "idle"}
    new_pid = load_state(cluster.state_dir).procs["slurmd-node2"].pid
    assert new_pid != old_pid
    assert Path(f"/proc/{new_pid}/cmdline").read_bytes().split(b"\0")[0] == b"slurmd"


def test_up_is_idempotent_and_rejects_other_shape(cluster):
    before = load_state(cluster.state_dir).procs
    t0 = time.monotonic()
    again = lc.up(nodes=NODES, gpus_per_node=GPUS, cpus_per_node=CPUS, state_dir=cluster.state_dir)
    # Unchanged daemons (below) prove nothing restarted; this bounds the checks up() makes of
    # a running cluster, with a busy machine's slack, well under a start's minute.
    assert time.monotonic() - t0 < 20
    assert again.up and again.slurm_conf == cluster.slurm_conf
    assert load_state(cluster.state_dir).procs == before
    with pytest.raises(lc.ClusterError, match="down"):
        lc.up(nodes=NODES + 1, gpus_per_node=GPUS, cpus_per_node=CPUS, state_dir=cluster.state_dir)


def test_down_is_idempotent_and_leaves_nothing(cluster):
    # Must stay the last test of this module: it stops the shared cluster.
    procs = load_state(cluster.state_dir).procs
    assert {"slurmctld", "slurmdbd", "slurmd-node1", "slurmd-node2"} <= set(procs)
    lc.down(cluster.state_dir)
    lc.down(cluster.state_dir)
    assert not lc.status(cluster.state_dir).up
    # Start time + owner marker: a recycled pid cannot pass as one of ours.
    survivors = [name for name, proc in procs.items() if is_ours(proc, cluster.state_dir)]
    assert survivors == []
    marker = f"{OWNER_ENV}={cluster.state_dir}".encode()
    leftovers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and marker in (entry / "environ").read_bytes().split(b"\0"):
                leftovers.append((entry.name, (entry / "comm").read_text().strip()))
        except OSError:
            continue
    assert leftovers == []
