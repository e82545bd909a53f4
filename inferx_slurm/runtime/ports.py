"""Ports taken on the node when a step starts: the recipe's, checked free, or free ones (auto).

The plan cannot know what is free on the nodes, and on a real cluster every node has its own
network namespace, so each step script runs this on its own node before its server starts:

    ports.py OUT REQUEST... [--take FILE[:NAME,...]] [--rank R --leader FILE:NAME,...]

REQUEST is ``FIELD=VALUE:NAME[,NAME...][/SPAN]``: the recipe field (for the error), its value
(a port, or ``auto``), and the variables that get the port and the ones after it; SPAN (the
number of names unless given) consecutive ports must all be free. An explicit port that is
taken is refused, naming the process that holds it where this node shows it. ``--take``
copies variables another step chose (etcd/NATS for the frontend and workers); ``--leader``
does so on a worker's other nodes only (rank > 0), for the rendezvous port its leader chose.
Everything is written to OUT as ``export NAME=PORT`` lines: the script sources it, the driver
reads it.

Standard library only: the job dir carries a copy that any Python on a node (or in the
engine's container) runs.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

# Auto ports come from below Linux's default ephemeral range (32768-60999), which the kernel
# hands to outgoing connections: a port from there can be taken between the choice and the bind.
AUTO_RANGE = (20000, 30000)
# Auto choices are claimed on the node (an O_EXCL file per port) so that steps starting at
# the same moment on one node do not choose the same port before either binds it. Engines
# can take many minutes to bind; a claim is honoured this long.
CLAIM_TTL_S = 3600.0
TAKE_TIMEOUT_S = 120.0
_REQUEST = re.compile(r"^([\w.]+)=(auto|\d+):([A-Z_][A-Z0-9_]*(?:,[A-Z_][A-Z0-9_]*)*)(?:/(\d+))?$")


class PortError(Exception):
    """A port the recipe names is taken, or none is free: what to do is in the message."""


def bindable(port: int) -> bool:
    """Can a server listen on this port on every address? SO_REUSEADDR as servers set it, so a
    closed connection's TIME_WAIT does not count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _socket_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets bound to this local port (/proc/net/tcp and tcp6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            # local_address is ADDR:PORT in hex; st 0A is LISTEN, 07 a bound but closed socket.
            if len(f) > 9 and int(f[1].rsplit(":", 1)[1], 16) == port and f[3] in ("0A", "07"):
                inodes.add(f[9])
    return inodes


def holders(port: int) -> list[tuple[int, str]]:
    """(pid, command name) of the processes holding the port, as far as this user can see."""
    inodes = {f"socket:[{i}]" for i in _socket_inodes(port)}
    found = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            fds = os.listdir(pid_dir / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(pid_dir / "fd" / fd) in inodes:
                    found.append((int(pid_dir.name), (pid_dir / "comm").read_text().strip()))
                    break
            except OSError:
                continue
    return sorted(found)


def describe_holders(port: int) -> str:
    who = holders(port)
    if who:
        return "by " + ", ".join(f"pid {pid} ({name})" for pid, name in who)
    return ("by a process this user cannot see (another user's, or another namespace's); "
            f"`ss -ltnp 'sport = :{port}'` as root names it")


def _job_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"SLURM_JOB_ID="):
            return item.split(b"=", 1)[1].decode()
    return None


def held_by_this_job(port: int) -> bool:
    """Held by a process of the same Slurm job: the worker's leader, where all the worker's
    nodes share one network namespace (a single-host test cluster)."""
    job = os.environ.get("SLURM_JOB_ID")
    who = holders(port)
    return bool(job and who and all(_job_of(pid) == job for pid, _ in who))


