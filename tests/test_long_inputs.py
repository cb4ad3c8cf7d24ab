"""LEDO on long documents: a two-process CPU run of ledo-tiny on XL-Sum rows stretched to 4096
source tokens trains, checkpoints, resumes and generates with global attention."""

from __future__ import annotations

import json
import re

import pytest

from engine_runs import run, step_losses
from fixtures import fixture_files

pytestmark = pytest.mark.slow


def stretch_xlsum(source: str, target: str, words: int) -> None:
    """XL-Sum rows whose text repeats the fixture's paragraphs up to `words` words."""
    with open(source, encoding="utf-8") as f, open(target, "w", encoding="utf-8") as out:
        for line in f:
            row = json.loads(line)
            paragraphs = row["text"].split("\n")
            text, i = [], 0
            while sum(len(p.split()) for p in text) < words:
                text.append(paragraphs[i % len(paragraphs)])
                i += 1
            row["text"] = "\n".join(text)
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


@pytest.mark.parametrize("attention", ["hf"])
def test_ledo_4096_tokens_trains_checkpoints_resumes_and_generates(tmp_path, attention):
    files = fixture_files("xlsum")
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    stretch_xlsum(files["train"], train, 3000)
    stretch_xlsum(files["validation"], validation, 3000)
    out = tmp_path / "ledo"
    args = ["--task", "xlsum", "--model", "ledo-tiny", "--train.output_dir", str(out),
            "--data.train_file", str(train), "--data.validation_file", str(validation),
            "--data.max_source_length", "4096", "--data.max_target_length", "96",
            "--data.max_eval_samples", "2", "--data.global_attention", "sentences",
            "--model.attention", attention, "--model.gradient_checkpointing", "true",
            "--train.batch_size", "1", "--train.precision", "fp32", "--train.log_every", "1",
            "--train.progress_bar", "false", "--train.resume", "auto", "--dist.zero_stage", "2",
            "--gen.num_beams", "2", "--gen.max_new_tokens", "8", "--gen.min_new_tokens", "1",
            "--optim.lr", "1e-3", "--optim.warmup_steps", "0"]
    first = run("torchrun", 2, args + ["--train.max_steps", "2"])
    assert "sources truncated at 4096" in first.stdout
    report = next(line for line in first.stdout.splitlines()
                  if line.startswith("[train]") and "sources truncated" in line)
    source_median = int(re.search(r"sources truncated at 4096: \d+ \([\d.]+%\), median (\d+)",
                                  report).group(1))
    assert source_median > 4096  # the sources really are longer than the limit
    assert (out / "checkpoints" / "step_00000002").is_dir()
    second = run("torchrun", 2, args + ["--train.max_steps", "4"])
    assert "resumed from" in second.stdout and "step 2" in second.stdout
    assert sorted(step_losses(out)) == [1, 2, 3, 4]
    predictions = [json.loads(line) for line in
                   (out / "eval" / "step_00000004" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 and all(p["prediction"] for p in predictions)
