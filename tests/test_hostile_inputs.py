"""Hostile input files: huge cells, fields and elements in parquet, JSON, JSONL and CSV, and DICOM files whose pixel
data would decode to far more than the file holds, each run as a subprocess under the 2 GiB address-space limit of
:func:`test_hostile.medverl`.

Each job must end, reject the crafted record with its code and reason, account for every record
(``read == written + rejected``) and print no traceback. The peak memory of each case is printed (``pytest -s``).
"""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_hostile import _png, medverl

from medverl.data import records
from medverl.data.files import DEFAULT_MAX_IMAGE_BYTES
from medverl.data.records import MAX_RECORD_BYTES, iter_records

HUGE_IMAGE = DEFAULT_MAX_IMAGE_BYTES + (44 << 20)  # 300 MB: over the default --max-image-bytes
HUGE_TEXT = MAX_RECORD_BYTES + (16 << 20)  # 80 MB
GOOD = {"question": "Is the study normal?", "answer": "yes", "query_type": "yes_no"}


def _report(case: str, peak_kb: int) -> None:
    print(f"\npeak memory {case}: {peak_kb / 1024:.0f} MB")


def _accounted(result, output: Path, read: int) -> dict[int, dict]:
    """The rejects of a completed job that read `read` records, by index."""
    assert result.rc in (0, 1) and "Traceback" not in result.err, result.err[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["complete"] and manifest["read"] == read
    assert manifest["read"] == manifest["written"] + manifest["rejected"]
    return {r["index"]: r for r in map(json.loads, (output / "rejects.jsonl").read_text().splitlines())}


# --- parquet: huge cells ---------------------------------------------------------------------------------------

_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
LAYOUTS = {  # how the image column holds an image
    "binary": (pa.binary(), lambda data: data),
    "struct": (_IMAGE, lambda data: {"bytes": data, "path": "scan.png"}),
    "list_of_structs": (pa.list_(_IMAGE), lambda data: [{"bytes": _png(), "path": "a.png"},
                                                       {"bytes": data, "path": "b.png"}]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parquet_cells_over_the_bounds_are_rejected_unconverted(tmp_path: Path, layout: str) -> None:
    kind, cell = LAYOUTS[layout]
    rows = [
        {**GOOD, "image": cell(_png())},
        {**GOOD, "image": cell(bytes(HUGE_IMAGE))},  # a 300 MB image cell
        {**GOOD, "image": cell(_png(seed=1))},
        {**GOOD, "question": "x" * HUGE_TEXT, "image": cell(_png(seed=2))},  # an 80 MB question
        {**GOOD, "question": "Normal again?", "image": cell(_png(seed=3))},
    ]
    source = tmp_path / "huge.parquet"
    schema = pa.schema([("question", pa.string()), ("answer", pa.string()), ("query_type", pa.string()),
                        ("image", kind)])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), source)
    del rows
    out = tmp_path / "out"
    result = medverl(f"parquet {layout}", "prep", "rl", source, "--output", out)
    _report(f"parquet {layout} (300 MB image cell, 80 MB text cell)", result.peak_kb)
    rejects = _accounted(result, out, read=5)
    assert {i: r["code"] for i, r in rejects.items()} == {1: "image_too_large", 3: "record_too_large"}, rejects
    assert "--max-image-bytes" in rejects[1]["reason"] and "'question'" in rejects[3]["reason"]
    assert all(len(r["excerpt"]) < 200 for r in rejects.values())


@pytest.mark.parametrize(("array", "binary", "text"), [
    # a dictionary column: each row sized by its value
    (pa.array(["ab", None, "abcd", "ab"]).dictionary_encode(), [0, 0, 0, 0], [2, 0, 4, 2]),
    # a null list's values are never converted
    (pa.array([[b"xx"], None, [b"yyy", b"z"], []], pa.list_(pa.binary())), [2, 0, 3, 0], [0, 0, 0, 0]),
    # a slice: offsets that do not start at 0
    (pa.array([[b"xx"], [b"yyyy", b"z"], [b"w"]], pa.list_(pa.binary())).slice(1), [4, 1], [0, 0]),
    (pa.array([{"bytes": b"abc", "path": "p"}, None, {"bytes": b"", "path": "long path"}], _IMAGE), [3, 0, 0],
     [1, 0, 9]),
    (pa.array([[b"ab", b"cd"], [b"e", b"fgh"]], pa.list_(pa.binary(), 2)).slice(1), [3], [0]),
    (pa.array([[("k", "vvv")], [], None], pa.map_(pa.string(), pa.binary())), [3, 0, 0], [1, 0, 0]),
    # a list view's rows may share values, out of order
    (pa.ListViewArray.from_arrays([2, 0, 0], [1, 3, 0], pa.array([b"a", b"bbbb", b"cc"])), [2, 4, 0], [0, 0, 0]),
    (pa.array([[b"abc"], None], pa.large_list_view(pa.binary_view())), [3, 0], [0, 0]),
    (pa.array(["abc", None, "de"], pa.string_view()), [0, 0, 0], [3, 0, 2]),
    (pa.array([1.5, None]), [0, 0], [0, 0]),
])
def test_cell_sizes_come_from_the_offsets(array: pa.Array, binary: list[int], text: list[int]) -> None:
    got = records._cell_sizes(array)
    assert got[0].tolist() == binary and got[1].tolist() == text


def test_a_rejected_rows_excerpt_is_cut_before_it_is_serialised() -> None:
    record = records.Record("a.parquet[0]", 0, {"image": {"bytes": bytes(50 << 20)}, "q": "y" * (50 << 20)})
    excerpt = record.rejected("placeholder_mismatch", "r").excerpt
    assert len(excerpt) == 200 and excerpt.startswith('{"image": {"bytes": "b\'\\\\x00')


# --- text formats: a huge field --------------------------------------------------------------------------------


def _text_file(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_100_mb_field_is_rejected_in_every_text_format(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"huge{suffix}"
    _text_file(source, [GOOD, {**GOOD, "question": "q" * (100 << 20)}, {**GOOD, "question": "Still normal?"}])
    out = tmp_path / "out"
    result = medverl(f"text {suffix}", "prep", "rl", source, "--output", out)
    _report(f"{suffix} (a 100 MB field)", result.peak_kb)
    rejects = _accounted(result, out, read=3)
    assert [r["code"] for r in rejects.values()] == ["record_too_large"], rejects
    assert all(len(r["excerpt"]) <= 200 for r in rejects.values())


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(alphabet='ab,[]{}"\\ \n'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='k,]"\\', max_size=3), inner,
                                                                max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(elements=st.lists(_json_values, max_size=5), indent=st.sampled_from([None, 1]))
def test_json_arrays_split_into_their_elements_across_chunks(elements: list, indent: int | None) -> None:
    chunk, records._CHUNK = records._CHUNK, 5  # elements, strings and escapes cut across reads
    try:
        scanner = records._ArrayScanner(io.StringIO(json.dumps(elements, indent=indent)), Path("a.json"), 1 << 20)
        assert [r.data for r in scanner.records()] == elements
    finally:
        records._CHUNK = chunk


def test_a_json_element_over_the_bound_is_skipped_unkept() -> None:
    text = json.dumps([{"q": "x" * 100}, "next", {"q": "y" * 30 + '\\"]'}, [1, 2]])
    found = list(records._ArrayScanner(io.StringIO(text), Path("a.json"), 50).records())
    assert [(r.code, r.data) if r.error else r.data for r in found] == \
        [("record_too_large", None), "next", {"q": "y" * 30 + '\\"]'}, [1, 2]]
    assert found[0].excerpt.startswith('{"q": "xxx') and "longer than 50 characters" in found[0].error


# --- DICOM: pixel data that would decode to far more than the file ---------------------------------------------

_RLE, _JPEG, _DEFLATED = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1.99"


def _dataset(rows: int, columns: int, syntax: str, bits: int = 8, frames: int = 1):
    from pydicom.dataset import Dataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds = Dataset()
    ds.file_meta = meta
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "OT", rows, columns, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def _saved(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encapsulated(syntax: str, frame: bytes, side: int = 64) -> bytes:
    from pydicom.encaps import encapsulate

    ds = _dataset(side, side, syntax)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return _saved(ds)


def _rle_bomb(side: int) -> bytes:
    """`side` x `side` pixels in the header; one RLE segment of replicate runs that decodes to 600 MB (10 MB on
    disk)."""
    return _encapsulated(_RLE, struct.pack("<16L", 1, 64, *[0] * 14) + b"\x81\x00" * ((600 << 20) // 128), side)


def _jpeg_bomb() -> bytes:
    """64 x 64 pixels in the header; a JPEG frame whose own header claims 13000 x 13000 (169 MB to decode)."""
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    sof = jpeg.index(b"\xff\xc0")
    return _encapsulated(_JPEG, jpeg[: sof + 5] + struct.pack(">HH", 13000, 13000) + jpeg[sof + 9 :])


def _deflated(rows: int, columns: int, bits: int, inflated: int) -> bytes:
    """A deflated dataset whose header claims rows x columns x bits and whose stream inflates to `inflated` bytes
    of zeros (about a thousandth of that on disk)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = _dataset(rows, columns, _DEFLATED, bits)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    raw = io.BytesIO()
    raw.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(raw, ds.file_meta)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw.write(deflate.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated)))
    zeros = bytes(8 << 20)
    for _ in range(inflated // len(zeros)):
        raw.write(deflate.compress(zeros))
    raw.write(deflate.flush())
    return raw.getvalue()


def _many_frames() -> bytes:
    ds = _dataset(512, 512, "1.2.840.10008.1.2.1", frames=100_000)
    ds.PixelData = bytes(16)  # the header is what is refused
    return _saved(ds)


DICOM_CASES = {  # name: (file, what the reason says)
    # 64 x 64 in the header, 1 GB of zeros in the stream: stops 1 MB past what the header needs
    "deflate_bomb": (lambda: _deflated(64, 64, 8, 1 << 30), "more than its header and pixel data need"),
    # 20000 x 20000 in the header: refused from the first inflated megabyte
    "deflate_huge_header": (lambda: _deflated(20000, 20000, 16, 800_000_000), "stopped after 1048576 bytes"),
    # 8192 x 8192 x 64 bits, true to its header: 512 MB inflated, never decoded
    "deflate_64_bits": (lambda: _deflated(8192, 8192, 64, 8192 * 8192 * 8), "over --max-image-bytes"),
    "many_frames": (_many_frames, "over the pixel limit"),
    # 4096 x 4096 in the header, a 10 MB segment: its runs are counted up to 16 MB
    "rle_bomb": (lambda: _rle_bomb(4096), "RLE segment 0 of frame 0 decodes to more than the 16777216 bytes"),
    # 64 x 64 in the header, a 10 MB segment: longer than any encoding of 4096 bytes, never walked
    "rle_too_long": (lambda: _rle_bomb(64), "more than any encoding of the 4096 bytes"),
    "jpeg_bomb": (_jpeg_bomb, "13000x13000 image in a 64x64 file"),
}


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory) -> dict[str, Path]:
    from pydicom.data import get_testdata_file

    root = tmp_path_factory.mktemp("dicoms")
    files = {"good": root / "good.dcm"}
    files["good"].write_bytes(Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes())
    for name, (make, _) in DICOM_CASES.items():
        files[name] = root / f"{name}.dcm"
        files[name].write_bytes(make())
    return files


@pytest.mark.parametrize("name", list(DICOM_CASES))
def test_dicom_bombs_are_refused_before_decoding(dicoms: dict[str, Path], tmp_path: Path, name: str) -> None:
    result = medverl(f"dicom {name}", "dicom", dicoms[name], "--output", tmp_path / "png")
    _report(f"dicom {name} ({dicoms[name].stat().st_size} bytes on disk)", result.peak_kb)
    assert result.rc == 1 and "Traceback" not in result.err, result.err[-3000:]
    line = next(line for line in result.err.splitlines() if f"{name}.dcm" in line)
    assert DICOM_CASES[name][1] in line, line
    assert not list((tmp_path / "png").glob("*.png"))


def test_prep_rejects_each_dicom_bomb_as_bad_dicom(dicoms: dict[str, Path], tmp_path: Path) -> None:
    names = ["good", *DICOM_CASES]
    source = tmp_path / "rl.jsonl"
    source.write_text("".join(json.dumps({**GOOD, "image": f"{name}.dcm"}) + "\n" for name in names))
    out = tmp_path / "out"
    result = medverl("prep dicoms", "prep", "rl", source, "--output", out, "--image-root", dicoms["good"].parent)
    _report("prep of every DICOM case", result.peak_kb)
    rejects = _accounted(result, out, read=len(names))
    assert {line: r["code"] for line, r in rejects.items()} == {i: "bad_dicom" for i in range(2, len(names) + 1)}
    assert all(r["reason"] for r in rejects.values())


def test_rle_segments_are_counted_not_decoded() -> None:
    from medverl.data.dicom import DicomError, _check_rle

    header = struct.pack("<16L", 2, 64, 64 + 5, *[0] * 13)
    _check_rle(header + b"\x01ab\xfe\x00" + b"\x7f" + bytes(128), 4, 0)  # 2 + 3 bytes, then 128: within slack
    with pytest.raises(DicomError, match="segment 1 of frame 3"):
        _check_rle(header + b"\x01ab\xfe\x00" + b"\x81\x00" * 4, 4, 3)  # 4 x 128 bytes from 8
    with pytest.raises(DicomError, match="holds 400 bytes, more than any encoding of the 4 bytes"):
        _check_rle(header + b"\x01ab\xfe\x00" + bytes(400), 4, 0)
    with pytest.raises(DicomError, match="16 segments"):
        _check_rle(struct.pack("<16L", 16, *[0] * 15), 4, 0)


def test_decoded_size_counts_bits() -> None:
    from medverl.data.dicom import DicomError, _pixel_bytes

    ds = _dataset(100, 200, "1.2.840.10008.1.2.1", bits=16, frames=3)
    assert _pixel_bytes(ds, None, 1 << 20) == 100 * 200 * 3 * 2
    with pytest.raises(DicomError, match="x 16 bits decodes to 120000 bytes, over --max-image-bytes 119999"):
        _pixel_bytes(ds, None, 119_999)
    del ds.BitsAllocated
    with pytest.raises(DicomError, match="no BitsAllocated"):
        _pixel_bytes(ds, None, 1 << 20)


def test_a_good_deflated_dicom_still_converts(tmp_path: Path) -> None:
    from medverl.data.dicom import dicom_to_png

    ds = _dataset(64, 64, _DEFLATED)
    ds.PixelData = np.arange(64 * 64, dtype=np.uint8).tobytes()
    converted = dicom_to_png(_saved(ds))
    assert converted.metadata["rows"] == 64 and converted.png.startswith(b"\x89PNG")
