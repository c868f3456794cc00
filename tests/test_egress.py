"""The egress policy (medmax_cli.egress) on real loopback servers: proxies, redirects, redaction.

Hostile set-ups built at test time: an HTTP_PROXY that would see a loopback LLM's credentialed body
and Bearer key, a trusted host reached through an untrusted proxy, a judge behind a proxy asked to
grade a credentialed item, an endpoint answering 307 to another server, an `api-key` query parameter
in a failing URL.
"""

from __future__ import annotations

import orjson
import pytest

from fakes.egress_servers import FakeProxy, Redirector
from fakes.llm_server import FakeLLM
from medmax_cli import egress
from medmax_cli.http import HttpClient, HttpError, RetryPolicy
from medmax_cli.llm import ChatClient, CredentialRefused, LLMError, LLMSettings
from medmax_cli.streams import parse_jsonl
from score_helpers import vqa

KEY = "sk-egress-test-key-0123456789"
MESSAGES = [{"role": "user", "content": "Findings: MIMIC-PATIENT-TEXT"}]


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "MEDMAX_TRUSTED_HOSTS"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def chat(url: str, **settings) -> ChatClient:
    http = HttpClient(rates={}, default_rate=0.0, retry=RetryPolicy(attempts=1), secrets=(KEY,))
    return ChatClient(LLMSettings(url=url, model="m", **settings), api_key=KEY, http=http)


def test_loopback_endpoint_bypasses_the_environment_proxy(monkeypatch):
    with FakeProxy() as proxy, FakeLLM(lambda body: "ok") as llm:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        client = chat(llm.url)
        assert client.trusted
        assert client.ask(MESSAGES, prompt_version="t", parse=str, credential=True) == "ok"
        assert len(llm.requests) == 1 and llm.headers[0]["Authorization"] == f"Bearer {KEY}"
        assert proxy.requests == []  # neither the body nor the key went to the proxy


def test_trusted_host_behind_an_untrusted_proxy_is_refused(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.corp.invalid:3128")
    client = chat("https://llm.hospital.test/v1", trusted_hosts=("llm.hospital.test",))
    assert not client.trusted
    with pytest.raises(CredentialRefused, match="via proxy http://proxy.corp.invalid:3128") as info:
        client.ask(MESSAGES, prompt_version="t", parse=str, credential=True)
    assert "pw" not in str(info.value) and client.http.requests == 0
    # NO_PROXY exempts the host: the route is direct and the listed host is trusted.
    monkeypatch.setenv("NO_PROXY", "hospital.test")
    assert egress.route("https://llm.hospital.test/v1").proxy is None
    assert chat("https://llm.hospital.test/v1", trusted_hosts=("llm.hospital.test",)).trusted


def test_a_loopback_proxy_does_not_make_a_remote_target_trusted(monkeypatch):
    with FakeProxy(lambda body: "ok") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        client = chat("http://llm.example.test/v1")
        assert not client.trusted
        with pytest.raises(CredentialRefused, match="llm.example.test is neither loopback"):
            client.ask(MESSAGES, prompt_version="t", parse=str, credential=True)
        # An undeclared body counts as credentialed: it stops the run instead of leaking.
        with pytest.raises(LLMError, match="undeclared credential status"):
            client.ask(MESSAGES, prompt_version="t", parse=str)
        assert proxy.requests == []
        # Public data may go, and it goes the way the environment says (through the proxy).
        assert client.ask(MESSAGES, prompt_version="t", parse=str, credential=False) == "ok"
        assert [r["path"] for r in proxy.requests] == ["http://llm.example.test/v1/chat/completions"]


def test_score_judge_never_sends_credentialed_items_to_an_untrusted_host(tmp_path, medmax, monkeypatch):
    with FakeProxy(lambda body: "Correctness: 1") as proxy:
        public = vqa("pub", "vqa_rad_open", "liver", "liver", question="PUBLIC-QUESTION")
        private = {
            **vqa("mimic", "vqa_rad_open", "liver", "liver", question="MIMIC-QUESTION"),
            "credential": True,
        }
        data = b"".join(orjson.dumps(r) + b"\n" for r in (public, private))
        rejects = tmp_path / "rejects.jsonl"
        result = medmax(
            "score",
            "--judge-url",
            "http://judge.example.test/v1",
            "--judge-model",
            "j",
            "--judge-cache",
            str(tmp_path / "cache"),
            "--judge-concurrency",
            "4",
            "--on-error",
            "skip",
            "--rejects",
            str(rejects),
            input=data,
            env={"HTTP_PROXY": proxy.url, "MEDMAX_LLM_API_KEY": KEY},
        )
        seen = proxy.text()
        assert b"PUBLIC-QUESTION" in seen  # the judge is reachable: the public item went
        assert b"MIMIC-QUESTION" not in seen
        lines = parse_jsonl(result.stdout)
        assert [x["id"] for x in lines] == ["pub"] and lines[0]["score"] == 1.0
        reject = orjson.loads(rejects.read_bytes())
        assert reject["record_id"] == "mimic" and reject["reason"].startswith("credential: egress refused")
        assert KEY.encode() not in result.stderr + rejects.read_bytes()


def test_a_post_is_never_redirected(monkeypatch):
    with FakeLLM(lambda body: "ok") as other, Redirector(other.url + "/chat/completions", 307) as hop:
        client = chat(hop.url + "/v1")
        with pytest.raises(LLMError, match="HTTP 307 redirect to .* not followed"):
            client.ask(MESSAGES, prompt_version="t", parse=str, credential=True)
        assert len(hop.requests) == 1 and other.requests == []  # the body went nowhere else


def test_get_redirects_are_followed_without_secret_headers_to_another_origin():
    with Redirector("unused", 200) as final:
        final.status, final.target = 200, ""
        with Redirector(final.url + "/file") as hop:
            client = HttpClient(rates={}, default_rate=0.0, retry=RetryPolicy(attempts=1))
            response = client.get(hop.url + "/start", headers={"Authorization": f"Bearer {KEY}"})
            assert response.status_code == 200
            assert hop.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
            assert "Authorization" not in final.requests[0]["headers"]
            with pytest.raises(
                egress.EgressRefused, match="redirects a credentialed request to another origin"
            ):
                client.request("GET", hop.url + "/start", credential=True)


def test_secret_query_parameters_are_redacted_in_errors():
    with Redirector("x", 404) as server:
        client = HttpClient(rates={}, default_rate=0.0, retry=RetryPolicy(attempts=1))
        url = f"{server.url}/a?api-key=SECRETVALUE123&client_secret=OTHERSECRET9&db=pmc"
        with pytest.raises(HttpError) as info:
            client.get(url)
    message = str(info.value)
    assert "SECRETVALUE123" not in message and "OTHERSECRET9" not in message
    assert "api-key=***" in message and "db=pmc" in message
    text = egress.redact_text(f"failed: {url} with Authorization: Bearer {KEY}")
    assert "SECRETVALUE123" not in text and KEY not in text and "db=pmc" in text
