"""The one HTTP client every network stage uses (fetch, the LLM client of synthesize, the judge).

Why a wrapper around httpx: the services we talk to publish rate limits (NCBI: 3 requests/s,
10/s with an API key; Europe PMC asks for moderation) and fail transiently (429, 5xx, resets,
truncated bodies). One place gets the politeness and the retries right:

- connection reuse (one `httpx.Client`), a timeout on every request;
- a token-bucket rate limiter per host, shared by every thread of the client;
- retries with exponential backoff and full jitter on 429/5xx/timeouts/resets/truncated bodies,
  honouring `Retry-After` (seconds or an HTTP date);
- a `User-Agent` naming the tool and a contact (`--contact`, env `MEDMAX_CONTACT`);
- secrets (API keys from the environment, `Authorization` headers) never appear in logs,
  errors or records: URLs are redacted before they are shown anywhere;
- the egress policy (`medmax_cli.egress`): each request is routed (proxy from the environment or
  direct) and checked before it is sent: credentialed data only to trusted hosts, no redirect
  followed for a request with a body, none to another host for a credentialed request;
- `bounded_map` for fetching media with bounded concurrency, results in input order.

Clock, sleep and the random source are injectable so tests run the retry logic in microseconds.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
import orjson

from medmax_cli import __version__, egress
from medmax_cli.egress import SECRET_HEADERS, SECRET_PARAMS, EgressRefused, redact_url  # noqa: F401
from medmax_cli.egress import scrub as _scrub

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_CONTACT_URL = "https://github.com/medmax-cli/medmax-cli"
NCBI_HOST_SUFFIX = "ncbi.nlm.nih.gov"
EUROPEPMC_HOST = "www.ebi.ac.uk"
NCBI_RATE = 3.0  # requests/s without an API key (E-utilities policy)
NCBI_RATE_WITH_KEY = 10.0
EUROPEPMC_RATE = 10.0
DEFAULT_RATE = 5.0  # any other host: polite by default, raise it with a per-host setting
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10


class HttpError(RuntimeError):
    """A request that failed for good (after retries, or with a status not worth retrying).

    The message names the URL with secrets redacted, the status (if any) and the attempts.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None, attempts: int = 1):
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts


class _Retryable(Exception):
    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


# --------------------------------------------------------------------------- secrets


def contact_user_agent(contact: str | None = None) -> str:
    """`medmax-cli/<version> (+contact)`; the contact comes from the option or env MEDMAX_CONTACT."""
    contact = contact or os.environ.get("MEDMAX_CONTACT") or DEFAULT_CONTACT_URL
    if "@" in contact and not contact.startswith("mailto:"):
        contact = f"mailto:{contact}"
    return f"medmax-cli/{__version__} (+{contact})"


# --------------------------------------------------------------------------- rate limiting


def default_rates(env: Mapping[str, str] | None = None) -> dict[str, float]:
    """Per-host requests/s within the services' published limits (NCBI faster with NCBI_API_KEY)."""
    env = os.environ if env is None else env
    ncbi = NCBI_RATE_WITH_KEY if env.get("NCBI_API_KEY") else NCBI_RATE
    return {NCBI_HOST_SUFFIX: ncbi, EUROPEPMC_HOST: EUROPEPMC_RATE}


