"""Continual pretraining on medverl's CPT parquet with verl's SFT trainer (verl 0.9.1 has no pretraining mode).

    torchrun ... -m verl.trainer.sft_trainer \\
        data.custom_cls.path=pkg://medverl.training.cpt_dataset data.custom_cls.name=CPTDataset \\
        data.train_files=[data/cpt/part-00000.parquet,...] data.pad_mode=no_padding data.max_length=4096

A row is one caption or interleaved document (``medverl prep caption|interleaved``). Its segments are rendered in
reading order, each image as the model family's vision span (``<|vision_start|><|image_pad|>...<|vision_end|>`` for
Qwen-VL, expanded by the processor), adjacent text segments separated by a newline, and the document closed by a
document-end token.
Every text token is trained on; vision tokens and the first token are not (in a packed batch, the first token would
otherwise be predicted from the previous document's last one).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medverl.models import ModelFamily, family_of_config

logger = logging.getLogger(__name__)

# What the processor returns besides the token ids that is not an image input of the model.
_NOT_MODEL_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids")


class CPTDataset(Dataset):
    """verl SFT-trainer dataset over CPT parquet: loss on every text token.

    Reads these keys of verl's ``data`` config: ``max_length``, ``truncation`` ("error" raises naming the row;
    "right" cuts at ``max_length`` but before any image that would not fit whole, dropping it and the images after
    it), ``pad_mode`` ("no_padding" for sequence packing, or "right"), ``image_key``, ``image_patch_size`` (default:
    the model family's), ``shuffle``/``seed`` (with ``max_samples``), and ``document_end_token`` (default
    ``<|endoftext|>`` when the tokenizer has it, else its EOS token; add it with ``+data.document_end_token=...``).

    The processor (verl's ``hf_processor``, which binds the model config as ``processor.config``) gives the model
    family (:mod:`medverl.models`): its vision span, patch size and mRoPE index.

    Items carry 1-D ``input_ids`` and ``loss_mask``, ``position_ids`` (``(4, L)`` with a processor, as verl's
    ``MultiTurnSFTDataset`` builds them), ``attention_mask`` with right padding, and with a processor
    ``multi_modal_inputs`` (``pixel_values``, ``image_grid_thw``; empty for a text-only row).
    """

    def __init__(self, parquet_files: str | Sequence[str], tokenizer, config, processor=None, max_samples: int = -1):
        config = config or {}
        self.tokenizer, self.processor = tokenizer, processor
        self.max_length = int(config.get("max_length", 1024))
        self.truncation = config.get("truncation", "error")
        self.pad_mode = config.get("pad_mode", "no_padding")
        self.image_key = config.get("image_key", "images")
        self.family = _family(processor)
        self.image_patch_size = config.get("image_patch_size") or (self.family.patch_size if self.family else None)
        if self.family is not None and self.image_patch_size != self.family.patch_size:
            logger.warning("CPTDataset: data.image_patch_size=%s, but %s models have patch size %d",
                           self.image_patch_size, self.family.name, self.family.patch_size)
        if self.truncation not in ("error", "right"):
            raise ValueError(
                f"CPTDataset: truncation={self.truncation!r} is not supported; use 'error' or 'right' "
                "('left' would cut the start of documents)"
            )
        if self.pad_mode not in ("no_padding", "right"):
            raise ValueError(f"CPTDataset: pad_mode={self.pad_mode!r} is not supported; use 'no_padding' or 'right'")
        self.document_end = config.get("document_end_token") or (
            "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token
        )
        if self.document_end is None or self.document_end not in tokenizer.get_vocab():
            raise ValueError(f"CPTDataset: document end token {self.document_end!r} is not in the tokenizer's vocabulary")
        vision_tokens = self.family.vision_tokens if self.family is not None else ()
        self.vision_ids = {tokenizer.convert_tokens_to_ids(t) for t in vision_tokens}

        files = [parquet_files] if isinstance(parquet_files, str) else list(parquet_files)
        tables = [pq.read_table(f, columns=["segments", self.image_key, "extra_info"]) for f in files]
        self.segments = [row for t in tables for row in t.column("segments").to_pylist()]
        self.sources = [info["source"] for t in tables for info in t.column("extra_info").to_pylist()]
        self.image_columns = [t.column(self.image_key) for t in tables]
        self.row_of = np.arange(len(self.segments))
        if 0 < max_samples < len(self.segments):
            if config.get("shuffle", False):
                rng = np.random.default_rng(config.get("seed"))
                self.row_of = np.sort(rng.choice(len(self.segments), size=max_samples, replace=False))
            else:
                self.row_of = self.row_of[:max_samples]
        self._offsets = np.cumsum([0] + [len(t) for t in tables])
        logger.info("CPTDataset: %d documents from %d file(s)", len(self.row_of), len(files))

    def __len__(self) -> int:
        return len(self.row_of)

    def _images(self, row: int) -> list[dict]:
        table = int(np.searchsorted(self._offsets, row, side="right")) - 1
        return self.image_columns[table][row - int(self._offsets[table])].as_py()

    def document_text(self, item: int) -> str:
        """The row's text as the model reads it, with one unexpanded vision span per image."""
        parts, previous = [], None
        for segment in self.segments[self.row_of[item]]:
            if segment["type"] == "image":
                if self.family is None:
                    raise ValueError(f"CPT row {item} ({self.sources[self.row_of[item]]}) has images but the model "
                                     "has no processor; use a vision-language model")
                parts.append(self.family.image_span)
            else:
                if previous == "text" and not parts[-1][-1:].isspace():
                    parts.append("\n")
                parts.append(segment["text"])
            previous = segment["type"]
        return "".join(parts) + self.document_end

    def __getitem__(self, item: int) -> dict:
        row = int(self.row_of[item])
        where = f"CPT row {item} ({self.sources[row]})"
        text = self.document_text(item)
        images = self._images(row)
        spans = text.count(self.family.image_span) if self.family is not None else 0
        if images and self.processor is None:
            raise ValueError(f"{where} has images but the model has no processor; use a vision-language model")
        if spans != len(images):
            raise ValueError(f"{where}: {spans} image segments for {len(images)} images")
        if self.processor is None:
            inputs = {"input_ids": self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]}
        else:
            from verl.utils.dataset.vision_utils import process_image

            pictures = [process_image(dict(image), image_patch_size=self.image_patch_size) for image in images] or None
            inputs = dict(self.processor(text=[text], images=pictures, return_tensors="pt"))
        input_ids = inputs.pop("input_ids")[0]
        model_inputs = {k: v for k, v in inputs.items() if k not in _NOT_MODEL_INPUTS}
        input_ids, model_inputs = self._truncate(input_ids, model_inputs, where)

        loss_mask = torch.ones_like(input_ids)
        loss_mask[torch.isin(input_ids, torch.tensor(sorted(self.vision_ids)))] = 0
        loss_mask[0] = 0
        attention_mask = torch.ones_like(input_ids)
        position_ids = self._position_ids(input_ids, model_inputs.get("image_grid_thw"), attention_mask)

        item_dict = {"input_ids": input_ids, "loss_mask": loss_mask, "position_ids": position_ids}
        if self.pad_mode == "right":
            pad = self.max_length - input_ids.shape[0]
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            item_dict = {
                "input_ids": F.pad(input_ids, (0, pad), value=pad_id),
                "attention_mask": F.pad(attention_mask, (0, pad)),
                "loss_mask": F.pad(loss_mask, (0, pad)),
                "position_ids": F.pad(position_ids, (0, pad)),
            }
        if self.processor is not None:
            # empty for a text-only row: verl's collator takes a batch's keys from its first item
            item_dict["multi_modal_inputs"] = model_inputs
        return item_dict

    def _truncate(self, input_ids: torch.Tensor, model_inputs: dict, where: str) -> tuple[torch.Tensor, dict]:
        length = input_ids.shape[0]
        if length <= self.max_length:
            return input_ids, model_inputs
        if self.truncation == "error":
            raise ValueError(
                f"{where} is {length} tokens, over data.max_length={self.max_length}; raise max_length, lower the "
                "images' max_pixels, or set data.truncation=right"
            )
        cut = self.max_length
        starts, ends = ([], []) if self.family is None else (
            (input_ids == self.tokenizer.convert_tokens_to_ids(token)).nonzero().flatten().tolist()
            for token in (self.family.vision_start, self.family.vision_end)
        )
        kept = sum(1 for end in ends if end < cut)
        if kept < len(starts) and starts[kept] < cut:  # the cut falls inside an image: cut before it
            cut = starts[kept]
        if cut < 2:
            raise ValueError(f"{where}: its first image alone is over data.max_length={self.max_length}")
        if kept < len(starts):  # drop the images past the cut from the model inputs too
            extra = set(model_inputs) - {"pixel_values", "image_grid_thw"}
            if extra:
                raise ValueError(f"{where}: cannot drop images from processor outputs {sorted(extra)}")
            grid = model_inputs["image_grid_thw"][:kept]
            patches = int(grid.prod(dim=1).sum())
            model_inputs = {"pixel_values": model_inputs["pixel_values"][:patches], "image_grid_thw": grid} if kept else {}
        logger.debug("%s: %d tokens cut to %d, %d of %d images kept", where, length, cut, kept, len(starts))
        return input_ids[:cut], model_inputs

    def _position_ids(self, input_ids: torch.Tensor, grid: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        text_positions = torch.arange(input_ids.shape[0], dtype=torch.long)
        if self.family is None:
            return text_positions
        vision_positions = self.family.get_rope_index()(self.processor, input_ids=input_ids, image_grid_thw=grid,
                                                        attention_mask=mask)
        return torch.cat((text_positions.unsqueeze(0), vision_positions), dim=0)


def _family(processor) -> ModelFamily | None:
    """The model family of verl's processor (None for a text-only model)."""
    if processor is None:
        return None
    config = getattr(processor, "config", None)
    if config is None:
        raise ValueError("CPTDataset needs the processor of verl.utils.hf_processor, which binds the model config as "
                         "processor.config (the model family comes from it)")
    return family_of_config(config, where=getattr(config, "_name_or_path", "") or "the model")
