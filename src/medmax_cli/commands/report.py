"""`medmax report`: one static HTML page of a whole run, from the files its stages left."""

from __future__ import annotations

from pathlib import Path

import typer

from medmax_cli.cliutil import MediaDirOpt, fail

HELP = (
    "Write one static HTML page (OUT/index.html, with its PNG charts and images beside it) from what a "
    "run left: --stats files, instances, rejects, pack manifests, training runs (metrics.jsonl), "
    "predictions and score summaries, found by content in the given files and folders.\n\n"
    "  medmax report demo-out -o demo-out/report"
)


def register(app: typer.Typer) -> None:
    @app.command("report", help=HELP)
    def report_command(
        paths: list[Path] = typer.Argument(
            ..., help="Files and folders a run wrote (folders are searched 2 deep)."
        ),
        output: Path = typer.Option(..., "--output", "-o", help="Report folder (index.html goes in it)."),
        model: Path = typer.Option(
            None,
            "--model",
            help="Model whose VQ decoder makes the reconstructions [env MEDMAX_MODEL, medmax.toml; tiny: the "
            "random demo model].",
        ),
        no_reconstructions: bool = typer.Option(
            False, "--no-reconstructions", help="Show the original images only (no decoder, no torch)."
        ),
        gallery: int = typer.Option(8, "--gallery", min=0, help="Instances in the gallery."),
        device: str = typer.Option("cpu", "--device", help="Device for the VQ decoder: cpu, cuda, cuda:N."),
        media_dir: Path = MediaDirOpt,
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary line on stderr."),
    ) -> None:
        from medmax_cli.media import MediaStore, default_media_dir
        from medmax_cli.report.page import build_report

        model_dir = None
        if not no_reconstructions:
            from medmax_cli.commands.tokenize_images import resolve_model

            model_dir = resolve_model(model)
        try:
            result = build_report(
                paths,
                output,
                media=MediaStore(media_dir if media_dir is not None else default_media_dir()),
                model_dir=model_dir,
                gallery=gallery,
                device=device,
            )
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None
        if not quiet:
            typer.echo(
                f"medmax report: {result['page']} ({result['stats_files']} stats files, {result['instances_files']} "
                f"instance files, {result['runs']} runs, {result['summaries']} score summaries, "
                f"{result['images']} images)",
                err=True,
            )
