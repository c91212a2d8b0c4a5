"""`medverl prep` on the training splits of the public medical sets, in the layouts their publishers distribute
(SLAKE, VQA-RAD, PathVQA, PMC-VQA, and LLaVA-style conversation files: PubMedVision, LLaVA-Med instruct), and
decontamination against prepared evaluation sets on the way in."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medverl.cli import main


def _image(shade: int, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 16), (shade, 255 - shade, (5 * shade) % 256)).save(buffer, format=fmt)
    return buffer.getvalue()


def _save(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def _slake_row(qid: int, img: str, question: str, answer: str, kind: object, lang: str = "en") -> dict:
    return {"img_id": qid, "img_name": img, "question": question, "answer": answer, "q_lang": lang,
            "location": "Lung", "modality": "CT", "answer_type": kind, "base_type": "vqa",
            "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": qid}


def _hf_parquet(path: Path, rows: list[dict]) -> Path:
    """Rows as the Hub's parquet export writes them: image {bytes, path}, question and answer strings."""
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image), ("question", pa.string()), ("answer", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return _save(path, buffer.getvalue())


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("public")
    slake = root / "slake"
    _save(slake / "imgs" / "xmlab0" / "source.jpg", _image(10))
    _save(slake / "imgs" / "xmlab1" / "source.jpg", _image(20))
    _save(slake / "train.json", json.dumps([
        _slake_row(1, "xmlab0/source.jpg", "Is the liver normal?", "Yes", "CLOSED"),  # closed yes/no
        _slake_row(2, "xmlab0/source.jpg", "Which organ is largest?", "Liver", "CLOSED"),  # other closed
        _slake_row(3, "xmlab1/source.jpg", "What modality is used?", "CT", "OPEN"),  # open
        _slake_row(4, "xmlab1/source.jpg", "肝脏正常吗?", "是", "CLOSED", "zh"),
        _slake_row(5, "xmlab1/source.jpg", "Where is the lesion?", "Left", "MAYBE"),  # not OPEN/CLOSED
        _slake_row(6, "xmlab9/source.jpg", "Is there a mass?", "No", "CLOSED"),  # its image is not in imgs/
        {**_slake_row(7, "xmlab0/source.jpg", "No image?", "No", "CLOSED"), "img_name": None},
    ], ensure_ascii=False))
    _save(slake / "validation.json", json.dumps([
        _slake_row(8, "xmlab1/source.jpg", "Is this an MRI?", "No", "CLOSED")]))
    _save(slake / "test.json", json.dumps([  # the evaluation split: its first question is also in train.json
        _slake_row(9, "xmlab1/source.jpg", "What modality is used?", "CT", "OPEN"),
        _slake_row(10, "xmlab1/source.jpg", "Is the spleen visible?", "Yes", "CLOSED")]))

    _hf_parquet(root / "vqa-rad" / "data" / "train-00000-of-00001-eb8844602202be60.parquet", [
        {"image": {"bytes": _image(30), "path": None}, "question": "is there a pneumothorax?", "answer": "no"},
        {"image": {"bytes": _image(40), "path": None}, "question": "where is the mass?", "answer": "left lung"},
        {"image": None, "question": "is the heart enlarged?", "answer": "yes"},  # no image cell
        {"image": {"bytes": _image(50), "path": None}, "question": "what is shown?", "answer": None},
    ])
    _hf_parquet(root / "vqa-rad" / "data" / "test-00000-of-00001-e5bc3d208bb4deeb.parquet", [
        {"image": {"bytes": _image(30), "path": None}, "question": "is the film rotated?", "answer": "no"}])
    _hf_parquet(root / "path-vqa" / "data" / "train-00000-of-00002-a.parquet", [
        {"image": {"bytes": _image(60, "PNG"), "path": None}, "question": "is this necrosis?", "answer": "yes"}])
    _hf_parquet(root / "path-vqa" / "data" / "train-00001-of-00002-b.parquet", [
        {"image": {"bytes": _image(70, "PNG"), "path": None}, "question": "what is present?", "answer": "granuloma"}])
    _hf_parquet(root / "path-vqa" / "data" / "validation-00000-of-00001-c.parquet", [
        {"image": {"bytes": b"not an image", "path": None}, "question": "is it benign?", "answer": "no"}])

    pmc = root / "pmc-vqa"
    _save(pmc / "figures" / "PMC1_F1.jpg", _image(80))
    _save(pmc / "images" / "PMC2_F2.jpg", _image(90))
    _csv(pmc / "train_2.csv", ["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C",
                               "Choice D", "Answer", "split"], [
        [0, "PMC1_F1.jpg", "A chest CT.", "What is shown?", " A:Effusion ", " B:Mass ", " C:Normal ", " D:Fracture ",
         "B", "train"],
        [1, "PMC1_F1.jpg", "A chest CT.", "Which side?", "A:Left", "B:Right", "", "D:Both", "A", "train"],  # no C
        [2, "PMC1_F1.jpg", "A chest CT.", "Which lobe?", "A:Upper", "B:Lower", "C:Middle", "D:None", "E", "train"],
    ])
    _csv(pmc / "train.csv", ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D",
                             "Answer_label"], [
        ["PMC2_F2.jpg", "What is the uptake pattern?", "Focal uptake pattern", "A:Diffuse uptake pattern",
         "B:Focal uptake pattern", "C:No uptake pattern", "D:Cannot determine", "B"]])

    _save(root / "pubmedvision" / "images" / "pmc_1.jpg", _image(100))
    _save(root / "pubmedvision" / "images" / "pmc_2.jpg", _image(110))
    _save(root / "pubmedvision" / "PubMedVision_InstructionTuning_VQA.json", json.dumps([
        {"id": "pmc_1", "image": ["images/pmc_1.jpg", "images/pmc_2.jpg"], "modality": "CT", "body_part": "Chest",
         "conversations": [{"from": "human", "value": "What do the two panels show?"},
                           {"from": "gpt", "value": "Axial CT slices of the chest."}]},
        {"id": "pmc_2", "image": ["images/pmc_1.jpg"], "conversations": [{"from": "human", "value": "Describe it."}]},
    ]))
    _save(root / "llava-med" / "images" / "34630837_F2.jpg", _image(120))
    _save(root / "llava-med" / "llava_med_instruct_60k_inline_mention.json", json.dumps([
        {"id": "34630837_F2", "image": "34630837_F2.jpg",
         "conversations": [{"from": "human", "value": "<image>\nWhat is the main finding?"},
                           {"from": "gpt", "value": "A lytic lesion of the femur."},
                           {"from": "human", "value": "Is it aggressive?"},
                           {"from": "gpt", "value": "Its margins suggest so."}]},
        {"id": "x", "image": "34630837_F2.jpg", "conversations": [{"from": "robot", "value": "<image>\nHi"}]},
    ]))
    return root


