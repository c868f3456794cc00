"""Copies of images into the report folder: only files that decode as images, under names made here.

A record's image reference is untrusted input (issue 24, class 3): its `path` must be relative and
stay inside the media store, its `sha256` (when present) must be 64 hex characters, and the bytes
must decode (media.decode_image: allow-listed formats, size and decompression-bomb caps). The copy
is named by the sha256 of the bytes actually read and the extension of the format they decoded as,
never by a value from the record; formats a browser may not show (TIFF, BMP) are re-encoded as PNG.
The natural size is kept so the page can give each <img> its true aspect ratio.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from medmax_cli.media import MAX_IMAGE_BYTES, MediaStore, decode_image

SHA256 = re.compile(r"[0-9a-f]{64}")
WEB_FORMATS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "WEBP": "webp"}


@dataclass(frozen=True)
class Copied:
    src: str  # relative to the report folder
    width: int
    height: int


class ImageRefError(ValueError):
    pass


def check_ref(ref: Any) -> str:
    """The media-store path of a reference, or ImageRefError saying why it is refused."""
    if not isinstance(ref, dict):
        raise ImageRefError("image reference is not an object")
    digest = ref.get("sha256")
    if digest is not None and not (isinstance(digest, str) and SHA256.fullmatch(digest)):
        raise ImageRefError("sha256 is not 64 lowercase hex characters")
    path = ref.get("path")
    if not isinstance(path, str) or not path:
        raise ImageRefError("no path")
    if "\0" in path or PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute():
        raise ImageRefError("absolute path refused")
    if ".." in PurePosixPath(path.replace("\\", "/")).parts:
        raise ImageRefError("'..' in path refused")
    return path


class ReportImages:
    """Copies each distinct image once into OUT/img/; remembers what it refused, and why."""

    def __init__(self, out: Path, media: MediaStore):
        self.dir = out / "img"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.media = media
        self.refused: list[str] = []
        self._done: dict[str, Copied] = {}

    def add(self, ref: Any, what: str) -> Copied | None:
        try:
            check_ref(ref)
            data = self._read(ref, what)
            decoded = decode_image(data, what=what)
        except Exception as exc:  # noqa: BLE001 - a refused image is a note on the page, never a failed report
            self.refused.append(f"{what}: {exc}")
            return None
        source_digest = hashlib.sha256(data).hexdigest()
        if source_digest in self._done:
            return self._done[source_digest]
        ext = WEB_FORMATS.get(decoded.format)
        if ext is None:  # TIFF, BMP: re-encoded so every browser shows it
            buffer = io.BytesIO()
            decoded.image.save(buffer, format="PNG")
            data, ext = buffer.getvalue(), "png"
        name = f"{hashlib.sha256(data).hexdigest()}.{ext}"  # the copy's own bytes name it
        target = self.dir / name
        if not target.exists():
            tmp = self.dir / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, target)
        copied = Copied(f"img/{name}", decoded.width, decoded.height)
        self._done[source_digest] = copied
        return copied

    def _read(self, ref: dict[str, Any], what: str) -> bytes:
        """The bytes behind a reference: a regular file inside the store, no larger than an image may be."""
        path = self.media.path_of(ref, what=what)
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ImageRefError(f"{path} is not a regular file")
        if info.st_size > MAX_IMAGE_BYTES:
            raise ImageRefError(f"{path}: {info.st_size} bytes is over the {MAX_IMAGE_BYTES}-byte limit")
        with open(path, "rb") as handle:
            return handle.read(MAX_IMAGE_BYTES + 1)
