"""`fetch pmc --dry-run`: what a crawl would cost, from one search request.

Europe PMC's search answers `hitCount` with every page, and a `resultType=core` page carries
each article's `license`, so a single request tells how many articles a query matches, how many
requests the crawl needs (search pages, then per article: the bucket listing, the metadata JSON
and the JATS, plus one per figure) and how long that takes at the configured per-host rates.
Figures per article are not known before the JATS is read, so the time is a lower bound.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from medmax_cli.egress import join_url
from medmax_cli.http import HttpClient

REQUESTS_PER_ARTICLE = 3  # S3 ListObjectsV2, PMC{n}.{v}.json, the JATS xml (figures come on top)


@dataclass
class CrawlPlan:
    hit_count: int | None  # None for an --ids list
    articles: int  # articles the crawl would fetch (after --max and --shard)
    search_requests: int
    article_requests: int  # lower bound: figures add one each
    rates: dict[str, float]  # host -> requests/s (0: unlimited)
    seconds: float  # lower bound at those rates, one article at a time
    first_page_licences: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = []
        if self.hit_count is not None:
            out.append(f"hit count: {self.hit_count} articles match the query")
        out.append(f"articles to fetch: {self.articles}")
        out.append(
            f"requests: {self.search_requests} search + at least {self.article_requests} for articles "
            f"({REQUESTS_PER_ARTICLE} per article, plus one per figure)"
        )
        rates = ", ".join(
            f"{host} {rate:g}/s" if rate > 0 else f"{host} unlimited" for host, rate in self.rates.items()
        )
        out.append(f"rates: {rates}")
        out.append(f"expected time: at least {_duration(self.seconds)} at these rates")
        if self.first_page_licences:
            total = sum(self.first_page_licences.values())
            mix = ", ".join(
                f"{name} {count} ({100 * count / total:.0f}%)"
                for name, count in self.first_page_licences.most_common()
            )
            out.append(f"licences on the first page ({total} articles): {mix}")
        return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_pmc(
    client: HttpClient,
    *,
    europepmc_url: str,
    cloud_url: str,
    query: str | None = None,
    ids: list[str] | None = None,
    max_articles: int | None = None,
    page_size: int = 100,
    shard: tuple[int, int] | None = None,
) -> CrawlPlan:
    """One search request (none for --ids) and arithmetic; nothing is downloaded or written."""
    base = europepmc_url.rstrip("/")
    licences: Counter = Counter()
    hit_count: int | None = None
    if ids is not None:
        matched = len(ids)
    else:
        assert query is not None
        data: dict[str, Any] = client.get_json(
            join_url(base, "search"),
            {
                "query": query,
                "format": "json",
                "resultType": "core",
                "pageSize": page_size,
                "cursorMark": "*",
            },
        )
        hit_count = int(data.get("hitCount") or 0)
        matched = hit_count
        for item in (data.get("resultList") or {}).get("result") or []:
            licences[str(item.get("license") or "none given").lower()] += 1
    articles = matched if max_articles is None else min(matched, max_articles)
    if shard is not None:
        articles = math.ceil(articles / shard[1])
    # every shard pages through the whole search; --max stops paging early
    searched = matched if max_articles is None or shard is not None else articles
    search_requests = 0 if ids is not None else max(1, math.ceil(searched / page_size))
    article_requests = REQUESTS_PER_ARTICLE * articles
    search_host = urlsplit(base).hostname or base
    cloud_host = urlsplit(cloud_url).hostname or cloud_url
    rates = {
        search_host: client.limiter.rate_for(search_host)[1],
        cloud_host: client.limiter.rate_for(cloud_host)[1],
    }
    seconds = 0.0
    for host, count in ((search_host, search_requests), (cloud_host, article_requests)):
        if rates[host] > 0:
            seconds += count / rates[host]
    return CrawlPlan(hit_count, articles, search_requests, article_requests, rates, seconds, licences)
