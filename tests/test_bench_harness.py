"""bench/_harness.py (interleaved sides, spreads, same-output check, results file) and the docs'
figures coming from the results files only (issue 16)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _harness import Bench, Measured  # noqa: E402


def test_sides_alternate_and_the_results_file_says_where_it_ran(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    calls = []

    def side(name, seconds):
        def run():
            calls.append(name)
            return Measured(seconds, [1, 2, 3])

        return run

    bench = Bench("unit", quick=True, settings={"n": 3})
    entry = bench.compare("c", naive=side("a", 2.0), ours=side("b", 0.5), repeats=3, work=6, unit="things")
    assert calls == ["a", "b"] * 3  # ABAB, not AAABBB
    assert entry["ratio"] == {"median": 4.0, "min": 4.0, "max": 4.0}
    assert entry["sides"]["ours"]["rate_median"] == 12.0 and entry["same_output"]
    bench.figure("extra", {"k": 1})
    doc = json.loads(bench.finish().read_text())
    assert doc["bench"] == "unit" and doc["quick"] and doc["cores"] >= 1 and len(doc["loadavg_start"]) == 3
    assert doc["commit"] and doc["date"].endswith("Z") and doc["figures"] == {"extra": {"k": 1}}
    assert (tmp_path / "unit.quick.json").exists()


def test_different_outputs_stop_the_bench(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    bench = Bench("unit")
    with pytest.raises(AssertionError, match="different output"):
        bench.compare("c", naive=lambda: 1, ours=lambda: 2, repeats=1, work=1, unit="x")
    entry = bench.compare(
        "tolerant",
        naive=lambda: 1.0,
        ours=lambda: 1.0001,
        repeats=1,
        work=1,
        unit="x",
        same=lambda a, b: abs(a - b) < 1e-3,
    )
    assert entry["same_output"]


def test_performance_doc_quotes_the_results_files():
    from report import DOC, render

    assert render() in DOC.read_text()  # rerun `python bench/report.py --write` after a bench run


def test_performance_summary_quotes_the_figures():
    """The hand-written summary table's wall and CPU ratios are the generated Figures' (no stale copy)."""
    import re

    from report import DOC

    text = DOC.read_text()
    summary = text[text.index("## Summary of the last run") : text.index("## Memory against corpus size")]
    figures = text[text.index("## Figures") :]
    quoted = 0
    for row in summary.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) < 4 or not cells[0] or cells[0] in ("bench", "---"):
            continue
        for cell in cells[3:5]:  # wall, CPU time; the last column quotes an earlier run
            for ratio in re.findall(r"\d+\.\d\dx \[\d+\.\d\d-\d+\.\d\d\]", cell):
                assert ratio in figures, f"summary quotes {ratio!r}, which the Figures section does not hold"
                quoted += 1
    assert quoted >= 10
