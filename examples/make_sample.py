"""Generate the bundled sample corpus in examples/sample/ (deterministic, seeded).

    .venv/bin/python examples/make_sample.py            # rewrites examples/sample/
    .venv/bin/python examples/make_sample.py -o /tmp/s  # somewhere else

Everything here is synthetic: five JATS 1.2 articles with radiology (CT/MRI/X-ray phantoms) and
histopathology (tissue textures) themes, their figures drawn procedurally with numpy + Pillow, a
small VQA source file (vqa.jsonl) and a small evaluation file (eval.jsonl). The articles carry the
variety a JATS parser must handle: a figure in <floats-group>, a <fig-group>, hrefs with and without
file extension, an xref with rid="F1 F2", a "3E"-style anchor, a supplementary-material xref,
non-ASCII text and a figure without caption. The output is released under CC0 (see LICENSE.md).

Only numpy and Pillow are needed; the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SEED = 20240917
HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- images


def _ct_phantom(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A CT-like slice: a body ellipse, organs of different densities, ring-free noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w), np.float32)

    def ellipse(cx: float, cy: float, rx: float, ry: float, value: float) -> None:
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        img[mask] = value

    ellipse(w / 2, h / 2, w * 0.44, h * 0.40, 0.55)  # soft tissue
    ellipse(w / 2, h / 2, w * 0.40, h * 0.36, 0.45)
    for _ in range(int(rng.integers(3, 6))):  # organs / lesions
        ellipse(
            w / 2 + rng.uniform(-0.2, 0.2) * w,
            h / 2 + rng.uniform(-0.2, 0.2) * h,
            rng.uniform(0.04, 0.12) * w,
            rng.uniform(0.04, 0.12) * h,
            float(rng.uniform(0.2, 0.95)),
        )
    ellipse(w / 2, h * 0.72, w * 0.06, h * 0.06, 1.0)  # vertebra
    img += rng.normal(0, 0.035, img.shape).astype(np.float32)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L")


def _mri_slice(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """An MRI-like brain slice: bright rim, grey/white matter bands, a hyperintense spot."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((xx - w / 2) / (w * 0.42)) ** 2 + ((yy - h / 2) / (h * 0.45)) ** 2)
    img = np.where(r < 1.0, 0.35 + 0.25 * np.cos(r * rng.uniform(9, 14)), 0.0)
    img = np.where((r > 0.92) & (r < 1.0), 0.9, img)
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    img += 0.6 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.05 * w) ** 2)))
    img += rng.normal(0, 0.03, img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L")


def _xray(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A chest X-ray-like gradient: dark lung fields, bright mediastinum and ribs."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.25 + 0.5 * (yy / h)
    for side in (0.3, 0.7):
        lung = ((xx - side * w) / (0.17 * w)) ** 2 + ((yy - 0.45 * h) / (0.33 * h)) ** 2 <= 1.0
        img = np.where(lung, img * 0.35, img)
    img += 0.5 * np.exp(-(((xx - w / 2) / (0.07 * w)) ** 2))
    ribs = 0.08 * (np.sin(yy / h * rng.uniform(20, 26) + np.abs(xx - w / 2) / w * 3) > 0.85)
    img += ribs + rng.normal(0, 0.02, img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L")


def _tissue(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """An H&E-like tissue texture: pink stroma, purple nuclei, pale lumina."""
    base = np.empty((h, w, 3), np.float32)
    base[:] = (236, 176, 196)
    base += rng.normal(0, 10, (h, w, 1))
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 3))):  # glandular lumina
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 18)
        draw.ellipse((cx - r, cy - r * 0.7, cx + r, cy + r * 0.7), fill=(250, 238, 242))
    for _ in range(int(w * h / 90)):  # nuclei
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(1.5, 3.5), rng.uniform(1.5, 3.0)
        shade = int(rng.integers(60, 120))
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=(shade, 40, shade + 70))
    return im.filter(ImageFilter.GaussianBlur(0.6))


DRAWERS = {"ct": _ct_phantom, "mri": _mri_slice, "xray": _xray, "tissue": _tissue}


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, "PNG", optimize=True)
    else:
        im.convert("RGB").save(buf, "JPEG", quality=80, optimize=True)
    return buf.getvalue()


# ----------------------------------------------------------------------------- articles


