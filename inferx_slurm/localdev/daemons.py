"""The local cluster's processes: munged, MariaDB, slurmdbd, slurmctld and one slurmd per node
in its own UTS namespace; started, proven ours, waited for and stopped."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from inferx_slurm.localdev.layout import CLUSTER_NAME, CONTROLLER_HOSTNAME, OWNER_ENV, PARTITION, SBIN_DIRS, ClusterError, Proc, State, daemon_env, mariadb_socket, munge_socket, node_names, save_state

_INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "setup_scripts" / "install_slurm.sh"


_APT_PACKAGES = ("slurm-wlm", "slurmdbd", "munge", "mariadb-server")


_REQUIRED_BINARIES = (
    "slurmctld", "slurmd", "slurmdbd", "sbatch", "srun", "sinfo", "squeue", "scontrol",
    "scancel", "sacct", "sacctmgr", "munged", "munge", "mariadbd", "mariadb-install-db",
    "mariadb", "unshare",
)


_NODE_READY_TIMEOUT_S = 90.0


_DAEMON_READY_TIMEOUT_S = 60.0


_STOP_GRACE_S = 10.0


# Popen handles of daemons started by this process, kept so their exit status is
# collected (no zombies) and Python does not warn about live children on GC.
_CHILDREN: dict[int, subprocess.Popen] = {}


def require_root() -> None:
    if os.geteuid() != 0:
        raise ClusterError(
            "the local Slurm cluster must be managed as root (slurmd needs `unshare --uts` "
            "to fake node hostnames and the daemons run as SlurmUser=root)"
        )


def which(name: str) -> str | None:
    path = ":".join([os.environ.get("PATH", ""), *SBIN_DIRS])
    return shutil.which(name, path=path)


def ensure_packages() -> None:
    missing = [b for b in _REQUIRED_BINARIES if which(b) is None]
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
    still = [b for b in _REQUIRED_BINARIES if which(b) is None]
    if still:
        raise ClusterError(f"after installing packages these binaries are still missing: {still}")


def start_ticks(pid: int) -> int | None:
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


def _alive(proc: Proc) -> bool:
    return start_ticks(proc.pid) == proc.start_ticks


def is_ours(proc: Proc, sd: Path) -> bool:
    if start_ticks(proc.pid) != proc.start_ticks:
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
    owner_ok = f"{OWNER_ENV}={sd}".encode() in environ
    return exe_ok and owner_ok


def running_procs(st: State, sd: Path) -> set[str]:
    return {name for name, proc in st.procs.items() if is_ours(proc, sd)}


def _spawn(sd: Path, st: State, name: str, exe: str, argv: list[str]) -> Proc:
    with open(sd / "log" / f"{name}.stdout", "ab") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=daemon_env(sd),
            cwd=sd,
            # Own session: survives the caller's exit and its terminal's ^C.
            start_new_session=True,
        )
    _CHILDREN[popen.pid] = popen
    ticks = start_ticks(popen.pid)
    if ticks is None:
        raise ClusterError(f"{name} exited immediately; see {sd / 'log'}/{name}.stdout")
    proc = Proc(pid=popen.pid, start_ticks=ticks, exe=exe)
    st.procs[name] = proc
    save_state(sd, st)
    return proc


def stop_proc(proc: Proc, sd: Path) -> None:
    if not is_ours(proc, sd):
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


def kill_orphan_stepds(sd: Path) -> None:
    # slurmstepd outlives a killed slurmd (as on real clusters) and keeps its
    # job's processes alive; once the whole cluster goes away they must go too.
    marker = f"{OWNER_ENV}={sd}".encode()
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


def run_cmd(cmd: list[str], sd: Path, timeout: float = 30, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = daemon_env(sd)
    env.pop(OWNER_ENV)
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


def _wait_for(sd: Path, st: State, what: str, check, watch: list[str], timeout: float = _DAEMON_READY_TIMEOUT_S) -> None:
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


def start_missing(sd: Path, st: State) -> None:
    assert st.shape is not None
    running = running_procs(st, sd)
    munge_sock = munge_socket(sd)

    if "munged" not in running:
        _spawn(sd, st, "munged", "munged", [
            which("munged") or "munged", "--foreground", "--force", "--num-threads=10",
            f"--socket={munge_sock}", f"--key-file={sd / 'munge' / 'munge.key'}",
            f"--pid-file={sd / 'run' / 'munged.pid'}", f"--log-file={sd / 'log' / 'munged.log'}",
            f"--seed-file={sd / 'munge' / 'munged.seed'}",
        ])

        def munge_ok() -> bool:
            cred = run_cmd(["munge", "-n", "-S", str(munge_sock)], sd, check=False)
            return cred.returncode == 0 and run_cmd(
                ["unmunge", "-S", str(munge_sock)], sd, check=False, input=cred.stdout
            ).returncode == 0

        _wait_for(sd, st, "munged", munge_ok, ["munged"])

    if "mariadbd" not in running:
        _start_mariadb(sd, st)

    if "slurmdbd" not in running:
        _spawn(sd, st, "slurmdbd", "slurmdbd", [which("slurmdbd") or "slurmdbd", "-D"])
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
                  lambda: run_cmd(["scontrol", "ping"], sd, check=False, timeout=10).stdout.count("UP") > 0,
                  ["slurmctld"])
        if not running:
            # Jobs recovered from the saved state of a cluster that died
            # uncleanly have no processes left; they would hold nodes forever.
            cancel_all_jobs(sd, st, wait_s=0)

    started = []
    for name in node_names(st.shape.nodes):
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
    return run_cmd(
        ["mariadb", "--no-defaults", f"--socket={mariadb_socket(sd)}", "-u", "root", "-N", "-e", sql],
        sd, check=check, timeout=20,
    )


def _start_mariadb(sd: Path, st: State) -> None:
    data = sd / "mariadb" / "data"
    if not (data / "mysql").is_dir():
        shutil.rmtree(data, ignore_errors=True)
        # unix_socket auth: root over our private socket needs no password.
        run_cmd([
            "mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
            "--auth-root-authentication-method=socket", "--skip-test-db",
        ], sd, timeout=120)
    _spawn(sd, st, "mariadbd", "mariadbd", [
        which("mariadbd") or "mariadbd", "--no-defaults", f"--datadir={data}", "--user=root",
        f"--socket={mariadb_socket(sd)}", f"--port={st.ports['mariadb']}",
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


def _register_cluster(sd: Path, st: State) -> None:
    # slurmctld does not create its own accounting cluster; without this row
    # jobs are never recorded and sacct shows nothing.
    def registered() -> bool:
        res = run_cmd(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"], sd, check=False)
        if res.returncode != 0:
            return False
        if CLUSTER_NAME in res.stdout.split():
            return True
        run_cmd(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME], sd, check=False)
        return False

    _wait_for(sd, st, "accounting cluster registration", registered, ["slurmdbd", "mariadbd"])


def node_states(sd: Path) -> dict[str, str]:
    res = run_cmd(["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %t"], sd, check=False, timeout=10)
    states = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


# Usable means: responding (no "*"), and not down/drained/failed.
_USABLE = re.compile(r"^(idle|mix|alloc|comp|plnd)$")


def wait_nodes_ready(sd: Path, st: State) -> None:
    assert st.shape is not None
    names = node_names(st.shape.nodes)
    resumed: set[str] = set()

    def ready() -> bool:
        states = node_states(sd)
        for name in names:
            state = states.get(name, "")
            # A node that was marked DOWN while its slurmd was dead stays down on
            # some paths despite ReturnToService=2; its slurmd runs again, so resume it.
            if state in ("down", "drain", "drng") and name not in resumed:
                resumed.add(name)
                run_cmd(["scontrol", "update", f"nodename={name}", "state=resume"], sd, check=False)
        return all(_USABLE.match(states.get(n, "")) for n in names)

    watch = ["slurmctld", *(f"slurmd-{n}" for n in names)]
    _wait_for(sd, st, f"nodes {','.join(names)} to become idle", ready, watch, _NODE_READY_TIMEOUT_S)


def cancel_all_jobs(sd: Path, st: State, wait_s: float = 15) -> None:
    res = run_cmd(["squeue", "-h", "-o", "%i"], sd, check=False, timeout=10)
    jobs = res.stdout.split()
    if not jobs:
        return
    run_cmd(["scancel", *jobs], sd, check=False, timeout=10)
    # Let slurmstepd deliver SIGTERM/SIGKILL (KillWait=5) so job processes die
    # with their steps instead of being orphaned when slurmd stops.
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not run_cmd(["squeue", "-h", "-o", "%i"], sd, check=False, timeout=10).stdout.split():
            return
        time.sleep(0.5)

