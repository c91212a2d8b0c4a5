"""MedEvalKit's rule-path verdicts, re-implemented for ``medverl eval score --compat medevalkit``.

MedEvalKit (github.com/alibaba-damo-academy/MedEvalKit) measured the seed's table. Its verdicts come from a few
string rules with quirks that move the numbers by points, so they are reproduced here as they behave, quirks
included (each function names the MedEvalKit file and function it follows). These rules are deliberately NOT
medverl's own scoring: ``"nodule"`` reads as "no", an unreadable multiple-choice answer is given the most similar
option, MMMU picks a random letter when it reads none, and MMMU's open questions never score (its ``eval_open``
walks the response one character at a time). Only the rule path is covered; a run with MedEvalKit's LLM judge
(``use_llm_judge``) replaces the open (and, on SLAKE, all) verdicts by the judge's. The open questions' BLEU,
ROUGE and F1 (``judge_open_end_vqa``) are reproduced too, from the libraries' arithmetic (:func:`open_metrics`).

Each prepared benchmark row carries the harness's own view of the question in ``extra_info.meta["medevalkit"]``:
the flow (below), the answer as MedEvalKit holds it (case kept, letters or text), the choices as MedEvalKit
formats them, and the answer type or question type. Rows prepared without it get a flow from their query type.
"""

from __future__ import annotations

import difflib
import math
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from medverl.rewards.report import ngram_counts

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


# --- open-question metrics: utils/utils.py judge_open_end_vqa ---------------------------------------------------
#
# MedEvalKit scores every open question of VQA-RAD, PATH-VQA and SLAKE with BLEU-1..4, ROUGE-1/2/L, exact match and
# a set-based token F1 (utils/utils.py ``judge_open_end_vqa``), then averages each over the benchmark's open
# questions (``cal_metrics``: plain sums divided by the open count; fractions, not percent). The libraries it calls
# (``requirements.txt`` pins nltk==3.9.1 and rouge==1.0.1) are re-implemented below so that medverl needs neither;
# the arithmetic, the order of operations and the failures are theirs.

OPEN_METRIC_KEYS = ("em", "bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougel", "precision", "recall",
                    "f1")  # judge_open_end_vqa's keys, in its order (see calculate_f1 for what the last three hold)


def tokenize(text: str) -> list[str]:
    """MedEvalKit's BLEU tokens (utils/utils.py ``tokenize``): lower-cased, a space put before every full stop,
    then split on single spaces, so other punctuation stays on its word, and a leading, trailing or doubled space
    yields an empty-string token (``""`` itself is one token, ``[""]``).

    >>> tokenize("Left  lung.")
    ['left', '', 'lung', '.']
    """
    return text.lower().replace(".", " .").split(" ")


def sentence_bleu(reference: Sequence[str], hypothesis: Sequence[str], weights: Sequence[float]) -> float:
    """NLTK 3.9.1's ``sentence_bleu([reference], hypothesis, weights)`` with no smoothing function, as MedEvalKit
    calls it: one reference, ``auto_reweigh`` off.

    The modified precision of order k clips each hypothesis k-gram count by the reference's and divides by the
    hypothesis k-gram count (at least 1). The brevity penalty is 1 when the hypothesis is longer than the
    reference, else ``exp(1 - ref_len / hyp_len)`` (so equal lengths give exactly 1.0). Quirks kept:

    * no unigram in common: NLTK returns the int ``0`` at once;
    * some higher order has no match (the hypothesis may simply be too short to have one): NLTK's ``method0``
      warns and substitutes ``sys.float_info.min`` for that precision, so the score is NOT 0 but tiny, e.g. BLEU-2
      of "left lung" against "right lung" is ``exp(0.5 * log(1/2) + 0.5 * log(2.2e-308))`` ~ 1.05e-154 (identical two-word answers get BLEU-4 ~ 1.49e-154);
    * the weighted logs are added with ``math.fsum`` and the score is ``bp * exp(sum)``, as NLTK computes it.
    """
    hyp_len, ref_len = len(hypothesis), len(reference)
    numerators, denominators = [], []
    for n in range(1, len(weights) + 1):
        hyp_counts, ref_counts = ngram_counts(hypothesis, n), ngram_counts(reference, n)
        numerators.append(sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items()))
        denominators.append(max(1, sum(hyp_counts.values())))
    if hyp_len > ref_len:
        penalty = 1.0
    elif hyp_len == 0:
        penalty = 0.0
    else:
        penalty = math.exp(1 - ref_len / hyp_len)
    if numerators[0] == 0:
        return 0
    precisions = [num / den if num else sys.float_info.min for num, den in zip(numerators, denominators, strict=True)]
    return penalty * math.exp(math.fsum(w * math.log(p) for w, p in zip(weights, precisions, strict=True)))


