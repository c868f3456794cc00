"""Egress policy: where the toolkit's bytes may go. Every network call passes through here.

MIMIC-CXR's data use agreement forbids sending its data to third parties, and API keys must not
reach anyone but the service they belong to. One policy, applied by `medmax_cli.http.HttpClient`
(so fetch, the LLM client of synthesize and score's judge all inherit it):

- **Route first, then decide.** The host that receives the bytes is worked out exactly as they will
  be sent: a request to a loopback host goes direct (a proxy is never used for it); any other request
  goes through the proxy that `HTTP_PROXY` / `HTTPS_PROXY` / `ALL_PROXY` name unless `NO_PROXY`
  exempts it. The HTTP client itself ignores the environment (httpx `trust_env=False`) and sends
  along exactly the route decided here, so the decision and the traffic cannot disagree.
- **Credentialed payloads only to trusted hosts.** A request carrying credentialed data may go only
  when every host on its route (the proxy, if any, and the target) is loopback or listed as trusted
  (`--trusted-llm-host`, env `MEDMAX_TRUSTED_HOSTS`, comma-separated). A request body whose
  credential status nobody declared is treated as credentialed (fail closed): callers declare it
  with `payload(record)` (or pass `credential=`) for the record they are sending.
- **No redirects for bodies.** A POST answered with a redirect fails; its body is never re-sent.
  GET redirects are followed (at most 10), each hop routed and checked again; secret headers are
  dropped when the origin changes, and a credentialed request never follows one to another host.
- **Secrets redacted, by one rule.** `redact` is the one function every writer uses (error
  messages, log lines, rejects reasons, `--stats` files and MEDMAX_STATS_DIR, `--print-config`, a
  run's saved config): URLs lose their userinfo (`user:pass@`); secret query parameters (`api_key`,
  `api-key`, `key`, `token`, `sig`, ... and any name ending in key/token/secret/signature/password)
  show as `***`; a secret header (`is_secret_header`: Authorization, Cookie and any name with a
  key/token/secret/auth/signature/session part, such as X-Api-Key or X-Goog-Api-Key) or a mapping key
  of that kind keeps its name and loses its value; Bearer tokens and known secret values (API keys from
  the environment) are scrubbed. The same `is_secret_header` decides which headers a redirect to
  another origin drops.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TRUSTED_HOSTS_ENV = "MEDMAX_TRUSTED_HOSTS"

SECRET_PARAMS = frozenset(
    {
        "api_key",
        "apikey",
        "key",
        "token",
        "access_token",
        "auth",
        "sig",
        "signature",
        "x_amz_signature",
        "x_amz_credential",
        "x_amz_security_token",
        "password",
        "secret",
        "client_secret",
        "code",
        "authorization",
        "passwd",
        "pwd",
        "session",
        "sessionid",
        "session_id",
        "jwt",
    }
)
_SECRET_SUFFIXES = ("key", "token", "secret", "signature", "password", "credential")
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"})
# A header is secret when it is one of the above or has a secret-looking part between - or _ (by
# pattern, so X-Goog-Api-Key, Ocp-Apim-Subscription-Key, X-Auth-Token, Private-Token all count).
_SECRET_HEADER_RE = re.compile(
    r"(?i)^(?:proxy-)?authori[sz]ation$|cookie|(?:^|[-_])(?:api[-_]?key|key|token|secret|signature|sig|"
    r"password|passwd|auth|session|credentials?|jwt)(?:$|[-_])"
)


class EgressRefused(PermissionError):
    """A request the egress policy does not allow (the message names host and reason, no secrets)."""


# --------------------------------------------------------------------------- what a payload is

_CREDENTIAL: ContextVar[bool | None] = ContextVar("medmax_payload_credential", default=None)


@contextmanager
def payload(record_or_flag: Mapping[str, Any] | bool) -> Iterator[None]:
    """Declare what the requests sent inside the block carry: a record's `credential`, or a flag.

    A context variable, so it holds for the thread (or task) that enters the block; a worker thread
    that sends for a record enters the block itself.
    """
    flag = (
        bool(record_or_flag.get("credential"))
        if isinstance(record_or_flag, Mapping)
        else bool(record_or_flag)
    )
    token = _CREDENTIAL.set(flag)
    try:
        yield
    finally:
        _CREDENTIAL.reset(token)


def current_credential() -> bool | None:
    """True/False as declared by the innermost `payload` block; None when nobody declared it."""
    return _CREDENTIAL.get()


# --------------------------------------------------------------------------- trust


def is_loopback(host: str) -> bool:
    """localhost, *.localhost, 127.0.0.0/8 and ::1 (names that cannot leave this machine)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def trusted_hosts(extra: Iterable[str] = (), env: Mapping[str, str] | None = None) -> frozenset[str]:
    """The hosts (besides loopback) that may receive credentialed data: `extra` + MEDMAX_TRUSTED_HOSTS."""
    env = os.environ if env is None else env
    listed = [h for h in (env.get(TRUSTED_HOSTS_ENV) or "").split(",")]
    return frozenset(h.strip().lower().rstrip(".") for h in (*extra, *listed) if h and h.strip())


