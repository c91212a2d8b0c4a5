"""A tiny random vision-language model (tokenizer, processor, 2-layer model) of a model family, built offline in about
a second.

For tests that need verl's real classes and for CPU training runs (``medverl pipeline --cpu``):

    python -m medverl.training.tiny_model runs/tiny_qwen25_vl [--family qwen3-vl]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

from medverl.models import ModelFamily, build_tiny_processor, family_names, get_family

DEFAULT_FAMILY = "qwen2.5-vl"
# ChatML's tokens; the family's vision tokens follow them.
CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

_CORPUS = (
    "The chest radiograph shows consolidation in the right lower lobe with air bronchograms.",
    "No fracture line is seen. The answer is yes or no. Is there a pleural effusion?",
    "<think>The lesion is hyperintense on T2-weighted MRI.</think>\n<answer>B</answer>",
    "Options: (A) Pulmonary edema (B) Lobar pneumonia (C) Pleural effusion (D) Pneumothorax",
    "ICD-10 J18.9 pneumonia, unspecified organism; K35.8 acute appendicitis.",
    "右肺下叶可见斑片状高密度影。是 否 没有 有 左肺",
)


def chat_template(family: ModelFamily) -> str:
    """ChatML, rendering an image item as the family's vision span, the way Qwen-VL templates do."""
    return (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for item in message['content'] -%}"
        f"{{%- if item['type'] == 'image' -%}}{{{{ '{family.image_span}' }}}}"
        "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


def _corpus() -> tuple[str, ...]:
    """What the merges are learnt from: medical phrases, the RL prompt template, its answer hints and the bundled
    synthetic task's texts, so that the example's prompts and answers are a few tokens each, as with a real
    tokenizer."""
    from medverl.prompts import ANSWER_HINTS, load_template
    from medverl.training.synthetic_task import vocabulary

    return (*_CORPUS, load_template("think_answer"), *ANSWER_HINTS.values(), *vocabulary())


def build_tiny_tokenizer(family: str = DEFAULT_FAMILY, vocab_size: int = 1000) -> Qwen2Tokenizer:
    """A byte-level BPE with ChatML's and the family's vision tokens first, wrapped as ``Qwen2Tokenizer`` with a
    ChatML template."""
    model_family = get_family(family)
    special_tokens = [*CHAT_TOKENS, *dict.fromkeys(model_family.never_sample + model_family.vision_tokens)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus() * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens[1:]})
    # As in Qwen3: added tokens that are NOT special, so verl's skip_special_tokens decode keeps them. The answer tags
    # too: split into "<", "answer", ">", a 2-layer model confuses the opening tag's ">" with the closing one's.
    tokenizer.add_tokens(["<think>", "</think>", "<answer>", "</answer>"], special_tokens=False)
    tokenizer.chat_template = chat_template(model_family)
    return tokenizer


def save_tiny_processor(directory: str | Path, family: str = DEFAULT_FAMILY) -> Path:
    """Save tokenizer, the family's processor and a tiny model config where verl's ``hf_processor`` loads them.

    verl's ``hf_processor`` also reads the model config (it binds the model's mRoPE index function) and returns None
    without one, hence the ``config.json`` of a 2-layer model with the tiny tokenizer's token ids.
    ``verl.utils.hf_tokenizer`` loads the same directory.
    """
    directory = Path(directory)
    processor, config = build_tiny_processor(get_family(family), build_tiny_tokenizer(family))
    processor.save_pretrained(directory)
    config.save_pretrained(directory)
    return directory


def save_tiny_model(directory: str | Path, family: str = DEFAULT_FAMILY, *, seed: int = 0) -> Path:
    """:func:`save_tiny_processor` plus random weights (safetensors): a model verl's trainers load like a real one."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    directory = save_tiny_processor(directory, family)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(directory))
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def main(argv: list[str] | None = None) -> None:
    """Save a tiny random model directory of a model family."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("output", help="model directory to write")
    parser.add_argument("--family", choices=family_names(), default=DEFAULT_FAMILY,
                        help=f"model family (default {DEFAULT_FAMILY})")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    args = parser.parse_args(argv)
    print(save_tiny_model(args.output, args.family, seed=args.seed))


if __name__ == "__main__":
    main()
