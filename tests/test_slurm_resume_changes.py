"""`slurm resume` with train overrides after `--` and with other nodes or tasks, before sbatch (no
cluster; the real resubmission on fewer nodes: test_slurm_training): each run's arguments are
composed and checked, what changes is listed per run, and on other ranks train.grad_accum keeps
the examples of a step, which the checkpoints need."""

from __future__ import annotations

import pytest

from engine_runs import demo_files
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.config import SlurmConfig
from seq2seq_es.slurm.job import DEFAULT_ENTRY
from seq2seq_es.slurm.sweep import SWEEP_MANIFEST, load_manifest, new_manifest, plan_runs


@pytest.fixture
def sweep(tmp_path):
    """A submitted two-run sweep (train.batch_size 4 on 2 CPU ranks: 8 examples a step; ZeRO 2
    and 3), whose jobs SLURM no longer knows."""
    files = demo_files(tmp_path / "data", train_size=16)
    root = tmp_path / "sweep"
    data = ["--data.train_file", files["train"], "--data.validation_file", files["validation"],
            "--train.batch_size", "4"]
    runs = plan_runs(root, [("barto-tiny", "mlsum")], {"dist.zero_stage": ["2", "3"]}, data)
    config = SlurmConfig(nodes=1, tasks_per_node=2)
    manifest = new_manifest("sweep", runs, {"dist.zero_stage": ["2", "3"]}, config,
                            root / "slurm", DEFAULT_ENTRY, data, 1)
    manifest.submitted = True
    for run in runs:
        run.job_id = "999990"
    root.mkdir(parents=True, exist_ok=True)
    manifest.write(root / SWEEP_MANIFEST)
    return root


def _resume(sweep, *args) -> int:
    return slurm_main(["resume", str(sweep), "--dry-run", *args])


def test_fewer_ranks_get_the_accumulation_that_keeps_a_steps_examples(sweep, capsys):
    assert _resume(sweep, "--tasks-per-node", "1") == 0
    out = capsys.readouterr().out
    assert "# ranks: 2 -> 1 (1 node(s) x 1 task(s))" in out
    assert out.count("#     train.grad_accum 1 -> 2") == 2  # each run, 4 x 2 x 1 = 8
    assert load_manifest(sweep).runs[0].argv[-2:] != ["--train.grad_accum", "2"]  # a dry run


def test_a_step_that_does_not_split_over_the_new_ranks_is_refused(sweep, capsys):
    assert _resume(sweep, "--tasks-per-node", "3") == 2
    err = capsys.readouterr().err
    assert ("takes 8 examples a step, which 3 ranks cannot share evenly; choose nodes and tasks "
            "per node whose ranks divide 8") in err
    # 4 ranks share 8 examples, 2 each, not in micro-batches of 4: the micro-batch is lowered
    # (it was refused, and a sweep with a batch axis could move to no other ranks)
    assert _resume(sweep, "--tasks-per-node", "4") == 0
    out = capsys.readouterr().out
    assert out.count("#     train.batch_size 4 -> 2") == 2 and "grad_accum" not in out
    # a micro-batch given that does not divide the share is refused by its own key
    assert _resume(sweep, "--tasks-per-node", "4", "--", "--train.batch_size", "4") == 2
    assert ("'train.batch_size': run barto-tiny__mlsum__zero_stage-2 takes 8 examples a step, "
            "2 on each of 4 ranks, which train.batch_size 4 does not divide; give one that "
            "divides 2") in capsys.readouterr().err
    # given alone, a micro-batch gets the accumulation that keeps the step (it was refused
    # naming train.grad_accum, which the user had not given)
    assert _resume(sweep, "--tasks-per-node", "1", "--", "--train.batch_size", "2") == 0
    out = capsys.readouterr().out
    assert out.count("#     train.grad_accum 1 -> 4") == 2
    # given explicitly, a step size the checkpoints cannot resume is refused naming the value
    assert _resume(sweep, "--tasks-per-node", "1", "--", "--train.grad_accum", "3") == 2
    assert "on 1 ranks train.batch_size x train.grad_accum must be 8, not 12" in \
        capsys.readouterr().err
    # a smaller micro-batch with more accumulation (the out-of-memory advice) is the same step
    assert _resume(sweep, "--tasks-per-node", "1", "--", "--train.batch_size", "2",
                   "--train.grad_accum", "4") == 0
    out = capsys.readouterr().out
    assert "#     train.batch_size 4 -> 2" in out and "#     train.grad_accum 1 -> 4" in out