def _prep(kind: str, inputs: list[Path], output: Path, *options: str) -> dict:
    assert main(["prep", kind, *map(str, inputs), "--output", str(output), *options]) in (0, 1)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["complete"] and manifest["read"] == manifest["written"] + manifest["rejected"]
    return manifest


def _rows(output: Path) -> list[dict]:
    return [row for path in sorted(output.glob("part-*.parquet")) for row in pq.read_table(path).to_pylist()]


def _rejects(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "rejects.jsonl").read_text().splitlines()]


def _kinds(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["extra_info"]["question"], r["extra_info"]["query_type"]) for r in rows]


def test_slake_train_and_validation(sets: Path, tmp_path: Path) -> None:
    slake = sets / "slake"
    manifest = _prep("slake", [slake / "train.json", slake / "validation.json"], tmp_path / "out",
                     "--image-root", str(slake / "imgs"))
    rows = _rows(tmp_path / "out")
    assert _kinds(rows) == [("Is the liver normal?", "yes_no"), ("Which organ is largest?", "exact_match"),
                            ("What modality is used?", "jaccard"), ("肝脏正常吗?", "yes_no"),
                            ("Is this an MRI?", "yes_no")]
    assert {r["data_source"] for r in rows} == {"slake"} and {r["extra_info"]["split"] for r in rows} == {"train"}
    assert json.loads(rows[3]["extra_info"]["meta"]) == {"answer_type": "closed", "language": "zh",
                                                         "modality": "CT", "question_type": "Organ"}
    assert (manifest["read"], manifest["written"]) == (8, 5)
    assert {r["source"]: r["code"] for r in _rejects(tmp_path / "out")} == {
        "train.json[4]": "bad_field", "train.json[5]": "image_not_found", "train.json[6]": "missing_field"}


