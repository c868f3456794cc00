"""Each service gets only its own key, and each endpoint only its own cached replies.

Spies: tests/fakes/llm_server.py answers as an OpenAI-compatible server on 127.0.0.1 and records
the headers of every request, so a test sees which Authorization header reached which service.
The synthesis LLM reads MEDMAX_LLM_API_KEY (else OPENAI_API_KEY); the judge reads
MEDMAX_JUDGE_API_KEY and nothing else (docs/score.md "The judge's key").
"""

from __future__ import annotations

import orjson
import pytest

from fakes.llm_server import FakeLLM
from medmax_cli.llm import ChatClient, LLMSettings, ReplyCache, api_key_from_env
from medmax_cli.score.judge import Judge, NotCached, VerdictCache, openai_chat
from score_helpers import vqa
from test_llm import VALID, fig

LLM_KEYS = {"MEDMAX_LLM_API_KEY": "sk-llm-secret", "OPENAI_API_KEY": "sk-openai-secret"}


def _auth(server) -> list[str | None]:
    return [{k.lower(): v for k, v in h.items()}.get("authorization") for h in server.headers]


def _judge_args(url, cache):
    return [
        "score",
        "--rules",
        "medmax",
        "--judge-url",
        url,
        "--judge-model",
        "j",
        "--judge-cache",
        str(cache),
    ]


DATA = orjson.dumps(vqa("a", "vqa_rad_open", "liver", "liver")) + b"\n"


def test_judge_never_borrows_the_llm_keys(tmp_path, medmax):
    with FakeLLM(lambda body: "Correctness: 1") as spy:
        env = {**LLM_KEYS, "MEDMAX_JUDGE_API_KEY": ""}
        result = medmax(*_judge_args(spy.url, tmp_path / "c1"), input=DATA, env=env, check=False)
        assert result.returncode == 0, result.stderr
        assert _auth(spy) == [None]  # no judge key: no Authorization header at all
        assert b"no MEDMAX_JUDGE_API_KEY" in result.stderr  # says why, naming the judge's variable
        env = {**LLM_KEYS, "MEDMAX_JUDGE_API_KEY": "sk-judge-secret"}
        result = medmax(*_judge_args(spy.url, tmp_path / "c2"), input=DATA, env=env, check=False)
        assert result.returncode == 0, result.stderr
        assert _auth(spy) == [None, "Bearer sk-judge-secret"]
        assert not any(b"secret" in x for x in (result.stdout, result.stderr))


def test_a_refused_judge_key_names_the_judge_variable(tmp_path, medmax):
    with FakeLLM(lambda body: "Correctness: 1") as spy:
        spy.script.append((401, None, {}))
        env = {**LLM_KEYS, "MEDMAX_JUDGE_API_KEY": ""}
        result = medmax(*_judge_args(spy.url, tmp_path / "c"), input=DATA, env=env, check=False)
        assert result.returncode == 1
        err = result.stderr.decode()
        assert "MEDMAX_JUDGE_API_KEY" in err and "never uses MEDMAX_LLM_API_KEY or OPENAI_API_KEY" in err
        assert _auth(spy) == [None] and "secret" not in err


def test_synthesis_llm_never_gets_the_judge_key(tmp_path, medmax, media):
    assert api_key_from_env({"MEDMAX_JUDGE_API_KEY": "sk-judge-secret"}) is None
    (tmp_path / "figs.jsonl").write_bytes(orjson.dumps(fig(media, "F1")) + b"\n")
    with FakeLLM(lambda body: VALID) as spy:
        for env, seen in (
            (
                {"MEDMAX_JUDGE_API_KEY": "sk-judge-secret", "MEDMAX_LLM_API_KEY": "", "OPENAI_API_KEY": ""},
                None,
            ),
            ({"MEDMAX_JUDGE_API_KEY": "sk-judge-secret", **LLM_KEYS}, "Bearer sk-llm-secret"),
        ):
            result = medmax(
                "synthesize", str(tmp_path / "figs.jsonl"), "--tasks", "visual_chat", "--llm-url", spy.url,
                "--llm-model", "m", "--llm-cache", str(tmp_path / f"llm-{seen is None}"),
                "--media-dir", str(media.root),
                env=env, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert _auth(spy)[-1] == seen
        assert "Bearer sk-judge-secret" not in _auth(spy)


def test_llm_reply_cache_is_keyed_by_endpoint(tmp_path):
    """Two services serving a model of the same name: the second never gets the first's replies."""
    cache = ReplyCache(tmp_path / "cache")
    messages = [{"role": "user", "content": "hi"}]
    with FakeLLM(lambda body: '"first"') as one, FakeLLM(lambda body: '"second"') as two:
        a = ChatClient(LLMSettings(url=one.url, model="same"), cache=cache)
        b = ChatClient(LLMSettings(url=two.url, model="same"), cache=cache)
        assert a.ask(messages, prompt_version="v", parse=orjson.loads) == "first"
        assert b.ask(messages, prompt_version="v", parse=orjson.loads) == "second"
        assert (len(one.requests), len(two.requests)) == (1, 1)
        again = ChatClient(LLMSettings(url=one.url, model="same"), cache=cache)
        assert again.ask(messages, prompt_version="v", parse=orjson.loads) == "first"
        assert again.requests == 0 and again.cache_hits == 1


def test_verdict_cache_is_keyed_by_endpoint(tmp_path):
    cache = VerdictCache(tmp_path / "cache")
    with FakeLLM(lambda body: "Correctness: 1") as one, FakeLLM(lambda body: "Correctness: 0") as two:
        first = Judge(openai_chat(one.url, "same"), model="same", cache=cache, protocol="medmax")
        assert first.correctness("a", "q", "liver", "liver").score == 1.0
        # the offline rerun (no endpoint) uses the one endpoint that answered
        assert (
            Judge(None, model="same", cache=cache, protocol="medmax")
            .correctness("a", "q", "liver", "liver")
            .cached
        )
        second = Judge(openai_chat(two.url, "same"), model="same", cache=cache, protocol="medmax")
        verdict = second.correctness("a", "q", "liver", "liver")
        assert (verdict.score, verdict.cached, len(two.requests)) == (0.0, False, 1)
        assert (
            Judge(openai_chat(one.url, "same"), model="same", cache=cache, protocol="medmax")
            .correctness("a", "q", "liver", "liver")
            .score
            == 1.0
        )
    # offline with two endpoints' verdicts: which one is the user's to say
    with pytest.raises(NotCached, match="--judge-url"):
        Judge(None, model="same", cache=cache, protocol="medmax").correctness("a", "q", "liver", "liver")
    # the URL (which may carry a secret) is not written to the cache, only its hash
    assert b"127.0.0.1" not in (tmp_path / "cache" / "verdicts.jsonl").read_bytes()
    cache.close()
