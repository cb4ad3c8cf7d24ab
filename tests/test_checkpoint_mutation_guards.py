"""Fast guards from a mutation audit of engine/checkpoint.py and run_files.py: each test names
the bug (a mutant) it catches, against files on disk or a plain rule written here."""

import json
import pathlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from seq2seq_es import run_files
from seq2seq_es.engine import checkpoint as C
from seq2seq_es.engine import distributed as D
from seq2seq_es.engine.checkpoint import Checkpointer, TrainState
from seq2seq_es.errors import ConfigError


class _Engine:
    """DeepSpeed's save_checkpoint as the Checkpointer sees it: a folder named by the tag."""

    def save_checkpoint(self, root, tag, save_latest):
        (Path(root) / tag).mkdir(parents=True)
        (Path(root) / tag / "weights.pt").write_text("w")


def _ckpt(root, keep_last):
    return Checkpointer(root, D.read_env({}), keep_last=keep_last)


def _steps(root):
    return sorted(int(p.name[5:]) for p in Path(root).glob("step_*"))


@pytest.mark.parametrize("keep_last", [1, 2, 3])
def test_rotation_keeps_exactly_keep_last_newest(tmp_path, keep_last):
    # bug: keep_last off by one (one checkpoint too many or too few kept)
    ckpt = _ckpt(tmp_path, keep_last)
    for step in range(1, 7):
        ckpt.save(_Engine(), TrainState(step=step))
    assert _steps(tmp_path) == list(range(7 - keep_last, 7))


def test_rotation_keeps_the_best_besides_keep_last(tmp_path):
    # bug: the best checkpoint not protected from rotation (keep_last > 1)
    ckpt = _ckpt(tmp_path, 2)
    best = {"step": 2, "metric": "rougeL", "value": 1.0}
    for step in range(1, 7):
        ckpt.save(_Engine(), TrainState(step=step, best=best if step >= 2 else None))
    assert _steps(tmp_path) == [2, 5, 6]
    assert json.loads((tmp_path / "best.json").read_text())["checkpoint"] == "step_00000002"


def test_best_json_written_only_when_the_saved_step_is_the_best(tmp_path):
    # bug: best.json rewritten at every save (naming a step that is not the best) or never
    ckpt = _ckpt(tmp_path, 5)
    ckpt.save(_Engine(), TrainState(step=1))
    assert not (tmp_path / "best.json").exists()
    best = {"step": 2, "metric": "rougeL", "value": 1.0}
    ckpt.save(_Engine(), TrainState(step=2, best=best))
    (tmp_path / "best.json").write_text(json.dumps({"step": 99}))  # marker: must stay
    ckpt.save(_Engine(), TrainState(step=3, best=best))
    assert json.loads((tmp_path / "best.json").read_text()) == {"step": 99}