def bleu(pred: str, target: str, n: int) -> float:
    """utils/utils.py ``bleu``: :func:`sentence_bleu` of :func:`tokenize`'d texts with ``n`` weights of ``1/n``.

    >>> bleu("left lung", "left lung", 4)  # 2 words: no 3- or 4-gram exists, so two precisions are float_info.min
    1.491668146240062e-154
    """
    return sentence_bleu(tokenize(target), tokenize(pred), [1 / n for _ in range(n)])


def _rouge_sentences(text: str) -> list[str]:
    """rouge 1.0.1 ``Rouge._get_scores``: split on ".", drop zero-length pieces, collapse whitespace inside each
    (a whitespace-only piece survives as the sentence ``""``)."""
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def _rouge_words(sentences: Sequence[str]) -> list[str]:
    return [word for sentence in sentences for word in sentence.split(" ")]


def _rouge_f(precision: float, recall: float) -> float:
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def _rouge_n(hyp: Sequence[str], ref: Sequence[str], n: int) -> dict[str, float]:
    """rouge 1.0.1 ``rouge_n`` (``exclusive=True``): n-grams as SETS, so a repeated n-gram counts once."""
    if len(hyp) <= 0:
        raise ValueError("Hypothesis is empty.")
    if len(ref) <= 0:
        raise ValueError("Reference is empty.")
    hyp_grams, ref_grams = set(ngram_counts(_rouge_words(hyp), n)), set(ngram_counts(_rouge_words(ref), n))
    overlap = len(hyp_grams & ref_grams)
    precision = overlap / len(hyp_grams) if hyp_grams else 0.0
    recall = overlap / len(ref_grams) if ref_grams else 0.0
    return {"r": recall, "p": precision, "f": _rouge_f(precision, recall)}


def _lcs_words(x: Sequence[str], y: Sequence[str]) -> set[str]:
    """rouge 1.0.1 ``_recon_lcs`` (``exclusive=True``): the words of ONE longest common subsequence, walked back
    from the end (a match goes diagonally; else up when the cell above is strictly larger, otherwise left), as a
    set. (rouge walks back recursively, so a sentence pair of about a thousand words overflows Python's stack
    there; this walk is iterative.)"""
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(table[i - 1][j], table[i][j - 1])
    words, i, j = set(), len(x), len(y)
    while i and j:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def _rouge_l(hyp: Sequence[str], ref: Sequence[str]) -> dict[str, float]:
    """rouge 1.0.1 ``rouge_l_summary_level`` (``exclusive=True``): the union, over every (reference sentence,
    hypothesis sentence) pair, of the words of their LCS, counted as distinct words, over the distinct words of
    the reference (recall) and of the hypothesis (precision)."""
    if len(hyp) <= 0 or len(ref) <= 0:
        raise ValueError("Collections must contain at least 1 sentence.")
    union: set[str] = set()
    for ref_sentence in ref:
        for hyp_sentence in hyp:
            union |= _lcs_words(ref_sentence.split(" "), hyp_sentence.split(" "))
    recall, precision = len(union) / len(set(_rouge_words(ref))), len(union) / len(set(_rouge_words(hyp)))
    return {"r": recall, "p": precision, "f": _rouge_f(precision, recall)}


def rouge(pred: str, target: str) -> dict[str, dict[str, float]]:
    """utils/utils.py ``rouge``: rouge 1.0.1 ``Rouge().get_scores(pred.lower(), target.lower())[0]``, i.e.
    ``{"rouge-1" | "rouge-2" | "rouge-l": {"r", "p", "f"}}``. MedEvalKit keeps the ``"f"`` of each.

    Quirks kept: sentences are the pieces between full stops and words are split on single spaces after the
    whitespace is collapsed; n-grams and LCS words are sets; F is ``2 * p * r / (p + r + 1e-8)``, so a perfect
    match scores 0.99999999..., not 1; a one-word answer has no bigram, so its ROUGE-2 is 0 even when identical.
    A hypothesis with no sentence ("", ".", "...") raises ``ValueError("Hypothesis is empty.")`` (and an empty
    reference ``ValueError("Reference is empty.")``); a whitespace-only one does not (it is the sentence "").

    >>> rouge("left lung", "left lung")["rouge-1"]["f"]  # 2 / (2 + 1e-8)
    0.999999995
    """
    hyp, ref = _rouge_sentences(pred.lower()), _rouge_sentences(target.lower())
    return {"rouge-1": _rouge_n(hyp, ref, 1), "rouge-2": _rouge_n(hyp, ref, 2), "rouge-l": _rouge_l(hyp, ref)}


