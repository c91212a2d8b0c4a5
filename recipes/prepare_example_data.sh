#!/usr/bin/env bash
# Prepares the bundled example records (examples/data) for recipes/pipelines/example.yaml and example_cpu.yaml, at
# each stage's resolution (Qwen2.5-VL: 28 x 28 pixels per visual token; 256, 512, 1024, 2048 tokens, GRPO 1024).
# stain_*.jsonl is the synthetic stain task (medverl.training.synthetic_task) that shows GRPO learning. CPU, seconds.
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
prep caption "$ex/stain_captions.jsonl" "$out/cpt_stain" --max-pixels 200704
stage=1
for pixels in 401408 802816 1605632; do
  prep sft "$ex/sft.jsonl" "$out/sft_stage$stage" --max-pixels $pixels
  prep sft "$ex/stain_sft.jsonl" "$out/sft_stage${stage}_synthetic" --max-pixels $pixels
  stage=$((stage + 1))
done
prep rl "$ex/rl.jsonl" "$out/rl" --max-pixels 802816
prep rl "$ex/rl_val.jsonl" "$out/rl_val" --max-pixels 802816 --split test
prep rl "$ex/stain_rl.jsonl" "$out/rl_stain" --max-pixels 802816
# one or two rows of each reward beyond the seed's (multi_label, bbox_iou, numeric, open_text)
prep rl "$ex/rl_rewards.jsonl" "$out/rl_rewards" --max-pixels 802816
prep rl "$ex/stain_rl_val.jsonl" "$out/rl_stain_val" --max-pixels 802816 --split test
# benchmark samples (examples/eval) for the example's evaluation stage; the physical path, since images must lie
# inside the source directory once symlinks are resolved
eval_root=$(cd examples/eval && pwd -P)
for pair in vqa_rad:vqa-rad path_vqa:path-vqa slake:slake; do
  rm -rf "$out/eval_${pair%%:*}"
  $medverl eval prepare "${pair%%:*}" --source "$eval_root/${pair#*:}" --output "$out/eval_${pair%%:*}" \
    --max-pixels 802816 >/dev/null
done
