"""Image references of input records (paths, base64, data URIs, DICOM) to verified image bytes."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from medverl.data.dicom import DicomError, dicom_to_png, stretch_to_uint8

# Larger images are rejected before they are decoded (a 30000 x 30000 PNG is a few KB on disk, 2.7 GB in memory).
DEFAULT_PIXEL_LIMIT = 8192 * 8192
# Formats stored as their original bytes; anything else PIL decodes (TIFF, 16-bit, ...) is re-encoded as PNG.
KEPT_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
_DATA_URI = re.compile(r"data:image/[\w.+-]+;base64,", re.IGNORECASE)
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/=\s]+")
_DICOM_MAGIC_OFFSET = 128


class ImageError(ValueError):
    """An image reference that does not give a usable image; the message is the reject reason."""


@dataclass(frozen=True)
class LoadedImage:
    """Verified image bytes with where they came from.

    Attributes:
        data: bytes to store (the original file unless it had to be converted).
        path: the source path, or "" for inline data.
        width, height: decoded size in pixels.
        converted: why the bytes differ from the source ("" when they do not).
        metadata: source-specific facts worth keeping (DICOM window, modality, frame).
    """

    data: bytes
    path: str
    width: int
    height: int
    converted: str = ""
    metadata: dict[str, object] = field(default_factory=dict)


def read_reference(reference: object, image_root: Path | None) -> tuple[bytes, str]:
    """The raw bytes and source path of one image reference.

    Accepts a path (relative to `image_root`), a data URI, bare base64, raw bytes, or a dict with
    ``image_base64``, ``image_path``, ``bytes``/``path`` (verl's layout) or ``image``.
    """
    if isinstance(reference, bytes | bytearray):
        return bytes(reference), ""
    if isinstance(reference, dict):
        for key in ("bytes", "image_base64", "image_path", "path", "image"):
            value = reference.get(key)
            if value:
                data, path = read_reference(value, image_root)
                return data, path or str(reference.get("path") or "")
        raise ImageError(f"image reference has none of bytes, image_base64, image_path, path, image: {_excerpt(reference)}")
    if not isinstance(reference, str) or not reference.strip():
        raise ImageError(f"image reference must be a path, base64 string or dict, got {_excerpt(reference)}")
    text = reference.strip()
    if m := _DATA_URI.match(text):
        return _b64decode(text[m.end() :]), ""
    if (data := _sniff_base64(text)) is not None:
        return data, ""
    path = Path(text.removeprefix("file://")).expanduser()
    if not path.is_absolute() and image_root is not None:
        path = image_root / path
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        hint = "" if image_root is not None or path.is_absolute() else " (relative paths need --image-root)"
        raise ImageError(f"image file not found: {path}{hint}") from None
    except OSError as exc:
        raise ImageError(f"image file unreadable: {path}: {exc.strerror or exc}") from None


def load_image(
    reference: object,
    image_root: Path | None = None,
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    dicom_preset: str | tuple[float, float] | None = None,
) -> LoadedImage:
    """Resolve, decode and check one image reference; raises :class:`ImageError` with the reject reason."""
    data, path = read_reference(reference, image_root)
    if _is_dicom(data, path):
        try:
            dicom = dicom_to_png(data, preset=dicom_preset)
        except DicomError as exc:
            raise ImageError(f"{path or 'inline DICOM'}: {exc}") from None
        header = _check(dicom.png, path, pixel_limit)
        return LoadedImage(dicom.png, path, header.width, header.height, "DICOM to 8-bit PNG", dicom.metadata)
    header = _check(data, path, pixel_limit)
    if header.format in KEPT_FORMATS and header.mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
        return LoadedImage(data, path, header.width, header.height)
    converted = _to_png(Image.open(io.BytesIO(data)))
    return LoadedImage(converted, path, header.width, header.height, f"{header.format} {header.mode} to PNG")


class _Header(NamedTuple):
    format: str
    mode: str
    width: int
    height: int


def _check(data: bytes, path: str, pixel_limit: int) -> _Header:
    """Prove the image decodes, as cheaply as each format allows; raises :class:`ImageError`.

    JPEG is decoded at 1/8 scale (every entropy-coded byte is still read, so truncation and corruption show),
    PNG has the CRC of every chunk checked up to IEND, anything else is decoded in full.
    """
    where = path or "inline image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > pixel_limit:
                raise ImageError(
                    f"{where}: {width}x{height} = {width * height} pixels is over the limit of {pixel_limit} "
                    "(a decompression bomb or an oversized scan; raise --pixel-limit if it is real)"
                )
            header = _Header(str(image.format), image.mode, width, height)
            if image.format == "JPEG":
                image.draft(None, (max(1, width // 8), max(1, height // 8)))
                image.load()
            elif image.format == "PNG":
                image.verify()
            else:
                image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{where}: decompression bomb: {exc}") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
        raise ImageError(f"{where}: image does not decode: {exc}") from None
    if width < 1 or height < 1:
        raise ImageError(f"{where}: image is empty ({width}x{height})")
    return header


def _to_png(image: Image.Image) -> bytes:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = np.percentile(array, [0.5, 99.5])
        image = Image.fromarray(stretch_to_uint8(array, float(low), float(high)), mode="L")
    elif image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _is_dicom(data: bytes, path: str) -> bool:
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM" or path.lower().endswith(".dcm")


# File signatures that tell bare base64 from a path: PNG, JPEG, GIF, WEBP (RIFF), BMP, TIFF (both byte orders).
_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


def _sniff_base64(text: str) -> bytes | None:
    """The decoded bytes when `text` is base64 of an image or DICOM file, else None (it is a path)."""
    if len(text) < 16 or not _BASE64_CHARS.fullmatch(text[:4096]):
        return None
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if data.startswith(_SIGNATURES) or data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return data
    return None


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"invalid base64 image data: {exc}") from None


def _excerpt(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
