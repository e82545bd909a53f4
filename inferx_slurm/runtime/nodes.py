"""Map plan node indices to the allocation's hosts and addresses."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import datetime
from typing import Optional

from inferx_slurm.fsutil import atomic_write


def allocation_hosts(nodelist: str | None = None) -> list[str]:
    nodelist = nodelist or os.environ["SLURM_JOB_NODELIST"]
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True).stdout
    return out.split()


def show_nodes(hosts: list[str]) -> dict[str, dict[str, str]]:
    """`scontrol show node` fields per host (State, NodeAddr, Reason, ...)."""
    out = subprocess.run(
        ["scontrol", "show", "node", "-o", ",".join(hosts)], capture_output=True, text=True, timeout=20
    ).stdout
    nodes: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "NodeName" in fields:
            nodes[fields["NodeName"]] = fields
    return nodes


def slurmd_endpoints(hosts: list[str]) -> dict[str, tuple[str, int]]:
    """Where each node's slurmd listens (NodeAddr, Port; 6818 when Slurm shows none)."""
    info = show_nodes(hosts)
    return {h: (info.get(h, {}).get("NodeAddr", h), int(info.get(h, {}).get("Port", 6818))) for h in hosts}


def slurmd_alive(addr: str, port: int, timeout: float = 1.0) -> bool:
    """A node whose slurmd refuses connections is dead to Slurm, whatever its state says yet.

    slurmctld needs SlurmdTimeout (tens of seconds to minutes) to mark it down; a direct
    connect tells within a second.
    """
    try:
        with socket.create_connection((addr, port), timeout=timeout):
            return True
    except OSError:
        return False


def node_addresses(hosts: list[str]) -> dict[str, str]:
    """NodeAddr of each host as slurmctld knows it (a test cluster maps every node to 127.0.0.1)."""
    info = show_nodes(hosts)
    return {h: info.get(h, {}).get("NodeAddr", h) for h in hosts}


def write_nodes_env(path: str, hosts: list[str], addrs: dict[str, str]) -> None:
    lines = ["# plan node index -> host and address in this allocation"]
    for i, h in enumerate(hosts):
        lines.append(f"INFERX_HOST_{i}={h}")
        lines.append(f"INFERX_ADDR_{i}={addrs[h]}")
    atomic_write(path, "\n".join(lines) + "\n")


def node_states(hosts: list[str]) -> dict[str, str]:
    """Slurm's state per host, e.g. 'ALLOCATED', 'DOWN+NOT_RESPONDING'."""
    return {h: f.get("State", "") for h, f in show_nodes(hosts).items()}


def is_dead(state: str) -> bool:
    s = state.upper()
    return "DOWN" in s or "NOT_RESPONDING" in s or "FAIL" in s


def job_end_time(job_id: str) -> Optional[float]:
    """When Slurm will end the job (EndTime, local time), or None if it has no limit."""
    if not job_id:
        return None
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=20).stdout
    # For the first task of an array its job id is the array's id, and scontrol prints every
    # task of the array: pick this job's own line.
    for line in out.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if fields.get("JobId") == job_id:
            try:
                return datetime.fromisoformat(fields["EndTime"]).timestamp()
            except (KeyError, ValueError):
                return None
    return None
