"""The `detokenize` stage: image codes -> PNG files in the media store, for inspection and generate.

Each image with `tokens` made by this model's codebook gets `"decoded": {"sha256", "path",
"width", "height"}`, a PNG in the media store (content-addressed, so decoding twice costs one
file). Records are decoded in batches across records and leave in input order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medmax_cli.media import MediaStore
from medmax_cli.records import RecordError
from medmax_cli.streams import RECORD_FAULTS, ErrorPolicy
from medmax_cli.vision.fingerprint import vq_fingerprint
from medmax_cli.vision.spec import VQSpec


def _jobs(record: dict[str, Any], vq: str, n_tokens: int, n_codes: int, overwrite: bool) -> list[int]:
    """Indices of the record's images to decode; RecordError when their tokens do not fit this model."""
    todo = []
    for index, ref in enumerate(record.get("images") or []):
        tokens = ref.get("tokens")
        if tokens is None or ("decoded" in ref and not overwrite):
            continue
        if ref.get("vq") != vq:
            raise RecordError(
                f"images[{index}] tokens come from codebook {ref.get('vq')!r}, this model's is {vq!r}"
            )
        if len(tokens) != n_tokens:
            raise RecordError(
                f"images[{index}] has {len(tokens)} tokens, this model's images have {n_tokens}"
            )
        if tokens and (min(tokens) < 0 or max(tokens) >= n_codes):
            raise RecordError(f"images[{index}] tokens must lie in 0..{n_codes - 1}")
        todo.append(index)
    return todo


def detokenize(
    records: Iterable[dict[str, Any]],
    *,
    model_dir: str | Path,
    media: MediaStore,
    policy: ErrorPolicy,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: str = "fp32",
    overwrite: bool = False,
    decoder: Any = None,
    decoder_file: str | Path | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield records with `images[i].decoded` set for every image that has tokens."""
    from medmax_cli.vision.decoder import codes_to_pil, load_vq_decoder
    from medmax_cli.vision.encoder import resolve_device, resolve_dtype

    spec = VQSpec.from_model_dir(model_dir)
    vq = vq_fingerprint(model_dir)
    state: dict[str, Any] = {"decoder": decoder}
    group: list[tuple[dict[str, Any], list[int]]] = []

    def flush() -> Iterator[dict[str, Any]]:
        todo = [(record, index) for record, indices in group for index in indices]
        if todo:
            if state["decoder"] is None:
                dev = resolve_device(device)
                state["decoder"] = load_vq_decoder(
                    model_dir, device=dev, dtype=resolve_dtype(dtype, dev), decoder_file=decoder_file
                )
            images = codes_to_pil(
                state["decoder"], [r["images"][i]["tokens"] for r, i in todo], batch_size=batch_size
            )
            for (record, index), image in zip(todo, images, strict=True):
                record["images"][index]["decoded"] = media.put_image(
                    image, what=f"record {record.get('id')} decoded"
                )
            policy.report.count("decoded", len(todo))
        for record, _ in group:
            yield record
        group.clear()

    pending = 0
    for record in records:
        try:
            indices = _jobs(record, vq, spec.tokens_per_image, spec.num_embeddings, overwrite)
        except RECORD_FAULTS as exc:
            yield from flush()  # what came before leaves first, in order
            pending = 0
            policy.reject(exc, record)
            continue
        group.append((record, indices))
        pending += len(indices)
        if pending >= batch_size:
            yield from flush()
            pending = 0
    yield from flush()
