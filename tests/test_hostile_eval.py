"""Hostile benchmark distributions through ``medverl eval prepare``, and every command that takes a directory given
it in the relative, absolute and ``..`` forms.

Each crafted row is a counted reject with its reason (``read == written + rejected``, a manifest written); a file
that cannot be read at all is a usage error naming it (exit status 2); nothing prints a traceback. The hostile
jobs run as subprocesses under the 2 GiB address-space limit of :mod:`test_hostile`, which also reports each job's
peak memory (printed here; ``pytest -s`` shows it).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_hostile import medverl

from medverl.cli import main
from medverl.eval.samples import write_samples

BIG_CELL = 100 << 20  # an image cell of 100 MB


def _image(shade: int, fmt: str = "JPEG", padding: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (shade, 255 - shade, 40)).save(buffer, format=fmt)
    return buffer.getvalue() + b"\0" * padding


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _parquet(path: Path, rows: list[dict], image_columns: tuple[str, ...]) -> None:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([(k, image if k in image_columns else pa.string()) for k in rows[0]])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


# --- one hostile distribution per benchmark: {question number: expected reject code, None: written} -------------


def _pmc_vqa(root: Path) -> dict[int, str | None]:
    _save(root / "figures" / "a.jpg", _image(10))
    header = b"index,Figure_path,Caption,Question,Choice A,Choice B,Choice C,Choice D,Answer,split\n"
    good = b'0,a.jpg,cap,"Which?",A:x,B:y,C:z,D:w,B,test\n'
    lines = [
        good,
        b'1,a.jpg,cap,"' + b"q" * 200_000 + b'",A:x,B:y,C:z,D:w,B,test\n',  # a field over the csv module's 128 KB
        b'2,a.jpg,caf\xe9,"Which?",A:x,B:y,C:z,D:w,B,test\n',  # Latin-1, not UTF-8
        b"3,a.jpg,cap,q,A:x,B:y,C:z,D:w,B,test,extra,cells\n",  # more cells than columns
        b"4,a.jpg,cap,q,A:x,B:y,C:z,,B,test\n",  # no choice D
        good,
    ]
    _save(root / "test_2.csv", header + b"".join(lines))
    return {1: None, 2: "record_too_large", 3: "bad_encoding", 4: "bad_field", 5: "missing_field", 6: None}


def _medxpertqa(root: Path) -> dict[int, str | None]:
    _save(root / "images" / "a.jpeg", _image(20))
    _save(root.parent / "outside.jpeg", _image(30))
    good = {"id": "MM-1", "question": "Which? Answer Choices: (A) x (B) y", "options": {"A": "x", "B": "y"},
            "label": "A", "images": ["a.jpeg"], "medical_task": "Diagnosis", "question_type": "Reasoning"}
    lines = [
        _json(good),
        b'{"question": "caf\xe9?", "label": "A"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # nested past the interpreter's stack
        b"[1, 2]",  # JSON, but not an object
        _json({**good, "options": ["x", "y"]}),  # options of the wrong shape
        _json({**good, "images": "a.jpeg"}),
        _json({**good, "images": ["../../outside.jpeg"]}),  # out of the distribution's directory
        b'{"question": "q", "label": ',
        _json(good),
    ]
    _save(root / "MM" / "test.jsonl", b"\n".join(lines) + b"\n")
    return {1: None, 2: "bad_encoding", 3: "malformed_json", 4: "not_an_object", 5: "bad_field", 6: "bad_field",
            7: "outside_image_root", 8: "malformed_json", 9: None}


def _mmmu(root: Path) -> dict[int, str | None]:
    def row(options: str) -> dict:
        return {"id": "validation_Clinical_Medicine_1", "question": "<image 1> Which?", "options": options,
                "answer": "A", "question_type": "multiple-choice",
                "image_1": {"bytes": _image(40, "PNG"), "path": "x.png"}}

    _parquet(root / "Clinical_Medicine" / "validation-00000-of-00001.parquet", [
        row("['Malaria', 'Babesiosis']"),
        row("['unclosed"),
        row("__import__('os').system('true')"),  # literal_eval runs nothing
        row("[" * 5000 + "]" * 5000),  # nested past the parser's limit
        row("{'A': 'Malaria'}"),  # a dict, not a list
        row("1e999"),
        row("['Malaria', 'Babesiosis']"),
    ], ("image_1",))
    return {1: None, 2: "bad_field", 3: "bad_field", 4: "bad_field", 5: "bad_field", 6: "bad_field", 7: None}


def _slake(root: Path) -> dict[int, str | None]:
    _save(root / "imgs" / "xmlab1" / "source.jpg", _image(50))
    good = {"img_name": "xmlab1/source.jpg", "question": "Is it normal?", "answer": "Yes", "q_lang": "en",
            "answer_type": "CLOSED", "modality": "CT", "content_type": "Abnormality"}
    _save(root / "test.json", _json([
        good, 1, "a string", {**good, "answer_type": ["CLOSED"]}, {**good, "img_name": "../../../etc/passwd"},
        {**good, "answer": {"text": "Yes"}}, {**good, "question": "\ud800 lone"}, good]))
    return {1: None, 2: "not_an_object", 3: "not_an_object", 4: "bad_field", 5: "outside_image_root",
            6: "bad_field", 7: "bad_text", 8: None}


def _omnimedvqa(root: Path) -> dict[int, str | None]:
    _save(root / "Images" / "a.png", _image(60, "PNG"))
    good = {"question": "What modality?", "gt_answer": "CT", "option_A": "CT", "option_B": "MRI",
            "image_path": "Images/a.png", "modality_type": "CT", "question_type": "Modality Recognition"}
    _save(root / "QA_information" / "Open-access" / "x.json", _json([
        good, 5, {**good, "image_path": "/etc/passwd"}, {**good, "gt_answer": None}, good]))
    return {1: None, 2: "not_an_object", 3: "outside_image_root", 4: "empty_ground_truth", 5: None}


def _vqa_rad(root: Path) -> dict[int, str | None]:
    _parquet(root / "data" / "test-00000-of-00001.parquet", [
        {"image": {"bytes": _image(70, "PNG", padding=BIG_CELL), "path": None}, "question": "big?", "answer": "yes"},
        {"image": None, "question": "no image?", "answer": "no"},
        {"image": {"bytes": _image(80), "path": None}, "question": "where?", "answer": "left lung"},
    ], ("image",))
    return {1: None, 2: "missing_field", 3: None}


HOSTILE: dict[str, Callable[[Path], dict[int, str | None]]] = {
    "pmc_vqa": _pmc_vqa, "medxpertqa_mm": _medxpertqa, "mmmu_hm": _mmmu, "slake": _slake, "omnimedvqa": _omnimedvqa,
    "vqa_rad": _vqa_rad,
}


def _completed(result, output: Path) -> dict:
    assert result.rc in (0, 1) and "Traceback" not in result.err, result.err[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["complete"] and manifest["read"] == manifest["written"] + manifest["rejected"], manifest
    return manifest


def _codes(output: Path) -> dict[int, str]:
    lines = (output / "rejects.jsonl").read_text().splitlines()
    return {r["index"]: r["code"] for r in map(json.loads, lines)}


@pytest.mark.parametrize("benchmark", list(HOSTILE))
def test_eval_prepare_rejects_each_hostile_row(tmp_path: Path, benchmark: str) -> None:
    source = tmp_path / "distribution" / benchmark
    expected = HOSTILE[benchmark](source)
    out = tmp_path / "out"
    result = medverl(f"eval prepare {benchmark}", "eval", "prepare", benchmark, "--source", source, "--output", out)
    print(f"eval prepare {benchmark}: peak {result.peak_kb} KiB")
    manifest = _completed(result, out)
    assert manifest["read"] == len(expected)
    assert _codes(out) == {n: code for n, code in expected.items() if code}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert all(r["reason"] and r["source"] == f"{benchmark}:{r['index']}" for r in rejects)


def test_an_image_cell_over_the_limit_is_rejected_unread(tmp_path: Path) -> None:
    source = tmp_path / "vqa-rad"
    _vqa_rad(source)
    out = tmp_path / "out"
    result = medverl("eval prepare vqa_rad --max-image-bytes", "eval", "prepare", "vqa_rad", "--source", source,
                     "--output", out, "--max-image-bytes", 1 << 20)
    print(f"eval prepare vqa_rad --max-image-bytes 1 MiB: peak {result.peak_kb} KiB")
    _completed(result, out)
    assert _codes(out) == {1: "image_too_large", 2: "missing_field"}


@pytest.mark.parametrize(("case", "build", "says"), [
    ("an object, not an array", lambda root: _save(root / "test.json", b'{"question": "q"}'), "one JSON array"),
    ("nested past the stack", lambda root: _save(root / "test.json", b"[{}, " + b"[" * 100_000 + b"]" * 100_000
                                                + b"]"), "broken JSON array"),
    ("not UTF-8", lambda root: _save(root / "test.json", b'[{"question": "caf\xe9"}]'), "invalid UTF-8"),
    ("no test.json", lambda root: _save(root / "train.json", b"[]"), "no SLAKE test file"),
])
def test_a_file_that_cannot_be_read_is_a_usage_error_naming_it(tmp_path: Path, case: str, build, says: str) -> None:
    source = tmp_path / "slake"
    build(source)
    result = medverl(f"eval prepare slake: {case}", "eval", "prepare", "slake", "--source", source, "--output",
                     tmp_path / "out")
    print(f"eval prepare slake, {case}: peak {result.peak_kb} KiB")
    assert result.rc == 2 and says in result.err and str(source) in result.err, result.err[-2000:]
    assert "Traceback" not in result.err


def test_a_parquet_file_that_is_not_parquet_is_a_usage_error(tmp_path: Path) -> None:
    _save(tmp_path / "vqa-rad" / "data" / "test-00000-of-00001.parquet", b"PAR1 not parquet PAR1")
    result = medverl("eval prepare broken parquet", "eval", "prepare", "vqa_rad", "--source", tmp_path / "vqa-rad",
                     "--output", tmp_path / "out")
    assert result.rc == 2 and "test-00000-of-00001.parquet" in result.err and "Traceback" not in result.err


# --- directories given relative, absolute and with ".." -------------------------------------------------------------


def _forms(target: Path, elsewhere: Path) -> list[tuple[str, Path, str]]:
    """(form, the directory to run from, the argument naming `target`)."""
    elsewhere.mkdir(parents=True, exist_ok=True)
    return [("absolute", elsewhere, str(target)), ("relative", target.parent, target.name),
            ("dotdot", elsewhere, str(Path("..") / target.relative_to(elsewhere.parent)))]


# what `eval prepare` makes of each benchmark's sample (medverl.eval.samples): (written, rejected)
SAMPLES = {"vqa_rad": (3, 0), "path_vqa": (3, 0), "slake": (5, 1), "pmc_vqa": (2, 0), "omnimedvqa": (2, 0),
           "mmmu_hm": (4, 0), "medxpertqa_mm": (2, 0)}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_samples(tmp_path_factory.mktemp("forms") / "downloads")


@pytest.mark.parametrize("benchmark", list(SAMPLES))
def test_eval_prepare_reads_a_source_in_every_form(samples: dict[str, Path], tmp_path: Path, monkeypatch,
                                                   benchmark: str) -> None:
    for form, cwd, argument in _forms(samples[benchmark], samples[benchmark].parent / "work"):
        monkeypatch.chdir(cwd)
        out = tmp_path / form
        assert main(["eval", "prepare", benchmark, "--source", argument, "--output", str(out)]) in (0, 1)
        manifest = json.loads((out / "manifest.json").read_text())
        assert (manifest["written"], manifest["rejected"]) == SAMPLES[benchmark], (form, manifest)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, samples: dict[str, Path]) -> dict[str, Path]:
    """A training set with an image root, a prepared training set and a prepared benchmark, a DICOM file."""
    from pydicom.data import get_testdata_file

    base = tmp_path_factory.mktemp("world")
    _save(base / "images" / "scan.png", _image(90, "PNG"))
    (base / "train.jsonl").write_text(json.dumps({"question": "Is it normal?", "answer": "yes",
                                                  "query_type": "yes_no", "image": "scan.png"}) + "\n")
    assert main(["prep", "rl", str(base / "train.jsonl"), "--output", str(base / "train"), "--image-root",
                 str(base / "images")]) == 0
    assert main(["eval", "prepare", "vqa_rad", "--source", str(samples["vqa_rad"]), "--output",
                 str(base / "bench")]) == 0
    (base / "preds.jsonl").write_text(json.dumps({"data_source": "vqa_rad", "index": 0,
                                                  "response": "<answer>no</answer>"}) + "\n")
    _save(base / "dicom" / "ct.dcm", Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes())
    return {"base": base}


def _json_file(path: Path) -> dict:
    return json.loads(path.read_text())


COMMANDS: dict[str, tuple[str, Callable[[Path, str, Path], list[str]], Callable[[Path], None]]] = {
    # name: (the directory the form names, argv from (base, argument, output), what must hold of the output)
    "prep --image-root": ("images", lambda b, a, o: ["prep", "rl", str(b / "train.jsonl"), "--image-root", a,
                                                     "--output", str(o)],
                          lambda o: _json_file(o / "manifest.json")["written"] == 1 or pytest.fail(str(o))),
    "qc score --image-root": ("images", lambda b, a, o: ["qc", "score", "rl", str(b / "train.jsonl"), "--image-root",
                                                         a, "--output", str(o)],
                              lambda o: _json_file(o / "manifest.json")["written"] == 1 or pytest.fail(str(o))),
    "eval score --data": ("bench", lambda b, a, o: ["eval", "score", "--data", a, "--run", f"m={b / 'preds.jsonl'}",
                                                    "--output", str(o)],
                          lambda o: _json_file(o / "metrics.json")["m"]["vqa_rad"]["n"] == 3 or pytest.fail(str(o))),
    "eval decontaminate": ("train", lambda b, a, o: ["eval", "decontaminate", a, "--against", str(b / "bench"),
                                                     "--drop", str(o)],
                           lambda o: _json_file(o / "manifest.json")["written"] == 1 or pytest.fail(str(o))),
    "eval decontaminate --against": ("bench", lambda b, a, o: ["eval", "decontaminate", str(b / "train"),
                                                               "--against", a, "--drop", str(o)],
                                     lambda o: _json_file(o / "manifest.json")["read"] == 1 or pytest.fail(str(o))),
    "validate": ("train", lambda b, a, o: ["validate", a, "--report", str(o)], lambda o: None),
    "rewards check": ("train", lambda b, a, o: ["rewards", "check", a], lambda o: None),
    "dicom": ("dicom", lambda b, a, o: ["dicom", str(Path(a) / "ct.dcm"), "--output", str(o)],
              lambda o: (o / "ct.png").is_file() or pytest.fail(str(o))),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_directory_argument_in_every_form(world: dict[str, Path], tmp_path: Path, monkeypatch,
                                                command: str) -> None:
    folder, argv, holds = COMMANDS[command]
    base = world["base"]
    for form, cwd, argument in _forms(base / folder, base / "work"):
        monkeypatch.chdir(cwd)
        out = tmp_path / form
        assert main(argv(base, argument, out)) == 0, (command, form)
        holds(out)


def test_eval_run_reads_data_in_every_form(world: dict[str, Path], tiny_model: Path, tmp_path: Path,
                                           monkeypatch) -> None:
    base = world["base"]
    for form, cwd, argument in _forms(base / "bench", base / "work"):
        monkeypatch.chdir(cwd)
        predictions = tmp_path / f"{form}.jsonl"
        assert main(["eval", "run", "--model", str(tiny_model), "--data", argument, "--output", str(predictions),
                     "--backend", "hf", "--max-tokens", "2"]) == 0, form
        assert len(predictions.read_text().splitlines()) == 3
