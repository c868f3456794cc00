"""Token sequences and loss masks for Chameleon/Anole instruction tuning.

Layout (docs/pack.md, REFERENCE.md 2):

    [BOS] U1 [SEP] A1 [SEP] U2 [SEP] A2 [EOS]

Each turn's content parts are concatenated (text parts tokenised without special tokens, an image
part as `[BOI] + ids of its VQ codes + [EOI]`); every turn but the last is closed by SEP, the last by
EOS. Labels (`train_on`, docs/pack.md "Label rules"):
- "assistant" (default): the input ids of the assistant turns and of the SEP/EOS that closes each;
  -100 elsewhere (every user turn is masked);
- "all": everything but BOS;
- "medmax": everything after the first SEP (MedMax's training collator, training/data.py
  `collate_fn`: -100 up to and including the first 8710, the tokens themselves after it; so in a
  multi-turn chat the later user turns are trained too).
With one user and one assistant turn all but "all" give exactly MedMax's `[BOS] prompt [SEP]
response [EOS]` with loss on the response.

Released MedMax rows that carry a pre-tokenised `tokens` list are used as they are, with MedMax's
mask: -100 up to and including the first SEP.

Text is tokenised in batches: `build_sequences` makes one `encode_batch` call for all the text parts
of many instances; `build_sequence` is the one-instance convenience.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medmax_cli.records import RecordError, is_token_list

IGNORE = -100
TRAIN_ON = ("assistant", "all", "medmax")
PROMPT_FORMATS = ("sft", "raw")


@dataclass
class Sample:
    """One instance as tokens. `image_spans` are half-open [start, end) ranges of whole image
    blocks, BOI and EOI included, in token positions of `input_ids`."""

    input_ids: np.ndarray  # int32 [L]
    labels: np.ndarray  # int32 [L], IGNORE where no loss
    image_spans: list[tuple[int, int]] = field(default_factory=list)
    id: str = ""
    task: str | None = None
    source: str | None = None
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_supervised(self) -> int:
        return int(np.count_nonzero(self.labels != IGNORE))


# --------------------------------------------------------------------------- pieces


def _text_parts(instance: Mapping[str, Any], turns: Sequence[Mapping[str, Any]]) -> list[str]:
    return [part["text"] for turn in turns for part in turn["content"] if "text" in part]


def _image_block(instance: Mapping[str, Any], index: int, vocab, cache: dict[int, np.ndarray]) -> np.ndarray:
    """int32 [n+2]: BOI, the token ids of image `index`'s VQ codes, EOI."""
    block = cache.get(index)
    if block is not None:
        return block
    images = instance.get("images") or []
    if not 0 <= index < len(images):
        raise RecordError(f"content refers to images[{index}] but the record has {len(images)} images")
    tokens = images[index].get("tokens")
    if tokens is None:
        raise RecordError(
            f"images[{index}] has no VQ tokens (run medmax tokenize-images, or pack with the vision "
            "library installed to encode on the fly)"
        )
    if len(tokens) == 0:  # a list, or the int64 array pack's token check made of it
        raise RecordError(f"images[{index}].tokens is empty")
    try:
        ids = vocab.codes_to_ids(tokens)
    except ValueError as exc:
        raise RecordError(f"images[{index}].tokens: {exc}") from None
    block = np.empty(len(ids) + 2, dtype=np.int32)
    block[0] = vocab.boi
    block[1:-1] = ids
    block[-1] = vocab.eoi
    cache[index] = block
    return block


def text_tokenizer(tokenizer):
    """`tokenizer` as a `TextTokenizer` (ids as lists, no special tokens added): a bare
    `tokenizers.Tokenizer` is wrapped, anything else with `encode_batch(texts) -> list[list[int]]`
    is used as it is."""
    from medmax_cli.text.tokenizer import TextTokenizer

    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers is a dependency
        return tokenizer
    return TextTokenizer(tokenizer) if isinstance(tokenizer, Tokenizer) else tokenizer


def _check_train_on(train_on: str) -> None:
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, not {train_on!r}")


