"""`medmax generate` against Anole's reference inference, restated here on fixed logits.

The reference below restates GAIR-NLP/anole chameleon/inference (see docs/generate.md for the
functions): `VocabInfo.text_tokens`, `TextDecoder._allowed_tokens` + `_logits_processors`
(AllowOnlyTokens, DisallowTokensAtOrAfterIndex(BOI, max_seq_len - 1026), Hugging Face's
RepetitionPenalty, Temperature and TopP, then softmax), and `ImageDecoder` (InBatchInstructCFG on
the three rows, AllowOnlyTokens(image tokens), Temperature 0.7, TopP 0.9). It is written
independently of medmax_cli: vocabulary names in, probabilities out. Each test compares the
distribution our decode loop samples from with it (to 1e-6), step by step.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from transformers import (  # noqa: E402
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from medmax_cli.generate.cfg import combine_cfg, image_only_prompt  # noqa: E402
from medmax_cli.generate.config import GenerateConfig, Settings, check_sampling  # noqa: E402
from medmax_cli.generate.decode import boi_last_step  # noqa: E402
from medmax_cli.generate.interleave import Row, run_rows  # noqa: E402
from medmax_cli.generate.processors import TextMasks, text_logits  # noqa: E402
from medmax_cli.generate.prompt import prompt_ids  # noqa: E402
from medmax_cli.generate.sampling import distribution, sample  # noqa: E402
from medmax_cli.records import RecordError  # noqa: E402
from medmax_cli.streams import ErrorPolicy  # noqa: E402
from medmax_cli.text.vocab import ChameleonVocab, anole_rule_counts  # noqa: E402

NEG = -math.inf

# ---------------------------------------------------------------------- the restated reference


def ref_vocab(vocab_map):
    """Anole's VocabInfo: image tokens, text tokens (sorted ids) and the named specials."""
    image = sorted(v for n, v in vocab_map.items() if n.startswith("IMGIMG"))
    special = {v for n, v in vocab_map.items() if n.startswith("<") and n != "<"}
    text = sorted(set(vocab_map.values()) - set(image) - special)
    return {
        "image": image,
        "text": text,
        "bos": vocab_map["<s>"],
        "eos": vocab_map["</s>"],
        "boi": vocab_map["<racm3:break>"],
        "eoi": vocab_map["<eoss>"],
    }


def ref_allow_only(logits, ids):
    out = torch.full_like(logits, NEG)
    out[:, ids] = logits[:, ids]
    return out


def ref_text_probs(
    logits, input_ids, rv, *, img, max_seq_len, block, penalty=1.2, temp=1.0, top_p=0.9, greedy=False
):
    """One TextDecoder step: processors in Anole's order, softmax; greedy -> one-hot of the argmax."""
    allowed = [rv["eos"], *rv["text"], *([rv["boi"]] if img else [])]
    x = ref_allow_only(logits.clone(), allowed)
    if img and input_ids.shape[1] >= max_seq_len - block:  # DisallowTokensAtOrAfterIndex
        x[:, rv["boi"]] = NEG
    x = RepetitionPenaltyLogitsProcessor(penalty)(input_ids, x)
    x = TemperatureLogitsWarper(temp)(input_ids, x)
    x = TopPLogitsWarper(top_p)(input_ids, x)
    probs = x.softmax(dim=-1)
    if greedy:
        return torch.nn.functional.one_hot(probs.argmax(dim=-1), probs.shape[-1]).double()
    return probs.double()


def ref_image_probs(three_rows, rv, *, cfg_text=3.0, cfg_image=1.2, temp=0.7, top_p=0.9):
    """One ImageDecoder step on the [3B, V] logits of the c, i, u rows; the probabilities of the
    first chunk (the token every row is then fed)."""
    c, i, u = three_rows.chunk(3)
    mixed = (u + cfg_image * (i - u) + cfg_text * (c - i)).repeat(3, 1)
    x = ref_allow_only(mixed, rv["image"])
    x = TemperatureLogitsWarper(temp)(None, x)
    x = TopPLogitsWarper(top_p)(None, x)
    return x.softmax(dim=-1).chunk(3)[0].double()


def ref_image_row(ids, rv):
    """ImageDecoder._split_inputs_for_cfg: the prompt's BOS, BOI, EOI and image tokens."""
    keep = set(rv["image"]) | {rv["bos"], rv["boi"], rv["eoi"]}
    return [t for t in ids if t in keep]


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vmap(tiny_model_dir):
    return json.loads((tiny_model_dir / "config.json").read_text())["vocabulary_map"]


