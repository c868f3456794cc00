"""`finetune --loss-weighting`: per-sample weighting (MedMax's objective) is exact across packing,
micro-batches and gradient accumulation; `token` keeps the per-token mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmax_cli.model.loss import sample_weights, shift_targets
from medmax_cli.pack.reader import collate_packed
from medmax_cli.pack.shards import PackedRow
from medmax_cli.text.vocab import ChameleonVocab
from medmax_cli.train.config import ConfigError, build_config, resume_mismatches
from medmax_cli.train.data import supervised_samples, supervised_tokens


@pytest.fixture(scope="module")
def vocab(tiny_model_dir):
    return ChameleonVocab.from_model_dir(tiny_model_dir)


def _samples(vocab):
    """A 2-token VQA-like answer, a long image answer and a middle one: (ids, labels) int32 each."""
    rng = np.random.default_rng(0)
    out = []
    for n_prompt, answer in (
        (6, [9001, vocab.eos]),  # short answer: 2 supervised tokens
        (4, [vocab.boi, *vocab.image_code_to_id[rng.integers(0, vocab.n_codes, 40)], vocab.eoi, vocab.eos]),
        (9, [*rng.integers(9000, 9100, 7).tolist(), vocab.eos]),
    ):
        prompt = [vocab.bos, *rng.integers(9000, 9100, n_prompt).tolist(), vocab.sep]
        ids = np.array(prompt + list(answer), np.int32)
        labels = np.array([-100] * len(prompt) + list(answer), np.int32)
        out.append((ids, labels))
    return out


def _row(samples):
    bounds = np.cumsum([0] + [len(i) for i, _ in samples]).astype(np.int32)
    return PackedRow(
        np.concatenate([i for i, _ in samples]), np.concatenate([lb for _, lb in samples]), bounds
    )


def _module(tiny_model_dir, weighting):
    from medmax_cli.train.recipe import Env, setup_model

    cfg = build_config(
        None,
        {
            "shards": "x",
            "output": "y",
            "full": True,  # every LM weight gets a gradient: the strictest comparison
            "precision": "fp32",
            "attn_implementation": "sdpa",
            "loss_chunk": 16,  # several chunks, so the weights travel through the checkpointed head
            "loss_weighting": weighting,
        },
    )
    module = setup_model(cfg, str(tiny_model_dir), Env(0, 1, 0, torch.device("cpu")))
    module.model.eval()  # no dropout: the two layouts must see the same function
    return module


def _step_grads(module, micro_batches, weighting):
    """One optimizer step's gradients, as the recipe computes them: the global divisor first."""
    count = supervised_samples if weighting == "sample" else supervised_tokens
    divisor = float(sum(count(b) for b in micro_batches))
    module.zero_grad(set_to_none=True)
    total = 0.0
    for mb in micro_batches:
        loss_sum, _ = module(**mb)
        (loss_sum / divisor).backward()
        total += float(loss_sum.detach())
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return total / divisor, grads


def test_sample_weights_count_each_sample_once():
    labels = torch.tensor(
        [[-100, 5, 6, -100, 7, 8, 9, 9, -100], [-100, -100, -100, 3, 4, -100, -100, -100, -100]]
    )
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, -1], [0, 0, 0, 1, 1, 2, 2, -1, -1]])
    # row 0: sample 0 has 2 targets, sample 1 has 4; row 1: the seam drops label 3, sample 1 keeps 4
    targets = shift_targets(labels, docs)
    weights, n = sample_weights(targets, docs)
    assert n == 3
    assert weights[0].tolist() == pytest.approx([0.5, 0.5, 0, 0.25, 0.25, 0.25, 0.25, 0, 0])
    assert weights[1].tolist() == pytest.approx([0, 0, 0, 1.0, 0, 0, 0, 0, 0])
    # every counted sample's weights sum to 1
    assert float(weights.sum()) == pytest.approx(3.0)