@dataclass
class Fig:
    fid: str  # "F1"
    label: str  # "Figure 1"
    kind: str  # a DRAWERS key
    size: tuple[int, int]  # (width, height)
    fmt: str  # "png" | "jpg"
    title: str | None  # None = no caption at all
    caption: str = ""
    href_ext: bool = True  # does xlink:href carry the file extension?
    where: str = "body"  # "body" | "floats" | "group"

    def file_name(self, pmcid: str) -> str:
        return f"{pmcid}_{self.fid}.{self.fmt}"

    def href(self, pmcid: str) -> str:
        return self.file_name(pmcid) if self.href_ext else f"{pmcid}_{self.fid}"


@dataclass
class Article:
    pmcid: str
    doi: str
    title: str
    journal: str
    year: int
    abstract: str
    sections: list[tuple[str, list[str]]]  # (section title, paragraphs with inline JATS markup)
    figs: list[Fig]
    group_caption: str | None = None  # caption of the <fig-group>, when figures sit in one
    supplementary: bool = False
    keywords: list[str] = field(default_factory=list)


def _x(rid: str, text: str) -> str:
    return f'<xref ref-type="fig" rid="{rid}">{text}</xref>'


ARTICLES = [
    Article(
        pmcid="PMC9000001",
        doi="10.9999/synth.2024.0001",
        title="Attenuation contrast of a synthetic abdominal CT phantom across reconstruction kernels",
        journal="Journal of Synthetic Radiology",
        year=2021,
        abstract=(
            "We describe a procedurally generated abdominal phantom for computed tomography (CT) and "
            "magnetic resonance imaging (MRI). Lesion Größe ranged from 4–18 mm; all data are synthetic."
        ),
        sections=[
            (
                "Introduction",
                [
                    "Phantoms allow radiologists to compare reconstruction kernels without patient exposure. "
                    "Elliptical inserts emulate the liver, kidneys and a lumbar vertebra.",
                    f"Both modalities are shown side by side ({_x('F1 F2', 'Figures 1 and 2')}).",
                ],
            ),
            (
                "Methods",
                [
                    "Inserts were assigned attenuation values between 20 and 90 Hounsfield units; Gaussian "
                    "noise with σ = 9 HU was added to every axial slice (voxel size 700 µm).",
                    f"The axial CT slice in {_x('F1', 'Figure 1')} shows a hypodense lesion in the right "
                    "lobe of the liver phantom.",
                ],
            ),
            (
                "Results",
                [
                    f"On the T2-weighted MRI slice ({_x('F2', 'Figure 2')}) the lesion appears "
                    "hyperintense relative to the surrounding parenchyma.",
                    "Contrast-to-noise ratio rose by 14% with the soft kernel.",
                ],
            ),
        ],
        figs=[
            Fig(
                "F1",
                "Figure 1",
                "ct",
                (120, 96),
                "png",
                "Axial CT slice of the abdominal phantom.",
                "A hypodense lesion (arrow) sits in the right lobe of the liver insert; window 400/40 HU.",
                href_ext=False,
            ),
            Fig(
                "F2",
                "Figure 2",
                "mri",
                (96, 96),
                "png",
                "T2-weighted MRI slice of the same phantom.",
                "The lesion is hyperintense; Größe 12 mm.",
            ),
        ],
        keywords=["computed tomography", "phantom", "MRI"],
    ),
    Article(
        pmcid="PMC9000002",
        doi="10.9999/synth.2024.0002",
        title="Gland architecture in synthetic colorectal tissue sections stained with H&E",
        journal="Synthetic Histopathology Reports",
        year=2022,
        abstract=(
            "Haematoxylin and eosin (H&E) stained tissue was simulated to study gland formation. "
            "Nuclear density and lumen size were varied across three textures."
        ),
        sections=[
            (
                "Background",
                [
                    "Pathologists grade colorectal adenocarcinoma by the proportion of gland formation. "
                    f"A low-power overview is given in {_x('F1', 'Figure 1')}.",
                ],
            ),
            (
                "Observations",
                [
                    f"Crowded nuclei with loss of polarity are visible at high power ({_x('F2', 'Figure 2')}).",
                    f"Cribriform glands with central necrosis are marked in panel {_x('F3', '3E')}; "
                    "the nuclear diameter was 8–12 µm.",
                ],
            ),
        ],
        figs=[
            Fig(
                "F1",
                "Figure 1",
                "tissue",
                (128, 96),
                "jpg",
                "Low-power view of the synthetic colorectal section.",
                "Pink stroma surrounds several pale glandular lumina. H&E, 40×.",
                where="floats",
            ),
            Fig(
                "F2",
                "Figure 2",
                "tissue",
                (96, 120),
                "jpg",
                "High-power view of crowded nuclei.",
                "Nuclei are enlarged and hyperchromatic. H&E, 400×.",
            ),
            Fig(
                "F3",
                "Figure 3",
                "tissue",
                (112, 80),
                "png",
                "Cribriform pattern.",
                "(A–E) Five fields; panel E shows central necrosis.",
                href_ext=False,
            ),
        ],
        keywords=["histopathology", "H&E", "colorectal"],
    ),
    Article(
        pmcid="PMC9000003",
        doi="10.9999/synth.2024.0003",
        title="Projection radiography of a synthetic chest phantom: lung fields and rib shadows",
        journal="Journal of Synthetic Radiology",
        year=2023,
        abstract=(
            "Posteroanterior chest radiographs were simulated with varying exposure. "
            "We report the visibility of rib shadows and the cardiothoracic ratio."
        ),
        sections=[
            (
                "Methods",
                [
                    "Radiographs were synthesised as attenuation gradients with two elliptical lung fields.",
                    f"Two exposures are compared in {_x('F1', 'Figure 1A')} and {_x('F2', 'Figure 1B')}.",
                ],
            ),
            (
                "Results",
                [
                    "The cardiothoracic ratio measured 0.48 in both exposures.",
                    f"A lateral view ({_x('F3', 'Figure 2')}) confirms a normal retrosternal space.",
                ],
            ),
        ],
        figs=[
            Fig(
                "F1",
                "Figure 1A",
                "xray",
                (96, 112),
                "png",
                "Posteroanterior radiograph, low exposure.",
                "Lung fields are clear; rib shadows are faint.",
                where="group",
            ),
            Fig(
                "F2",
                "Figure 1B",
                "xray",
                (96, 112),
                "png",
                "Posteroanterior radiograph, high exposure.",
                "Rib shadows are sharper; no pleural effusion.",
                where="group",
            ),
            Fig(
                "F3",
                "Figure 2",
                "xray",
                (120, 88),
                "jpg",
                "Lateral chest radiograph.",
                "The retrosternal space is preserved.",
            ),
        ],
        group_caption="Posteroanterior chest radiographs of the synthetic phantom at two exposures.",
        keywords=["chest X-ray", "radiography"],
    ),
    Article(
        pmcid="PMC9000004",
        doi="10.9999/synth.2024.0004",
        title="Nuclear morphometry in a synthetic lymph node section",
        journal="Synthetic Histopathology Reports",
        year=2020,
        abstract=(
            "A synthetic lymph node texture was used to benchmark nuclear segmentation. "
            "Supplementary tables list per-field counts."
        ),
        sections=[
            (
                "Results",
                [
                    f"Follicles with dense small lymphocytes are shown in {_x('F1', 'Figure 1')}.",
                    "Counts per field are given in "
                    '<xref ref-type="supplementary-material" rid="SM1">Supplementary Table S1</xref>.',
                    f"An unlabelled overview without caption is {_x('F2', 'Figure 2')}.",
                ],
            ),
        ],
        figs=[
            Fig(
                "F1",
                "Figure 1",
                "tissue",
                (88, 88),
                "jpg",
                "Lymphoid follicle.",
                "Small round lymphocytes are densely packed; mean nuclear area 28 µm².",
            ),
            Fig("F2", "Figure 2", "tissue", (80, 104), "png", None),
        ],
        supplementary=True,
        keywords=["lymph node", "morphometry"],
    ),
    Article(
        pmcid="PMC9000005",
        doi="10.9999/synth.2024.0005",
        title="Diffusion-weighted MRI of a synthetic brain phantom with a focal lesion",
        journal="Journal of Synthetic Radiology",
        year=2024,
        abstract=(
            "A brain phantom with a focal hyperintense lesion was imaged with simulated diffusion "
            "weighting. The lesion was detectable at all b-values."
        ),
        sections=[
            (
                "Methods",
                [
                    "Grey and white matter were modelled as concentric bands; a Gaussian spot represents "
                    "restricted diffusion.",
                ],
            ),
            (
                "Results",
                [
                    f"The lesion is hyperintense on the axial slice ({_x('F1', 'Figure 1')}) and "
                    f"appears as a dense focus on the matched CT ({_x('F2', 'Figure 2')}).",
                ],
            ),
        ],
        figs=[
            Fig(
                "F1",
                "Figure 1",
                "mri",
                (104, 120),
                "png",
                "Axial diffusion-weighted MRI.",
                "A focal hyperintense lesion in the left hemisphere – no mass effect.",
            ),
            Fig(
                "F2",
                "Figure 2",
                "ct",
                (112, 96),
                "jpg",
                "Matched non-contrast CT slice.",
                "The lesion is subtle on CT.",
                href_ext=False,
            ),
        ],
        keywords=["MRI", "diffusion", "brain"],
    ),
]


