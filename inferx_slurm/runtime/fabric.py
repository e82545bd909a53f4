"""The driver's side of the fabric preflight: run the probe steps, read their records, and turn
a broken pair into a fault before any worker starts (planning/fabric.py plans and judges,
runtime/fabric_probe.py moves the bytes)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from pydantic import ValidationError

from inferx_slurm.fsutil import read_json
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job.phases import FaultKind
from inferx_slurm.planning.fabric import STEP_TIMEOUT_S, PairRecord, Side, SideRecord, diagnose, plan_pairs, record_file
from inferx_slurm.planning.placement import Plan
from inferx_slurm.runtime.steps import RunningStep, stop_all
from inferx_slurm.runtime.watchdog import Fault

# Once every initiator is done, a target has said all it can; this long to write its record.
TARGET_GRACE_S = 3.0


@dataclass
class FabricOutcome:
    fault: Optional[Fault]
    seconds: float
    pairs: list[PairRecord] = field(default_factory=list)

    def summary(self) -> list[dict]:
        return [{"pair": f"{p.prefill_node}->{p.decode_node}", "transport": p.transport, "ok": p.ok,
                 "seconds": p.seconds, "bytes": p.bytes} for p in self.pairs]


def read_records(paths: JobPaths, plan: Plan) -> dict[tuple[Side, int], SideRecord]:
    fp = plan_pairs(plan)
    out = {}
    for side in Side:
        for n in fp.nodes(side):
            path = Path(record_file(str(paths.root), side, n))
            try:
                out[(side, n)] = SideRecord.model_validate(read_json(path))
            except (OSError, ValueError, ValidationError):
                continue  # absent or torn: the diagnosis says the side wrote no record
    return out


def run(paths: JobPaths, plan: Plan, hosts: list[str], steps: list[RunningStep], watch: Callable[[], None]) -> FabricOutcome:
    """Wait for the initiators (then briefly for the targets), stop what is left, judge the records.
    `watch` raises on a cancel, the time limit or another step's death."""
    started = time.time()
    initiators = [s for s in steps if s.step.role == Side.initiator.role]
    done_at: Optional[float] = None
    try:
        while True:
            watch()
            now = time.time()
            if done_at is None and all(s.poll() is not None for s in initiators):
                done_at = now
            if all(s.poll() is not None for s in steps) or (done_at and now - done_at > TARGET_GRACE_S) \
                    or now - started > STEP_TIMEOUT_S:
                break
            time.sleep(0.1)
    finally:
        stop_all(steps, grace_s=2.0)
    records = read_records(paths, plan)
    fp = plan_pairs(plan)
    text = diagnose(fp, records, hosts)
    if text is not None and now - started > STEP_TIMEOUT_S:
        text += f"\n(The preflight was stopped after {STEP_TIMEOUT_S:.0f} s.)"
    pairs = [p for (side, _), r in sorted(records.items()) if side is Side.initiator for p in r.pairs]
    fault = None
    if text is not None:
        # Point at the first side that failed: its log has UCX's own lines.
        def failed(s: RunningStep) -> bool:
            rec = records.get((Side.target if s.step.role == Side.target.role else Side.initiator, s.step.node))
            return rec is None or not rec.ok

        bad = next((s for s in steps if failed(s)), steps[0] if steps else None)
        fault = Fault(FaultKind.fabric, bad, text, host=bad.host if bad else "")
    return FabricOutcome(fault=fault, seconds=round(time.time() - started, 2), pairs=pairs)
