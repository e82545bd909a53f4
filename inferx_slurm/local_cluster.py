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

    python -m inferx_slurm.local_cluster up --nodes 3
    export SLURM_CONF=/var/tmp/inferx-local-cluster/slurm.conf
    sbatch --nodes=2 --gres=gpu:4 --wrap 'srun hostname'
    python -m inferx_slurm.local_cluster down

From Python, ``os.environ.update(up().env)`` does the same.

Requires root: ``slurmd`` needs ``unshare --uts`` to fake a hostname and the
daemons run with ``SlurmUser=root``. Missing packages are installed with apt
(``setup_scripts/install_slurm.sh``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

ENV_STATE_DIR = "INFERX_LOCAL_CLUSTER_DIR"
DEFAULT_STATE_DIR = Path("/var/tmp/inferx-local-cluster")
PARTITION = "local"
CLUSTER_NAME = "inferx"
CONTROLLER_HOSTNAME = "inferx-ctl"
# Declared (not real) memory; only used for scheduling decisions.
MEM_PER_CPU_MB = 4096

# Every daemon we start carries this variable; together with the recorded start
# time it lets down() prove a pid is ours before signalling it.
_OWNER_ENV = "INFERX_LOCAL_CLUSTER_STATE_DIR"
_INSTALL_SCRIPT = Path(__file__).resolve().parent.parent / "setup_scripts" / "install_slurm.sh"
_APT_PACKAGES = ("slurm-wlm", "slurmdbd", "munge", "mariadb-server")
_REQUIRED_BINARIES = (
    "slurmctld", "slurmd", "slurmdbd", "sbatch", "srun", "sinfo", "squeue", "scontrol",
    "scancel", "sacct", "sacctmgr", "munged", "munge", "mariadbd", "mariadb-install-db",
    "mariadb", "unshare",
)
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
# Below the kernel's ephemeral range (32768+) so outgoing connections never
# squat on them, and away from Slurm's defaults (6817-6819).
_PORT_SCAN_START = 27000
_PORT_SCAN_END = 32000

_NODE_READY_TIMEOUT_S = 90.0
_DAEMON_READY_TIMEOUT_S = 60.0
_STOP_GRACE_S = 10.0
_NVIDIA_MAJOR = 195
_MAX_STATE_DIR_LEN = 60

# Popen handles of daemons started by this process, kept so their exit status is
# collected (no zombies) and Python does not warn about live children on GC.
_CHILDREN: dict[int, subprocess.Popen] = {}


class ClusterError(RuntimeError):
    """The local cluster could not be brought to the requested state."""


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


class _Shape(BaseModel):
    nodes: int
    gpus_per_node: int
    cpus_per_node: int
    # amd: gres Flags=amd_gpu_env, so Slurm sets ROCR_VISIBLE_DEVICES (not CUDA_VISIBLE_DEVICES)
    # for the GPUs of a step, as it does on AMD nodes (AutoDetect=rsmi implies the same flag).
    gpu_vendor: str = "nvidia"


class _Proc(BaseModel):
    pid: int
    start_ticks: int
    exe: str


class _State(BaseModel):
    shape: _Shape | None = None
    ports: dict[str, int] = {}
    procs: dict[str, _Proc] = {}


# --------------------------------------------------------------------------- public API


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
    _require_root()
    sd = _state_dir(state_dir)
    shape = _Shape(nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_node=cpus_per_node, gpu_vendor=gpu_vendor)
    sd.mkdir(parents=True, exist_ok=True)
    with _locked(sd):
        st = _load(sd)
        running = _running_procs(st, sd)
        if running and st.shape is not None and st.shape != shape:
            raise ClusterError(
                f"local cluster in {sd} is running with {st.shape.nodes} nodes x "
                f"{st.shape.gpus_per_node} {st.shape.gpu_vendor} GPUs x {st.shape.cpus_per_node} CPUs, but "
                f"{nodes} x {gpus_per_node} {gpu_vendor} x {cpus_per_node} was requested; run "
                f"`inferx-slurm local-cluster down` (or local_cluster.down()) first"
            )
        if not running:
            _ensure_packages()
            st.shape = shape
            st.ports = _pick_ports(sd, shape.nodes, st.ports)
            st.procs = {}
            _write_configs(sd, st)
            _save(sd, st)
        _start_missing(sd, st)
        _wait_nodes_ready(sd, st)
        return _info(sd, st)


def down(state_dir: Path | None = None) -> None:
    """Stop every daemon this module started for ``state_dir``; a no-op when none run.

    Running jobs are cancelled first so their steps' processes go away too.
    Daemons not started by us (e.g. a system munged) are never touched.
    """
    sd = _state_dir(state_dir)
    if not sd.exists():
        return
    _require_root()
    with _locked(sd):
        st = _load(sd)
        running = _running_procs(st, sd)
        if "slurmctld" in running:
            _cancel_all_jobs(sd, st)
        # Reverse start order: nodes before the controller, accounting last.
        for name in sorted(running, key=_stop_order):
            _stop(st.procs[name], sd)
        _kill_orphan_stepds(sd)
        st.procs = {}
        _save(sd, st)


def status(state_dir: Path | None = None) -> ClusterInfo:
    """Describe the cluster in ``state_dir``; ``up`` is True only if every daemon runs."""
    sd = _state_dir(state_dir)
    st = _load(sd) if sd.exists() else _State()
    return _info(sd, st)


def kill_node(name: str, state_dir: Path | None = None, sig: int = signal.SIGKILL) -> int:
    """Simulate a node failure by signalling that node's slurmd; returns its pid.

    Job steps already running on the node keep running (their slurmstepd is a
    separate process), exactly like a slurmd crash on a real cluster.
    """
    sd = _state_dir(state_dir)
    with _locked(sd):
        st = _load(sd)
        key = _node_key(st, name)
        proc = st.procs.get(key)
        if proc is None or not _is_ours(proc, sd):
            raise ClusterError(f"slurmd for {name} is not running in {sd}")
        os.kill(proc.pid, sig)
        return proc.pid


def restart_node(name: str, state_dir: Path | None = None) -> ClusterInfo:
    """(Re)start one node's slurmd and wait until the node is back in service."""
    sd = _state_dir(state_dir)
    with _locked(sd):
        st = _load(sd)
        key = _node_key(st, name)
        proc = st.procs.get(key)
        if proc is not None and _is_ours(proc, sd):
            _stop(proc, sd)
        st.procs.pop(key, None)
        _save(sd, st)
        _start_missing(sd, st)
        _wait_nodes_ready(sd, st)
        return _info(sd, st)


# --------------------------------------------------------------------------- layout


def _state_dir(state_dir: Path | None) -> Path:
    if state_dir is None:
        state_dir = Path(os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR)
    sd = Path(state_dir).expanduser().resolve()
    # Unix socket paths (munge, MariaDB, slurmstepd's per-step sockets in the
    # spool dir) are capped at 107 bytes.
    if len(str(sd)) > _MAX_STATE_DIR_LEN:
        raise ClusterError(
            f"state dir path {sd} is too long ({len(str(sd))} > {_MAX_STATE_DIR_LEN} chars) for "
            f"the Unix sockets placed under it; pick a shorter one, e.g. under /var/tmp"
        )
    return sd


def _node_names(n: int) -> list[str]:
    return [f"node{i}" for i in range(1, n + 1)]


def _node_key(st: _State, name: str) -> str:
    if st.shape is None or name not in _node_names(st.shape.nodes):
        raise ClusterError(f"no node named {name!r} in this cluster")
    return f"slurmd-{name}"


def _munge_socket(sd: Path) -> Path:
    return sd / "munge" / "munge.socket"


def _mariadb_socket(sd: Path) -> Path:
    return sd / "mariadb" / "mysqld.sock"


def _client_env(sd: Path) -> dict[str, str]:
    return {"SLURM_CONF": str(sd / "slurm.conf")}


def _daemon_env(sd: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(_client_env(sd))
    env[_OWNER_ENV] = str(sd)
    env["PATH"] = ":".join([env.get("PATH", "/usr/bin:/bin"), *_SBIN_DIRS])
    return env


def _info(sd: Path, st: _State) -> ClusterInfo:
    shape = st.shape or _Shape(nodes=0, gpus_per_node=0, cpus_per_node=0)
    running = _running_procs(st, sd)
    expected = _expected_procs(shape.nodes) if st.shape else []
    is_up = bool(expected) and all(name in running for name in expected)
    return ClusterInfo(
        up=is_up,
        state_dir=sd,
        nodes=shape.nodes,
        gpus_per_node=shape.gpus_per_node,
        cpus_per_node=shape.cpus_per_node,
        gpu_vendor=shape.gpu_vendor,
        node_names=_node_names(shape.nodes),
        slurm_conf=sd / "slurm.conf",
        env=_client_env(sd),
        node_states=_node_states(sd) if "slurmctld" in running else {},
    )


# --------------------------------------------------------------------------- state file


@contextlib.contextmanager
def _locked(sd: Path) -> Iterator[None]:
    # Serialises up/down/restart across processes (tests running in parallel,
    # a demo in another shell) for one state dir.
    sd.mkdir(parents=True, exist_ok=True)
    with open(sd / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load(sd: Path) -> _State:
    path = sd / "state.json"
    if not path.exists():
        return _State()
    return _State.model_validate_json(path.read_text())


def _save(sd: Path, st: _State) -> None:
    tmp = sd / "state.json.tmp"
    tmp.write_text(st.model_dump_json(indent=2))
    tmp.replace(sd / "state.json")


# --------------------------------------------------------------------------- packages


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ClusterError(
            "the local Slurm cluster must be managed as root (slurmd needs `unshare --uts` "
            "to fake node hostnames and the daemons run as SlurmUser=root)"
        )


def _which(name: str) -> str | None:
    path = ":".join([os.environ.get("PATH", ""), *_SBIN_DIRS])
    return shutil.which(name, path=path)


def _ensure_packages() -> None:
    missing = [b for b in _REQUIRED_BINARIES if _which(b) is None]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if _INSTALL_SCRIPT.exists():
        cmds = [["bash", str(_INSTALL_SCRIPT)]]
    else:
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
        cmds = [[*apt, "update", "-q"], [*apt, "install", "-y", "-q", *_APT_PACKAGES]]
    for cmd in cmds:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise ClusterError(
                f"installing Slurm packages failed ({' '.join(cmd)} exited {res.returncode}); "
                f"missing binaries: {', '.join(missing)}. Output tail:\n"
                + _tail_text(res.stdout + res.stderr)
            )
    still = [b for b in _REQUIRED_BINARIES if _which(b) is None]
    if still:
        raise ClusterError(f"after installing packages these binaries are still missing: {still}")


# --------------------------------------------------------------------------- ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _pick_ports(sd: Path, nodes: int, previous: dict[str, int]) -> dict[str, int]:
    names = ["slurmctld", "slurmdbd", "mariadb", *(f"slurmd-{n}" for n in _node_names(nodes))]
    if set(previous) == set(names) and all(_port_free(p) for p in previous.values()):
        return previous
    # Start the scan at a per-state-dir offset so two clusters (a demo and a
    # test run) rarely even probe the same ports.
    span = _PORT_SCAN_END - _PORT_SCAN_START
    offset = int(hashlib.sha1(str(sd).encode()).hexdigest(), 16) % span
    width = len(names)
    for i in range(0, span, width):
        base = _PORT_SCAN_START + (offset + i) % (span - width)
        block = range(base, base + width)
        if all(_port_free(p) for p in block):
            return dict(zip(names, block))
    raise ClusterError(
        f"no {width} consecutive free TCP ports in {_PORT_SCAN_START}-{_PORT_SCAN_END}"
    )


# --------------------------------------------------------------------------- configs


def _write_configs(sd: Path, st: _State) -> None:
    assert st.shape is not None
    shape, ports = st.shape, st.ports
    for sub in ("log", "run", "ctld", "spool", "munge", "mariadb", "gpus"):
        (sd / sub).mkdir(parents=True, exist_ok=True)
    # munged refuses sockets in group/world-writable directories.
    os.chmod(sd, 0o755)
    os.chmod(sd / "munge", 0o700)

    names = _node_names(shape.nodes)
    for name in names:
        (sd / "spool" / name).mkdir(parents=True, exist_ok=True)
        gdir = sd / "gpus" / name
        shutil.rmtree(gdir, ignore_errors=True)
        gdir.mkdir(parents=True)
        for i in range(shape.gpus_per_node):
            _make_fake_gpu(gdir / f"nvidia{i}", i)

    mem = shape.cpus_per_node * MEM_PER_CPU_MB
    node_lines = []
    gres_lines = ["AutoDetect=off"]
    for name in names:
        gres = f" Gres=gpu:{shape.gpus_per_node}" if shape.gpus_per_node else ""
        node_lines.append(
            f"NodeName={name} NodeHostname={name} NodeAddr=127.0.0.1 "
            f"Port={ports[f'slurmd-{name}']} CPUs={shape.cpus_per_node} Boards=1 "
            f"SocketsPerBoard=1 CoresPerSocket={shape.cpus_per_node} ThreadsPerCore=1 "
            f"RealMemory={mem}{gres} State=UNKNOWN"
        )
        if shape.gpus_per_node:
            gpu_range = "0" if shape.gpus_per_node == 1 else f"[0-{shape.gpus_per_node - 1}]"
            flags = " Flags=amd_gpu_env" if shape.gpu_vendor == "amd" else ""
            gres_lines.append(
                f"NodeName={name} Name=gpu File={sd / 'gpus' / name}/nvidia{gpu_range}{flags}"
            )

    slurm_conf = f"""\
# Generated by inferx_slurm.local_cluster; rewritten on every fresh `up`.
ClusterName={CLUSTER_NAME}
SlurmctldHost={CONTROLLER_HOSTNAME}(127.0.0.1)
SlurmctldPort={ports['slurmctld']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={_munge_socket(sd)}
StateSaveLocation={sd / 'ctld'}
SlurmdSpoolDir={sd / 'spool'}/%n
SlurmctldPidFile={sd / 'run'}/slurmctld.pid
SlurmdPidFile={sd / 'run'}/slurmd-%n.pid
SlurmctldLogFile={sd / 'log'}/slurmctld.log
SlurmdLogFile={sd / 'log'}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# Several slurmd share this host and declare more CPUs/GPUs than exist.
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={MEM_PER_CPU_MB}
GresTypes=gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports['slurmdbd']}
# Connections to slurmdbd take their munge socket from here, not from AuthInfo.
AccountingStoragePass={_munge_socket(sd)}
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Short timeouts so a dead node is noticed in seconds, not minutes.
SlurmctldTimeout=10
SlurmdTimeout=10
InactiveLimit=0
KillWait=5
MinJobAge=300
KillOnBadExit=1
ReturnToService=2
MailProg=/bin/true
{chr(10).join(node_lines)}
PartitionName={PARTITION} Nodes={','.join(names)} Default=YES MaxTime=INFINITE State=UP
"""
    _write_if_changed(sd / "slurm.conf", slurm_conf, 0o644)
    _write_if_changed(sd / "gres.conf", "\n".join(gres_lines) + "\n", 0o644)

    pw_file = sd / "mariadb" / "slurm.password"
    if not pw_file.exists():
        pw_file.write_text(secrets.token_hex(16))
        os.chmod(pw_file, 0o600)
    dbd_conf = f"""\
# Generated by inferx_slurm.local_cluster.
AuthType=auth/munge
AuthInfo=socket={_munge_socket(sd)}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports['slurmdbd']}
SlurmUser=root
PidFile={sd / 'run'}/slurmdbd.pid
LogFile={sd / 'log'}/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports['mariadb']}
StorageUser=slurm
StoragePass={pw_file.read_text().strip()}
StorageLoc=slurm_acct_db
"""
    # slurmdbd refuses a config readable by others (it holds the DB password).
    _write_if_changed(sd / "slurmdbd.conf", dbd_conf, 0o600)

    key = sd / "munge" / "munge.key"
    if not key.exists():
        key.write_bytes(secrets.token_bytes(1024))
    os.chmod(key, 0o400)


def _make_fake_gpu(path: Path, index: int) -> None:
    # Slurm only binds GPUs (and sets CUDA_VISIBLE_DEVICES) for gres files that
    # are character devices; it stat()s them but never opens them. Use the
    # NVIDIA major number so they look like /dev/nvidiaN.
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(_NVIDIA_MAJOR, index))
    except PermissionError:
        # Without CAP_MKNOD jobs still get GPUs allocated, but slurmd rejects
        # the files and CUDA_VISIBLE_DEVICES stays unset.
        path.touch()


def _write_if_changed(path: Path, text: str, mode: int) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    os.chmod(path, mode)


# --------------------------------------------------------------------------- processes


def _expected_procs(nodes: int) -> list[str]:
    return ["munged", "mariadbd", "slurmdbd", "slurmctld", *(f"slurmd-{n}" for n in _node_names(nodes))]


def _stop_order(name: str) -> int:
    order = _expected_procs(0)
    return -order.index(name) if name in order else -len(order)  # slurmd-* first


def _start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot, or None if gone/zombie."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; parse after its closing paren.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _alive(proc: _Proc) -> bool:
    return _start_ticks(proc.pid) == proc.start_ticks


def _is_ours(proc: _Proc, sd: Path) -> bool:
    if _start_ticks(proc.pid) != proc.start_ticks:
        return False
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    # Right after spawn the pid may still be the unshare/sh launcher that is
    # about to exec the daemon (cmdline reads empty while exec is underway).
    argv0 = Path(cmdline[0].decode(errors="replace")).name
    exe_ok = argv0 in (proc.exe, "unshare", "sh", "")
    owner_ok = f"{_OWNER_ENV}={sd}".encode() in environ
    return exe_ok and owner_ok


def _running_procs(st: _State, sd: Path) -> set[str]:
    return {name for name, proc in st.procs.items() if _is_ours(proc, sd)}


def _spawn(sd: Path, st: _State, name: str, exe: str, argv: list[str]) -> _Proc:
    with open(sd / "log" / f"{name}.stdout", "ab") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_daemon_env(sd),
            cwd=sd,
            # Own session: survives the caller's exit and its terminal's ^C.
            start_new_session=True,
        )
    _CHILDREN[popen.pid] = popen
    ticks = _start_ticks(popen.pid)
    if ticks is None:
        raise ClusterError(f"{name} exited immediately; see {sd / 'log'}/{name}.stdout")
    proc = _Proc(pid=popen.pid, start_ticks=ticks, exe=exe)
    st.procs[name] = proc
    _save(sd, st)
    return proc


def _stop(proc: _Proc, sd: Path) -> None:
    if not _is_ours(proc, sd):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    while time.monotonic() < deadline:
        if not _alive(proc):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(proc):
        time.sleep(0.05)


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) for every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X"):
            table[int(entry.name)] = (int(fields[1]), comm)
    return table


