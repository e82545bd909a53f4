"""The job driver: runs on the allocation's first node, brings the deployment up step by
step, benchmarks it, and tears it down. Any fault ends the run within seconds, with a
diagnosis, every log kept and partial results marked partial."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Optional

from inferx_slurm.fsutil import read_json
from inferx_slurm.job.launch import Launch
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job.rendered import RenderedJob
from inferx_slurm.job.phases import EventKind, FaultKind, Phase, StepKind
from inferx_slurm.planning.placement import Plan
from inferx_slurm.planning.ports import PortVar, ports_file
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sections import Discovery, FrontendServer
from inferx_slurm.runtime import nodes, readiness
from inferx_slurm.runtime.client import ClientRunner
from inferx_slurm.runtime.fatal_lines import FatalLineWatch
from inferx_slurm.runtime.ports import read_ports
from inferx_slurm.runtime.record import RunRecord, log
from inferx_slurm.runtime.start import EarlyStart, launch_steps
from inferx_slurm.runtime.steps import RunningStep, stop_all
from inferx_slurm.runtime.watchdog import Fault, FaultRaised, NodeWatch, check_exits

# Bring-up polls often: every poll saved between a worker registering and the benchmark
# starting is launch overhead. Each poll is two local HTTP requests and a process poll.
READY_POLL_S = 0.05
NODE_CHECK_S = 1.0


class RunFailed(RuntimeError):
    """The deployment failed; the diagnosis is in the results dir."""


class Driver(ClientRunner):
    def __init__(self, job_dir: Path, early: Optional[EarlyStart] = None):
        """`early`: the hosts and first steps run_job started before the driver was imported."""
        self.dir = job_dir
        self.paths = JobPaths(job_dir)
        self.recipe = Recipe.from_dict(read_json(self.paths.recipe_json))
        self.plan = Plan.model_validate(read_json(self.paths.plan))
        self.job = RenderedJob.model_validate(read_json(self.paths.rendered))
        self.launch = early.launch if early else Launch.read(self.paths.launch)
        self.models = {st.name: st for st in self.job.steps}
        self.steps: list[RunningStep] = []
        self.hosts: list[str] = []
        self.addrs: dict[str, str] = {}
        self.started_kinds: set[str] = set()
        self.rows: list[dict[str, Any]] = []
        self.eval: Optional[dict[str, Any]] = None
        self.t0 = early.t0 if early else time.time()
        self.record = RunRecord(self.paths, self.t0)
        self._last_node_check = 0.0
        self.node_watch: Optional[NodeWatch] = None
        self._cancel: Optional[str] = None
        self.stop_at: Optional[float] = None
        # Where the running engines' logs are: this dir, or the one whose bring-up this
        # deployment shares (packed sweeps).
        self.engine_dir = job_dir
        super().__init__()
        if early is not None:
            self.hosts, self.addrs, self.started_kinds = early.hosts, early.addrs, set(early.kinds)
            self.record.event(EventKind.nodes, at=early.resolved_at, hosts=self.hosts)
            self._adopt_started(early.steps)

    # --- bookkeeping ---------------------------------------------------------------------------

    def event(self, kind: EventKind, /, **extra: Any) -> None:
        self.record.event(kind, **extra)

    def status(self, phase: Phase, **extra: Any) -> None:
        self.record.hosts = self.hosts
        self.record.status(phase, **extra)

    # Modules for the later phases and the optional steps are imported where they are used: the
    # driver imports while the engines it has just started load on the same node, and whatever
    # it imports before it polls for readiness is launch overhead.

    def write_summary(self, partial: bool) -> None:
        from inferx_slurm.job.status import Summary
        from inferx_slurm.results import validity
        from inferx_slurm.runtime.accounting import served_requests

        leaders = {w.name: w.role for w in self.plan.workers}
        self.record.summary(Summary(name=self.recipe.name, topology=self.plan.topology, partial=partial,
                                    total_gpus=self.plan.total_gpus, rows=self.rows,
                                    served=served_requests(self.paths.logs, leaders),
                                    invalid_points=len(validity.invalid_rows(self.rows)), kv_capacity=self.kv_capacity,
                                    **({"eval": self.eval} if self.eval else {})))

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        # SIGUSR2 is submitit's warning that the time limit is near (--signal=USR2@90).
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            signal.signal(sig, self.request_stop)
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
        self.record.before_start()
        self.status(Phase.starting)
        self._resolve_nodes()
        self._start_infra()
        self._start_engines()
        self._wait_ready()
        # The GPU samplers start once the engines are up: they measure the benchmark, and
        # started earlier they only compete with the engines' start for the node.
        self._launch(StepKind.monitor)

    def adopt(self, other: "Driver") -> None:
        """Benchmark on the engines `other` brought up (same engine args), instead of a new start."""
        self.hosts, self.addrs, self.stop_at = other.hosts[: self.plan.total_nodes], other.addrs, other.stop_at
        self.node_watch, self.steps, self.engine_dir = other.node_watch, other.steps, other.engine_dir
        self.event(EventKind.engines_shared, engine_dir=str(self.engine_dir))
        self.status(Phase.ready, engine_dir=str(self.engine_dir))

    def measure(self) -> None:
        from inferx_slurm.runtime import evals

        if evals.benchmark_wanted(self.recipe):
            self.status(Phase.benchmarking)
            self.check_kv_capacity()
            self.benchmark()
        if evals.wanted(self.recipe):
            self.status(Phase.evaluating)
            try:
                self.eval = evals.run_evals(self.recipe, self.base_url, self.dir, self.event, self.watch)
            except evals.EvalFailed as e:
                raise FaultRaised(Fault(FaultKind.eval, None, str(e))) from None
            self.write_summary(partial=True)

    def teardown(self) -> None:
        t0 = time.time()
        self.stop_client()
        stop_all(self.steps)
        self.event(EventKind.torn_down, seconds=round(time.time() - t0, 2))

    def finish(self) -> dict[str, Any]:
        from inferx_slurm.results import validity

        self._record_provenance()
        self.write_summary(partial=False)
        self.event(EventKind.done)
        self.status(Phase.done, invalid_points=[validity.invalid_line(r) for r in validity.invalid_rows(self.rows)])
        return {"rows": self.rows}

    def _record_provenance(self) -> None:
        from inferx_slurm.results import provenance

        try:
            provenance.finalize(self.dir, self.hosts, reports=JobPaths(self.engine_dir).worker_reports)
        except Exception as e:  # provenance must never turn a good run into a failed one
            log(f"provenance not recorded: {e!r}")

    def fail_internal(self, e: Exception) -> dict[str, Any]:
        return self.fail(Fault(FaultKind.internal, None, f"driver error: {e!r}; see the job's submitit dir for the traceback."))

    def request_stop(self, signum: int, _frame: Any = None) -> None:
        """A signal handler: the run stops at its next check, as cancelled."""
        name = signal.Signals(signum).name
        self._cancel = f"{name} (the Slurm time limit is near: raise slurm.time)" if signum == signal.SIGUSR2 else name

    def fail(self, fault: Fault) -> dict[str, Any]:
        """End the run for `fault`: stop every step, keep the logs, write the diagnosis; raises RunFailed."""
        self.stop_client()
        # Steps on a dead node cannot answer a SIGTERM; do not wait for them.
        stop_all(self.steps, dead_hosts={fault.host} if fault.kind is FaultKind.node_down else set())
        text = fault.diagnosis()
        self.write_summary(partial=True)
        self.event(EventKind.failed, kind=fault.kind.value)
        self.record.hosts = self.hosts
        self.record.failed(fault.kind, text, fault_at=fault.at)
        log(f"FAILED: {text}")
        self._record_provenance()
        raise RunFailed(text)

    def not_run(self, reason: str) -> None:
        """A packed deployment that an earlier one's end kept from running."""
        text = f"not run: {reason}. Re-run the sweep with --resume to run it."
        self.write_summary(partial=True)
        self.event(EventKind.not_run)
        self.record.failed(FaultKind.not_run, text)

    def _resolve_nodes(self) -> None:
        if self.hosts:
            return  # resolved before the driver started (runtime/start.py)
        self.hosts = nodes.allocation_hosts()
        if len(self.hosts) < self.plan.total_nodes:
            raise FaultRaised(Fault(FaultKind.infra, None, f"allocation has {len(self.hosts)} nodes, plan needs {self.plan.total_nodes}"))
        self.hosts = self.hosts[: self.plan.total_nodes]
        self.addrs = nodes.node_addresses(self.hosts)
        nodes.write_nodes_env(str(self.paths.nodes_env), self.hosts, self.addrs)
        self.event(EventKind.nodes, hosts=self.hosts)

    def _watch_allocation(self) -> None:
        """The time limit and the nodes' health, looked up once the first steps are on their way."""
        if self.node_watch is not None:
            return
        end = nodes.job_end_time(os.environ.get("SLURM_JOB_ID", ""))
        self.stop_at = end - self.recipe.slurm.stop_before_limit_s if end else None
        self.node_watch = NodeWatch(self.hosts)

    def _launch(self, kind: StepKind) -> None:
        if kind in self.started_kinds:
            return
        self.started_kinds.add(kind)
        self._adopt_started(launch_steps(self.launch, kind, self.paths, self.hosts, self.launch.image(self.dir), self.models))

    def _adopt_started(self, started: list[tuple[str, RunningStep]]) -> None:
        for name, rs in started:
            rs.step = self.models[name]
            self.steps.append(rs)
            self.record.event(EventKind.step_started, at=rs.started, quiet=True, step=name, host=rs.host)

    @property
    def infra_addr(self) -> str:
        return self.addrs[self.hosts[self.plan.frontend_node]]

    @property
    def own_server(self) -> bool:
        return self.recipe.frontend.server is FrontendServer.engine

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
            self.paths.discovery.mkdir(exist_ok=True)
            return
        self._launch(StepKind.infra)
        self._watch_allocation()
        deadline = time.time() + 60
        while not all(p is not None and _port_open(self.infra_addr, p)
                      for p in (self._port("infra", PortVar.etcd), self._port("infra", PortVar.nats))):
            self.watch()
            if time.time() > deadline:
                infra = next(s for s in self.steps if s.step.kind == StepKind.infra)
                raise FaultRaised(Fault(FaultKind.infra, infra, "etcd/NATS did not open their ports within 60 s.", host=infra.host))
            time.sleep(0.1)
        self.event(EventKind.infra_ready)

    def _install(self) -> None:
        """Dynamo into every node's container, all nodes at once; nothing else starts until each
        install step has exited 0."""
        if not any(s.kind == StepKind.install for s in self.job.steps):
            return
        self._launch(StepKind.install)
        pending = [s for s in self.steps if s.step.kind == StepKind.install]
        started = time.time()
        while pending:
            self._watch_cancel()
            for s in list(pending):
                rc = s.poll()
                if rc is None:
                    if time.time() - started > s.step.startup_timeout_s:
                        raise FaultRaised(Fault(FaultKind.install, s, f"the Dynamo install did not finish within {s.step.startup_timeout_s:.0f} s.",
                                                host=s.host))
                    continue
                if rc != 0:
                    raise FaultRaised(Fault(FaultKind.install, s, f"the Dynamo install (engine.dynamo_install: "
                                            f"{self.recipe.engine.dynamo_install}) failed on {s.host}.", host=s.host))
                pending.remove(s)
                self.steps.remove(s)  # done: its exit is not a fault of the deployment
            time.sleep(0.2)
        self.event(EventKind.installed, seconds=round(time.time() - started, 2))

    def _watch_cancel(self) -> None:
        if self._cancel:
            raise FaultRaised(Fault(FaultKind.cancelled, None, f"run cancelled by {self._cancel}."))

    def _start_engines(self) -> None:
        self._launch(StepKind.node_cache)  # every node copies the weights while Dynamo installs
        self._install()
        self._fabric_preflight()
        self._serve_weights()
        self._launch(StepKind.frontend)
        self._launch(StepKind.worker)
        self.event(EventKind.engines_started, steps=len(self.steps))
        self._watch_allocation()

    def _fabric_preflight(self) -> None:
        """Every prefill node moves a few KB to every decode node over NIXL, with the workers'
        UCX settings, before any weights load (planning/fabric.py)."""
        if not any(s.kind == StepKind.fabric for s in self.job.steps):
            return
        from inferx_slurm.runtime import fabric

        self._launch(StepKind.fabric)
        self._watch_allocation()
        steps = [s for s in self.steps if s.step.kind == StepKind.fabric]
        outcome = fabric.run(self.paths, self.plan, self.hosts, steps, self.watch)
        self.steps = [s for s in self.steps if s not in steps]  # done: their exits are not faults of the deployment
        if outcome.fault:
            raise FaultRaised(outcome.fault)
        self.event(EventKind.fabric_ok, seconds=outcome.seconds, pairs=outcome.summary())

    def _serve_weights(self) -> None:
        """With model.node_cache: wait for every node's copy, then tell each engine where its weights are."""
        steps = [s for s in self.steps if s.step.kind == StepKind.node_cache]
        if not steps:
            return
        from inferx_slurm.runtime import node_cache_serve

        started = time.time()
        self._watch_allocation()  # the time limit or a dead node ends the copies too
        node_cache_serve.await_steps(steps, self.watch)
        self.steps = [s for s in self.steps if s not in steps]  # done: their exits are not faults of the deployment
        settled = node_cache_serve.settle(self.dir, self.plan, steps, self.recipe.model.path)
        if settled.failed:
            step, why = settled.failed
            raise FaultRaised(Fault(FaultKind.node_cache, step, why, host=step.host))
        for warning in settled.warnings:
            self.event(EventKind.node_cache_warning, warning=warning)
        node_cache_serve.write_env(self.dir, settled)
        self.event(EventKind.weights_ready, seconds=round(time.time() - started, 2), nodes=settled.summary())

    def _wait_ready(self) -> None:
        # An engine's own server lists the model once its one worker is up: nothing to count.
        roles = () if self.own_server else self.recipe.topology.roles
        want = {r: len(self.plan.role_workers(r)) for r in roles}
        # Startup timeouts count from the engines' start, which may be before the driver's.
        started = min((s.started for s in self.steps if s.step.kind == StepKind.worker), default=time.time())
        fatal = FatalLineWatch()
        timeouts = {r: max((s.startup_timeout_s for s in self.job.steps if s.role == r), default=0)
                    for r in self.recipe.topology.roles}
        last: dict[str, int] = {}
        while True:
            self.watch()
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
            if have != last and any(have.values()):
                self.event(EventKind.registered, registered=have)
            last = have
            models = readiness.served_models(url) if url else []
            if self.own_server and self.recipe.model.name not in models and time.time() - started > timeouts["agg"]:
                raise FaultRaised(Fault(FaultKind.not_ready, next((s for s in self.steps if s.step.kind == StepKind.worker), None),
                                        f"the engine's server did not list {self.recipe.model.name} within {timeouts['agg']:.0f} s."))
            if self.recipe.model.name in models and all(have[r] >= want[r] for r in want):
                self._record_preflights()
                self.event(EventKind.ready, registered=have, seconds=round(time.time() - started, 2))
                self.status(Phase.ready, registered=have)
                return
            waited = time.time() - started
            for role, n in want.items():
                if have[role] < n and waited > timeouts[role]:
                    workers = [s for s in self.steps if s.step.role == role and s.step.leader]
                    raise FaultRaised(
                        Fault(FaultKind.not_ready, workers[0] if workers else None,
                              f"{role} workers did not become ready within {timeouts[role]:.0f} s: "
                              f"{have[role]} of {n} registered (model listed: {self.recipe.model.name in models}).")
                    )
            time.sleep(READY_POLL_S)

    def _record_preflights(self) -> None:
        """Each worker's preflight into the timeline, at the time its probe wrote its report."""
        for p in sorted(JobPaths(self.engine_dir).worker_reports.glob("*.json")):
            try:
                at = float(read_json(p)["at"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            self.record.event(EventKind.preflight, at=at, quiet=True, worker=p.stem)

    def watch(self) -> None:
        """Raise FaultRaised for a cancel, the time limit, an exited step or a dead node."""
        self._watch_cancel()
        if self.stop_at and time.time() >= self.stop_at:
            raise FaultRaised(Fault(FaultKind.time_limit, None, f"the job's time limit is {self.recipe.slurm.stop_before_limit_s:.0f} s away: "
                                    f"stopped cleanly with partial results; raise slurm.time ({self.recipe.slurm.time}) or run fewer points."))
        fault = check_exits(self.steps)
        if fault is None and self.node_watch and time.time() - self._last_node_check > NODE_CHECK_S:
            self._last_node_check = time.time()
            fault = self.node_watch.check(self.steps)
        if fault:
            raise FaultRaised(fault)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
