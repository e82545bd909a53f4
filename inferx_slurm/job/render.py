"""Rendering: recipe + plan -> the exact scripts and step commands of a job. No I/O but
reading the templates shipped in ``sbatch_templates/``.

Every value that reaches a shell goes through :func:`shell_word`; the only unquoted
expansions are the address variables the scripts define themselves.
"""

from __future__ import annotations

import json
import re
import shlex
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Optional

from inferx_slurm.engines import node_commands, preflight_needs, startup_timeout
from inferx_slurm.engines.common import INFRA_ADDR, LEADER_ADDR, NodeCommand, flags, http_port
from inferx_slurm.job import fabric, node_cache
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job.phases import StepKind
from inferx_slurm.job.rendered import RenderedJob, Step
from inferx_slurm.planning import fabric as fabric_plan
from inferx_slurm.planning.placement import PORTS_PER_WORKER, Plan, WorkerPlacement, plan_recipe
from inferx_slurm.planning.ports import PORTS_DIR, PORTS_SCRIPT, WORKER_BLOCK, PortVar, port_or_ref, ports_file, request
from inferx_slurm.recipe.profiles import PROFILES
from inferx_slurm.recipe.sections import ContainerRuntime, Discovery, FrontendServer
from inferx_slurm.recipe.schema import Recipe

_PLACEHOLDERS = (LEADER_ADDR, INFRA_ADDR, node_cache.NODE_MODEL, *(v.ref for v in PortVar))
_PH_RE = re.compile("(" + "|".join(re.escape(p) for p in _PLACEHOLDERS) + ")")


def shell_word(token: str) -> str:
    """Quote one argv token; address placeholders stay expandable, everything else is literal."""
    parts = _PH_RE.split(token)
    if len(parts) == 1:
        return shlex.quote(token)
    return "".join(f'"{p}"' if p in _PLACEHOLDERS else (shlex.quote(p) if p else "") for p in parts)


def shell_join(argv: list[str]) -> str:
    return " ".join(shell_word(a) for a in argv)


@lru_cache(maxsize=None)
def template(name: str) -> str:
    return _templates_dir().joinpath(name).read_text()


def _templates_dir():
    # Installed wheels carry the templates as package data; a checkout reads them in place.
    packaged = resources.files("inferx_slurm").joinpath("sbatch_templates")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sbatch_templates"


def fill(text: str, **values: str) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template needs a value for {key!r}")
        return values[key]

    return re.sub(r"\{\{\s*(\w+)\s*\}\}", sub, text)


def exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={shell_word(v)}" for k, v in env.items()) or ":"


def discovery_env(recipe: Recipe, job_dir: str) -> dict[str, str]:
    fe = recipe.frontend
    if fe.discovery is Discovery.file:
        return {"DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_KV": str(JobPaths(job_dir).discovery)}
    return {
        "ETCD_ENDPOINTS": f"http://{INFRA_ADDR}:{port_or_ref(fe.etcd_port, PortVar.etcd)}",
        "NATS_SERVER": f"nats://{INFRA_ADDR}:{port_or_ref(fe.nats_port, PortVar.nats)}",
    }


def port_line(python: str, job_dir: str, name: str, requests: list[str], *, per_node: bool = False,
              takes: tuple[str, ...] = (), leader: str | None = None) -> str:
    """The lines that take a step's ports on its node (runtime/ports.py) and read them back. A
    worker's nodes each record their own (NAME.nRANK); `leader` names what its other nodes
    take from the leader's record."""
    out = shell_word(f"{job_dir}/{PORTS_DIR}/{name}.n") + '"$node_rank".env' if per_node else shell_word(ports_file(job_dir, name))
    line = f"{shell_join([python, f'{job_dir}/{PORTS_SCRIPT}'])} {out} {shell_join(requests)}"
    line += "".join(f" --take {shell_word(t)}" for t in takes)
    if leader:
        line += f' --rank "$node_rank" --leader {shell_word(leader)}'
    return f"{line}\nsource {out}"


