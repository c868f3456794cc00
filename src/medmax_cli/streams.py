"""Record streams: JSONL or WebDataset tar in, JSONL or tar out, with an error policy.

Readers and writers take already-open binary file objects (the CLI layer opens
stdin/stdout or paths), so library code never touches the process's streams.
In a tar stream a record is `<id>.json` and its images `<id>.<i>.<ext>`; images
travel inline and land in the media store on the way in.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from medmax_cli.atomic import AtomicFile, atomic_write_bytes  # noqa: F401 (re-exported)
from medmax_cli.media import MediaError, MediaStore, extension_for
from medmax_cli.records import RecordError, validate

FORMATS = ("jsonl", "tar")
TAR_MTIME = 0  # fixed so that tar output is byte-reproducible


class StreamError(RuntimeError):
    """The stream itself is broken (truncated tar, unreadable file): reading cannot go on."""


# --------------------------------------------------------------------------- run report


@dataclass
class RunReport:
    """Counts for the end-of-run summary line on stderr (seen, written, dropped by reason)."""

    stage: str
    started: float = field(default_factory=time.monotonic)
    counts: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[_reason_key(reason)] += n

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def summary(self) -> str:
        parts = [f"{name} {value}" for name, value in self.counts.items()]
        total_dropped = sum(self.dropped.values())
        if total_dropped:
            reasons = ", ".join(f"{r}: {n}" for r, n in self.dropped.most_common(8))
            parts.append(f"rejected {total_dropped} ({reasons})")
        parts.append(f"{self.seconds:.1f} s")
        return f"medmax {self.stage}: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "counts": dict(self.counts),
            "rejected": dict(self.dropped),
            "seconds": round(self.seconds, 3),
        }


def _reason_key(reason: str) -> str:
    """A short bucket for a reason: the text before the first colon or parenthesis."""
    head = reason.split(":", 1)[0].split("(", 1)[0].strip()
    return head[:60] or "error"


# --------------------------------------------------------------------------- error policy


class ErrorPolicy:
    """What to do with a bad record: stop (`fail`, the default) or reject and go on (`skip`).

    A rejected record is appended to the rejects file as
    `{"stage", "where", "record_id", "reason", "raw"}` and counted in the run report.
    """

    def __init__(
        self,
        mode: str = "fail",
        rejects: IO[bytes] | None = None,
        report: RunReport | None = None,
        stage: str = "medmax",
    ):
        if mode not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', not {mode!r}")
        self.mode = mode
        self.rejects = rejects
        self.report = report or RunReport(stage)
        self.stage = stage

    def reject(
        self, error: Exception, raw: Any = None, *, where: str | None = None, record_id: str | None = None
    ) -> None:
        """Raise in fail mode; otherwise record the reject and return."""
        if isinstance(error, RecordError):
            where = where or error.where
            record_id = record_id or error.record_id
            reason = error.reason
        else:
            reason = str(error)
        if record_id is None and isinstance(raw, dict) and isinstance(raw.get("id"), str):
            record_id = raw["id"]
        if self.mode == "fail":
            if isinstance(error, RecordError):
                error.where, error.record_id = where, record_id
                raise error
            raise RecordError(reason, record_id=record_id, where=where) from error
        self.report.drop(reason)
        if self.rejects is not None:
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8", errors="replace")
            entry = {
                "stage": self.stage,
                "where": where,
                "record_id": record_id,
                "reason": reason,
                "raw": raw,
            }
            self.rejects.write(orjson.dumps(entry, default=str) + b"\n")
            self.rejects.flush()


def map_records(
    records: Iterable[dict[str, Any]],
    fn: Callable[[dict[str, Any]], Iterable[dict[str, Any]]],
    policy: ErrorPolicy,
) -> Iterator[dict[str, Any]]:
    """Apply a one-record-to-many function, sending RecordError/MediaError through the policy."""
    for record in records:
        try:
            outputs = list(fn(record))
        except (RecordError, MediaError) as exc:
            policy.reject(exc, record)
            continue
        yield from outputs


# --------------------------------------------------------------------------- reading


def _peekable(stream: IO[bytes]) -> io.BufferedReader:
    if isinstance(stream, io.BufferedReader):
        return stream
    return io.BufferedReader(stream)  # type: ignore[arg-type]


def detect_format(stream: io.BufferedReader) -> str:
    """'tar', 'gzip' or 'jsonl', from the first bytes (tar: 'ustar' magic at offset 257)."""
    head = stream.peek(512)[:512]
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return "jsonl"


def read_records(
    stream: IO[bytes],
    *,
    name: str = "<stdin>",
    policy: ErrorPolicy | None = None,
    media: MediaStore | None = None,
    check: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield validated records from a JSONL (optionally gzipped) or WebDataset tar stream."""
    policy = policy or ErrorPolicy()
    reader = _peekable(stream)
    fmt = detect_format(reader)
    if fmt == "gzip":
        reader = _peekable(gzip.GzipFile(fileobj=reader, mode="rb"))  # type: ignore[arg-type]
        fmt = detect_format(reader)
    if fmt == "tar":
        yield from _read_tar(reader, name=name, policy=policy, media=media or MediaStore(), check=check)
    else:
        yield from _read_jsonl(reader, name=name, policy=policy, check=check)


def _read_jsonl(
    stream: IO[bytes], *, name: str, policy: ErrorPolicy, check: bool
) -> Iterator[dict[str, Any]]:
    for line_no, line in enumerate(stream, 1):
        if not line.strip():
            continue
        where = f"{name}:{line_no}"
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            policy.reject(RecordError(f"malformed JSON ({exc})"), line.rstrip(b"\n"), where=where)
            continue
        if check:
            try:
                validate(record)
            except RecordError as exc:
                policy.reject(exc, record, where=where)
                continue
        policy.report.count("in")
        yield record


