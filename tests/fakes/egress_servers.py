"""Loopback servers for the egress tests: a forward HTTP proxy and a redirecting endpoint.

`FakeProxy` speaks the forward-proxy side of HTTP/1.1 (RFC 9112 section 3.2.2: the request line
carries the absolute URI, `GET http://host/path HTTP/1.1`; `CONNECT host:443` opens a tunnel for
https). It records every request it receives and, instead of forwarding, answers plain-http
requests itself with an OpenAI chat completion from `responder(body)`, so a test can both see what
reached the proxy and let a pipeline run through it. CONNECT is recorded and refused (405).

`Redirector` answers every request with `status` and `Location: target` (RFC 9110 section 15.4:
307/308 require the client to repeat the method and body, which is what must never happen for a
credentialed or keyed body sent to another host).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from fakes.llm_server import chat_completion


class _Server:
    handler_body: Callable[[BaseHTTPRequestHandler, bytes], tuple[int, dict[str, str], bytes]]

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with server._lock:
                    server.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": raw,
                        }
                    )
                status, headers, payload = server.answer(self, raw)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_CONNECT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def answer(self, handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def text(self) -> bytes:
        """Everything received (request lines, headers and bodies), for 'never saw X' checks."""
        with self._lock:
            return b"\n".join(
                f"{r['method']} {r['path']} {r['headers']}".encode() + b"\n" + r["body"]
                for r in self.requests
            )

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


class FakeProxy(_Server):
    def __init__(self, responder: Callable[[dict[str, Any]], str] = lambda body: "Correctness: 1"):
        super().__init__()
        self.responder = responder

    def answer(self, handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if handler.command == "CONNECT":
            return 405, {}, b""
        body = orjson.loads(raw) if raw else {}
        content = self.responder(body)
        return 200, {"Content-Type": "application/json"}, orjson.dumps(chat_completion(content))


class Redirector(_Server):
    def __init__(self, target: str, status: int = 307):
        super().__init__()
        self.target = target
        self.status = status

    def answer(self, handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        return self.status, {"Location": self.target}, b""
