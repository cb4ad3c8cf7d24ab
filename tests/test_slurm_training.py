"""Real training through `seq2seq-es slurm submit` on the local two-node cluster (tiny BART, gloo,
ZeRO-2): the same per-step losses and final weights as torchrun with two processes on one node,
also when the job is pre-empted mid-training, requeued and resumed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest_slurm import slurm_cluster, wait_finished, wait_until  # noqa: F401  (fixture)
from engine_runs import base_args, demo_files, final_weights, max_weight_diff, run, step_losses
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.sweep import load_manifest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 40
MODEL = "barto-tiny"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("slurm-training")


@pytest.fixture(scope="module")
def files(workdir):
    return demo_files(workdir / "data", train_size=48)


def train_overrides(files, out: Path) -> list[str]:
    args = base_args(files, out, model=MODEL, steps=STEPS, batch=2,
                     extra=["--dist.zero_stage", "2", "--model.dropout", "0.0"])
    # `slurm submit` adds --task, --model and --train.output_dir itself
    assert args[:6] == ["--task", "mlsum", "--model", MODEL, "--train.output_dir", str(out)]
    return args[6:]


@pytest.fixture(scope="module")
def torchrun_run(workdir, files):
    out = workdir / "torchrun"
    run("torchrun", 2, ["--task", "mlsum", "--model", MODEL, "--train.output_dir", str(out),
                        *train_overrides(files, out)])
    return out


def submit_training(files, out: Path) -> str:
    assert slurm_main(["submit", "--task", "mlsum", "--model", MODEL, "--run-dir", str(out),
                       "--nodes", "2", "--time", "15", "--", *train_overrides(files, out)]) == 0
    return load_manifest(out).runs[0].job_id


def assert_same_training(out: Path, reference: Path) -> None:
    losses, expected = step_losses(out), step_losses(reference)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert sorted(expected) == list(range(1, STEPS + 1))
    for step in expected:
        assert abs(losses[step] - expected[step]) <= 1e-6 * max(1.0, abs(expected[step])), step
    assert max_weight_diff(final_weights(out), final_weights(reference)) <= 1e-6


def test_two_node_job_trains_like_torchrun(slurm_cluster, workdir, files, torchrun_run):  # noqa: F811
    out = workdir / "slurm"
    job_id = submit_training(files, out)
    assert wait_finished(job_id, timeout_s=600)["JobState"] == "COMPLETED"
    assert_same_training(out, torchrun_run)


def test_preempted_training_resumes_exactly(slurm_cluster, workdir, files, torchrun_run):  # noqa: F811
    out = workdir / "slurm-preempted"
    job_id = submit_training(files, out)
    wait_until(lambda: len(step_losses(out)) >= 2, 600, "two training steps", interval_s=0.05)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=60)
    fields = wait_finished(job_id, timeout_s=600)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1"
    events = [json.loads(line)["event"]
              for line in (out / "slurm_events.jsonl").read_text().splitlines()]
    assert events == ["start", "requeued", "start", "finished"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == list(range(1, STEPS + 1))  # no step lost or repeated across the requeue
    assert_same_training(out, torchrun_run)
