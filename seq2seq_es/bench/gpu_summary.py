"""Issue 12's targets from one `bash benchmarks/gpu_all.sh OUT_DIR` run, as markdown for BENCHMARKS.md.

    python3 -m seq2seq_es.bench.gpu_summary OUT_DIR > OUT_DIR/summary.md

Reads what the sections left (environment.txt, flex_ablation.txt, led/gpu_led.json,
seq2seq/gpu_seq2seq.json, profile.txt, gpu_tests.txt); a section that did not run or did not finish is named as
such, never left out, so the summary of a cut-short run still says which targets were not measured.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _text(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def _json(path: Path):
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:  # a section killed while writing: say so below
        return None


def led_lines(out_dir: Path) -> list[str]:
    from .gpu_led import card_name, summarise_targets

    report = _json(out_dir / "led" / "gpu_led.json")
    if report is None:
        return ["- LEDO 16K: not measured (no led/gpu_led.json)"]
    card = card_name(report.get("environment"))
    lines = [summarise_targets(report.get("bench_rows") or [], card)]
    for name, check in (report.get("checks") or {}).items():
        lines.append(f"- accuracy {name}: {'PASS' if check.get('ok') else 'FAIL'}")
    for name, status in (report.get("sections") or {}).items():
        if status != "ok":
            lines.append(f"- section {name}: {status}")
    return lines


FLEX_TARGET = 2.0   # issue 12.4: LED's flex forward within 2x of a plain band kernel per layer


def flex_lines(ablation: str | None) -> list[str]:
    """Item 4's verdict from the ablation's output: E (the mask LED batches get) over A (the
    plain band), forward, static and dynamic shapes."""
    if ablation is None:
        return ["- LED flex vs plain band: not measured (flex_ablation.txt missing)"]
    forward = {}
    for line in ablation.splitlines():
        parts = line.split()
        if len(parts) > 3 and "forward" in parts:
            at = parts.index("forward")
            try:
                forward[parts[0]] = float(parts[at + 1])
            except (ValueError, IndexError):  # "error ..." lines: not measured
                pass
    lines = []
    for mask, band, label in (("E", "A", "static shapes"), ("E-dyn", "A-dyn", "dynamic shapes")):
        if mask in forward and band in forward and forward[band] > 0:
            ratio = forward[mask] / forward[band]
            verdict = "met" if ratio <= FLEX_TARGET else "NOT met"
            lines.append(f"- LED flex forward, {label}: {forward[mask]:.3f} vs {forward[band]:.3f} "
                         f"ms, {ratio:.2f}x the plain band (target <= {FLEX_TARGET}x: {verdict})")
        else:
            lines.append(f"- LED flex forward, {label}: not measured ({mask} and {band} rows)")
    return lines


def seq2seq_lines(out_dir: Path) -> list[str]:
    from .gpu_seq2seq import SECTIONS, target_lines

    report = _json(out_dir / "seq2seq" / "gpu_seq2seq.json")
    if report is None:
        return ["- BART-base / T5-base vs the Seq2SeqTrainer route: not measured (no seq2seq/gpu_seq2seq.json)"]
    rows = [row for section in report["sections"].values() for row in section["rows"]]
    lines = target_lines(rows, report["tiny"])
    for name in SECTIONS:
        status = report["sections"][name]["status"] if name in report["sections"] else "did not run"
        if status != "ok":
            lines.append(f"- section {name}: {status}")
    return lines


CALL_TARGET_S = 480   # issue 12.5: every target's row in one call under 8 minutes


def call_lines(call_seconds: int | None, target_lines: list[str]) -> list[str]:
    """Item 5's verdict: how long the call took, and which target rows it left unmeasured."""
    encoder_only = any("checkpointing encoder only: flex" in line for line in target_lines)
    unmeasured = [line.lstrip("- ") for line in target_lines
                  if ("not measured" in line or "missing" in line)
                  # the all-layer row is a comparison once the encoder-only row meets the target
                  and not (encoder_only and line.startswith("- checkpointing on:"))]
    if call_seconds is None:
        lines = ["- the call's duration: not given (gpu_all.sh passes CALL_SECONDS)"]
    else:
        verdict = "met" if call_seconds < CALL_TARGET_S else "NOT met"
        lines = [f"- the call took {call_seconds} s (target < {CALL_TARGET_S} s: {verdict})"]
    lines.append(f"- target rows not measured: {len(unmeasured)}"
                 + ("".join(f"\n  - {line}" for line in unmeasured)))
    return lines


def summary(out_dir: Path, call_seconds: int | None = None) -> str:
    parts = ["# Issue 12 targets from one `bash benchmarks/gpu_all.sh` run", ""]
    environment = _text(out_dir / "environment.txt")
    parts += ["```", environment or "environment.txt missing", "```", ""]
    seq2seq, led = seq2seq_lines(out_dir), led_lines(out_dir)
    ablation = _text(out_dir / "flex_ablation.txt")
    flex = flex_lines(ablation)
    targets = [line for block in seq2seq + led + flex for line in block.splitlines()
               if not line.startswith(("- section ", "- accuracy "))]
    parts += ["## One call, every row (item 5)", ""] + call_lines(call_seconds, targets) + [""]
    parts += ["## Seq2SeqTrainer route vs the loop (real tokens/s)", ""] + seq2seq + [""]
    parts += ["## LEDO-base 16K training step, flex vs transformers' LED", ""] + led + [""]
    parts += ["## LED flex ablation (target: flex within 2x of the plain band kernel per layer)", "",
              *flex, "", "```", ablation or "flex_ablation.txt missing", "```", ""]
    profile = _text(out_dir / "profile.txt")
    if profile is not None:
        parts += ["## Rows under torch.profiler (tables in profile/)", "", "```", profile,
                  "```", ""]
    tests = _text(out_dir / "gpu_tests.txt")
    if tests is not None:
        parts += ["## pytest -m gpu", "", "```", "\n".join(tests.splitlines()[-3:]), "```", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python3 -m seq2seq_es.bench.gpu_summary OUT_DIR", file=sys.stderr)
        return 2
    seconds = os.environ.get("CALL_SECONDS")
    print(summary(Path(argv[0]), int(seconds) if seconds and seconds.isdigit() else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
