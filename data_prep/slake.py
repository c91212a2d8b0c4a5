"""SLAKE (HF BoKelvin/SLAKE): train.json / validation.json rows to verl's RL parquet.

    python data_prep/slake.py downloads/slake/train.json downloads/slake/validation.json \\
        --output data/slake --image-root downloads/slake/imgs

Same as ``medverl prep slake``; the layout is described in medverl/data/public.py.
"""

import sys

from medverl.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "slake", *sys.argv[1:]]))
