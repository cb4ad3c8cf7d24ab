"""Faults and special cases of the engine: non-finite losses, stop signals, refused resumes,
shared weights under ZeRO-2 with checkpointing, and the demo's data set.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from engine_runs import (base_args, demo_files, final_weights, kill_group, run, start,
                         step_losses, wait_for)
from seq2seq_es.config import RunConfig
from seq2seq_es.engine import distributed as D
from seq2seq_es.engine.builders import get_collator, get_engine, get_model, get_split
from seq2seq_es.engine.step import NonFiniteLoss, train_step
from seq2seq_es.tasks import get_task


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_files(tmp_path_factory.mktemp("faults") / "data", train_size=32)



def _engine_and_batches(files, on_nan: str, env: D.DistEnv | None = None):
    cfg = RunConfig()
    cfg.model.name, cfg.data.task = "barto-tiny", "mlsum"
    cfg.data.train_file = files["train"]
    cfg.data.max_source_length, cfg.data.max_target_length = 64, 32
    cfg.train.on_nan, cfg.train.batch_size, cfg.train.precision = on_nan, 2, "fp32"
    cfg.optim.weight_decay = 0.0
    model, tokenizer, spec = get_model(cfg)
    split = get_split(cfg, get_task("mlsum"), tokenizer, model, "train", 8, lambda m: None)
    collate = get_collator(cfg, spec, tokenizer, model)
    batches = [collate([split.tokenized[i] for i in (0, 1)]),
               collate([split.tokenized[i] for i in (2, 3)])]
    engine, *_ = get_engine(model, cfg, env or D.read_env({}), total_steps=10)
    return cfg, engine, batches


def _poison_next_forward(engine):
    """Make the LM head's next output non-finite (as an overflowing forward would)."""
    def hook(module, inputs, output):
        handle.remove()
        return output * float("nan")
    handle = engine.module.lm_head.register_forward_hook(hook)


def test_non_finite_loss_stops_with_step_and_batch_shape(files, one_rank):
    cfg, engine, batches = _engine_and_batches(files, "stop")
    _poison_next_forward(engine)
    with pytest.raises(NonFiniteLoss) as err:
        train_step(engine, batches[:1], one_rank, cfg, step=6)
    message = str(err.value)
    assert "step 7" in message and "source (2," in message and "train.on_nan" in message


def test_non_finite_loss_skip_leaves_weights_unchanged(files, one_rank):
    cfg, engine, batches = _engine_and_batches(files, "skip")
    before = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    _poison_next_forward(engine)
    result = train_step(engine, batches[:1], one_rank, cfg, step=0)
    assert result["skipped_micro_batches"] == 1
    after = engine.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The next, healthy batch trains as usual.
    result = train_step(engine, batches[1:], one_rank, cfg, step=1)
    assert result["skipped_micro_batches"] == 0
    assert any(not torch.equal(before[k], engine.module.state_dict()[k]) for k in before)


def test_a_skip_early_in_a_logging_interval_is_counted_when_it_is_read(files, one_rank):
    # train/skipped_micro_batches was the interval's last step's count: a skip in step 1 of a
    # two-step interval read as 0.
    from seq2seq_es.engine.step import TrainStep

    cfg, engine, batches = _engine_and_batches(files, "skip")
    runner = TrainStep(engine, one_rank, cfg)
    try:
        _poison_next_forward(engine)
        runner(batches[:1], 0)
        values = runner.read(runner(batches[1:], 1))
        assert values["skipped_micro_batches"] == 1
        assert runner.read(runner(batches[:1], 2))["skipped_micro_batches"] == 0  # window reset
    finally:
        runner.close()


