#!/usr/bin/env bash
# The one prepared GPU session: LED and T5 attention kernels (accuracy and speed), mixed precision under
# ZeRO, Seq2SeqTrainer route vs this package's loop, and the gpu-marked tests. Run from the repository
# root on the lent machine,
#   bash benchmarks/gpu_all.sh OUT_DIR
# Each section is a module of seq2seq_es.bench run with `python3 -m` (PYTHONPATH has the repository);
# the one-off probes gpu_led_profile, gpu_flex_options and gpu_flex_ablation run the same way by hand.
# The machine's image has torch and an older transformers but no deepspeed: wheels carried in
# .whl/ (transformers 5.24, deepspeed's sdist and its pure-Python needs) install into /tmp/site.
# Sections run one after the other, each under its own time limit, and write into OUT_DIR as
# they finish, so a slow or failing section loses only itself.
set -u
OUT_DIR=${1:?usage: gpu_all.sh OUT_DIR}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
stamp() { echo "[$(date +%H:%M:%S) +$((SECONDS))s] $*"; }

if [ -d .whl ]; then
  stamp "installing carried wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  DS_BUILD_OPS=0 python3 -m pip install -q --no-index --no-deps --no-build-isolation \
    --no-compile --target /tmp/site .whl/deepspeed-*.tar.gz || stamp "deepspeed install failed"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| transformers', transformers.__version__)"
  python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>&1 | tail -1
} > "$OUT_DIR/environment.txt" 2>&1
cat "$OUT_DIR/environment.txt"

stamp "LED: flex vs hf at 16K, then the 4K/8K/16K benchmark"
timeout "${LED_S:-240}" python3 -m seq2seq_es.bench.gpu_led "$OUT_DIR/led" --budget-s "$(( ${LED_S:-240} - 15 ))"
stamp "T5: hf vs sdpa vs flex at the T5-base shape"
timeout "${T5_S:-100}" python3 -m seq2seq_es.bench.gpu_t5 "$OUT_DIR/t5" --impls "${T5_IMPLS:-hf,sdpa,flex}"
stamp "precision: fp16 loss scaling at ZeRO 0/2/3, bf16 with fp32 gradient accumulation at ZeRO 1-3"
timeout "${PRECISION_S:-180}" python3 -m seq2seq_es.bench.gpu_precision "$OUT_DIR/precision"
stamp "seq2seq: Seq2SeqTrainer route vs this package's loop"
timeout "${SEQ2SEQ_S:-200}" python3 -m seq2seq_es.bench.gpu_seq2seq "$OUT_DIR/seq2seq" --budget-s "$(( ${SEQ2SEQ_S:-200} - 15 ))"
stamp "tests that need a CUDA device (pytest -m gpu)"
timeout "${GPU_TESTS_S:-120}" python3 -m pytest -q -p no:cacheprovider -m gpu tests \
  > "$OUT_DIR/gpu_tests.txt" 2>&1; tail -3 "$OUT_DIR/gpu_tests.txt"
stamp "done"
