#!/usr/bin/env bash
# Every stage on CPU, end to end: prepares the bundled example records, builds a tiny random Qwen2.5-VL (offline, about
# a second) and runs recipes/pipelines/example_cpu.yaml with verl's real trainers. No GPU, no downloads; about 10 minutes
# on 2 cores.
#   bash recipes/run_example_cpu.sh [PIPELINE OPTIONS]     (from the repository root; results in runs/example_cpu/)
set -euo pipefail
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
MEDVERL="$PYTHON -m medverl" bash recipes/prepare_example_data.sh runs/example_cpu/data
model=runs/example_cpu/tiny_qwen25_vl
"$PYTHON" -m medverl.training.tiny_model "$model" >/dev/null  # about a second, the same weights every time
"$PYTHON" -m medverl pipeline recipes/pipelines/example_cpu.yaml "$@"
