"""LLaVA/ShareGPT conversations to verl's multi-turn SFT parquet (messages + images).

    python data_prep/sft_conversations.py llava.json --output data/sft --image-root images/

Record: {"image"?: [paths], "conversations": [{"from": "human" | "gpt" | "system", "value": "<image>\\n..."}]},
one <image> per image. Same as ``medverl prep sft``.
"""

import sys

from medverl.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "sft", *sys.argv[1:]]))
