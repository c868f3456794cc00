"""LLM-judge verdicts for open VQA, visual chat and interleaved text, cached on disk.

Two protocols. `medmax`: MedMax's released prompts word for word (evaluation/eval_utils.py
`compare_messages_gen`, evaluation/visual_chat.py and evaluation/mm_out.py `compare_messages_gen`)
and MedMax's parsing (substring tests for `Correctness: 1|0`, the first line split on spaces
for the two scores); one call per item, and a reply MedMax could not score is `dropped` and
counted, never re-asked. `robust`: our own prompts and a strict parser; a verdict that does not
parse is asked again (with a reminder of the format) up to `retries` times, then `judge_failed`.
Temperature 0 (and seed 0) are always sent, no `max_tokens` (a verdict is never cut). Verdicts
are cached keyed by (judge endpoint, judge model, prompt version, item id, prompt hash): a rerun
is offline.

A judge that fails is neither protocol's verdict: a request that gets no reply (transport error,
timeout, an HTTP error status, 400 included, an answer with no choices or null content) makes
the item `judge_error`: never cached, asked again by the next run. MedMax's own scorer crashes
there (`response.choices[0].message.content` then `'Correctness: 1' in None` / `None.strip()`),
so no MedMax number exists for such an item, and none is made up here. A refused key (401/403)
or a missing endpoint (404) stops the run (every item would fail the same way).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

OPEN_PROMPT_VERSION = "open-v1"
CHAT_PROMPT_VERSION = "chat-v1"

Messages = list[dict[str, str]]
ChatFn = Callable[[Messages], str]  # messages -> the assistant's reply text (sent at temperature 0)


class JudgeError(RuntimeError):
    """The judge endpoint cannot be reached or answers with an error (after its own retries)."""


class NotCached(JudgeError):
    """Offline (no endpoint) and the verdict is not in the cache: the item stays unscored."""


class JudgeFailure(RuntimeError):
    """One judge request failed (no reply): the item is `judge_error`, never cached."""


JUDGE_KEY_ENV = "MEDMAX_JUDGE_API_KEY"
FATAL_STATUSES = frozenset({401, 403, 404})  # the endpoint or the key is wrong: every item would fail
DOWN_AFTER = 8  # consecutive failed requests after which the judge is taken as down for this run


# --------------------------------------------------------------------------- prompts

_OPEN_SYSTEM = "You are a careful medical expert grading answers to questions about medical images."
_OPEN_USER = (
    "Decide whether the model's answer to the question is correct, given the ground-truth answer. "
    "An answer is correct if it means the same as the ground truth (synonyms, abbreviations and extra "
    "correct detail are fine); it is incorrect if it is wrong, contradicts the ground truth, or does not "
    "answer.\n\n"
    "Question: {question}\n"
    "Ground-truth answer: {gold}\n"
    "Model answer: {output}\n\n"
    "Reply with exactly one line: `Correctness: 1` if the model answer is correct, `Correctness: 0` otherwise."
)
_OPEN_REMINDER = "Reply with exactly one line and nothing else: `Correctness: 1` or `Correctness: 0`."

# LLaVA-Med's GPT-4 review prompt (llava/eval/eval_multimodal_chat_gpt_score.py), style kept.
_CHAT_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
_CHAT_USER = (
    "[Context]\n{context}\n\n[Question]\n{question}\n\n"
    "[Assistant 1]\n{reference}\n\n[End of Assistant 1]\n\n"
    "[Assistant 2]\n{answer}\n\n[End of Assistant 2]\n\n"
    "[System]\nWe would like to request your feedback on the performance of two AI assistants in response "
    "to the user question displayed above. The user asks the question on observing an image. For your "
    "reference, the visual content in the image is represented with the caption and the sentences of the "
    "article that mention the figure.\n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and "
    "2, respectively. The two scores are separated by a space.\n"
    "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
    "potential bias and ensuring that the order in which the responses were presented does not affect your "
    "judgment."
)
_CHAT_REMINDER = "Your first line must hold only the two scores (1 to 10) separated by a space, e.g. `8 6`."


def open_messages(question: str, gold: str, output: str) -> Messages:
    return [
        {"role": "system", "content": _OPEN_SYSTEM},
        {"role": "user", "content": _OPEN_USER.format(question=question, gold=gold, output=output)},
    ]


def chat_messages(context: str, question: str, reference: str, answer: str) -> Messages:
    user = _CHAT_USER.format(context=context, question=question, reference=reference, answer=answer)
    return [{"role": "system", "content": _CHAT_SYSTEM}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------- MedMax's prompts

# MedMax's released judge prompts, word for word (whitespace included): the open-VQA grader of
# evaluation/eval_utils.py `compare_messages_gen` (one user message, no system message), and the
# LLaVA-Med-style review of evaluation/visual_chat.py and evaluation/mm_out.py (`conv_to_str`,
# `compare_messages_gen`; the system message's leading quote is MedMax's).
MEDMAX_OPEN_VERSION = "medmax-open-v1"
MEDMAX_CHAT_VERSION = "medmax-chat-v1"
MEDMAX_MM_OUT_VERSION = "medmax-mm-out-v1"

_MM_INSTRUCTION = (
    "Given a question about an medical image, there is a correct answer to the question and an answer to "
    "be determined. If the answer to be determined matches the correct answer or is a good enough answer "
    "to the question, output 1; otherwise output 0. Evaluate the answer to be determined (1 or 0)."
)
_MM_INDENT = " " * 8
_MM_SYSTEM = "'You are a helpful and precise assistant for checking the quality of the answer."
_MM_REVIEW = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above. The user asks the question on observing an image. For your reference, "
    "the visual content in the image is represented with caption describing the same image.\n"
    "  Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each "
    "assistant receives an overall score on a scale of 1 to 10, where a higher score indicates better "
    "overall performance.\n"
    "  Please first output a single line containing only two values indicating the scores for Assistant 1 "
    "and 2, respectively. The two scores are separated by a space. In the subsequent line, please provide "
    "a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the "
    "order in which the responses were presented does not affect your judgment."
)


def medmax_open_messages(question: str, true_answer: str, generated_answer: str) -> Messages:
    """MedMax's open-VQA judge request. The caller passes what MedMax passes: the row's prompt as
    released, the gold answer as released, the model's answer lower-cased."""
    i = _MM_INDENT
    prompt = (
        f"\n{i}{_MM_INSTRUCTION}\n\n"
        f"{i}Question:\n"
        f"{i}- question about the medical image: {question}\n\n\n"
        f"{i}Answers:\n"
        f"{i}- correct answer(ground truth): {true_answer}\n\n"
        f"{i}    answer to be determined: {generated_answer}\n\n\n"
        f"{i}Task:\n\n"
        f"{i}- {_MM_INSTRUCTION}\n\n"
        f"{i}Output Format:\n"
        f"{i}Correctness: your answer\n\n"
        f"{i}"
    )
    return [{"role": "user", "content": prompt}]


