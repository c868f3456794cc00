"""synthesize at scale (issue 16): --ratio streams with the same output as the in-memory mix, and
each training image is hashed once, in parallel, with decontamination still catching its copies."""

from __future__ import annotations

import random

import pytest

from medmax_cli.streams import ErrorPolicy
from medmax_cli.synthesize import load_exclude, synthesize
from medmax_cli.synthesize.imagehash import ImageHasher
from medmax_cli.synthesize.mixing import mix, mix_stream, parse_ratio
from test_synthesize import figure, png, qa


@pytest.mark.parametrize(
    "ratio,cap",
    [("captioning=2,vqa=1", None), ("vqa=0,captioning=1", None), (None, 7), ("vqa=3,captioning=1", 40)],
)
def test_mix_stream_keeps_what_mix_keeps(ratio, cap, tmp_path):
    rng = random.Random(5)
    tasks = ["captioning", "vqa", "image_generation"]
    items = [{"id": f"i{k}", "task": rng.choice(tasks), "meta": {"n": k, "t": "µ\n"}} for k in range(300)]
    items += [dict(items[3])]  # a repeated id: ranked by position after the key, as mix does
    for seed in (0, 1):
        kept, dropped = mix(items, ratio=parse_ratio(ratio), max_per_task=cap, seed=seed)
        streamed = list(
            mix_stream(iter(items), ratio=parse_ratio(ratio), max_per_task=cap, seed=seed, spill_dir=tmp_path)
        )
        assert [x for x, why in streamed if why is None] == kept
        assert sorted((x["meta"]["n"], why) for x, why in streamed if why) == sorted(
            (x["meta"]["n"], why) for x, why in dropped
        )
    assert not list(tmp_path.iterdir())  # the spill file is gone


def test_each_image_hashed_once_in_parallel_and_copies_still_caught(media):
    eval_items = [
        qa(media, "ev1", "Is this a CT image?", "yes", seed=50),
        qa(media, "ev2", "Organ?", "liver", seed=51),
    ]
    near_copy = media.put(png(50, size=90, fmt="JPEG"))
    train = [figure(media, rid=f"f{k}", seed=100 + k) for k in range(24)]
    train += [
        figure(media, rid=f"again{k}", seed=100 + k, caption=f"Another caption of case {k}, same figure.")
        for k in range(6)
    ]
    train += [
        figure(media, rid="near-eval", images=[near_copy]),
        figure(media, rid="eval-image", images=[eval_items[0]["images"][0]]),
    ]
    distinct = 24 + 1  # the exact eval image is caught by its sha256 before any decoding

    def run(workers: int):
        policy = ErrorPolicy("skip")
        hasher = ImageHasher(media)
        eval_hasher = ImageHasher(media)
        index = load_exclude(eval_items, eval_hasher, 4)
        out = list(
            synthesize(
                train,
                policy=policy,
                tasks=["captioning", "image_generation"],
                media=media,
                hasher=hasher,
                exclude=index,
                hash_workers=workers,
            )
        )
        return out, policy.report.dropped, hasher.hashed, eval_hasher.hashed

    serial = run(1)
    parallel = run(4)
    assert parallel[0] == serial[0]  # same instances, same order
    assert parallel[1] == serial[1]
    assert serial[2] == parallel[2] == distinct  # each training image decoded once (filter + exclude)
    assert serial[3] == parallel[3] == 2
    assert parallel[1]["contaminated"] == 4  # 2 records x 2 tasks: the exact and the near copy
    assert parallel[1]["near duplicate"] == 12  # the 6 re-captioned figures, in both tasks
