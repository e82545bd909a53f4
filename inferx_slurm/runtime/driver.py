"""The job driver: runs on the allocation's first node, brings the deployment up step by
step, benchmarks it, and tears it down. Any fault ends the run within seconds, with a
diagnosis, every log kept and partial results marked partial."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from inferx_slurm.benchmark.aiperf import AIPERF_EXPORT, aiperf_argv, asks_ignore_eos, point_dir, point_row, profiling_window
from inferx_slurm.benchmark.records import RECORDS_EXPORT, read_records
from inferx_slurm.results import provenance
from inferx_slurm.fsutil import atomic_write, atomic_write_json, read_json
from inferx_slurm.planning.placement import Plan
from inferx_slurm.planning.ports import PortVar, ports_file
from inferx_slurm.recipe.sections import Discovery
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.job.render import RenderedJob, srun_argv
from inferx_slurm.results import validity
from inferx_slurm.runtime import evals, fabric, kv_probe, metrics, node_cache_serve, nodes, readiness
from inferx_slurm.runtime.accounting import served_requests
from inferx_slurm.runtime.energy import point_power
from inferx_slurm.runtime.fatal_lines import FatalLineWatch
from inferx_slurm.runtime.gpumon import gpu_metrics
from inferx_slurm.runtime.ports import read_ports
from inferx_slurm.runtime.steps import RunningStep, stop_all
from inferx_slurm.runtime.watchdog import Fault, NodeWatch, check_exits

POLL_S = 0.5
NODE_CHECK_S = 1.0


class RunFailed(RuntimeError):
    """The deployment failed; the diagnosis is in the results dir."""


class Driver:
    def __init__(self, job_dir: Path):
        self.dir = job_dir
        self.recipe = Recipe.from_dict(read_json(job_dir / "recipe.json"))
        self.plan = Plan.model_validate(read_json(job_dir / "plan.json"))
        self.job = RenderedJob.model_validate(read_json(job_dir / "rendered.json"))
        self.steps: list[RunningStep] = []
        self.hosts: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.eval: Optional[dict[str, Any]] = None
        self.kv_capacity: list[dict[str, Any]] = []
        self.t0 = time.time()
        self._last_node_check = 0.0
        self.node_watch: Optional[NodeWatch] = None
        self._cancel: Optional[str] = None
        self._client: Optional[subprocess.Popen] = None
        self.stop_at: Optional[float] = None
        # Where the running engines' logs are: this dir, or the one whose bring-up this
        # deployment shares (packed sweeps).
        self.engine_dir = job_dir

    # --- bookkeeping ---------------------------------------------------------------------------

    def event(self, what: str, **extra: Any) -> None:
        self.events.append({"t": round(time.time() - self.t0, 3), "event": what, **extra})
        print(f"[inferx] +{time.time() - self.t0:7.2f}s {what} {extra if extra else ''}", flush=True)

    def status(self, phase: str, **extra: Any) -> None:
        atomic_write_json(
            self.dir / "status.json",
            {"phase": phase, "job_id": os.environ.get("SLURM_JOB_ID"), "hosts": self.hosts,
             "started": self.t0, "updated": time.time(), "events": self.events, **extra},
        )

    def write_summary(self, partial: bool) -> None:
        leaders = {w.name: w.role for w in self.plan.workers}
        atomic_write_json(
            self.dir / "summary.json",
            {"name": self.recipe.name, "topology": self.plan.topology, "partial": partial,
             "total_gpus": self.plan.total_gpus, "rows": self.rows,
             "invalid_points": len(validity.invalid_rows(self.rows)), "kv_capacity": self.kv_capacity,
             "served": served_requests(self.dir / "logs", leaders), **({"eval": self.eval} if self.eval else {})},
        )

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        # SIGUSR2 is submitit's warning that the time limit is near (--signal=USR2@90).
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            signal.signal(sig, self.on_signal)
        try:
            self.bring_up()
            self.measure()
        except FaultRaised as f:
            return self.fail(f.fault)
        except Exception as e:  # a bug here must still leave a diagnosis and no steps behind
            return self.fail_internal(e)
        finally:
            self.teardown()
        return self.finish()

    # The pieces of a run, also driven one deployment after another by a packed sweep.

    def bring_up(self) -> None:
        self.status("starting")
        self._resolve_nodes()
        self._start_infra()
        self._start_engines()
        self._wait_ready()

    def adopt(self, other: "Driver") -> None:
        """Benchmark on the engines `other` brought up (same engine args), instead of a new start."""
        self.hosts, self.addrs, self.stop_at = other.hosts[: self.plan.total_nodes], other.addrs, other.stop_at
        self.node_watch, self.steps, self.engine_dir = other.node_watch, other.steps, other.engine_dir
        self.event("engines shared", engine_dir=str(self.engine_dir))
        self.status("ready", engine_dir=str(self.engine_dir))

    def measure(self) -> None:
        if evals.benchmark_wanted(self.recipe):
            self.status("benchmarking")
            self._check_kv_capacity()
            self._benchmark()
        if evals.wanted(self.recipe):
            self.status("evaluating")
            try:
                self.eval = evals.run_evals(self.recipe, self.base_url, self.dir, self.event, self._watch)
            except evals.EvalFailed as e:
                raise FaultRaised(Fault("eval", None, str(e))) from None
            self.write_summary(partial=True)

    def teardown(self) -> None:
        t0 = time.time()
        self._stop_client()
        stop_all(self.steps)
        self.event("torn down", seconds=round(time.time() - t0, 2))

    def finish(self) -> dict[str, Any]:
        self._record_provenance()
        self.write_summary(partial=False)
        self.event("done")
        self.status("done", invalid_points=[validity.invalid_line(r) for r in validity.invalid_rows(self.rows)])
        return {"rows": self.rows}

    def _record_provenance(self) -> None:
        try:
            provenance.finalize(self.dir, self.hosts, reports=self.engine_dir / "provenance")
        except Exception as e:  # provenance must never turn a good run into a failed one
            print(f"[inferx] provenance not recorded: {e!r}", flush=True)

    def fail_internal(self, e: Exception) -> dict[str, Any]:
        return self.fail(Fault("internal", None, f"driver error: {e!r}; see the job's submitit dir for the traceback."))

    def on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        self._cancel = f"{name} (the Slurm time limit is near: raise slurm.time)" if signum == signal.SIGUSR2 else name

    def fail(self, fault: Fault) -> dict[str, Any]:
        self._stop_client()
        # Steps on a dead node cannot answer a SIGTERM; do not wait for them.
        stop_all(self.steps, dead_hosts={fault.host} if fault.kind == "node_down" else set())
        text = fault.diagnosis()
        atomic_write(self.dir / "diagnosis.txt", text + "\n")
        self.write_summary(partial=True)
        self.event("failed", kind=fault.kind)
        self.status("failed", fault=fault.kind, diagnosis=text, fault_at=fault.at)
        print(f"[inferx] FAILED: {text}", flush=True)
        self._record_provenance()
        raise RunFailed(text)

    def _resolve_nodes(self) -> None:
        self.hosts = nodes.allocation_hosts()
        if len(self.hosts) < self.plan.total_nodes:
            raise FaultRaised(Fault("infra", None, f"allocation has {len(self.hosts)} nodes, plan needs {self.plan.total_nodes}"))
        self.hosts = self.hosts[: self.plan.total_nodes]
        self.addrs = nodes.node_addresses(self.hosts)
        end = nodes.job_end_time(os.environ.get("SLURM_JOB_ID", ""))
        self.stop_at = end - self.recipe.slurm.stop_before_limit_s if end else None
        self.node_watch = NodeWatch(self.hosts)
        nodes.write_nodes_env(str(self.dir / "nodes.env"), self.hosts, self.addrs)
        self.event("nodes", hosts=self.hosts)

    def _launch(self, kind: str) -> None:
        image = self._image()
        for st in self.job.steps:
            if st.kind != kind:
                continue
            host = self.hosts[st.node]
            rs = RunningStep(
                step=st, host=host, argv=srun_argv(self.recipe, st, host, str(self.dir), image,
                                                   job_id=os.environ.get("SLURM_JOB_ID", "local")),
                log=self.dir / "logs" / f"{st.name}.log",
            )
            rs.start(self.job.env)
            self.steps.append(rs)

    def _image(self) -> Optional[str]:
        path = self.dir / "image.json"
        return read_json(path)["path"] if path.exists() else self.recipe.container.image

    @property
    def infra_addr(self) -> str:
        return self.addrs[self.hosts[self.plan.frontend_node]]

    @property
    def own_server(self) -> bool:
        return self.recipe.frontend.server == "engine"

    def _port(self, step: str, var: PortVar) -> int | None:
        """A port `step` took on its node when it started (JOB/ports/STEP.env); None until then."""
        return read_ports(ports_file(str(self.engine_dir), step)).get(var.value)

    @property
    def base_url(self) -> str | None:
        # The Dynamo frontend's node, or the node of the one worker whose own server answers;
        # None until that step has taken its port.
        lead = self.plan.workers[0]
        node, step = (lead.leader, f"{lead.name}.n0") if self.own_server else (self.plan.frontend_node, "frontend")
        port = self._port(step, PortVar.http)
        return None if port is None else f"http://{self.addrs[self.hosts[node]]}:{port}"

    def _start_infra(self) -> None:
        fe = self.recipe.frontend
        if self.own_server:
            return  # no frontend, so no discovery
        if fe.discovery is Discovery.file:
            (self.dir / "discovery").mkdir(exist_ok=True)
            return
        self._launch("infra")
        deadline = time.time() + 60
        while not all(p is not None and _port_open(self.infra_addr, p)
                      for p in (self._port("infra", PortVar.etcd), self._port("infra", PortVar.nats))):
            self._watch()
            if time.time() > deadline:
                infra = next(s for s in self.steps if s.step.kind == "infra")
                raise FaultRaised(Fault("infra", infra, "etcd/NATS did not open their ports within 60 s.", host=infra.host))
            time.sleep(0.2)
        self.event("infra ready")

    def _install(self) -> None:
        """Dynamo into every node's container, all nodes at once; nothing else starts until each
        install step has exited 0."""
        if not any(s.kind == "install" for s in self.job.steps):
            return
        self._launch("install")
        pending = [s for s in self.steps if s.step.kind == "install"]
        started = time.time()
        while pending:
            self._watch_cancel()
            for s in list(pending):
                rc = s.poll()
                if rc is None:
                    if time.time() - started > s.step.startup_timeout_s:
                        raise FaultRaised(Fault("install", s, f"the Dynamo install did not finish within {s.step.startup_timeout_s:.0f} s.",
                                                 host=s.host))
                    continue
                if rc != 0:
                    raise FaultRaised(Fault("install", s, f"the Dynamo install (engine.dynamo_install: "
                                             f"{self.recipe.engine.dynamo_install}) failed on {s.host}.", host=s.host))
                pending.remove(s)
                self.steps.remove(s)  # done: its exit is not a fault of the deployment
            time.sleep(0.2)
        self.event("installed", seconds=round(time.time() - started, 2))

    def _watch_cancel(self) -> None:
        if self._cancel:
            raise FaultRaised(Fault("cancelled", None, f"run cancelled by {self._cancel}."))

    def _start_engines(self) -> None:
        self._launch("node_cache")  # every node copies the weights while Dynamo installs
        self._install()
        self._fabric_preflight()
        self._serve_weights()
        self._launch("frontend")
        self._launch("worker")
        self._launch("monitor")
        self.event("engines started", steps=len(self.steps))

    def _fabric_preflight(self) -> None:
        """Every prefill node moves a few KB to every decode node over NIXL, with the workers'
        UCX settings, before any weights load (planning/fabric.py)."""
        if not any(s.kind == "fabric" for s in self.job.steps):
            return
        self._launch("fabric")
        steps = [s for s in self.steps if s.step.kind == "fabric"]
        outcome = fabric.run(self.dir, self.plan, self.hosts, steps, self._watch)
        self.steps = [s for s in self.steps if s not in steps]  # done: their exits are not faults of the deployment
        if outcome.fault:
            raise FaultRaised(outcome.fault)
        self.event("fabric ok", seconds=outcome.seconds, pairs=outcome.summary())

    def _serve_weights(self) -> None:
        """With model.node_cache: wait for every node's copy, then tell each engine where its weights are."""
        steps = [s for s in self.steps if s.step.kind == "node_cache"]
        if not steps:
            return
        started = time.time()
        node_cache_serve.await_steps(steps, self._watch)  # a cancel, the time limit, a dead node
        self.steps = [s for s in self.steps if s not in steps]  # done: their exits are not faults of the deployment
        settled = node_cache_serve.settle(self.dir, self.plan, steps, self.recipe.model.path)
        if settled.failed:
            step, why = settled.failed
            raise FaultRaised(Fault("node_cache", step, why, host=step.host))
        for warning in settled.warnings:
            self.event("node cache warning", warning=warning)
        node_cache_serve.write_env(self.dir, settled)
        self.event("weights ready", seconds=round(time.time() - started, 2), nodes=settled.summary())

    def _wait_ready(self) -> None:
        # An engine's own server lists the model once its one worker is up: nothing to count.
        roles = () if self.own_server else self.recipe.topology.roles
        want = {r: len(self.plan.role_workers(r)) for r in roles}
        started = time.time()
        fatal = FatalLineWatch()
        timeouts = {r: max((s.startup_timeout_s for s in self.job.steps if s.role == r), default=0)
                    for r in self.recipe.topology.roles}
        while True:
            self._watch()
            if (fault := fatal.scan(self.steps)) is not None:
                raise FaultRaised(fault)
            url = self.base_url
            have = {} if self.own_server or url is None else readiness.accepted_workers(url, self.recipe.model.name)
            if url is None:  # the server's step has not taken its port yet
                have = {r: 0 for r in want}
            elif have is None:
                have = readiness.registered_workers(url)
                if self.recipe.topology.aggregated:
                    # /health tells prefill from the rest only; the rest are aggregated here.
                    have["agg"] = have.pop("decode")
            models = readiness.served_models(url) if url else []
            if self.own_server and self.recipe.model.name not in models and time.time() - started > timeouts["agg"]:
                raise FaultRaised(Fault("not_ready", next((s for s in self.steps if s.step.kind == "worker"), None),
                                         f"the engine's server did not list {self.recipe.model.name} within {timeouts['agg']:.0f} s."))
            if self.recipe.model.name in models and all(have[r] >= want[r] for r in want):
                self.event("ready", registered=have, seconds=round(time.time() - started, 2))
                self.status("ready", registered=have)
                return
            waited = time.time() - started
            for role, n in want.items():
                if have[role] < n and waited > timeouts[role]:
                    workers = [s for s in self.steps if s.step.role == role and s.step.leader]
                    raise FaultRaised(
                        Fault("not_ready", workers[0] if workers else None,
                              f"{role} workers did not become ready within {timeouts[role]:.0f} s: "
                              f"{have[role]} of {n} registered (model listed: {self.recipe.model.name in models}).")
                    )
            time.sleep(POLL_S)

    def _watch(self) -> None:
        if self._cancel:
            raise FaultRaised(Fault("cancelled", None, f"run cancelled by {self._cancel}."))
        if self.stop_at and time.time() >= self.stop_at:
            raise FaultRaised(Fault("time_limit", None, f"the job's time limit is {self.recipe.slurm.stop_before_limit_s:.0f} s away: "
                                     f"stopped cleanly with partial results; raise slurm.time ({self.recipe.slurm.time}) or run fewer points."))
        fault = check_exits(self.steps)
        if fault is None and self.node_watch and time.time() - self._last_node_check > NODE_CHECK_S:
            self._last_node_check = time.time()
            fault = self.node_watch.check(self.steps)
        if fault:
            raise FaultRaised(fault)

    def _benchmark(self) -> None:
        b = self.recipe.benchmark
        tokenizer = b.tokenizer or self.recipe.model.path
        kv = kv_probe.PointProbe(self.recipe, lambda: self._spec_urls(("decode",)))
        for scen in b.scenarios:
            for conc in b.concurrency:
                out = self.dir / point_dir(scen, conc)
                out.mkdir(parents=True, exist_ok=True)
                argv = aiperf_argv(self.recipe, scen, conc, url=self.base_url, artifact_dir=str(out), tokenizer=tokenizer)
                self.event("benchmark", scenario=scen.name, concurrency=conc)
                spec_before = self._spec_counters() if self.recipe.speculative else None
                kv.start()
                self._run_client(argv, out, b.requests_for(conc) + b.warmup_requests)
                export = out / AIPERF_EXPORT
                if not export.exists():
                    raise FaultRaised(Fault("client", None, f"benchmark client wrote no {AIPERF_EXPORT} for {scen.name} c{conc}; see {out}/client.log"))
                doc = read_json(export)
                row = point_row(doc, read_records(out / RECORDS_EXPORT), isl=scen.isl, osl=scen.osl, concurrency=conc,
                                prefill_gpus=self.plan.prefill_gpus, decode_gpus=self.plan.decode_gpus,
                                agg_gpus=self.plan.agg_gpus, expected_requests=b.requests_for(conc))
                if self.recipe.speculative:
                    row["acceptance_length"] = self._acceptance_length(spec_before)
                verdict = kv.judge(row, osl=scen.osl, ignore_eos=asks_ignore_eos(argv))
                if not verdict.valid:
                    self.event("invalid point", isl=scen.isl, osl=scen.osl, concurrency=conc, why=verdict.why)
                row.update(verdict.row_fields())
                window = (row["benchmark_start_time_unix"], row["benchmark_end_time_unix"]) if "duration" in row else profiling_window(doc)
                row.update(gpu_metrics(self.engine_dir / "logs", self.hosts, *window))
                # A sample after the window's end may be one sampling period away.
                row.update(point_power(self.engine_dir / "logs", self.hosts, self.plan, row,
                                       wait_s=b.gpu_metrics_interval_s + 2.0 if b.gpu_metrics_interval_s else 0.0))
                self.rows.append(row)
                self.write_summary(partial=True)

    def _spec_urls(self, roles: tuple[str, ...] = ("decode", "agg")) -> list[str]:
        """Where the engines' own Prometheus metrics are: the server itself, or each worker
        leader's system port under Dynamo."""
        return [u for w in self.plan.workers if w.role in roles and (u := self._metrics_url(w))][: 1 if self.own_server else None]

    def _metrics_url(self, w: Any) -> Optional[str]:
        if self.own_server:
            return f"{self.base_url}/metrics"
        port = self._port(f"{w.name}.n0", PortVar.system)
        return None if port is None else f"http://{self.addrs[self.hosts[w.leader]]}:{port}/metrics"

    def _check_kv_capacity(self) -> None:
        """Each worker's KV capacity as its engine sized it, beside the memory plan's."""
        caps, note = kv_probe.capacities(self.recipe, self.plan, self._metrics_url, self.engine_dir / "logs")
        if note:
            self.event("kv capacity not planned", why=note)
        self.kv_capacity = [c.model_dump() for c in caps]
        for c in caps:
            if c.warning:
                self.event("kv capacity warning", warning=c.warning)

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
        with open(out / "client.log", "ab") as log:
            self._client = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out, start_new_session=True)
        b = self.recipe.benchmark
        started_at = time.time()
        base: Optional[tuple[float, float, float]] = None
        last_change, last_value = time.time(), None
        while self._client.poll() is None:
            self._watch()
            text = metrics.scrape(f"{self.base_url}/metrics")
            if text is not None:
                now = (metrics.counter_total(text, metrics.STARTED_METRICS), metrics.counter_total(text),
                       metrics.counter_total(text, metrics.DONE_METRICS))
                base = base or now
                if now[1] != last_value:
                    last_change, last_value = time.time(), now[1]
                if now[0] == base[0] and now[1] == base[1]:
                    # The client is still starting (tokenizer, dataset): its own, longer bound.
                    if time.time() - started_at > b.client_startup_timeout_s:
                        raise FaultRaised(Fault("stalled", None, f"benchmark client sent no request within {b.client_startup_timeout_s:.0f} s; see {out}/client.log"))
                elif now[2] - base[2] >= expected:
                    pass  # every request is answered; the client is writing its exports
                elif time.time() - last_change > b.stall_timeout_s:
                    raise FaultRaised(Fault("stalled", self._suspect(), f"benchmark made no progress for {b.stall_timeout_s:.0f} s (frontend token and request counters unchanged)."))
            time.sleep(POLL_S)
        # A cancel kills the client too; report the cancel, not the client's exit.
        self._watch()
        rc = self._client.returncode
        self._client = None
        if rc != 0:
            raise FaultRaised(Fault("client", None, f"benchmark client exited with code {rc}; see {out}/client.log"))

    def _suspect(self) -> Optional[RunningStep]:
        """The decode leader is where a stuck request is waiting; point the diagnosis there."""
        return next((s for s in self.steps if s.step.role == "decode" and s.step.leader), None)

    def _stop_client(self) -> None:
        if self._client and self._client.poll() is None:
            os.killpg(self._client.pid, signal.SIGTERM)
            try:
                self._client.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._client.pid, signal.SIGKILL)
        self._client = None


class FaultRaised(Exception):
    def __init__(self, fault: Fault):
        super().__init__(fault.message)
        self.fault = fault


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def run_job(job_dir: str) -> dict[str, Any]:
    """Entry point inside the allocation (what submitit runs)."""
    return Driver(Path(job_dir)).run()
