"""`medmax generate` as a library: setup_engine (model, adapter, masks) and the record stage.

Read like a recipe: `setup_engine` returns one object holding the model runner, the vocabulary,
the tokenizer and the precomputed masks; `generate_stage` batches records, builds and checks
prompts, resolves each record's settings (its preset plus the user's flags, `config.py`), runs the
phases (`interleave.run_rows`) once per group of rows with equal settings, and turns tokens back
into a prediction (naming the preset and every setting): text parts, and
generated images stored as PNG in the media store (appended to `images` with their tokens and
`vq`, referenced by index). Output order equals input order.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmax_cli.generate.config import GenerateConfig, Settings
from medmax_cli.generate.interleave import Row, run_rows
from medmax_cli.generate.prompt import prompt_ids, resolve_mode, tokens_per_image
from medmax_cli.generate.sampling import row_seed
from medmax_cli.media import MediaStore
from medmax_cli.records import RecordError
from medmax_cli.streams import RECORD_FAULTS, ErrorPolicy

log = logging.getLogger(__name__)


@dataclass
class Engine:
    """A loaded model ready to generate."""

    model_dir: Path
    model: Any
    runner: Any  # decode.Runner
    vocab: Any  # ChameleonVocab
    tokenizer: Any  # TextTokenizer
    masks: Any  # processors.TextMasks
    code_ids: Any  # long [K] on the device: VQ code -> token id
    tokens_per_image: int
    context: int
    adapter: str | None = None
    image_writer: Any = None  # codes -> image ref dict, or None when no VQ decoder is available
    media: MediaStore | None = None  # where generated PNGs go
    model_random: bool = False  # random weights (the tiny demo model): every prediction says so


def resolve_adapter_dir(path: str | Path) -> Path:
    """A PEFT adapter directory: PATH itself or PATH/adapter (a finetune run directory)."""
    p = Path(path)
    for cand in (p, p / "adapter"):
        if (cand / "adapter_config.json").is_file():
            return cand
    hint = f" (a --full run: use --model {p / 'model'})" if (p / "model" / "config.json").is_file() else ""
    raise FileNotFoundError(
        f"{p}: no adapter_config.json here or in {p / 'adapter'}: not a finetune run or adapter{hint}"
    )


def default_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def default_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "bfloat16" if str(device).startswith("cuda") else "float32"
    return dtype


def setup_engine(
    model_dir: str | Path,
    *,
    adapter: str | Path | None = None,
    merge: bool = True,
    device: str = "auto",
    dtype: str = "auto",
    compile: bool = False,
    media: MediaStore | None = None,
    model: Any = None,
) -> Engine:
    """Load the model (and adapter: merged with merge_and_unload unless `merge=False`)."""
    import torch

    from medmax_cli.generate.decode import Runner
    from medmax_cli.generate.processors import TextMasks
    from medmax_cli.model.load import load_model, model_is_random
    from medmax_cli.text.tokenizer import load_text_tokenizer
    from medmax_cli.text.vocab import ChameleonVocab

    model_dir = Path(model_dir)
    device = default_device(device)
    dtype = default_dtype(dtype, device)
    if model is None:
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one progress line per weight file is noise on a pipe's stderr
        try:
            model = load_model(model_dir, dtype=dtype, device=device)
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()
    adapter_dir = None
    if adapter is not None:
        from peft import PeftModel

        adapter_dir = resolve_adapter_dir(adapter)
        with warnings.catch_warnings():
            # peft asks transformers a deprecated question (is_gradient_checkpointing) on load.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        if merge:
            model = model.merge_and_unload()
        model.eval()
    vocab = ChameleonVocab.from_model_dir(model_dir)
    config = model.config if hasattr(model, "config") else None
    tpi = tokens_per_image(model_dir)
    context = int(getattr(config, "max_position_embeddings", 4096))
    runner = Runner(model, compile=compile)
    masks = TextMasks.build(
        vocab,
        vocab_size=runner.head_weight.shape[0],
        context=context,
        tokens_per_image=tpi,
        device=runner.device,
    )
    code_ids = torch.from_numpy(vocab.image_code_to_id.copy()).to(runner.device)
    engine = Engine(
        model_dir=model_dir,
        model=model,
        runner=runner,
        vocab=vocab,
        tokenizer=load_text_tokenizer(model_dir),
        masks=masks,
        code_ids=code_ids,
        tokens_per_image=tpi,
        context=context,
        adapter=str(adapter_dir) if adapter_dir else None,
        model_random=model_is_random(model_dir),
    )
    if media is not None:
        engine.media = media
        engine.image_writer = _image_writer(model_dir, media, runner.device)
    return engine


def _image_writer(model_dir: Path, media: MediaStore, device: Any = "cpu"):
    """codes -> image ref {sha256, path, width, height, tokens, vq}, via the vision decoder.

    Without the decoder (vision library missing, or a model directory without decoder weights)
    generated images are kept as tokens only ({"tokens", "vq"}), with a warning.
    """
    try:
        from medmax_cli.vision.decoder import codes_to_pil, load_vq_decoder
    except ImportError:
        log.warning(
            "no VQ decoder available (medmax_cli.vision.decoder): generated images are kept as tokens"
        )
        return None
    try:
        decoder = load_vq_decoder(model_dir, device=device)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        log.warning(
            "cannot load the VQ decoder of %s (%s): generated images are kept as tokens", model_dir, exc
        )
        return None
    vq = vq_fingerprint(model_dir)

    def write(codes: list[int]) -> dict[str, Any]:
        (image,) = codes_to_pil(decoder, [codes])
        ref = dict(media.put_image(image, what="generated image"))
        ref["tokens"] = list(codes)
        ref["vq"] = vq
        return ref

    return write


def vq_fingerprint(model_dir: Path) -> str:
    """The `vq` tag of tokens made with this model's codebook (as tokenize-images writes it)."""
    try:
        from medmax_cli.vision.fingerprint import vq_fingerprint as fingerprint
    except ImportError:
        from medmax_cli.model.load import model_fingerprint

        return "model-" + model_fingerprint(model_dir)
    return fingerprint(model_dir)


