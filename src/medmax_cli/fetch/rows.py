"""Row plumbing shared by the dataset readers: lazy record building with full accounting, and
readers for the file formats datasets are published in (JSON arrays, CSV with a header, sharded
parquet), each turning an unreadable file into one clear error that names it.
"""

from __future__ import annotations

import csv
import gzip
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from medmax_cli.media import MediaError, MediaStore, safe_relative_path
from medmax_cli.records import RecordError, validate
from medmax_cli.streams import ErrorPolicy

Row = tuple[str, Callable[[], dict[str, Any] | None]]


def image_file(media: MediaStore, root: Path, relative: str, what: str) -> dict[str, Any]:
    return media.import_file(safe_relative_path(root, relative, what=what), what=what)


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


def file_error(policy: ErrorPolicy, file: Path, reason: str) -> None:
    """A whole file that cannot be read: an error naming it (or, with --on-error skip, one reject)."""
    policy.reject(RecordError(reason), None, where=str(file))


def json_rows(file: Path, policy: ErrorPolicy) -> list[Any] | None:
    """The rows of a JSON array file, or None after reporting why it cannot be read."""
    try:
        data = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError as exc:
        file_error(policy, file, f"not valid JSON ({exc})")
        return None
    except OSError as exc:
        file_error(policy, file, f"cannot read ({exc.strerror or exc})")
        return None
    if not isinstance(data, list):
        file_error(policy, file, f"expected a JSON array of rows, found {type(data).__name__}")
        return None
    return data


def csv_rows(file: Path, policy: ErrorPolicy, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a CSV (or .csv.gz) whose header holds `required` (else one file error)."""
    try:
        handle = (
            gzip.open(file, "rt", newline="", encoding="utf-8")
            if file.suffix == ".gz"
            else open(file, newline="", encoding="utf-8-sig")
        )
    except OSError as exc:
        file_error(policy, file, f"cannot read ({exc.strerror or exc})")
        return
    with handle:
        try:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                file_error(policy, file, f"CSV header lacks {', '.join(missing)} (found {', '.join(header)})")
                return
            for row in reader:
                yield reader.line_num, row  # the row's last physical line (quoted fields may span lines)
        except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
            file_error(policy, file, f"unreadable CSV ({exc})")


def find(root: Path, *names: str) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise RecordError(f"{root}: none of {', '.join(names)} found (is this the published layout?)")


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
            parquet = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as exc:
            file_error(policy, file, f"not a readable parquet file ({exc})")
            continue
        index = 0
        try:
            for batch in parquet.iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield file, index, row
                    index += 1
        except (pa.ArrowException, OSError) as exc:
            file_error(policy, file, f"parquet file broken after row {index} ({exc})")


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
