"""A family's processor and a 2-layer model config around a given tokenizer: the tiny random model's family part."""

from __future__ import annotations

import copy

from medverl.models.family import ModelFamily

# Sizes shared by every tiny model. head_dim 16 (64 / 4 heads): a Qwen-VL mrope_section sums to head_dim / 2.
TEXT_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}
VISION_SIZES = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
# The tiny image budget: 4 x 4 to 16 x 16 patches an image, which keeps tests fast.
MIN_SIDE_PATCHES, MAX_SIDE_PATCHES = 4, 16


def build_tiny_processor(family: ModelFamily, tokenizer, pad_token: str = "<|endoftext|>") -> tuple:
    """The family's processor around `tokenizer` and a 2-layer config with the tokenizer's token ids.

    The config's ``architectures`` names the family's model class, as a real checkpoint's ``config.json`` does
    (verl picks the model class from it, and its ``hf_processor`` reads the config to bind the mRoPE index).

    Returns:
        ``(processor, config)``, both ready for ``save_pretrained``.

    Raises:
        ValueError: the family has no tiny model parts.
    """
    import transformers

    tiny = family.tiny
    if tiny is None:
        raise ValueError(f"model family {family.name!r} has no tiny model parts (ModelFamily.tiny)")
    token_id = tokenizer.convert_tokens_to_ids
    patch = family.patch_size
    image_processor = getattr(transformers, tiny.image_processor_class)(
        patch_size=patch, merge_size=family.merge_size, temporal_patch_size=2,
        min_pixels=(MIN_SIDE_PATCHES * patch) ** 2, max_pixels=(MAX_SIDE_PATCHES * patch) ** 2,
    )
    video_processor = getattr(transformers, tiny.video_processor_class)(
        patch_size=patch, merge_size=family.merge_size, temporal_patch_size=2
    )
    # copies: transformers may fill in the nested dicts (rope parameters) of a family record shared by every call
    text_config = {
        **TEXT_SIZES, "vocab_size": len(tokenizer), "pad_token_id": token_id(pad_token),
        **copy.deepcopy(dict(tiny.text_config)),
        **{key: token_id(token) for key, token in tiny.text_token_config.items()},
    }
    config = getattr(transformers, tiny.config_class)(
        text_config=text_config,
        vision_config={**VISION_SIZES, "patch_size": patch, **copy.deepcopy(dict(tiny.vision_config))},
        image_token_id=token_id(family.image_token),
        video_token_id=token_id(family.video_token),
        vision_start_token_id=token_id(family.vision_start),
        vision_end_token_id=token_id(family.vision_end),
    )
    config.architectures = [tiny.architecture]
    processor = getattr(transformers, tiny.processor_class)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )
    return processor, config