def infra_takes(recipe: Recipe, job_dir: str) -> tuple[str, ...]:
    """The frontend and the workers read discovery's ports where the infra step chose them."""
    fe = recipe.frontend
    if fe.server is FrontendServer.dynamo and fe.discovery is Discovery.etcd_nats and (fe.etcd_port is None or fe.nats_port is None):
        return (ports_file(job_dir, "infra"),)
    return ()


def worker_ports(recipe: Recipe, w: WorkerPlacement, job_dir: str) -> str:
    reqs = [request("placement.port_base", w.ports.system if w.ports else None, WORKER_BLOCK, PORTS_PER_WORKER)]
    if recipe.frontend.server is FrontendServer.engine:
        reqs.append(request("frontend.http_port", recipe.frontend.http_port, (PortVar.http,)))
    # The rendezvous is the leader's listener: the worker's other nodes connect to the one it took.
    leader = f"{ports_file(job_dir, f'{w.name}.n0')}:{PortVar.rendezvous.value}" if w.multi_node else None
    return port_line(recipe.engine.python, job_dir, w.name, reqs, per_node=True, takes=infra_takes(recipe, job_dir),
                     leader=leader)


def base_env(recipe: Recipe, job_dir: str) -> dict[str, str]:
    # Plain log lines: the watchdog's hints and the request accounting read them.
    env = {"DYN_SDK_DISABLE_ANSI_LOGGING": "1"}
    env.update(PROFILES[recipe.profile].env)
    env.update(recipe.env)
    if recipe.frontend.server is not FrontendServer.engine:
        # The engine's own server has no frontend to register with: no discovery to point at.
        env.update(discovery_env(recipe, job_dir))
    if recipe.model.stage_dir:
        # Staged checkpoints are complete on disk; a hub lookup from many nodes is what races.
        env["HF_HUB_OFFLINE"] = "1"
    return env


def role_env(recipe: Recipe, role: str, job_dir: str) -> dict[str, str]:
    """What a role's workers export (and the fabric preflight runs with)."""
    return {**base_env(recipe, job_dir), **recipe.engine.env, **recipe.engine.role(role).env}


def worker_script(recipe: Recipe, plan: Plan, w: WorkerPlacement, cmds: list[NodeCommand], job_dir: str) -> str:
    env = role_env(recipe, w.role, job_dir)
    cache_root = str(JobPaths(job_dir).cache)
    cache = "\n".join([
        *(f'export {var}={shell_word(cache_root)}/"$(hostname)"/{var.lower()}' for var in PROFILES[recipe.profile].per_node_cache_vars),
        *node_cache.serve_lines(recipe, job_dir, w.name),
    ])
    setup = setup_sources(recipe)
    cases = []
    for c in cmds:
        lines = [f"  {c.node_rank})  # plan node {c.node}" + (" (leader)" if c.leader else "")]
        lines += [f"    export {k}={shell_word(v)}" for k, v in c.env.items()]
        # On AMD nodes the GPUs a worker sees are HIP_VISIBLE_DEVICES positions within Slurm's
        # ROCR_VISIBLE_DEVICES (engines.gpu_pinning): log both.
        amd = " rocr=${ROCR_VISIBLE_DEVICES:-unset} hip=${HIP_VISIBLE_DEVICES:-unset}" if "HIP_VISIBLE_DEVICES" in c.env else ""
        lines.append(
            f'    echo "[inferx] {w.name} node_rank=$node_rank host=$(hostname) '
            f'gpus=${{CUDA_VISIBLE_DEVICES:-unset}}{amd} start=$(date +%s.%N)"'
        )
        lines.append(f"    reap_group; exec {shell_join(c.argv)} ;;")
        cases.append("\n".join(lines))
    return fill(
        template("worker.sh"),
        title=f"{w.name}: {w.parallel} over {w.gpus} GPUs on plan nodes {', '.join(map(str, w.nodes))}",
        script_name=f"{w.name}.sh",
        nodes_env=shell_word(str(JobPaths(job_dir).nodes_env)),
        leader_node=str(w.leader),
        frontend_node=str(plan.frontend_node),
        env_exports=exports(env),
        cache_exports=cache,
        setup_sources=setup,
        worker=w.name,
        ports=worker_ports(recipe, w, job_dir),
        identity_check=identity_check(recipe, w.name, job_dir, w.role),
        pid_dir=shell_word(str(JobPaths(job_dir).logs)),
        cases="\n".join(cases),
    )


