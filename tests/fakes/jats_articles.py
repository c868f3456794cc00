"""Small JATS articles covering the variety PMC throws at a parser, plus their image files.

Built at test time. Between them the articles hold: figures in <floats-group> and in <fig-group>,
a <media> (video) figure, a figure without caption, hrefs without extension, rid="F1 F2",
"Figure 3E"-style anchors, a supplementary-material xref (not a figure), non-ASCII text, a
figure whose href tries to leave the article folder, a retracted article and several licences.
"""

from __future__ import annotations

import io

from PIL import Image

HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange DTD v1.2 20190208//EN" "JATS-archivearticle1.dtd">
<article xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:ali="http://www.niso.org/schemas/ali/1.0/" article-type="{atype}">
<front><journal-meta><journal-title-group><journal-title>{journal}</journal-title></journal-title-group></journal-meta>
<article-meta>
<article-id pub-id-type="pmc">{pmc}</article-id>
<article-id pub-id-type="doi">10.1/{pmc}</article-id>
<title-group><article-title>{title}</article-title></title-group>
<pub-date pub-type="epub"><day>1</day><month>2</month><year>{year}</year></pub-date>
<permissions>{license}</permissions>
{related}
</article-meta></front>
"""


def png(seed: int, size: tuple[int, int] = (24, 16), fmt: str = "PNG") -> bytes:
    image = Image.new("RGB", size, ((seed * 40) % 256, (seed * 90) % 256, (seed * 13) % 256))
    image.putpixel((seed % size[0], 0), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def cc(url: str) -> str:
    return f'<license license-type="open-access" xlink:href="{url}"><license-p>Open.</license-p></license>'


def article(
    pmc: str,
    body: str,
    *,
    floats: str = "",
    title: str = "A title",
    license: str | None = None,
    atype: str = "research-article",
    related: str = "",
    year: int = 2020,
) -> bytes:
    license = license if license is not None else cc("https://creativecommons.org/licenses/by/4.0/")
    head = HEAD.format(
        pmc=pmc,
        title=title,
        license=license,
        atype=atype,
        related=related,
        year=year,
        journal="Jöurnal of Tests",
    )
    tail = f"<floats-group>{floats}</floats-group>" if floats else ""
    return (head + f"<body>{body}</body>{tail}</article>").encode()


def corpus() -> dict[str, tuple[bytes, dict[str, bytes]]]:
    """pmcid -> (xml, {file name: bytes}). Expected good figures: see EXPECTED_GOOD."""
    a1 = article(
        "PMC100001",
        """<sec><title>Introduction</title>
        <p>Both panels are shown (<xref ref-type="fig" rid="F1 F2">Figures 1 and 2</xref>). Ströme were
        measured at 5 µm. See also <xref ref-type="supplementary-material" rid="S1">Table S1</xref>.</p>
        <p>In Fig. 2 the lesion grows. The detail in panel <xref ref-type="fig" rid="F2">3E</xref> shows it.</p>
        <fig id="F1"><label>Figure 1</label><caption><title>Axial CT.</title><p>Lesion in the liver (arrow).</p></caption>
        <graphic xlink:href="fig1"/></fig>
        <supplementary-material id="S1"><media xlink:href="s1.xlsx"/></supplementary-material>
        </sec>""",
        floats="""<fig id="F2"><label>Figure 2</label><caption><title>MRI: T2 weighted</title></caption>
        <graphic xlink:href="fig2.jpg"/></fig>""",
        title="Größe und Form",
    )
    a2 = article(
        "PMC100002",
        """<sec><title>Results</title>
        <p>The group of panels (<xref ref-type="fig" rid="FG1">Figure 3</xref>) and a video
        (<xref ref-type="fig" rid="V1">Video 1</xref>).</p>
        <fig-group id="FG1"><caption><title>Group caption.</title></caption>
          <fig id="F3a"><label>Figure 3A</label><graphic xlink:href="f3a"/></fig>
          <fig id="F3b"><label>Figure 3B</label><caption><p>Only text here.</p></caption><graphic xlink:href="f3b.png"/></fig>
        </fig-group>
        <fig id="V1"><label>Video 1</label><caption><p>A video.</p></caption><media xlink:href="v1.mp4"/></fig>
        <fig id="F4"><label>Figure 4</label><graphic xlink:href="f4"/></fig>
        <fig id="F5"><label>Figure 5</label><caption><p>Escaping.</p></caption><graphic xlink:href="../evil.png"/></fig>
        <fig id="F6"><label>Figure 6</label><caption><p>No image at all.</p></caption></fig>
        </sec>""",
        license=cc("https://creativecommons.org/licenses/by-nc/4.0/"),
    )
    a3 = article(
        "PMC100003",
        """<sec><title>Methods</title><p>See <xref ref-type="fig" rid="F1">Figure 1</xref>.</p>
        <fig id="F1"><label>Figure 1</label><caption><p>Retracted figure.</p></caption><graphic xlink:href="r1.png"/></fig></sec>""",
        related='<related-article related-article-type="retraction-forward" xlink:href="10.1/x"/>',
    )
    a4 = article(
        "PMC100004",
        """<sec><title>Discussion</title><p>Shown in <xref ref-type="fig" rid="F1">Figure 1</xref>.</p>
        <fig id="F1"><label>Figure 1</label><caption><title>Public domain.</title></caption><graphic xlink:href="g1"/></fig></sec>""",
        license="<license><ali:license_ref>http://creativecommons.org/publicdomain/zero/1.0/</ali:license_ref></license>",
    )
    return {
        "PMC100001": (a1, {"fig1.png": png(1), "fig2.jpg": png(2, fmt="JPEG")}),
        "PMC100002": (
            a2,
            {
                "f3a.jpg": png(3, fmt="JPEG"),
                "f3b.png": png(4),
                "f4.gif": png(5, fmt="GIF"),
                "v1.mp4": b"\x00\x00\x00 ftypmp4",
            },
        ),
        "PMC100003": (a3, {"r1.png": png(6)}),
        "PMC100004": (a4, {"g1.png": png(7)}),
    }


EXPECTED_GOOD = [
    "PMC100001-F1",
    "PMC100001-F2",
    "PMC100002-F3a",
    "PMC100002-F3b",
    "PMC100002-F4",
    "PMC100004-F1",
]
