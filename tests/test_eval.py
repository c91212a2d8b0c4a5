"""Evaluation end to end: each benchmark's real on-disk format -> RL parquet -> scores, tables, chart; the
common harness's rules side by side; decontamination on planted duplicates."""

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from medverl.training.tiny_qwen import save_tiny_processor

from medverl.cli import main
from medverl.data.validate import validate
from medverl.eval.decontaminate import decontaminate
from medverl.eval.run import chat_messages
from medverl.eval.score import load_rows, score_predictions


def _png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _hf_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = {k: image if k.startswith("image") else pa.string() for k in rows[0]}
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(list(fields.items()))), path)


RED, GREEN, BLUE = _png((200, 30, 30)), _png((30, 200, 30)), _png((30, 30, 200))


def write_sources(root: Path) -> dict[str, Path]:
    """A few questions of every benchmark, in the file layout and field names each distribution ships."""
    src = {}
    src["vqa_rad"] = root / "vqa-rad"
    _hf_parquet(src["vqa_rad"] / "data" / "test-00000-of-00001.parquet", [
        {"image": {"bytes": RED, "path": "synpic1.jpg"}, "question": "is there a pleural effusion?", "answer": "no"},
        {"image": {"bytes": GREEN, "path": "synpic2.jpg"}, "question": "is the heart enlarged?", "answer": "yes"},
        {"image": {"bytes": BLUE, "path": "synpic3.jpg"}, "question": "where is the lesion?", "answer": "right upper lobe"},
    ])
    src["path_vqa"] = root / "path-vqa"
    _hf_parquet(src["path_vqa"] / "data" / "test-00000-of-00002.parquet", [
        {"image": {"bytes": RED, "path": None}, "question": "does this image show necrosis?", "answer": "yes"},
        {"image": {"bytes": GREEN, "path": None}, "question": "what is present?", "answer": "granuloma"},
    ])
    src["slake"] = root / "slake"
    (src["slake"] / "imgs" / "xmlab1").mkdir(parents=True)
    (src["slake"] / "imgs" / "xmlab1" / "source.jpg").write_bytes(GREEN)
    (src["slake"] / "test.json").write_text(json.dumps([
        {"img_name": "xmlab1/source.jpg", "question": "Is the lung healthy?", "answer": "No", "answer_type": "CLOSED",
         "q_lang": "en", "modality": "X-Ray", "content_type": "Abnormality"},
        {"img_name": "xmlab1/source.jpg", "question": "肺部健康吗?", "answer": "否", "answer_type": "CLOSED",
         "q_lang": "zh", "modality": "X-Ray", "content_type": "Abnormality"},
        {"img_name": "xmlab1/source.jpg", "question": "Which side is the lesion on?", "answer": "Left",
         "answer_type": "CLOSED", "q_lang": "en", "modality": "X-Ray", "content_type": "Position"},
        {"img_name": "xmlab1/source.jpg", "question": "What disease is shown?", "answer": "Pneumonia",
         "answer_type": "OPEN", "q_lang": "en", "modality": "X-Ray", "content_type": "Abnormality"},
        {"img_name": "xmlab9/missing.jpg", "question": "Is there a mass?", "answer": "Yes", "answer_type": "CLOSED",
         "q_lang": "en", "modality": "CT", "content_type": "Abnormality"},  # its image is missing: a reject
    ], ensure_ascii=False))
    src["pmc_vqa"] = root / "pmc-vqa"
    (src["pmc_vqa"] / "images").mkdir(parents=True)
    (src["pmc_vqa"] / "images" / "PMC1_fig1.jpg").write_bytes(BLUE)
    with (src["pmc_vqa"] / "test_2.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D",
                         "Answer_label"])
        writer.writerow(["PMC1_fig1.jpg", "What imaging modality, with contrast, is used?", "B:CT",
                         "A:MRI", "B:CT", "C:Ultrasound, doppler", "D:PET", "B"])
    src["omnimedvqa"] = root / "omnimedvqa"
    (src["omnimedvqa"] / "Images" / "Derm").mkdir(parents=True)
    (src["omnimedvqa"] / "Images" / "Derm" / "a.png").write_bytes(RED)
    (src["omnimedvqa"] / "QA_information" / "Open-access").mkdir(parents=True)
    (src["omnimedvqa"] / "QA_information" / "Open-access" / "Derm.json").write_text(json.dumps([
        {"question_id": "Derm_0", "dataset": "Derm", "question_type": "Disease Diagnosis",
         "question": "What is the diagnosis?", "gt_answer": "Melanoma", "option_A": "Nevus", "option_B": "Melanoma",
         "option_C": "Psoriasis", "option_D": "Eczema", "image_path": "Images/Derm/a.png",
         "modality_type": "Dermoscopy"},
    ]))
    src["mmmu_hm"] = root / "mmmu"
    _hf_parquet(src["mmmu_hm"] / "Clinical_Medicine" / "validation-00000-of-00001.parquet", [
        {"id": "validation_Clinical_Medicine_1", "question": "<image 1> What does the smear show?",
         "options": "['Malaria', 'Babesiosis', 'Normal']", "answer": "A", "image_1": {"bytes": GREEN, "path": "a"},
         "image_2": None, "question_type": "multiple-choice"},
        {"id": "validation_Clinical_Medicine_2", "question": "How many cells are in <image 1>?", "options": "[]",
         "answer": "12", "image_1": {"bytes": RED, "path": "b"}, "image_2": None, "question_type": "open"},
    ])
    src["medxpertqa_mm"] = root / "medxpertqa"
    (src["medxpertqa_mm"] / "MM").mkdir(parents=True)
    (src["medxpertqa_mm"] / "images").mkdir()
    (src["medxpertqa_mm"] / "images" / "MM-1-a.jpeg").write_bytes(BLUE)
    (src["medxpertqa_mm"] / "MM" / "test.jsonl").write_text(json.dumps({
        "id": "MM-1", "question": "A 60-year-old man... What is the next step? Answer Choices: (A) CT (B) MRI (C) "
        "Biopsy (D) Observe (E) Surgery", "options": {"A": "CT", "B": "MRI", "C": "Biopsy", "D": "Observe",
                                                       "E": "Surgery"},
        "label": "C", "images": ["MM-1-a.jpeg"], "medical_task": "Treatment", "question_type": "Reasoning"}) + "\n")
    return src


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    out = {}
    for benchmark, source in write_sources(root / "sources").items():
        out[benchmark] = root / "prepared" / benchmark
        assert main(["eval", "prepare", benchmark, "--source", str(source), "--output", str(out[benchmark])]) == 0
    return out


