"""A fake OpenAI-compatible chat-completions server on 127.0.0.1 (synthesize and score tests).

    with FakeLLM() as llm:                       # default: a valid visual_chat conversation
        llm.script.append((429, None, {"Retry-After": "0"}))   # one-shot faults, consumed first
        llm.script.append((200, "not json", {}))               # a 200 whose content is this text
        ... ChatClient(LLMSettings(url=llm.url, model="fake")) ...
        llm.requests    # every JSON body received (faults included), in order

`responder(body) -> str` decides the reply content when no scripted entry is left; pass one for a
judge ("Correctness: 1") or anything else. The server runs in a daemon thread and stops on exit.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


def conversation_reply(body: dict[str, Any]) -> str:
    """A valid visual_chat reply that echoes the first words of the user message (deterministic)."""
    user = next((m["content"] for m in body.get("messages", []) if m.get("role") == "user"), "")
    first = user.splitlines()[1] if "\n" in user else user
    return orjson.dumps(
        {
            "conversation": [
                {"question": "What does the image show?", "answer": first[:200] or "An image."},
                {
                    "question": "What is the most notable finding?",
                    "answer": "The finding described for this figure.",
                },
            ]
        }
    ).decode()


def chat_completion(content: str, model: str = "fake") -> dict[str, Any]:
    """The JSON of an OpenAI chat-completions answer holding `content`."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class FakeLLM:
    def __init__(self, responder: Callable[[dict[str, Any]], str] = conversation_reply):
        self.responder = responder
        # (status, content-or-None, headers): status 200 -> chat answer with that content;
        # other statuses -> that status with a small JSON error body.
        self.script: deque[tuple[int, str | None, dict[str, str]]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, payload, headers = fake._answer(self.path, raw, dict(self.headers))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _answer(self, path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return 400, b'{"error": "body is not JSON"}', {}
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            scripted = self.script.popleft() if self.script else None
        if path.rstrip("/") != "/v1/chat/completions":
            return 404, b'{"error": "not found"}', {}
        if scripted is not None:
            status, content, extra = scripted
            if status != 200:
                return status, orjson.dumps({"error": {"message": f"scripted {status}"}}), extra
            return 200, orjson.dumps(chat_completion(content or "", body.get("model", "fake"))), extra
        return 200, orjson.dumps(chat_completion(self.responder(body), body.get("model", "fake"))), {}

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
