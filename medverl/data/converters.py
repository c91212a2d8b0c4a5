"""Pure per-record converters: one input record to one output row, or a :class:`Reject` with its reason.

Each record format (``medverl prep FORMAT``) is one entry of :data:`CONVERTERS`. A package adds a format with
:func:`register` on a reader of its records, in a module named by an entry point of group ``medverl.converters``::

    from medverl.data.converters import convert_rl, register

    @register("lab_vqa", writes="rl")
    def convert_lab_vqa(record, index, source, options):  # the lab's {"q", "a", "img"} records as RL rows
        return convert_rl.read({"question": record.get("q"), "answer": record.get("a"), "image": record.get("img"),
                                "query_type": "exact_match"}, index, source, options)
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

from PIL import Image

from medverl.data.contamination import cached_evaluation_keys
from medverl.data.files import DEFAULT_MAX_IMAGE_BYTES, image_roots
from medverl.data.images import CHECK_LEVELS, DEFAULT_PIXEL_LIMIT, ImageError, LoadedImage, load_image
from medverl.data.job import Reject
from medverl.data.public import pmc_vqa_record, slake_record, vqa_record
from medverl.data.schemas import IMAGE_PLACEHOLDER, KINDS
from medverl.models import get_family
from medverl.prompts import ANSWER_HINTS
from medverl.registry import Registry
from medverl.rewards import InvalidReference, RewardOptions, UnknownQueryType, check_reference, parse_ground_truth
from medverl.rewards.choice import LETTERS

SFT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class Content(NamedTuple):
    """What a record says, as a reader judges it: its text and its image references (not loaded)."""

    text: str
    images: list


class Parsed(NamedTuple):
    """A record whose fields are valid: its content, and how to build its row once its images are loaded."""

    content: Content
    build: Callable[[list[dict], str], dict]


@dataclass(frozen=True)
class PrepOptions:
    """What every converter of one job shares.

    Attributes:
        image_root: the image roots (one directory or several): every image path must lie inside one after
            symlinks are resolved; relative paths are taken from them.
        max_image_bytes: larger image files and inline images are rejected unread.
        max_pixels, min_pixels: written into every image dict (verl forwards them to qwen_vl_utils).
        pixel_limit: images with more pixels are rejected before decoding.
        image_check: how images are proven to decode, one of ``CHECK_LEVELS`` ("structure" walks JPEG markers and
            PNG chunk CRCs; "decode" decodes every pixel).
        data_source: for records that name none.
        split: for RL records that name none.
        ability: the RL ``ability`` column.
        query_type: for RL records that name none.
        template: the RL prompt template text (fields {question}, {options}, {answer_hint}).
        plugins: reward plugins, so that their query types validate here as they will in training.
        model_family: the model family (:mod:`medverl.models`) the RL data is for: it completes the meta of
            ``bbox_iou`` rows (the answer's ``box_format``, and ``image_size`` for pixel boxes).
        decontaminate_against: prepared evaluation directories; a row sharing an image or a question with one is
            rejected ``contaminated:SET`` (SET its ``data_source``).
    """

    image_root: Path | tuple[Path, ...] | None = None
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int | None = None
    min_pixels: int | None = None
    pixel_limit: int = DEFAULT_PIXEL_LIMIT
    image_check: str = "structure"
    data_source: str = "unknown"
    split: str = "train"
    ability: str = "medical_vqa"
    query_type: str | None = None
    template: str = "{question}{options}"
    plugins: tuple[str, ...] = ()
    model_family: str | None = None
    decontaminate_against: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_root", image_roots(self.image_root))
        if self.decontaminate_against is not None:
            object.__setattr__(self, "decontaminate_against", tuple(map(str, self.decontaminate_against)) or None)
        if self.model_family is not None:
            get_family(self.model_family)  # an unknown name fails here, naming the known ones
        if self.image_check not in CHECK_LEVELS:
            raise ValueError(f"unknown image check {self.image_check!r}; use one of {', '.join(CHECK_LEVELS)}")

    @property
    def resolution_keys(self) -> tuple[str, ...]:
        return tuple(k for k in ("max_pixels", "min_pixels") if getattr(self, k) is not None)


def _text(record: Mapping, key: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise Reject("missing_field", f"missing or empty field {key!r}; the record has {', '.join(sorted(record))}")
        return ""
    if not isinstance(value, str):
        raise Reject("bad_field", f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _label(record: Mapping, key: str, default: str) -> str:
    """A short text field (split, data_source, ability): a string or a number, else `default` when absent."""
    value = record.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Reject("bad_field", f"field {key!r} must be a string, got {type(value).__name__}")
    return str(value)


def _image_list(value: object) -> list:
    """An ``image``/``images`` field as a list of references."""
    if value is None:
        return []
    if isinstance(value, str | bytes | dict):
        return [value]
    if isinstance(value, list | tuple):
        return list(value)
    raise Reject("bad_field",
                 f"images must be a path, base64 string, dict or a list of them, got {type(value).__name__}")


def _load_images(references: list, options: PrepOptions) -> tuple[list[dict], str]:
    """verl image dicts and the JSON ``image_meta`` of a record's images."""
    images, meta = [], []
    for i, reference in enumerate(references):
        try:
            image: LoadedImage = load_image(reference, options.image_root, options.pixel_limit,
                                            check=options.image_check, max_image_bytes=options.max_image_bytes)
        except ImageError as exc:
            raise Reject(exc.code, f"image {i}: {exc}") from None
        entry: dict[str, object] = {"bytes": image.data, "path": image.path}
        for key in options.resolution_keys:
            entry[key] = getattr(options, key)
        images.append(entry)
        meta.append({"width": image.width, "height": image.height, "converted": image.converted, **image.metadata})
    return images, json.dumps(meta, sort_keys=True) if any(m["converted"] for m in meta) else "[]"


def _check_placeholders(texts: list[str], n_images: int) -> None:
    found = sum(t.count(IMAGE_PLACEHOLDER) for t in texts)
    if found != n_images:
        raise Reject(
            "placeholder_mismatch",
            f"{found} {IMAGE_PLACEHOLDER} placeholder(s) for {n_images} image(s); put one {IMAGE_PLACEHOLDER} "
            "where each image goes, in the order of the image list",
        )


Reader = Callable[[Mapping, int, str, PrepOptions], Parsed]


@runtime_checkable
class Converter(Protocol):
    """A record format's converter, made by :func:`register` from its reader.

    Attributes:
        read: checks a record's fields (raising :class:`Reject`) and returns :class:`Parsed`; see
            :func:`read_content`.
        writes: the parquet kind of its rows, one of ``medverl.data.schemas.KINDS``.
    """

    read: Reader
    writes: str

    def __call__(self, record: object, index: int, source: str, options: PrepOptions) -> dict | Reject: ...


CONVERTERS: Registry[Converter] = Registry(
    "record format", "medverl.converters", entry_type=Converter,
    how="Add one with @medverl.data.converters.register(name, writes=...) in a module named by an entry point of "
        "group 'medverl.converters'.",
)


def register(name: str, *, writes: str) -> Callable[[Reader], Converter]:
    """Decorator making reader `read` the converter of record format `name`, its rows written as `writes` parquet
    ("rl", "sft" or "cpt").

    The reader checks a record's fields, raising :class:`Reject` with the reason and the fix, and returns
    :class:`Parsed`; the converter loads the images and builds the row, and returns a :class:`Reject` for a record
    it cannot write. The reader stays reachable as ``converter.read``.
    """
    if writes not in KINDS:
        raise ValueError(f"record format {name!r} writes {writes!r}, not one of {', '.join(KINDS)}")

    def decorator(read: Reader) -> Converter:
        @functools.wraps(read)  # keeps the name, so converters pickle into worker processes
        def convert(record: object, index: int, source: str, options: PrepOptions) -> dict | Reject:
            if not isinstance(record, Mapping):
                return Reject("not_an_object", f"a record must be a JSON object, got {type(record).__name__}")
            try:
                parsed = read(record, index, source, options)
                images, image_meta = _load_images(parsed.content.images, options)
                return _uncontaminated(parsed.build(images, image_meta), options)
            except Reject as exc:
                return exc
            except (RecursionError, MemoryError) as exc:  # a record nested or sized past what this process can hold
                return Reject("record_too_large", f"{type(exc).__name__} while reading the record")

        convert.read, convert.writes = read, writes  # type: ignore[attr-defined]
        CONVERTERS.add(name, convert)  # type: ignore[arg-type]
        return convert  # type: ignore[return-value]

    return decorator


def _uncontaminated(row: dict, options: PrepOptions) -> dict:
    """`row`, unless it shares an image or a question with an evaluation set of ``options.decontaminate_against``."""
    if not options.decontaminate_against:
        return row
    found = cached_evaluation_keys(options.decontaminate_against).matches(row)
    if found:
        raise Reject(f"contaminated:{found[0][0]}", "; ".join(reason for _, reason in found))
    return row


def _options_text(options: list[str]) -> str:
    return "".join(f"\n{LETTERS[i]}. {text}" for i, text in enumerate(options))


def render_prompt(template: str, question: str, choices: list[str], query_type: str) -> str:
    """The user turn of an RL row: `template` filled with the question, its lettered options and the answer hint."""
    return template.format(
        question=question, options=_options_text(choices), answer_hint=ANSWER_HINTS.get(str(query_type), "")
    ).strip()


def _parse_record_options(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise Reject("bad_field", "options must be a list of option texts or its JSON string") from None
    if isinstance(value, Mapping):  # {"A": "...", "B": "..."}
        keys = sorted(value)
        if keys != list(LETTERS[: len(keys)]):
            raise Reject("bad_field", f"options keyed by letters must be A, B, C, ... in order, got {keys}")
        value = [value[k] for k in keys]
    if not isinstance(value, list | tuple) or not all(isinstance(o, str) and o.strip() for o in value):
        raise Reject("bad_field", "options must be a list of non-empty option texts")
    if len(value) > len(LETTERS):
        raise Reject("bad_field", f"{len(value)} options is more than {len(LETTERS)}")
    return list(value)


def _meta(value: object) -> str:
    """A record's ``meta`` object (or its JSON string) as canonical JSON."""
    if value is None or value == "":
        return "{}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            value = None
    if not isinstance(value, Mapping):
        raise Reject("bad_field", "meta must be an object of facts about the record (or its JSON string)")
    return json.dumps(dict(value), ensure_ascii=False, sort_keys=True, default=str)


def _ground_truth(answer: object) -> str:
    if isinstance(answer, str):
        if not answer.strip():
            raise Reject("empty_ground_truth", "the answer (ground truth) is empty")
        return answer
    if isinstance(answer, list | tuple) and answer and all(isinstance(a, str) for a in answer):
        kept = [a for a in answer if a.strip()]
        if not kept:
            raise Reject("empty_ground_truth", "every acceptable answer is empty")
        return kept[0] if len(kept) == 1 else json.dumps(kept, ensure_ascii=False)
    if isinstance(answer, int) and not isinstance(answer, bool) or isinstance(answer, float) and math.isfinite(answer):
        return str(answer)
    raise Reject("empty_ground_truth", f"answer must be a string or a list of strings, got {answer!r:.60}")


@register("rl", writes="rl")
def convert_rl(record: Mapping, index: int, source: str, options: PrepOptions) -> Parsed:
    """An RL record (``question``/``answer``/``query_type``..., or verl's own layout) to verl's RL row."""
    if "prompt" in record and "reward_model" in record:
        return _read_verl_rl(record, index, source, options)
    question = _text(record, "question")
    if "answer" not in record:
        raise Reject("missing_field", f"missing field 'answer'; the record has {', '.join(sorted(record))}")
    ground_truth = _ground_truth(record["answer"])
    choices = _parse_record_options(record.get("options"))
    query_type = _label(record, "query_type", options.query_type)
    extra_info = {
        "split": _label(record, "split", options.split),
        "index": index,
        "query_type": query_type,
        "options": choices or None,
        "question": question,
        "source": source,
        "meta": _meta(record.get("meta")),
    }
    _check_rl_reference(ground_truth, extra_info, options)
    references = _image_list(record.get("images", record.get("image")))
    if IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER * len(references) + ("\n" if references else "") + question
    _check_placeholders([question], len(references))
    asked = question + _options_text(choices)
    user = render_prompt(options.template, question, choices, str(query_type))
    prompt = []
    if system := _text(record, "system_prompt", required=False):
        prompt.append({"role": "system", "content": system})
    prompt.append({"role": "user", "content": user})

    def build(images: list[dict], image_meta: str) -> dict:
        return _rl_row(record, prompt, images, ground_truth, {**extra_info, "image_meta": image_meta}, options)

    return Parsed(_qa_content(asked, ground_truth, references), build)


def _qa_content(question: str, ground_truth: str, references: list) -> Content:
    answers = " / ".join(parse_ground_truth(ground_truth))
    return Content(f"{_without_placeholders(question)}\nAnswer: {answers}", references)


def _without_placeholders(text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def _read_verl_rl(record: Mapping, index: int, source: str, options: PrepOptions) -> Parsed:
    prompt = record["prompt"]
    if not isinstance(prompt, list | tuple) or not prompt:
        raise Reject("bad_field", "prompt must be a non-empty list of {role, content} messages")
    messages = []
    for message in prompt:
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise Reject("bad_field", "every prompt message needs a string 'content'")
        if message.get("role") not in ("system", "user", "assistant"):
            raise Reject("unknown_role", f"unknown prompt role {message.get('role')!r}; use system, user or assistant")
        messages.append({"role": message["role"], "content": message["content"]})
    reward_model = record["reward_model"]
    if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
        raise Reject("missing_field", "reward_model must be {style, ground_truth}")
    ground_truth = _ground_truth(reward_model["ground_truth"])
    given = record.get("extra_info") or {}
    if not isinstance(given, Mapping):
        raise Reject("bad_field", f"extra_info must be an object, got {type(given).__name__}")
    choices = _parse_record_options(given.get("options"))
    extra_info = {
        "split": _label(given, "split", options.split),
        "index": index,
        "query_type": _label(given, "query_type", options.query_type),
        "options": choices or None,
        "question": _text(given, "question", required=False),
        "source": source,
        "meta": _meta(given.get("meta")),
    }
    _check_rl_reference(ground_truth, extra_info, options)
    references = _image_list(record.get("images"))
    _check_placeholders([m["content"] for m in messages], len(references))
    asked = "\n".join(m["content"] for m in messages if m["role"] == "user")

    def build(images: list[dict], image_meta: str) -> dict:
        return _rl_row(record, messages, images, ground_truth, {**extra_info, "image_meta": image_meta}, options)

    return Parsed(_qa_content(asked, ground_truth, references), build)


def _rl_row(
    record: Mapping, prompt: list, images: list, ground_truth: str, extra_info: dict, options: PrepOptions
) -> dict:
    if _family_boxes(extra_info, options):
        extra_info = _with_family_boxes(extra_info, images, options)
        _check_rl_reference(ground_truth, extra_info, options, sized=True)
    return {
        "data_source": _label(record, "data_source", options.data_source),
        "prompt": prompt,
        "images": images,
        "ability": _label(record, "ability", options.ability),
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": extra_info,
    }


def _family_boxes(extra_info: Mapping, options: PrepOptions) -> bool:
    """Whether a row's box meta is completed from ``options.model_family`` (:func:`_with_family_boxes`)."""
    return options.model_family is not None and extra_info["query_type"] == "bbox_iou"


def _with_family_boxes(extra_info: dict, images: list[dict], options: PrepOptions) -> dict:
    """`extra_info` whose ``bbox_iou`` meta is completed from the model family: ``box_format`` (the answer's units)
    is the family's when the row names none (the gold keeps the row's units, pixels by default), and pixel boxes
    without ``image_size`` get the size the family resizes the row's one image to."""
    family = get_family(options.model_family)
    meta = json.loads(extra_info["meta"])
    if "box_format" not in meta:
        meta = {"gold_format": "pixels", **meta, "box_format": family.box_format}
    if "image_size" in meta or "pixels" not in (meta["box_format"], meta.get("gold_format", meta["box_format"])):
        return {**extra_info, "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str)}
    if len(images) != 1:
        raise Reject("invalid_reference", f"bbox_iou pixel boxes on {len(images)} images: set meta.image_size = "
                     "[width, height] of the image the model sees")
    with Image.open(io.BytesIO(images[0]["bytes"])) as image:
        width, height = image.size
    try:
        size = family.resized_size(width, height, min_pixels=options.min_pixels, max_pixels=options.max_pixels)
    except ValueError as exc:
        raise Reject("bad_image", f"image 0: {exc}") from None
    meta["image_size"] = list(size)
    return {**extra_info, "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str)}


def _check_rl_reference(ground_truth: str, extra_info: dict, options: PrepOptions, sized: bool = False) -> None:
    if _family_boxes(extra_info, options) and not sized:
        return  # checked by _rl_row, once the image gives the size
    try:
        check_reference(ground_truth, extra_info, RewardOptions(plugins=options.plugins))
    except UnknownQueryType as exc:
        raise Reject("unknown_query_type", str(exc)) from None
    except InvalidReference as exc:
        code = "empty_ground_truth" if "is empty" in str(exc) else "invalid_reference"
        raise Reject(code, str(exc)) from None


@register("sft", writes="sft")
def convert_sft(record: Mapping, index: int, source: str, options: PrepOptions) -> Parsed:
    """A LLaVA/ShareGPT conversation to verl's multi-turn SFT row (``messages`` + ``images``)."""
    conversations = record.get("conversations")
    if conversations is None:
        raise Reject("missing_field", f"missing field 'conversations'; the record has {', '.join(sorted(record))}")
    if not isinstance(conversations, list | tuple):
        raise Reject("bad_field", f"conversations must be a list of {{from, value}} turns, got "
                    f"{type(conversations).__name__}")
    if not conversations:
        raise Reject("empty_conversation", "conversations is empty")
    messages = []
    for turn, message in enumerate(conversations):
        if not isinstance(message, Mapping):
            raise Reject("bad_field", f"turn {turn} is not an object")
        speaker = message.get("from", message.get("role"))
        role = SFT_ROLES.get(str(speaker).lower()) if speaker is not None else None
        if role is None:
            raise Reject("unknown_role", f"turn {turn}: unknown role {speaker!r}; use human, gpt or system")
        value = message.get("value", message.get("content"))
        if not isinstance(value, str) or not value.strip():
            raise Reject("empty_turn", f"turn {turn} ({speaker}) has no text")
        messages.append({"role": role, "content": value})
    if not any(m["role"] == "assistant" for m in messages):
        raise Reject("empty_conversation", "no gpt/assistant turn: nothing to train on")
    references = _image_list(record.get("image", record.get("images")))
    _check_placeholders([m["content"] for m in messages], len(references))
    text = "\n".join(f"{m['role']}: {_without_placeholders(m['content'])}" for m in messages)

    def build(images: list[dict], image_meta: str) -> dict:
        return {"messages": messages, "images": images,
                "extra_info": {"index": index, "source": source, "image_meta": image_meta}}

    return Parsed(Content(text, references), build)


@register("llava", writes="sft")
def convert_llava(record: Mapping, index: int, source: str, options: PrepOptions) -> Parsed:
    """A record of a LLaVA-style conversation file (PubMedVision, LLaVA-Med instruct: ``id``, ``image`` a path or a
    list, ``conversations``) to verl's SFT row. When no turn holds ``<image>`` (PubMedVision's files), one per
    image opens the first human turn, as LLaVA's training code places them."""
    conversations = record.get("conversations")
    references = _image_list(record.get("image", record.get("images")))
    if references and isinstance(conversations, list | tuple):
        turns = [turn for turn in conversations if isinstance(turn, Mapping)]
        if not any(IMAGE_PLACEHOLDER in str(turn.get("value", turn.get("content", ""))) for turn in turns):
            first = next((i for i, turn in enumerate(conversations) if isinstance(turn, Mapping)
                          and str(turn.get("from", turn.get("role"))).lower() in ("human", "user")
                          and isinstance(turn.get("value"), str)), None)
            if first is not None:
                turn = conversations[first]
                opened = {**turn, "value": f"{IMAGE_PLACEHOLDER}\n" * len(references) + turn["value"]}
                record = {**record, "conversations": [*conversations[:first], opened, *conversations[first + 1:]]}
    return convert_sft.read(record, index, source, options)


@register("slake", writes="rl")
def convert_slake(record: Mapping, index: int, source: str, options: PrepOptions) -> Parsed:
    """A row of SLAKE's ``train.json``/``validation.json`` (its ``img_name`` under ``--image-root`` ``imgs/``) to
    verl's RL row, data_source ``slake`` (:func:`medverl.data.public.slake_record`)."""
    return convert_rl.read({**slake_record(record), "data_source": "slake"}, index, source, options)


@register("vqa_rad", writes="rl")
def convert_vqa_rad(record: Mapping, index: int, source: str, options: PrepOptions) -> Parsed:
    """A row of VQA-RAD's ``data/train-*.parquet`` to verl's RL row (:func:`medverl.data.public.vqa_record`)."""
    return convert_rl.read({**vqa_record(record), "data_source": "vqa_rad"}, index, source, options)


@register("path_vqa", writes="rl")
def convert_path_vqa(record: Mapping, index: int, source: str, options: PrepOptions) -> Parsed:
    """A row of PathVQA's ``data/{train,validation}-*.parquet`` to verl's RL row (VQA-RAD's layout)."""
    return convert_rl.read({**vqa_record(record), "data_source": "path_vqa"}, index, source, options)


@register("pmc_vqa", writes="rl")
def convert_pmc_vqa(record: Mapping, index: int, source: str, options: PrepOptions) -> Parsed:
    """A row of PMC-VQA's ``train_2.csv`` (``--image-root`` ``figures/``) or v1 ``train.csv`` (``images/``) to
    verl's RL row, a ``multiple_choice`` question (:func:`medverl.data.public.pmc_vqa_record`)."""
    return convert_rl.read({**pmc_vqa_record(record), "data_source": "pmc_vqa"}, index, source, options)


@register("caption", writes="cpt")
def convert_caption(record: Mapping, index: int, source: str, options: PrepOptions) -> Parsed:
    """An image-caption record (``image`` path/list/base64 + ``text``) to a CPT row: images, then the text."""
    text = _text(record, "text")
    references = _image_list(record.get("image", record.get("images")))
    if not references:
        raise Reject("missing_field", "a caption record needs at least one image in 'image'")

    def build(images: list[dict], image_meta: str) -> dict:
        segments = [{"type": "image", "text": None} for _ in images] + [{"type": "text", "text": text}]
        return _cpt_row(record, "caption", segments, images, index, source, image_meta, options)

    return Parsed(Content(text, references), build)


@register("interleaved", writes="cpt")
def convert_interleaved(record: Mapping, index: int, source: str, options: PrepOptions) -> Parsed:
    """An interleaved document (parallel ``texts`` / ``image_info`` lists) to a CPT row, segments in order."""
    texts, infos = record.get("texts"), record.get("image_info")
    if not isinstance(texts, list) or not isinstance(infos, list):
        raise Reject("missing_field", "an interleaved record needs the lists 'texts' and 'image_info'")
    if len(texts) != len(infos):
        raise Reject("bad_field", f"'texts' has {len(texts)} items but 'image_info' has {len(infos)}")
    segments: list[dict] = []
    references = []
    for position, (text, info) in enumerate(zip(texts, infos, strict=True)):
        if info is not None:
            references.append(info)
            segments.append({"type": "image", "text": None})
        if text is not None:
            if not isinstance(text, str):
                raise Reject("bad_field", f"texts[{position}] must be a string or null")
            if text.strip():
                segments.append({"type": "text", "text": text})
    if not any(s["type"] == "text" for s in segments):
        raise Reject("missing_field", "an interleaved record needs at least one non-empty text")

    def build(images: list[dict], image_meta: str) -> dict:
        return _cpt_row(record, "interleaved", segments, images, index, source, image_meta, options)

    return Parsed(Content("\n".join(s["text"] for s in segments if s["type"] == "text"), references), build)


def _cpt_row(
    record: Mapping, kind: str, segments: list, images: list, index: int, source: str, image_meta: str,
    options: PrepOptions,
) -> dict:
    return {
        "data_source": _label(record, "data_source", options.data_source),
        "kind": kind,
        "segments": segments,
        "images": images,
        "extra_info": {"index": index, "source": source, "image_meta": image_meta},
    }


def read_content(kind: str, record: object, index: int, source: str, options: PrepOptions) -> Content | Reject:
    """What a record of input kind `kind` says, or why ``medverl prep`` would reject it (its images not loaded)."""
    if not isinstance(record, Mapping):
        return Reject("not_an_object", f"a record must be a JSON object, got {type(record).__name__}")
    try:
        return CONVERTERS.get(kind).read(record, index, source, options).content
    except Reject as exc:
        return exc
