"""Schema v1: what is valid, and that errors name the field, the record and the place."""

from __future__ import annotations

import pytest

from medmax_cli.records import RecordError, content_id, make_id, record_kind, text_of, validate

SHA = "a" * 64


def figure(**extra):
    return {
        "id": "PMC1_1-F1",
        "kind": "figure",
        "source": "pmc",
        "license": "cc-by",
        "credential": False,
        "caption": "CT of the chest.",
        "images": [{"sha256": SHA, "path": "aa/x.png", "width": 4, "height": 3}],
        **extra,
    }


def instance(**extra):
    return {
        "id": "i1",
        "task": "vqa",
        "images": [{"sha256": SHA, "path": "aa/x.png"}],
        "turns": [
            {"role": "user", "content": [{"image": 0}, {"text": "Is there a lesion?"}]},
            {"role": "assistant", "content": [{"text": "yes"}]},
        ],
        **extra,
    }


def test_valid_records_pass_unchanged_with_unknown_fields():
    for record in (
        figure(extra_field={"x": 1}),
        instance(),
        {"id": "q", "kind": "qa", "question": "?", "answer": "no"},
        {"id": "r", "kind": "report", "report": "No acute findings.", "credential": True},
        instance(prediction=[{"text": "yes"}]),
    ):
        assert validate(record) is record
    assert record_kind(instance(prediction=[{"text": "a"}])) == "prediction"
    assert record_kind(instance()) == "instance"
    assert record_kind(figure()) == "figure"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"kind": "qa"}, "field 'id' is missing"),
        ({"id": "PMC1.1", "kind": "qa", "question": "?", "answer": "a"}, "no dots"),
        ({"id": "x", "kind": "poem"}, "field 'kind' must be one of"),
        ({"id": "x", "kind": "qa", "question": "?"}, "needs a string 'answer'"),
        (figure(images=[{"sha256": "nothex"}]), "images[0].sha256"),
        (figure(images=[{"path": "a.png", "width": 0}]), "images[0].width"),
        (figure(images=[{"path": "a.png", "tokens": [1, 2]}]), "no 'vq'"),
        (figure(credential="no"), "'credential' must be true or false"),
        (instance(task="painting"), "field 'task' must be one of"),
        (instance(turns=[]), "'turns' must be a non-empty list"),
        (instance(turns=[{"role": "bot", "content": []}]), "turns[0].role"),
        (instance(turns=[{"role": "user", "content": [{"image": 3}]}]), "turns[0].content[0].image = 3"),
        (
            instance(turns=[{"role": "user", "content": [{"text": "a", "image": 0}]}]),
            "turns[0].content[0] must be",
        ),
        (instance(prediction=[{"image": 5}]), "prediction[0].image"),
        (figure(schema=2), "schema version 2"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_schema_errors_name_the_field(record, message):
    with pytest.raises(RecordError) as info:
        validate(record)
    assert message in str(info.value)


def test_error_names_record_and_place():
    error = RecordError("bad caption", record_id="r1", where="in.jsonl:7")
    assert str(error) == "in.jsonl:7: record 'r1': bad caption"


def test_ids_are_webdataset_keys():
    assert make_id("PMC123.1", "F 2") == "PMC123_1-F_2"
    assert "." not in make_id("a.b.c")
    assert content_id("vqa", "q") == content_id("vqa", "q")
    assert content_id("vqa", "q") != content_id("vqa", "r")
    validate({"id": make_id("PMC9.2", "fig/1"), "kind": "qa", "question": "?", "answer": "a"})


def test_text_of_skips_images():
    assert text_of([{"text": "a"}, {"image": 0}, {"text": "b"}]) == "ab"
