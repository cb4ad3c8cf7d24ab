"""The run directory: resolved config, library versions, metrics.jsonl, TensorBoard, progress.

Only rank 0 writes here (checkpoints are written collectively by checkpoint.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

from ..config import RunConfig, dump

LIBRARIES = ("seq2seq-es", "torch", "transformers", "datasets", "deepspeed", "accelerate",
             "submitit", "evaluate", "tokenizers", "sentencepiece", "sacrebleu", "rouge-score")


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class RunLog:
    """metrics.jsonl (one JSON object per event, with `step`), TensorBoard, and a progress bar."""

    def __init__(self, output_dir: str | Path, cfg: RunConfig, is_main: bool, total_steps: int,
                 start_step: int):
        self.dir = Path(output_dir)
        self.is_main = is_main
        self.bar = None
        self.tb = None
        if not is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        dump(cfg, self.dir / "config.yaml")
        (self.dir / "versions.json").write_text(json.dumps(library_versions(), indent=1))
        self.metrics_file = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.dir / "tensorboard"))
        except ImportError:  # tensorboard is a dependency; stay usable without it
            self.tb = None
        if cfg.train.progress_bar:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True,
                            file=sys.stderr)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.is_main:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()

    def progress(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}",
                                 refresh=False)
            self.bar.refresh()

    def write(self, message: str) -> None:
        if self.is_main:
            if self.bar is not None:
                self.bar.write(message)
            else:
                print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.metrics_file.close()


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON to a temporary file and rename it: readers see the old or the new file, never
    half of one (other tools poll best.json and final_results.json while runs go on)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
