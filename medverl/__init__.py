"""medverl: medical multimodal CPT, SFT and GRPO on verl 0.9.1."""

from pathlib import Path

__version__ = "0.1.0"


def recipes_dir() -> Path:
    """The Hydra recipes medverl ships (``--config-path``): ``medverl/recipes`` in an installed wheel, the
    repository's ``recipes/`` in a checkout or an editable install."""
    package = Path(__file__).resolve().parent
    installed = package / "recipes"
    return installed if installed.is_dir() else package.parent / "recipes"
