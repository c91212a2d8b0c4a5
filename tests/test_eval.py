"""Evaluation end to end: each benchmark's real on-disk layout -> RL parquet -> scores, tables, chart; MedEvalKit's
rule path side by side; decontamination on planted duplicates."""

import io
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from medverl.cli import main
from medverl.eval.compat import CompatVerdict, register_compat_mode
from medverl.eval.decontaminate import decontaminate
from medverl.eval.run import row_messages
from medverl.eval.samples import LAYOUTS, image_bytes, write_samples
from medverl.eval.score import load_rows, score_predictions
from medverl.training.validate import validate

# what `eval prepare` makes of each benchmark's sample (medverl.eval.samples): (rows written, rows rejected)
PREPARED = {"vqa_rad": (3, 0), "path_vqa": (3, 0), "slake": (5, 1), "pmc_vqa": (2, 0), "omnimedvqa": (2, 0),
            "mmmu_hm": (4, 0), "medxpertqa_mm": (2, 0)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    out = {}
    for benchmark, source in write_samples(root / "sources").items():
        out[benchmark] = root / "prepared" / benchmark
        assert main(["eval", "prepare", benchmark, "--source", str(source), "--output", str(out[benchmark])]) == 0
    return out


EXPECTED = {  # benchmark: [(query_type, answer_type, language)] in order
    "vqa_rad": [("yes_no", "closed", "en"), ("yes_no", "closed", "en"), ("jaccard", "open", "en")],
    "path_vqa": [("yes_no", "closed", "en"), ("jaccard", "open", "en"), ("yes_no", "closed", "en")],
    "slake": [("yes_no", "closed", "en"), ("yes_no", "closed", "zh"), ("exact_match", "closed", "en"),
              ("jaccard", "open", "en"), ("jaccard", "open", "zh")],
    "pmc_vqa": [("multiple_choice", "closed", "en")] * 2,
    "omnimedvqa": [("multiple_choice", "closed", "en")] * 2,
    "mmmu_hm": [("multiple_choice", "closed", "en"), ("multiple_choice", "closed", "en"), ("exact_match", "open", "en"),
                ("multiple_choice", "closed", "en")],
    "medxpertqa_mm": [("multiple_choice", "closed", "en")] * 2,
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
        assert (manifest["written"], manifest["rejected"]) == PREPARED[benchmark]
    slake = json.loads((prepared["slake"] / "manifest.json").read_text())
    assert slake["rejected_by_reason"] == {"image_not_found": 1}
    reject = json.loads((prepared["slake"] / "rejects.jsonl").read_text())
    assert reject["source"] == "slake:6" and "xmlab9" in reject["reason"]


def _rows(directory: Path) -> list[dict]:
    return sorted(load_rows([directory]).values(), key=lambda r: r["extra_info"]["index"])


def _meta(row: dict) -> dict:
    return json.loads(row["extra_info"]["meta"])


def test_benchmark_quirks_are_read_right(prepared: dict[str, Path]) -> None:
    pmc = _rows(prepared["pmc_vqa"])  # test_2.csv, images in figures/
    assert pmc[0]["extra_info"]["options"] == ["Right Coronary", "Left Anterior Descending", "Left Circumflex",
                                               "Posterior Descending"]  # " B: " prefixes gone
    assert pmc[1]["extra_info"]["options"] == ["MRI", "CT", "Ultrasound, doppler", "PET"]  # comma kept
    assert [r["reward_model"]["ground_truth"] for r in pmc] == ["B", "B"]
    assert _meta(pmc[0])["medevalkit"]["choices"][1] == " B: Left Anterior Descending "  # as MedEvalKit reads it
    chest, derm = _rows(prepared["omnimedvqa"])  # Open-access only
    assert derm["reward_model"]["ground_truth"] == "B"  # gt_answer was the option text
    assert _meta(derm)["modality"] == "Dermoscopy" and _meta(chest)["modality"] == "X-Ray"  # the "modality" key
    assert _meta(chest)["access"] == "Open-access"
    mmmu = _rows(prepared["mmmu_hm"])
    assert mmmu[0]["extra_info"]["options"] == ["Malaria", "Babesiosis", "Normal smear"]  # a string of a Python list
    # image options: every image shown, named in the question and the options
    assert mmmu[1]["extra_info"]["options"] == ["Image 1", "Image 2", "Image 3", "Image 4"]
    assert mmmu[1]["extra_info"]["question"].startswith("Image 1: <image>\nImage 2: <image>\n")
    assert mmmu[1]["extra_info"]["question"].count("<image>") == 4 and _meta(mmmu[1])["image_options"] is True
    assert _meta(mmmu[1])["medevalkit"]["choices"] == ["<image 1>", "<image 2>", "<image 3>", "<image 4>"]
    assert mmmu[2]["extra_info"]["question"] == "How many cells are in <image>?"
    assert mmmu[3]["extra_info"]["question"] == "Compare <image> and <image>: which is the salt form?"
    assert _meta(mmmu[3])["subject"] == "Pharmacy"
    med = _rows(prepared["medxpertqa_mm"])
    assert "Answer Choices" not in med[0]["extra_info"]["question"] and len(med[0]["extra_info"]["options"]) == 5
    images = pq.read_table(next(prepared["medxpertqa_mm"].glob("part-*.parquet"))).column("images").to_pylist()
    assert [len(i) for i in images] == [1, 2]


def test_read_options_restricted_part_and_mmmu_split(tmp_path: Path) -> None:
    sources = write_samples(tmp_path / "src")
    out = tmp_path / "omni"
    assert main(["eval", "prepare", "omnimedvqa", "--source", str(sources["omnimedvqa"]), "--output", str(out),
                 "--include-restricted"]) == 0  # written, one rejected: the restricted part's images are not distributed
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["written"], manifest["rejected_by_reason"]) == (2, {"image_not_found": 1})
    dev = tmp_path / "dev"
    assert main(["eval", "prepare", "mmmu_hm", "--source", str(sources["mmmu_hm"]), "--output", str(dev),
                 "--split", "dev"]) == 0
    assert [_meta(r)["id"] for r in _rows(dev)] == ["dev_Pharmacy_1"]
    (sources["pmc_vqa"] / "figures").rename(sources["pmc_vqa"] / "images")  # the other image folder
    (sources["pmc_vqa"] / "test_2.csv").rename(sources["pmc_vqa"] / "test.csv")  # the v1 file name
    assert main(["eval", "prepare", "pmc_vqa", "--source", str(sources["pmc_vqa"]), "--output",
                 str(tmp_path / "pmc")]) == 0


def test_shipped_samples_are_the_generated_ones(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[1] / "examples" / "eval"
    fresh = tmp_path / "fresh"
    write_samples(fresh)
    names = sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(shipped)) for p in shipped.rglob("*") if p.is_file()
                           and p.name != "README.md")
    for name in names:
        if name.endswith(".parquet"):  # the writer's version is in the file's metadata: compare the tables
            assert pq.read_table(fresh / name).equals(pq.read_table(shipped / name)), name
        else:
            assert (fresh / name).read_bytes() == (shipped / name).read_bytes(), name