def _turns(instance: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    turns = instance.get("turns")
    if not isinstance(turns, list) or not turns:
        raise RecordError("an instance needs a non-empty 'turns' list (or pre-tokenised 'tokens')")
    return turns


def _assemble(instance: Mapping[str, Any], text_ids: list[list[int]], vocab, train_on: str) -> Sample:
    turns = _turns(instance)
    # Pieces first (text id lists as the tokenizer gave them, image blocks as arrays), then one
    # preallocated row filled slice by slice: no per-piece array, no concatenate, no mask.
    pieces: list[Any] = []
    supervised: list[bool] = []
    spans: list[tuple[int, int]] = []
    position = 1  # after BOS
    texts = iter(text_ids)
    cache: dict[int, np.ndarray] = {}
    last = len(turns) - 1
    for t, turn in enumerate(turns):
        on = train_on == "all" or turn["role"] == "assistant"
        for part in turn["content"]:
            if "text" in part:
                piece = next(texts)
            else:
                piece = _image_block(instance, part["image"], vocab, cache)
                spans.append((position, position + len(piece)))
            pieces.append(piece)
            supervised.append(on)
            position += len(piece)
        pieces.append((vocab.eos if t == last else vocab.sep,))
        supervised.append(on)
        position += 1
    input_ids = np.empty(position, dtype=np.int32)
    input_ids[0] = vocab.bos
    start = 1
    for piece in pieces:
        end = start + len(piece)
        input_ids[start:end] = piece
        start = end
    if train_on == "medmax":
        return Sample(input_ids, _medmax_labels(input_ids, vocab), spans)
    if not any(supervised):
        raise RecordError("nothing to learn: the instance has no assistant turn (use --train-on all?)")
    labels = np.full(position, IGNORE, dtype=np.int32)  # BOS is never a label
    start = 1
    for piece, on in zip(pieces, supervised, strict=True):
        end = start + len(piece)
        if on:
            labels[start:end] = input_ids[start:end]
        start = end
    return Sample(input_ids, labels, spans)


def _medmax_labels(ids: np.ndarray, vocab) -> np.ndarray:
    """MedMax's mask: -100 up to and including the first SEP, the ids themselves after it."""
    seps = np.flatnonzero(ids == vocab.sep)
    if seps.size == 0:
        raise RecordError("no separator: a one-turn instance has nothing after the prompt to learn")
    labels = ids.copy()
    labels[: seps[0] + 1] = IGNORE
    if not np.any(labels != IGNORE):
        raise RecordError("nothing to learn: no tokens after the first separator")
    return labels.astype(np.int32)


def _image_spans_of(ids: np.ndarray, vocab, tokens_per_image: int | None = None) -> list[tuple[int, int]]:
    """[start, end) of each BOI ... EOI block in a pre-tokenised sequence, after the same image-block
    check as `images[].tokens` (vision/tokencheck.py: closed, image codes only, the VQ grid's length)."""
    from medmax_cli.vision.tokencheck import image_block_problem

    problem = image_block_problem(ids, vocab, tokens_per_image)
    if problem:
        raise RecordError(f"pre-tokenised 'tokens': {problem}")
    starts = np.flatnonzero(ids == vocab.boi)
    ends = np.flatnonzero(ids == vocab.eoi)
    return [(int(s), int(e) + 1) for s, e in zip(starts, ends, strict=True)]


def _pretokenised(instance: Mapping[str, Any], vocab, tokens_per_image: int | None = None) -> Sample:
    tokens = instance["tokens"]
    if not isinstance(tokens, np.ndarray) and not is_token_list(tokens):
        raise RecordError("pre-tokenised 'tokens' must be a list of integer token ids")
    ids = np.asarray(tokens, dtype=np.int64)
    if ids.ndim != 1 or ids.size < 2:
        raise RecordError("pre-tokenised 'tokens' must be a list of at least two token ids")
    if ids.min() < 0 or ids.max() >= vocab.vocab_size:
        raise RecordError(f"pre-tokenised 'tokens' hold ids outside [0, {vocab.vocab_size})")
    ids = ids.astype(np.int32)
    if not np.any(ids == vocab.sep):
        raise RecordError("pre-tokenised 'tokens' have no separator: cannot tell prompt from response")
    try:
        labels = _medmax_labels(ids, vocab)  # MedMax's mask, whatever train_on says
    except RecordError:
        raise RecordError("pre-tokenised 'tokens' have no response after the separator") from None
    return Sample(ids, labels, _image_spans_of(ids, vocab, tokens_per_image))


def _fill_meta(sample: Sample, instance: Mapping[str, Any]) -> Sample:
    sample.id = str(instance.get("id", ""))
    sample.task = instance.get("task")
    sample.source = instance.get("source")
    return sample


# --------------------------------------------------------------------------- public


def build_sequences(
    instances: Sequence[Mapping[str, Any]], *, vocab, tokenizer, train_on: str = "assistant"
) -> list[Sample | RecordError]:
    """Samples for many instances with one batched tokenizer call; a bad instance gives its RecordError
    in its slot (so the caller's error policy decides) instead of failing the batch."""
    _check_train_on(train_on)
    tokenizer = text_tokenizer(tokenizer)
    wanted: list[list[str] | None] = []
    for instance in instances:
        if instance.get("tokens") is not None:
            wanted.append(None)
            continue
        try:
            wanted.append(_text_parts(instance, _turns(instance)))
        except (RecordError, LookupError, TypeError, ValueError, AttributeError):
            wanted.append([])  # _assemble reports the problem
    flat = [text for texts in wanted if texts for text in texts]
    encoded = tokenizer.encode_batch(flat) if flat else []
    out: list[Sample | RecordError] = []
    offset = 0
    for instance, texts in zip(instances, wanted, strict=True):
        n = len(texts) if texts else 0
        try:
            if texts is None:
                sample = _pretokenised(instance, vocab)
            else:
                sample = _assemble(instance, encoded[offset : offset + n], vocab, train_on)
            out.append(_fill_meta(sample, instance))
        except RecordError as exc:
            out.append(exc)
        except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError, StopIteration) as exc:
            out.append(RecordError(f"malformed instance ({type(exc).__name__}: {exc})"))
        offset += n
    return out


