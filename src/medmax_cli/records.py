"""Record schema v1: the one shape every stage reads and writes.

A record is a plain dict (one JSON object per line). This module says what a valid
record is and builds the error messages; it never changes a record, so unknown fields
pass through every stage untouched. See docs/records.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from collections.abc import Mapping
from typing import Any

import orjson

SCHEMA_VERSION = 1

SOURCE_KINDS = ("figure", "qa", "report", "chat", "instance")
TASKS = (
    "visual_chat",
    "vqa",
    "captioning",
    "interleaved",
    "image_generation",
    "report_understanding",
)
ROLES = ("user", "assistant")
QUESTION_TYPES = ("closed", "open", "multiple_choice")
MAX_TOKEN_ID = 2**32 - 1  # token ids and VQ codes fit a uint32 (vocabularies and codebooks are far smaller)
MAX_DEPTH = 255  # nesting of objects/lists in one record: what orjson (every writer) can serialise
_STRING_FIELDS = ("source", "license", "domain", "caption", "answer")
_IMAGE_STRING_FIELDS = ("path", "url", "vq")

# A WebDataset key is everything before the first dot of a member name, so ids may
# not contain dots; slashes and whitespace would break file names and tar members.
_id_ok = re.compile(r"[A-Za-z0-9_\-:+@=,]+").fullmatch
_ID_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-:+@=,]")


_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|\b\d[\d.,]*\b")


def reason_class(reason: str) -> str:
    """The short class a reason is counted under when its raiser named none: the text before the
    first colon or parenthesis, with quoted values, [indices] and numbers taken out, so that the
    run summary and `--stats` hold one key per rule, not one per row."""
    # ", got <value>" ends the class too: the value is the record's content (maybe credentialed)
    head = str(reason).split(":", 1)[0].split("(", 1)[0].split(", got ", 1)[0]
    head = " ".join(_VARIABLE.sub("", head).split())
    return head[:60] or "error"


class RecordError(ValueError):
    """A record that breaks the schema or cannot be processed by a stage.

    `record_id` and `where` (file:line or file:member) are filled in as the error
    travels up, so the final message names the file, the record and the reason.
    `cls` is the reason's short fixed class (`image not found`, `not valid JSON`, ...), what
    summaries count by; `reason` keeps the specifics (the file, the folder searched, the row)
    for the error message and the rejects file. Default: derived from the reason's head.
    """

    def __init__(
        self,
        reason: str,
        *,
        record_id: str | None = None,
        where: str | None = None,
        cls: str | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.record_id = record_id
        self.where = where
        self.cls = cls or reason_class(reason)

    def __str__(self) -> str:
        parts = []
        if self.where:
            parts.append(self.where)
        if self.record_id:
            parts.append(f"record {self.record_id!r}")
        parts.append(self.reason)
        return ": ".join(parts)


# orjson reads an integer beyond 64 bits as a float (rounded: 2**64 comes back as 1.8446744073709552e19)
# and cannot write one at all, so such integers are refused with a reason instead of being changed.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what orjson reads and writes exactly
# A run of 19+ digits may be an integer orjson would round. Found with one C-level translate and a
# substring search (about a fifth of orjson's parse time on a token-heavy line; a regex took four times
# orjson's time, as it tries a match at every digit).
_DIGIT_MAP = bytes(0x64 if 0x30 <= i <= 0x39 else 0x78 for i in range(256))  # digits -> "d", else "x"
_LONG_RUN = b"d" * 19


def loads_record(raw: bytes | str) -> Any:
    """`orjson.loads`, but an integer beyond 64 bits is a RecordError, never a float in disguise.

    Only text with a run of 19+ digits (rare: ids, hashes) is parsed a second time, exactly, to
    find out; everything else costs one byte-translate scan."""
    value = orjson.loads(raw)
    data = raw.encode() if isinstance(raw, str) else raw
    if _long_number(data):
        try:
            _check_int_range(data)
        except RecordError as exc:
            rid = value.get("id") if type(value) is dict else None
            exc.record_id = rid if isinstance(rid, str) else None
            raise
    return value


_NUMBER_BEFORE = frozenset(b" \t\r\n:,[")  # what may precede a JSON number (after its sign)


def _long_number(data: bytes) -> bool:
    """Whether a run of 19+ digits may be a JSON number: a run inside a string (a hex digest's
    zeros, a long id) follows a quote, a letter or another character no number can follow, so
    the exact second parse is spent only where a number could be that long."""
    mapped = data.translate(_DIGIT_MAP)
    at = mapped.find(_LONG_RUN)
    while at != -1:  # `at` is where a run starts: find gives the leftmost match
        before = at - 1
        if before >= 0 and data[before] == 0x2D:  # a minus sign
            before -= 1
        if before < 0 or data[before] in _NUMBER_BEFORE:
            return True
        end = mapped.find(b"x", at)
        if end == -1:
            return False
        at = mapped.find(_LONG_RUN, end)
    return False


def _check_int_range(data: bytes) -> None:
    def parse_int(text: str) -> int:
        number = int(text)
        if not INT_MIN <= number <= INT_MAX:
            shown = text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} digits)"
            raise RecordError(
                f"integer beyond 64 bits: {shown} (a JSON reader would round it to a float; "
                "write it as a string)"
            )
        return number

    try:
        json.loads(data, parse_int=parse_int)
    except RecordError:
        raise
    except (ValueError, RecursionError) as exc:  # over Python's int digit limit, or nested too deep
        raise RecordError(f"a number cannot be read exactly ({exc})") from None


def make_id(*parts: Any) -> str:
    """A stable record id from parts (e.g. "PMC123.1", "F2" -> "PMC123_1-F2").

    Characters a WebDataset key cannot hold become "_"; parts are joined with "-".
    """
    cleaned = [_ID_BAD_CHARS.sub("_", str(p)) for p in parts if p is not None and str(p) != ""]
    if not cleaned:
        raise ValueError("make_id needs at least one non-empty part")
    return "-".join(cleaned)


def content_id(prefix: str, payload: str | bytes, length: int = 16) -> str:
    """A deterministic id derived from content, for records that carry no natural id."""
    data = payload.encode() if isinstance(payload, str) else payload
    return f"{prefix}-{hashlib.sha256(data).hexdigest()[:length]}"


def record_kind(record: Mapping[str, Any]) -> str:
    """ "prediction", "instance" (a task instance) or the source kind."""
    if "prediction" in record:
        return "prediction"
    if "task" in record and "turns" in record:
        return "instance"
    return str(record.get("kind", "?"))


def _fail(reason: str, record: Mapping[str, Any]) -> RecordError:
    rid = record.get("id") if isinstance(record.get("id"), str) else None
    return RecordError(reason, record_id=rid)


_is_sha256 = re.compile(r"[0-9a-f]{64}").fullmatch


_MISSING = object()


def _check_images(record: Mapping[str, Any]) -> None:
    # Hot path (every record at every stage boundary): plain type checks, no ABCs.
    images = record.get("images", _MISSING)
    if type(images) is not list:
        if images is _MISSING:
            return
        raise _fail(
            f"field 'images' must be a list (leave it out when there are none), got {_kind(images)}", record
        )
    for i, image in enumerate(images):
        if type(image) is not dict:
            raise _fail(f"images[{i}] must be an object", record)
        if "sha256" not in image and "path" not in image and "url" not in image and "tokens" not in image:
            raise _fail(f"images[{i}] needs one of 'sha256', 'path', 'url' or 'tokens'", record)
        sha = image.get("sha256")
        if sha is not None and not (type(sha) is str and _is_sha256(sha)):
            raise _fail(f"images[{i}].sha256 must be 64 lowercase hex digits", record)
        for dim in ("width", "height"):
            value = image.get(dim)
            if value is not None and not (type(value) is int and value > 0):
                raise _fail(f"images[{i}].{dim} must be a positive integer", record)
        for name in _IMAGE_STRING_FIELDS:
            value = image.get(name)
            if value is not None and not (type(value) is str and value):
                raise _fail(f"images[{i}].{name} must be a non-empty string, got {_kind(value)}", record)
        tokens = image.get("tokens")
        if tokens is not None:
            if not _token_list(tokens):
                raise _fail(f"images[{i}].tokens must be a list of integers in 0..{MAX_TOKEN_ID}", record)
            if "vq" not in image:
                raise _fail(f"images[{i}] has 'tokens' but no 'vq' (which codebook made them)", record)


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _token_list(tokens: Any) -> bool:
    """A list of ints (not bools, not floats) in 0..MAX_TOKEN_ID: two C-level passes (this runs
    on every image of every record at every stage boundary)."""
    if type(tokens) is not list:
        return False
    try:
        array("I", tokens)  # refuses floats, strings, negatives and values over 2**32 - 1
    except (TypeError, OverflowError):
        return False
    return _INT_ONLY.issuperset(map(type, tokens))  # and bools, which array() takes for 0/1


_INT_ONLY = {int}
is_token_list = _token_list  # public name for other modules (pack's pre-tokenised rows)


def _unwritable(record: dict[str, Any]) -> str | None:
    """Why the writers could not serialise `record` (too deep a nesting), or None. One orjson pass in
    C: a Python walk over every record's images and turns cost more than the rest of validation."""
    try:
        orjson.dumps(record)
    except orjson.JSONEncodeError as exc:
        if "ecursion" in str(exc):
            return f"record nests objects/lists deeper than {MAX_DEPTH} levels"
        return f"record cannot be written as JSON ({exc})"
    return None


