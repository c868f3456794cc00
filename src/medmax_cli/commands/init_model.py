"""`medmax init-model`: write a random model directory (the tiny model, or Anole-7B's shape)."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Write a randomly initialised Chameleon model directory with the real vocabulary layout
(65,536 ids) and a byte-level BPE tokenizer trained on the bundled sample corpus. Same --seed,
byte-identical files. Prints the directory.

  --tiny: hidden 64, 2 layers, a tiny VQ encoder (32x32 images, 64 tokens each): seconds.
  --shape anole-7b [--layers N]: exactly Anole-7B's configuration (hidden 4096, 32 heads,
  intermediate 11008, the real VQ-GAN: 512x512 images, 1,024 tokens each) except the number of
  decoder layers (default 32), in the HF conversion's layout (sharded bf16 safetensors + index,
  tokenizer, processor and generation configs); 2 layers = 1.9 GB, 32 layers = 14 GB on disk.

  medmax init-model --tiny -o models/tiny && medmax tokenize-images --model models/tiny < recs.jsonl
  medmax init-model --shape anole-7b --layers 2 -o models/anole-2l

Real Anole/Chameleon weights are not built here: download or convert them to a local Hugging Face
directory and pass it with --model DIR (or $MEDMAX_MODEL, or model = "DIR" in medmax.toml)."""


def register(app: typer.Typer) -> None:
    @app.command("init-model", help=HELP)
    def init_model(
        tiny: bool = typer.Option(False, "--tiny", help="Build the tiny random model."),
        shape: str = typer.Option(
            None, "--shape", help="Build a random model of this real shape (anole-7b)."
        ),
        layers: int = typer.Option(
            None, "--layers", help="Decoder layers of the --shape model (default: the real 32)."
        ),
        out: Path = typer.Option(
            None, "--out", "-o", help="Directory to create (must not exist, or be empty)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
        force: bool = typer.Option(False, "--force", help="Replace an existing non-empty directory."),
    ) -> None:
        from medmax_cli.cliutil import fail

        if tiny == (shape is not None):
            raise fail(
                "pass exactly one of --tiny or --shape anole-7b; for real weights download or convert "
                "Anole/Chameleon to a local Hugging Face directory and pass --model DIR"
            )
        if shape is not None:
            from medmax_cli.model.anole import ANOLE_7B_LAYERS, SHAPES

            if shape not in SHAPES:
                raise fail(f"unknown --shape {shape!r}; known: {', '.join(SHAPES)}")
            layers = ANOLE_7B_LAYERS if layers is None else layers
            if layers < 1:
                raise fail(f"--layers must be at least 1, got {layers}")
        elif layers is not None:
            raise fail("--layers goes with --shape (the tiny model has 2 layers)")
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

        if shape is not None:
            from medmax_cli.model.anole import IMAGE_SIZE, TOKENS_PER_IMAGE, build_anole_shape_model_atomic

            build_anole_shape_model_atomic(out, seed=seed, layers=layers)
            what = f"random {shape} model with {layers} layers"
        else:
            from medmax_cli.model.resolve import build_tiny_model_atomic
            from medmax_cli.model.tiny import IMAGE_SIZE, TOKENS_PER_IMAGE

            build_tiny_model_atomic(out, seed=seed, lock=False)
            what = "tiny model"
        typer.echo(
            f"medmax: {what} (seed {seed}, {IMAGE_SIZE}x{IMAGE_SIZE} images, "
            f"{TOKENS_PER_IMAGE} tokens each) written to {out}",
            err=True,
        )
        typer.echo(str(out))
