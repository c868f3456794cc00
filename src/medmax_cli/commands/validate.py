"""`medmax validate`: check a record stream against the schema and summarise it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import typer

from medmax_cli.cliutil import InputArg, MediaDirOpt, fail, start_progress
from medmax_cli.records import RecordError, record_kind


def register(app: typer.Typer) -> None:
    @app.command(
        "validate",
        help="Check records against the schema and summarise them (kinds, tasks, sources).\n\n"
        "  medmax fetch jats examples/sample/jats | medmax validate",
    )
    def validate_command(
        input: str = InputArg,
        max_errors: int = typer.Option(20, "--max-errors", help="How many errors to list."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
        media_dir: Path = MediaDirOpt,
    ) -> None:
        from medmax_cli.streams import ErrorPolicy, StreamError, read_records

        errors: list[str] = []

        class _Collect(ErrorPolicy):
            def reject(self, error, raw=None, *, where=None, record_id=None):  # type: ignore[override]
                if isinstance(error, RecordError):
                    error.where = where or error.where
                    error.record_id = record_id or error.record_id
                errors.append(str(error))
                self.report.drop(str(error))  # counted by class, so --stats says what was found

        from medmax_cli.media import MediaStore, default_media_dir

        policy = _Collect("skip", stage="validate")
        kinds: Counter = Counter()
        tasks: Counter = Counter()
        sources: Counter = Counter()
        n_images = 0
        if input == "-":
            from medmax_cli.cliutil import stdin_stream

            stream, name = stdin_stream("validate"), "<stdin>"
        else:
            if not Path(input).exists():
                raise fail(f"input file {input} does not exist")
            stream, name = open(input, "rb"), input
        seen_ids: set[str] = set()
        from medmax_cli.cliutil import run_options

        run_options().report = policy.report  # --stats holds what was read and found, not empty counts
        progress = start_progress("validate", policy.report)
        try:
            for record in read_records(
                stream, name=name, policy=policy, media=MediaStore(media_dir or default_media_dir())
            ):
                progress.update()
                if record["id"] in seen_ids:
                    errors.append(f"{name}: record {record['id']!r}: duplicate id")
                    policy.report.drop("duplicate id")
                else:
                    policy.report.count("out")
                seen_ids.add(record["id"])
                kinds[record_kind(record)] += 1
                if "task" in record:
                    tasks[record["task"]] += 1
                sources[str(record.get("source", "?"))] += 1
                n_images += len(record.get("images") or [])
        except StreamError as exc:
            errors.append(str(exc))
        finally:
            progress.close()
        summary = {
            "records": sum(kinds.values()),
            "invalid": len(errors),
            "images": n_images,
            "kinds": dict(kinds.most_common()),
            "tasks": dict(tasks.most_common()),
            "sources": dict(sources.most_common()),
        }
        if as_json:
            typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        else:
            typer.echo(
                f"{summary['records']} valid records, {summary['images']} images, {len(errors)} errors"
            )
            for title in ("kinds", "tasks", "sources"):
                if summary[title]:
                    typer.echo(f"  {title}: " + ", ".join(f"{k} {v}" for k, v in summary[title].items()))
        if errors:
            for message in errors[:max_errors]:
                typer.echo(f"medmax validate: {message}", err=True)
            if len(errors) > max_errors:
                typer.echo(f"medmax validate: ... and {len(errors) - max_errors} more", err=True)
            raise typer.Exit(1)