def _kill_orphan_stepds(sd: Path) -> None:
    # slurmstepd outlives a killed slurmd (as on real clusters) and keeps its
    # job's processes alive; once the whole cluster goes away they must go too.
    marker = f"{_OWNER_ENV}={sd}".encode()
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    victims: list[int] = []
    for pid, (_, comm) in table.items():
        if comm != "slurmstepd":
            continue
        try:
            if marker not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        stack = [pid]
        while stack:
            p = stack.pop()
            victims.append(p)
            stack.extend(children.get(p, []))
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _run(cmd: list[str], sd: Path, timeout: float = 30, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = _daemon_env(sd)
    env.pop(_OWNER_ENV)
    res = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and res.returncode != 0:
        raise ClusterError(
            f"`{' '.join(cmd)}` exited {res.returncode}:\n{_tail_text(res.stdout + res.stderr)}"
        )
    return res


def _tail_text(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return _tail_text(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log)"


def _log_tails(sd: Path, names: list[str]) -> str:
    parts = []
    for name in names:
        for path in (sd / "log" / f"{name}.log", sd / "log" / f"{name}.stdout"):
            if path.exists() and path.stat().st_size:
                parts.append(f"--- {path} ---\n{_tail(path)}")
    return "\n".join(parts) or "(no logs)"


def _wait_for(sd: Path, st: _State, what: str, check, watch: list[str], timeout: float = _DAEMON_READY_TIMEOUT_S) -> None:
    """Poll ``check()`` until true; fail fast if a watched daemon dies meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        dead = [n for n in watch if n in st.procs and not _alive(st.procs[n])]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout:.0f}s"
            raise ClusterError(
                f"local cluster: waiting for {what} failed ({why}). Log tails:\n"
                f"{_log_tails(sd, watch)}\nFix the cause, then run down() and up() again."
            )
        time.sleep(0.2)


def _tcp_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- startup


def _start_missing(sd: Path, st: _State) -> None:
    assert st.shape is not None
    running = _running_procs(st, sd)
    munge_sock = _munge_socket(sd)

    if "munged" not in running:
        _spawn(sd, st, "munged", "munged", [
            _which("munged") or "munged", "--foreground", "--force", "--num-threads=10",
            f"--socket={munge_sock}", f"--key-file={sd / 'munge' / 'munge.key'}",
            f"--pid-file={sd / 'run' / 'munged.pid'}", f"--log-file={sd / 'log' / 'munged.log'}",
            f"--seed-file={sd / 'munge' / 'munged.seed'}",
        ])

        def munge_ok() -> bool:
            cred = _run(["munge", "-n", "-S", str(munge_sock)], sd, check=False)
            return cred.returncode == 0 and _run(
                ["unmunge", "-S", str(munge_sock)], sd, check=False, input=cred.stdout
            ).returncode == 0

        _wait_for(sd, st, "munged", munge_ok, ["munged"])

    if "mariadbd" not in running:
        _start_mariadb(sd, st)

    if "slurmdbd" not in running:
        _spawn(sd, st, "slurmdbd", "slurmdbd", [_which("slurmdbd") or "slurmdbd", "-D"])
        _wait_for(sd, st, "slurmdbd", lambda: _tcp_open(st.ports["slurmdbd"]), ["slurmdbd", "mariadbd"])
        _register_cluster(sd, st)

    if "slurmctld" not in running:
        # Its own UTS namespace gives it a fixed hostname, so the generated
        # SlurmctldHost never depends on this machine's name.
        _spawn(sd, st, "slurmctld", "slurmctld", [
            "unshare", "--uts", "sh", "-c", 'hostname "$1" && exec slurmctld -D -i -f "$2"',
            "sh", CONTROLLER_HOSTNAME, str(sd / "slurm.conf"),
        ])
        _wait_for(sd, st, "slurmctld",
                  lambda: _run(["scontrol", "ping"], sd, check=False, timeout=10).stdout.count("UP") > 0,
                  ["slurmctld"])
        if not running:
            # Jobs recovered from the saved state of a cluster that died
            # uncleanly have no processes left; they would hold nodes forever.
            _cancel_all_jobs(sd, st, wait_s=0)

    started = []
    for name in _node_names(st.shape.nodes):
        key = f"slurmd-{name}"
        if key in running:
            continue
        # unshare execs (no fork), sh execs slurmd: the recorded pid is slurmd's.
        _spawn(sd, st, key, "slurmd", [
            "unshare", "--uts", "sh", "-c", 'hostname "$1" && exec slurmd -D -N "$1" -f "$2"',
            "sh", name, str(sd / "slurm.conf"),
        ])
        started.append(key)
    # The controller may still list a just-killed node as idle; only a
    # listening port proves the new slurmd is past its startup.
    _wait_for(sd, st, "slurmd ports", lambda: all(_tcp_open(st.ports[k]) for k in started),
              started)


def _mariadb_sql(sd: Path, sql: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(
        ["mariadb", "--no-defaults", f"--socket={_mariadb_socket(sd)}", "-u", "root", "-N", "-e", sql],
        sd, check=check, timeout=20,
    )


def _start_mariadb(sd: Path, st: _State) -> None:
    data = sd / "mariadb" / "data"
    if not (data / "mysql").is_dir():
        shutil.rmtree(data, ignore_errors=True)
        # unix_socket auth: root over our private socket needs no password.
        _run([
            "mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
            "--auth-root-authentication-method=socket", "--skip-test-db",
        ], sd, timeout=120)
    _spawn(sd, st, "mariadbd", "mariadbd", [
        _which("mariadbd") or "mariadbd", "--no-defaults", f"--datadir={data}", "--user=root",
        f"--socket={_mariadb_socket(sd)}", f"--port={st.ports['mariadb']}",
        "--bind-address=127.0.0.1", "--skip-name-resolve", "--skip-log-bin",
        f"--pid-file={sd / 'run' / 'mariadbd.pid'}", f"--log-error={sd / 'log' / 'mariadbd.log'}",
        # slurmdbd warns below these; the buffer pool is kept small on purpose.
        "--innodb-buffer-pool-size=64M", "--innodb-lock-wait-timeout=900",
        "--innodb-flush-log-at-trx-commit=2",
    ])
    _wait_for(sd, st, "mariadb", lambda: _mariadb_sql(sd, "SELECT 1", check=False).returncode == 0,
              ["mariadbd"])
    pw = (sd / "mariadb" / "slurm.password").read_text().strip()
    _mariadb_sql(sd, (
        f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{pw}';"
        f"ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{pw}';"
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        "FLUSH PRIVILEGES;"
    ))


def _register_cluster(sd: Path, st: _State) -> None:
    # slurmctld does not create its own accounting cluster; without this row
    # jobs are never recorded and sacct shows nothing.
    def registered() -> bool:
        res = _run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"], sd, check=False)
        if res.returncode != 0:
            return False
        if CLUSTER_NAME in res.stdout.split():
            return True
        _run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME], sd, check=False)
        return False

    _wait_for(sd, st, "accounting cluster registration", registered, ["slurmdbd", "mariadbd"])


# --------------------------------------------------------------------------- readiness


def _node_states(sd: Path) -> dict[str, str]:
    res = _run(["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %t"], sd, check=False, timeout=10)
    states = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


# Usable means: responding (no "*"), and not down/drained/failed.
_USABLE = re.compile(r"^(idle|mix|alloc|comp|plnd)$")


def _wait_nodes_ready(sd: Path, st: _State) -> None:
    assert st.shape is not None
    names = _node_names(st.shape.nodes)
    resumed: set[str] = set()

    def ready() -> bool:
        states = _node_states(sd)
        for name in names:
            state = states.get(name, "")
            # A node that was marked DOWN while its slurmd was dead stays down on
            # some paths despite ReturnToService=2; its slurmd runs again, so resume it.
            if state in ("down", "drain", "drng") and name not in resumed:
                resumed.add(name)
                _run(["scontrol", "update", f"nodename={name}", "state=resume"], sd, check=False)
        return all(_USABLE.match(states.get(n, "")) for n in names)

    watch = ["slurmctld", *(f"slurmd-{n}" for n in names)]
    _wait_for(sd, st, f"nodes {','.join(names)} to become idle", ready, watch, _NODE_READY_TIMEOUT_S)


def _cancel_all_jobs(sd: Path, st: _State, wait_s: float = 15) -> None:
    res = _run(["squeue", "-h", "-o", "%i"], sd, check=False, timeout=10)
    jobs = res.stdout.split()
    if not jobs:
        return
    _run(["scancel", *jobs], sd, check=False, timeout=10)
    # Let slurmstepd deliver SIGTERM/SIGKILL (KillWait=5) so job processes die
    # with their steps instead of being orphaned when slurmd stops.
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not _run(["squeue", "-h", "-o", "%i"], sd, check=False, timeout=10).stdout.split():
            return
        time.sleep(0.5)


# --------------------------------------------------------------------------- CLI


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inferx_slurm.local_cluster",
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
    sys.exit(_main())
