"""Class 4 of issue 24: a secret is redacted by one rule wherever it is written (stats files,
MEDMAX_STATS_DIR, --print-config, a run's saved config, rejects, logs, messages); secret headers
are dropped on a cross-origin redirect by pattern; a URL's query stays its query."""

from __future__ import annotations

import io
import json
import logging

import orjson
import pytest
from typer.testing import CliRunner

from fakes.egress_servers import FakeProxy, Redirector
from medmax_cli import egress
from medmax_cli.cli import app
from medmax_cli.http import HttpClient, RetryPolicy
from medmax_cli.llm import ChatClient, LLMSettings, chat_url

PASSWORD = "hunter2PASSWD"
KEY = "sk-SECRETKEY123456"
URL = f"http://bob:{PASSWORD}@127.0.0.1:9/v1?api_key={KEY}&api-version=2024-02-01"


def _clean(text: str) -> None:
    assert PASSWORD not in text and KEY not in text, text


@pytest.mark.parametrize(
    "text",
    [
        f"GET {URL} failed",
        f"proxy http://u:{PASSWORD}@proxy.example:3128 refused",
        f"headers {{'X-Goog-Api-Key': '{KEY}', 'Accept': 'json'}}",
        f"Authorization: Bearer {KEY}",
        f"Ocp-Apim-Subscription-Key: {KEY}",
        f"https://h/x?X-Amz-Signature={KEY}&sig={KEY}&access_token={KEY}&password={PASSWORD}",
        f"api_key={KEY} given",
        f"https://h/cb?session={KEY}&pwd={PASSWORD}&jwt={KEY}&Authorization={KEY}",
    ],
)
def test_one_rule_masks_every_form(text):
    _clean(egress.redact_text(text))
    _clean(json.dumps(egress.redact({"x": [text], "nested": {"token": KEY, "X-Auth-Token": KEY}})))


def test_what_is_not_secret_stays():
    assert egress.redact_text("image 0: tokens: 1023 codes, expected 1024") == (
        "image 0: tokens: 1023 codes, expected 1024"
    )
    assert "api-version=2024-02-01" in egress.redact_text(URL)
    assert egress.redact({"max_new_tokens": 5, "seq_len": 4096}) == {"max_new_tokens": 5, "seq_len": 4096}


@pytest.mark.parametrize(
    "name,secret",
    [
        ("Authorization", True),
        ("X-Goog-Api-Key", True),
        ("Ocp-Apim-Subscription-Key", True),
        ("X-Auth-Token", True),
        ("Private-Token", True),
        ("X-Amz-Security-Token", True),
        ("Set-Cookie", True),
        ("Content-Type", False),
        ("X-Request-Id", False),
        ("User-Agent", False),
    ],
)
def test_secret_headers_by_pattern(name, secret):
    assert egress.is_secret_header(name) is secret


def test_a_cross_origin_redirect_drops_secret_headers_outside_the_old_list():
    with FakeProxy() as final:
        other_origin = final.url.replace("127.0.0.1", "localhost") + "/end"
        with Redirector(other_origin) as hop:
            client = HttpClient(rates={}, default_rate=0.0, retry=RetryPolicy(attempts=1))
            headers = {"X-Goog-Api-Key": KEY, "Private-Token": KEY, "X-Trace": "keep-me"}
            assert client.get(hop.url + "/start", headers=headers).status_code == 200
    assert KEY.encode() not in final.text()
    received = {k.lower(): v for k, v in final.requests[0]["headers"].items()}
    assert received.get("x-trace") == "keep-me"


def test_stats_file_stats_dir_and_print_config_are_redacted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    args = ["synthesize", "empty.jsonl", "-o", "o.jsonl", "--llm-url", URL, "--llm-model", "m"]
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--stats", "st.json"], env={"MEDMAX_STATS_DIR": str(tmp_path / "sd")})
    assert result.exit_code == 0, result.output
    stats = (tmp_path / "st.json").read_text()
    _clean(stats)
    assert "api-version=2024-02-01" in stats  # redaction keeps what is not secret
    result = runner.invoke(app, args, env={"MEDMAX_STATS_DIR": str(tmp_path / "sd")})
    assert result.exit_code == 0, result.output
    (piece,) = (tmp_path / "sd").iterdir()
    _clean(piece.read_text())
    result = runner.invoke(app, ["synthesize", "--llm-url", URL, "--print-config"])
    assert result.exit_code == 0 and "llm-url" in result.output
    _clean(result.output)


def test_rejects_reasons_and_counts_are_redacted():
    from medmax_cli.streams import ErrorPolicy, RunReport

    out = io.BytesIO()
    report = RunReport("fetch")
    policy = ErrorPolicy("skip", out, report, stage="fetch")
    policy.reject(ValueError(f"GET {URL}: HTTP 500"), {"id": "a"})
    _clean(out.getvalue().decode())
    _clean(json.dumps(dict(report.dropped)))
    assert orjson.loads(out.getvalue())["raw"] == {"id": "a"}  # the record itself is kept as it came


def test_log_lines_are_redacted(capsys):
    from medmax_cli.observe import setup_logging

    setup_logging(logging.INFO)
    logging.getLogger("medmax_cli.test").warning("retrying %s", URL)
    _clean(capsys.readouterr().err)


def test_finetune_run_config_is_redacted(tmp_path):
    from medmax_cli.train.checkpoint import save_config
    from medmax_cli.train.config import TrainConfig, resume_mismatches

    cfg = TrainConfig(shards=URL, output=str(tmp_path / "run"))
    save_config(tmp_path / "run", cfg, URL)
    saved = (tmp_path / "run" / "config.json").read_text()
    _clean(saved)
    assert resume_mismatches(json.loads(saved), cfg) == []  # a resume compares like with like


def test_a_query_stays_on_the_request_url():
    """Azure's ?api-version must follow the joined path, not swallow it."""
    assert chat_url("https://x.openai.azure.com/openai/deployments/d?api-version=2024-02-01") == (
        "https://x.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-02-01"
    )
    assert chat_url("http://h:1/v1/?a=1") == "http://h:1/v1/chat/completions?a=1"
    assert chat_url("http://h:1?a=1") == "http://h:1/v1/chat/completions?a=1"
    assert chat_url("http://h:1/v1/chat/completions?a=1") == "http://h:1/v1/chat/completions?a=1"
    with FakeProxy(lambda body: "ok") as server:
        for base in (server.url + "/openai/deployments/d?api-version=2024-02-01",):
            client = ChatClient(LLMSettings(url=base, model="m", attempts=1), cache=None)
            assert client.ask([{"role": "user", "content": "hi"}], prompt_version="t", parse=str) == "ok"
    assert server.requests[-1]["path"] == "/openai/deployments/d/chat/completions?api-version=2024-02-01"


def test_the_judge_url_keeps_its_query():
    from medmax_cli.score.judge import openai_chat

    with FakeProxy(lambda body: "Correctness: 1") as server:
        chat = openai_chat(server.url + "/v1?api-version=7", "m")
        assert "Correctness" in chat([{"role": "user", "content": "q"}])
    assert server.requests[-1]["path"] == "/v1/chat/completions?api-version=7"