def _rank_of_two(rank: int, port: int, files: dict, on_nan: str):
    """(env, cfg, engine, batches) of rank `rank` of a two-process gloo group."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    env = D.read_env()
    D.init(env, "gloo")
    return (env, *_engine_and_batches(files, on_nan, env))


def _skip_on_one_rank_worker(rank: int, port: int, files: dict, out: str) -> None:
    env, cfg, engine, batches = _rank_of_two(rank, port, files, "skip")
    before = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    if rank == 1:
        _poison_next_forward(engine)  # only this rank's loss is NaN
    poisoned = train_step(engine, batches[rank:rank + 1], env, cfg, step=0)
    unchanged = all(torch.equal(before[k], v) for k, v in engine.module.state_dict().items())
    healthy = train_step(engine, batches[rank:rank + 1], env, cfg, step=1)
    changed = any(not torch.equal(before[k], v) for k, v in engine.module.state_dict().items())
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"poisoned": poisoned, "unchanged": unchanged, "healthy": healthy, "changed": changed}))
    D.close()
    from seq2seq_es.process_exit import leave

    leave(0)  # as the package's processes end: no interpreter teardown beside gloo's threads


@pytest.mark.slow  # two processes: 15-30 s on 2 cores
def test_a_non_finite_loss_on_one_rank_skips_the_micro_batch_on_every_rank(files, tmp_path):
    from engine_runs import free_port

    torch.multiprocessing.spawn(_skip_on_one_rank_worker, args=(free_port(), files, str(tmp_path)),
                                nprocs=2)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for result in results:
        assert result["poisoned"]["skipped_micro_batches"] == 1  # rank 0's loss was finite
        # nothing was kept: the step's loss is unknown, not 0
        assert math.isnan(result["poisoned"]["loss"]) and result["unchanged"]
        assert result["healthy"]["skipped_micro_batches"] == 0 and result["changed"]
        assert result["healthy"]["loss"] > 0
    # the logged loss is the step's, summed over both ranks: the same number on each
    assert results[0]["healthy"]["loss"] == results[1]["healthy"]["loss"]


def _stop_on_one_rank_worker(rank: int, port: int, files: dict, out: str) -> None:
    env, cfg, engine, batches = _rank_of_two(rank, port, files, "stop")
    if rank == 1:
        _poison_next_forward(engine)  # only this rank's loss is NaN; rank 0's batch differs
    try:
        train_step(engine, batches[rank:rank + 1], env, cfg, step=4)
        said = {"raised": False}
    except NonFiniteLoss as exc:
        said = {"raised": True, "message": str(exc),
                "printed": not getattr(exc, "said_elsewhere", False)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(said))
    D.close()
    from seq2seq_es.process_exit import leave

    leave(0)


@pytest.mark.slow  # two processes
def test_a_non_finite_loss_on_one_rank_is_said_by_that_rank_naming_its_batch(files, tmp_path):
    # on_nan=stop: every rank stops, and only rank 1, whose batch it was, prints the error with
    # its batch's shape; each rank named its own batch, rank 0 a healthy one.
    from engine_runs import free_port

    torch.multiprocessing.spawn(_stop_on_one_rank_worker, args=(free_port(), files, str(tmp_path)),
                                nprocs=2)
    said = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert said[0]["raised"] and said[1]["raised"]
    assert "at step 5, micro-batch 0 of rank 1" in said[0]["message"]
    assert said[1]["message"].startswith("non-finite loss at step 5, micro-batch 0 of rank 1 "
                                         "(batch source (2, ")
    assert "(batch" not in said[0]["message"]
    assert [s["printed"] for s in said] == [False, True]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 3), (signal.SIGINT, 130)])
def test_stop_signal_saves_a_checkpoint_and_resume_finishes(files, tmp_path, sig, code):
    out = tmp_path / "run"
    args = base_args(files, out, steps=400, batch=2, extra=["--train.resume", "auto"])
    proc = start("none", 1, args)
    try:
        wait_for(lambda: 3 in step_losses(out) or proc.poll() is not None)
        proc.send_signal(sig)
        proc.wait(timeout=300)
    finally:
        kill_group(proc)
    assert proc.returncode == code, proc.stdout.read()[-3000:]
    checkpoints = sorted((out / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 1
    stopped_at = json.loads((checkpoints[0] / "trainer_state.json").read_text())["step"]
    assert 3 <= stopped_at < 400
    if sig == signal.SIGTERM:
        assert json.loads((out / "PREEMPTED").read_text())["signal"] == "SIGTERM"
    short = [a if a != "400" else str(stopped_at + 2) for a in args]
    run("none", 1, short)
    assert max(step_losses(out)) == stopped_at + 2
    assert not (out / "PREEMPTED").exists()


@pytest.mark.slow
def test_a_stop_on_two_ranks_is_reported_once(files, tmp_path):
    # Every rank stops at the same step and saves together; each printed the same line.
    out = tmp_path / "two"
    proc = start("torchrun", 2, base_args(files, out, steps=400, batch=2))
    try:
        wait_for(lambda: 3 in step_losses(out) or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
        proc.wait(timeout=300)
    finally:
        kill_group(proc)
    output = proc.stdout.read()
    assert (out / "PREEMPTED").is_file(), output[-3000:]
    assert output.count("SIGTERM received: saved a checkpoint at step") == 1, output[-3000:]
    # acted on within a step or two of the signal, not after the 400 (a mutation that read
    # the ranks' poll as no signal trained on to the end and passed)
    saved = int(re.search(r"saved a checkpoint at step (\d+)", output).group(1))
    assert saved < 50 and max(step_losses(out)) == saved, output[-3000:]


@pytest.mark.slow
def test_resume_that_cannot_work_is_refused(files, tmp_path):
    out = tmp_path / "empty"
    proc = run("none", 1, base_args(files, out, steps=2, extra=["--train.resume", "must"]),
               check=False)
    assert proc.returncode == 2
    assert "error: config key 'train.resume': no complete checkpoint" in proc.stderr


@pytest.mark.slow
def test_resume_with_another_data_layout_is_refused_and_more_steps_are_not(files, tmp_path):
    # A checkpoint's position in the epoch counts steps of its own batch layout: resuming with
    # another step size would skip or repeat examples silently. More steps change no layout.
    out = tmp_path / "layout"
    first = run("none", 1, base_args(files, out, steps=2, extra=["--train.save_every", "2"]))
    # No data.test_file with local files: said once, and nothing is scored on test.
    assert first.stdout.count("no test split") == 1 and not (out / "test").exists()
    proc = run("none", 1, base_args(files, out, steps=4, batch=4, extra=[
        "--train.resume", "must", "--train.save_every", "2"]), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: config key 'train.resume': checkpoint ")
    assert "train.batch_size x train.grad_accum x ranks 2 -> 4" in error
    assert "steps per epoch 16 -> 8" in error
    # The same step split in two micro-batches, with sources cut shorter (what the out-of-memory
    # error advises), resumes.
    run("none", 1, base_args(files, out, steps=4, batch=1, extra=[
        "--train.grad_accum", "2", "--data.max_source_length", "64", "--train.resume", "must",
        "--train.save_every", "2"]))
    assert sorted(step_losses(out)) == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Version v4.12.0:FutureWarning")
@pytest.mark.parametrize("name", ["betoshare-tiny", "robertashare-tiny"])
def test_betoshare_trains_under_zero2_with_checkpointing_and_export_keeps_the_tie(files, tmp_path,
                                                                                  name):
    from seq2seq_es.models import load_model_and_tokenizer
    from seq2seq_es.models.sharing import shared_parameter_pairs
    from seq2seq_es.models.tiny import ensure_tiny_checkpoint
    from test_shared_export import assert_plain_load_matches

    # Built here, in one process: under torchrun every rank builds a missing twin and the first
    # rename wins, but transformers 5 writes no weights from a rank other than 0 once
    # torch.distributed is up (save_pretrained's should_save_on_this_rank), so rank 1's build
    # would leave a folder with the tokenizer only.
    ensure_tiny_checkpoint(name)
    out = tmp_path / "betoshare"
    run("torchrun", 2, base_args(files, out, model=name, steps=3, batch=2, extra=[
        "--dist.zero_stage", "2", "--model.gradient_checkpointing", "true"]))
    losses = step_losses(out)
    assert sorted(losses) == [1, 2, 3] and all(torch.isfinite(torch.tensor(v)) for v in
                                               losses.values())
    model, _ = load_model_and_tokenizer(name, str(out / "final"))
    pairs = shared_parameter_pairs(model)
    assert pairs, "the exported betoshare lost its encoder-decoder tie"
    params = dict(model.named_parameters(remove_duplicate=False))
    enc, dec = pairs[0]
    assert params[enc] is params[dec]
    initial, _ = load_model_and_tokenizer(name)
    initial_params = dict(initial.named_parameters(remove_duplicate=False))
    assert not torch.equal(initial_params[dec], params[dec])  # it trained
    weights = final_weights(out)
    assert dec in weights or enc in weights
    # Plain transformers loads the same final/ with every weight our loader's model has, equal
    # (the encoder's as its own copy), and reports only the encoder pooler, which it never reads.
    assert len(pairs) == len(model.encoder_to_decoder_names())
    assert_plain_load_matches(out / "final", model)


@pytest.mark.slow
def test_a_stop_signal_during_the_last_validation_requeues_before_test_and_export(
        files, one_rank, tmp_path, monkeypatch):
    # A time-limit warning that meets the end of training (validation, test, export) used to be
    # ignored: the job then ran into its limit and ended TIMEOUT, not requeued.
    from seq2seq_es.engine.trainer import Stopped, Trainer

    cfg = RunConfig()
    cfg.model.name, cfg.data.task = "barto-tiny", "mlsum"
    cfg.data.train_file, cfg.data.validation_file = files["train"], files["validation"]
    cfg.data.test_file = files["validation"]
    cfg.data.max_source_length, cfg.data.max_target_length = 64, 32
    cfg.train.output_dir, cfg.train.max_steps, cfg.train.batch_size = str(tmp_path), 2, 2
    cfg.train.precision, cfg.train.report_to, cfg.train.progress_bar = "fp32", "none", False
    cfg.train.resume = "auto"
    cfg.gen.num_beams, cfg.gen.max_new_tokens, cfg.gen.min_new_tokens = 1, 4, 0
    original = Trainer.run_eval

    def signalled_eval(self, step, data=None, prefix="eval"):
        results = original(self, step, data, prefix)
        if prefix == "eval" and step == 2:
            os.kill(os.getpid(), signal.SIGUSR2)  # arrives while the last step is validated
        return results
    monkeypatch.setattr(Trainer, "run_eval", signalled_eval)
    with pytest.raises(Stopped) as stopped, Trainer(cfg) as trainer:
        trainer.train()
    assert stopped.value.exit_code == 3
    assert (tmp_path / "PREEMPTED").is_file() and not (tmp_path / "DONE").exists()
    assert (tmp_path / "checkpoints" / "step_00000002").is_dir()
    assert not (tmp_path / "final").exists() and not (tmp_path / "test").exists()

    monkeypatch.setattr(Trainer, "run_eval", original)
    with Trainer(cfg) as trainer:  # the requeued job: straight to the end's work
        result = trainer.train()
    assert result["step"] == 2 and (tmp_path / "DONE").is_file()
    assert not (tmp_path / "PREEMPTED").exists()
    final = json.loads((tmp_path / "final_results.json").read_text())
    assert final["steps"] == 2 and final["test"] and (tmp_path / "final").is_dir()


@pytest.mark.slow
def test_a_finished_run_is_not_redone_and_trains_on_with_its_longer_schedule(files, tmp_path):
    from seq2seq_es import metrics_log
    from seq2seq_es.engine.optim import lr_factor

    out = tmp_path / "finished"
    args = base_args(files, out, steps=4, extra=["--train.resume", "auto"])
    first = run("none", 1, args)
    # a fresh start under resume auto says so (a relative output_dir read from another
    # directory started a new run there without a word)
    assert f"note: train.resume auto: no checkpoint in {out}; starting a new run" in first.stdout
    done, metrics = (out / "DONE").read_text(), (out / "metrics.jsonl").read_bytes()
    assert json.loads(done)["step"] == 4 and (out / "final_results.json").is_file()
    record = {name: (out / name).read_bytes() for name in ("config.yaml", "versions.json",
                                                           "deepspeed_config.json")}
    # Resumed as it was (other generation settings aside): nothing is validated, scored,
    # exported or logged again, and the record of the run that trained it stays.
    again = run("none", 1, args + ["--gen.num_beams", "2", "--optim.lr", "2e-3"])
    assert "finished at step 4 (DONE): nothing to train" in again.stdout, again.stdout[-2000:]
    # no word of a schedule or of changed settings it will not train under
    assert "learning rate of step" not in again.stdout and "note: resumed" not in again.stdout
    # ... but the settings it did not apply are named, not taken silently
    assert re.search(r"note: not applied to the finished run: optim\.lr \S+ -> \S+; "
                     r"gen\.num_beams 1 -> 2 \(its config\.yaml and results stay as they were\); "
                     r"`seq2seq-es evaluate \S+ --split test` with these options", again.stdout), \
        again.stdout[-2000:]
    assert not list(out.glob("config.until_step_*"))
    assert (out / "metrics.jsonl").read_bytes() == metrics and (out / "DONE").read_text() == done
    assert {name: (out / name).read_bytes() for name in record} == record
    # A DONE cut short (killed while it was written): the run finishes again.
    (out / "DONE").write_text("")
    redone = run("none", 1, args)
    assert "DONE cannot be read" in redone.stdout, redone.stdout[-2000:]
    assert json.loads((out / "DONE").read_text())["step"] == 4
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_00000004"]
    # With more steps it trains on, following the 8-step schedule from step 5 on (the checkpoint's
    # 4-step schedule had decayed to 0 there), and finishes again.
    longer = run("none", 1, [{"4": "8", "0.01": "0.1"}.get(a, a) for a in args])
    assert "had finished at step 4; it trains on to step 8" in longer.stdout, longer.stdout[-2000:]
    # The changed settings are said, and the file the first 4 steps were trained under is kept.
    assert ("note: resumed with other settings than until step 4 (optim.weight_decay 0.01 -> "
            "0.1; train.max_steps 4 -> 8); the earlier ones are kept in "
            "config.until_step_4.yaml") in longer.stdout, longer.stdout[-2000:]
    assert (out / "config.until_step_4.yaml").read_bytes() == record["config.yaml"]
    assert "max_steps: 8" in (out / "config.yaml").read_text()
    rates = {step: r["train/lr"] for step, r in metrics_log.by_step(out, "train/lr").items()}
    assert sorted(rates) == list(range(1, 9))
    for step in range(5, 9):  # warmup 1, linear decay over 8 steps, peak 1e-3
        assert rates[step] == pytest.approx(1e-3 * lr_factor(step - 1, 8, 1, "linear"), rel=1e-9)
    assert rates[5] > 0
    assert json.loads((out / "DONE").read_text())["step"] == 8
    assert json.loads((out / "final_results.json").read_text())["steps"] == 8


@pytest.mark.slow
def test_a_second_ctrl_c_during_validation_stops_at_once_without_saving(tmp_path):
    from seq2seq_es.demo.synthetic import write_demo_dataset
    from seq2seq_es.engine.signals import FIRST_SIGINT

    # A validation long enough to interrupt: 300 examples, 48 generated tokens each.
    files = write_demo_dataset(tmp_path / "data", train_size=16, validation_size=300, seed=3)
    out = tmp_path / "run"
    proc = start("none", 1, base_args(files, out, steps=400, batch=2, extra=[
        "--train.eval_every", "2", "--gen.max_new_tokens", "48", "--gen.min_new_tokens", "48"]))
    try:
        wait_for(lambda: 2 in step_losses(out) or proc.poll() is not None)
        proc.send_signal(signal.SIGINT)  # flags a stop after the validation, and says so
        time.sleep(1.0)
        assert proc.poll() is None, "the first Ctrl-C must wait for the validation"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        kill_group(proc)
    output = proc.stdout.read()
    assert proc.returncode == 130, output[-3000:]
    assert FIRST_SIGINT.strip() in output and "Traceback" not in output, output[-3000:]
    assert output.count("interrupted by a second Ctrl-C: stopped at once") == 1, output[-3000:]
    # stopped inside the step-2 validation: nothing saved, nothing said to be saved
    assert not (out / "PREEMPTED").exists() and not list(out.glob("checkpoints/step_*"))
    assert max(step_losses(out)) == 2


def test_a_damaged_checkpoint_is_named_with_the_one_before_it(files, one_rank, tmp_path):
    from seq2seq_es.engine.checkpoint import Checkpointer, TrainState, run_identity
    from seq2seq_es.errors import ConfigError, Seq2SeqEsError

    cfg, engine, _ = _engine_and_batches(files, "stop")
    ckpt = Checkpointer(tmp_path / "checkpoints", one_rank, keep_last=3)
    identity = run_identity(cfg)
    for step in (2, 4):
        ckpt.save(engine, TrainState(step=step, run=identity))
    latest = ckpt.latest()
    assert latest.name == "step_00000004"
    # Another model's or task's checkpoint: refused before anything is loaded.
    with pytest.raises(ConfigError) as other:
        ckpt.check_resumable(latest, {**identity, "model.name": "t5s-tiny"}, None)
    assert "train.resume" in str(other.value) and "is of another run" in str(other.value)
    assert "model.name barto-tiny" in str(other.value)
    weights = latest / "mp_rank_00_model_states.pt"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated on disk
    with pytest.raises(Seq2SeqEsError) as damaged:
        ckpt.load(engine, latest)
    message = str(damaged.value)
    assert message.startswith(f"checkpoint {latest} could not be loaded (RuntimeError: ")
    assert message.endswith(f"it may be damaged; resume from an earlier one with --train.resume "
                            f"{tmp_path / 'checkpoints' / 'step_00000002'}")
    ckpt.load(engine, ckpt.path(2))  # the one before it loads
    (latest / "trainer_state.json").write_text('{"step": 4, "epo')
    with pytest.raises(Seq2SeqEsError, match="step_00000004 is damaged: trainer_state.json "
                                             "cannot be read"):
        ckpt.load(engine, latest)


def test_a_fresh_run_does_not_overwrite_a_finished_run_or_join_another(tmp_path):
    from seq2seq_es.config import compose
    from seq2seq_es.engine.checkpoint import check_fresh_folder
    from seq2seq_es.errors import ConfigError

    cfg = compose(task="mlsum", model="barto-tiny", overrides={"train.output_dir": str(tmp_path)})
    check_fresh_folder(tmp_path, cfg)  # an empty folder
    (tmp_path / "config.yaml").write_text("data:\n  task: mlsum\nmodel:\n  name: barto-tiny\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 3.0}\n')
    check_fresh_folder(tmp_path, cfg)  # the same run, stopped before its first checkpoint
    (tmp_path / "config.yaml").write_text("data:\n  task: sqac\nmodel:\n  name: barto-tiny\n")
    with pytest.raises(ConfigError, match=r"train.output_dir.*holds another run \(data.task "
                                          r"sqac, model.name barto-tiny in its config.yaml\)"):
        check_fresh_folder(tmp_path, cfg)
    (tmp_path / "config.yaml").write_text("data:\n  task: mlsum\nmodel:\n  name: barto-tiny\n")
    (tmp_path / "final").mkdir()
    (tmp_path / "DONE").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds a finished run \(DONE, final\) and no "
                                          r"checkpoint to resume from"):
        check_fresh_folder(tmp_path, cfg)


@pytest.mark.parametrize("text, says", [
    ("experiment: [1, 2\n", "cannot be read"),
    ("experiment: lr sweep\ndata:\n  task: mlsum\n", "its sections experiment are not a run's"),
    ("- a list\n", "expected a mapping of sections"),
])
def test_a_fresh_run_does_not_replace_a_config_yaml_of_the_users(tmp_path, text, says):
    # A folder holding the user's own config.yaml (unreadable, or no run's): the run wrote its
    # resolved config over it without a word.
    from seq2seq_es.config import compose
    from seq2seq_es.engine.checkpoint import check_fresh_folder
    from seq2seq_es.errors import ConfigError

    cfg = compose(task="mlsum", model="barto-tiny", overrides={"train.output_dir": str(tmp_path)})
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as refused:
        check_fresh_folder(tmp_path, cfg)
    assert refused.value.key == "train.output_dir"
    assert str(refused.value).startswith(f"config key 'train.output_dir': {tmp_path / 'config.yaml'} "
                                         f"is not a run's config (")
    assert says in str(refused.value)
    assert str(refused.value).endswith("a new run would replace it with its own: choose another "
                                       "train.output_dir, or move that file")


@pytest.mark.slow
def test_resuming_another_models_run_is_refused_without_a_traceback(files, tmp_path):
    out = tmp_path / "barto"
    run("none", 1, base_args(files, out, steps=2))
    proc = run("none", 1, base_args(files, out, model="t5s-tiny", steps=4,
                                    extra=["--train.resume", "auto"]), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: config key 'train.resume': checkpoint ") and "Traceback" \
        not in proc.stderr, proc.stderr[-3000:]
    # only what differs is named
    assert "is of another run (model.name barto-tiny; this run: model.name t5s-tiny)" in error


class _FolderOnlyEngine:
    """DeepSpeed's save_checkpoint as the Checkpointer sees it: a folder named by the tag."""

    def save_checkpoint(self, root, tag, save_latest):
        (Path(root) / tag).mkdir(parents=True)