def _check_content(content: Any, n_images: int, path: str, record: Mapping[str, Any]) -> None:
    if not isinstance(content, list):
        raise _fail(f"{path} must be a list of parts", record)
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or len(part.keys() & {"text", "image"}) != 1:
            raise _fail(f"{path}[{j}] must be {{'text': str}} or {{'image': int}}", record)
        if "text" in part and not isinstance(part["text"], str):
            raise _fail(f"{path}[{j}].text must be a string", record)
        if "image" in part:
            index = part["image"]
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n_images:
                raise _fail(f"{path}[{j}].image = {index!r} does not index 'images' (has {n_images})", record)


def _check_turns(record: Mapping[str, Any]) -> None:
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        raise _fail("field 'turns' must be a non-empty list", record)
    n_images = len(record.get("images") or [])
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise _fail(f"turns[{i}] must be an object", record)
        if turn.get("role") not in ROLES:
            raise _fail(f"turns[{i}].role must be one of {ROLES}, got {turn.get('role')!r}", record)
        _check_content(turn.get("content"), n_images, f"turns[{i}].content", record)


def validate(record: Any) -> dict[str, Any]:
    """Check a record against schema v1 and return it unchanged; raise RecordError otherwise (also
    for a nested field of a type no check expected: never a bare TypeError that would end a run)."""
    try:
        return _validate(record)
    except RecordError:
        raise
    except (TypeError, ValueError, LookupError, AttributeError, RecursionError) as exc:
        rid = record.get("id") if isinstance(record, dict) and isinstance(record.get("id"), str) else None
        raise RecordError(f"malformed record ({type(exc).__name__}: {exc})", record_id=rid) from None


