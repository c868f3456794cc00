"""One VQ source per model directory: the encoder reads vqgan.ckpt / tokenizer/vqgan.ckpt (+ vqgan.yaml)
as well as the HF safetensors, and a directory whose sources disagree on the codebook is refused.

Checkpoints are built here from the tiny model's own VQ tensors, in each layout the releases use:
HF safetensors (`model.vqmodel.*`), the original `vqgan.ckpt` ({"state_dict": {encoder.*, decoder.*,
quant_conv.*, post_quant_conv.*, quantize.embedding.weight}}) at the top or under tokenizer/.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from medmax_cli.streams import parse_jsonl
from medmax_cli.vision.decoder import DecoderWeightsError, load_vq_decoder
from medmax_cli.vision.encoder import VQEncoder
from medmax_cli.vision.fingerprint import vq_fingerprint
from medmax_cli.vision.spec import VQSpec
from medmax_cli.vision.weights import VQSourceError, encoder_source, read_vq_tensors

YAML = """model:
  target: chameleon.inference.vqgan.VQModel
  params:
    embed_dim: {embed_dim}
    n_embed: {n_embed}
    ddconfig:
      double_z: false
      z_channels: {z}
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: {ch}
      ch_mult: {mult}
      num_res_blocks: {blocks}
      attn_resolutions: []
      dropout: 0.0
"""


@pytest.fixture(scope="module")
def vq_state(tiny_model_dir):
    """The tiny model's whole VQ-GAN (encoder side from the safetensors, decoder from its own file)."""
    from safetensors.torch import load_file

    state = read_vq_tensors(tiny_model_dir, lambda k: True)
    decoder = load_file(str(tiny_model_dir / "vq_decoder.safetensors"))
    state.update({k: v for k, v in decoder.items() if k.startswith(("decoder.", "post_quant_conv."))})
    return state


