"""The domain tag of an instance: radiology, histopathology or other (a keyword rule).

Rule (documented in docs/synthesize.md):
1. a valid `domain` already on the record (or in `meta.domain`) is kept;
2. otherwise the text (caption, mentions, article title and journal; question and options; report)
   is searched for whole-word keywords of
   each domain; the domain with more keyword hits wins;
3. a tie between two non-zero counts goes to the domain whose keyword appears first;
4. no hit at all: `other`.
The source name counts as text too, so `pathvqa` or `quilt` sources lean histopathology and
`mimic-cxr` leans radiology.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

DOMAINS = ("radiology", "histopathology", "other")

# Keywords per domain: whole tokens, token prefixes (a stem such as "radiograph" also matches
# "radiographs" and "radiographic") and multi-word phrases. Tokens are lowercase runs of letters,
# digits and "_", joined by "-" or "&" ("x-ray", "t2-weighted", "h&e", "mimic-cxr").
_KEYWORDS = {
    "radiology": (
        {
            "ct",
            "cta",
            "mri",
            "mr",
            "x-ray",
            "x-rays",
            "xray",
            "xrays",
            "cxr",
            "ultrasound",
            "doppler",
            "pet",
            "spect",
            "t1-weighted",
            "t2-weighted",
            "t1weighted",
            "t2weighted",
            "flair",
            "dwi",
            "diffusion-weighted",
            "contrast-enhanced",
            "hounsfield",
            "mimic-cxr",
            "scan",
            "scans",
            "axial",
            "coronal",
            "sagittal",
            "hypodense",
            "hyperdense",
            "hypointense",
            "hyperintense",
            "vqa-rad",
            "vqa_rad",
            "slake",
        },
        (
            "tomograph",
            "radiograph",
            "ultrasonograph",
            "sonograph",
            "angiogra",
            "mammogra",
            "fluoroscop",
            "radiolog",
            "opacit",
        ),
        ("computed tomography", "magnetic resonance", "chest film"),
    ),
    "histopathology": (
        {
            "h&e",
            "haematoxylin",
            "hematoxylin",
            "eosin",
            "stain",
            "stained",
            "staining",
            "stains",
            "ihc",
            "biopsy",
            "biopsies",
            "magnification",
            "mitotic",
            "gland",
            "glands",
            "glandular",
            "nuclei",
            "nuclear",
            "cribriform",
            "quilt",
            "pathvqa",
            "path_vqa",
            "pathmmu",
            "path_mmu",
            "whole-slide",
        },
        (
            "histolog",
            "histopatholog",
            "patholog",
            "immunohistochem",
            "micrograph",
            "microscop",
            "cytolog",
            "mitos",
            "lymphocyt",
            "follic",
            "dysplas",
        ),
        ("h & e", "tissue section", "carcinoma in situ", "whole slide"),
    ),
}
_TOKEN = re.compile(r"[a-z0-9_]+(?:[-&][a-z0-9_]+)*")
_WORD_DOMAIN = {word: domain for domain, (words, _, _) in _KEYWORDS.items() for word in words}
_ALL_PREFIXES = tuple(p for _, prefixes, _ in _KEYWORDS.values() for p in prefixes)


def _prefix_domain(token: str) -> str:
    return next(d for d, (_, prefixes, _) in _KEYWORDS.items() if token.startswith(prefixes))


def classify_text(text: str) -> str:
    """The domain of a piece of text by the keyword rule above (one tokenising pass, set lookups)."""
    lower = text.lower()
    hits = {"radiology": 0, "histopathology": 0}
    first: dict[str, int] = {}
    for match in _TOKEN.finditer(lower):
        token = match.group()
        domain = _WORD_DOMAIN.get(token)
        if domain is None:
            if not token.startswith(_ALL_PREFIXES):
                continue  # most tokens: one dict lookup and one prefix test
            domain = _prefix_domain(token)
        hits[domain] += 1
        first.setdefault(domain, match.start())
    for domain, (_, _, phrases) in _KEYWORDS.items():
        for phrase in phrases:
            at = lower.find(phrase)
            while at >= 0:
                hits[domain] += 1
                first[domain] = min(first.get(domain, at), at)
                at = lower.find(phrase, at + 1)
    if not any(hits.values()):
        return "other"
    # more hits win; on a tie the domain whose keyword comes first
    return max(hits, key=lambda d: (hits[d], -first.get(d, len(text))))


def domain_of(record: Mapping[str, Any], *texts: str) -> str:
    """The domain tag for a source record, from its own tag or its texts (see module doc)."""
    for tag in (record.get("domain"), (record.get("meta") or {}).get("domain")):
        if tag in DOMAINS:
            return str(tag)
    return classify_text(" \n ".join([str(record.get("source", "")), *texts]))
