"""A real multi-node Slurm 22.05 cluster on one machine, with fake GPUs.

Every "node" is a ``slurmd`` running in its own UTS namespace (so ``hostname``
inside a job says ``node1``, ``node2`` ...), all talking to one ``slurmctld``
over 127.0.0.1 on private ports. Accounting goes through ``slurmdbd`` backed by
a private MariaDB, so ``sacct`` behaves as on a production cluster. GPUs are
placeholder device nodes declared through ``gres.conf``; Slurm binds them to
steps and sets ``CUDA_VISIBLE_DEVICES`` exactly as it would for real devices.

Slurm 22.05 step semantics worth knowing (they hold on real clusters too):
inside one allocation, steps started with ``--overlap`` share *all* resources,
GPUs included, so two ``--overlap --gres=gpu:2`` steps on one node both get
GPUs 0,1. Steps that must get disjoint GPUs and run at the same time need
``--exact --mem=0 --gpus-per-node=N`` and an allocation with enough CPUs for
all of them (``--exclusive``, or ``--cpus-per-task``); ``--gpus-per-node=0``
keeps a helper step off the GPUs whichever way the job asked for them.

Everything (configs, logs, spool, database, munge key and socket) lives in one
state directory: ``$INFERX_LOCAL_CLUSTER_DIR`` or ``/var/tmp/inferx-local-cluster``.
Nothing under ``/etc`` is touched and no system service is started or stopped.

Client commands (``sbatch``, ``srun``, ``squeue``, ``sacct``, ``scancel``) and
submitit only need ``SLURM_CONF`` to point at the private config::

    python -m inferx_slurm.localdev up --nodes 3
    export SLURM_CONF=/var/tmp/inferx-local-cluster/slurm.conf
    sbatch --nodes=2 --gres=gpu:4 --wrap 'srun hostname'
    python -m inferx_slurm.localdev down

From Python, ``os.environ.update(up().env)`` does the same.

Requires root: ``slurmd`` needs ``unshare --uts`` to fake a hostname and the
daemons run with ``SlurmUser=root``. Missing packages are installed with apt
(``setup_scripts/install_slurm.sh``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from pydantic import BaseModel

from inferx_slurm.localdev.daemons import cancel_all_jobs, ensure_packages, is_ours, kill_orphan_stepds, node_states, require_root, running_procs, start_missing, stop_proc, wait_nodes_ready
from inferx_slurm.localdev.layout import CLUSTER_NAME, DEFAULT_STATE_DIR, ENV_STATE_DIR, PARTITION, ClusterError, Shape, State, client_env, expected_procs, load_state, locked, node_key, node_names, resolve_state_dir, save_state, stop_order
from inferx_slurm.localdev.slurm_conf import pick_ports, write_configs

class ClusterInfo(BaseModel):
    up: bool
    state_dir: Path
    nodes: int
    gpus_per_node: int
    cpus_per_node: int
    gpu_vendor: str = "nvidia"
    node_names: list[str]
    partition: str = PARTITION
    cluster_name: str = CLUSTER_NAME
    slurm_conf: Path
    # What client commands need (sbatch/srun/squeue/sacct/scancel, submitit).
    env: dict[str, str]
    # Per-node Slurm state as sinfo reports it (e.g. "idle", "down*"), empty when down.
    node_states: dict[str, str] = {}


def up(
    nodes: int = 3,
    gpus_per_node: int = 4,
    cpus_per_node: int = 8,
    state_dir: Path | None = None,
    gpu_vendor: str = "nvidia",
) -> ClusterInfo:
    """Start (or reuse) the local cluster and wait until every node is usable.

    Idempotent: when the cluster in ``state_dir`` already runs with this shape,
    only dead daemons (e.g. a killed slurmd) are restarted. A different shape
    while running is an error: call ``down()`` first.
    """
    if nodes < 1 or gpus_per_node < 0 or cpus_per_node < 1:
        raise ValueError("need nodes >= 1, gpus_per_node >= 0, cpus_per_node >= 1")
    if gpu_vendor not in ("nvidia", "amd"):
        raise ValueError(f"gpu_vendor: got {gpu_vendor!r}; expected nvidia or amd")
    require_root()
    sd = resolve_state_dir(state_dir)
    shape = Shape(nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_node=cpus_per_node, gpu_vendor=gpu_vendor)
    sd.mkdir(parents=True, exist_ok=True)
    with locked(sd):
        st = load_state(sd)
        running = running_procs(st, sd)
        if running and st.shape is not None and st.shape != shape:
            raise ClusterError(
                f"local cluster in {sd} is running with {st.shape.nodes} nodes x "
                f"{st.shape.gpus_per_node} {st.shape.gpu_vendor} GPUs x {st.shape.cpus_per_node} CPUs, but "
                f"{nodes} x {gpus_per_node} {gpu_vendor} x {cpus_per_node} was requested; run "
                f"`inferx-slurm local-cluster down` (or localdev.down()) first"
            )
        if not running:
            ensure_packages()
            st.shape = shape
            st.ports = pick_ports(sd, shape.nodes, st.ports)
            st.procs = {}
            write_configs(sd, st)
            save_state(sd, st)
        start_missing(sd, st)
        wait_nodes_ready(sd, st)
        return _info(sd, st)


def down(state_dir: Path | None = None) -> None:
    """Stop every daemon this module started for ``state_dir``; a no-op when none run.

    Running jobs are cancelled first so their steps' processes go away too.
    Daemons not started by us (e.g. a system munged) are never touched.
    """
    sd = resolve_state_dir(state_dir)
    if not sd.exists():
        return
    require_root()
    with locked(sd):
        st = load_state(sd)
        running = running_procs(st, sd)
        if "slurmctld" in running:
            cancel_all_jobs(sd, st)
        # Reverse start order: nodes before the controller, accounting last.
        for name in sorted(running, key=stop_order):
            stop_proc(st.procs[name], sd)
        kill_orphan_stepds(sd)
        st.procs = {}
        save_state(sd, st)


def status(state_dir: Path | None = None) -> ClusterInfo:
    """Describe the cluster in ``state_dir``; ``up`` is True only if every daemon runs."""
    sd = resolve_state_dir(state_dir)
    st = load_state(sd) if sd.exists() else State()
    return _info(sd, st)


def kill_node(name: str, state_dir: Path | None = None, sig: int = signal.SIGKILL) -> int:
    """Simulate a node failure by signalling that node's slurmd; returns its pid.

    Job steps already running on the node keep running (their slurmstepd is a
    separate process), exactly like a slurmd crash on a real cluster.
    """
    sd = resolve_state_dir(state_dir)
    with locked(sd):
        st = load_state(sd)
        key = node_key(st, name)
        proc = st.procs.get(key)
        if proc is None or not is_ours(proc, sd):
            raise ClusterError(f"slurmd for {name} is not running in {sd}")
        os.kill(proc.pid, sig)
        return proc.pid


def restart_node(name: str, state_dir: Path | None = None) -> ClusterInfo:
    """(Re)start one node's slurmd and wait until the node is back in service."""
    sd = resolve_state_dir(state_dir)
    with locked(sd):
        st = load_state(sd)
        key = node_key(st, name)
        proc = st.procs.get(key)
        if proc is not None and is_ours(proc, sd):
            stop_proc(proc, sd)
        st.procs.pop(key, None)
        save_state(sd, st)
        start_missing(sd, st)
        wait_nodes_ready(sd, st)
        return _info(sd, st)


