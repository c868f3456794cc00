"""Golden tests of the scoring rules: MedMax's exact quirks and the robust parser."""

from __future__ import annotations

import orjson
import pytest

from medmax_cli.records import RecordError
from medmax_cli.score import rules_medmax, rules_robust
from medmax_cli.score.stage import Scorer, score_one, score_records
from medmax_cli.score.summary import summarise
from medmax_cli.score.tasks import VQA_TASKS
from medmax_cli.streams import ErrorPolicy, parse_jsonl
from score_helpers import vqa

# (output, gold, medmax correct, robust answer: "yes" / "no" / None = unparsed, never a guess)
CLOSED = [
    ("yes", "yes", True, "yes"),
    ("Yes.", "yes", True, "yes"),
    ("YES", "Yes", True, "yes"),
    ("no", "no", True, "no"),
    # "no" inside "normal": MedMax's substring rule calls this wrong; robust reads the opening "yes"
    ("yes, the study is normal", "yes", False, "yes"),
    ("Yes, there is no effusion.", "yes", False, "yes"),
    ("normal", "no", True, None),  # the same quirk the other way: "normal" contains "no"
    ("yes, no", "yes", False, None),  # a hedge: no verdict
    ("yes, no", "no", False, None),
    ("No. Yes", "no", False, None),
    ("yes and no", "yes", False, None),
    # issue 14: a "no" inside a sentence is not an answer
    ("No abnormality is seen", "yes", False, None),  # for "Is this study normal?"
    ("effusion and no pneumothorax", "no", True, None),
    ("No doubt, yes", "yes", False, None),
    ("", "yes", False, None),
    ("", "no", False, None),
    ("maybe", "no", False, None),
    ("eyes", "yes", True, None),  # substring of another word
    ("I don't know", "no", True, None),  # "know" contains "no"
    ("(No)", "no", True, "no"),
]


@pytest.mark.parametrize(("output", "gold", "medmax", "robust"), CLOSED)
def test_closed_rules(output, gold, medmax, robust):
    assert rules_medmax.closed_correct(output, gold) is medmax
    assert rules_robust.closed_answer(output) == robust
    assert rules_robust.closed_correct(output, gold) is (robust == gold.lower())


def test_closed_needs_yes_or_no_gold():
    with pytest.raises(ValueError, match="yes or no"):
        rules_medmax.closed_correct("yes", "left")
    with pytest.raises(ValueError, match="yes or no"):
        rules_robust.closed_correct("yes", "left")


OPTIONS = ["CT", "MRI", "X-ray", "Chest X-ray"]
# (output, gold, medmax, robust parsed letter)
MC = [
    ("B", "B", True, "B"),
    (" b ", "B", True, "B"),
    ("(B)", "B", False, "B"),
    ("B.", "B", False, "B"),
    ("The answer is C", "C", False, "C"),
    ("The answer is C", "B", False, "C"),
    ("", "A", False, None),
    ("B or C", "B", False, None),  # two letters: no answer, never a guess
    ("MRI", "B", False, "B"),  # unique option text
    ("It is an mri scan.", "B", False, "B"),
    ("Chest X-ray", "D", False, "D"),  # "X-ray" inside the longer option: the longer exact match
    ("CT or MRI", "A", False, None),  # two option texts
    ("A CT scan", "A", False, "A"),  # the article "A", then "CT": option A by its text
    ("A MRI scan", "B", False, "B"),  # issue 14: an opening article "A" is not option A
    ("A. MRI", "B", False, None),  # letter A and text B disagree: no answer
    ("I think it is C", "C", False, "C"),  # the pronoun "I" is no letter either
    ("E", "A", False, None),  # outside the option range
    ("ctx", "A", False, None),  # whole words only
]


@pytest.mark.parametrize(("output", "gold", "medmax", "parsed"), MC)
def test_multiple_choice_rules(output, gold, medmax, parsed):
    assert rules_medmax.mc_correct(output, gold) is medmax
    assert rules_robust.mc_answer(output, OPTIONS, gold) == parsed
    assert rules_robust.mc_correct(output, gold, OPTIONS) is (parsed == gold)


