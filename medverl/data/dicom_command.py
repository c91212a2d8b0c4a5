"""``medverl dicom``: DICOM files to the 8-bit PNGs training sees (:mod:`medverl.data.dicom`), each with a JSON
sidecar of its window and metadata."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from medverl.arguments import EXIT_NOTHING_USABLE, EXIT_OK, finite_float, positive_float, positive_int
from medverl.data.dicom import CT_PRESETS
from medverl.data.files import DEFAULT_MAX_IMAGE_BYTES, FileRefused, read_file
from medverl.data.images import DEFAULT_PIXEL_LIMIT, ImageError, decode_image
from medverl.errors import ConfigError


def _parse_preset(value: str) -> str | tuple[float, float]:
    """A CT preset name or 'CENTER,WIDTH'."""
    if "," not in value:
        if value not in CT_PRESETS:
            raise argparse.ArgumentTypeError(f"unknown preset {value!r}; use {', '.join(CT_PRESETS)} or CENTER,WIDTH")
        return value
    try:
        center, width = value.split(",")
        return finite_float(center), positive_float(width)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"must be a preset name or CENTER,WIDTH (finite numbers, WIDTH above 0), "
                                         f"got {value!r}") from None


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
    parser.add_argument("inputs", nargs="+", help=".dcm files")
    parser.add_argument("--output", required=True, help="directory for NAME.png and NAME.json (files of the same "
                        "name in different directories keep their directory in NAME: a_x.png, b_x.png)")
    parser.add_argument("--preset", type=_parse_preset, default=None,
                        help=f"window: {', '.join(CT_PRESETS)} or CENTER,WIDTH (write --preset=-600,1500 for a "
                        "negative center); default: the file's own window, else a fallback")
    parser.add_argument("--pixel-limit", type=positive_int, default=DEFAULT_PIXEL_LIMIT,
                        help="reject larger images (rows x columns x frames x samples, from the header)")
    parser.add_argument("--max-image-bytes", type=positive_int, default=DEFAULT_MAX_IMAGE_BYTES,
                        help="reject larger files unread, and DICOM pixel data that decodes larger")


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl dicom``: exit status 1 when no file converts."""
    from tqdm import tqdm

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    converted = 0
    names = output_names(args.inputs)
    for name, png in zip(tqdm(args.inputs, desc="converting", unit=" files", disable=None, file=sys.stderr), names,
                         strict=True):
        try:
            image = decode_image(read_file(name, args.max_image_bytes), name, args.pixel_limit, args.preset,
                                 max_image_bytes=args.max_image_bytes)
        except (ImageError, FileRefused) as exc:
            print(exc if name in str(exc) else f"{name}: {exc}", file=sys.stderr)
            continue
        target = out_dir / png
        target.write_bytes(image.data)
        sidecar = {"source": name, "width": image.width, "height": image.height, **image.metadata}
        target.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        print(f"{name} -> {target} ({image.width}x{image.height}, window {image.metadata.get('window', '-')})")
        converted += 1
    print(f"{converted} of {len(args.inputs)} file(s) converted -> {out_dir}")
    return EXIT_OK if converted else EXIT_NOTHING_USABLE
