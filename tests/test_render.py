import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferx_slurm.job.sbatch import sbatch_script
from inferx_slurm.planning.placement import plan_recipe
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.job.render import render, shell_join
from inferx_slurm.job.srun import srun_argv

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parent.parent
GB200_SITE = REPO / "examples" / "sites" / "gb200-lustre.yaml"
JOB_DIR = "/shared/results/golden"

CASES = {
    "gb200-1p1d-tp4-tep8": REPO / "recipes/disagg/gb200/minimax-m3-1p1d-tp4-tep8-8k1k.yaml",
    "gb200-2p1d-dep8-dep16": REPO / "recipes/disagg/gb200/minimax-m3-2p1d-dep8-dep16-1k1k.yaml",
}


def load(path):
    # Pin the site variables the recipes read so the golden files do not depend on the caller.
    keys = ("MODEL_DIR", "STAGE_DIR", "IMAGE_DIR", "SLURM_ACCOUNT", "INFERX_NODE_PYTHON", "INFRA_BIN_DIR")
    saved = {k: os.environ.pop(k, None) for k in keys}
    try:
        return Recipe.load(path, site=str(GB200_SITE))
    finally:
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_scripts(case):
    job = render(load(CASES[case]), JOB_DIR)
    scripts = {rel: text for rel, text in job.files.items() if rel.endswith(".sh")}
    folder = GOLDEN / case
    if os.environ.get("INFERX_UPDATE_GOLDEN"):
        for rel, text in scripts.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)
    expected = {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*.sh")}
    assert expected, f"no golden files in {folder}; run with INFERX_UPDATE_GOLDEN=1"
    assert scripts == expected


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_scripts_parse_with_bash(case):
    job = render(load(CASES[case]), JOB_DIR)
    for rel, text in job.files.items():
        if not rel.endswith(".sh"):
            continue
        r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
        assert r.returncode == 0, f"{rel}: {r.stderr}"


def test_every_value_is_quoted_against_injection(tmp_path):
    evil = "$(touch PWNED); `touch PWNED2` 'q' \"dq\" $HOME ;|&"
    r = Recipe.from_dict({
        "name": "evil", "profile": "local", "model": {"path": evil, "served_name": "m"}, "topology": "1P1D TP2",
        "engine": {"backend": "mocker", "python": "printf", "args": {"note": evil}, "env": {"EVIL": evil}},
    })
    job = render(r, str(tmp_path))
    (tmp_path / "logs").mkdir()
    (tmp_path / "nodes.env").write_text("INFERX_ADDR_0=127.0.0.1\nINFERX_HOST_0=h\nINFERX_ADDR_1=127.0.0.1\n")
    script = tmp_path / "w.sh"
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "ports.py").write_text(job.files["scripts/ports.py"])
    (tmp_path / "ports").mkdir()  # what the infra step records before any worker starts
    (tmp_path / "ports" / "infra.env").write_text("export INFERX_ETCD_PORT=2379\nexport INFERX_NATS_PORT=4222\n")
    # Run the real decode script with printf as the "interpreter": it prints the argv it got.
    # Its port line needs a real Python to take the worker's ports.
    text = job.files["scripts/decode-0.sh"].replace("exec printf", "exec printf '%s\\n'")
    script.write_text(text.replace(f"printf {tmp_path}/scripts/ports.py", f"{sys.executable} {tmp_path}/scripts/ports.py"))
    out = subprocess.run(["bash", str(script), "0"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    lines = out.stdout.splitlines()
    assert evil in lines
    env_line = subprocess.run(
        ["bash", "-c", f"source <(grep '^export EVIL' {script}); printf %s \"$EVIL\""], capture_output=True, text=True
    ).stdout
    assert env_line == evil


def test_address_placeholders_expand_but_nothing_else():
    argv = ["x", "--addr", "${LEADER_ADDR}", "--init", "${LEADER_ADDR}:123", "--lit", "$HOME"]
    out = subprocess.run(
        ["bash", "-c", f"LEADER_ADDR=10.0.0.1; printf '%s\\n' {shell_join(argv)}"], capture_output=True, text=True
    ).stdout.splitlines()
    assert out == ["x", "--addr", "10.0.0.1", "--init", "10.0.0.1:123", "--lit", "$HOME"]


def test_steps_and_srun_commands():
    r = load(CASES["gb200-2p1d-dep8-dep16"])
    job = render(r, JOB_DIR)
    kinds = [s.kind for s in job.steps]
    assert kinds[:10] == ["infra"] + ["install"] * 8 + ["frontend"] and kinds.count("worker") == 2 * 2 + 4
    leaders = [s.name for s in job.steps if s.kind == "worker" and s.leader]
    assert leaders == ["prefill-0.n0", "prefill-1.n0", "decode-0.n0"]
    step = next(s for s in job.steps if s.name == "decode-0.n2")
    argv = srun_argv(r, step, "gb-node-7", JOB_DIR, "/images/x.sqsh")
    assert "--nodelist=gb-node-7" in argv and "--gpus-per-node=4" in argv and "--overlap" in argv
    fe = srun_argv(r, next(s for s in job.steps if s.kind == "frontend"), "gb-node-0", JOB_DIR)
    assert "--gpus-per-node=0" in fe
    assert "--container-image=/images/x.sqsh" in argv
    assert argv[-3:] == ["bash", f"{JOB_DIR}/scripts/decode-0.sh", "2"]


def test_sbatch_script_has_the_allocation():
    r = load(CASES["gb200-2p1d-dep8-dep16"])
    text = sbatch_script(r, plan_recipe(r), JOB_DIR)
    for line in ("#SBATCH --nodes=8", "#SBATCH --gpus-per-node=4", "#SBATCH --segment=8", "#SBATCH --no-kill",
                 "#SBATCH --exclusive", "#SBATCH --time=240", "#SBATCH --partition=batch"):
        assert line in text
    assert f"-u -m inferx_slurm.runtime.boot {JOB_DIR} -u -m submitit.core._submit {JOB_DIR}/submitit" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_sbatch_script_is_the_file_submitit_submits(tmp_path, monkeypatch):
    """What a dry run prints is byte for byte the batch script submitit writes when it submits the
    same parameters, for one job and for a job array. `sbatch` here only answers with a job id:
    nothing reaches a cluster."""
    from inferx_slurm.job.interpreter import node_python
    from inferx_slurm.job.sbatch import batch_script, executor_params, runner_command, submit_to_slurm
    from inferx_slurm.runtime.entry import run_job

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'Submitted batch job 4242'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # SlurmExecutor only checks that it exists
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    r = load(CASES["gb200-2p1d-dep8-dep16"]).with_overrides({"slurm.sbatch_args": {"reservation": "bench a", "mail-type": "END"}})
    plan = plan_recipe(r)
    params = executor_params(r, plan)

    job_dir = tmp_path / "a results dir"
    one = job_dir / "submitit"
    (job,) = submit_to_slurm(one, node_python(r), params, [(run_job, str(job_dir))], {}, boot=job_dir)
    assert job.job_id == "4242"
    submitted = (one / "4242_submission.sh").read_text()
    assert submitted == sbatch_script(r, plan, job_dir)
    assert "#SBATCH --reservation='bench a'" in submitted and "#SBATCH --nodes=8" in submitted

    array = tmp_path / "array"
    jobs = submit_to_slurm(array, node_python(r), params, [(run_job, f"/results/run{i}") for i in range(3)], {})
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2"]
    submitted = (array / "4242_submission.sh").read_text()
    assert submitted == batch_script(runner_command(node_python(r), array), array, params, array_size=3)
    assert "#SBATCH --array=0-2%3" in submitted
