"""`medmax cat`: concatenate record streams, converting between JSONL and tar."""

from __future__ import annotations

from pathlib import Path

import typer

from medmax_cli.cliutil import (
    FormatOpt,
    MediaDirOpt,
    OnErrorOpt,
    OutputOpt,
    QuietOpt,
    RejectsOpt,
    ShardOpt,
    StageIO,
)


def register(app: typer.Typer) -> None:
    @app.command(
        "cat",
        help="Concatenate record streams (JSONL or WebDataset tar), validating them and converting the format.\n\n"
        "\b\n  medmax cat a.jsonl b.tar --format tar -o all.tar\n  medmax cat shard.tar --plain | head -3",
    )
    def cat_command(
        inputs: list[str] = typer.Argument(None, help="Input files (JSONL or tar); none or - reads stdin."),
        output: str = OutputOpt,
        fmt: str = FormatOpt,
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        shard: str = ShardOpt,
        quiet: bool = QuietOpt,
        plain: bool = typer.Option(
            False,
            "--plain",
            help="Write plain JSONL on a pipe: no medmax stream header and end trailer (for other "
            "JSONL consumers; env MEDMAX_STREAM_MARKERS=0 does this for every stage).",
        ),
    ) -> None:
        sources = inputs or ["-"]
        with StageIO(
            "cat",
            input=sources[0],
            output=output,
            fmt=fmt,
            on_error=on_error,
            rejects=rejects,
            media_dir=media_dir,
            shard=shard,
            quiet=quiet,
            stream_markers=not plain,
        ) as io:
            for source in sources:
                io.input = source
                io.write_all(io.records)
