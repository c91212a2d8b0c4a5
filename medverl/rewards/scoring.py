"""The one adapter verl calls: format + accuracy, dispatched on ``extra_info["query_type"]``."""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import NamedTuple

from medverl.arguments import positive_int, unit_float
from medverl.rewards import registry
from medverl.rewards.format import check_format
from medverl.rewards.registry import InvalidReference, Verdict

logger = logging.getLogger(__name__)

# Keys of the dict handed to verl, identical for every sample (verl batches them by key).
RESULT_KEYS = ("score", "acc", "format", "pred", "reason")
# Keyword arguments verl's reward loop may add on its own; they are not ours to interpret.
_VERL_KWARGS = frozenset({"reward_router_address", "reward_model_tokenizer"})


@dataclass(frozen=True, slots=True)
class RewardOptions:
    """The reward_kwargs medverl understands (``+reward.custom_reward_function.reward_kwargs.KEY=VALUE``).

    Each field is also a command-line option (:mod:`medverl.rewards.options`), its help in the field's metadata.

    Attributes:
        format_weight: w in ``score = w * format + (1 - w) * acc`` (seed: 0.1).
        think_prefilled: the chat template opened ``<think>``; the response must close it.
        require_think: reasoning must be one non-empty think block before the answer.
        max_answer_chars: longer ``<answer>`` contents score acc 0 (bounds the work on adversarial output).
        default_query_type: used for rows whose extra_info has no query_type.
        plugins: modules or ``.py`` files that register rewards, imported once per process.
    """

    format_weight: float = field(default=0.1, metadata={"help": "w in w*format + (1-w)*acc", "type": unit_float})
    think_prefilled: bool = field(default=False, metadata={
        "help": "the chat template opened <think> (data prepared with --template think_prefilled)"})
    require_think: bool = field(default=False, metadata={"help": "reasoning must be one <think> block"})
    max_answer_chars: int = field(default=8192, metadata={"help": "longer answers score acc 0", "type": positive_int})
    default_query_type: str | None = field(default=None, metadata={
        "help": "the query_type of rows whose extra_info has none", "metavar": "NAME"})
    plugins: tuple[str, ...] = field(default=(), metadata={
        "help": "module or .py file registering more query types (repeatable)", "metavar": "MODULE_OR_FILE"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.format_weight <= 1.0:
            raise ValueError(f"reward_kwargs.format_weight must be in [0, 1], got {self.format_weight!r}")
        if self.max_answer_chars < 1:
            raise ValueError(f"reward_kwargs.max_answer_chars must be positive, got {self.max_answer_chars!r}")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, object]) -> RewardOptions:
        """Options from verl's reward_kwargs; an unknown key raises with the closest known one."""
        global _last_options
        if not kwargs:
            return _DEFAULT_OPTIONS
        last_kwargs, last = _last_options
        # verl passes the same reward_kwargs values for every sample: compare by identity first (comparing an
        # OmegaConf ListConfig by value costs tens of microseconds).
        if len(kwargs) == len(last_kwargs) and all(last_kwargs.get(k, _MISSING) is v for k, v in kwargs.items()):
            return last
        if kwargs == last_kwargs:
            return last
        # Hydra passes lists as ListConfig: tuples make the items hashable for the cache.
        items = tuple(sorted((k, _hashable(v)) for k, v in kwargs.items() if k not in _VERL_KWARGS))
        options = _options_from_items(items)
        _last_options = (dict(kwargs), options)
        return options


@functools.lru_cache(maxsize=64)
def _options_from_items(items: tuple[tuple[str, object], ...]) -> RewardOptions:
    known = {f.name for f in fields(RewardOptions)}
    values: dict[str, object] = {}
    for key, value in items:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unknown medverl reward_kwargs key {key!r}.{hint} Known keys: {', '.join(sorted(known))}")
        values[key] = value
    plugins = values.get("plugins", ())
    if isinstance(plugins, str):  # a comma-separated string from a shell
        values["plugins"] = tuple(p.strip() for p in plugins.split(",") if p.strip())
    for flag in ("think_prefilled", "require_think"):
        if flag in values and not isinstance(values[flag], bool):
            raise TypeError(f"reward_kwargs.{flag} must be true or false, got {values[flag]!r}")
    for key, kind in (("format_weight", float), ("max_answer_chars", int)):
        if key in values:
            try:
                values[key] = kind(values[key])
            except (TypeError, ValueError) as exc:
                raise TypeError(f"reward_kwargs.{key} must be a number, got {values[key]!r}") from exc
    return RewardOptions(**values)


_DEFAULT_OPTIONS = RewardOptions()
_MISSING = object()
_last_options: tuple[dict, RewardOptions] = ({}, _DEFAULT_OPTIONS)


class RewardResult(NamedTuple):
    """One scored sample; :meth:`to_verl` is what verl receives."""

    score: float
    acc: float
    format: float
    pred: str
    reason: str
    query_type: str

    @property
    def parsed(self) -> bool:
        """The answer was well-formed and the reward could read a prediction from it."""
        return self.format == 1.0 and bool(self.pred)

    def to_verl(self) -> dict[str, float | str]:
        """The per-sample dict verl logs; the same keys (:data:`RESULT_KEYS`) for every sample."""
        return {"score": self.score, "acc": self.acc, "format": self.format, "pred": self.pred, "reason": self.reason}


