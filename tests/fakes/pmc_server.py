"""A loopback HTTP server for fetch tests: scripted faults plus fakes of Europe PMC and PMC Cloud.

`FakeHttpServer` serves fixed routes (path -> body) and, per path, a queue of one-shot faults
consumed before the normal answer: ("status", code, headers, body), ("reset",),
("truncate", body), ("slow", seconds). It records every request it saw.

`PmcFake` lays articles out the way the real services do:
- Europe PMC REST: GET {base}/search?query=..&format=json&resultType=core&pageSize=..&cursorMark=..
  -> {"hitCount", "nextCursorMark", "resultList": {"result": [{"id", "source": "PMC", "pmcid",
  "isOpenAccess", "license", "doi", "title", "journalTitle", "pubYear", ...}]}}; the last page
  repeats its cursor. GET {base}/{PMCID}/fullTextXML -> JATS.
- PMC Cloud open-data bucket (pmc-oa-opendata), served at {base}/pmc-oa-opendata standing in for
  NCBI's documented HTTPS form https://pmc-oa-opendata.s3.amazonaws.com/KEY of s3://pmc-oa-opendata/KEY
  (docs/fetch.md cites the sources): per article version PMC{n}.{v}/ holding the JATS .xml, the .txt
  and the media files, and the metadata JSON PMC{n}.{v}/PMC{n}.{v}.json (a copy under
  metadata/PMC{n}.{v}.json) with "pmcid", "version", "mid", "doi", "license_code" ("CC BY",
  "CC BY-NC", "CC BY-NC-ND", "TDM" or null), "is_pmc_openaccess", "is_manuscript",
  "is_historical_ocr", "is_retracted" and the file URLs as the bucket writes them: STRINGS
  "s3://pmc-oa-opendata/PMC{n}.{v}/FILE?md5=<hex>" ("xml_url", "text_url", "pdf_url" or null, and
  the list "media_urls"). Versions are found with an S3 ListObjectsV2 request
  (?list-type=2&prefix=PMC{n}.&delimiter=/). Object requests ignore the query string, like S3.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson


class FakeHttpServer:
    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.faults: dict[str, deque] = defaultdict(deque)
        self.log: list[dict[str, Any]] = []
        self.dynamic: list = []  # callables(path, query) -> (status, headers, body) | None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                server._handle(self, self.rfile.read(length))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> FakeHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeHttpServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def route(
        self, path: str, body: bytes | str | Any, status: int = 200, headers: dict | None = None
    ) -> None:
        if not isinstance(body, (bytes, str)):
            body = orjson.dumps(body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        if isinstance(body, str):
            body = body.encode()
        self.routes[path] = (status, headers or {}, body)

    def fault(self, path: str, *actions: tuple) -> None:
        self.faults[path].extend(actions)

    def hits(self, path: str) -> int:
        with self._lock:
            return sum(1 for entry in self.log if entry["path"] == path)

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        parts = urlsplit(handler.path)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with self._lock:
            self.log.append(
                {
                    "path": path,
                    "query": query,
                    "headers": dict(handler.headers),
                    "body": body,
                    "time": time.monotonic(),
                }
            )
            fault = self.faults[path].popleft() if self.faults.get(path) else None
        answer = None
        for fn in self.dynamic:
            answer = fn(path, query)
            if answer is not None:
                break
        if answer is None:
            answer = self.routes.get(path, (404, {"Content-Type": "text/plain"}, b"not found"))
        status, headers, payload = answer
        if fault is not None:
            kind = fault[0]
            if kind == "reset":
                sock = handler.connection
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.close()
                handler.close_connection = True
                return
            if kind == "truncate":
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(payload)))
                handler.send_header("Connection", "close")
                handler.end_headers()
                handler.wfile.write(payload[: len(payload) // 2])
                handler.wfile.flush()
                handler.close_connection = True
                return
            if kind == "slow":
                time.sleep(fault[1])
            if kind == "status":
                status, headers, payload = (
                    fault[1],
                    fault[2] if len(fault) > 2 else {},
                    (fault[3] if len(fault) > 3 else b"error"),
                )
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        try:
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading on purpose (a size cap, a closed stream): not a server fault


@dataclass
class FakeArticle:
    pmcid: str  # "PMC123"
    version: int
    xml: bytes
    files: dict[str, bytes] = field(default_factory=dict)  # media file name -> bytes
    license_code: str = "CC BY"
    open_access: bool = True
    retracted: bool = False
    in_cloud: bool = True  # False: only Europe PMC fullTextXML has it
    bad_md5: set[str] = field(default_factory=set)  # files whose listed md5 is wrong
    manuscript: bool = False  # an author manuscript (is_manuscript)
    metadata_dir_only: bool = False  # the JSON only under metadata/, not beside the files


class PmcFake:
    """Europe PMC search + fullTextXML and the PMC Cloud bucket layout on one FakeHttpServer."""

    def __init__(self, server: FakeHttpServer, articles: list[FakeArticle], *, page_size_cap: int = 1000):
        self.server = server
        self.articles = articles
        self.page_size_cap = page_size_cap
        self.epmc = f"{server.base}/europepmc/webservices/rest"
        self.cloud = f"{server.base}/pmc-oa-opendata"
        server.dynamic.append(self._search)
        server.dynamic.append(self._list)
        for article in articles:
            self._publish(article)

    def _publish(self, a: FakeArticle) -> None:
        s = self.server
        s.route(
            f"/europepmc/webservices/rest/{a.pmcid}/fullTextXML",
            a.xml,
            headers={"Content-Type": "application/xml"},
        )
        if not a.in_cloud:
            return
        prefix = f"{a.pmcid}.{a.version}"
        text = b"Plain text of the article."

        def url(name: str, data: bytes, *, wrong: bool = False) -> str:
            md5 = "0" * 32 if wrong else hashlib.md5(data).hexdigest()
            return f"s3://pmc-oa-opendata/{prefix}/{name}?md5={md5}"

        s.route(f"/pmc-oa-opendata/{prefix}/{prefix}.xml", a.xml, headers={"Content-Type": "application/xml"})
        s.route(f"/pmc-oa-opendata/{prefix}/{prefix}.txt", text, headers={"Content-Type": "text/plain"})
        media_urls = []
        for name, data in sorted(a.files.items()):
            s.route(f"/pmc-oa-opendata/{prefix}/{name}", data, headers={"Content-Type": "image/jpeg"})
            media_urls.append(url(name, data, wrong=name in a.bad_md5))
        meta = {
            "pmcid": a.pmcid,
            "version": a.version,
            "mid": "NIHMS123456" if a.manuscript else None,
            "doi": f"10.1000/{a.pmcid.lower()}",
            "license_code": a.license_code,
            "is_pmc_openaccess": a.open_access,
            "is_manuscript": a.manuscript,
            "is_historical_ocr": False,
            "is_retracted": a.retracted,
            "xml_url": url(f"{prefix}.xml", a.xml, wrong=f"{prefix}.xml" in a.bad_md5),
            "text_url": url(f"{prefix}.txt", text),
            "pdf_url": None,
            "media_urls": media_urls,
        }
        s.route(f"/pmc-oa-opendata/metadata/{prefix}.json", meta)
        if not a.metadata_dir_only:
            s.route(f"/pmc-oa-opendata/{prefix}/{prefix}.json", meta)

    def _list(self, path: str, query: dict[str, str]):
        """S3 ListObjectsV2 with a delimiter: the version prefixes of one article."""
        if path not in ("/pmc-oa-opendata", "/pmc-oa-opendata/") or query.get("list-type") != "2":
            return None
        want = query.get("prefix", "")
        prefixes = sorted(
            {
                f"{a.pmcid}.{a.version}/"
                for a in self.articles
                if a.in_cloud and f"{a.pmcid}.{a.version}/".startswith(want)
            }
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>pmc-oa-opendata</Name><Prefix>{want}</Prefix><KeyCount>{len(prefixes)}</KeyCount>"
            "<Delimiter>/</Delimiter><IsTruncated>false</IsTruncated>"
            + "".join(f"<CommonPrefixes><Prefix>{p}</Prefix></CommonPrefixes>" for p in prefixes)
            + "</ListBucketResult>"
        )
        return 200, {"Content-Type": "application/xml"}, body.encode()

    def _search(self, path: str, query: dict[str, str]):
        if path != "/europepmc/webservices/rest/search":
            return None
        size = min(int(query.get("pageSize", 25)), self.page_size_cap)
        cursor = query.get("cursorMark", "*")
        start = 0 if cursor == "*" else int(cursor.removeprefix("AoE"))
        page = self.articles[start : start + size]
        nxt = start + len(page)
        results = [
            {
                "id": a.pmcid,
                "source": "PMC",
                "pmcid": a.pmcid,
                "isOpenAccess": "Y" if a.open_access else "N",
                "title": f"Article {a.pmcid}",
                "journalTitle": "Fake J",
                "pubYear": "2020",
                "license": a.license_code.lower().replace(" ", "-"),
            }
            for a in page
        ]
        body = {
            "version": "6.9",
            "hitCount": len(self.articles),
            "nextCursorMark": f"AoE{nxt}" if page else cursor,
            "request": {"queryString": query.get("query", ""), "cursorMark": cursor, "pageSize": size},
            "resultList": {"result": results},
        }
        return 200, {"Content-Type": "application/json"}, orjson.dumps(body)
