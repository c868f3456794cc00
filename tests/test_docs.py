"""Docs you can run: every command has help with an example and a page in docs/."""

from __future__ import annotations

import re

import typer

from conftest import REPO
from medmax_cli.cli import app

# Commands documented on a shared page rather than one of their own.
PAGES = {
    "cat": "records.md",
    "validate": "records.md",
    "init-model": "models.md",
    "env": "models.md",
    "inspect": "pack.md",
    "detokenize": "tokenize-images.md",
    "report": "observe.md",
    "stats": "observe.md",
}


def commands() -> dict:
    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def test_every_command_has_help_with_an_example_and_a_docs_page():
    found = commands()
    assert {"fetch", "synthesize", "tokenize-images", "pack", "finetune", "generate", "score"} <= set(found)
    index = (REPO / "docs" / "index.md").read_text()
    for name, command in found.items():
        text = command.help or ""
        assert len(text.split()) >= 5, f"{name}: help text too short"
        assert re.search(r"medmax [a-z-]+", text) or hasattr(command, "commands"), f"{name}: no example"
        page = REPO / "docs" / PAGES.get(name, f"{name}.md")
        assert page.exists(), f"{name}: no docs page {page.name}"
        assert f"`{name}`" in index or page.name in index, f"{name}: not listed in docs/index.md"


def test_readme_opens_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
