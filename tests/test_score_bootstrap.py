"""Bootstrap and summary: determinism, coverage of a known mean, clustering, macro, compare."""

from __future__ import annotations

import numpy as np
import pytest

from medmax_cli.score.bootstrap import bootstrap_ci, mean_se, replicates, task_seed
from medmax_cli.score.compare import compare
from medmax_cli.score.stage import Scorer, score_records
from medmax_cli.score.summary import markdown_table, summarise, to_json
from score_helpers import vqa


def _lines(rng_seed: int = 1, tasks=("vqa_rad_closed", "pmc_vqa", "slake_closed"), n: int = 40):
    rng = np.random.default_rng(rng_seed)
    out = []
    for task in tasks:
        for i in range(n):
            out.append(
                {
                    "id": f"{task}-{i}",
                    "eval_task": task,
                    "question_type": None,
                    "metric": "accuracy",
                    "score": float(rng.random() < 0.6),
                    "status": "scored",
                    "cluster": f"img{i // 4}",
                }
            )
    return out


def test_mean_and_standard_error_ddof1():
    mean, se = mean_se([1, 0, 1, 1])
    assert mean == 0.75
    assert se == pytest.approx(np.std([1, 0, 1, 1], ddof=1) / 2)
    assert mean_se([]) == (None, None)
    assert mean_se([1.0]) == (1.0, None)


def test_same_seed_same_bytes_other_seed_other_cis():
    lines = _lines()
    a = to_json(summarise(lines, seed=3, provenance={"input_sha256": "x"}))
    b = to_json(summarise(list(lines), seed=3, provenance={"input_sha256": "x"}))
    c = to_json(summarise(lines, seed=4, provenance={"input_sha256": "x"}))
    assert a == b
    assert a != c


def test_task_seed_is_stable_and_task_cis_do_not_depend_on_other_tasks():
    assert task_seed(0, "pmc_vqa") == task_seed(0, "pmc_vqa") != task_seed(0, "pathmmu")
    assert task_seed(0, "pmc_vqa") == 0x148B33F6B7D762AD  # sha256("0:pmc_vqa")[:8], little-endian: pinned
    both = summarise(_lines(tasks=("vqa_rad_closed", "pmc_vqa")), seed=0)
    one = summarise(
        [x for x in _lines(tasks=("vqa_rad_closed", "pmc_vqa")) if x["eval_task"] == "pmc_vqa"], seed=0
    )
    assert both["tasks"]["pmc_vqa"] == one["tasks"]["pmc_vqa"]


def test_percentile_ci_covers_a_known_mean_about_95_percent():
    p, n, trials = 0.3, 80, 200
    covered = 0
    for trial in range(trials):
        sample = (np.random.default_rng(10_000 + trial).random(n) < p).astype(float)
        lo, hi = bootstrap_ci(sample, seed=trial, n_boot=400)
        covered += lo <= p <= hi
    # binomial sd of the coverage over 200 trials is ~0.016: 0.88..0.99 is a wide, honest band
    assert 0.88 <= covered / trials <= 0.99, covered


def test_clustering_widens_the_interval_for_correlated_items():
    # 10 images, 5 identical answers each: only 10 independent observations
    values = np.repeat((np.random.default_rng(0).random(10) < 0.5).astype(float), 5)
    clusters = [f"img{i // 5}" for i in range(50)]
    lo_i, hi_i = bootstrap_ci(values, seed=0)
    lo_c, hi_c = bootstrap_ci(values, seed=0, clusters=clusters)
    assert hi_c - lo_c > 1.5 * (hi_i - lo_i)


def test_replicates_are_means_of_resamples():
    reps = replicates([0.0, 1.0], seed=0, n_boot=500)
    assert set(np.unique(reps)) <= {0.0, 0.5, 1.0}
    assert 0.4 < reps.mean() < 0.6


def test_summary_macro_and_sub_averages():
    s = summarise(_lines(), seed=0)
    means = [s["tasks"][t]["mean"] for t in ("vqa_rad_closed", "pmc_vqa", "slake_closed")]
    assert s["macro"]["mean"] == pytest.approx(np.mean(means), abs=1e-6)
    assert s["macro"]["ci95"][0] <= s["macro"]["mean"] <= s["macro"]["ci95"][1]
    assert s["by_question_type"]["closed"]["tasks"] == ["vqa_rad_closed", "slake_closed"]
    assert s["by_question_type"]["multiple_choice"]["mean"] == s["tasks"]["pmc_vqa"]["mean"]
    assert s["by_question_type"]["open"]["mean"] is None
    assert len(s["macro"]["missing_tasks"]) == 9 and not s["macro"]["complete"]
    # the macro CI is narrower than a single task's (it averages three independent tasks)
    width = s["macro"]["ci95"][1] - s["macro"]["ci95"][0]
    assert width < min(t["ci95"][1] - t["ci95"][0] for t in s["tasks"].values())
    table = markdown_table(s)
    assert "| VQA-RAD closed | accuracy | 40 | 40 | 100.0% |" in table
    assert "VQA average" in table


def test_coverage_and_missing_in_summary():
    records = [
        vqa("a", "vqa_rad_open", "liver", "liver"),
        vqa("b", "vqa_rad_open", "liver", None),
        vqa("c", "vqa_rad_open", "liver", "kidney"),
        vqa("d", "vqa_rad_closed", "yes", "yes"),
    ]
    s = summarise(score_records(records, scorer=Scorer()), seed=0)
    t = s["tasks"]["vqa_rad_open"]
    assert (t["n"], t["scored"], t["missing"], t["unscored"]) == (3, 1, 1, 2)
    assert t["coverage"] == pytest.approx(1 / 3, abs=1e-6) and t["mean"] == 0.0


def test_paired_compare():
    a = _lines(rng_seed=1)
    b = [dict(x) for x in a]
    for x in b[:30]:  # the first 30 vqa_rad_closed items all become correct
        x["score"] = 1.0
    gain = sum(1.0 - x["score"] for x in a[:30]) / 40
    result = compare(a, b, seed=0)
    t = result["tasks"]["vqa_rad_closed"]
    assert t["diff"] == pytest.approx(gain, abs=1e-6)
    assert t["ci95"][0] > 0  # a strict improvement on paired items: the CI excludes 0
    assert result["tasks"]["pmc_vqa"]["diff"] == 0.0
    assert result["macro"]["diff"] == pytest.approx(gain / 3, abs=1e-6)
    assert result["counts"] == {"only_a": 0, "only_b": 0, "unscored_in_either": 0, "judge_error_in_either": 0}


def test_compare_refuses_duplicate_ids():
    a = _lines()
    with pytest.raises(ValueError, match="duplicate id"):
        compare(a, a + a[:1])
