"""The CLI layer's shared wiring: options every stage takes and the stream plumbing.

This is the only module (besides command modules) that touches stdin, stdout and
the exit status. A command does:

    with StageIO("synthesize", input=input, output=output, ...) as io:
        for record in my_stage(io.records, ...):
            io.write(record)

and gets: JSONL/tar auto-detection, `-` for stdin/stdout, atomic output files,
`--on-error fail|skip` with a rejects file, a progress bar and one summary line on
stderr, a quiet exit on a broken pipe (`| head`), and exit status 1 with a message
naming file, record and reason when a record is bad.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import typer

from medmax_cli.media import MediaError, MediaStore, default_media_dir
from medmax_cli.records import RecordError
from medmax_cli.streams import (
    FORMATS,
    AtomicFile,
    ErrorPolicy,
    RecordWriter,
    RunReport,
    StreamError,
    parse_shard,
    read_records,
    select_shard,
)

# Reusable option declarations: every stage spells its common flags the same way.
InputArg = typer.Argument("-", help="Input records: a JSONL or WebDataset tar file, or - for stdin.")
OutputOpt = typer.Option("-", "--output", "-o", help="Where to write records (- for stdout).")
FormatOpt = typer.Option("jsonl", "--format", help="Output format: jsonl or tar (images inline).")
OnErrorOpt = typer.Option(
    "fail", "--on-error", help="fail: stop at the first bad record; skip: reject it and go on."
)
RejectsOpt = typer.Option(
    None, "--rejects", help="File for rejected records with reasons (with --on-error skip)."
)
MediaDirOpt = typer.Option(
    None, "--media-dir", help="Media store directory [env MEDMAX_MEDIA, default media/]."
)
ShardOpt = typer.Option(
    None, "--shard", help="Process only shard i of n of the input (e.g. 0/8), by record id."
)
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar or summary on stderr.")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `medmax: error: ...` on stderr and return an Exit to raise."""
    typer.echo(f"medmax: error: {message}", err=True)
    return typer.Exit(code)


def check_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise fail(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


class StageIO:
    """Context manager that wires one stage between its input and output streams."""

    def __init__(
        self,
        stage: str,
        *,
        input: str | None = "-",
        output: str | None = "-",
        fmt: str = "jsonl",
        on_error: str = "fail",
        rejects: Path | None = None,
        media_dir: Path | None = None,
        shard: str | None = None,
        quiet: bool = False,
        validate_input: bool = True,
        progress_unit: str = "rec",
    ):
        check_choice("--format", fmt, FORMATS)
        check_choice("--on-error", on_error, ("fail", "skip"))
        try:
            self.shard = parse_shard(shard)
        except ValueError as exc:
            raise fail(str(exc)) from None
        self.stage = stage
        self.input = input
        self.output = output or "-"
        self.fmt = fmt
        self.quiet = quiet
        self.validate_input = validate_input
        self.progress_unit = progress_unit
        self.media = MediaStore(media_dir if media_dir is not None else default_media_dir())
        self.report = RunReport(stage)
        if on_error == "skip" and rejects is None:
            rejects = Path(f"medmax-{stage}-rejects.jsonl")
            typer.echo(f"medmax {stage}: rejected records go to {rejects}", err=True)
        self.rejects_path = rejects
        self._stack = ExitStack()
        self._on_error = on_error
        self._writer: RecordWriter | None = None
        self._atomic: AtomicFile | None = None

    # -- setup / teardown
    def __enter__(self) -> StageIO:
        rejects_handle: IO[bytes] | None = None
        if self.rejects_path is not None:
            rejects_handle = self._stack.enter_context(open(self.rejects_path, "ab"))
        self.policy = ErrorPolicy(self._on_error, rejects_handle, self.report, stage=self.stage)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        ok = exc_type is None
        try:
            if ok:
                self.writer.close()  # an empty run still leaves a valid (empty) output
            if self._atomic is not None:
                self._atomic.finish(ok=ok)
        except BrokenPipeError:
            exc_type, exc = BrokenPipeError, BrokenPipeError()
        finally:
            self._stack.close()
        if exc_type is None:
            self._summary()
            return False
        if issubclass(exc_type, BrokenPipeError):
            _silence_stdout()
            self._summary()
            raise typer.Exit(0)
        if issubclass(exc_type, (RecordError, MediaError, StreamError)):
            self._summary()
            typer.echo(f"medmax {self.stage}: error: {exc}", err=True)
            if self._on_error == "fail" and issubclass(exc_type, (RecordError, MediaError)):
                typer.echo(
                    "  (use --on-error skip --rejects FILE to set bad records aside and go on)", err=True
                )
            raise typer.Exit(1)
        return False

    def _summary(self) -> None:
        if not self.quiet:
            typer.echo(self.report.summary(), err=True)

    # -- streams
    @property
    def records(self) -> Iterator[dict[str, Any]]:
        """Input records, validated, sharded, with a progress bar on stderr."""
        if self.input in (None, "-"):
            stream: IO[bytes] = sys.stdin.buffer
            name = "<stdin>"
        else:
            path = Path(self.input)
            if not path.exists():
                raise fail(f"input file {path} does not exist")
            stream = self._stack.enter_context(open(path, "rb"))
            name = str(path)
        records = read_records(
            stream, name=name, policy=self.policy, media=self.media, check=self.validate_input
        )
        records = select_shard(records, self.shard)
        return self.progress(records, desc=f"{self.stage}")

    def progress(self, iterable: Any, *, desc: str, total: int | None = None, unit: str | None = None) -> Any:
        if self.quiet or not stderr_is_terminal():
            return iterable
        from tqdm import tqdm

        return tqdm(
            iterable,
            desc=desc,
            total=total,
            unit=unit or self.progress_unit,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )

    @property
    def writer(self) -> RecordWriter:
        if self._writer is None:
            if self.output == "-":
                stream: IO[bytes] = sys.stdout.buffer
                flush_each = True
            else:
                self._atomic = AtomicFile(self.output)
                stream = self._atomic.handle
                flush_each = False
            self._writer = RecordWriter(
                stream,
                fmt=self.fmt,
                media=self.media,
                flush_each=flush_each,
                report=self.report,
                policy=getattr(self, "policy", None),  # errors met while writing obey --on-error
            )
        return self._writer

    def write(self, record: dict[str, Any]) -> None:
        self.writer.write(record)

    def write_all(self, records: Any) -> None:
        writer = self.writer
        for record in records:
            writer.write(record)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so interpreter shutdown stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
