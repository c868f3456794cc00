"""`medmax finetune`: LoRA (or full) fine-tuning on packed shards, one process to many nodes."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from medmax_cli.cliutil import fail

HELP = """Fine-tune a Chameleon/Anole model on packed shards (LoRA, MedMax recipe by default).

  medmax pack --model models/anole-7b -o shards/ < instances.tok.jsonl
  medmax finetune shards/ -o runs/lora1 --gpus 8

Writes RUN/adapter (PEFT), RUN/metrics.jsonl, RUN/tb, RUN/loss.png and RUN/checkpoints/step-N;
--merge adds RUN/merged. Settings: defaults < --config FILE < flags; see docs/finetune.md."""


def _opt(default, *names, help: str):
    return typer.Option(default, *names, help=help, show_default=False)


def register(app: typer.Typer) -> None:
    @app.command("finetune", help=HELP)
    def finetune_command(
        shards: Path = typer.Argument(
            ..., help="Directory written by `medmax pack` (manifest.json + shard-*.tar)."
        ),
        output: Path = typer.Option(None, "--output", "-o", help="Run directory (required)."),
        model: str = _opt(
            None, "--model", help="Model directory [default: the one in the shards' manifest]."
        ),
        config: Path = _opt(None, "--config", help="TOML or JSON file with settings (flags override it)."),
        full: bool = _opt(None, "--full/--lora", help="Full fine-tune of the language model (VQ frozen)."),
        lora_r: int = _opt(None, "--lora-r", help="LoRA rank [16]."),
        lora_alpha: int = _opt(None, "--lora-alpha", help="LoRA alpha [16]."),
        lora_dropout: float = _opt(None, "--lora-dropout", help="LoRA dropout [0.05]."),
        lora_targets: str = _opt(None, "--lora-targets", help="Comma-separated modules [the 7 projections]."),
        lora_modules_to_save: str = _opt(
            None,
            "--lora-modules-to-save",
            help="Comma-separated modules trained in full, saved in the adapter.",
        ),
        adapter_dtype: str = _opt(
            None, "--adapter-dtype", help="LoRA adapter weights: fp32 or bf16 (less memory) [fp32]."
        ),
        loss_weighting: str = _opt(
            None,
            "--loss-weighting",
            help="sample: every sample weighs the same (MedMax) or token: every token [sample].",
        ),
        lr: float = _opt(None, "--lr", help="Peak learning rate [1e-4]."),
        lr_schedule: str = _opt(None, "--lr-schedule", help="cosine or constant, after warm-up [cosine]."),
        warmup_ratio: float = _opt(None, "--warmup-ratio", help="Warm-up fraction of the steps [0.1]."),
        epochs: int = _opt(None, "--epochs", help="Epochs over the shards [3]."),
        max_steps: int = _opt(None, "--max-steps", help="Total optimizer steps (overrides --epochs)."),
        stop_after: int = _opt(
            None, "--stop-after", help="Stop after this step (schedule unchanged; --resume later)."
        ),
        weight_decay: float = _opt(None, "--weight-decay", help="AdamW weight decay [0]."),
        grad_clip: float = _opt(None, "--grad-clip", help="Max gradient norm [1.0]."),
        micro_batch: int = _opt(None, "--micro-batch", help="Packed rows per forward per process [1]."),
        grad_accum: int = _opt(None, "--grad-accum", help="Micro-batches per step [1]."),
        seed: int = _opt(None, "--seed", help="Seed for data order, LoRA init, dropout [0]."),
        shuffle: bool = _opt(None, "--shuffle/--no-shuffle", help="Shuffle rows each epoch [yes]."),
        precision: str = _opt(None, "--precision", help="auto, bf16 or fp32 [auto: bf16 where supported]."),
        attn: str = _opt(None, "--attn", help="auto, flex_attention, sdpa or eager [auto]."),
        grad_checkpointing: bool = _opt(
            None, "--grad-checkpointing/--no-grad-checkpointing", help="Recompute layers in backward [no]."
        ),
        loss_chunk: int = _opt(None, "--loss-chunk", help="Positions per lm_head/loss chunk [1024]."),
        gpus: int = _opt(None, "--gpus", help="Processes on this node (CPU: gloo processes) [1]."),
        nodes: int = _opt(None, "--nodes", help="Number of nodes [1, or SLURM_NNODES]."),
        node_rank: int = _opt(None, "--node-rank", help="This node's rank [0, or SLURM_NODEID]."),
        master_addr: str = _opt(None, "--master-addr", help="Rendezvous host [SLURM's first host]."),
        master_port: int = _opt(None, "--master-port", help="Rendezvous port [29500]."),
        strategy: str = _opt(None, "--strategy", help="auto, ddp or fsdp [auto: fsdp on GPUs]."),
        deepspeed: str = typer.Option(  # hidden until the DeepSpeed engine is wired in
            None, "--deepspeed", hidden=True, help="DeepSpeed JSON config (needs the deepspeed package)."
        ),
        save_every: int = _opt(None, "--save-every", help="Checkpoint every N steps [only at the end]."),
        keep_checkpoints: int = _opt(None, "--keep-checkpoints", help="Checkpoints kept [2; 0 = all]."),
        log_every: int = _opt(None, "--log-every", help="Metrics line every N steps [1]."),
        log_to: str = _opt(
            None,
            "--log-to",
            help="Trackers beside RUN/metrics.jsonl: tensorboard, wandb, mlflow, comma list or none "
            "[tensorboard].",
        ),
        merge: bool = _opt(None, "--merge", help="Also write RUN/merged (adapter merged into the weights)."),
        resume: bool = _opt(None, "--resume", help="Continue from RUN/checkpoints/latest."),
        resume_new_data: bool = _opt(
            None, "--resume-new-data", help="With --resume: continue although the shards changed."
        ),
        overwrite: bool = typer.Option(
            False,
            "--overwrite",
            help="Replace the run already in -o (its config, metrics, checkpoints and exports); without "
            "it (or --resume) a folder holding a run is refused.",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    ) -> None:
        flags = dict(locals())  # first: every option, None where not given
        for name in ("config", "quiet", "attn", "output", "shards", "overwrite"):
            flags.pop(name)
        from medmax_cli.train.config import ConfigError, build_config, read_config_file
        from medmax_cli.train.launcher import needs_launch, slurm_settings

        if output is None:
            raise fail("--output/-o RUN is required")
        flags.update(attn_implementation=attn, shards=str(shards), output=str(output))
        try:
            file_values = {**slurm_settings(), **(read_config_file(config) if config else {})}
            cfg = build_config(file_values, flags)
        except ConfigError as exc:
            raise fail(str(exc)) from None
        if not (shards / "manifest.json").is_file():
            raise fail(f"{shards}: no manifest.json (not a finished `medmax pack` output)")
        if cfg.deepspeed:
            raise fail(
                "--deepspeed: this build trains with FSDP/DDP; the DeepSpeed engine is not wired in yet "
                "(drop --deepspeed: --gpus N uses FSDP)"
            )
        import torch

        if torch.cuda.is_available() and cfg.gpus > torch.cuda.device_count():
            raise fail(f"--gpus {cfg.gpus}: this node has {torch.cuda.device_count()} CUDA devices")
        from medmax_cli.model.resolve import NoModelError
        from medmax_cli.train.recipe import resolve_training_model

        try:  # before the run folder is made: a model-less run is bad usage (exit 2), nothing written
            resolve_training_model(cfg)
        except NoModelError as exc:
            raise fail(str(exc)) from None
        except (ConfigError, FileNotFoundError, ValueError):
            pass  # bad shards or model: reported by the run itself, after the run-folder check
        with _run_folder(cfg, overwrite=overwrite, launching=needs_launch(cfg)):
            _train(cfg, output, quiet)


def _run_folder(cfg, *, overwrite: bool, launching: bool):
    """The run folder's lock, and the check that it holds no run unless --resume/--overwrite
    (medmax_cli.train.runfolder); taken where files are written: this process, or before torchrun."""
    import os
    from contextlib import contextmanager

    from medmax_cli.train.launcher import in_worker
    from medmax_cli.train.runfolder import (
        RunFolderBusy,
        RunFolderError,
        lock_held_by_launcher,
        lock_run,
        prepare_run,
    )

    run = Path(cfg.output)

    @contextmanager
    def held():
        writer = not lock_held_by_launcher(run) and (
            os.environ.get("RANK", "0") == "0" if in_worker() else cfg.node_rank == 0
        )
        if not writer:  # the launcher holds the lock, or another rank/node writes the files
            yield
            return
        try:
            with lock_run(run, inheritable=launching):
                prepare_run(run, resume=bool(cfg.resume), overwrite=overwrite)
                yield
        except RunFolderBusy as exc:
            raise fail(str(exc), code=1) from None
        except RunFolderError as exc:
            raise fail(str(exc)) from None

    return held()


def _train(cfg, output: Path, quiet: bool) -> None:
    from medmax_cli.train.launcher import needs_launch, relaunch

    if needs_launch(cfg):
        relaunch(cfg, sys.argv[1:])
    from medmax_cli.train.config import ConfigError
    from medmax_cli.train.recipe import NonFiniteLoss, resolve_training_model, train

    try:
        model_dir = resolve_training_model(cfg)
        summary = train(cfg, model_dir, show_progress=not quiet)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc), code=1) from None
    except NonFiniteLoss as exc:
        raise fail(str(exc), code=1) from None
    if not quiet and summary.get("is_main", True):
        done = "finished" if summary["finished"] else f"stopped at step {summary['steps']}"
        typer.echo(
            f"medmax finetune: {done} ({summary['steps']}/{summary['total_steps']} steps); "
            f"outputs in {output}/ (loss plot: {output}/loss.png)",
            err=True,
        )
