import subprocess
import sys

import pytest

from inferx_slurm.errors import RecipeError
from inferx_slurm.planning.feasibility import local_weights_gb, memory_plan, require_fit
from inferx_slurm.recipe.schema import Recipe

# Only the checkpoint size is known (model.weights_gb): weights spread over each worker's GPUs,
# a lower bound, fitting when they leave 10% of the engine's budget.


def recipe(topology, weights_gb, profile="gb200-nvl72", **engine):
    return Recipe.from_dict({"name": "f", "profile": profile, "model": {"path": "org/m", "weights_gb": weights_gb},
                             "topology": topology, "engine": engine or {}})


def check(r):
    mp = memory_plan(r)
    return mp.roles if mp else []


def test_444gb_checkpoint_needs_four_gb200_gpus_per_worker():
    fits = check(recipe("1P1D TP4->TEP8", 444))
    assert [(f.role, round(f.weights_gb, 1), f.verdict) for f in fits] == [("prefill", 111.0, "fits"), ("decode", 55.5, "fits")]
    with pytest.raises(RecipeError) as e:
        require_fit(recipe("1P1D TP2->TEP8", 444))
    assert str(e.value).startswith("topology.prefill:") and "at least 4 GPUs per prefill worker" in str(e.value)
    # the error carries its parts as the planner made them, not as text to be split again
    assert (e.value.field, e.value.value) == ("topology.prefill", "1P1D TP2->TEP8")
    assert e.value.valid.startswith("TP2 puts 222.0 GB of weights on each 186 GB GPU") and not e.value.problems


def test_both_roles_reported_and_utilization_respected():
    with pytest.raises(RecipeError) as e:
        require_fit(recipe("1P1D TP1->TP1", 100, profile="h100"))
    assert "topology.prefill" in str(e.value) and "topology.decode" in str(e.value)
    assert e.value.field == "topology" and [p.split(":")[0] for p in e.value.problems] == ["topology.prefill", "topology.decode"]
    # 68 GB on an 80 GB H100 fits at 0.95 utilization (76 GB budget, 7.6 GB left for KV) but not at 0.9
    tight = recipe("1P1D TP1", 68, profile="h100", args={"gpu-memory-utilization": 0.95})
    assert all(f.verdict == "fits" for f in check(tight))
    assert not any(f.verdict == "fits" for f in check(recipe("1P1D TP1", 68, profile="h100")))


def test_unknown_memory_or_size_checks_nothing():
    assert check(recipe("1P1D TP1", 10_000, profile="generic")) == []
    unknown = Recipe.from_dict({"name": "f", "profile": "h100", "model": {"path": "org/m"}, "topology": "1P1D TP1"})
    assert require_fit(unknown) is None


def test_measures_local_checkpoint(tmp_path):
    (tmp_path / "model-1.safetensors").write_bytes(b"\0" * 3_000_000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.bin").write_bytes(b"\0" * 1_000_000)
    (tmp_path / "config.json").write_text("{}")
    assert local_weights_gb(tmp_path) == pytest.approx(0.004)
    assert local_weights_gb(tmp_path / "nope") is None


def test_launch_refuses_before_submitting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nprofile: gb200-nvl72\nmodel: {path: m, weights_gb: 444}\ntopology: 1P1D TP2->TEP8\n")
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(bad), "--results-dir", str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "topology.prefill" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()
