"""`DIR/manifest.json`: what a shard directory holds and how it was made; written last.

Its presence marks a finished pack (the reader refuses a directory without one). It records the
settings, the model directory with its tokenizer and VQ fingerprints (so finetune can refuse shards
made with another vocabulary or codebook), counts by task and source, token and supervised-token
totals, packing efficiency, and every shard with its row count and sha256. No timestamps: the same
input and settings give the same manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from medmax_cli.pack.sequence import Sample
from medmax_cli.pack.shards import MANIFEST, PackedRow, ShardInfo
from medmax_cli.streams import AtomicFile

FORMAT = "medmax-packed-shards"
FORMAT_VERSION = 1


@dataclass
class PackStats:
    """Running totals over the samples and rows written."""

    seq_len: int
    samples: int = 0
    truncated: int = 0
    rows: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    image_blocks: int = 0
    by_task: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)

    def add_sample(self, sample: Sample) -> None:
        self.samples += 1
        self.truncated += int(sample.truncated)
        self.supervised_tokens += sample.n_supervised
        self.image_blocks += len(sample.image_spans)
        self.by_task[str(sample.task)] += 1
        self.by_source[str(sample.source)] += 1

    def add_row(self, row: PackedRow) -> None:
        self.rows += 1
        self.tokens += len(row)

    @property
    def efficiency(self) -> float:
        """Real tokens / row capacity (rows * seq_len)."""
        return self.tokens / (self.rows * self.seq_len) if self.rows else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "truncated": self.truncated,
            "rows": self.rows,
            "tokens": self.tokens,
            "supervised_tokens": self.supervised_tokens,
            "padding_tokens": self.rows * self.seq_len - self.tokens,
            "image_blocks": self.image_blocks,
            "efficiency": round(self.efficiency, 6),
            "by_task": dict(sorted(self.by_task.items())),
            "by_source": dict(sorted(self.by_source.items())),
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_fingerprints(model_dir: Path, tokenizer_path: Path | None = None) -> dict[str, str | None]:
    """Tokenizer and VQ fingerprints of the model directory, from the model/vision libraries when
    they are installed (a plain sha256 of the tokenizer file otherwise)."""
    tokenizer_fp: str | None = None
    vq_fp: str | None = None
    try:
        from medmax_cli.model.load import tokenizer_fingerprint

        tokenizer_fp = tokenizer_fingerprint(model_dir)
    except ImportError:
        if tokenizer_path is not None:
            tokenizer_fp = "sha256:" + file_sha256(tokenizer_path)
    try:
        from medmax_cli.vision.fingerprint import vq_fingerprint

        vq_fp = vq_fingerprint(model_dir)
    except (ImportError, FileNotFoundError, ValueError):  # no vision library, or no VQ weights
        vq_fp = None
    return {"tokenizer": tokenizer_fp, "vq": vq_fp}


def build_manifest(
    *,
    settings: dict[str, Any],
    model: dict[str, Any],
    stats: PackStats,
    shards: list[ShardInfo],
    rejected: dict[str, int] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "model": model,
        "model_random": bool(model.get("random", False)),  # random weights: the tiny demo model
        "rejected": dict(sorted((rejected or {}).items())),
        **stats.as_dict(),
        "shards": [
            {"name": s.name, "rows": s.rows, "first_row": s.first_row, "bytes": s.bytes, "sha256": s.sha256}
            for s in shards
        ],
    }


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST
    with AtomicFile(path) as handle:
        handle.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    return path


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{out_dir}: no {MANIFEST}: not a finished `medmax pack` output "
            "(the run may have been killed; run it again)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a medmax packed-shard manifest (not JSON: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: not a medmax packed-shard manifest (format {found!r})")
    problem = _manifest_problem(manifest)
    if problem:
        raise ValueError(f"{path}: malformed manifest: {problem}")
    return manifest


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What readers rely on, with its types: a hand-edited or foreign manifest fails here, by name."""
    settings = manifest.get("settings")
    if not isinstance(settings, dict) or type(settings.get("seq_len")) is not int:
        return "'settings.seq_len' must be an integer"
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return "'shards' must be a list"
    fields = {"name": str, "rows": int, "first_row": int, "sha256": str}
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict):
            return f"shards[{i}] must be an object"
        for key, kind in fields.items():
            if type(shard.get(key)) is not kind:
                return f"shards[{i}].{key} must be {'an integer' if kind is int else 'a string'}"
        if "/" in shard["name"] or shard["name"].startswith("."):
            return f"shards[{i}].name {shard['name']!r} is not a file in the directory"
    return None


def verify_shards(out_dir: str | Path, manifest: dict[str, Any] | None = None) -> None:
    """Check every shard listed in the manifest exists with its recorded sha256; raise otherwise."""
    manifest = manifest or read_manifest(out_dir)
    for shard in manifest["shards"]:
        path = Path(out_dir) / shard["name"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in the manifest but missing")
        if file_sha256(path) != shard["sha256"]:
            raise ValueError(f"{path}: sha256 differs from the manifest (changed or corrupt)")
