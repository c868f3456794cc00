"""Golden tests of `--rules medmax`'s judge: MedMax's prompt bytes and MedMax's verdict parsing.

The expected strings and the parsing table are restated from MedMax's released scorer
(github.com/Hritikbansal/medmax at 20b7055): evaluation/eval_utils.py `compare_messages_gen` (the
open-VQA grader; its f-string's `\\n` escapes and 8-space indentation give the bytes below),
evaluation/vqa.py `run_vqa_eval` (question = the row's `prompt`, the model's answer lower-cased,
`'Correctness: 1' in reply` then `'Correctness: 0' in reply`, else `continue`), and
evaluation/visual_chat.py / evaluation/mm_out.py `conv_to_str` and the summary
(`gpt_eval.split('\\n')[0].strip().split(' ')`, relative score mean(s2/s1) x 100).
"""

from __future__ import annotations

import pytest

from fakes.llm_server import FakeLLM
from medmax_cli.score.judge import (
    Judge,
    VerdictCache,
    medmax_chat_messages,
    medmax_mm_out_messages,
    medmax_open_messages,
    openai_chat,
    parse_correctness_medmax,
    parse_pair_medmax,
)
from medmax_cli.score.stage import Scorer, score_records
from medmax_cli.score.summary import markdown_table, summarise
from medmax_cli.streams import parse_jsonl
from score_helpers import vqa

_TASK = (
    "Given a question about an medical image, there is a correct answer to the question and an answer "
    "to be determined. If the answer to be determined matches the correct answer or is a good enough "
    "answer to the question, output 1; otherwise output 0. Evaluate the answer to be determined (1 or 0)."
)
# eval_utils.py compare_messages_gen("Q?", "GOLD", "pred"), restated line by line
OPEN_GOLDEN = "\n".join(
    [
        "",
        "        " + _TASK,
        "",
        "        Question:",
        "        - question about the medical image: Q?",
        "",
        "",
        "        Answers:",
        "        - correct answer(ground truth): GOLD",
        "",
        "            answer to be determined: pred",
        "",
        "",
        "        Task:",
        "",
        "        - " + _TASK,
        "",
        "        Output Format:",
        "        Correctness: your answer",
        "",
        "        ",
    ]
)

_REVIEW = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above. The user asks the question on observing an image. For your reference, "
    "the visual content in the image is represented with caption describing the same image.\n"
    "  Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each "
    "assistant receives an overall score on a scale of 1 to 10, where a higher score indicates better "
    "overall performance.\n"
    "  Please first output a single line containing only two values indicating the scores for Assistant "
    "1 and 2, respectively. The two scores are separated by a space. In the subsequent line, please "
    "provide a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring "
    "that the order in which the responses were presented does not affect your judgment."
)
SYSTEM_GOLDEN = "'You are a helpful and precise assistant for checking the quality of the answer."
TAIL = "[Assistant 1]\nREF\n\n[End of Assistant 1]\n\n[Assistant 2]\nOUT\n\n[End of Assistant 2]\n\n"


def test_open_prompt_bytes_are_medmax():
    messages = medmax_open_messages("Q?", "GOLD", "pred")
    assert messages == [{"role": "user", "content": OPEN_GOLDEN}]  # one user message, no system


def test_chat_and_mm_out_prompt_bytes_are_medmax():
    chat = medmax_chat_messages(
        "Figure 2", "CT of the chest.", "as shown in Figure 2", "Q <image>", "REF", "OUT"
    )
    assert chat[0] == {"role": "system", "content": SYSTEM_GOLDEN}
    assert chat[1] == {
        "role": "user",
        "content": "[Context]\nFigure Caption:\nFigure 2: CT of the chest.\n\nFigure Context:\n\t- as shown in "
        "Figure 2\n\n[Question]\nQ <image>\n\n" + TAIL + "[System]\n" + _REVIEW + "\n\n",
    }
    mm = medmax_mm_out_messages("Q", "REF", "OUT")
    assert mm == [
        {"role": "system", "content": SYSTEM_GOLDEN},
        {"role": "user", "content": "[Context]\n[Question]\nQ\n\n" + TAIL + "[System]\n" + _REVIEW + "\n\n"},
    ]