def setup_sources(recipe: Recipe) -> str:
    return "\n".join(f"source {shell_word(s)}" for s in recipe.setup_scripts) or ":"


def fabric_steps(recipe: Recipe, plan: Plan, job_dir: str, files: dict[str, str]) -> list[Step]:
    """The NIXL fabric preflight (planning/fabric.py): a target on every decode node, an
    initiator on every prefill node, each with its role's environment."""
    if not fabric_plan.enabled(recipe, plan):
        return []
    fp = fabric_plan.plan_pairs(plan)
    # Discovery is not theirs to reach (and its addresses are the workers' variables).
    no_discovery = set(discovery_env(recipe, job_dir))
    files[fabric_plan.PROBE_SCRIPT] = resources.files("inferx_slurm").joinpath("runtime", "fabric_probe.py").read_text()
    steps = []
    for side in fabric_plan.Side:
        name = f"fabric-{side.value}.sh"
        files[JobPaths.script_rel(name)] = fill(
            template("fabric.sh"), side=side.value, role=side.role, script_name=name,
            what="listens for every prefill node's transfer" if side is fabric_plan.Side.target else
            "writes into every decode node's target and reads it back",
            nodes_env=shell_word(str(JobPaths(job_dir).nodes_env)),
            env_exports=exports({k: v for k, v in role_env(recipe, side.role, job_dir).items() if k not in no_discovery}),
            setup_sources=setup_sources(recipe), command=fabric.probe_line(recipe, fp, side, job_dir),
            ports=fabric.port_line(recipe, job_dir) if side is fabric_plan.Side.target else ":",
        )
        steps += [Step(name=fabric_plan.step_name(side, n), kind=StepKind.fabric, role=side.role, node=n, script=JobPaths.script_rel(name),
                       startup_timeout_s=fabric_plan.STEP_TIMEOUT_S) for n in fp.nodes(side)]
    return steps


IDENTITY_PROBE = JobPaths.script_rel("identity_probe.py")
# Modules the job dir carries a copy of, for the nodes to run: a dry run names them, not their text.
COPIED_AS_IS = {IDENTITY_PROBE: "inferx_slurm/runtime/identity_probe.py", PORTS_SCRIPT: "inferx_slurm/runtime/ports.py"}
# Standard library only (ctypes NVML), so any python3 on a compute node runs it.
GPUMON_SCRIPT = JobPaths.script_rel("gpumon.py")


def environment_name(recipe: Recipe) -> str:
    if recipe.container.runtime is ContainerRuntime.pyxis and recipe.container.image:
        return f"image {recipe.container.image}"
    return f"the worker environment ({recipe.engine.python})"


def identity_check(recipe: Recipe, worker: str, job_dir: str, role: str = "decode") -> str:
    """The probe line of a worker script; it runs under the engine's own interpreter, inside the
    container: the preflight (engine, Dynamo, NIXL importable) and the recipe's identity pins."""
    argv = [recipe.engine.python, f"{job_dir}/{IDENTITY_PROBE}", "--backend", recipe.engine.backend.value,
            "--model", recipe.model.path, "--expect", json.dumps(recipe.expect.worker_checks(), sort_keys=True),
            "--require", ",".join(preflight_needs(recipe, role)), "--where", environment_name(recipe)]
    out = shell_word(str(JobPaths(job_dir).worker_report(worker))) + '.n"$node_rank".json'
    return f"{shell_join(argv)} --out {out}"


def identity_probe_source() -> str:
    return resources.files("inferx_slurm").joinpath("runtime", "identity_probe.py").read_text()


def frontend_argv(recipe: Recipe) -> list[str]:
    fe = recipe.frontend
    return [recipe.engine.python, "-m", "dynamo.frontend", "--http-port", str(http_port(recipe)), "--router-mode", fe.router_mode,
            *flags(fe.args)]