def _mm_review(context: str, question: str, ans1: str, ans2: str) -> Messages:
    user = (
        f"[Context]\n{context}[Question]\n{question}\n\n"
        f"[Assistant 1]\n{ans1}\n\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{ans2}\n\n[End of Assistant 2]\n\n"
        f"[System]\n{_MM_REVIEW}\n\n"
    )
    return [{"role": "system", "content": _MM_SYSTEM}, {"role": "user", "content": user}]


def medmax_chat_messages(
    fig_label: str, fig_caption: str, fig_context: str, question: str, ans1: str, ans2: str
) -> Messages:
    """MedMax's visual-chat review (evaluation/visual_chat.py): figure label, caption and in-text
    mention, the row's prompt, the reference (GPT-4) answer as Assistant 1, the model as 2."""
    context = f"Figure Caption:\n{fig_label}: {fig_caption}\n\nFigure Context:\n\t- {fig_context}\n\n"
    return _mm_review(context, question, ans1, ans2)


def medmax_mm_out_messages(question: str, ans1: str, ans2: str) -> Messages:
    """MedMax's mm_out text review (evaluation/mm_out.py): an empty [Context] section."""
    return _mm_review("", question, ans1, ans2)


def parse_correctness_medmax(text: str) -> int | None:
    """MedMax's reading of an open-VQA verdict (evaluation/vqa.py `run_vqa_eval`): 1 if the reply
    contains `Correctness: 1`, else 0 if it contains `Correctness: 0`, else None (MedMax skips
    the item). Case and spacing exact; "1" is tested first.

    >>> [parse_correctness_medmax(t) for t in ("Correctness: 10", "Correctness: 0.5", "correctness: 1")]
    [1, 0, None]
    """
    if "Correctness: 1" in text:
        return 1
    if "Correctness: 0" in text:
        return 0
    return None


