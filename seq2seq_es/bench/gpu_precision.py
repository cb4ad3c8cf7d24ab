"""The GPU check of mixed precision: fp16 with dynamic loss scaling under ZeRO 0, 2
and 3, and bf16 with fp32 gradient accumulation under ZeRO 1-3, through the package's own engine.

    python3 -m seq2seq_es.bench.gpu_precision OUT_DIR              # on a GPU: BART-base shape
    python3 -m seq2seq_es.bench.gpu_precision OUT_DIR --cpu-smoke  # the same code path on the CPU

Each run builds a random-weight model of a real shape (seq2seq_es.bench.shapes: no hub, no
tokenizer), makes its DeepSpeed engine with `get_engine` (train.precision and dist.zero_stage as
given; the config is what a training run writes) and trains `--steps` optimizer steps with the
loop's `train_step` on a few fixed batches of random tokens, so the loss must fall (the batches
are learned by heart). Checked per run: every loss finite, the last quarter's mean below the first
quarter's, the fp16 loss scale reported at every step (`loss_scale`, `overflow_skipped`), not more
than a quarter of the steps skipped, and final/'s state dict in fp32 and in bf16 whatever the
training precision (`export_state_dict`). The environment section records the card, the versions
and what `train.precision auto` resolves to on it (the one line a run prints).

--cpu-smoke: tiny BART, short lengths, the fp16 runs only (or --runs). torch autocasts in float16
on CPUs, so ZeRO 0 runs as on a GPU; DeepSpeed's CPU accelerator reports fp16 unsupported where
the CPU lacks mkldnn fp16 and its fp16 mode (ZeRO 1-3) would refuse to start, so the smoke run
tells it fp16 works and its fp16 optimizer then runs on torch's fp16 CPU kernels: the plumbing,
not the numerics, of the GPU run. tests/test_precision.py runs it end to end.

Writes OUT_DIR/gpu_precision.json (everything) and OUT_DIR/gpu_precision.md (one table) after
every run; exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
import traceback
from pathlib import Path

GPU_RUNS = "fp16:0,fp16:2,fp16:3,bf16:1,bf16:2,bf16:3"
SMOKE_RUNS = "fp16:0,fp16:2,fp16:3"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny model on the CPU, fp16 runs only: the plumbing, end to end")
    parser.add_argument("--runs", default=None,
                        help=f"precision:stage,... (GPU default {GPU_RUNS}; smoke {SMOKE_RUNS})")
    parser.add_argument("--shape", default=None, choices=("barto", "t5s", "barto-tiny", "t5s-tiny"),
                        help="model shape (default barto on a GPU, barto-tiny with --cpu-smoke)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (40; 8)")
    parser.add_argument("--batch", type=int, default=None, help="micro-batch (8; 2)")
    parser.add_argument("--source-len", type=int, default=None, help="source tokens (256; 48)")
    parser.add_argument("--target-len", type=int, default=None, help="target tokens (64; 16)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (1e-4; 1e-3)")
    parser.add_argument("--distinct-batches", type=int, default=4,
                        help="how many fixed batches the steps cycle through")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    for key, gpu, cpu in (("runs", GPU_RUNS, SMOKE_RUNS), ("shape", "barto", "barto-tiny"),
                          ("steps", 40, 8), ("batch", 8, 2), ("source_len", 256, 48),
                          ("target_len", 64, 16), ("lr", 1e-4, 1e-3)):
        if getattr(args, key) is None:
            setattr(args, key, cpu if smoke else gpu)
    runs = []
    for item in args.runs.split(","):
        precision, _, stage = item.strip().partition(":")
        if precision not in ("fp16", "bf16", "fp32") or stage not in ("0", "1", "2", "3"):
            parser.error(f"--runs: expected precision:stage items such as fp16:2, got {item!r}")
        runs.append((precision, int(stage)))
    args.runs = runs
    return args


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def single_process_env():
    """RANK etc. for one process, then the package's own process-group set-up."""
    from ..engine.rendezvous import any_free_port

    port = any_free_port()
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    from seq2seq_es.engine import distributed as D

    env = D.read_env()
    D.init(env, "auto")
    return env


def environment(args) -> dict:
    import deepspeed
    import torch
    import transformers

    from seq2seq_es.config import RunConfig
    from seq2seq_es.engine.optim import native_bf16, precision_report

    cfg = RunConfig()
    cfg.model.name, cfg.train.precision = args.shape, "auto"
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "deepspeed": deepspeed.__version__, "native_bf16": native_bf16(),
            "auto": precision_report(cfg), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpu_smoke": args.cpu_smoke}