EXPECTED = {  # benchmark: [(query_type, answer_type, language)] in order
    "vqa_rad": [("yes_no", "closed", "en"), ("yes_no", "closed", "en"), ("jaccard", "open", "en")],
    "path_vqa": [("yes_no", "closed", "en"), ("jaccard", "open", "en")],
    "slake": [("yes_no", "closed", "en"), ("yes_no", "closed", "zh"), ("exact_match", "closed", "en"),
              ("jaccard", "open", "en")],
    "pmc_vqa": [("multiple_choice", "closed", "en")],
    "omnimedvqa": [("multiple_choice", "closed", "en")],
    "mmmu_hm": [("multiple_choice", "closed", "en"), ("exact_match", "open", "en")],
    "medxpertqa_mm": [("multiple_choice", "closed", "en")],
}


def test_every_benchmark_converts_with_query_type_and_meta(prepared: dict[str, Path]) -> None:
    for benchmark, expected in EXPECTED.items():
        manifest = json.loads((prepared[benchmark] / "manifest.json").read_text())
        rows = sorted(load_rows([prepared[benchmark]]).values(), key=lambda r: r["extra_info"]["index"])
        got = [(r["extra_info"]["query_type"], json.loads(r["extra_info"]["meta"])["answer_type"],
                json.loads(r["extra_info"]["meta"])["language"]) for r in rows]
        assert got == expected, benchmark
        assert all(r["data_source"] == benchmark and r["extra_info"]["split"] == "test" for r in rows)
        assert manifest["read"] == manifest["written"] + manifest["rejected"]
    slake = json.loads((prepared["slake"] / "manifest.json").read_text())
    assert slake["rejected_by_reason"] == {"image_not_found": 1}
    reject = json.loads((prepared["slake"] / "rejects.jsonl").read_text())
    assert reject["source"] == "slake.jsonl:5" and "missing.jpg" in reject["reason"]


