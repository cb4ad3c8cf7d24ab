#!/usr/bin/env bash
# Fetch, on this machine (where pip reaches the registries), the wheels that benchmarks/gpu_all.sh
# installs on a lent GPU machine, whose image cannot download anything. Run from the repository root:
#   bash benchmarks/gpu_wheels.sh            # fills .whl/ (git-ignored through .git/info/exclude)
# then name `.whl` in the device call's `carry`. The image (python 3.12, torch 2.11, transformers 5.17,
# accelerate, sentencepiece, tokenizers, safetensors, numpy, pyyaml, einops, msgpack, ninja, psutil,
# py-cpuinfo, nvidia-ml-py, tqdm) lacks deepspeed and its pydantic/hjson needs, submitit and
# datasets, and its transformers is
# older than the one the package is tested with; the versions below are the .venv's, so the GPU run
# times the code CI tests. Everything else the bench sections import is already in the image.
set -euo pipefail
WHEEL_DIR=${1:-.whl}
PYTHON=${PYTHON:-python3}
mkdir -p "$WHEEL_DIR"
grep -qxF "/$WHEEL_DIR/" .git/info/exclude 2>/dev/null || echo "/$WHEEL_DIR/" >> .git/info/exclude

version() {  # the version of a package in the local .venv, so GPU and CPU runs use the same code
  .venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"
}

# One platform list for binary wheels: the image is manylinux x86-64 with CPython 3.12.
PLATFORM_ARGS=(--only-binary=:all: --python-version 3.12 --implementation cp)
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64; do
  PLATFORM_ARGS+=(--platform "$tag")
done

rm -f "$WHEEL_DIR"/*.whl "$WHEEL_DIR"/*.tar.gz
# Pure-Python wheels, and pydantic-core (compiled) for CPython 3.12.
# transformers >= 5.25 needs huggingface-hub >= 2.4 (the image has 1.33), which pulls httpx2
# and its chain; pytest's conftest imports submitit, and `seq2seq-es train` (the GPU tests)
# reads data through datasets. The image's pyarrow, pandas, xxhash, numpy, cloudpickle and tokenizers are new enough.
for package in transformers hjson pydantic pydantic-core annotated-types typing-inspection \
               huggingface-hub hf-xet httpx2 httpcore2 truststore h11 anyio idna click \
               typing-extensions submitit datasets dill multiprocess fsspec \
               evaluate nltk defusedxml snowballstemmer; do
  "$PYTHON" -m pip download -q --no-deps "${PLATFORM_ARGS[@]}" -d "$WHEEL_DIR" "$package==$(version "$package")"
done
# DeepSpeed and rouge-score ship only sdists; gpu_all.sh builds them there (DeepSpeed with
# DS_BUILD_OPS=0: its ops JIT-compile). The metrics' packages let `pytest -m gpu` train and score.
for package in deepspeed rouge-score; do
  "$PYTHON" -m pip download -q --no-deps --no-binary=:all: -d "$WHEEL_DIR" \
    "$package==$(version "$package")"
done
ls -la "$WHEEL_DIR"
du -sh "$WHEEL_DIR"
