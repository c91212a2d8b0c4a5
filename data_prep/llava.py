"""LLaVA-style conversation files (PubMedVision, LLaVA-Med instruct) to verl's multi-turn SFT parquet.

    python data_prep/llava.py PubMedVision_InstructionTuning_VQA.json \\
        --output data/pubmedvision --image-root downloads/PubMedVision

Same as ``medverl prep llava`` (medverl.data.converters.convert_llava).
"""

import sys

from medverl.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "llava", *sys.argv[1:]]))
