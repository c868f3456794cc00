"""The fine-tuning recipe: setup_model, setup_data, setup_optimizer, and one visible loop.

Reads like torchtune's LoRA recipe / nanoGPT's train.py: no Trainer, no callbacks. Every process
(rank) runs `train(cfg)`; torch.distributed is initialised when WORLD_SIZE > 1 (the launcher
re-executes the command through torch.distributed.run). Only rank 0 writes files.

Loss normalisation (`loss_weighting`), always over the whole global batch of one optimizer step (all
micro-batches of all ranks), so a packed and an unpacked run of the same samples see the same loss,
and 2 processes x 1 micro-batch equal 1 process x 2 accumulated ones:
- `sample` (default, MedMax's objective): each sample's mean token loss, averaged over the samples
  of the step. MedMax trains one sample per GPU and averages per-sample means over GPUs and
  accumulation steps, so every sample weighs the same, whatever its length. Here each token carries
  1 / (its sample's supervised tokens) and the sum is divided by the global sample count.
- `token`: sum of token losses / supervised tokens of the step (long samples weigh more: a 2-token
  answer packed beside a 1,027-token image counts 257x less than under `sample`).
The divisor (samples or tokens of the step) is counted from the step's batches and summed over
ranks ONCE, before the backward passes, so every micro-batch's gradient is already globally scaled.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from medmax_cli.model.attention import default_attn_implementation, packed_attention_mask
from medmax_cli.model.loss import lm_loss
from medmax_cli.train import checkpoint as ckpt
from medmax_cli.train.config import TrainConfig
from medmax_cli.train.data import (
    TrainData,
    open_shards,
    real_tokens,
    supervised_samples,
    supervised_tokens,
)
from medmax_cli.train.metrics import MetricsLog

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The loss or gradient norm became inf/nan: the run stops, the last good checkpoint stays."""


