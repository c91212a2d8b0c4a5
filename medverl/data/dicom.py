"""DICOM to an 8-bit PNG a VLM can read: rescale, window, MONOCHROME1 inversion, middle frame of a series."""

from __future__ import annotations

import io
import itertools
import math
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medverl.data.files import DEFAULT_MAX_IMAGE_BYTES

# CT presets as (center, width) in Hounsfield units.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "soft_tissue": (50.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}
DEFAULT_CT_PRESET = "soft_tissue"
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")


class DicomError(ValueError):
    """A DICOM file that cannot become an image (no pixel data, unsupported encoding)."""


@dataclass(frozen=True)
class DicomImage:
    """A converted DICOM: PNG bytes and what was done to get them."""

    png: bytes
    metadata: dict[str, object]


def _functional_group(ds, frame: int, sequence: str):
    """`sequence`'s first item from the per-frame groups of `frame`, else the shared groups (enhanced DICOM)."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        try:
            if groups in ds and len(ds[groups].value) > index and sequence in ds[groups][index]:
                return ds[groups][index][sequence][0]
        except Exception as exc:  # an empty sequence, a value of the wrong type
            raise DicomError(f"bad {groups} > {sequence}: {exc}") from None
    return None


def _number(ds, keyword: str, default: float | None = None, *, integer: bool = False, low: float | None = None,
            high: float | None = None) -> float | None:
    """The (first) value of header element `keyword` as a finite number in [low, high], `default` when absent;
    raises :class:`DicomError` naming the tag for anything else (garbage strings, NaN, an empty value)."""
    try:
        if keyword not in ds:
            return default
        element = ds[keyword]
        value = element.value
        tag = f"{keyword} {element.tag}"
    except Exception as exc:
        raise DicomError(f"bad {keyword}: {exc}") from None
    if value is None or value == "":
        return default
    if not isinstance(value, str | bytes) and hasattr(value, "__len__"):
        if not len(value):
            return default
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DicomError(f"bad {tag}: {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number) or (integer and not number.is_integer()):
        raise DicomError(f"bad {tag}: {number!r} is not {'an integer' if integer else 'a finite number'}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise DicomError(f"bad {tag}: {number:g} is out of range [{low:g}, {high:g}]")
    return int(number) if integer else number


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI window to uint8: ``clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255``, rounded."""
    scale = max(width - 1.0, 1e-6)

    def window(block: np.ndarray) -> np.ndarray:
        y = np.subtract(block, center - 0.5, dtype=np.float64)
        y /= scale
        y += 0.5
        return y

    return _to_uint8(x, window)


def stretch_to_uint8(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (clipped); a flat range gives black."""
    if not high > low:  # also NaN
        return np.zeros(x.shape, dtype=np.uint8)

    def stretch(block: np.ndarray) -> np.ndarray:
        y = np.subtract(block, low, dtype=np.float64)
        y /= high - low
        return y

    return _to_uint8(x, stretch)


_BLOCK = 1 << 22  # values per block: the float64 temporaries of a large scan stay at 32 MB


def _to_uint8(x: np.ndarray, unit: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``round(255 * clip(unit(x), 0, 1))`` as uint8, a block at a time."""
    flat = np.asarray(x).reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint8)
    for start in range(0, flat.size, _BLOCK):
        y = unit(flat[start : start + _BLOCK])
        np.clip(y, 0.0, 1.0, out=y)
        y *= 255.0
        out[start : start + _BLOCK] = np.round(y, out=y)
    return out.reshape(np.shape(x))


# A deflated dataset is one zlib stream that pydicom inflates whole: its head (where the header must lie) is inflated
# and read first, then the rest is counted, unkept, up to what the header says the pixel data needs.
_DEFLATED = "1.2.840.10008.1.2.1.99"
_RLE = "1.2.840.10008.1.2.5"
_HEADER_BYTES = 16 << 20
_TRAILER_BYTES = 1 << 20  # elements after the pixel data (padding, signatures) an inflated dataset may hold
_INFLATE_STEP = 1 << 20
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # float, double float and integer pixel data
_RLE_SLACK = 256  # bytes an RLE segment may decode to past Rows x Columns (encoders pad)


