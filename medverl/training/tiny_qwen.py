"""A tiny random Qwen-VL (tokenizer, processor, 2-layer model) built offline in about a second.

For tests that need verl's real classes and for CPU training runs (``medverl pipeline --cpu``):

    python -m medverl.training.tiny_qwen runs/tiny_qwen25_vl [--qwen3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# ChatML, rendering an image item the way Qwen-VL templates do.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

_CORPUS = (
    "The chest radiograph shows consolidation in the right lower lobe with air bronchograms.",
    "No fracture line is seen. The answer is yes or no. Is there a pleural effusion?",
    "<think>The lesion is hyperintense on T2-weighted MRI.</think>\n<answer>B</answer>",
    "Options: (A) Pulmonary edema (B) Lobar pneumonia (C) Pleural effusion (D) Pneumothorax",
    "ICD-10 J18.9 pneumonia, unspecified organism; K35.8 acute appendicitis.",
    "右肺下叶可见斑片状高密度影。是 否 没有 有 左肺",
)


def _corpus() -> tuple[str, ...]:
    """What the merges are learnt from: medical phrases, the RL prompt template, its answer hints and the bundled
    synthetic task's texts, so that the example's prompts and answers are a few tokens each, as with a real
    tokenizer."""
    from medverl.prompts import ANSWER_HINTS, load_template
    from medverl.training.synthetic_task import vocabulary

    return (*_CORPUS, load_template("think_answer"), *ANSWER_HINTS.values(), *vocabulary())


def build_tiny_tokenizer(vocab_size: int = 1000) -> Qwen2Tokenizer:
    """A byte-level BPE with Qwen's special tokens first, wrapped as ``Qwen2Tokenizer`` with a ChatML template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus() * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    # As in Qwen3: added tokens that are NOT special, so verl's skip_special_tokens decode keeps them. The answer tags
    # too: split into "<", "answer", ">", a 2-layer model confuses the opening tag's ">" with the closing one's.
    tokenizer.add_tokens(["<think>", "</think>", "<answer>", "</answer>"], special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_tokenizer(directory: str | Path) -> Path:
    """Save the tiny tokenizer where ``verl.utils.hf_tokenizer`` (and ``AutoTokenizer``) can load it."""
    directory = Path(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    return directory


def save_tiny_processor(directory: str | Path, *, qwen3: bool = False) -> Path:
    """Save tokenizer, Qwen-VL processor and a tiny model config where verl's ``hf_processor`` loads them.

    ``qwen3=False``: ``Qwen2_5_VLProcessor`` (patch 14) + ``Qwen2_5_VLConfig``; ``qwen3=True``: ``Qwen3VLProcessor``
    (patch 16, ``Qwen3VLVideoProcessor``) + ``Qwen3VLConfig``. ``verl.utils.hf_tokenizer`` loads the same directory.
    verl's ``hf_processor`` also reads the model config (it binds the model's mRoPE index function) and returns None
    without one, hence the ``config.json`` of a 2-layer model with the tiny tokenizer's token ids.
    """
    from transformers import Qwen2VLImageProcessor

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    patch_size = 16 if qwen3 else 14
    image_processor = Qwen2VLImageProcessor(
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=(4 * patch_size) ** 2,
        max_pixels=(16 * patch_size) ** 2,
    )
    token_ids = {
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
    }
    # head_dim 16: mrope_section must sum to head_dim / 2.
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "pad_token_id": token_id("<|endoftext|>"),
    }
    vision_config = {
        "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": patch_size,
        "out_hidden_size": 64,
    }
    if qwen3:
        from transformers import Qwen3VLConfig, Qwen3VLProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        video_processor = Qwen3VLVideoProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2)
        processor_cls = Qwen3VLProcessor
        config = Qwen3VLConfig(
            text_config={
                **text_config,
                "head_dim": 16,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 5e6,
                    "mrope_section": [2, 3, 3],
                    "mrope_interleaved": True,
                },
            },
            vision_config={**vision_config, "num_position_embeddings": 256, "deepstack_visual_indexes": [1]},
            **token_ids,
        )
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2)
        processor_cls = Qwen2_5_VLProcessor
        config = Qwen2_5_VLConfig(
            text_config={
                **text_config,
                "bos_token_id": token_id("<|endoftext|>"),
                "eos_token_id": token_id("<|im_end|>"),
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            },
            vision_config={**vision_config, "window_size": 112, "fullatt_block_indexes": [1]},
            **token_ids,
        )
    processor = processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )
    processor.save_pretrained(directory)
    # verl's HFModelConfig picks the model class from the architecture, as in a real checkpoint's config.json.
    config.architectures = ["Qwen3VLForConditionalGeneration" if qwen3 else "Qwen2_5_VLForConditionalGeneration"]
    config.save_pretrained(directory)
    return directory


def save_tiny_model(directory: str | Path, *, qwen3: bool = False, seed: int = 0) -> Path:
    """:func:`save_tiny_processor` plus random weights (safetensors): a model verl's trainers load like a real one."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    directory = save_tiny_processor(directory, qwen3=qwen3)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(directory))
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def main(argv: list[str] | None = None) -> None:
    """Save a tiny random Qwen2.5-VL (or Qwen3-VL) model directory."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("output", help="model directory to write")
    parser.add_argument("--qwen3", action="store_true", help="Qwen3-VL (patch 16) instead of Qwen2.5-VL (patch 14)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    args = parser.parse_args(argv)
    print(save_tiny_model(args.output, qwen3=args.qwen3, seed=args.seed))


if __name__ == "__main__":
    main()
