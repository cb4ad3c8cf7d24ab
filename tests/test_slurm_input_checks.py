"""Bad input to `seq2seq-es slurm submit|sweep` that used to make a silent wrong run or argparse's
bare `unrecognized arguments` (found by fuzzing; no cluster: --dry-run, --no-data-check):

1. a grid axis whose key every run gets again later in its arguments (after --, --data-root);
2. a grid axis (or an override after --) on a key the planner sets for every run itself;
3. `--sbatch WORD` without a value where WORD is no sbatch flag;
4. train options before `--`;
5. an --entry that is not MODULE:FUNCTION, or whose module this interpreter cannot find.
Each is refused in one line naming the option or key, before anything is written.
"""

from __future__ import annotations

import pytest

from seq2seq_es.errors import ConfigError
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.config import SlurmConfig
from seq2seq_es.slurm.options import split_overrides, with_sbatch_options
from seq2seq_es.slurm.sweep import parse_grid, plan_sweep
from test_slurm_options_wording import _refused  # the one-line refusal, checked alike


def _sweep(tmp_path, *options):
    return ["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--pair", "barto:mlsum", "--dry-run",
            "--no-data-check", *options]


def _submit(tmp_path, *options):
    return ["submit", "--task", "mlsum", "--model", "barto", "--run-dir", str(tmp_path / "run"),
            "--dry-run", "--no-data-check", *options]


# ---- 1. a grid axis set again after -- -------------------------------------------------------

@pytest.mark.parametrize("options, key, source, fix", [
    # one run, named lr-1e-4, trained at 5e-5 and the other dropped as its duplicate
    (["--grid", "optim.lr=1e-4,2e-4", "--", "--optim.lr", "5e-5"], "optim.lr", "--grid has",
     "or the axis"),
    (["--grid", "train.seed=1,2", "--", "--train.seed=3"], "train.seed", "--grid has",
     "or the axis"),
    # the paper's grid has a train.epochs axis: every run trained 1 epoch
    (["--", "--train.epochs", "1"], "train.epochs", "the paper's grid for barto on mlsum has",
     "or give --grid without it (or --no-grid)"),
])
def test_a_grid_axis_set_again_after_the_double_dash_is_refused(tmp_path, capsys, options, key,
                                                                source, fix):
    err = _refused(capsys, _sweep(tmp_path, *options))
    assert err.startswith(f"error: config key '{key}': {source} the axis {key}, but --{key} after "
                          "-- comes after the grid point")
    assert err.endswith(f"drop --{key} after --, {fix}")
    assert not (tmp_path / "sweep").exists()


def test_seeds_with_a_seed_after_the_double_dash_stays_refused(tmp_path, capsys):
    err = _refused(capsys, _sweep(tmp_path, "--seeds", "1,2", "--", "--train.seed", "3"))
    assert err.startswith("error: argument --seeds: --train.seed after -- would train every run "
                          "with one seed")


def test_a_grid_axis_that_data_root_sets_is_refused(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "mlsum").mkdir(parents=True)
    (root / "mlsum" / "train.jsonl").write_text("{}\n")
    err = _refused(capsys, _sweep(tmp_path, "--grid", "data.train_file=a.jsonl,b.jsonl",
                                  "--data-root", str(root)))
    assert err.startswith("error: config key 'data.train_file': --grid has the axis "
                          f"data.train_file, but --data-root {root} sets data.train_file")


def test_a_config_file_key_on_the_grid_is_the_grid_points(tmp_path):
    """The file is below every dotted key, so each run gets its grid point's value: no refusal."""
    config = tmp_path / "run.yaml"
    config.write_text("optim:\n  lr: 5.0e-5\ntrain:\n  epochs: 2\n")
    plan = plan_sweep(tmp_path / "sweep", [("barto", "mlsum")], {"optim.lr": ["1e-4", "2e-4"]},
                      ["--config", str(config)])
    assert [run.grid_point["optim.lr"] for run in plan.runs] == ["1e-4", "2e-4"]
    configs = [plan.configs[run.name] for run in plan.runs]  # as `train` composes them
    assert [cfg.optim.lr for cfg in configs] == [1e-4, 2e-4]
    assert [cfg.train.epochs for cfg in configs] == [2, 2]  # the file's other keys
    assert plan.dropped == []


# ---- 2. keys the planner sets itself ---------------------------------------------------------

