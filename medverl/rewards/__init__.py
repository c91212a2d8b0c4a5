"""medverl's rule-based rewards and the query_type registry verl reaches through ``pkg://medverl.rewards``.

Register a reward for a new query_type::

    from medverl.rewards import register

    @register("icd10")
    def icd10(answer: str, golds: tuple[str, ...]) -> float:
        ...
"""

from medverl.rewards import boxes, choice, labels, match, numeric, report, yes_no  # noqa: F401  (built-ins register)
from medverl.rewards.choice import extract_choice
from medverl.rewards.format import FormatCheck, answer_region, check_format
from medverl.rewards.registry import (
    ENTRY_POINT_GROUP,
    REGISTRY,
    InvalidReference,
    PluginError,
    RewardSpec,
    UnknownQueryType,
    Verdict,
    register,
)
from medverl.rewards.scoring import (
    RESULT_KEYS,
    Answer,
    RewardOptions,
    RewardResult,
    check_reference,
    compute_score,
    extract_answer,
    parse_ground_truth,
    score_sample,
)
from medverl.rewards.text import normalize, tokens
from medverl.rewards.yes_no import yes_no_polarity

__all__ = [
    "ENTRY_POINT_GROUP",
    "REGISTRY",
    "RESULT_KEYS",
    "Answer",
    "FormatCheck",
    "InvalidReference",
    "PluginError",
    "RewardOptions",
    "RewardResult",
    "RewardSpec",
    "UnknownQueryType",
    "Verdict",
    "answer_region",
    "check_format",
    "check_reference",
    "compute_score",
    "extract_answer",
    "extract_choice",
    "normalize",
    "parse_ground_truth",
    "register",
    "score_sample",
    "tokens",
    "yes_no_polarity",
]