def test_train_overrides_replace_the_runs_own_and_are_checked(sweep, capsys):
    assert _resume(sweep, "--", "--optim.lr", "1e-4", "--train.max_steps", "30") == 0
    out = capsys.readouterr().out
    assert out.count("#     optim.lr 5e-05 -> 0.0001") == 2
    assert out.count("#     train.max_steps 0 -> 30") == 2
    assert "# ranks" not in out and "grad_accum" not in out
    assert _resume(sweep, "--", "--optim.lrr", "1e-4") == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert _resume(sweep, "--", "--train.output_dir", "elsewhere") == 2
    assert "keeps its train.output_dir when resumed" in capsys.readouterr().err
    assert _resume(sweep, "--", "--data.train_file", "missing.jsonl") == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err


def test_a_new_step_size_on_the_same_ranks_is_refused_for_a_run_with_a_checkpoint(sweep, capsys):
    # The job would be refused by the checkpoint's data layout after waiting in the queue.
    runs = load_manifest(sweep).runs
    state = sweep / runs[0].name / "checkpoints" / "step_00000002" / "trainer_state.json"
    state.parent.mkdir(parents=True)
    state.write_text("{}")
    assert _resume(sweep, "--", "--train.batch_size", "2", "--train.grad_accum", "1") == 2
    err = capsys.readouterr().err
    assert f"run {runs[0].name} takes 8 examples a step" in err
    assert "must be 4, not 2" in err and "a new step size is a new run" in err
    # the same step in smaller micro-batches resumes, given whole or by its micro-batch alone
    assert _resume(sweep, "--", "--train.batch_size", "2", "--train.grad_accum", "2") == 0
    capsys.readouterr()
    assert _resume(sweep, "--", "--train.batch_size", "2") == 0
    assert "#     train.grad_accum 1 -> 2" in capsys.readouterr().out
    # a run without checkpoints starts afresh at any step size
    (sweep / runs[0].name / "checkpoints").rename(sweep / "elsewhere")
    assert _resume(sweep, "--", "--train.batch_size", "2", "--train.grad_accum", "1") == 0


def test_a_resume_says_the_sbatch_options_it_carries_and_drops_one_given_bare(sweep, capsys):
    # A dependency of the first submission that can never be met came back with every resume,
    # unsaid, and no option dropped it.
    manifest = load_manifest(sweep)
    manifest.slurm["extra_sbatch"] = {"dependency": "afterok:393", "comment": "first"}
    manifest.write(sweep / SWEEP_MANIFEST)
    assert _resume(sweep) == 0
    out = capsys.readouterr().out
    assert ("# sbatch options carried over: --sbatch dependency=afterok:393 --sbatch "
            "comment=first (--sbatch KEY= drops one)") in out
    assert _resume(sweep, "--sbatch", "dependency=") == 0
    out = capsys.readouterr().out
    assert "# sbatch options carried over: --sbatch comment=first" in out
    assert "dependency" not in out


def test_train_overrides_are_said_to_go_to_the_unfinished_runs_only_once_taken(sweep, capsys):
    runs = load_manifest(sweep).runs
    (sweep / runs[1].name / "DONE").parent.mkdir(parents=True, exist_ok=True)
    (sweep / runs[1].name / "DONE").write_text('{"step": 4}')
    assert _resume(sweep, "--", "--dist.zero_stage", "3") == 2
    err = capsys.readouterr().err
    assert "is an axis of the sweep's grid" in err and "go to the 1 run(s)" not in err
    assert _resume(sweep, "--", "--optim.lr", "1e-4") == 0
    assert "note: the train arguments after -- go to the 1 run(s) resumed here" in \
        capsys.readouterr().err