_XREF = re.compile(r"(<xref [^>]*>.*?</xref>)")


def _para(text: str) -> str:
    """Escape a paragraph's text while keeping its inline <xref> markup."""
    return "".join(piece if _XREF.fullmatch(piece) else escape(piece) for piece in _XREF.split(text))


def _fig_xml(a: Article, f: Fig, indent: str) -> str:
    lines = [f'{indent}<fig id="{f.fid}" position="float">', f"{indent}  <label>{escape(f.label)}</label>"]
    if f.title is not None:
        lines += [
            f"{indent}  <caption>",
            f"{indent}    <title>{escape(f.title)}</title>",
            f"{indent}    <p>{escape(f.caption)}</p>",
            f"{indent}  </caption>",
        ]
    lines += [f'{indent}  <graphic xlink:href="{f.href(a.pmcid)}"/>', f"{indent}</fig>"]
    return "\n".join(lines)


def article_xml(a: Article) -> str:
    """One JATS 1.2 document (paragraph strings already hold their inline markup)."""
    kw = "".join(f"<kwd>{escape(k)}</kwd>" for k in a.keywords)
    body: list[str] = []
    body_figs = [f for f in a.figs if f.where == "body"]
    for i, (title, paras) in enumerate(a.sections):
        body.append(f'    <sec id="s{i + 1}">')
        body.append(f"      <title>{escape(title)}</title>")
        body += [f"      <p>{_para(p)}</p>" for p in paras]
        if i == len(a.sections) - 1:
            body += [_fig_xml(a, f, "      ") for f in body_figs]
            group = [f for f in a.figs if f.where == "group"]
            if group:
                body.append('      <fig-group id="FG1">')
                body.append(f"        <caption><p>{escape(a.group_caption or '')}</p></caption>")
                body += [_fig_xml(a, f, "        ") for f in group]
                body.append("      </fig-group>")
            if a.supplementary:
                body += [
                    '      <supplementary-material id="SM1" content-type="local-data">',
                    "        <label>Supplementary Table S1</label>",
                    f'        <media xlink:href="{a.pmcid}_S1.xlsx" mimetype="application" '
                    'mime-subtype="vnd.openxmlformats-officedocument.spreadsheetml.sheet"/>',
                    "      </supplementary-material>",
                ]
        body.append("    </sec>")
    floats = [f for f in a.figs if f.where == "floats"]
    floats_xml = ""
    if floats:
        floats_xml = (
            "  <floats-group>\n" + "\n".join(_fig_xml(a, f, "    ") for f in floats) + "\n  </floats-group>\n"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange DTD v1.2 20190208//EN" '
        '"JATS-archivearticle1.dtd">\n'
        '<article xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:mml="http://www.w3.org/1998/Math/MathML" '
        'article-type="research-article" dtd-version="1.2" xml:lang="en">\n'
        "  <front>\n"
        "    <journal-meta>\n"
        f"      <journal-title-group><journal-title>{escape(a.journal)}</journal-title></journal-title-group>\n"
        '      <issn pub-type="epub">0000-0000</issn>\n'
        "      <publisher><publisher-name>Synthetic Sample Press</publisher-name></publisher>\n"
        "    </journal-meta>\n"
        "    <article-meta>\n"
        f'      <article-id pub-id-type="pmc">{a.pmcid}</article-id>\n'
        f'      <article-id pub-id-type="doi">{a.doi}</article-id>\n'
        "      <title-group>\n"
        f"        <article-title>{escape(a.title)}</article-title>\n"
        "      </title-group>\n"
        '      <contrib-group><contrib contrib-type="author"><name><surname>Sample</surname>'
        "<given-names>A.</given-names></name></contrib></contrib-group>\n"
        f'      <pub-date pub-type="epub"><year>{a.year}</year></pub-date>\n'
        "      <permissions>\n"
        "        <copyright-statement>Synthetic text, released under CC0.</copyright-statement>\n"
        '        <license license-type="open-access" xlink:href="https://creativecommons.org/licenses/by/4.0/">\n'
        "          <license-p>This is an open access article distributed under the terms of the Creative "
        "Commons Attribution License.</license-p>\n"
        "        </license>\n"
        "      </permissions>\n"
        f"      <abstract><p>{escape(a.abstract)}</p></abstract>\n"
        f'      <kwd-group kwd-group-type="author">{kw}</kwd-group>\n'
        "    </article-meta>\n"
        "  </front>\n"
        "  <body>\n" + "\n".join(body) + "\n  </body>\n" + floats_xml + "</article>\n"
    )


