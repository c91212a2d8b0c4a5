"""medverl prep: converters, rejects with reasons, shards, manifest, resume and determinism."""

import base64
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medverl.cli import main
from medverl.data import runner
from medverl.data.converters import PrepOptions, convert_caption, convert_interleaved, convert_rl, convert_sft
from medverl.data.job import JobError
from medverl.data.runner import PrepJob, run_prep
from medverl.prompts import load_template


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder of real image files: PNG, JPEG, a DICOM, a truncated PNG and a text file named .png."""
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (64, 48), (180, 40, 40)).save(root / "cxr.png")
    Image.new("L", (40, 40), 90).save(root / "slide.jpg", quality=90)
    (root / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes())
    (root / "cut.png").write_bytes((root / "cxr.png").read_bytes()[:50])
    (root / "notes.png").write_text("not an image")
    Image.new("RGB", (500, 500), 0).save(root / "huge.png")
    return root


def options(images: Path, **kw) -> PrepOptions:
    return PrepOptions(image_root=images, template=load_template("think_answer"), pixel_limit=100_000, **kw)


RL_BAD = [
    ({"answer": "yes", "query_type": "yes_no"}, "missing_field"),
    ({"question": "  ", "answer": "yes", "query_type": "yes_no"}, "missing_field"),
    ({"question": "q", "query_type": "yes_no"}, "missing_field"),
    ({"question": "q", "answer": "yes", "query_type": "yes_no", "meta": ["closed"]}, "bad_field"),  # meta is an object
    ({"question": "q", "answer": "", "query_type": "yes_no"}, "empty_ground_truth"),
    ({"question": "q", "answer": [" "], "query_type": "yes_no"}, "empty_ground_truth"),
    ({"question": "q", "answer": "yes", "query_type": "yesno"}, "unknown_query_type"),
    ({"question": "q", "answer": "yes"}, "unknown_query_type"),  # no query_type and no --query-type
    ({"question": "q", "answer": "maybe", "query_type": "yes_no"}, "invalid_reference"),
    ({"question": "q", "answer": "E", "query_type": "multiple_choice", "options": ["a", "b"]}, "invalid_reference"),
    ({"question": "q", "answer": "A", "query_type": "multiple_choice", "options": "not json"}, "bad_field"),
    ({"question": "q", "answer": "yes", "query_type": "yes_no", "image": "missing.png"}, "image_not_found"),
    ({"question": "q", "answer": "yes", "query_type": "yes_no", "image": "cut.png"}, "bad_image"),
    ({"question": "q", "answer": "yes", "query_type": "yes_no", "image": "notes.png"}, "bad_image"),
    ({"question": "q", "answer": "yes", "query_type": "yes_no", "image": "huge.png"}, "bad_image"),  # pixel limit
    ({"question": "q", "answer": "yes", "query_type": "yes_no", "image": "data:image/png;base64,@@"}, "bad_base64"),
    ({"question": "<image><image> q", "answer": "yes", "query_type": "yes_no", "image": "cxr.png"}, "placeholder_mismatch"),
    ({"question": "<image> q", "answer": "yes", "query_type": "yes_no"}, "placeholder_mismatch"),
    ({"prompt": [{"role": "robot", "content": "q"}], "reward_model": {"ground_truth": "yes"},
      "extra_info": {"query_type": "yes_no"}}, "unknown_role"),
    (["not", "an", "object"], "not_an_object"),
]


@pytest.mark.parametrize(("record", "code"), RL_BAD)
def test_rl_rejects(record, code: str, images: Path) -> None:
    result = convert_rl(record, 0, "t.jsonl:1", options(images))
    assert type(result).__name__ == "Reject", result
    assert result.code == code
    assert result.reason


def test_rl_row(images: Path) -> None:
    record = {
        "question": "Which finding?", "answer": ["B", "Lobar pneumonia"], "query_type": "multiple_choice",
        "options": ["Pulmonary edema", "Lobar pneumonia"], "images": ["cxr.png", "ct.dcm"],
        "data_source": "pmc_vqa", "system_prompt": "You are a radiologist.", "split": "test",
        "meta": {"modality": "CT", "language": "en"},
    }
    row = convert_rl(record, 7, "t.jsonl:3", options(images, max_pixels=50176))
    assert row["data_source"] == "pmc_vqa" and row["ability"] == "medical_vqa"
    assert row["prompt"][0] == {"role": "system", "content": "You are a radiologist."}
    user = row["prompt"][1]["content"]
    assert user.startswith("<image><image>\nWhich finding?\nA. Pulmonary edema\nB. Lobar pneumonia")
    assert "<think> </think>" in user and "<answer> </answer>" in user and "letter of one option" in user
    assert row["reward_model"] == {"style": "rule", "ground_truth": '["B", "Lobar pneumonia"]'}
    assert row["extra_info"] == {
        "split": "test", "index": 7, "query_type": "multiple_choice", "options": record["options"],
        "question": "Which finding?", "source": "t.jsonl:3", "image_meta": row["extra_info"]["image_meta"],
        "meta": '{"language": "en", "modality": "CT"}',
    }
    png = (images / "cxr.png").read_bytes()
    assert row["images"][0] == {"bytes": png, "path": str(images / "cxr.png"), "max_pixels": 50176}  # bytes kept
    meta = json.loads(row["extra_info"]["image_meta"])
    assert meta[1]["converted"] == "DICOM to 8-bit PNG" and meta[1]["modality"] == "CT"


def test_rl_record_already_in_verl_layout(images: Path) -> None:
    b64 = base64.b64encode((images / "cxr.png").read_bytes()).decode()
    record = {
        "data_source": "vqa_rad", "prompt": [{"role": "user", "content": "<image>Is there a fracture?"}],
        "images": [{"image_base64": b64}], "ability": "radiology",
        "reward_model": {"style": "rule", "ground_truth": "no"}, "extra_info": {"query_type": "yes_no", "split": "val"},
    }
    row = convert_rl(record, 0, "v.jsonl:1", options(images))
    assert row["prompt"] == record["prompt"] and row["ability"] == "radiology"
    assert row["extra_info"]["split"] == "val" and row["images"][0]["path"] == ""


SFT_BAD = [
    ({}, "missing_field"),
    ({"conversations": []}, "empty_conversation"),
    ({"conversations": [{"from": "human", "value": "hi"}]}, "empty_conversation"),  # nothing to train on
    ({"conversations": [{"from": "doctor", "value": "hi"}, {"from": "gpt", "value": "x"}]}, "unknown_role"),
    ({"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "x"}]}, "empty_turn"),
    ({"image": ["cxr.png"], "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]},
     "placeholder_mismatch"),
    ({"image": ["cxr.png"], "conversations": [{"from": "human", "value": "<image>\n<image>\nq"},
                                              {"from": "gpt", "value": "x"}]}, "placeholder_mismatch"),
    ({"image": ["gone.png"], "conversations": [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "x"}]},
     "image_not_found"),
]


@pytest.mark.parametrize(("record", "code"), SFT_BAD)
def test_sft_rejects(record, code: str, images: Path) -> None:
    result = convert_sft(record, 0, "s.jsonl:1", options(images))
    assert type(result).__name__ == "Reject" and result.code == code, result


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_sft_rows(n_images: int, images: Path) -> None:
    record = {
        "image": ["cxr.png", "slide.jpg"][:n_images],
        "conversations": [
            {"from": "system", "value": "Be precise."},
            {"from": "human", "value": "<image>\n" * n_images + "Describe."},
            {"from": "gpt", "value": "Consolidation."},
        ],
    }
    if n_images == 0:
        del record["image"]
    row = convert_sft(record, 3, "s.jsonl:4", options(images))
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert len(row["images"]) == n_images
    assert row["extra_info"] == {"index": 3, "source": "s.jsonl:4", "image_meta": "[]"}


def test_caption_and_interleaved(images: Path) -> None:
    caption = convert_caption({"image": ["cxr.png", "slide.jpg"], "text": "Two views."}, 0, "c:1", options(images))
    assert [s["type"] for s in caption["segments"]] == ["image", "image", "text"]
    assert caption["kind"] == "caption" and len(caption["images"]) == 2
    b64 = base64.b64encode((images / "cxr.png").read_bytes()).decode()
    doc = {
        "texts": [None, "A 65-year-old man with chest pain.", None, "Troponin was raised."],
        "image_info": [{"image_base64": b64}, None, {"image_path": "slide.jpg"}, None],
    }
    row = convert_interleaved(doc, 1, "i:1", options(images))
    assert [s["type"] for s in row["segments"]] == ["image", "text", "image", "text"]
    assert row["segments"][1]["text"] == "A 65-year-old man with chest pain." and len(row["images"]) == 2
    assert convert_interleaved({"texts": ["a"], "image_info": []}, 0, "i:2", options(images)).code == "bad_field"
    assert convert_interleaved({"texts": [None], "image_info": [None]}, 0, "i:3", options(images)).code == "missing_field"
    assert convert_caption({"text": "no image"}, 0, "c:2", options(images)).code == "missing_field"


def _write_jsonl(path: Path, records: list) -> Path:
    with path.open("w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def _rl_records(n: int) -> list:
    good = lambda i: {"question": f"Finding {i}?", "answer": "yes" if i % 2 else "no", "query_type": "yes_no",
                      "image": "cxr.png" if i % 3 else "slide.jpg"}
    records = [good(i) for i in range(n)]
    records[4] = "{broken json"
    if n > 9:
        records[9] = {"question": "q", "answer": "yes", "query_type": "yes_no", "image": "missing.png"}
    return records


def _read_shards(directory: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(directory.glob("part-*.parquet"))])


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_job_accounting_and_shards(tmp_path: Path, images: Path) -> None:
    source = _write_jsonl(tmp_path / "rl.jsonl", _rl_records(20))
    job = PrepJob("rl", (str(source),), tmp_path / "out", options(images), rows_per_shard=5)
    manifest = run_prep(job, progress=False)
    assert (manifest["read"], manifest["written"], manifest["rejected"]) == (20, 18, 2)
    assert manifest["rejected_by_reason"] == {"image_not_found": 1, "malformed_json": 1}
    # a shard per window of 5 input records, less that window's rejects (records 4 and 9)
    assert [s["rows"] for s in manifest["shards"]] == [4, 4, 5, 5] and manifest["complete"]
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["index"], r["code"]) for r in rejects] == [(5, "malformed_json"), (10, "image_not_found")]  # line numbers
    table = _read_shards(tmp_path / "out")
    assert table.num_rows == 18 and table.schema.metadata[b"medverl.kind"] == b"rl"
    assert sorted(table.column("extra_info").combine_chunks().field("index").to_pylist()) == [
        i for i in range(20) if i not in (4, 9)
    ]
    with pytest.raises(JobError, match="--resume"):
        run_prep(job, progress=False)


def test_large_windows_are_split_by_bytes(tmp_path: Path, images: Path) -> None:
    source = _write_jsonl(tmp_path / "rl.jsonl", [r for r in _rl_records(12) if isinstance(r, dict)])
    job = PrepJob("rl", (str(source),), tmp_path / "out", options(images), rows_per_shard=100, max_shard_bytes=1)
    manifest = run_prep(job, progress=False)
    assert [s["rows"] for s in manifest["shards"]] == [1] * manifest["written"]  # one row per file past the limit
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [s["file"] for s in manifest["shards"]] + ["manifest.json", "rejects.jsonl", "digests.txt"]
    )
    assert _read_shards(tmp_path / "out").num_rows == manifest["written"]


def test_resume_after_interruption_gives_identical_output(tmp_path: Path, images: Path, monkeypatch) -> None:
    source = _write_jsonl(tmp_path / "rl.jsonl", _rl_records(150))
    reference = PrepJob("rl", (str(source),), tmp_path / "ref", options(images), rows_per_shard=4)
    run_prep(reference, progress=False)

    job = PrepJob("rl", (str(source),), tmp_path / "out", options(images), rows_per_shard=4)
    real_convert, calls = runner._convert, {"n": 0}

    def crash_after_100(task):  # the 26th window of 4 records dies midway
        calls["n"] += 1
        if calls["n"] > 100:
            raise KeyboardInterrupt
        return real_convert(task)

    monkeypatch.setattr(runner, "_convert", crash_after_100)
    with pytest.raises(KeyboardInterrupt):
        run_prep(job, progress=False)
    interrupted = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert not interrupted["complete"] and 0 < interrupted["read"] < 150
    monkeypatch.setattr(runner, "_convert", real_convert)

    other = PrepJob("rl", (str(source),), tmp_path / "out", options(images), rows_per_shard=5)
    with pytest.raises(JobError, match="rows_per_shard: 4 then, 5 now"):
        run_prep(other, resume=True, progress=False)
    manifest = run_prep(job, resume=True, progress=False)
    assert manifest["read"] == manifest["written"] + manifest["rejected"] == 150
    assert _snapshot(tmp_path / "out") == _snapshot(tmp_path / "ref")  # no duplicated or lost row, same bytes


def test_same_input_same_bytes_with_any_worker_count(tmp_path: Path, images: Path) -> None:
    source = _write_jsonl(tmp_path / "rl.jsonl", _rl_records(30))
    one = run_prep(PrepJob("rl", (str(source),), tmp_path / "w1", options(images), rows_per_shard=7), progress=False)
    two = run_prep(
        PrepJob("rl", (str(source),), tmp_path / "w2", options(images), rows_per_shard=7), workers=2, progress=False
    )
    assert one == two
    assert _snapshot(tmp_path / "w1") == _snapshot(tmp_path / "w2")


def test_json_array_and_parquet_inputs(tmp_path: Path, images: Path) -> None:
    records = [r for r in _rl_records(6) if isinstance(r, dict)]
    (tmp_path / "rl.json").write_text(json.dumps(records))
    first = run_prep(PrepJob("rl", (str(tmp_path / "rl.json"),), tmp_path / "a", options(images)), progress=False)
    assert (first["read"], first["written"]) == (5, 5)
    # the RL output is itself a valid input (records already in verl's layout)
    again = run_prep(PrepJob("rl", (str(tmp_path / "a" / "part-00000.parquet"),), tmp_path / "b", options(images)),
                     progress=False)
    assert (again["read"], again["written"]) == (5, 5)


def test_prep_cli(tmp_path: Path, images: Path, capsys) -> None:
    source = _write_jsonl(tmp_path / "vqa.jsonl", _rl_records(8))
    out = tmp_path / "out"
    assert main(["prep", "rl", str(source), "--output", str(out), "--image-root", str(images),
                 "--max-pixels", "50176", "--min-pixels", "3136"]) == 0
    printed = capsys.readouterr().out
    assert "read 8, written 7 in 1 shard(s), rejected 1" in printed and "malformed_json" in printed
    table = _read_shards(out)
    assert table.column("data_source").to_pylist() == ["vqa"] * 7  # default: the input's name
    image = table.column("images").to_pylist()[0][0]
    assert (image["max_pixels"], image["min_pixels"]) == (50176, 3136)
    assert main(["prep", "rl", str(source), "--output", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.ray
def test_ray_data_engine_gives_the_same_bytes(tmp_path: Path, images: Path) -> None:
    ray = pytest.importorskip("ray")
    source = _write_jsonl(tmp_path / "rl.jsonl", _rl_records(40))
    local = run_prep(PrepJob("rl", (str(source),), tmp_path / "local", options(images), rows_per_shard=9),
                     progress=False)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        on_ray = run_prep(PrepJob("rl", (str(source),), tmp_path / "ray", options(images), rows_per_shard=9),
                          progress=False, engine="ray")
    finally:
        ray.shutdown()
    assert on_ray == local
    assert _snapshot(tmp_path / "ray") == _snapshot(tmp_path / "local")


def test_a_dying_worker_fails_the_job_loudly_and_resume_finishes_it(tmp_path: Path, images: Path, monkeypatch) -> None:
    # A reward plugin that kills the process converting records, as the kernel's OOM killer would.
    plugin = tmp_path / "die_in_worker.py"
    plugin.write_text(
        "import multiprocessing, os\n"
        "if os.environ.get('MEDVERL_TEST_DIE') and multiprocessing.parent_process() is not None:\n"
        "    os._exit(9)\n"
    )
    source = _write_jsonl(tmp_path / "rl.jsonl", [r for r in _rl_records(12) if isinstance(r, dict)])
    job = PrepJob("rl", (str(source),), tmp_path / "out", options(images, plugins=(str(plugin),)), rows_per_shard=4)
    monkeypatch.setenv("MEDVERL_TEST_DIE", "1")
    with pytest.raises(RuntimeError, match="a worker process died .* --resume"):
        run_prep(job, workers=2, progress=False)
    monkeypatch.delenv("MEDVERL_TEST_DIE")
    manifest = run_prep(job, workers=2, resume=True, progress=False)
    assert manifest["complete"] and manifest["read"] == manifest["written"] + manifest["rejected"] == 11
