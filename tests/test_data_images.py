"""Image references and DICOM conversion, on real files: PIL-written PNG/JPEG/TIFF and pydicom's bundled DICOM."""

import base64
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from medverl.data.dicom import CT_PRESETS, dicom_to_png, linear_window
from medverl.data.images import ImageError, load_image


def dicom_path(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not installed (pydicom / pydicom-data)"
    return str(path)


def decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_ct_without_window_tags_gets_the_soft_tissue_preset() -> None:
    ds = pydicom.dcmread(dicom_path("CT_small.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)  # intercept -1024
    out = dicom_to_png(dicom_path("CT_small.dcm"))
    assert out.metadata["window"] == "preset soft_tissue (50/400)"
    np.testing.assert_array_equal(decoded(out.png), linear_window(hu, 50, 400))


def test_mr_uses_its_header_window() -> None:
    ds = pydicom.dcmread(dicom_path("MR_small.dcm"))
    out = dicom_to_png(dicom_path("MR_small.dcm"))
    assert out.metadata["window"] == "header (600/1600)"
    np.testing.assert_array_equal(decoded(out.png), linear_window(ds.pixel_array.astype(np.float64), 600, 1600))


def test_monochrome1_is_inverted_after_windowing() -> None:
    ds = pydicom.dcmread(dicom_path("RG1_UNCI.dcm"))
    out = dicom_to_png(dicom_path("RG1_UNCI.dcm"))
    expected = 255 - linear_window(ds.pixel_array.astype(np.float64), 15000, 30000)
    assert out.metadata["photometric_interpretation"] == "MONOCHROME1"
    np.testing.assert_array_equal(decoded(out.png), expected)


def test_multiframe_colour_gives_the_middle_frame_unwindowed() -> None:
    ds = pydicom.dcmread(dicom_path("examples_ybr_color.dcm"))
    out = dicom_to_png(dicom_path("examples_ybr_color.dcm"))
    assert (out.metadata["frames"], out.metadata["frame"], out.metadata["window"]) == (30, 15, "none (colour)")
    np.testing.assert_array_equal(decoded(out.png), ds.pixel_array[15])


def test_enhanced_ct_reads_rescale_and_window_from_functional_groups() -> None:
    ds = pydicom.dcmread(dicom_path("eCT_Supplemental.dcm"))
    out = dicom_to_png(dicom_path("eCT_Supplemental.dcm"))
    assert out.metadata["window"] == "functional groups (49/102)"
    hu = ds.pixel_array[1].astype(np.float64) - 1024.0
    np.testing.assert_array_equal(decoded(out.png), linear_window(hu, 49, 102))


def test_explicit_preset_wins() -> None:
    out = dicom_to_png(dicom_path("693_UNCI.dcm"), preset="lung")
    assert out.metadata["window"] == "preset lung (-600/1500)"
    assert dicom_to_png(dicom_path("693_UNCI.dcm"), preset=(40.0, 80.0)).metadata["window"] == "explicit (40/80)"
    with pytest.raises(ValueError, match="known: " + ", ".join(CT_PRESETS)):
        dicom_to_png(dicom_path("693_UNCI.dcm"), preset="liver")


def _png(path: Path, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> bytes:
    Image.new(mode, size, 128).save(path)
    return path.read_bytes()


def _noise_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((200, 150), 50).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def test_references_of_every_kind(tmp_path: Path) -> None:
    data = _png(tmp_path / "cxr.png")
    b64 = base64.b64encode(data).decode()
    for reference in (
        "cxr.png",  # relative to the image root
        str(tmp_path / "cxr.png"),
        f"file://{tmp_path / 'cxr.png'}",
        b64,
        f"data:image/png;base64,{b64}",
        {"image_base64": b64},
        {"image_path": "cxr.png"},
        {"bytes": data, "path": "cxr.png"},  # verl's own layout
        data,
    ):
        image = load_image(reference, image_root=tmp_path)
        assert image.data == data  # original bytes kept
        assert (image.width, image.height, image.converted) == (32, 24, "")


def test_formats_verl_should_not_see_raw_are_converted(tmp_path: Path) -> None:
    Image.new("I;16", (16, 16), 4000).save(tmp_path / "scan16.png")
    Image.new("RGB", (16, 16), 50).save(tmp_path / "slide.tif")
    wide = load_image("scan16.png", tmp_path)
    assert wide.converted == "PNG I;16 to PNG" and Image.open(io.BytesIO(wide.data)).mode == "L"
    tif = load_image("slide.tif", tmp_path)
    assert tif.converted == "TIFF RGB to PNG" and Image.open(io.BytesIO(tif.data)).format == "PNG"


def test_dicom_reference_becomes_png_with_metadata(tmp_path: Path) -> None:
    raw = Path(dicom_path("MR_small.dcm")).read_bytes()
    for reference in (dicom_path("MR_small.dcm"), {"image_base64": base64.b64encode(raw).decode()}):
        image = load_image(reference, Path(dicom_path("MR_small.dcm")).parent)
        assert image.converted == "DICOM to 8-bit PNG"
        assert image.metadata["modality"] == "MR" and (image.width, image.height) == (64, 64)
        assert Image.open(io.BytesIO(image.data)).format == "PNG"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: "missing.png", "image file not found"),
        (lambda d: "data:image/png;base64,!!!not-base64!!!", "not valid base64"),
        (lambda d: (d / "cut.png").write_bytes(_png(d / "cut.png")[:60]) and "cut.png", "image does not decode"),
        (lambda d: (d / "text.png").write_text("not an image") and "text.png", "image does not decode"),
        (lambda d: (d / "cut.jpg").write_bytes(_noise_jpeg()[:-200]) and "cut.jpg", "truncated"),
        (lambda d: (d / "big.png").write_bytes(_png(d / "big.png", (400, 300))) and "big.png", "over the limit of 100000"),
        (lambda d: (d / "empty.dcm").write_bytes(b"\0" * 128 + b"DICM") and "empty.dcm", "no Rows .0028,0010. or Columns"),
        (lambda d: {"caption": "x"}, "has none of bytes, image_base64"),
        (lambda d: 42, "must be a path, base64 string or dict"),
        (lambda d: "", "must be a path, base64 string or dict"),
    ],
)
def test_bad_references_raise_the_reject_reason(tmp_path: Path, make, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        load_image(make(tmp_path), image_root=tmp_path, pixel_limit=100_000)


def _jpeg(progressive: bool = False, gray: bool = False) -> bytes:
    import random

    buffer = io.BytesIO()
    image = Image.frombytes("RGB", (192, 128), random.Random(7).randbytes(192 * 128 * 3))
    image.convert("L" if gray else "RGB").save(buffer, format="JPEG", progressive=progressive)
    return buffer.getvalue()


def _decodes(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data)).load()
        return True
    except Exception:
        return False


def _structure_ok(data: bytes) -> bool:
    try:
        load_image(data, check="structure")
        return True
    except ImageError:
        return False


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda d: d[:-2], "ends inside image data"),  # EOI lost
        (lambda d: d[: len(d) // 2], "ends inside image data"),  # cut in the middle of the scan
        (lambda d: d[:400], "(?i)truncated"),  # cut in the headers
    ],
)
def test_jpeg_truncation_is_rejected_at_both_levels(corrupt, reason: str) -> None:
    data = corrupt(_jpeg())
    assert not _decodes(data)
    with pytest.raises(ImageError, match=reason):
        load_image(data, check="structure")
    with pytest.raises(ImageError, match="(?i)does not decode|truncated"):
        load_image(data, check="decode")


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda d: d[:-2] + b"\xff\xd8\xff\xd9", "unsupported marker 0xFFD8"),  # a second SOI
        (lambda d: d[:-2] + b"\xff\xf3\x00\x04\x00\x00\xff\xd9", "unsupported marker 0xFFF3"),  # reserved code
        (lambda d: d[:-2] + b"\xff\xe1\x40\x00\x00\xff\xd9", "its length .* is corrupt"),  # runs past the end
        (lambda d: d[:-2] + d[2:600] + b"\xff\xd9", "a second frame header"),  # headers repeated
    ],
)
def test_jpeg_structure_check_rejects_a_corrupt_marker_structure(corrupt, reason: str) -> None:
    # PIL stops reading once it has every pixel, so these tails pass a decode but are corrupt files all the same.
    with pytest.raises(ImageError, match=reason):
        load_image(corrupt(_jpeg()), check="structure")