@pytest.mark.parametrize(("kind", "files", "expected", "rejected"), [
    # VQA-RAD: yes/no answers are closed, the others open; a row without image bytes or answer is rejected
    ("vqa_rad", ["vqa-rad/data/train-*.parquet"],
     [("is there a pneumothorax?", "yes_no"), ("where is the mass?", "jaccard")], {"missing_field": 2}),
    # PathVQA: train shards and the validation split; an image that does not decode is rejected
    ("path_vqa", ["path-vqa/data/train-*.parquet", "path-vqa/data/validation-*.parquet"],
     [("is this necrosis?", "yes_no"), ("what is present?", "jaccard")], {"bad_image": 1}),
])
def test_hf_parquet_layouts(sets: Path, tmp_path: Path, kind: str, files: list[str], expected: list, rejected: dict
                            ) -> None:
    inputs = [path for pattern in files for path in sorted(sets.glob(pattern))]
    manifest = _prep(kind, inputs, tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert _kinds(rows) == expected and {r["data_source"] for r in rows} == {kind}
    assert manifest["rejected_by_reason"] == rejected
    assert all(len(r["images"]) == 1 and r["images"][0]["bytes"] for r in rows)


def test_pmc_vqa_v2_and_v1_csv(sets: Path, tmp_path: Path) -> None:
    pmc = sets / "pmc-vqa"
    manifest = _prep("pmc_vqa", [pmc / "train_2.csv"], tmp_path / "v2", "--image-root", str(pmc / "figures"))
    [row] = _rows(tmp_path / "v2")
    assert (row["extra_info"]["query_type"], row["extra_info"]["options"], row["reward_model"]["ground_truth"]) == (
        "multiple_choice", ["Effusion", "Mass", "Normal", "Fracture"], "B")
    assert "A. Effusion" in row["prompt"][-1]["content"]
    assert {r["source"]: r["code"] for r in _rejects(tmp_path / "v2")} == {
        "train_2.csv:3": "missing_field", "train_2.csv:4": "invalid_reference"}  # no choice C; answer E of A-D
    assert manifest["read"] == 3
    _prep("pmc_vqa", [pmc / "train.csv"], tmp_path / "v1", "--image-root", str(pmc / "images"))
    [row] = _rows(tmp_path / "v1")
    assert row["reward_model"]["ground_truth"] == "B"  # Answer_label, not the Answer text


def test_llava_style_conversations(sets: Path, tmp_path: Path) -> None:
    vision = sets / "pubmedvision"
    manifest = _prep("llava", [vision / "PubMedVision_InstructionTuning_VQA.json"], tmp_path / "pmv",
                     "--image-root", str(vision))
    [row] = _rows(tmp_path / "pmv")
    # PubMedVision's turns name no <image>: one per image opens the first human turn
    assert row["messages"][0] == {"role": "user", "content": "<image>\n<image>\nWhat do the two panels show?"}
    assert len(row["images"]) == 2 and manifest["rejected_by_reason"] == {"empty_conversation": 1}
    med = sets / "llava-med"
    manifest = _prep("llava", [med / "llava_med_instruct_60k_inline_mention.json"], tmp_path / "med",
                     "--image-root", str(med / "images"))
    [row] = _rows(tmp_path / "med")
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
    assert row["messages"][0]["content"].count("<image>") == 1 and len(row["images"]) == 1
    assert manifest["rejected_by_reason"] == {"unknown_role": 1}


def test_decontamination_rejects_what_the_evaluation_sets_hold(sets: Path, tmp_path: Path) -> None:
    evals = tmp_path / "eval"
    assert main(["eval", "prepare", "slake", "--source", str(sets / "slake"), "--output", str(evals / "slake")]) == 0
    assert main(["eval", "prepare", "vqa_rad", "--source", str(sets / "vqa-rad"), "--output",
                 str(evals / "vqa_rad")]) == 0
    slake = sets / "slake"
    against = ["--decontaminate-against", str(evals / "slake"), str(evals / "vqa_rad")]
    manifest = _prep("slake", [slake / "train.json"], tmp_path / "slake", "--image-root", str(slake / "imgs"),
                     *against)
    # "What modality is used?" is a SLAKE test question; xmlab1's image is in the test split too
    dropped = {r["source"]: (r["code"], r["reason"]) for r in _rejects(tmp_path / "slake")
               if r["code"].startswith("contaminated")}
    assert set(dropped) == {"train.json[2]", "train.json[3]"}
    assert dropped["train.json[2]"][0] == "contaminated:slake" and "the question is in slake" in dropped[
        "train.json[2]"][1]
    assert manifest["rejected_by_reason"]["contaminated:slake"] == 2
    manifest = _prep("vqa_rad", sorted((sets / "vqa-rad" / "data").glob("train-*.parquet")), tmp_path / "rad",
                     *against)
    assert manifest["rejected_by_reason"]["contaminated:vqa_rad"] == 1  # the test split reuses an image
    assert [r["extra_info"]["question"] for r in _rows(tmp_path / "rad")] == ["where is the mass?"]


def test_decontaminating_against_a_directory_that_is_not_prepared_is_a_usage_error(sets: Path, tmp_path: Path,
                                                                                   capsys) -> None:
    slake = sets / "slake"
    assert main(["prep", "slake", str(slake / "train.json"), "--output", str(tmp_path / "out"),
                 "--decontaminate-against", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err and not (tmp_path / "out" / "manifest.json").exists()


def test_public_sets_load_through_verls_datasets(sets: Path, tmp_path: Path, tiny_processor: Path) -> None:
    from medverl.training.validate import validate

    slake, med = sets / "slake", sets / "llava-med"
    _prep("slake", [slake / "train.json"], tmp_path / "slake", "--image-root", str(slake / "imgs"))
    _prep("pmc_vqa", [sets / "pmc-vqa" / "train_2.csv"], tmp_path / "pmc", "--image-root",
          str(sets / "pmc-vqa" / "figures"))
    _prep("llava", [sets / "pubmedvision" / "PubMedVision_InstructionTuning_VQA.json"], tmp_path / "pmv",
          "--image-root", str(sets / "pubmedvision"))
    _prep("llava", [med / "llava_med_instruct_60k_inline_mention.json"], tmp_path / "med", "--image-root",
          str(med / "images"))
    for name in ("slake", "pmc", "pmv", "med"):
        report = validate(tmp_path / name, str(tiny_processor), max_length=2048)
        assert report.ok and not report.problems, (name, report.problems)
