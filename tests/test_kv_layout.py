"""Prefill and decode agree on the KV layout before anything is submitted: a block-size, dtype,
model or connector mismatch is refused naming both values (a dry run included)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from inferx_slurm.errors import RecipeError
from inferx_slurm.job.deployment import build_deployment
from inferx_slurm.job.dry_run import dry_run_text
from inferx_slurm.job.submit import check_deployment
from inferx_slurm.planning.kv_layout import layout_problems
from inferx_slurm.planning.placement import plan_recipe
from inferx_slurm.recipe.schema import Recipe

from conftest import REPO

VLLM_1P1D = REPO / "recipes" / "disagg" / "local" / "vllm-1p1d.yaml"


def recipe(**sets) -> Recipe:
    r = Recipe.load(VLLM_1P1D)
    return r.with_overrides(sets) if sets else r


def test_library_recipes_agree():
    for path in sorted((REPO / "recipes" / "disagg" / "local").glob("*.yaml")):
        r = Recipe.load(path)
        assert layout_problems(r, plan_recipe(r)) == [], path


def test_block_size_mismatch_names_both_values(tmp_path):
    r = recipe(**{"engine.prefill.args": {"block-size": 128}, "engine.decode.args": {"block-size": 16}})
    dep = build_deployment(r, tmp_path / "run")  # the verdict is built with the deployment, refused before submit
    with pytest.raises(RecipeError) as e:
        check_deployment(dep)
    assert e.value.field == "engine.decode.args.block-size" and e.value.value == 16
    msg = str(e.value)
    assert "prefill has 128 (engine.prefill.args.block-size)" in msg and "decode has 16" in msg
    with pytest.raises(RecipeError) as shown:  # the dry run refuses it too, from the same verdict
        dry_run_text(dep)
    assert shown.value is e.value


def test_dtype_model_and_connector_mismatches_are_each_named():
    kv = {"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_buffer_device": "cuda"}
    r = recipe(**{"engine.decode.args": {"kv-cache-dtype": "fp8", "kv-transfer-config": kv}})
    problems = [str(p) for p in layout_problems(r, plan_recipe(r))]
    assert any("KV-cache dtype" in p and "'fp8'" in p for p in problems), problems
    assert any("kv_buffer_device" in p and "'cpu'" in p and "'cuda'" in p for p in problems), problems
    # A different role (kv_producer / kv_consumer) is how the two ends differ by design.
    r = recipe(**{"engine.prefill.args": {"kv-transfer-config": {"kv_connector": "NixlConnector", "kv_role": "kv_producer",
                                                                 "kv_buffer_device": "cpu"}}})
    assert layout_problems(r, plan_recipe(r)) == []
    r = recipe(**{"engine.decode.args": {"model": "/models/other"}})
    assert any(str(p).startswith("engine.decode.args.model") for p in layout_problems(r, plan_recipe(r)))


def test_aggregated_workers_have_nothing_to_agree_on():
    r = Recipe.load(REPO / "recipes" / "agg" / "local" / "vllm-1a.yaml")
    assert layout_problems(r, plan_recipe(r)) == []


def test_dry_run_refuses_a_page_size_mismatch(tmp_path):
    data = yaml.safe_load(VLLM_1P1D.read_text())
    data["engine"]["prefill"] = {"args": {"block-size": 128}}
    data["engine"]["decode"] = {"args": {"block-size": 16}}
    path = tmp_path / "mismatch.yaml"
    path.write_text(yaml.safe_dump(data))
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(path), "--dry-run"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr
    assert "engine.decode.args.block-size: got 16; prefill has 128" in out.stderr, out.stderr
    assert "#SBATCH" not in out.stdout
