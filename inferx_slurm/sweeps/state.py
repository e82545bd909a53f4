"""A sweep's results root on disk: its manifest, which points are done, live progress.

A sweep writes `ROOT/sweep.json` (every point it is made of, the mode, the estimates) and
one results dir per deployment under ROOT (`ROOT/NAME`, then `ROOT/NAME.2` when a resume
runs it again). A point is (topology, ISL, OSL, concurrency); it is done when some results
dir under ROOT holds its row with every request answered.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Optional

from inferx_slurm.errors import InferxError
from inferx_slurm.fsutil import atomic_write_json, read_json
from inferx_slurm.job.paths import JobPaths, SweepPaths
from inferx_slurm.job.phases import EventKind, Phase
from inferx_slurm.job.status import Status, Summary
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.sweeps.expand import SweepPoint

MANIFEST = SweepPaths.MANIFEST
Point = tuple[str, int, int, int]


def bench_points(d: SweepPoint) -> list[Point]:
    b = d.recipe.benchmark
    return [(d.topology, s.isl, s.osl, c) for s in b.scenarios for c in b.concurrency]


def write_manifest(root: Path, recipe: Recipe, sweep_points: list[SweepPoint], mode: str) -> None:
    """The sweep's full set of points; a resume keeps the first manifest (same recipe name)."""
    path = SweepPaths(root).manifest
    if path.exists():
        return
    est = recipe.sweep.estimate if recipe.sweep else None
    atomic_write_json(path, {
        "name": recipe.name, "mode": mode, "created": time.time(),
        "estimate": est.model_dump() if est else None,
        "points": [list(p) for d in sweep_points for p in bench_points(d)],
    })


def read_manifest(root: Path) -> dict[str, Any]:
    path = SweepPaths(root).manifest
    if not path.exists():
        raise InferxError(f"{root} holds no sweep ({MANIFEST} missing); pass the results root a sweep launch printed")
    return read_json(path)


def _runs(root: Path) -> list[JobPaths]:
    return [JobPaths(d) for d in SweepPaths(root).job_dirs()]


def _row_done(row: dict[str, Any]) -> bool:
    return int(row.get("completed") or 0) > 0 and int(row.get("failed") or 0) == 0


def _done_rows(root: Path) -> Iterator[tuple[Point, str, dict[str, Any]]]:
    """Every completed row of every run under the root, oldest run first."""
    for run in _runs(root):
        if not run.summary.exists():
            continue
        topo = read_json(run.recipe_json)["topology"]
        for row in Summary.read(run.summary).rows:
            if _row_done(row):
                yield (topo, int(row["isl"]), int(row["osl"]), int(row["concurrency"])), topo, row


def done_points(root: Path) -> set[Point]:
    return {p for p, _, _ in _done_rows(root)}


def remaining(d: SweepPoint, done: set[Point]) -> Optional[SweepPoint]:
    """The deployment narrowed to its points not yet done; None when all are."""
    concs = [c for c in d.recipe.benchmark.concurrency
             if any((d.topology, s.isl, s.osl, c) not in done for s in d.recipe.benchmark.scenarios)]
    if not concs:
        return None
    if concs == d.recipe.benchmark.concurrency:
        return d
    bench = d.recipe.benchmark.model_copy(update={"concurrency": concs})
    return d.model_copy(update={"concurrency": concs, "recipe": d.recipe.model_copy(update={"benchmark": bench})})


def rows(root: Path) -> list[dict[str, Any]]:
    """One row per done point (the latest run's), in the manifest's order."""
    best = {p: {"topology": topo, **row} for p, topo, row in _done_rows(root)}
    order = [tuple(p) for p in read_manifest(root)["points"]]
    return [best[p] for p in order if p in best]  # type: ignore[index]


def progress(root: Path) -> dict[str, Any]:
    """Points done / running / left and an estimate of the time left.

    The time left is per Slurm job (a pack runs its points one after another; array tasks and
    jobs run side by side when nodes are free): its points left x the seconds a point took so
    far (else sweep.estimate.point_s) plus its engine starts left x the measured bring-up
    (else sweep.estimate.load_s); the sweep's is the longest job's, queue waits not included.
    """
    man = read_manifest(root)
    est = man.get("estimate") or {"load_s": 0.0, "point_s": 0.0}
    total = {tuple(p) for p in man["points"]}
    done = done_points(root) & total
    running = 0
    failed: list[str] = []
    point_times: list[float] = []
    load_times: list[float] = []
    lanes: dict[str, dict[str, Any]] = {}
    for run in _runs(root):
        st = Status.read(run.status)
        job = read_json(run.job) if run.job.exists() else {}
        for e in st.events:
            seconds = getattr(e, "seconds", None)
            if e.event == EventKind.ready and seconds is not None:
                load_times.append(float(seconds))
        bench_t = [e.t for e in st.events if e.event in (EventKind.benchmark, EventKind.done)]
        point_times += [b - a for a, b in zip(bench_t, bench_t[1:])]
        if st.phase is Phase.done:
            continue
        rec = read_json(run.recipe_json)
        b = rec.get("benchmark", {})
        pts = [(rec["topology"], s["isl"], s["osl"], c) for s in b.get("scenarios", []) for c in b.get("concurrency", [])]
        left = [p for p in pts if p not in done]
        if st.phase is Phase.failed:
            if left:  # a failure a later run made good is history, not news
                failed.append(run.root.name)
            continue
        if st.phase is Phase.benchmarking and left:
            running += 1
        lane = lanes.setdefault(str(job.get("job_id", run.root.name)), {"points": 0, "starts": set(), "running_start": None})
        lane["points"] += len(left)
        if st.phase in (Phase.pending, Phase.starting):
            lane["starts"].add(job.get("start", run.root.name))
        else:
            lane["running_start"] = job.get("start", run.root.name)
    point_s = sum(point_times) / len(point_times) if point_times else float(est["point_s"])
    load_s = sum(load_times) / len(load_times) if load_times else float(est["load_s"])
    eta = 0.0
    for lane in lanes.values():
        starts = len(lane["starts"] - {lane["running_start"]})
        eta = max(eta, lane["points"] * point_s + starts * load_s)
    return {"total": len(total), "done": len(done), "running": running, "left": len(total) - len(done) - running,
            "failed_runs": failed, "eta_s": round(eta, 1)}


def format_progress(p: dict[str, Any]) -> str:
    s = int(p["eta_s"])
    eta = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    line = f"points: {p['done']} done, {p['running']} running, {p['left']} left of {p['total']}; about {eta} left (queue waits not included)"
    if p["failed_runs"]:
        line += f"; failed: {', '.join(p['failed_runs'])}"
    return line