def _check_header(data: bytes, pixel_limit: int | None, max_bytes: int) -> None:
    """Refuse, before any pixel is decoded, a file whose header promises more than `pixel_limit` samples
    (rows x columns x frames x samples) or more than `max_bytes` of decoded pixel data, or whose deflated dataset
    inflates past what its header needs."""
    import pydicom

    fp = io.BytesIO(data)
    try:
        pydicom.filereader.read_preamble(fp, True)
        meta = pydicom.filereader._read_file_meta_info(fp)
        syntax = str(meta.get("TransferSyntaxUID", ""))
    except Exception as exc:
        raise DicomError(f"bad DICOM file meta information: {exc}") from None
    if syntax == _DEFLATED:
        _check_deflated(memoryview(data)[fp.tell():], pixel_limit, max_bytes)
        return
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception as exc:
        raise DicomError(f"unreadable DICOM header: {exc}") from None
    _pixel_bytes(ds, pixel_limit, max_bytes)


def _inflated(stream: memoryview) -> Iterator[bytes]:
    """The inflated pieces of a raw deflate stream, at most ``_INFLATE_STEP`` bytes each, however far it inflates."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        for start in range(0, len(stream), _INFLATE_STEP):
            pending: bytes | memoryview = stream[start : start + _INFLATE_STEP]
            while pending:
                if piece := inflater.decompress(pending, _INFLATE_STEP):
                    yield piece
                pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise DicomError(f"bad deflated dataset: {exc}") from None


def _check_deflated(stream: memoryview, pixel_limit: int | None, max_bytes: int) -> None:
    """Check a deflated dataset's header, then count the rest of the stream, unkept, stopping as soon as it passes
    what the header needs."""
    pieces = _inflated(stream)
    ds, header_end, size = _deflated_header(pieces)
    try:
        budget = header_end + _pixel_bytes(ds, pixel_limit, max_bytes) + _TRAILER_BYTES
    except DicomError as exc:
        raise DicomError(f"the deflated dataset inflates past the limits (stopped after {size} bytes): {exc}") from None
    for piece in pieces:
        size += len(piece)
        if size > budget:
            raise DicomError(f"the deflated dataset inflates past {budget} bytes, more than its header and pixel "
                             "data need: a decompression bomb")


def _deflated_header(pieces: Iterator[bytes]) -> tuple[object, int, int]:
    """The header of a deflated dataset, where its pixel data starts and the bytes inflated so far: `pieces` are
    inflated until the header ends in them (at most ``_HEADER_BYTES``)."""
    import pydicom

    head = b""
    while True:
        piece = next(pieces, b"") if len(head) < _HEADER_BYTES else b""
        head += piece
        fp = io.BytesIO(head)
        try:
            ds = pydicom.filereader.read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag in _PIXEL_TAGS)
        except Exception as exc:  # an element cut at the end of `head`, or not DICOM at all
            if not piece:
                raise DicomError(f"unreadable deflated DICOM header: {exc}") from None
            continue
        if fp.tell() < len(head) or not piece:
            return ds, fp.tell(), len(head)


def _pixel_bytes(ds, pixel_limit: int | None, max_bytes: int) -> int:
    """The bytes the header's pixel data decodes to; raises :class:`DicomError` over `pixel_limit` samples or
    `max_bytes`."""
    rows = _number(ds, "Rows", integer=True, low=1, high=1 << 16)
    columns = _number(ds, "Columns", integer=True, low=1, high=1 << 16)
    if rows is None or columns is None:
        raise DicomError("no Rows (0028,0010) or Columns (0028,0011): not an image")
    frames = _number(ds, "NumberOfFrames", 1, integer=True, low=1, high=1 << 31)
    samples = _number(ds, "SamplesPerPixel", 1, integer=True, low=1, high=4)
    bits = _number(ds, "BitsAllocated", integer=True, low=1, high=64)
    if bits is None:
        raise DicomError("no BitsAllocated (0028,0100): the pixel data's size is unknown")
    total = rows * columns * frames * samples
    shape = f"{rows}x{columns} x {frames} frame(s) x {samples} sample(s)"
    if pixel_limit is not None and total > pixel_limit:
        raise DicomError(f"{shape} = {total} is over the pixel limit of {pixel_limit} (raise --pixel-limit if it is "
                         "real)")
    decoded = (total * bits + 7) // 8
    if decoded > max_bytes:
        raise DicomError(f"{shape} x {bits} bits decodes to {decoded} bytes, over --max-image-bytes {max_bytes}")
    return decoded


def _check_frames(ds) -> None:
    """Refuse compressed frames that decode past the header's Rows x Columns before any is decoded: an RLE
    segment that expands further, a JPEG or JPEG 2000 frame whose own header is larger."""
    from pydicom.encaps import generate_fragmented_frames

    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is None or not syntax.is_transfer_syntax or not syntax.is_encapsulated or "PixelData" not in ds:
        return
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = _number(ds, "NumberOfFrames", 1, integer=True, low=1)
    try:
        for number, fragments in enumerate(itertools.islice(
                generate_fragmented_frames(ds.PixelData, number_of_frames=frames), frames)):
            if syntax == _RLE:
                _check_rle(b"".join(fragments), rows * columns, number)
            elif (size := _codestream_size(fragments[0])) and (size[0] > columns or size[1] > rows):
                raise DicomError(f"frame {number} is a {size[0]}x{size[1]} image in a {columns}x{rows} file "
                                 "(Columns x Rows): a decompression bomb")
    except DicomError:
        raise
    except Exception as exc:  # fragments that are not items, a frame count past the fragments
        raise DicomError(f"bad encapsulated PixelData (7FE0,0010): {exc}") from None


def _check_rle(frame: bytes, plane: int, number: int) -> None:
    """Refuse an RLE frame with a segment that decodes past `plane` bytes (each run is counted, nothing decoded)."""
    if len(frame) < 64:
        raise DicomError(f"RLE frame {number} is shorter than its 64-byte header")
    count, *offsets = struct.unpack("<16L", frame[:64])
    if not 1 <= count <= 15:
        raise DicomError(f"RLE frame {number} has {count} segments (1 to 15)")
    ends = [*offsets[1:count], len(frame)]
    limit = plane + _RLE_SLACK
    for segment, (start, end) in enumerate(zip(offsets[:count], ends, strict=True)):
        if end - start > limit + limit // 128 + 1:  # longer than `limit` bytes take as literal runs: never walked
            raise DicomError(f"RLE segment {segment} of frame {number} holds {end - start} bytes, more than any "
                             f"encoding of the {plane} bytes of Rows x Columns")
        pos, decoded = start, 0
        while pos < end and decoded <= limit:
            header = frame[pos]
            if header < 128:  # a literal run of header + 1 bytes
                decoded, pos = decoded + header + 1, pos + header + 2
            elif header > 128:  # a replicate run of 257 - header bytes
                decoded, pos = decoded + 257 - header, pos + 2
            else:  # 128: no operation
                pos += 1
        if decoded > limit:
            raise DicomError(f"RLE segment {segment} of frame {number} decodes to more than the {plane} bytes of "
                             "Rows x Columns: a decompression bomb")


def _codestream_size(fragment: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG frame header (SOF0-15, JPEG-LS SOF55) or a JPEG 2000 SIZ marker, else None."""
    if fragment[:4] == b"\xff\x4f\xff\x51" and len(fragment) >= 24:  # J2K: SOC, SIZ: Xsiz Ysiz XOsiz YOsiz
        x, y, x0, y0 = struct.unpack(">4L", fragment[8:24])
        return x - x0, y - y0
    if fragment[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 <= len(fragment) and fragment[pos] == 0xFF:
        marker = fragment[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) or marker == 0xF7:
            height, width = struct.unpack(">HH", fragment[pos + 5 : pos + 9])
            return width, height
        pos += 2 + int.from_bytes(fragment[pos + 2 : pos + 4], "big")
    return None


def dicom_to_png(
    source: str | Path | bytes, preset: str | tuple[float, float] | None = None, pixel_limit: int | None = None,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> DicomImage:
    """Convert one DICOM file to an 8-bit PNG.

    Window, in order: `preset` (a CT preset name or a (center, width) pair), the VOI LUT sequence, the window
    center/width (first of several; the functional groups of enhanced multi-frame files), the soft-tissue preset
    for CT, a 0.5-99.5 percentile stretch. Colour images are not windowed. MONOCHROME1 is inverted after windowing.
    A multi-frame file gives its middle frame. Before any pixel is decoded the header's size is checked against
    `pixel_limit` (samples) and `max_bytes` (decoded pixel data), a deflated dataset is inflated no further than its
    header needs, and compressed frames no larger than it. Every header value used is checked: a bad one raises
    :class:`DicomError` naming its tag.
    """
    import pydicom

    if isinstance(preset, str) and preset not in CT_PRESETS:
        raise ValueError(f"unknown window preset {preset!r}; known: {', '.join(CT_PRESETS)}")
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    _check_header(data, pixel_limit, max_bytes)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise DicomError(f"unreadable DICOM: {exc}") from None
    _check_frames(ds)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad files and missing decoders
        raise DicomError(f"DICOM has no readable pixel data: {exc}") from exc
    try:
        return _convert(ds, pixels, preset)
    except DicomError:
        raise
    except Exception as exc:  # a header combination the checks above do not foresee: still this file's fault
        raise DicomError(f"cannot convert: {type(exc).__name__}: {exc}") from None


def _convert(ds, pixels: np.ndarray, preset: str | tuple[float, float] | None) -> DicomImage:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    n_frames = _number(ds, "NumberOfFrames", 1, integer=True, low=1)
    frame = n_frames // 2
    if n_frames > 1:
        pixels = pixels[frame]
    if pixels.ndim not in (2, 3):
        raise DicomError(f"pixel data of shape {pixels.shape} is not one image (Rows, Columns, NumberOfFrames)")
    meta: dict[str, object] = {
        "modality": str(ds.get("Modality", "")),
        "photometric_interpretation": photometric,
        "frames": n_frames,
        "frame": frame,
        "rows": int(pixels.shape[0]),
        "columns": int(pixels.shape[1]),
    }
    if photometric == "PALETTE COLOR" or photometric in _COLOR or pixels.ndim == 3:
        meta["window"] = "none (colour)"
        return DicomImage(_png(_colour(ds, pixels, photometric), "RGB"), meta)
    out, meta["window"] = _window(ds, _rescaled(ds, pixels, frame), pixels, frame, preset, meta["modality"])
    if photometric == "MONOCHROME1":
        out = 255 - out
    return DicomImage(_png(out, "L"), meta)


def _colour(ds, pixels: np.ndarray, photometric: str) -> np.ndarray:
    """The 8-bit RGB of a palette or colour image (colour images are not windowed)."""
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        if "RedPaletteColorLookupTableDescriptor" not in ds or "RedPaletteColorLookupTableData" not in ds and \
                "SegmentedRedPaletteColorLookupTableData" not in ds:
            raise DicomError("PALETTE COLOR without a palette (RedPaletteColorLookupTableDescriptor (0028,1101) "
                             "and its data)")
        try:
            rgb = apply_color_lut(pixels, ds)
        except Exception as exc:
            raise DicomError(f"bad PaletteColorLookupTable (0028,1101-1203): {exc}") from None
        return stretch_to_uint8(rgb, 0, float(rgb.max())) if rgb.dtype != np.uint8 else rgb
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DicomError(f"PhotometricInterpretation (0028,0004) {photometric} but pixels of shape {pixels.shape}")
    top = float(2 ** _number(ds, "BitsStored", 8, integer=True, low=1, high=64) - 1)
    return pixels if pixels.dtype == np.uint8 else stretch_to_uint8(pixels, 0, top)


def _rescaled(ds, pixels: np.ndarray, frame: int) -> np.ndarray:
    """The stored values in modality units (Hounsfield for CT): the frame's rescale, the modality LUT or the
    header's rescale."""
    from pydicom.pixels import apply_modality_lut

    transform = _functional_group(ds, frame, "PixelValueTransformationSequence")
    if transform is not None and "RescaleSlope" in transform:
        x = pixels.astype(np.float64)
        x *= _number(transform, "RescaleSlope", 1.0)
        x += _number(transform, "RescaleIntercept", 0.0)
    elif "ModalityLUTSequence" in ds:
        try:
            x = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
        except Exception as exc:
            raise DicomError(f"bad ModalityLUTSequence (0028,3000): {exc}") from None
    else:
        x = pixels.astype(np.float64)
        x *= _number(ds, "RescaleSlope", 1.0)
        x += _number(ds, "RescaleIntercept", 0.0)
    return x


def _window(ds, x: np.ndarray, pixels: np.ndarray, frame: int, preset: str | tuple[float, float] | None,
            modality: object) -> tuple[np.ndarray, str]:
    """The 8-bit greyscale of rescaled values `x` and how it was windowed, in :func:`dicom_to_png`'s order."""
    from pydicom.pixels import apply_voi_lut

    voi = _functional_group(ds, frame, "FrameVOILUTSequence")
    if isinstance(preset, str):
        center, width = CT_PRESETS[preset]
        return linear_window(x, center, width), f"preset {preset} ({center:g}/{width:g})"
    if preset is not None:
        center, width = preset
        return linear_window(x, center, width), f"explicit ({center:g}/{width:g})"
    if "VOILUTSequence" in ds:
        try:
            item = ds.VOILUTSequence[0]
            bits = int(item.LUTDescriptor[2])
            if not 1 <= bits <= 16 or not len(item.LUTData):
                raise ValueError(f"LUTDescriptor {list(item.LUTDescriptor)} with {len(item.LUTData)} entries")
            lut = apply_voi_lut(pixels, ds, prefer_lut=True).astype(np.float64)
        except Exception as exc:  # an empty sequence or item, no LUTDescriptor, a LUT of the wrong size
            raise DicomError(f"bad VOILUTSequence (0028,3010): {type(exc).__name__}: {exc}") from None
        return stretch_to_uint8(lut, 0.0, float(2**bits - 1)), "VOI LUT sequence"
    if voi is not None and "WindowCenter" in voi:
        center, width = _number(voi, "WindowCenter"), _number(voi, "WindowWidth", 1.0)
        return linear_window(x, center, width), f"functional groups ({center:g}/{width:g})"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _number(ds, "WindowCenter"), _number(ds, "WindowWidth")
        if center is None or width is None:
            raise DicomError("empty WindowCenter (0028,1050) or WindowWidth (0028,1051)")
        return linear_window(x, center, width), f"header ({center:g}/{width:g})"
    if modality == "CT":
        center, width = CT_PRESETS[DEFAULT_CT_PRESET]
        return linear_window(x, center, width), f"preset {DEFAULT_CT_PRESET} ({center:g}/{width:g})"
    low, high = np.percentile(x, [0.5, 99.5])
    return stretch_to_uint8(x, float(low), float(high)), "percentile 0.5-99.5"


def _png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()
