"""Qwen2.5-VL: 14-pixel patches, grounding boxes in pixels of the resized image."""

from __future__ import annotations

from medverl.models.family import ModelFamily, TinyModel
from medverl.models.registry import register

# Qwen-VL's vision tokens (Qwen3-VL has the same), all of which a sampler suppresses.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@register
def qwen2_5_vl() -> ModelFamily:
    """Qwen2.5-VL (and fine-tunes that keep its ``config.json``, such as Lingshu)."""
    return ModelFamily(
        name="qwen2.5-vl",
        model_types=("qwen2_5_vl",),
        architectures=("Qwen2_5_VLForConditionalGeneration",),
        hub_pattern=r"qwen2\.5-vl",
        vision_start="<|vision_start|>",
        image_token="<|image_pad|>",
        vision_end="<|vision_end|>",
        video_token="<|video_pad|>",
        never_sample=VISION_TOKENS,
        patch_size=14,
        merge_size=2,
        box_format="pixels",
        rope_index="verl.models.transformers.qwen2_vl:get_rope_index",
        tiny=TinyModel(
            processor_class="Qwen2_5_VLProcessor",
            image_processor_class="Qwen2VLImageProcessor",
            video_processor_class="Qwen2VLVideoProcessor",
            config_class="Qwen2_5_VLConfig",
            architecture="Qwen2_5_VLForConditionalGeneration",
            text_config={"rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}},
            vision_config={"window_size": 112, "fullatt_block_indexes": [1]},
            text_token_config={"bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>"},
        ),
    )
