"""`inferx-slurm ci`: one CI matrix point from recipe + environment to result files, report
and exit code. The shell around the pure parts (ci_env, ci_report, baseline)."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from inferx_slurm.ci import inferencex as ix
from inferx_slurm.ci import evals as ci_evals
from inferx_slurm.ci import report as cr
from inferx_slurm.ci.env import CIEnv, check_against_recipe, check_image_runtime, from_environ
from inferx_slurm.ci.report import Category, CIReport
from inferx_slurm.errors import InferxError, RecipeError
from inferx_slurm.fsutil import atomic_write_json, read_json
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job.status import Status, Summary
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.topology import Topology
from inferx_slurm.reporting import Reporter, given
from inferx_slurm.results import labels as lb
from inferx_slurm.results import provenance
from inferx_slurm.results.archive import write_archive
from inferx_slurm.results.baseline import DEFAULT_THRESHOLDS, gate, load_rows
from inferx_slurm.recipe.evals import require_eval_section

# The name InferenceX's workflow uploads (multinode_server_logs_${RESULT_FILENAME}).
ARCHIVE_NAME = ix.LOGS_ARCHIVE
REPORT_NAME = JobPaths.CI_REPORT


@dataclass
class CIOptions:
    recipe: str
    sets: dict[str, Any] = field(default_factory=dict)
    baseline: Optional[str] = None
    thresholds: Optional[dict[str, tuple[bool, float]]] = None
    results_dir: Optional[str] = None
    out_dir: Optional[str] = None
    archive_max_bytes: int = 50 << 20
    poll_s: float = 2.0
    site: Optional[str] = None  # site settings file; None: $INFERX_SITE or the user's default
    report: Optional[str] = None  # also write the report as JSON here (how `ci --remote` gets it back)


def _prepare(opts: CIOptions, env: CIEnv) -> Recipe:
    from inferx_slurm.sweeps.expand import expand

    recipe = Recipe.load(opts.recipe, site=opts.site)
    sets = {**env.sets, **opts.sets}  # --set wins over the environment
    check_image_runtime(sets, recipe.container.runtime.value)
    require_eval_section(recipe.eval, sets)
    recipe = recipe.with_overrides(sets) if sets else recipe
    check_against_recipe(env, recipe)
    if len(expand(recipe)) > 1:
        raise RecipeError("sweep", recipe.name, "ci runs one deployment per CI job (the CI matrix is the sweep): "
                          "remove the recipe's sweep: section or narrow it to one topology and scenario")
    return recipe


def run_ci(opts: CIOptions, environ: Mapping[str, str], reporter: Optional[Reporter] = None) -> tuple[int, CIReport]:
    """Run one point; returns (exit code, report). Never raises for a run that failed. Progress
    (submitted, each phase) goes to `reporter`."""
    from inferx_slurm.job.handle import RunError
    from inferx_slurm.job.submit import default_results_dir, submit

    out = given(reporter)
    rep = CIReport.start(Path(opts.recipe).stem)
    env = CIEnv()
    handle = None
    try:
        env = from_environ(environ)
        rep.env_used = env.used
        recipe = _prepare(opts, env)
        rep.name = recipe.name
        rep.topology = str(recipe.topology)
        target = Path(opts.results_dir) if opts.results_dir else default_results_dir(recipe)
        handle = submit(recipe, target, reporter=out)
        rep.job_id, rep.results_dir = handle.job_id, str(handle.results_dir)
        out.info(f"submitted {recipe.name}: job {handle.job_id}, results in {handle.results_dir}")
        handle.wait(poll_s=opts.poll_s, on_status=lambda st: out.info(f"job {handle.job_id}: {st.phase.value} ({st.slurm_state})"))
    except RecipeError as e:
        rep.failed(Category.recipe, str(e))
    except RunError as e:
        rep.failed(cr.classify_fault(_status(handle).fault, str(e)), str(e))
    except KeyboardInterrupt:
        if handle:
            handle.cancel()
        rep.failed(Category.cancelled, "interrupted; the job was cancelled")
    except InferxError as e:
        # Before the job existed: sbatch refused, the image or the model could not be made ready.
        rep.failed(Category.infrastructure, str(e))

    out_dir = Path(opts.out_dir or env.out_dir or ".").resolve()
    if handle is not None:
        _gather(rep, handle.results_dir, recipe, env, opts, out_dir)
    if opts.report:
        atomic_write_json(Path(opts.report), rep.as_json())
    return rep.exit_code, rep


def run_ci_remote(opts: CIOptions, environ: Mapping[str, str], remote, reporter: Optional[Reporter] = None) -> tuple[int, CIReport]:
    """`ci` on a login node over SSH: checked here, run there, result files and the report
    copied back here, so the step summary, outputs and baseline gate work as for a local run.
    The remote's output lines go to `reporter` (its stderr as warnings)."""
    out = given(reporter)
    rep = CIReport.start(Path(opts.recipe).stem)
    env = CIEnv()
    try:
        env = from_environ(environ)
        rep.env_used = env.used
        recipe = _prepare(opts, env)  # a bad recipe or variable never leaves this machine
    except RecipeError as e:
        rep.failed(Category.recipe, str(e))
        return rep.exit_code, rep
    out_dir = Path(opts.out_dir or env.out_dir or ".").resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # The matrix variables name and label the result files there as they would here.
    remote.env = {**remote.env, **env.used}
    with remote.session() as client:
        path = remote.upload(recipe.to_yaml(only_set=True), f"{recipe.name}-{stamp}.yaml", client=client)
        rdir = f"{path.rsplit('/', 1)[0]}/ci-{recipe.name}-{stamp}"
        remote.env.update(GITHUB_STEP_SUMMARY=f"{rdir}/summary.md", GITHUB_OUTPUT=f"{rdir}/outputs")
        argv = ["ci", path, "--out-dir", rdir, "--report", f"{rdir}/{REPORT_NAME}", "--poll", str(opts.poll_s),
                "--archive-max-mb", str(opts.archive_max_bytes / (1 << 20))]
        if opts.results_dir:
            argv += ["--results-dir", opts.results_dir]
        code = remote.run(argv, client=client, out=out.info, err=out.warning)
        got = remote.download_dir(rdir, out_dir, client=client)
    # The remote's own summary and outputs are redone here from its report; none stay behind.
    for name in ("summary.md", "outputs"):
        if out_dir / name in got:
            (out_dir / name).unlink()
    report = out_dir / REPORT_NAME
    if report not in got:
        rep.exit_code, rep.category = code or cr.EXIT_INTERNAL, Category.internal
        rep.diagnosis = f"the remote ci run exited {code} and left no report; its output is above"
        return rep.exit_code, rep
    rep = CIReport.model_validate(read_json(report))
    report.unlink()
    rep.files = [f.replace(rdir, str(out_dir)) for f in rep.files or []]
    if rep.archive:
        rep.archive = rep.archive.replace(rdir, str(out_dir))
    if rep.results_dir:
        rep.results_dir = f"{remote.target or remote.host}:{rep.results_dir}"
    if opts.baseline and rep.exit_code == cr.EXIT_OK:
        _gate(rep, rep.rows or [], rep.provenance_doc, opts)
    return rep.exit_code, rep


