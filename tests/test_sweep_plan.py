"""The sweep planner: per-pair paper grids (translation's own recipe), the effective-batch axis,
every run's config composed before submitting, and duplicate runs dropped with a reason."""

from __future__ import annotations

import pytest

from seq2seq_es.config import compose, parse_overrides
from seq2seq_es.errors import ConfigError
from seq2seq_es.slurm import paper_grid
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.sweep import plan_sweep, resolved_key, split_effective_batch


def _config(run):
    """The config `seq2seq-es train` composes from the run's arguments."""
    return compose(run.task, run.model, overrides=parse_overrides(run.argv[4:]))


def _sweep(tmp_path, *extra):
    return ["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--dry-run", *extra]


# The peak learning rate is what the paper's runs reached: their 40000-step warmup towards 5e-3
# ended after 5000 (BARTO) or 10000 (T5S) steps.
@pytest.mark.parametrize("model, micro, accum, steps, peak_lr",
                         [("barto", 96, 4, 5000, 5e-3 * 5000 / 40000),
                          ("t5s", 32, 12, 10000, 5e-3 * 10000 / 40000)])
def test_translation_grid_is_the_papers_recipe(tmp_path, model, micro, accum, steps, peak_lr):
    tasks = list(paper_grid.TRANSLATION_TASKS)
    plan = plan_sweep(tmp_path, [(model, task) for task in tasks], None, [])
    assert [run.task for run in plan.runs] == tasks  # one run per pair: the recipe
    for run in plan.runs:
        assert run.grid_point == {"train.batch_size": "384"}
        cfg = _config(run)
        assert cfg.optim.lr == peak_lr and cfg.train.max_steps == steps
        assert (cfg.train.batch_size, cfg.train.grad_accum) == (micro, accum)  # 384 per step
    assert plan.dropped == []


def test_the_mbert_translation_baselines_get_the_bert2bert_grid(tmp_path):
    assert paper_grid.grid_for("mbert2mbert", "wmt13-es-en") is paper_grid.PAPER_GRID
    assert paper_grid.grid_for("barto", "mlsum") is paper_grid.PAPER_GRID
    runs = plan_sweep(tmp_path, [("mbertshare", "fapesp-pt-es")], None, []).runs
    assert len(runs) == 12
    assert {_config(run).optim.lr for run in runs} == {3e-5, 5e-5}
    assert {_config(run).train.epochs for run in runs} == {3, 6}


def test_default_sweep_plans_no_duplicates(tmp_path, capsys):
    pairs = paper_grid.paper_pairs()
    plan = plan_sweep(tmp_path, pairs, None, [])
    assert plan.dropped == [] and plan.dropped_summary() == []
    # 6 models x 8 tasks, 2 mBERT pairs x 4 translation tasks and LEDO x 2 at 12 grid points;
    # BARTO and T5S x 4 translation tasks at the one recipe point
    assert len(plan.runs) == (6 * 8 + 2 * 4 + 2) * 12 + 2 * 4
    assert {resolved_key(plan.configs[run.name]) for run in plan.runs[::7]} \
        == {resolved_key(_config(run)) for run in plan.runs[::7]}  # the configs `train` composes
    assert slurm_main(_sweep(tmp_path, "--models", "t5s", "--tasks", "mlsum,wmt13-es-en")) == 0
    out = capsys.readouterr().out
    assert "dropped" not in out and "#SBATCH --array=0-12%4" in out  # 12 + the recipe


def test_a_user_axis_that_does_not_apply_is_deduplicated_and_reported(tmp_path, capsys):
    assert slurm_main(_sweep(tmp_path, "--tasks", "wmt13-es-en,wmt13-en-es", "--models", "barto",
                             "--grid", "train.epochs=3,6", "--grid", "optim.lr=1e-3,5e-3")) == 0
    out = capsys.readouterr().out
    assert "# dropped 4 duplicate runs" in out
    assert ("#   barto wmt13-es-en g3 = g1 (train.epochs does not apply: train.max_steps=5000)"
            in out)
    assert "#   barto wmt13-en-es g4 = g2 (train.epochs does not apply" in out
    assert "#SBATCH --array=0-3%4" in out
    planned = [line.strip("# ") for line in out.splitlines() if line.startswith("#   barto__")]
    assert planned == [f"barto__{task}__epochs-3_lr-{lr}" for task in ("wmt13-es-en", "wmt13-en-es")
                       for lr in ("1e-3", "5e-3")]


