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

_RADIOLOGY = (
    r"ct|cta|computed tomography|tomograph\w*|mri|mr|magnetic resonance|x-?rays?|radiograph\w*|cxr|"
    r"chest film|ultrasound|ultrasonograph\w*|sonograph\w*|doppler|pet|spect|angiogra\w*|mammogra\w*|"
    r"fluoroscop\w*|t1-?weighted|t2-?weighted|flair|dwi|diffusion-weighted|contrast-enhanced|"
    r"hounsfield|radiolog\w*|mimic-cxr|scan|scans|axial|coronal|sagittal|hypodense|hyperdense|"
    r"hypointense|hyperintense|opacit\w*|vqa-rad|vqa_rad|slake"
)
_HISTOPATHOLOGY = (
    r"histolog\w*|histopatholog\w*|patholog\w*|h&e|h & e|haematoxylin|hematoxylin|eosin|"
    r"stain|stained|staining|stains|immunohistochem\w*|ihc|biopsy|biopsies|micrograph\w*|"
    r"microscop\w*|magnification|tissue sections?|cytolog\w*|mitos\w*|mitotic|glands?|glandular|"
    r"nuclei|nuclear|lymphocyt\w*|cribriform|follic\w*|carcinoma in situ|dysplas\w*|"
    r"quilt|pathvqa|path_vqa|pathmmu|path_mmu|whole-slide|whole slide"
)
# One pass over the text: each match says which domain's group it came from.
_PATTERN = re.compile(
    rf"(?<![\w&-])(?:(?P<radiology>{_RADIOLOGY})|(?P<histopathology>{_HISTOPATHOLOGY}))(?![\w-])",
    re.IGNORECASE,
)


def classify_text(text: str) -> str:
    """The domain of a piece of text by the keyword rule above."""
    hits = {"radiology": 0, "histopathology": 0}
    first: dict[str, int] = {}
    for match in _PATTERN.finditer(text):
        domain = match.lastgroup or "other"
        hits[domain] += 1
        first.setdefault(domain, match.start())
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
