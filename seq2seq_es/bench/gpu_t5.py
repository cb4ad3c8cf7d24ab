"""T5 attention on the GPU: hf vs sdpa vs flex, accuracy and step time at the T5-base shape.

    python3 -m seq2seq_es.bench.gpu_t5 OUT_DIR [--tiny] [--impls hf,sdpa,flex]
"""

import argparse
import json
import sys
import time
from pathlib import Path

from .t5_check import gpu_check


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--impls", default="hf,sdpa,flex")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    device = "cpu" if args.tiny else "cuda"
    impls = tuple(i for i in args.impls.split(",") if not (args.tiny and i.startswith("flex")))
    result = gpu_check(device, tiny=args.tiny, impls=impls)
    result["wall_s"] = round(time.time() - started, 1)
    (args.out_dir / "gpu_t5.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str)[:6000], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
