"""A judge that fails is never a verdict: judge_error, never cached, asked again by the next run.

Three outcomes of a judge request (docs/score.md "Judge failures"): a verdict; MedMax's parse drop
(`dropped`, cached: MedMax's `run_vqa_eval` skips a reply with neither `Correctness: 1` nor
`Correctness: 0`, evaluation/vqa.py:46-51); and a failure: the request got no reply (an HTTP
error status, 400 included; an answer with no `choices`, an empty list or `content: null`; a
transport error or timeout). MedMax crashes on a failure (`response.choices[0].message.content`,
then `'Correctness: 1' in None`), so it has no number for the item and neither do we.

The fake judge is tests/fakes/llm_server.py (OpenAI chat-completions answers on 127.0.0.1) with
raw answers queued in front of it: a 200 whose body has `content: null`, `choices: []` or no
`choices` at all, shapes an OpenAI-compatible server really sends on an error or a filtered reply.
"""

from __future__ import annotations

from collections import deque

import httpx
import orjson
import pytest

from fakes.llm_server import FakeLLM, chat_completion
from medmax_cli.http import HttpClient, RetryPolicy
from medmax_cli.llm import ChatClient, LLMSettings, ReplyCache, ReplyRejected
from medmax_cli.score.judge import (
    DOWN_AFTER,
    Judge,
    JudgeFailure,
    VerdictCache,
    openai_chat,
)
from medmax_cli.score.stage import Scorer, score_records
from medmax_cli.score.summary import markdown_table, summarise
from medmax_cli.streams import parse_jsonl
from score_helpers import vqa