def parse_ground_truth(ground_truth: object) -> tuple[str, ...]:
    """Acceptable answers from a string, a list of strings or a JSON-encoded list (parquet keeps one type).

    >>> parse_ground_truth('["yes", "Yes."]')
    ('yes', 'Yes.')
    """
    if isinstance(ground_truth, str):
        return _parse_gold_string(ground_truth)
    if ground_truth is None or isinstance(ground_truth, bytes | Mapping):
        raise InvalidReference(f"ground_truth must be a string or a list of strings, got {ground_truth!r}")
    else:
        try:
            golds = tuple(str(g) for g in ground_truth)  # list, tuple, numpy array
        except TypeError:
            golds = (str(ground_truth),)  # a number
    return _non_blank(golds, ground_truth)


def whole_ground_truth(ground_truth: object) -> tuple[str]:
    """The ground truth as one answer (for rewards registered with ``whole_ground_truth=True``).

    >>> whole_ground_truth("[10, 20, 110, 220]")
    ('[10, 20, 110, 220]',)
    """
    if not isinstance(ground_truth, str):
        raise InvalidReference(f"ground_truth must be a string for this query_type, got {ground_truth!r:.80}")
    return _non_blank((ground_truth,), ground_truth)  # type: ignore[return-value]


def _non_blank(golds: tuple[str, ...], ground_truth: object) -> tuple[str, ...]:
    golds = tuple(g for g in golds if g.strip())
    if not golds:
        raise InvalidReference(f"ground_truth {ground_truth!r} is empty")
    return golds


@functools.lru_cache(maxsize=65536)
def _parse_gold_string(ground_truth: str) -> tuple[str, ...]:
    text = ground_truth.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, too many digits, nested past the stack: one answer
            parsed = None
        if isinstance(parsed, list):
            return _non_blank(tuple(str(g) for g in parsed), ground_truth)
    return _non_blank((ground_truth,), ground_truth)


def resolve_query_type(extra_info: Mapping[str, object] | None, options: RewardOptions) -> registry.RewardSpec:
    """The registered reward for a row's query_type (or the configured default)."""
    query_type = (extra_info or {}).get("query_type") or options.default_query_type
    if not query_type:
        raise registry.UnknownQueryType(
            "the row's extra_info has no 'query_type': set it at data preparation, or set "
            "+reward.custom_reward_function.reward_kwargs.default_query_type=NAME "
            f"(known: {', '.join(registry.REGISTRY.names())})"
        )
    return registry.REGISTRY.get(str(query_type))


def check_reference(
    ground_truth: object,
    extra_info: Mapping[str, object] | None = None,
    options: RewardOptions = _DEFAULT_OPTIONS,
) -> tuple[registry.RewardSpec, tuple[str, ...], dict[str, object]]:
    """Resolve a row's reward and check its reference, as data preparation and every scoring call do.

    Returns:
        The reward, the acceptable answers and the keyword arguments the reward takes from `extra_info`.

    Raises:
        UnknownQueryType: the row's query_type is not registered.
        InvalidReference: no answer could match the ground truth (a ``ValueError`` the reward's ``validate``
            raises becomes one, with its message).
    """
    if options.plugins:
        registry.REGISTRY.load_plugins(options.plugins)
    if extra_info is not None and not isinstance(extra_info, Mapping):
        raise InvalidReference(f"extra_info must be a mapping (a dict of query_type, options, ...), got "
                               f"{type(extra_info).__name__}")
    spec = resolve_query_type(extra_info, options)
    golds = whole_ground_truth(ground_truth) if spec.whole_ground_truth else parse_ground_truth(ground_truth)
    if spec.extra_info_keys:
        params = {key: _hashable((extra_info or {}).get(key)) for key in spec.extra_info_keys}
        key: tuple | None = (spec.validate, golds, *params.values())
    else:
        params, key = {}, (spec.validate, golds)
    if spec.validate is not None:
        try:
            if key in _validated:
                return spec, golds, params
        except TypeError:  # an unhashable parameter: validate every time
            key = None
        try:
            spec.validate(golds, **params)
        except InvalidReference:
            raise
        except ValueError as exc:  # a validate's plain ValueError says the same: this reference cannot be scored
            raise InvalidReference(str(exc)) from exc
        if key is not None:
            if len(_validated) >= _MAX_VALIDATED:
                _validated.clear()
            _validated.add(key)
    return spec, golds, params


# References already validated: GRPO scores each prompt's reference once per response of its group.
_validated: set[tuple] = set()
_MAX_VALIDATED = 1 << 17


_SCALARS = (str, int, float, tuple)


def _hashable(value: object) -> object:
    """Sequences as tuples (parquet rows give lists or numpy arrays), so rewards can cache on them."""
    if isinstance(value, list):
        return tuple(value)
    if value is None or isinstance(value, _SCALARS) or isinstance(value, Mapping):
        return value
    try:
        return tuple(value)  # type: ignore[call-overload]
    except TypeError:
        return value


