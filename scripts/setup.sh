#!/usr/bin/env bash
# Create .venv and install seq2seq-es with its test tools. On a machine without an NVIDIA GPU,
# torch is pinned to the CPU build first, so that the package's torch requirement does not pull
# a multi-GB CUDA build: 2.13.0+cpu where the configured index or wheel folder has it (this
# project's machines), else from PyTorch's CPU index (public PyPI only has the CUDA build for
# Linux), else the plain pin.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0+cpu" 2>/dev/null \
    || .venv/bin/python -m pip install --quiet "torch==2.13.0" \
         --index-url https://download.pytorch.org/whl/cpu --retries 1 --timeout 30 \
    || .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import seq2seq_es, torch, transformers, deepspeed; print('seq2seq-es ready: torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)"
# On CPUs DeepSpeed compiles its shared-memory collectives at the first process group of a
# machine (minutes on 2 cores, in silence inside the first command otherwise): done here once,
# with a line saying so (nothing when the cache already holds it).
if ! command -v nvidia-smi >/dev/null 2>&1; then
  .venv/bin/python -c "from seq2seq_es.engine import distributed as D; D.init(D.read_env({}), 'gloo'); D.close()"
fi