INSTALL_TIMEOUT_S = 900.0
# What dynamo.frontend and the Dynamo workers import beyond the engine (ai-dynamo's requirements
# less kubernetes, redis and aisimulate, which they run without).
DYNAMO_RUNTIME_DEPS = ("aiohttp", "msgspec", "prometheus-client", "pyzmq", "tqdm", "transformers", "zstandard", "uvloop")


def install_script(recipe: Recipe) -> str:
    spec = recipe.engine.dynamo_install
    assert spec is not None
    if spec.endswith(".whl"):
        wheel = PurePosixPath(spec)
        version = wheel.name.split("-")[1]
        specs = ["--find-links", str(wheel.parent), str(wheel), f"ai-dynamo-runtime=={version}"]
        what = f"from {wheel.name}"
    else:
        specs, what = [f"ai-dynamo=={spec}", f"ai-dynamo-runtime=={spec}"], spec
    return fill(template("install.sh"), what=what, python=shell_word(recipe.engine.python), dynamo_specs=shell_join(specs),
                runtime_deps=shell_join(list(DYNAMO_RUNTIME_DEPS)), backend=recipe.engine.backend.value)


def infra_body(recipe: Recipe) -> str:
    fe = recipe.frontend
    bin_dir = fe.infra_bin_dir
    etcd_bin, nats_bin = (f"{bin_dir}/etcd", f"{bin_dir}/nats-server") if bin_dir else ("etcd", "nats-server")
    where = f"in frontend.infra_bin_dir ({bin_dir})" if bin_dir else "on the host's PATH"
    check = (f'for b in {shlex.quote(etcd_bin)} {shlex.quote(nats_bin)}; do command -v "$b" >/dev/null || '
             f'{{ echo "[inferx] infra: $b not found {where}: run setup_scripts/provision_infra_bins.sh DIR on a node '
             f'of this architecture and set frontend.infra_bin_dir: DIR" >&2; exit 1; }}; done')
    client = port_or_ref(fe.etcd_port, PortVar.etcd)
    peer = port_or_ref(None if fe.etcd_port is None else fe.etcd_port + 1, PortVar.etcd_peer)
    etcd = [
        etcd_bin, "--name", "inferx", "--data-dir", "$state/etcd",
        "--listen-client-urls", f"http://0.0.0.0:{client}",
        "--advertise-client-urls", f"http://$INFRA_ADDR:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"inferx=http://127.0.0.1:{peer}",
    ]
    nats = [nats_bin, "-js", "-a", "0.0.0.0", "-p", str(port_or_ref(fe.nats_port, PortVar.nats)), "--store_dir", "$state/nats"]

    def line(argv: list[str]) -> str:
        # $state and $INFRA_ADDR are the script's own variables; keep them expandable.
        return " ".join(f'"{a}"' if "$" in a else shlex.quote(a) for a in argv)

    return "\n".join(
        [
            check,
            "trap 'kill $(jobs -p) 2>/dev/null; wait' TERM INT EXIT",
            f"{line(etcd)} > \"$state/etcd.log\" 2>&1 &",
            f"{line(nats)} > \"$state/nats.log\" 2>&1 &",
            "# Either server exiting ends the step, so the watchdog sees it at once.",
            "wait -n",
            'echo "[inferx] a discovery server exited; see $state/*.log" >&2',
            "exit 1",
        ]
    )


