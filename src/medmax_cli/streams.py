"""Record streams: JSONL or WebDataset tar in, JSONL or tar out, with an error policy.

Readers and writers take already-open binary file objects (the CLI layer opens
stdin/stdout or paths), so library code never touches the process's streams.
In a tar stream a record is `<id>.json` and its images `<id>.<i>.<ext>`; images
travel inline and land in the media store on the way in.

Integrity and limits (docs/security.md): a tar stream must end with its end-of-archive blocks (a
stream cut at a member boundary, as a killed writer leaves it, is a StreamError); link, device and
fifo members are refused with a reason; one JSONL line (or `.json` member) may hold at most
`MEDMAX_MAX_LINE_BYTES` and one tar member at most `MEDMAX_MAX_MEMBER_BYTES` (64 MiB each by
default), one tar sample at most `MEDMAX_MAX_SAMPLE_BYTES` (256 MiB); an id seen twice in one stream is a record error, on reading and on writing (one
8-byte digest per id is kept). A record that cannot be written (an image gone from the store,
JSON too deep) goes through the error policy before any of its bytes are written, so no half
sample reaches the output. A JSONL stream written on a pipe carries a header and a counted end
trailer, and a reader refuses a marked stream that was cut short (see "end-of-stream markers").
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from medmax_cli.atomic import AtomicFile, atomic_write_bytes  # noqa: F401 (re-exported)
from medmax_cli.media import MediaError, MediaStore, extension_for
from medmax_cli.records import RecordError, loads_record, reason_class, validate

FORMATS = ("jsonl", "tar")
TAR_MTIME = 0  # fixed so that tar output is byte-reproducible
MAX_LINE_BYTES_ENV = "MEDMAX_MAX_LINE_BYTES"
MAX_MEMBER_BYTES_ENV = "MEDMAX_MAX_MEMBER_BYTES"
MAX_SAMPLE_BYTES_ENV = "MEDMAX_MAX_SAMPLE_BYTES"
DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024  # one JSONL line / one .json member
DEFAULT_MAX_MEMBER_BYTES = 64 * 1024 * 1024  # one tar member (the media store's image cap)
DEFAULT_MAX_SAMPLE_BYTES = 256 * 1024 * 1024  # all members of one tar sample, 512 bytes counted a member


class StreamError(RuntimeError):
    """The stream itself is broken (truncated tar, unreadable file): reading cannot go on."""


# ---------------------------------------------------------------- end-of-stream markers (docs/records.md)
# A medmax JSONL writer on a pipe starts with STREAM_HEADER and ends with a trailer that counts its
# records, so that the next stage can tell a finished stream from one whose writer was killed between
# two records (the pipe just ends, as it does after the last record). Readers drop both lines; a
# stream that starts with the header must end with a trailer that matches, else it is a StreamError.
# Plain JSONL (hand-written, `> file`, other tools) has no header and is read as it is.
STREAM_MARKERS_ENV = "MEDMAX_STREAM_MARKERS"  # "0": never write them (for other JSONL consumers)
STREAM_HEADER = b'{"medmax_stream":{"version":1}}\n'
_HEADER_KEY, _TRAILER_KEY = "medmax_stream", "medmax_end"
_MARKER_PREFIX = b'{"medmax_'


def stream_trailer(records: int) -> bytes:
    return b'{"medmax_end":{"records":%d}}\n' % records


def marker_kind(value: Any) -> str | None:
    """ "header" or "trailer" when a parsed JSONL line is a stream marker, else None."""
    if type(value) is dict and len(value) == 1:
        if _HEADER_KEY in value:
            return "header"
        if _TRAILER_KEY in value:
            return "trailer"
    return None


def markers_for(stream: IO[bytes]) -> bool:
    """Should a JSONL writer to `stream` write stream markers: it is a pipe, FIFO or socket (not a file
    or a terminal) and the environment does not turn them off."""
    if (os.environ.get(STREAM_MARKERS_ENV) or "").strip().lower() in ("0", "no", "false", "off"):
        return False
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def parse_jsonl(data: bytes) -> list[Any]:
    """The JSON values of a JSONL byte string, stream markers and blank lines left out (for tests and
    scripts that read a stage's stdout). An integer beyond 64 bits is a RecordError, not a float."""
    values = (loads_record(line) for line in data.splitlines() if line.strip())
    return [value for value in values if marker_kind(value) is None]


def byte_limit(env_name: str, default: int) -> int:
    """A size limit from the environment ("1000000", "64M", "1G"), else `default`."""
    text = (os.environ.get(env_name) or "").strip()
    if not text:
        return default
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1].upper(), 1)
    number = text[:-1] if scale > 1 else text
    if not number.isdigit() or int(number) <= 0:
        raise StreamError(f"{env_name}={text!r} is not a byte count (e.g. 67108864 or 64M)")
    return int(number) * scale


