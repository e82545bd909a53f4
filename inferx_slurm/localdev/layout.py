"""Where the local cluster keeps its state: paths, sockets, the state file and its lock.

Everything (configs, logs, spool, database, munge key and socket) lives in one state directory:
``$INFERX_LOCAL_CLUSTER_DIR`` or ``/var/tmp/inferx-local-cluster``. Nothing under ``/etc`` is
touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
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
OWNER_ENV = "INFERX_LOCAL_CLUSTER_STATE_DIR"


SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


_MAX_STATE_DIR_LEN = 60


class ClusterError(RuntimeError):
    """The local cluster could not be brought to the requested state."""


class Shape(BaseModel):
    nodes: int
    gpus_per_node: int
    cpus_per_node: int
    # amd: gres Flags=amd_gpu_env, so Slurm sets ROCR_VISIBLE_DEVICES (not CUDA_VISIBLE_DEVICES)
    # for the GPUs of a step, as it does on AMD nodes (AutoDetect=rsmi implies the same flag).
    gpu_vendor: str = "nvidia"


class Proc(BaseModel):
    pid: int
    start_ticks: int
    exe: str


class State(BaseModel):
    shape: Shape | None = None
    ports: dict[str, int] = {}
    procs: dict[str, Proc] = {}


def resolve_state_dir(state_dir: Path | None) -> Path:
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


def node_names(n: int) -> list[str]:
    return [f"node{i}" for i in range(1, n + 1)]


def node_key(st: State, name: str) -> str:
    if st.shape is None or name not in node_names(st.shape.nodes):
        raise ClusterError(f"no node named {name!r} in this cluster")
    return f"slurmd-{name}"


def munge_socket(sd: Path) -> Path:
    return sd / "munge" / "munge.socket"


def mariadb_socket(sd: Path) -> Path:
    return sd / "mariadb" / "mysqld.sock"


def client_env(sd: Path) -> dict[str, str]:
    return {"SLURM_CONF": str(sd / "slurm.conf")}


def daemon_env(sd: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(client_env(sd))
    env[OWNER_ENV] = str(sd)
    env["PATH"] = ":".join([env.get("PATH", "/usr/bin:/bin"), *SBIN_DIRS])
    return env


@contextlib.contextmanager
def locked(sd: Path) -> Iterator[None]:
    # Serialises up/down/restart across processes (tests running in parallel,
    # a demo in another shell) for one state dir.
    sd.mkdir(parents=True, exist_ok=True)
    with open(sd / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_state(sd: Path) -> State:
    path = sd / "state.json"
    if not path.exists():
        return State()
    return State.model_validate_json(path.read_text())


def save_state(sd: Path, st: State) -> None:
    tmp = sd / "state.json.tmp"
    tmp.write_text(st.model_dump_json(indent=2))
    tmp.replace(sd / "state.json")


def expected_procs(nodes: int) -> list[str]:
    return ["munged", "mariadbd", "slurmdbd", "slurmctld", *(f"slurmd-{n}" for n in node_names(nodes))]


def stop_order(name: str) -> int:
    order = expected_procs(0)
    return -order.index(name) if name in order else -len(order)  # slurmd-* first

