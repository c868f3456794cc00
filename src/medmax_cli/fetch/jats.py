"""Safe JATS parsing: article metadata, every figure, and the paragraphs that cite each figure.

Why our own walker rather than `itertext()`: a mention record carries the character offsets of
the anchor ("Figure 3E", or just "3E") inside the paragraph text, so the paragraph text and the
offsets must come from one pass over the same nodes, with nested floats (figures, tables,
supplementary material placed inside a <p>) left out of both.

The XML parser never loads a DTD, resolves entities or touches the network, and refuses
documents over MAX_XML_BYTES.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from lxml import etree

from medmax_cli.records import RecordError

XLINK = "http://www.w3.org/1999/xlink"
MAX_XML_BYTES = 64 * 1024 * 1024
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".webp", ".bmp")
# Elements whose text is not part of the running paragraph (they float elsewhere on the page).
_FLOATS = {
    "fig",
    "fig-group",
    "table-wrap",
    "table-wrap-group",
    "supplementary-material",
    "boxed-text",
    "disp-formula-group",
    "media",
    "graphic",
    "alternatives",
}
_ABBREVIATIONS = {
    "fig",
    "figs",
    "e.g",
    "i.e",
    "al",
    "vs",
    "approx",
    "no",
    "ref",
    "refs",
    "eq",
    "ca",
    "cf",
    "dr",
    "mr",
    "mrs",
    "resp",
    "suppl",
    "tab",
    "vol",
    "etc",
}
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9\u00C0-\u024F])")
_WS = re.compile(r"\s+")


class JatsError(RecordError):
    """An article that cannot be parsed safely (malformed, too large, unsafe href)."""


@dataclass
class Mention:
    section: str
    paragraph: str
    sentence: str
    anchor: str
    start: int  # character offsets of `anchor` inside `paragraph`
    end: int

    def as_dict(self) -> dict:
        return {
            "section": self.section,
            "paragraph": self.paragraph,
            "sentence": self.sentence,
            "anchor": self.anchor,
            "start": self.start,
            "end": self.end,
        }


@dataclass
class Figure:
    figure_id: str
    label: str
    caption_title: str
    caption_text: str
    hrefs: list[str]  # graphic xlink:href values, in document order
    is_video: bool = False
    mentions: list[Mention] = field(default_factory=list)

    @property
    def caption(self) -> str:
        title, text = self.caption_title.strip(), self.caption_text.strip()
        if title and text:
            sep = " " if title.endswith((".", ":", "?", "!")) else ". "
            return f"{title}{sep}{text}"
        return title or text


@dataclass
class Article:
    pmcid: str | None
    version: int | None
    doi: str | None
    title: str
    journal: str
    year: int | None
    license: str
    license_url: str | None
    retracted: bool
    figures: list[Figure]
    pmc: dict = field(default_factory=dict)  # PMC Cloud flags (is_manuscript, ...) when known
    license_source: str | None = None  # where the licence was read (see `read_license`)

    def meta(self) -> dict:
        meta = {
            "pmcid": self.pmcid,
            "version": self.version,
            "doi": self.doi,
            "title": self.title,
            "journal": self.journal,
            "year": self.year,
            "license": self.license,
            "license_source": self.license_source,
            "retracted": self.retracted,
        }
        if self.pmc:
            meta["pmc"] = dict(self.pmc)
        return meta


# --------------------------------------------------------------------------- licences

_CC_URL = re.compile(r"creativecommons\.org/(?:licenses|licences)/([a-z\-]+)", re.I)


def normalise_license(*hints: str | None) -> str:
    """'cc-by', 'cc-by-nc', 'cc-by-nc-nd', 'cc-by-sa', 'cc-by-nd', 'cc-by-nc-sa', 'cc0' or 'other'.

    Hints are tried in order: licence URLs, PMC licence codes ("CC BY-NC"), licence-type values,
    licence text; the first one that names a Creative Commons licence wins.
    """
    for hint in hints:
        if not hint:
            continue
        text = hint.strip()
        low = text.lower()
        match = _CC_URL.search(low)
        if match:
            return "cc-" + match.group(1).strip("-")
        if "publicdomain/zero" in low or re.fullmatch(r"cc[\s_-]?0(?:[\s_-]?1\.0)?", low) or "cc0" in low:
            return "cc0"
        if (
            "publicdomain/mark" in low
            or low in ("public-domain", "public domain")
            or "in the public domain" in low
        ):
            return "public-domain"
        code = re.fullmatch(r"cc[\s_-]?(by(?:[\s_-](?:nc|nd|sa))*)(?:[\s_-]?\d\.\d)?", low)
        if code:
            return "cc-" + re.sub(r"[\s_]", "-", code.group(1))
        if "creative commons" in low:
            parts = ["by"] if "attribution" in low else []
            if "noncommercial" in low or "non-commercial" in low:
                parts.append("nc")
            if "noderivatives" in low or "no derivatives" in low or "noderivs" in low:
                parts.append("nd")
            if "sharealike" in low or "share alike" in low:
                parts.append("sa")
            if parts:
                return "cc-" + "-".join(parts)
    return "other"


def read_license(meta: etree._Element) -> tuple[str, str | None, str | None]:
    """(licence, licence URL, where it was read) from an article-meta element, trying in order:
    `<license>` (xlink:href, license_ref, license-type), its `<license-p>` text, the
    `<copyright-statement>` text (older articles, e.g. PLoS 2007-2010, state CC BY only there, some
    outside `<permissions>`), then the whole `<permissions>` text; `other` (source None) when none
    names a licence. The PMC OA file list and PMC Cloud metadata may override it later."""
    license_el = _first(meta, ".//*[local-name()='permissions']/*[local-name()='license']")
    if license_el is None:
        license_el = _first(meta, ".//*[local-name()='license']")
    license_url = None
    hints: list[tuple[str, str | None]] = []
    if license_el is not None:
        license_url = _href(license_el)
        ref = _first(license_el, ".//*[local-name()='license_ref']")
        hints += [
            ("license/@xlink:href", license_url),
            ("license/license_ref", _text(ref) if ref is not None else None),
            ("license/@license-type", license_el.get("license-type")),
        ]
        hints += [("license-p", _text(p)) for p in license_el.xpath(".//*[local-name()='license-p']")]
        hints += [("license", _text(license_el))]
    hints += [
        ("copyright-statement", _text(el)) for el in meta.xpath(".//*[local-name()='copyright-statement']")
    ]
    permissions = _first(meta, ".//*[local-name()='permissions']")
    if permissions is not None:
        hints.append(("permissions", _text(permissions)))
    for source, hint in hints:
        name = normalise_license(hint)
        if name != "other":
            return name, license_url, source
    return "other", license_url, None


# --------------------------------------------------------------------------- parsing helpers


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
    )


def _local(el: etree._Element) -> str:
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _text(el: etree._Element | None) -> str:
    if el is None:
        return ""
    return _WS.sub(" ", "".join(el.itertext())).strip()


def _first(root: etree._Element, path: str) -> etree._Element | None:
    found = root.xpath(path)
    return found[0] if found else None


def _href(el: etree._Element) -> str | None:
    return el.get(f"{{{XLINK}}}href") or el.get("href")


class _Flat:
    """Paragraph text with whitespace collapsed, plus the spans of figure xrefs inside it."""

    def __init__(self, el: etree._Element):
        self.parts: list[str] = []
        self.length = 0
        # xref element -> (start, end); keyed by the element itself so that lxml keeps its proxy alive
        # (ids of lxml proxies are reused once a proxy is collected)
        self.spans: dict[etree._Element, tuple[int, int]] = {}
        self._visit(el)
        text = "".join(self.parts)
        self.text = text.rstrip()

    def _add(self, s: str | None) -> None:
        if not s:
            return
        s = _WS.sub(" ", s)
        if (self.length == 0 or (self.parts and self.parts[-1].endswith(" "))) and s.startswith(" "):
            s = s[1:]
        if s:
            self.parts.append(s)
            self.length += len(s)

    def _visit(self, el: etree._Element) -> None:
        self._add(el.text)
        for child in el:
            name = _local(child)
            if name and name not in _FLOATS:
                start = self.length
                self._visit(child)
                if name == "xref":
                    end = self.length
                    if end > start and self.parts[-1].endswith(" "):
                        end -= 1
                    self.spans[child] = (start, end)
            self._add(child.tail)


def _sentence_at(text: str, start: int, end: int) -> str:
    """The sentence of `text` holding [start, end), not cut at 'Fig.' or 'et al.'."""
    bounds = [0]
    for match in _SENTENCE_END.finditer(text):
        word = re.search(r"([A-Za-z.]+)[.!?][\"')\]]*\s+$", text[: match.end()])
        if word and word.group(1).lower().rstrip(".") in _ABBREVIATIONS:
            continue
        bounds.append(match.end())
    bounds.append(len(text) + 1)
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if lo <= start < hi:
            return text[lo:hi].strip()
    return text.strip()


def _section_title(el: etree._Element) -> str:
    for ancestor in el.iterancestors():
        name = _local(ancestor)
        if name in ("sec", "app", "boxed-text"):
            title = next((c for c in ancestor if _local(c) == "title"), None)
            if title is not None and _text(title):
                return _text(title)
        if name == "abstract":
            return "Abstract"
    return ""


# --------------------------------------------------------------------------- article


def parse_jats(data: bytes, *, name: str = "article") -> Article:
    """Parse one JATS document into an Article (metadata, figures, mentions); raise JatsError."""
    if len(data) > MAX_XML_BYTES:
        raise JatsError(f"{name}: {len(data)} bytes of XML is over the {MAX_XML_BYTES}-byte limit")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise JatsError(f"{name}: malformed JATS XML ({exc})") from None
    if _local(root) != "article":
        article = _first(root, ".//*[local-name()='article']")
        if article is None:
            raise JatsError(f"{name}: not a JATS article (root element <{_local(root)}>)")
        root = article
    meta = _first(root, "./*[local-name()='front']/*[local-name()='article-meta']")
    if meta is None:
        meta = root

    def article_id(*types: str) -> str | None:
        for kind in types:
            el = _first(meta, f"./*[local-name()='article-id'][@pub-id-type='{kind}']")
            if el is not None and _text(el):
                return _text(el)
        return None

    pmcid = article_id("pmcid", "pmc")
    if pmcid and not pmcid.upper().startswith("PMC"):
        pmcid = f"PMC{pmcid}"
    version = None
    pmcid_ver = article_id("pmcid-ver", "pmc-version")
    if pmcid_ver and "." in pmcid_ver:
        tail = pmcid_ver.rsplit(".", 1)[1]
        version = int(tail) if tail.isdigit() else None
    title = _text(_first(meta, "./*[local-name()='title-group']/*[local-name()='article-title']"))
    journal = _text(_first(root, ".//*[local-name()='journal-meta']//*[local-name()='journal-title']"))
    year = None
    for path in (
        "./*[local-name()='pub-date'][@pub-type='epub' or @date-type='pub']/*[local-name()='year']",
        "./*[local-name()='pub-date']/*[local-name()='year']",
    ):
        el = _first(meta, path)
        if el is not None and _text(el).isdigit():
            year = int(_text(el))
            break
    license_name, license_url, license_source = read_license(meta)
    retracted = (
        root.get("article-type") == "retraction"
        or title.upper().startswith(("RETRACTED", "RETRACTION"))
        or bool(
            root.xpath(".//*[local-name()='related-article'][@related-article-type='retraction-forward']")
        )
    )
    figures = _figures(root)
    return Article(
        pmcid=pmcid,
        version=version,
        doi=article_id("doi"),
        title=title,
        journal=journal,
        year=year,
        license=license_name,
        license_url=license_url,
        retracted=retracted,
        figures=figures,
        license_source=license_source,
    )


def _figures(root: etree._Element) -> list[Figure]:
    figures: list[Figure] = []
    by_id: dict[str, list[Figure]] = {}
    for index, fig in enumerate(root.iter("{*}fig", "fig")):
        fig_id = fig.get("id") or f"fig{index + 1}"
        caption = next((c for c in fig if _local(c) == "caption"), None)
        group = fig.getparent()
        if caption is None and group is not None and _local(group) == "fig-group":
            caption = next((c for c in group if _local(c) == "caption"), None)
        title_el = next((c for c in caption if _local(c) == "title"), None) if caption is not None else None
        text = ""
        if caption is not None:
            text = " ".join(_text(c) for c in caption if _local(c) != "title" and _text(c))
        hrefs = [h for g in fig.iter("{*}graphic", "graphic") if (h := _href(g))]
        is_video = not hrefs and any(True for _ in fig.iter("{*}media", "media"))
        figure = Figure(
            figure_id=fig_id,
            label=_text(next((c for c in fig if _local(c) == "label"), None)),
            caption_title=_text(title_el),
            caption_text=text,
            hrefs=hrefs,
            is_video=is_video,
        )
        figures.append(figure)
        by_id.setdefault(fig_id, []).append(figure)
        if group is not None and _local(group) == "fig-group" and group.get("id"):
            by_id.setdefault(group.get("id"), []).append(figure)
    _attach_mentions(root, by_id)
    return figures


def _attach_mentions(root: etree._Element, by_id: dict[str, list[Figure]]) -> None:
    flats: dict[etree._Element, _Flat] = {}
    for xref in root.iter("{*}xref", "xref"):
        if xref.get("ref-type") != "fig":
            continue
        paragraph = None
        for ancestor in xref.iterancestors():
            name = _local(ancestor)
            if name in _FLOATS or name == "caption":
                paragraph = None
                break
            if name == "p" and paragraph is None:
                paragraph = ancestor
        if paragraph is None:
            continue
        flat = flats.get(paragraph)
        if flat is None:
            flat = flats[paragraph] = _Flat(paragraph)
        span = flat.spans.get(xref)
        if span is None:
            continue
        start, end = span
        end = min(end, len(flat.text))
        mention = Mention(
            section=_section_title(paragraph),
            paragraph=flat.text,
            sentence=_sentence_at(flat.text, start, end),
            anchor=flat.text[start:end],
            start=start,
            end=end,
        )
        seen: set[int] = set()
        for rid in (xref.get("rid") or "").split():
            for figure in by_id.get(rid, []):
                if id(figure) not in seen:
                    seen.add(id(figure))
                    figure.mentions.append(mention)


# --------------------------------------------------------------------------- hrefs


def safe_href(href: str, *, what: str = "href") -> str:
    """The href as a relative path inside the article folder, or JatsError if it would escape it."""
    href = href.strip()
    if not href or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", href) or href.startswith(("/", "\\")):
        raise JatsError(f"{what} {href!r} escapes the article folder (absolute path or URL)")
    path = PurePosixPath(href.replace("\\", "/"))
    if any(part == ".." for part in path.parts):
        raise JatsError(f"{what} {href!r} escapes the article folder ('..')")
    return str(path)


def candidate_names(href: str) -> list[str]:
    """Names an href may have on disk: as given, and with each known image extension if it has none."""
    href = safe_href(href)
    suffix = PurePosixPath(href).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return [href]
    names = [href] if suffix else []
    names += [href + ext for ext in IMAGE_EXTENSIONS] + [href + ext.upper() for ext in IMAGE_EXTENSIONS]
    return names
