"""`medmax stats merge`: add up the --stats files of one stage's --shard pieces."""

from __future__ import annotations

from pathlib import Path

import typer

from medmax_cli.cliutil import fail


def register(app: typer.Typer) -> None:
    stats_app = typer.Typer(
        name="stats",
        help="Work with the JSON files that every stage writes with --stats FILE.\n\n"
        "  medmax stats merge stats/pack-*.json -o stats/pack.json",
        no_args_is_help=True,
        rich_markup_mode=None,
    )
    app.add_typer(stats_app)

    @stats_app.command(
        "merge",
        help="Add up the --stats files of a SLURM array's --shard i/n pieces: counts and reject reasons "
        "summed, worker seconds summed, wall time from first start to last finish; every shard must be "
        "there once.\n\n  medmax stats merge stats/tok-*.json -o stats/tok.json",
    )
    def merge_command(
        files: list[Path] = typer.Argument(..., help="Stats files written by --stats."),
        output: str = typer.Option("-", "--output", "-o", help="Merged stats file (- for stdout)."),
        allow_partial: bool = typer.Option(
            False,
            "--allow-partial",
            help="Merge even when some shards of i/n are missing (listed in the result).",
        ),
    ) -> None:
        import orjson

        from medmax_cli.atomic import atomic_write_bytes
        from medmax_cli.observe import StatsError, check_stats_piece, merge_stats

        pieces = []
        for path in files:
            try:
                pieces.append((str(path), orjson.loads(path.read_bytes())))
            except OSError as exc:
                raise fail(f"{path}: {exc.strerror or exc}") from None
            except orjson.JSONDecodeError as exc:
                raise fail(f"{path}: not JSON ({exc})", code=1) from None
        try:
            for name, piece in pieces:  # a malformed piece: named by file and field, exit 1
                check_stats_piece(name, piece)
            merged = merge_stats(pieces, allow_partial=allow_partial)
        except StatsError as exc:
            raise fail(str(exc), code=1) from None
        data = orjson.dumps(merged, option=orjson.OPT_INDENT_2) + b"\n"
        if output == "-":
            typer.echo(data.decode(), nl=False)
        else:
            atomic_write_bytes(output, data)
        rejected = merged["rejected_total"]
        typer.echo(
            f"medmax stats merge: {len(pieces)} pieces of {merged['command']}"
            + (f" (shards {merged['shards']})" if merged["shards"] else "")
            + f": {', '.join(f'{k} {v}' for k, v in merged['counts'].items())}, rejected {rejected}",
            err=True,
        )