def test_a_save_clears_the_leftovers_of_interrupted_saves_and_deletes(tmp_path):
    # A run killed mid-save (or mid-rotation) leaves hidden folders of whole checkpoints;
    # never cleared, every preemption leaked a checkpoint's worth of disk.
    from seq2seq_es.engine.checkpoint import Checkpointer, TrainState

    root = tmp_path / "checkpoints"
    (root / ".tmp-step_00000001").mkdir(parents=True)
    (root / ".tmp-step_00000001" / "junk").write_text("half a checkpoint")
    (root / ".tmp-step_00000009").mkdir()
    (root / ".removing-step_00000004").mkdir()
    (root / ".removing-step_00000004" / "junk").write_text("half deleted")
    ckpt = Checkpointer(root, D.read_env({}), keep_last=2)
    ckpt.save(_FolderOnlyEngine(), TrainState(step=2))
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002"]


def test_a_step_folder_without_trainer_state_is_not_a_checkpoint(tmp_path):
    # A step_N/ folder with no trainer_state.json (emptied by hand, a copy cut short) must not
    # be what --train.resume auto picks: it would fail to load instead of the one before it.
    from seq2seq_es.engine.checkpoint import Checkpointer
    from seq2seq_es.run_files import complete_checkpoints

    root = tmp_path / "checkpoints"
    (root / "step_00000003").mkdir(parents=True)
    assert complete_checkpoints(root) == []
    (root / "step_00000002").mkdir()
    (root / "step_00000002" / "trainer_state.json").write_text('{"step": 2}')
    assert complete_checkpoints(root) == [(2, root / "step_00000002")]
    assert Checkpointer(root, D.read_env({}), keep_last=2).latest() == root / "step_00000002"


