"""medmax generate on the tiny model: decode loop vs a naive reference, batching, images, CFG,
interleaving, seeds, context limits, adapters and the real command in a pipe."""

from __future__ import annotations

import dataclasses
import io
import json
import shlex
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from medmax_cli.generate.cfg import combine_cfg, generate_images, image_only_prompt  # noqa: E402
from medmax_cli.generate.decode import generate_text  # noqa: E402
from medmax_cli.generate.interleave import Row, Settings, run_rows  # noqa: E402
from medmax_cli.generate.stage import GenerateConfig, generate_stage, setup_engine  # noqa: E402
from medmax_cli.records import RecordError, validate  # noqa: E402
from medmax_cli.streams import ErrorPolicy, parse_jsonl  # noqa: E402

QUESTIONS = [
    "Is there a lesion in the liver?",
    "Which organ is shown in this axial CT slice of the abdominal phantom?",
    "Describe the chest radiograph.",
]


def instance(rid: str, text: str, task: str = "vqa", images: list | None = None, image_first: bool = False):
    content = [{"text": text}]
    if images:
        content = [{"image": 0}, *content] if image_first else [*content, {"image": 0}]
    return {
        "id": rid,
        "task": task,
        "source": "test",
        "license": "CC0",
        "images": images or [],
        "turns": [{"role": "user", "content": content}, {"role": "assistant", "content": [{"text": "gold"}]}],
    }


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    from medmax_cli.media import MediaStore

    media = MediaStore(tmp_path_factory.mktemp("gen-media"))
    return setup_engine(tiny_model_dir, device="cpu", dtype="float32", media=media)


def prompts_of(engine, texts):
    from medmax_cli.generate.prompt import prompt_ids

    return [
        prompt_ids(instance(f"r{i}", t), vocab=engine.vocab, tokenizer=engine.tokenizer)
        for i, t in enumerate(texts)
    ]


def text_allowed(vocab, size):
    """The allowed set, built independently of processors.py: text tokens + EOS, nothing else."""
    allowed = torch.zeros(size, dtype=torch.bool)
    allowed[: len(vocab.text_token_mask)] = torch.from_numpy(vocab.text_token_mask.copy())
    for tok in (vocab.bos, vocab.pad, vocab.sep, vocab.boi, vocab.eoi, vocab.image_placeholder):
        allowed[tok] = False
    allowed[vocab.eos] = True
    return allowed


@torch.no_grad()
def naive_greedy(model, vocab, prompt, n, penalty=1.2):
    """Full recompute every step through the stock modules, no cache."""
    from transformers import RepetitionPenaltyLogitsProcessor

    proc = RepetitionPenaltyLogitsProcessor(penalty)
    allowed = text_allowed(vocab, model.lm_head.weight.shape[0])
    ids = torch.tensor([prompt])
    out = []
    for _ in range(n):
        hidden = model.model(input_ids=ids).last_hidden_state[:, -1]
        logits = proc(ids, model.lm_head(hidden).float())
        logits = logits.masked_fill(~allowed, float("-inf"))
        tok = int(logits.argmax(-1))
        if tok == vocab.eos:
            break
        out.append(tok)
        ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
    return out


def text_rows(engine, prompts, n, **kw):
    res = generate_text(
        engine.runner,
        prompts,
        budgets=[n] * len(prompts),
        masks=engine.masks,
        seeds=torch.arange(len(prompts)) + 7,
        **kw,
    )
    return [r.tokens for r in res]


def test_greedy_text_equals_naive_reference(engine):
    prompts = prompts_of(engine, QUESTIONS[:2])
    ours = text_rows(engine, prompts, 12)
    for prompt, got in zip(prompts, ours, strict=True):
        assert got == naive_greedy(engine.model, engine.vocab, prompt, 12)
        assert all(engine.vocab.is_text([t]).all() for t in got)


