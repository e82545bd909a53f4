"""No recipe, however mangled, makes `launch --dry-run` raise a traceback.

Every field of every recipe under recipes/ is replaced with wrong types, zero, negative,
huge, empty and non-numeric values, or removed; the numeric engine flags the launcher reads
are also added where a recipe leaves them out. The result must be a dry run (exit 0) or one
clear error (exit 2) - never an exception escaping the CLI.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from inferx_slurm.cli import main
from inferx_slurm.recipe.engine_values import WHOLE_NUMBER_ARGS
from inferx_slurm.recipe.sections import EngineSpec, RoleEngine

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
DELETE = object()

BAD_VALUES: list[Any] = [
    None, 0, -1, -(10**9), 10**15, 1e308, math.inf, math.nan, 1.5, True, False,
    "", " ", "abc", "0", "-5", "1e3", "${UNSET_INFERX_FUZZ_VAR}", "a" * 300,
    [], [0], [1, "x"], {}, {"a": 1}, {"": None}, DELETE,
]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _engine_sections() -> list[tuple]:
    # Every args section the schema has (common and per role), so new roles are fuzzed too.
    roles = [name for name, f in EngineSpec.model_fields.items() if f.annotation is RoleEngine]
    return [("engine", "args")] + [("engine", r, "args") for r in roles]


def recipe_paths(raw: dict) -> list[tuple]:
    """Every field of the recipe, plus each numeric engine flag in every args section."""
    paths = _paths(raw)
    for section in _engine_sections():
        for flag in WHOLE_NUMBER_ARGS:
            p = section + (flag,)
            if p not in paths:
                paths.append(p)
    return paths


def mutate(raw: dict, path: tuple, value: Any) -> dict:
    data = copy.deepcopy(raw)
    node = data
    for part in path[:-1]:
        if isinstance(node, dict):
            nxt = node.get(part)
            if not isinstance(nxt, (dict, list)):
                nxt = node[part] = {}
            node = nxt
        else:
            node = node[part]
    if value is DELETE:
        if isinstance(node, dict):
            node.pop(path[-1], None)
        else:
            del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


def dry_run(data: dict, where: Path, site: dict | None = None, recipe: Path | None = None) -> tuple[int, str]:
    """`launch --dry-run` of a mutated recipe, or of ``recipe`` with a mutated site file."""
    f = where / "mutated.yaml"
    f.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    extra = []
    if site is not None:
        sf = where / "site.yaml"
        sf.write_text(yaml.safe_dump(site, allow_unicode=True), encoding="utf-8")
        extra = ["--site", str(sf)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["launch", str(recipe or f), "--dry-run", "--results-dir", str(where / "results"), *extra])
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
    return rc, err.getvalue()


def check(raw: dict, path: tuple, value: Any, where: Path) -> None:
    shown = "<deleted>" if value is DELETE else repr(value)[:60]
    check_data(mutate(raw, path, value), f"{'.'.join(map(str, path))} = {shown}", where)


def check_data(data: dict, what: str, where: Path, site: dict | None = None, recipe: Path | None = None) -> None:
    try:
        rc, err = dry_run(data, where, site, recipe)
    except Exception as e:  # the defect this test exists to find
        pytest.fail(f"{what}: launch --dry-run raised {type(e).__name__}: {e}")
    assert rc in (0, 2), f"{what}: exit {rc}, stderr {err!r}"
    if rc == 2:
        assert err.startswith("inferx-slurm launch: ") and "Traceback" not in err, err
    assert not (where / "results").exists(), "a dry run wrote its results dir"


RAW = {p: yaml.safe_load(p.read_text()) for p in RECIPES}
CASES = [(p, path) for p in RECIPES for path in recipe_paths(RAW[p])]


def test_recipes_exist():
    assert len(RECIPES) >= 8, RECIPES
    assert all(isinstance(r, dict) for r in RAW.values())


def test_every_field_of_every_recipe(tmp_path):
    """Each field gets two values from the list in turn, so every value meets many fields."""
    for i, (recipe, path) in enumerate(CASES):
        for value in (BAD_VALUES[i % len(BAD_VALUES)], BAD_VALUES[(i * 7 + 3) % len(BAD_VALUES)]):
            check(RAW[recipe], path, value, tmp_path)


def _values() -> st.SearchStrategy:
    scalars = st.one_of(
        st.sampled_from([v for v in BAD_VALUES if v is not DELETE]),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
        st.booleans(),
    )
    nested = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=6), scalars, max_size=2))
    return st.one_of(st.just(DELETE), nested)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CASES), value=_values(), extra=st.lists(st.tuples(st.sampled_from(CASES), _values()), max_size=2))
def test_mutated_recipes_never_traceback(tmp_path, case, value, extra):
    recipe, path = case
    data = mutate(RAW[recipe], path, value)
    what = [f"{'.'.join(map(str, path))} = {value!r:.60}"]
    # Up to two more fields of the same recipe broken at once.
    for (other, p), v in extra:
        if other == recipe:
            try:
                data = mutate(data, p, v)
                what.append(f"{'.'.join(map(str, p))} = {v!r:.60}")
            except (IndexError, KeyError, TypeError):
                pass  # an earlier mutation replaced the parent of this path
    check_data(data, ", ".join(what), tmp_path)


SITES = sorted((REPO / "examples" / "sites").glob("*.yaml"))
SITE_RAW = {p: yaml.safe_load(p.read_text()) for p in SITES}


def _site_schema_paths() -> list[tuple]:
    from inferx_slurm.recipe.site import SITE_FIELDS

    return [tuple(p.split(".")) for p in SITE_FIELDS]


def test_every_field_of_every_site_file(tmp_path):
    """Site files get the same treatment: every field they set and every field the schema has."""
    assert SITES, "no example site files"
    recipe = REPO / "recipes" / "disagg" / "gb200" / "minimax-m3-2p1d-dep8-dep16-1k1k.yaml"
    cases = [(site, path) for site in SITES for path in dict.fromkeys(_paths(SITE_RAW[site]) + _site_schema_paths())]
    for i, (site, path) in enumerate(cases):
        for value in (BAD_VALUES[i % len(BAD_VALUES)], BAD_VALUES[(i * 5 + 1) % len(BAD_VALUES)]):
            shown = "<deleted>" if value is DELETE else repr(value)[:60]
            check_data({}, f"site {site.name}: {'.'.join(map(str, path))} = {shown}", tmp_path,
                       site=mutate(SITE_RAW[site], path, value), recipe=recipe)


@pytest.mark.parametrize("section", _engine_sections(), ids=lambda s: ".".join(s))
@pytest.mark.parametrize("value", [0, -3, "abc", "", 1.5, True, [], {}])
def test_block_size_rejected_naming_the_field(tmp_path, section, value):
    raw = RAW[REPO / "recipes" / "disagg" / "local" / "mocker-1p1d.yaml"]
    rc, err = dry_run(mutate(raw, section + ("block-size",), value), tmp_path)
    assert rc == 2
    assert f"{'.'.join(section)}: block-size: got {value!r}; expected a whole number >= 1" in err, err


def test_missing_optional_dependency_is_one_line_saying_what_to_install(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "tokenizers", None)  # what an interpreter without it finds
    state = tmp_path / "cluster"
    rc = main(["local-cluster", "up", "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err == "inferx-slurm local-cluster: the local cluster's tiny model needs the 'tokenizers' package: pip install 'inferx-slurm[local]'\n"
    assert not state.exists(), "nothing is started or written before the check"
