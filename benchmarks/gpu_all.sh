#!/usr/bin/env bash
# The one prepared GPU session for issue 12's targets, under 8 minutes. On a lent machine, from the
# repository root, after `bash benchmarks/gpu_wheels.sh` here (device call: carry [".whl"]):
#   bash benchmarks/gpu_all.sh OUT_DIR                      # first call: every target's row
#   SECTIONS=tests bash benchmarks/gpu_all.sh OUT_DIR2      # second call, warm: pytest -m gpu
# Sections, each a module of seq2seq_es.bench run with `python3 -m` under its own time limit, writing
# into OUT_DIR as it finishes, so a slow or failing section loses only itself:
#   1. flex_ablation  LEDO's flex encoder attention against a plain band kernel (item 4: cases A, E
#                     and their dynamic-shape twins; FLEX_CASES=all for the whole ablation)
#   2. led            LEDO-base 16K training step, flex vs transformers' LED, with and without
#                     checkpointing, after a flex-vs-hf accuracy check at 16K
#   3. seq2seq        Seq2SeqTrainer route vs this package's loop, BART-base and T5-base, MLSUM-like
#                     lengths and fixed 512x128x32 (uncompiled rows, then compiled ones)
#   3b. profile       the Trainer's and the loop's fixed-shape rows under torch.profiler
#   4. gpu_tests      pytest -m gpu (about 3-4 minutes: runs `seq2seq-es train` in subprocesses)
# The default (flex, led, seq2seq) is the targets' rows in one call; profile and tests run when
# named. EXTRAS=1 adds the T5 attention kernels (hf/sdpa/flex) and the mixed-precision checks
# under ZeRO, measured before (BENCHMARKS.md) and not part of the targets. OUT_DIR/summary.md
# collects the targets.
# TINY=1 runs the same sections on tiny models on the CPU: the smoke test of this script.
# Each section's limit is an environment variable (FLEX_S, LED_S, SEQ2SEQ_S, PROFILE_S,
# GPU_TESTS_S, T5_S, PRECISION_S) so a rerun can give one section the time another did not use;
# SECTIONS picks sections (flex,led,seq2seq,profile,tests), SEQ2SEQ_SECTIONS the seq2seq bench's.
set -u
OUT_DIR=${1:?usage: gpu_all.sh OUT_DIR}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
stamp() { echo "[$(date +%H:%M:%S) +$((SECONDS))s] $*"; }
TINY_ARG=(); [ "${TINY:-0}" = 1 ] && TINY_ARG=(--tiny)