# ----------------------------------------------------------------------------- VQA

# (image, question, answer, question_type, options) - answers follow the MedMax eval rules:
# closed = yes/no, multiple_choice = a letter, open = a short phrase.
VQA = [
    ("PMC9000001_F1.png", "Is there a hypodense lesion in the liver?", "yes", "closed", None),
    (
        "PMC9000001_F1.png",
        "Which modality was used to acquire this image?",
        "computed tomography",
        "open",
        None,
    ),
    ("PMC9000001_F2.png", "Is the lesion hypointense on this sequence?", "no", "closed", None),
    (
        "PMC9000001_F2.png",
        "Which sequence is shown?",
        "B",
        "multiple_choice",
        ["T1-weighted", "T2-weighted", "Diffusion-weighted", "FLAIR"],
    ),
    ("PMC9000002_F1.jpg", "What stain was used for this section?", "haematoxylin and eosin", "open", None),
    ("PMC9000002_F2.jpg", "Are the nuclei crowded?", "yes", "closed", None),
    (
        "PMC9000002_F3.png",
        "Which architectural pattern is present?",
        "C",
        "multiple_choice",
        ["Papillary", "Solid", "Cribriform", "Micropapillary"],
    ),
    ("PMC9000003_F1.png", "Is there a pleural effusion?", "no", "closed", None),
    ("PMC9000003_F3.jpg", "Which projection is shown?", "lateral", "open", None),
    ("PMC9000004_F1.jpg", "What structure is shown?", "lymphoid follicle", "open", None),
    (
        "PMC9000005_F1.png",
        "In which hemisphere is the lesion?",
        "A",
        "multiple_choice",
        ["Left", "Right", "Both", "Neither"],
    ),
    ("PMC9000005_F2.jpg", "Is the lesion obvious on CT?", "no", "closed", None),
]

