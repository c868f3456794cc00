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

import contextvars
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import typer
from typer.core import TyperGroup

from medmax_cli.media import MediaError, MediaStore, default_media_dir
from medmax_cli.observe import Progress, heartbeat_seconds, stage_stats
from medmax_cli.records import RecordError
from medmax_cli.streams import (
    FORMATS,
    RECORD_FAULTS,
    AtomicFile,
    ErrorPolicy,
    HashingReader,
    RecordWriter,
    RunReport,
    StreamError,
    in_shard,
    markers_for,
    parse_shard,
    read_records,
    record_fault,
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

EXIT_CODES_HELP = (
    "Exit status: 0 done; 1 bad input (a record, file or server answer; the message names it), "
    "or more rejects than --max-reject-rate allows (by default: records were rejected and none "
    "written); 2 bad usage (options)."
)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `medmax: error: ...` on stderr (secrets redacted) and return an Exit to raise."""
    from medmax_cli.egress import redact_text

    typer.echo(f"medmax: error: {redact_text(message)}", err=True)
    return typer.Exit(code)


def check_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise fail(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


@dataclass
class RunOptions:
    """The options every stage takes, parsed once by `MedmaxGroup` and read by `StageIO`.

    They travel in a context variable so that a command module declares none of them.
    """

    command: str = "medmax"
    settings: dict[str, Any] = field(default_factory=dict)  # the command's resolved parameters
    stats: Path | None = None
    max_reject_rate: float | None = None
    rejects_append: bool = False
    heartbeat: float | None = None
    stats_written: bool = False  # a StageIO wrote --stats; otherwise the command wrapper does
    report: Any = None  # a command without a StageIO that counts what it read (validate) puts it here
    started_at: float = field(default_factory=time.time)


_RUN: contextvars.ContextVar[RunOptions | None] = contextvars.ContextVar("medmax_run", default=None)


def run_options() -> RunOptions:
    """This command's common options (defaults when a StageIO is used outside the CLI)."""
    return _RUN.get() or RunOptions()


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
        hash_input: bool = False,
        progress_unit: str = "rec",
        written_key: str = "out",
        stream_markers: bool = True,
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
        self._input_hash: HashingReader | None = None
        self.hash_input = hash_input
        self.progress_unit = progress_unit
        self.media = MediaStore(media_dir if media_dir is not None else default_media_dir())
        self.report = RunReport(stage)
        if on_error == "skip" and rejects is None:
            rejects = Path(f"medmax-{stage}-rejects.jsonl")
            typer.echo(f"medmax {stage}: rejected records go to {rejects}", err=True)
        self.rejects_path = rejects
        self.run = run_options()
        _check_stage_paths(input, self.output, rejects, self.run.stats)
        self._stack = ExitStack()
        self._on_error = on_error
        self._writer: RecordWriter | None = None
        self._atomic: AtomicFile | None = None
        self.run = run_options()
        self.written_key = written_key
        self.stream_markers = stream_markers  # on a pipe: header + counted trailer (docs/records.md)
        self._started_at = time.time()
        self._by_hand = False  # the command counts progress itself (tick/set_total)
        self._last_id: str | None = None  # the input record read last
        try:
            heartbeat = heartbeat_seconds(self.run.heartbeat)
        except ValueError as exc:
            raise fail(str(exc)) from None
        self.progress_meter = Progress(
            stage, self.report, unit=progress_unit, enabled=not quiet, heartbeat=heartbeat
        )

    # -- setup / teardown
    def __enter__(self) -> StageIO:
        if self.output != "-":  # open the output first: an unwritable path fails before any input is read
            self._atomic = AtomicFile(self.output, sweep=True)
        try:
            return self._setup()
        except BaseException:
            if self._atomic is not None:
                self._atomic.finish(ok=False)
            self._stack.close()
            raise

    def _setup(self) -> StageIO:
        if self.input == "-":  # at once, before a model loads: not after minutes of silence
            note_terminal_stdin(self.stage)
        rejects_handle: IO[bytes] | None = None
        if self.rejects_path is not None:
            if self.run.rejects_append:
                rejects_handle = self._stack.enter_context(open(self.rejects_path, "ab"))
            else:  # this run's rejects replace the last run's, appearing only when the run ends
                rejects_file = AtomicFile(self.rejects_path, "wb", sweep=True)
                self._stack.callback(rejects_file.finish, ok=True)
                rejects_handle = rejects_file.handle
        self.policy = ErrorPolicy(self._on_error, rejects_handle, self.report, stage=self.stage)
        self._stack.callback(self.progress_meter.close)
        self.progress_meter.start()
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
            rate, limit_hit = self._reject_check()
            self._write_stats("rejects-exceeded" if limit_hit else "ok", rate)
            if limit_hit:
                raise typer.Exit(1)
            return False
        if issubclass(exc_type, BrokenPipeError):
            _silence_stdout()
            self._summary()
            self._write_stats("ok", None)
            raise typer.Exit(0)
        clean_exit = issubclass(exc_type, typer.Exit) and getattr(exc, "exit_code", 1) == 0
        self._write_stats("ok" if clean_exit else "failed", None)
        if issubclass(exc_type, RECORD_FAULTS) and not issubclass(exc_type, (RecordError, MediaError)):
            # a per-record fault that escaped a stage's own loop: still a named record error, no traceback
            last = self._last_id
            exc = record_fault(exc, {"id": last} if last is not None else None)
            exc.where = exc.where or f"after input record {self.report.counts.get('in', 0)}"
            exc_type = type(exc)
        if issubclass(exc_type, (RecordError, MediaError, StreamError)):
            self._summary()
            from medmax_cli.egress import redact_text

            typer.echo(f"medmax {self.stage}: error: {redact_text(str(exc))}", err=True)
            if self._on_error == "fail" and issubclass(exc_type, (RecordError, MediaError)):
                typer.echo(
                    "  (use --on-error skip --rejects FILE to set bad records aside and go on)", err=True
                )
            raise typer.Exit(1)
        return False

    def _summary(self) -> None:
        if not self.quiet:
            typer.echo(self.report.summary(), err=True)

    def _reject_check(self) -> tuple[float | None, bool]:
        """(reject rate, over the limit?). The rate is rejected / records read (`in` counts the
        lines rejected while reading too), or rejected / (written + rejected) for a stage without
        input; with no --max-reject-rate a run fails only when it rejected records and wrote none."""
        rejected = sum(self.report.dropped.values())
        written = self.report.counts.get(self.written_key, 0)
        if self.input is not None:
            seen = max(self.report.counts.get("in", 0), rejected)
            rate = rejected / seen if seen else 0.0
        else:
            rate = rejected / (written + rejected) if written + rejected else 0.0
        limit = self.run.max_reject_rate
        if limit is None:
            over = rejected > 0 and written == 0
            why = f"all {rejected} records were rejected and none written"
        else:
            over = rate > limit
            why = f"reject rate {rate:.1%} ({rejected} rejected) is above --max-reject-rate {limit:g}"
        if over:
            where = f"; reasons in {self.rejects_path}" if self.rejects_path is not None else ""
            typer.echo(f"medmax {self.stage}: error: {why}{where}", err=True)
        return rate, over

    def _write_stats(self, status: str, rate: float | None) -> None:
        if self.run.stats is None:
            return
        import orjson

        from medmax_cli.atomic import atomic_write_bytes

        stats = stage_stats(
            self.report,
            command=self.run.command,
            settings=self.run.settings,
            status=status,
            started_at=self._started_at,
            reject_rate=rate,
        )
        atomic_write_bytes(
            self.run.stats, orjson.dumps(stats, option=orjson.OPT_INDENT_2) + b"\n", sweep=True
        )
        self.run.stats_written = True

    # -- progress
    def tick(self, n: int = 1) -> None:
        """Count n units of work by hand (e.g. articles), instead of input or output records."""
        self._by_hand = True
        self.progress_meter.update(n)

    def set_total(self, total: int | None) -> None:
        """The expected number of units (shown with a percentage and an ETA)."""
        self._by_hand = True
        self.progress_meter.set_total(total)

    # -- streams
    @property
    def records(self) -> Iterator[dict[str, Any]]:
        """Input records, validated, sharded, with a progress bar on stderr."""
        if self.input in (None, "-"):
            stream: IO[bytes] = stdin_stream(self.stage, note=self.input != "-")  # "-": said at start
            name = "<stdin>"
        else:
            path = Path(self.input)
            if not path.exists():
                raise fail(f"input file {path} does not exist")
            stream = self._stack.enter_context(open(path, "rb"))
            name = str(path)
        if self.hash_input:
            stream = self._input_hash = HashingReader(stream)
        records = read_records(
            stream,
            name=name,
            policy=_ShardInputPolicy(self.policy, self.shard),
            media=self.media,
            check=self.validate_input,
        )
        records = select_shard(records, self.shard)
        return self._counted(records)

    @property
    def input_sha256(self) -> str:
        """sha256 of the input bytes read so far (`hash_input=True`): after the last record, the
        digest `sha256sum` prints for the input file."""
        if self._input_hash is None:
            raise RuntimeError("StageIO(hash_input=True) and read records first")
        return self._input_hash.hexdigest()

    def _counted(self, records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        meter, count = self.progress_meter, self.report.counts
        for record in records:
            self._last_id = record.get("id")  # named if a fault escapes the stage (see __exit__)
            count["in"] += 1  # records of this shard, so the stats of n shards add up to the input
            meter.update()
            yield record

    def progress(self, iterable: Any, *, desc: str, total: int | None = None, unit: str | None = None) -> Any:
        """A tqdm bar over a stage's inner loop, on a terminal only."""
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
            markers = False
            if self.output == "-":
                stream: IO[bytes] = sys.stdout.buffer
                flush_each = True
                markers = self.stream_markers and markers_for(stream)
            else:
                if self._atomic is None:
                    self._atomic = AtomicFile(self.output, sweep=True)
                stream = self._atomic.handle
                flush_each = False
                # `-o FIFO` or `-o /dev/stdout` on a pipe is written through: mark it like stdout
                markers = self.stream_markers and markers_for(stream)
            self._writer = RecordWriter(
                stream,
                fmt=self.fmt,
                media=self.media,
                flush_each=flush_each,
                report=self.report,
                policy=getattr(self, "policy", None),  # errors met while writing obey --on-error
                markers=markers,
            )
        return self._writer

    def write(self, record: dict[str, Any]) -> None:
        self.writer.write(record)
        if self.input is None and not self._by_hand:  # a source stage: progress counts what it wrote
            self.progress_meter.update()

    def write_all(self, records: Any) -> None:
        for record in records:
            self.write(record)


def note_terminal_stdin(stage: str, stream: Any = None) -> None:
    """On a terminal with nothing piped in, say at once that the stage waits for records on stdin
    and how to give them, instead of sitting silent until Ctrl-C."""
    stream = sys.stdin if stream is None else stream
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        return
    if interactive:
        typer.echo(
            f"medmax {stage}: waiting for records on stdin (a terminal): give a file "
            f"(medmax {stage} FILE) or pipe them in (... | medmax {stage}); Ctrl-D ends the input, "
            "Ctrl-C stops",
            err=True,
        )


class _StickyEOF(io.RawIOBase):
    """A terminal's end of input (Ctrl-D) is one empty read, not a lasting state: a reader that
    peeks at the first bytes (format detection) and then reads would wait for a second Ctrl-D.
    This makes the first one final."""

    def __init__(self, raw: Any):
        self.raw = raw
        self.ended = False

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.raw.fileno()

    def readinto(self, buffer: Any) -> int:
        if self.ended:
            return 0
        n = self.raw.readinto(buffer)
        if not n:
            self.ended = True
        return n or 0


def stdin_stream(stage: str, *, note: bool = True) -> IO[bytes]:
    """stdin's bytes for a stage; on a terminal, with the waiting notice (unless given already)
    and a final Ctrl-D."""
    stream = sys.stdin.buffer
    try:
        interactive = sys.stdin.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        return stream
    if note:
        note_terminal_stdin(stage)
    return io.BufferedReader(_StickyEOF(stream.raw))


def _check_stage_paths(input: str | None, output: str, rejects: Path | None, stats: Path | None) -> None:
    from medmax_cli.paths import PathCollision, check_stage

    try:
        check_stage(input=input, output=output, rejects=rejects, stats=stats)
    except PathCollision as exc:
        raise fail(str(exc)) from None


def start_progress(stage: str, report: RunReport, *, unit: str = "rec", quiet: bool = False) -> Progress:
    """Progress (bar or heartbeat) for a command that reads records without a StageIO (validate);
    the caller closes it."""
    try:
        heartbeat = heartbeat_seconds(run_options().heartbeat)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return Progress(stage, report, unit=unit, enabled=not quiet, heartbeat=heartbeat).start()


class _ShardInputPolicy(ErrorPolicy):
    """The error policy while reading input, so that every bad line is counted by exactly one shard.

    Every `--shard i/n` run reads the whole input; a bad record belongs to the shard its id hashes
    to, a line without an id (malformed JSON) to shard 0. In skip mode the other shards pass over
    it (its owner rejects it); in fail mode every shard stops, as the input is broken for all.
    Records read are counted after the shard filter (in `StageIO._counted`); a line this shard
    rejects while reading is counted under `in` here, so in = out + rejected + skipped.
    """

    def __init__(self, inner: ErrorPolicy, shard: tuple[int, int] | None):
        super().__init__(inner.mode, inner.rejects, RunReport(inner.stage), stage=inner.stage)
        self.inner = inner
        self.shard = shard

    def reject(
        self, error: Exception, raw: Any = None, *, where: str | None = None, record_id: str | None = None
    ) -> None:
        if self.mode == "skip" and self.shard is not None:
            rid = record_id or getattr(error, "record_id", None)
            if rid is None and isinstance(raw, dict) and isinstance(raw.get("id"), str):
                rid = raw["id"]
            owner = in_shard(rid, self.shard) if rid else self.shard[0] == 0
            if not owner:
                return
        self.inner.report.count("in")  # a line rejected while reading was read: in = out + rejected
        self.inner.reject(error, raw, where=where, record_id=record_id)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so interpreter shutdown stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- options every command gets
#
# Rather than each command module declaring --stats, --max-reject-rate, -v and friends (and
# threading them to StageIO), the root group adds them to every command when the click command
# tree is built, takes them out of the parameters before the command's own function runs, and
# puts them in the RunOptions context variable that StageIO reads.


def _click() -> Any:
    """The click that typer runs on (typer >= 0.24 ships its own copy as `typer._click`)."""
    from typer import core

    return core._click


def _common_options(
    mm_verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines (-vv: debug)."),
    mm_log_level: str = typer.Option(
        None,
        "--log-level",
        metavar="LEVEL",
        help="debug, info, warning, error [env MEDMAX_LOG; default warning].",
    ),
    mm_print_config: bool = typer.Option(
        False,
        "--print-config",
        help="Print the settings this command would run with (flags > --config file > defaults) as TOML "
        "and exit.",
    ),
    mm_stats: str = typer.Option(
        None,
        "--stats",
        metavar="FILE",
        help="Write a JSON of counts, reject reasons, timings, throughput and settings to FILE "
        "(`medmax stats merge` adds up --shard pieces).",
    ),
) -> None:
    """Template: the options every command gets (typer builds them; `_equip` copies them)."""


def _stage_options(
    mm_max_reject_rate: float = typer.Option(
        None,
        "--max-reject-rate",
        min=0.0,
        max=1.0,
        metavar="R",
        help="Exit 1 when more than this share of records was rejected [default: only when records "
        "were rejected and none written].",
    ),
    mm_rejects_append: bool = typer.Option(
        False,
        "--rejects-append",
        help="Append to --rejects instead of replacing it (each run otherwise overwrites it, atomically).",
    ),
    mm_heartbeat: float = typer.Option(
        None,
        "--heartbeat",
        min=0.0,
        metavar="SECONDS",
        help="Off a terminal, a progress line on stderr every SECONDS [env MEDMAX_HEARTBEAT; 30; 0: off].",
    ),
) -> None:
    """Template: the options every stage (a command with --on-error) gets."""


def _params_of(template: Callable[..., None]) -> list[Any]:
    """The click parameters typer builds for a template function's signature."""
    app = typer.Typer(add_completion=False)
    app.command()(template)
    return list(typer.main.get_command(app).params)


def _is_stage(command: Any) -> bool:
    """A stage is a command with an error policy (it reads or writes records through StageIO)."""
    return any(getattr(p, "name", None) == "on_error" for p in command.params)


def _equip(command: Any, path: str) -> None:
    """Add the common options to a click command (recursing into groups) and wrap its callback."""
    if hasattr(command, "commands"):  # a group (e.g. `fetch`): equip its commands
        for name, sub in command.commands.items():
            _equip(sub, f"{path} {name}")
        return
    if getattr(command, "_medmax_equipped", False):
        return
    taken = {opt for p in command.params for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    extra = _params_of(_common_options) + (_params_of(_stage_options) if _is_stage(command) else [])
    for option in extra:
        if not set(option.opts) & taken:
            command.params.append(option)
    if _is_stage(command):
        command.epilog = ((command.epilog or "") + "\n\n" + EXIT_CODES_HELP).strip()
    inner = command.callback

    def callback(**params: Any) -> Any:
        mine = {k: params.pop(k) for k in list(params) if k.startswith("mm_")}
        ctx = _click().globals.get_current_context()
        from medmax_cli.observe import resolve_log_level, setup_logging

        try:
            level = resolve_log_level(
                mine.get("mm_verbose", 0), bool(params.get("quiet")), mine.get("mm_log_level")
            )
        except ValueError as exc:
            raise fail(f"--log-level: {exc}") from None
        setup_logging(level)
        if "mm_heartbeat" in mine:  # before anything runs: --heartbeat inf/nan is bad usage
            try:
                heartbeat_seconds(mine["mm_heartbeat"])
            except ValueError as exc:
                raise fail(str(exc)) from None
        if mine.get("mm_print_config"):
            from medmax_cli.config import render_settings
            from medmax_cli.egress import redact

            typer.echo(render_settings(path, ctx, redact({**params, **mine})), nl=False)
            raise typer.Exit(0)
        options = RunOptions(
            command=path,
            settings={k: _plain(v) for k, v in params.items()},
            stats=Path(mine["mm_stats"]) if mine.get("mm_stats") else _stats_in_dir(path),
            max_reject_rate=mine.get("mm_max_reject_rate"),
            rejects_append=bool(mine.get("mm_rejects_append")),
            heartbeat=mine.get("mm_heartbeat"),
        )
        _check_paths(path, ctx, params, options.stats)  # before --stats or any output is touched
        token = _RUN.set(options)
        status = "failed"
        try:
            result = inner(**params) if inner is not None else None
            status = "ok"
            return result
        except typer.Exit as exc:
            status = "ok" if exc.exit_code == 0 else "failed"
            raise
        finally:
            _RUN.reset(token)
            if options.stats is not None and not options.stats_written:
                _command_stats(options, status)

    command.callback = callback
    command._medmax_equipped = True


def _check_paths(command: str, ctx: Any, params: dict[str, Any], stats: Path | None) -> None:
    """Exit 2 when the command's outputs would destroy its inputs or each other (medmax_cli.paths)."""
    from medmax_cli.paths import PathCollision, check_command

    root_config = ctx.find_root().params.get("config") if ctx is not None else None
    try:
        check_command(command, {**params, "root_config": root_config}, stats=stats)
    except PathCollision as exc:
        raise fail(str(exc)) from None


def _stats_in_dir(command: str) -> Path | None:
    """With env MEDMAX_STATS_DIR, every command run writes its stats there without a --stats flag."""
    folder = os.environ.get("MEDMAX_STATS_DIR")
    if not folder:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return Path(folder) / f"{stamp}-{command.removeprefix('medmax ').replace(' ', '-')}-{os.getpid()}.json"


def _command_stats(options: RunOptions, status: str) -> None:
    """--stats for a command without a record stream (finetune, validate): settings and time."""
    import orjson

    from medmax_cli.atomic import atomic_write_bytes
    from medmax_cli.observe import stage_stats
    from medmax_cli.streams import RunReport

    report = options.report or RunReport(
        options.command.split()[1] if " " in options.command else options.command
    )
    report.started = time.monotonic() - (time.time() - options.started_at)
    stats = stage_stats(
        report,
        command=options.command,
        settings=options.settings,
        status=status,
        started_at=options.started_at,
    )
    atomic_write_bytes(options.stats, orjson.dumps(stats, option=orjson.OPT_INDENT_2) + b"\n")


def _plain(value: Any) -> Any:
    """A parameter value as JSON/TOML can hold it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --config FILE and --print-config: see medmax_cli.config (read_config, render_settings).


class MedmaxGroup(TyperGroup):
    """The root click group: every command it holds gets the common options (see `_equip`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for name, command in self.commands.items():
            _equip(command, f"medmax {name}")
