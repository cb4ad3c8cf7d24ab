"""`slurm submit` and `slurm sweep` before sbatch (issue 10 item 4), no cluster: a `--config FILE`
after `--` composed into every run and passed on to `train`, the warning for a job without GPUs
(decided from sinfo's text), the sweep's summary and its confirmation (--yes, --dry-run)."""

from __future__ import annotations

import io
import os
import stat

import pytest

from seq2seq_es import cli as top_cli
from seq2seq_es.slurm import cli as slurm_cli
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.sweep import (absolute_config, gpu_warning, partition_gres, plan_sweep,
                                    relative_paths, resolved_key, split_config)

RUN_YAML = """
optim:
  weight_decay: 0.05
  warmup_steps: 7
train:
  max_steps: 40
  eval_every: 20
"""


@pytest.fixture
def run_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(RUN_YAML)
    return path


@pytest.fixture(autouse=True)
def no_accelerate_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("ACCELERATE_"):
            monkeypatch.delenv(key)


# ---- --config FILE after -- ------------------------------------------------------------------

def test_config_file_is_split_out_and_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--optim.lr", "1e-4", "--config", "run.yaml", "--train.epochs=2"]
    assert split_config(argv) == ("run.yaml", ["--optim.lr", "1e-4", "--train.epochs=2"])
    assert split_config(["--config=a.yaml"]) == ("a.yaml", [])
    assert absolute_config(argv) == ["--optim.lr", "1e-4", "--config", str(tmp_path / "run.yaml"),
                                     "--train.epochs=2"]
    assert absolute_config(["--config=a.yaml"]) == ["--config", str(tmp_path / "a.yaml")]


def test_submit_composes_the_config_file_and_passes_it_to_train(tmp_path, run_yaml, capsys,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert slurm_main(["submit", "--task", "mlsum", "--model", "barto-tiny", "--run-dir",
                       str(tmp_path / "run"), "--dry-run", "--", "--config", "run.yaml",
                       "--optim.lr", "1e-4"]) == 0
    out = capsys.readouterr().out
    args = next(line for line in out.splitlines() if line.startswith("# train arguments: "))
    argv = args.split(": ", 1)[1].split()
    assert argv[argv.index("--config") + 1] == str(run_yaml)  # absolute: the job starts elsewhere
    cfg = top_cli.build_config(argv)  # what `train` makes of the job's arguments
    assert (cfg.optim.weight_decay, cfg.optim.lr, cfg.train.max_steps) == (0.05, 1e-4, 40)


@pytest.mark.parametrize("text, key", [
    ("optim:\n  lrr: 1\n", "optim.lrr"),
    ("train:\n  epochs: 0\n", "train.epochs"),
    ("data:\n  task: sqac\n", "data.task"),    # the run is named barto-tiny on mlsum
    ("model:\n  name: t5s\n", "model.name"),
    ("[1, 2]\n", "--config"),
])
def test_submit_refuses_a_bad_config_file_by_key_before_sbatch(tmp_path, capsys, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert slurm_main(["submit", "--task", "mlsum", "--model", "barto-tiny", "--run-dir",
                       str(tmp_path / "run"), "--dry-run", "--", "--config", str(path)]) == 2
    named = f"argument {key}:" if key.startswith("--") else f"config key '{key}'"
    assert named in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, key", [
    (["--", "--config", "missing.yaml"], "--config"),
    (["--", "--config", "a.yaml", "--config", "b.yaml"], "--config"),
    (["--", "--config"], "--config"),
])
def test_sweep_refuses_a_missing_or_repeated_config_file(tmp_path, capsys, monkeypatch, extra,
                                                      key):
    (tmp_path / "a.yaml").write_text("{}\n")
    (tmp_path / "b.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    assert slurm_main(["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--pair",
                       "barto-tiny:mlsum", "--dry-run", *extra]) == 2
    named = f"argument {key}:" if key.startswith("--") else f"config key '{key}'"
    assert named in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_every_sweep_run_is_composed_with_the_config_file_as_train_will(tmp_path, run_yaml):
    plan = plan_sweep(tmp_path / "sweep", [("barto-tiny", "mlsum"), ("t5s-tiny", "sqac")],
                      {"optim.lr": ["3e-5", "5e-5"], "optim.weight_decay": ["0.0", "0.1"]},
                      ["--config", str(run_yaml)])
    assert len(plan.runs) == 8 and plan.dropped == []
    for run in plan.runs:
        cfg = plan.configs[run.name]
        assert cfg.train.max_steps == 40 and cfg.optim.warmup_steps == 7      # from the file
        assert str(cfg.optim.weight_decay) == run.grid_point["optim.weight_decay"]  # grid wins
        assert resolved_key(top_cli.build_config(run.argv)) == resolved_key(cfg)


