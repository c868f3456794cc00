"""The judge: strict parsing, retries of unparseable verdicts, temperature 0, the verdict cache.

Runs against a small OpenAI-compatible fake on 127.0.0.1 started and stopped by a fixture.
"""

from __future__ import annotations

import orjson
import pytest

from fakes.llm_server import FakeLLM
from medmax_cli.score.judge import Judge, NotCached, VerdictCache, openai_chat, parse_correctness, parse_pair
from medmax_cli.score.stage import Scorer, score_records
from medmax_cli.score.summary import summarise
from medmax_cli.streams import parse_jsonl
from score_helpers import vqa


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Correctness: 1", 1),
        ("Correctness: 0", 0),
        ("correctness:1.", 1),
        ("The answer matches.\nCorrectness: **1**", 1),
        ("Correctness: 1\nCorrectness: 1", 1),  # repeated, consistent
        ("Correctness: 1 ... on reflection Correctness: 0", None),  # contradicts itself
        ("Correctness: 10", None),
        ("Correctness: 0.5", None),
        ("correct", None),
        ("1", None),
        ("", None),
    ],
)
def test_parse_correctness(text, verdict):
    assert parse_correctness(text) == verdict


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("8 6\nAssistant 2 is less detailed.", (8.0, 6.0)),
        ("8,6", (8.0, 6.0)),
        ("`7 7`", (7.0, 7.0)),
        ("\n9.5 4\n", (9.5, 4.0)),
        ("Assistant 1: 8, Assistant 2: 6", None),
        ("11 5", None),
        ("0 5", None),
        ("8", None),
        ("", None),
    ],
)
def test_parse_pair(text, pair):
    assert parse_pair(text) == pair


def judge_reply(body: dict) -> str:
    """A scripted judge: a verdict per model answer (the retry turn carries a reminder)."""
    messages = body["messages"]
    prompt = messages[1]["content"]
    reminded = len(messages) > 2
    if "[Assistant 2]" in prompt:
        return "8 6\nAssistant 2 misses the location." if "vague" in prompt else "Both are fine."
    if "Model answer: liver" in prompt:
        return "Correctness: 1"
    if "Model answer: kidney" in prompt:
        return "Correctness: 0"
    if "Model answer: flaky" in prompt:
        return "Correctness: 1" if reminded else "I would say it is mostly right."
    return "The answer seems plausible."  # never parses


@pytest.fixture
def fake_judge():
    """The shared OpenAI-compatible fake (tests/fakes/llm_server.py) answering as a judge."""
    with FakeLLM(judge_reply) as server:
        server.bodies = server.requests
        yield server


def _items():
    return [
        vqa("ok", "vqa_rad_open", "liver", "liver"),
        vqa("wrong", "vqa_rad_open", "liver", "kidney"),
        vqa("flaky", "vqa_rad_open", "liver", "flaky"),
        vqa("bad", "vqa_rad_open", "liver", "garbage"),
        vqa("closed", "vqa_rad_closed", "yes", "yes"),
    ]


def test_judge_verdicts_retries_and_cache(fake_judge, tmp_path):
    cache = VerdictCache(tmp_path / "cache")
    judge = Judge(openai_chat(fake_judge.url, "judge-a"), model="judge-a", cache=cache, retries=2)
    lines = {x["id"]: x for x in score_records(_items(), scorer=Scorer(judge=judge))}
    assert (lines["ok"]["score"], lines["wrong"]["score"], lines["flaky"]["score"]) == (1.0, 0.0, 1.0)
    assert lines["flaky"]["judge"]["attempts"] == 2
    # unparseable after 1 + 2 retries: reported, unscored, never dropped
    assert lines["bad"]["status"] == "judge_failed" and lines["bad"]["score"] is None
    assert lines["bad"]["judge"] == {"raw": "The answer seems plausible.", "attempts": 3, "cached": False}
    assert "judge" not in lines["closed"]  # rules need no judge
    assert len(fake_judge.bodies) == 1 + 1 + 2 + 3
    assert all(body["temperature"] == 0 and body["model"] == "judge-a" for body in fake_judge.bodies)
    # a retry carries the bad reply and a reminder of the format
    assert fake_judge.bodies[3]["messages"][2] == {
        "role": "assistant",
        "content": "I would say it is mostly right.",
    }
    assert "Correctness: 1" in fake_judge.bodies[3]["messages"][3]["content"]
    summary = summarise(lines.values())
    assert summary["tasks"]["vqa_rad_open"]["judge_failed"] == 1
    assert summary["tasks"]["vqa_rad_open"]["coverage"] == 0.75
    cache.close()

    # rerun offline: no endpoint, same verdicts from the cache; the failed one is unscored
    before = len(fake_judge.bodies)
    cache = VerdictCache(tmp_path / "cache")
    assert len(cache) == 3
    offline = Judge(None, model="judge-a", cache=cache)
    again = {x["id"]: x for x in score_records(_items(), scorer=Scorer(judge=offline))}
    assert len(fake_judge.bodies) == before
    assert [again[k]["score"] for k in ("ok", "wrong", "flaky")] == [1.0, 0.0, 1.0]
    assert again["ok"]["judge"]["cached"] is True
    assert again["bad"]["status"] == "unscored" and "cache" in again["bad"]["reason"]
    # the cache is keyed by the judge model: another model's verdicts are not reused
    with pytest.raises(NotCached):
        Judge(None, model="judge-b", cache=cache).correctness("ok", "Is there a lesion?", "liver", "liver")
    cache.close()


