"""`bbox_iou`: grounding answers (boxes ``[x1, y1, x2, y2]``) scored by IoU with a one-to-one matching.

Rules (the row's ``extra_info.meta`` JSON sets the per-row parameters):

- Reading: every ``[x1, y1, x2, y2]`` or ``(x1, y1, x2, y2)`` in the answer is a box: numbers (ints, decimals,
  exponents; at most 12 digits before and after the point) separated by commas or spaces. Boxes inside JSON count,
  so Qwen2.5-VL's ``[{"bbox_2d": [x1, y1, x2, y2], "label": "nodule"}]`` reads as its boxes. A bracket of another
  length (a point, five numbers) is not a box.
- Conventions: ``meta.box_format`` is ``"pixels"`` (the default; with ``meta.image_size = [W, H]``, the size of the
  image the model saw, i.e. after Qwen2.5-VL's resizing), ``"qwen3"`` (Qwen3-VL's 0-1000 relative units) or
  ``"relative"`` (0-1 fractions). Answer and gold share it unless ``meta.gold_format`` (same choices) says the gold
  differs. Both are converted to 0-1 before the IoU; "pixels" without an image size needs no conversion when answer
  and gold are both in pixels (IoU does not depend on the scale), and is an error when the other side is relative.
  ``medverl prep rl --model-family NAME`` fills a missing ``box_format`` and pixel ``image_size`` from the family.
- Bad boxes are never repaired: a non-finite number, inverted corners (``x2 < x1`` or ``y2 < y1``: reordering
  would also half-reward an ``[x, y, w, h]`` answer), a zero-area box, or a coordinate outside the image (below 0, or
  above W/H, 1000 or 1 for the convention; above 1,000,000 for pixels without an image size) makes the whole answer
  score 0 with the reason. Clipping would reward a whole-image box.
- Scoring: predicted and gold boxes are matched one to one (optimal assignment, at most ``MAX_BOXES`` a side), and
  acc = sum of the matched IoUs / max(#predicted, #gold), so extra and missing boxes both cost. With
  ``meta.iou_threshold = t`` a matched pair counts 1 when its IoU >= t, else 0 (same normalisation).
- Gold: the ground truth is read whole, like an answer (``"[10, 20, 110, 220]"``,
  ``"[[10, 20, 110, 220], [300, 40, 380, 90]]"``): its boxes are one set to find. With ``meta.gold_boxes: "any"``
  each box is an acceptable answer on its own, and the best one counts.
- ``pred`` (for majority voting) is the sorted predicted boxes in 0-1000 relative integers, or in rounded pixels for
  "pixels" without an image size.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from medverl.rewards.meta import parsed_per_meta, row_meta
from medverl.rewards.registry import InvalidReference, Verdict, register

BOX_FORMATS = ("pixels", "qwen3", "relative")
GOLD_BOXES_MODES = ("all", "any")
MAX_BOXES = 32  # per side; more scores 0 (and bounds the O(n^3) assignment)
MAX_ANSWER_CHARS = 1 << 16  # a longer answer scores 0 without being read
MAX_UNSIZED_COORD = 1e6  # pixels without an image size: larger coordinates are not an image's
_UPPER = {"qwen3": 1000.0, "relative": 1.0}

_NUM = (r"[-+]?(?:[0-9]{1,12}(?:\.[0-9]{0,12})?|\.[0-9]{1,12})(?:[eE][-+]?[0-9]{1,3})?"
        r"|[-+]?(?i:nan|inf(?:inity)?)")
# Separators are "\s*,\s*" or "\s+": each alternative fails in linear time, and numbers cannot start with a
# space, so a failed box backtracks over each whitespace run a bounded number of times (no catastrophic cases).
_SEP = r"(?:\s*,\s*|\s+)"
_BODY = rf"\s*({_NUM}){_SEP}({_NUM}){_SEP}({_NUM}){_SEP}({_NUM})\s*"
_BOX = re.compile(rf"\[{_BODY}\]|\({_BODY}\)")

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class BoxConfig:
    """A row's box parameters, from its meta (see the module docstring)."""

    box_format: str = "pixels"
    gold_format: str = "pixels"
    image_size: tuple[float, float] | None = None
    iou_threshold: float | None = None
    gold_boxes: str | None = None