def test_a_grid_axis_is_not_changed_on_resume(sweep, capsys):
    # Each run is its grid point: resumed at another value, collect then left it out (and said
    # "No results yet" of a sweep whose runs had all finished).
    assert _resume(sweep, "--", "--dist.zero_stage", "1") == 2
    assert ("'dist.zero_stage': is an axis of the sweep's grid: run "
            "barto-tiny__mlsum__zero_stage-2 is the point dist.zero_stage=2, and another value "
            "is another point; submit a new sweep for it") in capsys.readouterr().err


def test_a_grid_axis_given_at_the_runs_own_value_is_no_change(sweep):
    from seq2seq_es.slurm.sweep import resumed_argv

    run = load_manifest(sweep).runs[0]
    assert run.grid_point == {"dist.zero_stage": "2"}
    argv, changes = resumed_argv(run, ["--dist.zero_stage", "2"], (2, 2))
    stage = argv.index("--dist.zero_stage")
    assert argv[stage + 1] == "2" and changes == []  # no change, so nothing listed


def test_a_stopped_run_resumes_while_the_rest_of_its_sweep_trains(sweep, capsys, monkeypatch):
    from seq2seq_es.slurm import cli as slurm_cli
    from seq2seq_es.slurm.monitor import SlurmState

    manifest = load_manifest(sweep)
    first, second = manifest.runs
    first.job_id, second.job_id = "41_0", "41_1"
    manifest.write(sweep / SWEEP_MANIFEST)
    monkeypatch.setattr(slurm_cli, "query_slurm",
                        lambda job_ids: {"41_0": SlurmState("RUNNING")})  # 41_1 was cancelled
    assert _resume(sweep) == 0
    out = capsys.readouterr().out
    assert (f"# 1 run(s) left as they are, their jobs still going:\n#   {first.name} (job 41_0, "
            f"RUNNING)\n# 1 of 2 run(s) to resume:\n#   {second.name} (last job 41_1)") in out
    # the sweep keeps one set of ranks: not changed while a run still trains on the old ones
    assert _resume(sweep, "--tasks-per-node", "1") == 2
    assert "1 run(s) of" in capsys.readouterr().err
    # every unfinished run still going: refused, as before
    monkeypatch.setattr(slurm_cli, "query_slurm", lambda job_ids: {
        "41_0": SlurmState("RUNNING"), "41_1": SlurmState("PENDING")})
    assert _resume(sweep) == 2
    assert f"run {first.name} still has job 41_0 (RUNNING) (and 1 more run(s))" in \
        capsys.readouterr().err


def test_the_out_of_memory_advice_resumes_a_run_of_a_batch_axis(tmp_path):
    # The batch axis is the step's size, which a smaller micro-batch with more accumulation
    # keeps: refused as "another point", the run that ran out of memory could not be resumed.
    from seq2seq_es.slurm.sweep import resumed_argv

    files = demo_files(tmp_path / "data", train_size=16)
    data = ["--data.train_file", files["train"], "--data.validation_file", files["validation"]]
    run, = plan_runs(tmp_path / "sweep", [("barto-tiny", "mlsum")],
                     {"train.batch_size": ["8"]}, data, world_size=2)
    assert run.grid_point == {"train.batch_size": "8"}  # 4 x 1 on each of 2 ranks
    argv, changes = resumed_argv(run, ["--train.batch_size", "2", "--train.grad_accum", "2"],
                                 (2, 2))
    assert changes == ["train.batch_size 4 -> 2", "train.grad_accum 1 -> 2"]
    assert argv[argv.index("--train.batch_size") + 1] == "2"
