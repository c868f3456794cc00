"""The real-shape (Anole-7B) model and what breaks only at real size, at the smallest size that shows it.

The full 7B widths are checked on the meta device (no memory); files on disk come from a variant
that is narrow in the language model (hidden 64) but keeps the real vocabulary_map, the real 512 px
VQ-GAN (1,024 codes an image) and the HF conversion's layout.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from medmax_cli.model import anole
from medmax_cli.model.tiny import _BUILTIN_CORPUS, chameleon_tokenizer_json, train_text_tokenizer

NARROW = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 4}


@pytest.fixture(scope="module")
def vocabulary_map() -> dict[str, int]:
    _, names = chameleon_tokenizer_json(train_text_tokenizer([_BUILTIN_CORPUS]))
    return {name: i for i, name in enumerate(names)}


@pytest.fixture(scope="module")
def narrow_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("anole-narrow") / "model"
    return anole.build_anole_shape_model_atomic(out, layers=1, seed=0, text_overrides=NARROW)


def test_config_is_anole_7b_except_layers(vocabulary_map):
    cfg = anole.anole_config(2, vocabulary_map)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        4096,
        11008,
        32,
        32,
    )
    assert cfg.num_hidden_layers == 2 and anole.ANOLE_7B_LAYERS == 32
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.rms_norm_eps) == (65536, 4096, 1e-5)
    assert (cfg.bos_token_id, cfg.pad_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert not cfg.tie_word_embeddings and not cfg.swin_norm and cfg.model_parallel_size == 1
    assert cfg.rope_parameters["rope_theta"] == 10000.0
    vm = cfg.vocabulary_map
    assert (vm["<s>"], vm["<pad>"], vm["</s>"], vm["<eoss>"], vm["<racm3:break>"]) == (0, 1, 2, 8196, 8197)
    assert (vm["<reserved08706>"], vm["<image>"], vm["IMGIMGAZ"], vm["IMGIMGBAZ"]) == (8710, 8711, 4, 14)
    assert cfg.image_token_id == 8711
    vq = cfg.vq_config
    assert (vq.embed_dim, vq.num_embeddings, vq.base_channels, vq.resolution) == (256, 8192, 128, 512)
    assert list(vq.channel_multiplier) == [1, 1, 2, 2, 4] and vq.num_res_blocks == 2
    from medmax_cli.vision.spec import VQSpec

    assert VQSpec.from_dict(vq.to_dict()).tokens_per_image == 1024 == anole.TOKENS_PER_IMAGE


def test_full_width_weights_are_7b_and_shard_like_the_conversion(vocabulary_map):
    # Two layers on the meta device, the other 30 copied from layer 1 (all layers are alike):
    # building 32 on the meta device costs 20 s for nothing more.
    shapes = anole.weight_shapes(anole.anole_config(2, vocabulary_map))
    layer = {k.split(".", 3)[3]: v for k, v in shapes.items() if k.startswith("model.layers.1.")}
    for i in range(2, 32):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in layer.items()})
    lm = sum(math.prod(s) for k, s in shapes.items() if not k.startswith("model.vqmodel."))
    assert 7.0e9 < lm < 7.1e9  # Chameleon-7B's language model: 7.04B parameters
    assert shapes["lm_head.weight"] == shapes["model.embed_tokens.weight"] == (65536, 4096)
    assert shapes["model.layers.31.mlp.gate_proj.weight"] == (11008, 4096)
    assert "model.layers.0.self_attn.q_norm.weight" in shapes  # qk-norm
    assert shapes["model.vqmodel.quantize.embedding.weight"] == (8192, 256)
    assert "model.vqmodel.decoder.conv_out.weight" in shapes  # Anole keeps the decoder
    shards = anole.plan_shards(shapes)
    assert len(shards) == 3  # 14 GB of bf16 in "5GB" shards, as the 7B conversions ship
    assert sorted(k for s in shards for k in s) == sorted(shapes)


def test_small_models_still_shard():
    shapes = {"a": (10,), "b": (10,), "c": (4,)}
    assert len(anole.plan_shards(shapes, max_bytes=10**9)) >= 2


def test_narrow_build_has_the_hf_layout(narrow_dir):
    names = {p.name for p in narrow_dir.iterdir()}
    for want in (
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
        "processor_config.json",
    ):
        assert want in names
    index = json.loads((narrow_dir / "model.safetensors.index.json").read_text())
    shard_files = sorted(set(index["weight_map"].values()))
    assert len(shard_files) >= 2 and shard_files[0].endswith(f"-of-{len(shard_files):05d}.safetensors")
    from safetensors import safe_open

    seen = {}
    for name in shard_files:
        with safe_open(str(narrow_dir / name), "pt") as f:
            for key in f.keys():
                seen[key] = name
                assert f.get_slice(key).get_dtype() == "BF16"
    assert seen == index["weight_map"]
    config = json.loads((narrow_dir / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["num_hidden_layers"] == 1
    assert config["vq_config"]["resolution"] == 512


def test_narrow_build_loads_quietly_everywhere(narrow_dir, caplog, capfd):
    from transformers import ChameleonProcessor

    from medmax_cli.model.load import load_model
    from medmax_cli.vision.decoder import load_vq_decoder
    from medmax_cli.vision.encoder import VQEncoder

    with caplog.at_level(logging.WARNING):
        model = load_model(narrow_dir, dtype="bfloat16")
    # The VQ decoder tensors (Anole layout) are expected: no UNEXPECTED report on stderr.
    assert "UNEXPECTED" not in capfd.readouterr().err + caplog.text
    assert model.dtype == torch.bfloat16
    norm = model.model.layers[0].input_layernorm.weight
    assert torch.all(norm == 1)
    processor = ChameleonProcessor.from_pretrained(narrow_dir)
    assert processor.image_seq_length == 1024
    enc = VQEncoder.from_model_dir(narrow_dir, dtype="bf16")
    assert enc.channels_last  # real-size CPU input: the faster layout
    assert load_vq_decoder(narrow_dir).decoder.conv_out.weight.shape == (3, 128, 3, 3)


@pytest.mark.slow  # reason: one 512 px encode and decode through the real-width VQ-GAN, ~30-60 s on CPU
def test_narrow_build_encodes_and_decodes_at_512(narrow_dir):
    from medmax_cli.vision.decoder import load_vq_decoder
    from medmax_cli.vision.encoder import VQEncoder

    codes = VQEncoder.from_model_dir(narrow_dir, dtype="bf16").encode(torch.zeros(1, 3, 512, 512))
    assert codes.shape == (1, 1024) and int(codes.max()) < 8192
    with torch.inference_mode():
        image = load_vq_decoder(narrow_dir, dtype="bf16").decode(codes)
    assert tuple(image.shape) == (1, 3, 512, 512)


def test_same_seed_same_bytes(tmp_path):
    shapes = {"model.norm.weight": (8,), "lm_head.weight": (4, 3)}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    anole.write_safetensors_stream(a, list(shapes), shapes, seed=3)
    anole.write_safetensors_stream(b, list(shapes), shapes, seed=3)
    assert a.read_bytes() == b.read_bytes()
    from safetensors.torch import load_file

    t = load_file(str(a))
    assert torch.all(t["model.norm.weight"] == 1) and t["lm_head.weight"].std() > 0


def _err(res) -> str:
    return res.stderr if isinstance(res.stderr, str) else res.stderr.decode()


def test_init_model_cli_refuses_bad_shape(medmax, tmp_path):
    res = medmax("init-model", "--shape", "anole-70b", "-o", str(tmp_path / "m"), check=False)
    assert res.returncode != 0 and "anole-7b" in _err(res)
    res = medmax("init-model", "--tiny", "--layers", "3", "-o", str(tmp_path / "m"), check=False)
    assert res.returncode != 0 and "--shape" in _err(res)
    assert not (tmp_path / "m").exists()


def _gpu_plan(tmp_path: Path, dry: str) -> tuple[str, str]:
    """bench/gpu.sh's rehearsal plan with a stub interpreter that only records its arguments."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\necho "stub-python $*"\n')
    stub.chmod(0o755)
    out = tmp_path / f"out-{dry}"
    env = {**os.environ, "OUT": str(out), "GPU_PLAN": "rehearsal", "GPU_DRY_RUN": dry, "PYTHON": str(stub)}
    env["GPU_WORK"] = str(tmp_path / "work")
    env.pop("MODEL", None)
    res = subprocess.run(
        ["bash", str(root / "bench" / "gpu.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return (out / "summary.txt").read_text(), (out / "env.log").read_text()


def test_gpu_rehearsal_plan_builds_the_real_shape_and_runs_the_chain_on_cuda(tmp_path):
    import re

    summary, envlog = _gpu_plan(tmp_path, "0")
    steps = re.findall(r"^== (\S+) \(limit (\d+)s\) \S+: (.*)$", summary, re.M)
    assert [s[0] for s in steps] == ["model", "rehearsal"]
    assert "init-model --shape anole-7b --layers 32" in steps[0][2]
    assert "examples/rehearsal/run.py --model" in steps[1][2] and "--device cuda" in steps[1][2]
    assert int(re.search(r"step limits total (\d+)s", envlog).group(1)) < 540  # one device command


def test_gpu_rehearsal_dry_run_takes_the_same_steps_on_the_cpu(tmp_path):
    import re

    summary, _ = _gpu_plan(tmp_path, "1")
    steps = re.findall(r"^== (\S+) \(limit (\d+)s\) \S+: (.*)$", summary, re.M)
    assert [s[0] for s in steps] == ["model", "rehearsal"]
    assert "init-model --tiny" in steps[0][2]
    assert "--layers tiny" in steps[1][2] and "--device cpu" in steps[1][2]
    assert "bench/_harness.py --stub" not in summary  # the real commands, not stubs
    assert re.findall(r"^rc=(\d+)", summary, re.M) == ["0", "0"]


def test_threaded_weights_are_the_same_bytes(tmp_path):
    """The 32-layer build draws its random values on every core: the bytes must not depend on it."""
    from concurrent.futures import ThreadPoolExecutor

    shapes = {"lm_head.weight": (3, anole.CHUNK_ELEMENTS + 5)}  # two chunks
    one, many = tmp_path / "one.safetensors", tmp_path / "many.safetensors"
    anole.write_safetensors_stream(one, list(shapes), shapes, seed=1)
    with ThreadPoolExecutor(max_workers=3) as pool:
        anole.write_safetensors_stream(many, list(shapes), shapes, seed=1, pool=pool)
    assert one.read_bytes() == many.read_bytes()
