"""`medmax tokenize-images`: give every image its VQ codes (images[i].tokens and images[i].vq)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from medmax_cli.cliutil import (
    FormatOpt,
    InputArg,
    MediaDirOpt,
    OnErrorOpt,
    OutputOpt,
    QuietOpt,
    RejectsOpt,
    ShardOpt,
    StageIO,
    check_choice,
    fail,
)

HELP = """Encode every image that has no tokens for this model's codebook with the VQ-GAN encoder
(Chameleon/Anole preprocessing, exactly) and write images[i].tokens (codes 0..K-1) and
images[i].vq (the codebook's fingerprint). Batched on --device, images decoded by --workers threads
while the encoder runs, output in input order; a token cache keyed by (image sha256, codebook) means
an image is never encoded twice (docs/tokenize-images.md).

  medmax synthesize < sources.jsonl | medmax tokenize-images --model models/anole-7b > instances.tok.jsonl
"""


def resolve_model(explicit: Path | None) -> Path:
    """--model DIR, else $MEDMAX_MODEL, medmax.toml, the tiny demo model (exit 2 when not a model)."""
    from medmax_cli.model.resolve import ModelDirError, resolve_model_dir

    try:
        return Path(resolve_model_dir(explicit))
    except ModelDirError as exc:
        raise fail(str(exc)) from None


def register(app: typer.Typer) -> None:
    @app.command("tokenize-images", help=HELP)
    def tokenize_images_command(
        input: str = InputArg,
        output: str = OutputOpt,
        fmt: str = FormatOpt,
        model: Path = typer.Option(
            None,
            "--model",
            help="Model directory [env MEDMAX_MODEL, medmax.toml; tiny: the random demo model].",
        ),
        batch_size: int = typer.Option(32, "--batch-size", help="Images per encoder call."),
        workers: int = typer.Option(
            min(8, os.cpu_count() or 1),
            "--workers",
            help="Threads decoding and resizing images (0: in the main thread).",
        ),
        device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:N."),
        dtype: str = typer.Option(
            "fp32", "--dtype", help="Encoder precision: fp32 or bf16 (codes may differ)."
        ),
        compile: bool = typer.Option(
            False, "--compile", help="torch.compile the encoder (GPU; slow first batch)."
        ),
        cache_dir: Path = typer.Option(None, "--cache-dir", help="Token cache directory [MEDIA_DIR/.cache]."),
        alpha: str = typer.Option(
            "white",
            "--alpha",
            help="Transparency: white (blend onto white, as Anole and MedMax's evaluation) or drop "
            "(plain RGB conversion, as MedMax's released training tokens).",
        ),
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        shard: str = ShardOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        check_choice("--dtype", dtype, ("fp32", "bf16"))
        check_choice("--alpha", alpha, ("white", "drop"))
        if batch_size < 1 or workers < 0:
            raise fail("--batch-size must be >= 1 and --workers >= 0")
        if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
            raise fail(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}")
        model_dir = resolve_model(model)
        with StageIO(
            "tokenize-images",
            input=input,
            output=output,
            fmt=fmt,
            on_error=on_error,
            rejects=rejects,
            media_dir=media_dir,
            shard=shard,
            quiet=quiet,
        ) as io:
            if device.startswith("cuda"):
                import torch

                if not torch.cuda.is_available():
                    raise fail(f"--device {device}: CUDA is not available here (use --device cpu)")
            from medmax_cli.vision.tokenize import tokenize_images

            io.write_all(
                tokenize_images(
                    io.records,
                    model_dir=model_dir,
                    media=io.media,
                    policy=io.policy,
                    batch_size=batch_size,
                    device=device,
                    dtype=dtype,
                    workers=workers,
                    cache_dir=cache_dir,
                    compile=compile,
                    alpha=alpha,
                )
            )
