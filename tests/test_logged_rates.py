"""What a resumed run logs beside the loss: TensorBoard shows each step once (the points a killed
run logged after its last checkpoint are hidden, not drawn beside the resumed run's), the first
train/tokens_per_s after a resume counts only the tokens this process trained, and train/epoch
is the epochs done as a fraction."""

from __future__ import annotations

import sys
import time as real_time

import pytest

from engine_runs import demo_files
from seq2seq_es import metrics_log
from seq2seq_es.config import RunConfig
from seq2seq_es.engine import trainer as trainer_module
from seq2seq_es.engine.run_dir import RunLog
from seq2seq_es.engine.trainer import Trainer


def _cfg(out, files=None, **train) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name, cfg.data.task = "barto-tiny", "mlsum"
    if files is not None:
        cfg.data.train_file, cfg.data.validation_file = files["train"], files["validation"]
    cfg.data.max_source_length, cfg.data.max_target_length = 64, 32
    cfg.train.output_dir, cfg.train.precision = str(out), "fp32"
    cfg.train.eval_per_epoch, cfg.train.eval_at_end, cfg.train.export = False, False, False
    cfg.train.progress_bar = False
    cfg.optim.warmup_steps = 1
    cfg.gen.num_beams, cfg.gen.max_new_tokens, cfg.gen.min_new_tokens = 1, 4, 0
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def _tensorboard_view(folder) -> dict[str, list[tuple[int, float]]]:
    """train/loss as TensorBoard's app and its legacy accumulator read the whole folder."""
    from tensorboard.backend.event_processing import plugin_event_accumulator as app
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    legacy = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    legacy.Reload()
    shown = app.EventAccumulator(str(folder), size_guidance={"tensors": 0})
    shown.Reload()
    return {"legacy": [(e.step, round(e.value, 6)) for e in legacy.Scalars("train/loss")],
            "app": [(e.step, round(float(tensor_util.make_ndarray(e.tensor_proto)), 6))
                    for e in shown.Tensors("train/loss")]}


def test_tensorboard_hides_what_a_killed_run_logged_after_its_checkpoint(tmp_path):
    cfg = _cfg(tmp_path / "run", max_steps=10, report_to="tensorboard")
    first = RunLog(tmp_path / "run", cfg, True, total_steps=10, start_step=0)
    for step in range(1, 7):  # killed after logging step 6; its last checkpoint is step 4
        first.log(step, {"train/loss": float(step)})
    first.close()
    # Each writer names its file by the second it started: the resumed one must sort after
    real_time.sleep(1.1)
    resumed = RunLog(tmp_path / "run", cfg, True, total_steps=10, start_step=4, resumed=True)
    for step in (5, 6, 7):  # the resumed run's own values for steps 5 and 6
        resumed.log(step, {"train/loss": step + 0.5})
    resumed.close()
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.5), (6, 6.5), (7, 7.5)]
    view = _tensorboard_view(tmp_path / "run" / "tensorboard")
    assert view == {"legacy": expected, "app": expected}


class _Killed(Exception):
    pass


