"""The bundled synthetic stain task: deterministic, prepared like user data, and answerable from the image only."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medverl.cli import main
from medverl.training.synthetic_task import DATA_SOURCE, QUESTION, STAINS, generate

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "data"
FILES = ("stain_captions.jsonl", "stain_sft.jsonl", "stain_rl.jsonl", "stain_rl_val.jsonl")


def _records(name: str, root: Path = DATA) -> list[dict]:
    return [json.loads(line) for line in (root / name).read_text(encoding="utf-8").splitlines()]


def _pixels(path: str, root: Path = DATA) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / path).convert("RGB"), dtype=np.float32)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stain")
    generate(root)
    return root


def test_the_bundled_records_are_what_the_generator_writes(regenerated: Path) -> None:
    for name in FILES:
        assert (regenerated / name).read_bytes() == (DATA / name).read_bytes(), name
    for record in _records("stain_rl_val.jsonl")[:6]:
        # JPEG encoders may differ by a grey level between library builds, never more
        assert np.abs(_pixels(record["image"], regenerated) - _pixels(record["image"])).max() <= 8


def test_a_policy_that_ignores_the_image_scores_chance() -> None:
    for name in ("stain_rl.jsonl", "stain_rl_val.jsonl"):
        rows = _records(name)
        assert {r["question"] for r in rows} == {QUESTION}
        assert {tuple(r["options"]) for r in rows} == {tuple(s.name for s in STAINS)}
        answers = Counter(r["answer"] for r in rows)
        # the text of every prompt is the same: the best answer without the image is the most common letter
        assert answers == Counter({letter: len(rows) // 3 for letter in "ABC"}), answers
        assert max(answers.values()) / len(rows) == pytest.approx(1 / 3)
        assert {r["data_source"] for r in rows} == {DATA_SOURCE}


def _features(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pixels = [_pixels(r["image"]) for r in rows]
    colour = np.stack([p.reshape(-1, 3).mean(0) for p in pixels])
    luminance = colour @ np.array([0.299, 0.587, 0.114])
    return colour / luminance[:, None], luminance[:, None], np.array(["ABC".index(r["answer"]) for r in rows])


def _nearest_centroid_accuracy(train: tuple, test: tuple) -> float:
    (x, y), (xt, yt) = train, test
    centroids = np.stack([x[y == k].mean(0) for k in range(3)])
    predicted = np.argmin(((xt[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((predicted == yt).mean())


def test_the_mean_hue_answers_the_held_out_items_and_the_brightness_does_not() -> None:
    hue, luminance, answer = _features(_records("stain_rl.jsonl"))
    hue_t, luminance_t, answer_t = _features(_records("stain_rl_val.jsonl"))
    assert _nearest_centroid_accuracy((hue, answer), (hue_t, answer_t)) >= 0.95
    # the exposure SFT teaches is no clue: how light a section is says little about its stain
    assert _nearest_centroid_accuracy((luminance, answer), (luminance_t, answer_t)) < 0.55


def test_each_stage_has_its_own_job() -> None:
    captions = _records("stain_captions.jsonl")
    for stain in STAINS:  # CPT: what a section shows
        assert sum(stain.name in c["text"] for c in captions) == len(captions) // 3
    sft = _records("stain_sft.jsonl")  # SFT: the format, on another question about other images
    assert all(QUESTION not in turn["value"] for r in sft for turn in r["conversations"])
    answers = [r["conversations"][1]["value"] for r in sft]
    assert not [a for a in answers for stain in STAINS if stain.name in a], "SFT never names a stain"
    assert {stain.looks for stain in STAINS} <= {a.partition("</think>")[0].removeprefix("<think>") for a in answers}
    assert all(r["conversations"][1]["value"].startswith("<think>") for r in sft)
    images = {r["image"] for name in ("stain_rl.jsonl", "stain_rl_val.jsonl") for r in _records(name)}
    assert not images & {c["image"] for c in captions}, "GRPO items are not CPT images"
    assert not {r["image"] for r in _records("stain_rl.jsonl")} & {r["image"] for r in _records("stain_rl_val.jsonl")}


@pytest.mark.parametrize(("kind", "name"), [("caption", "stain_captions.jsonl"), ("sft", "stain_sft.jsonl"),
                                            ("rl", "stain_rl.jsonl"), ("rl", "stain_rl_val.jsonl")])
def test_medverl_prep_prepares_every_record(tmp_path: Path, kind: str, name: str) -> None:
    assert main(["prep", kind, str(DATA / name), "--output", str(tmp_path / "out"),
                 "--image-root", str(DATA / "images")]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["written"] == len(_records(name)) and manifest["rejected"] == 0
