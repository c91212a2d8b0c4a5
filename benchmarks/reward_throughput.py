"""What scoring rewards costs a GRPO run: medverl's ``compute_score`` against verl's geo3k scorer, in one run.

    python benchmarks/reward_throughput.py [--quick] [--json results.json] [--profile] [--step-seconds NAME=S]

medverl is called exactly as verl calls it: through ``verl.trainer.ppo.reward.get_custom_reward_fn`` loaded from the
reward section of the recipes (``recipes/common/rewards.yaml``) (so the recipe's reward_kwargs are merged into every call), with
keyword arguments only and a fresh ``extra_info`` per row. The baseline is
``verl.utils.reward_score.geo3k.compute_score(predict_str, ground_truth)`` on the same strings.

Each timed repeat scores a corpus drawn with a new seed (new option sets and responses, 8 responses per prompt as in
a GRPO group), so the caches inside the rewards are only as warm as in training; the best repeat counts. The process
is pinned to one core.

Targets, the costs a user feels:

- the reward's share of a GRPO step < 1%: the time to score one step's rollouts, one after the other on one core,
  against the time of the step (:data:`STEPS`: the CPU example's 8 prompts x 8 rollouts against its measured step,
  and a production batch of 512 x 8 against a stated one; ``--step-seconds`` puts in your own verl
  ``timing_s/step``). verl spreads scoring over ``reward.num_workers`` and overlaps it with generation, so the share
  in a run is smaller still;
- < 50 ms for every adversarial output of up to 1 Mi characters, every query type: verl scores a response as soon as
  it is generated, so a hostile one delays only its own group; were 1% of a 4,096-response batch hostile, 41 x 50 ms
  = 2 s of scoring over verl's 8 reward workers would add 0.26 s, under 1% of the production step below;
- for the seed's query types, at least as fast as geo3k (ratio >= 1.0) on the same responses.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import json
import os
import platform
import pstats
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.utils.reward_score import geo3k

from medverl.rewards.choice import LETTERS

SEED_TYPES = ("multiple_choice", "yes_no", "jaccard", "exact_match")
# rewards beyond the seed's: no throughput target against geo3k
NEW_TYPES = ("multi_label", "numeric", "bbox_iou", "open_text")
QUERY_TYPES = SEED_TYPES + NEW_TYPES
GROUP_SIZE = 8  # responses per prompt, as in a GRPO rollout
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "common" / "rewards.yaml"
RATIO_TARGET, LATENCY_TARGET_S, STEP_SHARE_TARGET = 1.0, 0.050, 0.01


@dataclass(frozen=True, slots=True)
class GrpoStep:
    """One GRPO step's rollouts to score (GROUP_SIZE per prompt), and the time of the whole step."""

    name: str
    prompts: int
    chars: tuple[int, int]  # response lengths, from max_response_length at about 4 characters a token
    step_seconds: float
    source: str  # where step_seconds comes from


STEPS = (
    GrpoStep("example", 8, (40, 256), 6.0,
             "measured: verl's timing_s/step of the CPU example's GRPO stage (recipes/pipelines/example_cpu.yaml: 8 "
             "prompts x 8 rollouts of up to 64 tokens), 6-7 s a step on 2 cores"),
    GrpoStep("production", 512, (400, 8000), 60.0,
             "stated, a floor: 4,096 rollouts of up to 2,048 tokens (recipes/grpo.yaml) generated, then log-probs of "
             "actor and reference and the update over them, for a 7B VL model on 8 GPUs take minutes; a shorter step "
             "only raises the share"),
)

