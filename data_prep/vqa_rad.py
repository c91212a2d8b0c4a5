"""VQA-RAD (HF flaviagiammarino/vqa-rad): data/train-*.parquet rows to verl's RL parquet.

    python data_prep/vqa_rad.py downloads/vqa-rad/data/train-*.parquet --output data/vqa_rad

Same as ``medverl prep vqa_rad``; the layout is described in medverl/data/public.py.
"""

import sys

from medverl.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "vqa_rad", *sys.argv[1:]]))
