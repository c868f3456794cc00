"""`medmax pack`: task instances -> token sequences with loss masks -> packed WebDataset shards."""

from __future__ import annotations

from pathlib import Path

import typer

from medmax_cli.cliutil import (
    InputArg,
    MediaDirOpt,
    OnErrorOpt,
    QuietOpt,
    RejectsOpt,
    ShardOpt,
    StageIO,
    check_choice,
    fail,
)

HELP = """Build Chameleon token sequences and loss masks, pack them into fixed-length rows and write
WebDataset shards plus manifest.json to a directory (docs/pack.md).

\b
  medmax synthesize < sources.jsonl | medmax tokenize-images \\
    | medmax pack --seq-len 4096 -o shards/
"""


def _parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "")
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        raise fail(f"--max-size must be a size like 500M or 2G, got {text!r}") from None
    if value < 1:
        raise fail("--max-size must be positive")
    return value


def _resolve_model(explicit: Path | None) -> Path:
    from medmax_cli.model.resolve import ModelDirError, resolve_model_dir

    try:
        return Path(resolve_model_dir(explicit))
    except ModelDirError as exc:
        raise fail(str(exc)) from None


def register(app: typer.Typer) -> None:
    @app.command("pack", help=HELP)
    def pack_command(
        input: str = InputArg,
        output: Path = typer.Option(
            ..., "--output", "-o", help="Output directory for shard-*.tar and manifest.json."
        ),
        model: Path = typer.Option(
            None,
            "--model",
            help="Model directory (tokenizer, vocabulary, VQ) "
            "[env MEDMAX_MODEL, medmax.toml; tiny: the random demo model].",
        ),
        seq_len: int = typer.Option(
            4096, "--seq-len", help="Row length in tokens; longer samples are cut on text."
        ),
        pack: bool = typer.Option(
            True, "--pack/--no-pack", help="--no-pack: one sample per row (MedMax parity)."
        ),
        pack_buffer: int = typer.Option(2000, "--pack-buffer", help="Samples per best-fit-decreasing round."),
        seed: int = typer.Option(0, "--seed", help="Seed of the row shuffle."),
        train_on: str = typer.Option(
            "assistant",
            "--train-on",
            help="Labels on: assistant (turns + their closing SEP/EOS), all (every token but BOS) or "
            "medmax (everything after the first SEP, as MedMax's training code).",
        ),
        alpha: str = typer.Option(
            "white",
            "--alpha",
            help="Alpha rule of the image tokens: white or drop (as tokenize-images --alpha); "
            "tokens made with the other one are refused.",
        ),
        max_count: int = typer.Option(1000, "--max-count", help="Rows per shard at most."),
        max_size: str = typer.Option("1G", "--max-size", help="Bytes per shard at most (e.g. 500M, 2G)."),
        batch_size: int = typer.Option(256, "--batch-size", help="Instances per tokenizer call."),
        workers: int = typer.Option(
            0,
            "--workers",
            help="Processes that tokenise and assemble (0: in this one); same output for any N.",
        ),
        image_batch_size: int = typer.Option(
            32, "--image-batch-size", help="Images per VQ batch (on-the-fly)."
        ),
        device: str = typer.Option("auto", "--device", help="Device for on-the-fly image encoding."),
        dtype: str = typer.Option(
            "fp32", "--dtype", help="On-the-fly image encoding precision: fp32 or bf16."
        ),
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        shard: str = ShardOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        from medmax_cli.pack.stage import TRAIN_ON, PackSettings

        if train_on not in TRAIN_ON:
            raise fail(f"--train-on must be one of {', '.join(TRAIN_ON)}; got {train_on!r}")
        check_choice("--dtype", dtype, ("fp32", "bf16"))
        check_choice("--alpha", alpha, ("white", "drop"))
        if workers < 0:
            raise fail("--workers must be >= 0")
        if seq_len < 2 or pack_buffer < 1 or max_count < 1 or batch_size < 1 or image_batch_size < 1:
            raise fail("--seq-len must be >= 2; --pack-buffer, --max-count and the batch sizes must be >= 1")
        if output.exists() and not output.is_dir():
            raise fail(f"-o {output} exists and is not a directory")
        model_dir = _resolve_model(model)  # no model chosen: exit 2 before anything is made
        try:  # before any input is read: a directory that cannot be made fails at once
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fail(f"cannot create -o {output}: {exc.strerror or exc}", code=1) from None
        settings = PackSettings(
            seq_len=seq_len,
            pack=pack,
            pack_buffer=pack_buffer,
            seed=seed,
            train_on=train_on,
            alpha=alpha,
            max_count=max_count,
            max_size=_parse_size(max_size),
            batch_size=batch_size,
            shard=shard,
        )

        from medmax_cli.model.load import model_is_random
        from medmax_cli.pack.manifest import model_fingerprints
        from medmax_cli.pack.shards import OutputDirLocked
        from medmax_cli.pack.stage import pack_to_dir
        from medmax_cli.text.tokenizer import load_text_tokenizer
        from medmax_cli.text.vocab import ChameleonVocab
        from medmax_cli.vision.tokencheck import model_tokens_per_image

        try:
            tokenizer = load_text_tokenizer(model_dir)
            vocab = ChameleonVocab.from_model_dir(model_dir)
        except (FileNotFoundError, ValueError) as exc:
            raise fail(f"cannot load the tokenizer/vocabulary of {model_dir}: {exc}") from None
        prints = model_fingerprints(model_dir, tokenizer.path)
        model_info = {
            "dir": str(model_dir.resolve()),
            "tokenizer_fingerprint": prints["tokenizer"],
            "vq_fingerprint": prints["vq"],
            "tokens_per_image": model_tokens_per_image(model_dir),  # image token lists must have this length
            "random": model_is_random(model_dir),  # manifest.json says model_random: true
        }

        with StageIO(
            "pack",
            input=input,
            on_error=on_error,
            rejects=rejects,
            media_dir=media_dir,
            shard=shard,
            quiet=quiet,
            written_key="samples",  # pack writes shards, not records: a sample packed is a record written
            validate_input=False,  # pack_to_dir validates, with a fast path for token lists
        ) as io:
            encode = _image_encoder(model_dir, io, image_batch_size, device, dtype, alpha)
            try:
                manifest = pack_to_dir(
                    io.records,
                    output,
                    vocab=vocab,
                    tokenizer=tokenizer,
                    settings=settings,
                    policy=io.policy,
                    model=model_info,
                    encode_images=encode,
                    workers=workers,
                )
            except OutputDirLocked as exc:
                raise fail(str(exc), code=1) from None
        if not quiet:
            typer.echo(
                f"medmax pack: {manifest['samples']} samples -> {manifest['rows']} rows of {seq_len} in "
                f"{len(manifest['shards'])} shards, efficiency {100 * manifest['efficiency']:.1f}%, "
                f"{manifest['supervised_tokens']}/{manifest['tokens']} tokens supervised -> {output}/",
                err=True,
            )


def _image_encoder(model_dir: Path, io: StageIO, batch_size: int, device: str, dtype: str, alpha: str):
    """A function that tokenises the images of a batch of records, or None without the vision library."""
    try:
        from medmax_cli.vision.tokenize import tokenize_images
    except ImportError:
        return None

    state: dict = {}

    def encode(records):
        if "encoder" not in state:  # built once, on the first batch that needs it (not once per batch)
            from medmax_cli.vision.encoder import VQEncoder

            state["encoder"] = VQEncoder.from_model_dir(model_dir, device=device, dtype=dtype)
        return tokenize_images(
            records,
            model_dir=model_dir,
            media=io.media,
            policy=io.policy,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            encoder=state["encoder"],
            alpha=alpha,
        )

    return encode
