"""`medmax env`: versions and the resolved model, to paste into a bug report."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "env",
        help="Print medmax, Python, torch, CUDA, transformers and peft versions and the model that "
        "--model / MEDMAX_MODEL / medmax.toml select, ready to paste into a bug report.\n\n"
        "  medmax env >> bug-report.md",
    )
    def env_command(
        model: str = typer.Option(
            None, "--model", help="Model directory to report on [env MEDMAX_MODEL, medmax.toml]."
        ),
        json_out: bool = typer.Option(False, "--json", help="One JSON object instead of the list."),
    ) -> None:
        from medmax_cli.envinfo import environment, format_environment

        info = environment(model)
        if json_out:
            import json

            typer.echo(json.dumps(info, indent=2))
        else:
            typer.echo(format_environment(info), nl=False)
