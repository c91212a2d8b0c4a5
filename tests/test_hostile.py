"""Hostile input: crafted records run through every command as a subprocess, under a 2 GiB address-space limit and
a timeout.

Each job must complete, account for every record (``read == written + rejected``), reject each crafted record with
the expected code, put no byte of a file outside the image root in its output, and print no traceback. Many cases
share one subprocess (one input file per kind), so the suite costs a few jobs, not one per case.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import resource
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopback import Endpoint, chat_reply, serve
from PIL import Image, PngImagePlugin

from medverl.data.converters import CONVERTERS, PrepOptions
from medverl.data.job import Reject
from medverl.data.records import _jsonl_lines

ADDRESS_SPACE = 2 << 30
TIMEOUT_S = 180
MARKER = b"OUTSIDE-SECRET-5f1c9e"  # inside the file outside the root: must never reach an output
MAX_IMAGE_BYTES = 4_000_000
ANY = object()  # any outcome, as long as the job accounts for it
IMAGE_CODES = {"outside_image_root", "image_not_found", "not_a_regular_file", "image_too_large", "image_unreadable",
               "bad_image", "bad_dicom", "bad_base64"}

_RUNNER = """
import atexit, resource, sys
def _peak():
    # VmHWM is this process's own peak: its ru_maxrss would count the pytest process it was forked from, as big as
    # the tests before it left it. Its workers' peaks (RUSAGE_CHILDREN) start from this process's, not pytest's.
    own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    kb = max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    sys.stderr.write(f"\\nPEAK_RSS_KB={kb}\\n")
