"""An OpenAI-compatible chat-completions client with a disk cache (synthesize, score's judge).

Works with anything that serves `POST /v1/chat/completions` (vLLM, llama.cpp server, Ollama,
hosted APIs). Why our own thin client instead of an SDK:

- temperature and seed are always sent explicitly (MedMax's judge never sent temperature 0);
- retries on 429/5xx honour Retry-After (through `medmax_cli.http.HttpClient`);
- a reply that the caller's parser rejects (malformed JSON, missing fields) is asked again with the
  next seed, then given up with a reason, never guessed;
- every raw reply is cached on disk under sha256(endpoint URL, model, prompt version, request), so
  a rerun or a resumed run sends zero requests and gets byte-identical results, and another
  endpoint serving a model of the same name never gets this one's replies; an answer with no
  reply in it (no choices, null content) is a failed request, never cached;
- the API key comes from the caller and goes only to this client's endpoint (synthesize reads
  MEDMAX_LLM_API_KEY or OPENAI_API_KEY; the judge reads MEDMAX_JUDGE_API_KEY only); it is never
  logged, cached or written into records;
- credentialed data (MIMIC-CXR) goes only where the egress policy (`medmax_cli.egress`) allows:
  loopback or hosts the user lists, after proxy resolution; the check runs where the request is
  sent (`HttpClient`), so every user of this client (synthesize, score's judge) inherits it. A
  refused credentialed request is a record error (`CredentialRefused`), rejected like any other.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from medmax_cli import egress
from medmax_cli.atomic import atomic_write_bytes
from medmax_cli.http import HttpClient, HttpError, RetryPolicy
from medmax_cli.records import RecordError

log = logging.getLogger(__name__)
T = TypeVar("T")
API_KEY_ENV = ("MEDMAX_LLM_API_KEY", "OPENAI_API_KEY")
PER_ITEM_STATUSES = frozenset({400, 413, 422})  # this request is refused; the next one may pass


class LLMError(RuntimeError):
    """The endpoint cannot be used at all (unreachable after retries, 401/403/404): stop the run.

    `status` is the HTTP status of the failed request (None: no answer, e.g. a timeout or a refused
    connection, or a refusal by the egress policy), so a caller that tells one failed request from
    an unusable endpoint (the judge) can."""

    def __init__(self, message: str, *, status: int | None = None, transport: bool = False):
        super().__init__(message)
        self.status = status
        self.transport = transport  # the request failed in flight (HTTP error, timeout, no answer)


class ReplyRejected(ValueError):
    """One request failed for good (malformed reply after every attempt, or refused by the server)."""


class NoReply(ReplyRejected):
    """The server answered without a reply: no `choices`, an empty list, or `content` null.
    A failed request, not a reply: never cached, so a rerun asks again."""


class CredentialRefused(RecordError):
    """A credentialed record that the egress policy keeps from this endpoint (reject it, go on)."""


@dataclass(frozen=True)
class LLMSettings:
    """How to talk to the endpoint (every field is a command-line option)."""

    url: str  # base URL (".../v1") or the full ".../chat/completions" URL
    model: str
    temperature: float = 0.2
    seed: int = 0  # sent with every request; attempt k of a malformed reply uses seed + k
    max_tokens: int | None = 1024
    concurrency: int = 4  # requests in flight at once
    attempts: int = 3  # tries per item when the reply is malformed
    timeout: float = 120.0  # seconds per HTTP request
    trusted_hosts: tuple[str, ...] = ()  # may receive credentialed records besides loopback


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The API key from MEDMAX_LLM_API_KEY, else OPENAI_API_KEY (None: send no Authorization)."""
    environ = os.environ if environ is None else environ
    for name in API_KEY_ENV:
        if environ.get(name):
            return environ[name]
    return None


def chat_url(url: str) -> str:
    """The chat-completions URL for a base URL: ".../v1" and "http://host:port" both work; a query
    (Azure's `?api-version=...`) stays the query of the URL requested."""
    path = urlsplit(url.strip()).path.rstrip("/")
    if path.endswith("/chat/completions"):
        return egress.join_url(url)
    return egress.join_url(url, "chat/completions" if path else "v1/chat/completions")


def is_loopback(host: str) -> bool:
    return egress.is_loopback(host)


def endpoint_trusted(url: str, trusted_hosts: Sequence[str] = ()) -> bool:
    """Whether credentialed data may be sent to `url`: every host on its route (proxy included)
    is loopback or listed by the user (see `medmax_cli.egress`)."""
    return egress.route_trusted(url, trusted_hosts)


# --------------------------------------------------------------------------- cache


