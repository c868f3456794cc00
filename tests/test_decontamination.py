"""`synthesize --exclude --exclude-by image|question|both`: what each drops, the contamination
table on stderr and under "contamination" in --stats. The planted sets follow VQA-RAD's shape:
test questions asked of train images, and generic questions asked of other images."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from medmax_cli.streams import parse_jsonl


def png(seed: int, size: tuple[int, int] = (64, 64), fmt: str = "PNG") -> bytes:
    """Random noise blocks: pictures whose perceptual hashes lie far apart for different seeds."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize(size, Image.NEAREST).save(buffer, format=fmt)
    return buffer.getvalue()


def qa(media, rid: str, question: str, answer: str, seed: int, split: str) -> dict:
    return {
        "id": rid,
        "kind": "qa",
        "source": "vqa-rad",
        "license": "cc0",
        "credential": False,
        "question": question,
        "answer": answer,
        "question_type": "closed" if answer in ("yes", "no") else "open",
        "images": [media.put(png(seed, size=(64, 64)))],
        "meta": {"split": split},
    }


def write(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


@pytest.fixture
def sets(tmp_path, media):
    train = [
        qa(media, "t-shared-image", "Is there a fracture?", "no", 1, "train"),  # image also in test
        qa(media, "t-generic", "Is this an MRI?", "yes", 2, "train"),  # a test question, other image
        qa(media, "t-clean", "Where is the mass?", "Liver", 3, "train"),
    ]
    test = [
        qa(media, "e-1", "Is the lesion enhancing?", "yes", 1, "test"),  # the shared image
        qa(media, "e-2", "is this an mri", "no", 9, "test"),
    ]
    return write(tmp_path / "train.jsonl", train), write(tmp_path / "test.jsonl", test)


@pytest.mark.parametrize(
    "by, kept, table",
    [
        ("image", ["t-generic", "t-clean"], [("vqa-rad", "exact_image", 1)]),
        ("question", ["t-shared-image", "t-clean"], [("vqa-rad", "same_question", 1)]),
        ("both", ["t-clean"], [("vqa-rad", "exact_image", 1), ("vqa-rad", "same_question", 1)]),
    ],
)
def test_exclude_by_choices(sets, tmp_path, media, medmax, by, kept, table):
    train, test = sets
    stats = tmp_path / "stats.json"
    env = {"MEDMAX_MEDIA": str(media.root)}
    args = ["synthesize", str(train), "--tasks", "vqa", "--exclude", str(test), "--exclude-by", by]
    run = medmax(*args, "--stats", str(stats), env=env)
    out = [line["source_id"] if "source_id" in line else line["id"] for line in parse_jsonl(run.stdout)]  # fmt: skip
    assert [o.removesuffix("-vqa") for o in out] == kept
    data = orjson.loads(stats.read_bytes())
    assert [(r["eval_source"], r["match"], r["count"]) for r in data["contamination"]] == table
    err = run.stderr.decode()
    assert f"contamination (--exclude-by {by}; 2 eval items)" in err
    for source, match, count in table:
        assert any(line.split() == [source, match, str(count)] for line in err.splitlines())


def test_default_is_image_and_near_duplicates_count(sets, tmp_path, media, medmax):
    train, test = sets
    near = dict(orjson.loads(test.read_bytes().splitlines()[0]), id="e-near")
    near["images"] = [media.put(png(2, size=(80, 80), fmt="JPEG"))]  # a rescaled copy of t-generic's image
    write(test, [near])
    stats = tmp_path / "stats.json"
    run = medmax("synthesize", str(train), "--tasks", "vqa", "--exclude", str(test), "--stats", str(stats),
                 env={"MEDMAX_MEDIA": str(media.root)})  # fmt: skip
    data = orjson.loads(stats.read_bytes())
    assert data["contamination"] == [{"eval_source": "vqa-rad", "match": "near_duplicate_image", "count": 1}]
    assert "--exclude-by image" in run.stderr.decode()


def test_bad_exclude_by_is_refused(sets, medmax, media):
    train, test = sets
    bad = medmax("synthesize", str(train), "--exclude", str(test), "--exclude-by", "caption",
                 env={"MEDMAX_MEDIA": str(media.root)}, check=False)  # fmt: skip
    assert bad.returncode == 2 and b"--exclude-by" in bad.stderr
