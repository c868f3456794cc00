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
    ShardOpt,
    StageIO,
    fail,
)
from medmax_cli.streams import parse_shard

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
        shard: str = ShardOpt,
        output: str = OutputOpt,
        fmt: str = FormatOpt,
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        from medmax_cli.fetch.figures import parse_licenses
        from medmax_cli.fetch.local import fetch_jats

        try:
            shard_spec = parse_shard(shard)
        except ValueError as exc:
            raise fail(str(exc)) from None
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
                fetch_jats(
                    paths,
                    media=io.media,
                    policy=io.policy,
                    licenses=parse_licenses(license),
                    shard=shard_spec,
                )
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

        if not path.exists():
            raise fail(f"input file {path} does not exist")
        if not path.is_file():
            raise fail(f"input file {path} is not a regular file (a pipe, device or folder is not read)")
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

    @fetch_app.command(
        "pmc",
        help="Figures from PubMed Central: Europe PMC search, files from the PMC Cloud "
        "bucket over HTTPS; --state makes a killed run resumable.\n\n"
        "  medmax fetch pmc --query 'radiology AND OPEN_ACCESS:y' --max 500 --license cc-by,cc0 "
        "--state crawl.json -o figures.jsonl",
    )
    def fetch_pmc_command(
        query: str = typer.Option(None, "--query", help="Europe PMC search query."),
        ids: Path = typer.Option(None, "--ids", help="File of PMCIDs, one a line (instead of --query)."),
        max_articles: int = typer.Option(None, "--max", min=1, help="Stop after this many articles."),
        license: str = LicenseOpt,
        shard: str = ShardOpt,
        state_path: Path = typer.Option(
            None, "--state", help="Resume file: finished articles + search cursor."
        ),
        europepmc_url: str = typer.Option(
            "https://www.ebi.ac.uk/europepmc/webservices/rest",
            "--europepmc-url",
            help="Europe PMC REST base URL.",
        ),
        cloud_url: str = typer.Option(
            "https://pmc-oa-opendata.s3.amazonaws.com",
            "--pmc-cloud-url",
            help="PMC Cloud bucket base URL (HTTPS).",
        ),
        contact: str = typer.Option(
            None, "--contact", help="Contact for the User-Agent [env MEDMAX_CONTACT]."
        ),
        rate: float = typer.Option(
            None,
            "--rate",
            help="Requests/s per host (default: NCBI 3, 10 with NCBI_API_KEY; Europe PMC 10; others 5).",
        ),
        page_size: int = typer.Option(100, "--page-size", min=1, max=1000, help="Search results per page."),
        media_workers: int = typer.Option(4, "--media-workers", min=1, help="Concurrent media downloads."),
        timeout: float = typer.Option(30.0, "--timeout", help="Seconds per request."),
        backoff_base: float = typer.Option(0.5, "--backoff-base", hidden=True),
        dry_run: bool = typer.Option(
            False,
            "--dry-run",
            help="Ask the search once and print the hit count, requests, expected time at the configured "
            "rates and the licence mix of the first page; fetch nothing.",
        ),
        output: str = OutputOpt,
        fmt: str = FormatOpt,
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        from medmax_cli.fetch.figures import parse_licenses
        from medmax_cli.fetch.pmc import fetch_articles, read_id_file
        from medmax_cli.fetch.state import FetchState, StateError
        from medmax_cli.http import DEFAULT_RATE, HttpClient, HttpError, RetryPolicy
        from medmax_cli.streams import RecordWriter

        if (query is None) == (ids is None):
            raise fail("give exactly one of --query or --ids")
        if state_path is not None and fmt == "tar":
            raise fail("--state resumes JSONL output only; drop --format tar (pack makes shards later)")
        try:
            id_list = read_id_file(ids.read_text().splitlines()) if ids is not None else None
        except (OSError, ValueError) as exc:
            raise fail(f"--ids {ids}: {exc}") from None
        params = {"query": query, "ids": id_list, "license": license, "max": max_articles}
        if shard is not None:
            params["shard"] = shard
        try:
            shard_spec = parse_shard(shard)
        except ValueError as exc:
            raise fail(str(exc)) from None
        try:
            state = FetchState(state_path, params)
        except StateError as exc:
            raise fail(str(exc)) from None
        client = HttpClient(
            rates=None if rate is None else {},
            default_rate=rate or DEFAULT_RATE,
            timeout=timeout,
            contact=contact,
            retry=RetryPolicy(backoff_base=backoff_base),
        )
        if dry_run:
            from medmax_cli.fetch.dryrun import plan_pmc

            with client:
                try:
                    plan = plan_pmc(
                        client,
                        europepmc_url=europepmc_url,
                        cloud_url=cloud_url,
                        query=query,
                        ids=id_list,
                        max_articles=max_articles,
                        page_size=page_size,
                        shard=shard_spec,
                    )
                except HttpError as exc:
                    raise fail(str(exc), code=1) from None
            for line in plan.lines():
                typer.echo(f"medmax fetch pmc --dry-run: {line}", err=True)
            return
        resumable_file = state_path is not None and output != "-"
        with (
            client,
            StageIO(
                "fetch",
                input=None,
                output="-" if resumable_file else output,
                fmt=fmt,
                on_error=on_error,
                rejects=rejects,
                media_dir=media_dir,
                quiet=quiet,
                progress_unit="articles",
            ) as io,
        ):
            handle = None
            if resumable_file:
                # Resumable file output: cut back to the last finished article, then append.
                size = Path(output).stat().st_size if Path(output).exists() else 0
                if size < (state.output_bytes or 0):
                    raise fail(
                        f"{output} holds {size} bytes but {state_path} says {state.output_bytes} were "
                        f"written: it is not this crawl's output (delete the state to start over)"
                    )
                handle = open(output, "r+b" if Path(output).exists() else "wb")
                handle.truncate(state.output_bytes or 0)
                handle.seek(0, 2)
                writer = RecordWriter(
                    handle, fmt="jsonl", media=io.media, flush_each=True, report=io.report, policy=io.policy
                )
            else:
                writer = io.writer
            try:
                for batch in fetch_articles(
                    client,
                    media=io.media,
                    policy=io.policy,
                    state=state,
                    query=query,
                    ids=id_list,
                    max_articles=max_articles,
                    europepmc_url=europepmc_url,
                    cloud_url=cloud_url,
                    licenses=parse_licenses(license),
                    page_size=page_size,
                    shard=shard_spec,
                    media_workers=media_workers,
                    on_total=io.set_total,
                ):
                    if batch.key:
                        io.tick()
                    for record in batch.records:
                        writer.write(record)
                    writer.stream.flush()
                    position = handle.tell() if handle is not None else None
                    if batch.key and not batch.failed:
                        state.finish(batch.key, output_bytes=position)
                    elif batch.cursor is not None:
                        state.set_cursor(batch.cursor, output_bytes=position)
            except HttpError as exc:  # the search itself failed for good: nothing sensible to go on with
                raise fail(f"{exc} (rerun with the same --state to resume)", code=1) from None
            finally:
                if handle is not None:
                    handle.close()

    from medmax_cli.fetch.datasets import SOURCES

    for source in SOURCES.values():
        if source.reader is not None:
            _register_dataset(fetch_app, source.name, source.license, source.needs)


def _register_dataset(fetch_app: typer.Typer, name: str, license_name: str, needs: str) -> None:
    @fetch_app.command(
        name,
        help=f"Read a downloaded {name} dataset in its published layout (licence: "
        f"{license_name}; needs: {needs}).\n\n  medmax fetch {name} PATH > {name}.jsonl",
    )
    def dataset_command(
        path: Path = typer.Argument(..., help="The dataset folder (or its main file)."),
        images: Path = typer.Option(None, "--images", help="Images folder when it is not beside the data."),
        split: str = typer.Option(
            None,
            "--split",
            help="Keep only these official splits (meta.split: train, validation, test; valid/validate/dev "
            "mean validation), e.g. train or test,validation. One split also names the split of a file "
            "whose split the source does not say (otherwise such a file is refused).",
        ),
        language: str = typer.Option(
            "en",
            "--language",
            help="Sources with several languages (SLAKE q_lang en/zh): keep this one; 'all' keeps every "
            "language. Rows left out are counted as skipped (language not selected).",
        ),
        output: str = OutputOpt,
        fmt: str = FormatOpt,
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        from medmax_cli.fetch.datasets import SOURCES, select_splits
        from medmax_cli.fetch.splits import parse_split_filter
        from medmax_cli.media import MediaError
        from medmax_cli.records import RecordError

        if not path.exists():
            raise fail(f"{path} does not exist")
        if images is not None and not images.is_dir():
            raise fail(f"--images {images} is not a folder")
        try:
            splits = parse_split_filter(split)
        except ValueError as exc:
            raise fail(str(exc)) from None
        assume = next(iter(splits)) if splits is not None and len(splits) == 1 else None
        reader = SOURCES[name].reader
        assert reader is not None
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
            try:
                records = reader(
                    path,
                    media=io.media,
                    policy=io.policy,
                    images=images,
                    assume_split=assume,
                    language=None if language.lower() == "all" else language,
                )
                io.write_all(select_splits(records, splits, io.policy))
            except MediaError as exc:  # the dataset's own file (not one row) cannot be opened
                raise fail(str(exc), code=1) from None
            except RecordError as exc:
                if exc.where is None and exc.record_id is None:
                    raise fail(str(exc), code=1) from None
                raise
