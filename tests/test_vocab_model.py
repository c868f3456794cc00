"""The Chameleon vocabulary layout, the tiny model, loading, fingerprints, resolution, init-model.

One tiny model is built per session (a few seconds on one core) and shared by these tests.
The ids below are the real Chameleon/Anole layout (REFERENCE.md section 2); tests are the only
place besides the tiny builder where they are written down.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medmax_cli.model import load, resolve, tiny
from medmax_cli.text.vocab import ChameleonVocab, image_code_of, image_token_name

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny.build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def vocab(tiny_dir) -> ChameleonVocab:
    return ChameleonVocab.from_model_dir(tiny_dir)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    return load.load_tokenizer(tiny_dir)


@pytest.fixture(scope="session")
def model(tiny_dir):
    return load.load_model(tiny_dir)


# ----------------------------------------------------------------------------- layout


def test_image_token_names():
    assert image_token_name(0) == "IMGIMGAZ"
    assert image_token_name(10) == "IMGIMGBAZ"
    assert image_token_name(8191) == "IMGIMGIBJBZ"
    assert image_code_of("IMGIMGBAZ") == 10
    assert image_code_of("<image>") is None and image_code_of("IMGIMGZ") is None
    assert all(image_code_of(image_token_name(c)) == c for c in range(0, 8192, 97))


def test_layout_table(vocab, tiny_dir):
    assert (vocab.bos, vocab.pad, vocab.eos, vocab.unk) == (0, 1, 2, 3)
    assert (vocab.eoi, vocab.boi, vocab.sep, vocab.image_placeholder) == (8196, 8197, 8710, 8711)
    assert vocab.vocab_size == 65536 and vocab.n_codes == 8192
    assert vocab.image_code_to_id[0] == 4 and vocab.image_code_to_id[8191] == 8195
    assert vocab.image_code_to_id[10] == 14
    assert np.array_equal(vocab.image_code_to_id, np.arange(8192) + 4)
    assert vocab.image_code_to_id.dtype == np.int64 and vocab.id_to_image_code.dtype == np.int64
    names = json.loads((tiny_dir / "config.json").read_text())["vocabulary_map"]
    by_id = {i: n for n, i in names.items()}
    assert len(names) == 65536 and sorted(names.values()) == list(range(65536))
    assert by_id[14] == "IMGIMGBAZ" and by_id[8710] == "<reserved08706>" and by_id[8711] == "<image>"
    assert by_id[8198] == "<reserved08194>" and by_id[65535] == "<reserved65531>"


def test_image_code_mapping_both_ways(vocab):
    codes = np.array([0, 1, 10, 4095, 8191])
    ids = vocab.codes_to_ids(codes)
    assert ids.tolist() == [4, 5, 14, 4099, 8195]
    assert vocab.ids_to_codes(ids).tolist() == codes.tolist()
    assert vocab.id_to_image_code[[0, 3, 8196, 8197, 8711, 9000]].tolist() == [-1] * 6
    assert vocab.is_image_token([4, 8195, 8196, 3]).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="not image tokens"):
        vocab.ids_to_codes([8196])
    with pytest.raises(ValueError):
        vocab.codes_to_ids([8192])
    assert not vocab.image_code_to_id.flags.writeable
    t = vocab.tensor("image_code_to_id")
    assert t.dtype == torch.int64 and t[10].item() == 14
    assert vocab.tensor("image_token_mask").sum().item() == 8192


def test_text_mask(vocab, tokenizer):
    mask = vocab.text_token_mask
    assert mask[0] and mask[2] and not mask[1] and not mask[3]
    assert not mask[4:8712].any()
    n_text = int(mask[8712:].sum())
    assert n_text > 1000 and mask[8712 : 8712 + n_text].all() and not mask[8712 + n_text :].any()
    ids = tokenizer.encode("Axial CT of the liver, Größe 12 µm – H&E.", add_special_tokens=False)
    assert vocab.is_text(ids).all() and min(ids) >= 8712


def test_from_vocabulary_map_checks_real_layout():
    names = tiny.layout_names(["a", "b"])
    good = {n: i for i, n in enumerate(names)}
    assert ChameleonVocab.from_vocabulary_map(good).sep == 8710
    bad = dict(good)
    bad["IMGIMGAZ"], bad["IMGIMGBZ"] = good["IMGIMGBZ"], good["IMGIMGAZ"]
    with pytest.raises(ValueError, match="c \\+ 4"):
        ChameleonVocab.from_vocabulary_map(bad)
    with pytest.raises(ValueError, match="<eoss>"):
        ChameleonVocab.from_vocabulary_map({n: i for n, i in good.items() if n != "<eoss>"})
    # A small non-Chameleon-sized map is accepted and derived from names only.
    small = {"<s>": 0, "<pad>": 1, "</s>": 2, "IMGIMGAZ": 3, "IMGIMGBZ": 4, "<eoss>": 5}
    small |= {"<racm3:break>": 6, "<reserved08706>": 7, "<image>": 8, "hello": 9}
    v = ChameleonVocab.from_vocabulary_map(small)
    assert v.image_code_to_id.tolist() == [3, 4] and v.text_token_mask.nonzero()[0].tolist() == [0, 2, 9]


# ----------------------------------------------------------------------------- tokenizer


def test_auto_tokenizer_round_trip(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = "Is there a hypodense lesion in the liver? Größe 4–18 mm, 700 µm voxels."
    ids = tok.encode(text, add_special_tokens=False)
    assert min(ids) >= 8712
    assert tok.decode(ids) == text
    assert tok.encode(text) == ids  # no BOS/EOS added implicitly: pack adds them
    mixed = tok.encode("look <image> here<reserved08706>yes", add_special_tokens=False)
    assert 8711 in mixed and 8710 in mixed
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([4, 14, 8196, 8197]) == [
        "IMGIMGAZ",
        "IMGIMGBAZ",
        "<eoss>",
        "<racm3:break>",
    ]


# ----------------------------------------------------------------------------- model


def test_model_forward_with_image_block(tiny_dir, model, vocab, tokenizer):
    from transformers import ChameleonForConditionalGeneration

    stock = ChameleonForConditionalGeneration.from_pretrained(tiny_dir)
    info = load.model_info(tiny_dir)
    assert info["tokens_per_image"] == tiny.TOKENS_PER_IMAGE == 64 and info["image_size"] == 32
    assert model.config.vocab_size == 65536 and not model.training
    assert (
        model.config.bos_token_id == 0 and model.config.eos_token_id == 2 and model.config.pad_token_id == 1
    )

    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, info["image_size"], info["image_size"], generator=g) * 2 - 1
    image_ids = model.model.get_image_tokens(pixels)  # [1, tokens_per_image], bpe ids (int32 on CPU)
    assert image_ids.shape == (1, info["tokens_per_image"])
    assert vocab.is_image_token(image_ids.numpy()).all()
    text = tokenizer.encode("Describe the CT slice.", add_special_tokens=False)
    seq = [vocab.bos, *text, vocab.boi, *image_ids[0].long().tolist(), vocab.eoi, vocab.sep]
    input_ids = torch.tensor([seq], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
        logits_stock = stock(input_ids=input_ids).logits
    assert logits.shape == (1, len(seq), 65536)
    assert torch.isfinite(logits[..., vocab.tensor("text_token_mask")]).all()
    assert torch.equal(logits, logits_stock)


def test_load_errors_name_the_directory(tmp_path):
    with pytest.raises(load.ModelDirError, match=str(tmp_path / "nope")):
        load.load_model(tmp_path / "nope")
    with pytest.raises(load.ModelDirError, match="no config.json"):
        load.load_tokenizer(tmp_path)


def test_fingerprints(tiny_dir, tmp_path):
    fp, tfp = load.model_fingerprint(tiny_dir), load.tokenizer_fingerprint(tiny_dir)
    assert len(fp) == 16 and len(tfp) == 16 and fp != tfp
    copy = Path(shutil.copytree(tiny_dir, tmp_path / "copy"))
    assert load.model_fingerprint(copy) == fp
    info = json.loads((copy / "medmax_model.json").read_text())
    (copy / "medmax_model.json").write_text(json.dumps({**info, "seed": 7}))
    assert load.model_fingerprint(copy) != fp and load.tokenizer_fingerprint(copy) == tfp
    assert load.model_fingerprint(tiny_dir, weights=True) != fp


# ----------------------------------------------------------------------------- init-model CLI


def test_init_model_cli_is_reproducible(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from medmax_cli.cli import app

    runner = CliRunner()
    out = tmp_path / "m"
    result = runner.invoke(app, ["init-model", "--tiny", "-o", str(out), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    ours = sorted(p.name for p in out.iterdir())
    assert ours == sorted(p.name for p in tiny_dir.iterdir())
    for name in ours:
        assert (out / name).read_bytes() == (tiny_dir / name).read_bytes(), name

    refused = runner.invoke(app, ["init-model", "-o", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "--tiny" in refused.stderr
    not_empty = runner.invoke(app, ["init-model", "--tiny", "-o", str(out)])
    assert not_empty.exit_code == 2 and "--force" in not_empty.stderr


def test_seed_changes_weights():
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    # The same construction as build_tiny_model, without the tokenizer: seeds give different weights.
    names = tiny.layout_names(["a"])
    config = ChameleonConfig(
        vocab_size=65536,
        vocabulary_map={n: i for i, n in enumerate(names)},
        vq_config=dict(tiny.VQ_CONFIG),
        **{**tiny.TEXT_CONFIG, "num_hidden_layers": 1},
    )
    weights = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        weights.append(ChameleonForConditionalGeneration(config).model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(*weights)


# ----------------------------------------------------------------------------- resolve


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv(resolve.ENV_MODEL, raising=False)
    monkeypatch.setenv(resolve.ENV_CACHE, str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _fake_model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_resolve_precedence(clean_env, monkeypatch, tmp_path):
    explicit, from_env, from_toml = (_fake_model(tmp_path / n) for n in ("explicit", "env", "toml"))
    (clean_env / "medmax.toml").write_text(f'model = "{from_toml}"\n')
    monkeypatch.setenv(resolve.ENV_MODEL, str(from_env))
    assert resolve.resolve_model_dir(str(explicit)) == explicit
    assert resolve.resolve_model_dir(None) == from_env
    monkeypatch.delenv(resolve.ENV_MODEL)
    assert resolve.resolve_model_dir(None) == from_toml
    # relative paths in medmax.toml are relative to the working directory holding it
    _fake_model(clean_env / "models" / "rel")
    (clean_env / "medmax.toml").write_text('model = "models/rel"\n')
    assert resolve.resolve_model_dir(None) == clean_env / "models" / "rel"
    with pytest.raises(load.ModelDirError, match=r"\$MEDMAX_MODEL"):
        resolve.resolve_model_dir(None, env={resolve.ENV_MODEL: str(tmp_path / "missing")})


def test_resolve_builds_tiny_once(clean_env, monkeypatch, tmp_path):
    calls = []

    def fake_build(out, seed=0, **kw):  # stands in for the real build: only the marker matters here
        calls.append(Path(out))
        (Path(out) / "config.json").write_text("{}")
        (Path(out) / "medmax_model.json").write_text(json.dumps({"format": "medmax-tiny", "seed": seed}))
        return Path(out)

    monkeypatch.setattr(tiny, "build_tiny_model", fake_build)
    notices: list[str] = []
    with pytest.raises(resolve.NoModelError, match="--model tiny"):  # nothing chose a model: no silent tiny
        resolve.resolve_model_dir(None, notify=notices.append)
    assert not calls and not notices
    got = resolve.resolve_model_dir("tiny", notify=notices.append)
    assert got == tmp_path / "cache" / "tiny-model-v1" and (got / "medmax_model.json").is_file()
    assert len(notices) == 1 and str(got) in notices[0]
    assert calls and calls[0].parent == got.parent and calls[0] != got  # built in a temporary sibling
    assert not any(p.name.startswith(".tiny-model-v1.tmp") for p in got.parent.iterdir())
    assert resolve.resolve_model_dir("tiny", notify=notices.append) == got
    assert len(calls) == 1 and len(notices) == 1


def test_cache_dir_env():
    assert resolve.cache_dir({"MEDMAX_CACHE": "/x/c", "XDG_CACHE_HOME": "/y"}) == Path("/x/c")
    assert resolve.cache_dir({"XDG_CACHE_HOME": "/y"}) == Path("/y/medmax")
    assert resolve.cache_dir({}) == Path.home() / ".cache" / "medmax"
