"""`medmax init-model`: write a model directory (only the tiny random model can be built)."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Write a tiny randomly initialised Chameleon model directory with the real vocabulary
layout (65,536 ids), a byte-level BPE tokenizer trained on the bundled sample corpus and a tiny VQ
encoder (32x32 images, 64 tokens each). Same --seed, byte-identical files. Prints the directory.

  medmax init-model --tiny -o models/tiny && medmax tokenize-images --model models/tiny < recs.jsonl

Real Anole/Chameleon weights are not built here: download or convert them to a local Hugging Face
directory and pass it with --model DIR (or $MEDMAX_MODEL, or model = "DIR" in medmax.toml)."""


def register(app: typer.Typer) -> None:
    @app.command("init-model", help=HELP)
    def init_model(
        tiny: bool = typer.Option(False, "--tiny", help="Build the tiny random model (the only builder)."),
        out: Path = typer.Option(
            None, "--out", "-o", help="Directory to create (must not exist, or be empty)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
        force: bool = typer.Option(False, "--force", help="Replace an existing non-empty directory."),
    ) -> None:
        from medmax_cli.cliutil import fail

        if not tiny:
            raise fail(
                "only the tiny model can be built (--tiny); for real weights download or convert "
                "Anole/Chameleon to a local Hugging Face directory and pass --model DIR"
            )
        if out is None:
            raise fail("--out/-o DIR is required")
        if out.exists() and not out.is_dir():
            raise fail(f"{out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()):
            if not force:
                raise fail(f"{out} is not empty; pass --force to replace it")
            import shutil

            shutil.rmtree(out)
        elif out.is_dir():
            out.rmdir()

        from medmax_cli.model.resolve import build_tiny_model_atomic
        from medmax_cli.model.tiny import IMAGE_SIZE, TOKENS_PER_IMAGE

        build_tiny_model_atomic(out, seed=seed, lock=False)
        typer.echo(
            f"medmax: tiny model (seed {seed}, {IMAGE_SIZE}x{IMAGE_SIZE} images, "
            f"{TOKENS_PER_IMAGE} tokens each) written to {out}",
            err=True,
        )
        typer.echo(str(out))