@parsed_per_meta
def box_config(meta: object = None) -> BoxConfig:
    """The box parameters of a row's meta (a JSON object string, a mapping or None).

    Raises:
        InvalidReference: an unknown format, a bad image size or threshold, pixels to convert without a size.

    >>> box_config('{"box_format": "pixels", "image_size": [640, 480]}').image_size
    (640.0, 480.0)
    >>> box_config(None).box_format
    'pixels'
    """
    values = row_meta(meta)
    box_format = values.get("box_format", "pixels")
    gold_format = values.get("gold_format", box_format)
    for key, value in (("box_format", box_format), ("gold_format", gold_format)):
        if value not in BOX_FORMATS:
            raise InvalidReference(f"bbox_iou meta.{key} must be one of {', '.join(BOX_FORMATS)}, got {value!r}")
    image_size = values.get("image_size")
    if image_size is not None:
        if (not isinstance(image_size, Sequence) or isinstance(image_size, str) or len(image_size) != 2
                or not all(_is_number(v) and math.isfinite(v) and v > 0 for v in image_size)):
            raise InvalidReference(f"bbox_iou meta.image_size must be [width, height] in pixels, got {image_size!r}")
        image_size = (float(image_size[0]), float(image_size[1]))
    if "pixels" in (box_format, gold_format) and box_format != gold_format and image_size is None:
        raise InvalidReference(
            f"bbox_iou meta has box_format {box_format!r} and gold_format {gold_format!r}: converting pixels needs "
            "meta.image_size = [width, height] of the image the model saw"
        )
    threshold = values.get("iou_threshold")
    if threshold is not None and not (_is_number(threshold) and 0.0 < threshold <= 1.0):
        raise InvalidReference(f"bbox_iou meta.iou_threshold must be a number in (0, 1], got {threshold!r}")
    gold_boxes = values.get("gold_boxes")
    if gold_boxes is not None and gold_boxes not in GOLD_BOXES_MODES:
        raise InvalidReference(f"bbox_iou meta.gold_boxes must be 'all' or 'any', got {gold_boxes!r}")
    return BoxConfig(box_format, gold_format, image_size, None if threshold is None else float(threshold), gold_boxes)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def find_boxes(text: str, limit: int = MAX_BOXES + 1) -> list[tuple[str, str, str, str]]:
    """The number strings of the first `limit` boxes written in `text`.

    >>> find_boxes('[{"bbox_2d": [10, 20.5, 110, 220], "label": "nodule"}] and (1 2 3 4)')
    [('10', '20.5', '110', '220'), ('1', '2', '3', '4')]
    >>> find_boxes("[1, 2, 3] [1, 2, 3, 4, 5]")
    []
    """
    found = []
    for match in _BOX.finditer(text):
        groups = match.groups()
        found.append(groups[:4] if groups[0] is not None else groups[4:])
        if len(found) >= limit:
            break
    return found


def _check_box(numbers: Sequence[str], box_format: str, image_size: tuple[float, float] | None) -> Box | str:
    """The box as floats in its own units, or why it is not a valid box of `box_format`."""
    box = tuple(float(n) for n in numbers)
    if not all(math.isfinite(v) for v in box):
        return "non-finite coordinate"
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        return "inverted box (x2 < x1 or y2 < y1)"
    if x2 == x1 or y2 == y1:
        return "degenerate box (zero area)"
    if box_format == "pixels":
        width, height = image_size or (MAX_UNSIZED_COORD, MAX_UNSIZED_COORD)
    else:
        width = height = _UPPER[box_format]
    for value, upper in ((x1, width), (y1, height), (x2, width), (y2, height)):
        if not 0.0 <= value <= upper:
            return f"coordinate {value:g} outside [0, {upper:g}] ({box_format})"
    return box  # type: ignore[return-value]


