"""Watching a run: progress on stderr, one logging setup, per-stage stats files and their merge.

Why a heartbeat: under `nohup`, `sbatch` or `| tee`, stderr is not a terminal and a tqdm bar
would either be silent or fill the log with carriage returns. Off a terminal a daemon thread
prints one plain line every N seconds instead (counts, rate, rejects, ETA when the total is
known), so a log shows that a stage is alive even while it blocks on one slow request.

Stats files (`--stats FILE`) are one JSON object per run of a stage; `merge_stats` adds up the
pieces of a `--shard i/n` array and checks that every shard is there exactly once.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import IO, Any

STATS_FORMAT = 1
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_HEARTBEAT = 30.0


# --------------------------------------------------------------------------- progress


class Progress:
    """One stage's progress: a tqdm bar on a terminal, heartbeat lines otherwise.

    `n` counts the stage's work units (input records, or articles for `fetch pmc`); the
    report's counters supply what was written and rejected.
    """

    def __init__(
        self,
        stage: str,
        report: Any,
        *,
        unit: str = "rec",
        enabled: bool = True,
        heartbeat: float = DEFAULT_HEARTBEAT,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
    ):
        self.stage = stage
        self.report = report
        self.unit = unit
        self.enabled = enabled
        self.heartbeat = heartbeat
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.n = 0
        self.total: int | None = None
        self.started = time.monotonic()
        self._bar: Any = None
        self._shown_rejects = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Progress:
        if not self.enabled:
            return self
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(
                desc=self.stage,
                total=self.total,
                unit=self.unit,
                file=self.stream,
                dynamic_ncols=True,
                leave=False,
            )
        elif self.heartbeat > 0:
            self._thread = threading.Thread(
                target=self._beat, name=f"medmax-{self.stage}-heartbeat", daemon=True
            )
            self._thread.start()
        return self

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            rejected = self.rejected()
            if rejected != self._shown_rejects:
                self._shown_rejects = rejected
                self._bar.set_postfix(rejected=rejected, refresh=False)

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def rejected(self) -> int:
        return _safe_sum(self.report.dropped)

    def line(self) -> str:
        """`medmax STAGE: HH:MM:SS 120/500 articles (24%), 2.0 articles/s, out 480, rejected 3, 60 s, ETA 190 s`."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{datetime.now().strftime('%H:%M:%S')} {done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.1f} {self.unit}/s")
        counts = _safe_copy(self.report.counts)
        if "out" in counts:
            parts.append(f"out {counts['out']}")
        parts.append(f"rejected {self.rejected()}")
        parts.append(f"{elapsed:.0f} s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {(self.total - self.n) / rate:.0f} s")
        return f"medmax {self.stage}: " + ", ".join(parts)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.stream.write(self.line() + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed under us: nothing left to tell
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _safe_copy(counter: Counter) -> dict[str, int]:
    """A copy of a counter another thread may be growing (a resize mid-copy raises: retry)."""
    for _ in range(5):
        try:
            return dict(counter)
        except RuntimeError:
            continue
    return {}


def _safe_sum(counter: Counter) -> int:
    return sum(_safe_copy(counter).values())


def heartbeat_seconds(value: float | None) -> float:
    """--heartbeat, else env MEDMAX_HEARTBEAT, else 30 s; 0 turns the heartbeat off."""
    if value is not None:
        seconds, where = float(value), "--heartbeat"
    else:
        env = os.environ.get("MEDMAX_HEARTBEAT")
        if not env:
            return DEFAULT_HEARTBEAT
        try:
            seconds, where = float(env), f"MEDMAX_HEARTBEAT={env!r}"
        except ValueError:
            raise ValueError(f"MEDMAX_HEARTBEAT={env!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:  # inf would never beat, nan compares false forever
        raise ValueError(f"{where}: must be a finite number of seconds >= 0 (0: off); got {seconds}")
    return seconds


# --------------------------------------------------------------------------- logging


class _StderrHandler(logging.Handler):
    """Log lines on stderr that do not tear a tqdm bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from medmax_cli.egress import redact_text

            message = redact_text(self.format(record))
            tqdm_module = sys.modules.get("tqdm")
            if tqdm_module is not None and getattr(tqdm_module.tqdm, "_instances", None):
                tqdm_module.tqdm.write(message, file=sys.stderr)
            else:
                sys.stderr.write(message + "\n")
                sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never take the run down
            self.handleError(record)


def resolve_log_level(verbose: int = 0, quiet: bool = False, level: str | None = None) -> int:
    """--log-level > -v/-vv > -q > env MEDMAX_LOG > warning."""
    name = level
    if name is None:
        if verbose >= 2:
            name = "debug"
        elif verbose == 1:
            name = "info"
        elif quiet:
            name = "error"
        else:
            name = os.environ.get("MEDMAX_LOG") or "warning"
    name = name.strip().lower()
    if name not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}; got {name!r}")
    return getattr(logging, name.upper())


def setup_logging(level: int) -> None:
    """One handler on the package's root logger (`medmax_cli`); calling again only changes the level."""
    logger = logging.getLogger("medmax_cli")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s medmax %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        )
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)