def test_a_config_file_that_repeats_an_axis_value_deduplicates_by_its_value(tmp_path):
    path = tmp_path / "steps.yaml"
    path.write_text("train:\n  max_steps: 30\n")
    plan = plan_sweep(tmp_path / "sweep", [("barto-tiny", "mlsum")],
                      {"train.epochs": ["3", "6"]}, ["--config", str(path)])
    assert [run.grid_point for run in plan.runs] == [{"train.epochs": "3"}]
    assert "train.epochs does not apply: train.max_steps=30" in plan.dropped[0].describe()


@pytest.mark.parametrize("key", ["train.batch_size", "train.grad_accum"])
def test_a_config_file_may_not_set_what_the_effective_batch_axis_sets(tmp_path, capsys, key):
    path = tmp_path / "batch.yaml"
    section, name = key.split(".")
    path.write_text(f"{section}:\n  {name}: 2\n")
    assert slurm_main(["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--pair",
                       "barto-tiny:mlsum", "--grid", "train.batch_size=4,8", "--dry-run", "--",
                       "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"config key '{key}': {path} sets {key}" in err and "effective batch" in err


def test_the_probe_entry_takes_no_config_file(tmp_path, capsys):
    assert slurm_main(["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--pair", "t5s:mlsum",
                       "--entry", "seq2seq_es.slurm.probe:main", "--dry-run", "--",
                       "--config", "x.yaml"]) == 2
    assert "must be dotted options" in capsys.readouterr().err


# ---- a job without GPUs ----------------------------------------------------------------------

SINFO = "debug*|(null)\ngpu|gpu:a100:4(S:0-1)\ngpu|gpu:a100:8(S:0-1)\ncpu|(null)\n"


@pytest.mark.parametrize("gpus, partition, sinfo, says", [
    (0, "gpu", SINFO, "partition 'gpu' has nodes with 8 GPUs (gpu:a100:4(S:0-1), "
                      "gpu:a100:8(S:0-1)); pass --gpus-per-node N"),
    (0, None, "batch*|gpu:2\n", "partition 'batch' (SLURM's default) has nodes with 2 GPUs"),
    (0, "gpu", None, "the job on partition 'gpu' trains on CPUs (sinfo could not say"),
    (0, "cpu", SINFO, None),     # a CPU partition: CPU training is what it offers
    (0, None, SINFO, None),      # the default partition has no GPUs
    (0, None, None, None),       # no partition, no sinfo: nothing to go on
    (4, "gpu", SINFO, None),
    (2, None, None, None),
])
def test_gpu_warning_decision(gpus, partition, sinfo, says):
    warning = gpu_warning(gpus, partition, sinfo)
    if says is None:
        assert warning is None
    else:
        assert says in warning and "trains on CPUs" in warning


def _fake_sinfo(folder, text, code=0):
    folder.mkdir(exist_ok=True)
    script = folder / "sinfo"
    script.write_text(f"#!/bin/sh\n[ \"$*\" = '-h -o %P|%G' ] || exit 9\nprintf '{text}'\n"
                      f"exit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def test_partition_gres_reads_sinfo_and_is_none_without_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert partition_gres() is None
    monkeypatch.setenv("PATH", str(_fake_sinfo(tmp_path / "bin", "gpu|gpu:4\\n")))
    assert partition_gres() == "gpu|gpu:4\n"
    monkeypatch.setenv("PATH", str(_fake_sinfo(tmp_path / "bad", "", code=1)))
    assert partition_gres() is None


@pytest.mark.parametrize("command", ["submit", "sweep"])
def test_a_gpu_less_job_on_a_gpu_partition_is_warned_on_stderr(tmp_path, capsys, monkeypatch,
                                                               command):
    monkeypatch.setattr(slurm_cli, "partition_gres", lambda: SINFO)
    # partition 'gpu' is sinfo's text above, not a partition of the local cluster
    monkeypatch.setattr(slurm_cli, "check_partition", lambda partition, required, origin=None: None)
    monkeypatch.setattr(slurm_cli, "check_node_count", lambda config, required: None)
    args = (["submit", "--task", "mlsum", "--model", "barto-tiny", "--run-dir",
             str(tmp_path / "run")] if command == "submit"
            else ["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--pair", "barto-tiny:mlsum",
                  "--no-grid"])
    assert slurm_main(args + ["--partition", "gpu", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: no --gpus-per-node: the job trains on CPUs, but partition "
                          "'gpu' has nodes with 8 GPUs")
    assert slurm_main(args + ["--partition", "gpu", "--gpus-per-node", "4", "--dry-run"]) == 0
    assert capsys.readouterr().err == ""


# ---- the sweep's summary and confirmation ----------------------------------------------------

class _Stdin(io.StringIO):
    def __init__(self, text: str, tty: bool):
        super().__init__(text)
        self.tty = tty
        self.read_from = False

    def isatty(self):
        return self.tty

    def readline(self, *args):
        self.read_from = True
        return super().readline(*args)


@pytest.fixture
def submitted(monkeypatch):
    """Stands in for sbatch: records the manifests `submit` would have submitted."""
    calls = []

    def fake_submit(manifest, config, manifest_path):
        calls.append(manifest)
        for number, run in enumerate(manifest.runs):
            run.job_id = f"99_{number}"
        return manifest

    monkeypatch.setattr(slurm_cli, "submit", fake_submit)
    monkeypatch.setattr(slurm_cli, "require_slurm_clients", lambda: None)
    monkeypatch.setattr(slurm_cli, "partition_gres", lambda: None)
    return calls


def _sweep(tmp_path, *extra):
    return ["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--models", "barto,t5s", "--tasks",
            "mlsum,wmt13-es-en", *extra]


SUMMARY = ["26 runs: 4 pairs x grid points (13 distinct grid points):",
           "  train.batch_size=4 optim.lr=3e-5 train.epochs=3   2 runs"]


def test_dry_run_prints_the_summary_and_never_asks(tmp_path, capsys, monkeypatch, submitted):
    stdin = _Stdin("y\n", tty=True)
    monkeypatch.setattr("sys.stdin", stdin)
    assert slurm_main(_sweep(tmp_path, "--dry-run")) == 0
    out = capsys.readouterr().out.splitlines()
    assert [f"# {line}" for line in SUMMARY] == out[out.index(f"# {SUMMARY[0]}"):][:2]
    assert "#   train.batch_size=384" + " " * 30 + "2 runs" in out
    assert not stdin.read_from and submitted == []


def test_piped_stdin_without_yes_is_refused_and_with_yes_submits(tmp_path, capsys, monkeypatch,
                                                                  submitted):
    stdin = _Stdin("y\n", tty=False)
    monkeypatch.setattr("sys.stdin", stdin)
    assert slurm_main(_sweep(tmp_path)) == 2
    captured = capsys.readouterr()
    assert SUMMARY[0] in captured.out.splitlines()  # the plan is shown before the refusal
    assert ("argument --yes: stdin is not a terminal, so nobody can confirm submitting 26 "
            "runs; pass --yes") in captured.err
    assert submitted == [] and not stdin.read_from and not (tmp_path / "sweep").exists()
    assert slurm_main(_sweep(tmp_path, "--yes")) == 0
    assert len(submitted) == 1 and len(submitted[0].runs) == 26 and not stdin.read_from
    assert "submitted 26 run(s) as jobs 99_0..99_25" in capsys.readouterr().out


@pytest.mark.parametrize("answer, code", [("y\n", 0), ("yes\n", 0), ("n\n", 1), ("\n", 1),
                                          ("", 1)])
def test_a_terminal_is_asked_before_submitting(tmp_path, capsys, monkeypatch, submitted, answer,
                                               code):
    monkeypatch.setattr("sys.stdin", _Stdin(answer, tty=True))
    assert slurm_main(_sweep(tmp_path)) == code
    out = capsys.readouterr().out
    assert SUMMARY[0] in out and "submit 26 runs? [y/N] " in out
    assert len(submitted) == (1 if code == 0 else 0)
    if code:
        assert out.rstrip().endswith("nothing submitted")


# ---- local paths pinned at submission ---------------------------------------------------------

def test_relative_data_paths_are_made_absolute_at_submission(tmp_path, capsys, monkeypatch):
    # The job read them against wherever sbatch was called: `slurm resume` from another folder
    # trained steps 93-200 on another train.jsonl without a word. A --config file's paths too.
    (tmp_path / "fx").mkdir()
    for split in ("train", "validation"):
        (tmp_path / "fx" / f"{split}.jsonl").write_text('{"text": "a", "summary": "b"}\n')
    (tmp_path / "run.yaml").write_text("data:\n  validation_file: fx/validation.jsonl\n")
    monkeypatch.chdir(tmp_path)
    assert slurm_main(["submit", "--task", "mlsum", "--model", "barto-tiny", "--run-dir", "run",
                       "--dry-run", "--", "--data.train_file", "fx/train.jsonl",
                       "--config", "run.yaml", "--train.batch_size", "1"]) == 0
    argv = capsys.readouterr().out.split("# train arguments: ", 1)[1].split()
    assert "fx/train.jsonl" not in argv and "--data.train_file" in argv
    assert argv[argv.index("--data.train_file") + 1] == str(tmp_path / "fx" / "train.jsonl")
    assert argv[argv.index("--data.validation_file") + 1] == str(tmp_path / "fx" /
                                                                 "validation.jsonl")
    plan = plan_sweep(tmp_path / "sweep", [("barto-tiny", "mlsum")], {"optim.lr": ["1e-4"]},
                      ["--data.train_file=fx/train.jsonl"])
    [run] = plan.runs
    assert "--data.train_file=fx/train.jsonl" not in run.argv
    assert run.argv[run.argv.index("--data.train_file") + 1] == str(tmp_path / "fx" /
                                                                    "train.jsonl")


@pytest.mark.parametrize("command", ["submit", "sweep"])
def test_a_missing_data_file_is_refused_before_sbatch(tmp_path, capsys, monkeypatch, command):
    # It was submitted, waited in the queue and failed on the nodes.
    monkeypatch.chdir(tmp_path)
    names = (["--task", "mlsum", "--model", "barto-tiny", "--run-dir", "run"]
             if command == "submit" else ["--pair", "barto-tiny:mlsum",
                                          "--sweep-dir", "sw", "--grid", "optim.lr=1e-4"])
    assert slurm_main([command, *names, "--dry-run", "--", "--data.train_file",
                       "nope.jsonl"]) == 2
    err = capsys.readouterr().err
    assert f"config key 'data.train_file': file {tmp_path / 'nope.jsonl'} does not exist" in err
    # a file no reader takes: refused by its key too (it was named without one)
    (tmp_path / "train.txt").write_text("hola\n")
    assert slurm_main([command, *names, "--dry-run", "--", "--data.train_file",
                       "train.txt"]) == 2
    assert (f"error: config key 'data.train_file': file {tmp_path / 'train.txt'}: unsupported "
            "file extension '.txt'") in capsys.readouterr().err


def test_resume_names_the_relative_paths_of_runs_submitted_before_they_were_pinned():
    assert relative_paths(["--data.train_file", "fx/train.jsonl", "--data.cache_dir=/abs/cache",
                           "--dist.deepspeed_config=ds.json", "--model.path", "owner/hub-id",
                           "--optim.lr", "1e-4"]) == [("data.train_file", "fx/train.jsonl"),
                                                      ("dist.deepspeed_config", "ds.json")]


# ---- a run or sweep folder that is a file ------------------------------------------------------

@pytest.mark.parametrize("command", ["submit", "sweep"])
@pytest.mark.parametrize("under_file", [False, True])
def test_a_run_or_sweep_folder_that_is_or_lies_under_a_file_is_refused(tmp_path, capsys,
                                                                      monkeypatch, command,
                                                                      under_file):
    # `submit --dry-run --run-dir FILE` printed an sbatch script whose job could never make its
    # folder; a sweep was refused as config key train.output_dir, not as the option given.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    given = "a_file/sub" if under_file else "a_file"
    option = "--run-dir" if command == "submit" else "--sweep-dir"
    names = (["--task", "mlsum", "--model", "barto", "--run-dir", given] if command == "submit"
             else ["--pair", "barto:mlsum", "--no-grid", "--sweep-dir", given])
    assert slurm_main([command, *names, "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    said = (f"{tmp_path / 'a_file'} is a file, so {tmp_path / 'a_file' / 'sub'} cannot be a "
            "folder under it" if under_file else
            f"{tmp_path / 'a_file'} is a file; expected a folder")
    assert err.startswith(f"error: argument {option}: {said}")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]  # nothing written
    assert (tmp_path / "a_file").read_text() == "x"


def test_a_file_where_a_sweep_run_folder_goes_is_refused_by_the_option(tmp_path, capsys):
    # The probe entry composes no train config, so no train.output_dir check saw it either.
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "barto__mlsum__default").write_text("x")
    assert slurm_main(["sweep", "--pair", "barto:mlsum", "--no-grid", "--sweep-dir",
                       str(sweep_dir), "--entry", "seq2seq_es.slurm.probe:main",
                       "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: argument --sweep-dir: {sweep_dir / 'barto__mlsum__default'} is a file; "
        "expected a folder")


# ---- a job the partition's nodes cannot hold --------------------------------------------------

@pytest.mark.parametrize("settings, cpus, says", [
    # sbatch said "Invalid generic resource (gres) specification", naming no option
    ({"gpus_per_node": 1}, 4, "argument --gpus-per-node: 1 node(s) with 1 GPU(s) each asked, "
                              "but partition 'debug' has 0 such node(s)"),
    # accepted, then PENDING (PartitionConfig) for ever
    ({"tasks_per_node": 4}, 1, "argument --tasks-per-node: 1 node(s) with 4 task(s) x 1 CPU(s) "
                               "= 4 CPUs each asked, but partition 'debug' has 0 such node(s) "
                               "(its largest has 1 CPUs): the job would wait for ever"),
    ({"cpus_per_task": 8}, 4, "argument --cpus-per-task: 1 node(s) with 1 task(s) x 8 CPU(s)"),
    ({"nodes": 2, "tasks_per_node": 2}, 2, None),
    ({"tasks_per_node": 64}, None, None),  # sinfo gave no CPU count: nothing to go on
])
def test_a_job_the_nodes_cannot_hold_is_refused_naming_its_option(monkeypatch, capsys, settings,
                                                                 cpus, says):
    from seq2seq_es.errors import ConfigError
    from seq2seq_es.slurm import sweep
    from seq2seq_es.slurm.config import SlurmConfig

    monkeypatch.setattr(sweep, "partition_nodes", lambda partition: (
        "debug", {"node1": 0, "node2": 0}, {"node1": cpus, "node2": cpus}))
    config = SlurmConfig(**settings)
    if says is None:
        sweep.check_node_count(config, required=True)
        return
    with pytest.raises(ConfigError) as refused:
        sweep.check_node_count(config, required=True)
    assert str(refused.value).startswith(says)
    # a dry run's script may be meant for another cluster: said, not refused
    sweep.check_node_count(config, required=False)
    assert capsys.readouterr().err == f"warning: {refused.value}\n"