class SeenIds:
    """Ids already met in one stream, kept as their 64-bit string hashes (about 70 bytes per id in
    memory; a false duplicate needs a 64-bit collision: ~1e-7 over 1.5M ids)."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def add(self, record_id: str) -> bool:
        """True if `record_id` is new (and remember it), False if it was seen before."""
        digest = hash(record_id)  # 64-bit SipHash, cached on the string: a C call, not a Python digest
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return True

    def __len__(self) -> int:
        return len(self._seen)


# What per-record code may raise on a record of the wrong shape ("images": null, an "article" that is a
# string, a nested field of the wrong type): every stage loop catches these and hands them to the error
# policy, so one record never ends a run (`--on-error skip` rejects it, `fail` names it and stops).
RECORD_FAULTS: tuple[type[BaseException], ...] = (
    RecordError,
    MediaError,
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    LookupError,
    ArithmeticError,
    RecursionError,
)


def record_fault(error: BaseException, record: Any = None) -> RecordError | MediaError:
    """`error` as the RecordError (or MediaError) the error policy reports: a bare TypeError from a
    field of the wrong type becomes "cannot process the record (TypeError: ...)", naming the record."""
    if isinstance(error, (RecordError, MediaError)):
        return error
    rid = record.get("id") if isinstance(record, dict) and isinstance(record.get("id"), str) else None
    return RecordError(f"cannot process the record ({type(error).__name__}: {error})", record_id=rid)


def duplicate_error(record_id: str) -> RecordError:
    return RecordError(f"duplicate id {record_id!r}: an id may occur once per stream", record_id=record_id)


# --------------------------------------------------------------------------- run report


@dataclass
class RunReport:
    """Counts for the end-of-run summary line on stderr: seen, written, rejected by class and
    skipped by class (a user's filter or a set-aside that is not an error). Keys are reason
    classes, so their number is bounded by the rules, not by the rows."""

    stage: str
    started: float = field(default_factory=time.monotonic)
    counts: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)  # rejected, by class
    skipped: Counter = field(default_factory=Counter)  # skipped, by class
    extra: dict[str, Any] = field(default_factory=dict)  # stage tables for --stats (e.g. contamination)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def drop(self, reason: str, n: int = 1, *, cls: str | None = None) -> None:
        self.dropped[cls or reason_class(reason)] += n

    def skip(self, cls: str, n: int = 1) -> None:
        self.skipped[cls] += n

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def summary(self) -> str:
        parts = [f"{name} {value}" for name, value in self.counts.items()]
        for label, counter in (("rejected", self.dropped), ("skipped", self.skipped)):
            total = sum(counter.values())
            if total:
                reasons = ", ".join(f"{r}: {n}" for r, n in counter.most_common(8))
                more = f", {len(counter) - 8} more classes" if len(counter) > 8 else ""
                parts.append(f"{label} {total} ({reasons}{more})")
        parts.append(f"{self.seconds:.1f} s")
        return f"medmax {self.stage}: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "counts": dict(self.counts),
            "rejected": dict(self.dropped),
            "skipped": dict(self.skipped),
            "seconds": round(self.seconds, 3),
        }


def _reason_key(reason: str) -> str:
    """Kept for callers of the old name: the reason's class."""
    return reason_class(reason)


# --------------------------------------------------------------------------- error policy


class ErrorPolicy:
    """What to do with a bad record: stop (`fail`, the default) or reject and go on (`skip`).

    A rejected record is appended to the rejects file as
    `{"stage", "where", "record_id", "class", "reason", "raw"}` and counted in the run report
    under its class (`reason` keeps the specifics); a skip (`skip`) adds `"skipped": true`.
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
        """Raise in fail mode; otherwise record the reject (counted by its class) and return."""
        if not isinstance(error, (RecordError, MediaError)):
            error = record_fault(error, raw)
        if isinstance(error, RecordError):
            where = where or error.where
            record_id = record_id or error.record_id
            reason = error.reason
        else:
            reason = str(error)
        cls = getattr(error, "cls", None) or reason_class(reason)
        if record_id is None and isinstance(raw, dict) and isinstance(raw.get("id"), str):
            record_id = raw["id"]
        if self.mode == "fail":
            if isinstance(error, RecordError):
                error.where, error.record_id = where, record_id
                raise error
            raise RecordError(reason, record_id=record_id, where=where, cls=cls) from error
        from medmax_cli.egress import redact_text

        reason = redact_text(reason)  # a reason can quote a URL with its key (docs/security.md)
        self.report.drop(reason, cls=cls)
        self.write_entry(cls, reason, raw, where=where, record_id=record_id)

    def skip(
        self,
        cls: str,
        detail: str | None = None,
        *,
        where: str | None = None,
        record_id: str | None = None,
        raw: Any = None,
    ) -> None:
        """Set aside a row that is not an error (a user's filter said no, a video figure): never
        raises; counted under `cls` as skipped, apart from rejects, and listed in the rejects
        file (with `"skipped": true`) so nothing disappears silently."""
        from medmax_cli.egress import redact_text

        self.report.skip(cls)
        self.write_entry(cls, redact_text(detail or cls), raw, where=where, record_id=record_id, skipped=True)

    def write_entry(
        self,
        cls: str,
        reason: str,
        raw: Any,
        *,
        where: str | None,
        record_id: str | None,
        skipped: bool = False,
    ) -> None:
        if self.rejects is None:
            return
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        entry = {
            "stage": self.stage,
            "where": where,
            "record_id": record_id,
            "class": cls,
            "reason": reason,
            "raw": raw,
        }
        if skipped:
            entry["skipped"] = True
        try:  # numpy arrays (pack's checked image codes) are written as the lists they were
            line = orjson.dumps(entry, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # orjson.JSONEncodeError: too deep or not JSON at all; keep a prefix
            entry["raw"] = _safe_repr(raw)
            line = orjson.dumps(entry, default=str)
        self.rejects.write(line + b"\n")
        self.rejects.flush()


def _safe_repr(value: Any, limit: int = 4096) -> str:
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__} nested too deeply to show>"
    return text[:limit]


def map_records(
    records: Iterable[dict[str, Any]],
    fn: Callable[[dict[str, Any]], Iterable[dict[str, Any]]],
    policy: ErrorPolicy,
) -> Iterator[dict[str, Any]]:
    """Apply a one-record-to-many function, sending every per-record fault (RECORD_FAULTS) through
    the policy."""
    for record in records:
        try:
            outputs = list(fn(record))
        except RECORD_FAULTS as exc:
            policy.reject(exc, record)
            continue
        yield from outputs


# --------------------------------------------------------------------------- reading


class HashingReader(io.RawIOBase):
    """A read-only byte stream that hashes (sha256) what is read through it, in the reader's own
    chunks: the digest of a fully read input equals `sha256sum` of the file."""

    def __init__(self, stream: IO[bytes]):
        super().__init__()
        self._stream = stream
        # read1: what a pipe has now, so a slow producer's records are not held back for a full chunk
        self._read = getattr(stream, "read1", stream.read)
        self._sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._sha.update(data)
        return n

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _peekable(stream: IO[bytes]) -> io.BufferedReader:
    if isinstance(stream, io.BufferedReader):
        return stream
    return io.BufferedReader(stream, 1 << 16)  # type: ignore[arg-type]


def detect_format(stream: io.BufferedReader) -> str:
    """'tar', 'gzip' or 'jsonl', from the first bytes (tar: 'ustar' magic at offset 257)."""
    head = stream.peek(512)[:512]
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) == 512 and not head.strip(b"\0"):
        return "tar"  # an empty archive (only its end-of-archive blocks), as a writer of no records leaves it
    return "jsonl"


def read_records(
    stream: IO[bytes],
    *,
    name: str = "<stdin>",
    policy: ErrorPolicy | None = None,
    media: MediaStore | None = None,
    check: bool = True,
    unique_ids: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield validated records from a JSONL (optionally gzipped) or WebDataset tar stream.

    `unique_ids`: a second record with an id already seen is a record error (sent to `policy`).
    """
    policy = _ReadRejects(policy or ErrorPolicy())  # type: ignore[assignment]
    seen = SeenIds() if unique_ids else None
    reader = _peekable(stream)
    fmt = detect_format(reader)
    if fmt == "gzip":
        reader = _peekable(gzip.GzipFile(fileobj=reader, mode="rb"))  # type: ignore[arg-type]
        try:
            fmt = detect_format(reader)
        except (EOFError, OSError, zlib.error) as exc:
            raise StreamError(f"{name}: truncated or corrupt gzip stream ({exc})") from None
    if fmt == "tar":
        yield from _read_tar(
            reader, name=name, policy=policy, media=media or MediaStore(), check=check, seen=seen
        )
    else:
        yield from _read_jsonl(reader, name=name, policy=policy, check=check, seen=seen)


class _ReadRejects:
    """The reader's view of a policy: a line rejected while reading was still read, so it counts
    under `in` too and every summary adds up (in = out + rejected + skipped)."""

    def __init__(self, policy: ErrorPolicy):
        self.policy = policy
        self.report = policy.report

    def reject(self, error: Exception, raw: Any = None, **where: Any) -> None:
        self.report.count("in")
        self.policy.reject(error, raw, **where)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)


def _unique(record: Any, seen: SeenIds | None, policy: ErrorPolicy, where: str) -> bool:
    """False (after sending a duplicate-id error to the policy) if the record's id was seen."""
    if seen is None or not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return True
    if seen.add(record["id"]):
        return True
    policy.reject(duplicate_error(record["id"]), record, where=where)
    return False


def _read_jsonl(
    stream: IO[bytes], *, name: str, policy: ErrorPolicy, check: bool, seen: SeenIds | None = None
) -> Iterator[dict[str, Any]]:
    cap = byte_limit(MAX_LINE_BYTES_ENV, DEFAULT_MAX_LINE_BYTES)
    counts = policy.report.counts  # the hot loop touches locals only; error paths build messages
    readline, loads, JSONDecodeError = stream.readline, loads_record, orjson.JSONDecodeError
    line_no = 0
    segment: int | None = None  # records since a stream header, while one is open
    segment_start = 0
    while True:
        try:
            line = readline(cap + 1)
            over = len(line) > cap and not line.endswith(b"\n")
            if over:
                _skip_line(stream)
        except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise StreamError(
                f"{name}: truncated or corrupt compressed stream after line {line_no} ({exc})"
            ) from None
        if not line:
            break
        line_no += 1
        if line[:9] == _MARKER_PREFIX and (kind := _marker_line(line)) is not None:
            if kind == "header":
                if segment is not None:
                    raise _cut_error(name, segment, segment_start, f"a new stream begins at line {line_no}")
                segment, segment_start = 0, line_no
            else:
                segment = _check_trailer(line, segment, name, line_no, segment_start)
            continue
        if segment is not None and line.strip():
            segment += 1
        if over:
            policy.reject(
                RecordError(f"line longer than the {cap}-byte limit (env {MAX_LINE_BYTES_ENV})"),
                line[:200],
                where=f"{name}:{line_no}",
            )
            continue
        try:
            record = loads(line)
        except JSONDecodeError as exc:
            if not line.strip():
                continue  # blank lines are allowed
            policy.reject(
                RecordError(f"malformed JSON ({exc})"), line.rstrip(b"\n"), where=f"{name}:{line_no}"
            )
            continue
        except RecordError as exc:  # an integer beyond 64 bits
            policy.reject(exc, line.rstrip(b"\n"), where=f"{name}:{line_no}")
            continue
        if type(record) is not dict:  # structural, so even stages that validate later see objects
            kind = type(record).__name__
            policy.reject(
                RecordError(f"a record must be a JSON object, got {kind}"), record, where=f"{name}:{line_no}"
            )
            continue
        if check:
            try:
                validate(record)
            except RECORD_FAULTS as exc:
                policy.reject(exc, record, where=f"{name}:{line_no}")
                continue
        elif type(record.get("id")) is not str:  # checked stages get this from validate()
            policy.reject(RecordError("record has no 'id' (a string)"), record, where=f"{name}:{line_no}")
            continue
        if seen is not None and not seen.add(record["id"]):
            policy.reject(duplicate_error(record["id"]), record, where=f"{name}:{line_no}")
            continue
        counts["in"] += 1
        yield record
    if segment is not None:
        raise _cut_error(name, segment, segment_start, "the input ends")


def _marker_line(line: bytes) -> str | None:
    try:
        return marker_kind(orjson.loads(line))
    except orjson.JSONDecodeError:
        return None


def _cut_error(name: str, records: int, start: int, what: str) -> StreamError:
    return StreamError(
        f"{name}: stream cut upstream after {records} records: the medmax stream that began at line "
        f"{start} has no end trailer before {what} (the stage writing it stopped early; nothing here "
        "is finished). See docs/records.md, 'End of stream'."
    )


def _check_trailer(line: bytes, segment: int | None, name: str, line_no: int, start: int) -> None:
    """None (the segment is closed) when the trailer at `line_no` matches the records read, else raise."""
    if segment is None:
        raise StreamError(
            f"{name}:{line_no}: a medmax end-of-stream trailer without a stream header before it "
            "(the start of the stream is missing)"
        )
    expected = orjson.loads(line)[_TRAILER_KEY]
    count = expected.get("records") if isinstance(expected, dict) else None
    if count != segment:
        raise StreamError(
            f"{name}:{line_no}: stream cut upstream: its trailer counts {count!r} records, but "
            f"{segment} arrived since its header at line {start} (records were lost on the way)"
        )
    return None


def _skip_line(stream: IO[bytes]) -> None:
    """Read past the rest of an over-long line in bounded pieces."""
    while True:
        piece = stream.readline(1 << 20)
        if not piece or piece.endswith(b"\n"):
            return


def _split_member(member_name: str) -> tuple[str, str]:
    """('dir/key', 'rest') where key is the basename before its first dot (WebDataset rule)."""
    directory, _, base = member_name.rpartition("/")
    key, _, rest = base.partition(".")
    return (f"{directory}/{key}" if directory else key), rest


class _Refused:
    """A tar member that is not used (a link, a device, over the size cap): its sample is rejected."""

    def __init__(self, reason: str):
        self.reason = reason


_SKIPPED = _Refused("")  # a member of a sample already refused: its data is not kept
_OVER_CAP = "/over-cap"  # the group key of a sample's size refusal (no member's suffix holds a "/")


class _TailTracker:
    """The file object tarfile reads from: counts bytes and keeps the last ones, so that the
    end-of-archive blocks can be checked once tarfile stops (it stops silently at a plain EOF)."""

    KEEP = 4 * tarfile.RECORDSIZE

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.total = 0
        self._chunks: deque[bytes] = deque()  # the last reads, at least KEEP bytes when available
        self._kept = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if data:
            self.total += len(data)
            self._chunks.append(data)
            self._kept += len(data)
            while self._kept - len(self._chunks[0]) >= self.KEEP:
                self._kept -= len(self._chunks.popleft())
        return data

    def ends_cleanly(self, offset: int) -> bool:
        """Two zero blocks at `offset` (end of archive), and nothing but zeros after them."""
        while self.total < offset + 2 * tarfile.BLOCKSIZE:
            if not self.read(offset + 2 * tarfile.BLOCKSIZE - self.total):
                return False
        tail = b"".join(self._chunks)
        start = self.total - len(tail)
        if offset < start or tail[offset - start :].strip(b"\0"):
            return False
        while chunk := self.read(1 << 16):  # padding to the record size, or a second archive
            if chunk.strip(b"\0"):
                return False
        return True


def _read_tar(
    stream: IO[bytes],
    *,
    name: str,
    policy: ErrorPolicy,
    media: MediaStore,
    check: bool,
    seen: SeenIds | None = None,
) -> Iterator[dict[str, Any]]:
    tracker = _TailTracker(stream)
    try:
        archive = tarfile.open(fileobj=tracker, mode="r|")  # type: ignore[call-overload]
    except tarfile.TarError as exc:
        raise StreamError(f"{name}: not a readable tar stream ({exc})") from None
    line_cap = byte_limit(MAX_LINE_BYTES_ENV, DEFAULT_MAX_LINE_BYTES)
    member_cap = byte_limit(MAX_MEMBER_BYTES_ENV, DEFAULT_MAX_MEMBER_BYTES)
    sample_cap = byte_limit(MAX_SAMPLE_BYTES_ENV, DEFAULT_MAX_SAMPLE_BYTES)
    group_key: str | None = None
    group: dict[str, bytes | _Refused] = {}
    group_bytes = 0  # what the sample held in memory costs: its members' data plus a header each
    opts = {"name": name, "policy": policy, "media": media, "check": check, "seen": seen}
    try:
        for member in archive:
            if member.isdir():
                continue  # structure only, no data
            key, rest = _split_member(member.name)
            value: bytes | _Refused
            if not member.isfile():
                kind = (
                    "symbolic link" if member.issym() else "hard link" if member.islnk() else "special file"
                )
                target = f" to {member.linkname!r}" if member.linkname else ""
                value = _Refused(  # the class before the colon, the member after it (one bucket)
                    f"tar member is a link or special file: {member.name} is a {kind}{target} "
                    "(a sample's members must be regular files)"
                )
            elif member.size > (line_cap if rest == "json" else member_cap):
                cap, env = (
                    (line_cap, MAX_LINE_BYTES_ENV) if rest == "json" else (member_cap, MAX_MEMBER_BYTES_ENV)
                )
                value = _Refused(
                    f"tar member over the size limit: {member.name} is {member.size} bytes, over the "
                    f"{cap}-byte limit (env {env})"
                )
            else:
                handle = archive.extractfile(member)
                value = handle.read() if handle else b""
                if len(value) != member.size:
                    raise StreamError(f"{name}: member {member.name} is truncated")
            if group and (key != group_key or rest in group):  # a repeated member starts a new sample
                yield from _tar_sample(group_key or "", group, **opts)  # type: ignore[arg-type]
                group, group_bytes = {}, 0
            group_key = key
            group_bytes += tarfile.BLOCKSIZE + (len(value) if isinstance(value, bytes) else 0)
            if group_bytes > sample_cap and _OVER_CAP not in group:
                # the sample is refused; its members' data is dropped as it comes (memory stays bounded)
                group = dict.fromkeys(group, _SKIPPED)
                group[_OVER_CAP] = _Refused(
                    f"tar sample over the size limit: {key} holds more than {sample_cap} bytes in its "
                    f"members (env {MAX_SAMPLE_BYTES_ENV})"
                )
            group[rest] = _SKIPPED if _OVER_CAP in group else value
        end = archive.offset
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise StreamError(f"{name}: truncated or corrupt tar stream after {group_key!r} ({exc})") from None
    try:
        clean = tracker.ends_cleanly(end)
    except (EOFError, OSError, zlib.error) as exc:
        raise StreamError(f"{name}: truncated or corrupt stream at the end of the tar ({exc})") from None
    if not clean:
        last = f"after member group {group_key!r} " if group_key else ""
        raise StreamError(
            f"{name}: tar stream cut off {last}at byte {end}: no end-of-archive blocks, or data after "
            "them (a killed writer, a truncated copy or concatenated archives); the last sample is "
            "not used"
        )
    if group:
        yield from _tar_sample(group_key or "", group, **opts)  # type: ignore[arg-type]


def _tar_sample(
    key: str,
    group: dict[str, bytes | _Refused],
    *,
    name: str,
    policy: ErrorPolicy,
    media: MediaStore,
    check: bool,
    seen: SeenIds | None = None,
) -> Iterator[dict[str, Any]]:
    where = f"{name}:{key}"
    refused = [v.reason for v in group.values() if isinstance(v, _Refused) and v.reason]
    if refused:
        policy.reject(RecordError(refused[0]), None, where=where, record_id=key.rpartition("/")[2])
        return
    raw = group.get("json")
    if raw is None:
        policy.reject(
            RecordError(f"tar sample has no .json member: {key} has {sorted(group)}"),
            None,
            where=where,
            record_id=key.rpartition("/")[2],
        )
        return
    try:
        record = loads_record(raw)  # type: ignore[arg-type]
    except orjson.JSONDecodeError as exc:
        policy.reject(RecordError(f"malformed JSON ({exc})"), raw, where=where)
        return
    except RecordError as exc:  # an integer beyond 64 bits
        policy.reject(exc, raw, where=where, record_id=key.rpartition("/")[2])
        return
    if type(record) is not dict or (not check and type(record.get("id")) is not str):
        # structural, as for JSONL: even stages that validate later (pack) get objects with an id
        what = f"got {type(record).__name__}" if type(record) is not dict else "record has no 'id' (a string)"
        policy.reject(RecordError(f"a record must be a JSON object with an id: {what}"), record, where=where)
        return
    try:
        _attach_inline_images(record, group, media, where)  # type: ignore[arg-type]
        if check:
            validate(record)
    except RECORD_FAULTS as exc:
        policy.reject(exc, record, where=where)
        return
    if not _unique(record, seen, policy, where):
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

    Everything a record needs (its JSON, its image bytes) is gathered before the first byte goes
    out, so a record that cannot be written (RecordError, MediaError) leaves nothing behind: with
    a `policy` it is handed to it (`skip` puts it in the rejects), without one the error is raised.
    A second record with an id already written is such an error.
    """

    def __init__(
        self,
        stream: IO[bytes],
        *,
        fmt: str = "jsonl",
        media: MediaStore | None = None,
        flush_each: bool = True,
        report: RunReport | None = None,
        policy: ErrorPolicy | None = None,
        unique_ids: bool = True,
        markers: bool = False,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.media = media or MediaStore()
        self.flush_each = flush_each
        self.report = report
        self.policy = policy
        self.seen = SeenIds() if unique_ids else None
        self.markers = markers and fmt == "jsonl"  # a tar stream has its own end-of-archive blocks
        self._started = False  # the stream header is out (written with the first record)
        self.written = 0
        self._tar = (
            # PAX: an id too long for a USTAR name (100 bytes) gets a PAX header; shorter names are
            # written exactly as USTAR writes them
            tarfile.TarFile(fileobj=_PositionTracker(stream), mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[arg-type]
            if fmt == "tar"
            else None
        )

    def write(self, record: dict[str, Any]) -> None:
        try:
            members = self._encode(record)
        except RECORD_FAULTS as exc:
            if self.policy is None:
                if isinstance(exc, (RecordError, MediaError)):
                    raise
                raise record_fault(exc, record) from exc
            self.policy.reject(exc, record, where="output")
            return
        if self._tar is None:
            if self.markers and not self._started:
                self.stream.write(STREAM_HEADER)
                self._started = True
            self.stream.write(members[0][1])
        else:
            for name, data in members:
                self._add(name, data)
        self.written += 1
        if self.flush_each:
            self.stream.flush()
        if self.report is not None:
            self.report.count("out")

    def _encode(self, record: dict[str, Any]) -> list[tuple[str, bytes]]:
        """[(member name, bytes)]: the JSONL line, or the tar members of one sample."""
        rid = record.get("id") if isinstance(record, dict) else None
        try:
            text = orjson.dumps(record)
        except TypeError as exc:  # orjson.JSONEncodeError: nested too deeply, keys not strings, ...
            raise RecordError(
                f"cannot be written as JSON ({exc})", record_id=rid if isinstance(rid, str) else None
            ) from None
        if self._tar is not None and not (isinstance(rid, str) and rid):
            raise RecordError("a record needs a string 'id' to be written as a tar sample")
        members = [(f"{rid}.json", text)] if self._tar is not None else [("", text + b"\n")]
        images = (record.get("images") or []) if self._tar is not None else []
        for index, ref in enumerate(images):
            if not isinstance(ref, dict) or not ref.get("path"):
                continue  # a url- or token-only image has no bytes to ship
            data = self.media.read_bytes(ref, what=f"record {rid!r} images[{index}]")
            members.append((f"{rid}.{index}.{extension_for(ref)}", data))
        if self.seen is not None and isinstance(rid, str) and not self.seen.add(rid):
            raise duplicate_error(rid)
        return members

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = 0o644
        assert self._tar is not None
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        """End the stream (tar end-of-archive blocks; the trailer of a marked JSONL stream). Not called
        when a run fails, so that the next stage sees a stream cut short, not a finished one."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self.markers and self._started:
            self.stream.write(stream_trailer(self.written))
            self._started = False
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
        rid = record.get("id") if isinstance(record, dict) else None
        # a record with no id (or not an object) is passed on: the stage's own check names it (no KeyError here)
        if not isinstance(rid, str) or in_shard(rid, shard):
            yield record