# --------------------------------------------------------------------------- stats


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def stage_stats(
    report: Any,
    *,
    command: str,
    settings: dict[str, Any],
    status: str,
    started_at: float,
    argv: list[str] | None = None,
    reject_rate: float | None = None,
) -> dict[str, Any]:
    """The `--stats FILE` object: counts, reject reasons, timings, throughput and the settings."""
    from medmax_cli import __version__
    from medmax_cli.egress import redact, redact_text

    seconds = round(report.seconds, 3)
    counts = _safe_copy(report.counts)
    rejected: dict[str, int] = {}
    for reason, n in _safe_copy(report.dropped).items():  # reasons may quote URLs
        key = redact_text(reason)
        rejected[key] = rejected.get(key, 0) + n
    skipped = _safe_copy(getattr(report, "skipped", None) or {})
    return {
        "medmax_stats": STATS_FORMAT,
        "stage": report.stage,
        "command": command,
        "version": __version__,
        "status": status,
        "shard": settings.get("shard"),
        "started": _utc(started_at),
        "finished": _utc(time.time()),
        "seconds": seconds,
        "counts": counts,
        "rejected": rejected,
        "rejected_total": sum(rejected.values()),
        "skipped": skipped,
        "skipped_total": sum(skipped.values()),
        "reject_rate": None if reject_rate is None else round(reject_rate, 6),
        "throughput": {k: round(v / seconds, 3) if seconds > 0 else None for k, v in counts.items()},
        "settings": redact(settings),  # --llm-url with a key, a proxy password: the one rule of egress
        "argv": redact(list(argv if argv is not None else sys.argv[1:])),
        **dict(getattr(report, "extra", None) or {}),
    }


# Settings that legitimately differ between the pieces of one sharded run.
PER_PIECE = frozenset({"shard", "output", "rejects", "stats", "state_path", "input", "inputs", "summary"})


class StatsError(ValueError):
    pass


