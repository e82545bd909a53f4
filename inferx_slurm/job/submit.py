"""Submitting deployments and following them: the thin shell around the pure core.

`prepare` writes the job dir (recipe, plan, rendered scripts); `submit` hands it to Slurm
through submitit; a `JobHandle` waits, streams logs, cancels and returns results.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from inferx_slurm.results import provenance
from inferx_slurm.benchmark.aiperf import aiperf_argv, point_dir
from inferx_slurm.errors import InferxError, RecipeError, SubmitError
from inferx_slurm.job.sbatch import executor_params, sbatch_script
from inferx_slurm.job.slurm import ENDED_STATES, SlurmState, SlurmWatcher, default_watcher
from inferx_slurm.fsutil import atomic_write, atomic_write_json, read_json
from inferx_slurm.sharedfs.locks import say, wait_notice
from inferx_slurm.job.interpreter import node_python
from inferx_slurm.planning.placement import Plan, format_plan, plan_recipe
from inferx_slurm.recipe.sections import ContainerRuntime
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.engines.common import http_port
from inferx_slurm.job import node_cache
from inferx_slurm.job.render import COPIED_AS_IS, RenderedJob, render, shell_join, srun_argv
from inferx_slurm.recipe.site import settings_lines



def default_results_dir(recipe: Recipe, root: str | Path = "results") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root).resolve() / f"{recipe.name}-{stamp}"


def fresh_results_dir(path: Path) -> Path:
    # Results are never overwritten: a taken name gets a numbered sibling.
    candidate, n = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def prepare(recipe: Recipe, results_dir: Path, engine: Optional[Recipe] = None) -> tuple[Path, Plan, RenderedJob]:
    """`engine`: the recipe the engines start from when it serves more points than this one's
    (a sweep's shared engine start); the benchmark is always this recipe's."""
    results_dir = fresh_results_dir(results_dir.resolve())
    plan = plan_recipe(recipe)
    job = render(engine or recipe, str(results_dir), plan)
    for rel, text in job.files.items():
        atomic_write(results_dir / rel, text, mode=0o755 if rel.endswith(".sh") else None)
    atomic_write(results_dir / "recipe.yaml", recipe.to_yaml())
    atomic_write_json(results_dir / "recipe.json", recipe.to_dict())
    atomic_write_json(results_dir / "plan.json", plan.model_dump(mode="json"))
    atomic_write_json(results_dir / "rendered.json", job.model_dump(mode="json"))
    provenance.start(recipe, results_dir)
    (results_dir / "logs").mkdir(exist_ok=True)
    return results_dir, plan, job


def interpreter_line(recipe: Recipe) -> str:
    """The driver interpreter check as a dry run shows it: a refusal is printed, not raised,
    so a recipe for another cluster can still be inspected from here."""
    from inferx_slurm.job.interpreter import check_interpreter, elf_arch, node_python

    py = node_python(recipe)
    try:
        check_interpreter(recipe)
    except RecipeError as e:
        say(f"warning: launch would refuse this recipe: {e}")
        return f"# driver interpreter: {py}: REFUSED at launch: {e.valid}"
    return f"# driver interpreter: {py} ({elf_arch(py) or 'architecture unknown'})"


def dry_run_text(recipe: Recipe, results_dir: Path, engine: Optional[Recipe] = None) -> str:
    """Everything `launch` would submit and run, with nothing written or submitted."""
    settings = settings_lines(recipe)  # as the user wrote them, before staging rewrites the model's path
    source, recipe, engine = recipe, dry_run_staged(recipe), (dry_run_staged(engine) if engine is not None else None)
    plan = plan_recipe(recipe)
    from inferx_slurm.planning.kv_layout import require_kv_layout

    require_kv_layout(recipe, plan)  # a layout mismatch is refused, not printed
    job_dir = str(results_dir)
    job = render(engine or recipe, job_dir, plan)
    out = [f"# inferx-slurm launch --dry-run: {recipe.name} ({plan.topology})", "", format_plan(plan), ""]
    out += ["# settings (recipe > site > default):", *(f"#   {line}" for line in settings), ""]
    weights = node_cache.where_lines(source, recipe, plan)
    out += [*(f"# {line}" for line in weights), ""] if weights else []
    out += [interpreter_line(recipe), ""]
    out += ["# ---- sbatch script (submitted through submitit) ----", sbatch_script(recipe, plan, f"{job_dir}/submitit")]
    out += [
        "# The batch script runs the driver on the first node; it resolves plan node i to the",
        "# allocation's i-th host (scontrol show hostnames) and starts these steps:",
    ]
    image = dry_run_image(recipe, results_dir)
    for st in job.steps:
        out.append(shell_join(srun_argv(recipe, st, f"<node{st.node}>", job_dir, image, job_id="<jobid>")))
    out += ["", "# ---- benchmark client, once the deployment is ready ----"]
    node = plan.workers[0].leader if recipe.frontend.server == "engine" else plan.frontend_node
    url = f"http://<node{node}>:{http_port(recipe)}"
    tok = recipe.benchmark.tokenizer or recipe.model.path
    for scen in recipe.benchmark.scenarios:
        for conc in recipe.benchmark.concurrency:
            out.append(shell_join(aiperf_argv(recipe, scen, conc, url=url, artifact_dir=f"{job_dir}/{point_dir(scen, conc)}", tokenizer=tok)))
    for rel, text in job.files.items():
        if rel in COPIED_AS_IS:
            out += ["", f"# ---- {job_dir}/{rel}: {COPIED_AS_IS[rel]}, copied as is ----"]
            continue
        out += ["", f"# ---- {job_dir}/{rel} ----", text.rstrip()]
    return "\n".join(out) + "\n"


class JobHandle:
    """A submitted deployment. Wait for it, follow its logs, cancel it, read its results."""

    def __init__(self, job_id: str, results_dir: Path, *, env: Optional[dict[str, str]] = None, shared: bool = False,
                 watcher: Optional[SlurmWatcher] = None):
        self.job_id = str(job_id)
        # A packed deployment shares its job with others: its end is its own status, not the job's.
        self.shared = shared
        self.results_dir = Path(results_dir)
        self.env = env
        # Registered now, so the first handle to ask polls for every handle made before it.
        self.watcher = watcher or default_watcher(env)
        self.watcher.register(self.job_id)

    def __repr__(self) -> str:
        return f"JobHandle(job_id={self.job_id!r}, results_dir={str(self.results_dir)!r})"

    def _run(self, argv: list[str]) -> str:
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(self.env or {})}, timeout=30).stdout

    def slurm_state(self) -> SlurmState:
        return self.watcher.state(self.job_id)

    def status(self) -> dict[str, Any]:
        path = self.results_dir / "status.json"
        doc = read_json(path) if path.exists() else {"phase": "pending"}
        doc["slurm_state"] = self.slurm_state().value
        return doc

    def done(self) -> bool:
        return self.slurm_state() in ENDED_STATES

    def wait(self, timeout: Optional[float] = None, poll_s: float = 1.0, on_status: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
        """Block until the job ends; return the summary. Raises InferxError if the run failed."""
        deadline = None if timeout is None else time.time() + timeout
        last_phase = None
        while True:
            st = self.status()
            if on_status and st.get("phase") != last_phase:
                on_status(st)
                last_phase = st.get("phase")
            if st["slurm_state"] in ENDED_STATES or st.get("phase") in ("done", "failed"):
                if st.get("phase") in ("done", "failed") and st["slurm_state"] not in ENDED_STATES and not self.shared:
                    # The driver has finished its work; give Slurm a moment to record the end.
                    self.wait_slurm_end(10)
                    st = self.status()
                break
            if deadline and time.time() > deadline:
                raise TimeoutError(f"job {self.job_id} still {st['slurm_state']} after {timeout} s")
            time.sleep(poll_s)
        if st.get("phase") == "done":
            return self.results()
        diag = st.get("diagnosis") or f"job {self.job_id} ended {st['slurm_state']} before the driver finished (phase {st.get('phase')}); see {self.results_dir}/submitit"
        raise RunError(diag, self)

    def wait_slurm_end(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end and self.slurm_state() not in ENDED_STATES:
            time.sleep(0.5)

    def cancel(self) -> None:
        self._run(["scancel", self.job_id])

    def results(self) -> dict[str, Any]:
        return read_json(self.results_dir / "summary.json")

    def log_files(self, role: Optional[str] = None, index: Optional[int] = None) -> list[Path]:
        logs = sorted((self.results_dir / "logs").glob("*.log"))
        if role:
            prefix = f"{role}-{index}." if index is not None else f"{role}"
            logs = [p for p in logs if p.name.startswith(prefix)]
        return logs

    def follow(self, role: Optional[str] = None, index: Optional[int] = None, poll_s: float = 0.5) -> Iterator[str]:
        """Yield log lines as they are written, until the job ends."""
        offsets: dict[Path, int] = {}
        while True:
            finished = self.done()
            for path in self.log_files(role, index):
                with open(path, errors="replace") as f:
                    f.seek(offsets.get(path, 0))
                    for line in f:
                        yield f"{path.stem}: {line.rstrip()}"
                    offsets[path] = f.tell()
            if finished:
                return
            time.sleep(poll_s)


class RunError(InferxError):
    exit_code = 1

    def __init__(self, diagnosis: str, handle: JobHandle):
        super().__init__(diagnosis)
        self.handle = handle


def submit(recipe: Recipe, results_dir: Optional[Path] = None, *, env: Optional[dict[str, str]] = None,
           force: bool = False) -> JobHandle:
    """Prepare the job dir and submit the deployment. Returns at once with a handle.

    `force` submits benchmark points beyond a role's KV capacity (they queue or preempt).
    """
    return submit_many([(recipe, results_dir or default_results_dir(recipe))], env=env, force=force)[0]


def require_sbatch(env: dict[str, str]) -> None:
    if not shutil.which("sbatch", path={**os.environ, **env}.get("PATH")):
        raise SubmitError("sbatch not found: run on a Slurm login node, submit with --remote USER@LOGIN, "
                          "or start the local cluster (inferx-slurm local-cluster up)")


def submit_many(
    deployments: list[tuple[Recipe, Path]], *, env: Optional[dict[str, str]] = None, array_name: Optional[str] = None,
    arrays: bool = True, engines: Optional[list[Recipe]] = None, force: bool = False,
) -> list[JobHandle]:
    """Submit several deployments; those that need the same allocation go as one Slurm job array
    (with `arrays=False`, each as its own job).

    Every deployment is checked before the first is staged or submitted, so a sweep with one
    bad point submits nothing.
    """
    import submitit

    from inferx_slurm.runtime.driver import run_job

    from inferx_slurm.job.interpreter import check_interpreter
    from inferx_slurm.sharedfs.eval_data import check_eval_data, stage_eval_for

    env = env or {}
    for recipe, _ in deployments:
        check_feasible(recipe, force=force)
        check_interpreter(recipe)
        check_eval_data(recipe)
    require_sbatch(env)
    prepared = []
    for i, (recipe, results_dir) in enumerate(deployments):
        recipe = stage_eval_for(stage_model_for(recipe))
        engine = stage_model_for(engines[i]) if engines else None
        results_dir, plan, _ = prepare(recipe, results_dir, engine)
        import_image_for(recipe, results_dir)
        prepared.append((recipe, results_dir, executor_params(recipe, plan)))
    groups: dict[str, list[tuple[Recipe, Path, dict[str, Any]]]] = {}
    for i, item in enumerate(prepared):
        shape = {k: v for k, v in item[2].items() if k != "job_name"}
        groups.setdefault(repr(sorted(shape.items())) if arrays else str(i), []).append(item)

    handles = []
    for items in groups.values():
        recipe, results_dir, params = items[0]
        if len(items) == 1:
            folder = results_dir / "submitit"
        else:
            params = {**params, "job_name": array_name or recipe.name}
            folder = results_dir.parent / f"submitit-{params['job_name']}-{results_dir.name}"
        executor = submitit.SlurmExecutor(folder=folder, python=node_python(recipe))
        executor.update_parameters(**params)
        with submit_environ(env):
            try:
                if len(items) == 1:
                    jobs = [executor.submit(run_job, str(results_dir))]
                else:
                    with executor.batch():
                        jobs = [executor.submit(run_job, str(rd)) for _, rd, _ in items]
            except subprocess.CalledProcessError as e:
                raise SubmitError(f"sbatch refused the job: {(e.stderr or b'').decode(errors='replace').strip() or e}") from None
            except Exception as e:  # submitit wraps sbatch failures in several types
                raise SubmitError(f"sbatch refused the job: {e}") from None
        for job, (_, rd, _) in zip(jobs, items):
            atomic_write_json(rd / "job.json", {"job_id": job.job_id, "submitted": time.time(), "argv": sys.argv,
                                                "submitit_folder": str(folder)})
            handles.append(JobHandle(job.job_id, rd, env=env))
    return handles


@contextlib.contextmanager
def submit_environ(env: dict[str, str]) -> Iterator[None]:
    # sbatch reads SLURM_CONF and friends from the environment of the submitting process.
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_feasible(recipe: Recipe, *, force: bool = False) -> Any:
    """Refuse, before staging or submitting anything, a role with no KV room, and unless forced
    a benchmark point beyond a role's KV capacity."""
    from inferx_slurm.planning.feasibility import require_fit
    from inferx_slurm.planning.kv_layout import require_kv_layout

    require_kv_layout(recipe, plan_recipe(recipe))
    return require_fit(recipe, force=force)


# Images and models are made ready once, under a lock, before the allocation starts burning
# nodes: many nodes pulling one image or checkpoint at once is what corrupts shared filesystems.


def _serve_staged(recipe: Recipe, staged: Callable[[str], str]) -> Recipe:
    """The recipe pointed at its staged model (and draft), served with the Hub switched off;
    ``staged`` maps a source to where its staged copy is."""
    from inferx_slurm.sharedfs.staging import serving_env

    sets: dict[str, Any] = {"model.path": staged(recipe.model.path)}
    sets["env"] = {**serving_env(sets["model.path"]), **recipe.env}
    spec = recipe.speculative
    if spec and spec.draft_model:
        # The draft is read at engine start like the model: the same race, the same cure.
        sets["speculative.draft_model"] = staged(spec.draft_model)
    return recipe.with_overrides(sets)


def dry_run_staged(recipe: Recipe) -> Recipe:
    """The recipe as `launch` serves it after staging (model.stage_dir), computed without copying."""
    if not recipe.model.stage_dir:
        return recipe
    from inferx_slurm.sharedfs.staging import StageSourceError, staged_name

    def where(src: str) -> str:
        try:
            name = staged_name(src)
        except StageSourceError:  # not reachable from here (a cluster path seen from a laptop): its last part
            name = Path(src).name
        return str(Path(recipe.model.stage_dir or "") / name)

    return _serve_staged(recipe, where)


def stage_model_for(recipe: Recipe) -> Recipe:
    """With model.stage_dir set, copy the checkpoint there once and serve the staged copy offline."""
    if not recipe.model.stage_dir:
        return recipe
    from inferx_slurm.sharedfs.staging import stage_model

    dest = Path(recipe.model.stage_dir)
    return _serve_staged(recipe, lambda src: str(stage_model(src, dest, log=say, on_wait=wait_notice("another stager")).path))


def _image_dir(recipe: Recipe, results_dir: Path) -> Path:
    return Path(recipe.container.image_dir or results_dir.parent / "images")


def dry_run_image(recipe: Recipe, results_dir: Path) -> Optional[str]:
    """The .sqsh the steps will run: where `launch` imports the recipe's image before submitting."""
    from inferx_slurm.recipe.image_uri import image_file_name, is_local_image

    uri = recipe.container.image
    if recipe.container.runtime is not ContainerRuntime.pyxis or not uri:
        return None
    return uri if is_local_image(uri) else str(_image_dir(recipe, results_dir) / image_file_name(uri))


def import_image_for(recipe: Recipe, results_dir: Path) -> None:
    if recipe.container.runtime is not ContainerRuntime.pyxis or not recipe.container.image:
        return
    from inferx_slurm.sharedfs.images import import_image

    dest = _image_dir(recipe, results_dir)
    res = import_image(recipe.container.image, dest, log=say, on_wait=wait_notice("another import"))
    atomic_write_json(results_dir / "image.json", {"uri": recipe.container.image, "path": str(res.path)})
    provenance.record_image(recipe, results_dir, Path(res.path))


def attach(results_dir: str | Path, env: Optional[dict[str, str]] = None) -> JobHandle:
    results_dir = Path(results_dir)
    job = results_dir / "job.json"
    if not job.exists():
        raise InferxError(f"{results_dir} holds no submitted job (no job.json); pass a results dir that `launch` made")
    doc = read_json(job)
    return JobHandle(doc["job_id"], results_dir, env=env, shared="pack" in doc)
