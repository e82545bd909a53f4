"""The benchmark half of the driver: one aiperf run per point against the ready deployment,
watched for progress, each point's row added to the summary as it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from inferx_slurm.benchmark.aiperf import AIPERF_EXPORT, aiperf_argv, asks_ignore_eos, point_row, profiling_window
from inferx_slurm.benchmark.records import RECORDS_EXPORT, read_records
from inferx_slurm.fsutil import last_lines, read_json
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job.phases import EventKind, FaultKind
from inferx_slurm.planning.ports import PortVar
from inferx_slurm.runtime import kv_probe, metrics
from inferx_slurm.runtime.energy import point_power
from inferx_slurm.runtime.gpumon import gpu_metrics
from inferx_slurm.runtime.progress import Counters, ProgressClock, Verdict
from inferx_slurm.runtime.steps import RunningStep
from inferx_slurm.runtime.watchdog import Fault, FaultRaised

if TYPE_CHECKING:
    from inferx_slurm.planning.placement import Plan
    from inferx_slurm.recipe.schema import Recipe

# How often a running benchmark's progress is read from the frontend's metrics (and its end
# noticed: each point's end waits for the next poll).
CLIENT_POLL_S = 0.25


class ClientRunner:
    """Runs the benchmark points; mixed into the Driver, whose deployment it measures."""

    recipe: "Recipe"
    plan: "Plan"
    paths: JobPaths
    hosts: list[str]
    addrs: dict[str, str]
    steps: list[RunningStep]
    rows: list[dict[str, Any]]
    kv_capacity: list[dict[str, Any]]
    engine_dir: Path

    # The Driver's: where the deployment answers, its fault checks and its records.
    base_url: Optional[str]  # None until the server's step has taken its port
    own_server: bool
    _port: Callable[[str, PortVar], Optional[int]]  # a port a step took on its node
    watch: Callable[[], None]
    event: Callable[..., None]
    write_summary: Callable[[bool], None]

    def __init__(self) -> None:
        self._client: Optional[subprocess.Popen] = None
        self.kv_capacity = []

    def benchmark(self) -> None:
        b = self.recipe.benchmark
        tokenizer = b.tokenizer or self.recipe.model.path
        kv = kv_probe.PointProbe(self.recipe, lambda: self._spec_urls(("decode",)))
        for scen in b.scenarios:
            for conc in b.concurrency:
                out = self.paths.point(scen.name, conc)
                out.mkdir(parents=True, exist_ok=True)
                argv = aiperf_argv(self.recipe, scen, conc, url=self.base_url, artifact_dir=str(out), tokenizer=tokenizer)
                self.event(EventKind.benchmark, scenario=scen.name, concurrency=conc)
                spec_before = self._spec_counters() if self.recipe.speculative else None
                kv.start()
                self._run_client(argv, out, b.requests_for(conc) + b.warmup_requests)
                export = out / AIPERF_EXPORT
                if not export.exists():
                    raise FaultRaised(Fault(FaultKind.client, None, f"benchmark client wrote no {AIPERF_EXPORT} for {scen.name} c{conc}; "
                                            f"see {out / JobPaths.CLIENT_LOG}"))
                doc = read_json(export)
                row = point_row(doc, read_records(out / RECORDS_EXPORT), isl=scen.isl, osl=scen.osl, concurrency=conc,
                                prefill_gpus=self.plan.prefill_gpus, decode_gpus=self.plan.decode_gpus,
                                agg_gpus=self.plan.agg_gpus, expected_requests=b.requests_for(conc))
                if self.recipe.speculative:
                    row["acceptance_length"] = self._acceptance_length(spec_before)
                verdict = kv.judge(row, osl=scen.osl, ignore_eos=asks_ignore_eos(argv))
                if not verdict.valid:
                    self.event(EventKind.invalid_point, isl=scen.isl, osl=scen.osl, concurrency=conc, why=verdict.why)
                row.update(verdict.row_fields())
                window = (row["benchmark_start_time_unix"], row["benchmark_end_time_unix"]) if "duration" in row else profiling_window(doc)
                logs = JobPaths(self.engine_dir).logs
                row.update(gpu_metrics(logs, self.hosts, *window))
                # A sample after the window's end may be one sampling period away.
                row.update(point_power(logs, self.hosts, self.plan, row,
                                       wait_s=b.gpu_metrics_interval_s + 2.0 if b.gpu_metrics_interval_s else 0.0))
                self.rows.append(row)
                self.write_summary(partial=True)
                self.event(EventKind.point_done, scenario=scen.name, concurrency=conc)

    def _spec_urls(self, roles: tuple[str, ...] = ("decode", "agg")) -> list[str]:
        """Where the engines' own Prometheus metrics are: the server itself, or each worker
        leader's system port under Dynamo."""
        return [u for w in self.plan.workers if w.role in roles and (u := self._metrics_url(w))][: 1 if self.own_server else None]

    def _metrics_url(self, w: Any) -> Optional[str]:
        if self.own_server:
            return f"{self.base_url}/metrics"
        port = self._port(f"{w.name}.n0", PortVar.system)
        return None if port is None else f"http://{self.addrs[self.hosts[w.leader]]}:{port}/metrics"

    def check_kv_capacity(self) -> None:
        """Each worker's KV capacity as its engine sized it, beside the memory plan's."""
        caps, note = kv_probe.capacities(self.recipe, self.plan, self._metrics_url, JobPaths(self.engine_dir).logs)
        if note:
            self.event(EventKind.kv_capacity_not_planned, why=note)
        self.kv_capacity = [c.model_dump() for c in caps]
        for c in caps:
            if c.warning:
                self.event(EventKind.kv_capacity_warning, warning=c.warning)

    def _spec_counters(self) -> Optional[tuple[float, float]]:
        """(accepted draft tokens, drafts) summed over the decoding engines; None when no engine
        reports them (an engine without these counters, or the mock engine)."""
        acc = drafts = 0.0
        seen = False
        for url in self._spec_urls():
            text = metrics.scrape(url)
            if text and metrics.has_metric(text, metrics.SPEC_DRAFTS):
                seen = True
                acc += metrics.counter_total(text, metrics.SPEC_ACCEPTED)
                drafts += metrics.counter_total(text, metrics.SPEC_DRAFTS)
        return (acc, drafts) if seen else None

    def _acceptance_length(self, before: Optional[tuple[float, float]]) -> Optional[float]:
        """Mean tokens per draft-and-verify step over this point: 1 + accepted / drafts."""
        after = self._spec_counters()
        if before is None or after is None or after[1] <= before[1]:
            return None
        return round(1 + (after[0] - before[0]) / (after[1] - before[1]), 3)

    def _run_client(self, argv: list[str], out: Path, expected: int) -> None:
        """Run one benchmark point; `expected` requests (warm-up included) answer it in full."""
        env = {**os.environ, **self.recipe.env}
        client_log = out / JobPaths.CLIENT_LOG
        with open(client_log, "ab") as log:
            self._client = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out, start_new_session=True)
        b = self.recipe.benchmark
        clock = ProgressClock(startup_s=b.client_startup_timeout_s, stall_s=b.stall_timeout_s, expected=expected, t0=time.time())
        while self._client.poll() is None:
            self.watch()
            text = metrics.scrape(f"{self.base_url}/metrics")
            if text is not None:
                verdict = clock.observe(Counters(metrics.counter_total(text, metrics.STARTED_METRICS), metrics.counter_total(text),
                                                 metrics.counter_total(text, metrics.DONE_METRICS)), time.time())
                if verdict is Verdict.client_silent:
                    raise FaultRaised(Fault(FaultKind.stalled, None, f"benchmark client sent no request within "
                                            f"{b.client_startup_timeout_s:.0f} s; see {client_log}"))
                if verdict is Verdict.stalled:
                    raise FaultRaised(Fault(FaultKind.stalled, self._suspect(), f"benchmark made no progress for {b.stall_timeout_s:.0f} s "
                                            "(frontend request and token counters unchanged)."))
            time.sleep(CLIENT_POLL_S)
        # A cancel kills the client too; report the cancel, not the client's exit.
        self.watch()
        rc = self._client.returncode
        self._client = None
        if rc != 0:
            # The client's own last words say why (a refused request, a tokenizer it could not load).
            last = last_lines([client_log], 12)
            raise FaultRaised(Fault(FaultKind.client, None, f"benchmark client exited with code {rc}; see {client_log}"
                                    + ("\nLast log lines:\n" + "\n".join(f"    {x}" for x in last) if last else "")))

    def _suspect(self) -> Optional[RunningStep]:
        """The decode leader is where a stuck request is waiting; point the diagnosis there."""
        return next((s for s in self.steps if s.step.role == "decode" and s.step.leader), None)

    def stop_client(self) -> None:
        if self._client and self._client.poll() is None:
            os.killpg(self._client.pid, signal.SIGTERM)
            try:
                self._client.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._client.pid, signal.SIGKILL)
        self._client = None