@pytest.mark.parametrize("variant", [{}, {"progressive": True}, {"gray": True}, {"progressive": True, "gray": True}])
def test_jpeg_structure_check_agrees_with_the_decoder_on_cuts(variant: dict) -> None:
    import random

    original = _jpeg(**variant)
    assert _structure_ok(original) and _decodes(original)
    cases = [original[:cut] for cut in range(200, len(original) - 2, 97)]  # a cut in every part of the file
    cases.append(original + random.Random(0).randbytes(50))  # trailing bytes after EOI are ignored by both
    for data in cases:
        assert _structure_ok(data) == _decodes(data), (len(data), len(original))


@pytest.mark.parametrize("check", ["structure", "decode"])
def test_jpeg_headers_decide_what_is_kept(check: str) -> None:
    gray = io.BytesIO()
    Image.new("L", (40, 30), 90).save(gray, format="JPEG")
    kept = load_image(gray.getvalue(), check=check)
    assert (kept.data, kept.width, kept.height, kept.converted) == (gray.getvalue(), 40, 30, "")
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 50, 100, 0)).save(cmyk, format="JPEG")
    converted = load_image(cmyk.getvalue(), check=check)  # decoded in full and stored as PNG
    assert converted.converted == "JPEG CMYK to PNG" and Image.open(io.BytesIO(converted.data)).format == "PNG"
    with pytest.raises(ImageError, match="1200 pixels is over the limit of 1000"):
        load_image(gray.getvalue(), pixel_limit=1000, check=check)


def test_decode_level_decodes_every_pixel() -> None:
    data = bytearray(_jpeg())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff\xc4" * 32  # a marker storm mid-scan
    data = bytes(data)
    assert not _decodes(data)
    with pytest.raises(ImageError, match="does not decode"):
        load_image(data, check="decode")
    with pytest.raises(ValueError, match="unknown image check"):
        load_image(data, check="quick")


def test_relative_path_without_image_root_says_so() -> None:
    with pytest.raises(ImageError, match="relative paths need --image-root"):
        load_image("nowhere/cxr.png")
