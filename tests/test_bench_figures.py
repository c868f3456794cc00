"""bench/report.py's check: a figure docs/performance.md quotes must reproduce within the spread it
states, where a fresh run did the same work (issue 25 item 9). Fabricated results and docs only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import report  # noqa: E402


def result(bench: str, label: str, median: float, low: float, high: float, *, work: float = 20000,
           unit: str = "hashes", quick: bool = False, cpu: tuple[float, float, float] | None = None) -> dict:  # fmt: skip
    cpu = cpu or (median, low, high)
    side = {
        "median": 1.0,
        "min": 1.0,
        "max": 1.0,
        "rate_median": work,
        "seconds": [1.0],
        "process_cpu_seconds": [1.0],
    }
    return {
        "bench": bench,
        "date": "2026-12-07T05:00:00Z",
        "commit": "abc",
        "cores": 2,
        "loadavg_start": [0.7],
        "loadavg_end": [0.9],
        "wall_seconds": 10,
        "argv": ["--quick"] if quick else [],
        "quick": quick,
        "comparisons": [
            {
                "label": label,
                "unit": unit,
                "work": work,
                "repeats": 3,
                "same_output": True,
                "sides": {"naive": side, "ours": side},
                "ratio": {"median": median, "min": low, "max": high},
                "ratio_cpu": {"median": cpu[0], "min": cpu[1], "max": cpu[2]},
            }
        ],
        "figures": {},
    }


def doc_with(*docs: dict) -> str:
    """A performance page whose Figures section is what bench/report.py renders from `docs`."""
    by_name = {d["bench"]: d for d in docs}
    return "# Performance\n\n" + report.render(docs=by_name) + "\n"


STATED = result("synthesize", "near-dup search alone", 1.84, 1.35, 2.15, cpu=(1.79, 1.30, 2.08))


def test_quoted_figures_are_read_back_from_the_rendered_section():
    quoted = report.quoted_figures(doc_with(STATED))
    q = quoted[("synthesize", "near-dup search alone")]
    assert (
        q.work == "20,000 hashes" and str(q.wall) == "1.84x [1.35-2.15]" and str(q.cpu) == "1.79x [1.30-2.08]"
    )


def test_a_median_outside_the_stated_spread_fails():
    quoted = report.quoted_figures(doc_with(STATED))
    fresh = {"synthesize": result("synthesize", "near-dup search alone", 0.98, 0.95, 1.01)}
    outcome = report.check(fresh, quoted)
    assert outcome.compared == ["synthesize / near-dup search alone"]
    assert len(outcome.failures) == 2  # wall and CPU
    assert "0.98x [0.95-1.01] this run" in outcome.failures[0] and "1.84x [1.35-2.15]" in outcome.failures[0]


@pytest.mark.parametrize("median", [1.35, 1.6, 2.15, 2.154])
def test_a_median_inside_the_stated_spread_holds(median):
    quoted = report.quoted_figures(doc_with(STATED))
    fresh = {
        "synthesize": result("synthesize", "near-dup search alone", median, 1.0, 3.0, cpu=(1.5, 1.0, 3.0))
    }
    assert report.check(fresh, quoted).failures == []


def test_only_the_cpu_ratio_out_still_fails():
    quoted = report.quoted_figures(doc_with(STATED))
    fresh = {"synthesize": result("synthesize", "near-dup search alone", 1.8, 1.7, 1.9, cpu=(2.5, 2.4, 2.6))}
    (failure,) = report.check(fresh, quoted).failures
    assert failure.startswith("synthesize / near-dup search alone: CPU ratio 2.50x")


@pytest.mark.parametrize(
    "fresh, why",
    [
        (result("synthesize", "near-dup search alone", 0.5, 0.4, 0.6, work=5000), "other work (5,000 hashes"),
        (result("synthesize", "near-dup search alone", 0.5, 0.4, 0.6, quick=True), "a --quick run"),
        (result("synthesize", "renamed comparison", 0.5, 0.4, 0.6), "no fresh result"),
    ],
)
def test_different_work_is_not_compared(fresh, why):
    quoted = report.quoted_figures(doc_with(STATED))
    outcome = report.check({"synthesize": fresh}, quoted)
    assert outcome.failures == [] and outcome.compared == []
    assert why in outcome.not_compared[0]


def test_main_exits_1_and_still_writes_the_fresh_figures(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    summary = f"{report.SUMMARY_BEGIN}\nold\n{report.SUMMARY_END}\n"
    doc = tmp_path / "performance.md"
    doc.write_text("# P\n\n" + summary + doc_with(STATED))
    fresh = result("synthesize", "near-dup search alone", 0.98, 0.95, 1.01)
    (results / "synthesize.json").write_text(json.dumps(fresh))
    assert report.main(["--check", "--write", "--doc", str(doc), "--results", str(results)]) == 1
    assert (
        "DOES NOT REPRODUCE: synthesize / near-dup search alone: wall ratio 0.98x" in capsys.readouterr().err
    )
    text = doc.read_text()
    assert "| 0.98x [0.95-1.01] |" in text  # the Figures section holds this run now
    row = next(
        line for line in text.splitlines() if line.startswith("| synthesize | near-duplicate search alone")
    )
    assert row.endswith(
        "| 0.98x [0.95-1.01] | 0.98x [0.95-1.01] | 2026-12-07 05:00, 0.7 | 1.84x [1.35-2.15] |"
    )
    # the docs now state this run: the same results check clean
    assert report.main(["--check", "--doc", str(doc), "--results", str(results)]) == 0


def test_the_committed_docs_and_results_agree():
    """docs/performance.md states what bench/results holds (rerun make bench, never hand-edit figures)."""
    text = report.DOC.read_text()
    outcome = report.check(report.load(), report.quoted_figures(text))
    assert outcome.failures == [] and len(outcome.compared) >= 10
    assert report.SUMMARY_BEGIN in text and report.SUMMARY_END in text
