"""Checkpoints: RUN/checkpoints/step-N, written atomically, `latest` marker written last.

A checkpoint holds the trainable weights and the optimizer state (full, unsharded state dicts,
gathered from every rank with torch.distributed.checkpoint.state_dict so DDP, FSDP and a single
process are saved the same way), the scheduler, every rank's RNG states, the data position, the
resolved config, and a loadable export: `adapter/` (PEFT) or `model/` (--full). Only rank 0
writes: into `.tmp-step-N`, renamed to `step-N`, then `latest` is replaced. A run killed at any
moment leaves the previous `latest` intact.

The data position is a step number, so it only means something on the same rows: every checkpoint
records a fingerprint of the shards (`data_identity`), and `--resume` on shards that were re-packed
or replaced since stops with both fingerprints (`check_resume_data`) unless `--resume-new-data`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from medmax_cli.atomic import atomic_write_bytes
from medmax_cli.egress import redact
from medmax_cli.train.config import ConfigError, TrainConfig, resume_mismatches

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
# Files of the base model directory that an exported model does not rewrite itself.
_MODEL_OWN_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def data_identity(cfg: TrainConfig, manifest: dict[str, Any]) -> dict[str, str]:
    """Which rows a run trains on: the shards directory and a sha256 over the manifest's shard list
    (name, rows and sha256 of every shard), so re-packing into the same directory changes it."""
    shards = [[s.get("name"), s.get("rows"), s.get("sha256")] for s in manifest.get("shards") or []]
    digest = hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()
    return {"shards": str(cfg.shards), "fingerprint": f"sha256:{digest[:16]}"}


def check_resume_data(run: str | Path, cfg: TrainConfig, data: dict[str, str]) -> None:
    """Before anything loads: refuse to --resume on other rows than the checkpoint was trained on
    (the data position would point into different data), unless cfg.resume_new_data."""
    path = latest_dir(run)
    if path is None:
        return  # load_latest says there is nothing to resume
    try:
        saved = json.loads((path / STATE_FILE).read_text(encoding="utf-8")).get("data") or {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: cannot read {path / STATE_FILE}: {exc}") from None
    if not saved.get("fingerprint"):
        log.warning(
            "%s records no data fingerprint (an older run): cannot check the shards are the same", path
        )
        return
    if saved["fingerprint"] == data["fingerprint"]:
        return
    if getattr(cfg, "resume_new_data", False):
        log.warning(
            "--resume-new-data: %s was trained on %s (data %s); continuing on %s (data %s)",
            path, saved.get("shards"), saved["fingerprint"], data["shards"], data["fingerprint"],
        )  # fmt: skip
        return
    raise ConfigError(
        f"--resume: {path} was trained on shards {saved.get('shards')} (data {saved['fingerprint']}), "
        f"but {data['shards']} now holds other data (data {data['fingerprint']}): the shards were "
        "re-packed or replaced, so the saved data position would point into different rows. Resume on "
        "the original shards, start a new run (another -o), or pass --resume-new-data to continue on these"
    )


def _world(env: Any) -> int:
    return getattr(env, "world_size", 1)


def _options(cfg: TrainConfig, **extra: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=not cfg.full, **extra
    )


def latest_dir(run: str | Path) -> Path | None:
    marker = Path(run) / CHECKPOINTS / LATEST
    if not marker.is_file():
        return None
    path = Path(run) / CHECKPOINTS / marker.read_text(encoding="utf-8").strip()
    return path if path.is_dir() else None


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), sweep=True)  # and a killed run's temp of it


def save_config(run: Path, cfg: TrainConfig, model_dir: str) -> None:
    """RUN/config.json: the resolved settings, the model, and whether its weights were random
    (`model_random`, so nothing trained on the tiny demo model passes for a real run)."""
    from medmax_cli.model.load import model_is_random

    run.mkdir(parents=True, exist_ok=True)
    saved = {**cfg.to_dict(), "model": str(model_dir), "model_random": model_is_random(model_dir)}
    _write_text_atomic(run / "config.json", json.dumps(redact(saved), indent=2) + "\n")


def copy_model_extras(model_dir: str | Path, out: Path) -> None:
    """Tokenizer, medmax_model.json, VQ decoder...: what a loadable model directory needs besides weights."""
    for f in sorted(Path(model_dir).iterdir()):
        is_weights = f.name.startswith("model") and f.name.endswith(".safetensors")
        if f.is_file() and f.name not in _MODEL_OWN_FILES and not is_weights and not (out / f.name).exists():
            shutil.copy2(f, out / f.name)


def _strip(state: dict[str, Any], prefix: str = "model.") -> dict[str, Any]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _export(
    module: torch.nn.Module, model_state: dict[str, Any], out: Path, cfg: TrainConfig, model_dir: str
) -> None:
    """Write the loadable weights: a PEFT adapter dir, or (full) a transformers model dir."""
    inner = getattr(module, "module", module).model  # DDP -> PackedCausalLM -> peft/transformers model
    state = _strip(model_state)
    if cfg.full:
        inner.save_pretrained(out, state_dict=state)
        copy_model_extras(model_dir, out)
    else:
        # the base embeddings/lm_head are frozen even when lm_head carries a LoRA: never copy them
        inner.save_pretrained(out, state_dict=state, save_embedding_layers=False)


def save(
    run: Path,
    step: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    cfg: TrainConfig,
    env: Any,
    position: dict[str, int],
    model_dir: str,
    data: dict[str, str] | None = None,
) -> Path | None:
    """Collective: every rank calls it; rank 0 writes RUN/checkpoints/step-`step`.
    `data`: `data_identity` of the shards, checked by the next --resume."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_options(cfg))
    rng = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
    rngs: list[Any] = [rng]
    if _world(env) > 1:
        rngs = [None] * _world(env)
        dist.all_gather_object(rngs, rng)
    final = run / CHECKPOINTS / f"step-{step}"
    if env.rank == 0:
        tmp = run / CHECKPOINTS / f".tmp-step-{step}"
        for stale in (run / CHECKPOINTS).glob(".tmp-step-*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({"model": model_state, "optimizer": optim_state}, tmp / "trainer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rngs, tmp / "rng.pt")
        _export(model, model_state, tmp / ("model" if cfg.full else "adapter"), cfg, model_dir)
        state = {
            "step": step,
            "position": position,
            "world_size": _world(env),
            "config": redact(cfg.to_dict()),
            "model": str(model_dir),
            "data": data,
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_text_atomic(run / CHECKPOINTS / LATEST, final.name + "\n")  # marked last
        _prune(run, cfg.keep_checkpoints, keep=final)
    if _world(env) > 1:
        dist.barrier()
    return final


def _prune(run: Path, keep_n: int, keep: Path) -> None:
    if keep_n <= 0:
        return
    done = sorted(
        (p for p in (run / CHECKPOINTS).glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1])
    )
    for old in done[:-keep_n]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def load_latest(run: Path, model: torch.nn.Module, optimizer, scheduler, cfg: TrainConfig, env: Any) -> int:
    """Restore everything from RUN/checkpoints/latest; returns the step to continue from."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = latest_dir(run)
    if path is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {run / CHECKPOINTS} (no `latest` marker)")
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    problems = resume_mismatches(state["config"], cfg)
    if problems:
        raise ConfigError(f"--resume from {path} with different settings: " + "; ".join(problems))
    blob = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=blob["model"],
        optim_state_dict=blob["optimizer"],
        options=_options(cfg, strict=False),
    )
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rngs = torch.load(path / "rng.pt", weights_only=False)
    mine = rngs[env.rank] if env.rank < len(rngs) else rngs[0]
    torch.set_rng_state(mine["torch"])
    np.random.set_state(mine["numpy"])
    random.setstate(mine["python"])
    if mine.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda"])
    return int(state["step"])


def _replace_dir(src_builder, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    src_builder(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def write_final(run: Path, cfg: TrainConfig, model_dir: str) -> None:
    """RUN/adapter (or RUN/model with --full) from the last checkpoint; RUN/merged with --merge."""
    last = latest_dir(run)
    assert last is not None, "write_final runs after the final checkpoint"
    name = "model" if cfg.full else "adapter"
    _replace_dir(lambda tmp: shutil.copytree(last / name, tmp), run / name)
    if cfg.merge:
        _replace_dir(lambda tmp: merge_adapter(model_dir, run / "adapter", tmp), run / "merged")


def merge_adapter(model_dir: str | Path, adapter_dir: str | Path, out: str | Path) -> Path:
    """Base weights + LoRA folded in (`merge_and_unload`), saved as a plain transformers model dir."""
    from peft import PeftModel

    from medmax_cli.model.load import load_model

    base = load_model(model_dir, dtype="float32")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out = Path(out)
    merged.save_pretrained(out)
    copy_model_extras(model_dir, out)
    return out
