"""The Chameleon / Anole vocabulary layout, derived from token names.

Chameleon shares one 65,536-entry vocabulary between text and image tokens. Stage code never
hard-codes an id: it asks a `ChameleonVocab`, which reads the ids from the vocabulary map (the
`vocabulary_map` of a model's config.json, or a tokenizer's vocabulary) by name:

| name | role | id in the real layout |
| --- | --- | --- |
| `<s>` / `<pad>` / `</s>` / `<unk>` | BOS / padding / EOS / unknown | 0 / 1 / 2 / 3 |
| `IMGIMG<digits as letters A-J>Z` | image code c (code 10 = `IMGIMGBAZ`) | c + 4 (4..8195) |
| `<eoss>` | end of image (EOI) | 8196 |
| `<racm3:break>` | begin of image (BOI) | 8197 |
| `<reserved08706>` | separator / end of turn (SEP) | 8710 |
| `<image>` | image placeholder (renamed `<reserved08707>`) | 8711 |

When a vocabulary has the real layout (65,536 ids, `<image>` at 8711) the constructor also checks
the code + 4 rule, so a corrupted map fails loudly instead of producing wrong image tokens.

Text tokens (`text_token_mask`) are the ids the text tokenizer can produce, plus BOS and EOS: every
named id that is not an image code, not a `<reservedNNNNN>` name and not one of `<pad>`, `<unk>`,
`<eoss>`, `<racm3:break>`, `<image>`. Ids missing from the map are not text.

`anole_text_mask` is the set text decoding may emit, by Anole's rule (GAIR-NLP/anole
chameleon/inference/vocab.py, `VocabInfo.text_tokens`): every named id except image tokens (names
starting `IMGIMG`) and names starting with `<`, the single name `<` excepted. BOS, EOS and every
`<...>` special or BPE piece (`</`, `<br`, ...) are out; a decoder adds EOS (and BOI) itself.
`anole_rule_counts` reports how many ids each part of the rule removes (docs/generate.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOS_NAME = "<s>"
PAD_NAME = "<pad>"
EOS_NAME = "</s>"
UNK_NAME = "<unk>"
BOI_NAME = "<racm3:break>"
EOI_NAME = "<eoss>"
SEP_NAME = "<reserved08706>"
IMAGE_PLACEHOLDER_NAME = "<image>"

IMAGE_TOKEN_RE = re.compile(r"^IMGIMG([A-J]+)Z$")
RESERVED_RE = re.compile(r"^<reserved\d+>$")
# Named ids that are neither text nor image codes.
NON_TEXT_SPECIAL_NAMES = frozenset({PAD_NAME, UNK_NAME, BOI_NAME, EOI_NAME, IMAGE_PLACEHOLDER_NAME})

# The real Chameleon/Anole layout, used only to recognise it and check it (see module docstring).
REAL_VOCAB_SIZE = 65536
REAL_IMAGE_PLACEHOLDER_ID = 8711
REAL_IMAGE_CODE_OFFSET = 4


def image_token_name(code: int) -> str:
    """The vocabulary name of VQ code `code`: digits written as letters A-J (10 -> "IMGIMGBAZ")."""
    if code < 0:
        raise ValueError(f"an image code is non-negative, got {code}")
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def image_code_of(name: str) -> int | None:
    """The VQ code named by `name` ("IMGIMGBAZ" -> 10), or None when it is not an image token."""
    m = IMAGE_TOKEN_RE.match(name)
    if m is None:
        return None
    return int("".join(str(ord(c) - ord("A")) for c in m.group(1)))


def anole_rule_of(name: str) -> str:
    """Which part of Anole's text rule a vocabulary name falls under: "image", "special" or "text"."""
    if name.startswith("IMGIMG"):
        return "image"
    if name.startswith("<") and name != "<":
        return "special"
    return "text"


def anole_text_mask(vocab_map: Mapping[str, int], size: int) -> np.ndarray:
    """bool [size]: the ids Anole's rule counts as text (see the module docstring)."""
    mask = np.zeros(size, dtype=bool)
    for name, i in vocab_map.items():
        if anole_rule_of(name) == "text":
            mask[int(i)] = True
    return mask


