"""medverl: medical multimodal CPT, SFT and GRPO on verl 0.9.1."""

__version__ = "0.1.0"