def test_batched_equals_one_by_one(engine):
    prompts = prompts_of(engine, QUESTIONS)
    assert len({len(p) for p in prompts}) == 3  # left padding really happens
    for kw in ({}, {"temperature": 1.0, "top_p": 0.9}):
        batched = generate_text(
            engine.runner,
            prompts,
            budgets=[10, 10, 10],
            masks=engine.masks,
            seeds=torch.tensor([1, 2, 3]),
            **kw,
        )
        alone = [
            generate_text(
                engine.runner, [p], budgets=[10], masks=engine.masks, seeds=torch.tensor([s]), **kw
            )[0]
            for p, s in zip(prompts, [1, 2, 3], strict=True)
        ]
        assert [r.tokens for r in batched] == [r.tokens for r in alone]


def test_static_step_matches_eager_step(engine):
    """The shape-static step that --compile captures computes the same as the eager step."""
    runner = engine.runner
    prompts = prompts_of(engine, QUESTIONS[:2])
    from medmax_cli.generate.decode import left_pad

    ids, attn = left_pad(prompts, engine.vocab.pad, "cpu")
    outs = []
    for static in (False, True):
        cache = runner.new_cache(2, ids.shape[1] + 4)
        runner.prefill(ids, attn, cache)
        tok = torch.tensor([engine.vocab.eos + 9000, engine.vocab.eos + 9001])
        pos = attn.sum(-1)
        if static:
            h = runner._step_static(tok, pos, torch.tensor([ids.shape[1]]), cache)
        else:
            h = runner.step(tok, pos, ids.shape[1], cache)
        outs.append(h)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_static_step_traces_as_one_graph(engine):
    """--compile --fuse hands the static step to torch.compile: it must trace whole (no graph break)."""
    from medmax_cli.generate.decode import left_pad

    runner = engine.runner
    ids, attn = left_pad(prompts_of(engine, QUESTIONS[:2]), engine.vocab.pad, "cpu")
    tok, pos, slot = torch.tensor([9100, 9101]), attn.sum(-1), ids.shape[1]
    outs = []
    for compiled in (False, True):
        cache = runner.new_cache(2, ids.shape[1] + 2)
        runner.prefill(ids, attn, cache)
        fn = runner._step_static
        if compiled:
            fn = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=False)
        with torch.no_grad():
            outs.append(fn(tok, pos, torch.tensor([slot]), cache))
    torch.testing.assert_close(outs[0], outs[1])


def test_image_mode_yields_framed_codes_and_png(engine):
    rec = instance("img1", "Draw an axial CT slice of the liver.", task="image_generation")
    (out,) = list(generate_stage([rec], engine=engine, config=GenerateConfig(mode="auto")))
    validate(out)
    tpi = engine.tokens_per_image
    assert out["generation"]["mode"] == "image" and out["generation"]["new_tokens"] == tpi + 2
    assert out["prediction"] == [{"image": 0}]
    ref = out["images"][0]
    assert len(ref["tokens"]) == tpi and all(0 <= c < engine.vocab.n_codes for c in ref["tokens"])
    assert ref["vq"]
    from PIL import Image

    side = int(tpi**0.5) * 4  # tiny VQ: 4x downsampling
    with Image.open(engine.media.path_of(ref)) as im:
        assert im.size == (side, side)
    # the context the model saw: prompt, BOI, exactly tpi codes, EOI
    row = Row(prompt=[engine.vocab.bos, 9000], mode="image", seed=1, budget=tpi + 2)
    run_rows(
        engine.runner,
        [row],
        masks=engine.masks,
        code_ids=engine.code_ids,
        vocab=engine.vocab,
        settings=Settings(),
    )
    block = row.context[2:]
    assert block[0] == engine.vocab.boi and block[-1] == engine.vocab.eoi and len(block) == tpi + 2
    assert engine.vocab.is_image_token(block[1:-1]).all()


