"""The end of every run: the best checkpoint on validation is kept, scored on test and exported.

Real runs through launch/train.py on barto-tiny (fp32, CPU): 16 training examples in steps of 4
make 4 steps per epoch; 3 epochs are validated at steps 4 and 8 (epoch ends) and 12 (the end).
A learning rate of 3e-2 makes the tiny model overfit, so the best validation loss is not at the
last step and the run has to go back to an earlier checkpoint.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from engine_runs import (base_args, final_weights, kill_group, run, start, step_losses,
                         wait_for)
from seq2seq_es import metrics_log
from seq2seq_es.demo.synthetic import write_demo_dataset
from seq2seq_es.engine import distributed as D
from seq2seq_es.engine.checkpoint import Checkpointer, TrainState
from seq2seq_es.engine.trainer import is_better

pytestmark = pytest.mark.slow

EPOCHS, STEPS_PER_EPOCH = 3, 4
LAST = EPOCHS * STEPS_PER_EPOCH
SCHEMA = {"task", "model", "main_metric", "best_step", "steps", "validation", "test"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("best")


@pytest.fixture(scope="module")
def files(workdir):
    # 4 validation and 4 test examples (the test split has the validation split's size).
    files = write_demo_dataset(workdir / "data", train_size=16, validation_size=4, seed=5)
    # A truncated last line: skipped (the 16 examples stay), and reported in data_report.json.
    with open(files["train"], "a", encoding="utf-8") as f:
        f.write('{"text": "Un artículo cortado\n')
    return files


def best_args(files, out: Path, *, batch: int = 4, extra: list[str] | None = None) -> list[str]:
    return base_args(files, out, steps=0, batch=batch, extra=[
        "--train.epochs", str(EPOCHS), "--data.test_file", files["test"],
        "--train.eval_at_end", "true", "--train.best_metric", "loss", "--optim.lr", "3e-2",
        "--optim.schedule", "constant", *(extra or [])])


_cache: dict = {}


def single_run(workdir, files) -> tuple[Path, str]:
    """keep_last=1 and a save due every 0.6 ms: every step saves, and rotation runs each time."""
    if "single" not in _cache:
        out = workdir / "single"
        proc = run("none", 1, best_args(files, out, extra=[
            "--train.keep_last", "1", "--train.save_every_min", "0.00001"]))
        _cache["single"] = (out, proc.stdout + proc.stderr)
    return _cache["single"]


def test_the_data_report_is_kept_in_the_run_folder(workdir, files):
    out, output = single_run(workdir, files)
    report = json.loads((out / "data_report.json").read_text())
    assert set(report) == {"train", "validation", "test"}
    train = report["train"]
    assert train["examples"] == 16 and train["skipped_total"] == 1
    assert train["first_skipped"] == {"not valid JSON": [17]} and train["numbered_by"] == "lines"
    assert report["test"]["examples"] == 4 and report["test"]["truncation"]["examples"] == 4
    assert "not valid JSON: 1 (line 17)" in output  # also said on the console


def eval_records(out: Path, prefix: str = "eval") -> dict[int, dict]:
    return metrics_log.by_step(out, f"{prefix}/loss")


def module_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model weights inside a ZeRO-0 DeepSpeed checkpoint."""
    state = torch.load(checkpoint / "mp_rank_00_model_states.pt", map_location="cpu",
                       weights_only=False)
    return state["module"]


def assert_same_weights(exported: dict, reference: dict) -> None:
    assert exported
    for key, value in exported.items():
        assert torch.equal(value, reference[key]), key