# vqa.py: `if 'Correctness: 1' in r: 1 elif 'Correctness: 0' in r: 0 else: continue` (None = dropped)
CORRECTNESS = [
    ("Correctness: 1", 1),
    ("Correctness: 0", 0),
    ("Correctness: 10", 1),  # substring: "1" is in "10"
    ("Correctness: 1.0", 1),
    ("Correctness: 0.5", 0),
    ("Correctness: 01", 0),
    ("Correctness: 0 ... no, Correctness: 1", 1),  # "1" is tested first
    ("The answer is right.\nCorrectness: 1\n", 1),
    ("correctness: 1", None),  # case-sensitive
    ("Correctness:1", None),  # the space is part of the test
    ("**Correctness:** 1", None),
    ("Correctness: **1**", None),
    ("1", None),
    ("", None),
]


@pytest.mark.parametrize(("reply", "verdict"), CORRECTNESS)
def test_correctness_parsing_table(reply, verdict):
    assert parse_correctness_medmax(reply) == verdict


# visual_chat.py / mm_out.py: gpt_eval.strip().split('\n')[0].strip().split(' ') -> (s1, s2), float()
PAIRS = [
    ("8 6\nAssistant 2 is vaguer.", (8.0, 6.0)),
    ("  7 7  \n", (7.0, 7.0)),
    ("9.5 4", (9.5, 4.0)),
    ("8  6", None),  # split(' ') gives three fields: MedMax's unpacking fails
    ("8,6", None),
    ("8 6 5", None),
    ("Assistant 1: 8", None),
    ("0 5", None),  # s2/s1 divides by zero in MedMax
    ("8", None),
    ("", None),
]


@pytest.mark.parametrize(("reply", "pair"), PAIRS)
def test_pair_parsing_table(reply, pair):
    assert parse_pair_medmax(reply) == pair


def _reply(body: dict) -> str:
    """A scripted judge keyed on the model answer in MedMax's open prompt."""
    prompt = body["messages"][-1]["content"]
    for answer, reply in (
        ("liver\n", "Correctness: 1"),
        ("kidney\n", "Correctness: 0"),
        ("ten\n", "Correctness: 10"),
        ("chatty\n", "I think it is right. Correctness - 1"),
    ):
        if f"answer to be determined: {answer}" in prompt:
            return reply
    return "no verdict"


def test_medmax_judge_end_to_end(tmp_path):
    prompt = "Answer the question based on this image.\nQuestion: Which organ is shown?  \nAnswer:"
    items = [
        vqa("ok", "slake_open", "Liver", "LIVER"),  # MedMax lower-cases the answer, not the gold
        vqa("wrong", "slake_open", "liver", "kidney"),
        vqa("ten", "slake_open", "liver", "ten"),
        vqa("chatty", "slake_open", "liver", "chatty"),
    ]
    for item in items:
        item["meta"]["eval_prompt"] = prompt
    with FakeLLM(_reply) as server:
        cache = VerdictCache(tmp_path / "cache")
        judge = Judge(openai_chat(server.url, "j"), model="j", cache=cache, retries=5, protocol="medmax")
        lines = {x["id"]: x for x in score_records(items, scorer=Scorer(rules="medmax", judge=judge))}
        cache.close()
        bodies = list(server.requests)
    # one call per item, the retries option notwithstanding: MedMax asks once and a reply it
    # cannot score is dropped, never re-asked
    assert len(bodies) == 4
    first = bodies[0]
    assert first["messages"] == medmax_open_messages(prompt, "Liver", "liver")
    assert first["temperature"] == 0 and "max_tokens" not in first  # a verdict is never cut
    assert [lines[k]["score"] for k in ("ok", "wrong", "ten")] == [1.0, 0.0, 1.0]
    assert lines["chatty"]["status"] == "dropped" and lines["chatty"]["score"] is None
    assert lines["chatty"]["judge"]["attempts"] == 1
    summary = summarise(lines.values())
    task = summary["tasks"]["slake_open"]
    assert (task["n"], task["scored"], task["dropped"]) == (4, 3, 1)
    assert task["mean"] == pytest.approx(2 / 3)  # MedMax's number: the dropped item left out
    assert task["mean_all_items"] == pytest.approx(2 / 4)  # every item, the dropped one as 0
    assert "Dropped" in markdown_table(summary) and "slake_open 1" in markdown_table(summary)

    # rerun offline: the dropped verdict is cached too, so the rerun gives the same lines
    cache = VerdictCache(tmp_path / "cache")
    offline = Judge(None, model="j", cache=cache, protocol="medmax")
    again = {x["id"]: x for x in score_records(items, scorer=Scorer(rules="medmax", judge=offline))}
    cache.close()
    assert [(again[k]["score"], again[k]["status"]) for k in lines] == [
        (lines[k]["score"], lines[k]["status"]) for k in lines
    ]
    assert offline.dropped == 1


