"""The packed-sweep driver: one allocation runs its deployments one after another.

Each deployment keeps its own results dir, status, summary and diagnosis, and is run by the
same per-deployment pieces as a single job (bring-up, benchmark, teardown). Consecutive
deployments of one engine start benchmark on engines already up. A failed deployment tears
its engines down and the next one starts fresh; the allocation ends early only for a cancel,
the time limit, a dead node, or `sweep.stop_on_failure`.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Optional

from inferx_slurm.fsutil import atomic_write, read_json
from inferx_slurm.runtime.driver import Driver, RunFailed, FaultRaised

# Faults after which no later deployment can run in this allocation.
ENDS_ALLOCATION = {"cancelled", "time_limit", "node_down"}


class PackRunner:
    def __init__(self, manifest: Path):
        doc = read_json(manifest)
        self.entries: list[dict[str, Any]] = doc["deployments"]  # {"dir", "start"} in run order
        self.stop_on_failure: bool = doc.get("stop_on_failure", False)
        self.active: Optional[Driver] = None
        self.stop_reason: Optional[str] = None

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.active is not None:
            self.active.on_signal(signum, frame)
        self.stop_reason = f"the allocation was stopped ({signal.Signals(signum).name}) before this deployment ran"

    def run(self) -> dict[str, Any]:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            signal.signal(sig, self.on_signal)
        owner: Optional[Driver] = None  # the deployment whose engines are up
        owner_start: Optional[int] = None
        outcome: dict[str, str] = {}
        try:
            for ent in self.entries:
                drv = Driver(Path(ent["dir"]))
                if self.stop_reason:
                    _not_run(drv, self.stop_reason)
                    outcome[drv.recipe.name] = "not run"
                    continue
                self.active = drv
                try:
                    try:
                        if owner is not None and owner_start == ent["start"]:
                            drv.adopt(owner)
                        else:
                            if owner is not None:
                                owner.teardown()
                            owner = None
                            drv.bring_up()
                            owner, owner_start = drv, ent["start"]
                        drv.measure()
                    except FaultRaised as f:
                        owner = None  # _fail stops the engines, shared or not
                        drv.fail(f.fault)
                    except Exception as e:  # a bug must still leave a diagnosis and no steps behind
                        owner = None
                        drv.fail_internal(e)
                    drv.finish()
                    outcome[drv.recipe.name] = "done"
                except RunFailed:
                    outcome[drv.recipe.name] = "failed"
                    kind = read_json(drv.dir / "status.json").get("fault")
                    if kind in ENDS_ALLOCATION:
                        self.stop_reason = f"an earlier deployment ({drv.recipe.name}) ended the allocation: {kind}"
                    elif self.stop_on_failure:
                        self.stop_reason = f"an earlier deployment ({drv.recipe.name}) failed and sweep.stop_on_failure is set"
        finally:
            self.active = None
            if owner is not None:
                owner.teardown()
        failed = [n for n, o in outcome.items() if o != "done"]
        if failed:
            raise RunFailed(f"{len(failed)} of {len(outcome)} deployments did not complete: {', '.join(failed)}")
        return outcome


def _not_run(drv: Driver, reason: str) -> None:
    text = f"not run: {reason}. Re-run the sweep with --resume to run it."
    atomic_write(drv.dir / "diagnosis.txt", text + "\n")
    drv.write_summary(partial=True)
    drv.event("not run")
    drv.status("failed", fault="not_run", diagnosis=text)


def run_pack(manifest: str) -> dict[str, Any]:
    """Entry point inside a packed allocation (what submitit runs)."""
    return PackRunner(Path(manifest)).run()
