"""`slurm submit` and `slurm sweep` read the runs' local data files before sbatch (no cluster:
dry runs): a bad file or a step larger than the training file is refused at submission, not in
every job after its wait in the queue; each distinct data set is read once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import fixture_files
from seq2seq_es.slurm.cli import main as slurm_main


def _sweep(sweep_dir: Path, *overrides: str, grid: str = "optim.lr=1e-4,2e-4",
           extra: tuple[str, ...] = ()) -> list[str]:
    return ["sweep", "--pair", "barto-tiny:mlsum", "--sweep-dir", str(sweep_dir), "--grid",
            grid, "--dry-run", *extra, "--", *overrides]


def _fixture_data() -> list[str]:
    files = fixture_files("mlsum")
    # the tiny twins' tokenizers cut most fixture summaries at mlsum's 48 tokens
    return ["--data.train_file", files["train"], "--data.validation_file", files["validation"],
            "--data.test_file", files["test"], "--data.max_target_length", "128"]


def test_each_distinct_data_set_is_read_once_and_said(tmp_path, capsys):
    assert slurm_main(_sweep(tmp_path / "sw", *_fixture_data(), "--train.batch_size", "2")) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("# data check: ")]
    files = fixture_files("mlsum")
    # two runs, one data set: each file read once, after the script (a dry run prints a script)
    assert [line.split(" from file ")[1].split(":")[0] for line in lines] == [
        files["train"], files["validation"], files["test"]]
    assert out.startswith("#!/bin/bash")
    assert "8 rows -> 8 examples" in lines[0]


@pytest.mark.parametrize("command", ["submit", "sweep"])
def test_a_file_without_the_tasks_column_is_refused_before_sbatch(tmp_path, capsys, command):
    # Every job of the sweep read it after waiting in the queue and failed on the same column.
    bad = tmp_path / "test.jsonl"
    bad.write_text("".join(json.dumps({"body": f"Texto {i}.", "summary": f"Resumen {i}."}) + "\n"
                           for i in range(4)), encoding="utf-8")
    data = _fixture_data() + ["--train.batch_size", "2"]
    data[data.index("--data.test_file") + 1] = str(bad)
    argv = (_sweep(tmp_path / "sw", *data) if command == "sweep" else
            ["submit", "--task", "mlsum", "--model", "barto-tiny", "--run-dir",
             str(tmp_path / "run"), "--dry-run", "--", *data])
    assert slurm_main(argv) == 2
    captured = capsys.readouterr()
    assert f"error: file {bad}, column 'text': missing column 'text'" in captured.err
    assert "#!/bin/bash" not in captured.out
    assert not (tmp_path / "sw").exists() and not (tmp_path / "run").exists()
    # --no-data-check leaves it to the job
    argv.insert(argv.index("--dry-run"), "--no-data-check")
    assert slurm_main(argv) == 0
    assert "data check" not in capsys.readouterr().out


@pytest.mark.parametrize("command", ["submit", "sweep"])
def test_a_target_length_that_cuts_most_targets_is_refused_before_sbatch(tmp_path, capsys,
                                                                        command):
    # The job refuses it (config.check_target_coverage) once its model is loaded, after its
    # wait in the queue; the tiny twin's tokenizer is built here as the job builds it.
    data = _fixture_data()[:-2] + ["--train.batch_size", "2"]
    argv = (_sweep(tmp_path / "sw", *data, grid="optim.lr=1e-4") if command == "sweep" else
            ["submit", "--task", "mlsum", "--model", "barto-tiny", "--run-dir",
             str(tmp_path / "run"), "--dry-run", "--", *data])
    assert slurm_main(argv) == 2
    err = capsys.readouterr().err
    run = "barto-tiny__mlsum__lr-1e-4" if command == "sweep" else "run"
    assert (f"error: config key 'data.max_target_length': run {run}: 48 tokens cuts 6 of 8 "
            "training targets (75%); raise it (its job would refuse it once its model is "
            "loaded)") in err
    assert not (tmp_path / "sw").exists() and not (tmp_path / "run").exists()
    # counted on the examples the run trains on (data.max_train_samples: the first N)
    assert slurm_main(argv + ["--data.max_train_samples", "2"]) == 2
    assert "48 tokens cuts 2 of 2 training targets (100%)" in capsys.readouterr().err
    assert slurm_main(argv + ["--data.max_target_length", "128"]) == 0
    # a tokenizer this machine does not have (the hub, offline here) leaves it to the job
    assert slurm_main([arg.replace("barto-tiny", "barto") for arg in argv]) == 0
    assert ("data check: the tokenizer of vgaraujov/bart-base-spanish is not on this machine"
            in capsys.readouterr().out)


def test_a_run_whose_step_outgrows_the_training_file_is_refused_by_name(tmp_path, capsys):
    # The paper's batch sizes on a small file of one's own: the job stopped at "one step
    # takes ..." after its wait in the queue.
    train = fixture_files("mlsum")["train"]
    assert slurm_main(_sweep(tmp_path / "sw", *_fixture_data(), "--train.batch_size", "3",
                             grid="optim.lr=1e-4", extra=("--tasks-per-node", "3"))) == 2
    assert ("config key 'train.batch_size': run barto-tiny__mlsum__lr-1e-4: one step takes 9 "
            "examples (batch_size 3 x grad_accum 1 x 3 ranks) but the training file "
            f"{train} has 8") in capsys.readouterr().err
    assert slurm_main(_sweep(tmp_path / "sw", *_fixture_data(), "--train.batch_size", "2",
                             grid="optim.lr=1e-4", extra=("--tasks-per-node", "3"))) == 0
    # the effective-batch axis: 16 examples a step, split into micro-batches, still 16
    assert slurm_main(_sweep(tmp_path / "sw", *_fixture_data(), grid="train.batch_size=8,16")) == 2
    err = capsys.readouterr().err
    assert "run barto-tiny__mlsum__batch_size-16: one step takes 16 examples" in err
    assert f"but the training file {train} has 8" in err
    # token budgets: the step is not a number of examples; left to the job
    assert slurm_main(_sweep(tmp_path / "sw", *_fixture_data(), "--train.batching",
                             "token_budget", "--train.max_tokens", "100000",
                             grid="optim.lr=1e-4")) == 0
