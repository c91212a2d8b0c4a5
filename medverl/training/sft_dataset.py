"""verl's multi-turn SFT dataset, made safe for batches that mix text-only and image conversations.

verl's ``SFTTensorCollator`` takes the keys of a batch from its first item, and ``MultiTurnSFTDataset`` gives a
text-only conversation no ``multi_modal_inputs``: a batch whose first item is text-only and whose others have images
fails with ``KeyError: 'multi_modal_inputs'``. The seed's SFT data mixes both. The SFT recipes load this class:

    data.custom_cls.path=pkg://medverl.training.sft_dataset data.custom_cls.name=SFTDataset
"""

from __future__ import annotations

from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset


class SFTDataset(MultiTurnSFTDataset):
    """``MultiTurnSFTDataset`` whose text-only items carry empty ``multi_modal_inputs`` when there is a processor."""

    def __getitem__(self, item: int) -> dict:
        row = super().__getitem__(item)
        if self.processor is not None:
            row.setdefault("multi_modal_inputs", {})
        return row
