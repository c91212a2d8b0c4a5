#!/usr/bin/env bash
# Create .venv with medverl, verl 0.9.1 and the test tools on a CPU machine.
# GPU machines: pip install -e ".[train]" instead (torch 2.11 + vLLM through verl's extras).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# CPU torch pair first (torchvision is needed by qwen_vl_utils, which verl uses for every image).
if [ "$(uname -m)" = "aarch64" ]; then
  .venv/bin/python -m pip install --quiet torch==2.9.1 torchvision==0.24.1
else
  .venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/python -m pip install --quiet -e ".[test,bench]"
.venv/bin/python -c "import medverl, verl; print(f'medverl {medverl.__version__} on verl {verl.__version__}: ready')"
