"""Readers on small files written at test time in the formats the dataset authors published
(docs/fetch.md "Published formats the readers are tested on" cites each): VQA-RAD's MEVF data_RAD
layout, split names, verbatim text, JATS licence statements, Git LFS pointers, LLaVA-Med's eval
JSONL, and MedMax text rows tokenized as MedMax's src/tokenization.py does."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from fakes.jats_articles import png
from medmax_cli.fetch import datasets
from medmax_cli.fetch.jats import parse_jats
from medmax_cli.fetch.local import fetch_jats
from medmax_cli.fetch.medmax import read_medmax
from medmax_cli.records import RecordError, validate
from medmax_cli.streams import ErrorPolicy, parse_jsonl
from medmax_cli.synthesize import synthesize


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data))
    return path


def image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(seed, fmt="JPEG"))


def run(reader, path: Path, media, **kw):
    policy = ErrorPolicy("skip", io.BytesIO(), stage="fetch")
    records = list(reader(path, media=media, policy=policy, **kw))
    for record in records:
        validate(record)
    report = policy.report
    entries = [orjson.loads(line) for line in policy.rejects.getvalue().splitlines()]
    assert report.counts["in"] == len(records) + sum(report.dropped.values()) + sum(report.skipped.values())
    return records, entries, report


def mevf_row(qid: int, image_name: str, question: str, answer, phrase: str = "freeform", atype="CLOSED"):
    """A row of MEVF's data_RAD/{trainset,testset}.json (aioz-ai/MICCAI19-MedVQA): 8 keys."""
    return {
        "qid": qid,
        "image_name": image_name,
        "image_organ": "CHEST",
        "answer": answer,
        "answer_type": atype,
        "question_type": "PRES",
        "question": question,
        "phrase_type": phrase,
    }


def mevf_layout(root: Path) -> Path:
    data = root / "data_RAD"
    image(data / "images" / "synpic1.jpg", 1)
    image(data / "images" / "synpic2.jpg", 2)
    write_json(
        data / "trainset.json",
        [
            mevf_row(
                33, "synpic1.jpg", "Are there >12 of ribs? ", "Yes", "frame"
            ),  # trailing space, as published
            mevf_row(34, "synpic1.jpg", "Is the abnormality focal or diffuse?", "Diffuse"),
        ],
    )
    # MEVF's testset.json labels its rows freeform/para: the split is the file's, not phrase_type's.
    write_json(
        data / "testset.json",
        [mevf_row(11, "synpic2.jpg", "How many lesions?", 4, "para", "OPEN")],
    )
    return root


def test_vqa_rad_mevf_layout_split_from_file(tmp_path, media):
    records, entries, _ = run(datasets.read_vqa_rad, mevf_layout(tmp_path), media)
    assert entries == []
    assert [(r["id"], r["meta"]["split"], r["meta"]["source_split"]) for r in records] == [
        ("vqa_rad-33", "train", "trainset"),
        ("vqa_rad-34", "train", "trainset"),
        ("vqa_rad-11", "test", "testset"),
    ]
    # verbatim text: the trailing space stays, a JSON number answer becomes its JSON text
    assert records[0]["question"] == "Are there >12 of ribs? " and records[0]["answer"] == "Yes"
    assert records[2]["answer"] == "4"


def test_split_train_never_keeps_mevf_test_items(tmp_path, medmax):
    env = {"MEDMAX_MEDIA": str(tmp_path / "m")}
    out = medmax("fetch", "vqa-rad", str(mevf_layout(tmp_path)), "--split", "train", env=env)
    ids = [line["id"] for line in parse_jsonl(out.stdout)]
    assert ids == ["vqa_rad-33", "vqa_rad-34"]
    assert "skipped 1 (split not selected: 1)" in out.stderr.decode()
    # aliases map onto the one vocabulary; an unknown name is refused
    bad = medmax("fetch", "vqa-rad", str(tmp_path), "--split", "holdout", env=env, check=False)
    assert bad.returncode == 2 and b"is not a split" in bad.stderr


def test_unknown_split_file_is_refused_with_guidance(tmp_path, media, medmax):
    image(tmp_path / "images" / "synpic1.jpg", 1)
    file = write_json(tmp_path / "rad.json", [mevf_row(1, "synpic1.jpg", "Mass?", "no")])
    with pytest.raises(RecordError, match="--split test"):
        list(datasets.read_vqa_rad(file, media=media, policy=ErrorPolicy("fail")))
    env = {"MEDMAX_MEDIA": str(tmp_path / "m")}
    refused = medmax("fetch", "vqa-rad", str(file), env=env, check=False)
    assert (
        refused.returncode == 1
        and b"cannot tell whether it holds train, validation or test" in refused.stderr
    )
    named = medmax("fetch", "vqa-rad", str(file), "--split", "test", env=env)
    assert parse_jsonl(named.stdout)[0]["meta"]["split"] == "test"


