"""`fetch pmc`: Europe PMC search for discovery, the NCBI PMC Cloud bucket (HTTPS) for files.

Per article: find its latest version with an S3 ListObjectsV2 request on the bucket, read the
version's metadata JSON (`PMC{n}.{v}/PMC{n}.{v}.json`, else `metadata/PMC{n}.{v}.json`:
`license_code`, `is_pmc_openaccess`, `is_manuscript`, `is_historical_ocr`, `is_retracted`, and
`xml_url`/`media_urls` as `s3://pmc-oa-opendata/...?md5=<hex>` strings), the JATS and the figure
files (bounded concurrency, each md5 checked against the listed one, each validated by the media
store). An article missing from the bucket falls back to Europe PMC's
`/{PMCID}/fullTextXML` for its text; its figures then have no image source and are skipped
with that reason. Every request goes through the shared rate-limited client.

`fetch_articles` yields one `ArticleBatch` per finished article so the caller can write its
records and only then mark it finished in the resume state.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from lxml import etree

from medmax_cli.egress import join_url
from medmax_cli.fetch.figures import article_admitted, figure_records, skip
from medmax_cli.fetch.jats import Article, Figure, JatsError, candidate_names, parse_jats
from medmax_cli.fetch.local import apply_cloud_metadata
from medmax_cli.fetch.state import FetchState
from medmax_cli.http import HttpClient, HttpError, Outcome, bounded_map
from medmax_cli.media import MediaError, MediaStore
from medmax_cli.records import RecordError
from medmax_cli.streams import ErrorPolicy, in_shard

log = logging.getLogger(__name__)

EUROPEPMC_URL = "https://www.ebi.ac.uk/europepmc/webservices/rest"
PMC_CLOUD_URL = "https://pmc-oa-opendata.s3.amazonaws.com"
BUCKET = "pmc-oa-opendata"
_PMCID = re.compile(r"^(?:PMC)?(\d+)$", re.I)


@dataclass
class ArticleBatch:
    """One finished article: its records (possibly none) and the search cursor to resume from."""

    key: str
    records: list[dict[str, Any]] = field(default_factory=list)
    cursor: str | None = None
    failed: bool = False  # fetching failed for good (rejected): not marked finished, a rerun retries


def normalise_pmcid(text: str) -> str:
    match = _PMCID.match(text.strip())
    if not match:
        raise ValueError(f"not a PMCID: {text!r}")
    return f"PMC{match.group(1)}"


def read_id_file(lines: Iterable[str]) -> list[str]:
    """PMCIDs, one a line; blank lines and '#' comments ignored, duplicates dropped (order kept)."""
    seen: dict[str, None] = {}
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if text:
            seen.setdefault(normalise_pmcid(text), None)
    return list(seen)


def search(
    client: HttpClient,
    base: str,
    query: str,
    *,
    page_size: int = 100,
    cursor: str = "*",
    on_hit_count: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, list[str], str]]:
    """Europe PMC cursor paging: yields (cursor of this page, PMCIDs on it, next cursor).

    `on_hit_count` hears the query's `hitCount` from the first page (for progress and ETA)."""
    while True:
        data = client.get_json(
            join_url(base, "search"),
            {
                "query": query,
                "format": "json",
                "resultType": "lite",
                "pageSize": page_size,
                "cursorMark": cursor,
            },
        )
        results = (data.get("resultList") or {}).get("result") or []
        if on_hit_count is not None and isinstance(data.get("hitCount"), int):
            on_hit_count(data["hitCount"])
            on_hit_count = None
        ids = []
        for item in results:
            pmcid = item.get("pmcid") or (item.get("id") if item.get("source") == "PMC" else None)
            if pmcid:
                ids.append(normalise_pmcid(pmcid))
        next_cursor = data.get("nextCursorMark") or cursor
        yield cursor, ids, next_cursor
        if not results or next_cursor == cursor:
            return
        cursor = next_cursor


def split_md5(url: str) -> tuple[str, str | None]:
    """Split a bucket URL from its md5: `s3://pmc-oa-opendata/PMC1.1/f.jpg?md5=abc` -> (URL, "abc").

    PMC Cloud metadata writes every file URL (`xml_url`, `text_url`, `pdf_url`, each of
    `media_urls`) as a string carrying the object's md5 in the query."""
    parts = urlsplit(url)
    md5 = parse_qs(parts.query).get("md5", [None])[0]
    return urlunsplit(parts._replace(query="", fragment="")), (md5.lower() if md5 else None)


def _with_slash(url: str) -> str:
    """The bucket's root listing is `{cloud_url}/` (a query, if the base has one, stays after it)."""
    split = urlsplit(url)
    return urlunsplit(split._replace(path=split.path.rstrip("/") + "/"))


