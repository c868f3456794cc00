"""Content-addressed media store: images kept once by sha256, decoded safely.

Records refer to images by `{"sha256", "path"}` where `path` is relative to the store
root (`--media-dir`, env `MEDMAX_MEDIA`, default `media/`). Nothing outside the store is
ever opened through a record: absolute paths, `..` and links that leave the store are
refused, and decoding is limited to an allow-list of formats and sizes.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from medmax_cli.atomic import atomic_write_bytes
from medmax_cli.records import reason_class

ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}
EXTENSIONS = {ext for ext in ALLOWED_FORMATS.values()} | {"jpeg", "tiff"}
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # per image; above this Pillow's bomb check refuses it
MIN_IMAGE_SIDE = 1


class MediaError(ValueError):
    """An image or local file that cannot be stored or read (corrupt, unsupported, unsafe, absent).

    `cls` is the short fixed class run summaries count it under (`image not found`, `file too
    large`, ...); the message keeps the specifics (the file, the folder searched)."""

    def __init__(self, message: str, *, cls: str | None = None):
        super().__init__(message)
        self.cls = cls or reason_class(message.split(": ", 1)[-1])


# Data files a reader loads whole (JSON arrays, JSONL, XML): past this it is refused, not read.
MAX_INPUT_BYTES_ENV = "MEDMAX_MAX_INPUT_BYTES"
DEFAULT_MAX_INPUT_BYTES = 8 * 1024**3


def max_input_bytes() -> int:
    """The size limit for one local data file (env MEDMAX_MAX_INPUT_BYTES, bytes; default 8 GiB)."""
    text = (os.environ.get(MAX_INPUT_BYTES_ENV) or "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_MAX_INPUT_BYTES


def open_local_file(path: str | os.PathLike[str], *, limit: int | None, what: str | None = None) -> BinaryIO:
    """Open a local input file for reading after checking it is a regular file of at most `limit`
    bytes (None: no size limit, for files read as a stream). A FIFO, device or folder is refused
    without blocking (opened non-blocking, checked with fstat on the open descriptor, so a file
    swapped after the check is still caught); an absent file names the folder that was searched.
    Every local import (dataset readers, `fetch jsonl`, images) goes through here."""
    path = Path(path)
    what = what or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise MediaError(
            f"{what}: file not found: {path.name} (looked in folder {path.parent})", cls="file not found"
        ) from None
    except OSError as exc:
        raise MediaError(
            f"{what}: cannot open {path} ({exc.strerror or exc})", cls="file unreadable"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = (
                "a folder"
                if stat.S_ISDIR(info.st_mode)
                else "a pipe"
                if stat.S_ISFIFO(info.st_mode)
                else "not a regular file"
            )
            raise MediaError(
                f"{what}: {path} is {kind}: only regular files are read", cls="not a regular file"
            )
        if limit is not None and info.st_size > limit:
            raise MediaError(
                f"{what}: {path} is {info.st_size} bytes, over the {limit}-byte limit",
                cls="file too large",
            )
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_local_file(path: str | os.PathLike[str], *, limit: int, what: str | None = None) -> bytes:
    """The bytes of a local regular file of at most `limit` bytes (see `open_local_file`); a file
    that grows past the limit while being read is refused too."""
    with open_local_file(path, limit=limit, what=what) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise MediaError(f"{what or path}: {path} grew past the {limit}-byte limit", cls="file too large")
    return data


def default_media_dir() -> Path:
    return Path(os.environ.get("MEDMAX_MEDIA", "media"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    format: str  # Pillow format name, e.g. "PNG"
    width: int
    height: int


def decode_image(data: bytes, *, what: str = "image") -> DecodedImage:
    """Decode bytes into a fully loaded Pillow image, refusing anything unsafe.

    Raises MediaError naming `what` for: oversized input, formats outside the allow-list,
    truncated or corrupt data and decompression bombs.
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise MediaError(
            f"{what}: {len(data)} bytes is over the {MAX_IMAGE_BYTES}-byte limit", cls="image too large"
        )
    if not data:
        raise MediaError(f"{what}: empty file", cls="image empty")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
            fmt = image.format or "?"
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(
            f"{what}: refused as a decompression bomb ({exc})", cls="image decompression bomb"
        ) from None
    except Image.UnidentifiedImageError:
        raise MediaError(
            f"{what}: not an image in an allowed format ({', '.join(ALLOWED_FORMATS)}); "
            f"starts with {data[:16]!r}",
            cls="not an image",
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"{what}: corrupt or truncated image ({exc})", cls="image corrupt") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    width, height = image.size
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise MediaError(f"{what}: degenerate size {width}x{height}", cls="image degenerate size")
    return DecodedImage(image=image, format=fmt, width=width, height=height)