def test_one_split_vocabulary_rocov2_valid_is_validation(tmp_path, medmax):
    # ROCOv2 Zenodo release: {split}_captions.csv (ID,Caption) with images {split}/{ID}.jpg
    (tmp_path / "valid_captions.csv").write_text(
        'ID,Caption\nROCOv2_2023_valid_000001," Chest X-ray showing a nodule. "\n', encoding="utf-8"
    )
    image(tmp_path / "valid" / "ROCOv2_2023_valid_000001.jpg", 3)
    env = {"MEDMAX_MEDIA": str(tmp_path / "m")}
    out = medmax("fetch", "rocov2", str(tmp_path), "--split", "validation", env=env).stdout
    (record,) = parse_jsonl(out)
    assert record["meta"]["split"] == "validation" and record["meta"]["source_split"] == "valid"
    assert record["caption"] == " Chest X-ray showing a nodule. "  # outer whitespace kept


def test_closed_non_yes_no_answers_become_vqa_instances(tmp_path, media):
    records, _, _ = run(datasets.read_vqa_rad, mevf_layout(tmp_path), media)
    policy = ErrorPolicy("skip", io.BytesIO())
    out = list(synthesize(records, policy=policy, tasks=["vqa"], media=media, near_dup_bits=None))
    assert len(out) == 3 and not policy.report.dropped
    diffuse = next(o for o in out if o["answer"] == "Diffuse")
    assert diffuse["question_type"] == "closed" and diffuse["turns"][1]["content"] == [{"text": "Diffuse"}]
    ribs = next(o for o in out if o["answer"] == "Yes")
    assert ribs["turns"][0]["content"][1]["text"].startswith("Are there >12 of ribs? ")


JATS_HEAD = '<?xml version="1.0"?><article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>'
FIG = '</article-meta></front><body><fig id="F1"><caption><p>A figure.</p></caption><graphic xlink:href="f1"/></fig></body></article>'
PLOS_2010 = (
    "<permissions><copyright-statement>Teramoto et al. This is an open-access article distributed under "
    "the terms of the Creative Commons Attribution License, which permits unrestricted use, distribution, "
    "and reproduction in any medium, provided the original author and source are credited."
    "</copyright-statement></permissions>"
)
PLOS_2007 = PLOS_2010.removeprefix("<permissions>").removesuffix("</permissions>")  # no <permissions>
LICENSE_P = (
    "<permissions><copyright-year>2013</copyright-year><license><license-p>This is an open-access article "
    "distributed under the terms of the Creative Commons Attribution License, which permits unrestricted "
    "use.</license-p></license></permissions>"
)
PUBLIC_DOMAIN = (
    '<permissions><license xlink:href="http://creativecommons.org/publicdomain/mark/1.0/" '
    'license-type="public-domain"><license-p>Publication of EHP lies in the public domain.</license-p>'
    "</license></permissions>"
)
NONE = (
    "<permissions><copyright-statement>Copyright 2010 Cancer Research UK</copyright-statement></permissions>"
)


@pytest.mark.parametrize(
    "permissions, licence, source",
    [
        (PLOS_2010, "cc-by", "copyright-statement"),
        (PLOS_2007, "cc-by", "copyright-statement"),
        (LICENSE_P, "cc-by", "license-p"),
        (PUBLIC_DOMAIN, "public-domain", "license/@xlink:href"),
        (NONE, "other", None),
    ],
)
def test_jats_licence_chain(permissions, licence, source):
    article = parse_jats((JATS_HEAD + permissions + FIG).encode(), name="a.nxml")
    assert (article.license, article.license_source) == (licence, source)


def test_jats_licence_source_in_meta_and_oa_file_list(tmp_path, media):
    (tmp_path / "a.nxml").write_text(
        JATS_HEAD + '<article-id pub-id-type="pmc">123</article-id>' + NONE + FIG, encoding="utf-8"
    )
    (tmp_path / "f1.jpg").write_bytes(png(4, fmt="JPEG"))
    policy = ErrorPolicy("skip", io.BytesIO())
    (plain,) = list(fetch_jats([tmp_path], media=media, policy=policy))
    assert plain["license"] == "other" and plain["meta"]["license_source"] is None
    # PMC's OA file list (File, Article Citation, Accession ID, Last Updated, PMID, License)
    (tmp_path / "oa_file_list.csv").write_text(
        "File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License\n"
        "oa_package/00/00/PMC123.tar.gz,J. 2010;1:1,PMC123,2019-11-05 11:56:12,1,CC BY-NC\n",
        encoding="utf-8",
    )
    (listed,) = list(fetch_jats([tmp_path], media=media, policy=policy))
    assert listed["license"] == "cc-by-nc" and listed["meta"]["license_source"] == "oa_file_list.csv License"


LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:48c6b680a962dbf8caf63e3ded2bef7770dccf9c2602f32e5f05f4b907266f25\nsize 262328\n"
)


def test_git_lfs_pointer_says_what_to_run(tmp_path, media, medmax):
    data = tmp_path / "data"
    (data / "alignment").mkdir(parents=True)
    (data / "alignment" / "llava_med_alignment_500k.json").write_bytes(LFS_POINTER)
    (data / "eval").mkdir()
    (data / "eval" / "llava_med_eval_qa50_qa.jsonl").write_bytes(LFS_POINTER)
    records, entries, report = run(datasets.read_llava_med, tmp_path, media)
    assert records == [] and report.dropped == {"git lfs pointer": 2}
    assert all("git lfs pull" in e["reason"] and "not the data" in e["reason"] for e in entries)
    failed = medmax(
        "fetch", "llava-med", str(tmp_path), env={"MEDMAX_MEDIA": str(tmp_path / "m")}, check=False
    )
    assert (
        failed.returncode == 1 and b"git lfs pull" in failed.stderr and b"not valid JSON" not in failed.stderr
    )


def test_llava_med_eval_jsonl_is_test_and_verbatim(tmp_path, media):
    row = {
        "question_id": 0, "image": "18063892_F3.jpg", "pair_id": "18063892_F3",
        "text": "What is the organ in the image?\n<image>", "gpt4_answer": "The conjunctiva.",
        "fig_caption": "H & E stain, \u00d7100", "in_text_mention": [], "domain": {"histology": True},
        "type": "conversation", "fig_label": "Fig. 3",
    }  # fmt: skip
    data = tmp_path / "data"
    (data / "eval").mkdir(parents=True)
    (data / "eval" / "llava_med_eval_qa50_qa.jsonl").write_bytes(orjson.dumps(row) + b"\n")
    image(data / "images" / "18063892_F3.jpg", 5)
    (record,), _, _ = run(datasets.read_llava_med, tmp_path, media)
    assert record["meta"]["split"] == "test" and record["kind"] == "chat"
    assert record["conversation"][0]["text"] == "What is the organ in the image?\n<image>"


def medmax_tokens(tok, vocab, text: str) -> list[int]:
    """MedMax's src/tokenization.py for a text-only row: [bos] + tokenizer.encode(text).ids + [eos]."""
    return [vocab.bos, *tok.tokenizer.encode(text, add_special_tokens=False).ids, vocab.eos]


@pytest.mark.parametrize(
    "text",
    [
        "What is shown?<reserved08706>A lung.",
        "What is shown?<reserved08706>A lung.<reserved08706>",  # a closing separator
        "  What is shown?\n<reserved08706> <reserved08706>A lung. ",  # whitespace-only turn, outer spaces
        "<reserved08706>A lung.",  # an empty prompt
    ],
)
def test_released_medmax_text_rows_tokenize_as_medmax(tmp_path, media, tiny_model_dir, text):
    from medmax_cli.pack.sequence import build_sequence
    from medmax_cli.text.tokenizer import load_text_tokenizer
    from medmax_cli.text.vocab import ChameleonVocab

    tok = load_text_tokenizer(tiny_model_dir)
    vocab = ChameleonVocab.from_model_dir(tiny_model_dir)
    row = {"text": text, "image_path": [], "task": "vqa", "source": "vqa_rad", "credential": "no"}
    (tmp_path / "train.jsonl").write_bytes(orjson.dumps(row) + b"\n")
    (record,), _, _ = run(read_medmax, tmp_path, media)
    sample = build_sequence(record, vocab=vocab, tokenizer=tok, train_on="medmax")
    assert sample.input_ids.tolist() == medmax_tokens(tok, vocab, text)