@pytest.mark.parametrize("axis, key, says", [
    # one run, named output_dir-a, trained in the folder b; the other dropped as its duplicate
    ("train.output_dir=a,b", "train.output_dir", "the planner sets it: each run trains in its "
                                                 "own folder"),
    ("train.run_group=a,b", "train.run_group", "the planner gives a sweep's runs one W&B group"),
    ("train.resume=auto,never", "train.resume", "the planner sets it to auto"),
])
def test_a_grid_axis_on_a_key_the_planner_sets_is_refused(tmp_path, capsys, axis, key, says):
    err = _refused(capsys, _sweep(tmp_path, "--grid", axis))
    assert err.startswith(f"error: argument --grid {key}: cannot be a grid axis: {says}")
    with pytest.raises(ConfigError) as info:  # also for a grid given to the planner itself
        plan_sweep(tmp_path / "sweep", [("barto", "mlsum")], {key: ["a", "b"]}, [])
    assert info.value.key == f"--grid {key}"
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("command", [_submit, _sweep])
@pytest.mark.parametrize("key, value", [("train.output_dir", "elsewhere"),
                                        ("train.resume", "never")])
def test_an_override_of_a_key_the_planner_sets_is_refused(tmp_path, capsys, command, key, value):
    # The job trained in another folder than the run folder status reads (or restarted from
    # scratch after each requeue).
    err = _refused(capsys, command(tmp_path, "--", f"--{key}", value))
    assert err.startswith(f"error: config key '{key}': the planner sets it")
    assert f"drop --{key} after --" in err


def test_a_run_group_after_the_double_dash_is_still_the_users_choice(tmp_path, capsys):
    assert slurm_main(_sweep(tmp_path, "--grid", "optim.lr=1e-4", "--",
                             "--train.run_group", "mine")) == 0
    plan = plan_sweep(tmp_path / "sweep", [("barto", "mlsum")], {"optim.lr": ["1e-4"]},
                      ["--train.run_group", "mine"])
    assert plan.configs[plan.runs[0].name].train.run_group == "mine"


def test_parse_grid_refuses_planner_keys():
    with pytest.raises(ConfigError) as info:
        parse_grid(["optim.lr=1e-4", "train.output_dir=a,b"])
    assert info.value.key == "--grid train.output_dir"


# ---- 3. --sbatch without a value -------------------------------------------------------------

@pytest.mark.parametrize("spec", ["foo", "mail-type", "--comment"])
def test_a_bare_sbatch_word_that_is_no_flag_is_refused(tmp_path, capsys, spec):
    # `--sbatch foo` rendered `#SBATCH --foo`.
    err = _refused(capsys, _submit(tmp_path, f"--sbatch={spec}"))
    assert err.startswith(f"error: argument --sbatch: '{spec}' has no value: give OPTION=VALUE")


@pytest.mark.parametrize("spec", ["exclusive", "hold", "overcommit", "contiguous", "--exclusive",
                                  "no_kill"])
def test_sbatch_flags_are_given_bare(tmp_path, capsys, spec):
    assert slurm_main(_submit(tmp_path, f"--sbatch={spec}", "--sbatch", "mail-type=END")) == 0
    out = capsys.readouterr().out
    assert f"#SBATCH --{spec.lstrip('-').replace('_', '-')}\n" in out
    assert "#SBATCH --mail-type=END\n" in out


@pytest.mark.parametrize("spec, says", [
    ("H", "H is a one-letter form, which the script cannot hold (submitit writes every option as "
          "--OPTION); give its long name, hold"),
    ("d=afterok:1", "give its long name, dependency"),
    ("test-only", "test-only cannot be given: sbatch then only estimates"),
    ("wait", "wait cannot be given: sbatch then waits until the job has ended"),
])
def test_sbatch_options_submitit_cannot_write_or_sbatch_would_not_submit(tmp_path, capsys, spec,
                                                                           says):
    err = _refused(capsys, _submit(tmp_path, "--sbatch", spec))
    assert err.startswith("error: argument --sbatch: ") and says in err


def test_sbatch_options_are_one_by_their_sbatch_spelling_and_a_bare_equals_drops_one():
    # mail_type and Mail-Type were stored as typed: two #SBATCH lines of one option (and
    # `--Mail-Type`, which sbatch does not know); a resume could not drop a carried dependency.
    merged = with_sbatch_options({"mail_type": "END", "dependency": "afterok:393"},
                                 ["Mail_Type=FAIL", "--mail-type=ALL", "dependency="])
    assert merged == {"mail-type": "ALL"}
    assert with_sbatch_options({"comment": "x"}, ["COMMENT=y"]) == {"comment": "y"}


