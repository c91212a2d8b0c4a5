"""Data quality control: rule checks on real images and texts, the judge over real HTTP on loopback (slow,
malformed, failing replies), cache hits, filtering with subsets and accounting, the HTML report in Chromium."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from loopback import Endpoint, chat_reply, serve
from PIL import Image
from pydicom.data import get_testdata_file

from medverl.cli import main
from medverl.data.dicom import dicom_to_png
from medverl.http import JudgeReplyError
from medverl.qc.judge import parse_verdict
from medverl.qc.rules import image_checks, mark_duplicates, score_rules, text_checks

GOOD_REPORT = "Findings: the lungs are clear, no effusion. Impression: normal chest radiograph."


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    (root / "ct.png").write_bytes(dicom_to_png(get_testdata_file("CT_small.dcm", download=False)).png)
    (root / "mr.png").write_bytes(dicom_to_png(get_testdata_file("MR_small.dcm", download=False)).png)
    shutil.copy(root / "ct.png", root / "ct_copy.png")  # a duplicate under another name
    Image.new("L", (256, 256), 128).save(root / "blank.png")
    Image.new("RGB", (40, 40), (10, 200, 10)).save(root / "tiny.png")
    Image.new("L", (900, 60), 30).save(root / "strip.png")
    rng = np.random.default_rng(0)
    colour = np.stack([rng.integers(100, 255, (128, 128)), rng.integers(0, 80, (128, 128)),
                       rng.integers(0, 80, (128, 128))], -1).astype(np.uint8)
    Image.fromarray(colour, "RGB").save(root / "fundus.png")
    (root / "broken.png").write_bytes((root / "ct.png").read_bytes()[:100])
    return root


@pytest.mark.parametrize(
    ("name", "failed"),
    [
        ("ct.png", []),  # pydicom's CT slice, windowed: passes every check
        ("blank.png", ["image_blank"]),
        ("tiny.png", ["image_small", "image_blank"]),
        ("strip.png", ["image_small", "image_aspect", "image_blank"]),
        ("broken.png", ["image_unreadable"]),
    ],
)
def test_image_checks(images: Path, name: str, failed: list[str]) -> None:
    assert sorted(image_checks(name, images).failed) == sorted(failed)


def test_duplicates_by_content(images: Path) -> None:
    seen: set[str] = set()
    first, second = image_checks("ct.png", images), image_checks("ct_copy.png", images)
    mark_duplicates([first], seen)
    mark_duplicates([second], seen)
    assert first.failed == [] and second.failed == ["image_duplicate"]


@pytest.mark.parametrize(
    ("text", "failed"),
    [
        (GOOD_REPORT, []),
        ("CT head.", ["text_short"]),
        ("the the the the the the the the the the the the.", ["text_repetitive"]),
        ("@@##$$%%^^&&~~||@@##$$%%^^&& normal chest film here.", ["text_noisy"]),
        ("The lungs are clear and the heart size is", ["text_truncated"]),
        ("Findings: a 2 cm nodule in the right upper lobe with spiculated margins.", ["report_no_impression"]),
        ("右肺上叶见结节，考虑肺癌可能。", []),
    ],
)
def test_text_checks(text: str, failed: list[str]) -> None:
    assert text_checks(text) == failed


@pytest.mark.parametrize(
    ("ending", "truncated"),
    [
        ("the heart is normal.", False),  # terminal punctuation
        ("is the heart enlarged?", False),
        ("<think>The film is clear.</think><answer>B</answer>", False),  # our answer format
        ("<think>The silhouette is within limits</think>", False),  # a closing tag
        ("Is there a fracture?\nAnswer: B", False),  # how an RL record reads for QC
        ("Which lobe?\nAnswer: right upper lobe", False),  # an answer needs no full stop
        ("Which lobe?\nFinal answer: RUL / right upper", False),
        ("答案：是", False),  # a CJK last character
        ("the impression (see prior study)", False),  # a closing bracket
        ('the patient reported "chest pain"', False),  # a closing quote
        ("options [A, B, C]", False),
        ("The lungs are clear and the heart size is", True),  # stops mid-sentence
        ("<think>The film shows", True),  # an unclosed reasoning block
        ("<answer>B", True),  # an unclosed answer tag
        ("Is there a fracture?\nAnswer:", True),  # an answer line with no answer
        ("The answer: B was chosen because the", True),  # "answer:" inside a sentence that stops
        ("Findings: the", True),
    ],
)
def test_text_truncated_endings(ending: str, truncated: bool) -> None:
    assert ("text_truncated" in text_checks(ending)) is truncated


def test_dimensions_and_modality_relevance(images: Path) -> None:
    grey = image_checks("mr.png", images)
    colour = image_checks("fundus.png", images)
    checked = score_rules("Fundus photograph of the right eye: sharp optic disc, no haemorrhage.", [grey])
    assert checked.failed == ["modality_mismatch"] and checked.scores["relevance"] == 0.5
    assert checked.scores["medical_correctness"] is None  # the rules leave it to the judge
    assert score_rules("Axial CT of the abdomen: no free fluid, normal liver.", [colour]).failed == ["modality_mismatch"]
    assert score_rules("Axial MRI of the brain: no acute infarct, normal ventricles.", [grey]).failed == []


def _caption_records(path: Path, images: Path) -> Path:
    records = [
        {"image": "ct.png", "text": "Axial CT slice: no acute findings, normal attenuation.", "data_source": "good"},
        {"image": "mr.png", "text": GOOD_REPORT.replace("chest radiograph", "brain MRI"), "data_source": "good"},
        {"image": "blank.png", "text": "the the the the the the the the the the the", "data_source": "scraped"},
        {"image": "ct_copy.png", "text": "CT", "data_source": "scraped"},
        {"image": "ct.png", "text": "", "data_source": "scraped"},  # no text: a reject, as in medverl prep
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "{not json\n")
    return path


def test_rules_score_filter_and_accounting(images: Path, tmp_path: Path, capsys) -> None:
    source = _caption_records(tmp_path / "captions.jsonl", images)
    out = tmp_path / "scores"
    assert main(["qc", "score", "caption", str(source), "--output", str(out), "--image-root", str(images)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["read"], manifest["counts"]["scored"], manifest["rejected"]) == (6, 4, 2)
    assert manifest["rejected_by_reason"] == {"malformed_json": 1, "missing_field": 1}
    assert main(["qc", "filter", str(out), "--output", str(tmp_path / "f1"), "--min", "fluency=0.6"]) == 0
    kept = [json.loads(line) for line in (tmp_path / "f1" / "kept.jsonl").read_text().splitlines()]
    assert [k["data_source"] for k in kept] == ["good", "good"]  # records come back exactly as they went in
    assert main(["qc", "filter", str(out), "--output", str(tmp_path / "f2"), "--subset-min", "0.8"]) == 0
    filtered = json.loads((tmp_path / "f2" / "manifest.json").read_text())
    assert filtered["read"] == filtered["written"] + filtered["rejected"] == 4
    assert filtered["rejected_by_reason"] == {"subset_below_threshold": 2}
    assert list(filtered["failing_subsets"]) == ["scraped"]
    assert main(["qc", "filter", str(out), "--output", str(tmp_path / "f4"), "--subset-min", "0.8",
                 "--subset-key", "image"]) == 0  # grouped by another field: the blank image's subset fails
    regrouped = json.loads((tmp_path / "f4" / "manifest.json").read_text())
    assert regrouped["job"]["subset_key"] == "image" and "blank.png" in regrouped["failing_subsets"]
    assert main(["qc", "filter", str(out), "--output", str(tmp_path / "f3"), "--min", "medical_correctness=0.5"]) == 2
    assert "rules scorer leaves medical_correctness to the judge" in capsys.readouterr().err
    for bad in ("fluency=1.1", "fluency=nan", "fluency=-0.1"):  # scores lie in [0, 1]: a usage error
        assert main(["qc", "filter", str(out), "--output", str(tmp_path / "f5"), "--min", bad]) == 2
    assert main(["qc", "filter", str(out), "--output", str(tmp_path / "f6"), "--min", "fluency"]) == 2
    assert "medical_correctness, fluency, relevance, completeness, practicality, mean" in capsys.readouterr().err
    assert main(["qc", "filter", str(tmp_path / "f1"), "--output", str(tmp_path / "f7")]) == 2  # not qc scores
    assert "holds qc_kept data" in capsys.readouterr().err


class _Judge(Endpoint):
    """A loopback OpenAI-compatible endpoint whose reply depends on the record text."""

    def answer(self, text: str) -> tuple[int, bytes]:
        if "SERVER-ERROR" in text:
            return 500, b""
        if "SLOW" in text:
            time.sleep(0.3)
        if "MALFORMED" in text:
            return 200, chat_reply("sure! here you go")
        return 200, chat_reply(json.dumps(
            {"medical_correctness": 4, "fluency": 5, "relevance": 3, "completeness": 2, "practicality": 5,
             "rationale": "incomplete impression"}))


@pytest.fixture
def judge_url():
    with serve(_Judge) as url:
        yield url


def test_judge_over_http_with_failures_and_cache(images: Path, tmp_path: Path, judge_url: str) -> None:
    records = [
        {"image": "ct.png", "text": "Axial CT: normal. SLOW", "data_source": "a"},
        {"image": "mr.png", "text": "MRI brain: normal. MALFORMED", "data_source": "a"},
        {"image": "mr.png", "text": "MRI brain: normal. SERVER-ERROR", "data_source": "b"},
        {"image": "ct.png", "text": "Axial CT: a nodule.", "data_source": "b"},
    ]
    source = tmp_path / "c.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["qc", "score", "caption", str(source), "--scorer", "judge", "--judge-url", judge_url, "--judge-model", "vlm",
            "--image-root", str(images), "--judge-retries", "2", "--judge-timeout", "5"]
    assert main([*args, "--output", str(tmp_path / "j")]) == 0
    manifest = json.loads((tmp_path / "j" / "manifest.json").read_text())
    assert manifest["counts"] == {"scored": 2, "judge_failed": 2}  # failures counted apart, never a 0
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "j" / "part-00000.parquet").to_pylist()
    failed = [r for r in rows if r["status"] == "judge_failed"]
    assert all(r["mean"] is None for r in failed) and {r["error"][:8] for r in failed} == {"JudgeRep", "HTTP 500"}
    ok = next(r for r in rows if r["status"] == "scored")
    assert ok["relevance"] == 0.5 and ok["completeness"] == 0.25 and ok["rationale"] == "incomplete impression"
    assert len(_Judge.calls) == 2 + 3 + 3  # two answered at once, the two failures tried three times each
    # a rerun into the same directory's cache (resume of a finished job) or a fresh job sharing the cache file
    shutil.copy(tmp_path / "j" / "judge_cache.sqlite", tmp_path / "cache.sqlite")
    (tmp_path / "j2").mkdir()
    shutil.copy(tmp_path / "cache.sqlite", tmp_path / "j2" / "judge_cache.sqlite")
    calls_before = len(_Judge.calls)
    assert main([*args, "--output", str(tmp_path / "j2")]) == 0
    assert len(_Judge.calls) - calls_before == 3 + 3  # only the failures are asked again
    # a damaged shard is scored again on resume: cached verdicts, the failures asked again (and failing alike)
    shard = tmp_path / "j" / "part-00000.parquet"
    first = shard.read_bytes()
    shard.write_bytes(first[:-10])
    calls_before = len(_Judge.calls)
    assert main([*args, "--output", str(tmp_path / "j"), "--resume"]) == 0
    assert len(_Judge.calls) - calls_before == 3 + 3 and shard.read_bytes() == first


def test_parse_verdict_schema() -> None:
    good = {"medical_correctness": 4, "fluency": 5, "relevance": 3, "completeness": 2, "practicality": 5,
            "rationale": "ok"}
    assert parse_verdict("```json\n" + json.dumps(good) + "\n```") == good
    for bad in ({**good, "fluency": 6}, {**good, "fluency": "5"}, {k: v for k, v in good.items() if k != "rationale"}):
        with pytest.raises(JudgeReplyError):
            parse_verdict(json.dumps(bad))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
def test_report_renders_histograms_and_sample_in_chromium(images: Path, tmp_path: Path) -> None:
    source = _caption_records(tmp_path / "captions.jsonl", images)
    assert main(["qc", "score", "caption", str(source), "--output", str(tmp_path / "s"), "--image-root",
                 str(images)]) == 0
    assert main(["qc", "report", str(tmp_path / "s"), "--output", str(tmp_path / "r")]) == 0
    sample = [json.loads(line) for line in (tmp_path / "r" / "review_sample.jsonl").read_text().splitlines()]
    for item in sample:
        item["human_pass"] = item["subset"] == "good"
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(i) + "\n" for i in sample))
    assert main(["qc", "report", str(tmp_path / "s"), "--output", str(tmp_path / "r"), "--labels",
                 str(tmp_path / "labels.jsonl"), "--threshold", "0.8"]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Agreement with reviewers" in page and "data:image/jpeg;base64," in page
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1400,1600", (tmp_path / "r" / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    bars = np.all(pixels == (0xD6, 0x27, 0x28), axis=1).sum()  # histogram bar colour
    header = np.all(pixels == (0x1F, 0x77, 0xB4), axis=1).sum()  # sample table header colour
    assert bars > 500 and header > 500


def test_an_interrupted_score_job_resumes_to_the_same_rows(images: Path, tmp_path: Path, monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import medverl.qc.job as job_module

    source = _caption_records(tmp_path / "captions.jsonl", images)
    monkeypatch.setattr(job_module, "WINDOW", 2)
    assert main(["qc", "score", "caption", str(source), "--output", str(tmp_path / "whole"), "--image-root",
                 str(images)]) == 0
    real, calls = job_module.image_checks, {"n": 0}

    def dies_on_the_third(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(job_module, "image_checks", dies_on_the_third)
    args = ["qc", "score", "caption", str(source), "--output", str(tmp_path / "cut"), "--image-root", str(images)]
    with pytest.raises(KeyboardInterrupt):
        main(args)
    assert not json.loads((tmp_path / "cut" / "manifest.json").read_text())["complete"]
    assert main(args) == 2  # the directory holds a job: resuming must be asked for
    monkeypatch.setattr(job_module, "image_checks", real)
    assert main([*args, "--resume"]) == 0

    def table(directory: Path) -> pa.Table:
        return pa.concat_tables([pq.read_table(p) for p in sorted(directory.glob("part-*.parquet"))])

    assert table(tmp_path / "cut").to_pylist() == table(tmp_path / "whole").to_pylist()  # duplicates found again too
    assert (tmp_path / "cut" / "rejects.jsonl").read_text() == (tmp_path / "whole" / "rejects.jsonl").read_text()


@pytest.mark.parametrize(
    ("kind", "record", "text"),
    [
        # SFT turns with role/content keys, as medverl prep accepts them
        ("sft", {"conversations": [{"role": "user", "content": "<image>What is shown?"},
                                   {"role": "assistant", "content": "A normal chest film."}], "image": "ct.png"},
         "user: What is shown?\nassistant: A normal chest film."),
        # an RL record already in verl's layout
        ("rl", {"prompt": [{"role": "user", "content": "<image>Is there a fracture?"}], "images": ["ct.png"],
                "reward_model": {"style": "rule", "ground_truth": "no"}, "extra_info": {"query_type": "yes_no"}},
         "Is there a fracture?\nAnswer: no"),
        # the seed's RL record, several acceptable answers
        ("rl", {"question": "Which lobe?", "answer": ["right upper", "RUL"], "query_type": "jaccard"},
         "Which lobe?\nAnswer: right upper / RUL"),
    ],
)
def test_qc_reads_records_as_prep_does(kind: str, record: dict, text: str, images: Path, tmp_path: Path) -> None:
    source = tmp_path / "r.jsonl"
    source.write_text(json.dumps(record) + "\n" + json.dumps({"unexpected": 1}) + "\n")
    assert main(["qc", "score", kind, str(source), "--output", str(tmp_path / "qc"), "--image-root", str(images)]) == 0
    assert main(["prep", kind, str(source), "--output", str(tmp_path / "prep"), "--image-root", str(images)]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "qc" / "part-00000.parquet").column("text").to_pylist() == [text]
    qc_rejects, prep_rejects = ((tmp_path / d / "rejects.jsonl").read_text() for d in ("qc", "prep"))
    assert qc_rejects == prep_rejects and json.loads(qc_rejects)["code"] == "missing_field"
