#!/usr/bin/env bash
# The main job on the embedded default: set up, then train barto-tiny on the generated Spanish
# news set on the CPU and print ROUGE before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/seq2seq-es demo --output-dir "${1:-runs/demo}"