class Answer(NamedTuple):
    """What the reward reads of a response: `answer` is what a reward is called with (None when it reads none),
    `format` 1.0 for a well-formed response, `reason` why no answer was read."""

    answer: str | None
    format: float
    reason: str = ""


def extract_answer(solution_str: object, options: RewardOptions = _DEFAULT_OPTIONS) -> Answer:
    """Read a response as the reward does under `options`: the ``<answer>`` content :func:`check_format` accepts,
    none over ``max_answer_chars``. Every reader of answers (the rewards, the LLM judge of evaluation) reads here.

    >>> extract_answer("<think>...</think><answer> Left lung </answer>")
    Answer(answer='Left lung', format=1.0, reason='')
    >>> extract_answer("<answer>A</answer><answer>B</answer>").reason
    'answer region has 2 <answer> tags'
    """
    text = solution_str if isinstance(solution_str, str) else _as_text(solution_str)
    fmt = check_format(text, think_prefilled=options.think_prefilled, require_think=options.require_think)
    if not fmt.ok:
        return Answer(None, 0.0, fmt.reason)
    if len(fmt.answer) > options.max_answer_chars:
        return Answer(None, 1.0, f"answer longer than {options.max_answer_chars} characters")
    return Answer(fmt.answer, 1.0)


def score_sample(
    solution_str: object,
    ground_truth: object,
    extra_info: Mapping[str, object] | None = None,
    options: RewardOptions = _DEFAULT_OPTIONS,
) -> RewardResult:
    """Score one response: ``w * format + (1 - w) * acc``, with acc 0 whenever format is 0.

    Raises only for trusted inputs: an unknown query_type or an invalid reference.
    """
    spec, golds, params = check_reference(ground_truth, extra_info, options)
    read, w = extract_answer(solution_str, options), options.format_weight
    if read.answer is None:
        return RewardResult(w * read.format, 0.0, read.format, "", read.reason, spec.name)
    verdict = _run_reward(spec, read.answer, golds, params)
    return RewardResult(w + (1.0 - w) * verdict.acc, verdict.acc, 1.0, verdict.pred, verdict.reason, spec.name)


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _run_reward(spec: registry.RewardSpec, answer: str, golds: tuple[str, ...], params: dict) -> Verdict:
    """Call a reward on untrusted output; its errors and out-of-range values become a logged 0."""
    try:
        out = spec.fn(answer, golds, **params)
    except InvalidReference:
        raise
    except Exception as exc:
        _log_reward_bug(spec.name, f"raised {type(exc).__name__}: {exc}", exc_info=True)
        return Verdict(0.0, reason=f"reward error: {type(exc).__name__}")
    # A bare float says nothing of what was read: the prediction is the answer itself (never a parse failure).
    verdict = out if type(out) is Verdict else Verdict(out, answer)  # type: ignore[arg-type]
    acc, pred, reason = verdict
    if type(acc) is float and 0.0 <= acc <= 1.0 and type(pred) is str and type(reason) is str:
        return verdict
    try:
        acc = float(acc)
    except (TypeError, ValueError):
        acc = math.nan
    if not -1e-9 <= acc <= 1.0 + 1e-9:  # NaN fails the comparison too
        _log_reward_bug(spec.name, f"returned acc {verdict.acc!r}, outside [0, 1]")
        return Verdict(0.0, reason="reward error: acc outside [0, 1]")
    return Verdict(min(max(acc, 0.0), 1.0), str(pred), str(reason))


_reported_bugs: set[tuple[str, str]] = set()


def _log_reward_bug(name: str, what: str, exc_info: bool = False) -> None:
    key = (name, what.partition(":")[0])
    if key not in _reported_bugs:  # once per reward and kind of failure, so a bad reward cannot flood the logs
        _reported_bugs.add(key)
        logger.error("reward for query_type %r %s; the sample scores acc 0", name, what, exc_info=exc_info)


def compute_score(
    data_source: object = None,
    solution_str: object = None,
    ground_truth: object = None,
    extra_info: Mapping[str, object] | None = None,
    **reward_kwargs: object,
) -> dict[str, float | str]:
    """verl's entry point (``reward.custom_reward_function.path=pkg://medverl.rewards``).

    Returns ``{"score", "acc", "format", "pred", "reason"}`` for every sample. Never raises on model output;
    raises on configuration and data errors (unknown query_type or reward_kwargs key, invalid ground truth).

    >>> compute_score(data_source="pmc_vqa", solution_str="<think>...</think><answer>B</answer>",
    ...               ground_truth="B", extra_info={"query_type": "multiple_choice"})["score"]
    1.0
    """
    options = RewardOptions.from_kwargs(reward_kwargs)
    try:
        return score_sample(solution_str, ground_truth, extra_info, options).to_verl()
    except (InvalidReference, registry.UnknownQueryType) as exc:
        index = (extra_info or {}).get("index") if isinstance(extra_info, Mapping) else None
        raise type(exc)(f"{exc} [data_source={data_source!r}, index={index!r}]") from exc
