"""PMC-VQA (HF RadGenome/PMC-VQA): train_2.csv (images in figures/) or v1 train.csv (images/) rows to verl's RL parquet.

    python data_prep/pmc_vqa.py downloads/pmc-vqa/train_2.csv \\
        --output data/pmc_vqa --image-root downloads/pmc-vqa/figures

Same as ``medverl prep pmc_vqa``; the layout is described in medverl/data/public.py.
"""

import sys

from medverl.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "pmc_vqa", *sys.argv[1:]]))
