"""`seq2seq-es demo`: train barto-tiny on the generated Spanish news set, on the CPU, in minutes.

It goes through the same path as `seq2seq-es train` (task `mlsum` reading local files in MLSUM's
schema): validation at step 0, at every epoch end and at the end, the best checkpoint scored on
the test split and exported. It prints validation ROUGE before and after, and the test ROUGE of
the best checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

DEMO_TASK = "mlsum"
DEMO_SETTINGS = {
    "train.max_steps": "600",
    "train.batch_size": "16",
    "train.log_every": "20",
    "train.eval_at_start": "true",
    "train.eval_every": "0",
    "train.save_every": "0",
    "train.precision": "fp32",
    "optim.lr": "2e-3",
    "optim.warmup_ratio": "0.1",  # 60 of the 600 steps; a shorter --train.max_steps keeps 10%
    "optim.schedule": "linear",
    "optim.weight_decay": "0.0",
    "data.max_source_length": "128",
    "data.max_target_length": "40",
    "gen.num_beams": "1",
    "gen.max_new_tokens": "40",
    "gen.min_new_tokens": "0",
    "train.resume": "auto",
}


def demo_main(argv: list[str]) -> int:
    from .. import run_files
    from ..config import check_folder
    from ..engine.entry import train_main
    from ..engine.run_dir import read_metrics
    from .synthetic import write_demo_dataset

    parser = argparse.ArgumentParser(
        prog="seq2seq-es demo", usage="%(prog)s [--output-dir DIR] [--model M] [--section.key VALUE ...]",
        description="Train and evaluate on the embedded Spanish news set (CPU, minutes). Any "
                    "train option (--section.key VALUE, see `seq2seq-es train --help`) is passed on.")
    # type=expanduser: the shell leaves `--output-dir=~/demo` alone
    parser.add_argument("--output-dir", default="runs/demo", type=os.path.expanduser,
                        help="run folder (default runs/demo)")
    parser.add_argument("--model", default="barto-tiny", help="registry name (default barto-tiny)")
    # --task is the demo's own (mlsum: its data is generated in MLSUM's schema), not an
    # option passed on: `demo --task sqac` was refused as "--task given 2 times".
    parser.add_argument("--task", default=DEMO_TASK, help=argparse.SUPPRESS)
    known, rest = parser.parse_known_args(argv)
    if known.task != DEMO_TASK:
        from ..errors import ConfigError
        raise ConfigError("--task", f"the demo trains {DEMO_TASK} on its generated news "
                          f"summaries, not {known.task}; train {known.task} on its data with "
                          f"`seq2seq-es train --task {known.task} --model M` (README: Using it)")
    out = Path(known.output_dir)
    # The data is written into the run folder before `train` checks it: a file there (or at
    # its data/) is refused here, under the demo's own option.
    check_folder("--output-dir", known.output_dir)
    check_folder("--output-dir", str(out / "data"))
    files = write_demo_dataset(out / "data")
    args = ["--task", DEMO_TASK, "--model", known.model, "--train.output_dir", str(out),
            "--data.train_file", files["train"], "--data.validation_file", files["validation"],
            "--data.test_file", files["test"]]
    for key, value in DEMO_SETTINGS.items():
        args += [f"--{key}", value]
    args += rest  # the user's own overrides win
    # A finished demo is not trained again (train.resume auto): its table is the earlier run's,
    # and a wall time of a few seconds read as the demo's.
    finished_before = (out / run_files.DONE).exists()
    started = time.perf_counter()
    code = train_main(args)
    if code != 0:
        return code
    minutes = (time.perf_counter() - started) / 60
    evals = [r for r in read_metrics(out / run_files.METRICS) if "eval/rougeL" in r]
    first, last = evals[0], evals[-1]
    print("\nROUGE on the demo's validation set (Spanish-aware, 0-100):")
    print(f"  {'':>8} {'rouge1':>8} {'rouge2':>8} {'rougeL':>8} {'rougeLsum':>9}")
    for label, row in (("step " + str(first["step"]), first), ("step " + str(last["step"]), last)):
        print(f"  {label:>8} {row['eval/rouge1']:8.2f} {row['eval/rouge2']:8.2f} "
              f"{row['eval/rougeL']:8.2f} {row['eval/rougeLsum']:9.2f}")
    final = json.loads((out / run_files.FINAL_RESULTS).read_text())
    test = final.get("test") or {}
    if test:
        label = f"test@{final['best_step']}"
        print(f"  {label:>8} {test['rouge1']:8.2f} {test['rouge2']:8.2f} {test['rougeL']:8.2f} "
              f"{test['rougeLsum']:9.2f}   (the best checkpoint on validation rougeL, on test)")
    if finished_before:
        print(f"  trained earlier in {out} (this run found it finished: --output-dir NEW trains "
              f"the demo afresh); predictions in {out / 'eval'} and {out / 'test'}; the best "
              f"model in {out / run_files.FINAL}")
        return 0
    print(f"  wall time {minutes:.1f} min; predictions in {out / 'eval'} and {out / 'test'}; "
          f"the best model in {out / run_files.FINAL}")
    (out / "demo_summary.json").write_text(json.dumps({
        "rougeL_start": first["eval/rougeL"], "rougeL_end": last["eval/rougeL"],
        "minutes": minutes}))
    return 0
