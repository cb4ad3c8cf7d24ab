"""SlurmConfig validation, the sbatch script it renders, and `slurm submit --dry-run` (no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from seq2seq_es.errors import ConfigError
from seq2seq_es.slurm import SlurmConfig, render_sbatch
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.config import sbatch_parameters


def test_cpu_runs_one_task_per_node_and_gpu_runs_one_task_per_gpu():
    assert SlurmConfig(nodes=2).ntasks_per_node == 1
    assert SlurmConfig(nodes=2).world_size == 2
    gpu = SlurmConfig(nodes=2, gpus_per_node=4)
    assert gpu.ntasks_per_node == 4 and gpu.world_size == 8
    assert SlurmConfig(tasks_per_node=2).world_size == 2


@pytest.mark.parametrize("values, key", [
    ({"nodes": 0}, "slurm.nodes"),
    ({"gpus_per_node": -1}, "slurm.gpus_per_node"),
    ({"gpus_per_node": 4, "tasks_per_node": 2}, "slurm.tasks_per_node"),
    ({"time_min": 0}, "slurm.time_min"),
    ({"mem_gb": -2}, "slurm.mem_gb"),
    ({"max_requeues": -1}, "slurm.max_requeues"),
    ({"nodes": "2"}, "slurm.nodes"),
    ({"partition": ""}, "slurm.partition"),
    ({"extra_sbatch": {"--mail-user": "x"}}, "slurm.extra_sbatch.--mail-user"),
    ({"nodez": 2}, "slurm.nodez"),
])
def test_bad_values_name_their_key(values, key):
    with pytest.raises(ConfigError) as info:
        SlurmConfig.from_mapping(values)
    assert info.value.key == key


def test_sbatch_script_carries_every_option(tmp_path):
    config = SlurmConfig(nodes=2, gpus_per_node=4, partition="gpu", account="proj", qos="high",
                         constraint="a100", time_min=90, mem_gb=64, cpus_per_task=8,
                         signal_delay_s=300, setup=["module load cuda"],
                         extra_sbatch={"mail-type": "END", "exclusive": True})
    script = render_sbatch(config, tmp_path / "slurm")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --constraint=a100", "#SBATCH --time=90", "#SBATCH --mem=64GB",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --signal=USR2@300", "#SBATCH --requeue",
                 "#SBATCH --mail-type=END", "#SBATCH --exclusive", "module load cuda",
                 "--kill-on-bad-exit=1"):
        assert line in script, line
    assert f"{tmp_path / 'slurm'}/%j_%t_log.out" in script
    assert "-m submitit.core._submit" in script
    assert "--array" not in script


def test_array_script_limits_parallel_tasks(tmp_path):
    script = render_sbatch(SlurmConfig(), tmp_path, array_size=12, array_parallelism=3)
    assert "#SBATCH --array=0-11%3" in script
    assert "%A_%a_%t_log.out" in script


def test_cpu_script_asks_for_no_gpu(tmp_path):
    params = sbatch_parameters(SlurmConfig(nodes=2))
    assert "gpus_per_node" not in params
    assert params["ntasks_per_node"] == 1


def test_submit_dry_run_prints_script_and_submits_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    status = slurm_main(["submit", "--task", "mlsum", "--model", "barto", "--run-dir", str(run_dir),
                         "--nodes", "2", "--gpus-per-node", "2", "--time", "45", "--mem-gb", "12",
                         "--account", "acct", "--sbatch", "mail-type=END", "--dry-run",
                         "--", "--optim.lr", "3e-5"])
    out = capsys.readouterr().out
    assert status == 0
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --time=45", "#SBATCH --mem=12GB", "#SBATCH --account=acct",
                 "#SBATCH --mail-type=END", "#SBATCH --requeue"):
        assert line in out, line
    assert "--optim.lr 3e-5" in out
    assert f"--train.output_dir {run_dir}" in out
    assert not run_dir.exists()


def test_yaml_config_and_flags_combine_with_flags_winning(tmp_path, capsys):
    yaml_file = tmp_path / "slurm.yaml"
    # two nodes: a dry run where sinfo answers (the local cluster) checks the partition has them
    yaml_file.write_text("slurm:\n  nodes: 2\n  qos: low\n  extra_sbatch:\n    comment: sweep\n")
    status = slurm_main(["submit", "--task", "mlsum", "--model", "barto", "--run-dir",
                         str(tmp_path / "run"), "--slurm-config", str(yaml_file), "--qos", "high",
                         "--dry-run"])
    out = capsys.readouterr().out
    assert status == 0
    assert "#SBATCH --nodes=2" in out
    assert "#SBATCH --qos=high" in out
    assert "#SBATCH --comment=sweep" in out


def test_yaml_unknown_key_is_refused_by_name(tmp_path, capsys):
    yaml_file = tmp_path / "slurm.yaml"
    yaml_file.write_text("slurm:\n  gpus: 4\n")
    status = slurm_main(["submit", "--task", "mlsum", "--model", "barto", "--slurm-config",
                         str(yaml_file), "--dry-run"])
    assert status == 2
    assert "slurm.gpus" in capsys.readouterr().err


def test_yaml_key_given_twice_is_refused_with_both_lines(tmp_path, capsys):
    yaml_file = tmp_path / "slurm.yaml"
    yaml_file.write_text("slurm:\n  time: 60\n  nodes: 1\n  time: 120\n")
    status = slurm_main(["submit", "--task", "mlsum", "--model", "barto", "--slurm-config",
                         str(yaml_file), "--dry-run"])
    assert status == 2
    assert f"config key 'slurm.time': file {yaml_file} has it twice, on lines 2 and 4" \
        in capsys.readouterr().err


def test_submit_refuses_unknown_model_and_bad_overrides(tmp_path, capsys):
    assert slurm_main(["submit", "--task", "mlsum", "--model", "bartoo", "--dry-run"]) == 2
    assert "unknown model 'bartoo'" in capsys.readouterr().err
    # an unknown task: the flag that named it, and where a task of one's own gets its columns
    assert slurm_main(["submit", "--task", "titulares", "--model", "barto", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --task: unknown task 'titulares'; known tasks: ")
    assert err.endswith("; for a task of your own, give its data.source_column and "
                        "data.target_column (and data.train_file, data.validation_file) after "
                        "--\n")
    assert slurm_main(["submit", "--task", "mlsum", "--model", "barto", "--dry-run", "--",
                       "optim.lr=3e-5"]) == 2
    assert "dotted options" in capsys.readouterr().err


def test_a_gpu_task_keeps_every_node_gpu_visible_and_its_local_rank(tmp_path, monkeypatch):
    # DeepSpeed picks cuda:LOCAL_RANK. Narrowing CUDA_VISIBLE_DEVICES to one GPU per task while
    # LOCAL_RANK stays 1 pointed task 1 of a 2-GPU node past the only visible device.
    from seq2seq_es.engine import distributed as D
    from seq2seq_es.engine import rendezvous
    from seq2seq_es.slurm.sweep import MANIFEST_KIND, Manifest, RunPlan, train_jobs

    # The export below writes these into os.environ: set then delete each through monkeypatch,
    # so that teardown removes them again (delenv of an absent variable records nothing, and a
    # leaked RANK=3 WORLD_SIZE=4 made this worker's next in-process group wait for 4 ranks).
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "SLURM_RESTART_COUNT", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # what SLURM gave the node's tasks
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
                       "SLURM_NTASKS": "4", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
                       "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_STEP_NODELIST": "gpu[01-02]",
                       "SLURM_NTASKS_PER_NODE": "2", "SUBMITIT_EXECUTOR": "slurm",
                       "SUBMITIT_FOLDER": str(tmp_path / "submitit")}.items():
        monkeypatch.setenv(key, value)
    run = RunPlan("r", "barto", "mlsum", {}, str(tmp_path), ["--task", "mlsum"])
    manifest = Manifest(MANIFEST_KIND, "run", [run], {}, {}, str(tmp_path / "submitit"))
    config = SlurmConfig(nodes=2, gpus_per_node=2, tasks_per_node=2)
    [job] = train_jobs(manifest, config)  # what submit hands to submitit
    (tmp_path / "submitit").mkdir()
    port = rendezvous.agree_on_master_port(tmp_path / "submitit", "4242", 0, 0, 4,
                                           submission=job.submission_id)  # rank 0's
    env = job._export_distributed_env()
    assert (env.rank, env.local_rank, env.world_size, env.master_port) == (3, 1, 4, port)
    import os
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3" and os.environ["LOCAL_RANK"] == "1"
    assert D.read_env().local_rank == 1


def test_the_export_test_leaves_no_launch_variable_behind(tmp_path, monkeypatch):
    # Runs the test above inside a nested monkeypatch scope and checks what is left after it.
    import os

    before = {key: os.environ.get(key) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                   "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                                   "MASTER_PORT")}
    with pytest.MonkeyPatch.context() as inner:
        test_a_gpu_task_keeps_every_node_gpu_visible_and_its_local_rank(tmp_path, inner)
    assert {key: os.environ.get(key) for key in before} == before


# ---- what a config may not say: sbatch options the tool sets, the signal delay, the folder ----

@pytest.mark.parametrize("key, setter", [
    ("time", "--time (slurm.time_min)"),
    ("signal", "--signal-delay-s (slurm.signal_delay_s)"),
    ("nodes", "--nodes (slurm.nodes)"),
    ("ntasks_per_node", "--gpus-per-node"),
    ("ntasks", "--nodes with --gpus-per-node or --tasks-per-node"),
    ("gpus-per-node", "--gpus-per-node (slurm.gpus_per_node)"),
    ("cpus_per_task", "--cpus-per-task (slurm.cpus_per_task)"),
    ("mem", "--mem-gb (slurm.mem_gb)"),
    ("partition", "--partition (slurm.partition)"),
    ("qos", "--qos (slurm.qos)"),
    ("job-name", "--job-name (slurm.job_name)"),
    ("output", "slurm.folder"),
    ("error", "slurm.folder"),
    ("open-mode", "seq2seq-es itself (append)"),
    ("array", "--max-parallel"),
    ("requeue", "--max-requeues"),
    ("no-requeue", "--max-requeues"),
    # other spellings of the same options: submitit's names, sbatch's one-letter forms
    ("timeout_min", "--time (slurm.time_min)"),
    ("slurm_time", "--time (slurm.time_min)"),
    ("mem_gb", "--mem-gb (slurm.mem_gb)"),
    ("Time", "--time (slurm.time_min)"),
    ("t", "--time (slurm.time_min)"),
    ("N", "--nodes (slurm.nodes)"),
    ("J", "--job-name (slurm.job_name)"),
])
def test_extra_sbatch_options_the_tool_sets_are_refused_by_name(tmp_path, key, setter):
    # An extra_sbatch entry is written after the tool's own lines and wins: `time: 30` ran a
    # 30-minute job recorded as 10 minutes, `signal: USR1@60` killed it without a checkpoint.
    config = SlurmConfig.from_mapping({"time_min": 10, "extra_sbatch": {key: "30"}})
    for check in (config.check_for_submission, lambda: render_sbatch(config, tmp_path / "slurm")):
        with pytest.raises(ConfigError) as info:
            check()
        assert info.value.key == f"slurm.extra_sbatch.{key}"
        assert f"{key} is set by " in str(info.value) and setter in str(info.value)
    assert not (tmp_path / "slurm").exists()


@pytest.mark.parametrize("key", ["mail-type", "mail_user", "exclusive", "comment", "dependency",
                                 "wckey", "gres", "gpus-per-task", "nodelist", "n-tasks", "Time2",
                                 "time_min", "begin", "hold"])
def test_other_extra_sbatch_options_are_passed_on(tmp_path, key):
    config = SlurmConfig(extra_sbatch={key: "x"})
    config.check_for_submission()
    # as sbatch spells it: hyphens, and lowercase (Time2 rendered --Time2, which sbatch has not)
    assert f"#SBATCH --{key.replace('_', '-').lower()}=x" in render_sbatch(config, tmp_path)


def test_a_manifest_with_refused_settings_can_still_be_read_for_its_status(tmp_path):
    # validate() runs when `status` reads a manifest's settings (Manifest.tasks_per_job); one
    # written before the submission checks existed must still get its status.
    from seq2seq_es.slurm.sweep import MANIFEST_KIND, Manifest

    settings = {**SlurmConfig(nodes=2).to_dict(), "time_min": 1, "signal_delay_s": 900,
                "extra_sbatch": {"time": "30"}}
    manifest = Manifest(MANIFEST_KIND, "run", [], {}, settings, str(tmp_path / "slurm"))
    assert manifest.tasks_per_job == 2


@pytest.mark.parametrize("time_min, delay", [(10, 900), (10, 600), (1, 30), (1, 40), (1, 0),
                                             (4, 200), (10, 540), (60, 3541)])
def test_a_signal_delay_that_leaves_too_little_time_to_train_is_refused(tmp_path, time_min, delay):
    # `--time 10 --signal-delay-s 900` was accepted; `--time 1 --signal-delay-s 30` got the
    # warning at start-up and never trained.
    config = SlurmConfig(time_min=time_min, signal_delay_s=delay)
    for check in (config.check_for_submission, lambda: render_sbatch(config, tmp_path)):
        with pytest.raises(ConfigError) as info:
            check()
        assert info.value.key == "slurm.signal_delay_s"
        assert "slurm.time_min" in str(info.value) and "--signal-delay-s" in str(info.value)
    if delay >= time_min * 60:
        assert "not shorter than the time limit" in str(info.value)
    else:
        assert "must be shorter than the limit" in str(info.value)


@pytest.mark.parametrize("time_min, delay", [(6, 120), (60, 120), (3, 30), (2, 0), (4, 60),
                                             (60, 1740), (90, 300), (5, 120), (2, 40),
                                             (10, 539)])
def test_a_signal_delay_the_job_starts_before_is_accepted(tmp_path, time_min, delay):
    config = SlurmConfig(time_min=time_min, signal_delay_s=delay)
    config.check_for_submission()
    assert f"#SBATCH --signal=USR2@{delay}" in render_sbatch(config, tmp_path)


def test_the_refusal_says_what_would_do():
    with pytest.raises(ConfigError) as info:
        SlurmConfig(time_min=10, signal_delay_s=560).check_for_submission()
    assert "use --signal-delay-s 539 or less, or --time 11 or more" in str(info.value)
    with pytest.raises(ConfigError) as info:  # no delay fits a 1-minute limit
        SlurmConfig(time_min=1, signal_delay_s=30).check_for_submission()
    assert "use --time 2 or more" in str(info.value)
    SlurmConfig(time_min=10, signal_delay_s=539).check_for_submission()


def _unwritable_folder() -> str:
    import os

    if not os.path.isdir("/proc/sys") or os.access("/proc/sys", os.W_OK):
        pytest.skip("needs /proc/sys, read-only even for root")
    return "/proc/sys/nope"


@pytest.mark.parametrize("where, says", [
    ("file", "is a file; expected a folder"),
    ("under_file", "is a file, so"),
    ("unwritable", "/proc/sys is not writable, so /proc/sys/nope cannot be created there"),
])
def test_an_unusable_submitit_folder_is_refused_by_key(tmp_path, where, says):
    # It ended in a 40-line NotADirectoryError / FileNotFoundError traceback from submitit.
    from seq2seq_es.slurm import make_executor

    (tmp_path / "a_file").write_text("x")
    folder = {"file": str(tmp_path / "a_file"), "under_file": str(tmp_path / "a_file" / "slurm"),
              "unwritable": _unwritable_folder() if where == "unwritable" else ""}[where]
    config = SlurmConfig(folder=folder)
    for check in (config.check_for_submission, lambda: render_sbatch(config, folder),
                  lambda: make_executor(config, folder)):
        with pytest.raises(ConfigError) as info:
            check()
        assert info.value.key == "slurm.folder"
        assert says in str(info.value)


def test_a_read_only_parent_is_refused(tmp_path, monkeypatch):
    # Root passes os.access on a 0o500 folder (CI runs as root): the folder is made read-only
    # for everyone else, and os.access answers as it would for another user.
    from seq2seq_es.slurm import config as slurm_config

    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    real_access = slurm_config.os.access
    monkeypatch.setattr(slurm_config.os, "access", lambda path, mode: False
                        if Path(path) == parent else real_access(path, mode))
    try:
        with pytest.raises(ConfigError) as info:
            SlurmConfig(folder=str(parent / "slurm")).check_for_submission()
        assert info.value.key == "slurm.folder" and "is not writable" in str(info.value)
    finally:
        parent.chmod(0o700)


def test_the_executor_makes_its_folder_and_names_the_key_when_it_cannot(tmp_path, monkeypatch):
    # What os.access lets through (root passes it almost everywhere) still fails as mkdir does,
    # before submitit: by the key, not by a traceback at submission.
    from seq2seq_es.slurm import config as slurm_config

    folder = _unwritable_folder()
    monkeypatch.setattr(slurm_config.os, "access", lambda *args: True)
    with pytest.raises(ConfigError) as info:
        slurm_config.make_executor(SlurmConfig(), folder)
    assert info.value.key == "slurm.folder"
    assert f"cannot create the folder {folder}" in str(info.value)
    made = slurm_config.create_submitit_folder(tmp_path / "a" / "b")
    assert made.is_dir()