def make_batches(shape, args, count: int) -> list[dict]:
    """Fixed micro-batches of random tokens (seeded), unpadded, as the collator makes them."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    low, high = shape.first_plain_id, shape.vocab_size
    batches = []
    for _ in range(count):
        input_ids = torch.randint(low, high, (args.batch, args.source_len), generator=generator)
        labels = torch.randint(low, high, (args.batch, args.target_len), generator=generator)
        start = torch.full((args.batch, 1), shape.decoder_start_token_id, dtype=labels.dtype)
        batches.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                        "decoder_input_ids": torch.cat([start, labels[:, :-1]], dim=1),
                        "labels": labels})
    return batches


def one_run(precision: str, stage: int, args, env, batches: list[dict]) -> dict:
    import torch

    from seq2seq_es.bench.shapes import build_model, get_shape
    from seq2seq_es.config import RunConfig
    from seq2seq_es.engine.builders import get_engine
    from seq2seq_es.engine.export import export_state_dict
    from seq2seq_es.engine.step import train_step

    shape = get_shape(args.shape)
    cfg = RunConfig()
    cfg.model.name, cfg.data.task = args.shape, "mlsum"
    cfg.train.precision, cfg.dist.zero_stage = precision, stage
    cfg.train.batch_size, cfg.optim.lr, cfg.optim.weight_decay = args.batch, args.lr, 0.0
    cfg.optim.warmup_steps, cfg.optim.schedule = 0, "constant"
    model = build_model(shape, env.device, seed=0, dropout=0.0)
    engine, _, ds_config = get_engine(model, cfg, env, total_steps=args.steps)
    row = {"precision": precision, "zero_stage": stage, "shape": args.shape,
           "optimizer": type(engine.optimizer).__name__,
           "grad_accum_dtype": ds_config["data_types"]["grad_accum_dtype"],
           "module_dtype": str(next(engine.module.parameters()).dtype),
           "losses": [], "loss_scales": [], "overflow_skipped": [], "step_s": []}
    for step in range(args.steps):
        start = time.perf_counter()
        result = train_step(engine, [batches[step % len(batches)]], env, cfg, step)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        row["step_s"].append(time.perf_counter() - start)
        row["losses"].append(result["loss"])
        row["loss_scales"].append(result.get("loss_scale"))
        row["overflow_skipped"].append(result.get("overflow_skipped", 0))
    row["export_dtypes"] = {}
    for dtype in ("fp32", "bf16"):
        state = export_state_dict(engine, dtype, env.is_main)
        kinds = sorted({str(v.dtype) for v in state.values() if v.is_floating_point()})
        row["export_dtypes"][dtype] = kinds[0] if len(kinds) == 1 else kinds
        del state
    if hasattr(engine, "destroy"):
        engine.destroy()
    del engine, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def check(row: dict) -> list[str]:
    problems = []
    losses = row["losses"]
    if not all(loss == loss and abs(loss) != float("inf") for loss in losses):
        problems.append("a loss is not finite")
    quarter = max(1, len(losses) // 4)
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    if not last < first:
        problems.append(f"loss did not fall ({first:.4f} -> {last:.4f})")
    if row["precision"] == "fp16":
        if any(scale is None for scale in row["loss_scales"]):
            problems.append("loss scale not reported")
        if sum(row["overflow_skipped"]) > len(losses) // 4:
            problems.append(f"{sum(row['overflow_skipped'])} of {len(losses)} steps skipped")
    if row["export_dtypes"] != {"fp32": "torch.float32", "bf16": "torch.bfloat16"}:
        problems.append(f"export dtypes {row['export_dtypes']}")
    return problems


def write_report(out: Path, report: dict) -> None:
    (out / "gpu_precision.json").write_text(json.dumps(report, indent=1))
    env = report["environment"]
    lines = [f"# Mixed precision check ({env.get('device')}, torch {env.get('torch')}, deepspeed "
             f"{env.get('deepspeed')})", "", f"`train.precision auto` here: {env.get('auto')}", "",
             "| precision | zero | optimizer | grad accum | steps | first loss | last loss | "
             "loss scale first -> last (min) | skipped | median step s | ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["runs"]:
        if row["status"] != "ok":
            lines.append(f"| {row['precision']} | {row['zero_stage']} | - | - | - | - | - | - | - "
                         f"| - | {row['status']} |")
            continue
        scales = [s for s in row["loss_scales"] if s is not None]
        scale = (f"{scales[0]:g} -> {scales[-1]:g} ({min(scales):g})" if scales else "-")
        steps = sorted(row["step_s"])
        lines.append(
            f"| {row['precision']} | {row['zero_stage']} | {row['optimizer']} | "
            f"{row['grad_accum_dtype']} | {len(row['losses'])} | {row['losses'][0]:.4f} | "
            f"{row['losses'][-1]:.4f} | {scale} | {sum(row['overflow_skipped'])} | "
            f"{steps[len(steps) // 2]:.4f} | {'yes' if not row['problems'] else '; '.join(row['problems'])} |")
    (out / "gpu_precision.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    if args.cpu_smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        from deepspeed.accelerator import get_accelerator
        # See the module docstring: DeepSpeed's fp16 mode on the CPU, for the plumbing only.
        type(get_accelerator()).is_fp16_supported = lambda self: True
    elif not torch.cuda.is_available():
        say("no GPU: use --cpu-smoke")
        return 2
    env = single_process_env()
    from seq2seq_es.bench.shapes import get_shape

    report = {"environment": environment(args), "runs": [], "ok": False}
    say(report["environment"]["auto"])
    batches = make_batches(get_shape(args.shape), args, args.distinct_batches)
    for precision, stage in args.runs:
        say(f"{precision} ZeRO-{stage}: {args.steps} steps of {args.batch} x "
            f"{args.source_len}/{args.target_len} on {args.shape}")
        try:
            row = one_run(precision, stage, args, env, batches)
            row["status"], row["problems"] = "ok", check(row)
            say(f"  loss {row['losses'][0]:.4f} -> {row['losses'][-1]:.4f}, loss scale "
                f"{row['loss_scales'][-1]}, skipped {sum(row['overflow_skipped'])}, "
                f"problems: {row['problems'] or 'none'}")
        except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
            traceback.print_exc()
            row = {"precision": precision, "zero_stage": stage, "status": f"error: {exc!r}"[:300],
                   "problems": ["error"]}
        report["runs"].append(row)
        report["ok"] = all(r["status"] == "ok" and not r["problems"] for r in report["runs"])
        write_report(out, report)
    say(f"{'all checks passed' if report['ok'] else 'CHECKS FAILED'}: {out / 'gpu_precision.md'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    from ..process_exit import exit_with

    exit_with(main())