def test_multiple_choice_without_options_uses_letters_only():
    assert rules_robust.mc_answer("(c)", None, "C") == "C"
    assert rules_robust.mc_answer("The answer is D", None, "A") == "D"
    assert rules_robust.mc_answer("MRI", None, "B") is None


def test_open_exact_normalises_case_and_punctuation_only():
    assert rules_robust.open_exact("Left hemisphere.", "left hemisphere")
    assert not rules_robust.open_exact("lungs", "lung")
    assert not rules_robust.open_exact("", "")


def test_twelve_tasks_defined_once():
    assert len(VQA_TASKS) == 12
    assert sum(qt == "multiple_choice" for qt, _ in VQA_TASKS.values()) == 3
    assert sum(qt == "open" for qt, _ in VQA_TASKS.values()) == 4


@pytest.mark.parametrize("rules", ["medmax", "robust"])
def test_stage_lines(rules):
    records = [
        vqa("a", "vqa_rad_closed", "yes", "yes, normal"),
        vqa("b", "pmc_vqa", "B", "(B)", options=OPTIONS),
        vqa("c", "vqa_rad_closed", "no", None),  # missing prediction
        vqa("d", "slake_open", "liver", "Liver"),
        vqa("e", "slake_open", "liver", ""),
    ]
    lines = {x["id"]: x for x in score_records(records, scorer=Scorer(rules=rules))}
    robust = rules == "robust"
    assert lines["a"]["score"] == (1.0 if robust else 0.0)
    assert lines["b"]["score"] == (1.0 if robust else 0.0)
    assert lines["c"]["status"] == "missing" and lines["c"]["score"] == 0.0  # stays in n with score 0
    # open with no judge: unscored (robust: exact match needs no judge)
    assert lines["d"]["status"] == ("scored" if robust else "unscored")
    assert lines["d"]["score"] == (1.0 if robust else None)
    # robust: an empty answer is wrong without asking anyone; medmax sends it to the judge as
    # MedMax does, so with no judge it is unscored
    assert lines["e"]["score"] == (0.0 if robust else None)
    assert all(x["rules"] == f"{rules}@2" for x in lines.values())


def test_duplicate_id_is_an_error():
    records = [vqa("a", "vqa_rad_closed", "yes", "yes"), vqa("a", "vqa_rad_closed", "yes", "no")]
    with pytest.raises(RecordError, match="duplicate id"):
        list(score_records(records, scorer=Scorer()))


def test_duplicate_id_skipped_is_counted():
    policy = ErrorPolicy("skip")
    records = [vqa("a", "vqa_rad_closed", "yes", "yes"), vqa("a", "vqa_rad_closed", "yes", "no")]
    lines = list(score_records(records, scorer=Scorer(), policy=policy))
    assert [x["score"] for x in lines] == [1.0]
    assert sum(policy.report.dropped.values()) == 1


def test_missing_id_is_an_error():
    record = vqa("a", "vqa_rad_closed", "yes", "yes")
    del record["id"]
    with pytest.raises(RecordError, match="no 'id'"):
        list(score_records([record], scorer=Scorer()))


def test_expected_items_without_prediction_score_zero():
    predictions = [vqa("a", "vqa_rad_closed", "yes", "yes")]
    expected = [vqa("a", "vqa_rad_closed", "yes", None), vqa("b", "vqa_rad_closed", "no", None)]
    lines = list(score_records(predictions, scorer=Scorer(), expected=expected))
    assert [(x["id"], x["score"], x["status"]) for x in lines] == [
        ("a", 1.0, "scored"),
        ("b", 0.0, "missing"),
    ]


def test_closed_gold_not_yes_no_is_a_record_error():
    with pytest.raises(RecordError, match="yes or no"):
        score_one(vqa("a", "vqa_rad_closed", "left", "left"), Scorer())


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("pmc_vqa_mcq", "pmc_vqa"),  # medmax fetch medmax-eval: f"{task_name}_{question_type}"
        ("PMC-VQA", "pmc_vqa"),
        ("pathmmu_mcq", "pathmmu"),
        ("VQARAD_open", "vqa_rad_open"),
        ("probmed_closed", "probmed_closed"),
        ("vqa_rad_mcq", "vqa_rad_mcq"),  # not a multiple-choice task: left alone
        ("captioning_pmc", "captioning_pmc"),
    ],
)
def test_eval_task_spellings(spelling, name):
    from medmax_cli.score.tasks import canonical_task, eval_task_of

    assert canonical_task(spelling) == name
    assert eval_task_of({"meta": {"eval_task": spelling}}) == name