def _info(sd: Path, st: State) -> ClusterInfo:
    shape = st.shape or Shape(nodes=0, gpus_per_node=0, cpus_per_node=0)
    running = running_procs(st, sd)
    expected = expected_procs(shape.nodes) if st.shape else []
    is_up = bool(expected) and all(name in running for name in expected)
    return ClusterInfo(
        up=is_up,
        state_dir=sd,
        nodes=shape.nodes,
        gpus_per_node=shape.gpus_per_node,
        cpus_per_node=shape.cpus_per_node,
        gpu_vendor=shape.gpu_vendor,
        node_names=node_names(shape.nodes),
        slurm_conf=sd / "slurm.conf",
        env=client_env(sd),
        node_states=node_states(sd) if "slurmctld" in running else {},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inferx_slurm.localdev",
        description="Run a local multi-node Slurm cluster with fake GPUs on this machine.",
    )
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"default: ${ENV_STATE_DIR} or {DEFAULT_STATE_DIR}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start the cluster (idempotent)")
    p_up.add_argument("--nodes", type=int, default=3)
    p_up.add_argument("--gpus-per-node", type=int, default=4)
    p_up.add_argument("--cpus-per-node", type=int, default=8)
    p_up.add_argument("--gpu-vendor", choices=["nvidia", "amd"], default="nvidia")
    sub.add_parser("down", help="stop everything this tool started")
    sub.add_parser("status", help="print the cluster state as JSON")
    p_restart = sub.add_parser("restart-node", help="restart one node's slurmd")
    p_restart.add_argument("name")
    p_kill = sub.add_parser("kill-node", help="kill -9 one node's slurmd (failure drill)")
    p_kill.add_argument("name")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "up":
            info = up(args.nodes, args.gpus_per_node, args.cpus_per_node, args.state_dir, args.gpu_vendor)
            print(f"cluster up: {', '.join(info.node_names)} in partition {info.partition!r}")
            print(f"export SLURM_CONF={info.slurm_conf}")
        elif args.cmd == "down":
            down(args.state_dir)
            print("cluster down")
        elif args.cmd == "status":
            print(status(args.state_dir).model_dump_json(indent=2))
        elif args.cmd == "restart-node":
            restart_node(args.name, args.state_dir)
            print(f"{args.name} back in service")
        elif args.cmd == "kill-node":
            print(f"killed slurmd of {args.name} (pid {kill_node(args.name, args.state_dir)})")
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