def parse_pair_medmax(text: str) -> tuple[float, float] | None:
    """MedMax's reading of a review (visual_chat.py / mm_out.py): the stripped reply's first line,
    stripped, split on single spaces, must be exactly two numbers; relative score s2/s1. None where
    MedMax's run would crash (not two fields, not numbers, s1 = 0) or give a non-finite mean."""
    fields = text.strip().split("\n")[0].strip().split(" ")
    if len(fields) != 2:
        return None
    try:
        s1, s2 = float(fields[0]), float(fields[1])
    except ValueError:
        return None
    if s1 == 0 or not (math.isfinite(s1) and math.isfinite(s2)):
        return None
    return s1, s2


# --------------------------------------------------------------------------- strict parsing

_CORRECTNESS = re.compile(r"correctness\s*[:=]\s*\**\s*([01])(?![0-9]|\.[0-9])", re.IGNORECASE)
_PAIR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[ ,]\s*(\d+(?:\.\d+)?)\s*$")


def parse_correctness(text: str) -> int | None:
    """1 or 0 when the reply states exactly one verdict `Correctness: 1|0`; None otherwise.

    >>> parse_correctness("Correctness: 1"), parse_correctness("Correctness: 1 ... Correctness: 0")
    (1, None)
    """
    verdicts = {int(v) for v in _CORRECTNESS.findall(text or "")}
    return verdicts.pop() if len(verdicts) == 1 else None


def parse_pair(text: str) -> tuple[float, float] | None:
    """(score 1, score 2) from the reply's first non-empty line, both in 1..10; None otherwise."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return None
    match = _PAIR.match(lines[0].replace("`", ""))
    if not match:
        return None
    s1, s2 = float(match.group(1)), float(match.group(2))
    if not (1 <= s1 <= 10 and 1 <= s2 <= 10):
        return None
    return s1, s2


# --------------------------------------------------------------------------- cache


def endpoint_id(url: str | None) -> str:
    """What the cache keeps of the judge's URL: its sha256 (a URL may carry a secret)."""
    return hashlib.sha256((url or "").encode()).hexdigest()