def _validate(record: Any) -> dict[str, Any]:
    if type(record) is not dict:
        raise RecordError(f"a record must be a JSON object, got {type(record).__name__}")
    rid = record.get("id")
    if type(rid) is not str or not rid:
        raise RecordError("field 'id' is missing or not a non-empty string")
    if not _id_ok(rid):
        raise _fail(
            "field 'id' may only hold letters, digits and _-:+@=, (no dots: it is a WebDataset key)", record
        )
    if "schema" in record and record["schema"] != SCHEMA_VERSION:
        raise _fail(
            f"schema version {record['schema']!r} is not supported (this is v{SCHEMA_VERSION})", record
        )
    credential = record.get("credential")
    if credential is not None and type(credential) is not bool:
        raise _fail("field 'credential' must be true or false", record)
    for name in ("meta", "article"):  # objects stages read fields from
        value = record.get(name)
        if value is not None and type(value) is not dict:
            raise _fail(f"field {name!r} must be an object (got {_kind(value)})", record)
    for name in _STRING_FIELDS:
        value = record.get(name)
        if value is not None and type(value) is not str:
            raise _fail(f"field {name!r} must be a string, got {_kind(value)}", record)
    qtype = record.get("question_type")
    if qtype is not None and qtype not in QUESTION_TYPES:
        raise _fail(f"field 'question_type' must be one of {QUESTION_TYPES}, got {_kind(qtype)}", record)
    _check_images(record)
    problem = _unwritable(record)
    if problem is not None:
        raise _fail(problem, record)

    if "task" in record or "turns" in record:
        if record.get("task") not in TASKS:
            raise _fail(f"field 'task' must be one of {TASKS}, got {record.get('task')!r}", record)
        _check_turns(record)
        if "prediction" in record:
            _check_content(record["prediction"], len(record.get("images") or []), "prediction", record)
        return record

    kind = record.get("kind")
    if kind not in SOURCE_KINDS:
        raise _fail(
            f"field 'kind' must be one of {SOURCE_KINDS} (or the record needs 'task' and 'turns'), got {kind!r}",
            record,
        )
    if kind == "figure" and not isinstance(record.get("caption", ""), str):
        raise _fail("field 'caption' must be a string", record)
    if kind == "qa":
        for field in ("question", "answer"):
            if not isinstance(record.get(field), str):
                raise _fail(f"a qa record needs a string '{field}'", record)
        options = record.get("options")
        if options is not None and not (
            isinstance(options, list) and all(isinstance(o, str) for o in options)
        ):
            raise _fail("field 'options' must be a list of strings", record)
    if kind == "report" and not isinstance(record.get("report"), str):
        raise _fail("a report record needs a string 'report'", record)
    if kind == "instance":
        tokens = record.get("tokens")
        if tokens is not None and not _token_list(tokens):
            raise _fail(f"field 'tokens' must be a list of integers in 0..{MAX_TOKEN_ID}", record)
    return record


def text_of(content: list[Mapping[str, Any]]) -> str:
    """The text parts of a content list joined, images left out."""
    return "".join(part["text"] for part in content if "text" in part)
