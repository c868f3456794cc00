"""`report_understanding`: image -> report and report -> image, from `report` records.

Each report record gives two instances, variants `i2r` (write the report for the image) and `r2i`
(generate the image the report describes), as in MedMax's Report Understanding task.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from medmax_cli.synthesize.common import BuildContext, Drop, image_parts, new_instance, text, turn
from medmax_cli.synthesize.textutil import clean, pick, word_count

TASK = "report_understanding"
MIN_REPORT_WORDS = 3
IMAGE_TO_REPORT = (
    "Write the radiology report for this image.",
    "Describe the findings in this image as a radiologist would in a report.",
    "Provide the findings and impression for this study.",
    "Generate a report for the image.",
)
REPORT_TO_IMAGE = (
    "Generate the image described by this report: {report}",
    "Create an image consistent with the following radiology report. {report}",
    "Here is a report: {report}\nGenerate the corresponding image.",
)


def build(record: Mapping[str, Any], ctx: BuildContext, domain: str) -> Iterator[dict[str, Any] | Drop]:
    report = clean(str(record.get("report") or ""))
    if word_count(report) < MIN_REPORT_WORDS:
        yield Drop(f"report too short: {word_count(report)} words < {MIN_REPORT_WORDS}", TASK)
        return
    images = record.get("images") or []
    if not images:
        yield Drop("report_understanding: report record has no image", TASK)
        return
    index, prompt = pick(IMAGE_TO_REPORT, ctx.seed, record["id"], TASK, "i2r")
    yield new_instance(
        record,
        TASK,
        "i2r",
        domain=domain,
        turns=[turn("user", image_parts(len(images)), text(prompt)), turn("assistant", text(report))],
        meta={"template": index},
    )
    if len(images) != 1:
        yield Drop(f"report_understanding r2i needs one image: record has {len(images)}", TASK)
        return
    index, template = pick(REPORT_TO_IMAGE, ctx.seed, record["id"], TASK, "r2i")
    yield new_instance(
        record,
        TASK,
        "r2i",
        domain=domain,
        turns=[turn("user", text(template.format(report=report))), turn("assistant", image_parts(1))],
        meta={"template": index},
    )