atexit.register(_peak)
from medverl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Result:
    rc: int
    out: str
    err: str
    peak_kb: int


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def medverl(name: str, *args: str, timeout: float = TIMEOUT_S) -> Result:
    """``medverl ARGS`` in a subprocess under the address-space limit; the job `name` must end (not be killed) with its
    own peak memory under the limit, whatever ran before it in this process."""
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_limit, errors="replace")
    peak = [int(line.split("=")[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB=")]
    assert peak and 0 < peak[-1] < ADDRESS_SPACE // 1024, f"{name}: peak {peak} KiB\n{proc.stderr[-2000:]}"
    return Result(proc.returncode, proc.stdout, proc.stderr, peak[-1])


# --- the files the records point at -----------------------------------------------------------------------------


def _png(size: tuple[int, int] = (64, 64), seed: int = 0, text: bytes = b"") -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("note", text.decode())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb() -> bytes:
    """A PNG header claiming 30000 x 30000 pixels, a few hundred bytes on disk."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 30001))
            + _chunk(b"IEND", b""))


def _dicoms(root: Path) -> dict[str, Path]:
    """DICOM files with hostile headers, each beside a good one."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    source = get_testdata_file("CT_small.dcm", download=False)
    files = {"good": root / "good.dcm"}
    files["good"].write_bytes(Path(source).read_bytes())
    # Values pydicom refuses to write are put in place of a placeholder of the same length.
    for name, (change, placeholder, value) in {
        "window_garbage": (lambda ds: (ds.add_new(0x00281050, "DS", "91827364"), ds.add_new(0x00281051, "DS", "400")),
                           b"91827364", b"abc\\defg"),
        "window_nan": (lambda ds: (ds.add_new(0x00281050, "DS", "40"), ds.add_new(0x00281051, "DS", "91827364")),
                       b"91827364", b"nan     "),
        "slope_garbage": (lambda ds: ds.add_new(0x00281053, "DS", "91827364"), b"91827364", b"x1      "),
        "frames_garbage": (lambda ds: ds.add_new(0x00280008, "IS", "91827364"), b"91827364", b"many    "),
        "rows_huge": (lambda ds: (setattr(ds, "Rows", 60000), setattr(ds, "Columns", 60000)), b"", b""),
        "palette_no_lut": (lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"), b"", b""),
        "voi_empty_item": (lambda ds: setattr(ds, "VOILUTSequence", [Dataset()]), b"", b""),
    }.items():
        ds = pydicom.dcmread(source)
        change(ds)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        data = buffer.getvalue()
        assert len(placeholder) == len(value) and (data.count(placeholder) == 1 or not placeholder)
        files[name] = root / f"{name}.dcm"
        files[name].write_bytes(data.replace(placeholder, value) if placeholder else data)
    # 20000 x 20000 x 16 bits of zeros, deflated: under a megabyte on disk, 800 MB inflated
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds = Dataset()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CT", 20000, 20000, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    raw = io.BytesIO()
    raw.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(raw, meta)
    deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw.write(deflate.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 20000 * 20000 * 2)))
    zeros = bytes(8 << 20)
    for _ in range(20000 * 20000 * 2 // len(zeros)):
        raw.write(deflate.compress(zeros))
    raw.write(deflate.flush())
    files["deflated_bomb"] = root / "deflated_bomb.dcm"
    files["deflated_bomb"].write_bytes(raw.getvalue())
    return files


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "good.png").write_bytes(_png())
    (root / "other.png").write_bytes(_png(seed=1))
    secret = _png(seed=2, text=MARKER)
    (outside / "secret.png").write_bytes(secret)
    (outside / "notes.txt").write_bytes(MARKER)
    os.symlink(outside / "secret.png", root / "link_out.png")
    os.symlink(outside, root / "link_dir")
    os.symlink("/dev/zero", root / "zero.png")
    os.mkfifo(root / "fifo.png")
    (root / "adir.png").mkdir()
    (root / "big.png").write_bytes(_png() + b"\0" * (MAX_IMAGE_BYTES + 1))
    (root / "bomb.png").write_bytes(_png_bomb())
    (root / "notes.png").write_bytes(b"not an image at all")
    return {"base": base, "root": root, "outside": outside, "secret": secret, "dicoms": _dicoms(root)}


# --- the cases: one line of input each, with the reject code it must get (None: written) -----------------------


def _rl(image: object = "good.png", **fields) -> dict:
    return {"question": "Is the study normal?", "answer": "yes", "query_type": "yes_no", "image": image, **fields}


def _image_cases(world: dict, make) -> list[tuple[object, object]]:
    """Image references every kind is given (`make` puts one in a record)."""
    root, outside = world["root"], world["outside"]
    b64_other = base64.b64encode((root / "other.png").read_bytes()).decode()
    return [
        (make("good.png"), None),
        (make(str(root / "good.png")), None),  # absolute, inside the root
        (make("file://" + str(root / "other.png")), None),
        (make("../outside/secret.png"), "outside_image_root"),
        (make("../outside/does-not-exist.png"), "outside_image_root"),  # same answer: nothing leaks
        (make(str(outside / "secret.png")), "outside_image_root"),
        (make("file://" + str(outside / "secret.png")), "outside_image_root"),
        (make("link_out.png"), "outside_image_root"),  # a symlink inside the root pointing out
        (make("link_dir/secret.png"), "outside_image_root"),
        (make("good.png/../../outside/secret.png"), "outside_image_root"),
        (make("zero.png"), "outside_image_root"),  # /dev/zero through a symlink
        (make("/dev/zero"), "outside_image_root"),
        (make("/proc/self/environ"), "outside_image_root"),
        (make("~/secret.png"), "image_not_found"),  # ~ is not expanded: a name under the root
        (make("fifo.png"), "not_a_regular_file"),  # would hang a reader
        (make("adir.png"), "not_a_regular_file"),
        (make("big.png"), "image_too_large"),
        (make("bomb.png"), "bad_image"),  # 30000 x 30000 header, never decoded
        (make("notes.png"), "bad_image"),
        (make("missing.png"), "image_not_found"),
        (make("x\u0000.png"), "outside_image_root"),
        (make({"image_base64": str(outside / "secret.png")}), "bad_base64"),  # base64 fields are never paths
        (make({"bytes": "../outside/secret.png"}), "bad_base64"),
        (make({"image_base64": "!!!!"}), "bad_base64"),
        (make({"image_base64": b64_other}), None),  # inline data is the record's own
        (make({"image_path": ["x"]}), "bad_field"),
        (make({"path": "../outside/secret.png"}), "outside_image_root"),
        (make({"caption": "no image key"}), "bad_field"),
        (make([None]), "bad_field"),
        (make(12), "bad_field"),
        (make("good.dcm"), None),
        *[(make(f"{name}.dcm"), "bad_dicom") for name in world["dicoms"] if name != "good"],
    ]


def rl_cases(world: dict) -> list[tuple[object, object]]:
    verl = {"prompt": [{"role": "user", "content": "<image>Normal?"}], "images": ["good.png"],
            "reward_model": {"style": "rule", "ground_truth": "yes"}, "extra_info": {"query_type": "yes_no"}}
    return [
        (b"\xef\xbb\xbf" + json.dumps(_rl()).encode(), None),  # a BOM at the start of the file is accepted
        *_image_cases(world, _rl),
        (json.dumps(_rl(question="\ud800 lone")).encode(), "bad_text"),
        (b'{"question": "q\\udc00?", "answer": "yes", "query_type": "yes_no"}', "bad_text"),
        (b'{"question": "q?", "answer": "yes", "query_type": "yes_no", "meta": {"\\ud83d": 1}}', "bad_text"),
        (b'{"question": "caf\xe9?", "answer": "yes", "query_type": "yes_no"}', "bad_encoding"),  # Latin-1
        (b'{"question": "\xff\xfe", "answer": "yes", "query_type": "yes_no"}', "bad_encoding"),
        (b'{"question": "q?", "answer": ', "malformed_json"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),  # nested past the interpreter's stack
        (b'{"question": "q?", "answer": ' + b"7" * 5000 + b', "query_type": "yes_no"}', "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"just a string"', "not_an_object"),
        (b'{"question": "q?", "answer": NaN, "query_type": "exact_match"}', "empty_ground_truth"),
        (b'{"question": "q?", "answer": Infinity, "query_type": "exact_match"}', "empty_ground_truth"),
        (json.dumps({"question": "q?", "answer": [1, 2], "query_type": "yes_no"}).encode(), "empty_ground_truth"),
        (json.dumps(_rl(split={"a": 1})).encode(), "bad_field"),
        (json.dumps(_rl(data_source=["a", "b"])).encode(), "bad_field"),
        (json.dumps(_rl(query_type=["yes_no"])).encode(), "bad_field"),
        (json.dumps(_rl(options=5, query_type="multiple_choice", answer="A")).encode(), "bad_field"),
        (json.dumps(_rl(meta=[1])).encode(), "bad_field"),
        (json.dumps(_rl(question=5)).encode(), "bad_field"),
        (json.dumps({**verl, "extra_info": [1, 2]}).encode(), "bad_field"),
        (json.dumps({**verl, "extra_info": "query_type=yes_no"}).encode(), "bad_field"),
        (json.dumps({**verl, "extra_info": {"query_type": "yes_no", "question": 5}}).encode(), "bad_field"),
        (json.dumps({**verl, "prompt": "not a list"}).encode(), "bad_field"),
        (json.dumps({**verl, "reward_model": 5}).encode(), "missing_field"),
        (json.dumps(_rl(options="[" * 5000 + "]" * 5000, query_type="multiple_choice", answer="A")).encode(),
         "bad_field"),  # a JSON string nested past the stack
        (json.dumps(_rl(meta="[" * 5000 + "]" * 5000)).encode(), "bad_field"),
        (json.dumps(_rl(answer="[" * 5000 + "]" * 5000, query_type="exact_match")).encode(), ANY),
        (json.dumps(_rl(options='["a", ' + "1" * 5000 + "]", query_type="multiple_choice", answer="A")).encode(),
         "bad_field"),
        (json.dumps(verl).encode(), None),
        (json.dumps(_rl()).encode(), None),  # a duplicate of the first record: written, counted
    ]


def sft_cases(world: dict) -> list[tuple[object, object]]:
    def make(image: object) -> dict:
        return {"image": image, "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                                                  {"from": "gpt", "value": "A chest film."}]}

    return [
        *_image_cases(world, make),
        (json.dumps({"conversations": "human: hi\ngpt: hello"}).encode(), "bad_field"),
        (json.dumps({"conversations": {"from": "human", "value": "hi"}}).encode(), "bad_field"),
        (json.dumps({"conversations": 5}).encode(), "bad_field"),
        (json.dumps({"conversations": []}).encode(), "empty_conversation"),
        (json.dumps({"conversations": [5, 6]}).encode(), "bad_field"),
        (json.dumps({"conversations": [{"from": "human", "value": ["x"]}]}).encode(), "empty_turn"),
        (json.dumps({"conversations": [{"from": {"a": 1}, "value": "x"}]}).encode(), "unknown_role"),
        (json.dumps({"conversations": [{"from": "human", "value": "\udfff"}, {"from": "gpt", "value": "x"}]}).encode(),
         "bad_text"),
    ]


def caption_cases(world: dict) -> list[tuple[object, object]]:
    return [
        *_image_cases(world, lambda image: {"image": image, "text": "A frontal chest radiograph."}),
        (json.dumps({"image": "good.png", "text": 5}).encode(), "bad_field"),
        (json.dumps({"image": "good.png", "text": ["a"]}).encode(), "bad_field"),
        (json.dumps({"image": [], "text": "no image"}).encode(), "missing_field"),
        (json.dumps({"image": "good.png", "text": "ok", "data_source": {"x": 1}}).encode(), "bad_field"),
    ]


def interleaved_cases(world: dict) -> list[tuple[object, object]]:
    return [
        *_image_cases(world, lambda image: {"texts": ["Figure 1.", None], "image_info": [None, image]}),
        (json.dumps({"texts": 5, "image_info": []}).encode(), "missing_field"),
        (json.dumps({"texts": [5], "image_info": [None]}).encode(), "bad_field"),
        (json.dumps({"texts": ["a", "b"], "image_info": [None]}).encode(), "bad_field"),
        (json.dumps({"texts": [None], "image_info": [None]}).encode(), "missing_field"),
    ]


CASES = {"rl": rl_cases, "sft": sft_cases, "caption": caption_cases, "interleaved": interleaved_cases}


def _fuzz_lines(seed: int, n: int = 60) -> list[bytes]:
    """Random bytes and mangled JSON lines: any outcome, as long as it is accounted for."""
    rng = random.Random(seed)
    base = json.dumps(_rl()).encode()
    lines = []
    for _ in range(n):
        choice = rng.random()
        if choice < 0.3:
            line = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        elif choice < 0.7:
            line = bytearray(base)
            for _ in range(rng.randrange(1, 6)):
                line[rng.randrange(len(line))] = rng.randrange(256)
            line = bytes(line)
        else:
            line = base[: rng.randrange(1, len(base))]
        line = line.replace(b"\n", b" ").replace(b"\r", b" ")
        lines.append(line if line.strip() else b"x")
    return lines


def _write_cases(path: Path, cases: list[tuple[object, object]], fuzz_seed: int) -> dict[int, object]:
    """One input line per case; returns {line number: expected code}."""
    expected, lines = {}, []
    for record, code in [*cases, *[(line, ANY) for line in _fuzz_lines(fuzz_seed)]]:
        line = record if isinstance(record, bytes) else json.dumps(record).encode()
        assert b"\n" not in line
        lines.append(line)
        expected[len(lines)] = code
    path.write_bytes(b"\n".join(lines) + b"\n")
    return expected


def _table(directory: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(path) for path in sorted(directory.glob("part-*.parquet")))


def _rejects(directory: Path) -> dict[int, dict]:
    return {r["index"]: r for r in map(json.loads, (directory / "rejects.jsonl").read_text().splitlines())}


def _no_outside_bytes(directory: Path, world: dict) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert MARKER not in data and world["secret"][-200:] not in data, f"outside bytes in {path}"


def _completed(result: Result, directory: Path) -> dict:
    assert result.rc in (0, 1), result.err[-3000:]
    assert "Traceback" not in result.err, result.err[-3000:]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["complete"]
    assert manifest["read"] == manifest["written"] + manifest["rejected"]
    return manifest


# --- prep: every kind ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CASES))
def test_prep_survives_hostile_records(world: dict, tmp_path: Path, kind: str) -> None:
    source = tmp_path / f"{kind}.jsonl"
    expected = _write_cases(source, CASES[kind](world), fuzz_seed=len(kind))
    out = tmp_path / "out"
    result = medverl(f"prep {kind}", "prep", kind, source, "--output", out, "--image-root", world["root"],
                     "--max-image-bytes", MAX_IMAGE_BYTES, "--rows-per-shard", 16, "--workers", 2)
    manifest = _completed(result, out)
    assert manifest["read"] == len(expected)
    rejects = _rejects(out)
    wrong = {line: (code, rejects.get(line, {}).get("code")) for line, code in expected.items()
             if code is not ANY and (rejects.get(line, {}).get("code") != code)}
    assert not wrong, {line: (*codes, rejects.get(line, {}).get("reason")) for line, codes in wrong.items()}
    assert "internal_error" not in manifest["rejected_by_reason"], manifest["rejected_by_reason"]
    _no_outside_bytes(out, world)
    for line, code in expected.items():
        if code in ("bad_dicom", "bad_encoding", "bad_text"):
            assert rejects[line]["reason"], rejects[line]
    if kind == "rl":
        assert manifest["counts"].get("duplicates", 0) >= 1
        assert "byte" in next(r["reason"] for r in rejects.values() if r["code"] == "bad_encoding")
        from medverl.training.validate import validate

        report = validate(out)
        assert report.duplicates == manifest["counts"]["duplicates"]
        assert f"| {report.duplicates} |" in report.markdown()


def test_dicom_rejects_name_the_tag(world: dict, tmp_path: Path) -> None:
    dicoms = world["dicoms"]
    result = medverl("dicom", "dicom", *dicoms.values(), "--output", tmp_path / "png")
    assert result.rc == 0 and "Traceback" not in result.err, result.err[-3000:]
    for name, tag in {"window_garbage": "WindowCenter", "window_nan": "WindowWidth", "slope_garbage": "RescaleSlope",
                      "frames_garbage": "NumberOfFrames", "rows_huge": "over the pixel limit", "palette_no_lut": "PALETTE COLOR",
                      "voi_empty_item": "VOILUTSequence", "deflated_bomb": "inflates past"}.items():
        line = next(line for line in result.err.splitlines() if f"{name}.dcm" in line)
        assert tag in line, line
    assert (tmp_path / "png" / "good.png").exists()
    assert len(list((tmp_path / "png").glob("*.png"))) == 1


# --- qc score: rules and judge ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CASES))
def test_qc_score_survives_hostile_records(world: dict, tmp_path: Path, kind: str) -> None:
    source = tmp_path / f"{kind}.jsonl"
    expected = _write_cases(source, CASES[kind](world), fuzz_seed=7)
    out = tmp_path / "qc"
    result = medverl(f"qc score {kind}", "qc", "score", kind, source, "--output", out, "--image-root", world["root"],
                     "--max-image-bytes", MAX_IMAGE_BYTES)
    manifest = _completed(result, out)
    assert manifest["read"] == len(expected)
    assert manifest["written"] == manifest["counts"].get("scored", 0) + manifest["counts"].get("judge_failed", 0)
    rejects = _rejects(out)
    for line, code in expected.items():
        if code is ANY or code == "bad_field":  # a record's field (rejected) or an image reference (scored)
            continue
        if code is None or code in IMAGE_CODES:  # image problems are scored (image_unreadable), not rejected
            assert line not in rejects, (line, code, rejects[line])
        else:
            assert rejects.get(line, {}).get("code") == code, (line, code, rejects.get(line))
    secret = hashlib.sha256(world["secret"]).hexdigest()
    rows = _table(out).column("image_hashes").to_pylist()
    assert all(secret not in hashes for hashes in rows)
    _no_outside_bytes(out, world)


class _Judge(Endpoint):
    """A loopback judge whose reply is chosen by a word in the record text."""

    protocol_version = "HTTP/1.0"
    verdict = {"medical_correctness": 4, "fluency": 5, "relevance": 3, "completeness": 2, "practicality": 5,
               "rationale": "fine"}

    def answer(self, text: str) -> tuple[int, bytes] | None:
        if text == "ping":
            return 200, chat_reply(json.dumps(self.verdict))
        word = next((w for w in self.REPLIES if w in text), "GOOD")
        if word not in ("STALL", "TRICKLE", "HUGE"):
            return 200, self.REPLIES[word]
        self.send_response(200)
        self.end_headers()
        try:
            if word == "STALL":  # one byte, then nothing for longer than the deadline
                self.wfile.write(b"{")
                self.wfile.flush()
                time.sleep(4)
            elif word == "TRICKLE":  # one byte at a time, far past the deadline
                for _ in range(100):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)
            else:  # 5 MB with no length, capped by the client at 1 MB
                for _ in range(5):
                    self.wfile.write(b"x" * (1 << 20))
        except OSError:
            pass
        return None

    REPLIES: dict[str, bytes] = {}


_Judge.REPLIES = {
    "NULLCONTENT": chat_reply(None),
    "NESTED": chat_reply("[" * 50_000 + "]" * 50_000),
    "NESTEDREPLY": b'{"choices": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "LISTCONTENT": chat_reply([{"type": "text", "text": "5"}]),
    "WRONGTYPES": chat_reply(json.dumps({**_Judge.verdict, "fluency": "5"})),
    "NOCHOICES": b'{"choices": []}',
    "CHOICESTR": b'{"choices": "yes"}',
    "NOTJSON": b"<html>proxy error</html>",
    "BADUTF8": b'{"choices": [{"message": {"content": "\xff"}}]}',
    "SURROGATE": chat_reply(json.dumps({**_Judge.verdict, "rationale": "\ud800"})),
    "BIGINT": chat_reply('{"fluency": ' + "9" * 5000 + "}"),
    "TRICKLE": b"",
    "STALL": b"",
    "HUGE": b"",
    "GOOD": chat_reply(json.dumps(_Judge.verdict)),
}


@pytest.fixture
def judge_server():
    with serve(_Judge) as url:
        yield url


def test_judge_replies_of_every_shape_fail_alone(world: dict, tmp_path: Path, judge_server: str) -> None:
    words = [w for w in _Judge.REPLIES if w != "GOOD"]
    source = tmp_path / "c.jsonl"
    source.write_text("".join(json.dumps({"image": "good.png", "text": f"Chest film. {w}"}) + "\n"
                              for w in [*words, "GOOD"]))
    out = tmp_path / "j"
    args = ["qc", "score", "caption", source, "--scorer", "judge", "--judge-url", judge_server, "--judge-model", "vlm",
            "--image-root", world["root"], "--judge-retries", "0", "--judge-timeout", "1.5"]
    started = time.monotonic()
    result = medverl("qc score judge", *args, "--output", out)
    manifest = _completed(result, out)
    assert time.monotonic() - started < 60  # the trickle is cut at the deadline
    assert manifest["counts"] == {"judge_failed": len(words), "scored": 1}, manifest["counts"]
    rows = _table(out).to_pylist()
    errors = {r["text"].split()[-1]: r["error"] for r in rows if r["status"] == "judge_failed"}
    assert set(errors) == set(words) and all(errors.values())
    assert "null" in errors["NULLCONTENT"] and "cap" in errors["HUGE"] and "longer than" in errors["TRICKLE"]
    cached = sqlite3.connect(out / "judge_cache.sqlite").execute("SELECT count(*) FROM verdicts").fetchone()[0]
    assert cached == 1  # only the valid verdict

    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text(json.dumps({"image": "good.png", "text": "x NULLCONTENT"}) + "\n")
    result = medverl("qc score judge all failed", *args[:3], only_bad, *args[4:], "--output", tmp_path / "all-failed")
    assert result.rc == 1 and "Traceback" not in result.err  # every record failed: not a success


@pytest.mark.parametrize("word", ["TRICKLE", "STALL"])
def test_judge_calls_end_at_their_deadline(tmp_path: Path, judge_server: str, word: str) -> None:
    from medverl.http import JudgeConfig
    from medverl.qc.judge import rubric_judge

    judge = rubric_judge(JudgeConfig(judge_server, "vlm", timeout_s=1.0, retries=0), tmp_path / "c.sqlite")
    started = time.monotonic()
    outcome = judge.score(f"text {word}", [])
    elapsed = time.monotonic() - started
    judge.close()
    assert outcome.verdict is None and "longer than the call's 1 s" in outcome.error
    assert elapsed < 1.5, elapsed


@pytest.mark.parametrize(("url", "model", "says"), [
    ("http://127.0.0.1:9/v1", "vlm", "unreachable"),  # nothing listens
    ("/nothing-here", "vlm", "HTTP 404"),  # a server, but not an OpenAI-compatible base URL
    ("/v1", "not-served", "does not serve"),
])
def test_judge_preflight_fails_fast(world: dict, tmp_path: Path, judge_server: str, url: str, model: str,
                                    says: str) -> None:
    url = url if url.startswith("http") else judge_server.removesuffix("/v1") + url
    source = tmp_path / "c.jsonl"
    source.write_text(json.dumps({"image": "good.png", "text": "x"}) + "\n")
    result = medverl(f"qc preflight {says}", "qc", "score", "caption", source, "--scorer", "judge",
                     "--judge-url", url, "--judge-model", model, "--image-root", world["root"], "--judge-timeout", "5",
                     "--output", tmp_path / "j")
    assert result.rc == 2 and "Traceback" not in result.err and says in result.err, result.err[-2000:]
    assert not list((tmp_path / "j").glob("part-*"))


# --- scoring commands ------------------------------------------------------------------------------------------


SCORE_CASES: list[tuple[bytes, object]] = [
    (json.dumps({"solution_str": "<answer>yes</answer>", "ground_truth": "yes", "query_type": "yes_no"}).encode(),
     None),
    (json.dumps({"solution_str": "<answer>A</answer>", "ground_truth": "A", "extra_info": 5}).encode(),
     "invalid_reference"),
    (json.dumps({"solution_str": "x", "ground_truth": "A", "extra_info": [1, 2]}).encode(), "invalid_reference"),
    (json.dumps({"solution_str": "x", "ground_truth": "A", "extra_info": "multiple_choice"}).encode(),
     "invalid_reference"),
    (json.dumps({"solution_str": "x", "ground_truth": "A", "query_type": "multiple_choice", "options": 5}).encode(),
     "invalid_reference"),
    (json.dumps({"solution_str": "x", "ground_truth": "A", "query_type": ["multiple_choice"]}).encode(),
     "unknown_query_type"),
    (json.dumps({"solution_str": {"a": [1]}, "ground_truth": "yes", "query_type": "yes_no"}).encode(), None),
    (json.dumps({"solution_str": "\ud800", "ground_truth": "yes", "query_type": "yes_no"}).encode(), "bad_text"),
    (b'{"solution_str": "caf\xe9", "ground_truth": "yes", "query_type": "yes_no"}', "bad_encoding"),
    (b'{"solution_str": ' + b"[" * 100_000, "malformed_json"),
    (b'{"solution_str": "x", "ground_truth": NaN, "query_type": "exact_match"}', ANY),
    (b"5", "not_an_object"),
    (json.dumps({"solution_str": "x"}).encode(), "missing_field"),
    (json.dumps({"solution_str": "<answer>yes</answer>", "ground_truth": "yes", "query_type": "yes_no"}).encode(),
     None),
]


def test_score_accounts_for_every_row(tmp_path: Path) -> None:
    source = tmp_path / "preds.jsonl"
    source.write_bytes(b"\xef\xbb\xbf" + b"\n".join(line for line, _ in SCORE_CASES) + b"\n")
    out = tmp_path / "scored"
    result = medverl("score", "score", "--input", source, "--output", out)
    manifest = _completed(result, out)
    assert result.rc == 1  # some rows could not be scored
    assert manifest["read"] == len(SCORE_CASES)
    rejects = _rejects(out)
    for line, (_, code) in enumerate(SCORE_CASES, start=1):
        if code is not ANY:
            assert rejects.get(line, {}).get("code") == code, (line, code, rejects.get(line))
    samples = (out / "samples.jsonl").read_text().splitlines()
    assert len(samples) == manifest["written"]


def test_eval_score_accounts_for_every_prediction(world: dict, tmp_path: Path) -> None:
    questions = tmp_path / "bench.jsonl"
    options = [f"option {i}" for i in range(12)]  # more than ten options
    questions.write_text(
        json.dumps({"question": "Which?", "answer": "L", "options": options, "query_type": "multiple_choice",
                    "data_source": "vqa_rad"}) + "\n"
        + json.dumps({"question": "Normal?", "answer": "yes", "query_type": "yes_no", "data_source": "vqa_rad"}) + "\n")
    data = tmp_path / "data"
    assert medverl("eval prep", "prep", "rl", questions, "--output", data).rc == 0
    predictions = tmp_path / "p.jsonl"
    # extra_info.index counts questions from 0
    lines = [
        json.dumps({"data_source": "vqa_rad", "index": 0, "response": "<answer>L</answer>"}).encode(),
        json.dumps({"data_source": "vqa_rad", "index": 1, "response": {"a": 1}}).encode(),
        b'{"data_source": "vqa_rad", "index": 1e999, "response": "x"}',
        json.dumps({"data_source": ["vqa_rad"], "index": 1, "response": "x"}).encode(),
        b'{"data_source": "vqa_rad", "index": 2, "response": "\\ud800"}',
        b'{"data_source": "vqa_rad", "index": 2, "response": "\xff"}',
        b'{"data_source": "vqa_rad", "index": "two", "response": "x"}',
        b"[",
    ]
    predictions.write_bytes(b"\n".join(lines) + b"\n")
    for compat in ((), ("--compat", "medevalkit")):
        out = tmp_path / f"scores{len(compat)}"
        result = medverl(f"eval score{' compat' if compat else ''}", "eval", "score", "--data", data,
                         "--run", f"m={predictions}", "--output", out, *compat)
        manifest = _completed(result, out)
        assert manifest["read"] == len(lines) and manifest["written"] == 2, manifest
        codes = {line: r["code"] for line, r in _rejects(out).items()}
        assert codes == {3: "bad_field", 4: "unknown_question", 5: "bad_text", 6: "bad_encoding", 7: "bad_field",
                         8: "malformed_json"}, codes


@pytest.mark.parametrize(("name", "content", "says"), [
    ("broken.parquet", b"PAR1 not really parquet PAR1", "not a readable parquet file"),
    ("latin1.json", b'[{"question": "caf\xe9?", "answer": "yes", "query_type": "yes_no"}]', "invalid UTF-8"),
    ("deep.json", b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]", "broken JSON array"),
    ("object.json", b'{"question": "q"}', "one JSON array"),
])
def test_unreadable_input_files_are_usage_errors(tmp_path: Path, name: str, content: bytes, says: str) -> None:
    source = tmp_path / name
    source.write_bytes(content)
    for command in (["prep", "rl"], ["qc", "score", "rl"]):
        result = medverl(f"{' '.join(command)} {name}", *command, source, "--output", tmp_path / "-".join(command))
        assert result.rc == 2 and says in result.err and "Traceback" not in result.err, result.err[-2000:]


# --- resume, workers --------------------------------------------------------------------------------------------


def test_resume_refuses_a_changed_input(world: dict, tmp_path: Path) -> None:
    source = tmp_path / "rl.jsonl"
    source.write_text("".join(json.dumps(_rl(question=f"q{i}?")) + "\n" for i in range(6)))
    out = tmp_path / "out"
    args = ["prep", "rl", source, "--output", out, "--image-root", world["root"], "--rows-per-shard", 2]
    assert medverl("resume 1", *args).rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"], manifest["read"] = False, 2  # as if it stopped after the first window
    (out / "manifest.json").write_text(json.dumps(manifest))
    source.write_text(source.read_text().replace("q3?", "q3!"))  # same size, other content
    result = medverl("resume 2", *args, "--resume")
    assert result.rc == 2 and "cannot resume" in result.err and "sha256" in result.err, result.err[-2000:]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_die_with_a_killed_parent(world: dict, tmp_path: Path) -> None:
    source = tmp_path / "rl.jsonl"
    source.write_text("".join(json.dumps(_rl(question=f"q{i}?")) + "\n" for i in range(20000)))
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, "prep", "rl", str(source), "--output", str(tmp_path / "o"),
                             "--image-root", str(world["root"]), "--workers", "2", "--rows-per-shard", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_limit)
    deadline = time.monotonic() + 60
    children: list[int] = []
    while time.monotonic() < deadline and len(children) < 3:  # two workers and the resource tracker
        time.sleep(0.2)
        children = _children(proc.pid)
    assert len(children) >= 2, children
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(map(_alive, children)):
        time.sleep(0.2)
    left = [pid for pid in children if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "orphaned processes left running"


# --- options and trusted data, in process ---------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["prep", "rl", "x.jsonl", "--output", "o", "--workers", "-3"],
    ["prep", "rl", "x.jsonl", "--output", "o", "--pixel-limit", "-5"],
    ["prep", "rl", "x.jsonl", "--output", "o", "--max-pixels", "-1"],
    ["prep", "rl", "x.jsonl", "--output", "o", "--rows-per-shard", "0"],
    ["prep", "rl", "x.jsonl", "--output", "o", "--max-image-bytes", "0"],
    ["prep", "rl", "x.jsonl", "--output", "o", "--workers", "two"],
    ["qc", "score", "rl", "x.jsonl", "--output", "o", "--judge-retries", "-1"],
    ["qc", "score", "rl", "x.jsonl", "--output", "o", "--judge-timeout", "nan"],
    ["qc", "score", "rl", "x.jsonl", "--output", "o", "--judge-timeout", "0"],
    ["qc", "score", "rl", "x.jsonl", "--output", "o", "--judge-concurrency", "0"],
    ["qc", "filter", "s", "--output", "o", "--subset-min", "nan"],
    ["qc", "filter", "s", "--output", "o", "--subset-min", "2"],
    ["score", "--input", "x.jsonl", "--format-weight", "nan"],
    ["score", "--input", "x.jsonl", "--max-answer-chars", "0"],
    ["dicom", "x.dcm", "--output", "o", "--pixel-limit", "0"],
    ["prep", "rl", "x.jsonl", "--output", "o", "--image-root", "/nonexistent/images"],
    ["qc", "score", "rl", "x.jsonl", "--output", "o", "--image-root", "/nonexistent/images"],
    ["qc", "report", "s", "--output", "o", "--threshold", "nan"],
    ["qc", "report", "s", "--output", "o", "--threshold", "5"],
    ["qc", "report", "s", "--output", "o", "--threshold", "-1"],
    ["qc", "report", "s", "--output", "o", "--threshold", "inf"],
    ["qc", "filter", "s", "--output", "o", "--subset-min", "-0.5"],
    ["qc", "filter", "s", "--output", "o", "--subset-min", "inf"],
    ["score", "--input", "x.jsonl", "--format-weight", "5"],
    ["score", "--input", "x.jsonl", "--format-weight", "-1"],
    ["eval", "score", "--data", "d", "--run", "m=p", "--output", "o", "--judge-timeout", "1e308"],
    ["eval", "score", "--data", "d", "--run", "m=p", "--output", "o", "--judge-timeout=-inf"],
    ["eval", "score", "--data", "d", "--run", "m=p", "--output", "o", "--judge-retries", "100000"],
    ["eval", "score", "--data", "d", "--run", "m=p", "--output", "o", "--judge-concurrency", "1000000"],
    ["eval", "score", "--data", "d", "--run", "m=p", "--output", "o", "--judge-concurrency", "nan"],
    ["prep", "rl", "x.jsonl", "--output", "o", "--max-pixels", str(2**64)],  # past an int64 column
    ["prep", "rl", "x.jsonl", "--output", "o", "--rows-per-shard", "1" + "0" * 30],
    ["prep", "rl", "x.jsonl", "--output", "o", "--workers", "1e3"],
    ["dicom", "x.dcm", "--output", "o", "--preset", "40,nan"],
    ["dicom", "x.dcm", "--output", "o", "--preset", "nan,400"],
    ["dicom", "x.dcm", "--output", "o", "--preset", "40,-400"],
    ["dicom", "x.dcm", "--output", "o", "--preset", "40,inf"],
    ["dicom", "x.dcm", "--output", "o", "--preset", "40,0"],
    ["eval", "run", "--model", "m", "--data", "d", "--output", "o", "--max-tokens", "0"],
])
def test_bad_numbers_are_refused_as_options_are_parsed(argv: list[str], capsys) -> None:
    from medverl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "must be" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["fluency=nan", "fluency=1.5", "fluency=-1", "fluency", "nope=0.5"])
