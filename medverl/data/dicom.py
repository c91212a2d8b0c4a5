"""DICOM to an 8-bit PNG a VLM can read: rescale, window, MONOCHROME1 inversion, middle frame of a series."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medverl.arguments import EXIT_NOTHING_USABLE, EXIT_OK
from medverl.errors import ConfigError

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
        if groups in ds and len(ds[groups].value) > index and sequence in ds[groups][index]:
            return ds[groups][index][sequence][0]
    return None


def _first(value: object) -> float:
    """The first value of a possibly multi-valued DICOM number."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return float(value)  # type: ignore[arg-type]
    return float(value[0])  # type: ignore[index]


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI window to uint8: ``clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255``, rounded."""
    y = np.clip((x - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5, 0.0, 1.0)
    return np.round(255.0 * y).astype(np.uint8)


def stretch_to_uint8(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (clipped); a flat range gives black."""
    if high <= low:
        return np.zeros(x.shape, dtype=np.uint8)
    return np.round(255.0 * np.clip((x - low) / (high - low), 0.0, 1.0)).astype(np.uint8)


def dicom_to_png(source: str | Path | bytes, preset: str | tuple[float, float] | None = None) -> DicomImage:
    """Convert one DICOM file to an 8-bit PNG.

    Window, in order: `preset` (a CT preset name or a (center, width) pair), the VOI LUT sequence, the window
    center/width (first of several; the functional groups of enhanced multi-frame files), the soft-tissue preset
    for CT, a 0.5-99.5 percentile stretch. Colour images are not windowed. MONOCHROME1 is inverted after windowing.
    A multi-frame file gives its middle frame.
    """
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad files and missing decoders
        raise DicomError(f"DICOM has no readable pixel data: {exc}") from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = n_frames // 2
    if n_frames > 1:
        pixels = pixels[frame]
    meta: dict[str, object] = {
        "modality": str(ds.get("Modality", "")),
        "photometric_interpretation": photometric,
        "frames": n_frames,
        "frame": frame,
        "rows": int(pixels.shape[0]),
        "columns": int(pixels.shape[1]),
    }

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        out = stretch_to_uint8(rgb, 0, float(rgb.max())) if rgb.dtype != np.uint8 else rgb
        meta["window"] = "none (colour)"
        return DicomImage(_png(out, "RGB"), meta)
    if photometric in _COLOR or pixels.ndim == 3:
        top = float(2 ** int(ds.BitsStored) - 1)
        out = pixels if pixels.dtype == np.uint8 else stretch_to_uint8(pixels, 0, top)
        meta["window"] = "none (colour)"
        return DicomImage(_png(out, "RGB"), meta)

    transform = _functional_group(ds, frame, "PixelValueTransformationSequence")
    if transform is not None and "RescaleSlope" in transform:
        x = pixels.astype(np.float64) * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    else:
        x = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)

    voi = _functional_group(ds, frame, "FrameVOILUTSequence")
    if isinstance(preset, str):
        if preset not in CT_PRESETS:
            raise ValueError(f"unknown window preset {preset!r}; known: {', '.join(CT_PRESETS)}")
        center, width = CT_PRESETS[preset]
        out, meta["window"] = linear_window(x, center, width), f"preset {preset} ({center:g}/{width:g})"
    elif preset is not None:
        center, width = preset
        out, meta["window"] = linear_window(x, center, width), f"explicit ({center:g}/{width:g})"
    elif "VOILUTSequence" in ds:
        lut = apply_voi_lut(pixels, ds, prefer_lut=True).astype(np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out, meta["window"] = stretch_to_uint8(lut, 0.0, float(2**bits - 1)), "VOI LUT sequence"
    elif voi is not None and "WindowCenter" in voi:
        center, width = _first(voi.WindowCenter), _first(voi.WindowWidth)
        out, meta["window"] = linear_window(x, center, width), f"functional groups ({center:g}/{width:g})"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        out, meta["window"] = linear_window(x, center, width), f"header ({center:g}/{width:g})"
    elif meta["modality"] == "CT":
        center, width = CT_PRESETS[DEFAULT_CT_PRESET]
        out, meta["window"] = linear_window(x, center, width), f"preset {DEFAULT_CT_PRESET} ({center:g}/{width:g})"
    else:
        low, high = np.percentile(x, [0.5, 99.5])
        out, meta["window"] = stretch_to_uint8(x, float(low), float(high)), "percentile 0.5-99.5"

    if photometric == "MONOCHROME1":
        out = 255 - out
    return DicomImage(_png(out, "L"), meta)


def _png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _parse_preset(value: str) -> str | tuple[float, float]:
    """A CT preset name or 'CENTER,WIDTH'."""
    if "," not in value:
        if value not in CT_PRESETS:
            raise argparse.ArgumentTypeError(f"unknown preset {value!r}; use {', '.join(CT_PRESETS)} or CENTER,WIDTH")
        return value
    try:
        center, width = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a preset name or CENTER,WIDTH, got {value!r}") from None
    return center, width


def output_names(inputs: list[str]) -> list[str]:
    """A distinct PNG name per input: its stem, or for stems several inputs share, its path joined by "_".

    >>> output_names(["a/x.dcm", "b/x.dcm", "c/y.dcm"])
    ['a_x.png', 'b_x.png', 'y.png']
    """
    stems = Counter(Path(name).stem for name in inputs)
    names = []
    for name in inputs:
        path = Path(name)
        if stems[path.stem] == 1:
            names.append(f"{path.stem}.png")
        else:
            parts = Path(os.path.relpath(path.resolve(), Path(os.path.commonpath([Path(n).resolve() for n in inputs]))))
            names.append("_".join([*parts.parent.parts, path.stem]) + ".png")
    if len(set(names)) != len(names):
        raise ConfigError("the same DICOM file is given twice")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl dicom``'s arguments."""
    from medverl.data.images import DEFAULT_PIXEL_LIMIT

    parser.add_argument("inputs", nargs="+", help=".dcm files")
    parser.add_argument("--output", required=True, help="directory for NAME.png and NAME.json (files of the same "
                        "name in different directories keep their directory in NAME: a_x.png, b_x.png)")
    parser.add_argument("--preset", type=_parse_preset, default=None,
                        help=f"window: {', '.join(CT_PRESETS)} or CENTER,WIDTH (write --preset=-600,1500 for a "
                        "negative center); default: the file's own window, else a fallback")
    parser.add_argument("--pixel-limit", type=int, default=DEFAULT_PIXEL_LIMIT, help="reject larger images")


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl dicom``: exit status 1 when no file converts."""
    from tqdm import tqdm

    from medverl.data.images import ImageError, load_image

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    converted = 0
    names = output_names(args.inputs)
    for name, png in zip(tqdm(args.inputs, desc="converting", unit=" files", disable=None, file=sys.stderr), names,
                         strict=True):
        try:
            image = load_image(name, dicom_preset=args.preset, pixel_limit=args.pixel_limit)
        except ImageError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            continue
        target = out_dir / png
        target.write_bytes(image.data)
        sidecar = {"source": name, "width": image.width, "height": image.height, **image.metadata}
        target.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        print(f"{name} -> {target} ({image.width}x{image.height}, window {image.metadata.get('window', '-')})")
        converted += 1
    print(f"{converted} of {len(args.inputs)} file(s) converted -> {out_dir}")
    return EXIT_OK if converted else EXIT_NOTHING_USABLE
