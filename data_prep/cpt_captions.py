"""Image-caption records to medverl's CPT parquet.

    python data_prep/cpt_captions.py captions.jsonl --output data/cpt_captions --image-root images/

Record: {"image": path | [paths] | base64, "text": "report or caption"}. Same as ``medverl prep caption``.
"""

import sys

from medverl.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "caption", *sys.argv[1:]]))