NULL_CONTENT = orjson.dumps(
    {"choices": [{"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "stop"}]}
)
EMPTY_CHOICES = orjson.dumps({"id": "x", "object": "chat.completion", "choices": []})
NO_CHOICES = orjson.dumps({"error": {"message": "upstream overloaded"}})


class FaultyJudge(FakeLLM):
    """FakeLLM whose next answers can be raw (status, body) pairs, consumed first, in order."""

    def __init__(self, responder):
        super().__init__(responder)
        self.raw: deque[tuple[int, bytes]] = deque()

    def _answer(self, path, raw, headers):
        with self._lock:
            queued = self.raw.popleft() if self.raw else None
        if queued is None:
            return super()._answer(path, raw, headers)
        with self._lock:
            self.requests.append(orjson.loads(raw))
            self.headers.append(headers)
        return queued[0], queued[1], {}


def medmax_judge(body: dict) -> str:
    """MedMax's open prompt holds `answer to be determined: <lower-cased model answer>`."""
    prompt = body["messages"][-1]["content"]
    if "determined: liver" in prompt:
        return "Correctness: 1"
    if "determined: kidney" in prompt:
        return "Correctness: 0"
    return "I cannot tell."  # a reply MedMax's parser cannot score: a drop


def _items():
    return [
        vqa("e400", "vqa_rad_open", "liver", "liver"),
        vqa("enull", "vqa_rad_open", "liver", "kidney"),
        vqa("eempty", "vqa_rad_open", "liver", "liver"),
        vqa("enochoices", "vqa_rad_open", "liver", "liver"),
        vqa("ok", "vqa_rad_open", "liver", "liver"),
        vqa("drop", "vqa_rad_open", "liver", "unclear"),
        vqa("closed", "vqa_rad_closed", "yes", "yes"),
    ]


def _score(url, cache_dir):
    cache = VerdictCache(cache_dir)
    judge = Judge(openai_chat(url, "j"), model="j", cache=cache, protocol="medmax")
    try:
        lines = {x["id"]: x for x in score_records(_items(), scorer=Scorer(rules="medmax", judge=judge))}
    finally:
        cache.close()
    return lines, judge


def test_medmax_judge_failures_are_not_drops_and_a_rerun_gives_verdicts(tmp_path):
    with FaultyJudge(medmax_judge) as server:
        server.raw.extend(
            [
                (400, b'{"error": {"message": "context length"}}'),
                (200, NULL_CONTENT),
                (200, EMPTY_CHOICES),
                (200, NO_CHOICES),
            ]
        )
        lines, judge = _score(server.url, tmp_path / "cache")
        failed = ["e400", "enull", "eempty", "enochoices"]
        for rid in failed:
            line = lines[rid]
            assert line["status"] == "judge_error" and line["score"] is None, line
            assert "not cached" in line["reason"] and line["judge"]["error"]
        assert "HTTP 400" in lines["e400"]["judge"]["error"]
        assert "NoneType" in lines["enull"]["judge"]["error"]
        assert "empty 'choices'" in lines["eempty"]["judge"]["error"]
        assert "no 'choices'" in lines["enochoices"]["judge"]["error"]
        # MedMax's parse drop is unchanged: a reply with no verdict, dropped and cached
        assert lines["drop"]["status"] == "dropped" and lines["drop"]["judge"]["raw"] == "I cannot tell."
        assert lines["ok"]["score"] == 1.0 and lines["closed"]["score"] == 1.0
        assert (judge.errors, judge.dropped, judge.calls) == (4, 1, 6)

        summary = summarise(lines.values())
        task = summary["tasks"]["vqa_rad_open"]
        assert (task["n"], task["scored"], task["judge_error"], task["dropped"]) == (6, 1, 4, 1)
        assert task["mean"] == 1.0  # the one verdict; a failure is neither right nor wrong
        assert task["mean_all_items"] is None  # no all-items figure with failures folded in as 0
        assert summary["macro"]["judge_errors"] == 4 and summary["macro"]["complete"] is False
        assert "Judge_error" in markdown_table(summary)
        # nothing but replies went to the cache: the two answers, not the four failures
        cached = [orjson.loads(x) for x in (tmp_path / "cache" / "verdicts.jsonl").read_bytes().splitlines()]
        assert sorted(e["item"] for e in cached) == ["drop", "ok"]

        # the judge is healthy again: the failures are asked again, the rest comes from the cache
        before = len(server.requests)
        again, judge2 = _score(server.url, tmp_path / "cache")
        assert len(server.requests) - before == 4 and judge2.calls == 4
        assert {rid: again[rid]["score"] for rid in failed} == {
            "e400": 1.0,
            "enull": 0.0,
            "eempty": 1.0,
            "enochoices": 1.0,
        }
        assert all(again[rid]["status"] == "scored" for rid in failed)
        assert again["drop"]["status"] == "dropped" and again["drop"]["judge"]["cached"] is True
        summary = summarise(again.values())
        assert summary["macro"]["judge_errors"] == 0
        assert summary["tasks"]["vqa_rad_open"]["mean"] == 0.8  # 4 of 5 verdicts right, drop left out


def test_empty_string_reply_is_medmax_drop_not_failure(tmp_path):
    """`content: ""` is a reply (MedMax's `'Correctness: 1' in ''` is False: the item is skipped),
    unlike `content: null`, which crashes MedMax's loop: a drop, cached."""
    with FaultyJudge(lambda body: "") as server:
        cache = VerdictCache(tmp_path / "c")
        judge = Judge(openai_chat(server.url, "j"), model="j", cache=cache, protocol="medmax")
        verdict = judge.correctness("a", "q", "liver", "liver")
        assert (verdict.status, verdict.raw) == ("dropped", "")
        assert len(cache) == 1
        cache.close()


def test_robust_failure_on_a_retry_is_judge_error_not_judge_failed(tmp_path):
    """Robust re-asks an unparseable verdict; if the re-ask gets no reply, the item is judge_error
    (retried next run), not judge_failed (which would say the judge answered and never parsed)."""

    def reply(body):
        return "Correctness: 1" if len(body["messages"]) > 2 else "hmm"

    with FaultyJudge(reply) as server:
        cache = VerdictCache(tmp_path / "c")
        judge = Judge(openai_chat(server.url, "j"), model="j", cache=cache, retries=2)
        # the first ask gets an unparseable reply, the re-ask no reply at all
        server.raw.extend([(200, orjson.dumps(chat_completion("hmm"))), (200, NULL_CONTENT)])
        verdict = judge.correctness("a", "q", "liver", "liver")
        assert verdict.status == "judge_error" and verdict.score is None and verdict.attempts == 2
        assert len(cache) == 0
        verdict = judge.correctness("a", "q", "liver", "liver")  # healthy now: re-asked, parsed
        assert verdict.status == "ok" and verdict.score == 1.0 and verdict.attempts == 2
        cache.close()


def test_transport_error_and_timeout_are_judge_errors():
    """A request that never gets an answer (refused connection, timeout) after the HTTP client's
    retries is judge_error for that item; the run goes on."""

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request):
        raise httpx.ReadTimeout("timed out", request=request)

    for handler in (refuse, slow):
        http = HttpClient(
            rates={},
            default_rate=0.0,
            retry=RetryPolicy(attempts=2),
            sleep=lambda s: None,
            transport=httpx.MockTransport(handler),
        )
        judge = Judge(openai_chat("http://127.0.0.1:9/v1", "j", http=http), model="j", protocol="medmax")
        (line,) = score_records([vqa("a", "vqa_rad_open", "liver", "liver")], scorer=Scorer(judge=judge))
        assert line["status"] == "judge_error" and line["score"] is None


def test_a_judge_down_is_not_asked_for_every_item():
    """After DOWN_AFTER failed requests in a row the judge is taken as down: the remaining items
    are judge_error at once (no hour of retries), still never cached."""
    calls = []

    def chat(messages):
        calls.append(messages)
        raise JudgeFailure("HTTP 503 after retries")

    judge = Judge(chat, model="j", protocol="medmax")
    items = [vqa(f"i{i}", "vqa_rad_open", "liver", "liver") for i in range(DOWN_AFTER + 5)]
    lines = list(score_records(items, scorer=Scorer(judge=judge)))
    assert len(calls) == DOWN_AFTER
    assert all(x["status"] == "judge_error" for x in lines) and judge.errors == len(items)
    assert "in a row" in lines[-1]["judge"]["error"]


def test_family_judge_errors_count_in_their_bucket(media):
    """visual chat and mm_out's text half: a failed review is judge_error in its own bucket."""
    from PIL import Image

    from test_score_families import mm_out, visual_chat

    def chat(messages):
        raise JudgeFailure("HTTP 400")

    judge = Judge(chat, model="j", protocol="medmax")
    records = [
        visual_chat(media, "v1", "conversation", "ct_scan", "A mass."),
        mm_out(media, "m1", Image.new("RGB", (8, 8)), ["Here is a CT."], None),
    ]
    lines = {x["id"]: x for x in score_records(records, scorer=Scorer(judge=judge, media=media))}
    assert lines["v1"]["status"] == "judge_error"
    assert lines["m1"]["extra"]["mm_out_text"]["status"] == "judge_error"
    summary = summarise(lines.values())
    assert summary["tasks"]["mm_out_text"]["judge_error"] == 1
    assert summary["tasks"]["visual_chat"]["judge_error"] == 1
    assert summary["macro"]["judge_errors"] >= 2 and summary["macro"]["complete"] is False


def test_llm_client_never_caches_an_answer_without_a_reply(tmp_path):
    """Synthesize's client too: `content: null` is asked again (next seed), not cached as ""."""
    with FaultyJudge(lambda body: '{"ok": 1}') as server:
        server.raw.append((200, NULL_CONTENT))
        client = ChatClient(
            LLMSettings(url=server.url, model="m", attempts=2), cache=ReplyCache(tmp_path / "llm")
        )
        assert client.ask([{"role": "user", "content": "hi"}], prompt_version="t", parse=orjson.loads) == {
            "ok": 1
        }
        assert len(server.requests) == 2
        assert len(list((tmp_path / "llm").rglob("*.json"))) == 1
        server.raw.extend([(200, EMPTY_CHOICES)] * 2)
        with pytest.raises(ReplyRejected, match="no reply"):
            client.ask([{"role": "user", "content": "other"}], prompt_version="t", parse=orjson.loads)
        assert len(list((tmp_path / "llm").rglob("*.json"))) == 1


def test_score_command_exits_1_while_judge_errors_remain(tmp_path, medmax):
    data = b"".join(orjson.dumps(x) + b"\n" for x in _items())
    with FaultyJudge(medmax_judge) as server:
        server.raw.append((400, b'{"error": "bad request"}'))
        args = [
            "score", "--judge-url", server.url, "--judge-model", "j", "--judge-cache",
            str(tmp_path / "c"), "--summary", str(tmp_path / "s.json"), "--judge-concurrency", "1",
        ]  # fmt: skip
        first = medmax(*args, input=data, check=False)
        assert first.returncode == 1 and b"judge_error" in first.stderr
        lines = [x for x in parse_jsonl(first.stdout)]
        assert [x["status"] for x in lines].count("judge_error") == 1 and len(lines) == 7
        summary = orjson.loads((tmp_path / "s.json").read_bytes())
        assert summary["macro"]["judge_errors"] == 1
        second = medmax(*args, input=data, check=False)
        assert second.returncode == 0, second.stderr
        assert all(x["status"] != "judge_error" for x in parse_jsonl(second.stdout))
        assert orjson.loads((tmp_path / "s.json").read_bytes())["macro"]["judge_errors"] == 0


def test_a_chat_function_returning_none_is_a_failure_not_a_drop():
    """A library caller's ChatFn that hands back None (a null content it passed through) is no
    reply: judge_error, not MedMax's drop of an unparseable reply."""
    judge = Judge(lambda messages: None, model="j", protocol="medmax")
    (line,) = score_records([vqa("a", "vqa_rad_open", "liver", "liver")], scorer=Scorer(judge=judge))
    assert line["status"] == "judge_error" and "NoneType" in line["judge"]["error"]


def test_compare_counts_pairs_left_out_for_a_judge_error():
    from medmax_cli.score.compare import compare, markdown_compare

    a = [{"id": "x", "eval_task": "vqa_rad_open", "score": 1.0, "status": "scored"}]
    b = [{"id": "x", "eval_task": "vqa_rad_open", "score": None, "status": "judge_error"}]
    result = compare(a, b, n_boot=10)
    assert result["counts"]["judge_error_in_either"] == 1
    assert "judge_error" in markdown_compare(result)