# (image, question, answer, question_type, options, eval_task)
EVAL = [
    ("PMC9000001_F1.png", "Is this a CT image?", "yes", "closed", None, "vqa_rad_closed"),
    ("PMC9000003_F2.png", "Is this an MRI image?", "no", "closed", None, "vqa_rad_closed"),
    ("PMC9000005_F2.jpg", "Is there a fracture?", "no", "closed", None, "vqa_rad_closed"),
    ("PMC9000001_F2.png", "What organ is imaged?", "liver", "open", None, "vqa_rad_open"),
    ("PMC9000005_F1.png", "Where is the abnormality?", "left hemisphere", "open", None, "slake_open"),
    ("PMC9000003_F1.png", "Which organ appears dark in this image?", "lung", "open", None, "slake_open"),
    ("PMC9000002_F2.jpg", "Is this tissue stained?", "yes", "closed", None, "pathvqa_closed"),
    ("PMC9000004_F2.png", "Does this image contain nuclei?", "yes", "closed", None, "pathvqa_closed"),
    (
        "PMC9000002_F1.jpg",
        "What type of image is this?",
        "D",
        "multiple_choice",
        ["CT", "MRI", "X-ray", "Histopathology"],
        "pmc_vqa",
    ),
    (
        "PMC9000003_F3.jpg",
        "What imaging modality is shown?",
        "C",
        "multiple_choice",
        ["Ultrasound", "MRI", "X-ray", "PET"],
        "pmc_vqa",
    ),
    (
        "PMC9000004_F1.jpg",
        "Which stain is most likely?",
        "A",
        "multiple_choice",
        ["H&E", "PAS", "Gram", "Silver"],
        "pmc_vqa",
    ),
    (
        "PMC9000001_F1.png",
        "Which body region is shown?",
        "B",
        "multiple_choice",
        ["Head", "Abdomen", "Pelvis", "Knee"],
        "omnimedvqa",
    ),
]


