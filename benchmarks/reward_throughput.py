"""Reward throughput and worst-case latency, against verl's geometry3k rule scorer in the same run.

    python benchmarks/reward_throughput.py [--quick] [--json results.json]

Targets: per query type at least as fast as ``verl.utils.reward_score.geo3k`` on the same outputs (ratio >= 1),
>= 200,000 responses/s on one core for multiple_choice on 1 KB outputs, and < 10 ms for any adversarial output
of up to 1 MB.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from verl.utils.reward_score import geo3k

from medverl.rewards import compute_score
from medverl.rewards.text import tokens

OPTIONS = ["Pulmonary edema", "Lobar pneumonia", "Pleural effusion", "Pneumothorax", "Atelectasis"]
FINDINGS = [
    "The frontal chest radiograph shows a dense opacity in the right lower zone with air bronchograms.",
    "The costophrenic angles are sharp and there is no meniscus sign.",
    "Cardiac silhouette is within normal limits; the mediastinum is not widened.",
    "A thin visceral pleural line is visible at the apex without lung markings beyond it.",
    "Axial CT demonstrates a hypodense lesion in segment VII of the liver measuring 2.3 cm.",
    "The histology section shows glandular structures with nuclear atypia and mucin.",
    "No fracture line is seen along the cortex of the distal radius.",
    "MRI T2-weighted images show a hyperintense focus in the left periventricular white matter.",
    "Considering the clinical history of fever and cough, an infective process is most likely.",
    "Differential diagnosis includes atelectasis, but volume loss is absent.",
    "右肺下叶可见斑片状高密度影，边缘模糊。",
    "Therefore the most consistent answer is the one describing consolidation.",
]
OPEN_ANSWERS = [
    ("right lower lobe", "right lower lobe"),
    ("left periventricular white matter", "periventricular white matter"),
    ("segment VII of the liver", "liver"),
    ("右肺下叶", "右肺下叶"),
    ("distal radius", "radius"),
    ("adenocarcinoma", "adenocarcinoma"),
]


@dataclass(frozen=True)
class Sample:
    """One scorer call: the response, its reference and the row's extra_info."""

    solution_str: str
    ground_truth: str
    extra_info: dict


def _reasoning(rng: random.Random, length: int) -> str:
    parts: list[str] = []
    while sum(map(len, parts)) < length:
        parts.append(rng.choice(FINDINGS))
    return " ".join(parts)[:length]


def _wrap(rng: random.Random, reasoning: str, answer: str) -> str:
    """A response: mostly well-formed, some malformed the way real rollouts are."""
    roll = rng.random()
    if roll < 0.80:
        return f"<think>{reasoning}</think>\n<answer>{answer}</answer>"
    if roll < 0.87:
        return f"<think>{reasoning}</think>\nThe answer is {answer}."  # no tags
    if roll < 0.93:
        return f"<think>{reasoning}</think>\n<answer>{answer}</answer>\n<answer>{answer}</answer>"  # two answers
    return f"<think>{reasoning}"  # truncated


def build_corpus(query_type: str, n: int, rng: random.Random, min_len: int = 200, max_len: int = 4000) -> list[Sample]:
    """`n` realistic responses of `min_len`..`max_len` characters for one query type."""
    samples = []
    for _ in range(n):
        reasoning = _reasoning(rng, rng.randint(max(min_len - 40, 10), max(max_len - 60, 20)))
        if query_type == "multiple_choice":
            gold = rng.choice("ABCDE")
            pick = gold if rng.random() < 0.6 else rng.choice("ABCDE")
            text = OPTIONS["ABCDE".index(pick)]
            answer = rng.choice(
                [pick, f"({pick})", f"The answer is {pick}", f"\\boxed{{{pick}}}", f"{pick}. {text}", text,
                 f"{pick} or {rng.choice('ABCDE')}", f"**{pick}**"]
            )
            samples.append(Sample(_wrap(rng, reasoning, answer), gold, {"query_type": query_type, "options": OPTIONS}))
        elif query_type == "yes_no":
            gold = rng.choice(["yes", "no"])
            answer = rng.choice(["Yes", "No", "Yes, there is a nodule.", "No, the nodule is benign.", "Not correct"])
            samples.append(Sample(_wrap(rng, reasoning, answer), gold, {"query_type": query_type}))
        else:
            answer, gold = rng.choice(OPEN_ANSWERS)
            samples.append(Sample(_wrap(rng, reasoning, answer), gold, {"query_type": query_type}))
    return samples


def responses_per_second(fn: Callable[[Sample], object], samples: list[Sample], repeats: int) -> float:
    """Best-of-`repeats` throughput of `fn` over `samples`, single thread."""
    for s in samples[: min(len(samples), 200)]:  # warm-up: imports, compiled patterns, caches
        fn(s)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for s in samples:
            fn(s)
        best = min(best, time.perf_counter() - start)
    return len(samples) / best


def ours(s: Sample) -> object:
    return compute_score(
        data_source="bench", solution_str=s.solution_str, ground_truth=s.ground_truth, extra_info=s.extra_info
    )


def verl_geo3k(s: Sample) -> object:
    return geo3k.compute_score(s.solution_str, s.ground_truth)


