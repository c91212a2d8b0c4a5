"""Medical VQA records to verl's RL parquet for GRPO.

    python data_prep/rl_vqa.py vqa.jsonl --output data/rl --image-root images/ --max-pixels 401408

Record: {"question", "answer": str | [str], "query_type", "options"?: [str], "image"? | "images"?,
"data_source"?, "system_prompt"?, "split"?}, or a row already in verl's layout. Same as ``medverl prep rl``.
"""

import sys

from medverl.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "rl", *sys.argv[1:]]))
