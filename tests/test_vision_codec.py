"""The VQ-GAN codec on the tiny model: encoder determinism, both decoder key layouts, round trip."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from medmax_cli.vision.decoder import DecoderWeightsError, VQDecoder, codes_to_pil, load_vq_decoder
from medmax_cli.vision.encoder import VQEncoder, load_vq_model
from medmax_cli.vision.fingerprint import vq_fingerprint
from medmax_cli.vision.spec import VQSpec
from medmax_cli.vision.weights import read_vq_tensors


def _pixels(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1  # [n, 3, S, S] in [-1, 1]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return VQEncoder.from_model_dir(tiny_model_dir)


@pytest.fixture
def vq_dir(tiny_model_dir, tmp_path):
    """A model directory holding only config.json and the encoder-side VQ tensors (no decoder)."""
    out = tmp_path / "vq"
    out.mkdir()
    shutil.copy(tiny_model_dir / "config.json", out / "config.json")
    tensors = read_vq_tensors(tiny_model_dir, lambda k: not k.startswith("decoder."))
    save_file(
        {f"model.vqmodel.{k}": v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors")
    )
    return out


def _source_decoder(spec: VQSpec, seed: int = 1) -> VQDecoder:
    torch.manual_seed(seed)
    return VQDecoder(spec).eval()


def test_decoder_names_and_size_match_chameleon():
    full = VQDecoder(VQSpec())
    state = full.state_dict()
    n_decoder = sum(v.numel() for k, v in state.items() if k.startswith("decoder."))
    assert 38e6 < n_decoder < 41e6  # REFERENCE.md 3: decoder ~39M
    assert tuple(state["quantize.embedding.weight"].shape) == (8192, 256)
    assert tuple(state["post_quant_conv.weight"].shape) == (256, 256, 1, 1)
    assert tuple(state["decoder.conv_in.weight"].shape) == (512, 256, 3, 3)
    assert tuple(state["decoder.conv_out.weight"].shape) == (3, 128, 3, 3)
    for key in (
        "decoder.mid.attn_1.q.weight",
        "decoder.up.0.block.2.conv1.weight",
        "decoder.up.4.upsample.conv.weight",
        "decoder.up.3.block.0.nin_shortcut.weight",
        "decoder.up.1.block.0.nin_shortcut.weight",
        "decoder.norm_out.weight",
    ):
        assert key in state, key
    absent = (
        "decoder.up.0.upsample",
        "decoder.up.0.block.3",
        "decoder.up.2.block.0.nin_shortcut",
        "decoder.up.0.attn",
    )
    assert not any(k.startswith(absent) for k in state)


def test_encoder_is_deterministic_and_matches_stock(tiny_model_dir, encoder):
    spec = VQSpec.from_model_dir(tiny_model_dir)
    x = _pixels(4, spec.resolution)
    codes = encoder.encode(x)
    assert codes.dtype == torch.long and codes.shape == (4, spec.tokens_per_image)
    assert torch.equal(codes, encoder.encode(x))
    assert torch.equal(codes[1:2], encoder.encode(x[1:2]))  # batch composition does not matter
    with torch.no_grad():
        stock = load_vq_model(tiny_model_dir).encode(x).image_tokens.view(4, -1)
    assert torch.equal(codes, stock.long())
    assert 0 <= codes.min() and codes.max() < spec.num_embeddings


def test_codes_agree_with_the_full_model_get_image_tokens(tiny_model_dir, encoder):
    from transformers import ChameleonForConditionalGeneration

    from medmax_cli.text.vocab import ChameleonVocab

    spec = VQSpec.from_model_dir(tiny_model_dir)
    x = _pixels(2, spec.resolution, seed=3)
    model = ChameleonForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        ids = model.model.get_image_tokens(x).long()  # int32 on CPU: cast (REFERENCE.md 4)
    vocab = ChameleonVocab.from_model_dir(tiny_model_dir)
    assert torch.equal(torch.from_numpy(vocab.ids_to_codes(ids.numpy())), encoder.encode(x))


def test_bf16_agreement_with_fp32_is_reported(tiny_model_dir, encoder, record_property, capsys):
    spec = VQSpec.from_model_dir(tiny_model_dir)
    x = _pixels(8, spec.resolution, seed=1)
    bf16 = VQEncoder.from_model_dir(tiny_model_dir, dtype="bf16")
    agreement = (bf16.encode(x) == encoder.encode(x)).float().mean().item()
    record_property("bf16_fp32_code_agreement", agreement)
    with capsys.disabled():
        print(f"\n[vision] bf16 vs fp32 code agreement on the tiny VQ (8 random images): {agreement:.3f}")
    assert agreement > 0.8  # measured 0.94 on the tiny random VQ


def test_decoder_loads_the_original_vqgan_ckpt_layout(vq_dir):
    spec = VQSpec.from_model_dir(vq_dir)
    source = _source_decoder(spec)
    # one VQ-GAN: the checkpoint's codebook is the one the HF weights beside it hold (else refused)
    codebook = load_file(str(vq_dir / "model.safetensors"))["model.vqmodel.quantize.embedding.weight"]
    source.quantize.embedding.weight.data.copy_(codebook)
    state = dict(source.state_dict())
    state["encoder.conv_in.weight"] = torch.zeros(1)  # the rest of a VQ-GAN checkpoint is skipped
    state["loss.discriminator.main.0.weight"] = torch.zeros(1)
    torch.save({"state_dict": state, "global_step": 7}, vq_dir / "vqgan.ckpt")
    loaded = load_vq_decoder(vq_dir)
    codes = torch.randint(
        0, spec.num_embeddings, (2, spec.tokens_per_image), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(loaded.decode(codes), source.decode(codes))


def test_decoder_loads_the_anole_hf_layout(vq_dir):
    spec = VQSpec.from_model_dir(vq_dir)
    source = _source_decoder(spec, seed=2)
    main = load_file(str(vq_dir / "model.safetensors"))
    # Anole keeps the codebook and post_quant_conv beside the encoder, the decoder under model.vqmodel.decoder.
    source.quantize.embedding.weight.data.copy_(main["model.vqmodel.quantize.embedding.weight"])
    source.post_quant_conv.weight.data.copy_(main["model.vqmodel.post_quant_conv.weight"])
    source.post_quant_conv.bias.data.copy_(main["model.vqmodel.post_quant_conv.bias"])
    main.update(
        {
            f"model.vqmodel.{k}": v.contiguous()
            for k, v in source.state_dict().items()
            if k.startswith("decoder.")
        }
    )
    main["model.embed_tokens.weight"] = torch.zeros(4, 4)  # language-model tensors are not read
    save_file(main, str(vq_dir / "model.safetensors"))
    loaded = load_vq_decoder(vq_dir)
    codes = torch.randint(
        0, spec.num_embeddings, (2, spec.tokens_per_image), generator=torch.Generator().manual_seed(1)
    )
    out = loaded.decode(codes)
    assert out.shape == (2, 3, spec.resolution, spec.resolution)
    assert torch.equal(out, source.decode(codes))


def test_decoder_rejects_a_wrong_layout_naming_keys(vq_dir):
    spec = VQSpec.from_model_dir(vq_dir)
    state = _source_decoder(spec).state_dict()
    save_file(
        {k.replace("decoder.", "dec."): v.contiguous() for k, v in state.items()},
        str(vq_dir / "vq_decoder.safetensors"),
    )
    with pytest.raises(DecoderWeightsError, match=r"no decoder weights in a known layout.*dec\.conv_in"):
        load_vq_decoder(vq_dir)
    broken = {k: v.contiguous() for k, v in state.items() if k != "decoder.conv_out.bias"}
    broken["decoder.up.9.block.0.conv1.weight"] = torch.zeros(1)
    save_file(broken, str(vq_dir / "vq_decoder.safetensors"))
    with pytest.raises(
        DecoderWeightsError, match=r"missing decoder\.conv_out\.bias.*unexpected decoder\.up\.9"
    ):
        load_vq_decoder(vq_dir)
    wrong_shape = {k: v.contiguous() for k, v in state.items()}
    wrong_shape["decoder.conv_in.weight"] = torch.zeros(64, 16, 3, 3)
    save_file(wrong_shape, str(vq_dir / "vq_decoder.safetensors"))
    with pytest.raises(DecoderWeightsError, match=r"wrong shape decoder\.conv_in\.weight"):
        load_vq_decoder(vq_dir)
    (vq_dir / "vq_decoder.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no VQ decoder weights"):
        load_vq_decoder(vq_dir)


def test_encode_decode_encode_on_the_tiny_model(tiny_model_dir, encoder):
    spec = VQSpec.from_model_dir(tiny_model_dir)
    assert (tiny_model_dir / "vq_decoder.safetensors").is_file()  # init-model --tiny writes it
    codes = encoder.encode(_pixels(3, spec.resolution, seed=5))
    decoder = load_vq_decoder(tiny_model_dir)
    # the tiny decoder decodes through the encoder's own codebook
    assert torch.equal(decoder.quantize.embedding.weight, encoder.codebook)
    pixels = decoder.decode(codes)
    assert pixels.shape == (3, 3, spec.resolution, spec.resolution)
    assert pixels.min() >= -1 and pixels.max() <= 1 and pixels.std() > 0
    again = encoder.encode(pixels)
    assert again.shape == codes.shape and 0 <= again.min() and again.max() < spec.num_embeddings
    images = codes_to_pil(tiny_model_dir, codes.tolist())
    assert [im.size for im in images] == [(spec.resolution, spec.resolution)] * 3 and images[0].mode == "RGB"


def test_fingerprint_follows_encoder_weights_not_the_decoder(vq_dir):
    first = vq_fingerprint(vq_dir)
    assert len(first) == 16 and int(first, 16) >= 0
    assert vq_fingerprint(vq_dir) == first
    state = _source_decoder(VQSpec.from_model_dir(vq_dir)).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(vq_dir / "vq_decoder.safetensors"))
    assert vq_fingerprint(vq_dir) == first
    main = load_file(str(vq_dir / "model.safetensors"))
    main["model.vqmodel.encoder.conv_in.bias"] = main["model.vqmodel.encoder.conv_in.bias"] + 1e-3
    save_file(main, str(vq_dir / "model.safetensors"))
    assert vq_fingerprint(vq_dir) != first


@pytest.mark.gpu
def test_cuda_encoder_agrees_with_cpu(tiny_model_dir, encoder):
    spec = VQSpec.from_model_dir(tiny_model_dir)
    pixels = torch.randint(0, 256, (16, spec.resolution, spec.resolution, 3), dtype=torch.uint8)
    cpu = encoder.encode_uint8(pixels)
    cuda = VQEncoder.from_model_dir(tiny_model_dir, device="cuda", dtype="fp32")
    handle = cuda.submit_uint8(pixels.pin_memory())
    agreement = (handle.result() == cpu).float().mean().item()
    assert agreement > 0.99  # TF32 / cuDNN algorithms may flip a near tie
    bf16 = VQEncoder.from_model_dir(tiny_model_dir, device="cuda", dtype="bf16", compile=False)
    assert (bf16.encode_uint8(pixels) == cpu).float().mean().item() > 0.8