def _pixels(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _ckpt_dir(tiny_model_dir, tmp_path, vq_state, where, *, with_hf_vq=False, config_vq=True):
    """A model directory whose VQ lives in `where` (vqgan.ckpt or tokenizer/vqgan.ckpt)."""
    out = tmp_path / "model"
    out.mkdir(parents=True)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    if not config_vq:
        config.pop("vq_config")
    (out / "config.json").write_text(json.dumps(config))
    lm = {"model.embed_tokens.weight": torch.zeros(4, 4)}  # a language model without VQ tensors
    if with_hf_vq:
        lm.update(
            {
                f"model.vqmodel.{k}": v.contiguous()
                for k, v in vq_state.items()
                if not k.startswith("decoder.")
            }
        )
    save_file(lm, str(out / "model.safetensors"))
    (out / where).parent.mkdir(parents=True, exist_ok=True)
    extra = {"loss.discriminator.main.0.weight": torch.zeros(1)}  # training leftovers are skipped
    torch.save({"state_dict": {**vq_state, **extra}, "global_step": 3}, out / where)
    return out


@pytest.mark.parametrize("where", ["vqgan.ckpt", "tokenizer/vqgan.ckpt"])
def test_encoder_and_decoder_read_the_original_checkpoint(tiny_model_dir, tmp_path, vq_state, where):
    model = _ckpt_dir(tiny_model_dir, tmp_path, vq_state, where)
    spec = VQSpec.from_model_dir(model)
    assert encoder_source(model).endswith(where)
    pixels = _pixels(3, spec.resolution)
    codes = VQEncoder.from_model_dir(model).encode(pixels)
    assert torch.equal(codes, VQEncoder.from_model_dir(tiny_model_dir).encode(pixels))
    assert vq_fingerprint(model) == vq_fingerprint(tiny_model_dir)  # same VQ-GAN, same fingerprint
    ours, theirs = load_vq_decoder(model), load_vq_decoder(tiny_model_dir)
    assert torch.equal(ours.decode(codes), theirs.decode(codes))


def test_vqgan_yaml_gives_the_config_and_must_agree(tiny_model_dir, tmp_path, vq_state):
    model = _ckpt_dir(tiny_model_dir, tmp_path, vq_state, "tokenizer/vqgan.ckpt")
    spec = VQSpec.from_model_dir(model)
    fields = dict(embed_dim=spec.embed_dim, n_embed=spec.num_embeddings, z=spec.latent_channels,
                  ch=spec.base_channels, mult=list(spec.channel_multiplier), blocks=spec.num_res_blocks)  # fmt: skip
    (model / "tokenizer" / "vqgan.yaml").write_text(YAML.format(**fields))
    assert VQSpec.from_model_dir(model) == spec  # agrees with config.json's vq_config
    (model / "tokenizer" / "vqgan.yaml").write_text(
        YAML.format(**{**fields, "n_embed": 2 * spec.num_embeddings})
    )
    with pytest.raises(ValueError, match="vqgan.yaml describe different VQ-GANs"):
        VQSpec.from_model_dir(model)
    bare = _ckpt_dir(tiny_model_dir, tmp_path / "b", vq_state, "tokenizer/vqgan.ckpt", config_vq=False)
    (bare / "tokenizer" / "vqgan.yaml").write_text(YAML.format(**fields))
    from_yaml = VQSpec.from_model_dir(bare)  # no vq_config: the yaml is the config
    assert from_yaml.num_embeddings == spec.num_embeddings and from_yaml.base_channels == spec.base_channels
    assert from_yaml.resolution == 512  # ddconfig.resolution is not the input size


def test_two_sources_with_different_codebooks_are_refused(tiny_model_dir, tmp_path, vq_state):
    other = dict(vq_state)
    other["quantize.embedding.weight"] = vq_state["quantize.embedding.weight"] + 0.01  # a fine-tuned VQ-GAN
    model = _ckpt_dir(tiny_model_dir, tmp_path, other, "tokenizer/vqgan.ckpt", with_hf_vq=False)
    # put the ORIGINAL codebook's HF weights beside it
    shutil.copy(tiny_model_dir / "model.safetensors", model / "model.safetensors")
    with pytest.raises(VQSourceError, match=r"safetensors.*tokenizer/vqgan.ckpt"):
        VQEncoder.from_model_dir(model)
    with pytest.raises(
        DecoderWeightsError, match=r"decoder's codebook \(.*tokenizer/vqgan.ckpt\).*encoder's"
    ):
        load_vq_decoder(model)
    # naming the decoder explicitly is allowed: it decodes through its own codebook
    explicit = load_vq_decoder(model, decoder_file=model / "tokenizer" / "vqgan.ckpt")
    assert torch.equal(explicit.quantize.embedding.weight, other["quantize.embedding.weight"])
    # one source, one codebook: fine again
    (model / "tokenizer" / "vqgan.ckpt").unlink()
    VQEncoder.from_model_dir(model)


def test_detokenize_command_takes_an_explicit_decoder(tiny_model_dir, tmp_path, vq_state, media, medmax):
    other = dict(vq_state)
    other["quantize.embedding.weight"] = vq_state["quantize.embedding.weight"].flip(0)
    model = _ckpt_dir(tiny_model_dir, tmp_path, other, "vqgan.ckpt")
    shutil.copy(tiny_model_dir / "model.safetensors", model / "model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, model / name)
    spec = VQSpec.from_model_dir(model)
    record = {"id": "d", "kind": "figure", "caption": "c",
              "images": [{"sha256": "0" * 64, "path": "x.png", "width": 8, "height": 8,
                          "tokens": list(range(spec.tokens_per_image)), "vq": vq_fingerprint(model)}]}  # fmt: skip
    line = (json.dumps(record) + "\n").encode()
    args = ("detokenize", "--model", str(model), "--media-dir", str(media.root), "--device", "cpu")
    refused = medmax(*args, input=line, check=False)
    assert refused.returncode != 0 and b"vqgan.ckpt" in refused.stderr and b"--vq-decoder" in refused.stderr
    done = medmax(*args, "--vq-decoder", str(model / "vqgan.ckpt"), input=line)
    assert parse_jsonl(done.stdout)[0]["images"][0]["decoded"]["path"]
