"""What `seq2seq-es slurm ...` says of a user's mistakes (no cluster: --dry-run, hand-made folders):
each refusal one line naming the file, flag or key the user wrote, with the near miss where there
is one; `status` names no log that does not exist; `--help` shows the SLURM flags' defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seq2seq_es.config import compose
from seq2seq_es.errors import ConfigError
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.config import SlurmConfig
from seq2seq_es.slurm.monitor import SlurmState, format_status, run_status
from seq2seq_es.slurm.sweep import SWEEP_MANIFEST, new_manifest, plan_runs


def _submit(tmp_path, *options):
    return ["submit", "--task", "mlsum", "--model", "barto", "--run-dir", str(tmp_path / "run"),
            "--dry-run", *options]


def _sweep(tmp_path, *options):
    return ["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--pair", "barto:mlsum", "--dry-run",
            *options]


def _refused(capsys, argv) -> str:
    """The one-line error of a refused command (status 2, nothing rendered, no traceback)."""
    assert slurm_main(argv) == 2
    captured = capsys.readouterr()
    assert "#SBATCH" not in captured.out
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


# ---- 1. --slurm-config FILE --------------------------------------------------------------------

def _slurm_yaml(tmp_path, text: str) -> Path:
    path = tmp_path / "slurm.yaml"
    path.write_text(text)
    return path


def test_an_unknown_key_of_a_slurm_config_names_the_file_and_the_near_miss(tmp_path, capsys):
    path = _slurm_yaml(tmp_path, "slurm:\n  time: 30\n")
    err = _refused(capsys, _submit(tmp_path, "--slurm-config", str(path)))
    assert err.startswith("error: config key 'slurm.time': unknown key; did you mean 'time_min'? "
                          "known keys: account, ")
    assert err.endswith(f"(in {path}, line 2)")


@pytest.mark.parametrize("text, says, line", [
    ("slurm:\n  time_min: abc\n", "config key 'slurm.time_min': expected an integer >= 1, got 'abc'",
     2),
    ("nodes: 0\n", "config key 'slurm.nodes': expected an integer >= 1, got 0", 1),  # no section
    ("slurm:\n  mem_gb: lots\n", "config key 'slurm.mem_gb': expected a positive number of GB", 2),
    ("slurm:\n  time_min: 1\n  signal_delay_s: 30\n", "config key 'slurm.signal_delay_s': 30 s", 3),
])
def test_a_bad_value_of_a_slurm_config_names_the_file(tmp_path, capsys, text, says, line):
    path = _slurm_yaml(tmp_path, text)
    err = _refused(capsys, _submit(tmp_path, "--slurm-config", str(path)))
    assert says in err and err.endswith(f"(in {path}, line {line})")
    # sweep (and bench) build their SLURM settings the same way
    assert _refused(capsys, _sweep(tmp_path, "--no-grid", "--slurm-config", str(path))) == err


def test_a_files_time_limit_too_short_for_the_signal_delay_names_the_file(tmp_path, capsys):
    """The refusal is the delay's (it says what to change), but the file's time_min made it."""
    path = _slurm_yaml(tmp_path, "slurm:\n  time_min: 1\n")
    err = _refused(capsys, _submit(tmp_path, "--slurm-config", str(path)))
    assert err.startswith("error: config key 'slurm.signal_delay_s': ")
    assert err.endswith(f"(time_min in {path})")
    err = _refused(capsys, _submit(tmp_path, "--slurm-config", str(path), "--time", "2"))
    assert err.startswith("error: config key 'slurm.signal_delay_s': ") and str(path) not in err


def test_a_flag_that_replaces_the_files_value_is_not_blamed_on_the_file(tmp_path, capsys):
    path = _slurm_yaml(tmp_path, "slurm:\n  nodes: 0\n")
    assert slurm_main(_submit(tmp_path, "--slurm-config", str(path), "--nodes", "1")) == 0
    capsys.readouterr()
    path.write_text("slurm:\n  nodes: 2\n")
    err = _refused(capsys, _submit(tmp_path, "--slurm-config", str(path), "--nodes", "0"))
    # named as the user typed it: a key they never wrote was named before
    assert err == "error: argument --nodes: expected an integer >= 1, got 0"


def test_an_unknown_key_of_a_manifests_settings_gets_the_near_miss_too():
    with pytest.raises(ConfigError) as info:
        SlurmConfig.from_mapping({"gpus-per-node": 4})
    assert "did you mean 'gpus_per_node'?" in str(info.value)


# ---- 2. a train --config file after -- ---------------------------------------------------------

def test_a_train_config_value_refused_by_validation_names_the_file(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: .nan\n")
    says = f"error: config key 'optim.lr': must be a finite number, got nan (in {path}, line 2)"
    assert _refused(capsys, _submit(tmp_path, "--", "--config", str(path))) == says
    assert _refused(capsys, _sweep(tmp_path, "--no-grid", "--", "--config", str(path))) == says
    # as `seq2seq-es train --config` composes it
    with pytest.raises(ConfigError) as info:
        compose("mlsum", "barto", config_file=str(path))
    assert str(info.value) == says[len("error: "):]
    # the same value on the command line is not the file's; one that replaces it is no error
    assert _refused(capsys, _submit(tmp_path, "--", "--optim.lr", "nan")) == \
        "error: config key 'optim.lr': must be a finite number, got nan"
    assert slurm_main(_submit(tmp_path, "--", "--config", str(path), "--optim.lr", "1e-4")) == 0


# ---- 3. collect --metrics ----------------------------------------------------------------------

def _collect_sweep(tmp_path) -> Path:
    sweep_dir = tmp_path / "sweep"
    runs = plan_runs(sweep_dir, [("barto", "mlsum")], {}, [])
    manifest = new_manifest("sweep", runs, {}, SlurmConfig(), sweep_dir / "slurm",
                            "seq2seq_es.slurm.probe:main", [], 2)
    sweep_dir.mkdir(parents=True)
    manifest.write(sweep_dir / SWEEP_MANIFEST)
    run_dir = Path(runs[0].run_dir)
    run_dir.mkdir(parents=True)
    scores = {"rouge1": 30.0, "rouge2": 10.0, "rougeL": 25.0, "rougeLsum": 26.0}
    (run_dir / "final_results.json").write_text(json.dumps({
        "task": "mlsum", "model": "barto", "main_metric": "rougeL", "best_step": 40, "steps": 50,
        "validation": scores, "test": scores}))
    return sweep_dir


def test_collect_suggests_the_metric_meant(tmp_path, capsys):
    sweep_dir = _collect_sweep(tmp_path)
    err = _refused(capsys, ["collect", str(sweep_dir), "--metrics", "rougel"])
    # a name that differs only in case is the one meant: rouge1, rougeLsum are not offered
    assert err == ("error: argument --metrics: rougel logged by no chosen run; the runs logged: "
                   "rouge1, rouge2, rougeL, rougeLsum; did you mean 'rougeL'?")
    err = _refused(capsys, ["collect", str(sweep_dir), "--metrics", "rougeL,rouge_1,blue"])
    assert "; did you mean 'rouge1' or " in err and err.endswith(" for rouge_1?")  # not blue
    err = _refused(capsys, ["collect", str(sweep_dir), "--metrics", "bleu"])
    assert "did you mean" not in err
    assert not (sweep_dir / "results.md").exists()


# ---- 4. --grid values --------------------------------------------------------------------------

@pytest.mark.parametrize("axis, says", [
    ("optim.lr=1e-4,abc", "error: argument --grid: optim.lr=abc: expected a number, got 'abc'"),
    ("optim.lr=1e-4,nan", "error: argument --grid: optim.lr=nan: must be a finite number, got nan"),
    ("train.epochs=3,0.5", "error: argument --grid: train.epochs=0.5: expected an integer, "
                           "got '0.5'"),
])
def test_a_bad_grid_value_is_named_as_grid_with_its_key_and_value(tmp_path, capsys, axis, says):
    assert _refused(capsys, _sweep(tmp_path, "--grid", axis)) == says
    assert not (tmp_path / "sweep").exists()


def test_a_bad_value_after_the_double_dash_is_not_blamed_on_the_grid(tmp_path, capsys):
    err = _refused(capsys, _sweep(tmp_path, "--grid", "optim.lr=1e-4", "--", "--optim.lr", "abc"))
    assert err == "error: config key 'optim.lr': expected a number, got 'abc'"


# ---- 5. status: a log that does not exist ------------------------------------------------------

def test_status_of_a_job_cancelled_before_it_started_says_it_has_no_log(tmp_path):
    sweep_dir = tmp_path / "sweep"
    runs = plan_runs(sweep_dir, [("barto", "mlsum")], {}, [])
    manifest = new_manifest("sweep", runs, {}, SlurmConfig(), sweep_dir / "slurm",
                            "seq2seq_es.slurm.probe:main", [], 2)
    manifest.submitted = True
    manifest.path = str(sweep_dir / SWEEP_MANIFEST)
    runs[0].job_id = "77"
    status = run_status(runs[0], manifest, {"77": SlurmState("CANCELLED")})
    assert status.failed and status.log.endswith("77_0_log.err")  # --json keeps the path
    out = format_status(manifest, [status])
    assert f"    no log: the job never started ({status.log} does not exist)" in out
    assert "    log: " not in out
    assert "    ended: cancelled (scancel, or an administrator)" in out and "    error:" not in out
    # once it started, its log is named
    Path(status.log).parent.mkdir(parents=True)
    Path(status.log).write_text("slurmstepd: error: *** JOB 77 CANCELLED ***\n")
    out = format_status(manifest, [run_status(runs[0], manifest, {"77": SlurmState("CANCELLED")})])
    assert f"    log: {status.log}" in out and "no log" not in out
    # a cancel is not called an error; SLURM's bare notice gives way to the tool's line, which
    # says how to go on; a failure still is an error
    assert "    ended: cancelled (scancel, or an administrator)" in out and "    error:" not in out
    failed = run_status(runs[0], manifest, {"77": SlurmState("FAILED")})
    assert "    error: " in format_status(manifest, [failed])


# ---- 6. --help ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["submit", "sweep"])
def test_help_shows_the_slurm_flags_defaults(capsys, command):
    with pytest.raises(SystemExit):
        slurm_main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--time MINUTES time limit per start (default 60)", "--nodes NODES (default 1)",
                  "one task per GPU (default 0)", "(default 3)", "(default 120)",
                  "--job-name JOB_NAME (default seq2seq-es)",
                  # where the train options go: the usage line ends at the command's own
                  "Train options go after `--`, as `seq2seq-es train` takes them"):
        assert shown in text, shown


def test_a_file_setup_that_is_no_list_is_refused_also_beside_setup_flags(tmp_path, capsys):
    # list("module load cuda") made one shell line per character, without a word.
    config = tmp_path / "slurm.yaml"
    config.write_text("slurm:\n  setup: module load cuda\n")
    assert slurm_main(["submit", "--task", "mlsum", "--model", "barto-tiny", "--run-dir",
                       str(tmp_path / "run"), "--slurm-config", str(config), "--setup", "X",
                       "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: config key 'slurm.setup': expected a list of shell lines (in {config}, line 2)")


@pytest.mark.slurm  # sinfo answers: the local cluster
def test_an_unknown_partition_is_named_as_the_user_gave_it(tmp_path, capsys):
    # `--partition nope` was refused as "config key 'slurm.partition'", a key never written;
    # a --slurm-config file's partition is named with the file and its line.
    from seq2seq_es.slurm.sweep import slurm_partitions

    known = slurm_partitions()
    submit = [arg for arg in _submit(tmp_path) if arg != "--dry-run"]  # refused before sbatch
    err = _refused(capsys, [*submit, "--partition", "nope"])
    assert err == ("error: argument --partition: SLURM does not know partition 'nope'; "
                   f"known partitions: {', '.join(known)}")
    path = _slurm_yaml(tmp_path, "slurm:\n  partition: nope\n")
    err = _refused(capsys, [*submit, "--slurm-config", str(path)])
    assert err.startswith("error: config key 'slurm.partition': SLURM does not know partition")
    assert err.endswith(f"(in {path}, line 2)")
    # A dry run's script may be meant for another cluster (the README's --partition gpu): it
    # was refused there; now it is said in a warning, and the script printed.
    assert slurm_main(_submit(tmp_path, "--partition", "nope")) == 0
    out, err = capsys.readouterr()
    assert err == ("warning: argument --partition: SLURM does not know partition 'nope'; "
                   f"known partitions: {', '.join(known)}\n")
    assert "#SBATCH --partition=nope" in out


def test_every_slurm_bench_option_with_a_default_says_it_in_its_help():
    # slurm/README says `--help` shows each flag's default; bench's --model, --task and --steps
    # showed none (README walkthrough).
    import argparse

    from seq2seq_es.bench.scaling_jobs import _bench_parser

    silent = [action.option_strings[0] for action in _bench_parser()._actions
              if action.option_strings and action.help != argparse.SUPPRESS
              and action.default not in (None, False, argparse.SUPPRESS, [])
              and "default" not in (action.help or "")]
    assert silent == []