def _status(handle) -> Status:
    try:
        return Status.read(JobPaths(handle.results_dir).status)
    except (OSError, ValueError, AttributeError):
        return Status()


def _gather(rep: CIReport, results_dir: Path, recipe: Recipe, env: CIEnv, opts: CIOptions, out_dir: Path) -> None:
    paths = JobPaths(results_dir)
    try:
        summary: Optional[Summary] = Summary.read(paths.summary)
    except (OSError, ValueError):
        summary = None
    rows = summary.rows if summary else []
    rep.rows, rep.partial = rows, bool(summary and summary.partial)
    try:
        plan = read_json(paths.plan)
        rep.plan = plan["workers"]
    except (OSError, ValueError, KeyError):
        plan = {}
    prov = provenance.load(results_dir)
    rep.provenance = provenance.fields(prov)
    slurm = (prov or {}).get("slurm", {})
    rep.partition, rep.nodes = slurm.get("partition"), slurm.get("nodes")
    files: list[str] = []

    if rep.exit_code == cr.EXIT_OK:
        empty = [r for r in rows if not int(r.get("completed") or 0)]
        if empty:
            rep.failed(Category.benchmark, "no request completed at " + ", ".join(
                f"ISL {r['isl']} OSL {r['osl']} conc {r['concurrency']}" for r in empty))
        rep.warnings += cr.flagged_points(rows)
        invalid = cr.invalid_points(rows)
        if invalid:
            rep.invalid_points = invalid
            if rep.exit_code == cr.EXIT_OK:
                rep.failed(Category.invalid, "\n".join(invalid))
    rep.kv_capacity = summary.kv_capacity if summary else []
    rep.warnings += cr.capacity_warnings(rep.kv_capacity)

    # An invalid point is no result: no result file carries its numbers.
    published = [r for r in rows if r.get("valid") is not False]
    if rep.exit_code in (cr.EXIT_OK, cr.EXIT_BENCHMARK, cr.EXIT_INVALID) and published:
        files += _write_results(published, recipe, env, plan, out_dir, rep.job_id, paths)
    if summary is not None:
        files += ci_evals.gather(rep, summary.eval, recipe, result_labels(recipe, env), int(plan.get("total_nodes") or 1), out_dir)

    rep.provenance_doc = prov
    if opts.baseline and rep.exit_code == cr.EXIT_OK:
        _gate(rep, rows, prov, opts)

    if rep.diagnosis is None and paths.diagnosis.exists():
        rep.diagnosis = paths.diagnosis.read_text()
    archive = out_dir / ARCHIVE_NAME
    try:
        info = write_archive(results_dir, archive, max_bytes=opts.archive_max_bytes)
        rep.archive = str(archive)
        files.append(f"{archive} ({len(info['files'])} files" + (f", {len(info['truncated'])} cut to their end" if info["truncated"] else "")
                     + (f", {len(info['omitted'])} left out" if info["omitted"] else "") + ")")
    except OSError as e:
        rep.warnings.append(f"archive not written: {e}")
    rep.files = files
    atomic_write_json(paths.ci_report, rep.as_json())


