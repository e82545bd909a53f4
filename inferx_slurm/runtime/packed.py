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

from inferx_slurm.fsutil import read_json
from inferx_slurm.job.phases import ENDS_ALLOCATION
from inferx_slurm.job.status import Status
from inferx_slurm.runtime.driver import Driver, RunFailed
from inferx_slurm.runtime.watchdog import FaultRaised


class PackRunner:
    def __init__(self, manifest: Path):
        doc = read_json(manifest)
        self.entries: list[dict[str, Any]] = doc["deployments"]  # {"dir", "start"} in run order
        self.stop_on_failure: bool = doc.get("stop_on_failure", False)
        self.active: Optional[Driver] = None
        self.stop_reason: Optional[str] = None

    def request_stop(self, signum: int, frame: Any) -> None:
        if self.active is not None:
            self.active.request_stop(signum, frame)
        self.stop_reason = f"the allocation was stopped ({signal.Signals(signum).name}) before this deployment ran"

    def run(self) -> dict[str, Any]:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            signal.signal(sig, self.request_stop)
        owner: Optional[Driver] = None  # the deployment whose engines are up
        owner_start: Optional[int] = None
        outcome: dict[str, str] = {}
        try:
            for ent in self.entries:
                drv = Driver(Path(ent["dir"]))
                if self.stop_reason:
                    drv.not_run(self.stop_reason)
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
                        owner = None  # fail() stops the engines, shared or not
                        drv.fail(f.fault)
                    except Exception as e:  # a bug must still leave a diagnosis and no steps behind
                        owner = None
                        drv.fail_internal(e)
                    drv.finish()
                    outcome[drv.recipe.name] = "done"
                except RunFailed:
                    outcome[drv.recipe.name] = "failed"
                    kind = Status.read(drv.paths.status).fault
                    if kind in ENDS_ALLOCATION:
                        self.stop_reason = f"an earlier deployment ({drv.recipe.name}) ended the allocation: {kind.value}"
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


def run_pack(manifest: str) -> dict[str, Any]:
    """Entry point inside a packed allocation (what submitit runs)."""
    return PackRunner(Path(manifest)).run()
