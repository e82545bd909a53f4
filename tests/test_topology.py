import pytest
from hypothesis import given, strategies as st

from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.topology import ParallelKind, Parallelism, Topology


@pytest.mark.parametrize(
    "text, p, d, pspec, dspec",
    [
        ("1P1D TP4->TEP8", 1, 1, "TP4", "TEP8"),
        ("1P1D DEP8->DEP16", 1, 1, "DEP8", "DEP16"),
        ("2P1D DEP8->DEP16", 2, 1, "DEP8", "DEP16"),
        ("4P1D DEP8->DEP16", 4, 1, "DEP8", "DEP16"),
        ("2P2D TEP4->TEP8", 2, 2, "TEP4", "TEP8"),
        ("2P1D DEP2->DEP4", 2, 1, "DEP2", "DEP4"),
        ("2p2d tep4", 2, 2, "TEP4", "TEP4"),
        ("1P1D DEP8 → DEP16", 1, 1, "DEP8", "DEP16"),
        ("  3P5D  TP2 -> TP1 ", 3, 5, "TP2", "TP1"),
    ],
)
def test_parse_examples(text, p, d, pspec, dspec):
    t = Topology.parse(text)
    assert (t.prefill.workers, t.decode.workers) == (p, d)
    assert (str(t.prefill.parallel), str(t.decode.parallel)) == (pspec, dspec)


def test_single_spec_prints_once_and_roundtrips():
    t = Topology.parse("2P2D TEP4")
    assert str(t) == "2P2D TEP4"
    assert Topology.parse(str(t)) == t
    assert str(Topology.parse("1P1D TP4->TEP8")) == "1P1D TP4->TEP8"


def test_parallelism_semantics():
    dep = Parallelism.parse("DEP16")
    assert (dep.kind, dep.tp, dep.dp, dep.ep) == (ParallelKind.DEP, 1, 16, True)
    tep = Parallelism.parse("TEP8")
    assert (tep.tp, tep.dp, tep.ep) == (8, 1, True)
    tp = Parallelism.parse("TP4")
    assert (tp.tp, tp.dp, tp.ep) == (4, 1, False)


def test_structured_and_string_forms_convert_both_ways():
    t = Topology.parse("2P1D DEP8->DEP16")
    structured = t.model_dump(mode="json")
    assert structured["prefill"] == {"workers": 2, "parallel": {"kind": "DEP", "size": 8}}
    assert Topology.model_validate(structured) == t
    assert Topology.model_validate({"prefill": {"workers": 2, "parallel": "DEP8"}, "decode": {"workers": 1, "parallel": "DEP16"}}) == t
    assert Topology.model_validate("2P1D DEP8->DEP16") == t


@pytest.mark.parametrize("bad", ["", "1P1D", "1P1D TP0", "0P1D TP4", "1P0D TP4", "1P1D XP4", "P1D TP4", "1P1D TP4->", "1P1D TP4->EP8", "TP4"])
def test_rejects_with_field_and_valid_forms(bad):
    with pytest.raises(RecipeError) as e:
        Topology.parse(bad)
    msg = str(e.value)
    assert msg.startswith("topology:")
    assert "TPn" in msg or "xPyD" in msg


@given(
    p=st.integers(1, 16), d=st.integers(1, 16),
    a=st.sampled_from(["TP", "TEP", "DEP"]), b=st.sampled_from(["TP", "TEP", "DEP"]),
    n=st.integers(1, 64), m=st.integers(1, 64),
)
def test_string_roundtrip_property(p, d, a, b, n, m):
    t = Topology.parse(f"{p}P{d}D {a}{n}->{b}{m}")
    again = Topology.parse(str(t))
    assert again == t
    assert t.total_gpus == p * n + d * m