def anole_rule_counts(vocab_map: Mapping[str, int]) -> dict[str, int]:
    """How many named ids each part of Anole's rule removes or keeps:
    {"image": .., "special": .., "text": ..} (`special` = names starting with `<`, except `<`)."""
    counts = {"image": 0, "special": 0, "text": 0}
    for name in vocab_map:
        counts[anole_rule_of(name)] += 1
    return counts


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class ChameleonVocab:
    """Ids of the special tokens and the image-code <-> token-id maps of one vocabulary.

    Arrays are read-only numpy arrays; `vocab.tensor("image_code_to_id", device)` gives a torch copy.
    """

    bos: int
    pad: int
    eos: int
    unk: int | None
    boi: int  # <racm3:break>, begin of image
    eoi: int  # <eoss>, end of image
    sep: int  # <reserved08706>, separator / end of turn
    image_placeholder: int  # <image>
    vocab_size: int
    image_code_to_id: np.ndarray  # int64 [n_codes]: VQ code -> token id
    id_to_image_code: np.ndarray  # int64 [vocab_size]: token id -> VQ code, -1 when not an image token
    text_token_mask: np.ndarray  # bool [vocab_size]: ids the text tokenizer can produce, plus BOS/EOS
    anole_text_mask: np.ndarray | None = None  # bool [vocab_size]: text by Anole's rule (generation)

    @property
    def n_codes(self) -> int:
        """Size of the VQ codebook the vocabulary holds tokens for (8192 for Chameleon)."""
        return int(self.image_code_to_id.shape[0])

    @property
    def image_token_mask(self) -> np.ndarray:
        """bool [vocab_size]: True for image-code tokens."""
        return self.id_to_image_code >= 0

    def tensor(self, name: str, device=None):
        """A torch copy of one of the arrays (e.g. "image_code_to_id", "text_token_mask", "image_token_mask")."""
        import torch

        return torch.as_tensor(np.array(getattr(self, name)), device=device)

    def is_image_token(self, ids) -> np.ndarray:
        """Elementwise: is each id an image-code token?"""
        return self.id_to_image_code[np.asarray(ids, dtype=np.int64)] >= 0

    def is_text(self, ids) -> np.ndarray:
        """Elementwise: is each id a text token (see `text_token_mask`)?"""
        return self.text_token_mask[np.asarray(ids, dtype=np.int64)]

    def codes_to_ids(self, codes) -> np.ndarray:
        """VQ codes -> token ids (int64); raises on a code outside the codebook."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.n_codes):
            raise ValueError(f"image codes must lie in [0, {self.n_codes}), got {codes.min()}..{codes.max()}")
        return self.image_code_to_id[codes]

    def ids_to_codes(self, ids) -> np.ndarray:
        """Token ids -> VQ codes (int64); raises when an id is not an image token."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        codes = self.id_to_image_code[ids]
        if codes.size and codes.min() < 0:
            bad = ids[codes < 0][:5].tolist()
            raise ValueError(f"not image tokens: {bad}")
        return codes

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_vocabulary_map(
        cls, vocab_map: Mapping[str, int], vocab_size: int | None = None
    ) -> ChameleonVocab:
        """Build from a name -> id map (config.json's `vocabulary_map` or a tokenizer's vocabulary).

        `vocab_size` defaults to the largest id + 1 (the model's embedding size may be larger).
        """
        if not vocab_map:
            raise ValueError("the vocabulary map is empty")
        size = max(vocab_map.values()) + 1 if vocab_size is None else int(vocab_size)
        if max(vocab_map.values()) >= size:
            raise ValueError(f"vocabulary map has id {max(vocab_map.values())} >= vocab_size {size}")

        def need(name: str) -> int:
            if name not in vocab_map:
                raise ValueError(
                    f"the vocabulary has no {name!r} token (is this a Chameleon/Anole vocabulary?)"
                )
            return int(vocab_map[name])

        code_items = sorted((c, int(i)) for n, i in vocab_map.items() if (c := image_code_of(n)) is not None)
        if not code_items:
            raise ValueError("the vocabulary has no image tokens (IMGIMG...Z)")
        n_codes = len(code_items)
        if [c for c, _ in code_items] != list(range(n_codes)):
            raise ValueError(f"image codes in the vocabulary are not exactly 0..{n_codes - 1}")
        image_code_to_id = np.array([i for _, i in code_items], dtype=np.int64)
        id_to_image_code = np.full(size, -1, dtype=np.int64)
        id_to_image_code[image_code_to_id] = np.arange(n_codes, dtype=np.int64)

        text = np.zeros(size, dtype=bool)
        for name, i in vocab_map.items():
            if (
                image_code_of(name) is None
                and not RESERVED_RE.match(name)
                and name not in NON_TEXT_SPECIAL_NAMES
            ):
                text[int(i)] = True

        vocab = cls(
            bos=need(BOS_NAME),
            pad=need(PAD_NAME),
            eos=need(EOS_NAME),
            unk=int(vocab_map[UNK_NAME]) if UNK_NAME in vocab_map else None,
            boi=need(BOI_NAME),
            eoi=need(EOI_NAME),
            sep=need(SEP_NAME),
            image_placeholder=need(IMAGE_PLACEHOLDER_NAME),
            vocab_size=size,
            image_code_to_id=_readonly(image_code_to_id),
            id_to_image_code=_readonly(id_to_image_code),
            text_token_mask=_readonly(text),
            anole_text_mask=_readonly(anole_text_mask(vocab_map, size)),
        )
        if size == REAL_VOCAB_SIZE and vocab.image_placeholder == REAL_IMAGE_PLACEHOLDER_ID:
            vocab._check_real_layout()
        return vocab

    @classmethod
    def from_model_dir(cls, path: str | Path) -> ChameleonVocab:
        """Build from a model directory: config.json's `vocabulary_map`, else tokenizer.json."""
        path = Path(path)
        config_path = path / "config.json"
        vocab_size = None
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            vocab_size = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
            if config.get("vocabulary_map"):
                return cls.from_vocabulary_map(config["vocabulary_map"], vocab_size)
        tok_path = path / "tokenizer.json"
        if tok_path.is_file():
            tok = json.loads(tok_path.read_text(encoding="utf-8"))
            vocab_map = dict(tok["model"]["vocab"])
            vocab_map.update({t["content"]: t["id"] for t in tok.get("added_tokens", [])})
            return cls.from_vocabulary_map(vocab_map, vocab_size)
        raise FileNotFoundError(f"{path}: no config.json with a vocabulary_map and no tokenizer.json")

    def _check_real_layout(self) -> None:
        """Pin the Chameleon/Anole ids (REFERENCE.md section 2) when the map claims that layout."""
        expected = {"bos": 0, "pad": 1, "eos": 2, "eoi": 8196, "boi": 8197, "sep": 8710}
        wrong = {k: getattr(self, k) for k, v in expected.items() if getattr(self, k) != v}
        if wrong:
            raise ValueError(f"vocabulary looks like Chameleon's (<image> at 8711) but has {wrong}")
        want = np.arange(self.n_codes, dtype=np.int64) + REAL_IMAGE_CODE_OFFSET
        if self.n_codes != 8192 or not np.array_equal(self.image_code_to_id, want):
            raise ValueError("vocabulary looks like Chameleon's but image code c is not at id c + 4")
