"""`medmax inspect`: a packed row token by token with its loss label (docs/pack.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from medmax_cli.cliutil import fail

HELP = """Show row N of packed shards as the model is trained on it: each sample's tokens in runs,
marked + (trained: has a label) or . (masked, -100), special tokens by name and image blocks as
<image: K codes> (docs/pack.md).

\b
  medmax inspect shards/ --row 0
  medmax inspect shards/ --row 12 --json | jq '.samples[].runs[] | select(.trained)'
"""


def register(app: typer.Typer) -> None:
    @app.command("inspect", help=HELP)
    def inspect_command(
        shards: Path = typer.Argument(..., help="A `medmax pack` output folder (with manifest.json)."),
        row: int = typer.Option(0, "--row", min=0, help="Row to show (0-based, manifest order)."),
        model: str = typer.Option(
            None,
            "--model",
            help="Model whose tokenizer decodes the row [the model recorded in manifest.json, else "
            "env MEDMAX_MODEL, medmax.toml].",
        ),
        json_out: bool = typer.Option(False, "--json", help="The row as JSON (runs with their token ids)."),
    ) -> None:
        import sys

        from medmax_cli.model.load import ModelDirError, check_model_dir
        from medmax_cli.model.resolve import resolve_model_dir
        from medmax_cli.rowview import format_row, load_row, row_view

        try:
            packed, manifest = load_row(shards, row)
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None
        except IndexError as exc:
            raise fail(str(exc)) from None
        except ValueError as exc:
            raise fail(str(exc), code=1) from None
        recorded = (manifest.get("model") or {}).get("dir")
        try:
            if model is None and recorded:
                model_dir = check_model_dir(recorded, source=f"{shards}/manifest.json")
            else:
                model_dir = resolve_model_dir(model)
        except ModelDirError as exc:
            raise fail(str(exc)) from None
        from medmax_cli.text.tokenizer import load_text_tokenizer
        from medmax_cli.text.vocab import ChameleonVocab

        tokenizer = load_text_tokenizer(model_dir)
        vocab = ChameleonVocab.from_model_dir(model_dir)
        view = row_view(packed, manifest, vocab, tokenizer.decode)
        if json_out:
            import json

            typer.echo(json.dumps({"row": row, **view}))
        else:
            typer.echo(format_row(view, row, color=sys.stdout.isatty()), nl=False)