def _claims_dir() -> Path:
    d = Path(tempfile.gettempdir()) / f"inferx-port-claims-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _claim(ports: range) -> bool:
    """Claim every port of the range on this node, or none of them."""
    d, got = _claims_dir(), []
    for p in ports:
        path = d / str(p)
        try:
            if time.time() - path.stat().st_mtime > CLAIM_TTL_S:
                path.unlink()
        except OSError:
            pass
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            got.append(path)
        except FileExistsError:
            for q in got:
                q.unlink(missing_ok=True)
            return False
    return True


def choose(span: int = 1, rng: random.Random | None = None, attempts: int = 500) -> int:
    """The first port of `span` consecutive free ports, claimed on this node."""
    rng = rng or random.Random()
    lo, hi = AUTO_RANGE
    for _ in range(attempts):
        base = rng.randrange(lo, hi - span + 1)
        ports = range(base, base + span)
        if all(bindable(p) for p in ports) and _claim(ports):
            return base
    raise PortError(f"no {span} consecutive free ports found in {lo}-{hi - 1} on {socket.gethostname()} "
                    f"after {attempts} tries: free some, or set the port fields to numbers that are free")


def check(field: str, base: int, span: int, *, same_job_ok: bool = False) -> None:
    for p in range(base, base + span):
        if bindable(p) or (same_job_ok and held_by_this_job(p)):
            continue
        what = f"port {p}" if span == 1 else f"port {p} of the block {base}-{base + span - 1}"
        raise PortError(f"{what} ({field}) is taken on {socket.gethostname()} {describe_holders(p)}: "
                        f"stop that process, set {field} to a free port, or leave {field} out (auto) to take a free one")


def read_ports(path: str | Path) -> dict[str, int]:
    """NAME -> port from a file this module wrote; empty while it does not exist."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r"^export ([A-Z_][A-Z0-9_]*)=(\d+)$", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def _take(spec: str, timeout: float) -> dict[str, int]:
    path, _, names = spec.partition(":")
    deadline = time.time() + timeout
    while True:
        got = read_ports(path)
        wanted = names.split(",") if names else list(got)
        if got and all(n in got for n in wanted):
            return {n: got[n] for n in wanted}
        if time.time() > deadline:
            raise PortError(f"{path} did not name {names or 'its ports'} within {timeout:.0f} s: the step that "
                            "chooses them did not start or failed; see its log")
        time.sleep(0.2)


def resolve(requests: list[str], *, rank: int = 0) -> dict[str, int]:
    chosen: dict[str, int] = {}
    for req in requests:
        m = _REQUEST.match(req)
        if not m:
            raise PortError(f"bad request {req!r}: expected FIELD=VALUE:NAME[,NAME...][/SPAN]")
        field, value, names = m.group(1), m.group(2), m.group(3).split(",")
        span = int(m.group(4) or len(names))
        if value == "auto":
            base = choose(span)
        else:
            base = int(value)
            check(field, base, span, same_job_ok=rank > 0)
            _claim(range(base, base + span))  # keeps auto choices of other steps off it; taken already is fine
        chosen.update({n: base + i for i, n in enumerate(names)})
    return chosen


def write_ports(out: str | Path, ports: dict[str, int]) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(f"export {n}={p}\n" for n, p in ports.items()))
    os.replace(tmp, out)  # whole or absent: other nodes and the driver poll for it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("requests", nargs="*")
    ap.add_argument("--take", action="append", default=[], metavar="FILE[:NAME,...]")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--leader", action="append", default=[], metavar="FILE:NAME,...")
    ap.add_argument("--timeout", type=float, default=TAKE_TIMEOUT_S)
    args = ap.parse_args(argv)
    try:
        ports = resolve(args.requests, rank=args.rank)
        for spec in args.take + (args.leader if args.rank > 0 else []):
            ports.update(_take(spec, args.timeout))
    except PortError as e:
        print(f"[inferx] ports: {e}", file=sys.stderr, flush=True)
        return 3
    write_ports(args.out, ports)
    print(f"[inferx] ports on {socket.gethostname()}: " + " ".join(f"{n}={p}" for n, p in ports.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