def check_prompt(ids: list[int], vocab: Any, tokens_per_image: int) -> None:
    """Refuse a prompt Anole and this toolkit would condition differently (a pre-tokenised record's
    `tokens` can hold anything): exactly one BOS, first; every BOI opens a block of exactly
    `tokens_per_image` image codes closed by EOI; no image code or EOI outside a block."""
    if not ids or ids[0] != vocab.bos:
        raise RecordError("malformed prompt: it does not start with BOS")
    if ids.count(vocab.bos) > 1:
        raise RecordError(f"malformed prompt: {ids.count(vocab.bos)} BOS tokens (expected one, first)")
    is_code = vocab.is_image_token(ids).tolist()
    i, n = 0, len(ids)
    while i < n:
        tok = ids[i]
        if tok == vocab.boi:
            block = ids[i + 1 : i + 1 + tokens_per_image]
            end = i + 1 + tokens_per_image
            if (
                len(block) < tokens_per_image
                or not all(is_code[i + 1 : end])
                or end >= n
                or ids[end] != vocab.eoi
            ):
                raise RecordError(
                    f"malformed prompt: unfinished image block at token {i} (BOI must be followed by "
                    f"{tokens_per_image} image codes and EOI)"
                )
            i = end + 1
            continue
        if tok == vocab.eoi or is_code[i]:
            raise RecordError(
                f"malformed prompt: {'EOI' if tok == vocab.eoi else 'image code'} outside an image block at token {i}"
            )
        i += 1


def _make_row(engine: Engine, record: dict[str, Any], cfg: GenerateConfig) -> Row:
    mode = resolve_mode(record, cfg.mode)
    _check_prompt_tokens(engine, record)
    settings = cfg.settings_for(record, mode)
    try:
        ids = prompt_ids(
            record, vocab=engine.vocab, tokenizer=engine.tokenizer, prompt_format=cfg.prompt_format
        )
    except RecordError as exc:  # pack's check of pre-tokenised blocks: still a prompt this stage refuses
        if exc.reason.startswith("malformed prompt"):
            raise
        raise RecordError(
            f"malformed prompt: {exc.reason}", record_id=exc.record_id, where=exc.where
        ) from exc
    check_prompt(ids, engine.vocab, engine.tokens_per_image)
    room = engine.context - len(ids)
    block = engine.tokens_per_image + 2
    if room < 1:
        raise RecordError(f"prompt too long: {len(ids)} tokens, the model's context is {engine.context}")
    if mode == "image" and room < block:
        raise RecordError(
            f"prompt too long for an image: {len(ids)} prompt tokens + {block} for the image block "
            f"> context {engine.context}"
        )
    if mode == "image":
        budget = block
    else:
        budget = min(settings.max_new_tokens or room, room)
    return Row(prompt=ids, mode=mode, seed=row_seed(cfg.seed, record["id"]), budget=budget, settings=settings)