def s3_to_https(url: str, cloud_url: str) -> str:
    """s3://pmc-oa-opendata/KEY -> {cloud_url}/KEY, NCBI's documented HTTPS form of the bucket
    (https://pmc-oa-opendata.s3.amazonaws.com/KEY); `cloud_url` lets mirrors and tests stand in.
    The `?md5=` query is not part of the object's address and is dropped (see `split_md5`)."""
    url, _md5 = split_md5(url)
    if url.startswith(f"s3://{BUCKET}/"):
        key = url[len(f"s3://{BUCKET}/") :]
        if not key or ".." in PurePosixPath(key).parts:
            raise RecordError(f"URL {url} does not name a file in the {BUCKET} bucket")
        return join_url(cloud_url, key)
    if url.startswith("s3://"):
        raise RecordError(f"URL {url} is outside the {BUCKET} bucket")
    return url


def latest_version(client: HttpClient, cloud_url: str, pmcid: str) -> int | None:
    """The highest PMC{n}.{v}/ prefix in the bucket (S3 ListObjectsV2 with a delimiter), or None."""
    try:
        response = client.get(
            _with_slash(join_url(cloud_url)), {"list-type": "2", "prefix": f"{pmcid}.", "delimiter": "/"}
        )
    except HttpError as exc:
        if exc.status in (403, 404):
            return None
        raise
    try:
        root = etree.fromstring(
            response.content, parser=etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        )
    except etree.XMLSyntaxError:
        raise RecordError(f"{pmcid}: unreadable bucket listing") from None
    versions = []
    for prefix in root.xpath("//*[local-name()='CommonPrefixes']/*[local-name()='Prefix']/text()"):
        match = re.fullmatch(rf"{pmcid}\.(\d+)/", str(prefix))
        if match:
            versions.append(int(match.group(1)))
    return max(versions) if versions else None


def _media_index(meta: dict[str, Any], cloud_url: str) -> dict[str, tuple[str, str | None]]:
    """file name -> (https url, md5) from `media_urls`: a list of "s3://...?md5=<hex>" strings as
    the bucket publishes them (a {url, md5} object or a {url: md5} map is read too)."""
    index: dict[str, tuple[str, str | None]] = {}
    entries = meta.get("media_urls") or []
    if isinstance(entries, dict):
        entries = [{"url": k, "md5": v} for k, v in entries.items()]
    if isinstance(entries, str):
        entries = [entries]
    for entry in entries:
        url, md5 = (entry.get("url"), entry.get("md5")) if isinstance(entry, dict) else (entry, None)
        if isinstance(url, str):
            bare, listed = split_md5(url)
            index[PurePosixPath(urlsplit(bare).path).name] = (s3_to_https(bare, cloud_url), md5 or listed)
    return index


def _check_md5(data: bytes, md5: str | None, what: str) -> None:
    if md5 and hashlib.md5(data).hexdigest() != md5.lower():
        raise RecordError(f"md5 mismatch for {what} (got {hashlib.md5(data).hexdigest()}, listed {md5})")


def _download_image(
    client: HttpClient, media: MediaStore, url: str, md5: str | None, what: str
) -> dict[str, Any]:
    data = client.get_bytes(url)
    _check_md5(data, md5, client.redact(url))
    ref = media.put(data, what=what)
    return {**ref, "url": client.redact(url), **({"md5": md5} if md5 else {})}


def cloud_metadata(client: HttpClient, cloud_url: str, prefix: str) -> dict[str, Any]:
    """`PMC{n}.{v}/PMC{n}.{v}.json`, or the copy under `metadata/` the bucket also keeps."""
    try:
        meta = client.get_json(join_url(cloud_url, prefix, f"{prefix}.json"))
    except HttpError as exc:
        if exc.status not in (403, 404):
            raise
        meta = client.get_json(join_url(cloud_url, "metadata", f"{prefix}.json"))
    if not isinstance(meta, dict):
        raise RecordError(f"{prefix}: PMC Cloud metadata is not a JSON object")
    return meta


