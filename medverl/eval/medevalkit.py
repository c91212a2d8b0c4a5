"""MedEvalKit's rule-path verdicts, re-implemented for ``medverl eval score --compat medevalkit``.

MedEvalKit (github.com/alibaba-damo-academy/MedEvalKit) measured the seed's table. Its verdicts come from a few
string rules with quirks that move the numbers by points, so they are reproduced here as they behave, quirks
included (each function names the MedEvalKit file and function it follows). These rules are deliberately NOT
medverl's own scoring: ``"nodule"`` reads as "no", an unreadable multiple-choice answer is given the most similar
option, MMMU picks a random letter when it reads none, and MMMU's open questions never score (its ``eval_open``
walks the response one character at a time). Only the rule path is covered; a run with MedEvalKit's LLM judge
(``use_llm_judge``) replaces the open (and, on SLAKE, all) verdicts by the judge's.

Each prepared benchmark row carries the harness's own view of the question in ``extra_info.meta["medevalkit"]``:
the flow (below), the answer as MedEvalKit holds it (case kept, letters or text), the choices as MedEvalKit
formats them, and the answer type or question type. Rows prepared without it get a flow from their query type.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

MEDEVALKIT_SEED = 42  # eval.sh's SEED; eval.py calls set_seed(seed) before each benchmark
_NO_BOX = "None"  # mathruler's extract_boxed_content returns the string "None" when it finds no box
_ANSWER_PATTERNS = ("**answer**:", "**answer**", "*answer*:", "**answer:**", "answer is", "answer:", "答案:",
                    "final answer", "final answer is")  # utils/utils.py parse_response, tried in this order
_MMMU_STRIP = (",", ".", "!", "?", ";", ":", "'")  # utils/MMMU/eval_utils.py parse_multi_choice_response


@dataclass(frozen=True)
class Verdict:
    """MedEvalKit's verdict on one response: ``correct``, the answer its rules read, and how they read it
    (``""`` when read directly; else the fallback taken)."""

    correct: bool
    pred: str
    fallback: str = ""


def boxed(text: str) -> str:
    """The content of the last ``\\boxed{...}`` (braces balanced), stripped; ``"None"`` when there is none.

    Follows mathruler's ``grader.extract_boxed_content``, which MedEvalKit imports.

    >>> boxed(r"so \\boxed{B} or \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    """
    start = text.rfind("\\boxed{")
    if start == -1:
        return _NO_BOX
    depth = 0
    content = text[start + len("\\boxed{"):]
    for i, char in enumerate(content):
        depth += (char == "{") - (char == "}")
        if depth == -1:
            return content[:i].strip()
    return _NO_BOX


def tagged(text: str | None, tag: str) -> str:
    """Every ``<tag>...</tag>`` span joined by spaces; the whole text when there is none (utils/utils.py
    ``extract`` with ``hard=True`` and ``get_content_between_a_b``)."""
    if not text:
        return ""
    opening, closing = f"<{tag}>", f"</{tag}>"
    spans, start = [], text.find(opening)
    while start != -1:
        end = text.find(closing, start + len(opening))
        if end == -1:
            break
        spans.append(text[start + len(opening):end] + " ")
        start = text.find(opening, end + len(closing))
    return "".join(spans).strip() or text


def parse_response(response: str) -> str:
    """Lower-cased; a box (when "boxed" appears) or else the ``<answer>`` span; then the text after the last
    occurrence of each answer lead-in in turn (utils/utils.py ``parse_response``)."""
    response = response.lower()
    if "boxed" in response:
        response = boxed(response)
    elif "<answer>" in response:
        response = tagged(response, "answer")
    for pattern in _ANSWER_PATTERNS:
        if pattern in response:
            response = response.split(pattern)[-1]
    return response


def judge_judgement(answer: str, response: str) -> bool:
    """Yes/no: exactly one of "yes"/"no" occurs as a substring, and the answer occurs too
    (utils/utils.py ``judge_judgement``)."""
    response = parse_response(response).replace("\n", "").replace(".", "")
    if ("yes" in response) != ("no" in response):
        return answer.lower() in response
    return False


def judge_close_end_vqa(answer: str, response: str) -> bool:
    """Other closed answers: equality after the parse, newlines and full stops removed, no strip
    (utils/utils.py ``judge_close_end_vqa``)."""
    return parse_response(response).replace("\n", "").replace(".", "") == answer.lower()


def open_exact_match(answer: str, response: str) -> bool:
    """Open answers on the rule path: ``em`` of utils/utils.py ``judge_open_end_vqa`` (the parse equals the
    lower-cased answer; nothing stripped)."""
    return parse_response(response) == answer.lower()


def most_similar_index(choices: Sequence[str], target: str) -> int:
    """The first choice of highest ``SequenceMatcher(None, choice, target).ratio()``; 0 when every ratio is 0
    (utils/utils.py ``find_most_similar_index``)."""
    best, best_ratio = 0, 0.0
    for i, choice in enumerate(choices):
        ratio = difflib.SequenceMatcher(None, choice, target).ratio()
        if ratio > best_ratio:
            best, best_ratio = i, ratio
    return best


def judge_multi_choice(choices: Sequence[str], answer: str, response: str) -> Verdict:
    """utils/utils.py ``judge_multi_choice``: a bare letter paragraph first, then the parse cut at the first "."
    and after the last ":"; compared as a letter or a choice text; otherwise the most similar choice."""
    letters = [chr(ord("a") + i) for i in range(len(choices))]
    response = response.lower()
    paragraphs = response.split("\n\n")
    if paragraphs[0] in letters:
        response = paragraphs[0]
    elif paragraphs[-1].split(".")[0] in letters:
        response = paragraphs[-1].split(".")[0]
    response = parse_response(response).strip().lower().replace("\n", "")
    choices = [c.lower() for c in choices]
    answer = answer.strip().lower()
    pred = response.split(".")[0].split(":")[-1]
    if pred == answer:
        return Verdict(True, pred)
    if pred in letters:
        return Verdict(choices[ord(pred) - ord("a")] == answer, pred)
    if pred in choices:
        return Verdict(answer in letters and pred == choices[ord(answer) - ord("a")], pred)
    index = most_similar_index(choices, response)
    return Verdict(letters[index] == answer or choices[index] == answer, letters[index], "most similar choice")


def mmmu_multi_choice(response: str, letters: Sequence[str], index2ans: Mapping[str, str],
                      rng: random.Random) -> tuple[str, str]:
    """(letter, fallback) by utils/MMMU/eval_utils.py ``parse_multi_choice_response``: "(A)" forms, then " A "
    forms, then (over five words) option texts, the last one written winning; else a random letter."""
    if "<answer>" in response:
        response = tagged(response, "answer")
    elif "\\boxed" in response:
        response = boxed(response)
    response = response.strip()
    for char in _MMMU_STRIP:
        response = response.strip(char)
    response = f" {response} "
    candidates = [c for c in letters if f"({c})" in response]
    marker = "({})"
    if not candidates:
        candidates, marker = [c for c in letters if f" {c} " in response], " {} "
    by_text = False
    if not candidates and len(response.split()) > 5:
        candidates = [c for c, text in index2ans.items() if text.lower() in response.lower()]
        by_text = True
    if not candidates:
        return rng.choice(list(letters)), "random letter"
    if len(candidates) == 1:
        return candidates[0], ""
    if by_text:
        positions = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    else:
        positions = [response.rfind(marker.format(c)) for c in candidates]
    return candidates[positions.index(max(positions))], ""


def mmmu_open(answer: str, response: str) -> bool:
    """utils/MMMU/eval_utils.py ``eval_open`` as eval_val.py calls it: the parsed prediction is the response
    STRING, which ``eval_open`` walks one character at a time, so only an empty answer (normalised to "") can
    be found in it."""
    normalised = _mmmu_normalise(answer)
    return any(isinstance(n, str) and n in char for char in response for n in normalised)


def _mmmu_normalise(text: str) -> list:
    """utils/MMMU/eval_utils.py ``normalize_str``: a number rounded to 2 places, else lower case (one character
    padded with a space on either side)."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [" " + text, text + " "] if len(text) == 1 else [text]


# --- the flows: each benchmark's cal_metrics, from the raw response ----------------------------------------------


def _vqa_box_or_tag(response: str) -> str:
    """The first step of VQA_RAD / PATH_VQA / SLAKE ``cal_metrics``: the box if any, else the ``<answer>`` span."""
    inner = boxed(response)
    if inner != _NO_BOX:
        return inner
    return tagged(response, "answer") if "<answer>" in response else response


def flow_vqa(view: Mapping, response: str, rng: random.Random) -> Verdict:
    """utils/VQA_RAD/VQA_RAD.py and utils/PATH_VQA/PATH_VQA.py ``cal_metrics``: both sides lower-cased and
    stripped; "yes"/"no" answers by ``judge_judgement``, others by the exact match of ``judge_open_end_vqa``."""
    answer = str(view["answer"]).lower().strip()
    response = _vqa_box_or_tag(response).lower().strip()
    if answer in ("yes", "no"):
        return Verdict(judge_judgement(answer, response), response)
    return Verdict(open_exact_match(answer, response), response)


def flow_slake(view: Mapping, response: str, rng: random.Random) -> Verdict:
    """utils/SLAKE/SLAKE.py ``cal_metrics``: nothing stripped or lower-cased first; OPEN by exact match, CLOSED
    "yes"/"no" (case-sensitive: "Yes" and 是/否 are not) by ``judge_judgement``, other CLOSED by
    ``judge_close_end_vqa``."""
    answer = str(view["answer"])
    response = _vqa_box_or_tag(response)
    if view.get("answer_type") == "OPEN":
        return Verdict(open_exact_match(answer, response), response)
    if answer in ("yes", "no"):
        return Verdict(judge_judgement(answer, response), response)
    return Verdict(judge_close_end_vqa(answer, response), response)


def flow_multi_choice(view: Mapping, response: str, rng: random.Random) -> Verdict:
    """utils/PMC_VQA/PMC_VQA.py ``cal_metrics``: ``judge_multi_choice`` on the raw response."""
    return judge_multi_choice(view["choices"], str(view["answer"]), response)


def flow_multi_choice_tagged(view: Mapping, response: str, rng: random.Random) -> Verdict:
    """utils/OmniMedVQA/OmniMedVQA.py and utils/MedXpertQA/MedXpertQA.py ``cal_metrics``: the ``<answer>`` span
    first, then ``judge_multi_choice``."""
    return judge_multi_choice(view["choices"], str(view["answer"]), tagged(response, "answer"))


def flow_mmmu(view: Mapping, response: str, rng: random.Random) -> Verdict:
    """utils/MMMU/eval_val.py ``run_model`` then ``evaluate``: the ``<answer>`` span, then the box if any; a
    multiple-choice letter must equal the answer; open questions by ``mmmu_open``."""
    if "<answer>" in response:
        response = tagged(response, "answer")
    inner = boxed(response)
    if inner != _NO_BOX:
        response = inner
    if view.get("question_type") != "multiple-choice":
        return Verdict(mmmu_open(str(view["answer"]), response), response)
    choices = list(view["choices"])
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    letter, fallback = mmmu_multi_choice(response, letters, dict(zip(letters, choices, strict=True)), rng)
    return Verdict(letter == view["answer"], letter, fallback)


FLOWS: dict[str, Callable[[Mapping, str, random.Random], Verdict]] = {
    "vqa": flow_vqa,
    "slake": flow_slake,
    "multi_choice": flow_multi_choice,
    "multi_choice_tagged": flow_multi_choice_tagged,
    "mmmu": flow_mmmu,
}


def view_from_query_type(query_type: str, answer: str, options: Sequence[str]) -> dict:
    """The harness's view of a row prepared without one: multiple choice as OmniMedVQA formats it ("A. text"),
    everything else as VQA-RAD (yes/no by ``judge_judgement``, the rest by exact match)."""
    if query_type == "multiple_choice":
        return {"flow": "multi_choice_tagged", "answer": answer,
                "choices": [f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options)]}
    return {"flow": "vqa", "answer": answer}


def verdict(view: Mapping, response: str, rng: random.Random) -> Verdict:
    """MedEvalKit's verdict on `response` for a question seen as `view` (``flow``, ``answer``, ``choices``,
    ``answer_type``, ``question_type``); `rng` stands for Python's global random seeded per benchmark."""
    flow = FLOWS.get(str(view.get("flow")))
    if flow is None:
        raise ValueError(f"unknown MedEvalKit flow {view.get('flow')!r}; known: {', '.join(FLOWS)}")
    return flow(view, response, rng)