if [ -d .whl ]; then
  stamp "installing carried wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  # --no-build-isolation: the image has setuptools and wheel, and nothing can be downloaded there.
  for sdist in .whl/*.tar.gz; do
    DS_BUILD_OPS=0 python3 -m pip install -q --no-index --no-deps --no-build-isolation \
      --no-compile --target /tmp/site "$sdist" || stamp "$sdist: install failed"
  done
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| transformers', transformers.__version__)"
  python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>&1 | tail -1
  python3 -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
  date -u +"date %Y-%m-%d %H:%M UTC"
} > "$OUT_DIR/environment.txt" 2>&1
cat "$OUT_DIR/environment.txt"
# A carried wheel that the image cannot import fails every section in seconds: stop here
# instead, so a rerun with the fixed wheels still has the device time.
PREFLIGHT="import transformers, deepspeed, datasets, submitit; from transformers import BartConfig"
if ! python3 -c "$PREFLIGHT" > "$OUT_DIR/preflight.txt" 2>&1; then
  tail -5 "$OUT_DIR/preflight.txt"; stamp "preflight import failed; nothing measured"; exit 3
fi

# SECTIONS (comma-separated): a rerun can measure only what an earlier one did not. The default
# fits 8 minutes with the carried wheels' install (40-50 s): flex 30 + led 100 + seq2seq 265 s.
# The GPU tests took more than the 90 s they had inside it on 2026-12-04: a call of their own.
want() { [[ ",${SECTIONS:-flex,led,seq2seq}," == *",$1,"* ]]; }
FLEX_ARGS=(--repeat 10 --cases "${FLEX_CASES:-A,E,A-dyn,E-dyn}")
LED_ARGS=(--lengths "${LED_LENGTHS:-16384}")  # the targets are at 16K
if [ "${TINY:-0}" = 1 ]; then FLEX_ARGS+=(--src-len 512); LED_ARGS=(--tiny); fi
if want flex; then
  stamp "1. flex ablation: LEDO's flex encoder attention against a plain band kernel"
  timeout "${FLEX_S:-30}" python3 -m seq2seq_es.bench.gpu_flex_ablation "${FLEX_ARGS[@]}" 2>&1 \
    | tee "$OUT_DIR/flex_ablation.txt"
fi
if want led; then
  stamp "2. LED: flex vs hf at 16K (accuracy, then training steps)"
  timeout "${LED_S:-100}" python3 -m seq2seq_es.bench.gpu_led "$OUT_DIR/led" "${LED_ARGS[@]}" \
    --budget-s "$(( ${LED_S:-100} - 10 ))"
fi
if want seq2seq; then
  stamp "3. seq2seq: Seq2SeqTrainer route vs this package's loop"
  SEQ2SEQ_ARGS=(); [ -n "${SEQ2SEQ_SECTIONS:-}" ] && SEQ2SEQ_ARGS=(--sections "$SEQ2SEQ_SECTIONS")
  timeout "${SEQ2SEQ_S:-265}" python3 -m seq2seq_es.bench.gpu_seq2seq "$OUT_DIR/seq2seq" \
    "${TINY_ARG[@]}" --budget-s "$(( ${SEQ2SEQ_S:-265} - 10 ))" "${SEQ2SEQ_ARGS[@]}"
fi
if [ "${TINY:-0}" != 1 ] && want profile; then
  stamp "3b. profile: where a fixed-shape step's time goes, the Trainer's and the loop's"
  timeout "${PROFILE_S:-50}" python3 -m seq2seq_es.bench.gpu_step_profile "$OUT_DIR/profile" \
    --dist "${PROFILE_DIST:-fixed}" --impls "${PROFILE_IMPLS:-hf_trainer,loop_fused}" 2>&1 \
    | grep -v "^USDT\|^precision" | tee "$OUT_DIR/profile.txt"
fi
if [ "${TINY:-0}" != 1 ] && want tests; then
  stamp "4. tests that need a CUDA device (pytest -m gpu)"
  # Only the files that hold GPU tests: collecting the others imports what only the CPU suite needs.
  timeout "${GPU_TESTS_S:-300}" python3 -m pytest -q -p no:cacheprovider -m gpu \
    $(grep -l "mark.gpu" tests/test_*.py) \
    > "$OUT_DIR/gpu_tests.txt" 2>&1; tail -3 "$OUT_DIR/gpu_tests.txt"
fi
if [ "${EXTRAS:-0}" = 1 ]; then
  stamp "extra: T5 attention kernels, hf vs sdpa vs flex at the T5-base shape"
  timeout "${T5_S:-100}" python3 -m seq2seq_es.bench.gpu_t5 "$OUT_DIR/t5" --impls "${T5_IMPLS:-hf,sdpa,flex}"
  stamp "extra: precision, fp16 loss scaling at ZeRO 0/2/3, bf16 with fp32 gradient accumulation"
  timeout "${PRECISION_S:-180}" python3 -m seq2seq_es.bench.gpu_precision "$OUT_DIR/precision"
fi
# The call's seconds so far (wheel install included; the archive below takes about one more).
CALL_SECONDS=$SECONDS python3 -m seq2seq_es.bench.gpu_summary "$OUT_DIR" > "$OUT_DIR/summary.md"
cat "$OUT_DIR/summary.md"
# The device tool brings back at most 8 files, 2 folders down: one archive holds everything.
tar czf "$OUT_DIR.tgz" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")"
stamp "done: $OUT_DIR/summary.md, everything in $OUT_DIR.tgz"
