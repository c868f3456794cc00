"""`medmax detokenize`: image tokens -> PNG files in the media store (images[i].decoded)."""

from __future__ import annotations

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

HELP = """Decode the VQ tokens of every image with the model's VQ-GAN decoder into a PNG in the media
store and add images[i].decoded = {sha256, path, width, height} (docs/tokenize-images.md).

  medmax tokenize-images < instances.jsonl | medmax detokenize | jq -r '.images[].decoded.path'
"""


def register(app: typer.Typer) -> None:
    @app.command("detokenize", help=HELP)
    def detokenize_command(
        input: str = InputArg,
        output: str = OutputOpt,
        fmt: str = FormatOpt,
        model: Path = typer.Option(
            None,
            "--model",
            help="Model directory with decoder weights [env MEDMAX_MODEL, "
            "medmax.toml; tiny: the random demo model].",
        ),
        batch_size: int = typer.Option(8, "--batch-size", help="Images per decoder call."),
        device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:N."),
        dtype: str = typer.Option("fp32", "--dtype", help="Decoder precision: fp32 or bf16."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Decode again images that have 'decoded'."),
        vq_decoder: Path = typer.Option(
            None,
            "--vq-decoder",
            help="Decoder weights file (.safetensors or vqgan.ckpt) instead of the model's own; may "
            "carry its own codebook (e.g. a fine-tuned VQ-GAN).",
        ),
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        shard: str = ShardOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        from medmax_cli.commands.tokenize_images import resolve_model

        check_choice("--dtype", dtype, ("fp32", "bf16"))
        if batch_size < 1:
            raise fail("--batch-size must be >= 1")
        model_dir = resolve_model(model)
        with StageIO(
            "detokenize",
            input=input,
            output=output,
            fmt=fmt,
            on_error=on_error,
            rejects=rejects,
            media_dir=media_dir,
            shard=shard,
            quiet=quiet,
        ) as io:
            from medmax_cli.vision.decoder import DecoderWeightsError
            from medmax_cli.vision.detokenize import detokenize

            try:
                io.write_all(
                    detokenize(
                        io.records,
                        model_dir=model_dir,
                        media=io.media,
                        policy=io.policy,
                        batch_size=batch_size,
                        device=device,
                        dtype=dtype,
                        overwrite=overwrite,
                        decoder_file=vq_decoder,
                    )
                )
            except (DecoderWeightsError, FileNotFoundError) as exc:
                raise fail(str(exc), code=1) from None
