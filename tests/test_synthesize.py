"""synthesize: builders (exact turns), filters, decontamination, mixing, determinism, the real command."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest
from PIL import Image

from medmax_cli.records import TASKS, validate
from medmax_cli.streams import ErrorPolicy, parse_jsonl
from medmax_cli.synthesize import build_record, load_exclude, synthesize
from medmax_cli.synthesize.common import BuildContext, Drop
from medmax_cli.synthesize.domain import classify_text, domain_of
from medmax_cli.synthesize.imagehash import ImageHasher, NearDupIndex, hamming, phash
from medmax_cli.synthesize.interleaved import split_point
from medmax_cli.synthesize.mixing import mix, parse_ratio

CAPTION = "Axial CT of the abdomen. A hypodense lesion in the right liver lobe is marked by an arrow."
PARA = "We scanned the phantom. A hypodense lesion is visible in the liver (Figure 1A). It measured 2 cm. Follow-up was normal."
SENTENCE = "A hypodense lesion is visible in the liver (Figure 1A)."


def png(seed: int, size: int = 64, fmt: str = "PNG") -> bytes:
    """A smooth random greyscale image: different seeds give unrelated pHashes."""
    rng = np.random.default_rng(seed)
    small = (rng.random((8, 8)) * 255).astype(np.uint8)
    image = Image.fromarray(small, "L").resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=85) if fmt == "JPEG" else image.save(buffer, fmt)
    return buffer.getvalue()


def mention(
    paragraph: str = PARA, anchor: str = "Figure 1A", sentence: str = SENTENCE, section: str = "Results"
):
    start = paragraph.index(anchor)
    return {
        "section": section,
        "paragraph": paragraph,
        "sentence": sentence,
        "anchor": anchor,
        "start": start,
        "end": start + len(anchor),
    }


def figure(media, rid: str = "PMC1_1-F1", seed: int = 1, caption: str = CAPTION, mentions=None, **extra):
    record = {
        "id": rid,
        "kind": "figure",
        "source": "jats",
        "license": "cc-by",
        "credential": False,
        "images": [media.put(png(seed))],
        "caption": caption,
        "label": "Figure 1",
        "figure_id": "F1",
        "mentions": [mention()] if mentions is None else mentions,
        "article": {
            "pmcid": "PMC1",
            "version": 1,
            "doi": "10.1/x",
            "title": "A phantom study",
            "journal": "J",
            "year": 2024,
            "license": "cc-by",
            "retracted": False,
        },
        "meta": {},
    }
    record.update(extra)
    return validate(record)


def qa(media, rid: str, question: str, answer: str, seed: int = 2, **extra):
    record = {
        "id": rid,
        "kind": "qa",
        "source": "vqa-rad",
        "license": "cc0",
        "credential": False,
        "question": question,
        "answer": answer,
        "images": [media.put(png(seed))],
        "meta": {},
    }
    record.update(extra)
    return validate(record)


def instances_of(record, tasks=TASKS, seed=0):
    return [
        o
        for o in build_record(record, tasks=tasks, ctx=BuildContext(seed=seed), client=None)
        if not isinstance(o, Drop)
    ]


# --------------------------------------------------------------------------- builders (exact turns)


def test_captioning_exact_turns(media):
    (inst,) = instances_of(figure(media), tasks=["captioning"])
    assert inst["id"] == "PMC1_1-F1-captioning" and inst["task"] == "captioning"
    assert inst["turns"] == [
        {
            "role": "user",
            "content": [{"image": 0}, {"text": "Provide a descriptive caption for the figure."}],
        },
        {"role": "assistant", "content": [{"text": CAPTION}]},
    ]
    assert inst["domain"] == "radiology" and inst["license"] == "cc-by" and inst["credential"] is False
    assert inst["meta"]["source_id"] == "PMC1_1-F1" and inst["meta"]["article"]["pmcid"] == "PMC1"
    validate(inst)


def test_image_generation_exact_turns(media):
    (inst,) = instances_of(figure(media), tasks=["image_generation"])
    assert inst["id"] == "PMC1_1-F1-image_generation"
    assert inst["turns"] == [
        {"role": "user", "content": [{"text": f"Generate the image this caption describes. {CAPTION}"}]},
        {"role": "assistant", "content": [{"image": 0}]},
    ]


def test_interleaved_places_the_image_after_the_citing_sentence(media):
    (inst,) = instances_of(figure(media), tasks=["interleaved"])
    assert inst["id"] == "PMC1_1-F1-interleaved-p0"
    assert inst["turns"] == [
        {
            "role": "user",
            "content": [
                {
                    "text": 'Write the paragraph of the results section of the article "A phantom '
                    'study" that discusses Figure 1, and show the figure where the text '
                    f"refers to it.\nFigure caption: {CAPTION}"
                }
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"text": "We scanned the phantom. A hypodense lesion is visible in the liver (Figure 1A)."},
                {"image": 0},
                {"text": "It measured 2 cm. Follow-up was normal."},
            ],
        },
    ]
    validate(inst)


def test_interleaved_split_rules(media):
    # No sentence given: split at the next sentence end after the anchor ("Fig. 2" is no end).
    para = "Controls were normal. The lesion grew (Fig. 2). Fig. 3 shows the rest."
    assert (
        para[: split_point(para, mention(para, "Fig. 2", ""))]
        == "Controls were normal. The lesion grew (Fig. 2)."
    )
    # Wrong offsets: the anchor is found by text.
    bad = dict(mention(para, "Fig. 2", ""), start=0, end=3)
    assert para[: split_point(para, bad)].endswith("(Fig. 2).")
    # An anchor that is not in the paragraph -> dropped with a reason, nothing made.
    lost = dict(mention(para, "Fig. 2", ""), anchor="Figure 9", start=0, end=0)
    outputs = build_record(
        figure(media, mentions=[lost]), tasks=["interleaved"], ctx=BuildContext(), client=None
    )
    assert [o.reason.split(":")[0] for o in outputs] == ["interleaved"]
    # The anchor sentence closes the paragraph: the image comes last, no empty text part.
    last = "Results were clear. See Figure 1A."
    (inst,) = instances_of(
        figure(media, mentions=[mention(last, "Figure 1A", "See Figure 1A.")]), ["interleaved"]
    )
    assert inst["turns"][1]["content"] == [{"text": last}, {"image": 0}]
    # Two anchors in one paragraph plus another paragraph: one instance per paragraph.
    other = "In the discussion, Figure 1A is compared with the literature. More text."
    two = [
        mention(),
        mention(PARA, "Figure 1A", SENTENCE),
        mention(other, "Figure 1A", other.split(". ")[0] + "."),
    ]
    insts = instances_of(figure(media, mentions=two), ["interleaved"])
    assert [i["id"] for i in insts] == ["PMC1_1-F1-interleaved-p0", "PMC1_1-F1-interleaved-p1"]
    assert insts[1]["turns"][1]["content"][1] == {"image": 0}


def test_vqa_formats_exact(media):
    closed = qa(media, "q1", "Is there a lesion?", "Yes", question_type="closed")
    (inst,) = instances_of(closed)
    assert inst["turns"] == [
        {"role": "user", "content": [{"image": 0}, {"text": "Is there a lesion? Please answer yes or no."}]},
        {"role": "assistant", "content": [{"text": "Yes"}]},  # the answer as published
    ]
    assert (inst["answer"], inst["question_type"], inst["id"]) == ("Yes", "closed", "q1-vqa")

    mc = qa(
        media,
        "q2",
        "Which sequence is shown?",
        "T2-weighted",
        options=["T1-weighted", "T2-weighted", "FLAIR"],
        question_type="multiple_choice",
        meta={"eval_task": "pmc_vqa"},
    )
    (inst,) = instances_of(mc, seed=5)
    assert inst["turns"][0]["content"][1]["text"] == (
        "Which sequence is shown?\nA. T1-weighted\nB. T2-weighted\nC. FLAIR\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert inst["turns"][1]["content"] == [{"text": "B"}]
    assert inst["answer"] == "B" and inst["options"] == ["T1-weighted", "T2-weighted", "FLAIR"]
    assert inst["meta"]["eval_task"] == "pmc_vqa" and inst["meta"]["template"] == 0  # eval: always template 0

    (inst,) = instances_of(qa(media, "q3", "Which organ is shown?", "the liver"))
    assert inst["question_type"] == "open" and inst["turns"][1]["content"] == [{"text": "the liver"}]

    # A closed question whose gold is not yes/no is kept (MedMax trains on it), asked without "yes or no".
    (kept,) = build_record(
        qa(media, "q4", "Is the abnormality focal or diffuse?", "Diffuse", question_type="closed"),
        tasks=TASKS,
        ctx=BuildContext(),
        client=None,
    )
    assert not isinstance(kept, Drop)
    assert (kept["question_type"], kept["answer"], kept["meta"]["template_family"]) == (
        "closed",
        "Diffuse",
        "open",
    )
    assert "yes or no" not in kept["turns"][0]["content"][1]["text"]
    assert kept["turns"][1]["content"] == [{"text": "Diffuse"}]


def test_vqa_verbatim_eval_prompts_are_asked_word_for_word(media):
    # MedMax's released eval prompts carry the instruction and the options: no template around them.
    prompt = (
        "Which organ?\nA: liver\nB: lung\nAnswer with the option's letter from the given choices directly."
    )
    meta = {"eval_task": "pmc_vqa", "verbatim_prompt": True}
    (inst,) = instances_of(qa(media, "e1", prompt, "B", question_type="multiple_choice", meta=meta))
    assert inst["turns"][0]["content"][1] == {"text": prompt}
    assert inst["answer"] == "B" and "options" not in inst
    with_options = qa(
        media, "e2", prompt, "lung", question_type="multiple_choice", options=["liver", "lung"], meta=meta
    )
    (inst,) = instances_of(with_options)
    assert inst["turns"][0]["content"][1] == {"text": prompt} and inst["answer"] == "B"
    assert inst["options"] == ["liver", "lung"]
    (inst,) = instances_of(qa(media, "e3", "Is it CT?", "yes", question_type="closed", meta=meta))
    assert inst["turns"][0]["content"][1] == {"text": "Is it CT?"}


def test_report_understanding_both_directions(media):
    record = validate(
        {
            "id": "mimic-1",
            "kind": "report",
            "source": "mimic-cxr",
            "license": "physionet",
            "credential": True,
            "report": "No acute cardiopulmonary process. Heart size normal.",
            "images": [media.put(png(3))],
        }
    )
    i2r, r2i = instances_of(record)
    assert (i2r["id"], r2i["id"]) == ("mimic-1-report_understanding-i2r", "mimic-1-report_understanding-r2i")
    assert i2r["turns"] == [
        {"role": "user", "content": [{"image": 0}, {"text": "Generate a report for the image."}]},
        {"role": "assistant", "content": [{"text": "No acute cardiopulmonary process. Heart size normal."}]},
    ]
    assert r2i["turns"][1] == {"role": "assistant", "content": [{"image": 0}]}
    assert r2i["turns"][0] == {
        "role": "user",
        "content": [
            {
                "text": "Here is a report: No acute cardiopulmonary "
                "process. Heart size normal.\nGenerate the "
                "corresponding image."
            }
        ],
    }
    assert i2r["credential"] is True and i2r["domain"] == "radiology"


def test_templates_follow_the_seed_not_the_order(media):
    records = [figure(media, rid=f"F{i}", seed=10 + i) for i in range(12)]
    first = [instances_of(r, ["captioning"], seed=0)[0]["meta"]["template"] for r in records]
    again = [instances_of(r, ["captioning"], seed=0)[0]["meta"]["template"] for r in reversed(records)][::-1]
    other = [instances_of(r, ["captioning"], seed=1)[0]["meta"]["template"] for r in records]
    assert first == again and first != other and len(set(first)) > 1


def test_domain_rule():
    assert classify_text("H&E stained section of the liver biopsy, 40x magnification") == "histopathology"
    assert classify_text("Axial CT shows a hypodense lesion") == "radiology"
    assert classify_text("A bar chart of survival") == "other"
    assert classify_text("CT-guided biopsy; H&E stain") == "histopathology"  # 2 hits beat 1
    assert domain_of({"domain": "other", "source": "pathvqa"}, "H&E") == "other"  # an explicit tag wins
    assert domain_of({"source": "pathvqa"}, "What is shown?") == "histopathology"


def test_caption_rules_drop_with_reasons(media):
    policy = ErrorPolicy("skip")
    out = list(
        synthesize(
            [figure(media, rid="a", caption="Figure 1."), figure(media, rid="b", caption="")],
            policy=policy,
            tasks=["captioning"],
            media=media,
        )
    )
    assert out == []
    assert policy.report.dropped == {"caption too short": 1, "caption missing": 1}


# --------------------------------------------------------------------------- filters


def test_near_dup_index_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    hashes = [int(x) for x in rng.integers(0, 2**63, 400, dtype=np.int64)]
    hashes += [h ^ (1 << int(rng.integers(0, 64))) ^ (1 << int(rng.integers(0, 64))) for h in hashes[:100]]
    for threshold, switch_at in [(0, None), (3, None), (6, None), (1, 100), (4, 100), (7, 100)]:
        index: NearDupIndex[int] = NearDupIndex(threshold)
        if switch_at is not None:  # force the large-n regime (wide bands probed one bit away) early
            index._switch_at = switch_at
        for i, h in enumerate(hashes):
            brute = [(hamming(h, k), j) for j, k in enumerate(hashes[:i]) if hamming(h, k) <= threshold]
            found = index.nearest(h)
            assert (found is None) == (not brute)
            if found:
                assert found[1] == min(brute)[0]
            index.add(h, i)
        assert index.radius == (0 if switch_at is None else 1)


def test_dedup_exact_and_near(media):
    jpeg_copy = media.put(png(1, size=80, fmt="JPEG"))  # the same picture, rescaled and re-encoded
    original = figure(media, rid="A")
    copy = figure(media, rid="B")  # identical bytes and caption: exact duplicate
    near = dict(figure(media, rid="C", caption=CAPTION + " Second print."), images=[jpeg_copy])
    other = figure(media, rid="D", seed=99)
    assert hamming(phash(media.open(original["images"][0])), phash(media.open(jpeg_copy))) <= 4
    policy = ErrorPolicy("skip", rejects=io.BytesIO())
    out = list(synthesize([original, copy, near, other], policy=policy, tasks=["captioning"], media=media))
    assert [o["id"] for o in out] == ["A-captioning", "D-captioning"]
    assert policy.report.dropped == {"duplicate": 1, "near duplicate": 1}
    rejects = [orjson.loads(line) for line in policy.rejects.getvalue().splitlines()]
    assert [r["record_id"] for r in rejects] == ["B-captioning", "C-captioning"]
    # Several questions about one image are not duplicates of each other.
    qs = [qa(media, f"q{i}", f"Question number {i}?", "yes") for i in range(3)]
    assert len(list(synthesize(qs, tasks=["vqa"], media=media))) == 3


def test_decontamination_drops_planted_eval_image_and_question(media, tmp_path):
    eval_items = [
        qa(media, "ev1", "Is this a CT image?", "yes", seed=50, meta={"eval_task": "vqa_rad_closed"}),
        qa(media, "ev2", "What organ is imaged?", "liver", seed=51),
    ]
    near_copy = media.put(png(50, size=90, fmt="JPEG"))
    train = [
        figure(media, rid="same-image", images=[eval_items[0]["images"][0]]),  # exact eval image
        figure(media, rid="near-image", images=[near_copy]),  # rescaled copy of the eval image
        qa(media, "same-question", "what organ is imaged", "kidney", seed=60),  # eval question, other image
        figure(media, rid="clean", seed=61),
        qa(media, "clean-q", "Is the lesion enhancing?", "no", seed=62),
    ]
    index = load_exclude(eval_items, ImageHasher(media), 4, by="both")
    policy = ErrorPolicy("skip")
    out = list(synthesize(train, policy=policy, tasks=["captioning", "vqa"], media=media, exclude=index))
    assert [o["id"] for o in out] == ["clean-captioning", "clean-q-vqa"]
    assert policy.report.dropped == {"contaminated": 3}
    assert policy.report.extra["contamination"] == [
        {"eval_source": "vqa-rad", "match": "same_question", "count": 1},
        {"eval_source": "vqa_rad_closed", "match": "exact_image", "count": 1},
        {"eval_source": "vqa_rad_closed", "match": "near_duplicate_image", "count": 1},
    ]
    # The eval set itself survives the default filters untouched (no --exclude by default).
    evals = list(synthesize(eval_items, tasks=["vqa"], media=media))
    assert [e["id"] for e in evals] == ["ev1-vqa", "ev2-vqa"] and evals[0]["meta"][
        "eval_task"
    ] == "vqa_rad_closed"


def test_mixing_ratio_and_cap_are_deterministic():
    items = [{"id": f"c{i}", "task": "captioning"} for i in range(30)] + [
        {"id": f"v{i}", "task": "vqa"} for i in range(10)
    ]
    kept, dropped = mix(items, ratio=parse_ratio("captioning=2,vqa=1"), max_per_task=None, seed=0)
    assert sum(k["task"] == "captioning" for k in kept) == 20 and sum(k["task"] == "vqa" for k in kept) == 10
    assert len(dropped) == 10 and dropped[0][1].startswith("mixing: captioning")
    again, _ = mix(list(reversed(items)), ratio=parse_ratio("captioning=2,vqa=1"), max_per_task=None, seed=0)
    assert sorted(k["id"] for k in again) == sorted(k["id"] for k in kept)
    other, _ = mix(items, ratio=parse_ratio("captioning=2,vqa=1"), max_per_task=None, seed=1)
    assert {k["id"] for k in other} != {k["id"] for k in kept}
    capped, _ = mix(items, ratio=None, max_per_task=4, seed=0)
    order = {x["id"]: i for i, x in enumerate(items)}
    assert len(capped) == 8 and [k["id"] for k in capped] == sorted((k["id"] for k in capped), key=order.get)
    no_vqa, _ = mix(items, ratio=parse_ratio("vqa=0,captioning=1"), max_per_task=None, seed=0)
    assert len(no_vqa) == 30
    with pytest.raises(ValueError, match="task=weight"):
        parse_ratio("captions=1")


def test_passthrough_and_skips(media):
    instance = {
        "id": "x-1",
        "task": "vqa",
        "domain": "other",
        "source": "medmax",
        "license": "cc-by",
        "credential": False,
        "images": [],
        "turns": [{"role": "user", "content": [{"text": "hi"}]}],
    }
    released = {"id": "row-1", "kind": "instance", "text": "a <image> b", "tokens": [0, 1]}
    policy = ErrorPolicy("skip")
    out = list(
        synthesize(
            [instance, released, figure(media)], policy=policy, tasks=["vqa", "visual_chat"], media=media
        )
    )
    assert out == [instance, released]
    assert policy.report.counts["visual_chat skipped (no --llm-url)"] == 1
    qa_only = qa(media, "q-unused", "Is it?", "yes")
    assert list(synthesize([qa_only, instance], policy=policy, tasks=["captioning"], media=media)) == []
    assert policy.report.counts["records with no selected task"] == 1
    assert policy.report.skipped["task not selected"] == 1  # a user filter: skipped, not rejected
    no_image = {"id": "f", "kind": "figure", "source": "jats", "caption": CAPTION, "images": []}
    list(synthesize([no_image], policy=policy, media=media))
    assert policy.report.dropped["figure record has no images"] == 1


# --------------------------------------------------------------------------- the real command


def _write_jsonl(path, records):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_command_in_a_pipe_is_deterministic(media, tmp_path, medmax):
    records = [figure(media, rid=f"F{i}", seed=i) for i in range(4)]
    records += [qa(media, f"Q{i}", f"Is finding {i} present?", "no", seed=20 + i) for i in range(4)]
    records.append(figure(media, rid="dup", seed=0, caption=records[0]["caption"]))
    src = _write_jsonl(tmp_path / "sources.jsonl", records)
    env = {"MEDMAX_MEDIA": str(media.root)}
    cat = medmax("cat", str(src), env=env)
    args = ("synthesize", "--seed", "3", "--on-error", "skip", "--rejects", str(tmp_path / "rej.jsonl"))
    first = medmax(*args, input=cat.stdout, env=env)
    second = medmax(*args, input=cat.stdout, env=env)
    assert first.stdout == second.stdout and first.stdout
    out = parse_jsonl(first.stdout)
    assert {o["task"] for o in out} == {"captioning", "image_generation", "interleaved", "vqa"}
    assert not any(o["id"].startswith("dup-") for o in out)
    summary = first.stderr.decode()
    assert "duplicate" in summary and "visual_chat" in summary and "--llm-url" in summary
    assert b"dup-captioning" in (tmp_path / "rej.jsonl").read_bytes()
    for o in out:
        validate(o)
    # --exclude with a planted eval question, and a ratio: still one valid, deterministic stream.
    ev = _write_jsonl(tmp_path / "eval.jsonl", [qa(media, "ev", "is finding 2 present", "no", seed=300)])
    mixed = medmax(
        "synthesize",
        str(src),
        "--exclude",
        str(ev),
        "--exclude-by",
        "question",
        "--tasks",
        "vqa,captioning",
        "--ratio",
        "vqa=1,captioning=1",
        env=env,
    )
    tasks = [line["task"] for line in parse_jsonl(mixed.stdout)]
    assert tasks.count("vqa") == tasks.count("captioning") == 3  # 4 vqa - 1 contaminated; 4 captions capped
    assert "same_question" in mixed.stderr.decode()  # the contamination table
    bad = medmax("synthesize", str(src), "--tasks", "captions", env=env, check=False)
    assert bad.returncode == 2 and b"--tasks" in bad.stderr


def test_near_dup_groups_grow_from_lists_into_indexes():
    from medmax_cli.synthesize.filters import SMALL_GROUP, NearDupFilter

    class Planted:
        def phash_of(self, ref):
            return ref["h"]

    rng = np.random.default_rng(3)
    hashes = [int(x) for x in rng.integers(0, 2**63, SMALL_GROUP + 10)]
    near = NearDupFilter(Planted(), 4)  # type: ignore[arg-type]
    reasons = [
        near.check({"id": f"c{i}", "task": "captioning", "images": [{"h": h}]}) for i, h in enumerate(hashes)
    ]
    assert reasons == [None] * len(hashes)
    assert isinstance(near._groups[("captioning", "", "")], NearDupIndex)
    copy = {"id": "late", "task": "captioning", "images": [{"h": hashes[3] ^ 0b101}]}
    assert near.check(copy) == "near duplicate: image within 2 bits of c3"
    # A small group (one VQA question) stays a list and still finds its near copy.
    q = {"id": "q1", "task": "vqa", "meta": {"question": "Is it?"}, "images": [{"h": hashes[0]}]}
    assert near.check(q) is None and near.check(dict(q, id="q2", images=[{"h": hashes[0] ^ 1}])) is not None
    assert isinstance(near._groups[("vqa", "", "is it")], list)
