"""A tiny, randomly initialised Chameleon with the REAL vocabulary layout, for tests and the demo.

`build_tiny_model(out_dir, seed=0)` writes a Hugging Face model directory that every stage can use
in place of Anole-7B:

- the 65,536-id Chameleon layout (see `medmax_cli.text.vocab`): `<s>` 0, `<pad>` 1, `</s>` 2,
  `<unk>` 3, image codes 0..8191 at 4..8195, `<eoss>` 8196, `<racm3:break>` 8197,
  `<reserved{id-4:05d}>` for 8198..8711 with 8711 renamed `<image>` (so 8710 is `<reserved08706>`),
  the text tokens from 8712 up, and reserved names for the rest;
- a real byte-level BPE tokenizer trained with `tokenizers` on the text of the bundled sample
  corpus (examples/sample: JATS articles and VQA files); it adds no BOS/EOS by itself;
- `ChameleonForConditionalGeneration` with hidden 64, 2 layers, 4 heads, and a tiny VQ encoder
  (codebook 8192, embed_dim 32, channel multipliers [1, 1, 2] => 4x downsampling): a 32x32 image
  becomes an 8x8 grid = 64 image tokens;
- `medmax_model.json` with the format, seed, image size and tokens per image.

The same seed gives byte-identical files. Other modules may add files to the directory (the VQ
decoder writes `vq_decoder.safetensors`): they are listed in `TINY_MODEL_WRITERS` and run after the
core files exist and before the directory is marked complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from medmax_cli.text.vocab import (
    BOI_NAME,
    BOS_NAME,
    EOI_NAME,
    EOS_NAME,
    IMAGE_PLACEHOLDER_NAME,
    PAD_NAME,
    SEP_NAME,
    UNK_NAME,
    image_token_name,
)

log = logging.getLogger(__name__)

FORMAT = "medmax-tiny"
FORMAT_VERSION = 1
MODEL_INFO_FILE = "medmax_model.json"

# The layout (constants live here and in tests only; stage code derives ids from names).
VOCAB_SIZE = 65536
N_CODES = 8192
IMAGE_CODE_OFFSET = 4
EOI_ID = 8196
BOI_ID = 8197
IMAGE_PLACEHOLDER_ID = 8711
FIRST_TEXT_ID = 8712
TEXT_VOCAB_TARGET = 4096  # BPE stops earlier when the sample corpus has no more pairs to merge

# A 32x32 input through 3 levels (two 2x downsamplings) gives an 8x8 grid.
IMAGE_SIZE = 32
VQ_CONFIG = {
    "embed_dim": 32,
    "num_embeddings": N_CODES,
    "latent_channels": 32,
    "resolution": IMAGE_SIZE,
    "in_channels": 3,
    "base_channels": 32,  # GroupNorm(32) needs a multiple of 32
    "channel_multiplier": [1, 1, 2],
    "num_res_blocks": 1,
}
TOKENS_PER_IMAGE = (IMAGE_SIZE // 2 ** (len(VQ_CONFIG["channel_multiplier"]) - 1)) ** 2
TEXT_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
}

SPECIAL_NAMES = (BOS_NAME, PAD_NAME, EOS_NAME, UNK_NAME, EOI_NAME, BOI_NAME, SEP_NAME, IMAGE_PLACEHOLDER_NAME)

# Extra writers run on every tiny build, as "module:function" taking (model_dir: Path, seed: int).
# A module that is not installed yet is skipped, so the hook can name work in progress.
TINY_MODEL_WRITERS: tuple[str, ...] = ("medmax_cli.vision.decoder:write_tiny_vq_decoder",)

Writer = Callable[[Path, int], None]


def default_sample_dir() -> Path | None:
    """examples/sample of the source checkout, when this package runs from one."""
    candidate = Path(__file__).resolve().parents[3] / "examples" / "sample"
    return candidate if (candidate / "jats").is_dir() else None


# Used only when the package is installed without its examples/ (a wheel): the tokenizer then
# differs from a checkout's, and medmax_model.json records which corpus trained it.
_BUILTIN_CORPUS = (
    "Axial CT slice of the abdominal phantom shows a hypodense lesion in the right lobe of the liver. "
    "T2-weighted MRI shows a hyperintense lesion. Posteroanterior chest radiograph: lung fields are "
    "clear, no pleural effusion. H&E stained colorectal tissue with crowded hyperchromatic nuclei and "
    "cribriform glands. Is there a lesion? yes. Is this an MRI image? no. Which organ is shown? liver."
)


def sample_corpus_text(sample_dir: Path) -> list[str]:
    """The text the tokenizer trains on: every JATS article's text and the VQA/eval questions."""
    texts: list[str] = []
    for xml_path in sorted((sample_dir / "jats").glob("*.xml")):
        root = ET.parse(xml_path).getroot()
        for elem in root.iter():
            if elem.tag in ("article-title", "title", "p", "label", "kwd", "license-p", "journal-title"):
                text = re.sub(r"\s+", " ", "".join(elem.itertext())).strip()
                if text:
                    texts.append(text)
    for name in ("vqa.jsonl", "eval.jsonl"):
        path = sample_dir / name
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                texts += [rec.get("question", ""), rec.get("answer", ""), *rec.get("options", [])]
    return [t for t in texts if t]