def safe_relative_path(root: Path, relative: str, *, what: str = "path") -> Path:
    """Resolve `relative` inside `root`, refusing absolute paths, `..` and links that escape."""
    if not isinstance(relative, str) or not relative:
        raise MediaError(f"{what}: empty path", cls="path refused")
    candidate = Path(relative)
    if candidate.is_absolute() or relative.startswith(("/", "\\")) or ":" in candidate.parts[0]:
        raise MediaError(
            f"{what}: absolute path {relative!r} refused (paths are relative to {root})", cls="path refused"
        )
    if any(part == ".." for part in candidate.parts):
        raise MediaError(f"{what}: path {relative!r} refused: '..' may not leave {root}", cls="path refused")
    root_real = root.resolve()
    full = (root / candidate).resolve()
    if full != root_real and root_real not in full.parents:
        raise MediaError(f"{what}: path {relative!r} refused: it links outside {root}", cls="path refused")
    return full


class MediaStore:
    """Images on disk under `root/<sha[:2]>/<sha>.<ext>`, written once, atomically."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root) if root is not None else default_media_dir()

    def __repr__(self) -> str:
        return f"MediaStore({str(self.root)!r})"

    def relative_path(self, sha256: str, ext: str) -> str:
        return f"{sha256[:2]}/{sha256}.{ext}"

    def put(self, data: bytes, *, what: str = "image") -> dict[str, Any]:
        """Validate and store image bytes; return the image reference for a record."""
        decoded = decode_image(data, what=what)
        sha = sha256_bytes(data)
        ext = ALLOWED_FORMATS[decoded.format]
        rel = self.relative_path(sha, ext)
        target = self.root / rel
        if not target.exists():
            atomic_write_bytes(target, data)
        return {"sha256": sha, "path": rel, "width": decoded.width, "height": decoded.height}

    def put_image(self, image: Image.Image, *, what: str = "image") -> dict[str, Any]:
        """Store a Pillow image as PNG (how generated and decoded images are kept)."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False)
        return self.put(buffer.getvalue(), what=what)

    def path_of(self, ref: Mapping[str, Any], *, what: str = "image") -> Path:
        """The file behind an image reference, checked to lie inside the store."""
        rel = ref.get("path")
        if not rel:
            raise MediaError(f"{what}: reference has no 'path' (is it in the media store?)")
        return safe_relative_path(self.root, rel, what=what)

    def read_bytes(self, ref: Mapping[str, Any], *, what: str = "image", verify: bool = False) -> bytes:
        path = self.path_of(ref, what=what)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MediaError(f"{what}: {path} is not in the media store {self.root}") from None
        if verify and ref.get("sha256") and sha256_bytes(data) != ref["sha256"]:
            raise MediaError(f"{what}: {path} does not match its sha256 {ref['sha256']}")
        return data

    def open(self, ref: Mapping[str, Any], *, what: str = "image") -> Image.Image:
        """Decode the image behind a reference (safely) and return it fully loaded."""
        return decode_image(self.read_bytes(ref, what=what), what=what).image

    def import_file(self, path: str | os.PathLike[str], *, what: str | None = None) -> dict[str, Any]:
        """Copy a local image file into the store (fetch readers use this): a regular file of at
        most MAX_IMAGE_BYTES, checked before it is read; an absent one names the folder searched."""
        path = Path(path)
        try:
            data = read_local_file(path, limit=MAX_IMAGE_BYTES, what=what)
        except MediaError as exc:
            if exc.cls in ("file not found", "file too large"):
                raise MediaError(str(exc), cls=exc.cls.replace("file", "image")) from None
            raise
        return self.put(data, what=what or str(path))


def extension_for(ref: Mapping[str, Any]) -> str:
    """The file extension of a stored image reference ("png" when unknown)."""
    suffix = Path(str(ref.get("path", ""))).suffix.lstrip(".").lower()
    return suffix if suffix in EXTENSIONS else "png"
