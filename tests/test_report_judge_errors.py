"""The report shows a failed judge for what it is: items with no verdict, not wrong answers.

`medmax score` marks an item whose judge request got no reply `status: judge_error` (docs/score.md
"Judge failures"): its summary counts them per task (`tasks[t].judge_error`) and in all
(`macro.judge_errors`), says `macro.complete: false`, and gives no all-items mean
(`mean_all_items: null`). The summaries here are made by the real score code, `medmax score` and
`summarise`, from predictions judged by the loopback fake judge of tests/test_judge_failures.py
(OpenAI chat-completions answers on 127.0.0.1, with raw failing answers queued in front).
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from medmax_cli.media import MediaStore
from medmax_cli.report.page import build_report
from medmax_cli.score.judge import Judge
from medmax_cli.score.stage import Scorer, score_records
from medmax_cli.score.summary import summarise, to_json
from score_helpers import vqa
from test_judge_failures import NULL_CONTENT, FaultyJudge, medmax_judge

BANNER = (
    "no verdict because the judge failed; rerun <code>medmax score</code> to ask them again; "
    "the averages are incomplete."
)


def _items() -> list[dict]:
    """The first two open items meet the queued failures (one request at a time, in input order)."""
    return [
        vqa("s1", "slake_open", "liver", "liver"),  # fails: its task has no verdict at all
        vqa("e1", "vqa_rad_open", "liver", "liver"),  # fails
        vqa("ok", "vqa_rad_open", "liver", "liver"),  # Correctness: 1
        vqa("drop", "vqa_rad_open", "liver", "unclear"),  # MedMax's parse drop
        vqa("closed", "vqa_rad_closed", "yes", "yes"),  # rules, no judge
    ]


def _row(page: str, task: str) -> list[str]:
    """The cells after the task name in its row of the summary table: n, scored, coverage, means, CI."""
    match = re.search(rf"<tr><td>{task}</td>(.*?)</tr>", page)
    assert match, task
    return re.findall(r"<td[^>]*>(.*?)</td>", match.group(1))


def test_score_command_judge_errors_reach_the_report(tmp_path, medmax):
    preds = tmp_path / "preds.jsonl"
    preds.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in _items()))
    run = tmp_path / "run"
    run.mkdir()
    with FaultyJudge(medmax_judge) as server:
        server.raw.extend([(400, b'{"error": {"message": "context length"}}'), (200, NULL_CONTENT)])
        args = [
            "score", str(preds), "--judge-url", server.url, "--judge-model", "j", "--judge-cache",
            str(tmp_path / "cache"), "--summary", str(run / "summary.json"), "--judge-concurrency", "1",
        ]  # fmt: skip
        first = medmax(*args, check=False)
        assert first.returncode == 1, first.stderr  # judge errors remain
        (run / "scores.jsonl").write_bytes(first.stdout)
        summary = orjson.loads((run / "summary.json").read_bytes())
        assert summary["macro"]["judge_errors"] == 2 and summary["macro"]["complete"] is False
        assert summary["tasks"]["slake_open"]["mean"] is None
        assert summary["tasks"]["vqa_rad_open"]["mean_all_items"] is None

        report = medmax("report", str(run), str(preds), "-o", str(tmp_path / "report"))
        assert b"2 items with no verdict (the judge failed" in report.stderr
        page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
        evaluation = page[page.index('<section id="evaluation"') :]
        assert f'<div class="banner" id="judge-errors-0">2 items have {BANNER}' in evaluation
        assert re.search(r"Per task: (vqa_rad_open 1, slake_open 1|slake_open 1, vqa_rad_open 1)</div>", page)
        assert "2 judge errors: items with no verdict" in page  # beside the macro average
        # per task: the count beside the coverage; a null mean is "none" with its reason, never 0
        n, scored, coverage, mean, mean_all, _ci = _row(page, "vqa_rad_open")
        assert (n, scored, coverage, mean) == ("3", "1", "33% (judge_error 1, dropped 1)", "1.000")
        assert mean_all == "none: 1 judge error, no verdict"
        n, scored, coverage, mean, mean_all, _ci = _row(page, "slake_open")
        assert (n, scored, coverage) == ("1", "0", "0% (judge_error 1)")
        assert mean == "none: nothing scored" and mean_all == "none: 1 judge error, no verdict"
        # the item itself: its status, no score
        item = re.search(r"<code>s1</code>.*?</tr>", page, re.S).group(0)
        assert "judge_error" in item and '<td class="n"> <span' in item

        # the judge is healthy again: a rerun asks the two again, and the banner is gone
        second = medmax(*args, check=False)
        assert second.returncode == 0, second.stderr
        (run / "scores.jsonl").write_bytes(second.stdout)
        report = medmax("report", str(run), str(preds), "-o", str(tmp_path / "report"))
        assert b"no verdict" not in report.stderr
        page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
        assert "judge-errors" not in page and "judge error" not in page
        assert _row(page, "slake_open")[3] == "1.000"


def _page(tmp_path: Path, summary: dict) -> tuple[str, dict]:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "summary.json").write_bytes(to_json(summary))
    result = build_report([run], tmp_path / "report", media=MediaStore(tmp_path / "media"), model_dir=None)
    return (tmp_path / "report" / "index.html").read_text(encoding="utf-8"), result


def _summary_with_failures(chat) -> dict:
    judge = Judge(chat, model="j", protocol="medmax")
    items = [vqa("a", "vqa_rad_open", "liver", "liver"), vqa("b", "vqa_rad_open", "liver", "liver")]
    return summarise(score_records(items, scorer=Scorer(judge=judge)))


def test_one_failure_in_the_library_summary_and_a_summary_without_macro_judge_errors(tmp_path):
    replies = iter([None, "Correctness: 0"])  # a chat function handing back None: no reply
    summary = _summary_with_failures(lambda messages: next(replies))
    task = summary["tasks"]["vqa_rad_open"]
    assert (task["judge_error"], task["scored"], task["mean"], task["mean_all_items"]) == (1, 1, 0.0, None)
    page, result = _page(tmp_path, summary)
    assert f"1 item has {BANNER}" in page and result["judge_errors"] == 1
    _, _, coverage, mean, mean_all, _ = _row(page, "vqa_rad_open")
    assert (coverage, mean, mean_all) == ("50% (judge_error 1)", "0.000", "none: 1 judge error, no verdict")

    # a summary whose macro lacks judge_errors (or holds junk) still shows its tasks' failures
    summary["macro"]["judge_errors"] = "none"
    page, result = _page(tmp_path, summary)
    assert f"1 item has {BANNER}" in page and result["judge_errors"] == 1


def test_no_banner_without_judge_errors(tmp_path):
    summary = _summary_with_failures(lambda messages: "Correctness: 1")
    assert summary["macro"]["judge_errors"] == 0
    page, result = _page(tmp_path, summary)
    assert "no verdict" not in page and result["judge_errors"] == 0
    assert _row(page, "vqa_rad_open")[3:5] == ["1.000", "1.000"]