def layout_names(text_tokens: Sequence[str]) -> list[str]:
    """The 65,536 token names in id order, text tokens starting at FIRST_TEXT_ID."""
    names = [BOS_NAME, PAD_NAME, EOS_NAME, UNK_NAME]
    names += [image_token_name(c) for c in range(N_CODES)]
    names += [EOI_NAME, BOI_NAME]
    names += [f"<reserved{i - 4:05d}>" for i in range(BOI_ID + 1, IMAGE_PLACEHOLDER_ID)]
    names.append(IMAGE_PLACEHOLDER_NAME)
    assert len(names) == FIRST_TEXT_ID and names[8710] == SEP_NAME
    if FIRST_TEXT_ID + len(text_tokens) > VOCAB_SIZE:
        raise ValueError(f"{len(text_tokens)} text tokens do not fit the vocabulary")
    names += list(text_tokens)
    names += [f"<reserved{i - 4:05d}>" for i in range(len(names), VOCAB_SIZE)]
    if len(set(names)) != VOCAB_SIZE:
        raise ValueError("a trained text token collides with a reserved or special name")
    return names


def train_text_tokenizer(texts: Iterable[str], vocab_target: int = TEXT_VOCAB_TARGET):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `texts` (ids 0..n-1, no specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def chameleon_tokenizer_json(text_tok) -> tuple[str, list[str]]:
    """Relocate a trained BPE into the Chameleon layout; returns (tokenizer.json text, names)."""
    spec = json.loads(text_tok.to_str())
    trained = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    names = layout_names([t for t, _ in trained])
    spec["model"]["vocab"] = {name: i for i, name in enumerate(names)}
    spec["model"]["unk_token"] = None
    spec["added_tokens"] = [
        {
            "id": names.index(name),
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for name in SPECIAL_NAMES
    ]
    spec["added_tokens"].sort(key=lambda t: t["id"])
    spec["post_processor"] = None  # no automatic BOS/EOS: pack adds them explicitly
    return json.dumps(spec, ensure_ascii=False, indent=None), names


def _write_tokenizer(out: Path, tokenizer_json: str) -> None:
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_NAME,
        "eos_token": EOS_NAME,
        "pad_token": PAD_NAME,
        "unk_token": UNK_NAME,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": TEXT_CONFIG["max_position_embeddings"],
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": {"image_token": IMAGE_PLACEHOLDER_NAME, "sep_token_chameleon": SEP_NAME},
    }
    special = {
        "bos_token": BOS_NAME,
        "eos_token": EOS_NAME,
        "pad_token": PAD_NAME,
        "unk_token": UNK_NAME,
        "additional_special_tokens": [BOI_NAME, EOI_NAME, SEP_NAME, IMAGE_PLACEHOLDER_NAME],
    }
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (out / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _resolve_writer(spec: str) -> Writer | None:
    module_name, _, func = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None  # that module does not exist (yet)
        raise
    return getattr(module, func, None)


def default_writers() -> list[Writer]:
    """The writers of `TINY_MODEL_WRITERS` that are installed."""
    return [w for spec in TINY_MODEL_WRITERS if (w := _resolve_writer(spec)) is not None]


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bar for a one-shard save (it would be noise on the user's stderr)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    sample_dir: str | Path | None = None,
    writers: Sequence[Writer] | None = None,
) -> Path:
    """Write the tiny model directory to `out_dir` (created; existing files are overwritten).

    `sample_dir` is the corpus the text tokenizer trains on (default: examples/sample of the
    checkout, else a short built-in text). `writers` add files after the core ones (default:
    `default_writers()`); each is called as `writer(out_dir, seed)`. Returns `out_dir`.
    """
    import torch
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sample = Path(sample_dir) if sample_dir is not None else default_sample_dir()
    if sample is not None:
        if not (sample / "jats").is_dir():
            raise FileNotFoundError(f"{sample}: not a sample corpus (no jats/ folder)")
        texts, corpus_name = sample_corpus_text(sample), "examples/sample"
    else:
        texts, corpus_name = [_BUILTIN_CORPUS], "builtin"
    tokenizer_json, names = chameleon_tokenizer_json(train_text_tokenizer(texts))
    _write_tokenizer(out, tokenizer_json)

    config = ChameleonConfig(
        vocab_size=VOCAB_SIZE,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        vocabulary_map={name: i for i, name in enumerate(names)},
        vq_config=dict(VQ_CONFIG),
        **TEXT_CONFIG,
    )
    torch.manual_seed(seed)
    model = ChameleonForConditionalGeneration(config).to(torch.float32)
    with _quiet_transformers():
        model.save_pretrained(out)

    n_text = sum(1 for n in names[FIRST_TEXT_ID:] if not n.startswith("<reserved"))
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "tokens_per_image": TOKENS_PER_IMAGE,
        "n_text_tokens": n_text,
        "tokenizer_corpus": corpus_name,
        "tokenizer_corpus_sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
    }
    for writer in default_writers() if writers is None else writers:
        writer(out, seed)
    # Written last: its presence marks a finished build.
    (out / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.debug("tiny model (seed %d, %d text tokens) written to %s", seed, n_text, out)
    return out