def test_the_folder_is_complete_before_it_gets_its_step_name(tmp_path, monkeypatch):
    # bug: trainer_state.json / RNG written after the rename (a step_N folder that is incomplete)
    seen = []
    real_rename = pathlib.Path.rename

    def rename(self, target):
        if Path(target).name.startswith("step_"):
            seen.append((Path(self).name, sorted(p.name for p in Path(self).iterdir()),
                         sorted(p.name for p in (Path(self) / "rng").iterdir())))
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", rename)
    _ckpt(tmp_path, 2).save(_Engine(), TrainState(step=4))
    assert seen == [(".tmp-step_00000004", ["rng", "trainer_state.json", "weights.pt"],
                     ["rank_0.pt"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004"]


def test_saving_a_step_again_replaces_it_with_the_new_state(tmp_path):
    # bug: an existing step_N kept (the new save dropped) or the new folder lost
    ckpt = _ckpt(tmp_path, 2)
    ckpt.save(_Engine(), TrainState(step=3, epoch=0))
    ckpt.save(_Engine(), TrainState(step=3, epoch=7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003"]
    assert json.loads((tmp_path / "step_00000003" / "trainer_state.json").read_text())["epoch"] == 7


def test_latest_is_the_highest_complete_step_in_any_creation_order(tmp_path):
    # bug: newest chosen by creation/listing order or by an incomplete folder
    for step in (10, 200, 9, 30):
        (tmp_path / f"step_{step:08d}").mkdir()
        (tmp_path / f"step_{step:08d}" / "trainer_state.json").write_text("{}")
    (tmp_path / "step_00000300").mkdir()                       # incomplete
    (tmp_path / ".tmp-step_00000400").mkdir()                  # half written
    (tmp_path / ".tmp-step_00000400" / "trainer_state.json").write_text("{}")
    (tmp_path / "step_00000500").write_text("a file, not a folder")
    ckpt = _ckpt(tmp_path, 2)
    assert ckpt.latest() == tmp_path / "step_00000200"
    assert [p.name for p in ckpt.complete()] == [f"step_{s:08d}" for s in (9, 10, 30, 200)]
    assert ckpt.has(30) and not ckpt.has(300) and not ckpt.has(400)
    assert run_files.complete_checkpoints(tmp_path / "missing") == []


def test_resume_point_rules(tmp_path):
    # bug: resume none/auto/must/PATH pick or refuse the wrong checkpoint
    root = tmp_path / "run" / "checkpoints"
    ckpt = _ckpt(root, 3)
    assert ckpt.resume_point("none") is None and ckpt.resume_point("auto") is None
    with pytest.raises(ConfigError):
        ckpt.resume_point("must")
    ckpt.save(_Engine(), TrainState(step=1))
    ckpt.save(_Engine(), TrainState(step=2))
    assert ckpt.resume_point("auto") == root / "step_00000002"
    assert ckpt.resume_point("must") == root / "step_00000002"
    assert ckpt.resume_point(str(root / "step_00000001")) == root / "step_00000001"
    with pytest.raises(ConfigError, match="already holds"):
        ckpt.resume_point("none")
    (tmp_path / "run" / "DONE").write_text("")
    with pytest.raises(ConfigError, match="finished run"):
        ckpt.resume_point("none")
    (root / "step_00000009").mkdir()
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        ckpt.resume_point(str(root / "step_00000009"))


def test_rng_state_round_trips_every_generator():
    # bug: one generator (python, numpy, torch) not saved or not restored
    state = C._rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(1)   # move every stream on
    C._set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_load_restores_the_rng_this_rank_saved(tmp_path, monkeypatch):
    # bug: load does not restore the RNG (or reads another rank's file): resume not exact
    monkeypatch.setattr(C, "_deepspeed_load", lambda *a, **k: None)
    ckpt = _ckpt(tmp_path, 2)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    ckpt.save(_Engine(), TrainState(step=1, epoch=2, step_in_epoch=3))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = ckpt.load(object(), ckpt.path(1))
    assert (state.step, state.epoch, state.step_in_epoch) == (1, 2, 3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_trainer_state_round_trips_and_old_states_get_the_world_size():
    # bug: a field dropped on save/read, or an older state read with a wrong rank count
    state = TrainState(step=5, epoch=1, step_in_epoch=2, world_size=4,
                       data_layout={"train.seed": 1}, best={"step": 4, "value": 1.0},
                       evals_without_best=2, loss_window=[1, 2, 3], run={"a": 1},
                       storage={"dist.zero_stage": 2})
    assert TrainState.from_json(state.to_json(), 1) == state
    assert TrainState.from_json('{"step": 3}', 8).world_size == 8
    old = TrainState.from_json('{"step": 3, "world_size": 2, "data_layout": '
                               '{"train.batch_size x train.grad_accum": 6}}', 1)
    assert old.data_layout == {"train.batch_size x train.grad_accum x ranks": 12}


def test_same_run_check_compares_every_key(tmp_path):
    # bug: the run comparison ignores a key (another model's or task's checkpoint accepted)
    run = {"data.task": "mlsum", "model.name": "bart", "data.metrics": "rouge"}
    C.check_same_run(tmp_path, run, dict(run))
    for key in run:
        with pytest.raises(ConfigError, match="another run"):
            C.check_same_run(tmp_path, run, {**run, key: "other"})
    with pytest.raises(ConfigError):
        C.check_same_run(tmp_path, run, {**run, "data.source_column": "x"})


@pytest.mark.parametrize("saved,current,ok", [
    ((1, "bf16"), (2, "bf16"), True), ((2, "fp32"), (1, "fp32"), True),
    ((0, "fp32"), (0, "bf16"), True), ((0, "fp32"), (0, "fp16"), False),
    ((0, "bf16"), (2, "bf16"), False), ((2, "bf16"), (3, "bf16"), False),
    ((3, "bf16"), (3, "bf16"), True), ((2, "bf16"), (2, "fp32"), False),
    ((3, "fp16"), (3, "bf16"), False),
])
def test_storage_check_follows_the_documented_rule(tmp_path, saved, current, ok):
    # bug: the storage check accepts a ZeRO stage/precision DeepSpeed cannot read, or refuses one
    s = {"dist.zero_stage": saved[0], "train.precision": saved[1]}
    c = {"dist.zero_stage": current[0], "train.precision": current[1]}
    if ok:
        C.check_same_storage(tmp_path, s, c)
    else:
        with pytest.raises(ConfigError, match="cannot be loaded"):
            C.check_same_storage(tmp_path, s, c)


def _write_state(path, **fields):
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(TrainState(**fields).to_json())


def test_check_resumable_refuses_another_run_or_storage(tmp_path):
    # bug: check_resumable skips the run or the storage check
    path = tmp_path / "run" / "checkpoints" / "step_00000001"
    run, storage = {"data.task": "t", "model.name": "m"}, {"dist.zero_stage": 2,
                                                           "train.precision": "bf16"}
    _write_state(path, step=1, run=run, storage=storage)
    ckpt = _ckpt(path.parent, 2)
    assert ckpt.check_resumable(path, run, storage).step == 1
    with pytest.raises(ConfigError, match="another run"):
        ckpt.check_resumable(path, {**run, "model.name": "x"}, storage)
    with pytest.raises(ConfigError, match="cannot be loaded"):
        ckpt.check_resumable(path, run, {**storage, "dist.zero_stage": 3})


def test_check_layout_refuses_any_changed_key(tmp_path):
    # bug: the layout comparison ignores a key (a resume pointing at other examples)
    layout = {"train.seed": 1, "train.batching": "fixed", "training examples": 10,
              "steps per epoch": 5, "train.batch_size x train.grad_accum x ranks": 2}
    path = tmp_path / "step_00000001"
    _write_state(path, step=1, data_layout=layout)
    ckpt = _ckpt(tmp_path, 2)
    ckpt.check_layout(path, dict(layout))
    for key in layout:
        with pytest.raises(ConfigError, match="another data layout"):
            ckpt.check_layout(path, {**layout, key: 999})


def test_repair_best_note_rewrites_a_stale_best_json(tmp_path):
    # bug: a best.json left naming an older best after a kill between rename and note
    root = tmp_path / "checkpoints"
    ckpt = _ckpt(root, 2)
    best = {"step": 2, "metric": "rougeL", "value": 5.0}
    ckpt.save(_Engine(), TrainState(step=2, best=best))
    (root / "best.json").write_text(json.dumps({"step": 1, "value": 1.0}))
    ckpt.repair_best_note(ckpt.path(2), TrainState(step=2, best=best))
    assert json.loads((root / "best.json").read_text())["checkpoint"] == "step_00000002"
    (root / "best.json").write_text(json.dumps({"step": 2, "value": 4.0}))  # same step, stale value
    ckpt.repair_best_note(ckpt.path(2), TrainState(step=2, best=best))
    assert json.loads((root / "best.json").read_text())["value"] == 5.0
    # another folder's checkpoint: this run's best.json is not touched
    other = tmp_path / "other" / "step_00000007"
    _write_state(other, step=7)
    (root / "best.json").write_text(json.dumps({"step": 1, "value": 1.0}))
    ckpt.repair_best_note(other, TrainState(step=7, best={**best, "step": 7}))
    assert json.loads((root / "best.json").read_text()) == {"step": 1, "value": 1.0}


def test_run_files_helpers(tmp_path):
    # bug: run_files helpers (run folder of a checkpoint, earlier configs, changes) misread
    assert run_files.checkpoint_run_dir(tmp_path / "R" / "checkpoints" / "step_00000001") \
        == tmp_path / "R"
    assert run_files.checkpoint_run_dir(tmp_path / "R" / "step_00000001") is None
    for step in (100, 20, 3):
        (tmp_path / run_files.earlier_config(step)).write_text("")
    (tmp_path / "config.until_step_x.yaml").write_text("")
    assert run_files.earlier_configs(tmp_path) == [
        (3, "config.until_step_3.yaml"), (20, "config.until_step_20.yaml"),
        (100, "config.until_step_100.yaml")]
    assert run_files.setting_changes({"a": 1, "b": 2}, {"b": 3, "a": 1, "c": 4}) == ["b 2 -> 3"]
    assert run_files.flat_run_config({"train": {"seed": 1}, "x": 5}) == {"train.seed": 1}
    assert run_files.read_run_config(tmp_path) is None
    (tmp_path / "config.yaml").write_text("")
    assert run_files.read_run_config(tmp_path) is None
    (tmp_path / "config.yaml").write_text("- 1\n")
    with pytest.raises(ValueError):
        run_files.read_run_config(tmp_path)
    (tmp_path / "config.yaml").write_text("train: {seed: 3}\n")
    assert run_files.read_run_config(tmp_path) == {"train": {"seed": 3}}
    assert run_files.CHECKPOINT_DIR.match("step_00000012")
    assert not run_files.CHECKPOINT_DIR.match("step_00000012.old")
    assert not run_files.CHECKPOINT_DIR.match(".tmp-step_00000012")


@pytest.mark.parametrize("rank,world,saved_rank", [(0, 2, 0), (1, 2, 1), (2, 3, 0)])
def test_load_reads_this_ranks_rng_file(tmp_path, monkeypatch, rank, world, saved_rank):
    # bug: every rank restores one rank's RNG file (not rank % saved ranks)
    monkeypatch.setattr(C, "_deepspeed_load", lambda *a, **k: None)
    path = tmp_path / "step_00000001"
    _write_state(path, step=1, world_size=2, storage={"dist.zero_stage": 0})
    (path / "rng").mkdir()
    draws = {}
    for r in range(2):
        torch.manual_seed(100 + r)
        torch.save(C._rng_state(), path / "rng" / f"rank_{r}.pt")
        draws[r] = torch.rand(1).item()
    env = D.read_env({"RANK": str(rank), "WORLD_SIZE": str(world)})
    monkeypatch.setattr(D, "on_every_rank", lambda env, action, elsewhere: action())
    Checkpointer(tmp_path, env, keep_last=2).load(object(), path)
    assert torch.rand(1).item() == draws[saved_rank]
