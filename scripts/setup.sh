#!/usr/bin/env bash
# Create .venv and install seq2seq-es with its test tools. On a machine without an NVIDIA GPU,
# torch is pinned to the CPU build first, so that the package's torch requirement does not pull
# a multi-GB CUDA build: 2.13.0+cpu where the configured index or wheel folder has it (this
# project's machines), else from PyTorch's CPU index (public PyPI only has the CUDA build for
# Linux), else the plain pin.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# What a fresh machine may lack, said before minutes of installing: pyproject's Python, venv
# (a Debian package of its own), and on CPUs the C++ compiler that builds DeepSpeed's extension.
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  found=$(command -v "$PYTHON" >/dev/null 2>&1 && "$PYTHON" -V 2>&1 || echo "not found")
  echo "error: seq2seq-es needs Python 3.10 or newer; $PYTHON: $found (PYTHON=python3.11 bash $0 names another)" >&2
  exit 1
fi
if ! command -v nvidia-smi >/dev/null 2>&1 && ! command -v "${CXX:-c++}" >/dev/null 2>&1; then
  echo "error: no C++ compiler (${CXX:-c++}): training on CPUs compiles DeepSpeed's extension with one, and Python's headers (Debian/Ubuntu: apt-get install g++ python3-dev; Fedora/RHEL: dnf install gcc-c++ python3-devel)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv; then
    rm -rf .venv
    echo "error: $PYTHON -m venv failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
  fi
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