def test_benchmark_quirks_are_read_right(prepared: dict[str, Path]) -> None:
    pmc = next(iter(load_rows([prepared["pmc_vqa"]]).values()))
    assert pmc["extra_info"]["options"] == ["MRI", "CT", "Ultrasound, doppler", "PET"]  # "A:" gone, comma kept
    assert pmc["reward_model"]["ground_truth"] == "B"
    omni = next(iter(load_rows([prepared["omnimedvqa"]]).values()))
    assert omni["reward_model"]["ground_truth"] == "B"  # gt_answer was the option text
    assert json.loads(omni["extra_info"]["meta"])["modality"] == "Dermoscopy"
    mmmu = sorted(load_rows([prepared["mmmu_hm"]]).values(), key=lambda r: r["extra_info"]["index"])
    assert mmmu[0]["extra_info"]["options"] == ["Malaria", "Babesiosis", "Normal"]  # a string of a Python list
    assert mmmu[1]["extra_info"]["question"] == "How many cells are in <image>?"
    med = next(iter(load_rows([prepared["medxpertqa_mm"]]).values()))
    assert "Answer Choices" not in med["extra_info"]["question"] and len(med["extra_info"]["options"]) == 5


def test_prepared_benchmarks_load_through_verl(prepared: dict[str, Path], tmp_path: Path) -> None:
    model = str(save_tiny_processor(tmp_path / "tiny"))
    for benchmark in ("slake", "mmmu_hm", "pmc_vqa"):
        report = validate(prepared[benchmark], model, max_length=2048)
        assert report.ok and report.rows == report.kept_by_verl, (benchmark, report.problems)


def _predictions(path: Path, answers: dict[tuple[str, int], str]) -> Path:
    path.write_text("".join(json.dumps({"data_source": s, "index": i, "response": r}) + "\n"
                            for (s, i), r in answers.items()))
    return path


def _wrap(answer: str) -> str:
    return f"<think>looking</think><answer>{answer}</answer>"