def test_best_checkpoint_is_kept_scored_on_test_and_exported(workdir, files):
    out, output = single_run(workdir, files)
    evals = eval_records(out)
    assert sorted(evals) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, LAST]  # per epoch + the end
    best_step = min(evals, key=lambda s: evals[s]["eval/loss"])
    assert best_step < LAST, "the run did not overfit: raise --optim.lr so the test covers a reload"

    results = json.loads((out / "final_results.json").read_text())
    assert set(results) == SCHEMA
    assert results["task"] == "mlsum" and results["model"] == "barto-tiny"
    assert results["main_metric"] == "loss"
    assert results["best_step"] == best_step and results["steps"] == LAST
    assert results["validation"] == {k.split("/", 1)[1]: v for k, v in evals[best_step].items()
                                     if k.startswith("eval/")}
    assert {"loss", "rougeL"} <= set(results["test"])

    # The test split is scored once, by the best checkpoint, one prediction per test example.
    tests = eval_records(out, "test")
    assert list(tests) == [best_step]
    assert results["test"] == {k.split("/", 1)[1]: v for k, v in tests[best_step].items()
                               if k.startswith("test/")}
    n_test = len(Path(files["test"]).read_text().splitlines())
    predictions = out / "test" / f"step_{best_step:08d}" / "predictions.jsonl"
    assert len(predictions.read_text().splitlines()) == n_test

    # keep_last=1 keeps the newest checkpoint and the best one; every step was saved by time.
    kept = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert kept == [f"step_{best_step:08d}", f"step_{LAST:08d}"]
    saved = {int(line.rsplit("_", 1)[1]) for line in output.splitlines()
             if line.startswith("saved checkpoint step_")}
    assert saved == set(range(1, LAST + 1)), "time-based saves happen between epoch ends"
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["step"] == best_step and best["metric"] == "loss"
    assert best["checkpoint"] == f"step_{best_step:08d}"
    state = json.loads((out / "checkpoints" / f"step_{LAST:08d}" / "trainer_state.json")
                       .read_text())
    assert state["best"]["step"] == best_step  # resume keeps the best

    # its tokenizer cuts sources as the run did: plain transformers' truncation=True cut at the
    # model's 1024 positions where the run read 96 tokens
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert (tokenizer.model_max_length, tokenizer.truncation_side) == (96, "right")
    # final/ holds the best checkpoint's weights, not the last step's.
    exported = final_weights(out)
    assert_same_weights(exported, module_weights(out / "checkpoints" / f"step_{best_step:08d}"))
    last = module_weights(out / "checkpoints" / f"step_{LAST:08d}")
    assert any(not torch.equal(v, last[k]) for k, v in exported.items())
    done = json.loads((out / "DONE").read_text())
    assert done["step"] == LAST and done["best_step"] == best_step
    assert (f"best checkpoint: step {best_step} (loss {evals[best_step]['eval/loss']:.4f}); its "
            "weights are scored on test and exported") in output
    # the last line says where it all is (it ended on `saved checkpoint step_N`)
    step_dir = f"step_{best_step:08d}"
    assert output.strip().splitlines()[-1] == (
        f"finished: {out / 'final_results.json'} holds step {best_step} (validation loss "
        f"{results['validation']['loss']:.4f}; test loss {results['test']['loss']:.4f}); its "
        f"model is in {out / 'final'}; predictions in eval/{step_dir}, test/{step_dir}")
    # a model card says how to feed final/ without this package, and what it scored
    card = (out / "final" / "README.md").read_text()
    assert "## Inputs\n\n- Source: the `text` text as it is, with no task prefix;" in card
    assert f"the weights are those of step {best_step} of {LAST}" in card


def test_the_best_checkpoint_line_says_only_what_happens_to_it(workdir, files):
    # No test split and no export: the line said "scored on test and exported" all the same.
    out = workdir / "no_test"
    proc = run("none", 1, base_args(files, out, steps=0, batch=4, extra=[
        "--train.epochs", str(EPOCHS), "--train.eval_at_end", "true", "--train.best_metric",
        "loss", "--optim.lr", "3e-2", "--optim.schedule", "constant", "--train.export", "false"]))
    evals = eval_records(out)
    best_step = min(evals, key=lambda s: evals[s]["eval/loss"])
    assert best_step < LAST, "the run did not overfit: raise --optim.lr"
    assert (f"best checkpoint: step {best_step} (loss {evals[best_step]['eval/loss']:.4f}); its "
            "weights are loaded back") in proc.stdout
    assert "scored on test" not in proc.stdout and not (out / "final").exists()