def _qa_record(rid: str, source: str, image: str, q: str, a: str, qtype: str, options, meta: dict) -> dict:
    rec = {
        "id": rid,
        "kind": "qa",
        "source": source,
        "license": "cc0",
        "credential": False,
        "question": q,
        "answer": a,
    }
    if options is not None:
        rec["options"] = options
    rec.update({"question_type": qtype, "images": [{"path": f"jats/{image}"}], "meta": meta})
    return rec


# The other MedMax eval families, as `medmax fetch medmax-eval` writes them (docs/eval-families.md):
# ready instances whose meta carries what MedMax's evaluation/*.py read from each parquet row.
# (image, source, prompt, reference answer)
CAPTIONING = [
    ("PMC9000001_F1.png", "pmc_oa", "", "Axial CT of the abdomen showing a hypodense liver lesion."),
    ("PMC9000002_F1.jpg", "quilt", "", "H&E stained section with dense nuclei."),
]
IMAGE_GENERATION = [
    ("PMC9000003_F1.png", "report", "Chest X-ray with a dark left lung field.", ""),
    ("PMC9000004_F2.png", "pmc_oa", "Histology slide with many small nuclei.", ""),
]
VISUAL_CHAT = [
    # image, chat type, prompt (<image> where MedMax's LLaVA-Med rows put it), reference, caption, label,
    # mention, the LLaVA-Med domain flag that is true
    (
        "PMC9000001_F2.png",
        "conversation",
        "<image>\nWhat organ is shown?",
        "The image shows the liver in an axial CT slice.",
        "Contrast-enhanced CT of the liver.",
        "Figure 2",
        "As seen in Figure 2, the lesion enhances.",
        "ct_scan",
    ),
    (
        "PMC9000002_F2.jpg",
        "detailed_description",
        "Describe the image in detail.\n<image>",
        "A stained tissue section with glandular structures and scattered nuclei.",
        "Photomicrograph of the biopsy.",
        "Figure 2",
        "Figure 2 shows the biopsy.",
        "histology",
    ),
]
MM_OUT = [
    ("PMC9000005_F1.png", "Show a brain MRI with a left hemisphere lesion.", "Here is an axial MRI slice."),
]
LLAVA_DOMAINS = ("chest_xray", "mri", "histology", "gross", "ct_scan")


def _eval_instance(rid, task, images, turns, domain, meta, n) -> dict:
    return {
        "id": rid,
        "kind": "instance",
        "source": "sample-eval",
        "license": "cc0",
        "credential": False,
        "task": task,
        "domain": domain,
        "images": [{"path": f"jats/{im}"} for im in images],
        "turns": turns,
        "meta": {**meta, "eval_index": n, "verbatim_prompt": True},
    }


