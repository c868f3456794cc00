"""The `medmax` command: a thin typer app that wires stages to streams.

Each subcommand lives in its own module under `medmax_cli.commands` and exposes
`register(app)`. Modules are discovered at start-up so a new stage adds one file
and touches nothing shared. Heavy libraries (torch, transformers) are imported inside
the command bodies, so `medmax --help` and the data stages start fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import typer

from medmax_cli import __version__, commands
from medmax_cli.cliutil import MedmaxGroup

app = typer.Typer(
    name="medmax",
    help=(
        "Curate, train and evaluate biomedical mixed-modal assistants. Every stage reads records "
        "on stdin and writes records on stdout:\n\n"
        "\b\n  medmax fetch jats examples/sample/jats | medmax synthesize \\\n"
        "    | medmax tokenize-images | medmax pack -o shards/\n"
        "  medmax finetune shards/ -o runs/lora1\n"
        "  medmax generate --adapter runs/lora1 < eval.jsonl | medmax score"
    ),
    no_args_is_help=True,
    add_completion=True,
    cls=MedmaxGroup,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medmax {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
    config: Path = typer.Option(
        None,
        "--config",
        envvar="MEDMAX_CONFIG",
        help="TOML file of settings, one section per command ([pack], [fetch.pmc]); flags override it "
        "[env MEDMAX_CONFIG]. `medmax CMD --print-config` shows the result.",
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines (-vv: debug)."),
    log_level: str = typer.Option(
        None, "--log-level", help="debug, info, warning, error [env MEDMAX_LOG; default warning]."
    ),
) -> None:
    """medmax: biomedical mixed-modal instruction tuning, as pipes."""
    from medmax_cli.cliutil import fail
    from medmax_cli.config import ConfigFileError, read_config
    from medmax_cli.observe import resolve_log_level, setup_logging

    try:
        setup_logging(resolve_log_level(verbose, False, log_level))
    except ValueError as exc:
        raise fail(f"--log-level: {exc}") from None
    if config is not None:
        try:
            ctx.default_map = read_config(config, ctx.command)
        except ConfigFileError as exc:
            raise fail(str(exc)) from None


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(app)


_register_commands()


def main() -> None:
    """The `medmax` entry point: faults end as one line on stderr (medmax_cli.errors), exit 1."""
    import sys

    from medmax_cli.errors import run
    from medmax_cli.process import install

    install()  # SIGTERM unwinds (temp files removed, exit 143); a gone stderr reader never fails a run
    sys.exit(run(app))
