"""Row plumbing shared by the dataset readers: lazy record building with full accounting, and
readers for the file formats datasets are published in (JSON arrays, CSV with a header, sharded
parquet), each turning an unreadable file into one clear error that names it.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from medmax_cli.media import (
    MediaError,
    MediaStore,
    max_input_bytes,
    open_local_file,
    read_local_file,
    safe_relative_path,
)
from medmax_cli.records import RecordError, validate
from medmax_cli.streams import ErrorPolicy

Row = tuple[str, Callable[[], dict[str, Any] | None]]


def image_file(media: MediaStore, root: Path, relative: str, what: str) -> dict[str, Any]:
    """Import the image the row names (`relative`, checked to stay inside `root`); an absent one is
    `image not found` naming the row's path and the folder searched."""
    full = safe_relative_path(root, relative, what=what)
    try:
        return media.import_file(full, what=what)
    except MediaError as exc:
        if exc.cls == "image not found":
            raise MediaError(
                f"{what}: image not found: {relative!r} (looked in folder {root}; --images names another)",
                cls="image not found",
            ) from None
        raise


def emit(rows: Iterator[Row], policy: ErrorPolicy) -> Iterator[dict]:
    """Build each record lazily so one bad row is rejected (with its location) and the rest go on.

    A build returning None has skipped its row (and counted the reason itself)."""
    for where, build in rows:
        policy.report.count("in")
        try:
            record = build()
            if record is None:
                continue
            validate(record)
        except (RecordError, MediaError) as exc:
            policy.reject(exc, None, where=where)
            continue
        except KeyError as exc:
            policy.reject(RecordError(f"row has no field {exc} (is this the published format?)"), where=where)
            continue
        except (ValueError, TypeError, AttributeError) as exc:
            policy.reject(RecordError(f"bad row ({type(exc).__name__}: {exc})"), None, where=where)
            continue
        yield record


def file_error(policy: ErrorPolicy, file: Path, reason: str, *, cls: str | None = None) -> None:
    """A whole file that cannot be read: an error naming it (or, with --on-error skip, one reject).
    The file counts as one unit in, so in = out + rejected + skipped holds even when its rows
    cannot be counted."""
    policy.report.count("in")
    policy.reject(RecordError(reason, cls=cls), None, where=str(file))


def file_media_error(policy: ErrorPolicy, file: Path, exc: MediaError) -> None:
    """`file_error` for a local file the bounded reader refused (absent, not regular, too large)."""
    file_error(policy, file, str(exc).removeprefix(f"{file}: "), cls=exc.cls)


LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def stem_of(file: Path) -> str:
    """A data file's name without `.gz` and its format suffix: `testset.json.gz` -> `testset`."""
    name = file.name.removesuffix(".gz")
    return name.rsplit(".", 1)[0] if "." in name else name


def existing(folder: Path, *names: str) -> list[Path]:
    """`folder/name` for each published name present, also gzip-compressed (`name.gz`)."""
    found = []
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.exists() and not candidate.is_dir():  # a pipe is found, then refused when read
                found.append(candidate)
                break
    return found


def lfs_pointer_message(data: bytes, file: Path) -> str | None:
    """What to run when `data` is a Git LFS pointer (what a clone without LFS holds), else None."""
    if not data.startswith(LFS_POINTER) or len(data) > 1024:
        return None
    size = next(
        (ln.split()[1] for ln in data.decode("ascii", "replace").splitlines() if ln.startswith("size ")), "?"
    )
    return (
        f"a Git LFS pointer file ({len(data)} bytes standing for {size} bytes), not the data: the "
        f"repository was cloned without its LFS objects. Run `git lfs install && git lfs pull` in "
        f"the clone (or the dataset's own download script, e.g. LLaVA-Med's download_data.sh) and "
        f"read the real file"
    )


def read_data_file(file: Path, policy: ErrorPolicy) -> bytes | None:
    """A local data file's bytes (a regular file within MEDMAX_MAX_INPUT_BYTES; .gz decompressed
    within the same limit), or None after reporting why it cannot be read (Git LFS pointers
    named as such, with what to run)."""
    limit = max_input_bytes()
    try:
        data = read_local_file(file, limit=limit, what=str(file))
        if file.suffix == ".gz":
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
                data = handle.read(limit + 1)
            if len(data) > limit:
                raise MediaError(f"{file}: decompresses past the {limit}-byte limit", cls="file too large")
    except MediaError as exc:
        file_media_error(policy, file, exc)
        return None
    except (OSError, EOFError) as exc:
        file_error(policy, file, f"cannot decompress ({exc})", cls="file unreadable")
        return None
    pointer = lfs_pointer_message(data, file)
    if pointer is not None:
        file_error(policy, file, pointer, cls="git lfs pointer")
        return None
    return data


