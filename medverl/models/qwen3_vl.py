"""Qwen3-VL: 16-pixel patches, grounding boxes in 0-1000 relative units."""

from __future__ import annotations

from medverl.models.family import ModelFamily, TinyModel
from medverl.models.qwen2_5_vl import VISION_TOKENS
from medverl.models.registry import register


@register
def qwen3_vl() -> ModelFamily:
    """Qwen3-VL (dense; the MoE checkpoints have another model_type)."""
    return ModelFamily(
        name="qwen3-vl",
        model_types=("qwen3_vl",),
        architectures=("Qwen3VLForConditionalGeneration",),
        hub_pattern=r"qwen3-vl",
        vision_start="<|vision_start|>",
        image_token="<|image_pad|>",
        vision_end="<|vision_end|>",
        video_token="<|video_pad|>",
        never_sample=VISION_TOKENS,
        patch_size=16,
        merge_size=2,
        box_format="qwen3",
        rope_index="verl.models.transformers.qwen3_vl:get_rope_index",
        tiny=TinyModel(
            processor_class="Qwen3VLProcessor",
            image_processor_class="Qwen2VLImageProcessor",
            video_processor_class="Qwen3VLVideoProcessor",
            config_class="Qwen3VLConfig",
            architecture="Qwen3VLForConditionalGeneration",
            # Qwen3-VL's head_dim is not hidden_size / heads by default; mrope_section sums to head_dim / 2.
            text_config={
                "head_dim": 16,
                "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3],
                                    "mrope_interleaved": True},
            },
            vision_config={"num_position_embeddings": 256, "deepstack_visual_indexes": [1]},
        ),
    )
