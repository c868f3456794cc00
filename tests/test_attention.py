"""Packed-row masks: the FlexAttention document mask (CUDA path) equals the dense SDPA mask (CPU path)."""

from __future__ import annotations

import warnings

import pytest
import torch

from medmax_cli.model.attention import (
    default_attn_implementation,
    dense_document_mask,
    document_ids_from_boundaries,
    flex_document_mask,
    packed_attention_mask,
    position_ids_from_document_ids,
)


def test_flex_block_mask_matches_dense_mask():
    from torch.nn.attention.flex_attention import flex_attention

    doc = torch.stack(
        [
            document_ids_from_boundaries([0, 50, 130, 200], 256),  # 3 samples + padding
            document_ids_from_boundaries([0, 256], 256),
        ]
    )  # one full-row sample
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, 16, generator=gen) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex runs uncompiled (eager) on CPU and says so
        out = flex_attention(q, k, v, block_mask=flex_document_mask(doc))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense_document_mask(doc))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert isinstance(packed_attention_mask(doc, "sdpa", torch.float32), torch.Tensor)


def test_positions_restart_per_sample_and_device_default():
    doc = torch.stack([document_ids_from_boundaries([0, 2, 5], 6), document_ids_from_boundaries([0, 6], 6)])
    assert position_ids_from_document_ids(doc).tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]]
    assert default_attn_implementation("cpu") == "sdpa"
    assert default_attn_implementation("cuda") == "flex_attention"


@pytest.mark.gpu
def test_model_loss_with_flex_equals_sdpa_on_cuda(tiny_model_dir):
    from medmax_cli.model.load import load_model
    from medmax_cli.model.loss import lm_loss

    model = load_model(tiny_model_dir, dtype="float32", device="cuda", attn_implementation="sdpa")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(8712, 9500, (2, 256), generator=gen).cuda()
    labels = ids.clone()
    labels[:, :10] = -100
    doc = torch.stack(
        [document_ids_from_boundaries([0, 50, 130, 200], 256), document_ids_from_boundaries([0, 256], 256)]
    ).cuda()
    labels[doc < 0] = -100
    pos = position_ids_from_document_ids(doc)
    losses = []
    for impl in ("sdpa", "flex_attention"):
        model.set_attn_implementation(impl)
        mask = packed_attention_mask(doc, impl, torch.float32)
        losses.append(lm_loss(model, ids, labels, position_ids=pos, attention_mask=mask, document_ids=doc)[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-3)
