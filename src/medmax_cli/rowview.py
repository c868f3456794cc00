"""A packed row shown token by token with its loss label: what the model is trained on.

`medmax inspect SHARDS --row N` (as axolotl's preprocess debug view): the row's samples one after
another, each as runs of tokens that are trained on (a label) or masked (-100), special tokens by
name and image blocks as one `<image: K codes>` run, so a wrong mask (a user turn trained on, an
answer masked, a cut image) shows at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IGNORE = -100


@dataclass
class Run:
    """Consecutive tokens of one kind (text, special, image) with the same label state."""

    trained: bool
    kind: str  # "text" | "special" | "image" | "outside" (ids beyond the vocabulary)
    ids: list[int]
    text: str
    mismatched: int = 0  # trained tokens whose label is not the token itself


def load_row(shard_dir: str | Path, index: int) -> tuple[Any, dict[str, Any]]:
    """(PackedRow, manifest) of row `index` (0-based, in the manifest's order)."""
    from medmax_cli.pack.reader import PackedShards

    shards = PackedShards(shard_dir)
    if not 0 <= index < shards.num_rows:
        raise IndexError(f"{shard_dir}: row {index} is out of range: the shards hold {shards.num_rows} rows")
    shard = int(np.searchsorted(shards._first_rows, index, side="right") - 1)
    return shards._read_shard(shard, {index})[index], shards.manifest


def special_names(vocab: Any) -> dict[int, str]:
    names = {vocab.bos: "<s>", vocab.eos: "</s>", vocab.pad: "<pad>", vocab.sep: "<sep>"}
    names |= {vocab.boi: "<boi>", vocab.eoi: "<eoi>", vocab.image_placeholder: "<image>"}
    return names


def runs(ids: np.ndarray, labels: np.ndarray, vocab: Any, decode) -> list[Run]:
    """The tokens of one sample as runs of equal (label state, kind)."""
    specials = special_names(vocab)
    out: list[Run] = []
    for token, label in zip(ids.tolist(), labels.tolist(), strict=True):
        trained = label != IGNORE
        kind = (
            "outside"  # a tampered row: shown, never decoded as if it were text
            if not 0 <= token < vocab.vocab_size
            else "special"
            if token in specials
            else "image"
            if 0 <= token < len(vocab.id_to_image_code) and vocab.id_to_image_code[token] >= 0
            else "text"
        )
        if out and out[-1].trained == trained and out[-1].kind == kind and kind != "special":
            out[-1].ids.append(token)
        else:
            out.append(Run(trained, kind, [token], ""))
        if trained and label != token:
            out[-1].mismatched += 1
    for run in out:
        if run.kind == "special":
            run.text = specials[run.ids[0]]
        elif run.kind == "image":
            run.text = f"<image: {len(run.ids)} codes>"
        elif run.kind == "outside":
            run.text = f"<{len(run.ids)} ids outside the vocabulary of {vocab.vocab_size}: {run.ids[:4]}>"
        else:
            run.text = decode(run.ids)
    return out


def row_view(row: Any, manifest: dict[str, Any], vocab: Any, decode) -> dict[str, Any]:
    """The row as data: its samples, each with its runs (for --json and for `format_row`)."""
    bounds = row.boundaries.tolist()
    meta = row.meta or {}
    samples = []
    for n in range(len(bounds) - 1):
        lo, hi = bounds[n], bounds[n + 1]
        parts = runs(row.input_ids[lo:hi], row.labels[lo:hi], vocab, decode)
        samples.append(
            {
                "id": (meta.get("ids") or [None] * (n + 1))[n],
                "task": (meta.get("tasks") or [None] * (n + 1))[n],
                "source": (meta.get("sources") or [None] * (n + 1))[n],
                "tokens": [lo, hi],
                "trained": int(sum(len(r.ids) for r in parts if r.trained)),
                "runs": [
                    {"trained": r.trained, "kind": r.kind, "n": len(r.ids), "text": r.text, "ids": r.ids}
                    | ({"label_not_token": r.mismatched} if r.mismatched else {})
                    for r in parts
                ],
            }
        )
    return {
        "tokens": len(row.input_ids),
        "trained": int((row.labels != IGNORE).sum()),
        "seq_len": manifest.get("settings", {}).get("seq_len"),
        "train_on": manifest.get("settings", {}).get("train_on"),
        "samples": samples,
    }


def format_row(view: dict[str, Any], index: int, *, color: bool = False) -> str:
    """Plain text: a header, then per sample one line per run, `+` trained and `.` masked."""
    on, off, dim = ("\033[32m", "\033[0m", "\033[2m") if color else ("", "", "")
    lines = [
        f"row {index}: {view['tokens']} tokens of {view['seq_len']}, {view['trained']} trained on "
        f"(--train-on {view['train_on']}), {len(view['samples'])} samples; + trained, . masked (-100)"
    ]
    for n, sample in enumerate(view["samples"]):
        lo, hi = sample["tokens"]
        lines.append(
            f"-- sample {n + 1}: {sample['id']} ({sample['task']}, {sample['source']}), tokens {lo}-{hi}, "
            f"{sample['trained']} trained"
        )
        for run in sample["runs"]:
            mark = "+" if run["trained"] else "."
            text = run["text"].replace("\n", "\\n")
            warn = f"  [label != token for {run['label_not_token']}]" if run.get("label_not_token") else ""
            style = on if run["trained"] else dim
            lines.append(f"{style}{mark} {run['n']:>5}  {text}{off}{warn}")
    return "\n".join(lines) + "\n"