class RateLimiter:
    """A token bucket per host: at most `rate` requests/s on average, bursts up to `burst`.

    Threads reserve a slot under the lock and sleep outside it, so concurrent callers are
    spaced evenly instead of waking together. A host matches a key if it equals it or ends
    with "." + key (so "ncbi.nlm.nih.gov" covers "eutils.ncbi.nlm.nih.gov").
    """

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        default: float = DEFAULT_RATE,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.rates = dict(rates or {})
        self.default = default
        self.burst = burst
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}  # bucket key -> (tokens, last refill time)

    def rate_for(self, host: str) -> tuple[str, float]:
        host = host.lower()
        best: tuple[str, float] | None = None
        for key, rate in self.rates.items():
            key_l = key.lower()
            if host == key_l or host.endswith("." + key_l):
                if best is None or len(key_l) > len(best[0]):
                    best = (key_l, rate)
        return best or (host, self.default)

    def acquire(self, host: str) -> float:
        """Wait for a slot on `host`; returns the seconds waited."""
        key, rate = self.rate_for(host)
        if rate <= 0:  # 0 or less: unlimited
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, last = self._state.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * rate) - 1.0
            self._state[key] = (tokens, now)
            wait = -tokens / rate if tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)
        return wait


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: full-jitter exponential backoff, capped."""

    attempts: int = 6  # total tries per request, first included
    backoff_base: float = 0.5  # seconds; attempt n waits up to base * 2**n
    backoff_max: float = 30.0
    retry_after_max: float = 300.0  # a server asking for longer than this makes the request fail

    def backoff(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return rng.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


# --------------------------------------------------------------------------- client


@dataclass
class HttpClient:
    """A polite, retrying HTTP client (sync, one connection pool, thread-safe).

    `rates` maps a host (or host suffix) to requests/s; hosts not listed get `default_rate`.
    `secrets` are strings (API keys) scrubbed from every message.
    """

    rates: Mapping[str, float] | None = None
    default_rate: float = DEFAULT_RATE
    timeout: float = DEFAULT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    contact: str | None = None
    secrets: tuple[str, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    transport: httpx.BaseTransport | None = None
    max_connections: int = 16
    trusted_hosts: tuple[str, ...] = ()  # may receive credentialed data, besides loopback
    env: Mapping[str, str] | None = None  # proxy/trust environment (None: os.environ at send time)

    def __post_init__(self) -> None:
        rates = default_rates() if self.rates is None else dict(self.rates)
        self.limiter = RateLimiter(rates, default=self.default_rate, clock=self.clock, sleep=self.sleep)
        self.secrets = tuple(s for s in self.secrets if s) + egress.env_secrets()
        self.user_agent = contact_user_agent(self.contact)
        self._client = self._new_client(None)
        self._proxy_clients: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()
        self.requests = 0  # attempts sent, for benchmarks and tests
        self.retries = 0

    def _new_client(self, proxy: str | None) -> httpx.Client:
        # trust_env=False: proxies, .netrc and the like come only from the route the egress policy
        # decided, never from httpx's own reading of the environment.
        return httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            headers={"User-Agent": self.user_agent},
            follow_redirects=False,
            trust_env=False,
            verify=_verify_from_env(),
            proxy=proxy,
            transport=self.transport,
            limits=httpx.Limits(
                max_connections=self.max_connections, max_keepalive_connections=self.max_connections
            ),
        )

    def _client_for(self, target: egress.Route) -> httpx.Client:
        if target.proxy is None or self.transport is not None:
            return self._client
        with self._lock:
            client = self._proxy_clients.get(target.proxy)
            if client is None:
                client = self._proxy_clients[target.proxy] = self._new_client(target.proxy)
            return client

    # -- lifecycle
    def close(self) -> None:
        self._client.close()
        for client in self._proxy_clients.values():
            client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def redact(self, url: str) -> str:
        return redact_url(url, self.secrets)

    # -- public methods
    def get(
        self, url: str, params: Mapping[str, Any] | None = None, *, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """GET with rate limiting and retries; a 2xx response with its whole body, or HttpError."""
        return self.request("GET", url, params=params, headers=headers)

    def get_bytes(self, url: str, params: Mapping[str, Any] | None = None, **kw: Any) -> bytes:
        return self.get(url, params, **kw).content

    def get_json(self, url: str, params: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        response = self.get(url, params, **kw)
        return self._json(response, url)

    def post_json(
        self,
        url: str,
        json: Any,
        headers: Mapping[str, str] | None = None,
        *,
        credential: bool | None = None,
        trusted: tuple[str, ...] = (),
    ) -> Any:
        """POST a JSON body and parse the JSON answer (for OpenAI-compatible LLM endpoints).

        `credential` says whether the body carries credentialed data (None: as declared by
        `egress.payload`, else treated as credentialed); `trusted` adds hosts allowed to receive it.
        """
        body = orjson.dumps(json)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        response = self.request(
            "POST", url, content=body, headers=hdrs, credential=credential, trusted=trusted
        )
        return self._json(response, url)

    def _json(self, response: httpx.Response, url: str) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise HttpError(
                f"{self.redact(str(response.url))}: answer is not JSON ({exc}); "
                f"starts with {response.content[:60]!r}",
                url=self.redact(url),
                status=response.status_code,
            ) from None

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        credential: bool | None = None,
        trusted: tuple[str, ...] = (),
    ) -> httpx.Response:
        """Send one logical request under the egress policy, retrying transient failures.

        Raises EgressRefused when the policy forbids the route, HttpError when the request fails.
        GET redirects are followed hop by hop (each hop checked); a request with a body is never
        redirected.
        """
        request = self._client.build_request(method, url, params=params, headers=headers, content=content)
        has_body = bool(content) or method.upper() not in ("GET", "HEAD", "OPTIONS")
        if credential is None:
            credential = egress.current_credential()
        allowed = (*self.trusted_hosts, *trusted)
        origin = (request.url.scheme, request.url.host, request.url.port)
        for _hop in range(MAX_REDIRECTS + 1):
            response = self._send(request, credential=credential, has_body=has_body, trusted=allowed)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response
            shown = self.redact(str(request.url))
            target = request.url.join(location)
            if has_body:
                raise HttpError(
                    f"{method} {shown}: HTTP {response.status_code} redirect to {self.redact(str(target))} "
                    "not followed (a request body is never re-sent to another URL)",
                    url=shown,
                    status=response.status_code,
                )
            same_origin = (target.scheme, target.host, target.port) == origin
            if credential and not same_origin:
                raise EgressRefused(
                    f"egress refused: {shown} redirects a credentialed request to another origin "
                    f"({self.redact(str(target))})"
                )
            keep = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            if not same_origin:
                keep = {k: v for k, v in keep.items() if not egress.is_secret_header(k)}
            request = self._client.build_request("GET", target, headers=keep)
        raise HttpError(
            f"{method} {self.redact(url)}: more than {MAX_REDIRECTS} redirects", url=self.redact(url)
        )

    def _send(
        self, request: httpx.Request, *, credential: bool | None, has_body: bool, trusted: tuple[str, ...]
    ) -> httpx.Response:
        """One hop: route and check it, then send with retries."""
        method = request.method
        shown = self.redact(str(request.url))
        target = egress.route(request.url, self.env)
        egress.check(target, credential=credential, has_body=has_body, trusted=trusted, env=self.env)
        client = self._client_for(target)
        host = request.url.host
        last: _Retryable | None = None
        for attempt in range(self.retry.attempts):
            self.limiter.acquire(host)
            with self._lock:
                self.requests += 1
                if attempt:
                    self.retries += 1
            try:
                return self._attempt(request, shown, client)
            except _Retryable as exc:
                last = exc
            if attempt + 1 >= self.retry.attempts:
                break
            wait = self.retry.backoff(attempt, self.rng)
            if last.retry_after is not None:
                if last.retry_after > self.retry.retry_after_max:
                    raise HttpError(
                        f"{method} {shown}: server asks to retry after {last.retry_after:.0f} s "
                        f"({last.reason})",
                        url=shown,
                        status=last.status,
                        attempts=attempt + 1,
                    )
                wait = max(wait, last.retry_after)
            log.info("%s %s: %s; retry %d in %.2f s", method, shown, last.reason, attempt + 1, wait)
            self.sleep(wait)
        assert last is not None
        raise HttpError(
            f"{method} {shown}: {last.reason} (gave up after {self.retry.attempts} attempts)",
            url=shown,
            status=last.status,
            attempts=self.retry.attempts,
        )

    def _attempt(self, request: httpx.Request, shown: str, client: httpx.Client) -> httpx.Response:
        try:
            response = client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:  # resets, refused connections, protocol errors
            raise _Retryable(
                f"connection failed ({type(exc).__name__}: {_scrub(str(exc), self.secrets)})"
            ) from None
        try:
            data = self._read_capped(response, shown)
        finally:
            response.close()
        status = response.status_code
        if status in RETRY_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self.wall_clock())
            raise _Retryable(f"HTTP {status}", status=status, retry_after=retry_after)
        if status >= 400:
            raise HttpError(
                f"{request.method} {shown}: HTTP {status} {response.reason_phrase}", url=shown, status=status
            )
        headers = httpx.Headers(
            [
                (k, v)
                for k, v in response.headers.multi_items()
                if k.lower() not in ("content-encoding", "transfer-encoding")
            ]
        )
        return httpx.Response(status, headers=headers, content=data, request=request)

    def _read_capped(self, response: httpx.Response, shown: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise HttpError(
                        f"{shown}: body over the {self.max_bytes}-byte limit",
                        url=shown,
                        status=response.status_code,
                    )
                chunks.append(chunk)
        except httpx.TimeoutException:
            raise _Retryable("timed out reading the body") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _Retryable(f"truncated body ({type(exc).__name__})") from None
        data = b"".join(chunks)
        expected = response.headers.get("Content-Length")
        if expected and expected.isdigit() and "content-encoding" not in response.headers:
            if len(data) != int(expected):
                raise _Retryable(f"truncated body ({len(data)} of {expected} bytes)")
        return data


def _verify_from_env() -> Any:
    """TLS verification honouring SSL_CERT_FILE / SSL_CERT_DIR (which trust_env=False would drop)."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if not (cafile or capath):
        return True
    import ssl

    return ssl.create_default_context(cafile=cafile or None, capath=capath or None)


# --------------------------------------------------------------------------- concurrency


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """One result of `bounded_map`: a value or the exception that its call raised."""

    value: R | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def bounded_map(fn: Callable[[T], R], items: Iterable[T], *, max_workers: int = 4) -> list[Outcome[R]]:
    """Run `fn` over `items` with at most `max_workers` threads; outcomes in input order.

    Exceptions are captured per item (one bad image must not lose the others); KeyboardInterrupt
    and SystemExit still propagate.
    """
    items = list(items)

    def call(item: T) -> Outcome[R]:
        try:
            return Outcome(value=fn(item))
        except Exception as exc:  # noqa: BLE001 - handed back to the caller, which decides
            return Outcome(error=exc)

    if max_workers <= 1 or len(items) <= 1:
        return [call(item) for item in items]
    with ThreadPoolExecutor(
        max_workers=min(max_workers, len(items)), thread_name_prefix="medmax-http"
    ) as pool:
        return list(pool.map(call, items))
