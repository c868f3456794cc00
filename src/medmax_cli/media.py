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
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from medmax_cli.atomic import atomic_write_bytes

ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}
EXTENSIONS = {ext for ext in ALLOWED_FORMATS.values()} | {"jpeg", "tiff"}
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # per image; above this Pillow's bomb check refuses it
MIN_IMAGE_SIDE = 1


class MediaError(ValueError):
    """An image that cannot be stored or read (corrupt, unsupported, unsafe)."""


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
        raise MediaError(f"{what}: {len(data)} bytes is over the {MAX_IMAGE_BYTES}-byte limit")
    if not data:
        raise MediaError(f"{what}: empty file")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
            fmt = image.format or "?"
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(f"{what}: refused as a decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise MediaError(
            f"{what}: not an image in an allowed format ({', '.join(ALLOWED_FORMATS)}); "
            f"starts with {data[:16]!r}"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"{what}: corrupt or truncated image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    width, height = image.size
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise MediaError(f"{what}: degenerate size {width}x{height}")
    return DecodedImage(image=image, format=fmt, width=width, height=height)


def safe_relative_path(root: Path, relative: str, *, what: str = "path") -> Path:
    """Resolve `relative` inside `root`, refusing absolute paths, `..` and links that escape."""
    if not isinstance(relative, str) or not relative:
        raise MediaError(f"{what}: empty path")
    candidate = Path(relative)
    if candidate.is_absolute() or relative.startswith(("/", "\\")) or ":" in candidate.parts[0]:
        raise MediaError(f"{what}: absolute path {relative!r} refused (paths are relative to {root})")
    if any(part == ".." for part in candidate.parts):
        raise MediaError(f"{what}: path {relative!r} refused: '..' may not leave {root}")
    root_real = root.resolve()
    full = (root / candidate).resolve()
    if full != root_real and root_real not in full.parents:
        raise MediaError(f"{what}: path {relative!r} refused: it links outside {root}")
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
        """Copy a local image file into the store (fetch readers use this)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise MediaError(f"{what or path}: cannot read ({exc.strerror or exc})") from None
        return self.put(data, what=what or str(path))


def extension_for(ref: Mapping[str, Any]) -> str:
    """The file extension of a stored image reference ("png" when unknown)."""
    suffix = Path(str(ref.get("path", ""))).suffix.lstrip(".").lower()
    return suffix if suffix in EXTENSIONS else "png"