def test_values_of_an_axis_that_resolve_alike_are_deduplicated_with_their_value(tmp_path):
    plan = plan_sweep(tmp_path, [("barto", "sqac")], {"optim.lr": ["3e-5", "0.00003"]}, [])
    assert [run.grid_point for run in plan.runs] == [{"optim.lr": "3e-5"}]
    assert plan.dropped[0].describe() == ("barto sqac g2 = g1 (optim.lr 3e-5 and 0.00003 resolve "
                                          "to the same value (3e-05))")
    assert plan.dropped_summary()[0] == ("dropped 1 duplicate run (same resolved config as a run "
                                         "that stays):")


def test_an_axis_the_overrides_would_fix_is_refused(tmp_path):
    # The overrides come after the grid point and win: this planned one run named lr-3e-5 that
    # trained at 1e-4, and dropped the other as its duplicate.
    with pytest.raises(ConfigError) as info:
        plan_sweep(tmp_path, [("barto", "sqac")], {"optim.lr": ["3e-5", "5e-5"]},
                   ["--optim.lr", "1e-4"])
    assert info.value.key == "optim.lr"
    assert str(info.value).endswith("drop --optim.lr after --, or the axis")


def _run_groups(argv):
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--train.run_group"]


def test_every_run_of_a_sweep_is_in_the_w_and_b_group_named_for_its_folder(tmp_path):
    """A sweep's runs form one W&B group (`train.run_group`): the sweep folder's resolved name,
    before the grid point and the overrides, so a user's own group after -- wins. A label only:
    no part of a run's identity (duplicates, grid points, the checkpoint a resume accepts)."""
    from seq2seq_es.engine.checkpoint import run_identity, storage_layout
    from seq2seq_es.slurm.sweep import load_runs

    (tmp_path / "lr-sweep").mkdir()
    (tmp_path / "latest").symlink_to(tmp_path / "lr-sweep")  # the folder's name, not the link's
    pairs, grid = [("barto-tiny", "mlsum"), ("t5s-tiny", "sqac")], {"optim.lr": ["3e-5", "5e-5"]}
    plan = plan_sweep(tmp_path / "latest", pairs, grid, [])
    assert len(plan.runs) == 4 and plan.dropped == []
    for run in plan.runs:
        assert _run_groups(run.argv) == ["lr-sweep"], run.argv
        assert run.argv.index("--train.run_group") < run.argv.index("--optim.lr")
        assert plan.configs[run.name].train.run_group == _config(run).train.run_group == "lr-sweep"
    plan = plan_sweep(tmp_path / "latest", pairs, grid, ["--train.run_group", "mine"])
    for run in plan.runs:
        assert _run_groups(run.argv) == ["lr-sweep", "mine"]  # the user's comes last, and wins
        assert plan.configs[run.name].train.run_group == _config(run).train.run_group == "mine"

    one, other = (compose("mlsum", "barto-tiny", overrides={"train.run_group": group})
                  for group in ("lr-sweep", ""))
    assert resolved_key(one) == resolved_key(other)  # no distinct run to the dedup
    assert (run_identity(one), storage_layout(one)) == (run_identity(other), storage_layout(other))
    # Runs of two sweeps collected together differ in their group, yet are one grid point.
    for name, group in (("a", "sweep-a"), ("b", "sweep-b")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.yaml").write_text(
            "data: {task: mlsum}\nmodel: {name: barto-tiny}\n"
            f"train: {{run_group: {group}, seed: 1}}\n")
    assert [run.grid_point for run in load_runs([str(tmp_path / "runs")]).runs] == [
        {"run": "a"}, {"run": "b"}]


def test_grid_points_whose_folder_names_meet_are_refused(tmp_path):
    # Unsafe characters become '+', so these two values would train into one folder (the second
    # run resuming the first's checkpoints).
    with pytest.raises(ConfigError) as err:
        plan_sweep(tmp_path, [("barto-tiny", "mlsum")],
                   {"data.cache_dir": ["/scratch/a_b", "/scratch/a/b"]}, [])
    assert err.value.key == "--grid"
    assert "data.cache_dir=/scratch/a_b and data.cache_dir=/scratch/a/b" in str(err.value)
    assert "cache_dir-+scratch+a+b" in str(err.value)


@pytest.mark.parametrize("model, task, batches", [
    ("t5s", "mlsum", {"4": (4, 1), "8": (4, 2), "16": (4, 4)}),       # default micro-batch 4
    ("barto", "mlsum", {"4": (4, 1), "8": (8, 1), "16": (16, 1)}),    # default 16
    ("ledo", "eurlexsum", {"4": (2, 2), "8": (2, 4), "16": (2, 8)}),  # 2 at 16K tokens
])
def test_the_batch_axis_is_the_effective_batch(tmp_path, model, task, batches):
    runs = plan_sweep(tmp_path, [(model, task)], None, []).runs
    default = compose(task, model)
    for run in runs:
        cfg = _config(run)
        assert (cfg.train.batch_size, cfg.train.grad_accum) == batches[run.grid_point[
            "train.batch_size"]], run.name
        assert cfg.train.batch_size <= default.train.batch_size
        assert cfg.model.gradient_checkpointing == default.model.gradient_checkpointing


