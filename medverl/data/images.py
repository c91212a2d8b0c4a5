"""Image references of input records (paths, base64, data URIs, DICOM) to verified image bytes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from medverl.data.dicom import DicomError, dicom_to_png, stretch_to_uint8
from medverl.data.files import DEFAULT_MAX_IMAGE_BYTES, FileRefused, image_roots, read_confined

# Larger images are rejected before they are decoded (a 30000 x 30000 PNG is a few KB on disk, 2.7 GB in memory).
DEFAULT_PIXEL_LIMIT = 8192 * 8192
# Formats stored as their original bytes; anything else PIL decodes (TIFF, 16-bit, ...) is re-encoded as PNG.
KEPT_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
_DATA_URI = re.compile(r"data:image/[\w.+-]+;base64,", re.IGNORECASE)
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/=\s]+")
_DICOM_MAGIC_OFFSET = 128
# How image bytes are proven usable: "structure" walks the file format (JPEG markers, PNG chunk CRCs), "decode"
# decodes every pixel. See `_check`.
CHECK_LEVELS = ("structure", "decode")
# In JPEG entropy-coded data 0xFF is followed by 0x00 (stuffing), a restart marker or another 0xFF (fill):
# anything else ends the scan.
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Markers libjpeg accepts besides frame headers; any other (a second SOI, reserved codes) is a fatal decode error.
_JPEG_BETWEEN_SCANS = frozenset({0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, 0xFE, *range(0xE0, 0xF0)})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC9, 0xCA})  # the processes libjpeg decodes


class ImageError(ValueError):
    """An image reference that does not give a usable image; the message is the reject reason, `code` its code."""

    def __init__(self, message: str, code: str = "bad_image") -> None:
        super().__init__(message)
        self.code = code


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


def read_reference(
    reference: object, image_root: Path | Iterable[Path] | None, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> tuple[bytes, str]:
    """The raw bytes and source path of one image reference.

    Accepts a path (inside an image root, see :mod:`medverl.data.files`), a data URI, bare base64, raw bytes, or a
    dict with ``bytes`` or ``image_base64`` (inline data only, never a path), ``image_path`` or ``path`` (a path
    only), or ``image`` (any of these).
    """
    if isinstance(reference, bytes | bytearray):
        return _bounded(bytes(reference), max_bytes), ""
    if isinstance(reference, dict):
        for key in ("bytes", "image_base64", "image_path", "path", "image"):
            value = reference.get(key)
            if not value:
                continue
            if key in ("bytes", "image_base64"):
                data, path = _inline(key, value, max_bytes), ""
            elif key in ("image_path", "path") and not isinstance(value, str):
                raise ImageError(f"{key} must be a path string, got {type(value).__name__}", "bad_field")
            else:
                data, path = read_reference(value, image_root, max_bytes)
            named = reference.get("path")
            return data, path or (named if isinstance(named, str) else "")
        raise ImageError(f"image reference has none of bytes, image_base64, image_path, path, image: {_excerpt(reference)}",
                         "bad_field")
    if not isinstance(reference, str) or not reference.strip():
        raise ImageError(f"image reference must be a path, base64 string or dict, got {_excerpt(reference)}",
                         "bad_field")
    text = reference.strip()
    if m := _DATA_URI.match(text):
        return _b64decode(text[m.end() :], max_bytes), ""
    if (data := _sniff_base64(text, max_bytes)) is not None:
        return data, ""
    try:
        return read_confined(text, image_roots(image_root), max_bytes)
    except FileRefused as exc:
        raise ImageError(str(exc), exc.code) from None


def _inline(key: str, value: object, max_bytes: int) -> bytes:
    """The bytes of a field that holds image data (raw bytes, base64 or a data URI), never read as a path."""
    if isinstance(value, bytes | bytearray):
        return _bounded(bytes(value), max_bytes)
    if not isinstance(value, str):
        raise ImageError(f"{key} must hold base64 image data, got {type(value).__name__}", "bad_field")
    text = value.strip()
    if m := _DATA_URI.match(text):
        text = text[m.end() :]
    return _b64decode(text, max_bytes, key)


def _bounded(data: bytes, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise ImageError(f"inline image of {len(data)} bytes is over --max-image-bytes {max_bytes}", "image_too_large")
    return data


def load_image(
    reference: object,
    image_root: Path | None = None,
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    dicom_preset: str | tuple[float, float] | None = None,
    check: str = "structure",
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> LoadedImage:
    """Resolve and check one image reference (`check`: one of ``CHECK_LEVELS``); raises :class:`ImageError`."""
    data, path = read_reference(reference, image_root, max_image_bytes)
    return decode_image(data, path, pixel_limit, dicom_preset, check, max_image_bytes)


def decode_image(
    data: bytes, path: str = "", pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    dicom_preset: str | tuple[float, float] | None = None, check: str = "structure",
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> LoadedImage:
    """Check image bytes read from `path` ("" for inline data), converting DICOM (whose inflated dataset and
    decoded pixel data `max_image_bytes` bounds too) and formats not kept."""
    if _is_dicom(data, path):
        try:
            dicom = dicom_to_png(data, preset=dicom_preset, pixel_limit=pixel_limit, max_bytes=max_image_bytes)
        except DicomError as exc:
            raise ImageError(f"{path or 'inline DICOM'}: {exc}", "bad_dicom") from None
        header = _check(dicom.png, path, pixel_limit, check)
        return LoadedImage(dicom.png, path, header.width, header.height, "DICOM to 8-bit PNG", dicom.metadata)
    header = _check(data, path, pixel_limit, check)
    if header.format in KEPT_FORMATS and header.mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
        return LoadedImage(data, path, header.width, header.height)
    converted = _to_png(Image.open(io.BytesIO(data)))
    return LoadedImage(converted, path, header.width, header.height, f"{header.format} {header.mode} to PNG")


class _Header(NamedTuple):
    format: str
    mode: str
    width: int
    height: int


def _check(data: bytes, path: str, pixel_limit: int, check: str) -> _Header:
    """Prove the image decodes; raises :class:`ImageError`.

    ``check="decode"`` decodes every pixel. ``check="structure"`` walks the format the way the decoder will: JPEG
    markers and scans up to EOI (:func:`_walk_jpeg`), PNG chunk CRCs up to IEND; other formats, and JPEGs
    that must be converted (CMYK, 12-bit), are decoded in full either way.
    """
    if check not in CHECK_LEVELS:
        raise ValueError(f"unknown image check {check!r}; use one of {', '.join(CHECK_LEVELS)}")
    where = path or "inline image"
    if check == "structure" and data.startswith(b"\xff\xd8\xff"):
        problem, header = _walk_jpeg(data)
        if problem:
            raise ImageError(f"{where}: image does not decode: {problem}")
        if header.mode in ("L", "RGB"):
            return _checked_size(header, where, pixel_limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            image = Image.open(io.BytesIO(data))
            header = _checked_size(_Header(str(image.format), image.mode, *image.size), where, pixel_limit)
            if check == "structure" and image.format == "PNG":
                image.verify()
            else:
                image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{where}: decompression bomb: {exc}") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
        raise ImageError(f"{where}: image does not decode: {exc}") from None
    return header


def _checked_size(header: _Header, where: str, pixel_limit: int) -> _Header:
    pixels = header.width * header.height
    if pixels > pixel_limit:
        raise ImageError(
            f"{where}: {header.width}x{header.height} = {pixels} pixels is over the limit of {pixel_limit} "
            "(a decompression bomb or an oversized scan; raise --pixel-limit if it is real)"
        )
    if pixels < 1:
        raise ImageError(f"{where}: image is empty ({header.width}x{header.height})")
    return header


def _walk_jpeg(data: bytes) -> tuple[str, _Header]:
    """What is wrong with a JPEG file ("" if nothing), and its frame header.

    Follows libjpeg's marker reader: segments are skipped by their length, bytes before a marker are skipped,
    scans end at the first byte pair that is not stuffing, restart or fill, one frame header before the first scan,
    and the file must reach EOI. Stricter than decoding where a corrupt tail lies past the last pixel the decoder
    needs. The header's mode is "L" or "RGB" only for 8-bit, 1- or 3-component frames (what is stored unconverted).
    """
    end, pos = len(data), 2
    header = _Header("JPEG", "", 0, 0)
    while True:
        ff = data.find(b"\xff", pos)
        if ff == -1:
            return "truncated: the file ends before its end-of-image marker", header
        pos = ff + 1
        while pos < end and data[pos] == 0xFF:
            pos += 1
        if pos >= end:
            return "truncated: the file ends before its end-of-image marker", header
        marker, pos = data[pos], pos + 1
        if marker == 0xD9:
            return ("" if header.mode else "no frame header"), header
        if marker == 0 or marker in _JPEG_STANDALONE:
            continue
        if marker not in _JPEG_FRAMES and marker not in _JPEG_BETWEEN_SCANS:
            return f"unsupported marker 0xFF{marker:02X} at byte {pos - 2}", header
        if header.mode and marker in _JPEG_FRAMES:
            return f"a second frame header (0xFF{marker:02X}) at byte {pos - 2}", header
        if pos + 2 > end:
            return "truncated inside a marker segment", header
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            return f"bad marker segment length {length} at byte {pos}", header
        if pos + length > end:
            return f"truncated inside a marker segment, or its length ({length} at byte {pos}) is corrupt", header
        if marker in _JPEG_FRAMES:
            if length < 8:
                return f"bad frame header length {length} at byte {pos}", header
            precision, components = data[pos + 2], data[pos + 7]
            mode = {1: "L", 3: "RGB"}.get(components, "other") if precision == 8 else "other"
            height, width = int.from_bytes(data[pos + 3 : pos + 5], "big"), int.from_bytes(data[pos + 5 : pos + 7], "big")
            header = _Header("JPEG", mode, width, height)
        pos += length
        if marker == 0xDA:
            if not header.mode:
                return "a scan before the frame header", header
            scan_end = _JPEG_SCAN_END.search(data, pos)
            if scan_end is None:
                return "truncated: the file ends inside image data", header
            pos = scan_end.start()


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


def image_digest(data: bytes) -> str:
    """The SHA-256 of an image's bytes, in hex: what tells one image from another across rows, jobs and sets."""
    return hashlib.sha256(data).hexdigest()


def _is_dicom(data: bytes, path: str) -> bool:
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM" or path.lower().endswith(".dcm")


# File signatures that tell bare base64 from a path: PNG, JPEG, GIF, WEBP (RIFF), BMP, TIFF (both byte orders).
_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


def _sniff_base64(text: str, max_bytes: int) -> bytes | None:
    """The decoded bytes when `text` is base64 of an image or DICOM file, else None (it is a path)."""
    if len(text) < 16 or not _BASE64_CHARS.fullmatch(text[:4096]):
        return None
    try:
        data = base64.b64decode("".join(text[:4096].split())[:4096 // 4 * 4], validate=True)
    except (binascii.Error, ValueError):
        return None
    if data.startswith(_SIGNATURES) or data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return _b64decode(text, max_bytes)
    return None


def _b64decode(text: str, max_bytes: int, what: str = "image data") -> bytes:
    compact = "".join(text.split())
    if len(compact) // 4 * 3 > max_bytes:
        raise ImageError(f"inline image of about {len(compact) // 4 * 3} bytes is over --max-image-bytes {max_bytes}",
                         "image_too_large")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"{what} is not valid base64: {exc}", "bad_base64") from None


def _excerpt(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
