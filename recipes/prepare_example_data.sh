#!/usr/bin/env bash
# Prepares the bundled example records (examples/data) for recipes/pipelines/example.yaml, at each stage's
# resolution (Qwen2.5-VL: 28 x 28 pixels per visual token; 256, 512, 1024, 2048 tokens, GRPO 1024). CPU, seconds.
#   bash recipes/prepare_example_data.sh [OUTPUT_DIR]   (default runs/example/data; run from the repository root)
set -euo pipefail
out=${1:-runs/example/data}
medverl=${MEDVERL:-medverl}
ex=examples/data
# each output directory is made anew, so the script can run again
prep() {  # prep KIND INPUT OUTPUT [OPTIONS]
  local kind=$1 input=$2 output=$3
  shift 3
  rm -rf "$output"
  $medverl prep "$kind" "$input" --output "$output" "$@" --image-root "$ex/images"
}
prep caption "$ex/captions.jsonl" "$out/cpt_captions" --max-pixels 200704
prep interleaved "$ex/interleaved.jsonl" "$out/cpt_interleaved" --max-pixels 200704
prep sft "$ex/sft.jsonl" "$out/sft_stage1" --max-pixels 401408
prep sft "$ex/sft.jsonl" "$out/sft_stage2" --max-pixels 802816
prep sft "$ex/sft.jsonl" "$out/sft_stage3" --max-pixels 1605632
prep rl "$ex/rl.jsonl" "$out/rl" --max-pixels 802816
prep rl "$ex/rl_val.jsonl" "$out/rl_val" --max-pixels 802816 --split test