def fetch_article(
    client: HttpClient,
    pmcid: str,
    *,
    media: MediaStore,
    policy: ErrorPolicy,
    europepmc_url: str,
    cloud_url: str,
    licenses: frozenset[str] | None,
    media_workers: int = 4,
) -> list[dict[str, Any]]:
    """The figure records of one article (skips and rejects go through the policy)."""
    where = f"pmc:{pmcid}"
    version = latest_version(client, cloud_url, pmcid)
    media_index: dict[str, tuple[str, str | None]] = {}
    if version is not None:
        prefix = f"{pmcid}.{version}"
        meta = cloud_metadata(client, cloud_url, prefix)
        if meta.get("is_pmc_openaccess") is False:
            policy.report.count("in")  # the article: in = out + rejected + skipped
            skip(policy, f"not open access: {prefix}", where=where, record_id=prefix)
            return []
        xml_s3, xml_md5 = split_md5(meta.get("xml_url") or f"s3://{BUCKET}/{prefix}/{prefix}.xml")
        xml_url = s3_to_https(xml_s3, cloud_url)
        xml = client.get_bytes(xml_url)
        _check_md5(xml, xml_md5, client.redact(xml_url))
        article = _parse(xml, where)
        apply_cloud_metadata(article, {**meta, "version": version})
        media_index = _media_index(meta, cloud_url)
    else:
        log.info("%s is not in the PMC Cloud bucket; text from Europe PMC fullTextXML", pmcid)
        article = _parse(client.get_bytes(join_url(europepmc_url, pmcid, "fullTextXML")), where)
        article.pmcid = article.pmcid or pmcid
    policy.report.count("articles")
    if not article_admitted(article, policy=policy, licenses=licenses, where=where):
        return []

    # Which files the figures need, fetched together with bounded concurrency.
    wanted: dict[str, tuple[str, str | None]] = {}
    chosen: dict[tuple[str, str], str | None] = {}
    for figure in article.figures:
        if figure.is_video:
            continue
        for href in figure.hrefs:
            try:
                names = candidate_names(href)
            except JatsError:
                chosen[(figure.figure_id, href)] = None
                continue
            name = next((PurePosixPath(n).name for n in names if PurePosixPath(n).name in media_index), None)
            chosen[(figure.figure_id, href)] = name
            if name:
                wanted[name] = media_index[name]
    names = sorted(wanted)
    outcomes: dict[str, Outcome] = dict(
        zip(
            names,
            bounded_map(
                lambda n: _download_image(client, media, wanted[n][0], wanted[n][1], what=f"{pmcid} {n}"),
                names,
                max_workers=media_workers,
            ),
            strict=True,
        )
    )

    def resolve(figure: Figure, href: str) -> dict[str, Any]:
        candidate_names(href)  # raises JatsError (a RecordError) for hrefs leaving the article folder
        name = chosen.get((figure.figure_id, href))
        if name is None:
            source = "the article's media_urls" if version is not None else "PMC Cloud (Europe PMC text only)"
            raise RecordError(f"image file not found for href {href!r} in {source}")
        outcome = outcomes[name]
        if outcome.error is not None:
            error = outcome.error
            if isinstance(error, (RecordError, MediaError)):
                raise error
            raise RecordError(str(error))
        return dict(outcome.value)

    records = list(
        figure_records(article, resolve, source="pmc", policy=policy, where=where, fallback_key=pmcid)
    )
    policy.report.count("figures", len(records))
    return records


def _parse(data: bytes, where: str) -> Article:
    return parse_jats(data, name=where)


def fetch_articles(
    client: HttpClient,
    *,
    media: MediaStore,
    policy: ErrorPolicy,
    state: FetchState,
    query: str | None = None,
    ids: list[str] | None = None,
    max_articles: int | None = None,
    europepmc_url: str = EUROPEPMC_URL,
    cloud_url: str = PMC_CLOUD_URL,
    licenses: frozenset[str] | None = None,
    page_size: int = 100,
    media_workers: int = 4,
    shard: tuple[int, int] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Iterator[ArticleBatch]:
    """One batch per article, in discovery order, skipping articles the state marks finished.

    With `shard` (i, n) only the articles whose PMCID hashes to shard i are fetched (every shard
    pages through the same search), so n jobs split one crawl without coordination.
    `on_total` hears how many articles this run expects (hit count or ids, capped by `max_articles`,
    divided among shards, less those already finished), for a progress bar with an ETA.
    """
    budget = None if max_articles is None else max_articles - len(state.done)

    def expect(matched: int) -> None:
        if on_total is None:
            return
        total = matched if max_articles is None else min(matched, max_articles)
        if shard is not None:
            total = -(-total // shard[1])
        on_total(max(0, total - len(state.done)))

    if ids is not None:
        expect(len(ids))

    def pages() -> Iterator[tuple[str | None, list[str], str | None]]:
        if ids is not None:
            yield None, ids, None
        else:
            assert query is not None
            yield from search(
                client,
                europepmc_url,
                query,
                page_size=page_size,
                cursor=state.cursor or "*",
                on_hit_count=expect,
            )

    for _page_cursor, page_ids, next_cursor in pages():
        for pmcid in page_ids:
            if pmcid in state.done or not in_shard(pmcid, shard):
                continue
            if budget is not None and budget <= 0:
                return
            try:
                records = fetch_article(
                    client,
                    pmcid,
                    media=media,
                    policy=policy,
                    europepmc_url=europepmc_url,
                    cloud_url=cloud_url,
                    licenses=licenses,
                    media_workers=media_workers,
                )
            except (HttpError, RecordError, MediaError) as exc:
                error = exc if isinstance(exc, (RecordError, MediaError)) else RecordError(str(exc))
                policy.reject(error, {"pmcid": pmcid}, where=f"pmc:{pmcid}", record_id=pmcid)
                yield ArticleBatch(pmcid, failed=True)
                continue
            if budget is not None:
                budget -= 1
            yield ArticleBatch(pmcid, records)
        if next_cursor is not None:
            yield ArticleBatch("", cursor=next_cursor)  # page finished: the cursor moves on
