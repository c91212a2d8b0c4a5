"""A learnable synthetic imaging task for proving that GRPO learns: which stain a histology section carries.

Deterministic, offline and small, so the CPU example pipeline shows the whole chain moving a policy (verl's own
``tests/e2e/arithmetic_sequence`` played this part for text). Each stage has its job, as in the seed:

- CPT captions say what a section shows (its stain, its colours): ``stain_captions.jsonl``.
- SFT teaches the ``<think>/<answer>`` format on *other* questions: a chest film's exposure, with reasoning that
  says what the film shows, and what kind of image a section of any stain or a film is, with reasoning that says
  how it looks (``stain_sft.jsonl``). It never sees a stain question and never names a stain.
- GRPO turns what CPT taught into answers: ``stain_rl.jsonl`` (train) and ``stain_rl_val.jsonl`` (held out).

The answer depends on the image alone: every stain question has the same text and options in the same order, and
the answers are balanced across the options, so a policy that ignores the image scores chance (1/3). Only the hue
tells the stains apart: every section's brightness is drawn from the same range, so how light a section is (which
the exposure question reads on films) is no clue. Images are 224 x 224 JPEGs with stained stroma, nuclei, lumina, texture and noise, not flat colours.

    python -m medverl.training.synthetic_task examples/data     (writes the records and examples/data/images/stain/)
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from medverl.arguments import non_negative_int
from medverl.data.converters import render_prompt
from medverl.data.schemas import IMAGE_PLACEHOLDER
from medverl.prompts import load_template
from medverl.rewards.choice import LETTERS

SIZE = 224
LUMINANCE = (120.0, 175.0)  # the mean grey level of a section, drawn uniformly whatever its stain
IMAGE_DIR = "stain"
DATA_SOURCE = "synthetic_stain"
QUESTION = "Which stain was used on this histology section?"


@dataclass(frozen=True)
class Stain:
    """A stain: its option text, its colours (RGB), what a caption says about it, and how a section of it looks
    (the reasoning SFT writes about such a section, which never names the stain)."""

    name: str
    stroma: tuple[int, int, int]
    nuclei: tuple[int, int, int]
    accent: tuple[int, int, int]
    captions: tuple[str, ...]
    looks: str


STAINS = (
    Stain("H&E", (236, 160, 196), (86, 44, 128), (214, 110, 160), (
        "The section is pink with purple nuclei: an H&E stain.",
        "H&E stain. The section is pink; the nuclei are purple.",
        "The section is pink: haematoxylin and eosin (H&E) with purple nuclei.",
    ), "The section is pink with purple nuclei."),
    Stain("Masson's trichrome", (86, 128, 206), (52, 34, 70), (196, 58, 72), (
        "The section is blue with red muscle: a Masson's trichrome stain.",
        "Masson's trichrome stain. The section is blue; the muscle is red.",
        "The section is blue: Masson's trichrome with red fibres and dark nuclei.",
    ), "The section is blue with red muscle."),
    Stain("DAB immunohistochemistry", (206, 204, 222), (150, 96, 44), (112, 70, 34), (
        "The section is brown on pale blue: a DAB immunohistochemistry stain.",
        "DAB immunohistochemistry. The section is brown on a pale blue counterstain.",
        "The section is brown: DAB immunohistochemistry with positive cells.",
    ), "The section is brown on pale blue."),
)
EXPOSURES = (  # a film's exposure, one of SFT's questions: the option, the film's mean grey level, the reasoning
    ("underexposed", 205, "The film is pale."),
    ("adequate", 128, "The film is grey."),
    ("overexposed", 50, "The film is dark."),
)
EXPOSURE_QUESTION = "How is this radiograph exposed?"
KIND_QUESTION = "What kind of image is this?"
KINDS = ("histology section", "chest radiograph")
FILM_REASONING = "It is a chest film."
DISTRACTOR = "fundus photograph"  # a third option, so that the right letters spread over A, B and C
IS_SECTION_QUESTION = "Is this a histology section?"


def vocabulary() -> tuple[str, ...]:
    """Every text the task writes (for a tiny tokenizer whose merges cover it)."""
    return (QUESTION, EXPOSURE_QUESTION, KIND_QUESTION, IS_SECTION_QUESTION, DISTRACTOR,
            *KINDS, FILM_REASONING, *(text for e in EXPOSURES for text in (e[0], e[2])),
            *(s.name for s in STAINS), *(c for s in STAINS for c in s.captions), *(s.looks for s in STAINS))


def _smooth_noise(rng: np.random.Generator, cells: int, size: int = SIZE) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random field of `cells` x `cells`, upsampled and blurred."""
    field = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    field = field.resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(size / cells / 2))
    return np.asarray(field, dtype=np.float32) / 255.0


