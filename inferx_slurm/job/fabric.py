"""The command lines of the fabric preflight's steps (planning/fabric.py decides which nodes,
runtime/fabric_probe.py is what runs): a target takes its listening port on its node when it
starts, like every server of the job; each initiator is told every target's address and where
that target records its port."""

from __future__ import annotations

import shlex

from inferx_slurm.planning.fabric import PROBE_SCRIPT, PROBE_TIMEOUT_S, TRANSFER_BYTES, FabricPlan, Side, record_file, target_ports_file
from inferx_slurm.planning.ports import PORTS_SCRIPT, PortVar, request
from inferx_slurm.recipe.schema import Recipe

NODE = '"$node"'  # the script's own argument: the plan node it runs on


def _q(text: str) -> str:
    """Quote literal text around the script's "$node"."""
    return NODE.join(shlex.quote(p) if p else "" for p in text.split("{node}"))


def port_line(recipe: Recipe, job_dir: str) -> str:
    """A target's port: a free one, taken and recorded on its node (runtime/ports.py)."""
    out = _q(target_ports_file(job_dir, "{node}"))
    req = request("fabric.target", None, (PortVar.fabric,))
    return f"{shlex.quote(recipe.engine.python)} {shlex.quote(f'{job_dir}/{PORTS_SCRIPT}')} {out} {shlex.quote(req)}\nsource {out}"


def probe_line(recipe: Recipe, fp: FabricPlan, side: Side, job_dir: str) -> str:
    argv = [shlex.quote(a) for a in (recipe.engine.python, f"{job_dir}/{PROBE_SCRIPT}", side.value)]
    argv += ["--node", NODE, "--record", _q(record_file(job_dir, side, "{node}")),  # type: ignore[arg-type]
             "--size", str(TRANSFER_BYTES), "--timeout", f"{PROBE_TIMEOUT_S:g}"]
    if side is Side.target:
        argv += ["--port", f'"${{{PortVar.fabric.value}}}"', "--initiators", str(len(fp.initiators))]
    else:
        for d in fp.targets:
            argv += ["--target", str(d), f'"${{INFERX_ADDR_{d}}}"', shlex.quote(target_ports_file(job_dir, d)),
                     shlex.quote(record_file(job_dir, Side.target, d))]
    return " ".join(argv)
