"""What medverl needs to know about one model family: its tokens, its image resizing, its box units and its mRoPE."""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

BOX_FORMATS = ("pixels", "qwen3", "relative")  # medverl.rewards.boxes reads these
MAX_ASPECT_RATIO = 200  # qwen_vl_utils refuses longer images


@dataclass(frozen=True)
class TinyModel:
    """The family-specific parts of a tiny random model (``medverl.training.tiny_model``): transformers class names
    and the config values that differ between families.

    Attributes:
        processor_class, image_processor_class, video_processor_class, config_class: names in ``transformers``.
        architecture: the model class named in ``config.json`` (verl picks the model class from it).
        text_config: text config values besides the shared small sizes (head_dim, rope parameters).
        vision_config: vision config values besides the shared small sizes.
        text_token_config: text config keys whose value is a token's id (``{"eos_token_id": "<|im_end|>"}``).
    """

    processor_class: str
    image_processor_class: str
    video_processor_class: str
    config_class: str
    architecture: str
    text_config: Mapping[str, object] = field(default_factory=dict)
    vision_config: Mapping[str, object] = field(default_factory=dict)
    text_token_config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("text_config", "vision_config", "text_token_config"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))


@dataclass(frozen=True)
class ModelFamily:
    """One model family (Qwen2.5-VL, Qwen3-VL, ...): how to recognise its checkpoints and how its inputs look.

    Attributes:
        name: the registry name (``qwen2.5-vl``).
        model_types: ``model_type`` values of its ``config.json``.
        architectures: ``architectures`` entries of its ``config.json``.
        hub_pattern: a regular expression (case-insensitive) matching the name part of its hub ids, for a model that
            is not a local directory.
        vision_start, image_token, vision_end, video_token: the tokens of an image's span in the prompt; the
            processor expands `image_token` to one token per merged patch.
        never_sample: tokens a sampler must suppress: a sampled vision token breaks the mRoPE index of the sample.
        patch_size, merge_size: the vision encoder's patch side in pixels and how many patches a side merges into
            one token; image sides are multiples of ``patch_size * merge_size``.
        min_image_tokens, max_image_tokens: the default pixel budget in merged tokens (``qwen_vl_utils``'s
            defaults, which verl uses when an image dict names no ``min_pixels``/``max_pixels``).
        box_format: the units of its grounding boxes, one of ``BOX_FORMATS`` (``meta.box_format`` of ``bbox_iou``).
        rope_index: ``"module:function"`` of verl's mRoPE index function for it, called as
            ``fn(processor, input_ids=..., image_grid_thw=..., attention_mask=...)`` on one sequence.
        tiny: the parts of a tiny random model of the family (None: the family has none).
    """

    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    hub_pattern: str
    vision_start: str
    image_token: str
    vision_end: str
    video_token: str
    never_sample: tuple[str, ...]
    patch_size: int
    merge_size: int
    box_format: str
    rope_index: str
    min_image_tokens: int = 4
    max_image_tokens: int = 16384
    tiny: TinyModel | None = None

    def __post_init__(self) -> None:
        if self.box_format not in BOX_FORMATS:
            raise ValueError(f"model family {self.name!r}: box_format must be one of {', '.join(BOX_FORMATS)}, got "
                             f"{self.box_format!r}")
        re.compile(self.hub_pattern)

    @property
    def image_span(self) -> str:
        """One image in a prompt before the processor expands it: ``<|vision_start|><|image_pad|><|vision_end|>``."""
        return self.vision_start + self.image_token + self.vision_end

    @property
    def vision_tokens(self) -> tuple[str, ...]:
        """The tokens of an image span."""
        return (self.vision_start, self.image_token, self.vision_end)

    @property
    def factor(self) -> int:
        """What image sides are multiples of: ``patch_size * merge_size``."""
        return self.patch_size * self.merge_size

    @property
    def min_pixels(self) -> int:
        """Default smallest image area after resizing."""
        return self.min_image_tokens * self.factor**2

    @property
    def max_pixels(self) -> int:
        """Default largest image area after resizing."""
        return self.max_image_tokens * self.factor**2

    def matches_hub_id(self, model: str) -> bool:
        """Whether the name part of hub id `model` (``Qwen/Qwen3-VL-4B-Instruct``) is one of this family's."""
        return re.search(self.hub_pattern, model.rpartition("/")[2], re.IGNORECASE) is not None

    def resized_size(self, width: int, height: int, *, min_pixels: int | None = None,
                     max_pixels: int | None = None) -> tuple[int, int]:
        """The ``(width, height)`` the model sees for an image of `width` x `height` (``smart_resize``).

        Each side is rounded to a multiple of :attr:`factor`; an area outside ``[min_pixels, max_pixels]`` (the
        family's defaults when None) is scaled into it, keeping the aspect ratio.

        Raises:
            ValueError: a non-positive side, a long side over 200 times the short one, or min over max pixels.

        >>> from medverl.models import get_family
        >>> get_family("qwen2.5-vl").resized_size(640, 480)
        (644, 476)
        >>> get_family("qwen2.5-vl").resized_size(640, 480, max_pixels=256 * 28 * 28)
        (504, 364)
        """
        min_pixels = self.min_pixels if min_pixels is None else min_pixels
        max_pixels = self.max_pixels if max_pixels is None else max_pixels
        if width <= 0 or height <= 0:
            raise ValueError(f"an image side must be positive, got {width} x {height}")
        if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
            raise ValueError(f"an image {width} x {height} is over {MAX_ASPECT_RATIO} times longer than wide")
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels {min_pixels} is over max_pixels {max_pixels}")
        factor = self.factor
        new_height = max(factor, round(height / factor) * factor)
        new_width = max(factor, round(width / factor) * factor)
        if new_height * new_width > max_pixels:
            beta = math.sqrt(height * width / max_pixels)
            new_height = max(factor, math.floor(height / beta / factor) * factor)
            new_width = max(factor, math.floor(width / beta / factor) * factor)
        elif new_height * new_width < min_pixels:
            beta = math.sqrt(min_pixels / (height * width))
            new_height = math.ceil(height * beta / factor) * factor
            new_width = math.ceil(width * beta / factor) * factor
        return new_width, new_height

    def get_rope_index(self) -> Callable:
        """verl's mRoPE index function for the family (imported on first use: it imports torch and verl)."""
        module, _, function = self.rope_index.partition(":")
        return getattr(importlib.import_module(module), function)