def test_cfg_combines_three_rows():
    c, i, u = (
        torch.tensor([[1.0, 2.0, 3.0]]),
        torch.tensor([[0.5, 0.0, 1.0]]),
        torch.tensor([[0.0, 1.0, 0.0]]),
    )
    got = combine_cfg(c, i, u, cfg_text=3.0, cfg_image=1.2)
    want = torch.tensor([[0.6 + 1.5, 1 - 1.2 + 6.0, 1.2 + 6.0]])
    torch.testing.assert_close(got, want)
    assert torch.equal(combine_cfg(c, i, u, cfg_text=1.0, cfg_image=1.0), c)  # weights 1: plain conditional
    codes = frozenset(range(4, 8196))
    ids = [0, 9050, 8197, 4, 5, 8196, 9060, 2]
    assert image_only_prompt(ids, bos=0, boi=8197, eoi=8196, image_ids=codes) == [0, 8197, 4, 5, 8196]


@torch.no_grad()
def test_first_image_code_is_guided_argmax_of_three_rows(engine):
    """Greedy first code = argmax over codes of u + 1.2 (i - u) + 3 (c - i), rows built as specified."""
    vocab, model = engine.vocab, engine.model
    img = [vocab.boi, *engine.code_ids[torch.arange(engine.tokens_per_image) % 50].tolist(), vocab.eoi]
    full = [vocab.bos, *prompts_of(engine, ["a chest radiograph"])[0][1:], *img, 9100, vocab.sep]
    rows = {"c": full + [vocab.boi], "i": [vocab.bos, *img, vocab.boi], "u": [vocab.bos, vocab.boi]}
    logit = {}
    for k, ids in rows.items():
        h = model.model(input_ids=torch.tensor([ids])).last_hidden_state[:, -1]
        logit[k] = model.lm_head(h).float()[:, engine.code_ids]
    want = int((logit["u"] + 1.2 * (logit["i"] - logit["u"]) + 3.0 * (logit["c"] - logit["i"])).argmax())
    codes = generate_images(
        engine.runner,
        [full],
        code_ids=engine.code_ids,
        tokens_per_image=2,
        bos=vocab.bos,
        boi=vocab.boi,
        eoi=vocab.eoi,
        pad=vocab.pad,
        seeds=torch.tensor([0]),
        temperature=0.0,
    )
    assert int(codes[0, 0]) == want


class BoiAt:
    """Runner proxy adding a large bias to `token` (BOI by default) on the n-th full-vocabulary logits
    call (every call when n is None)."""

    def __init__(self, runner, boi, n):
        self.runner, self.boi, self.n, self.calls = runner, boi, n, 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def logits(self, hidden, code_ids=None):
        out = self.runner.logits(hidden, code_ids)
        if code_ids is None:
            self.calls += 1
            if self.n is None or self.calls == self.n:
                out[:, self.boi] += 1e4
        return out


def test_min_new_tokens_holds_eos_back(engine):
    prompts = prompts_of(engine, QUESTIONS[:2])
    eager_eos = BoiAt(engine.runner, engine.vocab.eos, None)  # EOS wins every step it is allowed
    kw = dict(budgets=[10, 10], masks=engine.masks, seeds=torch.tensor([1, 2]))
    assert [r.stop for r in generate_text(eager_eos, prompts, **kw)] == ["eos", "eos"]
    assert [r.tokens for r in generate_text(eager_eos, prompts, **kw)] == [[], []]
    res = generate_text(eager_eos, prompts, min_new=[3, 5], **kw)
    assert [len(r.tokens) for r in res] == [3, 5] and [r.stop for r in res] == ["eos", "eos"]


def test_interleaved_text_image_text(engine):
    vocab = engine.vocab
    tpi = engine.tokens_per_image
    (prompt,) = prompts_of(engine, ["Explain the finding with a figure."])
    row = Row(prompt=prompt, mode="interleaved", seed=3, budget=3 + tpi + 2 + 5)
    run_rows(
        BoiAt(engine.runner, vocab.boi, 3),
        [row],
        masks=engine.masks,
        code_ids=engine.code_ids,
        vocab=vocab,
        settings=Settings(),
    )
    kinds = [k for k, _ in row.segments]
    assert kinds == ["text", "image", "text"]
    assert len(row.segments[0][1]) == 2 and len(row.segments[1][1]) == tpi
    gen = row.context[len(prompt) :]
    assert gen[2] == vocab.boi and gen[3 + tpi] == vocab.eoi
    assert row.used == len(gen) <= row.budget