def merge_stats(pieces: list[tuple[str, dict[str, Any]]], *, allow_partial: bool = False) -> dict[str, Any]:
    """Add up the stats of one stage's `--shard i/n` pieces (or any runs of one command).

    Counts and reject reasons are summed; `seconds` is the sum over pieces (worker time) and
    `wall_seconds` the span from the first start to the last finish. Every shard of n must be
    present exactly once unless `allow_partial`.
    """
    if not pieces:
        raise StatsError("no stats files to merge")
    commands = {p.get("command") for _, p in pieces}
    if len(commands) != 1:
        raise StatsError(f"stats of different commands cannot be merged: {sorted(map(str, commands))}")
    counts: Counter = Counter()
    rejected: Counter = Counter()
    skipped: Counter = Counter()
    contamination: Counter = Counter()
    seconds = 0.0
    shards: dict[int, str] = {}
    n_shards: set[int] = set()
    statuses: Counter = Counter()
    first = pieces[0][1]
    differ: set[str] = set()
    for name, piece in pieces:
        if piece.get("medmax_stats") != STATS_FORMAT:
            raise StatsError(f"{name}: not a medmax stats file (format {piece.get('medmax_stats')!r})")
        counts.update(piece.get("counts") or {})
        rejected.update(piece.get("rejected") or {})
        skipped.update(piece.get("skipped") or {})
        for row in piece.get("contamination") or []:
            contamination[(row["eval_source"], row["match"])] += int(row["count"])
        seconds += float(piece.get("seconds") or 0)
        statuses[piece.get("status", "?")] += 1
        first_settings, settings = first.get("settings") or {}, piece.get("settings") or {}  # null: none
        for key in set(first_settings) | set(settings):
            if key not in PER_PIECE and first_settings.get(key) != settings.get(key):
                differ.add(key)
        spec = piece.get("shard")
        if spec:
            i, n = (int(x) for x in str(spec).split("/"))
            n_shards.add(n)
            if i in shards:
                raise StatsError(f"shard {i}/{n} appears twice: {shards[i]} and {name}")
            shards[i] = name
    if len(n_shards) > 1:
        raise StatsError(f"pieces come from different --shard splits: n = {sorted(n_shards)}")
    missing: list[int] = []
    if n_shards:
        (n,) = n_shards
        missing = [i for i in range(n) if i not in shards]
        if missing and not allow_partial:
            raise StatsError(
                f"shards missing: {', '.join(f'{i}/{n}' for i in missing)} (or pass --allow-partial)"
            )
        if len(shards) != len(pieces):
            raise StatsError("some pieces have --shard and some do not")
    # ordered as times, not as text: pieces written under different UTC offsets compare correctly
    starts = sorted((p["started"] for _, p in pieces if p.get("started")), key=datetime.fromisoformat)
    ends = sorted((p["finished"] for _, p in pieces if p.get("finished")), key=datetime.fromisoformat)
    wall = None
    if starts and ends:
        wall = (datetime.fromisoformat(ends[-1]) - datetime.fromisoformat(starts[0])).total_seconds()
    for field, table in (("counts", counts), ("rejected", rejected)):
        for key, value in table.items():
            if value >= 1 << 63:  # beyond what a count is (check_stats_piece's bound): a bogus piece
                raise StatsError(f"field '{field}.{key}': the sum over the pieces is beyond 64 bits")
    rejected_total = sum(rejected.values())
    return {
        "medmax_stats": STATS_FORMAT,
        "stage": first.get("stage"),
        "command": first.get("command"),
        "version": first.get("version"),
        "status": "ok" if set(statuses) == {"ok"} else "failed",
        "merged_from": [name for name, _ in pieces],
        "shards": f"{len(shards)}/{next(iter(n_shards))}" if n_shards else None,
        "shards_missing": missing,
        "started": starts[0] if starts else None,
        "finished": ends[-1] if ends else None,
        "seconds": round(seconds, 3),
        "wall_seconds": wall,
        "counts": dict(counts),
        "rejected": dict(rejected),
        "rejected_total": rejected_total,
        "skipped": dict(skipped),
        "skipped_total": sum(skipped.values()),
        "throughput": {k: round(v / seconds, 3) if seconds > 0 else None for k, v in counts.items()},
        "settings": {k: v for k, v in (first.get("settings") or {}).items() if k not in PER_PIECE},
        "settings_differ": sorted(differ),
        **(
            {
                "contamination": [
                    {"eval_source": s, "match": m, "count": n} for (s, m), n in sorted(contamination.items())
                ]
            }
            if any("contamination" in p for _, p in pieces)
            else {}
        ),
    }


def check_stats_piece(name: str, piece: Any) -> None:
    """Raise StatsError naming the file and the field when a --stats file is malformed, so that
    `stats merge` never adds up (or crashes on) a hand-edited or truncated piece."""

    def bad(field: str, why: str) -> StatsError:
        return StatsError(f"{name}: field {field!r}: {why}")

    if not isinstance(piece, dict):
        raise StatsError(f"{name}: not a JSON object (a medmax stats file is one object)")
    if piece.get("medmax_stats") != STATS_FORMAT:
        raise bad("medmax_stats", f"not a medmax stats file (format {piece.get('medmax_stats')!r})")
    if not isinstance(piece.get("command"), str):
        raise bad("command", "missing or not a string")
    for field in ("counts", "rejected"):
        table = piece.get(field)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise bad(field, "not an object of counts")
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
                raise bad(f"{field}.{key}", f"not a count (a whole number >= 0): {str(value)[:40]!r}")
    seconds = piece.get("seconds")
    if seconds is not None and (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise bad("seconds", f"not a duration in seconds: {str(seconds)[:40]!r}")
    for field in ("status", "stage"):
        if piece.get(field) is not None and not isinstance(piece[field], str):
            raise bad(field, "not a string")
    if piece.get("settings") is not None and not isinstance(piece["settings"], dict):
        raise bad("settings", "not an object")
    spec = piece.get("shard")
    if spec is not None:
        parts = str(spec).split("/") if isinstance(spec, str) else []
        if (
            len(parts) != 2
            or not all(p.isdigit() and len(p) < 10 for p in parts)
            or not (int(parts[0]) < int(parts[1]))
        ):
            raise bad("shard", f"not i/n with 0 <= i < n: {str(spec)[:40]!r}")
    for field in ("started", "finished"):
        value = piece.get(field)
        if value is None:
            continue
        try:
            when = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise bad(field, f"not an ISO time: {str(value)[:40]!r}") from None
        if when.tzinfo is None:  # a stage writes UTC with its offset; a naive time cannot be compared
            raise bad(field, f"an ISO time without its UTC offset: {value[:40]!r}")