def test_resume_after_a_stop_keeps_the_best_and_ends_the_same(workdir, files):
    uninterrupted, _ = single_run(workdir, files)
    best_step = json.loads((uninterrupted / "final_results.json").read_text())["best_step"]
    out = workdir / "stopped"
    shutil.rmtree(out, ignore_errors=True)
    args = best_args(files, out, extra=["--train.keep_last", "1", "--train.resume", "auto",
                                        "--train.save_every_min", "0.00001"])
    # Each save waits 0.3 s so that the stop lands between the best step and the end.
    proc = start("none", 1, args, {"SEQ2SEQ_ES_SAVE_DELAY_S": "0.3"})
    try:
        wait_for(lambda: best_step + 1 in step_losses(out) or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode == 3, proc.stdout.read()[-3000:]
    stopped = json.loads((out / "PREEMPTED").read_text())["step"]
    assert best_step < stopped < LAST
    run("none", 1, args)
    a = json.loads((out / "final_results.json").read_text())
    b = json.loads((uninterrupted / "final_results.json").read_text())
    assert a == b
    assert_same_weights(final_weights(out), final_weights(uninterrupted))
    assert (out / "checkpoints" / f"step_{best_step:08d}").is_dir()


def test_a_resume_from_another_folders_checkpoint_chooses_its_best_anew(workdir, files):
    # --train.resume PATH into a new folder carried the source run's best: the run trained all
    # its steps, then failed at its end ("the best checkpoint ... is gone"), without DONE.
    source, _ = single_run(workdir, files)
    best_step = json.loads((source / "final_results.json").read_text())["best_step"]
    checkpoint = source / "checkpoints" / f"step_{best_step:08d}"
    out = workdir / "elsewhere"
    shutil.rmtree(out, ignore_errors=True)
    proc = run("none", 1, best_args(files, out, extra=["--train.resume", str(checkpoint)]))
    output = proc.stdout + proc.stderr
    assert (f"note: the best checkpoint so far (step {best_step}, loss ") in output
    assert (f"is not in {out / 'checkpoints'}: this run's best is chosen among its validations "
            f"from step {best_step} on") in output
    results = json.loads((out / "final_results.json").read_text())
    assert (out / "DONE").is_file() and best_step < results["best_step"] <= LAST
    assert results["best_step"] in eval_records(out)


def test_keeping_the_last_weights_says_so_and_names_the_best_step(workdir, files):
    # --train.load_best_at_end false (the paper scripts' way): final_results.json and the model
    # card called the last step the best one, "chosen on the validation loss", and the log
    # said nothing about which weights were kept.
    source, _ = single_run(workdir, files)
    best_step = json.loads((source / "final_results.json").read_text())["best_step"]
    out = workdir / "last"
    shutil.rmtree(out, ignore_errors=True)
    proc = run("none", 1, best_args(files, out, extra=["--train.load_best_at_end", "false"]))
    results = json.loads((out / "final_results.json").read_text())
    assert set(results) == SCHEMA | {"kept", "best_validation_step"}
    assert results["kept"] == "last" and results["best_step"] == LAST
    assert results["best_validation_step"] == best_step < LAST
    assert (f"train.load_best_at_end false: the last step's weights (step {LAST}) are kept, "
            f"not the best checkpoint's (step {best_step}, loss ") in proc.stdout
    card = (out / "final" / "README.md").read_text()
    assert (f"the weights are those of step {LAST} of {LAST}, the last (train.load_best_at_end "
            f"false; the best validation loss was at step {best_step})") in card


def test_a_run_that_never_validated_says_its_weights_are_the_last(workdir, files):
    # No validation ran (an audit's run: eval_at_end false, no epoch end): final_results.json
    # gave best_step 1 as if chosen, and the card said "chosen on the validation rougeL".
    out = workdir / "unvalidated"
    shutil.rmtree(out, ignore_errors=True)
    run("none", 1, base_args(files, out, steps=2, extra=["--train.eval_per_epoch", "false"]))
    results = json.loads((out / "final_results.json").read_text())
    assert set(results) == SCHEMA | {"kept"}
    assert (results["kept"], results["best_step"], results["validation"]) == ("last", 2, {})
    card = (out / "final" / "README.md").read_text()
    assert "the weights are those of step 2 of 2, the last (no validation ran)" in card


@pytest.mark.parametrize("key, value, words", [
    ("train.max_steps", "2", "2 ends before the step of checkpoint"),
    ("train.epochs", "1", f"1 epoch(s) make {STEPS_PER_EPOCH} steps, fewer than the {LAST} of "
                          "checkpoint")])
def test_a_checkpoint_past_the_runs_last_step_is_refused(workdir, files, key, value, words):
    # It trained nothing, named the rate of a step never run, and wrote DONE and
    # final_results.json with more steps than its config.yaml says.
    source, _ = single_run(workdir, files)
    out = workdir / f"past-{key}"
    shutil.rmtree(out, ignore_errors=True)
    proc = run("none", 1, best_args(files, out, extra=[
        f"--{key}", value, "--train.resume", str(source / "checkpoints" / f"step_{LAST:08d}")]),
        check=False)
    assert proc.returncode == 2
    assert f"error: config key '{key}': {words}" in proc.stderr, proc.stderr[-2000:]
    assert not (out / "DONE").exists() and not (out / "final_results.json").exists()


def test_zero3_on_two_ranks_exports_and_tests_the_best_checkpoint(workdir, files):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    out = workdir / "zero3"
    # 2 ranks x 2 examples: the same 4 steps per epoch. keep_last large: every save stays.
    run("torchrun", 2, best_args(files, out, batch=2, extra=[
        "--dist.zero_stage", "3", "--train.keep_last", "100", "--train.save_every_min",
        "0.00001", "--model.dropout", "0.0"]))
    evals = eval_records(out)
    best_step = min(evals, key=lambda s: evals[s]["eval/loss"])
    results = json.loads((out / "final_results.json").read_text())
    assert set(results) == SCHEMA and results["best_step"] == best_step
    assert list(eval_records(out, "test")) == [best_step]
    n_test = len(Path(files["test"]).read_text().splitlines())
    predictions = out / "test" / f"step_{best_step:08d}" / "predictions.jsonl"
    assert len(predictions.read_text().splitlines()) == n_test  # none lost or doubled
    # Collective time-based saves agreed on by both ranks, due at every check: each agreement
    # is begun after step k and read after step k+1 (Trainer.poll_ranks), and the one begun
    # after a step that saved is done by that save, so every second step saves; the last is
    # the end's.
    kept = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    assert kept == list(range(2, LAST + 1, 2)) and LAST % 2 == 0
    best = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"),
                                                    tag=f"step_{best_step:08d}")
    exported = final_weights(out)
    for key, value in exported.items():
        assert torch.allclose(value.float(), best[key].float(), atol=0, rtol=0), key


