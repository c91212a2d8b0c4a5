"""PathVQA (HF flaviagiammarino/path-vqa): data/train-*.parquet and validation-*.parquet rows to verl's RL parquet.

    python data_prep/path_vqa.py downloads/path-vqa/data/train-*.parquet --output data/path_vqa

Same as ``medverl prep path_vqa``; the layout is described in medverl/data/public.py.
"""

import sys

from medverl.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "path_vqa", *sys.argv[1:]]))