def test_scores_tables_and_chart(prepared: dict[str, Path], tmp_path: Path) -> None:
    dirs = [str(d) for d in prepared.values()]
    good = {("vqa_rad", 0): _wrap("No."), ("vqa_rad", 1): _wrap("yes"), ("vqa_rad", 2): _wrap("right upper lobe"),
            ("path_vqa", 0): _wrap("Yes"), ("path_vqa", 1): _wrap("Granuloma."),
            ("slake", 0): _wrap("no"), ("slake", 1): _wrap("否"), ("slake", 2): _wrap("left"),
            ("slake", 3): _wrap("pneumonia"), ("pmc_vqa", 0): _wrap("(B) CT"), ("omnimedvqa", 0): _wrap("Melanoma"),
            ("mmmu_hm", 0): _wrap("A"), ("mmmu_hm", 1): _wrap("12"), ("medxpertqa_mm", 0): _wrap("C")}
    weak = {("vqa_rad", 0): "There is a nodule.",  # no tags: a parse failure, scores 0
            ("vqa_rad", 1): _wrap("yes"), ("vqa_rad", 2): _wrap("left lower lobe"),
            ("slake", 0): _wrap("yes"), ("pmc_vqa", 0): _wrap("B or C"), ("mmmu_hm", 0): _wrap("A")}
    out = tmp_path / "report"
    assert main(["eval", "score", "--data", *dirs, "--run", f"medverl={_predictions(tmp_path / 'a.jsonl', good)}",
                 "--run", f"base={_predictions(tmp_path / 'b.jsonl', weak)}", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(m["acc"] == 1.0 for m in metrics["medverl"].values())
    vqa = metrics["base"]["vqa_rad"]
    assert (vqa["n"], vqa["closed_n"], vqa["open_n"], vqa["parse_failures"]) == (3, 2, 1, 1)
    assert vqa["closed_acc"] == 0.5 and vqa["open_recall"] == pytest.approx(1 / 3)  # "lobe" of right upper lobe
    assert metrics["base"]["pmc_vqa"]["parse_failures"] == 1 and metrics["base"]["path_vqa"]["missing"] == 2
    table = (out / "table.csv").read_text().splitlines()
    assert table[0] == "Model,MMMU-H&M,VQA-RAD,SLAKE,PathVQA,PMC-VQA,OmniMedVQA,MedXpertQA,Avg."
    assert table[1] == "medverl,100.0,100.0,100.0,100.0,100.0,100.0,100.0,100.0"
    report = (out / "report.md").read_text()
    assert "| Model | MMMU-H&M | VQA-RAD |" in report and "by language:" in report and "| slake | zh | 1 | 1.000 |" in report
    chart = Image.open(out / "table.png")
    assert chart.format == "PNG" and chart.size[0] >= 600
    first = (out / "samples.jsonl").read_bytes()
    assert main(["eval", "score", "--data", *dirs, "--run", f"medverl={tmp_path / 'a.jsonl'}",
                 "--run", f"base={tmp_path / 'b.jsonl'}", "--output", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "samples.jsonl").read_bytes() == first  # no randomness anywhere


def test_the_common_harness_rules_side_by_side(prepared: dict[str, Path], tmp_path: Path) -> None:
    rows = load_rows([prepared["vqa_rad"], prepared["pmc_vqa"]])
    predictions = {("vqa_rad", 0): _wrap("There is a nodule"), ("pmc_vqa", 0): _wrap("computed tomography maybe")}
    ours = {(s.data_source, s.index): s for s in score_predictions(rows, predictions, "m")}
    compat = {(s.data_source, s.index): s for s in score_predictions(rows, predictions, "m", compat="medevalkit")}
    assert ours[("vqa_rad", 0)].acc == 0.0 and compat[("vqa_rad", 0)].acc == 1.0  # "nodule" read as "no"
    assert ours[("pmc_vqa", 0)].acc == 0.0 and not ours[("pmc_vqa", 0)].parsed
    assert compat[("pmc_vqa", 0)].reason == "fallback: most similar option"


def test_predictions_that_do_not_line_up_are_rejected(prepared: dict[str, Path], tmp_path: Path, capsys) -> None:
    lines = [{"data_source": "vqa_rad", "index": 0, "response": _wrap("no")},
             {"data_source": "vqa_rad", "index": 0, "response": "again"},  # a second prediction
             {"data_source": "vqa_rad", "index": 99, "response": "x"},  # no such question
             {"data_source": "vqa_rad", "response": "x"}]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{broken\n")
    out = tmp_path / "report"
    assert main(["eval", "score", "--data", str(prepared["vqa_rad"]), "--run", f"m={preds}", "--output", str(out)]) == 1
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["source"], r["code"]) for r in rejects] == [
        ("p.jsonl:2", "duplicate_prediction"), ("p.jsonl:3", "unknown_question"), ("p.jsonl:4", "missing_field"),
        ("p.jsonl:5", "malformed_json")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["read"], manifest["written"], manifest["rejected"]) == (5, 1, 4)
    assert "4 row(s) could not be scored" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["m"]["vqa_rad"]["missing"] == 2  # the questions without a prediction score 0
    assert main(["eval", "score", "--data", str(tmp_path), "--run", f"m={preds}", "--output", str(tmp_path / "r2")]) == 2
    assert "has no manifest.json" in capsys.readouterr().err


def test_decontamination_finds_planted_duplicates(prepared: dict[str, Path], tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "same.png").write_bytes(RED)  # the bytes of a VQA-RAD and a PathVQA test image
    (images / "other.png").write_bytes(_png((90, 90, 90)))
    records = [
        {"question": "Is the aorta dilated?", "answer": "no", "query_type": "yes_no", "image": "same.png"},
        {"question": "IS THE HEART ENLARGED", "answer": "yes", "query_type": "yes_no", "image": "other.png"},
        {"question": "Is the aorta dilated?", "answer": "no", "query_type": "yes_no", "image": "other.png"},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["prep", "rl", str(tmp_path / "train.jsonl"), "--output", str(tmp_path / "train"),
                 "--image-root", str(images)]) == 0
    against = [prepared["vqa_rad"], prepared["path_vqa"]]
    found, counted = decontaminate(tmp_path / "train", against)
    assert (counted["read"], counted["written"], counted["rejected"]) == (3, 1, 2)
    reasons = {index: r for (_, index), r in found.matches.items()}
    assert sorted(reasons) == [0, 1] and found.read == 3
    assert reasons[0][0].startswith("contaminated_image") and reasons[1][0].startswith("contaminated_question")
    assert main(["eval", "decontaminate", str(tmp_path / "train"), "--against", *map(str, against),
                 "--drop", str(tmp_path / "clean")]) == 0
    manifest = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    assert (manifest["read"], manifest["written"], manifest["rejected"]) == (3, 1, 2)
    assert manifest["rejected_by_reason"] == {"contaminated_image": 1, "contaminated_question": 1}
    kept = pq.read_table(next((tmp_path / "clean").glob("part-*.parquet")))
    assert kept.column("extra_info").to_pylist()[0]["index"] == 2
    assert manifest["kind"] == "rl" and manifest["template"]["name"] == "think_answer"  # still the training data
    assert validate(tmp_path / "clean").ok


def test_generation_messages_put_each_image_where_its_placeholder_was(prepared: dict[str, Path]) -> None:
    row = next(r for r in pq.read_table(next(prepared["mmmu_hm"].glob("part-*.parquet"))).to_pylist())
    messages = chat_messages(row)
    parts = messages[-1]["content"]
    kinds = [p["type"] for p in parts]
    assert kinds[0] == "image_url" and kinds.count("image_url") == len(row["images"]) == 1
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