def _gate(rep: CIReport, rows: list[dict[str, Any]], prov: Optional[dict[str, Any]], opts: CIOptions) -> None:
    """Compare with --baseline: a drop beyond a metric's threshold is a regression (exit 5)."""
    try:
        checks, warns = gate(load_rows(opts.baseline), rows, DEFAULT_THRESHOLDS if opts.thresholds is None else opts.thresholds)
    except RecipeError as e:
        checks, warns = [], [str(e)]
    rep.checks, rep.baseline = checks, opts.baseline
    rep.warnings += warns
    bad = [c for c in checks if c["regressed"]]
    if bad:
        rep.failed(Category.regression, "\n".join(
            f"{c['metric']} at ISL {c['isl']} OSL {c['osl']} conc {c['concurrency']}: {c['base']:.2f} -> {c['new']:.2f} "
            f"({c['change_pct']:+.1f}%, allowed {c['worse_allowed_pct']:.0f}% worse)" for c in bad))
    base_prov = provenance.load(opts.baseline)
    if base_prov:
        rep.warnings += [f"differs from the baseline: {d}" for d in provenance.differences(base_prov, prov)]


def result_labels(recipe: Recipe, env: CIEnv) -> ix.ResultLabels:
    """The labels of every result file: the CI environment's where it gives them, else the recipe's."""
    named = env.labels
    return ix.ResultLabels(
        hw=lb.hardware(recipe, named.get("hw")),
        model=named.get("model") or recipe.model.name,
        # No container: the engines ran from the host's environment, which has no image name.
        image=recipe.container.image or "",
        infmax_model_prefix=lb.model_prefix(recipe, named.get("infmax_model_prefix")),
        framework=lb.framework(recipe),
        precision=lb.precision(recipe, named.get("precision")),
        spec_decoding=lb.spec_decoding(recipe),
        # InferenceX's own fingerprint of its config, when its workflow passes one; else ours.
        recipe_fingerprint=named.get("recipe_fingerprint") or lb.fingerprint(recipe),
        parallel={r: lb.parallel_sizes(recipe, r) for r in recipe.topology.roles},
        exp_name=named.get("exp_name"),
    )


def _write_results(rows: list[dict[str, Any]], recipe: Recipe, env: CIEnv, plan: dict[str, Any], out_dir: Path,
                   job_id: Optional[str], paths: JobPaths) -> list[str]:
    """Per point the raw file and its agg file in out_dir, and LOGS/ as srt-slurm leaves it."""
    topo = Topology.parse(str(recipe.topology))
    prefix = env.result_filename or recipe.name
    labels = result_labels(recipe, env)
    written = []
    for row in rows:
        name = ix.point_name(prefix, row, topo)
        raw = ix.raw_result(row, model=labels.model, tokenizer=recipe.benchmark.tokenizer, job_id=job_id)
        atomic_write_json(out_dir / name, raw)
        atomic_write_json(out_dir / f"agg_{name}", ix.agg_result(row, raw, topo=topo, total_nodes=int(plan.get("total_nodes") or 1),
                                                                labels=labels))
        atomic_write_json(out_dir / ix.LOGS_DIR / ix.logs_name(row, topo), raw)
        written += [str(out_dir / name), str(out_dir / f"agg_{name}")]
    for small in (paths.summary, paths.provenance, paths.plan, paths.diagnosis):
        if small.is_file():
            shutil.copyfile(small, out_dir / ix.LOGS_DIR / small.name)
    written.append(f"{out_dir / ix.LOGS_DIR}/ (the result files as srt-slurm lays them out, summary, provenance)")
    return written


def publish(rep: CIReport, environ: Mapping[str, str], stdout=None) -> None:
    """Step summary, outputs and workflow commands under GitHub Actions; the report on stdout elsewhere."""
    stdout = stdout or sys.stdout
    text = cr.markdown(rep)
    in_actions = environ.get("GITHUB_ACTIONS") == "true"
    summary_path = environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        with open(summary_path, "a") as f:
            f.write(text + "\n")
    else:
        stdout.write(text + "\n")
    if environ.get("GITHUB_OUTPUT"):
        with open(environ["GITHUB_OUTPUT"], "a") as f:
            f.write(cr.github_output(cr.outputs(rep)))
    if in_actions:
        for line in cr.workflow_commands(rep):
            stdout.write(line + "\n")
    stdout.flush()

