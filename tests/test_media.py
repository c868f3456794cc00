"""The media store: content addressing and refusal of unsafe or broken images."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from medmax_cli.media import MediaError, MediaStore, decode_image, safe_relative_path


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_put_is_content_addressed_and_idempotent(media):
    data = encoded(Image.new("RGB", (10, 6), "red"))
    ref = media.put(data)
    assert ref["width"] == 10 and ref["height"] == 6
    assert ref["path"] == f"{ref['sha256'][:2]}/{ref['sha256']}.png"
    assert media.put(data) == ref
    assert media.read_bytes(ref, verify=True) == data
    assert media.open(ref).size == (10, 6)
    assert not [p for p in media.root.rglob(".tmp-*")]


def test_jpeg_gets_its_extension(media):
    ref = media.put(encoded(Image.new("RGB", (8, 8), "blue"), "JPEG"))
    assert ref["path"].endswith(".jpg")


def test_decompression_bomb_refused():
    # A 1-bit PNG of 20000 x 20000 pixels compresses to a few KB but would decode to 400 megapixels.
    bomb = encoded(Image.new("1", (20000, 20000)))
    assert len(bomb) < 200_000
    with pytest.raises(MediaError, match="decompression bomb"):
        decode_image(bomb, what="bomb.png")


def test_corrupt_and_foreign_data_refused():
    good = encoded(Image.new("RGB", (64, 64), "green"))
    with pytest.raises(MediaError, match="corrupt or truncated"):
        decode_image(good[: len(good) // 2] + b"\0" * 10, what="cut.png")
    with pytest.raises(MediaError, match="not an image in an allowed format"):
        decode_image(b"<html><body>Not found</body></html>", what="page")
    with pytest.raises(MediaError, match="empty"):
        decode_image(b"", what="empty")


def test_path_traversal_refused(tmp_path):
    store = MediaStore(tmp_path / "store")
    (tmp_path / "store").mkdir()
    (tmp_path / "secret.png").write_bytes(encoded(Image.new("RGB", (2, 2))))
    os.symlink(tmp_path / "secret.png", tmp_path / "store" / "link.png")
    for bad, reason in (
        ("/etc/passwd", "absolute"),
        ("../secret.png", "'..'"),
        ("a/../../secret.png", "'..'"),
        ("link.png", "links outside"),
    ):
        with pytest.raises(MediaError, match=reason):
            store.path_of({"path": bad})
    with pytest.raises(MediaError, match="not in the media store"):
        store.read_bytes({"path": "ab/missing.png"})
    assert safe_relative_path(tmp_path, "store/x.png") == (tmp_path / "store" / "x.png").resolve()
