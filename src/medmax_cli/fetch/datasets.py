"""Readers for public biomedical datasets a user has downloaded, each in its published layout.

Column and file names follow the datasets' own cards/releases (cited per source in docs/fetch.md).
Every reader yields schema-v1 source records with the licence on each, imports images into the
media store (paths are resolved inside the dataset folder only), and accounts for every row it
reads: `in` counts rows read, the writer counts `out`, and each rejected or skipped row is
counted under its reason, so in = out + rejected + skipped. A file that cannot be read at all
(bad JSON, not parquet, wrong header) is one clear error naming the file, never a traceback.
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
from medmax_cli.fetch.medmax import options_in_prompt, read_medmax, read_medmax_eval
from medmax_cli.fetch.rows import (
    Row,
    closed_or_open,
    csv_rows,
    emit,
    existing,
    file_error,
    hf_image,
    image_file,
    json_rows,
    jsonl_lines,
    parquet_files,
    parquet_rows,
    shard_split,
    stem_of,
)
from medmax_cli.fetch.splits import UnknownSplit, canonical_split, resolve_split, split_meta
from medmax_cli.media import MediaError, MediaStore, max_input_bytes, read_local_file, safe_relative_path
from medmax_cli.records import RecordError, make_id
from medmax_cli.streams import ErrorPolicy

Reader = Callable[..., Iterator[dict[str, Any]]]
__all__ = ["SOURCES", "Source", "describe_sources", "options_in_prompt", "read_medmax", "read_medmax_eval"]


@dataclass(frozen=True)
class Source:
    name: str
    license: str  # licence written on every record
    needs: str  # what the user must download (and agree to)
    kind: str
    reader: Reader | None  # None: handled by its own command (pmc, jats, jsonl)


# --------------------------------------------------------------------------- VQA sets

VQA_RAD_OSF = ("VQA_RAD Dataset Public.json", "VQA_RAD_Dataset_Public.json")
VQA_RAD_MEVF = ("trainset.json", "testset.json")  # MEVF / MMQ / PubMedCLIP `data_RAD/`
VQA_RAD_IMAGES = ("VQA_RAD Image Folder", "images")


def _vqa_rad_files(path: Path) -> list[Path]:
    """The OSF release file, or MEVF's trainset.json + testset.json (in PATH or PATH/data_RAD)."""
    if path.is_file():
        return [path]
    for base in (path, path / "data_RAD"):
        osf = existing(base, *VQA_RAD_OSF)
        if osf:
            return osf[:1]
        mevf = existing(base, *VQA_RAD_MEVF)
        if mevf:
            return mevf
    raise RecordError(
        f"{path}: neither the OSF release ({' or '.join(VQA_RAD_OSF)}) nor the MEVF data_RAD layout "
        f"({', '.join(VQA_RAD_MEVF)}) found (is this the published layout?)",
        cls="dataset layout not found",
    )


