"""What the evaluation numbers may be read as: intervals, coverage and degenerate predictions.

- An interval is shown only where a task has at least MIN_CI_N scored items. With fewer, the
  percentile bootstrap resamples so few values that it collapses ([0.000, 0.000] for 2 wrong
  answers) or spans everything: it would look like a measurement of precision when it is not one.
- The macro average names its coverage the way `score` does ("4 of 12 tasks, missing: ...").
- Predictions are degenerate when one answer covers most items of a task (DEGENERATE_SHARE of at
  least DEGENERATE_MIN_N), or when most answers have the wrong form for the task's questions (a
  yes/no, or anything not an option, for a letter-choice question; not yes/no for a yes/no one).
  A random or broken model looks like this; a score computed on it is not a model's accuracy.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from medmax_cli.report.collect import is_credentialed
from medmax_cli.score.tasks import CLOSED, MULTIPLE_CHOICE, VQA_TASKS, eval_task_of, question_type_of

MIN_CI_N = 10
DEGENERATE_SHARE = 0.8
DEGENERATE_MIN_N = 5
WRONG_FORM_SHARE = 0.5
YES_NO = {"yes", "no"}
_WORD = re.compile(r"[a-z0-9]+")


def interval_text(task: dict[str, Any]) -> str:
    """The 95% CI cell: the interval, or why there is none."""
    ci = task.get("ci95")
    scored = task.get("scored") if isinstance(task.get("scored"), int) else task.get("n")
    if isinstance(scored, int) and scored < MIN_CI_N:
        return f"none: {scored} scored item{'s' if scored != 1 else ''}, under {MIN_CI_N}"
    if not isinstance(ci, list) or len(ci) != 2 or not all(isinstance(x, (int, float)) for x in ci):
        return "none: no interval in the summary"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def shows_interval(task: dict[str, Any]) -> bool:
    return interval_text(task).startswith("[")


def coverage_caveat(macro: dict[str, Any]) -> str:
    """'Macro average over 4 of 12 tasks (missing: ...; present but unscored: ...)' or the full claim."""
    n_tasks = macro.get("n_tasks")
    missing = [
        str(t) for t in macro.get("missing_tasks") or [] if isinstance(macro.get("missing_tasks"), list)
    ]
    unscored = [
        str(t) for t in macro.get("unscored_tasks") or [] if isinstance(macro.get("unscored_tasks"), list)
    ]
    text = f"Macro average over {n_tasks} of {len(VQA_TASKS)} tasks"
    details = []
    if missing:
        details.append(f"missing: {', '.join(missing)}")
    if unscored:
        details.append(f"present but unscored: {', '.join(unscored)}")
    failed = macro.get("judge_errors")
    if _count(failed):
        details.append(f"{failed} judge error{'s' if failed != 1 else ''}: items with no verdict")
    if details:
        text += " (" + "; ".join(details) + ")"
    elif macro.get("complete") is False:
        text += " (some items unscored: see coverage per task)"
    return text


def _count(value: Any) -> bool:
    """A positive count (an int, not a bool): what a hand-edited or damaged summary may not hold."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def judge_errors(summary: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """Items whose judge request failed (`status: judge_error`): the total and the count per task.

    The total is `macro.judge_errors` (score's own count, over every task); a summary without it
    (or with a damaged one) gives the sum over its tasks, so a failure is never read as none.
    """
    tasks = summary.get("tasks") if isinstance(summary.get("tasks"), dict) else {}
    per_task = {
        str(name): t["judge_error"]
        for name, t in tasks.items()
        if isinstance(t, dict) and _count(t.get("judge_error"))
    }
    macro = summary.get("macro") if isinstance(summary.get("macro"), dict) else {}
    total = macro.get("judge_errors")
    if not _count(total):
        total = 0
    return max(total, sum(per_task.values())), per_task


def mean_text(task: dict[str, Any], key: str) -> str:
    """A mean's cell: the number, or why there is none. A null mean is never shown as 0."""
    value = task.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.3f}"
    if key == "mean_all_items" and _count(task.get("judge_error")):
        return f"none: {task['judge_error']} judge error{'s' if task['judge_error'] != 1 else ''}, no verdict"
    if value is None and task.get("scored") == 0:
        return "none: nothing scored"
    return "none"


