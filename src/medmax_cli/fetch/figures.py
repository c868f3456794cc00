"""From a parsed article to `figure` records: one per figure, skips counted with a reason.

Shared by `fetch jats` (files on disk) and `fetch pmc` (files over HTTPS): the caller says how
to turn an href into an image reference, everything else (ids, licence filter, skip reasons)
is decided here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from medmax_cli.fetch.jats import Article, Figure
from medmax_cli.media import MediaError
from medmax_cli.records import RecordError, make_id, reason_class
from medmax_cli.streams import ErrorPolicy


def skip(
    policy: ErrorPolicy,
    reason: str,
    *,
    cls: str | None = None,
    where: str | None = None,
    record_id: str | None = None,
    raw: Any = None,
    row: bool = True,
) -> None:
    """Set aside something that is not an error (a video, a retracted article, a row a user's
    filter leaves out): never raises.

    A row is counted as skipped under its class (`cls`, default the reason's head) in the run
    summary and `--stats`, apart from rejects; a whole file left unread (`row=False`) is counted
    as `files not read`, so in = out + rejected + skipped holds over rows. Either way it is listed
    in the rejects file when there is one, with the full reason, so nothing disappears silently
    even with --on-error fail.
    """
    if row:
        policy.skip(cls or reason_class(reason), reason, where=where, record_id=record_id, raw=raw)
    else:
        policy.report.count("files not read")
        policy.write_entry(
            cls or reason_class(reason), reason, raw, where=where, record_id=record_id, skipped=True
        )


def parse_licenses(spec: str | None) -> frozenset[str] | None:
    """'cc-by,cc0' -> {'cc-by', 'cc0'}; None or '' keeps every licence."""
    if not spec:
        return None
    return frozenset(part.strip().lower() for part in spec.split(",") if part.strip())


def article_key(article: Article, fallback: str) -> str:
    """'PMC123.2' style key naming the article (pmcid + version when known)."""
    if article.pmcid:
        return f"{article.pmcid}.{article.version}" if article.version else article.pmcid
    return fallback


def article_admitted(
    article: Article, *, policy: ErrorPolicy, licenses: frozenset[str] | None, where: str
) -> bool:
    """False (and counted) for retracted articles and licences outside the filter: each of the
    article's figures counts as one in and one skipped (one rejects-file entry for the article),
    so in = out + rejected + skipped holds over figures."""
    key = article_key(article, where)
    n = max(1, len(article.figures))
    if article.retracted:
        policy.report.count("in", n)
        policy.report.skip("retracted article", n)
        policy.write_entry(
            "retracted article", f"retracted article: {key}", article.meta(), where=where, record_id=key,
            skipped=True,
        )  # fmt: skip
        return False
    if licenses is not None and article.license not in licenses:
        policy.report.count("in", n)
        policy.report.skip("license not selected", n)
        policy.write_entry(
            "license not selected",
            f"license {article.license} not selected (--license): {key}",
            article.meta(),
            where=where,
            record_id=key,
            skipped=True,
        )
        return False
    return True


def figure_records(
    article: Article,
    resolve: Callable[[Figure, str], dict[str, Any]],
    *,
    source: str,
    policy: ErrorPolicy,
    where: str,
    fallback_key: str,
    extra_meta: dict[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one figure record per figure with an image; videos and image-less figures are skipped.

    `resolve(figure, href)` returns an image reference (already in the media store) or raises
    RecordError/MediaError, which goes through the policy as a real error.
    """
    key = article_key(article, fallback_key)
    for figure in article.figures:
        policy.report.count("in")  # one figure considered: out, rejected or skipped
        record_id = make_id(key, figure.figure_id)
        if figure.is_video:
            skip(policy, f"video: {record_id}", where=where, record_id=record_id)
            continue
        if not figure.hrefs:
            skip(policy, f"no image file: {record_id}", where=where, record_id=record_id)
            continue
        try:
            images = [resolve(figure, href) for href in figure.hrefs]
        except (RecordError, MediaError) as exc:
            policy.reject(
                exc,
                {"id": record_id, "figure_id": figure.figure_id, "hrefs": figure.hrefs},
                where=where,
                record_id=record_id,
            )
            continue
        yield {
            "id": record_id,
            "kind": "figure",
            "source": source,
            "license": article.license,
            "credential": False,
            "images": images,
            "caption": figure.caption,
            "label": figure.label,
            "figure_id": figure.figure_id,
            "mentions": [m.as_dict() for m in figure.mentions],
            "article": article.meta(),
            "meta": {"license_source": article.license_source, **(extra_meta or {})},
        }
