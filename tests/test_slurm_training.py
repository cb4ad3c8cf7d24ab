"""Real training through `seq2seq-es slurm submit` on the local two-node cluster (tiny BART, gloo,
ZeRO-2): the same per-step losses and final weights as torchrun with two processes on one node,
also when the job is pre-empted mid-training, requeued and resumed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest_slurm import slurm_cluster, wait_finished, wait_until  # noqa: F401  (fixture)
from engine_runs import (base_args, demo_files, final_weights, max_weight_diff, run, start,
                         step_losses)
from fixtures import fixture_files
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.monitor import sweep_status
from seq2seq_es.slurm.results_table import run_result
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


def train_overrides(files, out: Path, steps: int = STEPS, batch: int = 2) -> list[str]:
    args = base_args(files, out, model=MODEL, steps=steps, batch=batch,
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


def assert_same_training(out: Path, reference: Path, steps: int = STEPS,
                         weights_within: float = 1e-6) -> None:
    losses, expected = step_losses(out), step_losses(reference)
    assert sorted(losses) == list(range(1, steps + 1))
    assert sorted(expected) == list(range(1, steps + 1))
    for step in expected:
        assert abs(losses[step] - expected[step]) <= 1e-6 * max(1.0, abs(expected[step])), step
    assert max_weight_diff(final_weights(out), final_weights(reference)) <= weights_within


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
    # The stop message says what happens next here: not "resume with --train.resume auto".
    logs = "".join(path.read_text() for path in (out / "slurm").glob("*_log.*"))
    assert "SIGUSR2 received: saved a checkpoint at step" in logs
    assert "the job requeues itself and resumes from it" in logs


def test_cancelled_training_resumes_on_one_node_exactly(slurm_cluster, workdir, files,  # noqa: F811
                                                       torchrun_run, capsys):
    # Two nodes' run cancelled after a checkpoint, resumed by `slurm resume --nodes 1`: the job
    # gets train.grad_accum 2 (the same 4 examples a step), its ZeRO-2 optimizer states split
    # for one rank, and the run ends as the uninterrupted two-process run does.
    out = workdir / "slurm-fewer-nodes"
    job_id = submit_training(files, out)
    wait_until(lambda: len(step_losses(out)) >= 2, 600, "two training steps", interval_s=0.05)
    subprocess.run(["scancel", job_id], check=True, timeout=60)
    assert wait_finished(job_id, timeout_s=600)["JobState"] == "CANCELLED"
    saved = sorted((out / "checkpoints").glob("step_*"))
    assert saved and len(step_losses(out)) < STEPS
    capsys.readouterr()
    assert slurm_main(["resume", str(out), "--nodes", "1", "--yes"]) == 0
    said = capsys.readouterr().out
    # a real resume's plan has no '# ' (a dry run's has), as sweep's; it ends as sweep's does
    assert "\nranks: 2 -> 1 (1 node(s) x 1 task(s))\n" in said and "# " not in said
    assert "\n    train.grad_accum 1 -> 2\n" in said
    second = load_manifest(out).runs[0]
    assert f"\nsubmitted 1 run(s) as job {second.job_id}\n" in said
    accum = second.argv.index("--train.grad_accum")
    assert second.job_id != job_id and second.argv[accum + 1] == "2"
    assert second.argv.count("--train.grad_accum") == 1
    assert wait_finished(second.job_id, timeout_s=600)["JobState"] == "COMPLETED"
    logs = "".join(path.read_text() for path in (out / "slurm").glob(f"{second.job_id}_*_log.*"))
    assert f"{saved[-1].name} of 2 rank(s) resumed on 1: the same examples per step" in logs
    # Every step's loss as uninterrupted (1e-6); the weights after some 35 steps summed in
    # another order (one rank's accumulation, not two ranks' all-reduce) differ by 2.6e-6, as
    # much as an uninterrupted one-rank run with grad_accum 2 differs from the two-rank one.
    assert_same_training(out, torchrun_run, weights_within=1e-5)


# Long enough (about 45 s of steps here, 50 ms each) that SLURM's 30 s time-limit tick falls
# inside training after the limit is cut.
TIME_LIMIT_STEPS = 900


def test_training_that_reaches_its_time_limit_requeues_and_resumes_exactly(
        slurm_cluster, workdir, files):  # noqa: F811
    def overrides(out: Path) -> list[str]:
        return train_overrides(files, out, steps=TIME_LIMIT_STEPS, batch=4)

    reference = workdir / "uninterrupted-one-process"
    uninterrupted = start("none", 1, ["--task", "mlsum", "--model", MODEL, "--train.output_dir",
                                      str(reference), *overrides(reference)])
    out = workdir / "slurm-time-limit"
    # The learning rate comes from a --config file, which is edited once the job is queued:
    # the restart must train with the file as submitted (the exact comparison below fails if
    # it reads the edited one).
    job_args = overrides(out)
    lr_at = job_args.index("--optim.lr")
    run_yaml = workdir / "time-limit-run.yaml"
    run_yaml.write_text(f"optim:\n  lr: {job_args[lr_at + 1]}\n")
    del job_args[lr_at:lr_at + 2]
    # submitted with room to spare, and SLURM's warning signal 90 s before the limit
    assert slurm_main(["submit", "--task", "mlsum", "--model", MODEL, "--run-dir", str(out),
                       "--time", "15", "--signal-delay-s", "90", "--max-requeues", "2", "--",
                       *job_args, "--config", str(run_yaml)]) == 0
    submitted = run_yaml.read_text()
    run_yaml.write_text("optim:\n  lr: 0.05\n")
    assert (out / "submitted_config.yaml").read_text() == submitted
    job_id = load_manifest(out).runs[0].job_id
    wait_until(lambda: len(step_losses(out)) >= 1, 600, "the first training step", interval_s=0.1)
    # The job now reaches its time limit mid-training: a 1-minute limit leaves under 90 s, so
    # slurmctld sends SIGUSR2 at its next time-limit check (within 30 s), as at a real limit.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=1"], check=True,
                   capture_output=True, timeout=60)
    events_file = out / "slurm_events.jsonl"
    wait_until(lambda: '"requeued"' in events_file.read_text(), 300,
               "the job to save and requeue itself", interval_s=0.1)
    # The restart gets its limit back (rank 0 records the requeue before asking SLURM for it);
    # with the 1-minute limit it would be signalled again as soon as it starts.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=15"], check=True,
                   capture_output=True, timeout=60)
    fields = wait_finished(job_id, timeout_s=600)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1"
    events = [json.loads(line) for line in (out / "slurm_events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "requeued", "start", "finished"]
    assert events[1]["reason"] == "pre-empted; checkpoint saved"  # saved inside the loop
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == list(range(1, TIME_LIMIT_STEPS + 1))  # no step lost or repeated
    assert uninterrupted.wait(timeout=600) == 0, uninterrupted.stdout.read()[-4000:]
    assert_same_training(out, reference, TIME_LIMIT_STEPS)


def test_sweep_of_three_pairs_trains_every_run_and_collect_prints_the_table(
        slurm_cluster, tmp_path, capsys):  # noqa: F811
    data_root = tmp_path / "data"  # the fixtures, laid out as --data-root expects: <task>/<split>
    for task in ("mlsum", "sqac"):
        shutil.copytree(Path(fixture_files(task)["train"]).parent, data_root / task)
    sweep_dir = tmp_path / "sweep"
    steps = 3
    assert slurm_main([
        "sweep", "--sweep-dir", str(sweep_dir), "--pair", "barto-tiny:mlsum",
        "--pair", "t5s-tiny:mlsum", "--pair", "barto-tiny:sqac", "--grid", "optim.lr=1e-4,2e-3",
        "--data-root", str(data_root), "--max-parallel", "2", "--time", "15", "--yes", "--",
        "--train.max_steps", str(steps), "--train.batch_size", "2", "--train.log_every", "1",
        "--train.precision", "fp32", "--train.progress_bar", "false",
        "--data.max_target_length", "256",  # the fixtures' references, whole, in a tiny vocabulary
        "--gen.num_beams", "1", "--gen.max_new_tokens", "8", "--gen.min_new_tokens", "0"]) == 0
    manifest = load_manifest(sweep_dir)
    assert len(manifest.runs) == 6
    for run_plan in manifest.runs:
        assert wait_finished(run_plan.job_id, timeout_s=600)["JobState"] == "COMPLETED", run_plan.name
    statuses = sweep_status(manifest)
    assert {status.state for status in statuses} == {"COMPLETED"}
    assert all(status.step == steps for status in statuses)
    for run_plan in manifest.runs:  # each run trained on its own task's data and was evaluated
        run_dir = Path(run_plan.run_dir)
        assert sorted(step_losses(run_dir)) == list(range(1, steps + 1))
        config = (run_dir / "config.yaml").read_text()
        assert str(data_root / run_plan.task / "train.jsonl") in config
        assert run_result(run_plan, "rougeL") is not None, run_plan.name

    capsys.readouterr()
    assert slurm_main(["collect", str(sweep_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    results = {(r.model, r.task, r.grid_point["optim.lr"]): run_result(r, "rougeL")
               for r in manifest.runs}

    def shown(value):
        if value is None:
            return "–"
        return f"{value:.2f}" if value == 0 or abs(value) >= 0.005 else f"{value:.2g}"

    def beats(result, other):  # the better dev rougeL; on a tie the lower dev loss
        mine, theirs = result.validation["rougeL"], other.validation["rougeL"]
        if mine == theirs:
            return result.validation["loss"] < other.validation["loss"]
        return mine > theirs

    tables = {}  # the first task of a table -> (header, {model: cells})
    for i, line in enumerate(lines):
        if line.startswith("| model |"):
            header = [cell.strip() for cell in line.strip("|").split("|")]
            rows = {}
            for row in lines[i + 2:]:
                if not row.startswith("| "):
                    break
                cells = [cell.strip() for cell in row.strip("|").split("|")]
                rows[cells[0]] = cells
            tables[header[1].split(" ", 1)[0]] = (header, rows)
    assert sorted(tables) == ["mlsum", "sqac"]  # summarization, then generative QA
    assert sorted(tables["mlsum"][1]) == ["barto-tiny", "t5s-tiny"]
    assert sorted(tables["sqac"][1]) == ["barto-tiny"]  # t5s-tiny did not run sqac
    # QA's exact match and F1 are MLQA's (Spanish) comparison, not SQuAD's: said with the scores
    for run_plan in manifest.runs:
        saved = json.loads((Path(run_plan.run_dir) / "final_results.json").read_text())
        assert saved.get("metric_options") == ({
            "exact_match": {"convention": "mlqa-es"}, "token_f1": {"convention": "mlqa-es"}}
            if run_plan.task == "sqac" else None), run_plan.name
    for header, rows in tables.values():
        for model, cells in rows.items():
            task = header[1].split(" ", 1)[0]
            first, second = results[(model, task, "1e-4")], results[(model, task, "2e-3")]
            # one run per (model, task): the better dev rougeL (a tie: the lower dev loss)
            label, chosen = ("g2", second) if beats(second, first) else ("g1", first)
            assert cells[1] == label, (model, task)
            for column, cell in zip(header[2:], cells[2:]):
                if column.startswith("avg "):
                    continue
                metric = column.split(" ", 1)[1]
                test = (chosen.test or {}).get(metric)
                assert cell == f"{shown(chosen.validation.get(metric))} / {shown(test)}", (
                    model, column)
    assert "- g1: optim.lr=1e-4" in lines and "- g2: optim.lr=2e-3" in lines
    assert (sweep_dir / "results.md").read_text().splitlines() == lines[:-2]  # less 'written:'
    assert (sweep_dir / "results.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