class VerdictCache:
    """Verdicts on disk (one JSONL file, append-only), keyed by endpoint, model, prompt version,
    item and prompt. Only replies are kept (verdicts and MedMax drops), never a failed request."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / "verdicts.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, dict[str, Any]] = {}
        self._by_request: dict[str, dict[str, dict[str, Any]]] = {}  # request key -> endpoint -> entry
        if self.path.exists():
            for line in self.path.read_bytes().splitlines():
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a line cut by a killed run: that verdict is asked again
                if isinstance(entry, dict) and isinstance(entry.get("request"), str):
                    self._add(entry)  # entries of older versions (no endpoint) are asked again
        self._handle = open(self.path, "ab")
        self._lock = threading.Lock()

    @staticmethod
    def request_key(model: str, prompt_version: str, item_id: str, messages: Messages) -> str:
        prompt_hash = hashlib.sha256(orjson.dumps(messages)).hexdigest()
        return hashlib.sha256(f"{model}\0{prompt_version}\0{item_id}\0{prompt_hash}".encode()).hexdigest()

    @staticmethod
    def key(endpoint: str, request_key: str) -> str:
        """The entry of one request to one judge endpoint (`endpoint_id`)."""
        return hashlib.sha256(f"{endpoint}\0{request_key}".encode()).hexdigest()

    def _add(self, entry: dict[str, Any]) -> None:
        self._entries[entry["key"]] = entry
        self._by_request.setdefault(entry["request"], {})[str(entry.get("endpoint"))] = entry

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def get_any(self, request_key: str) -> dict[str, Any] | None:
        """Offline (no endpoint given): the verdict when one endpoint gave it; NotCached when
        several did (which one the user means is theirs to say, with --judge-url)."""
        found = self._by_request.get(request_key) or {}
        if len(found) > 1:
            raise NotCached(
                f"verdicts from {len(found)} judge endpoints are cached for this item; "
                "pass --judge-url to say which one to use"
            )
        return next(iter(found.values()), None)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        entry = {"key": key, **entry}
        with self._lock:  # one writer at a time: judge calls run on a thread pool
            self._add(entry)
            self._handle.write(orjson.dumps(entry) + b"\n")
            self._handle.flush()

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        self._handle.close()


# --------------------------------------------------------------------------- judge


@dataclass
class Verdict:
    score: float | None  # 1/0 for correctness, s2/s1 for the relative score; None when unparseable
    # "ok" | "judge_failed" (robust, after retries) | "dropped" (medmax: MedMax skips it)
    # | "judge_error" (a request got no reply: never cached, asked again by the next run)
    status: str
    raw: str  # the last reply ("" for judge_error)
    attempts: int  # calls made (0 when cached)
    cached: bool
    error: str | None = None  # judge_error: why the request failed

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"raw": self.raw, "attempts": self.attempts, "cached": self.cached}
        if self.error is not None:
            out["error"] = self.error
        return out


PROTOCOLS = ("medmax", "robust")


class Judge:
    """Asks `chat` for verdicts under one protocol (module docstring), caches them."""

    def __init__(
        self,
        chat: ChatFn | None,
        *,
        model: str,
        cache: VerdictCache | None = None,
        retries: int = 2,
        protocol: str = "robust",
        endpoint: str | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"judge protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
        self.chat = chat
        self.model = model
        self.cache = cache
        self.retries = retries
        self.protocol = protocol
        # the endpoint is part of the cache key (openai_chat names its URL); offline: any one endpoint
        self.endpoint = endpoint if endpoint is not None else getattr(chat, "endpoint", None)
        self.calls = 0
        self.failed = 0
        self.dropped = 0
        self.errors = 0  # requests that got no reply (judge_error items)
        self._streak = 0  # consecutive failed requests
        self._down: str | None = None  # why the judge is taken as down for the rest of this run
        self._lock = threading.Lock()

    @property
    def prompt_versions(self) -> list[str]:
        if self.protocol == "medmax":
            return [MEDMAX_OPEN_VERSION, MEDMAX_CHAT_VERSION, MEDMAX_MM_OUT_VERSION]
        return [OPEN_PROMPT_VERSION, CHAT_PROMPT_VERSION]

    def correctness(self, item_id: str, question: str, gold: str, output: str) -> Verdict:
        """Open VQA. medmax: MedMax's prompt with the answer lower-cased, as its vqa.py does."""
        if self.protocol == "medmax":
            messages = medmax_open_messages(question, gold, output.lower())
            return self._medmax(item_id, MEDMAX_OPEN_VERSION, messages, parse_correctness_medmax)
        messages = open_messages(question, gold, output)
        return self._ask(
            item_id,
            OPEN_PROMPT_VERSION,
            messages,
            _OPEN_REMINDER,
            lambda text: _maybe_float(parse_correctness(text)),
        )

    def relative(self, item_id: str, context: str, question: str, reference: str, answer: str) -> Verdict:
        """Robust protocol's review (LLaVA-Med's prompt): s2/s1."""
        messages = chat_messages(context, question, reference, answer)

        def parse(text: str) -> float | None:
            pair = parse_pair(text)
            return None if pair is None else pair[1] / pair[0]

        return self._ask(item_id, CHAT_PROMPT_VERSION, messages, _CHAT_REMINDER, parse)

    def medmax_review(self, item_id: str, messages: Messages, version: str) -> Verdict:
        """MedMax's review (medmax_chat_messages / medmax_mm_out_messages): s2/s1, or dropped."""

        def parse(text: str) -> float | None:
            pair = parse_pair_medmax(text)
            return None if pair is None else pair[1] / pair[0]

        return self._medmax(item_id, version, messages, parse)

    def _medmax(
        self, item_id: str, version: str, messages: Messages, parse: Callable[[str], float | None]
    ) -> Verdict:
        """One call, as MedMax: a reply it could not score is dropped (cached too, so a rerun agrees);
        a request that got no reply is judge_error (not cached: MedMax has no number for it)."""
        request, key, hit = self._lookup(item_id, version, messages)
        if hit is not None:
            if hit.get("status") == "dropped":
                with self._lock:
                    self.dropped += 1
            return Verdict(hit["score"], hit.get("status", "ok"), hit["raw"], 0, True)
        raw = self._call(messages)
        if isinstance(raw, Verdict):
            return raw  # judge_error
        value = parse(raw)
        score = None if value is None else float(value)
        status = "ok" if score is not None else "dropped"
        if status == "dropped":
            log.info("judge reply for %s is one MedMax drops: %.80r", item_id, raw)
            with self._lock:
                self.dropped += 1
        self._store(key, request, version, item_id, score, raw, status)
        return Verdict(score, status, raw, 1, False)

    def _lookup(
        self, item_id: str, version: str, messages: Messages
    ) -> tuple[str, str, dict[str, Any] | None]:
        """(request key, entry key, cached entry or None); NotCached when offline and not cached."""
        request = VerdictCache.request_key(self.model, version, item_id, messages)
        key = VerdictCache.key(endpoint_id(self.endpoint), request)
        hit = None
        if self.cache is not None:
            hit = self.cache.get(key) if self.chat is not None else self.cache.get_any(request)
        if hit is None and self.chat is None:
            raise NotCached(f"item {item_id!r}: verdict not in the judge cache and no --judge-url")
        return request, key, hit

    def _store(
        self, key: str, request: str, version: str, item_id: str, score: float | None, raw: str, status: str
    ) -> None:
        if self.cache is None:
            return
        entry = {"endpoint": endpoint_id(self.endpoint), "request": request, "model": self.model}
        entry.update(prompt=version, item=item_id, score=score, raw=raw, status=status)
        self.cache.put(key, entry)

    def _call(self, messages: Messages) -> str | Verdict:
        """The reply, or a judge_error Verdict when the request got none (counted; a judge that
        failed DOWN_AFTER times in a row is not asked again this run: its items are judge_error)."""
        assert self.chat is not None
        with self._lock:
            down = self._down
            if down is None:
                self.calls += 1
        if down is not None:
            return self._error(f"not asked: {down}", 0)
        try:
            raw = self.chat(messages)
        except JudgeFailure as exc:
            with self._lock:
                self._streak += 1
                if self._streak >= DOWN_AFTER and self._down is None:
                    self._down = f"the judge failed {self._streak} requests in a row (last: {exc})"
                    log.warning("judge: %s; the remaining items are judge_error", self._down)
            return self._error(str(exc), 1)
        if not isinstance(raw, str):  # a ChatFn that returned no text (None): no reply either
            return self._error(f"the judge returned no text ({type(raw).__name__})", 1)
        with self._lock:
            self._streak = 0
        return raw

    def _error(self, why: str, attempts: int) -> Verdict:
        with self._lock:
            self.errors += 1
        return Verdict(None, "judge_error", "", attempts, False, error=why)

    def _ask(
        self,
        item_id: str,
        version: str,
        messages: Messages,
        reminder: str,
        parse: Callable[[str], float | None],
    ) -> Verdict:
        request, key, hit = self._lookup(item_id, version, messages)
        if hit is not None:
            return Verdict(hit["score"], "ok", hit["raw"], 0, True)
        conversation = list(messages)
        raw = ""
        for attempt in range(1, self.retries + 2):
            reply = self._call(conversation)
            if isinstance(reply, Verdict):  # no reply: judge_error, whatever came before
                return Verdict(None, "judge_error", raw, attempt, False, error=reply.error)
            raw = reply
            score = parse(raw)
            if score is not None:
                self._store(key, request, version, item_id, score, raw, "ok")
                return Verdict(score, "ok", raw, attempt, False)
            log.info("judge reply for %s did not parse (attempt %d): %.80r", item_id, attempt, raw)
            conversation = [
                *messages,
                {"role": "assistant", "content": raw},
                {"role": "user", "content": reminder},
            ]
        with self._lock:
            self.failed += 1
        return Verdict(None, "judge_failed", raw, self.retries + 1, False)


