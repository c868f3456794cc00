"""LLM client and the visual_chat path against a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import orjson
import pytest

from fakes.llm_server import FakeLLM, chat_completion, conversation_reply
from medmax_cli.http import HttpClient, RetryPolicy
from medmax_cli.llm import (
    ChatClient,
    LLMError,
    LLMSettings,
    ReplyCache,
    ReplyRejected,
    api_key_from_env,
    chat_url,
    endpoint_trusted,
)
from medmax_cli.streams import ErrorPolicy, parse_jsonl
from medmax_cli.synthesize import synthesize
from medmax_cli.synthesize.visual_chat import PROMPT_VERSION, parse_conversation

CAPTION = "Axial CT of the abdomen. A hypodense lesion in the right liver lobe is marked by an arrow."
VALID = '{"conversation": [{"question": "What is shown?", "answer": "An axial CT slice."}]}'


def fig(media, rid: str, *, credential: bool = False, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8), "L")
    return {
        "id": rid,
        "kind": "figure",
        "source": "jats",
        "license": "cc-by",
        "credential": credential,
        "images": [media.put_image(image)],
        "caption": f"{CAPTION} Case {rid}.",
        "mentions": [
            {
                "section": "Results",
                "paragraph": "The lesion is shown in Figure 1.",
                "sentence": "The lesion is shown in Figure 1.",
                "anchor": "Figure 1",
                "start": 23,
                "end": 31,
            }
        ],
        "meta": {},
    }


def client_for(url: str, tmp_path, *, sleeps=None, transport=None, **settings) -> ChatClient:
    http = HttpClient(
        rates={},
        default_rate=0.0,
        retry=RetryPolicy(attempts=4),
        sleep=(sleeps.append if sleeps is not None else (lambda s: None)),
        transport=transport,
    )
    return ChatClient(
        LLMSettings(url=url, model="fake-model", **settings),
        api_key="sk-test-secret-123",
        cache=ReplyCache(tmp_path / "cache"),
        http=http,
    )


def test_urls_trust_and_key():
    assert chat_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1/chat/completions"
    assert chat_url("http://h/v1/") == "http://h/v1/chat/completions"
    assert chat_url("http://h/api/v1/chat/completions") == "http://h/api/v1/chat/completions"
    assert endpoint_trusted("http://127.0.0.1:1/v1") and endpoint_trusted("http://localhost:8000/v1")
    assert endpoint_trusted("http://[::1]:8000/v1") and endpoint_trusted("http://127.0.0.2/v1")
    assert not endpoint_trusted("https://api.openai.com/v1")
    assert endpoint_trusted("https://gpu.lab.internal/v1", ["GPU.lab.internal"])
    assert api_key_from_env({"OPENAI_API_KEY": "a", "MEDMAX_LLM_API_KEY": "b"}) == "b"
    assert api_key_from_env({}) is None


def test_parse_conversation():
    assert parse_conversation("```json\n" + VALID + "\n```") == [("What is shown?", "An axial CT slice.")]
    for bad, why in [
        ("Sure! here you go", "not JSON"),
        ('{"conversation": []}', "pairs"),
        ('{"conversation": [{"question": "q"}]}', "answer"),
        ("[1, 2]", r"conversation\[0\]"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_conversation(bad)


def test_request_shape_cache_and_zero_requests_on_rerun(media, tmp_path):
    records = [fig(media, f"F{i}", seed=i) for i in range(3)]
    with FakeLLM() as llm:
        client = client_for(llm.url, tmp_path, temperature=0.3, seed=7)
        first = list(synthesize(records, tasks=["visual_chat"], client=client, media=media))
        assert len(llm.requests) == 3 and client.requests == 3
        body = llm.requests[0]
        assert body["model"] == "fake-model" and body["temperature"] == 0.3 and body["seed"] == 7
        assert body["messages"][0]["role"] == "system" and CAPTION in body["messages"][1]["content"]
        assert llm.headers[0]["Authorization"] == "Bearer sk-test-secret-123"
        client2 = client_for(llm.url, tmp_path, temperature=0.3, seed=7)
        second = list(synthesize(records, tasks=["visual_chat"], client=client2, media=media))
        assert len(llm.requests) == 3 and client2.requests == 0 and client2.cache_hits == 3
    assert orjson.dumps(first) == orjson.dumps(second)
    inst = first[0]
    assert inst["id"] == "F0-visual_chat" and inst["task"] == "visual_chat"
    assert [t["role"] for t in inst["turns"]] == ["user", "assistant", "user", "assistant"]
    assert inst["turns"][0]["content"][0] == {"image": 0}
    assert inst["turns"][0]["content"][1] == {"text": "What does the image show?"}
    assert inst["meta"]["prompt_version"] == PROMPT_VERSION and inst["meta"]["caption"].startswith("Axial CT")
    assert b"sk-test" not in orjson.dumps(first)
    assert not any(b"sk-test" in p.read_bytes() for p in (tmp_path / "cache").rglob("*.json"))


def test_malformed_reply_is_retried_with_the_next_seed_then_rejected(media, tmp_path):
    with FakeLLM() as llm:
        llm.script.extend([(200, "I cannot answer in JSON, sorry.", {}), (200, VALID, {})])
        client = client_for(llm.url, tmp_path)
        (inst,) = synthesize([fig(media, "ok")], tasks=["visual_chat"], client=client, media=media)
        assert [r["seed"] for r in llm.requests] == [0, 1] and client.malformed == 1
        assert inst["turns"][1]["content"] == [{"text": "An axial CT slice."}]

        llm.script.extend([(200, "nope", {})] * 3)
        policy = ErrorPolicy("skip")
        out = list(
            synthesize(
                [fig(media, "bad", seed=5)], policy=policy, tasks=["visual_chat"], client=client, media=media
            )
        )
        assert out == [] and policy.report.dropped == {"llm reply malformed": 1}
        # A rerun decides the same from the cache: no request at all.
        before = len(llm.requests)
        again = client_for(llm.url, tmp_path)
        policy2 = ErrorPolicy("skip")
        assert (
            list(
                synthesize(
                    [fig(media, "bad", seed=5)],
                    policy=policy2,
                    tasks=["visual_chat"],
                    client=again,
                    media=media,
                )
            )
            == []
        )
        assert len(llm.requests) == before and policy2.report.dropped == policy.report.dropped


def test_429_and_5xx_are_retried_honouring_retry_after(tmp_path):
    sleeps: list[float] = []
    with FakeLLM() as llm:
        llm.script.extend([(429, None, {"Retry-After": "3"}), (503, None, {})])
        client = client_for(llm.url, tmp_path, sleeps=sleeps)
        pairs = client.ask([{"role": "user", "content": "hi"}], prompt_version="t", parse=parse_conversation)
        assert len(llm.requests) == 3 and len(pairs) == 2
        assert sleeps[0] >= 3.0 and len(sleeps) == 2
        llm.script.append((400, None, {}))
        with pytest.raises(ReplyRejected, match="HTTP 400"):
            client.ask([{"role": "user", "content": "other"}], prompt_version="t", parse=parse_conversation)
        llm.script.append((401, None, {}))
        with pytest.raises(LLMError, match="401"):
            client.ask([{"role": "user", "content": "third"}], prompt_version="t", parse=parse_conversation)


def test_credential_records_never_reach_an_untrusted_endpoint(media, tmp_path):
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=chat_completion(VALID))

    transport = httpx.MockTransport(handler)
    records = [fig(media, "public"), fig(media, "mimic", credential=True, seed=1)]
    remote = client_for("https://api.example.com/v1", tmp_path, transport=transport)
    policy = ErrorPolicy("skip")
    out = list(synthesize(records, policy=policy, tasks=["visual_chat"], client=remote, media=media))
    assert [o["id"] for o in out] == ["public-visual_chat"] and len(seen) == 1
    assert policy.report.dropped == {"credential": 1}
    # A host the user lists explicitly may receive them; so may loopback.
    trusted = client_for(
        "https://api.example.com/v1", tmp_path / "t", transport=transport, trusted_hosts=("api.example.com",)
    )
    assert len(list(synthesize(records[1:], tasks=["visual_chat"], client=trusted, media=media))) == 1
    with FakeLLM() as llm:
        local = client_for(llm.url, tmp_path / "l")
        assert len(list(synthesize(records[1:], tasks=["visual_chat"], client=local, media=media))) == 1
        assert len(llm.requests) == 1


def test_concurrent_requests_come_back_in_input_order(media, tmp_path):
    lock = threading.Lock()
    active = [0, 0]  # now, max

    def slow(body):
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        rid = body["messages"][1]["content"].split("Case ")[1].split(".")[0]
        time.sleep(0.05 if int(rid[1:]) % 2 == 0 else 0.005)
        with lock:
            active[0] -= 1
        return conversation_reply(body)

    records = [fig(media, f"F{i}", seed=i) for i in range(8)]
    with FakeLLM(slow) as llm:
        client = client_for(llm.url, tmp_path, concurrency=4)
        out = list(synthesize(records, tasks=["visual_chat"], client=client, media=media))
    assert [o["id"] for o in out] == [f"F{i}-visual_chat" for i in range(8)]
    assert 1 < active[1] <= 4


def test_command_visual_chat_with_cache(media, tmp_path, medmax):
    src = tmp_path / "figs.jsonl"
    src.write_bytes(b"".join(orjson.dumps(fig(media, f"F{i}", seed=i)) + b"\n" for i in range(3)))
    env = {"MEDMAX_MEDIA": str(media.root), "MEDMAX_LLM_API_KEY": "sk-cli-secret-456"}
    with FakeLLM() as llm:
        args = (
            "synthesize",
            str(src),
            "--tasks",
            "visual_chat,captioning",
            "--llm-url",
            llm.url,
            "--llm-model",
            "fake-model",
            "--llm-cache",
            str(tmp_path / "cache"),
        )
        first = medmax(*args, env=env)
        assert len(llm.requests) == 3 and llm.headers[0]["Authorization"] == "Bearer sk-cli-secret-456"
        second = medmax(*args, env=env)
        assert len(llm.requests) == 3  # all from the cache
    assert first.stdout == second.stdout
    tasks = [line["task"] for line in parse_jsonl(first.stdout)]
    assert tasks.count("visual_chat") == 3 and tasks.count("captioning") == 3
    assert b"sk-cli" not in first.stdout + first.stderr + second.stderr
    assert b"llm cache hits 3" in second.stderr
    missing = medmax("synthesize", str(src), "--llm-url", "http://127.0.0.1:9/v1", env=env, check=False)
    assert missing.returncode == 2 and b"--llm-model" in missing.stderr