def test_an_unknown_best_metric_names_the_available_ones(workdir, files):
    out = workdir / "bad-metric"
    args = base_args(files, out, steps=2, batch=4, extra=[
        "--train.eval_at_end", "true", "--train.best_metric", "rouge9"])
    proc = run("none", 1, args, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "train.best_metric" in proc.stderr and "rougeL" in proc.stderr
    assert "[train]" not in proc.stdout  # refused before any data was read (not at step 2)


class _FakeEngine:
    def save_checkpoint(self, root, tag, save_latest):
        (Path(root) / tag).mkdir(parents=True)


def test_rotation_never_deletes_the_best_checkpoint(tmp_path):
    ckpt = Checkpointer(tmp_path, D.read_env({}), keep_last=1)
    best = {"step": 2, "metric": "rougeL", "value": 3.0}
    for step in range(1, 6):
        ckpt.save(_FakeEngine(), TrainState(step=step, best=best if step >= 2 else None))
    assert [p.name for p in ckpt.complete()] == ["step_00000002", "step_00000005"]
    assert json.loads((tmp_path / "best.json").read_text())["checkpoint"] == "step_00000002"
    # Once a later step is best, the old best is rotated away like any other.
    ckpt.save(_FakeEngine(), TrainState(step=6, best={**best, "step": 6}))
    assert [p.name for p in ckpt.complete()] == ["step_00000006"]
    assert json.loads((tmp_path / "best.json").read_text())["checkpoint"] == "step_00000006"
    # What a resume reads back is what was saved.
    saved = TrainState.from_json((ckpt.latest() / "trainer_state.json").read_text(), 1)
    assert saved == TrainState(step=6, best={**best, "step": 6})


def test_an_interrupted_delete_leaves_no_partial_checkpoint_folder(tmp_path, monkeypatch):
    # A second Ctrl-C during rotation used to leave checkpoints/step_N/ half deleted (no
    # trainer_state.json, some DeepSpeed files): untidy, and a folder a user would try to use.
    import shutil

    from seq2seq_es.engine import checkpoint as checkpoint_module

    real_rmtree = shutil.rmtree

    def interrupted_rmtree(path, *args, **kwargs):
        path = Path(path)
        if path.is_dir() and (path / "trainer_state.json").exists():
            (path / "trainer_state.json").unlink()   # the delete had begun...
            raise KeyboardInterrupt                    # ...when the second Ctrl-C came
        real_rmtree(path, *args, **kwargs)

    ckpt = Checkpointer(tmp_path, D.read_env({}), keep_last=1)
    ckpt.save(_FakeEngine(), TrainState(step=1))
    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(_FakeEngine(), TrainState(step=2))
    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", real_rmtree)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000002"]
    ckpt.save(_FakeEngine(), TrainState(step=3))     # the next save clears what was left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003"]
    # A save at a step that already has a checkpoint (the final save right after a periodic
    # one) replaces it.
    ckpt.save(_FakeEngine(), TrainState(step=3, epoch=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003"]
    assert TrainState.read(ckpt.path(3), 1).epoch == 1


def test_loss_is_lower_is_better_and_nan_never_wins():
    assert is_better(1.0, None, "loss") and is_better(1.0, {"value": 2.0}, "loss")
    assert not is_better(3.0, {"value": 2.0}, "loss")
    assert is_better(3.0, {"value": 2.0}, "rougeL") and not is_better(2.0, {"value": 2.0}, "rougeL")
    assert not is_better(float("nan"), None, "rougeL")
    # A tie on the metric (ROUGE stuck at 0 early on) goes to the lower validation loss.
    best = {"value": 0.0, "validation": {"loss": 6.5, "rougeL": 0.0}}
    assert is_better(0.0, best, "rougeL", loss=5.4)
    assert not is_better(0.0, best, "rougeL", loss=6.5) and not is_better(0.0, best, "rougeL")
    assert not is_better(0.0, best, "rougeL", loss=float("nan"))


def test_without_eval_at_end_the_last_epoch_is_still_validated_and_a_candidate(workdir, files):
    # eval_at_end=false skips only an extra validation: the last step ends epoch 2, whose
    # per-epoch validation must run (it used to be skipped, and final/ came from epoch 1).
    out = workdir / "no_end_eval"
    run("none", 1, best_args(files, out, extra=[
        "--train.epochs", "2", "--train.eval_at_end", "false", "--optim.lr", "1e-3",
        "--data.test_file", files["test"]]))
    evals = eval_records(out)
    assert sorted(evals) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    best_step = min(evals, key=lambda s: evals[s]["eval/loss"])
    results = json.loads((out / "final_results.json").read_text())
    assert results["steps"] == 2 * STEPS_PER_EPOCH and results["best_step"] == best_step