def test_the_effective_batch_is_split_over_ranks_and_refused_when_it_cannot_be():
    assert split_effective_batch("16", 16, world_size=2) == (8, 1)
    assert split_effective_batch("384", 32, world_size=4) == (32, 3)
    assert split_effective_batch("8", 4) == (4, 2)
    # the largest micro-batch under the default that divides a rank's share (min(48, 32) = 32
    # divided nothing: the paper's translation recipe was refused on 8 ranks)
    assert split_effective_batch("384", 32, world_size=8) == (24, 2)
    assert split_effective_batch("24", 16) == (12, 2)
    assert split_effective_batch("7", 4) == (1, 7)
    for value, default, world, says in (("6", 4, 4, "does not split evenly over the 4 ranks"),
                                        ("0", 4, 1, "positive integer"),
                                        ("many", 4, 1, "positive integer")):
        with pytest.raises(ConfigError) as info:
            split_effective_batch(value, default, world)
        assert info.value.key == "--grid train.batch_size" and says in str(info.value)


def test_the_papers_grid_on_more_ranks_than_its_batch_names_the_ranks_not_a_grid(tmp_path):
    runs = plan_sweep(tmp_path, [("t5s", "wmt13-en-es")], None, [], world_size=8).runs
    assert (_config(runs[0]).train.batch_size, _config(runs[0]).train.grad_accum) == (24, 2)
    with pytest.raises(ConfigError) as info:
        plan_sweep(tmp_path / "b", [("barto", "mlsum")], None, [], world_size=8)
    assert info.value.key == "--nodes/--gpus-per-node"
    assert info.value.reason.startswith(
        "the paper's grid for barto on mlsum has the effective batch 4 (train.batch_size 4, 8, "
        "16: what one GPU of the paper took per step), which the 8 ranks of a job cannot "
        "split; sweep it on fewer ranks a job")


def test_a_job_of_several_ranks_divides_the_batch_among_them(tmp_path):
    runs = plan_sweep(tmp_path, [("t5s", "wmt13-es-en")], None, [], world_size=4).runs
    cfg = _config(runs[0])
    assert (cfg.train.batch_size, cfg.train.grad_accum) == (32, 3)  # 32 x 3 x 4 ranks = 384


@pytest.mark.parametrize("extra, key", [
    (["--grid", "train.batch_size=4,8", "--", "--train.grad_accum", "2"], "train.grad_accum"),
    (["--grid", "train.batch_size=4,8", "--", "--train.batch_size", "2"], "train.batch_size"),
    (["--grid", "train.batch_size=4,8", "--grid", "train.grad_accum=1,2"],
     "--grid train.grad_accum"),
    (["--grid", "train.batch_size=0"], "--grid train.batch_size"),
    (["--", "--optim.lrr", "3e-5"], "optim.lrr"),
    (["--", "--train.epochs", "0"], "train.epochs"),
    (["--grid", "data.max_source_length=512,2048"], "--grid: data.max_source_length=2048"),
])
def test_bad_runs_are_refused_before_anything_is_submitted(tmp_path, capsys, extra, key):
    assert slurm_main(_sweep(tmp_path, "--pair", "barto:mlsum", *extra)) == 2
    named = f"argument {key}:" if key.startswith("--") else f"config key '{key}'"
    assert named in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_submit_refuses_a_bad_override_naming_the_key(tmp_path, capsys):
    assert slurm_main(["submit", "--task", "mlsum", "--model", "barto", "--run-dir",
                       str(tmp_path / "run"), "--dry-run", "--", "--optim.lr", "-1"]) == 2
    assert "config key 'optim.lr'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_entry_other_than_training_gets_its_own_options_unchecked(tmp_path, capsys):
    """The probe entry takes --probe.* options, which are no config keys: nothing is composed."""
    assert slurm_main(_sweep(tmp_path, "--pair", "t5s:mlsum", "--grid", "train.batch_size=8",
                             "--entry", "seq2seq_es.slurm.probe:main", "--",
                             "--probe.steps", "2")) == 0
    assert "t5s__mlsum__batch_size-8" in capsys.readouterr().out
    plan = plan_sweep(tmp_path, [("t5s", "mlsum")], {"train.batch_size": ["8"]},
                      ["--probe.steps", "2"], compose_runs=False)
    assert plan.runs[0].argv[-6:] == ["--train.batch_size", "4", "--train.grad_accum", "2",
                                      "--probe.steps", "2"]
    assert plan.configs == {}