class _FakeClock:
    """The trainer's clock: one second per reading, so tokens_per_s is the tokens counted in an
    interval (every interval is read twice: its end, then the next one's start). The readings
    around a pause (Trainer.not_training: a validation, a save) take no time, so a pause is as
    long as what happens in it (nothing, unless a test moves `now`)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        if sys._getframe(1).f_code.co_name != "not_training":
            self.now += 1.0
        return self.now

    def __getattr__(self, name):
        return getattr(real_time, name)


def _train(cfg, monkeypatch, kill_after: int | None = None) -> None:
    monkeypatch.setattr(trainer_module, "time", _FakeClock())
    if kill_after is not None:
        original = Trainer.maybe_stop

        def maybe_stop(self, signum, **kwargs):
            if self.state.step == kill_after:
                raise _Killed  # SIGKILL after the step: nothing saved since the last checkpoint
            return original(self, signum, **kwargs)
        monkeypatch.setattr(Trainer, "maybe_stop", maybe_stop)
    try:
        with Trainer(cfg) as trainer:
            trainer.train()
    except _Killed:
        pass
    monkeypatch.undo()


def test_tokens_per_s_after_a_resume_and_the_epoch_fraction(tmp_path, one_rank, monkeypatch):
    files = demo_files(tmp_path / "data", train_size=16)
    # 4 examples a step: 4 steps an epoch
    every = tmp_path / "every"
    _train(_cfg(every, files, max_steps=5, batch_size=4, log_every=1, report_to="none"),
           monkeypatch)
    tokens = {step: r["train/tokens_per_s"]
              for step, r in metrics_log.by_step(every, "train/loss").items()}
    epochs = {step: r["train/epoch"]
              for step, r in metrics_log.by_step(every, "train/loss").items()}
    # the epochs done: the fourth step ends the first epoch
    assert epochs == pytest.approx({1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0, 5: 1.25}, abs=1e-12)

    killed = tmp_path / "killed"
    sparse = dict(max_steps=5, batch_size=4, log_every=4, save_every=2, report_to="none",
                  resume="auto")
    _train(_cfg(killed, files, **sparse), monkeypatch, kill_after=3)
    _train(_cfg(killed, files, **sparse), monkeypatch)
    logged = metrics_log.by_step(killed, "train/loss")
    assert sorted(logged) == [1, 4, 5]
    # The resumed process trained steps 3 and 4 in its first interval; step 2's tokens came back
    # with the checkpoint's window (for the padded fraction) but another process trained them.
    assert logged[4]["train/tokens_per_s"] == pytest.approx(tokens[3] + tokens[4], rel=1e-12)
    assert logged[5]["train/tokens_per_s"] == pytest.approx(tokens[5], rel=1e-12)
    assert logged[4]["train/epoch"] == pytest.approx(1.0, abs=1e-12)


def test_a_resume_on_other_library_versions_keeps_the_earlier_versions_file(tmp_path):
    """versions.json was overwritten by each start: a run resumed after an upgrade (or requeued
    on another node) lost what trained its first steps."""
    import json

    from seq2seq_es.engine.run_dir import library_versions, write_versions

    run = tmp_path / "run"
    run.mkdir()
    assert write_versions(run, None) is None  # a fresh start
    current = json.loads((run / "versions.json").read_text())
    assert current == library_versions()
    assert write_versions(run, 4) is None  # the same versions: nothing kept
    assert sorted(p.name for p in run.iterdir()) == ["versions.json"]
    earlier = {**current, "transformers": "5.0.0"}
    (run / "versions.json").write_text(json.dumps(earlier))
    note = write_versions(run, 8)
    assert note.startswith("note: resumed on other versions than until step 8 (transformers "
                           f"5.0.0 -> {current['transformers']})")
    assert json.loads((run / "versions.until_step_8.json").read_text()) == earlier
    assert json.loads((run / "versions.json").read_text()) == current


def test_tokens_per_s_leaves_out_validation_time(tmp_path, one_rank, monkeypatch):
    # The interval of steps 3-4 holds step 2's validation (it runs after step 2's log), made to
    # take 100 s of the trainer's clock. The rate over that interval is the training's, as a run
    # without validation logs it; it was tokens / (training + validation time).
    files = demo_files(tmp_path / "data", train_size=16)
    original = Trainer.run_eval

    def slow_validation(self, *args, **kwargs):
        trainer_module.time.now += 100.0
        return original(self, *args, **kwargs)

    rates = {}
    for name, eval_every in (("plain", 0), ("validated", 2)):
        monkeypatch.setattr(Trainer, "run_eval", slow_validation)
        cfg = _cfg(tmp_path / name, files, max_steps=4, batch_size=4, log_every=2,
                   eval_every=eval_every, report_to="none")
        _train(cfg, monkeypatch)
        rates[name] = {step: r["train/tokens_per_s"]
                       for step, r in metrics_log.by_step(tmp_path / name, "train/loss").items()}
    assert sorted(rates["validated"]) == [1, 2, 4] == sorted(rates["plain"])
    assert rates["validated"][2] == pytest.approx(rates["plain"][2], rel=1e-12)
    assert rates["validated"][4] == pytest.approx(rates["plain"][4], rel=1e-12)
