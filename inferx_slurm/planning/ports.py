"""The ports a deployment listens on, and how its scripts name them.

A port field of the recipe (frontend.http_port, etcd_port, nats_port, placement.port_base) is a
number, checked free on its node when the step starts, or auto (left out): a free one chosen
there. The plan stays pure: it cannot know what is free on the nodes. Each step script's port
line (runtime/ports.py, copied into the job dir) takes the step's ports on its own node and
records them in JOB/ports/STEP.env; the script reads them as variables, and the driver and the
worker's other nodes read that file.
"""

from __future__ import annotations

from enum import Enum

from inferx_slurm.job.paths import JobPaths

PORTS_DIR = JobPaths.PORTS
PORTS_SCRIPT = JobPaths.script_rel("ports.py")


class PortVar(str, Enum):
    """The variables a step's port line sets."""

    http = "INFERX_HTTP_PORT"
    etcd = "INFERX_ETCD_PORT"
    etcd_peer = "INFERX_ETCD_PEER_PORT"
    nats = "INFERX_NATS_PORT"
    system = "INFERX_SYSTEM_PORT"
    kv_side_channel = "INFERX_KV_SIDE_CHANNEL_PORT"
    rendezvous = "INFERX_RENDEZVOUS_PORT"
    kv_events = "INFERX_KV_EVENTS_PORT"
    fabric = "INFERX_FABRIC_PORT"  # a fabric preflight target's listener (runtime/fabric_probe.py reads it by name)

    @property
    def ref(self) -> str:
        """How a script expands it; shell quoting keeps it expandable (job.render.shell_word)."""
        return "${" + self.value + "}"


# A worker's block: these, one after another from its first port (WorkerPorts.block).
WORKER_BLOCK = (PortVar.system, PortVar.kv_side_channel, PortVar.rendezvous, PortVar.kv_events)


def port_or_ref(port: int | None, var: PortVar) -> int | str:
    """The recipe's port, or the variable holding the one chosen at start."""
    return port if port is not None else var.ref


def ports_file(job_dir: str, step: str) -> str:
    """Where a step records its ports: STEP is the step's name (frontend, infra, decode-0.n0)."""
    return f"{job_dir}/{PORTS_DIR}/{step}.env"


def request(field: str, port: int | None, names: tuple[PortVar, ...], span: int | None = None) -> str:
    """One request of a port line: ``FIELD=VALUE:NAME,...[/SPAN]`` (runtime/ports.py)."""
    text = f"{field}={'auto' if port is None else port}:{','.join(n.value for n in names)}"
    return text if span is None or span == len(names) else f"{text}/{span}"
