"""Site settings: one recipe, two clusters. Precedence recipe > site > default, with every
site-settable field's origin shown by `plan` and `launch --dry-run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.site import load_site, read_site, site_path

from conftest import GB200_SITE, REPO

GB200 = REPO / "recipes/disagg/gb200/minimax-m3-2p1d-dep8-dep16-1k1k.yaml"


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "inferx_slurm", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture()
def two_sites(tmp_path):
    a = tmp_path / "cluster-a.yaml"
    a.write_text(f"""\
slurm:
  partition: gb200-a
  account: team-a
  python: {sys.executable}
  sbatch_args: {{reservation: bench-a}}
container:
  image_dir: /fs-a/images
  mounts: ["/fs-a:/fs-a"]
model:
  stage_dir: /fs-a/staged
frontend:
  infra_bin_dir: /fs-a/bin
env:
  UCX_NET_DEVICES: mlx5_0:1
""")
    b = tmp_path / "cluster-b.yaml"
    b.write_text("""\
slurm:
  partition: nvl72
  account: team-b
container:
  image_dir: /fs-b/sqsh
model:
  stage_dir: /fs-b/models
""")
    return a, b


def sbatch_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("#SBATCH")]


def test_one_recipe_runs_on_two_clusters(two_sites):
    a, b = two_sites
    ra, rb = Recipe.load(GB200, site=str(a)), Recipe.load(GB200, site=str(b))
    assert (ra.slurm.partition, ra.slurm.account, ra.container.image_dir, ra.model.stage_dir) == \
        ("gb200-a", "team-a", "/fs-a/images", "/fs-a/staged")
    assert (rb.slurm.partition, rb.slurm.account, rb.container.image_dir, rb.model.stage_dir) == \
        ("nvl72", "team-b", "/fs-b/sqsh", "/fs-b/models")
    # what the recipe says is untouched on both
    assert ra.topology == rb.topology and ra.engine == rb.engine and ra.slurm.time == rb.slurm.time == "04:00:00"

    out_a, out_b = cli("launch", str(GB200), "--dry-run", "--site", str(a)), cli("launch", str(GB200), "--dry-run", "--site", str(b))
    assert out_a.returncode == 0 and out_b.returncode == 0, out_a.stderr + out_b.stderr
    sa, sb = sbatch_lines(out_a.stdout), sbatch_lines(out_b.stdout)
    assert "#SBATCH --partition=gb200-a" in sa and "#SBATCH --account=team-a" in sa and "#SBATCH --reservation=bench-a" in sa
    assert "#SBATCH --partition=nvl72" in sb and "#SBATCH --account=team-b" in sb
    assert not any("reservation" in line for line in sb)
    # site mounts and stage dir reach the containers; infra runs from the site's binaries
    srun_a = [line for line in out_a.stdout.splitlines() if line.startswith("srun ")]
    assert all("/fs-a:/fs-a" in line and "/fs-a/staged" in line for line in srun_a if "--container-name" in line)
    assert "/fs-a/bin/etcd" in out_a.stdout and "/fs-b/bin" not in out_b.stdout


def test_plan_and_dry_run_show_where_each_value_came_from(two_sites, tmp_path):
    a, _ = two_sites
    recipe = tmp_path / "r.yaml"
    recipe.write_text(GB200.read_text().replace("slurm:\n", "slurm:\n  partition: mine\n  sbatch_args: {qos-extra: x}\n", 1)
                      .replace("engine:\n", "env:\n  UCX_NET_DEVICES: mlx5_3:1\n  NCCL_CUMEM_ENABLE: '1'\nengine:\n", 1))
    out = cli("plan", str(recipe), "--site", str(a))
    assert out.returncode == 0, out.stderr
    block = out.stdout.split("settings (recipe > site > default):", 1)[1]
    rows = {line.split()[0]: line for line in block.splitlines() if line.strip()}
    assert rows["slurm.partition"].split()[1:] == ["mine", "recipe"]
    assert rows["slurm.account"].split()[1:] == ["team-a", "site", str(a)]
    assert "slurm.qos" not in rows and "slurm.qos" in rows["unset:"]
    # mappings merge key by key, the recipe's keys winning
    assert "reservation=bench-a" in rows["slurm.sbatch_args"] and "qos-extra=x" in rows["slurm.sbatch_args"]
    assert rows["slurm.sbatch_args"].endswith(f"site {a} + recipe")
    assert "UCX_NET_DEVICES=mlx5_3:1" in rows["env"]
    doc = json.loads(cli("plan", str(recipe), "--site", str(a), "--json").stdout)
    assert doc["settings"]["slurm.account"] == {"value": "team-a", "origin": f"site {a}"}
    assert doc["settings"]["slurm.partition"] == {"value": "mine", "origin": "recipe"}
    assert doc["settings"]["env"]["value"] == {"UCX_NET_DEVICES": "mlx5_3:1", "NCCL_CUMEM_ENABLE": "1"}

    dry = cli("launch", str(recipe), "--dry-run", "--site", str(a))
    assert dry.returncode == 0, dry.stderr
    assert "#   slurm.account" in dry.stdout and "team-a" in dry.stdout and f"site {a}" in dry.stdout
    assert "#SBATCH --partition=mine" in dry.stdout


def test_gb200_recipes_take_their_site_from_the_example_file():
    r = Recipe.load(GB200, site=str(GB200_SITE))
    assert r.slurm.partition == "batch" and r.frontend.infra_bin_dir and r.model.stage_dir
    assert r.origins["slurm.python"] == f"site {GB200_SITE}"
    bare = Recipe.load(GB200, site="none")
    assert bare.slurm.partition is None and bare.model.stage_dir is None
    assert bare.origins["slurm.partition"] == "default"


def test_which_site_file_is_in_force(tmp_path, two_sites):
    a, b = two_sites
    home = tmp_path / "home"
    (home / ".config" / "inferx-slurm").mkdir(parents=True)
    (home / ".config" / "inferx-slurm" / "site.yaml").write_text("slurm: {partition: from-home}\n")
    env = {"HOME": str(home)}
    assert site_path(None, env) == home / ".config" / "inferx-slurm" / "site.yaml"
    assert site_path(None, {**env, "INFERX_SITE": str(a)}) == a
    assert site_path(str(b), {**env, "INFERX_SITE": str(a)}) == b  # --site wins
    assert site_path("none", env) is None and site_path(None, {**env, "INFERX_SITE": "none"}) is None
    assert site_path(None, {"HOME": str(tmp_path / "nobody")}) is None
    xdg = tmp_path / "xdg"
    (xdg / "inferx-slurm").mkdir(parents=True)
    (xdg / "inferx-slurm" / "site.yaml").write_text("slurm: {partition: xdg}\n")
    assert load_site(None, {**env, "XDG_CONFIG_HOME": str(xdg)}).slurm.partition == "xdg"
    # the CLI honours INFERX_SITE
    out = cli("plan", str(GB200), "--json", env={"INFERX_SITE": str(b)})
    assert json.loads(out.stdout)["settings"]["slurm.partition"]["value"] == "nvl72"


def test_bad_site_files_name_the_field_and_what_is_valid(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("slurm:\n  partiton: batch\n")
    with pytest.raises(RecipeError) as e:
        read_site(typo)
    assert "slurm.partiton" in str(e.value) and "partition" in str(e.value) and str(typo) in str(e.value)
    out = cli("launch", str(GB200), "--dry-run", "--site", str(typo))
    assert out.returncode == 2 and "slurm.partiton: unknown field" in out.stderr
    missing = cli("plan", str(GB200), "--site", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "--site" in missing.stderr and "'none'" in missing.stderr
    env_missing = cli("plan", str(GB200), env={"INFERX_SITE": str(tmp_path / "nope.yaml")})
    assert env_missing.returncode == 2 and "INFERX_SITE" in env_missing.stderr
    bad_type = tmp_path / "list.yaml"
    bad_type.write_text("- partition\n")
    out = cli("plan", str(GB200), "--site", str(bad_type))
    assert out.returncode == 2 and "must be a mapping of site fields" in out.stderr
    # a site value the recipe schema rejects is reported like a recipe field
    wrong = tmp_path / "runtime.yaml"
    wrong.write_text("container: {runtime: docker}\n")
    out = cli("plan", str(REPO / "recipes/disagg/local/mocker-1p1d.yaml"), "--site", str(wrong))
    assert out.returncode == 2 and "container.runtime" in out.stderr and "pyxis" in out.stderr