def test_eval_prompt_token_ids_are_the_released_bytes(tmp_path, media, tiny_model_dir):
    """Issue 23 item 3: a MedMax eval prompt with outer whitespace and newlines goes fetch ->
    synthesize -> generate byte for byte: generate's prompt ids are BOS, the image block, the
    tokenizer's ids of the raw prompt and SEP, never those of a stripped prompt."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medmax_cli.fetch.medmax import read_medmax_eval
    from medmax_cli.generate.prompt import prompt_ids
    from medmax_cli.text.tokenizer import load_text_tokenizer
    from medmax_cli.text.vocab import ChameleonVocab

    prompt = "\n  Is there a pleural effusion?\nAnswer with yes or no. \n\n"
    row = {"task_name": "vqa_rad", "question_type": "closed", "prompt": prompt, "answer": "yes",
           "image_path": "images/a.png"}  # fmt: skip
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png(7))
    pq.write_table(pa.table({k: [v] for k, v in row.items()}), tmp_path / "test-00000-of-00001.parquet")
    (record,), _, _ = run(read_medmax_eval, tmp_path, media)
    assert record["question"] == prompt
    (instance,) = list(synthesize([record], tasks=["vqa"], media=media, near_dup_bits=None))
    assert instance["turns"][0]["content"][1] == {"text": prompt}
    tok = load_text_tokenizer(tiny_model_dir)
    vocab = ChameleonVocab.from_model_dir(tiny_model_dir)
    codes = [3, 1, 4]
    instance["images"][0] = {**instance["images"][0], "tokens": codes, "vq": "tiny-vq"}
    ids = prompt_ids(instance, vocab=vocab, tokenizer=tok)
    raw = tok.tokenizer.encode(prompt, add_special_tokens=False).ids
    stripped = tok.tokenizer.encode(prompt.strip(), add_special_tokens=False).ids
    assert raw != stripped  # the whitespace is in the token ids, so a strip would change them
    block = [vocab.boi, *vocab.codes_to_ids(codes).tolist(), vocab.eoi]
    assert ids == [vocab.bos, *block, *raw, vocab.sep]


def test_rocov2_caption_reaches_captioning_verbatim(tmp_path, media):
    caption = " CT chest axial view showing a huge ascending aortic aneurysm (*). "  # as in test_captions.csv
    (tmp_path / "test_captions.csv").write_text(f'ID,Caption\nROCOv2_2023_test_000001,"{caption}"\n')
    image(tmp_path / "test" / "ROCOv2_2023_test_000001.jpg", 6)
    (record,), _, _ = run(datasets.read_rocov2, tmp_path, media)
    out = list(
        synthesize([record], tasks=["captioning", "image_generation"], media=media, near_dup_bits=None)
    )
    assert [o["turns"][-1]["content"] for o in out if o["task"] == "captioning"] == [[{"text": caption}]]
    generation = next(o for o in out if o["task"] == "image_generation")
    assert caption in generation["turns"][0]["content"][0]["text"]


@pytest.mark.parametrize("command", [["jsonl", "{f}", "--root", "{d}"], ["medmax", "{d}"]])
def test_lfs_pointer_jsonl_names_git_lfs_pull(tmp_path, medmax, command):
    (tmp_path / "train.jsonl").write_bytes(LFS_POINTER)  # MedMax's train.jsonl on HF is LFS-tracked
    args = [a.format(f=tmp_path / "train.jsonl", d=tmp_path) for a in command]
    run = medmax("fetch", *args, env={"MEDMAX_MEDIA": str(tmp_path / "m")}, check=False)
    assert run.returncode == 1 and b"git lfs pull" in run.stderr and b"train.jsonl" in run.stderr


def test_chat_records_become_visual_chat_instances(tmp_path, media):
    """LLaVA-Med's eval rows (several questions per figure) and conversation rows become visual_chat
    instances, every question kept, `<image>` as the image part, text verbatim."""
    rows = [
        {"question_id": i, "image": "f.jpg", "pair_id": "f", "text": f"Question {i}?\n<image>",
         "gpt4_answer": f" Answer {i}.", "type": "conversation"}
        for i in range(3)
    ]  # fmt: skip
    (tmp_path / "llava_med_eval_qa50_qa.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    image(tmp_path / "images" / "f.jpg", 8)
    records, _, _ = run(datasets.read_llava_med, tmp_path / "llava_med_eval_qa50_qa.jsonl", media)
    out = list(synthesize(records, tasks=["visual_chat"], media=media))
    assert len(out) == 3
    assert out[0]["turns"] == [
        {"role": "user", "content": [{"text": "Question 0?\n"}, {"image": 0}]},
        {"role": "assistant", "content": [{"text": " Answer 0."}]},
    ]


def test_gzip_compressed_release_files_are_read(tmp_path, media):
    """Files kept gzip-compressed (`testset.json.gz`, `article.nxml.gz`, `..._qa.jsonl.gz`) read as
    the originals: the split still comes from the name."""
    import gzip

    root = mevf_layout(tmp_path / "rad")
    for name in ("trainset.json", "testset.json"):
        file = root / "data_RAD" / name
        file.with_name(name + ".gz").write_bytes(gzip.compress(file.read_bytes()))
        file.unlink()
    records, _, _ = run(datasets.read_vqa_rad, root, media)
    assert [r["meta"]["split"] for r in records] == ["train", "train", "test"]
    jats = tmp_path / "jats"
    jats.mkdir()
    (jats / "a.nxml.gz").write_bytes(gzip.compress((JATS_HEAD + PLOS_2010 + FIG).encode()))
    (jats / "f1.jpg").write_bytes(png(4, fmt="JPEG"))
    (figure,) = list(fetch_jats([jats], media=media, policy=ErrorPolicy("fail")))
    assert figure["license"] == "cc-by"
