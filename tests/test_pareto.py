import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, strategies as st

from inferx_slurm.results.pareto import frontier, pareto_svg

NS = "{http://www.w3.org/2000/svg}"


def dominates(a, b):
    return a[0] >= b[0] and a[1] >= b[1] and a != b


@given(st.lists(st.tuples(st.integers(1, 50), st.integers(1, 50)), min_size=1, max_size=40))
def test_frontier_is_exactly_the_undominated_points(points):
    front = frontier(points)
    assert all(not any(dominates(p, f) for p in points) for f in front)
    assert all(any(dominates(f, p) for f in front) or p in front for p in points)


def rows(pairs):
    return [{"isl": 128, "osl": 32, "concurrency": c, "intvty": x, "tput_per_gpu": y} for c, x, y in pairs]


def test_svg_marks_frontier_points():
    svg = pareto_svg([("A", rows([(1, 200, 100), (4, 180, 300)])), ("B", rows([(1, 190, 90), (4, 150, 250)])),
                      ("C", [{"concurrency": 8, "intvty": None, "tput_per_gpu": 5}])])
    root = ET.fromstring(svg)
    circles = [c for c in root.iter(f"{NS}circle") if "point" in c.get("class", "")]
    assert len(circles) == 4  # the row without interactivity is left out
    on = sorted(c.find(f"{NS}title").text for c in circles if "on-frontier" in c.get("class"))
    assert on == ["A: conc 1, ISL 128/OSL 32", "A: conc 4, ISL 128/OSL 32"]
    assert root.find(f"{NS}polyline").get("class") == "frontier"
    with pytest.raises(ValueError, match="nothing to plot"):
        pareto_svg([("A", [])])


def test_cli_writes_svg(tmp_path):
    for name, pairs in (("a", [(1, 200, 100), (4, 180, 300)]), ("b", [(1, 190, 90)])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"name": name, "topology": "1P1D TP1", "rows": rows(pairs)}))
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "results", str(tmp_path / "a"), str(tmp_path / "b"),
                          "--pareto", str(tmp_path / "p.svg")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len([c for c in ET.parse(tmp_path / "p.svg").getroot().iter(f"{NS}circle") if "point" in c.get("class", "")]) == 3
    bad = subprocess.run([sys.executable, "-m", "inferx_slurm", "results", str(tmp_path / "a"), str(tmp_path / "b")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "only go with --pareto" in bad.stderr


def test_a_points_tooltip_carries_its_latency_percentiles_and_energy():
    row = {**rows([(4, 180, 300)])[0], "median_ttft_ms": 61.0, "p99_ttft_ms": 112.8, "median_tpot_ms": 0.4, "p99_tpot_ms": 1.96,
           "median_e2el_ms": 72.7, "p99_e2el_ms": 115.1, "joules_per_output_token": 0.8112}
    title = ET.fromstring(pareto_svg([("A", [row])])).find(f".//{NS}circle/{NS}title").text
    assert title == ("A: conc 4, ISL 128/OSL 32; TTFT p50 61.0 ms, p99 112.8 ms, TPOT p50 0.40 ms, p99 1.96 ms, "
                     "E2EL p50 73 ms, p99 115 ms, 0.8112 J/output token")