def json_rows(file: Path, policy: ErrorPolicy) -> list[Any] | None:
    """The rows of a JSON array file, or None after reporting why it cannot be read."""
    raw = read_data_file(file, policy)
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        file_error(policy, file, f"not valid JSON ({exc})", cls="not valid JSON")
        return None
    if not isinstance(data, list):
        file_error(
            policy,
            file,
            f"expected a JSON array of rows, found {type(data).__name__}",
            cls="not a JSON array",
        )
        return None
    return data


def jsonl_lines(file: Path, policy: ErrorPolicy) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a local JSONL file, blank lines left out: a regular file, read as a
    stream; a Git LFS pointer is one file error saying what to run."""
    try:
        handle = open_local_file(file, limit=None, what=str(file))
    except MediaError as exc:
        file_media_error(policy, file, exc)
        return
    with handle:
        if handle.peek(len(LFS_POINTER))[: len(LFS_POINTER)] == LFS_POINTER:
            pointer = lfs_pointer_message(handle.read(1025), file)
            file_error(policy, file, pointer or "a Git LFS pointer file", cls="git lfs pointer")
            return
        lines = gzip.GzipFile(fileobj=handle) if file.name.endswith(".gz") else handle
        try:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield number, line
        except (OSError, EOFError) as exc:
            file_error(policy, file, f"cannot decompress ({exc})", cls="file unreadable")


def csv_rows(file: Path, policy: ErrorPolicy, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a CSV (or .csv.gz) whose header holds `required` (else one file error)."""
    try:
        binary = open_local_file(file, limit=None, what=str(file))
    except MediaError as exc:
        file_media_error(policy, file, exc)
        return
    head = binary.peek(len(LFS_POINTER))[: len(LFS_POINTER)] if hasattr(binary, "peek") else b""
    if head == LFS_POINTER:
        pointer = lfs_pointer_message(binary.read(1025), file)
        binary.close()
        file_error(policy, file, pointer or "a Git LFS pointer file", cls="git lfs pointer")
        return
    handle = (
        gzip.open(binary, "rt", newline="", encoding="utf-8")
        if file.suffix == ".gz"
        else io.TextIOWrapper(binary, newline="", encoding="utf-8-sig")
    )
    with handle:
        try:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                file_error(
                    policy,
                    file,
                    f"CSV header lacks {', '.join(missing)} (found {', '.join(header)})",
                    cls="CSV header lacks columns",
                )
                return
            for row in reader:
                yield reader.line_num, row  # the row's last physical line (quoted fields may span lines)
        except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
            file_error(policy, file, f"unreadable CSV ({exc})", cls="unreadable CSV")


def find(root: Path, *names: str) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise RecordError(
        f"{root}: none of {', '.join(names)} found (is this the published layout?)",
        cls="dataset layout not found",
    )


def closed_or_open(answer: str) -> str:
    return "closed" if answer.strip().lower() in ("yes", "no") else "open"


def parquet_files(path: Path) -> list[Path]:
    """One file, or every .parquet under a folder (sorted: shards in order)."""
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise RecordError(f"{path}: no .parquet files")
    return files


def parquet_rows(files: list[Path], policy: ErrorPolicy) -> Iterator[tuple[Path, int, dict]]:
    """(file, row index within that file, row) over every file; an unreadable file is one error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in files:
        try:
            handle = open_local_file(file, limit=None, what=str(file))
        except MediaError as exc:
            file_media_error(policy, file, exc)
            continue
        if handle.peek(len(LFS_POINTER))[: len(LFS_POINTER)] == LFS_POINTER:
            pointer = lfs_pointer_message(handle.read(1025), file)
            handle.close()
            file_error(policy, file, pointer or "a Git LFS pointer file", cls="git lfs pointer")
            continue
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as exc:
            handle.close()
            file_error(
                policy, file, f"not a readable parquet file ({exc})", cls="not a readable parquet file"
            )
            continue
        index = 0
        try:
            for batch in parquet.iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield file, index, row
                    index += 1
        except (pa.ArrowException, OSError) as exc:
            file_error(
                policy, file, f"parquet file broken after row {index} ({exc})", cls="parquet file broken"
            )
        finally:
            handle.close()


_SHARD = re.compile(r"^(?P<split>[A-Za-z_]+)-(?P<shard>\d+)-of-\d+")


def shard_split(file: Path) -> tuple[str, str]:
    """("test", "00001") for Hugging Face shard names `test-00001-of-00003-<hash>.parquet`."""
    match = _SHARD.match(file.name)
    if match:
        return match.group("split"), match.group("shard")
    return file.stem.split("-")[0], ""


def hf_image(media: MediaStore, image: Any, what: str) -> dict[str, Any]:
    """A Hugging Face `Image` feature as stored in parquet: {"bytes", "path"}."""
    data = image.get("bytes") if isinstance(image, dict) else image
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise RecordError(f"{what}: no image bytes in the row")
    return media.put(bytes(data), what=what)
