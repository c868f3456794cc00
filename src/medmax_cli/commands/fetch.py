"""`medmax fetch SOURCE`: source records (figures, qa, reports, instances) to stdout, images to the store."""

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
    StageIO,
    fail,
)

LicenseOpt = typer.Option(
    None, "--license", help="Keep only these licences, e.g. cc-by,cc0 (commercial-use subset)."
)


def register(app: typer.Typer) -> None:
    fetch_app = typer.Typer(
        name="fetch",
        help="Fetch source records from PubMed Central or local datasets (records on stdout, images into the "
        "media store).\n\n  medmax fetch jats examples/sample/jats | medmax synthesize > instances.jsonl",
        invoke_without_command=True,
        no_args_is_help=False,
        rich_markup_mode=None,
    )
    app.add_typer(fetch_app)

    @fetch_app.callback()
    def fetch_root(
        ctx: typer.Context,
        list_sources: bool = typer.Option(
            False, "--list", help="List every source, its licence and what it needs."
        ),
    ) -> None:
        if list_sources:
            from medmax_cli.fetch.datasets import describe_sources

            typer.echo(describe_sources())
            raise typer.Exit()
        if ctx.invoked_subcommand is None:
            typer.echo(ctx.get_help())
            raise typer.Exit(2)

    @fetch_app.command(
        "jats",
        help="Figures from local JATS files, folders (e.g. a synced PMC Cloud folder) or "
        "PMC .tar.gz packages.\n\n  medmax fetch jats examples/sample/jats > figures.jsonl",
    )
    def fetch_jats_command(
        paths: list[Path] = typer.Argument(..., help="JATS .xml/.nxml files, folders or .tar.gz packages."),
        license: str = LicenseOpt,
        output: str = OutputOpt,
        fmt: str = FormatOpt,
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        from medmax_cli.fetch.figures import parse_licenses
        from medmax_cli.fetch.local import fetch_jats

        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise fail(f"no such file or folder: {', '.join(missing)}")
        with StageIO(
            "fetch",
            input=None,
            output=output,
            fmt=fmt,
            on_error=on_error,
            rejects=rejects,
            media_dir=media_dir,
            quiet=quiet,
        ) as io:
            io.write_all(
                fetch_jats(paths, media=io.media, policy=io.policy, licenses=parse_licenses(license))
            )

    @fetch_app.command(
        "jsonl",
        help="Local records whose image paths are relative to --root, imported into the "
        "media store.\n\n  medmax fetch jsonl examples/sample/vqa.jsonl --root examples/sample",
    )
    def fetch_jsonl_command(
        path: Path = typer.Argument(..., help="A JSONL file of records."),
        root: Path = typer.Option(..., "--root", help="Folder the records' image paths are relative to."),
        output: str = OutputOpt,
        fmt: str = FormatOpt,
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        from medmax_cli.fetch.local import fetch_jsonl

        if not path.is_file():
            raise fail(f"input file {path} does not exist")
        if not root.is_dir():
            raise fail(f"--root {root} is not a folder")
        with StageIO(
            "fetch",
            input=None,
            output=output,
            fmt=fmt,
            on_error=on_error,
            rejects=rejects,
            media_dir=media_dir,
            quiet=quiet,
        ) as io:
            io.write_all(fetch_jsonl(path, root=root, media=io.media, policy=io.policy))