@dataclass
class Env:
    """Where this process runs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_env() -> Env:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Env(rank, world, local_rank, device)


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """bf16 where the device supports it (CUDA with bf16), else fp32."""
    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        return torch.float32
    if cfg.precision == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float32
    return torch.bfloat16


class PackedCausalLM(torch.nn.Module):
    """model + packed mask + chunked loss in one forward, so DDP/FSDP see a single module call."""

    def __init__(
        self, model: torch.nn.Module, attn_implementation: str, loss_chunk: int, per_sample: bool = False
    ):
        super().__init__()
        self.model = model
        self.attn_implementation = attn_implementation
        self.loss_chunk = loss_chunk
        self.per_sample = per_sample  # loss = sum of per-sample mean losses (see the module docstring)

    def forward(self, input_ids, labels, position_ids, document_ids) -> tuple[torch.Tensor, torch.Tensor]:
        mask = packed_attention_mask(document_ids, self.attn_implementation, self.model.dtype)
        return lm_loss(
            self.model,
            input_ids,
            labels,
            position_ids=position_ids,
            attention_mask=mask,
            document_ids=document_ids,
            chunk_size=self.loss_chunk,
            per_sample=self.per_sample,
        )


def resolve_attn(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> str:
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    impl = default_attn_implementation(device)
    # full fine-tuning keeps fp32 weights under bf16 autocast, which flex_attention does not follow
    return "sdpa" if (cfg.full and dtype != torch.float32) else impl


def setup_model(cfg: TrainConfig, model_dir: str, env: Env) -> PackedCausalLM:
    """The base model with LoRA adapters (or all LM weights trainable with --full), VQ frozen."""
    from medmax_cli.model.load import load_model

    dtype = compute_dtype(cfg, env.device)
    attn = resolve_attn(cfg, env.device, dtype)
    torch.manual_seed(cfg.seed)  # LoRA init
    weights_dtype = torch.float32 if cfg.full else dtype  # LoRA: frozen base in bf16, adapters see below
    model = load_model(model_dir, dtype=weights_dtype, device=env.device, attn_implementation=attn)
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.full:
        for name, p in model.named_parameters():
            if ".vqmodel." not in f".{name}":
                p.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            modules_to_save=list(cfg.lora_modules_to_save) or None,
            bias="none",
            task_type="CAUSAL_LM",
        )
        # fp32 adapters (peft's autocast_adapter_dtype): each adapted projection keeps an fp32 copy of
        # its input for backward. bf16 adapters (the base dtype) keep none: less activation memory
        # (bench/train_gpu.py (c) measures it), at the price of bf16 weights and Adam states.
        # lora_dropout 0 makes peft use nn.Identity: no dropout output or mask is stored either.
        model = get_peft_model(model, lora, autocast_adapter_dtype=cfg.adapter_dtype == "fp32")
        if cfg.adapter_dtype == "bf16":  # also where the base is fp32 (CPU): what was asked for
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
    if cfg.grad_checkpointing:
        enable_checkpointing(model, cfg.grad_checkpointing_fraction)
    model.train()
    return PackedCausalLM(model, attn, cfg.loss_chunk, per_sample=cfg.loss_weighting == "sample")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers


def enable_checkpointing(model: torch.nn.Module, fraction: float = 1.0) -> list[int]:
    """Recompute `fraction` of the decoder layers (evenly spaced) in backward; returns their indices.

    All layers (the stock setting) is the least memory and the most recompute; on an 80 GB GPU about
    half the layers of a 7B model is enough to fit a 4096-token row under 40 GiB.
    """
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    layers = decoder_layers(model)
    n = len(layers)
    chosen = sorted(
        {min(n - 1, int(i * n / max(1, round(fraction * n)))) for i in range(round(fraction * n))}
    )
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i in chosen
    return chosen


def wrap_distributed(module: PackedCausalLM, cfg: TrainConfig, env: Env) -> torch.nn.Module:
    """DDP on CPU (gloo) or when asked; FSDP2 (`fully_shard`, per decoder layer) on several GPUs."""
    if env.world_size == 1:
        return module
    strategy = cfg.strategy
    if strategy == "auto":
        strategy = "fsdp" if env.device.type == "cuda" else "ddp"
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[env.device] if env.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for layer in (
        module.model.get_base_model().model.layers
        if hasattr(module.model, "get_base_model")
        else module.model.model.layers
    ):
        fully_shard(layer)
    fully_shard(module)
    return module


def setup_data(cfg: TrainConfig, env: Env, pad_id: int) -> TrainData:
    shards, _ = open_shards(cfg.shards)
    attn = resolve_attn(cfg, env.device, compute_dtype(cfg, env.device))
    data = TrainData(
        shards,
        env.rank,
        env.world_size,
        cfg.micro_batch,
        cfg.grad_accum,
        cfg.seed,
        cfg.shuffle,
        pad_id,
        pad_multiple=128 if attn == "flex_attention" else 1,
    )
    if data.steps_per_epoch < 1:
        raise ValueError(
            f"{cfg.shards}: {shards.rows_per_rank(env.world_size)} rows per process, fewer than one step "
            f"({data.rows_per_step} rows = micro-batch x grad-accum); lower --micro-batch/--grad-accum"
        )
    return data


def resolve_training_model(cfg: TrainConfig) -> str:
    """--model, else the model recorded in the shards' manifest, else the usual resolution."""
    from medmax_cli.model.load import check_model_dir, tokenizer_fingerprint
    from medmax_cli.model.resolve import resolve_model_dir
    from medmax_cli.train.data import manifest_model_dir

    shards, manifest = open_shards(cfg.shards)
    recorded = manifest_model_dir(shards)
    if cfg.model:
        model_dir = resolve_model_dir(cfg.model)
    elif recorded:
        model_dir = check_model_dir(recorded, source=f"{cfg.shards}/manifest.json")
    else:
        model_dir = resolve_model_dir(None)
    packed_with = (manifest.get("model") or {}).get("tokenizer") or (manifest.get("model") or {}).get(
        "tokenizer_fingerprint"
    )
    if packed_with and packed_with != tokenizer_fingerprint(model_dir):
        raise ValueError(
            f"{cfg.shards} was packed with another tokenizer ({packed_with}) than {model_dir}'s "
            f"({tokenizer_fingerprint(model_dir)}): pass the model used by `medmax pack`"
        )
    return str(model_dir)


def total_steps(cfg: TrainConfig, data: TrainData) -> int:
    return cfg.max_steps if cfg.max_steps is not None else cfg.epochs * data.steps_per_epoch