def test_visual_chat_relative_score(fake_judge):
    record = {
        "id": "chat1",
        "task": "visual_chat",
        "domain": "radiology",
        "images": [{"path": "x.png"}],
        "turns": [
            {"role": "user", "content": [{"image": 0}, {"text": "What does the CT show?"}]},
            {"role": "assistant", "content": [{"text": "A 3 cm mass in the left lobe."}]},
        ],
        "meta": {"caption": "CT of the liver.", "mentions": ["Figure 1 shows a mass."]},
    }
    good = {**record, "prediction": [{"text": "A vague shadow."}]}
    bad = {**record, "id": "chat2", "prediction": [{"text": "Unclear."}]}
    judge = Judge(openai_chat(fake_judge.url, "j"), model="j", retries=1)
    lines = list(score_records([good, bad], scorer=Scorer(judge=judge)))
    assert lines[0]["score"] == pytest.approx(6 / 8) and lines[0]["metric"] == "relative_score"
    assert lines[1]["status"] == "judge_failed"
    assert lines[0]["extra"] == {"visual_chat_radiology": pytest.approx(6 / 8)}  # per-domain bucket
    prompt = fake_judge.bodies[0]["messages"][1]["content"]
    assert "[Context]\nCT of the liver.\nFigure 1 shows a mass." in prompt
    assert "[Assistant 1]\nA 3 cm mass in the left lobe." in prompt


def test_score_command_with_judge_then_offline(fake_judge, tmp_path, medmax):
    data = b"".join(orjson.dumps(r) + b"\n" for r in _items())
    cache = tmp_path / "verdicts"
    args = [
        "score",
        "--rules",
        "robust",
        "--judge-model",
        "judge-a",
        "--judge-cache",
        str(cache),
        "--summary",
    ]
    online = medmax(*args, str(tmp_path / "s1.json"), "--judge-url", fake_judge.url, input=data)
    n_requests = len(fake_judge.bodies)
    offline = medmax(*args, str(tmp_path / "s2.json"), input=data)
    assert len(fake_judge.bodies) == n_requests  # the rerun is offline
    first = parse_jsonl(online.stdout)
    second = parse_jsonl(offline.stdout)
    assert [x["score"] for x in first][:3] == [x["score"] for x in second][:3] == [1.0, 0.0, 1.0]
    assert b"judge_failed 1" in online.stderr
    assert b"judge calls 0" in offline.stderr
    # the summary says what decided the verdicts, not how they were fetched: the same bytes offline
    # except the one item whose verdict never parsed (unscored offline instead of judge_failed)
    s1 = orjson.loads((tmp_path / "s1.json").read_bytes())
    s2 = orjson.loads((tmp_path / "s2.json").read_bytes())
    assert s1["provenance"] == s2["provenance"]
    assert s1["tasks"]["vqa_rad_open"]["mean"] == s2["tasks"]["vqa_rad_open"]["mean"]
    assert s1["provenance"]["judge"]["model"] == "judge-a"
    assert s1["tasks"]["vqa_rad_open"]["judge_failed"] == 1


def test_judge_url_needs_a_model(medmax):
    result = medmax("score", "--judge-url", "http://127.0.0.1:9/v1", input=b"", check=False)
    assert result.returncode == 2 and b"--judge-model" in result.stderr


def test_threaded_scoring_keeps_order_and_errors(fake_judge, tmp_path):
    from medmax_cli.records import RecordError
    from medmax_cli.streams import ErrorPolicy

    items = _items() * 1 + [
        vqa(f"more{i}", "vqa_rad_open", "liver", ["liver", "kidney"][i % 2]) for i in range(9)
    ]
    judge = Judge(openai_chat(fake_judge.url, "j"), model="j", retries=0)
    serial = list(score_records(items, scorer=Scorer(judge=judge)))
    threaded = list(score_records(items, scorer=Scorer(judge=judge), workers=4))
    assert [(x["id"], x["score"], x["status"]) for x in threaded] == [
        (x["id"], x["score"], x["status"]) for x in serial
    ]
    bad = [*items[:3], vqa("nogold", "vqa_rad_closed", "left", "yes"), items[0]]  # bad gold, then a duplicate
    with pytest.raises(RecordError, match="yes or no"):
        list(score_records(bad, scorer=Scorer(judge=judge), workers=4))
    policy = ErrorPolicy("skip")
    kept = list(score_records(bad, scorer=Scorer(judge=judge), policy=policy, workers=4))
    assert [x["id"] for x in kept] == ["ok", "wrong", "flaky"]
    assert sum(policy.report.dropped.values()) == 2


def test_server_faults(fake_judge, tmp_path, medmax):
    fake_judge.script.append((429, None, {"Retry-After": "0"}))  # retried by the HTTP client
    judge = Judge(openai_chat(fake_judge.url, "j"), model="j")
    assert judge.correctness("a", "q", "liver", "liver").score == 1.0
    assert len(fake_judge.requests) == 2
    # an endpoint that does not exist stops the run (exit 1), it does not score anything as 0
    data = orjson.dumps(vqa("ok", "vqa_rad_open", "liver", "the liver")) + b"\n"  # not exact: judged
    result = medmax(
        "score",
        "--rules",
        "robust",
        "--judge-url",
        fake_judge.url.replace("/v1", "/nope"),
        "--judge-model",
        "j",
        "--judge-cache",
        str(tmp_path / "c"),
        input=data,
        check=False,
    )
    assert result.returncode == 1 and b"judge" in result.stderr and result.stdout == b""
