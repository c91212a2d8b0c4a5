#!/usr/bin/env bash
# Create .venv with medverl, verl 0.9.1 and the test tools on a CPU machine.
# GPU machines: pip install -e ".[train]" instead (torch 2.11 + vLLM through verl's extras).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch and torchvision first (torchvision is needed by qwen_vl_utils, which verl uses for every image). The default
# x86_64 pair is a CUDA build (about 5 GB) that also runs on CPU. With a CPU build of your own, set e.g.
#   TORCH_PACKAGES="torch==2.9.1 torchvision==0.24.1" TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
if [ -z "${TORCH_PACKAGES:-}" ]; then
  if [ "$(uname -m)" = "aarch64" ]; then TORCH_PACKAGES="torch==2.9.1 torchvision==0.24.1"
  else TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1"; fi
fi
# shellcheck disable=SC2086  # TORCH_PACKAGES is a list of requirements
.venv/bin/python -m pip install --quiet $TORCH_PACKAGES ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
# cpu-train: verl's trainers on CPU (medverl pipeline --cpu, the end-to-end test)
.venv/bin/python -m pip install --quiet -e ".[test,bench,cpu-train]"
.venv/bin/python -c "import medverl, verl; print(f'medverl {medverl.__version__} on verl {verl.__version__}: ready')"
