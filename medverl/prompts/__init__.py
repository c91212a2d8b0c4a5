"""Prompt files: RL prompt templates, each paired by name with the format reward options it expects, and the judge
prompts. Every file here is read through :func:`read_prompt`.

``think_answer``: ``<think>…</think><answer>…</answer>``; score with the default reward_kwargs (or
``require_think=true``). ``think_prefilled``: for chat templates that open ``<think>`` themselves (Qwen3
thinking models); score with ``think_prefilled=true``.

Add a template from any package::

    from medverl.prompts import register_template

    @register_template("terse", reward_options={"think_prefilled": False})
    def terse() -> str:
        return "{question}{options}\\n{answer_hint} Reply as <think>…</think><answer>…</answer>."

or name such a function in an entry point of group ``medverl.prompt_templates``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medverl.errors import ConfigError
from medverl.registry import Registry

DEFAULT_TEMPLATE = "think_answer"
ANSWER_HINTS = {
    "multiple_choice": "Answer with the letter of one option.",
    "yes_no": "Answer yes or no.",
}


@dataclass(frozen=True, eq=False)
class PromptTemplate:
    """A registered RL prompt template.

    Attributes:
        text: returns the template, text with ``{question}``, ``{options}`` and ``{answer_hint}`` fields.
        reward_options: the reward_kwargs its outputs must be scored with (None when unknown).
    """

    text: Callable[[], str]
    reward_options: Mapping | None = None


class _Templates(Registry[PromptTemplate]):
    def _from_entry_point(self, name: str, obj: object) -> PromptTemplate:
        # `name = pkg.module:function` names a function returning the template text
        if isinstance(obj, PromptTemplate):
            return obj
        if not callable(obj):
            raise TypeError(f"prompt template {name!r} must be a function returning its text, got {type(obj).__name__}")
        return PromptTemplate(obj)

    def _same(self, existing: PromptTemplate, value: PromptTemplate) -> bool:
        return existing.text is value.text


TEMPLATES = _Templates(
    "prompt template", "medverl.prompt_templates", entry_type=PromptTemplate,
    how="Register one with @medverl.prompts.register_template(name) or an entry point of group "
        "'medverl.prompt_templates', or pass the path of a template file.",
)


def read_prompt(name: str) -> str:
    """The text of the bundled prompt file ``medverl/prompts/<name>.txt`` (a template or a judge prompt)."""
    path = resources.files(__package__).joinpath(f"{name}.txt")
    if not path.is_file():
        raise ConfigError(f"no bundled prompt {name!r} (no file {name}.txt in {__package__})")
    return path.read_text(encoding="utf-8")


def register_template(
    name: str, *, reward_options: Mapping | None = None
) -> Callable[[Callable[[], str]], Callable[[], str]]:
    """Decorator registering a function that returns a prompt template's text as template `name`, with the
    reward_kwargs its outputs must be scored with (None when unknown)."""

    def decorator(text: Callable[[], str]) -> Callable[[], str]:
        TEMPLATES.add(name, PromptTemplate(text, reward_options))
        return text

    return decorator


for _name, _prefilled in (("think_answer", False), ("think_prefilled", True)):
    TEMPLATES.add(_name, PromptTemplate(functools.partial(read_prompt, _name), {"think_prefilled": _prefilled}))


def load_template(name_or_path: str) -> str:
    """A registered template by name (``think_answer``, ``think_prefilled``, a plugin's) or a file of the user's.

    A template is text with ``{question}``, ``{options}`` and ``{answer_hint}`` fields.
    """
    if name_or_path in TEMPLATES:
        text = TEMPLATES.get(name_or_path).text()
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"prompt template {name_or_path!r} is not a file. "
                              f"{TEMPLATES.unknown_message(name_or_path)}")
        text = path.read_text(encoding="utf-8")
    if "{question}" not in text:
        raise ConfigError(f"prompt template {name_or_path!r} has no {{question}} field")
    return text.strip()


def template_record(text: str) -> dict:
    """What an RL manifest records of the template `text`: its name (``custom`` for a file of the user's), its
    SHA-256 and the reward options it needs (None when unknown)."""
    name = next((n for n, template in TEMPLATES.items() if template.text().strip() == text), "custom")
    options = TEMPLATES.get(name).reward_options if name != "custom" else None
    return {"name": name, "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "reward_options": dict(options) if options is not None else None}