def render(recipe: Recipe, job_dir: str, plan: Optional[Plan] = None) -> RenderedJob:
    """Every script of the job and the srun steps that run them."""
    plan = plan or plan_recipe(recipe)
    job_dir = str(PurePosixPath(job_dir))
    paths = JobPaths(job_dir)
    script = JobPaths.script_rel
    files: dict[str, str] = {}
    steps: list[Step] = []
    fe_node = plan.frontend_node

    # The engine's own server answers the clients itself: no frontend, no discovery.
    dynamo_front = recipe.frontend.server is FrontendServer.dynamo
    if dynamo_front and recipe.frontend.discovery is Discovery.etcd_nats:
        files[script("infra.sh")] = fill(
            template("infra.sh"),
            discovery=recipe.frontend.discovery.value,
            nodes_env=shell_word(str(paths.nodes_env)),
            frontend_node=str(fe_node),
            state_dir=shell_word(str(paths.infra)),
            # The host's python3, like the infra servers themselves: this step runs outside the container.
            ports=port_line("python3", job_dir, "infra", [
                request("frontend.etcd_port", recipe.frontend.etcd_port, (PortVar.etcd, PortVar.etcd_peer)),
                request("frontend.nats_port", recipe.frontend.nats_port, (PortVar.nats,))]),
            body=infra_body(recipe),
        )
        steps.append(Step(name="infra", kind=StepKind.infra, node=fe_node, script=script("infra.sh"), startup_timeout_s=60))

    if node_cache.spec(recipe):
        files[node_cache.SCRIPT] = fill(template("node_cache.sh"), results=f"{job_dir}/{node_cache.RESULTS_DIR}",
                                        command=shell_join(node_cache.step_argv(recipe, job_dir)))
        for node in node_cache.cache_nodes(plan):
            steps.append(Step(name=f"node-cache.node{node}", kind=StepKind.node_cache, node=node, script=node_cache.SCRIPT,
                              startup_timeout_s=node_cache.STEP_TIMEOUT_S))

    if recipe.engine.dynamo_install:
        files[script("install.sh")] = install_script(recipe)
        for node in range(plan.total_nodes):
            steps.append(Step(name=f"install.node{node}", kind=StepKind.install, node=node, script=script("install.sh"),
                              startup_timeout_s=INSTALL_TIMEOUT_S))

    if dynamo_front:
        files[script("frontend.sh")] = fill(
            template("frontend.sh"),
            http_port=f"port {recipe.frontend.http_port}" if recipe.frontend.http_port else "a free port chosen at start",
            nodes_env=shell_word(str(paths.nodes_env)),
            frontend_node=str(fe_node),
            ports=port_line(recipe.engine.python, job_dir, "frontend",
                            [request("frontend.http_port", recipe.frontend.http_port, (PortVar.http,))],
                            takes=infra_takes(recipe, job_dir)),
            env_exports=exports(base_env(recipe, job_dir)),
            pid_dir=shell_word(str(paths.logs)),
            command=shell_join(frontend_argv(recipe)),
        )
        steps.append(Step(name="frontend", kind=StepKind.frontend, node=fe_node, script=script("frontend.sh"), startup_timeout_s=120))

    steps += fabric_steps(recipe, plan, job_dir, files)
    files[IDENTITY_PROBE] = identity_probe_source()
    files[PORTS_SCRIPT] = resources.files("inferx_slurm").joinpath("runtime", "ports.py").read_text()
    engine = node_cache.engine_recipe(recipe)  # with the node cache on, engines read their node's copy
    for w in plan.workers:
        cmds = node_commands(engine, plan, w)
        files[script(f"{w.name}.sh")] = worker_script(engine, plan, w, cmds, job_dir)
        for c in cmds:
            steps.append(
                Step(
                    name=f"{w.name}.n{c.node_rank}",
                    kind=StepKind.worker,
                    role=w.role,
                    index=w.index,
                    node=c.node,
                    node_rank=c.node_rank,
                    gpus=len(w.slices[c.node_rank].gpus),
                    script=script(f"{w.name}.sh"),
                    leader=c.leader,
                    startup_timeout_s=startup_timeout(recipe, w.role),
                )
            )
    interval = recipe.benchmark.gpu_metrics_interval_s
    if interval:
        files[GPUMON_SCRIPT] = resources.files("inferx_slurm").joinpath("runtime", "gpumon.py").read_text()
        files[script("gpumon.sh")] = fill(
            template("gpumon.sh"), script=shell_word(str(paths.file(GPUMON_SCRIPT))), out_dir=shell_word(str(paths.logs)),
            interval=shell_word(str(interval)),
        )
        for node in range(plan.total_nodes):
            steps.append(Step(name=f"gpumon.node{node}", kind=StepKind.monitor, node=node, gpus=plan.gpus_per_node, script=script("gpumon.sh")))
    return RenderedJob(job_dir=job_dir, files=files, steps=steps, env={"INFERX_JOB_DIR": job_dir})