def test_robust_unparsed_is_counted_not_guessed():
    records = [
        vqa("a", "vqa_rad_closed", "yes", "No abnormality is seen"),
        vqa("b", "vqa_rad_closed", "no", "yes and no"),
        vqa("c", "pmc_vqa", "A", "A MRI scan", options=OPTIONS),
        vqa("d", "vqa_rad_closed", "no", "No."),
    ]
    lines = {x["id"]: x for x in score_records(records, scorer=Scorer(rules="robust"))}
    assert [lines[k]["status"] for k in "abcd"] == ["unparsed", "unparsed", "scored", "scored"]
    assert lines["a"]["score"] is None and lines["a"]["parsed"] is None
    assert lines["c"]["score"] == 0.0 and lines["c"]["parsed"] == "B"  # the article "A" is no letter
    summary = summarise(lines.values())
    closed = summary["tasks"]["vqa_rad_closed"]
    assert (closed["n"], closed["scored"], closed["unparsed"], closed["mean"]) == (3, 1, 2, 1.0)
    assert closed["mean_all_items"] == pytest.approx(1 / 3)


def test_robust_unparsed_goes_to_the_judge_when_configured():
    from medmax_cli.score.judge import Judge

    asked = []

    def chat(messages):
        asked.append(messages[-1]["content"])
        return "Correctness: 1"

    judge = Judge(chat, model="j", protocol="robust")
    records = [
        vqa("a", "vqa_rad_closed", "no", "No abnormality is seen"),
        vqa("b", "pmc_vqa", "B", "B or maybe C", options=OPTIONS),
        vqa("c", "vqa_rad_closed", "yes", "Yes."),  # parsed: no call
    ]
    lines = {x["id"]: x for x in score_records(records, scorer=Scorer(rules="robust", judge=judge))}
    assert [(lines[k]["score"], lines[k]["status"], lines[k]["parsed"]) for k in "abc"] == [
        (1.0, "scored", "judge"),
        (1.0, "scored", "judge"),
        (1.0, "scored", "yes"),
    ]
    assert len(asked) == 2 and "Ground-truth answer: B. MRI" in asked[1]  # the option's text too


def test_missing_id_is_a_record_error_under_skip(tmp_path, medmax):
    record = vqa("a", "vqa_rad_closed", "yes", "yes")
    del record["id"]
    data = orjson.dumps(record) + b"\n" + orjson.dumps(vqa("b", "vqa_rad_closed", "yes", "yes")) + b"\n"
    rejects = tmp_path / "rejects.jsonl"
    result = medmax("score", "--on-error", "skip", "--rejects", str(rejects), "-q", input=data)
    assert [x["id"] for x in parse_jsonl(result.stdout)] == ["b"]
    assert "no 'id'" in orjson.loads(rejects.read_bytes().splitlines()[0])["reason"]
    failed = medmax("score", "-q", input=data, check=False)
    assert failed.returncode == 1 and b"id" in failed.stderr and b"Traceback" not in failed.stderr


def test_rejected_prediction_stays_in_n_with_expect():
    predictions = [vqa("a", "vqa_rad_closed", "yes", "yes"), vqa("b", "vqa_rad_closed", "left", "yes")]
    expected = [vqa("a", "vqa_rad_closed", "yes", None), vqa("b", "vqa_rad_closed", "left", None)]
    policy = ErrorPolicy("skip")
    lines = list(score_records(predictions, scorer=Scorer(), policy=policy, expected=expected))
    assert [(x["id"], x["status"], x["score"]) for x in lines] == [
        ("a", "scored", 1.0),
        ("b", "rejected", None),
    ]
    assert "yes or no" in lines[1]["reason"]
    summary = summarise(lines)
    assert (
        summary["tasks"]["vqa_rad_closed"]["n"] == 2 and summary["tasks"]["vqa_rad_closed"]["rejected"] == 1
    )
    assert summary["macro"]["complete"] is False