def test_prepared_benchmarks_load_through_verl(prepared: dict[str, Path], tiny_processor: Path) -> None:
    model = str(tiny_processor)
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
            ("path_vqa", 0): _wrap("Yes"), ("path_vqa", 1): _wrap("Granuloma."), ("path_vqa", 2): _wrap("no"),
            ("slake", 0): _wrap("no"), ("slake", 1): _wrap("否"), ("slake", 2): _wrap("left"),
            ("slake", 3): _wrap("pneumonia"), ("slake", 4): _wrap("肺"), ("pmc_vqa", 0): _wrap("B"),
            ("pmc_vqa", 1): _wrap("(B) CT"), ("omnimedvqa", 0): _wrap("X-Ray"), ("omnimedvqa", 1): _wrap("Melanoma"),
            ("mmmu_hm", 0): _wrap("A"), ("mmmu_hm", 1): _wrap("C"), ("mmmu_hm", 2): _wrap("12"),
            ("mmmu_hm", 3): _wrap("B"), ("medxpertqa_mm", 0): _wrap("C"), ("medxpertqa_mm", 1): _wrap("A")}
    weak = {("vqa_rad", 0): "There is a nodule.",  # no tags: a parse failure, scores 0
            ("vqa_rad", 1): _wrap("yes"), ("vqa_rad", 2): _wrap("left lower lobe"),
            ("slake", 0): _wrap("yes"), ("pmc_vqa", 1): _wrap("B or C"), ("mmmu_hm", 0): _wrap("A")}
    out = tmp_path / "report"
    assert main(["eval", "score", "--data", *dirs, "--run", f"medverl={_predictions(tmp_path / 'a.jsonl', good)}",
                 "--run", f"base={_predictions(tmp_path / 'b.jsonl', weak)}", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(m["acc"] == 1.0 for m in metrics["medverl"].values())
    vqa = metrics["base"]["vqa_rad"]
    assert (vqa["n"], vqa["closed_n"], vqa["open_n"], vqa["parse_failures"]) == (3, 2, 1, 1)
    assert vqa["closed_acc"] == 0.5 and vqa["open_recall"] == pytest.approx(1 / 3)  # "lobe" of right upper lobe
    assert metrics["base"]["pmc_vqa"]["parse_failures"] == 1 and metrics["base"]["path_vqa"]["missing"] == 3
    table = (out / "table.csv").read_text().splitlines()
    assert table[0] == "Model,MMMU-H&M,VQA-RAD,SLAKE,PathVQA,PMC-VQA,OmniMedVQA,MedXpertQA,Avg."
    assert table[1:3] == ["Qwen3-VL-4B (published),50.7,59.2,71.9,42.3,50.7,78.0,22.8,53.7",
                          "InfiMed2-4B (published),52.3,62.1,82.8,62.1,59.4,83.0,23.1,60.7"]
    # a few questions each: samples (*), never set against the published full-benchmark numbers (OmniMedVQA's
    # size is not recorded)
    assert table[3] == "medverl,100.0*,100.0*,100.0*,100.0*,100.0*,100.0,100.0*,100.0*"
    assert table[6] == "medverl − InfiMed2-4B (published),-,-,-,-,-,+17.0,-,-"
    assert len(table) == 1 + 2 + 2 + 4  # published, runs, each run against each published row
    assert "| InfiMed2-4B (published) | 52.3 | 62.1 |" in (out / "table.md").read_text()
    assert "*: scored on a sample" in (out / "table.md").read_text()
    report = (out / "report.md").read_text()
    assert "| Model | MMMU-H&M | VQA-RAD |" in report and "by language:" in report and "| slake | zh | 2 | 1.000 |" in report
    chart = Image.open(out / "table.png")
    assert chart.format == "PNG" and chart.size[0] >= 600
    first = (out / "samples.jsonl").read_bytes()
    assert main(["eval", "score", "--data", *dirs, "--run", f"medverl={tmp_path / 'a.jsonl'}",
                 "--run", f"base={tmp_path / 'b.jsonl'}", "--output", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "samples.jsonl").read_bytes() == first  # no randomness anywhere


def test_the_common_harness_rules_side_by_side(prepared: dict[str, Path], tmp_path: Path) -> None:
    rows = load_rows([prepared["vqa_rad"], prepared["pmc_vqa"]])
    predictions = {("vqa_rad", 0): _wrap("There is a nodule"), ("pmc_vqa", 1): _wrap("computed tomography maybe")}
    ours = {(s.data_source, s.index): s for s in score_predictions(rows, predictions, "m")}
    compat = {(s.data_source, s.index): s for s in score_predictions(rows, predictions, "m", compat="medevalkit")}
    assert ours[("vqa_rad", 0)].acc == 0.0 and compat[("vqa_rad", 0)].acc == 1.0  # "nodule" read as "no"
    assert ours[("pmc_vqa", 1)].acc == 0.0 and not ours[("pmc_vqa", 1)].parsed
    assert compat[("pmc_vqa", 1)].reason == "fallback: most similar choice" and not compat[("pmc_vqa", 1)].parsed


def _coin(response: str, ground_truth: object, extra_info: dict, meta: dict, rng) -> CompatVerdict:
    """A harness that guesses: right on heads, never reading the answer."""
    return CompatVerdict(float(rng.random() < 0.5), False, "", "fallback: coin")


def test_a_registered_compat_mode_scores_and_seeds_per_benchmark(prepared: dict[str, Path], tmp_path: Path,
                                                                  capsys) -> None:
    register_compat_mode("coin", seed=7)(_coin)
    rows = load_rows([prepared["vqa_rad"], prepared["path_vqa"]])
    scores = score_predictions(rows, {key: "x" for key in rows}, "m", compat="coin")
    rng = random.Random(7)
    draws = [rng.random() < 0.5 for _ in range(3)]  # each benchmark's draws start from the seed
    assert [s.acc for s in scores] == [float(d) for d in draws * 2]
    assert all(s.parse_failure and s.reason == "fallback: coin" for s in scores)
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"data_source": "vqa_rad", "index": 0, "response": "x"}) + "\n")
    argv = ["eval", "score", "--data", str(prepared["vqa_rad"]), "--run", f"m={preds}", "--output"]
    assert main([*argv, str(tmp_path / "coin"), "--compat", "coin"]) == 0  # an option as soon as it is registered
    with pytest.raises(SystemExit):
        main([*argv, str(tmp_path / "none"), "--compat", "coins"])
    assert "invalid choice: 'coins'" in capsys.readouterr().err


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
    (images / "same.jpg").write_bytes(image_bytes(10, "JPEG"))  # the bytes of a VQA-RAD test image
    (images / "other.png").write_bytes(image_bytes(250))
    records = [
        {"question": "Is the aorta dilated?", "answer": "no", "query_type": "yes_no", "image": "same.jpg"},
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
    messages = row_messages(row)
    parts = messages[-1]["content"]
    kinds = [p["type"] for p in parts]
    assert kinds[0] == "image" and kinds.count("image") == len(row["images"]) == 1
    assert parts[0]["image"].size == Image.open(io.BytesIO(row["images"][0]["bytes"])).size  # decoded, not resized yet


def test_the_shipped_samples_run_end_to_end(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[1] / "examples" / "eval"
    dirs = []
    for benchmark, folder in LAYOUTS.items():
        dirs.append(str(tmp_path / benchmark))
        assert main(["eval", "prepare", benchmark, "--source", str(shipped / folder), "--output", dirs[-1]]) == 0
        manifest = json.loads((tmp_path / benchmark / "manifest.json").read_text())
        assert (manifest["written"], manifest["rejected"]) == PREPARED[benchmark]
    predictions = f"sample={shipped / 'predictions.jsonl'}"
    assert main(["eval", "score", "--data", *dirs, "--run", predictions, "--output", str(tmp_path / "r")]) == 0
    assert main(["eval", "score", "--data", *dirs, "--run", predictions, "--output", str(tmp_path / "c"),
                 "--compat", "medevalkit"]) == 0
    ours = json.loads((tmp_path / "r" / "metrics.json").read_text())["sample"]
    compat = json.loads((tmp_path / "c" / "metrics.json").read_text())["sample"]
    assert sum(m["n"] for m in ours.values()) == sum(w for w, _ in PREPARED.values()) == 21
    assert ours["path_vqa"]["parse_failures"] == 1 and ours["mmmu_hm"]["acc"] == 0.75
    assert compat["mmmu_hm"]["open_acc"] == 0.0  # MedEvalKit's MMMU open rule never scores
    assert compat["slake"]["acc"] == 1.0  # capitalised "No" and 否 by exact match, both languages
    # "right lower lobe" for "right upper lobe": partial credit by tokens, none by MedEvalKit's exact match
    assert ours["vqa_rad"]["open_acc"] == 0.5 and compat["vqa_rad"]["open_acc"] == 0.0


def test_image_options_reach_the_generation_messages(prepared: dict[str, Path]) -> None:
    rows = sorted(pq.read_table(next(prepared["mmmu_hm"].glob("part-*.parquet"))).to_pylist(),
                  key=lambda r: r["extra_info"]["index"])
    shown = "".join(p["text"] if p["type"] == "text" else "[image]" for p in row_messages(rows[1])[-1]["content"])
    assert shown.startswith("Image 1: [image]\nImage 2: [image]\nImage 3: [image]\nImage 4: [image]\nWhich image")
    assert "\nA. Image 1\nB. Image 2\nC. Image 3\nD. Image 4\n" in shown


@pytest.mark.parametrize(("query_type", "gold", "meta", "answer_type"), [
    ("open_text", "No acute process.", {}, "open"),
    ("multi_label", "effusion, edema", {}, "open"),
    ("jaccard", "left lobe", {}, "open"),
    ("numeric", "12 mm", {}, "closed"),
    ("bbox_iou", "[1, 2, 3, 4]", {"box_format": "qwen3"}, "closed"),
    ("yes_no", "yes", {}, "closed"),
    ("numeric", "12 mm", {"answer_type": "open"}, "open"),  # the row's own word wins
])
def test_open_or_closed_comes_from_the_rewards_answer_type(query_type, gold, meta, answer_type) -> None:
    from medverl.eval.scoring import score_answer
    from medverl.rewards import RewardOptions

    extra_info = {"query_type": query_type, "meta": json.dumps(meta)}
    sample = score_answer(f"<think>x</think><answer>{gold}</answer>", gold, extra_info, RewardOptions())
    assert sample.answer_type == answer_type and sample.acc == 1.0
    assert (sample.f1 is not None) == (answer_type == "open")  # token recall and F1 only for open questions


PARSE_CASES = {  # (data_source, index): response; None is no prediction
    ("slake", 0): "<answer>yes, no effusion</answer>",  # well-formed, but no yes or no can be read
    ("slake", 1): "是",  # no <answer>
    ("slake", 2): "<answer>A</answer><answer>B</answer>",  # two answers
    ("slake", 3): "<think>looking</think><answer>lung</answer>",  # read
    ("slake", 4): None,  # missing: not a parse failure
    ("pmc_vqa", 0): "<answer>B or C</answer>",  # no single choice read
    ("pmc_vqa", 1): "<answer>A</answer>",  # read
}


def test_score_and_eval_score_count_the_same_parse_failures(prepared: dict[str, Path], tmp_path: Path,
                                                            capsys) -> None:
    dirs = [str(prepared["slake"]), str(prepared["pmc_vqa"])]
    rows = load_rows(dirs)
    given = {key: response for key, response in PARSE_CASES.items() if response is not None}
    preds = tmp_path / "eval.jsonl"
    preds.write_text("".join(json.dumps({"data_source": s, "index": i, "response": r}) + "\n"
                             for (s, i), r in given.items()))
    assert main(["eval", "score", "--data", *dirs, "--run", f"m={preds}", "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["m"]
    lines = tmp_path / "score.jsonl"
    lines.write_text("".join(json.dumps({"solution_str": r, "ground_truth": rows[key]["reward_model"]["ground_truth"],
                                         "data_source": key[0], "extra_info": rows[key]["extra_info"]}) + "\n"
                             for key, r in given.items()))
    capsys.readouterr()
    assert main(["score", "--input", str(lines)]) == 0
    out = capsys.readouterr().out
    counted = {line.split("|")[1].strip(): int(line.split("|")[6]) for line in out.splitlines()
               if line.startswith(("| slake |", "| pmc_vqa |"))}
    assert counted == {"slake": 3, "pmc_vqa": 1}
    assert {source: metrics[source]["parse_failures"] for source in counted} == counted
    assert metrics["slake"]["missing"] == 1


def test_only_a_full_benchmark_is_set_against_the_published_number() -> None:
    from medverl.eval.report import seed_table

    full, sample = {"acc": 0.6, "n": 451}, {"acc": 0.9, "n": 450}
    header, rows = seed_table({"full": {"vqa_rad": full}, "sample": {"vqa_rad": sample}})
    assert header == ["Model", "VQA-RAD", "Avg."]
    table = {row[0]: row[1:] for row in rows}
    assert table["full"] == ["60.0", "60.0"] and table["sample"] == ["90.0*", "90.0*"]
    assert table["full − Qwen3-VL-4B (published)"] == ["+0.8", "+0.8"]
    assert table["sample − Qwen3-VL-4B (published)"] == ["-", "-"]