def test_interleaved_never_starts_an_image_without_room(engine):
    vocab = engine.vocab
    tpi = engine.tokens_per_image
    (prompt,) = prompts_of(engine, ["Explain the finding with a figure."])
    # budget one short of a whole image block: BOI stays suppressed even with a huge bias
    row = Row(prompt=prompt, mode="interleaved", seed=3, budget=tpi + 1)
    run_rows(
        BoiAt(engine.runner, vocab.boi, 1),
        [row],
        masks=engine.masks,
        code_ids=engine.code_ids,
        vocab=vocab,
        settings=Settings(),
    )
    assert [k for k, _ in row.segments] == ["text"] and vocab.boi not in row.context
    # the same with the context as the limit: a model whose context leaves < tpi + 2 positions
    small = dataclasses.replace(engine.masks, context=len(prompt) + tpi + 1)
    row = Row(prompt=prompt, mode="interleaved", seed=3, budget=tpi + 1)
    run_rows(
        BoiAt(engine.runner, vocab.boi, 1),
        [row],
        masks=small,
        code_ids=engine.code_ids,
        vocab=vocab,
        settings=Settings(),
    )
    assert vocab.boi not in row.context
    # and with room, the same bias does open an image
    row = Row(prompt=prompt, mode="interleaved", seed=3, budget=tpi + 2)
    run_rows(
        BoiAt(engine.runner, vocab.boi, 1),
        [row],
        masks=engine.masks,
        code_ids=engine.code_ids,
        vocab=vocab,
        settings=Settings(),
    )
    assert [k for k, _ in row.segments] == ["image"]


def test_image_prompt_too_long_is_rejected(engine):
    short = dataclasses.replace(engine, context=engine.tokens_per_image + 12)
    long_text = " ".join(["lesion"] * 30)
    recs = [
        instance("long", long_text, task="image_generation"),
        instance("ok", "liver", task="image_generation"),
    ]
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects)
    outs = list(generate_stage(recs, engine=short, config=GenerateConfig(), policy=policy))
    assert [o["id"] for o in outs] == ["ok"]
    entry = json.loads(rejects.getvalue())
    assert entry["record_id"] == "long" and "prompt too long for an image" in entry["reason"]
    with pytest.raises(RecordError, match="too long for an image"):
        list(generate_stage(recs[:1], engine=short, config=GenerateConfig()))


def test_same_seed_same_output(engine):
    recs = [instance("s1", QUESTIONS[0]), instance("s2", "Draw a liver.", task="image_generation")]

    def run(seed):
        cfg = GenerateConfig(seed=seed, temperature=1.0, max_new_tokens=8)
        return [
            (o["prediction"], [i.get("tokens") for i in o["images"]])
            for o in generate_stage(recs, engine=engine, config=cfg)
        ]

    first = run(5)
    assert run(5) == first
    assert run(6) != first


def test_prompt_formats_and_auto_modes(engine):
    from medmax_cli.generate.prompt import prompt_ids, resolve_mode

    rec = instance("f", QUESTIONS[0])
    sft = prompt_ids(rec, vocab=engine.vocab, tokenizer=engine.tokenizer, prompt_format="sft")
    raw = prompt_ids(rec, vocab=engine.vocab, tokenizer=engine.tokenizer, prompt_format="raw")
    assert sft[0] == raw[0] == engine.vocab.bos and sft[-1] == engine.vocab.sep and sft[:-1] == raw
    assert "gold" not in engine.tokenizer.decode(
        sft
    )  # the final assistant turn is the answer, not the prompt
    modes = {
        t: resolve_mode(instance("m", "x", task=t), "auto")
        for t in ("vqa", "captioning", "image_generation", "interleaved", "visual_chat")
    }
    assert modes == {
        "vqa": "text",
        "captioning": "text",
        "image_generation": "image",
        "interleaved": "interleaved",
        "visual_chat": "text",
    }
    report = instance("r", "Draw the finding.", task="report_understanding")
    report["images"] = [{"tokens": [1, 2], "vq": "x"}]
    report["turns"][1]["content"] = [{"image": 0}]
    assert resolve_mode(report, "auto") == "image" and resolve_mode(report, "text") == "text"