DIAGNOSES = [
    "Pulmonary edema", "Lobar pneumonia", "Pleural effusion", "Pneumothorax", "Atelectasis", "Pulmonary embolism",
    "Sarcoidosis", "Tuberculosis", "Bronchiectasis", "Lung abscess", "Hiatal hernia", "Aortic dissection",
    "Pericardial effusion", "Cardiomegaly", "Rib fracture", "Emphysema", "Interstitial lung disease",
    "Metastatic disease", "Hepatocellular carcinoma", "Hepatic hemangioma", "Focal nodular hyperplasia",
    "Liver abscess", "Simple renal cyst", "Renal cell carcinoma", "Acute appendicitis", "Small bowel obstruction",
    "Diverticulitis", "Multiple sclerosis", "Glioblastoma", "Meningioma", "Acute ischemic stroke",
    "Subdural hematoma", "Epidural hematoma", "Colles fracture", "Scaphoid fracture", "Osteosarcoma",
    "Adenocarcinoma", "Squamous cell carcinoma", "Lymphoma", "Benign nevus", "Melanoma", "Diabetic retinopathy",
    "Glaucoma", "Age-related macular degeneration", "肺炎", "气胸", "胸腔积液", "肺结核",
]
SENTENCES = [
    "The frontal chest radiograph shows a dense opacity in the right lower zone with air bronchograms.",
    "The costophrenic angles are sharp and there is no meniscus sign.",
    "Cardiac silhouette is within normal limits; the mediastinum is not widened.",
    "A thin visceral pleural line is visible at the apex without lung markings beyond it.",
    "Axial CT demonstrates a hypodense lesion in segment VII of the liver measuring 2.3 cm.",
    "On the arterial phase the lesion enhances peripherally with centripetal fill-in on delayed images.",
    "The histology section shows glandular structures with nuclear atypia and abundant mucin.",
    "No fracture line is seen along the cortex of the distal radius.",
    "MRI T2-weighted images show a hyperintense focus in the left periventricular white matter.",
    "Considering the clinical history of fever and productive cough, an infective process is most likely.",
    "The differential diagnosis includes atelectasis, but there is no volume loss.",
    "Let me reconsider: the trachea is midline, which argues against a tension component.",
    "Wait, the question asks for the most likely diagnosis, not the next step in management.",
    "Fundus photography shows microaneurysms, dot-blot hemorrhages and hard exudates.",
    "The lesion has irregular borders, color variegation and a diameter above 6 mm.",
    "右肺下叶可见斑片状高密度影，边缘模糊。",
    "结合发热和咳嗽病史，首先考虑感染性病变。",
    "心影大小正常，纵隔未见增宽。",
]
# (reference, answers that partly match it) for the free-text query types, English and Chinese.
FINDINGS = [
    ("right lower lobe consolidation", ["consolidation of the right lower lobe", "right lower lobe pneumonia"]),
    ("left pleural effusion", ["small left-sided pleural effusion", "effusion on the left"]),
    ("periventricular white matter lesion", ["lesion in the left periventricular white matter"]),
    ("segment VII of the liver", ["liver segment 7", "right posterior segment of the liver"]),
    ("distal radius fracture", ["fracture of the distal radius", "Colles fracture"]),
    ("T2-weighted MRI", ["MRI, T2 weighted sequence", "T2 FLAIR"]),
    ("adenocarcinoma", ["moderately differentiated adenocarcinoma", "carcinoma"]),
    ("apical pneumothorax", ["small right apical pneumothorax", "pneumothorax"]),
    ("右肺下叶", ["右肺下叶实变", "右下肺"]),
    ("胸腔积液", ["左侧胸腔积液", "少量积液"]),
    ("肝血管瘤", ["肝脏海绵状血管瘤", "血管瘤"]),
]
YES_ANSWERS = ["Yes", "yes.", "Yes, there is a pleural effusion.", "Yes, the lesion enhances.", "Correct.", "是", "有"]
NO_ANSWERS = ["No", "no.", "No, the nodule is benign.", "No evidence of pneumothorax.", "Not correct.", "没有", "否"]
UNCLEAR_ANSWERS = ["Yes and no.", "It cannot be determined from this image.", "Possibly.", "不确定"]
# How a response goes wrong, with weights: well-formed responses dominate as in real rollouts.
MALFORMATIONS = {
    "ok": 72, "no_tags": 5, "duplicate_answer": 5, "truncated": 6, "no_think": 4, "unclosed_answer": 3,
    "empty_answer": 2, "answer_in_think": 3,
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One scorer call: the response, its reference and the row's ``extra_info``."""

    solution_str: str
    ground_truth: str
    extra_info: dict[str, object]


def _reasoning(rng: random.Random, length: int, extra: list[str]) -> str:
    """`length` characters of reasoning: stock sentences, some of them from `extra` (the prompt's own)."""
    parts: list[str] = []
    size = 0
    while size < length:
        part = rng.choice(extra) if extra and rng.random() < 0.3 else rng.choice(SENTENCES)
        parts.append(part)
        size += len(part) + 1
    return " ".join(parts)[:length]


def _response(rng: random.Random, answer: str, length: int, extra: list[str]) -> str:
    """A response of about `length` characters around `answer`, malformed with the weights of MALFORMATIONS."""
    kind = rng.choices(list(MALFORMATIONS), weights=list(MALFORMATIONS.values()))[0]
    frames = {
        "ok": "<think>{r}</think>\n<answer>{a}</answer>",
        "no_tags": "<think>{r}</think>\nThe answer is {a}.",
        "duplicate_answer": "<think>{r}</think>\n<answer>{a}</answer>\n<answer>{a}</answer>",
        "truncated": "<think>{r}</think>\n<answer>{a}</answer>",
        "no_think": "{r}\n<answer>{a}</answer>",
        "unclosed_answer": "<think>{r}</think>\n<answer>{a}",
        "empty_answer": "<think>{r}</think>\n<answer> </answer>",
        "answer_in_think": "<think>{r} <answer>{a}</answer></think>\nDone.",
    }
    frame = frames[kind]
    overhead = len(frame.format(r="", a=answer))
    text = frame.format(r=_reasoning(rng, max(length - overhead, 20), extra), a=answer)
    if kind == "truncated":  # generation stopped at max_response_length, anywhere in the text
        text = text[: rng.randint(min(200, len(text) - 1), len(text) - 1)]
    return text


def _mc_answer(rng: random.Random, gold: int, options: list[str]) -> str:
    """A rendering of the gold option (55%), another option (30%), or a hedge or non-answer (15%)."""
    roll = rng.random()
    pick = gold if roll < 0.55 else rng.choice([i for i in range(len(options)) if i != gold])
    letter, other = LETTERS[pick], LETTERS[rng.choice([i for i in range(len(options)) if i != pick])]
    text = options[pick]
    if roll > 0.85:  # hedges and unreadable answers
        return rng.choice([f"{letter} or {other}", f"{letter}, {other}", f"{letter}/{other}",
                           f"Either {letter} or {other}", "I am not sure.", "None of the above"])
    return rng.choice([
        letter, f"({letter})", f"{letter}.", f"{letter})", f"**{letter}**", letter.lower(), f"The answer is {letter}",
        f"The answer is ({letter}).", f"Answer: {letter}", f"\\boxed{{{letter}}}", f"$\\boxed{{{letter}}}$",
        f"{letter}. {text}", f"({letter}) {text}", f"{letter}: {text}", text, f"{text}.", f"Option {letter}",
        f"The correct option is {letter}: {text}",
    ])


def _free_text_answer(rng: random.Random, gold: str, paraphrases: list[str]) -> str:
    """The reference restyled (45%), a paraphrase (30%) or some other finding (25%)."""
    roll = rng.random()
    if roll < 0.45:
        return rng.choice([gold, gold.capitalize(), f"{gold}.", f"**{gold}**", f"  {gold.upper()} "])
    if roll < 0.75:
        return rng.choice(paraphrases + [f"The findings are most consistent with {gold}."])
    return rng.choice(FINDINGS)[0]


def _new_type_group(query_type: str, rng: random.Random) -> tuple[str, dict, list[str]]:
    """A ground truth, its row's meta and a GROUP_SIZE group of answers (right, close, wrong) for a new reward."""
    if query_type == "multi_label":
        names = [f for f, _ in FINDINGS if not any(sep in f for sep in (",", ";", " and "))]
        labels = rng.sample(names, rng.randint(1, 4))
        others = [f for f in names if f not in labels]
        meta = {"synonyms": {labels[0]: [f"{labels[0]} finding"]}}
        answers = [", ".join(rng.sample(labels, rng.randint(1, len(labels))) + rng.sample(others, rng.randint(0, 2)))
                   for _ in range(GROUP_SIZE)]
        return "; ".join(labels), meta, [rng.choice([a, a.replace(", ", "\n- "), a.replace(", ", " and ")])
                                         for a in answers]
    if query_type == "numeric":
        gold = rng.randint(3, 80)
        answers = [rng.choice([f"{gold} mm", f"{gold / 10} cm", f"about {gold + rng.randint(-3, 3)} mm",
                               f"The lesion measures {gold + rng.randint(-2, 2)} mm.", f"{gold} mm or {gold + 2} mm",
                               f"{gold}mm", "cannot be measured"]) for _ in range(GROUP_SIZE)]
        return f"{gold} mm", {"abs_tol": 1}, answers
    if query_type == "bbox_iou":
        x, y = rng.randint(0, 600), rng.randint(0, 600)
        gold = [x, y, x + rng.randint(50, 300), y + rng.randint(50, 300)]

        def jitter() -> list[int]:
            return [min(1000, max(0, v + rng.randint(-40, 40))) for v in gold]

        answers = []
        for _ in range(GROUP_SIZE):
            box = sorted(jitter()[:2]) + sorted(jitter()[2:])
            answers.append(rng.choice([str(box), json.dumps([{"bbox_2d": box, "label": "lesion"}]),
                                       f"The lesion is at ({box[0]}, {box[1]}, {box[2]}, {box[3]}).", "no lesion"]))
        return str(gold), {"box_format": "qwen3", "iou_threshold": 0.5} if rng.random() < 0.3 else {
            "box_format": "qwen3"}, answers
    reference = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 3)))
    answers = [" ".join(rng.choice([reference, *SENTENCES]) for _ in range(rng.randint(1, 3)))
               for _ in range(GROUP_SIZE)]
    return reference, {"metric": rng.choice(["rouge_l", "rouge_l", "bleu"])}, answers


