"""Record streams: JSONL or WebDataset tar in, JSONL or tar out, with an error policy.

Readers and writers take already-open binary file objects (the CLI layer opens
stdin/stdout or paths), so library code never touches the process's streams.
In a tar stream a record is `<id>.json` and its images `<id>.<i>.<ext>`; images
travel inline and land in the media store on the way in.

Integrity and limits (docs/security.md): a tar stream must end with its end-of-archive blocks (a
stream cut at a member boundary, as a killed writer leaves it, is a StreamError); link, device and
fifo members are refused with a reason; one JSONL line (or `.json` member) may hold at most
`MEDMAX_MAX_LINE_BYTES` and one tar member at most `MEDMAX_MAX_MEMBER_BYTES` (64 MiB each by
default); an id seen twice in one stream is a record error, on reading and on writing (one
8-byte digest per id is kept). A record that cannot be written (an image gone from the store,
JSON too deep) goes through the error policy before any of its bytes are written, so no half
sample reaches the output.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
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
from medmax_cli.records import RecordError, validate

FORMATS = ("jsonl", "tar")
TAR_MTIME = 0  # fixed so that tar output is byte-reproducible
MAX_LINE_BYTES_ENV = "MEDMAX_MAX_LINE_BYTES"
MAX_MEMBER_BYTES_ENV = "MEDMAX_MAX_MEMBER_BYTES"
DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024  # one JSONL line / one .json member
DEFAULT_MAX_MEMBER_BYTES = 64 * 1024 * 1024  # one tar member (the media store's image cap)


class StreamError(RuntimeError):
    """The stream itself is broken (truncated tar, unreadable file): reading cannot go on."""


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


def duplicate_error(record_id: str) -> RecordError:
    return RecordError(f"duplicate id {record_id!r}: an id may occur once per stream", record_id=record_id)


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
        from medmax_cli.egress import redact_text

        reason = redact_text(reason)  # a reason can quote a URL with its key (docs/security.md)
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
    """Apply a one-record-to-many function, sending RecordError/MediaError through the policy."""
    for record in records:
        try:
            outputs = list(fn(record))
        except (RecordError, MediaError) as exc:
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
    policy = policy or ErrorPolicy()
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
    readline, loads, JSONDecodeError = stream.readline, orjson.loads, orjson.JSONDecodeError
    line_no = 0
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
        if type(record) is not dict:  # structural, so even stages that validate later see objects
            kind = type(record).__name__
            policy.reject(
                RecordError(f"a record must be a JSON object, got {kind}"), record, where=f"{name}:{line_no}"
            )
            continue
        if check:
            try:
                validate(record)
            except RecordError as exc:
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
    group_key: str | None = None
    group: dict[str, bytes | _Refused] = {}
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
                value = _Refused(
                    f"tar member {member.name} is a {kind}{target}: links and special files are refused "
                    "(a sample's members must be regular files)"
                )
            elif member.size > (line_cap if rest == "json" else member_cap):
                cap, env = (
                    (line_cap, MAX_LINE_BYTES_ENV) if rest == "json" else (member_cap, MAX_MEMBER_BYTES_ENV)
                )
                value = _Refused(
                    f"tar member {member.name} is {member.size} bytes, over the {cap}-byte limit (env {env})"
                )
            else:
                handle = archive.extractfile(member)
                value = handle.read() if handle else b""
                if len(value) != member.size:
                    raise StreamError(f"{name}: member {member.name} is truncated")
            if group and (key != group_key or rest in group):  # a repeated member starts a new sample
                yield from _tar_sample(group_key or "", group, **opts)  # type: ignore[arg-type]
                group = {}
            group_key = key
            group[rest] = value
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
    refused = [v.reason for v in group.values() if isinstance(v, _Refused)]
    if refused:
        policy.reject(RecordError(refused[0]), None, where=where, record_id=key.rpartition("/")[2])
        return
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
        record = orjson.loads(raw)  # type: ignore[arg-type]
    except orjson.JSONDecodeError as exc:
        policy.reject(RecordError(f"malformed JSON ({exc})"), raw, where=where)
        return
    try:
        _attach_inline_images(record, group, media, where)  # type: ignore[arg-type]
        if check:
            validate(record)
    except (RecordError, MediaError) as exc:
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
        self._tar = (
            tarfile.TarFile(fileobj=_PositionTracker(stream), mode="w", format=tarfile.USTAR_FORMAT)  # type: ignore[arg-type]
            if fmt == "tar"
            else None
        )

    def write(self, record: dict[str, Any]) -> None:
        try:
            members = self._encode(record)
        except (RecordError, MediaError) as exc:
            if self.policy is None:
                raise
            self.policy.reject(exc, record, where="output")
            return
        if self._tar is None:
            self.stream.write(members[0][1])
        else:
            for name, data in members:
                self._add(name, data)
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
        rid = record.get("id") if isinstance(record, dict) else None
        # a record with no id (or not an object) is passed on: the stage's own check names it (no KeyError here)
        if not isinstance(rid, str) or in_shard(rid, shard):
            yield record