def _to_relative(box: Box, box_format: str, image_size: tuple[float, float] | None) -> Box:
    if box_format == "pixels":
        if image_size is None:  # both sides in pixels of the same image: IoU does not need the scale
            return box
        width, height = image_size
        return (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
    scale = _UPPER[box_format]
    return (box[0] / scale, box[1] / scale, box[2] / scale, box[3] / scale)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes ``(x1, y1, x2, y2)``; 0.0 when the union is empty.

    >>> box_iou((0, 0, 2, 2), (1, 0, 3, 2))
    0.3333333333333333
    """
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    inter = inter_w * inter_h if inter_w > 0 and inter_h > 0 else 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def max_weight_matching(weights: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """Pairs (row, column) of a one-to-one assignment maximising the summed weights (Hungarian, O(n^2 m)).

    >>> max_weight_matching([[0.9, 0.8], [0.7, 0.0]])
    [(0, 1), (1, 0)]
    """
    n = len(weights)
    m = len(weights[0]) if n else 0
    if n == 0 or m == 0:
        return []
    if n > m:
        return [(r, c) for c, r in max_weight_matching([list(col) for col in zip(*weights)])]
    # Kuhn-Munkres with potentials on costs -weight, rows 1..n assigned to columns 1..m (n <= m).
    inf = math.inf
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    owner, way = [0] * (m + 1), [0] * (m + 1)
    for row in range(1, n + 1):
        owner[0] = row
        col0 = 0
        minv = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[col0] = True
            r0, delta, col1 = owner[col0], inf, 0
            costs = weights[r0 - 1]
            ur0 = u[r0]
            for col in range(1, m + 1):
                if not used[col]:
                    cur = -costs[col - 1] - ur0 - v[col]
                    if cur < minv[col]:
                        minv[col], way[col] = cur, col0
                    if minv[col] < delta:
                        delta, col1 = minv[col], col
            for col in range(m + 1):
                if used[col]:
                    u[owner[col]] += delta
                    v[col] -= delta
                else:
                    minv[col] -= delta
            col0 = col1
            if owner[col0] == 0:
                break
        while col0:
            col1 = way[col0]
            owner[col0] = owner[col1]
            col0 = col1
    return sorted((owner[col] - 1, col - 1) for col in range(1, m + 1) if owner[col])


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun.replace('box', 'boxes')}"


def match_boxes(pred: Sequence[Box], gold: Sequence[Box], threshold: float | None = None) -> tuple[float, str]:
    """acc and reason of predicted boxes against one gold set (both non-empty, in the same units).

    >>> match_boxes([(0, 0, 2, 2), (5, 5, 6, 6)], [(0, 0, 2, 2)])
    (0.5, '2 boxes for 1 gold box; matched: IoU 1.00')
    """
    ious = [[box_iou(p, g) for g in gold] for p in pred]
    if threshold is None:
        pairs = max_weight_matching(ious)
        matched = [ious[p][g] for p, g in pairs]
        acc = sum(matched) / max(len(pred), len(gold))
    else:
        cut = threshold - 1e-9  # a pair exactly at the threshold must not fail on the rounding of a conversion
        hits = [[1.0 if iou >= cut else 0.0 for iou in row] for row in ious]
        pairs = max_weight_matching(hits)
        matched = [ious[p][g] for p, g in pairs]
        acc = sum(hits[p][g] for p, g in pairs) / max(len(pred), len(gold))
    if acc >= 1.0 - 1e-9:
        return 1.0, ""
    if threshold is None:
        mean = sum(matched) / len(matched)
        iou_text = ("mean IoU " if len(matched) > 1 else "IoU ") + f"{mean:.2f}" if mean > 0 else "no overlap"
    else:
        reached = sum(iou >= cut for iou in matched)
        iou_text = f"{reached} of {len(matched)} reach IoU {threshold:g}"
    if len(pred) != len(gold):
        return acc, f"{_plural(len(pred), 'box')} for {_plural(len(gold), 'gold box')}; matched: {iou_text}"
    return acc, iou_text


def _read_gold(gold: str, config: BoxConfig) -> tuple[Box, ...]:
    if not isinstance(gold, str):
        raise InvalidReference(f"bbox_iou gold must be a string of boxes, got {gold!r:.80}")
    found = find_boxes(gold)
    if not found:
        raise InvalidReference(f"bbox_iou gold {gold[:80]!r} holds no box [x1, y1, x2, y2]")
    if len(found) > MAX_BOXES:
        raise InvalidReference(f"bbox_iou gold {gold[:80]!r} has more than {MAX_BOXES} boxes")
    boxes = []
    for numbers in found:
        box = _check_box(numbers, config.gold_format, config.image_size)
        if isinstance(box, str):
            raise InvalidReference(f"bbox_iou gold {gold[:80]!r}: {box}")
        boxes.append(_to_relative(box, config.gold_format, config.image_size))
    return tuple(boxes)


@functools.lru_cache(maxsize=16384)
def gold_box_sets(golds: tuple[str, ...], config: BoxConfig) -> tuple[tuple[Box, ...], ...]:
    """The acceptable gold box sets, converted to 0-1 (or kept in pixels when no image size is needed): every box of
    the ground truth as one set to find, or each box an alternative with ``meta.gold_boxes: "any"``.

    Raises:
        InvalidReference: a ground truth without a valid box, or with more than ``MAX_BOXES``.

    >>> gold_box_sets(("[[0, 0, 500, 500], [500, 500, 1000, 1000]]",), BoxConfig("qwen3", "qwen3"))
    (((0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)),)
    """
    if not golds:
        raise InvalidReference("bbox_iou has no gold")
    boxes = tuple(box for gold in golds for box in _read_gold(gold, config))
    if len(boxes) > MAX_BOXES:
        raise InvalidReference(f"bbox_iou ground truth has more than {MAX_BOXES} boxes")
    return tuple((box,) for box in boxes) if config.gold_boxes == "any" else (boxes,)


def validate_box_reference(golds: tuple[str, ...], meta: object = None) -> None:
    """Raise :class:`InvalidReference` for a meta or gold no answer could match (see :func:`gold_box_sets`).

    >>> validate_box_reference(("[110, 20, 10, 220]",))
    Traceback (most recent call last):
    ...
    medverl.rewards.registry.InvalidReference: bbox_iou gold '[110, 20, 10, 220]': inverted box (x2 < x1 or y2 < y1)
    """
    gold_box_sets(tuple(golds), box_config(meta))


def _canonical(boxes: Sequence[Box], scaled: bool) -> str:
    factor = 1000.0 if scaled else 1.0
    rounded = sorted(tuple(round(v * factor) for v in box) for box in boxes)
    texts = ["[" + ",".join(map(str, box)) + "]" for box in rounded]
    return texts[0] if len(texts) == 1 else "[" + ",".join(texts) + "]"


@register("bbox_iou", extra_info_keys=("meta",), validate=validate_box_reference, answer_type="closed",
          whole_ground_truth=True)
def bbox_iou(answer: str, golds: tuple[str, ...], meta: object = None) -> Verdict:
    """Grounding boxes by IoU, matched one to one; extra and missing boxes cost (rules: ``medverl.rewards.boxes``).

    >>> bbox_iou("[10, 20, 110, 220]", ("[10, 20, 110, 220]",)).acc
    1.0
    >>> bbox_iou('[{"bbox_2d": [10, 20, 60, 220], "label": "nodule"}]', ("[10, 20, 110, 220]",))
    Verdict(acc=0.5, pred='[10,20,60,220]', reason='IoU 0.50')
    >>> bbox_iou("[10, 20, 110, 220]", ("[20, 40, 220, 440]",), meta='{"box_format": "qwen3"}').pred
    '[10,20,110,220]'
    """
    config = box_config(meta)
    sets = gold_box_sets(tuple(golds), config)
    if not isinstance(answer, str):
        return Verdict(0.0, reason="answer is not text")
    if len(answer) > MAX_ANSWER_CHARS:
        return Verdict(0.0, reason=f"answer longer than {MAX_ANSWER_CHARS} characters")
    found = find_boxes(answer)
    if not found:
        return Verdict(0.0, reason="no box in answer")
    if len(found) > MAX_BOXES:
        return Verdict(0.0, reason=f"more than {MAX_BOXES} boxes")
    pred = []
    for numbers in found:
        box = _check_box(numbers, config.box_format, config.image_size)
        if isinstance(box, str):
            return Verdict(0.0, reason=box)
        pred.append(_to_relative(box, config.box_format, config.image_size))
    best_acc, best_reason = -1.0, ""
    for gold in sets:
        acc, reason = match_boxes(pred, gold, config.iou_threshold)
        if acc > best_acc:
            best_acc, best_reason = acc, reason
    scaled = config.box_format != "pixels" or config.image_size is not None
    return Verdict(best_acc, pred=_canonical(pred, scaled), reason=best_reason)
