"""Local dataset readers, each on a tiny fixture written in the dataset's published layout."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fakes.jats_articles import png
from medmax_cli.fetch import datasets
from medmax_cli.records import validate
from medmax_cli.streams import ErrorPolicy


def run(reader, path: Path, media, **kw) -> tuple[list[dict], list[dict]]:
    rejects = io.BytesIO()
    records = list(reader(path, media=media, policy=ErrorPolicy("skip", rejects, stage="fetch"), **kw))
    for record in records:
        validate(record)
    return records, [orjson.loads(line) for line in rejects.getvalue().splitlines()]


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data))


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_medmax_rows_keep_tokens_and_credential(tmp_path, media):
    (tmp_path / "images" / "pmc").mkdir(parents=True)
    (tmp_path / "images" / "pmc" / "a.png").write_bytes(png(1))
    rows = [
        {
            "text": "<image>What is shown?<reserved08706>A CT.",
            "tokens": [0, 8197, 5, 8196, 2],
            "image_path": "images/pmc/a.png",
            "task": "vqa",
            "source": "pmc_vqa",
            "credential": "no",
        },
        {
            "text": "Report ...",
            "tokens": None,
            "image_path": None,
            "task": "report_understanding",
            "source": "mimic_cxr",
            "credential": "yes",
        },
        {
            "text": "x",
            "tokens": [1],
            "image_path": "../escape.png",
            "task": "vqa",
            "source": "s",
            "credential": "no",
        },
    ]
    (tmp_path / "train.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    records, rejects = run(datasets.read_medmax, tmp_path, media)
    assert [r["credential"] for r in records] == [False, True]
    assert records[0]["tokens"] == [0, 8197, 5, 8196, 2] and records[0]["meta"]["task"] == "vqa"
    assert records[0]["meta"]["source"] == "pmc_vqa" and len(records[0]["images"]) == 1
    assert records[1]["images"] == [] and "tokens" not in records[1]
    assert "may not leave" in rejects[0]["reason"]


def test_medmax_eval_parquet(tmp_path, media):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(png(2))
    table = pa.table(
        {
            "task_name": ["vqa_rad", "pmc_vqa"],
            "question_type": ["closed", "mcq"],
            "prompt": ["Is it CT?", "Which?\nA: x\nB: y\nAnswer with the option's letter."],
            "answer": ["yes", "B"],
            "image_path": ["imgs/x.png", "imgs/x.png"],
        }
    )
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet")
    records, _ = run(datasets.read_medmax_eval, tmp_path / "data", media, images=tmp_path)
    assert [r["meta"]["eval_task"] for r in records] == ["vqa_rad_closed", "pmc_vqa_mcq"]
    assert [r["question_type"] for r in records] == ["closed", "multiple_choice"]
    assert records[1]["options"] == ["x", "y"] and "options" not in records[0]
    assert all(r["meta"]["verbatim_prompt"] for r in records)
    assert datasets.options_in_prompt("Q\n(A) one\n(B) two\n(D) skipped") == ["one", "two"]
    assert datasets.options_in_prompt("no options here") == []


def test_vqa_rad(tmp_path, media):
    folder = tmp_path / "VQA_RAD Image Folder"
    folder.mkdir()
    (folder / "synpic1.jpg").write_bytes(png(3, fmt="JPEG"))
    write_json(
        tmp_path / "VQA_RAD Dataset Public.json",
        [
            {
                "qid": 1,
                "image_name": "synpic1.jpg",
                "image_organ": "HEAD",
                "answer": "Yes",
                "answer_type": "CLOSED",
                "question_type": "PRES",
                "question": "Is there a mass?",
                "phrase_type": "freeform",
            },
            {
                "qid": 2,
                "image_name": "missing.jpg",
                "image_organ": "HEAD",
                "answer": "left",
                "answer_type": "OPEN",
                "question_type": "POS",
                "question": "Where?",
                "phrase_type": "freeform",
            },
        ],
    )
    records, rejects = run(datasets.read_vqa_rad, tmp_path, media)
    assert records[0]["question_type"] == "closed" and records[0]["license"] == "cc0"
    assert len(rejects) == 1 and "cannot read" in rejects[0]["reason"]


def test_slake_english_only(tmp_path, media):
    (tmp_path / "imgs" / "xmlab1").mkdir(parents=True)
    (tmp_path / "imgs" / "xmlab1" / "source.jpg").write_bytes(png(4, fmt="JPEG"))
    row = {
        "img_id": 1,
        "img_name": "xmlab1/source.jpg",
        "question": "Which organ?",
        "answer": "Lung",
        "q_lang": "en",
        "location": "Chest",
        "modality": "CT",
        "answer_type": "OPEN",
        "qid": 7,
    }
    write_json(tmp_path / "train.json", [row, {**row, "q_lang": "zh", "question": "哪个器官?", "qid": 8}])
    records, rejects = run(datasets.read_slake, tmp_path, media)
    assert [r["id"] for r in records] == ["slake-train-7"]
    assert rejects[0]["reason"].startswith("language zh")


def test_pathvqa_parquet(tmp_path, media):
    table = pa.table(
        {"image": [{"bytes": png(5), "path": None}], "question": ["Is this benign?"], "answer": ["no"]}
    )
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")
    records, _ = run(datasets.read_pathvqa, tmp_path, media)
    assert records[0]["question_type"] == "closed" and records[0]["images"][0]["width"] == 24


def test_pmc_vqa_csv(tmp_path, media):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "PMC1_F1.jpg").write_bytes(png(6, fmt="JPEG"))
    write_csv(
        tmp_path / "test.csv",
        ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"],
        [["PMC1_F1.jpg", "What modality?", "CT", "A:MRI", "B:CT", "C:US", "D:PET", "B"]],
    )
    records, _ = run(datasets.read_pmc_vqa, tmp_path, media)
    assert records[0]["options"] == ["MRI", "CT", "US", "PET"] and records[0]["answer"] == "B"
    assert records[0]["question_type"] == "multiple_choice"


@pytest.mark.parametrize(
    "reader,name",
    [
        (datasets.read_pubmedvision, "PubMedVision_Alignment_VQA.json"),
        (datasets.read_llava_med, "llava_med_instruct_60k_inline_mention.json"),
    ],
)
def test_chat_sets(tmp_path, media, reader, name):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "i.png").write_bytes(png(7))
    write_json(
        tmp_path / name,
        [
            {
                "id": "a1",
                "image": ["i.png"] if "Pub" in name else "i.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat?"},
                    {"from": "gpt", "value": "A lung."},
                ],
                "modality": "CT",
            }
        ],
    )
    records, _ = run(reader, tmp_path, media)
    assert records[0]["kind"] == "chat" and records[0]["conversation"][1] == {
        "role": "assistant",
        "text": "A lung.",
    }
    assert len(records[0]["images"]) == 1


def test_rocov2(tmp_path, media):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "ROCOv2_2023_train_000001.jpg").write_bytes(png(8, fmt="JPEG"))
    write_csv(
        tmp_path / "train_captions.csv",
        ["ID", "Caption"],
        [["ROCOv2_2023_train_000001", "Head CT demonstrating a bleed."]],
    )
    records, _ = run(datasets.read_rocov2, tmp_path, media)
    assert records[0]["kind"] == "figure" and records[0]["caption"].startswith("Head CT")


def test_mimic_cxr_is_credentialed(tmp_path, media):
    study = tmp_path / "files" / "p10" / "p10000032"
    (study / "s50414267").mkdir(parents=True)
    (study / "s50414267.txt").write_text("FINDINGS: No acute process.\n")
    (study / "s50414267" / "02aa804e.jpg").write_bytes(png(9, fmt="JPEG"))
    records, _ = run(datasets.read_mimic_cxr, tmp_path, media)
    assert records[0]["credential"] is True and records[0]["kind"] == "report"
    assert records[0]["report"].startswith("FINDINGS") and len(records[0]["images"]) == 1


def test_list_and_dataset_command(medmax, tmp_path):
    listing = medmax("fetch", "--list").stdout.decode()
    for name in ("pmc", "vqa-rad", "slake", "mimic-cxr", "medmax-eval"):
        assert name in listing
    assert "PhysioNet" in listing
    (tmp_path / "VQA_RAD Image Folder").mkdir()
    (tmp_path / "VQA_RAD Image Folder" / "a.jpg").write_bytes(png(1, fmt="JPEG"))
    write_json(
        tmp_path / "VQA_RAD Dataset Public.json",
        [{"qid": 1, "image_name": "a.jpg", "answer": "no", "answer_type": "CLOSED", "question": "Mass?"}],
    )
    out = medmax("fetch", "vqa-rad", str(tmp_path), "-q", env={"MEDMAX_MEDIA": str(tmp_path / "m")}).stdout
    assert orjson.loads(out)["answer"] == "no"
