"""The project's head + loss: packed == alone, image tokens are ordinary targets, chunked == whole."""

from __future__ import annotations

import pytest
import torch

from medmax_cli.model.attention import (
    dense_document_mask,
    document_ids_from_boundaries,
    packed_attention_mask,
    position_ids_from_document_ids,
)
from medmax_cli.model.loss import chunked_cross_entropy, lm_loss, shift_targets, stock_loss_sum
from medmax_cli.text.vocab import ChameleonVocab


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from medmax_cli.model.load import load_model

    m = load_model(tiny_model_dir, dtype="float32", attn_implementation="sdpa")
    m.train()  # dropout is 0 in the tiny config; train mode checks the path used for training
    return m


@pytest.fixture(scope="module")
def vocab(tiny_model_dir):
    return ChameleonVocab.from_model_dir(tiny_model_dir)


def _sample(gen, vocab, n_text, n_image=0):
    """[BOS] text [SEP] answer (+ an image block) [EOS]; labels on the answer part only."""
    codes = torch.from_numpy(vocab.image_code_to_id.astype("int64"))
    text = torch.randint(9000, 9500, (n_text,), generator=gen)
    answer = [torch.randint(9000, 9500, (3,), generator=gen)]
    if n_image:
        img = codes[torch.randint(0, vocab.n_codes, (n_image,), generator=gen)]
        answer.append(torch.cat([torch.tensor([vocab.boi]), img, torch.tensor([vocab.eoi])]))
    prompt = torch.cat([torch.tensor([vocab.bos]), text, torch.tensor([vocab.sep])])
    resp = torch.cat([*answer, torch.tensor([vocab.eos])])
    ids = torch.cat([prompt, resp])
    labels = torch.cat([torch.full_like(prompt, -100), resp])
    return ids, labels


def test_position_ids_and_mask_follow_boundaries():
    doc = document_ids_from_boundaries([0, 3, 5], 7)[None]  # two samples + 2 padding
    assert doc.tolist() == [[0, 0, 0, 1, 1, -1, -1]]
    assert position_ids_from_document_ids(doc).tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    mask = dense_document_mask(doc)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False, False]
    assert mask[2].tolist() == [True, True, True, False, False, False, False]
    assert mask[6].tolist() == [False] * 6 + [True]  # padding sees itself only: no empty softmax row
    eager = packed_attention_mask(doc, "eager", torch.float32)
    assert eager[0, 0, 4, 0] == torch.finfo(torch.float32).min and eager[0, 0, 4, 3] == 0


def test_seam_is_never_a_target():
    labels = torch.tensor([[-100, 5, 6, 7, 8]])
    doc = torch.tensor([[0, 0, 0, 1, 1]])
    assert shift_targets(labels, doc).tolist() == [[5, 6, -100, 8, -100]]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_row_loss_equals_sum_of_samples_alone(model, vocab, impl):
    gen = torch.Generator().manual_seed(0)
    samples = [_sample(gen, vocab, n, k) for n, k in ((5, 0), (9, 8), (3, 0), (12, 4))]
    ids = torch.cat([s[0] for s in samples])
    labels = torch.cat([s[1] for s in samples])
    bounds = [0]
    for s in samples:
        bounds.append(bounds[-1] + len(s[0]))
    T = len(ids) + 6  # plus padding
    input_ids = torch.full((1, T), vocab.pad)
    input_ids[0, : len(ids)] = ids
    lab = torch.full((1, T), -100)
    lab[0, : len(ids)] = labels
    doc = document_ids_from_boundaries(bounds, T)[None]
    pos = position_ids_from_document_ids(doc)
    model.set_attn_implementation(impl)
    try:
        packed, n_packed = lm_loss(
            model,
            input_ids,
            lab,
            position_ids=pos,
            document_ids=doc,
            attention_mask=packed_attention_mask(doc, impl, torch.float32),
            chunk_size=7,
        )
        alone = [lm_loss(model, i[None], lb[None]) for i, lb in samples]
    finally:
        model.set_attn_implementation("sdpa")
    total = sum(a for a, _ in alone)
    assert int(n_packed) == sum(int(n) for _, n in alone) > 0
    torch.testing.assert_close(packed, total, rtol=1e-5, atol=1e-5)


def test_image_token_labels_give_finite_loss_and_grads(model, vocab):
    gen = torch.Generator().manual_seed(1)
    ids, labels = _sample(gen, vocab, 4, n_image=8)
    ids, labels = ids[None], labels[None]
    assert torch.isinf(stock_loss_sum(model, ids, labels))  # the stock head masks image logits
    model.zero_grad()
    loss, n = lm_loss(model, ids, labels)
    assert torch.isfinite(loss) and int(n) == int((labels[:, 1:] != -100).sum())
    loss.backward()
    grads = [p.grad for p in model.model.layers.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.lm_head.weight.grad[torch.from_numpy(vocab.image_code_to_id.astype("int64"))].abs().sum() > 0
    model.zero_grad()


def test_chunked_equals_unchunked_loss_and_grads():
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 37, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 300, (2, 37), generator=gen)
    targets[0, :5] = -100
    results = []
    for chunk in (0, 8, 1024):
        loss, n = chunked_cross_entropy(hidden, weight, targets, chunk_size=chunk)
        gh, gw = torch.autograd.grad(loss, (hidden, weight))
        results.append((loss, n, gh, gw))
    ref = torch.nn.functional.cross_entropy(
        hidden.reshape(-1, 16) @ weight.t(), targets.reshape(-1), reduction="sum"
    )
    for loss, n, gh, gw in results:
        assert int(n) == 69
        torch.testing.assert_close(loss, ref.float(), rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(gh, results[0][2])
        torch.testing.assert_close(gw, results[0][3])


def test_no_supervised_tokens_gives_zero_with_a_graph():
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    loss, n = chunked_cross_entropy(hidden, torch.randn(10, 8), torch.full((1, 4), -100))
    assert int(n) == 0 and float(loss.detach()) == 0.0
    loss.backward()
