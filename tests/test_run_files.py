"""seq2seq_es.run_files: the readers of a run folder's checkpoints and earlier configs, and the
setting changes a resume reports."""

from __future__ import annotations

import random

import pytest

from seq2seq_es import run_files


def test_complete_checkpoints_are_listed_by_step_whatever_the_folder_order(tmp_path):
    # Unsorted, the "latest" checkpoint (the last entry) was whichever folder the file system
    # listed last: a resume or `slurm status` picked an older step.
    root = tmp_path / "checkpoints"
    steps = list(range(1, 25))
    random.Random(0).shuffle(steps)
    for step in steps:
        folder = root / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / run_files.TRAINER_STATE).write_text("{}")
    (root / "step_00000099").mkdir()                      # incomplete: no trainer_state.json
    (root / "step_7").mkdir()                             # not zero-padded to 8 digits
    (root / "step_7" / run_files.TRAINER_STATE).write_text("{}")
    (root / "step_00000050").write_text("a file")         # not a folder
    found = run_files.complete_checkpoints(root)
    assert found == [(step, root / f"step_{step:08d}") for step in range(1, 25)]
    assert run_files.complete_checkpoints(tmp_path / "missing") == []


def test_earlier_configs_are_listed_by_step(tmp_path):
    steps = [400, 7, 12000, 35, 1, 999, 50, 3, 2500, 60, 8, 100]
    for step in steps:
        (tmp_path / run_files.earlier_config(step)).write_text("train: {}\n")
    (tmp_path / "config.until_step_x.yaml").write_text("")
    (tmp_path / "config.yaml").write_text("")
    assert run_files.earlier_configs(tmp_path) == [
        (step, f"config.until_step_{step}.yaml") for step in sorted(steps)]


def test_setting_changes_name_only_keys_both_configs_hold_with_other_values():
    # A key new in this version (absent from the older config) is no change of setting: reported
    # as "None -> value", every resume after an upgrade warned of changes nobody made.
    before = {"optim.lr": 3e-5, "train.epochs": 3, "train.seed": 1}
    after = {"train.epochs": 6, "optim.lr": 3e-5, "model.lean_ce": True, "train.seed": 2}
    assert run_files.setting_changes(before, after) == ["train.epochs 3 -> 6",
                                                        "train.seed 1 -> 2"]
    assert run_files.setting_changes(before, dict(before)) == []


def test_read_run_config_empty_missing_and_malformed(tmp_path):
    assert run_files.read_run_config(tmp_path) is None
    (tmp_path / "config.yaml").write_text("")  # the engine is starting: not yet written
    assert run_files.read_run_config(tmp_path) is None
    (tmp_path / "config.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected a mapping of sections"):
        run_files.read_run_config(tmp_path)
    (tmp_path / "config.yaml").write_text("train:\n  seed: 3\nversion: 2\n")
    assert run_files.flat_run_config(run_files.read_run_config(tmp_path)) == {"train.seed": 3}
