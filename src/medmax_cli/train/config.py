"""The fine-tuning configuration: one frozen dataclass, defaults = the MedMax recipe (REFERENCE.md 5).

Precedence: defaults < config file (TOML or JSON) < command-line flags. Unknown keys are errors
(a typo must not silently train with a default). The resolved config is saved as RUN/config.json
and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Changing one of these between a run and its --resume would silently train something else.
RESUME_LOCKED = (
    "full",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
    "lr",
    "lr_schedule",
    "warmup_ratio",
    "epochs",
    "max_steps",
    "weight_decay",
    "grad_clip",
    "micro_batch",
    "grad_accum",
    "seed",
    "shuffle",
    "loss_weighting",
    "adapter_dtype",
)


class ConfigError(ValueError):
    """A bad configuration key or value (the command exits with status 2)."""


@dataclass(frozen=True)
class TrainConfig:
    shards: str = ""  # packed shards directory written by `medmax pack`
    output: str = ""  # run directory (adapter, checkpoints, metrics)
    model: str | None = None  # model directory; None: the one recorded in the shards' manifest
    # -- what is trained
    full: bool = False  # full fine-tune of the language model (VQ frozen) instead of LoRA
    lora_r: int = 16  # MedMax: r 16
    lora_alpha: int = 16  # MedMax: alpha 16
    lora_dropout: float = 0.05  # MedMax: 0.05
    lora_targets: tuple[str, ...] = field(default=LORA_TARGETS)  # the seven projections
    lora_modules_to_save: tuple[
        str, ...
    ] = ()  # modules trained in full and saved in the adapter (e.g. lm_head)
    adapter_dtype: str = "fp32"  # fp32 (peft's default) | bf16 (half the adapter activation memory)
    # -- the objective
    loss_weighting: str = "sample"  # sample: mean of per-sample mean losses (MedMax) | token: per token
    # -- optimisation
    lr: float = 1e-4  # MedMax: 1e-4
    lr_schedule: str = "cosine"  # cosine | constant (both after the warm-up)
    warmup_ratio: float = 0.1  # fraction of the steps with a linear warm-up
    epochs: int = 3  # MedMax: 3
    max_steps: int | None = None  # total optimizer steps; None: epochs x steps per epoch
    stop_after: int | None = None  # stop (with a checkpoint) after this step; the schedule is unchanged
    weight_decay: float = 0.0  # MedMax: 0
    grad_clip: float = 1.0  # MedMax: 1.0 (max global gradient norm)
    micro_batch: int = 1  # packed rows per forward pass per process
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = micro x accum x processes
    seed: int = 0  # data order, LoRA init and dropout
    shuffle: bool = True  # shuffle rows every epoch (seeded)
    precision: str = "auto"  # auto (bf16 where the device supports it, else fp32) | bf16 | fp32
    attn_implementation: str = (
        "auto"  # auto (flex_attention on CUDA, sdpa on CPU) | flex_attention | sdpa | eager
    )
    grad_checkpointing: bool = False  # recompute decoder layers in backward (less memory)
    grad_checkpointing_fraction: float = 1.0  # share of decoder layers recomputed (evenly spaced; 1.0: all)
    loss_chunk: int = 1024  # supervised positions per lm_head/cross-entropy chunk (0: no chunking)
    # -- scale
    gpus: int = 1  # processes on this node (on CPU: gloo processes)
    nodes: int = 1  # nodes (read from SLURM when unset there)
    node_rank: int = 0  # this node's index
    master_addr: str = "127.0.0.1"  # rendezvous host (SLURM: first host of the job)
    master_port: int = 29500  # rendezvous port
    strategy: str = "auto"  # auto (fsdp on several GPUs, ddp on CPU) | ddp | fsdp
    deepspeed: str | None = None  # a DeepSpeed JSON config (needs the deepspeed package)
    # -- outputs
    save_every: int = 0  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept (0: all)
    log_every: int = 1  # metrics line every N steps
    log_to: str = "tensorboard"  # trackers beside metrics.jsonl: tensorboard,wandb,mlflow or none
    merge: bool = False  # also write RUN/merged (adapter merged into the base weights)
    resume: bool = False  # continue from RUN/checkpoints/latest
    resume_new_data: bool = False  # --resume even though the shards changed since the checkpoint

    @property
    def world_size(self) -> int:
        return self.gpus * self.nodes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        d["lora_modules_to_save"] = list(self.lora_modules_to_save)
        return d


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Keys of a TOML or JSON file (a [finetune] table in TOML is accepted too)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: cannot parse: {exc}") from None
    if isinstance(data.get("finetune"), dict) and len(data) == 1:
        data = data["finetune"]
    return data


def _coerce(name: str, value: Any) -> Any:
    default = FIELDS[name].default if FIELDS[name].default is not dataclasses.MISSING else None
    if name in ("lora_targets", "lora_modules_to_save"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of module names")
        return tuple(value)
    if value is None:
        return None
    kind = type(default) if default is not None else None
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if name in ("max_steps", "stop_after") and isinstance(value, int):
        return value
    if kind is not None and not isinstance(value, kind):
        raise ConfigError(f"{name} must be {kind.__name__}, got {value!r}")
    return value


def build_config(
    file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """defaults < file_values < overrides (None in overrides means 'not given')."""
    values: dict[str, Any] = {}
    for source in (file_values or {}), {k: v for k, v in (overrides or {}).items() if v is not None}:
        for key, value in source.items():
            name = key.replace("-", "_")
            if name not in FIELDS:
                raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(FIELDS)}")
            values[name] = _coerce(name, value)
    cfg = TrainConfig(**values)
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Value checks that need no files (bad combinations exit 2 before anything is read)."""
    from medmax_cli.train.metrics import TrackerError, check_loggers

    try:
        check_loggers(cfg.log_to)
    except TrackerError as exc:
        raise ConfigError(str(exc)) from None
    positive = ("lora_r", "epochs", "micro_batch", "grad_accum", "gpus", "nodes", "log_every")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError("max_steps must be >= 1")
    if cfg.stop_after is not None and cfg.stop_after < 1:
        raise ConfigError("stop_after must be >= 1")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ConfigError("warmup_ratio must be in [0, 1)")
    if not 0 < cfg.grad_checkpointing_fraction <= 1:
        raise ConfigError("grad_checkpointing_fraction must be in (0, 1]")
    if not 0 <= cfg.lora_dropout < 1:
        raise ConfigError("lora_dropout must be in [0, 1)")
    if cfg.lr <= 0:
        raise ConfigError("lr must be > 0")
    choices = {
        "lr_schedule": ("cosine", "constant"),
        "precision": ("auto", "bf16", "fp32"),
        "attn_implementation": ("auto", "flex_attention", "sdpa", "eager"),
        "strategy": ("auto", "ddp", "fsdp"),
        "loss_weighting": ("sample", "token"),
        "adapter_dtype": ("fp32", "bf16"),
    }
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(cfg, name)!r}")
    if not 0 <= cfg.node_rank < cfg.nodes:
        raise ConfigError(f"node_rank must be in [0, {cfg.nodes}), got {cfg.node_rank}")
    if cfg.full and cfg.merge:
        raise ConfigError("--merge applies to LoRA; --full already writes a complete model to RUN/model")
    if cfg.resume_new_data and not cfg.resume:
        raise ConfigError("--resume-new-data goes with --resume")
    if cfg.save_every < 0 or cfg.keep_checkpoints < 0:
        raise ConfigError("save_every and keep_checkpoints must be >= 0")


def resume_mismatches(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Keys whose value differs between a checkpoint's config and this run's (see RESUME_LOCKED)."""
    from medmax_cli.egress import redact

    now = redact(cfg.to_dict())  # as saved: a checkpoint holds the redacted config
    out = []
    for key in RESUME_LOCKED:
        if key in saved and saved[key] != now[key]:
            out.append(f"{key}: checkpoint {saved[key]!r}, now {now[key]!r}")
    if "loss_weighting" not in saved and cfg.loss_weighting != "token":  # older runs: per token
        out.append(f"loss_weighting: checkpoint 'token' (made before the option), now {cfg.loss_weighting!r}")
    if saved.get("gpus", 1) * saved.get("nodes", 1) != cfg.world_size:
        out.append(
            f"processes: checkpoint {saved.get('gpus', 1) * saved.get('nodes', 1)}, now {cfg.world_size}"
        )
    return out
