"""The embedded demo learns: its final ROUGE-L is far above its step-0 ROUGE-L."""

import json
import subprocess
import sys

import pytest

from engine_runs import REPO, _env

pytestmark = pytest.mark.slow


def test_demo_learns_to_summarise(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "seq2seq_es", "demo", "--output-dir", str(out),
                           "--train.progress_bar", "false"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["rougeL_end"] > summary["rougeL_start"] + 40
    assert "step 0" in proc.stdout and "rougeL" in proc.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/rougeL" in r] == [0, 600]
    assert (out / "final" / "model.safetensors").is_file()