def test_packed_row_gradient_equals_one_sample_per_row(tiny_model_dir, vocab):
    """Packed in one row == each sample alone in its own micro-batch (grad accumulation), to 1e-5,
    under sample weighting; the loss is the mean of the per-sample mean losses."""
    samples = _samples(vocab)
    packed = [collate_packed([_row(samples)], vocab.pad)]
    one_per_row = [collate_packed([_row([s])], vocab.pad, 64) for s in samples]  # padded rows too
    assert [supervised_samples(b) for b in packed] == [3]
    assert [supervised_tokens(b) for b in one_per_row] == [2, 43, 8]

    module = _module(tiny_model_dir, "sample")
    loss_packed, g_packed = _step_grads(module, packed, "sample")
    loss_rows, g_rows = _step_grads(module, one_per_row, "sample")
    assert g_packed.keys() == g_rows.keys() and len(g_packed) > 10
    for name in g_packed:
        torch.testing.assert_close(g_packed[name], g_rows[name], rtol=0, atol=1e-5, msg=name)
    assert loss_packed == pytest.approx(loss_rows, rel=1e-6)

    # the objective is MedMax's: each sample's mean token loss, then the mean over samples
    from medmax_cli.model.loss import lm_loss

    with torch.no_grad():
        means = []
        for ids, labels in samples:
            s, n = lm_loss(
                module.model, torch.from_numpy(ids)[None].long(), torch.from_numpy(labels)[None].long()
            )
            means.append(float(s) / int(n))
    assert loss_packed == pytest.approx(sum(means) / 3, rel=1e-5)

    # and it is not the token-weighted objective (the test would notice the old behaviour)
    token = _module(tiny_model_dir, "token")
    loss_token, g_token = _step_grads(token, packed, "token")
    assert loss_token != pytest.approx(loss_packed, rel=1e-3)
    name = next(iter(g_packed))
    assert not torch.allclose(g_token[name], g_packed[name], atol=1e-5)


def test_config_choices_and_resume_lock():
    assert build_config(None, {}).loss_weighting == "sample"
    assert build_config(None, {}).adapter_dtype == "fp32"
    with pytest.raises(ConfigError, match="loss_weighting"):
        build_config(None, {"loss_weighting": "tokens"})
    with pytest.raises(ConfigError, match="adapter_dtype"):
        build_config(None, {"adapter_dtype": "fp16"})
    cfg = build_config(None, {})
    assert resume_mismatches({**cfg.to_dict(), "loss_weighting": "token"}, cfg)
    old = {k: v for k, v in cfg.to_dict().items() if k != "loss_weighting"}  # a run from before the option
    assert any("loss_weighting" in m for m in resume_mismatches(old, cfg))
    assert not resume_mismatches(old, build_config(None, {"loss_weighting": "token"}))


def test_bf16_adapters_and_the_dropout_free_path(tiny_model_dir, vocab):
    """--adapter-dtype bf16 makes every trainable weight bf16; --lora-dropout 0 puts nn.Identity (no
    dropout output or mask kept for backward) in every adapter; a step still learns."""
    from medmax_cli.train.recipe import Env, setup_model

    cfg = build_config(
        None,
        {
            "shards": "x",
            "output": "y",
            "adapter_dtype": "bf16",
            "lora_dropout": 0.0,
            "attn_implementation": "sdpa",
        },
    )
    module = setup_model(cfg, str(tiny_model_dir), Env(0, 1, 0, torch.device("cpu")))
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.bfloat16}
    dropouts = [m for n, m in module.named_modules() if n.endswith("lora_dropout.default")]
    assert dropouts and all(isinstance(m, torch.nn.Identity) for m in dropouts)
    batch = collate_packed([_row(_samples(vocab))], vocab.pad)
    loss_sum, _ = module(**batch)
    (loss_sum / supervised_samples(batch)).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in trainable)
    assert torch.isfinite(loss_sum) and any(float(p.grad.abs().sum()) > 0 for p in trainable)
    fp32 = setup_model(
        build_config(None, {"shards": "x", "output": "y"}),
        str(tiny_model_dir),
        Env(0, 1, 0, torch.device("cpu")),
    )
    assert {p.dtype for p in fp32.parameters() if p.requires_grad} == {torch.float32}
    assert any(
        isinstance(m, torch.nn.Dropout) for n, m in fp32.named_modules() if n.endswith("lora_dropout.default")
    )
