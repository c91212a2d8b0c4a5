"""verl entry file for medverl's medical rewards, loadable by path.

    reward.custom_reward_function.path=reward_fns/medical_vqa.py
    reward.custom_reward_function.name=compute_score

is the same as ``path=pkg://medverl.rewards``: every row is scored by the reward registered for its
``extra_info["query_type"]`` (multiple_choice, jaccard, exact_match, yes_no, or one of yours).
"""

from medverl.rewards import compute_score

__all__ = ["compute_score"]
