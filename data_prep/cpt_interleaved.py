"""Interleaved image-text documents (case reports, slides) to medverl's CPT parquet, segments in order.

    python data_prep/cpt_interleaved.py docs.jsonl --output data/cpt_docs

Record: {"texts": [str | null, ...], "image_info": [{"image_base64"} | {"image_path"} | null, ...]}, two
lists of the same length. Same as ``medverl prep interleaved``.
"""

import sys

from medverl.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "interleaved", *sys.argv[1:]]))