def eval_families() -> list[dict]:
    """Two captioning, two image generation, two visual chat and one mm_out item."""
    out = []
    for n, (image, src, prompt, answer) in enumerate(CAPTIONING):
        turns = [
            {"role": "user", "content": [{"image": 0}, {"text": "Please describe this picture."}]},
            {"role": "assistant", "content": [{"text": answer}]},
        ]
        meta = {"eval_task": f"image_captioning_{src}", "eval_family": "image_captioning", "eval_source": src}
        domain = "histopathology" if src == "quilt" else "radiology"
        out.append(
            _eval_instance(
                f"sample-eval-cap-{n}",
                "captioning",
                [image],
                turns,
                domain,
                {**meta, "eval_prompt": prompt},
                n,
            )
        )
    for n, (image, src, prompt, _) in enumerate(IMAGE_GENERATION):
        turns = [
            {"role": "user", "content": [{"text": prompt}]},
            {"role": "assistant", "content": [{"image": 0}]},
        ]
        meta = {"eval_task": f"image_generation_{src}", "eval_family": "image_generation", "eval_source": src}
        domain = "histopathology" if "Histology" in prompt else "radiology"
        out.append(
            _eval_instance(
                f"sample-eval-gen-{n}",
                "image_generation",
                [image],
                turns,
                domain,
                {**meta, "eval_prompt": prompt},
                0,
            )
        )
    for n, (image, kind, prompt, ref, caption, label, mention, flag) in enumerate(VISUAL_CHAT):
        question = prompt.replace("<image>", "").strip()
        if kind == "detailed_description":
            user = [{"image": 0}, {"text": "Analyze the image in a comprehensive and detailed manner."}]
        elif prompt.endswith("<image>"):
            user = [{"text": question}, {"image": 0}]
        else:
            user = [{"image": 0}, {"text": question}]
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": [{"text": ref}]}]
        meta = {
            "eval_task": "visual_chat",
            "eval_family": "visual_chat",
            "chat_type": kind,
            "llava_domain": flag,
            "caption": caption,
            "fig_label": label,
            "mention": mention,
            "reference_answer": ref,
            "eval_prompt": prompt,
        }
        domain = "histopathology" if flag == "histology" else "radiology"
        out.append(_eval_instance(f"sample-eval-chat-{n}", "visual_chat", [image], turns, domain, meta, n))
    for n, (image, prompt, answer) in enumerate(MM_OUT):
        turns = [
            {"role": "user", "content": [{"text": prompt}]},
            {"role": "assistant", "content": [{"text": answer}, {"image": 0}]},
        ]
        meta = {
            "eval_task": "mm_out",
            "eval_family": "mm_out",
            "reference_answer": answer,
            "eval_prompt": prompt,
        }
        out.append(
            _eval_instance(f"sample-eval-mmout-{n}", "interleaved", [image], turns, "radiology", meta, n)
        )
    return out


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in records)


LICENSE = """# Licence of the sample corpus

Everything in this directory (examples/sample/) was generated by `examples/make_sample.py`:
the JATS articles are synthetic text written for this project, the images are procedurally drawn
with numpy and Pillow (no patient data, no real publication), and the VQA files were written by hand.

It is dedicated to the public domain under **CC0 1.0 Universal**
(https://creativecommons.org/publicdomain/zero/1.0/). The CC BY 4.0 licence URLs inside the JATS
files are part of the sample (they exercise the licence parsing of `medmax fetch jats`); they do not
restrict the use of these files.
"""


def build(out: Path, seed: int = SEED) -> dict[str, int]:
    """Write the sample corpus under `out`; return a few counts."""
    rng = np.random.default_rng(seed)
    jats = out / "jats"
    jats.mkdir(parents=True, exist_ok=True)
    n_figs = 0
    for a in ARTICLES:
        (jats / f"{a.pmcid}.xml").write_text(article_xml(a), encoding="utf-8")
        for f in a.figs:
            im = DRAWERS[f.kind](rng, *f.size)
            (jats / f.file_name(a.pmcid)).write_bytes(_encode(im, f.fmt))
            n_figs += 1
    vqa = [
        _qa_record(f"sample-vqa-{i:02d}", "sample-vqa", img, q, ans, qt, opts, {})
        for i, (img, q, ans, qt, opts) in enumerate(VQA)
    ]
    ev = [
        _qa_record(f"sample-eval-{i:02d}", "sample-eval", img, q, ans, qt, opts, {"eval_task": task})
        for i, (img, q, ans, qt, opts, task) in enumerate(EVAL)
    ]
    (out / "vqa.jsonl").write_text(_jsonl(vqa), encoding="utf-8")
    (out / "eval.jsonl").write_text(_jsonl(ev), encoding="utf-8")
    (out / "eval-families.jsonl").write_text(_jsonl(eval_families()), encoding="utf-8")
    (out / "LICENSE.md").write_text(LICENSE, encoding="utf-8")
    return {"articles": len(ARTICLES), "figures": n_figs, "vqa": len(vqa), "eval": len(ev)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=HERE / "sample")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    counts = build(args.out, args.seed)
    print(", ".join(f"{v} {k}" for k, v in counts.items()), "->", args.out)


if __name__ == "__main__":
    main()