# One rank fails at step 3 (a Python error of its own); the package's entry otherwise as usual.
FAILING_RANK_ENTRY = """
import os, sys
from seq2seq_es.engine import step
original = step.TrainStep.__call__
def failing(self, micro_batches, at):
    if os.environ["RANK"] == "1" and at == 2:
        raise ValueError("rank 1 fails at step 3")
    return original(self, micro_batches, at)
step.TrainStep.__call__ = failing
import torch.distributed as dist
shown = sys.excepthook
def said(*error):  # what the rank's process group was when its error went out
    print(f"rank {os.environ['RANK']}: process group up when its error was said: "
          f"{dist.is_initialized()}", file=sys.stderr, flush=True)
    shown(*error)
sys.excepthook = said
from seq2seq_es.cli import console
console(["train", *sys.argv[1:]])
"""


@pytest.mark.slow
def test_a_rank_that_fails_is_named_as_the_cause_and_the_others_say_one_line(files, tmp_path):
    # Rank 0 waits for rank 1 in the step's collective when rank 1 fails: rank 1's error is
    # the cause, said first, and torchrun's summary names it; rank 0 says one line (it printed
    # gloo's "Connection closed by peer" traceback, which torchrun named the root cause).
    import subprocess
    import sys

    from engine_runs import REPO, _env, free_port

    entry = tmp_path / "failing_rank.py"
    entry.write_text(FAILING_RANK_ENTRY)
    args = base_args(files, tmp_path / "run", steps=6, batch=2)
    env = {**_env(), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(entry), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    root_cause = output.split("Root Cause (first observed failure):", 1)[1]
    assert "rank      : 1 (local_rank: 1)" in root_cause, output[-4000:]
    assert "ValueError: rank 1 fails at step 3" in root_cause
    lost = [line for line in output.splitlines()
            if line.startswith("error: lost contact with another rank")]
    assert len(lost) == 1, output[-4000:]
    assert "pair.cc" not in output.replace(lost[0], "")  # gloo's traceback is not printed
    # the failing rank kept its connections until its error was out (Trainer.__exit__): closed
    # first, the other rank's "connection closed" came before the cause
    assert "rank 1: process group up when its error was said: True" in output, output[-4000:]


@pytest.mark.slow
def test_a_file_only_one_rank_reads_stops_every_rank_before_the_resume_is_announced(files,
                                                                                   tmp_path):
    # Rank 1's random-state file is damaged: rank 1 names it; rank 0 said "resumed from ..."
    # first, for a resume that did not happen, then failed in the next collective.
    out = tmp_path / "run"
    run("torchrun", 2, base_args(files, out, steps=2, batch=2))
    (out / "checkpoints" / "step_00000002" / "rng" / "rank_1.pt").write_bytes(b"damaged")
    proc = run("torchrun", 2, base_args(files, out, steps=4, batch=2, extra=[
        "--train.resume", "must"]), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "resumed from" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "step_00000002" in errors[0], errors


def test_a_long_reader_error_is_cut_at_a_word(tmp_path):
    # torch's "PytorchStreamReader failed ..." runs on; it was cut mid-word ("incorrectly, o)")
    from seq2seq_es.engine.checkpoint import damaged_checkpoint_named
    from seq2seq_es.errors import Seq2SeqEsError

    words = "the file may have been transferred incorrectly or written by another program " * 6
    with pytest.raises(Seq2SeqEsError) as error:
        with damaged_checkpoint_named(tmp_path / "step_00000004", "resume from"):
            raise RuntimeError(f"PytorchStreamReader failed reading zip archive: {words}")
    detail = re.search(r"\(RuntimeError: (.*)\); it may be damaged", str(error.value)).group(1)
    assert detail.endswith(" ...") and len(detail) <= 300
    kept = detail.removesuffix(" ...").split()  # whole words only
    assert all(word in words.split() + ["PytorchStreamReader", "failed", "reading", "zip",
                                        "archive:"] for word in kept)


@pytest.mark.parametrize("change, says", [
    ({"model": "t5s-tiny"}, "is of another run (model.name barto-tiny; this run: model.name "
                            "t5s-tiny)"),
    ({"dist.zero_stage": "2"}, "was saved with dist.zero_stage 0 -> 2: DeepSpeed lays its "
                               "files out otherwise there"),
    ({"train.precision": "fp16"}, "was saved with train.precision fp32 -> fp16"),
    ({}, None)])
def test_a_checkpoint_of_an_older_version_is_checked_by_its_run_folders_files(tmp_path, change,
                                                                              says):
    # Checkpoints written before 2026-12-02 hold no run identity nor storage layout in their
    # trainer_state.json: a resume of another model or ZeRO stage was reported 'may be
    # damaged', naming an earlier checkpoint that failed the same way (upgrade audit). Their
    # run folder's config.yaml and deepspeed_config.json say both.
    import json

    from seq2seq_es.config import compose
    from seq2seq_es.engine.checkpoint import Checkpointer, run_identity, storage_layout
    from seq2seq_es.engine.optim import deepspeed_config
    from seq2seq_es.errors import ConfigError

    run_dir = tmp_path / "run"
    # fp32 written down: `auto` resolves to bf16 on a GPU
    trained = compose(task="mlsum", model="barto-tiny",
                      overrides={"train.output_dir": str(run_dir), "train.precision": "fp32"})
    step = run_dir / "checkpoints" / "step_00000040"
    step.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(trained.to_yaml())
    (run_dir / "deepspeed_config.json").write_text(json.dumps(deepspeed_config(trained, 1)))
    (step / "trainer_state.json").write_text(json.dumps({"step": 40, "world_size": 1}))
    now = compose(task="mlsum", model=change.get("model", "barto-tiny"),
                  overrides={"train.output_dir": str(run_dir),
                             **{k: v for k, v in change.items() if k != "model"}})
    checkpointer = Checkpointer(run_dir / "checkpoints", D.read_env({}), keep_last=2)
    if says is None:
        assert checkpointer.check_resumable(step, run_identity(now), storage_layout(now)).step == 40
        return
    with pytest.raises(ConfigError) as refused:
        checkpointer.check_resumable(step, run_identity(now), storage_layout(now))
    assert refused.value.key == "train.resume" and says in str(refused.value)


def test_a_layout_refusal_says_when_the_code_reading_the_data_changed(tmp_path):
    # An upgrade read the same SQAC file into 40 examples where the checkpoint's run read 35:
    # "Set these back to resume" named settings the user had not changed (upgrade audit).
    import json

    from seq2seq_es.engine.checkpoint import Checkpointer, TrainState
    from seq2seq_es.engine.run_dir import library_versions
    from seq2seq_es.errors import ConfigError

    run_dir = tmp_path / "run"
    step = run_dir / "checkpoints" / "step_00000010"
    step.mkdir(parents=True)
    saved = {"train.seed": 42, "train.batching": "fixed", "training examples": 35,
             "steps per epoch": 17, "train.batch_size x train.grad_accum x ranks": 2}
    (step / "trainer_state.json").write_text(TrainState(step=10, data_layout=saved).to_json())
    now = {**saved, "training examples": 40, "steps per epoch": 20}
    checkpointer = Checkpointer(run_dir / "checkpoints", D.read_env({}), keep_last=2)
    versions = library_versions()
    (run_dir / "versions.json").write_text(json.dumps(versions))
    with pytest.raises(ConfigError) as same_code:
        checkpointer.check_layout(step, now)
    assert "training examples 35 -> 40" in str(same_code.value)
    assert "The code that reads the data changed" not in str(same_code.value)
    assert "Set these back to resume" in str(same_code.value)
    (run_dir / "versions.json").write_text(json.dumps({**versions, "datasets": "2.0.0"}))
    with pytest.raises(ConfigError) as upgraded:
        checkpointer.check_layout(step, now)
    assert ("another data layout (steps per epoch 17 -> 20; training examples 35 -> 40): its "
            "position in the epoch would point at other examples (some never trained, some "
            "twice) and the schedule at another length. The code that reads the data changed "
            f"since its run started (datasets 2.0.0 -> {versions['datasets']}; versions.json): "
            "if the data files are the same, these versions read them into other examples. "
            "Resume with the versions in its versions.json, or carry its weights into a new "
            "run: `seq2seq-es export") in str(upgraded.value)
    # a setting changed too (after a git pull, say): that is what to set back
    with pytest.raises(ConfigError) as set_too:
        checkpointer.check_layout(step, {**now, "train.seed": 7})
    assert "Set these back to resume" in str(set_too.value)
    assert "The code that reads the data changed" not in str(set_too.value)
    checkpointer.check_layout(step, saved)  # the same layout resumes


def test_an_older_checkpoints_run_folder_files_are_read_as_far_as_they_go(tmp_path):
    # A config.yaml naming a model this version does not know (hand-edited, or a newer
    # version's) is not checked, as before: it was an 'unknown model' naming no file. A
    # deepspeed_config.json without data_types records no accumulation dtype to set back.
    import json

    from seq2seq_es.config import compose
    from seq2seq_es.engine.checkpoint import Checkpointer, run_identity, storage_layout
    from seq2seq_es.engine.optim import deepspeed_config
    from seq2seq_es.errors import ConfigError

    run_dir = tmp_path / "run"
    trained = compose(task="mlsum", model="barto-tiny",
                      overrides={"train.output_dir": str(run_dir), "train.precision": "fp32"})
    step = run_dir / "checkpoints" / "step_00000040"
    step.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(trained.to_yaml().replace("name: barto-tiny",
                                                                   "name: barto-huge-es"))
    written = deepspeed_config(trained, 1)
    del written["data_types"]
    (run_dir / "deepspeed_config.json").write_text(json.dumps(written))
    (step / "trainer_state.json").write_text(json.dumps({"step": 40, "world_size": 1}))
    checkpointer = Checkpointer(run_dir / "checkpoints", D.read_env({}), keep_last=2)
    assert checkpointer.check_resumable(step, run_identity(trained),
                                        storage_layout(trained)).step == 40
    staged = compose(task="mlsum", model="barto-tiny",
                     overrides={"dist.zero_stage": "2", "train.precision": "fp32"})
    with pytest.raises(ConfigError) as refused:
        checkpointer.check_resumable(step, run_identity(staged), storage_layout(staged))
    assert "was saved with dist.zero_stage 0 -> 2: DeepSpeed" in str(refused.value)
    assert "grad_accum_dtype" not in str(refused.value)