def adversarial_outputs(size: int = 1 << 20) -> dict[str, str]:
    """Outputs built to hurt a scorer: huge, tag-heavy, deeply nested, or pathological Unicode."""
    rng = random.Random(7)
    tags = ["<answer>", "</answer>", "<think>", "</think>", "B", " or ", "\\boxed{", "}"]
    return {
        "1 MB random text": "".join(rng.choice("abcdefgh <>/{}\\\n") for _ in range(size)),
        "1 MB inside one <answer>": "<answer>" + "B or C " * (size // 7) + "</answer>",
        "8 KB hedge inside <answer>": "<answer>" + "B or C, " * 1000 + "</answer>",
        "100k <answer> tags": "<answer>B" * 100_000,
        "100k </think>": "</think>" * 100_000 + "<answer>B</answer>",
        "nested <answer> 50k deep": "<answer>" * 50_000 + "B" + "</answer>" * 50_000,
        "1 MB unclosed <think>": "<think>" + "x" * size + "<answer>B</answer>",
        "1 MB random tags": "".join(rng.choice(tags) for _ in range(size // 5)),
        "nested \\boxed 100k deep": "<answer>" + "\\boxed{" * 100_000 + "B" + "}" * 100_000 + "</answer>",
        "nested \\boxed in 8 KB answer": "<answer>" + "\\boxed{" * 900 + "B" + "}" * 900 + "</answer>",
        "1 MB whitespace in answer": "<answer>B" + " \t\n" * (size // 3) + "C</answer>",
        "8 KB whitespace then separator": "<answer>B" + " " * 8000 + ",C</answer>",
        "1 MB 'B or C or '": "<think>x</think><answer>" + "B or C or " * (size // 10) + "</answer>",
        "8 KB letters and separators": "<answer>" + "A, B/C; D & " * 650 + "</answer>",
        "8 KB combining marks": "<answer>B" + "\u0301" * 8000 + "</answer>",
        "8 KB zero-width chars": "<answer>" + "\u200b\u200d\ufeff" * 2700 + "</answer>",
        "8 KB fullwidth": "<answer>" + "Ｂ（ｏｒ）Ｃ" * 1300 + "</answer>",
        "lone surrogates": "<answer>" + "\ud800\udfff" * 4000 + "</answer>",
        "8 KB 'not not'": "<answer>" + "not " * 2000 + "yes</answer>",
        "8 KB Chinese yes/no": "<answer>" + "是否没有" * 2000 + "</answer>",
        "8 KB CJK text": "<answer>" + "右肺下叶可见斑片影" * 900 + "</answer>",
    }


def worst_latency(cases: dict[str, str], repeats: int) -> dict[str, tuple[float, str]]:
    """Per query type, the slowest adversarial output (best of `repeats` runs each) and its name."""
    extras = {
        "multiple_choice": ("B", {"query_type": "multiple_choice", "options": OPTIONS}),
        "yes_no": ("yes", {"query_type": "yes_no"}),
        "jaccard": ("right lower lobe", {"query_type": "jaccard"}),
        "exact_match": ("right lower lobe", {"query_type": "exact_match"}),
    }
    tokens("warm-up")  # builds the tokeniser's punctuation class once per process
    worst: dict[str, tuple[float, str]] = {}
    for query_type, (gold, extra) in extras.items():
        for name, output in cases.items():
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                compute_score(data_source="adv", solution_str=output, ground_truth=gold, extra_info=extra)
                best = min(best, time.perf_counter() - start)
            if best > worst.get(query_type, (0.0, ""))[0]:
                worst[query_type] = (best, name)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    n, repeats = (2000, 3) if args.quick else (20000, 5)
    rng = random.Random(0)
    results: dict[str, object] = {}

    print(f"## Throughput on realistic 200-4,000 character outputs (one core, best of {repeats})\n")
    print("| query_type | n | medverl resp/s | verl geo3k resp/s | ratio | target >= 1.0 |")
    print("|---|---:|---:|---:|---:|---|")
    for query_type in ("multiple_choice", "yes_no", "jaccard", "exact_match"):
        samples = build_corpus(query_type, n, rng)
        ours_rps = responses_per_second(ours, samples, repeats)
        geo_rps = responses_per_second(verl_geo3k, samples, repeats)
        ratio = ours_rps / geo_rps
        results[query_type] = {"n": n, "ours_rps": ours_rps, "geo3k_rps": geo_rps, "ratio": ratio}
        print(f"| {query_type} | {n} | {ours_rps:,.0f} | {geo_rps:,.0f} | {ratio:.1f} | {'PASS' if ratio >= 1 else 'FAIL'} |")

    samples = build_corpus("multiple_choice", n, random.Random(1), min_len=950, max_len=1050)
    mc_rps = responses_per_second(ours, samples, repeats)
    results["multiple_choice_1kb_rps"] = mc_rps
    print(f"\nmultiple_choice on ~1 KB outputs: {mc_rps:,.0f} responses/s "
          f"(target >= 200,000: {'PASS' if mc_rps >= 200_000 else 'FAIL'})")

    cases = adversarial_outputs()
    worst = worst_latency(cases, repeats=3)
    results["adversarial_worst_ms"] = {k: {"ms": v[0] * 1e3, "input": v[1]} for k, v in worst.items()}
    print(f"\n## Worst case over {len(cases)} adversarial outputs of up to 1 MB (best of 3 runs each)\n")
    print("| query_type | worst latency | input | target < 10 ms |\n|---|---:|---|---|")
    for query_type, (seconds, name) in worst.items():
        print(f"| {query_type} | {seconds * 1e3:.2f} ms | {name} | {'PASS' if seconds < 0.010 else 'FAIL'} |")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        print(f"\nnumbers written to {args.json}")


if __name__ == "__main__":
    main()