def test_a_slurm_config_files_sbatch_keys_are_spelt_as_sbatch_spells_them(tmp_path, capsys):
    # A file's keys were used as typed: Mail_Type rendered `#SBATCH --Mail-Type`, which sbatch
    # does not know, and mail_type beside mail-type wrote the option twice.
    settings = tmp_path / "slurm.yaml"
    settings.write_text("slurm:\n  extra_sbatch:\n    Mail_Type: END\n")
    assert slurm_main(_submit(tmp_path, "--slurm-config", str(settings))) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --mail-type=END" in script and "Mail" not in script
    settings.write_text("slurm:\n  extra_sbatch:\n    mail_type: END\n    mail-type: ALL\n")
    err = _refused(capsys, _submit(tmp_path, "--slurm-config", str(settings)))
    assert err == ("error: config key 'slurm.extra_sbatch.mail-type': is the sbatch option "
                   f"mail-type, which 'mail_type' sets too: keep one (in {settings}, line 2)")


def test_a_slurm_config_file_may_set_another_flag_and_no_one_letter_form():
    # A site plugin's flag has its way through the file (True renders bare).
    assert with_sbatch_options({"site-flag": True}, ["exclusive"]) == {"site-flag": True,
                                                                       "exclusive": True}
    SlurmConfig(extra_sbatch={"site-flag": True}).check_for_submission()
    with pytest.raises(ConfigError) as info:
        SlurmConfig(extra_sbatch={"d": "afterok:1"}).check_for_submission()
    assert info.value.key == "slurm.extra_sbatch.d" and "dependency" in str(info.value)


# ---- 4. train options before -- --------------------------------------------------------------

def test_train_options_before_the_double_dash_say_where_they_go(tmp_path, capsys):
    err = _refused(capsys, _submit(tmp_path, "--train.max_steps", "3"))
    assert err == ("error: argument --train.max_steps: train options go after `--`, behind the "
                   "command's own options: ... -- --train.max_steps 3")
    err = _refused(capsys, _sweep(tmp_path, "--optim.lr=1e-4", "--grid", "train.epochs=1", "--",
                                  "--train.max_steps", "3"))
    assert err == ("error: argument --optim.lr: train options go after `--`, behind the "
                   "command's own options: ... -- --optim.lr=1e-4 --train.max_steps 3")
    err = _refused(capsys, _submit(tmp_path, "--config", "my run.yaml"))
    assert err.endswith("... -- --config 'my run.yaml'")


def test_split_overrides_keeps_what_is_not_a_train_option():
    argv = ["--grid", "optim.lr=1e-4", "--python", "./venv/bin/python", "--sbatch",
            "comment=a.b", "--", "--optim.lr", "1e-4"]
    assert split_overrides(argv) == (argv[:6], ["--optim.lr", "1e-4"])
    assert split_overrides(["--nodes", "2"]) == (["--nodes", "2"], [])


# ---- 5. --entry ------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["nomodule", "seq2seq_es.cli", ":main", "seq2seq_es.cli:",
                                   "a b:main", "seq2seq_es.cli:main.x"])
def test_an_entry_not_shaped_module_function_is_refused(tmp_path, capsys, entry):
    err = _refused(capsys, _submit(tmp_path, "--entry", entry))
    assert err.startswith(f"error: argument --entry: '{entry}' must look like MODULE:FUNCTION")


@pytest.mark.parametrize("entry, says", [
    ("no_such_module_xyz:main", "module 'no_such_module_xyz' of no_such_module_xyz:main cannot "
                                "be imported by "),
    ("no_such_package_xyz.sub:main", "cannot be imported by "),
    ("seq2seq_es.slurm.probe:mian", "module 'seq2seq_es.slurm.probe' has no function 'mian'"),
])
def test_an_entry_this_interpreter_cannot_find_is_refused(tmp_path, capsys, entry, says):
    for argv in (_submit(tmp_path, "--entry", entry), _sweep(tmp_path, "--entry", entry)):
        err = _refused(capsys, argv)
        assert err.startswith("error: argument --entry: ") and says in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_an_entry_for_another_interpreter_is_left_to_the_nodes(tmp_path, capsys):
    # With --python the nodes run an interpreter that may have modules this one lacks.
    assert slurm_main(_submit(tmp_path, "--entry", "nodes_only_module:main", "--python",
                              "/opt/py/bin/python")) == 0
    assert slurm_main(_submit(tmp_path, "--entry", "seq2seq_es.slurm.probe:main")) == 0


def test_an_entry_module_in_the_current_folder_is_found(tmp_path, capsys, monkeypatch):
    # The jobs run `python -m submitit...` in the folder sbatch is called from, which imports
    # modules from there.
    (tmp_path / "my_entry_mod.py").write_text("def main(argv):\n    return 0\n")
    monkeypatch.chdir(tmp_path)
    assert slurm_main(_submit(tmp_path, "--entry", "my_entry_mod:main")) == 0