def test_bad_thresholds_are_usage_errors(spec: str) -> None:
    from medverl.errors import ConfigError
    from medverl.qc.filter import parse_thresholds

    with pytest.raises(ConfigError, match="--min takes"):
        parse_thresholds([spec])


@pytest.mark.parametrize("extra_info", [5, [1, 2], "multiple_choice", {"query_type": "multiple_choice", "options": 5,
                                                                       "index": 7}])
def test_compute_score_errors_name_data_source_and_index(extra_info: object) -> None:
    from medverl.rewards import InvalidReference, compute_score

    with pytest.raises(InvalidReference, match=r"data_source='pmc_vqa', index=(7|None)\]"):
        compute_score("pmc_vqa", "<answer>A</answer>", "A", extra_info)


def test_review_labels_with_bad_lines_are_skipped(tmp_path: Path, caplog) -> None:
    from medverl.qc.report import agreement

    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(b"\n".join([b"{broken", b"5", b'{"source": ["a"]}', b'{"source": "x\xff"}',
                                    b'{"source": "a.jsonl:1", "human_pass": true}',
                                    b'{"source": "a.jsonl:2", "human_pass": null}']) + b"\n")
    sample = [{"source": "a.jsonl:1", "mean": 0.9}, {"source": "a.jsonl:2", "mean": 0.1}]
    result = agreement(sample, labels, 0.8)
    assert result["labelled"] == 1 and result["agree"] == 1
    assert "4 line(s) are not label objects" in caplog.text


