"""`launch --dry-run`: a built deployment as text, everything `launch` would submit and run,
with nothing written or submitted."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from inferx_slurm.benchmark.aiperf import aiperf_argv
from inferx_slurm.engines.common import http_port
from inferx_slurm.errors import RecipeError
from inferx_slurm.job.deployment import Deployment, build_deployment, image_dir
from inferx_slurm.job.interpreter import check_interpreter, elf_arch, node_python
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job import node_cache
from inferx_slurm.job.render import COPIED_AS_IS, shell_join
from inferx_slurm.job.srun import srun_argv
from inferx_slurm.job.sbatch import sbatch_text
from inferx_slurm.planning.placement import format_plan
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sections import ContainerRuntime, FrontendServer
from inferx_slurm.recipe.site import settings_lines
from inferx_slurm.reporting import Reporter, given


def dry_run_text(deployment: Deployment | Recipe, results_dir: Optional[Path] = None, engine: Optional[Recipe] = None, *,
                 reporter: Optional[Reporter] = None) -> str:
    """Everything `launch` would submit and run for a deployment (or a recipe, built here into
    `results_dir`, its engines started from `engine`)."""
    if isinstance(deployment, Recipe):
        if results_dir is None:
            raise TypeError("dry_run_text(recipe, results_dir): a recipe needs the results dir it would run in")
        deployment = build_deployment(deployment, results_dir, engine=engine)
    dep = deployment
    if dep.kv_layout is not None:
        raise dep.kv_layout  # a layout mismatch is refused, not printed
    recipe, plan, job_dir = dep.recipe, dep.plan, dep.job_dir
    # As the user wrote them: before staging rewrites the model's path.
    settings = settings_lines(dep.source)
    out = [f"# inferx-slurm launch --dry-run: {recipe.name} ({plan.topology})", "", format_plan(plan), ""]
    out += ["# settings (recipe > site > default):", *(f"#   {line}" for line in settings), ""]
    weights = node_cache.where_lines(dep.source, recipe, plan)
    out += [*(f"# {line}" for line in weights), ""] if weights else []
    out += [interpreter_line(recipe, given(reporter)), ""]
    out += ["# ---- sbatch script (submitted through submitit) ----",
            sbatch_text(node_python(recipe), dep.sbatch, str(dep.paths.submitit), job_dir)]
    out += [
        "# The batch script runs the driver on the first node; it resolves plan node i to the",
        "# allocation's i-th host (scontrol show hostnames) and starts these steps:",
    ]
    image = image_path(recipe, dep.paths.root)
    for st in dep.job.steps:
        out.append(shell_join(srun_argv(recipe, st, f"<node{st.node}>", job_dir, image, job_id="<jobid>")))
    out += ["", "# ---- benchmark client, once the deployment is ready ----"]
    node = plan.workers[0].leader if recipe.frontend.server is FrontendServer.engine else plan.frontend_node
    url = f"http://<node{node}>:{http_port(recipe)}"
    tok = recipe.benchmark.tokenizer or recipe.model.path
    for scen in recipe.benchmark.scenarios:
        for conc in recipe.benchmark.concurrency:
            artifacts = f"{job_dir}/{JobPaths.point_rel(scen.name, conc)}"
            out.append(shell_join(aiperf_argv(recipe, scen, conc, url=url, artifact_dir=artifacts, tokenizer=tok)))
    for rel, text in dep.job.files.items():
        if rel in COPIED_AS_IS:
            out += ["", f"# ---- {job_dir}/{rel}: {COPIED_AS_IS[rel]}, copied as is ----"]
            continue
        out += ["", f"# ---- {job_dir}/{rel} ----", text.rstrip()]
    return "\n".join(out) + "\n"


def interpreter_line(recipe: Recipe, reporter: Reporter) -> str:
    """The driver interpreter check as a dry run shows it: a refusal is reported, not raised,
    so a recipe for another cluster can still be inspected from here."""
    py = node_python(recipe)
    try:
        check_interpreter(recipe)
    except RecipeError as e:
        reporter.warning(f"warning: launch would refuse this recipe: {e}")
        return f"# driver interpreter: {py}: REFUSED at launch: {e.valid}"
    return f"# driver interpreter: {py} ({elf_arch(py) or 'architecture unknown'})"


def image_path(recipe: Recipe, results_dir: Path) -> Optional[str]:
    """The .sqsh the steps will run: where `launch` imports the recipe's image before submitting."""
    from inferx_slurm.recipe.image_uri import image_file_name, is_local_image

    uri = recipe.container.image
    if recipe.container.runtime is not ContainerRuntime.pyxis or not uri:
        return None
    return uri if is_local_image(uri) else str(image_dir(recipe, results_dir) / image_file_name(uri))
