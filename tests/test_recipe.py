from pathlib import Path

import pytest
import yaml

from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sections import Scenario
from inferx_slurm.recipe.values import expand_vars

RECIPES = sorted(Path(__file__).resolve().parent.parent.joinpath("recipes", "disagg").rglob("*.yaml"))
MIN = {"name": "r", "model": {"path": "org/model"}, "topology": "1P1D TP4->TEP8"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load_and_roundtrip(path):
    r = Recipe.load(path)
    again = Recipe.from_dict(yaml.safe_load(r.to_yaml()))
    assert again == r
    assert isinstance(r.to_dict()["topology"], str)


def test_defaults_and_profile_gpus_per_node():
    r = Recipe.from_dict({**MIN, "profile": "gb200-nvl72"})
    assert r.gpus_per_node == 4
    assert r.engine.backend.value == "vllm"
    assert Recipe.from_dict({**MIN, "profile": "h200"}).gpus_per_node == 8
    assert Recipe.from_dict({**MIN, "profile": "h200", "slurm": {"gpus_per_node": 4}}).gpus_per_node == 4


@pytest.mark.parametrize(
    "patch, field, valid",
    [
        ({"engine": {"backend": "tgi"}}, "engine.backend", "'vllm', 'sglang', 'trtllm' or 'mocker'"),
        ({"profile": "gb300"}, "profile", "gb200-nvl72"),
        ({"benchmark": {"concurency": [1]}}, "benchmark.concurency", "concurrency"),
        ({"benchmark": {"concurrency": [0, 4]}}, "benchmark.concurrency", ">= 1"),
        ({"benchmark": {"scenarios": ["8x1k"]}}, "benchmark.scenarios.0", "8k1k"),
        ({"slurm": {"time": "4 hours"}}, "slurm.time", "HH:MM:SS"),
        ({"topology": "1P1D TP4->XP8"}, "topology", "TPn"),
        ({"frontend": {"discovery": "consul"}}, "frontend.discovery", "'etcd+nats' or 'file'"),
        ({"container": {"runtime": "pyxis"}}, "container", "container.image"),
        ({"name": "has space"}, "name", "pattern"),
    ],
)
def test_errors_name_field_and_valid_values(patch, field, valid):
    with pytest.raises(RecipeError) as e:
        Recipe.from_dict({**MIN, **patch})
    msg = str(e.value)
    assert msg.startswith(field + ":") or f"- {field}:" in msg, msg
    assert valid in msg, msg


def test_multiple_errors_are_all_listed():
    with pytest.raises(RecipeError) as e:
        Recipe.from_dict({**MIN, "engine": {"backend": "x"}, "slurm": {"time": "x"}})
    assert "engine.backend" in str(e.value) and "slurm.time" in str(e.value)


def test_load_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="readable YAML"):
        Recipe.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        Recipe.load(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        Recipe.load(lst)


def test_scenario_names():
    assert Scenario.model_validate("8k1k").model_dump() == {"isl": 8192, "osl": 1024}
    assert Scenario.model_validate("1024/128").model_dump() == {"isl": 1024, "osl": 128}
    assert Scenario(isl=8192, osl=1024).name == "8k1k"
    assert Scenario(isl=100, osl=20).name == "isl100-osl20"


def test_env_values_become_strings():
    r = Recipe.from_dict({**MIN, "env": {"NCCL_CUMEM_ENABLE": 1, "X": True}, "engine": {"decode": {"env": {"A": 2}}}})
    assert r.env == {"NCCL_CUMEM_ENABLE": "1", "X": "1"}
    assert r.engine.decode.env == {"A": "2"}


def test_variable_expansion():
    env = {"MODEL_DIR": "/m"}
    out = expand_vars({"model": {"path": "${MODEL_DIR}/x", "b": "${NOPE:-dflt}"}, "l": ["${MODEL_DIR}"]}, environ=env)
    assert out == {"model": {"path": "/m/x", "b": "dflt"}, "l": ["/m"]}
    with pytest.raises(RecipeError) as e:
        expand_vars({"model": {"path": "${UNSET_X}/x"}}, environ={})
    assert "model.path" in str(e.value) and "export UNSET_X" in str(e.value)


def test_overrides_revalidate():
    r = Recipe.from_dict(MIN)
    assert r.with_overrides({"engine.decode.args.max-num-seqs": 64}).engine.decode.args == {"max-num-seqs": 64}
    with pytest.raises(RecipeError, match="engine.backend"):
        r.with_overrides({"engine.backend": "nope"})