# --- properties, in process ---------------------------------------------------------------------------------------


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_KEYS = ["question", "answer", "options", "query_type", "image", "images", "extra_info", "prompt", "reward_model",
         "conversations", "texts", "image_info", "text", "split", "data_source", "meta"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(CONVERTERS.names()), record=st.dictionaries(st.sampled_from(_KEYS), _json, max_size=6))
def test_converters_never_raise(kind: str, record: dict) -> None:
    converter = CONVERTERS.get(kind)
    result = converter(record, 0, "h.jsonl:1", PrepOptions(image_root=Path("/nonexistent-root")))
    assert isinstance(result, dict | Reject)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=10))
def test_reading_lines_accounts_for_each(lines: list[bytes]) -> None:
    lines = [line.replace(b"\n", b"") for line in lines]
    records = list(_jsonl_lines(io.BytesIO(b"\n".join(lines)), "h.jsonl", limit=40))
    blank = [i for i, line in enumerate(lines, start=1)
             if not (line.removeprefix(b"\xef\xbb\xbf") if i == 1 else line).strip(b" \t\r\n") and len(line) <= 40]
    assert [r.position for r in records] == [i for i in range(1, len(lines) + 1) if i not in blank]
    for record in records:
        if record.error:
            assert record.data is None
            assert record.code in ("malformed_json", "bad_encoding", "bad_text", "record_too_large")
        else:
            json.dumps(record.data, ensure_ascii=False).encode("utf-8")  # storable: no lone surrogate