def _maybe_float(value: int | None) -> float | None:
    return None if value is None else float(value)


def openai_chat(
    url: str,
    model: str,
    *,
    api_key: str | None = None,
    timeout: float = 120.0,
    max_tokens: int | None = None,
    http: Any = None,
) -> ChatFn:
    """A ChatFn for an OpenAI-compatible endpoint (`.../v1` or `.../chat/completions`), temperature 0.

    Built on the shared client `medmax_cli.llm` (its egress rules, HTTP retries on 429/5xx with
    Retry-After); the malformed-reply retries and the cache are the judge's own (they need the
    reminder turn and the item key), so the client gets one attempt per call and no cache.
    `max_tokens` is not sent by default (MedMax sent none): a long reply never loses its verdict.
    `api_key` is the judge's own (the CLI reads MEDMAX_JUDGE_API_KEY): no other service's key is
    ever looked up. A request that gets no reply raises JudgeFailure; a refused key or a missing
    endpoint (401/403/404), JudgeError. The function's `endpoint` attribute is the URL it posts to.
    """
    from medmax_cli import llm

    settings = llm.LLMSettings(
        url=url,
        model=model,
        temperature=0.0,
        seed=0,
        max_tokens=max_tokens,
        concurrency=1,
        attempts=1,
        timeout=timeout,
    )
    client = llm.ChatClient(settings, api_key=api_key, cache=None, http=http)  # http: tests

    def chat(messages: Messages) -> str:
        try:
            return client.ask(messages, prompt_version="judge", parse=str)
        except llm.ReplyRejected as exc:  # refused (HTTP 400/413/422) or no reply in the answer
            raise JudgeFailure(str(exc)) from None
        except llm.LLMError as exc:
            if exc.status in (401, 403):
                have = "was sent" if api_key else "was not set"
                raise JudgeError(
                    f"{exc}: the judge endpoint refused the request; its key comes from "
                    f"{JUDGE_KEY_ENV} only ({have}; the judge never uses MEDMAX_LLM_API_KEY or "
                    "OPENAI_API_KEY)"
                ) from None
            if exc.transport and exc.status not in FATAL_STATUSES:
                raise JudgeFailure(str(exc)) from None  # timeout, 5xx after retries, no answer
            raise JudgeError(str(exc)) from None

    chat.endpoint = client.url  # type: ignore[attr-defined]  # part of the verdict cache key
    return chat