def read_vqa_rad(
    path: Path,
    *,
    media: MediaStore,
    policy: ErrorPolicy,
    images: Path | None = None,
    assume_split: str | None = None,
    **_: Any,
) -> Iterator[dict]:
    """VQA-RAD in either published layout: the OSF release ('VQA_RAD Dataset Public.json' +
    'VQA_RAD Image Folder/'), MEVF's `data_RAD/` (trainset.json, testset.json, images/; reused by
    MMQ, PubMedCLIP, MUMC), or a Hugging Face mirror (parquet; split from the shard name).

    The split comes from the file when its name says it (`testset.json` is test, whatever its
    rows' phrase_type says), else from OSF `phrase_type` (test_freeform/test_para: test) when the
    file is the OSF release (it holds test_ phrase types); a file that says neither is refused
    with --split guidance. `phrase_type` and `qid_linked_id` are kept in meta.
    """
    if path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet"))):
        yield from _hf_vqa_parquet(
            path,
            prefix="vqa_rad",
            source="vqa-rad",
            license="cc0",
            media=media,
            policy=policy,
            assume_split=assume_split,
        )
        return

    def build(row: dict, file: Path, i: int, file_split: str | None, osf: bool) -> dict:
        phrase = row.get("phrase_type")
        if str(phrase or "").startswith("test"):
            split, source_split = "test", phrase  # a test phrase type is test whatever the file
        elif file_split is not None:
            split, source_split = file_split, stem_of(file)
        elif osf and phrase:
            split, source_split = "train", phrase
        else:
            split, source_split = resolve_split(None, what=f"{file}[{i}]", assume=assume_split)
        folder = images or next(
            (file.parent / n for n in VQA_RAD_IMAGES if (file.parent / n).is_dir()), file.parent
        )
        qtype = "closed" if str(row.get("answer_type", "")).strip().upper() == "CLOSED" else "open"
        return {
            "id": make_id("vqa_rad", row.get("qid", i)),
            "kind": "qa",
            "source": "vqa-rad",
            "license": "cc0",
            "credential": False,
            "question": _text(row["question"]),
            "answer": _text(row["answer"]),
            "question_type": qtype,
            "images": [image_file(media, folder, str(row["image_name"]), f"{file.name}[{i}] image")],
            "meta": {
                **split_meta(source_split, split),
                "file": file.name,
                "phrase_type": phrase,
                "qid_linked_id": row.get("qid_linked_id"),
                "organ": row.get("image_organ"),
                "vqa_rad_question_type": row.get("question_type"),
            },
        }

    def rows() -> Iterator[Row]:
        for file in _vqa_rad_files(path):
            data = json_rows(file, policy)
            if data is None:
                continue
            file_split = canonical_split(stem_of(file))
            osf = f"{stem_of(file)}.json" in VQA_RAD_OSF or any(
                str((r or {}).get("phrase_type", "")).startswith("test_") for r in data if isinstance(r, dict)
            )
            if file_split is None and not osf and assume_split is None:
                why = "its name is not trainset/testset and no row has an OSF test_ phrase_type"
                policy.report.count("in")
                policy.reject(UnknownSplit("this file", why), None, where=str(file))
                continue
            for i, row in enumerate(data):
                yield f"{file}[{i}]", lambda r=row, f=file, i=i, fs=file_split, o=osf: build(r, f, i, fs, o)

    yield from emit(rows(), policy)


