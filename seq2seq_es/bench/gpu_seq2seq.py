"""One prepared GPU run of `seq2seq-es bench`: BARTO and T5S shapes, Trainer route vs loop.

    python3 -m seq2seq_es.bench.gpu_seq2seq OUT_DIR                 # on a GPU, 255 s
    python3 -m seq2seq_es.bench.gpu_seq2seq OUT_DIR --tiny          # same sections, tiny, on the CPU
    python3 -m seq2seq_es.bench.gpu_seq2seq OUT_DIR --tiny --skip-compile   # plumbing only (the test)

Sections, each in its own child process (a crashed CUDA context or a hang loses only that section;
on a timeout its process group is killed) with a timeout taken from the overall budget:
1. environment: card, driver, versions, date (nvidia-smi and package metadata; no CUDA context here);
2. barto: BART-base shape, mlsum-like lengths and fixed 512x128, batch 32: hf_trainer and the
   uncompiled fused loop, bucketed batches on mlsum-like lengths (seconds each), on BART's
   model.attention sdpa and, for the bucketed batches, on transformers' attention too;
3. t5s: the same rows (but the last) on the T5 v1.1-base shape (T5 attention on SDPA in the
   fused variants);
4. barto_compiled, t5s_compiled: the compiled variants, cheapest compilation first (the fixed
   shape through the engine's model.compile as `train` runs it; bucketed batches through layers
   compiled with dynamic lengths; BART's lean cross-entropy; the engine's static compilation of
   every bucket shape last), after both models' uncompiled rows, so that compilation cannot
   take the time of a target's first measurement;
5. extras, if time is left (`--sections`): the rows of the 2026-12-04 runs that no longer lead to
   a target: random and token-budget batches, the unfused step, cuDNN's attention, the other
   compilations, T5 compiled with transformers' attention and with the lean loss; packed rows.
Compiled rows first run two untimed priming steps (a padded and an unpadded batch) so that every
graph is compiled before the warm-up; `graphs_compiled_while_timed` in the JSON says 0 if so.
Each child appends every row to OUT_DIR/parts/<section>.jsonl as soon as it is measured, so a
section cut by its timeout keeps the rows it finished. After each row that compiled something it
saves torch.compile's cache artifacts to OUT_DIR/compile_cache/<section>.bin; a later run on the
same software and card can start from them with --compile-cache-in FOLDER (compilation is what
decides whether the compiled rows fit the budget). OUT_DIR/gpu_seq2seq.json (everything) and
OUT_DIR/gpu_seq2seq.md (tables and the speed-up targets) are rewritten after every section.
Progress lines carry the wall-clock time and the seconds since the start.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

MODULE = "seq2seq_es.bench.gpu_seq2seq"  # run as `python3 -m`, also for the section workers
START = time.time()
DEFAULT_BUDGET_S = 255.0
TINY_BUDGET_S = 1800.0
# Speed-up targets: real tokens/s of the best loop row over the Seq2SeqTrainer row's.
TARGETS = {("barto", "mlsum"): 2.5, ("t5s", "mlsum"): 3.0, ("barto", "fixed"): 1.8}
# (dist, impl) in the order they run, except that the Trainer rows always go first (see
# bench.seq2seq._row_order). The H200 run of 2026-12-04 16:42 found cuDNN's attention (torch
# 2.11's first choice on Hopper) behind the slow token-budget and bucketed steps: 0.47 s and
# 0.34 s a step with it, 0.11 s and 0.10 s without; model.cudnn_attention is off by default since.
# Each model's uncompiled rows (seconds each) are a section of their own, run before any
# compiled section: in that run the compiled rows' compilation used up BART's section and T5's
# never started, so no T5 row of the targets was measured.
# BART's fused rows run model.attention sdpa (kernels/bart_attention.py: flash on padded
# batches), never measured on a GPU: the bucketed row on transformers' attention stays beside it.
BARTO_ROWS = (("mlsum", "hf_trainer"), ("fixed", "hf_trainer"),
              ("mlsum", "loop_bucket_fused"), ("fixed", "loop_fused"),
              ("mlsum", "loop_bucket_fused_hfattn"))
T5S_ROWS = BARTO_ROWS[:4]
# Compiled rows, cheapest compilation first: the fixed shape through the engine's model.compile
# (what `train --model.compile true` runs: one shape, one compilation), then the bucketed batches
# through layers compiled with dynamic lengths (one set of graphs for every bucket), the fixed
# shape replayed as CUDA graphs (model.compile_mode reduce-overhead: BART-base's step is short
# enough for the host's kernel launches to matter), and the engine's static compilation of each
# bucket shape (a compilation per shape: last, cut first).
BARTO_COMPILED_ROWS = (("fixed", "loop_engine"), ("mlsum", "loop_bucket_compile"),
                       ("fixed", "loop_graphs"), ("fixed", "loop_compile_lean"),
                       ("mlsum", "loop_budget_compile_lean"), ("mlsum", "loop_bucket_engine"))
# T5's lean loss calls the stacks with other arguments, which costs more compiled graphs: extras.
T5S_COMPILED_ROWS = (("fixed", "loop_engine"), ("mlsum", "loop_bucket_compile"),
                     ("mlsum", "loop_bucket_engine"))
# Rows measured in the H200 runs of 2026-12-04 (BENCHMARKS.md) that no longer lead to a target:
# the other batchings, the unfused step, cuDNN's attention, the other compilations; and packed
# rows, never measured on a GPU (mlsum-like sources of ~900 tokens fill a 1024-token row alone:
# 15% padding against bucketed batches' 4%, so not a target's row).
EXTRA_ROWS = (("mlsum", "loop_pack_fused"), ("mlsum", "loop_pack_engine"),
              ("mlsum", "loop_fused"), ("mlsum", "loop_budget_fused"), ("fixed", "loop_compile"),
              ("mlsum", "loop_bucket_static"), ("mlsum", "loop_budget_compile"),
              ("mlsum", "loop_budget"), ("mlsum", "loop_bucket"), ("mlsum", "loop"),
              ("fixed", "loop"), ("mlsum", "loop_bucket_fused_cudnn"),
              ("fixed", "loop_fused_cudnn"))
# transformers 5.24's own T5 attention measured as fast as ours uncompiled (BENCHMARKS.md): the
# compiled rows with it, for comparison.
T5S_EXTRA_ROWS = EXTRA_ROWS + (("mlsum", "loop_budget_compile_hfattn"),
                               ("mlsum", "loop_budget_compile_lean"))
# name: (model, tiny model, rows, share of the budget at most, least seconds worth starting).
# The uncompiled sections took 44 s (BART-base) and 51 s (T5-base) for six rows each on the
# H200, process start included; four rows each now. What a section leaves goes to the later ones
# (the last compiled section takes all that is left).
SECTIONS = {
    "barto": ("barto", "barto-tiny", BARTO_ROWS, 0.18, 30),
    "t5s": ("t5s", "t5s-tiny", T5S_ROWS, 0.19, 30),
    "barto_compiled": ("barto", "barto-tiny", BARTO_COMPILED_ROWS, 0.3, 40),
    "t5s_compiled": ("t5s", "t5s-tiny", T5S_COMPILED_ROWS, 1.0, 50),
    "extras_barto": ("barto", "barto-tiny", EXTRA_ROWS, 0.5, 30),
    "extras_t5s": ("t5s", "t5s-tiny", T5S_EXTRA_ROWS, 1.0, 30),
}


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp} +{time.time() - START:6.1f}s] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, nargs="?")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke test)")
    parser.add_argument("--skip-compile", action="store_true",
                        help="leave out the compiled rows (a quick plumbing check)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"seconds for all sections (default {DEFAULT_BUDGET_S:.0f}; "
                        f"{TINY_BUDGET_S:.0f} with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per row")
    parser.add_argument("--batch", type=int, default=None, help="examples per fixed-size batch")
    parser.add_argument("--compile-cache-in", type=Path, default=None,
                        help="folder holding <section>.bin compile caches that an earlier run "
                        "wrote to OUT_DIR/compile_cache/ (same torch, triton and card)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of " + ", ".join(SECTIONS))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and args.out_dir is None:
        parser.error("OUT_DIR is required")
    return args


# ---------------------------------------------------------------------------------------------
# Child process: one model's rows


def load_compile_cache(path: Path) -> None:
    """Preload torch.compile artifacts saved by an earlier run (same torch, triton and card)."""
    import torch

    if path.is_file():
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
        log(f"loaded compile cache {path} ({path.stat().st_size / 2**20:.1f} MiB): {info}")


def save_compile_cache(path: Path) -> None:
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if saved is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_bytes(saved[0])
        path.with_suffix(".tmp").replace(path)
        log(f"saved compile cache {path} ({len(saved[0]) / 2**20:.1f} MiB)")


def worker(spec: dict) -> int:
    from seq2seq_es.bench.seq2seq import BenchOptions, _quiet_libraries, run_bench

    _quiet_libraries()
    cache_out = Path(spec["cache_out"])
    if spec.get("cache_in"):
        try:
            load_compile_cache(Path(spec["cache_in"]))
        except Exception as exc:  # a stale or foreign cache only costs the compilation
            log(f"compile cache {spec['cache_in']} not used: {type(exc).__name__}: {exc}")
    pairs = tuple((dist, impl) for dist, impl in spec["pairs"])
    options = BenchOptions(model=spec["model"], device=spec["device"],
                           dists=tuple(dict.fromkeys(d for d, _ in pairs)), impls=None,
                           steps=spec["steps"], warmup=spec["warmup"], batch=spec["batch"],
                           dropout=spec["dropout"], pairs=pairs)
    out = Path(spec["jsonl"])

    def on_row(row: dict) -> None:
        with out.open("a", encoding="utf-8") as file:
            file.write(json.dumps(row, default=str) + "\n")
        if row.get("compiled_graphs"):
            try:
                save_compile_cache(cache_out)
            except Exception as exc:
                log(f"compile cache not saved: {type(exc).__name__}: {exc}")

    rows = run_bench(options, on_row=on_row, log=log)
    return 0 if all(row["error"] is None for row in rows) else 1


# ---------------------------------------------------------------------------------------------
# Parent: environment, sections, report


def environment(tiny: bool) -> dict:
    info: dict = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "python": platform.python_version(), "host": platform.node()}
    for package in ("torch", "transformers", "deepspeed", "accelerate", "triton"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    if not tiny:
        try:
            query = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True)
            first_card = query.stdout.splitlines()[0]
            name, memory, driver = [part.strip() for part in first_card.split(",")]
            info.update(card=name, card_memory=memory, driver=driver)
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
            info["card"] = f"unknown ({type(exc).__name__}: {exc})"
    return info


def section_pairs(rows: tuple[tuple[str, str], ...], skip_compile: bool) -> list[list[str]]:
    return [[dist, impl] for dist, impl in rows
            if not (skip_compile and any(t in impl for t in ("compile", "static", "engine",
                                                                 "graphs")))]


def run_section(name: str, args: argparse.Namespace, timeout_s: float) -> dict:
    model, tiny_model, rows, _, _ = SECTIONS[name]
    parts = args.out_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    jsonl = parts / f"{name}.jsonl"
    jsonl.unlink(missing_ok=True)
    spec = {"model": tiny_model if args.tiny else model, "device": "cpu" if args.tiny else "cuda",
            "pairs": section_pairs(rows, args.skip_compile),
            "steps": args.steps or (2 if args.tiny else 8),
            "warmup": args.warmup or (1 if args.tiny else 2),
            "batch": args.batch or (4 if args.tiny else 32),
            "dropout": 0.0 if args.tiny else None, "jsonl": str(jsonl),
            "cache_out": str(args.out_dir / "compile_cache" / f"{name}.bin"),
            "cache_in": str(args.compile_cache_in / f"{name}.bin") if args.compile_cache_in
            else None}
    env = dict(os.environ)
    if args.tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, "-m", MODULE, "--worker", json.dumps(spec)]
    started = time.time()
    status = "ok"
    # Its own session, so that a timeout also ends the compile workers it started.
    child = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        code = child.wait(timeout=timeout_s)
        if code != 0:
            status = f"exit code {code}"
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        status = f"timed out after {timeout_s:.0f} s"
    measured = [json.loads(line) for line in jsonl.read_text().splitlines()] \
        if jsonl.exists() else []
    return {"status": status, "wall_s": round(time.time() - started, 1), "spec": spec,
            "rows": measured}


def best_speedups(rows: list[dict]) -> dict[tuple[str, str], tuple[float, str]]:
    """(model, dist) -> (best loop row's real tokens/s over hf_trainer's, that row's impl)."""
    reference = {(r["model"], r["dist"]): r["real_tokens_per_s"] for r in rows
                 if r["impl"] == "hf_trainer" and r.get("real_tokens_per_s")}
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for r in rows:
        key = (r["model"], r["dist"])
        if r["impl"] == "hf_trainer" or not r.get("real_tokens_per_s") or key not in reference:
            continue
        ratio = r["real_tokens_per_s"] / reference[key]
        if key not in best or ratio > best[key][0]:
            best[key] = (ratio, r["impl"])
    return best


def markdown(report: dict) -> str:
    from seq2seq_es.bench.seq2seq import add_speedups, format_table

    env = report["environment"]
    rows = [r for section in report["sections"].values() for r in section["rows"]]
    add_speedups(rows)
    lines = ["# seq2seq-es bench: Seq2SeqTrainer route vs this package's loop", "",
             f"- card: {env.get('card', 'cpu')} ({env.get('card_memory', '-')}, driver "
             f"{env.get('driver', '-')}); date {env['date_utc']}",
             f"- torch {env['torch']}, transformers {env['transformers']}, deepspeed "
             f"{env['deepspeed']}, accelerate {env['accelerate']}, triton {env['triton']}",
             "- " + ("TINY models on the CPU (smoke test; numbers mean nothing)" if report["tiny"]
                     else "random-weight models of the real shapes") + "; "
             "same synthetic data for every row of a (model, dist); MFU against a matmul "
             "measured in the same process", ""]
    for name, section in report["sections"].items():
        lines.append(f"- section {name}: {section['status']}, {section['wall_s']} s, "
                     f"{len(section['rows'])} rows")
    lines.append("")
    if rows:
        ordered = sorted(rows, key=lambda r: (r["model"], r["dist"] != "mlsum"))
        lines += [format_table(ordered), ""]
    compiled = [r for r in rows if r.get("compile")]
    if compiled:
        lines.append("## Compilation (priming steps before the warm-up)")
        for r in compiled:
            lines.append(f"- {r['model']} {r['dist']} {r['impl']}: {r['compile']}, "
                         f"{r.get('compiled_graphs')} graphs compiled in "
                         f"{r.get('priming_s', 0):.1f} s of priming, "
                         f"{r.get('graphs_compiled_while_timed')} while timed, row "
                         f"{r.get('row_wall_s', 0):.0f} s")
        lines.append("")
    warmed = [r for r in rows if r.get("priming_steps") and not r.get("compile")]
    if warmed:
        lines.append("## Bucket shapes run once, untimed, before the warm-up (uncompiled rows)")
        lines += [f"- {r['model']} {r['dist']} {r['impl']}: {r['priming_steps']} shapes in "
                  f"{r.get('priming_s', 0):.1f} s" for r in warmed]
        lines.append("")
    lines.append("## Targets (best loop row's real tokens/s over the Seq2SeqTrainer row's)")
    lines += target_lines(rows, report["tiny"])
    return "\n".join(lines) + "\n"


def target_lines(rows: list[dict], tiny: bool) -> list[str]:
    """One line per speed-up target: the best loop row's ratio, and met or the gap."""
    best = best_speedups(rows)
    lines = []
    for (model, dist), target in TARGETS.items():
        key = (model + "-tiny" if tiny else model, dist)
        if key in best:
            ratio, impl = best[key]
            verdict = "PASS" if ratio >= target else f"FAIL ({target / ratio:.2f}x short of it)"
            lines.append(f"- {key[0]} {dist}: {ratio:.2f}x ({impl}) vs target {target}x: {verdict}")
        else:
            lines.append(f"- {key[0]} {dist}: not measured (target {target}x)")
    return lines


def write_report(report: dict, out_dir: Path) -> None:
    for name, text in (("gpu_seq2seq.json", json.dumps(report, indent=1, default=str)),
                       ("gpu_seq2seq.md", markdown(report))):
        temporary = out_dir / (name + ".tmp")
        temporary.write_text(text)
        temporary.replace(out_dir / name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(json.loads(args.worker))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (TINY_BUDGET_S if args.tiny else DEFAULT_BUDGET_S)
    deadline = START + budget
    report: dict = {"tiny": args.tiny, "budget_s": budget, "sections": {}}
    try:
        report["environment"] = environment(args.tiny)
    except Exception as exc:  # the report must still be written
        report["environment"] = {"error": f"{type(exc).__name__}: {exc}", "date_utc": "-",
                                 "torch": "-", "transformers": "-", "deepspeed": "-",
                                 "accelerate": "-", "triton": "-"}
    log("environment: " + json.dumps(report["environment"]))
    write_report(report, args.out_dir)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    for name in wanted:
        if name not in SECTIONS:
            log(f"unknown section {name}; known: {', '.join(SECTIONS)}")
            continue
        left = deadline - time.time()
        share, least = SECTIONS[name][3], SECTIONS[name][4]
        timeout = min(left, max(least, share * budget)) if not args.tiny else left
        if left < least:
            log(f"section {name}: skipped ({left:.0f} s left, needs {least} s)")
            report["sections"][name] = {"status": "skipped", "wall_s": 0, "rows": []}
            continue
        log(f"section {name}: start (timeout {timeout:.0f} s)")
        try:
            report["sections"][name] = run_section(name, args, timeout)
        except Exception as exc:
            traceback.print_exc()
            report["sections"][name] = {"status": f"failed: {type(exc).__name__}: {exc}",
                                        "wall_s": 0, "rows": []}
        section = report["sections"][name]
        log(f"section {name}: {section['status']}, {len(section['rows'])} rows, "
            f"{section['wall_s']} s")
        write_report(report, args.out_dir)
    log(f"done; report in {args.out_dir / 'gpu_seq2seq.md'}")
    print(markdown(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