def _split_member(member_name: str) -> tuple[str, str]:
    """('dir/key', 'rest') where key is the basename before its first dot (WebDataset rule)."""
    directory, _, base = member_name.rpartition("/")
    key, _, rest = base.partition(".")
    return (f"{directory}/{key}" if directory else key), rest


def _read_tar(
    stream: IO[bytes], *, name: str, policy: ErrorPolicy, media: MediaStore, check: bool
) -> Iterator[dict[str, Any]]:
    try:
        archive = tarfile.open(fileobj=stream, mode="r|")
    except tarfile.TarError as exc:
        raise StreamError(f"{name}: not a readable tar stream ({exc})") from None
    group_key: str | None = None
    group: dict[str, bytes] = {}
    try:
        for member in archive:
            if not member.isfile():
                continue
            key, rest = _split_member(member.name)
            handle = archive.extractfile(member)
            data = handle.read() if handle else b""
            if len(data) != member.size:
                raise StreamError(f"{name}: member {member.name} is truncated")
            if group and (key != group_key or rest in group):  # a repeated member starts a new sample
                yield from _tar_sample(
                    group_key or "", group, name=name, policy=policy, media=media, check=check
                )
                group = {}
            group_key = key
            group[rest] = data
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise StreamError(f"{name}: truncated or corrupt tar stream after {group_key!r} ({exc})") from None
    if group:
        yield from _tar_sample(group_key or "", group, name=name, policy=policy, media=media, check=check)


def _tar_sample(
    key: str, group: dict[str, bytes], *, name: str, policy: ErrorPolicy, media: MediaStore, check: bool
) -> Iterator[dict[str, Any]]:
    where = f"{name}:{key}"
    raw = group.get("json")
    if raw is None:
        policy.reject(
            RecordError(f"tar sample has no {key}.json member (has: {sorted(group)})"),
            None,
            where=where,
            record_id=key.rpartition("/")[2],
        )
        return
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        policy.reject(RecordError(f"malformed JSON ({exc})"), raw, where=where)
        return
    try:
        _attach_inline_images(record, group, media, where)
        if check:
            validate(record)
    except (RecordError, MediaError) as exc:
        policy.reject(exc, record, where=where)
        return
    policy.report.count("in")
    yield record


def _attach_inline_images(record: Any, group: dict[str, bytes], media: MediaStore, where: str) -> None:
    if not isinstance(record, dict):
        return
    images = record.get("images") or []
    for rest, data in group.items():
        index_text, _, _ext = rest.partition(".")
        if rest == "json" or not index_text.isdigit():
            continue
        index = int(index_text)
        if not isinstance(images, list) or index >= len(images) or not isinstance(images[index], dict):
            raise RecordError(f"tar member .{rest} has no matching images[{index}] entry")
        ref = media.put(data, what=f"{where}.{rest}")
        images[index].update(ref)


# --------------------------------------------------------------------------- writing


class RecordWriter:
    """Write records as JSONL or WebDataset tar to a binary stream.

    `flush_each` pushes every record downstream at once (for pipes, so the next stage
    starts working); writers to regular files leave buffering to the OS.
    """

    def __init__(
        self,
        stream: IO[bytes],
        *,
        fmt: str = "jsonl",
        media: MediaStore | None = None,
        flush_each: bool = True,
        report: RunReport | None = None,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.media = media or MediaStore()
        self.flush_each = flush_each
        self.report = report
        self._tar = (
            tarfile.TarFile(fileobj=_PositionTracker(stream), mode="w", format=tarfile.USTAR_FORMAT)  # type: ignore[arg-type]
            if fmt == "tar"
            else None
        )

    def write(self, record: dict[str, Any]) -> None:
        if self._tar is None:
            self.stream.write(orjson.dumps(record) + b"\n")
        else:
            self._write_tar(record)
        if self.flush_each:
            self.stream.flush()
        if self.report is not None:
            self.report.count("out")

    def _write_tar(self, record: dict[str, Any]) -> None:
        key = record["id"]
        self._add(f"{key}.json", orjson.dumps(record))
        for index, ref in enumerate(record.get("images") or []):
            if not isinstance(ref, dict) or not ref.get("path"):
                continue  # a url- or token-only image has no bytes to ship
            data = self.media.read_bytes(ref, what=f"record {key!r} images[{index}]")
            self._add(f"{key}.{index}.{extension_for(ref)}", data)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = 0o644
        assert self._tar is not None
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        self.stream.flush()


class _PositionTracker:
    """Gives a pipe the `tell()` that TarFile wants, so tar members go out unbuffered."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.position = 0

    def write(self, data: bytes) -> int:
        self.stream.write(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        self.stream.flush()


# --------------------------------------------------------------------------- sharding


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n) with 0 <= i < n; None passes everything."""
    if spec is None:
        return None
    try:
        index_text, count_text = spec.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/8), got {spec!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard {spec}: need 0 <= i < n")
    return index, count


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Stable assignment of a record id (or file name, PMCID) to shard i of n.

    blake2b rather than crc32: keys that differ only in their last digits (PMC9000001,
    PMC9000002, ...) land unevenly under crc32 modulo a small n.
    """
    if shard is None:
        return True
    index, count = shard
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % count == index


def select_shard(
    records: Iterable[dict[str, Any]], shard: tuple[int, int] | None
) -> Iterator[dict[str, Any]]:
    for record in records:
        rid = record.get("id")
        # a record with no id is passed on: the stage's own check names it (no KeyError here)
        if not isinstance(rid, str) or in_shard(rid, shard):
            yield record