def test_question_without_eval_prompt_is_the_prompt_as_asked():
    """Records not from the MedMax eval parquet: the user turn as the model was asked it."""
    seen = []
    judge = Judge(lambda m: seen.append(m) or "Correctness: 1", model="j", protocol="medmax")
    item = vqa("a", "vqa_rad_open", "liver", "Liver", question="What organ?\n")
    list(score_records([item], scorer=Scorer(rules="medmax", judge=judge)))
    assert seen[0] == medmax_open_messages("What organ?\n", "liver", "liver")


def test_empty_answer_is_judged_as_medmax_does():
    seen = []
    judge = Judge(lambda m: seen.append(m) or "Correctness: 0", model="j", protocol="medmax")
    (line,) = score_records([vqa("a", "vqa_rad_open", "liver", "")], scorer=Scorer(judge=judge))
    assert len(seen) == 1 and line["score"] == 0.0 and line["status"] == "scored"


def test_complete_counts_dropped_as_medmax_does():
    """`complete` asks every item to be scored, or dropped as MedMax drops it."""
    from medmax_cli.score.tasks import VQA_TASKS

    lines = [
        {"id": t, "eval_task": t, "question_type": q, "metric": "accuracy", "score": 1.0, "status": "scored"}
        for t, (q, _) in VQA_TASKS.items()
    ]
    extra = {"id": "d", "eval_task": "slake_open", "metric": "accuracy", "score": None, "status": "dropped"}
    assert summarise([*lines, extra])["macro"]["complete"] is True
    unparsed = {**extra, "status": "unparsed"}
    assert summarise([*lines, unparsed])["macro"]["complete"] is False


def test_score_command_medmax_protocol(tmp_path, medmax):
    import orjson

    items = [vqa("ok", "slake_open", "liver", "liver"), vqa("chatty", "slake_open", "liver", "chatty")]
    data = b"".join(orjson.dumps(x) + b"\n" for x in items)
    with FakeLLM(_reply) as server:
        result = medmax(
            "score",
            "--judge-url",
            server.url,
            "--judge-model",
            "j",
            "--judge-cache",
            str(tmp_path / "cache"),
            "--summary",
            str(tmp_path / "s.json"),
            input=data,
        )
        assert len(server.requests) == 2 and len(server.requests[0]["messages"]) == 1
    lines = parse_jsonl(result.stdout)
    assert [x["status"] for x in lines] == ["scored", "dropped"]
    assert b"dropped 1" in result.stderr and b"Dropped" in result.stderr
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    judge = summary["provenance"]["judge"]
    assert (judge["protocol"], judge["temperature"], judge["seed"], judge["retries"]) == ("medmax", 0.0, 0, 0)
    assert judge["prompts"][0] == "medmax-open-v1"
    assert summary["tasks"]["slake_open"]["dropped"] == 1