def _text(value: Any) -> str:
    """A question/answer/caption as published, byte for byte (JSON numbers, e.g. VQA-RAD's
    answer 4, become their JSON text); never stripped or re-spaced."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise RecordError(f"expected text, found {value!r}", cls="field not text")
    return str(value)


def _hf_vqa_parquet(
    path: Path,
    *,
    prefix: str,
    source: str,
    license: str,
    media: MediaStore,
    policy: ErrorPolicy,
    assume_split: str | None = None,
) -> Iterator[dict]:
    """A Hugging Face VQA parquet release (VQA-RAD and PathVQA mirrors): sharded `{split}-{k}-of-{n}`
    files of image {bytes, path}, question, answer; ids carry split and shard (rows restart per shard)."""

    def build(file: Path, index: int, row: dict) -> dict:
        name, shard = shard_split(file)
        split, source_split = resolve_split(name, what=str(file), assume=assume_split)
        answer = _text(row["answer"])
        return {
            "id": make_id(prefix, name, shard, index),
            "kind": "qa",
            "source": source,
            "license": license,
            "credential": False,
            "question": _text(row["question"]),
            "answer": answer,
            "question_type": closed_or_open(answer),
            "images": [hf_image(media, row["image"], f"{file.name}:{index} image")],
            "meta": split_meta(source_split, split),
        }

    rows = parquet_rows(parquet_files(path), policy)
    yield from emit(((f"{f}:{i}", lambda f=f, i=i, r=r: build(f, i, r)) for f, i, r in rows), policy)


SLAKE_FILES = ("train.json", "validation.json", "validate.json", "test.json")


def read_slake(
    path: Path,
    *,
    media: MediaStore,
    policy: ErrorPolicy,
    images: Path | None = None,
    language: str | None = "en",
    assume_split: str | None = None,
    **_: Any,
) -> Iterator[dict]:
    """SLAKE: train.json / validate.json (BoKelvin/SLAKE; mirrors say validation.json) / test.json
    (img_name, question, answer, answer_type, q_lang, qid, ...) + imgs/. The split is the file's
    name (validate -> validation); a file named otherwise needs --split. Rows in another language
    than `language` are skipped (counted as `language not selected`)."""
    files = [path] if path.is_file() else existing(path, *SLAKE_FILES)
    if not files:
        raise RecordError(f"{path}: no SLAKE {', '.join(SLAKE_FILES)}", cls="dataset layout not found")

    def build(row: dict, file: Path, i: int) -> dict | None:
        if language and row.get("q_lang", "en") != language:
            skip(
                policy,
                f"language {row.get('q_lang')} not selected (--language {language})",
                cls="language not selected",
                where=f"{file}[{i}]",
            )
            return None
        folder = images or (file.parent / "imgs" if (file.parent / "imgs").exists() else file.parent)
        qtype = "closed" if str(row.get("answer_type", "")).strip().upper() == "CLOSED" else "open"
        split, source_split = resolve_split(stem_of(file), what=str(file), assume=assume_split)
        return {
            "id": make_id("slake", split, row.get("qid", i)),
            "kind": "qa",
            "source": "slake",
            "license": "cc-by",
            "credential": False,
            "question": _text(row["question"]),
            "answer": _text(row["answer"]),
            "question_type": qtype,
            "images": [image_file(media, folder, str(row["img_name"]), f"{file.name}[{i}] image")],
            "meta": {
                **split_meta(source_split, split),
                "modality": row.get("modality"),
                "location": row.get("location"),
                "content_type": row.get("content_type"),
            },
        }

    def rows() -> Iterator[Row]:
        for file in files:
            if canonical_split(stem_of(file)) is None and assume_split is None:
                policy.report.count("in")
                policy.reject(
                    UnknownSplit("this file", "not named train/validate/validation/test"), where=str(file)
                )
                continue
            for i, row in enumerate(json_rows(file, policy) or []):
                yield f"{file}[{i}]", lambda r=row, f=file, i=i: build(r, f, i)

    yield from emit(rows(), policy)


def read_pathvqa(
    path: Path, *, media: MediaStore, policy: ErrorPolicy, assume_split: str | None = None, **_: Any
) -> Iterator[dict]:
    """PathVQA, Hugging Face parquet release: `data/{split}-{k}-of-{n}-<hash>.parquet` (every split
    sharded; row numbers restart in each shard) with image {bytes, path}, question, answer."""
    return _hf_vqa_parquet(
        path,
        prefix="pathvqa",
        source="pathvqa",
        license="mit",
        media=media,
        policy=policy,
        assume_split=assume_split,
    )


PMC_VQA_V1 = ("Figure_path", "Question", "Choice A", "Choice B", "Answer_label")
PMC_VQA_V2 = ("Figure_path", "Question", "Choice A", "Choice B", "Answer")
_LETTERED = re.compile(r"^\s*([A-H])\s*[:.)]\s*(.*?)\s*$", re.S)


def _option_text(raw: str, letter: str) -> str:
    match = _LETTERED.match(raw or "")
    return match.group(2) if match and match.group(1) == letter else (raw or "").strip()


def read_pmc_vqa(
    path: Path,
    *,
    media: MediaStore,
    policy: ErrorPolicy,
    images: Path | None = None,
    assume_split: str | None = None,
    **_: Any,
) -> Iterator[dict]:
    """PMC-VQA, told apart by header: v2 `train_2.csv`/`test_2.csv` (index, Figure_path, Caption,
    Question, Choice A-D, Answer = the letter, split; images in figures/) and v1 `train.csv`/
    `test.csv` (Figure_path, Question, Answer = text, Choice A-D, Answer_label; images in images/).
    In a folder, `test_clean.csv` (a subset of v1 test) is left out, counted; give it as PATH to
    read it alone."""
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.glob("*.csv"))
        if not files:
            raise RecordError(f"{path}: no PMC-VQA csv files")
        for file in [f for f in files if f.name == "test_clean.csv"]:
            skip(policy, "file not read: test_clean.csv is a subset of test.csv", where=str(file), row=False)
            files.remove(file)

    def build(row: dict, file: Path, line: int, version: int) -> dict:
        folder = images or file.parent / ("figures" if version == 2 else "images")
        if not folder.exists():
            folder = file.parent
        options = []
        for letter in "ABCD":
            text = _option_text(row.get(f"Choice {letter}") or "", letter)
            if text:
                options.append(text)
        if version == 2:
            letter = (row.get("Answer") or "").strip().strip(":").strip()
            answer_text = ""
        else:
            letter = (row.get("Answer_label") or "").strip()
            answer_text = (row.get("Answer") or row.get("Anwser") or "").strip()
        if len(letter) != 1 or not "A" <= letter <= "D":
            raise RecordError(f"answer {letter!r} is not an option letter A-D")
        meta = {"version": version, "answer_text": answer_text or options["ABCD".index(letter)]}
        split, source_split = resolve_split(
            row.get("split") or file.stem, what=str(file), assume=assume_split
        )
        meta.update(split_meta(source_split, split))
        if version == 2:
            meta.update(caption=row.get("Caption") or "", index=row.get("index"))
        return {
            "id": make_id("pmc_vqa", file.stem, line),
            "kind": "qa",
            "source": "pmc-vqa",
            "license": "cc-by-sa",
            "credential": False,
            "question": row["Question"],
            "answer": letter,
            "options": options,
            "question_type": "multiple_choice",
            "images": [image_file(media, folder, row["Figure_path"].strip(), f"{file.name}:{line} image")],
            "meta": meta,
        }

    def rows() -> Iterator[Row]:
        for file in files:
            version = _pmc_vqa_version(file, policy)
            if version is None:
                continue
            for line, row in csv_rows(file, policy, PMC_VQA_V2 if version == 2 else PMC_VQA_V1):
                yield f"{file}:{line}", lambda r=row, f=file, n=line, v=version: build(r, f, n, v)

    yield from emit(rows(), policy)


def _pmc_vqa_version(file: Path, policy: ErrorPolicy) -> int | None:
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        file_error(policy, file, f"unreadable CSV ({exc})")
        return None
    if "Answer_label" in header:
        return 1
    if "Figure_path" in header and "Answer" in header:
        return 2
    file_error(policy, file, f"not a PMC-VQA v1 or v2 header: {', '.join(header)}")
    return None


# --------------------------------------------------------------------------- conversations and captions

ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}


def _conversation(row: dict) -> list[dict[str, str]]:
    # LLaVA-Med's alignment rows spell the key "conversatons" (sic); its loaders accept both.
    turns = row.get("conversations", row.get("conversatons"))
    if not isinstance(turns, list) or not turns:
        raise RecordError("row has no 'conversations' (nor LLaVA-Med's 'conversatons') list")
    return [{"role": ROLES[turn["from"]], "text": str(turn["value"])} for turn in turns]


def _resolve_image(media: MediaStore, roots: list[Path], relative: str, what: str) -> dict[str, Any]:
    """The first root holding `relative` (each checked to stay inside its root)."""
    for root in roots:
        full = safe_relative_path(root, relative, what=what)
        if full.is_file():
            return media.import_file(full, what=what)
    raise MediaError(f"{what}: {relative!r} not found under {' or '.join(str(r) for r in roots)}")


def _chat_records(
    files: list[Path],
    *,
    source: str,
    license: str,
    roots_of: Callable[[Path], list[Path]],
    media: MediaStore,
    policy: ErrorPolicy,
) -> Iterator[dict]:
    def build(row: dict, file: Path, i: int) -> dict:
        paths = row.get("image") or []
        paths = [paths] if isinstance(paths, str) else list(paths)
        roots = roots_of(file)
        return {
            "id": make_id(source.replace("-", "_"), file.stem, i, row.get("id")),
            "kind": "chat",
            "source": source,
            "license": license,
            "credential": False,
            "conversation": _conversation(row),
            "images": [_resolve_image(media, roots, str(p), f"{file.name}[{i}] image") for p in paths],
            "meta": {
                # training sets: PubMedVision and LLaVA-Med's alignment/instruct sets publish no other split
                **split_meta(None, "train"),
                "file": file.name,
                **{k: row[k] for k in ("modality", "body_part", "domain", "pmc_fig_url") if k in row},
            },
        }

    def rows() -> Iterator[Row]:
        for file in files:
            for i, row in enumerate(json_rows(file, policy) or []):
                yield f"{file}[{i}]", lambda r=row, f=file, i=i: build(r, f, i)

    yield from emit(rows(), policy)


PUBMEDVISION_FILES = ("PubMedVision_Alignment_VQA.json", "PubMedVision_InstructionTuning_VQA.json")


def read_pubmedvision(
    path: Path, *, media: MediaStore, policy: ErrorPolicy, images: Path | None = None, **_: Any
) -> Iterator[dict]:
    """PubMedVision: `PubMedVision_{Alignment,InstructionTuning}_VQA.json` (id, image [list],
    conversations, modality, body_part); image paths are relative to the dataset root and start
    with `images/`. `--images` may name the dataset root or the images/ folder itself."""
    files = [path] if path.is_file() else existing(path, *PUBMEDVISION_FILES)
    if not files:
        raise RecordError(f"{path}: none of {', '.join(PUBMEDVISION_FILES)} found")

    def roots_of(file: Path) -> list[Path]:
        root = images or file.parent
        return [root, root.parent] if root.name == "images" else [root]

    yield from _chat_records(
        files, source="pubmedvision", license="apache-2.0", roots_of=roots_of, media=media, policy=policy
    )


LLAVA_MED_ALIGNMENT = ("llava_med_alignment_500k.json",)
# Alternative renderings of the same 60K conversations (10K is a subset): only the first found is read.
LLAVA_MED_INSTRUCT = (
    "llava_med_instruct_60k_inline_mention.json",
    "llava_med_instruct_60k.json",
    "llava_med_instruct_10k.json",
)
LLAVA_MED_EVAL = "llava_med_eval_qa50_qa.jsonl"  # the 193 evaluation questions (data/eval/)


def read_llava_med(
    path: Path, *, media: MediaStore, policy: ErrorPolicy, images: Path | None = None, **_: Any
) -> Iterator[dict]:
    """LLaVA-Med as its download_data.sh lays it out: data/alignment/llava_med_alignment_500k.json
    (key `conversatons`, sic), data/instruct/llava_med_instruct_*.json (split train), the
    evaluation questions data/eval/llava_med_eval_qa50_qa.jsonl (split test), images in
    data/images/. PATH is the repository root, its data/ folder, or one JSON/JSONL file. A file
    that is still a Git LFS pointer (a clone without LFS) is refused with what to run."""
    if path.is_file():
        files = [path]
        data = path.parent.parent if path.parent.name in ("alignment", "instruct", "eval") else path.parent
    else:
        data = path / "data" if (path / "data").is_dir() else path
        files = []
        for folder, names in (("alignment", LLAVA_MED_ALIGNMENT), ("instruct", LLAVA_MED_INSTRUCT)):
            found = existing(data / folder, *names) + existing(data, *names)
            files += found[:1]
            for other in found[1:]:
                skip(
                    policy,
                    f"file not read: {other.name} renders the same conversations as {found[0].name}",
                    where=str(other),
                    row=False,
                )
        files += (existing(data / "eval", LLAVA_MED_EVAL) + existing(data, LLAVA_MED_EVAL))[:1]
        if not files:
            raise RecordError(
                f"{path}: no LLaVA-Med alignment/, instruct/ or eval/ file found",
                cls="dataset layout not found",
            )
    root = images or (data / "images" if (data / "images").is_dir() else data)
    train = [f for f in files if not f.name.removesuffix(".gz").endswith(".jsonl")]
    if train:
        yield from _chat_records(
            train,
            source="llava-med",
            license="cc-by-nc",
            roots_of=lambda _file: [root],
            media=media,
            policy=policy,
        )
    for file in (f for f in files if f.name.removesuffix(".gz").endswith(".jsonl")):
        yield from _llava_med_eval(file, root, media=media, policy=policy)


def _llava_med_eval(file: Path, root: Path, *, media: MediaStore, policy: ErrorPolicy) -> Iterator[dict]:
    """LLaVA-Med's evaluation JSONL (question_id, image, pair_id, text with `<image>`, gpt4_answer,
    fig_caption, fig_label, in_text_mention, domain, type): one chat record per question, split test,
    text verbatim."""

    def build(line: bytes, n: int) -> dict:
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise RecordError(f"not a JSON object ({exc})", cls="not valid JSON") from None
        if not isinstance(row, dict):
            raise RecordError(f"expected a JSON object, found {type(row).__name__}", cls="not a JSON object")
        return {
            "id": make_id("llava_med_eval", row.get("question_id", n)),
            "kind": "chat",
            "source": "llava-med",
            "license": "cc-by-nc",
            "credential": False,
            "conversation": [
                {"role": "user", "text": _text(row["text"])},
                {"role": "assistant", "text": _text(row["gpt4_answer"])},
            ],
            "images": [image_file(media, root, str(row["image"]), f"{file.name}:{n} image")],
            "meta": {
                **split_meta(None, "test"),
                "file": file.name,
                "eval_type": row.get("type"),
                **{
                    k: row[k]
                    for k in ("question_id", "pair_id", "fig_caption", "fig_label", "domain")
                    if k in row
                },
            },
        }

    yield from emit(
        ((f"{file}:{n}", lambda line=line, n=n: build(line, n)) for n, line in jsonl_lines(file, policy)),
        policy,
    )


# ROCOv2 images come from PMC OA articles under CC BY or CC BY-NC; the release does not say which
# per image, and the dataset as distributed is CC BY-NC-SA 4.0: that is what each record carries.
ROCOV2_LICENSE = "cc-by-nc-sa"


def read_rocov2(
    path: Path,
    *,
    media: MediaStore,
    policy: ErrorPolicy,
    images: Path | None = None,
    assume_split: str | None = None,
    **_: Any,
) -> Iterator[dict]:
    """ROCOv2: `{split}_captions.csv` (ID, Caption) + `{split}_concepts.csv` (ID, CUIs, ';'-joined)
    with images `{split}/{ID}.jpg`; or the Hugging Face parquet (image, image_id, caption, cui)."""
    if path.suffix == ".parquet" or (path.is_dir() and not any(path.glob("*_captions.csv*"))):
        if path.is_dir() and not any(path.rglob("*.parquet")):
            raise RecordError(f"{path}: no ROCOv2 *_captions.csv nor Hugging Face parquet files")
        yield from _rocov2_parquet(path, media=media, policy=policy, assume_split=assume_split)
        return
    files = (
        sorted(path.glob("*_captions.csv")) + sorted(path.glob("*_captions.csv.gz"))
        if path.is_dir()
        else [path]
    )

    def concepts_of(file: Path) -> dict[str, list[str]]:
        split = file.name.removesuffix(".gz").removesuffix("_captions.csv")
        table: dict[str, list[str]] = {}
        concepts = next(iter(existing(file.parent, f"{split}_concepts.csv")), file.with_name("-"))
        if concepts.exists():
            for _line, row in csv_rows(concepts, policy, ("ID", "CUIs")):
                table[row["ID"].strip()] = [c for c in re.split(r"[;,\s]+", row["CUIs"] or "") if c]
        return table

    def build(row: dict, file: Path, cuis: dict[str, list[str]]) -> dict:
        name = file.name.removesuffix(".gz").removesuffix("_captions.csv")
        split, source_split = resolve_split(name, what=str(file), assume=assume_split)
        image_id = row["ID"].strip()
        folder = (images or file.parent) / name
        return {
            "id": make_id("rocov2", image_id),
            "kind": "figure",
            "source": "rocov2",
            "license": ROCOV2_LICENSE,
            "credential": False,
            "caption": row["Caption"],
            "label": "",
            "figure_id": image_id,
            "mentions": [],
            "images": [image_file(media, folder, f"{image_id}.jpg", f"{image_id} image")],
            "meta": {
                **split_meta(source_split, split),
                "cuis": cuis.get(image_id, []),
                "image_license": "cc-by or cc-by-nc",
            },
        }

    def rows() -> Iterator[Row]:
        for file in files:
            cuis = concepts_of(file)
            for line, row in csv_rows(file, policy, ("ID", "Caption")):
                yield f"{file}:{line}", lambda r=row, f=file, c=cuis: build(r, f, c)

    yield from emit(rows(), policy)


def _rocov2_parquet(
    path: Path, *, media: MediaStore, policy: ErrorPolicy, assume_split: str | None = None
) -> Iterator[dict]:
    def build(file: Path, index: int, row: dict) -> dict:
        name, _shard = shard_split(file)
        split, source_split = resolve_split(name, what=str(file), assume=assume_split)
        image_id = str(row["image_id"]).strip()
        return {
            "id": make_id("rocov2", image_id),
            "kind": "figure",
            "source": "rocov2",
            "license": ROCOV2_LICENSE,
            "credential": False,
            "caption": _text(row["caption"]),
            "label": "",
            "figure_id": image_id,
            "mentions": [],
            "images": [hf_image(media, row["image"], f"{file.name}:{index} image")],
            "meta": {
                **split_meta(source_split, split),
                "cuis": list(row.get("cui") or []),
                "image_license": "cc-by or cc-by-nc",
            },
        }

    rows = parquet_rows(parquet_files(path), policy)
    yield from emit(((f"{f}:{i}", lambda f=f, i=i, r=r: build(f, i, r)) for f, i, r in rows), policy)


MIMIC_SPLIT = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")
MIMIC_METADATA = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")


def _mimic_tables(
    roots: list[Path], policy: ErrorPolicy
) -> tuple[dict[str, str], dict[str, str], bool, bool]:
    """study_id -> split and dicom_id -> ViewPosition from the MIMIC-CXR-JPG CSVs (when present)."""
    splits: dict[str, str] = {}
    views: dict[str, str] = {}
    split_file = next((r / n for r in roots for n in MIMIC_SPLIT if (r / n).exists()), None)
    meta_file = next((r / n for r in roots for n in MIMIC_METADATA if (r / n).exists()), None)
    if split_file is not None:
        for _line, row in csv_rows(split_file, policy, ("dicom_id", "study_id", "split")):
            splits[str(row["study_id"]).strip()] = row["split"].strip()
    if meta_file is not None:
        for _line, row in csv_rows(meta_file, policy, ("dicom_id", "ViewPosition")):
            views[row["dicom_id"].strip()] = (row["ViewPosition"] or "").strip()
    return splits, views, split_file is not None, meta_file is not None


def read_mimic_cxr(
    path: Path, *, media: MediaStore, policy: ErrorPolicy, images: Path | None = None, **_: Any
) -> Iterator[dict]:
    """MIMIC-CXR: reports files/pNN/pSUBJECT/sSTUDY.txt with MIMIC-CXR-JPG images in files/.../sSTUDY/*.jpg;
    `mimic-cxr-2.0.0-split.csv(.gz)` gives each study's official split (meta.split) and
    `-metadata.csv(.gz)` each image's ViewPosition (meta.views, in image order).

    Credentialed (PhysioNet DUA): every record is `credential: true`; the DUA forbids sending
    these reports or images to third-party services (e.g. a hosted LLM in `synthesize`).
    """
    reports = sorted((path / "files").rglob("s*.txt") if (path / "files").exists() else path.rglob("s*.txt"))
    if not reports:
        raise RecordError(f"{path}: no MIMIC-CXR reports (files/pNN/pSUBJECT/sSTUDY.txt)")
    image_root = images or path
    splits, views, has_split, has_views = _mimic_tables([path, image_root], policy)

    def build(report: Path) -> dict:
        study = report.stem
        subject = report.parent.name
        rel = report.relative_to(path / "files" if (path / "files").exists() else path).parent
        folder = (
            (image_root / "files" / rel / study)
            if (image_root / "files").exists()
            else image_root / rel / study
        )
        files = sorted(folder.glob("*.jpg"))
        refs = [media.import_file(p, what=f"{study} {p.name}") for p in files]
        meta: dict[str, Any] = {"subject": subject, "study": study}
        if has_split:
            source_split = splits.get(study.removeprefix("s"))
            meta.update(split_meta(source_split, canonical_split(source_split)))
        if has_views:
            meta["views"] = [views.get(p.stem) for p in files]
        return {
            "id": make_id("mimic_cxr", subject, study),
            "kind": "report",
            "source": "mimic-cxr",
            "license": "physionet-credentialed-1.5.0",
            "credential": True,
            "report": read_local_file(report, limit=max_input_bytes(), what=str(report)).decode("utf-8"),
            "images": refs,
            "meta": meta,
        }

    yield from emit(((str(r), lambda r=r: build(r)) for r in reports), policy)


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
            "MedMax train.jsonl + images folder (--images; Hugging Face mint-medmax/medmax_data)",
            "instance",
            read_medmax,
        ),
        Source(
            "medmax-eval",
            "mixed, per task",
            "MedMax eval parquet (every task family) + eval images folder (--images)",
            "qa/instance",
            read_medmax_eval,
        ),
        Source(
            "vqa-rad",
            "cc0",
            "VQA_RAD Dataset Public.json + VQA_RAD Image Folder (OSF), or the HF parquet",
            "qa",
            read_vqa_rad,
        ),
        Source("slake", "cc-by", "SLAKE train/validate(validation)/test.json + imgs/", "qa", read_slake),
        Source("pathvqa", "mit", "PathVQA sharded parquet files (Hugging Face release)", "qa", read_pathvqa),
        Source(
            "pmc-vqa",
            "cc-by-sa",
            "PMC-VQA train_2/test_2.csv + figures/ (v2) or train/test.csv + images/ (v1)",
            "qa",
            read_pmc_vqa,
        ),
        Source(
            "pubmedvision",
            "apache-2.0",
            "PubMedVision_*_VQA.json + images/ (paths start with images/)",
            "chat",
            read_pubmedvision,
        ),
        Source(
            "llava-med",
            "cc-by-nc (research only)",
            "LLaVA-Med data/{alignment,instruct,eval,images} (download_data.sh; git lfs pull)",
            "chat",
            read_llava_med,
        ),
        Source(
            "rocov2",
            "cc-by-nc-sa (images CC BY or CC BY-NC)",
            "ROCOv2 {split}_captions.csv + _concepts.csv + {split}/ images, or the HF parquet",
            "figure",
            read_rocov2,
        ),
        Source(
            "mimic-cxr",
            "PhysioNet credentialed DUA",
            "PhysioNet credentials: mimic-cxr reports + mimic-cxr-jpg images (+ split/metadata "
            "csv.gz); never send to third-party services",
            "report",
            read_mimic_cxr,
        ),
    ]
}


def select_splits(
    records: Iterator[dict[str, Any]], splits: frozenset[str] | None, policy: ErrorPolicy
) -> Iterator[dict[str, Any]]:
    """Only records whose official split (`meta.split`, one of train/validation/test) is in
    `splits`; the others are counted skips (`split not selected`).

    This is how test items stay out of training: `fetch vqa-rad DIR --split train | synthesize
    --exclude <(fetch vqa-rad DIR --split test)`. With a filter, a record whose split is not known
    is rejected (`split unknown`), never kept as if it were train."""
    for record in records:
        split = (record.get("meta") or {}).get("split")
        if splits is None or (split is not None and str(split) in splits):
            yield record
        elif split is None:
            policy.reject(
                RecordError(
                    "split unknown: the source does not say which split this record is in, so --split "
                    "cannot keep or drop it (add the source's split file, e.g. MIMIC-CXR's split csv)",
                    cls="split unknown",
                    record_id=record.get("id"),
                ),
                record,
            )
        else:
            skip(
                policy,
                f"split {split} not selected (--split {','.join(sorted(splits))})",
                cls="split not selected",
                record_id=record.get("id"),
            )


def describe_sources() -> str:
    """The table printed by `medmax fetch --list`."""
    rows = [("source", "kind", "licence", "needs")] + [
        (s.name, s.kind, s.license, s.needs) for s in SOURCES.values()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)