@pytest.fixture(scope="module")
def vocab(vmap):
    return ChameleonVocab.from_vocabulary_map(vmap)


def masks_of(vocab, context=4096, tpi=64):
    return TextMasks.build(
        vocab, vocab_size=vocab.vocab_size, context=context, tokens_per_image=tpi, device="cpu"
    )


def ours_text_probs(logits, history, masks, *, allow_image, penalty=1.2, temp=1.0, top_p=0.9):
    """The distribution generate_text samples from at step 0 of a row whose context is `history`."""
    length = torch.tensor([history.shape[1]])
    last = boi_last_step(length, torch.tensor([masks.context]) - length, torch.tensor([allow_image]), masks)
    x = text_logits(
        logits.clone(), history=history, masks=masks, repetition_penalty=penalty, boi_allowed=last >= 0
    )
    if temp <= 0:
        return torch.nn.functional.one_hot(x.argmax(dim=-1), x.shape[-1]).double()
    p = distribution(x, temperature=temp, top_p=top_p).double()
    return p / p.sum(dim=-1, keepdim=True)


def fixed_logits(vocab, rv, seed, history):
    """Random logits with the contested ids made strong: BOI, EOS, seen tokens, a `<`-named id."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, vocab.vocab_size, generator=g) * 2
    logits[0, rv["boi"]] = 6.0
    logits[0, rv["eos"]] = 4.0
    logits[0, vocab.sep] = 7.0  # a `<reserved>` name: never allowed
    logits[0, history[0, -5:]] += 3.0  # recently seen text: the repetition penalty matters
    logits[0, rv["text"][:40]] += 2.5
    return logits


def history_of(rv, length, seed):
    g = torch.Generator().manual_seed(seed)
    text = torch.tensor(rv["text"])
    body = text[torch.randint(len(text), (length - 1,), generator=g)]
    return torch.cat([torch.tensor([rv["bos"]]), body])[None]


# ---------------------------------------------------------------------- 1. the text-token rule


def test_text_rule_is_anoles_on_a_vocabulary_with_angle_pieces():
    """Every `<`-named id except `<` itself is out, image codes are out, the rest is text."""
    names = ["<s>", "<pad>", "</s>", "<unk>", "IMGIMGAZ", "IMGIMGBZ", "<eoss>", "<racm3:break>"]
    names += ["<reserved08706>", "<image>", "<", "<br", "</div>", "<0x0A>", "hello", "a<b", "<<"]
    vmap = {n: i for i, n in enumerate(names)}
    v = ChameleonVocab.from_vocabulary_map(vmap)
    assert [names[i] for i in v.anole_text_mask.nonzero()[0]] == ["<", "hello", "a<b"]
    assert anole_rule_counts(vmap) == {"image": 2, "special": 12, "text": 3}
    # the older name list let `<br`, `</div>`, `<0x0A>`, `<<` through
    assert {"<br", "</div>", "<0x0A>", "<<"} <= {names[i] for i in v.text_token_mask.nonzero()[0]}
    m = TextMasks.build(v, vocab_size=len(names), context=64, tokens_per_image=2, device="cpu")
    assert [names[i] for i in (~m.blocked).nonzero().flatten()] == ["</s>", "<", "hello", "a<b"]
    rv = ref_vocab(vmap)
    assert sorted([rv["eos"], *rv["text"]]) == (~m.blocked).nonzero().flatten().tolist()


def test_rule_counts_on_the_tiny_model(vmap, vocab):
    """The figures docs/generate.md quotes for the tiny model."""
    assert anole_rule_counts(vmap) == {"image": 8192, "special": 56088, "text": 1256}
    assert int(vocab.anole_text_mask.sum()) == 1256 and "<" in vmap


# ---------------------------------------------------------------------- 2. text and interleaved steps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_text_step_distribution_equals_anoles(vocab, vmap, seed):
    """--preset anole text step (images off): temperature 1.0, top-p 0.9, penalty 1.2."""
    rv = ref_vocab(vmap)
    hist = history_of(rv, 40 + seed, seed)
    logits = fixed_logits(vocab, rv, seed, hist)
    want = ref_text_probs(logits, hist, rv, img=False, max_seq_len=4096, block=66)
    got = ours_text_probs(logits, hist, masks_of(vocab), allow_image=False)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert want[0, rv["boi"]] == 0 and want[0, vocab.sep] == 0 and want[0, rv["eos"]] > 0


@pytest.mark.parametrize(("room", "boi"), [(66 + 1, True), (66, False), (66 + 40, True), (30, False)])
def test_interleaved_step_distribution_and_boi_room_equal_anoles(vocab, vmap, room, boi):
    """Interleaved text step near the end of a 4,096 context: BOI allowed iff the context holds fewer
    than max_seq_len - block tokens (Anole's index rule; block = 1026 there, tpi + 2 = 66 here)."""
    rv = ref_vocab(vmap)
    hist = history_of(rv, 4096 - room, room)
    logits = fixed_logits(vocab, rv, room, hist)
    want = ref_text_probs(logits, hist, rv, img=True, max_seq_len=4096, block=66)
    got = ours_text_probs(logits, hist, masks_of(vocab), allow_image=True)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert bool(want[0, rv["boi"]] > 0) is boi


@pytest.mark.parametrize("seed", [3, 4])
def test_greedy_text_step_equals_medmax_eval(vocab, vmap, seed):
    """--preset medmax-eval: MedMax's chameleon_generate (greedy=True) keeps every processor, then argmax."""
    rv = ref_vocab(vmap)
    hist = history_of(rv, 25, seed)
    logits = fixed_logits(vocab, rv, seed, hist)
    want = ref_text_probs(logits, hist, rv, img=False, max_seq_len=4096, block=66, greedy=True)
    got = ours_text_probs(logits, hist, masks_of(vocab), allow_image=False, temp=0.0)
    assert torch.equal(got, want)


def test_boi_rule_over_every_length():
    """boi_last_step against Anole's index rule for every context length near the end."""

    @dataclasses.dataclass
    class M:
        context: int = 500
        image_block: int = 66

    lengths = torch.arange(300, 500)
    last = boi_last_step(lengths, 500 - lengths, torch.ones_like(lengths, dtype=torch.bool), M())
    for t in range(0, 3):  # step t: the context holds lengths + t tokens
        ok = (last >= t).tolist()
        assert ok == [bool(n + t < 500 - 66) for n in lengths.tolist()]


# ---------------------------------------------------------------------- 3. image steps


@pytest.mark.parametrize("seed", [0, 1])
def test_image_step_distribution_equals_anoles(vocab, vmap, seed):
    rv = ref_vocab(vmap)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(3, vocab.vocab_size, generator=g) * 2
    rows[:, rv["image"][:30]] += torch.tensor([3.0, 1.0, -1.0])[:, None]  # rows disagree where it counts
    want = ref_image_probs(rows, rv)
    code_ids = torch.from_numpy(vocab.image_code_to_id.copy())
    c, i, u = rows[:, code_ids]
    p = distribution(
        combine_cfg(c[None], i[None], u[None], cfg_text=3.0, cfg_image=1.2), temperature=0.7, top_p=0.9
    )
    p = (p / p.sum()).double()
    got = torch.zeros_like(want)
    got[0, code_ids] = p[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_image_only_row_equals_anoles_filter(vocab, vmap):
    """The i row of an interleaved context (prompt image, text, a generated image, text, BOI)."""
    rv = ref_vocab(vmap)
    code_ids = vocab.image_code_to_id.tolist()
    block = [rv["boi"], *code_ids[:64], rv["eoi"]]
    ctx = [rv["bos"], *rv["text"][:5], *block, *rv["text"][5:9], vocab.sep, *block, *rv["text"][:3]]
    ours = image_only_prompt(ctx, bos=rv["bos"], boi=rv["boi"], eoi=rv["eoi"], image_ids=frozenset(code_ids))
    assert ours == ref_image_row(ctx, rv) == [rv["bos"], *block, *block]


def test_noise_never_reaches_0_or_1():
    """An Exp(1) draw of exactly 0 (u = 1) would make the race pick that token even at probability 0."""
    from medmax_cli.generate.sampling import unit_interval

    u = unit_interval(torch.tensor([0, 1, 255, 511, 2**31, 2**32 - 512, 2**32 - 1], dtype=torch.long))
    race = -torch.log(u)
    assert (
        bool((u > 0).all()) and bool((u < 1).all()) and bool((race > 0).all()) and bool(race.isfinite().all())
    )


def test_sampler_draws_from_the_distribution():
    """The counter-based race draws each token with its probability (40,000 fixed seeds)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    p = distribution(logits, temperature=0.7, top_p=0.9)[0]
    p = p / p.sum()
    n = 40_000
    draws = sample(
        logits.expand(n, -1),
        temperature=0.7,
        top_p=0.9,
        seeds=torch.arange(n),
        steps=torch.zeros(n, dtype=torch.long),
    )
    freq = torch.bincount(draws, minlength=6).double() / n
    assert freq[p == 0].sum() == 0  # the top-p tail is never drawn
    assert (freq - p.double()).abs().max() < 0.012  # ~5 standard errors


# ---------------------------------------------------------------------- 4. interleaved on the tiny model


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    from medmax_cli.generate.stage import setup_engine
    from medmax_cli.media import MediaStore

    return setup_engine(
        tiny_model_dir, device="cpu", dtype="float32", media=MediaStore(tmp_path_factory.mktemp("m"))
    )


class BoiEveryStep:
    """Runner proxy: BOI wins every text step it is allowed (images as often as the rules permit)
    and EOS never does (so a row runs to its limit)."""

    def __init__(self, runner, boi, eos=2):
        self.runner, self.boi, self.eos = runner, boi, eos

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def logits(self, hidden, code_ids=None):
        out = self.runner.logits(hidden, code_ids)
        if code_ids is None:
            out[:, self.boi] += 1e4
            out[:, self.eos] -= 1e4
        return out


def interleaved_record(rid="il"):
    return {
        "id": rid,
        "task": "interleaved",
        "source": "test",
        "license": "CC0",
        "images": [],
        "turns": [{"role": "user", "content": [{"text": "Explain the finding with figures."}]}],
    }


def small_context_engine(engine, context):
    return dataclasses.replace(
        engine,
        runner=BoiEveryStep(engine.runner, engine.vocab.boi),
        context=context,
        masks=dataclasses.replace(engine.masks, context=context),
    )


@pytest.mark.parametrize(("extra", "images"), [(3 * 66 + 5, 3), (2 * 66, 1), (2 * 66 + 1, 2)])
def test_interleaved_fills_the_context_with_as_many_images_as_fit(engine, extra, images):
    """--preset anole, no budget: generation goes on to the context limit; an image may start only
    while the context holds fewer than context - block tokens (2 * 66 extra positions fit one image
    under Anole's rule, where the older rule started a second)."""
    from medmax_cli.generate.stage import generate_stage

    rec = interleaved_record()
    p = len(prompt_ids(rec, vocab=engine.vocab, tokenizer=engine.tokenizer))
    eng = small_context_engine(engine, p + extra)
    (out,) = generate_stage([rec], engine=eng, config=GenerateConfig(preset="anole"))
    kinds = ["image" if "image" in part else "text" for part in out["prediction"]]
    assert kinds.count("image") == images
    assert kinds[:images] == ["image"] * images  # BOI at every allowed step: images back to back
    gen = out["generation"]
    assert gen["new_tokens"] == extra and gen["stop"] == "length"  # the whole context is used
    assert gen["preset"] == "anole" and gen["settings"]["max_new_tokens"] is None
    assert all(len(im["tokens"]) == engine.tokens_per_image for im in out["images"])


def test_interleaved_text_run_cap_resets_after_an_image(engine):
    """medmax-eval interleaved: text runs of at most text_segment tokens (MedMax's max_gen_len=1024 per
    TextDecoder); an image in between starts a new run; a run that reaches the cap ends the row."""
    vocab = engine.vocab
    prompt = prompt_ids(interleaved_record(), vocab=vocab, tokenizer=engine.tokenizer)

    class BoiAtCalls(BoiEveryStep):
        def __init__(self, runner, boi, calls):
            super().__init__(runner, boi)
            self.calls, self.at = 0, set(calls)

        def logits(self, hidden, code_ids=None):
            out = self.runner.logits(hidden, code_ids)
            if code_ids is None:
                self.calls += 1
                if self.calls in self.at:
                    out[:, self.boi] += 1e4
                else:
                    out[:, self.boi] -= 1e4
                out[:, vocab.eos] -= 1e4
            return out

    row = Row(prompt=prompt, mode="interleaved", seed=1, budget=4096 - len(prompt))
    settings = Settings(text_segment=5, temperature=0.0)
    run_rows(
        BoiAtCalls(engine.runner, vocab.boi, [3]),
        [row],
        masks=engine.masks,
        code_ids=engine.code_ids,
        vocab=vocab,
        settings=settings,
    )
    assert [k for k, _ in row.segments] == ["text", "image", "text"]
    assert len(row.segments[0][1]) == 2 and len(row.segments[2][1]) == 5  # 2 + BOI, then a fresh run of 5
    assert row.stop == "length" and row.used == 3 + 65 + 5


# ---------------------------------------------------------------------- 5. malformed prompts


@pytest.mark.parametrize(
    ("tokens", "reason"),
    [
        ([9000, 9001, 8710, 9002, 2], "does not start with BOS"),
        ([0, 9000, 0, 9001, 8710, 9002, 2], "2 BOS tokens"),
        # the block closes after the separator: the prompt (up to SEP) ends inside it
        ([0, 9000, 8197, 4, 5, 8710, 6, 8196, 2], "image block 0 holds a non-image token 8710"),
        (
            [0, 9000, 8197, 4, 5, 6, 8196, 8710, 9002, 2],
            "unfinished image block at token 2",
        ),  # 3 codes, not 64
    ],
)
def test_malformed_prompt_is_a_record_error(engine, tokens, reason):
    from medmax_cli.generate.stage import generate_stage

    bad = {"id": "bad", "task": "image_generation", "source": "t", "license": "CC0", "tokens": tokens}
    good = {"id": "ok", "task": "image_generation", "source": "t", "license": "CC0"}
    good["tokens"] = [0, 9000, 8197, *engine.code_ids[:64].tolist(), 8196, 8710, 9002, 2]
    rejects = io.BytesIO()
    cfg = GenerateConfig(cfg_text=1.0, cfg_image=1.0)  # one row: quick
    outs = list(generate_stage([bad, good], engine=engine, config=cfg, policy=ErrorPolicy("skip", rejects)))
    assert [o["id"] for o in outs] == ["ok"]
    entry = json.loads(rejects.getvalue())
    assert entry["record_id"] == "bad" and "malformed prompt" in entry["reason"] and reason in entry["reason"]
    with pytest.raises(RecordError, match=reason):
        list(generate_stage([bad], engine=engine, config=cfg))


# ---------------------------------------------------------------------- presets and flags


def eval_item(qtype, task="vqa"):
    return {"id": "e", "task": task, "question_type": qtype, "meta": {"eval_task": f"slake_{qtype}"}}


def test_presets_per_record_and_flags_override():
    cfg = GenerateConfig()
    closed, opened = (
        cfg.settings_for(eval_item("closed"), "text"),
        cfg.settings_for(eval_item("open"), "text"),
    )
    mc = cfg.settings_for({**eval_item("x"), "question_type": "multiple_choice"}, "text")
    assert (closed.preset, closed.temperature, closed.max_new_tokens, closed.repetition_penalty) == (
        "medmax-eval",
        0.0,
        1,
        1.2,
    )
    assert opened.max_new_tokens == 60 and mc.max_new_tokens == 1
    il = cfg.settings_for({"task": "interleaved", "meta": {"eval_task": "mm_out"}}, "interleaved")
    assert (il.max_new_tokens, il.text_segment, il.temperature) == (None, 1024, 0.0)
    cap = cfg.settings_for({"task": "captioning", "meta": {"eval_task": "cap"}}, "text")
    assert cap.max_new_tokens is None and cap.text_segment is None
    plain = cfg.settings_for({"task": "vqa", "question_type": "closed"}, "text")
    assert (plain.preset, plain.temperature, plain.top_p, plain.max_new_tokens) == ("anole", 1.0, 0.9, None)
    assert (plain.image_temperature, plain.image_top_p, plain.cfg_text, plain.cfg_image) == (
        0.7,
        0.9,
        3.0,
        1.2,
    )
    # explicit flags win over either preset; --preset forces one for every record
    forced = GenerateConfig(preset="anole", temperature=0.5, max_new_tokens=7).settings_for(
        eval_item("closed"), "text"
    )
    assert (forced.preset, forced.temperature, forced.max_new_tokens) == ("anole", 0.5, 7)
    both = GenerateConfig(preset="medmax-eval", top_p=0.5).settings_for({"task": "vqa"}, "text")
    assert (both.preset, both.top_p, both.temperature) == ("medmax-eval", 0.5, 0.0)


def test_prediction_names_preset_and_every_setting(engine):
    from medmax_cli.generate.stage import generate_stage

    item = {
        "id": "ev",
        "task": "vqa",
        "source": "t",
        "license": "CC0",
        "question_type": "open",
        "meta": {"eval_task": "slake_open"},
        "images": [],
        "turns": [{"role": "user", "content": [{"text": "Is the liver normal?"}]}],
    }
    plain = {**item, "id": "pl", "meta": {}}
    outs = list(generate_stage([item, plain], engine=engine, config=GenerateConfig(max_new_tokens=3)))
    assert [o["generation"]["preset"] for o in outs] == ["medmax-eval", "anole"]
    s = outs[0]["generation"]["settings"]
    for key in ("temperature", "top_p", "repetition_penalty", "cfg_text", "cfg_image", "image_temperature"):
        assert key in s
    assert s["temperature"] == 0.0 and outs[1]["generation"]["settings"]["temperature"] == 1.0
    assert s["max_new_tokens"] == 3 and s["preset"] == "medmax-eval"
    again = list(generate_stage([item, plain], engine=engine, config=GenerateConfig(max_new_tokens=3)))
    assert json.dumps(again) == json.dumps(outs)  # same seed: the same bytes


@pytest.mark.parametrize(
    ("name", "value", "msg"),
    [
        ("temperature", math.nan, "finite"),
        ("top_p", math.inf, "finite"),
        ("image_top_p", 0.0, "(0, 1]"),
        ("repetition_penalty", -1.0, "positive"),
        ("cfg_text", -0.5, ">= 0"),
        ("cfg_image", math.nan, "finite"),
        ("image_temperature", -math.inf, "finite"),
    ],
)
def test_bad_sampling_values_are_refused(name, value, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace("]", r"\]")):
        check_sampling({name: value})
    with pytest.raises(ValueError, match="--" + name.replace("_", "-")):
        GenerateConfig(**{name: value}).check()


def test_bad_sampling_flag_exits_2_before_reading_input(tmp_path):
    missing = tmp_path / "never-read.jsonl"  # reading it would fail differently
    for flag, value in (("--temperature", "nan"), ("--cfg-image", "-1"), ("--top-p", "inf")):
        res = subprocess.run(
            [sys.executable, "-m", "medmax_cli", "generate", str(missing), flag, value],
            capture_output=True,
            timeout=120,
        )
        assert res.returncode == 2, res.stderr
        assert flag.encode() in res.stderr and b"never-read" not in res.stderr


class FixedLogits:
    """Runner proxy whose full-vocabulary logits are `logits` for every row (the model still runs)."""

    def __init__(self, runner, logits):
        self.runner, self.fixed = runner, logits

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def logits(self, hidden, code_ids=None):
        if code_ids is not None:
            return self.runner.logits(hidden, code_ids)
        return self.fixed.expand(hidden.shape[0], -1).clone()


def test_decode_loop_samples_anoles_text_distribution(engine, vmap):
    """The real text loop (generate_text), fed fixed logits: 200 rows with their own seeds draw their
    first token with Anole's probabilities (prompt tokens penalised, `<` names never drawn)."""
    from medmax_cli.generate.decode import generate_text

    vocab = engine.vocab
    rv = ref_vocab(vmap)
    prompt = prompt_ids(interleaved_record(), vocab=vocab, tokenizer=engine.tokenizer)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, vocab.vocab_size, generator=g) - 8.0  # a tail without ties
    favourites = [*dict.fromkeys(prompt[1:4]), *[t for t in rv["text"][200:203] if t not in prompt]]
    logits[0, favourites] = torch.tensor([8.0, 7.6, 7.2, 7.0, 6.8, 6.6][: len(favourites)])
    logits[0, [vocab.sep, vocab.eos]] = torch.tensor([9.0, 1.0])
    want = ref_text_probs(logits, torch.tensor([prompt]), rv, img=False, max_seq_len=4096, block=66)[0]
    n = 200
    res = generate_text(
        FixedLogits(engine.runner, logits),
        [prompt] * n,
        budgets=[1] * n,
        masks=engine.masks,
        seeds=torch.arange(n),
        repetition_penalty=1.2,
        temperature=1.0,
        top_p=0.9,
    )
    first = torch.tensor([r.tokens[0] if r.tokens else vocab.eos for r in res])
    freq = torch.bincount(first, minlength=vocab.vocab_size).double() / n
    assert freq[want == 0].sum() == 0 and freq[vocab.sep] == 0
    assert (freq - want).abs().max() < 0.13  # ~4 standard errors at n = 200
    # without the penalty the prompt's tokens would be drawn far more often: the test can tell
    plain = ref_text_probs(
        logits, torch.tensor([prompt]), rv, img=False, max_seq_len=4096, block=66, penalty=1.0
    )
    assert (plain[0] - want).abs().max() > 0.15
