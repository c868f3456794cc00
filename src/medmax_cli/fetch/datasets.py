"""Readers for public biomedical datasets a user has downloaded, each in its published layout.

Column and file names follow the datasets' own cards/releases (listed per reader). Every reader
yields schema-v1 source records with the licence on each, imports images into the media store
(paths are resolved inside the dataset folder only), and sends bad rows through the policy.
`SOURCES` is the registry behind `medmax fetch --list` and `medmax fetch <name> PATH`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from medmax_cli.fetch.figures import skip
from medmax_cli.media import MediaError, MediaStore, safe_relative_path
from medmax_cli.records import RecordError, make_id, validate
from medmax_cli.streams import ErrorPolicy

Reader = Callable[..., Iterator[dict[str, Any]]]


@dataclass(frozen=True)
class Source:
    name: str
    license: str  # licence written on every record
    needs: str  # what the user must download (and agree to)
    kind: str
    reader: Reader | None  # None: handled by its own command (pmc, jats, jsonl)


def _image(media: MediaStore, root: Path, relative: str, what: str) -> dict[str, Any]:
    return media.import_file(safe_relative_path(root, relative, what=what), what=what)


def _emit(rows: Iterator[tuple[str, Callable[[], dict[str, Any]]]], policy: ErrorPolicy) -> Iterator[dict]:
    """Build each record lazily so one bad row is rejected (with its location) and the rest go on."""
    for where, build in rows:
        try:
            record = build()
            if record is None:
                continue
            validate(record)
        except (RecordError, MediaError, KeyError, ValueError, TypeError) as exc:
            error = exc if isinstance(exc, (RecordError, MediaError)) else RecordError(f"bad row ({exc!r})")
            policy.reject(error, None, where=where)
            continue
        policy.report.count("rows")
        yield record


def _read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def _find(root: Path, *names: str) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise RecordError(f"{root}: none of {', '.join(names)} found (is this the published layout?)")


def _closed_or_open(answer: str) -> str:
    return "closed" if answer.strip().lower() in ("yes", "no") else "open"


# --------------------------------------------------------------------------- MedMax


def read_medmax(
    path: Path, *, media: MediaStore, policy: ErrorPolicy, images: Path | None = None, **_: Any
) -> Iterator[dict]:
    """Released MedMax rows (train.jsonl: text, tokens, image_path, task, source, credential).

    Rows with credential "yes" come without tokens or image paths: they are kept as
    `credential: true` records for users who bring the credentialed images.
    """
    file = path if path.is_file() else _find(path, "train.jsonl", "data/train.jsonl")
    root = images or file.parent

    def rows() -> Iterator[tuple[str, Callable[[], dict]]]:
        with open(file, "rb") as handle:
            for line_no, line in enumerate(handle, 1):
                if line.strip():
                    yield f"{file}:{line_no}", lambda line=line, n=line_no: build(orjson.loads(line), n)

    def build(row: dict, n: int) -> dict:
        credential = str(row.get("credential", "no")).strip().lower() in ("yes", "true", "1")
        paths = row.get("image_path") or []
        paths = [paths] if isinstance(paths, str) else list(paths)
        refs = [] if credential else [_image(media, root, p, f"row {n} image {p}") for p in paths if p]
        record = {
            "id": make_id("medmax", n),
            "kind": "instance",
            "source": "medmax",
            "license": "medmax-mixed",
            "credential": credential,
            "images": refs,
            "text": row.get("text") or "",
            "meta": {"task": row.get("task"), "source": row.get("source"), "image_path": paths},
        }
        if row.get("tokens") and not credential:
            record["tokens"] = [int(t) for t in row["tokens"]]
        return record

    yield from _emit(rows(), policy)


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise RecordError(f"{path}: no .parquet files")
    for file in files:
        table = pq.read_table(file)
        for index, row in enumerate(table.to_pylist()):
            yield f"{file}:{index}", row


_OPTION_LINE = re.compile(r"^\s*\(?([A-H])\s*[).:]\s*(.+?)\s*$")


def options_in_prompt(prompt: str) -> list[str]:
    """Option texts listed one per line as "A: ...", "A. ...", "(A) ..." (consecutive letters from A)."""
    options: list[str] = []
    for line in prompt.splitlines():
        match = _OPTION_LINE.match(line)
        if match and ord(match.group(1)) - ord("A") == len(options):
            options.append(match.group(2))
    return options if len(options) >= 2 else []


def read_medmax_eval(
    path: Path, *, media: MediaStore, policy: ErrorPolicy, images: Path | None = None, **_: Any
) -> Iterator[dict]:
    """MedMax evaluation parquet (task_name, question_type closed|open|mcq, prompt, answer, image_path)."""
    root = images or (path if path.is_dir() else path.parent)
    types = {"closed": "closed", "open": "open", "mcq": "multiple_choice"}

    def build(row: dict, where: str) -> dict:
        qtype = row["question_type"]
        options = options_in_prompt(row["prompt"]) if qtype == "mcq" else []
        return {
            "id": make_id("medmax_eval", row["task_name"], qtype, where.rsplit(":", 1)[1]),
            "kind": "qa",
            "source": "medmax-eval",
            "license": "medmax-eval-mixed",
            "credential": False,
            "question": row["prompt"],
            "answer": str(row["answer"]),
            "question_type": types[qtype],
            "images": [_image(media, root, row["image_path"], f"{where} image")],
            **({"options": options} if options else {}),
            # The released prompt already holds the instruction (and the lettered options):
            # synthesize must ask it word for word, as MedMax did.
            "meta": {"eval_task": f"{row['task_name']}_{qtype}", "verbatim_prompt": True},
        }

    yield from _emit(((w, lambda r=r, w=w: build(r, w)) for w, r in _parquet_rows(path)), policy)


# --------------------------------------------------------------------------- VQA sets


def read_vqa_rad(path: Path, *, media: MediaStore, policy: ErrorPolicy, **_: Any) -> Iterator[dict]:
    """VQA-RAD (OSF release): 'VQA_RAD Dataset Public.json' + 'VQA_RAD Image Folder/'."""
    file = (
        path if path.is_file() else _find(path, "VQA_RAD Dataset Public.json", "VQA_RAD_Dataset_Public.json")
    )
    folder = file.parent / "VQA_RAD Image Folder"
    if not folder.exists():
        folder = file.parent

    def build(row: dict, i: int) -> dict:
        answer = str(row["answer"])
        qtype = "closed" if str(row.get("answer_type", "")).upper() == "CLOSED" else "open"
        return {
            "id": make_id("vqa_rad", row.get("qid", i)),
            "kind": "qa",
            "source": "vqa-rad",
            "license": "cc0",
            "credential": False,
            "question": row["question"],
            "answer": answer,
            "question_type": qtype,
            "images": [_image(media, folder, row["image_name"], f"{file.name}[{i}] image")],
            "meta": {"organ": row.get("image_organ"), "vqa_rad_question_type": row.get("question_type")},
        }

    rows = _read_json(file)
    yield from _emit(((f"{file}[{i}]", lambda r=r, i=i: build(r, i)) for i, r in enumerate(rows)), policy)


def read_slake(
    path: Path, *, media: MediaStore, policy: ErrorPolicy, language: str = "en", **_: Any
) -> Iterator[dict]:
    """SLAKE: train.json / validate.json / test.json (img_name, question, answer, answer_type, q_lang, qid) + imgs/."""
    files = (
        [path]
        if path.is_file()
        else [path / n for n in ("train.json", "validate.json", "test.json") if (path / n).exists()]
    )
    if not files:
        raise RecordError(f"{path}: no SLAKE train.json/validate.json/test.json")

    def build(row: dict, file: Path, i: int) -> dict | None:
        if language and row.get("q_lang", "en") != language:
            skip(policy, f"language {row.get('q_lang')} not selected", where=f"{file}[{i}]")
            return None
        folder = file.parent / "imgs" if (file.parent / "imgs").exists() else file.parent
        qtype = "closed" if str(row.get("answer_type", "")).upper() == "CLOSED" else "open"
        return {
            "id": make_id("slake", file.stem, row.get("qid", i)),
            "kind": "qa",
            "source": "slake",
            "license": "cc-by",
            "credential": False,
            "question": row["question"],
            "answer": str(row["answer"]),
            "question_type": qtype,
            "images": [_image(media, folder, row["img_name"], f"{file.name}[{i}] image")],
            "meta": {"split": file.stem, "modality": row.get("modality"), "location": row.get("location")},
        }

    def rows() -> Iterator[tuple[str, Callable[[], dict | None]]]:
        for file in files:
            for i, row in enumerate(_read_json(file)):
                yield f"{file}[{i}]", lambda r=row, f=file, i=i: build(r, f, i)

    yield from _emit(rows(), policy)  # type: ignore[arg-type]


def read_pathvqa(path: Path, *, media: MediaStore, policy: ErrorPolicy, **_: Any) -> Iterator[dict]:
    """PathVQA (Hugging Face parquet release: image {bytes, path}, question, answer)."""

    def build(row: dict, where: str) -> dict:
        image = row["image"]
        data = image.get("bytes") if isinstance(image, dict) else image
        answer = str(row["answer"])
        split = Path(where.rsplit(":", 1)[0]).stem.split("-")[0]
        return {
            "id": make_id("pathvqa", split, where.rsplit(":", 1)[1]),
            "kind": "qa",
            "source": "pathvqa",
            "license": "mit",
            "credential": False,
            "question": row["question"],
            "answer": answer,
            "question_type": _closed_or_open(answer),
            "images": [media.put(data, what=f"{where} image")],
            "meta": {},
        }

    yield from _emit(((w, lambda r=r, w=w: build(r, w)) for w, r in _parquet_rows(path)), policy)


def read_pmc_vqa(path: Path, *, media: MediaStore, policy: ErrorPolicy, **_: Any) -> Iterator[dict]:
    """PMC-VQA: train.csv / test.csv (Figure_path, Question, Answer, Choice A-D, Answer_label) + figures/."""
    files = [path] if path.is_file() else sorted(p for p in path.glob("*.csv"))
    if not files:
        raise RecordError(f"{path}: no PMC-VQA csv files")

    def build(row: dict, file: Path, i: int) -> dict:
        folder = file.parent / "figures" if (file.parent / "figures").exists() else file.parent / "images"
        options = []
        for letter in "ABCD":
            text = (row.get(f"Choice {letter}") or "").strip()
            if text:
                options.append(text.split(":", 1)[1].strip() if text[:2] == f"{letter}:" else text)
        return {
            "id": make_id("pmc_vqa", file.stem, i),
            "kind": "qa",
            "source": "pmc-vqa",
            "license": "cc-by-sa",
            "credential": False,
            "question": row["Question"].strip(),
            "answer": row["Answer_label"].strip(),
            "options": options,
            "question_type": "multiple_choice",
            "images": [_image(media, folder, row["Figure_path"], f"{file.name}:{i + 2} image")],
            "meta": {"answer_text": (row.get("Answer") or "").strip(), "split": file.stem},
        }

    def rows() -> Iterator[tuple[str, Callable[[], dict]]]:
        for file in files:
            with open(file, newline="", encoding="utf-8") as handle:
                for i, row in enumerate(csv.DictReader(handle)):
                    yield f"{file}:{i + 2}", lambda r=row, f=file, i=i: build(r, f, i)

    yield from _emit(rows(), policy)


# --------------------------------------------------------------------------- conversations and captions


def _chat(source: str, license: str, default_names: tuple[str, ...]) -> Reader:
    def read(
        path: Path, *, media: MediaStore, policy: ErrorPolicy, images: Path | None = None, **_: Any
    ) -> Iterator[dict]:
        file = path if path.is_file() else _find(path, *default_names)
        root = images or file.parent
        if (root / "images").is_dir() and images is None:
            root = root / "images"

        def build(row: dict, i: int) -> dict:
            paths = row.get("image") or []
            paths = [paths] if isinstance(paths, str) else list(paths)
            roles = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}
            conversation = [
                {"role": roles[turn["from"]], "text": turn["value"]} for turn in row["conversations"]
            ]
            return {
                "id": make_id(source.replace("-", "_"), row.get("id", i)),
                "kind": "chat",
                "source": source,
                "license": license,
                "credential": False,
                "conversation": conversation,
                "images": [_image(media, root, p, f"{file.name}[{i}] image") for p in paths],
                "meta": {k: row[k] for k in ("modality", "body_part", "domain") if k in row},
            }

        rows = _read_json(file)
        yield from _emit(((f"{file}[{i}]", lambda r=r, i=i: build(r, i)) for i, r in enumerate(rows)), policy)

    return read


read_pubmedvision = _chat(
    "pubmedvision",
    "apache-2.0",
    ("PubMedVision_InstructionTuning_VQA.json", "PubMedVision_Alignment_VQA.json"),
)
read_llava_med = _chat(
    "llava-med",
    "cc-by-nc",
    (
        "llava_med_instruct_60k_inline_mention.json",
        "llava_med_instruct_60k.json",
        "llava_med_alignment_500k.json",
    ),
)


def read_rocov2(path: Path, *, media: MediaStore, policy: ErrorPolicy, **_: Any) -> Iterator[dict]:
    """ROCOv2: {split}_captions.csv (ID, Caption) with images in {split}/{ID}.jpg."""
    files = sorted(path.glob("*_captions.csv")) if path.is_dir() else [path]
    if not files:
        raise RecordError(f"{path}: no ROCOv2 *_captions.csv")

    def build(row: dict, file: Path) -> dict:
        split = file.name.removesuffix("_captions.csv")
        image_id = row["ID"].strip()
        return {
            "id": make_id("rocov2", image_id),
            "kind": "figure",
            "source": "rocov2",
            "license": "cc-by",
            "credential": False,
            "caption": row["Caption"].strip(),
            "label": "",
            "figure_id": image_id,
            "mentions": [],
            "images": [_image(media, file.parent / split, f"{image_id}.jpg", f"{image_id} image")],
            "meta": {"split": split},
        }

    def rows() -> Iterator[tuple[str, Callable[[], dict]]]:
        for file in files:
            with open(file, newline="", encoding="utf-8") as handle:
                for i, row in enumerate(csv.DictReader(handle)):
                    yield f"{file}:{i + 2}", lambda r=row, f=file: build(r, f)

    yield from _emit(rows(), policy)


def read_mimic_cxr(
    path: Path, *, media: MediaStore, policy: ErrorPolicy, images: Path | None = None, **_: Any
) -> Iterator[dict]:
    """MIMIC-CXR: reports files/pNN/pSUBJECT/sSTUDY.txt with MIMIC-CXR-JPG images in files/.../sSTUDY/*.jpg.

    Credentialed (PhysioNet DUA): every record is `credential: true`; the DUA forbids sending
    these reports or images to third-party services (e.g. a hosted LLM in `synthesize`).
    """
    reports = sorted((path / "files").rglob("s*.txt") if (path / "files").exists() else path.rglob("s*.txt"))
    image_root = images or path

    def build(report: Path) -> dict:
        study = report.stem
        subject = report.parent.name
        rel = report.relative_to(path / "files" if (path / "files").exists() else path).parent
        folder = (
            (image_root / "files" / rel / study)
            if (image_root / "files").exists()
            else image_root / rel / study
        )
        refs = [media.import_file(p, what=f"{study} {p.name}") for p in sorted(folder.glob("*.jpg"))]
        return {
            "id": make_id("mimic_cxr", subject, study),
            "kind": "report",
            "source": "mimic-cxr",
            "license": "physionet-credentialed-1.5.0",
            "credential": True,
            "report": report.read_text(encoding="utf-8").strip(),
            "images": refs,
            "meta": {"subject": subject, "study": study},
        }

    yield from _emit(((str(r), lambda r=r: build(r)) for r in reports), policy)


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "pmc",
            "per article (cc-by, cc0, cc-by-nc, ...)",
            "network: Europe PMC + PMC Cloud (HTTPS)",
            "figure",
            None,
        ),
        Source(
            "jats",
            "per article",
            "local JATS files, PMC packages or a synced PMC Cloud folder",
            "figure",
            None,
        ),
        Source("jsonl", "as in the records", "local JSONL records + --root for their images", "any", None),
        Source(
            "medmax",
            "mixed, per row source",
            "MedMax train.jsonl + images folder (Hugging Face)",
            "instance",
            read_medmax,
        ),
        Source(
            "medmax-eval",
            "mixed, per task",
            "MedMax eval parquet + eval images folder (--images)",
            "qa",
            read_medmax_eval,
        ),
        Source(
            "vqa-rad", "cc0", "VQA_RAD Dataset Public.json + VQA_RAD Image Folder (OSF)", "qa", read_vqa_rad
        ),
        Source("slake", "cc-by", "SLAKE train/validate/test.json + imgs/", "qa", read_slake),
        Source("pathvqa", "mit", "PathVQA parquet files (Hugging Face release)", "qa", read_pathvqa),
        Source("pmc-vqa", "cc-by-sa", "PMC-VQA train.csv/test.csv + figures/", "qa", read_pmc_vqa),
        Source("pubmedvision", "apache-2.0", "PubMedVision *_VQA.json + images/", "chat", read_pubmedvision),
        Source(
            "llava-med",
            "cc-by-nc (research only)",
            "llava_med_instruct_*.json + images folder",
            "chat",
            read_llava_med,
        ),
        Source("rocov2", "cc-by", "ROCOv2 {split}_captions.csv + {split}/ images", "figure", read_rocov2),
        Source(
            "mimic-cxr",
            "PhysioNet credentialed DUA",
            "PhysioNet credentials: mimic-cxr reports + "
            "mimic-cxr-jpg images; never send to third-party services",
            "report",
            read_mimic_cxr,
        ),
    ]
}


def describe_sources() -> str:
    """The table printed by `medmax fetch --list`."""
    rows = [("source", "kind", "licence", "needs")] + [
        (s.name, s.kind, s.license, s.needs) for s in SOURCES.values()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)
