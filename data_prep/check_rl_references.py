"""Check RL data before GRPO: every row's query_type is registered and its ground truth can be scored.

    python data_prep/check_rl_references.py data/rl [val.parquet ...] [--plugins /abs/my_rewards.py]

Same as ``medverl rewards check``; exits 1 listing each bad row (file, row, extra_info.index, reason).
"""

import sys

from medverl.cli import main

if __name__ == "__main__":
    sys.exit(main(["rewards", "check", *sys.argv[1:]]))