def build_corpus(query_type: str, n: int, seed: str, min_len: int = 200, max_len: int = 4000) -> list[Sample]:
    """`n` responses of `min_len`..`max_len` characters to `n / GROUP_SIZE` fresh prompts of one query type."""
    rng = random.Random(seed)
    samples: list[Sample] = []
    for prompt in range(-(-n // GROUP_SIZE)):
        extra_info: dict[str, object] = {"split": "train", "index": prompt, "query_type": query_type,
                                         "options": None, "question": "", "source": "bench"}
        if query_type == "multiple_choice":
            options = rng.sample(DIAGNOSES, rng.choice((4, 5)))
            gold_index = rng.randrange(len(options))
            ground_truth = LETTERS[gold_index]
            extra_info["options"] = json.dumps(options) if rng.random() < 0.2 else options
            mentions = [f"Option {LETTERS[i]} ({o}) would look different here." for i, o in enumerate(options)]
            answers = [_mc_answer(rng, gold_index, options) for _ in range(GROUP_SIZE)]
        elif query_type == "yes_no":
            ground_truth = rng.choice(["yes", "no", "Yes."])
            mentions = []
            answers = [rng.choice(rng.choice([YES_ANSWERS, NO_ANSWERS, YES_ANSWERS, NO_ANSWERS, UNCLEAR_ANSWERS]))
                       for _ in range(GROUP_SIZE)]
        elif query_type in NEW_TYPES:
            ground_truth, meta, answers = _new_type_group(query_type, rng)
            extra_info["meta"] = json.dumps(meta)
            mentions = [f"The {rng.choice(FINDINGS)[0]} measures {rng.randint(3, 40)} mm."]
        else:
            gold, paraphrases = rng.choice(FINDINGS)
            ground_truth = json.dumps([gold, paraphrases[0]]) if rng.random() < 0.1 else gold
            mentions = [f"The main finding may be {p}." for p in paraphrases]
            answers = [_free_text_answer(rng, gold, paraphrases) for _ in range(GROUP_SIZE)]
        for answer in answers[: n - len(samples)]:
            text = _response(rng, answer, rng.randint(min_len, max_len), mentions)
            # verl's reward loop adds these two keys to every row's extra_info before scoring.
            row = {**extra_info, "num_turns": None, "rollout_reward_scores": {}}
            samples.append(Sample(text, ground_truth, row))
    return samples


def _corpus(query_type: str, n: int, k: int) -> list[Sample]:
    """The `k`-th corpus of 200-4,000 character responses, drawn with its own seed."""
    return build_corpus(query_type, n, f"{query_type}/{k}")


def grpo_batch(step: GrpoStep, k: int) -> list[Sample]:
    """The `k`-th draw of one step's rollouts: its prompts spread evenly over the query types, GROUP_SIZE each."""
    per_type = step.prompts // len(QUERY_TYPES) * GROUP_SIZE
    return [sample for query_type in QUERY_TYPES
            for sample in build_corpus(query_type, per_type, f"{step.name}/{query_type}/{k}", *step.chars)]


def load_verl_reward_fn() -> tuple[Callable[..., object], dict]:
    """medverl's compute_score as verl loads it from the recipe (wrapped with its reward_kwargs), and those kwargs."""
    section = OmegaConf.load(RECIPE).reward.custom_reward_function
    fn = get_custom_reward_fn(OmegaConf.create({"reward": {"custom_reward_function": section}}))
    return fn, OmegaConf.to_container(section.reward_kwargs)


def _time_pass(fn: Callable[[Sample], object], samples: list[Sample]) -> float:
    """Seconds `fn` takes over `samples`, one after the other."""
    gc.collect()
    start = time.perf_counter()
    for sample in samples:
        fn(sample)
    return time.perf_counter() - start


def compare(
    scorers: dict[str, Callable[[Sample], object]], make_corpus: Callable[[int], list[Sample]], repeats: int
) -> dict[str, float]:
    """Best responses/s of each scorer over `repeats` fresh corpora, after a warm-up pass over another one.

    Scorers take turns on each corpus, so drift on the machine affects them alike.
    """
    best = dict.fromkeys(scorers, float("inf"))
    n = 0
    for k in range(repeats + 1):
        corpus = make_corpus(k)
        n = len(corpus)
        for name, fn in scorers.items():
            seconds = _time_pass(fn, corpus)
            if k:  # corpus 0 is the warm-up: imports, compiled patterns, first-use tables
                best[name] = min(best[name], seconds)
    return {name: n / seconds for name, seconds in best.items()}


def adversarial_outputs(size: int = 1 << 20, answer_cap: int = 8000) -> dict[str, str]:
    """Outputs built to hurt a scorer, each at most `size` characters.

    `answer_cap` is just under the default ``max_answer_chars`` (8192): the longest answer the rewards still parse.
    """
    rng = random.Random(7)
    think = "<think>The opacity is in the right lower lobe.</think>\n"

    def answer(body: str) -> str:
        return f"{think}<answer>{body}</answer>"

    def fill(unit: str, chars: int) -> str:
        return unit * max(chars // len(unit), 1)

    boxed_100k = "\\boxed{" * 100_000 + "B" + "}" * 100_000
    cases = {
        "1 Mi random ASCII with <>/{}\\": "".join(rng.choices("abcdefgh <>/{}\\\n", k=size)),
        "1 Mi random BMP code points (lone surrogates too)": "".join(map(chr, rng.choices(range(32, 0x10000), k=size))),
        "1 Mi inside one <answer>": answer(fill("the consolidation ", size - 80)),
        "100k '<answer>B'": fill("<answer>B", size),
        "50k '<answer>B</answer>'": fill("<answer>B</answer>", size),
        "100k '</think>' then an answer": fill("</think>", size - 20) + "<answer>B</answer>",
        "<answer> nested 50k deep": "<answer>" * 50_000 + "B" + "</answer>" * 50_000,
        "unclosed <think> of 1 Mi": "<think>" + "x" * (size - 7),
        "unclosed <think> of 1 Mi, then an answer": "<think>" + "x" * (size - 30) + "<answer>B</answer>",
        "answer tags inside 1 Mi <think>": f"<think>{fill('<answer>B</answer>', size - 40)}</think><answer>B</answer>",
        "\\boxed nested 100k deep as the answer": answer(boxed_100k),
        "\\boxed nested 100k deep, answer padded to 1 Mi": answer(boxed_100k + " " * (size - len(boxed_100k) - 80)),
        "\\boxed nested 100k deep in <think>": f"<think>{boxed_100k}</think><answer>\\boxed{{B}}</answer>",
        "\\boxed nested 1k deep (8 KB answer)": answer("\\boxed{" * 999 + "B" + "}" * 999),
        "unbalanced \\boxed{ x 1k (8 KB answer)": answer(fill("\\boxed{", answer_cap)),
        "1 Mi whitespace inside the answer": answer("B" + fill(" \t\n", size - 80) + "C"),
        "1 Mi whitespace-only answer": answer(" " * (size - 80)),
        "8 KB spaces then a separator": answer("B" + " " * (answer_cap - 3) + ",C"),
        "1 Mi 'B or C or '": answer(fill("B or C or ", size - 80)),
        "8 KB 'B or C or '": answer(fill("B or C or ", answer_cap)),
        "1 Mi 'A, B/C; D & '": answer(fill("A, B/C; D & ", size - 80)),
        "8 KB 'A, B/C; D & '": answer(fill("A, B/C; D & ", answer_cap)),
        "8 KB 'B B B ...'": answer(fill("B ", answer_cap)),
        "8 KB '(B)(C)...'": answer(fill("(B)(C)", answer_cap)),
        "8 KB 'the answer is ' lead-ins then B": answer(fill("the answer is ", answer_cap - 1) + "B"),
        "8 KB 'not not ... yes'": answer(fill("not ", answer_cap - 3) + "yes"),
        "8 KB Chinese yes/no words": answer(fill("是否没有不对", answer_cap)),
        "8 KB CJK findings": answer(fill("右肺下叶可见斑片影", answer_cap)),
        "8 KB distinct words": answer(" ".join(f"w{i}" for i in range(answer_cap // 6))),
        "1 Mi NUL and control characters": answer(fill("\x00\x01\x1b\x7f", size - 80)),
        "1 Mi partial tags '<answe'": "<answer>B</answe" + fill("<answe", size - 20),
    }
    unicode_bodies = {
        "combining marks, one class": ("B", "\u0301"),
        "combining marks, mixed classes (out of canonical order)": ("B", "\u0301\u0316"),
        "zero-width characters": ("", "\u200b\u200d\ufeff\u2060"),
        "fullwidth letters": ("", "Ｂ（ｏｒ）Ｃ"),
        "lone surrogates": ("", "\ud800\udfff\udc00"),
        "NFKC expanding U+FDFA (x18)": ("", "\ufdfa"),
        "case-fold expanding ß / ΐ": ("", "ßΐ"),
        "bidi overrides": ("", "\u202eB\u202c\u2067C\u2069"),
        "Hangul jamo composing": ("", "\u1100\u1161\u11a8"),
        "variation selectors": ("B", "\ufe0f\U000e0100"),
        "ideographic spaces U+3000": ("B", "\u3000"),
    }
    for name, (head, unit) in unicode_bodies.items():
        cases[f"8 KB {name}"] = answer(head + fill(unit, answer_cap - len(head)))
        cases[f"1 Mi {name}"] = answer(head + fill(unit, size - 80))
    # what the rewards beyond the seed parse: boxes, numbers, label lists, long reports
    cases.update({
        "10k boxes (1 Mi answer)": answer(fill("[10, 20, 30, 40] ", size - 80)),
        "8 KB of boxes": answer(fill("[10, 20, 30, 40] ", answer_cap)),
        "8 KB NaN, inverted and huge boxes": answer(fill("[nan, 1e308, -5, 3] [30, 40, 10, 20] ", answer_cap)),
        "8 KB '[' then digits": answer("[" * (answer_cap // 2) + fill("1,", answer_cap // 2)),
        "1 Mi digits": answer("9" * (size - 80)),
        "8 KB numbers with units": answer(fill("1e308 mm, NaN %, 1,000.5 cm or ", answer_cap)),
        "8 KB '5 mm or 6 mm'": answer(fill("5 mm or 6 mm ", answer_cap)),
        "1 Mi of labels": answer(fill("effusion, cardiomegaly; edema and ", size - 80)),
        "8 KB of labels": answer(fill("effusion, cardiomegaly; edema and ", answer_cap)),
        "8 KB one report sentence repeated": answer(fill("Heart size is normal. ", answer_cap)),
    })
    cases["1 Mi combining marks, mixed classes, in <think>"] = (
        "<think>B" + fill("\u0301\u0316", size - 40) + "</think><answer>B</answer>"
    )
    return cases


def worst_latency(
    fn: Callable[..., object], cases: dict[str, str], repeats: int
) -> dict[str, dict[str, float]]:
    """Seconds per (query type, input): best of `repeats` runs, to keep scheduler noise out of a single call."""
    references = {
        "multiple_choice": ("B", {"options": DIAGNOSES[:5]}),
        "yes_no": ("yes", {}),
        "jaccard": ("right lower lobe consolidation", {}),
        "exact_match": ("right lower lobe consolidation", {}),
        "multi_label": ("pleural effusion; cardiomegaly", {"meta": json.dumps({"synonyms": {"cardiomegaly": [
            "enlarged heart"]}})}),
        "numeric": ("12 mm", {"meta": json.dumps({"abs_tol": 1})}),
        "bbox_iou": ("[100, 200, 300, 400]", {"meta": json.dumps({"box_format": "qwen3"})}),
        "open_text": ("No acute cardiopulmonary process. Heart size is normal.", {"meta": json.dumps({
            "metric": "rouge_l"})}),
    }
    latencies: dict[str, dict[str, float]] = {}
    for query_type, (gold, fields) in references.items():
        latencies[query_type] = {}
        for name, output in cases.items():
            best = float("inf")
            for _ in range(repeats):
                extra_info = {"query_type": query_type, "index": 0, **fields}
                start = time.perf_counter()
                fn(data_source="adversarial", solution_str=output, ground_truth=gold, extra_info=extra_info)
                best = min(best, time.perf_counter() - start)
            latencies[query_type][name] = best
    return latencies


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity on this platform)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}"


def _step_seconds(values: list[str]) -> dict[str, float]:
    """Step times from ``--step-seconds NAME=SECONDS`` options, over those of :data:`STEPS`."""
    seconds = {step.name: step.step_seconds for step in STEPS}
    for value in values:
        name, _, number = value.partition("=")
        if name not in seconds:
            raise SystemExit(f"--step-seconds {value}: the steps are {', '.join(seconds)}")
        seconds[name] = float(number)
    return seconds


def throughput_table(scorers: dict[str, Callable[[Sample], object]], n: int, repeats: int) -> dict[str, dict]:
    """Responses/s of ours and geo3k per query type, printed as a table with their ratio."""
    print(f"## Throughput on 200-4,000 character outputs (best of {repeats} fresh corpora, groups of {GROUP_SIZE})\n")
    print("| query type | n | ours resp/s | geo3k resp/s | ratio ours/geo3k | target >= 1.0 |")
    print("|---|---:|---:|---:|---:|---|")
    throughput: dict[str, dict[str, float]] = {}
    for query_type in QUERY_TYPES:
        rps = compare(scorers, functools.partial(_corpus, query_type, n), repeats)
        ratio = rps["ours"] / rps["geo3k"]
        throughput[query_type] = {"n": n, "ours_rps": rps["ours"], "geo3k_rps": rps["geo3k"], "ratio": ratio}
        verdict = _verdict(ratio >= RATIO_TARGET) if query_type in SEED_TYPES else "(none: beyond the seed)"
        print(f"| {query_type} | {n:,} | {rps['ours']:,.0f} | {rps['geo3k']:,.0f} | {ratio:.1f} | {verdict} |")
    return throughput


def step_share_table(scorers: dict[str, Callable[[Sample], object]], step_seconds: dict[str, float],
                     repeats: int) -> dict[str, dict]:
    """Seconds to score each of :data:`STEPS`' batches (ours and geo3k) and ours' share of the step, as a table."""
    print(f"\n## Share of a GRPO step: one step's rollouts scored one after the other on one core (best of {repeats} "
          f"fresh batches, every query type alike)\n")
    print("| step | rollouts | response chars | ours: score the batch | geo3k: the same | ratio ours/geo3k | step "
          "time | ours' share | target < 1% |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    shares: dict[str, dict] = {}
    for step in STEPS:
        batch = step.prompts * GROUP_SIZE
        rps = compare(scorers, functools.partial(grpo_batch, step), repeats)
        seconds = {name: batch / r for name, r in rps.items()}
        share = seconds["ours"] / step_seconds[step.name]
        shares[step.name] = {"rollouts": batch, "chars": list(step.chars), "ours_s": seconds["ours"],
                             "geo3k_s": seconds["geo3k"], "step_s": step_seconds[step.name], "share": share}
        print(f"| {step.name} | {step.prompts} x {GROUP_SIZE} | {step.chars[0]:,}-{step.chars[1]:,} | "
              f"{seconds['ours'] * 1e3:,.1f} ms | {seconds['geo3k'] * 1e3:,.1f} ms | "
              f"{rps['ours'] / rps['geo3k']:.1f} | {step_seconds[step.name]:,.1f} s | {share:.4%} | "
              f"{_verdict(share < STEP_SHARE_TARGET)} |")
    print()
    for step in STEPS:
        source = step.source if step_seconds[step.name] == step.step_seconds else "--step-seconds"
        print(f"- {step.name} step time: {source}")
    return shares


def adversarial_table(fn: Callable[..., object]) -> tuple[dict[str, dict], tuple[float, str, str]]:
    """The worst latency per query type over :func:`adversarial_outputs`, and the slowest pairs, as tables."""
    cases = adversarial_outputs()
    latencies = worst_latency(fn, cases, repeats=3)
    print(f"\n## Worst case over {len(cases)} adversarial outputs of up to 1 Mi characters (best of 3 runs each)\n")
    print("| query type | worst latency | worst input | inputs over target | target |\n|---|---:|---|---:|---|")
    adversarial: dict[str, dict] = {}
    for query_type, by_input in latencies.items():
        name, seconds = max(by_input.items(), key=lambda kv: kv[1])
        slow = sum(s >= LATENCY_TARGET_S for s in by_input.values())
        adversarial[query_type] = {"worst_ms": seconds * 1e3, "worst_input": name,
                                   "ms": {k: v * 1e3 for k, v in by_input.items()}}
        print(f"| {query_type} | {seconds * 1e3:.2f} ms | {name} | {slow} | < {LATENCY_TARGET_S * 1e3:.0f} ms: "
              f"{_verdict(seconds < LATENCY_TARGET_S)} |")
    ranked = sorted(((s, qt, name) for qt, d in latencies.items() for name, s in d.items()), reverse=True)
    print("\nSlowest (query type, input) pairs:\n")
    print("| latency | query type | input |\n|---:|---|---|")
    for seconds, query_type, name in ranked[:12]:
        print(f"| {seconds * 1e3:.2f} ms | {query_type} | {name} |")
    return adversarial, ranked[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer responses and repeats (a smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this file")
    parser.add_argument("--profile", action="store_true", help="cProfile scoring the production step's batch")
    parser.add_argument("--step-seconds", metavar="NAME=SECONDS", action="append", default=[],
                        help=f"a step's time (your verl timing_s/step) instead of the stated one; NAME is one of "
                             f"{', '.join(step.name for step in STEPS)}")
    args = parser.parse_args()
    step_seconds = _step_seconds(args.step_seconds)
    n, repeats = (2_000, 2) if args.quick else (20_000, 5)

    pinned = _pin_to_one_core()
    ours_fn, reward_kwargs = load_verl_reward_fn()

    def ours(s: Sample) -> object:
        return ours_fn(data_source="bench", solution_str=s.solution_str, ground_truth=s.ground_truth,
                       extra_info=s.extra_info)

    def verl_geo3k(s: Sample) -> object:
        return geo3k.compute_score(s.solution_str, s.ground_truth)

    scorers = {"ours": ours, "geo3k": verl_geo3k}
    results: dict[str, object] = {
        "python": platform.python_version(), "machine": platform.machine(), "cpu": pinned,
        "n": n, "repeats": repeats, "reward_kwargs": reward_kwargs,
    }
    print(f"Python {platform.python_version()}, {pinned}; medverl through verl's get_custom_reward_fn with "
          f"reward_kwargs {reward_kwargs}\n")
    results["throughput"] = throughput = throughput_table(scorers, n, repeats)
    results["grpo_step"] = shares = step_share_table(scorers, step_seconds, repeats)
    results["adversarial"], worst = adversarial_table(ours_fn)

    results["targets"] = {
        "ratio_ge_1": all(throughput[t]["ratio"] >= RATIO_TARGET for t in SEED_TYPES),
        **{f"{name}_step_share_lt_1pct": share["share"] < STEP_SHARE_TARGET for name, share in shares.items()},
        "adversarial_lt_50ms": worst[0] < LATENCY_TARGET_S,
    }
    print("\n## Targets\n")
    print(f"- ratio ours/geo3k >= 1.0 for the seed's query types: {_verdict(results['targets']['ratio_ge_1'])} "
          f"(lowest {min(throughput[t]['ratio'] for t in SEED_TYPES):.1f})")
    for name, share in shares.items():
        print(f"- reward's share of the {name} GRPO step < 1%: {_verdict(share['share'] < STEP_SHARE_TARGET)} "
              f"({share['share']:.4%}: {share['ours_s'] * 1e3:,.1f} ms of a {share['step_s']:,.1f} s step)")
    print(f"- adversarial worst case < 50 ms, every query type: {_verdict(worst[0] < LATENCY_TARGET_S)} "
          f"({worst[0] * 1e3:.2f} ms, {worst[1]}, {worst[2]})")

    if args.profile:
        batch = grpo_batch(STEPS[-1], repeats + 1)
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [ours(s) for s in batch])
        print(f"\n## cProfile of scoring the {STEPS[-1].name} step's batch ({len(batch):,} fresh responses), by own "
              f"time\n")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
        print(f"\nnumbers written to {args.json}")


if __name__ == "__main__":
    main()