def stain_image(stain: Stain, rng: np.random.Generator) -> Image.Image:
    """A 224 x 224 stained section: textured stroma, accent regions, lumina, nuclei, stain jitter and noise."""
    jitter = rng.uniform(0.85, 1.1)
    stroma = np.array(stain.stroma, np.float32)
    canvas = np.empty((SIZE, SIZE, 3), np.float32)
    texture = _smooth_noise(rng, 12)[..., None]
    canvas[:] = 255 - (255 - stroma) * jitter * (0.75 + 0.5 * texture)
    accent = _smooth_noise(rng, 6)[..., None] > rng.uniform(0.55, 0.7)
    canvas = np.where(accent, np.array(stain.accent, np.float32) * (0.9 + 0.2 * texture), canvas)
    lumen = _smooth_noise(rng, 5)[..., None] > 0.8
    canvas = np.where(lumen, 245.0, canvas)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for _ in range(int(rng.integers(40, 90))):
        cy, cx = rng.uniform(0, SIZE, 2)
        ry, rx = rng.uniform(2.5, 6, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        canvas[inside] = np.array(stain.nuclei, np.float32) * rng.uniform(0.8, 1.15)
    # the same spread of brightness for every stain: only the hue tells them apart, not how light a section is
    luminance = canvas @ np.array([0.299, 0.587, 0.114], np.float32)
    canvas *= rng.uniform(*LUMINANCE) / luminance.mean()
    canvas += rng.normal(0, 9, canvas.shape)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def radiograph_image(level: int, rng: np.random.Generator) -> Image.Image:
    """A 224 x 224 chest-film-like grey image whose overall brightness is `level` (exposure), with ribs and noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    body = np.exp(-(((xx - 0.5) / 0.38) ** 2 + ((yy - 0.55) / 0.5) ** 2) ** 2)
    lungs = np.exp(-(((np.abs(xx - 0.5) - 0.2) / 0.12) ** 2 + ((yy - 0.45) / 0.25) ** 2))
    ribs = 0.5 + 0.5 * np.sin(yy * rng.uniform(38, 46) + np.abs(xx - 0.5) * 6)
    image = level + 60 * body - 70 * lungs * (0.7 + 0.3 * ribs) + 25 * (_smooth_noise(rng, 8) - 0.5)
    image = image + rng.normal(0, 7, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).convert("RGB")


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def generate(output: str | Path, *, per_stain_train: int = 32, per_stain_val: int = 12, per_stain_captions: int = 24,
             per_exposure_sft: int = 12, per_stain_sft: int = 8, seed: int = 0) -> dict[str, int]:
    """Write the task's records (JSONL) into `output` and its images into ``output/images/stain``.

    Returns the number of records per file. The same arguments always write the same records and pixels.
    """
    output = Path(output)
    images = output / "images" / IMAGE_DIR
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files: dict[str, list[dict]] = {"stain_captions.jsonl": [], "stain_sft.jsonl": [], "stain_rl.jsonl": [],
                                    "stain_rl_val.jsonl": []}

    def save(name: str, image: Image.Image) -> str:
        (images / name).write_bytes(_jpeg(image))
        return f"{IMAGE_DIR}/{name}"

    for i in range(per_stain_captions):
        for k, stain in enumerate(STAINS):
            path = save(f"caption_{i:03d}_{k}.jpg", stain_image(stain, rng))
            files["stain_captions.jsonl"].append({"image": path, "text": stain.captions[i % len(stain.captions)]})
    for split, count in (("stain_rl.jsonl", per_stain_train), ("stain_rl_val.jsonl", per_stain_val)):
        prefix = "val" if split.endswith("_val.jsonl") else "train"
        rows = []
        for i in range(count):
            for k, stain in enumerate(STAINS):
                rows.append({"question": QUESTION, "options": [s.name for s in STAINS], "answer": LETTERS[k],
                             "query_type": "multiple_choice",
                             "image": save(f"{prefix}_{i:03d}_{k}.jpg", stain_image(stain, rng)),
                             "data_source": DATA_SOURCE})
        files[split] = [rows[j] for j in rng.permutation(len(rows))]
    template = load_template("think_answer")  # the prompt `medverl prep rl` writes for the stain questions
    sft = files["stain_sft.jsonl"]

    def conversation(path: str, question: str, choices: list[str], query_type: str, reasoning: str, answer: str):
        prompt = render_prompt(template, f"{IMAGE_PLACEHOLDER}\n{question}", choices, query_type)
        sft.append({"image": [path], "conversations": [
            {"from": "human", "value": prompt},
            {"from": "gpt", "value": f"<think>{reasoning}</think><answer>{answer}</answer>"},
        ]})

    films = []
    for i in range(per_exposure_sft):
        for k, (_, level, reasoning) in enumerate(EXPOSURES):
            films.append(save(f"film_{i:03d}_{k}.jpg", radiograph_image(level + int(rng.integers(-15, 16)), rng)))
            conversation(films[-1], EXPOSURE_QUESTION, [e[0] for e in EXPOSURES], "multiple_choice", reasoning,
                         LETTERS[k])
    # what kind of image, on sections of every stain and on films: the format on section images, reasoning that
    # says how the section looks (what CPT's captions say before they name the stain), never the stain
    sections = [(save(f"sft_{i:03d}_{k}.jpg", stain_image(stain, rng)), stain.looks)
                for i in range(per_stain_sft) for k, stain in enumerate(STAINS)]
    for j, (path, reasoning) in enumerate(sections + [(f, FILM_REASONING) for f in films[: len(sections)]]):
        kind = KINDS[0] if j < len(sections) else KINDS[1]
        order = [*KINDS, DISTRACTOR]
        order = [order[i] for i in rng.permutation(len(order))]
        conversation(path, KIND_QUESTION, order, "multiple_choice", reasoning, LETTERS[order.index(kind)])
        conversation(path, IS_SECTION_QUESTION, [], "yes_no", reasoning, "yes" if kind == KINDS[0] else "no")
    files["stain_sft.jsonl"] = [sft[j] for j in rng.permutation(len(sft))]
    for name, records in files.items():
        with (output / name).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return {name: len(records) for name, records in files.items()}


def main(argv: list[str] | None = None) -> None:
    """Write the synthetic stain task's records and images."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("output", help="directory for the JSONL files (images go to OUTPUT/images/stain)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the one seed every image and order derives from")
    args = parser.parse_args(argv)
    for name, count in generate(args.output, seed=args.seed).items():
        print(f"{count:4d} records -> {Path(args.output) / name}")


if __name__ == "__main__":
    main()