def host_trusted(host: str, trusted: Iterable[str] = ()) -> bool:
    host = host.strip("[]").lower().rstrip(".")
    return bool(host) and (is_loopback(host) or host in {t.lower() for t in trusted})


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class Route:
    """Where a request's bytes go: the target host and, if one applies, the proxy in between."""

    host: str
    proxy: str | None = None  # proxy URL as configured (may hold userinfo: never shown)
    proxy_source: str | None = None  # the environment variable that named it

    @property
    def proxy_host(self) -> str | None:
        return (urlsplit(self.proxy).hostname or "").lower() if self.proxy else None

    def hosts(self) -> tuple[str, ...]:
        """Every host that receives the bytes (the proxy first)."""
        return (self.proxy_host, self.host) if self.proxy_host else (self.host,)

    def describe(self) -> str:
        if not self.proxy:
            return self.host
        return f"{self.host} via proxy {redact_url(self.proxy)} ({self.proxy_source})"


def environment_proxies(env: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """scheme -> (proxy URL, variable name) from *_PROXY variables; lowercase names win (as curl)."""
    env = os.environ if env is None else env
    found: dict[str, tuple[str, str]] = {}
    for lowercase_pass in (False, True):
        for name, value in env.items():
            if not value or not name.lower().endswith("_proxy") or (name == name.lower()) != lowercase_pass:
                continue
            found[name[:-6].lower()] = (value, name)
    return found


def route(url: Any, env: Mapping[str, str] | None = None) -> Route:
    """The route a request to `url` takes (loopback: always direct)."""
    parts = urlsplit(str(url))
    host = (parts.hostname or "").lower()
    if not host or is_loopback(host):
        return Route(host)
    proxies = environment_proxies(env)
    chosen = proxies.get(parts.scheme.lower()) or proxies.get("all")
    if chosen is None:
        return Route(host)
    no_proxy = {"no": proxies["no"][0]} if "no" in proxies else {}
    hostport = f"{host}:{parts.port}" if parts.port else host
    if no_proxy and urllib.request.proxy_bypass_environment(hostport, no_proxy):
        return Route(host)
    proxy, source = chosen
    if "://" not in proxy:
        proxy = f"http://{proxy}"
    return Route(host, proxy, source)


def check(
    target: Route,
    *,
    credential: bool | None,
    has_body: bool,
    trusted: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> None:
    """Raise EgressRefused unless `target` may receive this request.

    Only requests that carry data are checked: credential True, or a body of undeclared status.
    """
    if credential is False or (credential is None and not has_body):
        return
    allowed = trusted_hosts(trusted, env)
    bad = [h for h in target.hosts() if not host_trusted(h, allowed)]
    if not bad:
        return
    what = "credentialed data" if credential else "a request body of undeclared credential status"
    raise EgressRefused(
        f"egress refused: {what} not sent to {target.describe()}: {bad[0]} is neither loopback nor "
        f"a trusted host (--trusted-llm-host or env {TRUSTED_HOSTS_ENV}; see docs/security.md)"
    )


def route_trusted(url: str, trusted: Iterable[str] = (), env: Mapping[str, str] | None = None) -> bool:
    """Whether credentialed data may be sent to `url` along its route (the proxy included)."""
    try:
        check(route(url, env), credential=True, has_body=True, trusted=trusted, env=env)
    except EgressRefused:
        return False
    return True


# --------------------------------------------------------------------------- URLs


def join_url(base: str, *parts: str) -> str:
    """`base` with path `parts` appended to its path, its query and fragment kept where they belong:
    join_url("https://x/deploy?api-version=2024", "chat/completions") ->
    "https://x/deploy/chat/completions?api-version=2024" (a string join would put the path in the query)."""
    split = urlsplit(base.strip())
    path = split.path.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            path = f"{path}/{part}"
    return urlunsplit(split._replace(path=path))


# --------------------------------------------------------------------------- redaction


def is_secret_param(name: str) -> bool:
    key = name.lower().replace("-", "_")
    return key in SECRET_PARAMS or key.replace("_", "").endswith(_SECRET_SUFFIXES)


def is_secret_header(name: str) -> bool:
    """Whether a header (or a mapping key) carries a secret: by pattern, not a fixed list."""
    return bool(_SECRET_HEADER_RE.search(name.strip())) or is_secret_param(name)


def redact_url(url: str, secrets: Iterable[str] = ()) -> str:
    """The URL with secret query parameters replaced by '***' and userinfo dropped."""
    try:
        parts = urlsplit(str(url))
        if parts.query:
            query = [(k, "***" if is_secret_param(k) else v) for k, v in parse_qsl(parts.query, True)]
            parts = parts._replace(query=urlencode(query, safe="*:/,"))
        if parts.password or parts.username:
            netloc = parts.hostname or ""
            parts = parts._replace(netloc=f"{netloc}:{parts.port}" if parts.port else netloc)
        text = urlunsplit(parts)
    except ValueError:
        text = str(url)
    return scrub(text, secrets)


_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s'\"<>@]*@")
_PARAM_IN_TEXT = re.compile(r"((?:^|[?&;\s])([A-Za-z0-9_.\-]+)=)([^&#\s'\"<>]+)")
# `X-Api-Key: v`, `'x-api-key': 'v'`, `"Authorization": "Bearer v"` in a message or a repr'd dict.
_HEADER_IN_TEXT = re.compile(
    r"""(?i)(["']?)([A-Za-z][A-Za-z0-9_-]*)\1(\s*:\s*)(["']?)((?:bearer|basic|token|digest)\s+)?"""
    r"""([^\s,;'"{}]+)"""
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/\-]+=*")


def env_secrets(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Values of environment variables that hold keys (*_API_KEY, *_TOKEN, *_SECRET)."""
    env = os.environ if env is None else env
    return tuple(v for k, v in env.items() if k.upper().endswith(("_API_KEY", "_TOKEN", "_SECRET")) and v)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _header_sub(match: re.Match[str]) -> str:
    name = match.group(2)
    if not (name.lower() in SECRET_HEADERS or ("-" in name and is_secret_header(name))):
        return match.group(0)
    return f"{match.group(1)}{name}{match.group(1)}{match.group(3)}{match.group(4)}***"


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text (an error message, a log line) with URL userinfo, secret URL parameters, secret
    headers, Bearer tokens and known keys masked."""
    text = _URL_IN_TEXT.sub(lambda m: _USERINFO.sub(r"\1", m.group(0)), text)
    text = _PARAM_IN_TEXT.sub(
        lambda m: m.group(1) + ("***" if is_secret_param(m.group(2)) else m.group(3)), text
    )
    text = _HEADER_IN_TEXT.sub(_header_sub, text)
    text = _BEARER.sub(r"\1***", text)
    return scrub(text, (*secrets, *env_secrets()))


def redact(value: Any, secrets: Iterable[str] = ()) -> Any:
    """The one redaction rule for anything written out: strings through `redact_text`, the value of
    a secret-named mapping key (`api_key`, `X-Api-Key`, `password`) replaced by '***', recursively
    through mappings, lists and tuples. Other values are returned as they are."""
    known = tuple(secrets)  # redact_text adds the environment's keys

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return redact_text(item, known)
        if isinstance(item, Mapping):
            return {
                k: "***"
                if isinstance(k, str) and isinstance(v, str) and v and is_secret_header(k)
                else walk(v)
                for k, v in item.items()
            }
        if isinstance(item, list):
            return [walk(v) for v in item]
        if isinstance(item, tuple):
            return tuple(walk(v) for v in item)
        return item

    return walk(value)