def test_prompt_image_without_tokens_is_rejected(engine):
    rec = instance("noimg", "What is shown?", images=[{"sha256": "0" * 64, "path": "x.png"}])
    with pytest.raises(RecordError, match="no VQ tokens"):
        list(generate_stage([rec], engine=engine, config=GenerateConfig()))


def test_prompt_image_tokens_are_used(engine):
    tokens = list(range(engine.tokens_per_image))
    from medmax_cli.generate.stage import vq_fingerprint

    vq = vq_fingerprint(engine.model_dir)  # tokens of another codebook are refused
    with_img = instance("im", "What is shown?", images=[{"tokens": tokens, "vq": vq}])
    (out,) = generate_stage([with_img], engine=engine, config=GenerateConfig(max_new_tokens=6))
    (plain,) = generate_stage(
        [instance("im", "What is shown?")], engine=engine, config=GenerateConfig(max_new_tokens=6)
    )
    assert out["generation"]["mode"] == "text" and out["prediction"] != plain["prediction"]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from medmax_cli.model.load import load_model

    torch.manual_seed(0)
    model = load_model(tiny_model_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("run") / "run"
    peft_model.save_pretrained(out / "adapter")
    return out


def test_adapter_changes_output_and_merged_equals_unmerged(engine, tiny_model_dir, adapter_dir):
    recs = [instance("a1", QUESTIONS[0]), instance("a2", QUESTIONS[1])]
    cfg = GenerateConfig(max_new_tokens=10)
    base = [o["prediction"] for o in generate_stage(recs, engine=engine, config=cfg)]
    merged_engine = setup_engine(tiny_model_dir, adapter=adapter_dir, device="cpu", dtype="float32")
    merged = [o["prediction"] for o in generate_stage(recs, engine=merged_engine, config=cfg)]
    unmerged_engine = setup_engine(
        tiny_model_dir, adapter=adapter_dir / "adapter", merge=False, device="cpu", dtype="float32"
    )
    unmerged = [o["prediction"] for o in generate_stage(recs, engine=unmerged_engine, config=cfg)]
    assert merged != base
    assert unmerged == merged
    # image steps read only the code columns of the head: the unmerged lm_head LoRA must count there too
    from medmax_cli.generate.decode import left_pad

    ids, attn = left_pad(prompts_of(engine, QUESTIONS[:1]), engine.vocab.pad, "cpu")
    heads = []
    for eng in (merged_engine, unmerged_engine, engine):
        hidden = eng.runner.prefill(ids, attn, eng.runner.new_cache(1, ids.shape[1]))
        heads.append(eng.runner.logits(hidden, eng.code_ids))
    assert not unmerged_engine.runner.plain_head
    torch.testing.assert_close(heads[0], heads[1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(heads[0], heads[2], atol=1e-2)


def test_command_in_a_pipe(tiny_model_dir, tmp_path, adapter_dir, medmax_inproc):
    from conftest import SAMPLE
    from medmax_cli.media import MediaStore

    media = MediaStore(tmp_path / "media")
    figure = media.import_file(SAMPLE / "jats" / "PMC9000001_F1.png")  # no tokens: encoded on the way in
    recs = [
        instance("p1", QUESTIONS[0], images=[figure]),
        instance("p2", "Draw a liver.", task="image_generation"),
        instance("p3", "Draw a lung.", task="image_generation"),  # left out by --limit 1
        instance("p4", "Describe.", task="captioning"),  # left out by --task
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    args = [
        "generate", "--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--max-new-tokens", "4",
        "--batch-size", "2", "--task", "vqa", "--task", "image_generation", "--limit", "1",
        "--preset", "medmax-eval", "--media-dir", str(media.root), "-q", str(src),
    ]  # fmt: skip
    cmd = (
        f"{shlex.join([sys.executable, '-m', 'medmax_cli', *args])} | tee {tmp_path}/out.jsonl "
        f"| {sys.executable} -m medmax_cli validate --media-dir {media.root} --json"
    )
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    summary = json.loads(res.stdout)
    assert summary["records"] == 2 and summary["invalid"] == 0 and summary["kinds"] == {"prediction": 2}
    outs = parse_jsonl((tmp_path / "out.jsonl").read_bytes())
    assert [o["id"] for o in outs] == ["p1", "p2"]
    assert len(outs[0]["images"][0]["tokens"]) == outs[0]["generation"]["settings"]["tokens_per_image"]
    assert outs[1]["generation"]["settings"]["adapter"].endswith("adapter")
    assert [o["generation"]["preset"] for o in outs] == ["medmax-eval"] * 2
    assert outs[0]["generation"]["settings"]["temperature"] == 0.0  # greedy, as MedMax's eval scripts
    assert media.path_of(outs[1]["images"][-1]).is_file()
    # same input, model and seed, run again (in this process, same thread count): byte-identical
    # output (no timings in the records)
    again = medmax_inproc(*args)
    piped = (tmp_path / "out.jsonl").read_bytes().splitlines(keepends=True)
    # the tee'd pipe also holds the end-of-stream header and trailer (docs/records.md)
    assert again.stdout == b"".join(line for line in piped if not line.startswith(b'{"medmax_'))
    # a bad flag combination exits 2 before reading input
    bad = medmax_inproc("generate", "--no-merge", check=False)
    assert bad.returncode == 2 and b"--no-merge needs --adapter" in bad.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("fuse", [False, True])
def test_captured_step_matches_eager_on_cuda(tiny_model_dir, fuse):
    """--compile (CUDA graph of the static step, optionally inductor-fused) computes what the eager
    loop computes: the same tokens with the same kernels; with fused kernels, close hidden states."""
    from medmax_cli.generate.decode import Runner, left_pad

    eager = setup_engine(tiny_model_dir, device="cuda", dtype="float32")
    captured = Runner(eager.model, compile=True, fuse=fuse)
    assert captured.graphs
    prompts = prompts_of(eager, QUESTIONS)
    ids, attn = left_pad(prompts, eager.vocab.pad, "cuda")
    hidden = []
    for runner in (eager.runner, captured):
        cache = runner.new_cache(3, ids.shape[1] + 3)
        runner.prefill(ids, attn, cache)
        outs = []
        for t in range(3):  # step 0 captures, steps 1-2 replay
            tok = torch.full((3,), 9000 + t, device="cuda")
            outs.append(runner.step(tok, attn.sum(-1) + t, ids.shape[1] + t, cache).clone())
        hidden.append(torch.stack(outs))
    torch.testing.assert_close(hidden[1], hidden[0], rtol=1e-3, atol=1e-3)
    kw = dict(
        budgets=[24] * 3, masks=eager.masks, seeds=torch.tensor([1, 2, 3], device="cuda"), temperature=1.0
    )
    got = [r.tokens for r in generate_text(captured, prompts, **kw)]
    assert all(len(g) <= 24 for g in got)
    if not fuse:
        assert got == [r.tokens for r in generate_text(eager.runner, prompts, **kw)]
        v = eager.vocab
        img_kw = dict(
            code_ids=eager.code_ids,
            tokens_per_image=eager.tokens_per_image,
            bos=v.bos,
            boi=v.boi,
            eoi=v.eoi,
            pad=v.pad,
            seeds=torch.tensor([4], device="cuda"),
        )
        want = generate_images(eager.runner, prompts[:1], **img_kw)
        assert torch.equal(generate_images(captured, prompts[:1], **img_kw), want)
