"""Prompt templates for RL data, each paired by name with the format reward options it expects.

``think_answer``: ``<think>…</think><answer>…</answer>``; score with the default reward_kwargs (or
``require_think=true``). ``think_prefilled``: for chat templates that open ``<think>`` themselves (Qwen3
thinking models); score with ``think_prefilled=true``.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from medverl.errors import ConfigError

# Each bundled template and the reward_kwargs its outputs must be scored with.
REWARD_OPTIONS = {"think_answer": {"think_prefilled": False}, "think_prefilled": {"think_prefilled": True}}
TEMPLATES = tuple(REWARD_OPTIONS)
ANSWER_HINTS = {
    "multiple_choice": "Answer with the letter of one option.",
    "yes_no": "Answer yes or no.",
}


def load_template(name_or_path: str) -> str:
    """A template by name (``think_answer``, ``think_prefilled``) or from a file of the user's.

    A template is text with ``{question}``, ``{options}`` and ``{answer_hint}`` fields.
    """
    if name_or_path in TEMPLATES:
        text = resources.files(__package__).joinpath(f"{name_or_path}.txt").read_text(encoding="utf-8")
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"prompt template {name_or_path!r} is neither one of {', '.join(TEMPLATES)} nor a file")
        text = path.read_text(encoding="utf-8")
    if "{question}" not in text:
        raise ConfigError(f"prompt template {name_or_path!r} has no {{question}} field")
    return text.strip()


def template_record(text: str) -> dict:
    """What an RL manifest records of the template `text`: its name (``custom`` for a file of the user's), its
    SHA-256 and the reward options it needs (None when unknown)."""
    name = next((n for n in TEMPLATES if load_template(n) == text), "custom")
    return {"name": name, "sha256": hashlib.sha256(text.encode()).hexdigest(), "reward_options": REWARD_OPTIONS.get(name)}