def _answer(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _options(record: dict[str, Any]) -> list[str]:
    options = record.get("options")
    return [str(o) for o in options] if isinstance(options, list) else []


def form_checkable(record: dict[str, Any], qtype: str | None) -> bool:
    return qtype == MULTIPLE_CHOICE or (qtype == CLOSED and _answer(str(record.get("answer", ""))) in YES_NO)


def wrong_form(record: dict[str, Any], prediction: str, qtype: str | None) -> bool:
    answer = _answer(prediction)
    if qtype == MULTIPLE_CHOICE:
        options = _options(record)
        letters = {chr(ord("a") + i) for i in range(max(len(options), 4))}
        first = answer.split(" ", 1)[0] if answer else ""
        if first in letters:
            return False
        return not any(_answer(o) and _answer(o) in answer for o in options)
    if qtype == CLOSED and _answer(str(record.get("answer", ""))) in YES_NO:
        return answer.split(" ", 1)[0] not in YES_NO if answer else True
    return False


@dataclass
class TaskAnswers:
    n: int = 0
    answers: Counter = field(default_factory=Counter)
    gold: Counter = field(default_factory=Counter)
    wrong_form: int = 0
    checkable: int = 0  # items whose form can be checked (multiple choice, or a yes/no reference)
    example_wrong: str = ""
    qtype: str | None = None
    credential: bool = False  # an item came from a credentialed source: its answer text is not printed


def prediction_text(record: dict[str, Any]) -> str:
    parts = record.get("prediction") if isinstance(record.get("prediction"), list) else []
    return " ".join(str(p["text"]) for p in parts if isinstance(p, dict) and "text" in p)


def answers_by_task(records: Iterable[dict[str, Any]]) -> dict[str, TaskAnswers]:
    """Text answers per eval task (image-only predictions are not answers and are not counted)."""
    tasks: dict[str, TaskAnswers] = {}
    for record in records:
        parts = record.get("prediction")
        if not isinstance(parts, list) or not any(isinstance(p, dict) and "text" in p for p in parts):
            continue
        name = eval_task_of(record)
        task = tasks.setdefault(name, TaskAnswers(qtype=question_type_of(record, name)))
        text = prediction_text(record)
        task.n += 1
        task.answers[_answer(text)] += 1
        task.gold[_answer(str(record.get("answer", "")))] += 1
        task.credential |= is_credentialed(record)
        task.checkable += form_checkable(record, task.qtype)
        if wrong_form(record, text, task.qtype):
            task.wrong_form += 1
            task.example_wrong = task.example_wrong or text[:40]
    return tasks


def merged(tasks: dict[str, TaskAnswers]) -> TaskAnswers:
    """All tasks as one: a model that says "no" to everything is degenerate even where each task
    has too few items to tell."""
    total = TaskAnswers(qtype=None)
    for t in tasks.values():
        total.n += t.n
        total.answers.update(t.answers)
        total.gold.update(t.gold)
        total.wrong_form += t.wrong_form
        total.checkable += t.checkable
        total.example_wrong = total.example_wrong or t.example_wrong
        total.credential |= t.credential
    return total


def degenerate_warnings(tasks: dict[str, TaskAnswers], *, show_text: bool = True) -> list[str]:
    """One line per task whose answers look degenerate (see the module docstring), and one for all
    tasks together where more than one task is present."""
    named = sorted(tasks.items())
    if len(tasks) > 1:
        named.append(("all tasks together", merged(tasks)))
    out = []
    for name, t in named:
        if t.n < DEGENERATE_MIN_N:
            continue
        quiet = t.credential and not show_text
        top, count = t.answers.most_common(1)[0]
        if count / t.n >= DEGENERATE_SHARE:
            shown = "(credentialed: text not shown)" if quiet else repr(top or "(empty)")
            gold = t.gold.get(top, 0)
            out.append(
                f"{name}: one answer, {shown}, for {count} of {t.n} items ({100 * count / t.n:.0f}%); "
                f"the reference answer is that for {gold} of them"
            )
        if t.checkable >= DEGENERATE_MIN_N and t.wrong_form / t.checkable >= WRONG_FORM_SHARE:
            if t.qtype == MULTIPLE_CHOICE:
                form = "a letter or one of the options"
            elif t.qtype == CLOSED:
                form = "yes or no"
            else:
                form = "the form their questions ask for (a letter or option; yes or no)"
            example = "" if quiet else f", e.g. {t.example_wrong!r}"
            out.append(f"{name}: {t.wrong_form} of {t.checkable} answers are not {form}{example}")
    return out