class ReplyCache:
    """Raw replies on disk, one small JSON file per request under `root/<k[:2]>/<k>.json`.

    Files are written to a temporary name and renamed, so a killed run leaves no half entry and
    concurrent threads (or processes sharing the directory) never read a partial file.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    @staticmethod
    def key(endpoint: str, model: str, prompt_version: str, request: Mapping[str, Any]) -> str:
        """The entry of one request to one endpoint: another service (URL) never shares it."""
        material = orjson.dumps(
            {"endpoint": endpoint, "model": model, "prompt_version": prompt_version, "request": request},
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(material).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            entry = orjson.loads(self._path(key).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        reply = entry.get("reply") if isinstance(entry, dict) else None
        return reply if isinstance(reply, str) else None

    def put(self, key: str, reply: str, *, model: str, prompt_version: str) -> None:
        entry = {"model": model, "prompt_version": prompt_version, "reply": reply}
        atomic_write_bytes(self._path(key), orjson.dumps(entry))


# --------------------------------------------------------------------------- client


class ChatClient:
    """Ask an OpenAI-compatible endpoint and parse the answer, with cache and retries (thread-safe)."""

    def __init__(
        self,
        settings: LLMSettings,
        *,
        api_key: str | None = None,
        cache: ReplyCache | None = None,
        http: HttpClient | None = None,
    ):
        self.settings = settings
        self.url = chat_url(settings.url)
        self.cache = cache
        self._api_key = api_key
        self.http = http or HttpClient(
            rates={},
            default_rate=0.0,
            timeout=settings.timeout,
            retry=RetryPolicy(attempts=6),
            secrets=(api_key,) if api_key else (),
            max_connections=max(4, settings.concurrency),
            trusted_hosts=settings.trusted_hosts,
        )
        self.trusted = egress.route_trusted(
            self.url, (*settings.trusted_hosts, *self.http.trusted_hosts), self.http.env
        )
        self._lock = threading.Lock()
        self.requests = 0  # logical requests sent (cache misses)
        self.cache_hits = 0
        self.malformed = 0

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient(url={egress.redact_url(self.url)!r}, model={self.settings.model!r})"

    def close(self) -> None:
        self.http.close()

    def request_body(self, messages: Sequence[Mapping[str, str]], attempt: int = 0) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [dict(m) for m in messages],
            "temperature": self.settings.temperature,
            "seed": self.settings.seed + attempt,
        }
        if self.settings.max_tokens:
            body["max_tokens"] = self.settings.max_tokens
        return body

    def ask(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        prompt_version: str,
        parse: Callable[[str], T],
        credential: bool | None = None,
    ) -> T:
        """The parsed reply. A reply `parse` refuses (ValueError) is asked again with the next seed;
        after `attempts` tries ReplyRejected says why. Cached replies are reused, valid or not, so a
        rerun makes the same decisions without a single request.

        `credential`: whether the messages carry credentialed data (None: as declared by an
        enclosing `egress.payload(record)`; undeclared counts as credentialed for untrusted hosts).
        CredentialRefused when the endpoint may not receive them."""
        if credential is None:
            credential = egress.current_credential()
        last = "no attempt"
        for attempt in range(max(1, self.settings.attempts)):
            body = self.request_body(messages, attempt)
            try:
                raw = self._raw_reply(body, prompt_version, credential)
            except NoReply as exc:  # not cached; the next attempt asks again
                if attempt + 1 >= max(1, self.settings.attempts):
                    raise
                last = str(exc)
                log.debug("no reply in the answer (attempt %d): %s", attempt + 1, last)
                continue
            try:
                return parse(raw)
            except ValueError as exc:
                last = str(exc)
                with self._lock:
                    self.malformed += 1
                log.debug("malformed reply (attempt %d): %s", attempt + 1, last)
        raise ReplyRejected(f"llm reply malformed: gave up after {self.settings.attempts} attempts: {last}")

    def _raw_reply(self, body: dict[str, Any], prompt_version: str, credential: bool | None = None) -> str:
        key = ReplyCache.key(self.url, self.settings.model, prompt_version, body)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                with self._lock:
                    self.cache_hits += 1
                return cached
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None
        with self._lock:
            self.requests += 1
        try:
            answer = self.http.post_json(
                self.url, body, headers=headers, credential=credential, trusted=self.settings.trusted_hosts
            )
        except egress.EgressRefused as exc:
            if credential:
                raise CredentialRefused(f"credential: {exc}") from None
            raise LLMError(f"LLM endpoint refused by the egress policy: {exc}") from None
        except HttpError as exc:
            if exc.status in PER_ITEM_STATUSES:
                raise ReplyRejected(f"llm request refused: HTTP {exc.status}") from None
            raise LLMError(f"LLM endpoint failed: {exc}", status=exc.status, transport=True) from None
        reply = _content_of(answer)
        if self.cache is not None:
            self.cache.put(key, reply, model=self.settings.model, prompt_version=prompt_version)
        return reply


def _content_of(answer: Any) -> str:
    """choices[0].message.content of a chat-completions answer. NoReply when there is none (no or
    empty `choices`, no message, `content` null or not a string): that is a failed request, not a
    reply, and must not be cached. An empty string is a reply (the model said nothing)."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        choices = answer.get("choices") if isinstance(answer, dict) else None
        what = "no 'choices'" if choices is None else "empty 'choices'" if choices == [] else "no message"
        raise NoReply(f"llm answer holds no reply ({what})") from None
    if not isinstance(content, str):
        raise NoReply(f"llm answer holds no reply (message content is {type(content).__name__})")
    return content


def strip_code_fence(text: str) -> str:
    """The JSON inside a reply that wrapped it in ```json fences or surrounding prose."""
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else text[3:]
        text = text.rsplit("```", 1)[0]
    start, end = text.find("{"), text.rfind("}")
    if start > 0 and end > start:
        text = text[start : end + 1]
    return text.strip()