def _check_prompt_tokens(engine: Engine, record: dict[str, Any]) -> None:
    """Prompt images must carry this model's codes (tag, grid length, range): tokens of another
    codebook would be read as garbage (`--no-encode-images` does not re-encode them)."""
    from medmax_cli.generate.prompt import _is_prompt_image
    from medmax_cli.vision.tokencheck import check_image_tokens

    if not any(isinstance(im, dict) and im.get("tokens") is not None for im in record.get("images") or []):
        return
    check_image_tokens(
        record,
        vq=vq_fingerprint(engine.model_dir),
        tokens_per_image=engine.tokens_per_image,
        n_codes=int(engine.vocab.n_codes),
        which=lambda index: _is_prompt_image(record, index),
    )


def _prediction(engine: Engine, record: dict[str, Any], row: Row, cfg: GenerateConfig) -> dict[str, Any]:
    out = dict(record)
    images = list(record.get("images") or [])
    content: list[dict[str, Any]] = []
    for kind, toks in row.segments:
        if kind == "text":
            content.append({"text": engine.tokenizer.decode(toks)})
            continue
        if engine.image_writer is not None:
            ref = engine.image_writer(toks)
        else:
            ref = {"tokens": list(toks), "vq": vq_fingerprint(engine.model_dir)}
        images.append(ref)
        content.append({"image": len(images) - 1})
    out["images"] = images
    out["prediction"] = content
    settings = {"mode": row.mode, "prompt_format": cfg.prompt_format, **row.settings.record()}
    settings["model"] = str(engine.model_dir)
    settings["model_random"] = engine.model_random
    if engine.adapter:
        settings["adapter"] = engine.adapter
    settings["tokens_per_image"] = engine.tokens_per_image
    settings["context"] = engine.context
    out["generation"] = {
        "mode": row.mode,
        "preset": row.settings.preset,
        "settings": settings,
        "seed": cfg.seed,
        "budget": row.budget,
        "new_tokens": row.used,
        "stop": row.stop,
    }
    return out


def _batches(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def select_records(
    records: Iterable[dict[str, Any]],
    *,
    tasks: Iterable[str] | None = None,
    limit: int | None = None,
    report: Any = None,
) -> Iterator[dict[str, Any]]:
    """Only instances of `tasks` (all when None), at most `limit` per task (MedMax's image-generation
    evaluation takes the first 100 prompts per source). Left-out records are counted, not rejected."""
    wanted = set(tasks) if tasks else None
    seen: dict[str, int] = {}
    for record in records:
        task = str(record.get("task"))
        if (wanted is not None and task not in wanted) or (limit is not None and seen.get(task, 0) >= limit):
            if report is not None:
                report.count("left out")
            continue
        seen[task] = seen.get(task, 0) + 1
        yield record


def generate_stage(
    records: Iterable[dict[str, Any]],
    *,
    engine: Engine,
    config: GenerateConfig,
    policy: ErrorPolicy | None = None,
) -> Iterator[dict[str, Any]]:
    """Predictions for task instances, `config.batch_size` at a time, in input order."""
    import torch

    config.check()
    policy = policy or ErrorPolicy()
    for batch in _batches(records, config.batch_size):
        rows: list[Row | None] = []
        for record in batch:
            try:
                rows.append(_make_row(engine, record, config))
            except RECORD_FAULTS as exc:
                policy.reject(exc, record)
                rows.append(None)
        groups: dict[Settings, list[Row]] = {}
        for row in rows:
            if row is not None:
                groups.setdefault(row.settings, []).append(row)
        for settings, live in groups.items():  # a row's output does not depend on its batch-mates
            with torch.inference_mode():
                run_rows(
                    engine.runner,
                    live,
                    masks=engine.masks,
                    code_ids=engine.code_ids,
                    vocab=engine.vocab,
                    settings=settings,
                )
        for record, row in zip(batch, rows, strict=True):
            if row is None:
                continue
            try:
                out = _prediction(engine, record, row, config)
            except RECORD_FAULTS as exc:
                policy.reject(exc, record)
                continue
            policy.report.count("generated")
            policy.report.count("new tokens", row.used)
            yield out
