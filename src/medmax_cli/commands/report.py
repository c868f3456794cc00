"""`medmax report`: one static HTML page of a whole run, from the files its stages left."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from medmax_cli.cliutil import MediaDirOpt, fail

HELP = (
    "Write one static HTML page (OUT/index.html, with its PNG charts and images beside it) from what a "
    "run left: --stats files, instances, rejects, pack manifests, training runs (metrics.jsonl), "
    "predictions and score summaries, found by content in the given files and folders. Content of "
    "credential: true records is left out unless --include-credentialed; an input it cannot read is a "
    "note on the page.\n\n"
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
            help="Model whose VQ decoder makes the reconstructions [env MEDMAX_MODEL, medmax.toml; none "
            "chosen: the gallery shows the originals only].",
        ),
        no_reconstructions: bool = typer.Option(
            False, "--no-reconstructions", help="Show the original images only (no decoder, no torch)."
        ),
        gallery: int = typer.Option(8, "--gallery", min=0, help="Instances in the gallery."),
        device: str = typer.Option("cpu", "--device", help="Device for the VQ decoder: cpu, cuda, cuda:N."),
        media_dir: Path = MediaDirOpt,
        include_credentialed: bool = typer.Option(
            False,
            "--include-credentialed",
            help="Show text, images and answers of credential: true records (with a data-use warning on "
            "the page); never publish such a report.",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary line on stderr."),
    ) -> None:
        from medmax_cli.media import MediaStore, default_media_dir
        from medmax_cli.report.page import build_report

        model_dir = None
        chosen = model is not None or os.environ.get("MEDMAX_MODEL") or Path("medmax.toml").is_file()
        if (
            not no_reconstructions and chosen
        ):  # no model chosen: originals only, never a random decoder's noise
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
                include_credentialed=include_credentialed,
            )
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None
        if not quiet:
            typer.echo(
                f"medmax report: {result['page']} ({result['stats_files']} stats files, {result['instances_files']} "
                f"instance files, {result['runs']} runs, {result['summaries']} score summaries, "
                f"{result['images']} images)"
                + (
                    f"; {result['notes']} notes on the page (inputs not fully used)"
                    if result["notes"]
                    else ""
                )
                + ("; RANDOM MODEL inputs" if result["random_model"] else "")
                + (
                    f"; {result['judge_errors']} items with no verdict (the judge failed: rerun "
                    "`medmax score`; the averages are incomplete)"
                    if result["judge_errors"]
                    else ""
                )
                + (
                    f"; {result['credentialed_hidden']} credentialed items not shown"
                    if result["credentialed_hidden"]
                    else ""
                ),
                err=True,
            )