def build_sequence(instance: Mapping[str, Any], *, vocab, tokenizer, train_on: str = "assistant") -> Sample:
    """The token sequence and labels of one instance (see the module docstring for the layout)."""
    (result,) = build_sequences([instance], vocab=vocab, tokenizer=tokenizer, train_on=train_on)
    if isinstance(result, RecordError):
        raise result
    return result


def build_prompt_ids(
    instance: Mapping[str, Any], *, vocab, tokenizer, prompt_format: str = "sft"
) -> list[int]:
    """Token ids of the prompt: BOS and every turn before the final assistant turn (all turns when the
    last one is a user turn). `sft` closes each turn with SEP, as in training, so the model answers
    next; `raw` puts no SEP anywhere (plain continuation, for a base Chameleon)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, not {prompt_format!r}")
    if instance.get("tokens") is not None and not instance.get("turns"):
        ids = _pretokenised(instance, vocab).input_ids
        first_sep = int(np.flatnonzero(ids == vocab.sep)[0])
        return ids[: first_sep + (1 if prompt_format == "sft" else 0)].tolist()
    tokenizer = text_tokenizer(tokenizer)
    turns = _turns(instance)
    if turns[-1]["role"] == "assistant":
        turns = turns[:-1]
    texts = tokenizer.encode_batch(_text_parts(instance, turns)) if turns else []
    text_iter = iter(texts)
    cache: dict[int, np.ndarray] = {}
    ids: list[int] = [vocab.bos]
    for turn in turns:
        for part in turn["content"]:
            if "text" in part:
                ids.extend(next(text_iter))
            else:
                ids.extend(_image_block(instance, part["image"], vocab, cache).tolist())
        if prompt_format == "sft":
            ids.append(vocab.sep)
    return ids
