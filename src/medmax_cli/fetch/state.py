"""Resume state for long crawls: finished articles, the search cursor and the output length.

Why the output length: a killed run may have written half an article's records. With `-o FILE`
the rerun cuts the file back to the length recorded with the last finished article, so every
article appears exactly once. The state file itself is replaced atomically (temp + fsync + rename)
after the article's records are flushed: finished work is marked last.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from medmax_cli.atomic import atomic_write_bytes

STATE_VERSION = 1


class StateError(ValueError):
    """A state file that cannot be used for this run (corrupt, or written for other parameters)."""


class FetchState:
    def __init__(self, path: str | os.PathLike[str] | None, params: dict[str, Any]):
        self.path = Path(path) if path is not None else None
        self.params = params
        self.cursor: str | None = None
        self.done: set[str] = set()
        self.order: list[str] = []
        self.output_bytes: int | None = None
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise StateError(f"state file {self.path} is unreadable ({exc})") from None
        if data.get("version") != STATE_VERSION:
            raise StateError(
                f"state file {self.path} has version {data.get('version')!r}, not {STATE_VERSION}"
            )
        if data.get("params") != self.params:
            raise StateError(
                f"state file {self.path} was written for other parameters {data.get('params')}; "
                f"use another --state file or delete it"
            )
        self.cursor = data.get("cursor")
        self.order = list(data.get("done", []))
        self.done = set(self.order)
        self.output_bytes = data.get("output_bytes")

    @property
    def resumed(self) -> bool:
        return bool(self.done) or self.cursor is not None

    def finish(self, key: str, *, cursor: str | None = None, output_bytes: int | None = None) -> None:
        """Mark one article finished (after its records were written and flushed) and save."""
        if key not in self.done:
            self.done.add(key)
            self.order.append(key)
        self.set_cursor(cursor, output_bytes=output_bytes)

    def set_cursor(self, cursor: str | None, *, output_bytes: int | None = None) -> None:
        if cursor is not None:
            self.cursor = cursor
        if output_bytes is not None:
            self.output_bytes = output_bytes
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "version": STATE_VERSION,
            "params": self.params,
            "cursor": self.cursor,
            "done": self.order,
            "output_bytes": self.output_bytes,
        }
        atomic_write_bytes(self.path, orjson.dumps(data), fsync=True)