def calculate_f1(prediction: str, ground_truth: str) -> tuple[float, float, float] | int:
    """utils/utils.py ``calculate_f1``: the SETS of lower-cased whitespace-split tokens (punctuation stays on its
    word: "lung." is not "lung"); returns ``(f1, precision, recall)`` in that order, ``(0, 0, 0)`` when nothing is
    shared, and the bare int ``0`` when either side has no token.

    Its caller unpacks the tuple as ``precision, recall, f1``, so MedEvalKit's ``"precision"`` holds the F1, its
    ``"recall"`` the precision and its ``"f1"`` the recall; and the bare ``0`` cannot be unpacked, so a
    whitespace-only answer raises ``TypeError`` there (:func:`judge_open_end_vqa`).

    >>> calculate_f1("left upper lobe", "upper lobe")
    (0.8, 0.6666666666666666, 1.0)
    """
    prediction_tokens, truth_tokens = set(prediction.lower().split()), set(ground_truth.lower().split())
    common = prediction_tokens & truth_tokens
    if len(prediction_tokens) == 0 or len(truth_tokens) == 0:
        return 0
    precision, recall = len(common) / len(prediction_tokens), len(common) / len(truth_tokens)
    if precision + recall == 0:
        return 0, 0, 0
    return 2 * (precision * recall) / (precision + recall), precision, recall


def judge_open_end_vqa(answer: str, response: str) -> dict[str, float | bool]:
    """utils/utils.py ``judge_open_end_vqa``: the answer lower-cased, the response by :func:`parse_response`
    (nothing stripped: a lead-in such as "answer:" leaves its space, which is an empty BLEU token), then
    ``em``, BLEU-1..4 (:func:`bleu`), the F of ROUGE-1/2/L (:func:`rouge`) and :func:`calculate_f1`'s values under
    MedEvalKit's labels (``"precision"`` = F1, ``"recall"`` = precision, ``"f1"`` = recall).

    Raises as MedEvalKit does: ``ValueError`` from ROUGE for an empty hypothesis (or reference), ``TypeError`` when
    ``calculate_f1`` returns its bare 0; in MedEvalKit nothing catches either, so the benchmark's ``cal_metrics``
    stops and no metrics are written for it.
    """
    answer = answer.lower()
    response = parse_response(response)
    bleus = [bleu(response, answer, n) for n in (1, 2, 3, 4)]
    em = response == answer
    scores = rouge(response, answer)
    f1_tuple = calculate_f1(response, answer)
    if not isinstance(f1_tuple, tuple):
        raise TypeError(f"cannot unpack non-iterable {type(f1_tuple).__name__} object")
    precision, recall, f1 = f1_tuple  # MedEvalKit's order, not calculate_f1's
    return {"em": em, "bleu1": bleus[0], "bleu2": bleus[1], "bleu3": bleus[2], "bleu4": bleus[3],
            "rouge1": scores["rouge-1"]["f"], "rouge2": scores["rouge-2"]["f"], "rougel": scores["rouge-l"]["f"],
            "precision": precision, "recall": recall, "f1": f1}


def open_metrics(view: Mapping, response: str) -> dict | None:
    """MedEvalKit's open-question metrics for `response` to a question seen as `view`, or ``None`` when its flow
    does not treat the question as open (only VQA-RAD / PATH-VQA answers other than "yes"/"no" and SLAKE's
    ``answer_type == "OPEN"`` are; multiple choice and MMMU have none).

    The response is first read as that ``cal_metrics`` reads it (the box, else the ``<answer>`` span; VQA-RAD and
    PATH-VQA then lower-case and strip both sides, SLAKE does not). Where MedEvalKit raises
    (:func:`judge_open_end_vqa`), the result is ``{"error": "<exception>: <message>"}``: MedEvalKit records
    nothing for such a benchmark (:func:`aggregate_open_metrics`).
    """
    flow = view.get("flow")
    if flow == "vqa":
        answer = str(view["answer"]).lower().strip()
        if answer in ("yes", "no"):
            return None
        response = _vqa_box_or_tag(response).lower().strip()
    elif flow == "slake" and view.get("answer_type") == "OPEN":
        answer, response = str(view["answer"]), _vqa_box_or_tag(response)
    else:
        return None
    try:
        return judge_open_end_vqa(answer, response)
    except (ValueError, TypeError) as error:
        return {"error": f"{type(error).__name__}: {error}"}


def aggregate_open_metrics(records: Sequence[Mapping]) -> dict:
    """The ``metrics["open"]`` means of a benchmark's ``cal_metrics`` over its open questions' records
    (:func:`open_metrics`), in [0, 1]: each key summed in question order and divided by ``total``; ``em`` is the
    share of exact matches. ``errors`` counts the records where MedEvalKit raises; when there is any, MedEvalKit
    writes no metrics for the benchmark, so every mean is ``None``.
    """
    errors = sum(1 for r in records if "error" in r)
    means: dict[str, float | None] = {}
    for key in OPEN_METRIC_KEYS:
        if errors or not records:
            means[key] = None
            continue
        total = 0
        for record in records:
            total += record[key]
        means[key] = total / len(records)
    return {"total": len(records), **means, "errors": errors}