def setup_optimizer(cfg: TrainConfig, model: torch.nn.Module, steps: int):
    """AdamW over the trainable parameters and the warm-up + cosine (or constant) schedule."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    warmup = math.ceil(cfg.warmup_ratio * steps)
    if cfg.lr_schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    return optimizer, scheduler


def _all_sum(value: torch.Tensor, env: Env) -> torch.Tensor:
    if env.world_size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def train(cfg: TrainConfig, model_dir: str, *, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one fine-tuning run; returns a summary dict (rank 0's view)."""
    import warnings

    from transformers.utils import logging as hf_logging

    from medmax_cli.text.vocab import ChameleonVocab

    hf_logging.disable_progress_bar()  # "Loading weights" bars would drown the training bar
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    env = setup_env()
    run = Path(cfg.output)
    vocab = ChameleonVocab.from_model_dir(model_dir)
    data = setup_data(cfg, env, int(vocab.pad))
    data_id = ckpt.data_identity(cfg, data.shards.manifest)
    if cfg.resume:  # before the model loads: re-packed shards fail fast
        ckpt.check_resume_data(run, cfg, data_id)
    steps = total_steps(cfg, data)
    module = setup_model(cfg, model_dir, env)
    model = wrap_distributed(module, cfg, env)
    optimizer, scheduler = setup_optimizer(cfg, model, steps)
    dtype = compute_dtype(cfg, env.device)
    autocast = (
        torch.autocast(env.device.type, dtype=dtype) if cfg.full and dtype != torch.float32 else nullcontext()
    )

    start = 0
    if cfg.resume:
        start = ckpt.load_latest(run, model, optimizer, scheduler, cfg, env)
    elif env.is_main:
        ckpt.save_config(run, cfg, model_dir)
    metrics = (
        MetricsLog(run, start_step=start, loggers=cfg.log_to, config=cfg.to_dict()) if env.is_main else None
    )
    stop = min(steps, cfg.stop_after) if cfg.stop_after else steps
    bar = None
    if env.is_main and show_progress and start < stop and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(
            total=steps, initial=start, desc="finetune", unit="step", file=sys.stderr, dynamic_ncols=True
        )

    batches = data.batches(start)
    step = start
    last_saved = start if cfg.resume else None
    try:
        while step < stop:
            t0 = time.perf_counter()
            micro_batches = next(batches)
            # the step's global counts, gathered once before any backward: [tokens, supervised, samples]
            counts = _all_sum(
                torch.tensor(
                    [
                        float(sum(real_tokens(b) for b in micro_batches)),
                        float(sum(supervised_tokens(b) for b in micro_batches)),
                        float(sum(supervised_samples(b) for b in micro_batches)),
                    ],
                    device=env.device,  # NCCL reduces CUDA tensors only
                ),
                env,
            )
            n_tok, n_sup, n_samples = counts[0], counts[1], counts[2]
            divisor = (n_samples if cfg.loss_weighting == "sample" else n_sup).clamp(min=1)
            loss_sum = torch.zeros((), device=env.device)
            for i, mb in enumerate(micro_batches):
                mb = {k: v.to(env.device, non_blocking=True) for k, v in mb.items()}
                # dropout noise depends only on (seed, step, global micro-batch index): a resumed run, and
                # N processes x 1 micro-batch vs 1 process x N accumulated, draw the same masks
                torch.manual_seed(
                    cfg.seed * 1_000_003 + (step * len(micro_batches) + i) * env.world_size + env.rank
                )
                sync = nullcontext()
                if hasattr(model, "no_sync") and i < len(micro_batches) - 1:
                    sync = model.no_sync()  # DDP: all-reduce only on the last micro-batch
                with sync:
                    with autocast:
                        token_loss_sum, _ = model(**mb)
                    # DDP/FSDP average gradients over ranks: scale by world size to get a global-batch sum
                    (token_loss_sum * env.world_size / divisor).backward()
                loss_sum += token_loss_sum.detach()
            loss = (_all_sum(loss_sum, env) / divisor).item()
            trainable = [p for p in model.parameters() if p.requires_grad]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip))
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                where = (
                    f"the last good checkpoint is {ckpt.latest_dir(run)}"
                    if ckpt.latest_dir(run)
                    else "no checkpoint was written yet"
                )
                raise NonFiniteLoss(
                    f"step {step + 1}: loss {loss}, gradient norm {grad_norm}: stopping; {where} "
                    "(lower --lr, check the shards, or use --precision fp32)"
                )
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seconds = time.perf_counter() - t0
            if metrics is not None and (step % cfg.log_every == 0 or step == stop):
                metrics.write(
                    {
                        "step": step,
                        "epoch": data.position(step - 1)["epoch"],
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_s": n_tok.item() / seconds,
                        "supervised_tokens": int(n_sup.item()),
                        "samples": int(n_samples.item()),
                        "loss_weighting": cfg.loss_weighting,
                        "tokens": int(n_tok.item()),
                        "seconds": seconds,
                    }
                )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{n_tok.item() / seconds:,.0f}")
            elif env.is_main and show_progress and (step % max(1, steps // 10) == 0 or step == stop):
                # not a terminal (a log file, SLURM): a line every ~10% instead of a bar
                print(
                    f"finetune: step {step}/{steps} loss {loss:.4f} lr {lr:.3g} "
                    f"{n_tok.item() / seconds:,.0f} tokens/s",
                    file=sys.stderr,
                    flush=True,
                )
            if (cfg.save_every and step % cfg.save_every == 0) or step == stop:
                ckpt.save(
                    run,
                    step,
                    model,
                    optimizer,
                    scheduler,
                    cfg,
                    env,
                    data.position(step),
                    model_dir,
                    data=data_id,
                )
                last_saved = step
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    summary = {"steps": step, "total_steps": steps, "last_checkpoint": last_saved, "finished": step >= steps}
    if env.is_main and step >= steps:
        ckpt.write_final(run, cfg, model_dir)
    if env.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    summary["is_main"] = env.is_main
    return summary
