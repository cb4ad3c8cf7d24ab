"""Guards from the engine's mutation audit (round 4): behaviour of seq2seq_es/engine that a user
relies on and that no other fast test pinned down. Each test names what it guards; most call the
engine's functions directly on tiny tensors or the -tiny models, in one process. The sharded
evaluation needs real ranks: that one test starts two gloo processes and is marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_runs import REPO, demo_files, free_port, subprocess_env, tiny_step_engine
from seq2seq_es.engine import distributed as D
from seq2seq_es.engine.distributed import DistEnv

ONE = DistEnv(0, 1, 0, "127.0.0.1", 0, "none")


# -- evaluation ----------------------------------------------------------------------------------

def _eval_cfg(files: dict, folder: Path, max_new_tokens: int = 4):
    """barto-tiny on mlsum's demo files, greedy and short: a validation in seconds (also the
    evaluation guards' config)."""
    from seq2seq_es.config import compose
    return compose(task="mlsum", model="barto-tiny", overrides={
        "data.train_file": files["train"], "data.validation_file": files["validation"],
        "data.cache_dir": str(folder / "cache"), "data.max_source_length": "64",
        "data.max_target_length": "32", "gen.num_beams": "1",
        "gen.max_new_tokens": str(max_new_tokens), "gen.min_new_tokens": "0",
        "train.precision": "fp32"})


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    from seq2seq_es.engine.builders import (get_collator, get_generation_config, get_model,
                                            get_split)
    from seq2seq_es.tasks import get_task

    folder = tmp_path_factory.mktemp("guard_eval")
    files = demo_files(folder / "data", train_size=4)  # validation: 5 examples
    cfg = _eval_cfg(files, folder)
    model, tokenizer, spec = get_model(cfg)
    task = get_task("mlsum")
    data = get_split(cfg, task, tokenizer, model, "validation", None, lambda message: None)
    collator = get_collator(cfg, spec, tokenizer, model)
    kwargs = dict(tokenized=data.tokenized, examples=data.examples, collator=collator,
                  tokenizer=tokenizer,
                  generation_config=get_generation_config(cfg, spec, tokenizer),
                  task=task, env=ONE, zero_stage=0, bf16=False, step=0, out_dir=None)
    return model, kwargs, files, folder


def test_validation_loss_is_the_mean_over_target_tokens_of_all_examples(eval_setup):
    """eval/loss (what best_metric=loss and early stopping compare) is the cross-entropy per
    target token over the whole validation split, whatever the evaluation batch size: not a mean
    of batch means, nor a sum divided by the number of batches."""
    from seq2seq_es.engine.evaluation import evaluate
    from seq2seq_es.engine.loss import token_ce_sum

    model, kwargs, _, _ = eval_setup
    model.eval()
    ce, tokens = 0.0, 0
    with torch.no_grad():
        for row in kwargs["tokenized"]:  # one example at a time: no padding involved
            batch = kwargs["collator"]([row])
            labels = batch.pop("labels")
            ce += token_ce_sum(model(**batch).logits, labels).item()
            tokens += int((labels != -100).sum())
    expected = ce / tokens
    for batch_size in (1, 2, 5):
        got = evaluate(model, **kwargs, batch_size=batch_size, generate=False)["eval/loss"]
        assert got == pytest.approx(expected, rel=1e-5), batch_size
    assert not model.training  # a model handed over in eval mode is left in it


# A rank of the sharded evaluation: evaluate (loss, generation, metrics) and generate_texts
# (predict) on the validation split, batch size 2, in a real gloo group of `world` processes.
_EVAL_RANK = r'''
import json, sys
from pathlib import Path
import torch.distributed as dist
sys.path.insert(0, sys.argv[6])
from test_guards_engine import _eval_cfg
from seq2seq_es.engine.builders import get_collator, get_generation_config, get_model, get_split
from seq2seq_es.engine.distributed import DistEnv
from seq2seq_es.engine.evaluation import evaluate, generate_texts
from seq2seq_es.tasks import get_task

rank, world, port, out, files = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                 Path(sys.argv[4]), json.loads(sys.argv[5]))
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                        world_size=world)
cfg = _eval_cfg(files, out.parent)
model, tokenizer, spec = get_model(cfg)
task = get_task("mlsum")
data = get_split(cfg, task, tokenizer, model, "validation", None, lambda message: None)
collator = get_collator(cfg, spec, tokenizer, model)
generation = get_generation_config(cfg, spec, tokenizer)
env = DistEnv(rank, world, 0, "127.0.0.1", port, "torchrun")
results = evaluate(model, tokenized=data.tokenized, examples=data.examples, collator=collator,
                   tokenizer=tokenizer, generation_config=generation, task=task, env=env,
                   batch_size=2, zero_stage=0, bf16=False, step=0, out_dir=None,
                   predictions_dir=out / "predictions")
texts = generate_texts(model, features=data.tokenized, collator=collator, tokenizer=tokenizer,
                       generation_config=generation, task=task, env=env, batch_size=2,
                       zero_stage=0, bf16=False)
(out / f"rank_{rank}.json").write_text(json.dumps({"results": results, "texts": texts}))
dist.destroy_process_group()
# As the package's own processes end once they started a process group: interpreter teardown
# beside gloo's threads aborted a rank now and then ("terminate called without an active
# exception", exit code 134) after its results were written.
from seq2seq_es.process_exit import leave
leave(0)
'''


@pytest.mark.slow
def test_two_ranks_validate_every_example_once_as_one_process_does(eval_setup, tmp_path):
    """5 validation examples in batches of 2 on 2 ranks: rank 1 pads its list with an empty
    batch. The loss, the scores, predictions.jsonl (one row per example, in order) and predict's
    texts must be those of one process: the padding's outputs dropped, its tokens not counted,
    every example once and in its place."""
    from seq2seq_es.engine.evaluation import evaluate, generate_texts

    model, kwargs, files, folder = eval_setup
    alone = evaluate(model, **kwargs, batch_size=2, predictions_dir=tmp_path / "alone")
    alone_texts = generate_texts(model, features=kwargs["tokenized"],
                                 collator=kwargs["collator"], tokenizer=kwargs["tokenizer"],
                                 generation_config=kwargs["generation_config"],
                                 task=kwargs["task"], env=ONE, batch_size=2, zero_stage=0,
                                 bf16=False)
    out = folder / "two_ranks"
    out.mkdir(exist_ok=True)
    script = tmp_path / "eval_rank.py"
    script.write_text(_EVAL_RANK)
    port = free_port()
    env = subprocess_env(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), "2", str(port), str(out),
                               json.dumps(files), str(Path(__file__).parent)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    said = [proc.communicate(timeout=300)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), said
    ranks = [json.loads((out / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    for rank in ranks:  # every rank gets the results (broadcast)
        assert rank["results"].keys() == alone.keys()
        for key, value in alone.items():
            assert rank["results"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert ranks[0]["texts"] == alone_texts and ranks[1]["texts"] is None
    rows = (out / "predictions" / "predictions.jsonl").read_text().splitlines()
    assert rows == (tmp_path / "alone" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 5


# -- distributed: the ranks each launcher's environment gives -------------------------------------

def test_torchrun_variables_give_rank_world_and_local_rank():
    """torchrun, deepspeed and accelerate's torchrun launcher export RANK, WORLD_SIZE and
    LOCAL_RANK: rank 3 of 4 on its node's second GPU, meeting at MASTER_ADDR:MASTER_PORT."""
    env = D.read_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                      "MASTER_ADDR": "node7", "MASTER_PORT": "23456"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port,
            env.launcher) == (3, 4, 1, "node7", 23456, "torchrun")
    assert not env.is_main


def test_rank_without_world_size_is_not_a_launchers_rank():
    """A RANK left in the environment alone (a shell's own variable, say) is no launcher's: the
    process trains alone rather than waiting for a world that nobody declared."""
    env = D.read_env({"RANK": "1"})
    assert (env.rank, env.world_size, env.launcher) == (0, 1, "none")


def test_a_bare_srun_task_takes_its_rank_local_rank_and_rendezvous_from_slurm():
    """`srun -n 4 seq2seq-es train`: each task reads SLURM_PROCID / SLURM_NTASKS /
    SLURM_LOCALID; an exported MASTER_ADDR and MASTER_PORT win over the derived ones."""
    base = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
            "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "4711", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    env = D.read_env({**base, "MASTER_ADDR": "login2", "MASTER_PORT": "24680"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port,
            env.launcher) == (3, 4, 1, "login2", 24680, "slurm")
    derived = D.read_env(base)
    assert derived.master_port == D.rendezvous_port("4711")
    assert derived.master_addr == "gpu07"


def test_a_one_task_slurm_job_and_the_batch_script_itself_train_alone(capsys):
    """SLURM_NTASKS=1 is one process; the batch script of `sbatch --ntasks 2` (SLURM_PROCID=0
    but no SLURM_STEP_ID: srun did not start it) trains alone and says so instead of waiting
    for a rank 1 that never comes."""
    one = D.read_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0",
                      "SLURM_JOB_ID": "5"})
    assert (one.world_size, one.launcher) == (1, "none")
    D._said.clear()
    script = D.read_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "5"})
    assert (script.rank, script.world_size, script.launcher) == (0, 1, "none")
    assert "not started by srun" in capsys.readouterr().err


@pytest.mark.parametrize("nodelist, first", [
    ("node[01-03,07]", "node01"), ("gpu-a[12-13]", "gpu-a12"), ("n[001-002]-ib", "n001-ib"),
    ("a[1-2]b[3-4]", "a1b3"), ("x1,y[2-3]", "x1"), ("c[3,5-6],d1", "c3"), ("node[7]", "node7"),
    ("node5", "node5")])
def test_the_master_host_parsed_without_scontrol_is_the_first_of_the_nodelist(nodelist, first):
    """Where scontrol is missing (containers) every rank parses SLURM_JOB_NODELIST itself; a
    wrong first host makes the rendezvous wait for its whole timeout."""
    assert D.first_host_of(nodelist) == first


# -- trainer: the cadence of validation, saves, stops and early stopping -------------------------

def _bare_trainer(tmp_path: Path, total_steps: int = 20, steps_per_epoch: int = 5, **train):
    """A Trainer's loop state without a model: the cadence helpers (maybe_eval, maybe_save,
    maybe_stop, early stopping) run on a real RunConfig and TrainState; validations return
    what `results` says next, and saves are recorded."""
    from types import SimpleNamespace

    from seq2seq_es.config import RunConfig
    from seq2seq_es.engine.checkpoint import TrainState
    from seq2seq_es.engine.signals import StopRequest
    from seq2seq_es.engine.trainer import SaveClock, Trainer

    cfg = RunConfig()
    for key, value in train.items():
        setattr(cfg.train, key, value)
    t = Trainer.__new__(Trainer)
    t.cfg, t.state, t.env, t.out = cfg, TrainState(), ONE, tmp_path
    t.total_steps, t.plan = total_steps, SimpleNamespace(steps_per_epoch=steps_per_epoch)
    t.best_metric, t.saved_step, t.last_eval = "rougeL", None, {}
    t.stop, t.clock = StopRequest(announce=False), SaveClock(0, True)
    t.validated, t.saved, t.results = [], [], []
    t.window_start, t.window_paused = 0.0, 0.0  # the logging interval's clock
    t.say = lambda message: None

    def run_eval(step, *args, **kwargs):
        t.validated.append(step)
        return t.results.pop(0) if t.results else {"eval/loss": 1.0, "eval/rougeL": 0.0}
    t.run_eval = run_eval
    t.save = t.saved.append
    return t


def _advance(t, step: int) -> None:
    t.state.step = step
    t.state.epoch, t.state.step_in_epoch = divmod(step - 1, t.plan.steps_per_epoch)
    t.state.step_in_epoch += 1


def test_validation_runs_at_each_epoch_end_and_every_eval_every_steps_before_the_last(tmp_path):
    """Epoch ends (eval_per_epoch) and multiples of eval_every are validated; the last step is
    left to finish(), which validates it once, also with eval_at_end false when the cadence falls
    there (otherwise the last epoch would be trained but never a candidate for the best)."""
    t = _bare_trainer(tmp_path, eval_per_epoch=True, eval_every=0, eval_at_end=False)
    for step in range(1, 21):
        _advance(t, step)
        t.maybe_eval(t.epoch_ended)
    assert t.validated == [5, 10, 15]
    assert t.end_eval_due()  # step 20 ends the last epoch
    t = _bare_trainer(tmp_path, eval_per_epoch=False, eval_every=6, eval_at_end=False)
    for step in range(1, 21):
        _advance(t, step)
        t.maybe_eval(t.epoch_ended)
    assert t.validated == [6, 12, 18]
    assert not t.end_eval_due()  # 20 is no multiple of 6, and eval_at_end is off


def test_early_stopping_counts_validations_without_a_new_best_since_the_last_best(tmp_path):
    """train.early_stopping_patience 2: two validations in a row without a new best end the
    run; a new best in between starts the count again."""
    t = _bare_trainer(tmp_path, early_stopping_patience=2)
    stopped = []
    for step, rouge in enumerate([1.0, 0.5, 1.5, 0.5, 0.5, 2.0], start=1):
        improved = t.note_validation(step, {"eval/loss": 1.0, "eval/rougeL": rouge})
        stopped.append((improved, t.stopped_early))
        if t.stopped_early:
            break
    assert stopped == [(True, False), (False, False), (True, False), (False, False),
                       (False, True)]
    assert t.state.best["step"] == 3 and t.state.best["value"] == 1.5
    off = _bare_trainer(tmp_path, early_stopping_patience=0)  # 0: never
    for step in range(1, 6):
        off.note_validation(step, {"eval/loss": 1.0, "eval/rougeL": 0.0})
    assert not off.stopped_early


def test_a_new_best_is_saved_at_once_and_save_every_keeps_its_multiples(tmp_path):
    """The step of a new best is saved when it happens (keep-last-K then protects it), besides
    every save_every steps; the last step is saved by finish(), not here."""
    t = _bare_trainer(tmp_path, save_every=4)
    for step in range(1, 21):
        _advance(t, step)
        t.maybe_save(asked=step == 7)
    assert t.saved == [4, 7, 8, 12, 16]


def test_a_stop_signal_ends_the_run_with_its_exit_code_after_its_save(tmp_path):
    """SIGINT ends with 130 (interrupted), SIGTERM/SIGUSR2 with 3 (pre-empted, requeued by a
    SLURM job), and PREEMPTED names the step; at the last step the stop waits for finish()."""
    import signal

    from seq2seq_es.engine.trainer import Stopped

    t = _bare_trainer(tmp_path)
    _advance(t, 7)
    t.maybe_stop(0.0)  # no signal: nothing
    with pytest.raises(Stopped) as caught:
        t.maybe_stop(float(signal.SIGINT))
    assert caught.value.exit_code == 130
    assert json.loads((tmp_path / "PREEMPTED").read_text()) == {"step": 7, "signal": "SIGINT"}
    with pytest.raises(Stopped) as caught:
        t.maybe_stop(float(signal.SIGUSR2))
    assert caught.value.exit_code == 3
    _advance(t, 20)
    t.maybe_stop(float(signal.SIGTERM))  # the last step: finish() saves, scores and exports
    with pytest.raises(Stopped):
        t.maybe_stop(float(signal.SIGTERM), at_end=True)


def test_only_a_slurm_jobs_preemption_is_said_to_requeue():
    """The stop line's advice: a Ctrl-C (exit 130) inside a `seq2seq-es slurm` job is not
    requeued, so it says to resume; a pre-empted job says it requeues itself (or, with no
    requeues left, to run `slurm resume`)."""
    from seq2seq_es.engine.trainer import after_stop

    job = {"SUBMITIT_FOLDER": "/logs"}
    assert after_stop("SIGINT", 130, job) == "resume with --train.resume auto"
    assert after_stop("SIGUSR2", 3, {}) == "resume with --train.resume auto"
    # a run already resuming by itself (the demo's) is continued by its own command again
    assert after_stop("SIGINT", 130, {}, "auto") == ("the same command again resumes from it "
                                                     "(train.resume is auto)")
    assert "requeues itself" in after_stop("SIGUSR2", 3, job, "auto")
    assert "slurm resume" in after_stop("SIGUSR2", 3, {**job, "SEQ2SEQ_ES_REQUEUES_LEFT": "0"})


def test_predictions_come_back_in_the_order_of_the_examples():
    """However the ranks' batches were dealt (and predict sorts them by length), rank 0 gets
    the predictions in the order of the input examples; an example predicted twice or never is
    an error, not a silently shifted file."""
    from seq2seq_es.engine.evaluation import gather_in_order

    assert gather_in_order([(2, "c"), (0, "a"), (3, "d"), (1, "b")], 4, ONE) == \
        ["a", "b", "c", "d"]
    with pytest.raises(AssertionError, match="twice"):
        gather_in_order([(0, "a"), (1, "b"), (0, "a")], 2, ONE)
    with pytest.raises((AssertionError, KeyError)):
        gather_in_order([(0, "a"), (2, "c")], 3, ONE)


# -- checkpoints: which one a run resumes from ---------------------------------------------------

def _checkpoint_folders(root: Path, *steps: int) -> None:
    """Complete checkpoint folders as a run leaves them (trainer_state.json marks complete)."""
    from seq2seq_es.engine.checkpoint import TrainState

    for step in steps:
        folder = root / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(TrainState(step=step).to_json())


def test_train_resume_picks_the_latest_complete_checkpoint_or_refuses(tmp_path):
    """train.resume: auto continues from the newest complete checkpoint (step 10 after step 9,
    not a half-written one), none refuses a folder that holds checkpoints, must refuses one
    that holds none, and a path must be a complete checkpoint."""
    from seq2seq_es.engine.checkpoint import Checkpointer
    from seq2seq_es.errors import ConfigError

    root = tmp_path / "checkpoints"
    ckpt = Checkpointer(root, ONE, keep_last=2)
    assert ckpt.resume_point("auto") is None and ckpt.resume_point("none") is None
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        ckpt.resume_point("must")
    _checkpoint_folders(root, 9, 10)
    (root / "step_00000011").mkdir()            # killed while saving: no trainer_state.json
    (root / ".tmp-step_00000012").mkdir()
    assert ckpt.resume_point("auto") == root / "step_00000010"
    assert ckpt.resume_point("must") == root / "step_00000010"
    with pytest.raises(ConfigError, match="already holds checkpoint step_00000010"):
        ckpt.resume_point("none")
    assert ckpt.resume_point(str(root / "step_00000009")) == root / "step_00000009"
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        ckpt.resume_point(str(root / "step_00000011"))
    # a finished run: resume auto alone trains nothing, so the refusal says what each way does
    (tmp_path / "DONE").write_text('{"step": 10}')
    with pytest.raises(ConfigError) as refused:
        ckpt.resume_point("none")
    assert str(refused.value) == (
        f"config key 'train.resume': {tmp_path} holds a finished run (DONE; checkpoint "
        f"step_00000010): `seq2seq-es evaluate {tmp_path}` scores it, --train.resume auto with "
        "a larger train.max_steps or train.epochs trains it further; or choose another "
        "train.output_dir for a new run")


def test_a_state_from_before_world_size_was_saved_is_taken_for_this_runs_ranks():
    """A trainer_state.json written before it named its ranks was written by the ranks that
    resume it (the only resume those versions allowed): its per-rank step size counts this
    run's ranks, so the data-layout check and the optimizer load see an unchanged layout."""
    from seq2seq_es.engine.checkpoint import EXAMPLES_PER_STEP, TrainState

    old = {"step": 6, "data_layout": {"train.seed": 1, "train.batch_size x train.grad_accum": 4}}
    state = TrainState.from_json(json.dumps(old), 2)
    assert state.world_size == 2
    assert state.data_layout == {"train.seed": 1, EXAMPLES_PER_STEP: 8}


def test_a_resume_may_change_what_deepspeed_stores_alike_and_nothing_else(tmp_path):
    """ZeRO 1 and 2 share their checkpoint files, and stage 0 keeps fp32 weights under bf16
    autocast, so those changes resume; another stage, fp16's loss scaler at stage 0, or another
    precision under ZeRO are refused naming the keys, before DeepSpeed fails somewhere inside."""
    from seq2seq_es.engine.checkpoint import check_same_storage
    from seq2seq_es.errors import ConfigError

    def layout(stage, precision):
        return {"dist.zero_stage": stage, "train.precision": precision,
                "dist.grad_accum_dtype": "fp32"}

    for saved, now in [(layout(1, "bf16"), layout(2, "bf16")),
                       (layout(2, "fp32"), layout(1, "fp32")),
                       (layout(0, "fp32"), layout(0, "bf16")), (None, layout(3, "bf16"))]:
        check_same_storage(tmp_path, saved, now)
    refused = [(layout(0, "fp32"), layout(2, "fp32"), "dist.zero_stage 0 -> 2"),
               (layout(2, "fp32"), layout(3, "fp32"), "dist.zero_stage 2 -> 3"),
               (layout(0, "fp32"), layout(0, "fp16"), "train.precision fp32 -> fp16"),
               (layout(2, "fp32"), layout(2, "bf16"), "train.precision fp32 -> bf16")]
    for saved, now, named in refused:
        with pytest.raises(ConfigError, match=named.replace(">", ".")) as error:
            check_same_storage(tmp_path, saved, now)
        # the reason given is the changed key's: ZeRO's file sharing only for a stage change
        assert ("ZeRO 1 and 2 share theirs" in str(error.value)) == named.startswith("dist.")


def test_a_resume_on_more_ranks_with_the_same_per_rank_batch_is_refused_with_advice(tmp_path):
    """A fixed step takes batch_size x grad_accum x ranks examples: resuming a 1-rank
    checkpoint on 2 ranks with the same batch_size and grad_accum would train other examples at
    the saved position, so it is refused, with the grad_accum that keeps the step; halving
    grad_accum on 2 ranks resumes. Switching the batching names the keys it brings too."""
    from seq2seq_es.config import RunConfig
    from seq2seq_es.data.sampler import StepPlan
    from seq2seq_es.engine.checkpoint import check_same_layout, data_layout
    from seq2seq_es.errors import ConfigError

    def layout(ranks, grad_accum, batching="fixed"):
        cfg = RunConfig()
        cfg.train.batch_size, cfg.train.grad_accum, cfg.train.batching = 4, grad_accum, batching
        return data_layout(cfg, StepPlan(64, 4, grad_accum, ranks, 1), 64)

    saved = layout(1, 2)
    check_same_layout(tmp_path, saved, layout(2, 1), (1, 2))
    with pytest.raises(ConfigError, match=r"8 -> 16.*train.batch_size x train.grad_accum = 4"):
        check_same_layout(tmp_path, saved, layout(2, 2), (1, 2))
    with pytest.raises(ConfigError, match="train.max_tokens") as refused:
        check_same_layout(tmp_path, saved, layout(1, 2, "token_budget"), (1, 1))
    # the way out works for an unfinished run too (it advised model.path to a final/ that an
    # unfinished run does not have)
    assert str(refused.value).endswith(
        f"carry its weights into a new run: `seq2seq-es export {tmp_path} OUT`, then train with "
        "--model.path OUT in another train.output_dir (optimizer and schedule start afresh)")


# -- the training step: the logged loss ----------------------------------------------------------

@pytest.fixture(scope="module")
def step_engine(tmp_path_factory, one_rank):
    """A ZeRO-0 fp32 engine on barto-tiny (no dropout) and four micro-batches of 2 examples;
    its weights move with every test's steps, so each test takes its expectations from the
    weights as they are before its step."""
    files = demo_files(tmp_path_factory.mktemp("guard_step") / "data", train_size=16)
    return tiny_step_engine(files, one_rank, grad_accum=2, dropout=0.0, examples=8,
                            total_steps=10)


def _ce_and_tokens(model, batch, label_smoothing: float = 0.0) -> tuple[float, int]:
    """The token-summed cross-entropy of `batch` under `model` as it is now (eval mode), by
    plain torch, and its target tokens."""
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    inputs = dict(batch)
    labels = inputs.pop("labels")
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    model.train(was_training)
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                         ignore_index=-100, reduction="sum", label_smoothing=label_smoothing)
    return ce.item(), int((labels != -100).sum())


def _with(cfg, **sections):
    import copy

    cfg = copy.deepcopy(cfg)
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    return cfg


def test_the_logged_loss_is_per_kept_target_token_and_each_log_covers_its_own_steps(
        step_engine, one_rank):
    """train/loss with on_nan=skip: a step whose second micro-batch is non-finite logs the first
    one's loss per target token (the skipped one's tokens out of the divisor, its NaN out of the
    sum) and one skipped micro-batch; the next log covers only the steps after the last one."""
    from seq2seq_es.engine.step import TrainStep

    cfg, engine, batches = step_engine
    calls = []

    def poison_second(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 2 else output
    stepper = TrainStep(engine, one_rank, _with(cfg, train__on_nan="skip"))
    ce, tokens = _ce_and_tokens(engine.module, batches[0])
    handle = engine.module.lm_head.register_forward_hook(poison_second)
    try:
        first = stepper.read(stepper(batches[:2], 0))
        handle.remove()
        assert first["skipped_micro_batches"] == 1
        assert first["loss"] == pytest.approx(ce / tokens, rel=1e-5)
        # the weights moved: the second interval's loss is that of the moved model
        moved = [_ce_and_tokens(engine.module, batch) for batch in batches[2:]]
        second = stepper.read(stepper(batches[2:], 1))
        assert second["skipped_micro_batches"] == 0
        assert second["loss"] == pytest.approx(sum(c for c, _ in moved) / sum(t for _, t in moved),
                                               rel=1e-5)
    finally:
        handle.remove()
        stepper.close()


def test_label_smoothing_is_the_training_loss(step_engine, one_rank):
    """optim.label_smoothing 0.2 is what the step trains on and logs: the smoothed
    cross-entropy per target token, not the plain one."""
    from seq2seq_es.engine.step import TrainStep

    cfg, engine, batches = step_engine
    smoothed = _with(cfg, optim__label_smoothing=0.2)
    expected = [_ce_and_tokens(engine.module, batch, 0.2) for batch in batches[:2]]
    plain = [_ce_and_tokens(engine.module, batch) for batch in batches[:2]]
    stepper = TrainStep(engine, one_rank, smoothed)
    try:
        logged = stepper.read(stepper(batches[:2], 2))["loss"]
    finally:
        stepper.close()
    per_token = sum(c for c, _ in expected) / sum(t for _, t in expected)
    assert logged == pytest.approx(per_token, rel=1e-5)
    assert abs(per_token - sum(c for c, _ in plain) / sum(t for _, t in plain)) > 1e-3


# -- optimizer and schedule ----------------------------------------------------------------------

def test_warmup_steps_of_one_override_the_warmup_ratio():
    """optim.warmup_steps wins over optim.warmup_ratio from 1 step on: one warmup step with a
    ratio of 0.5 left in the config (a task's paper defaults) warms up for 1 step, not half the
    run."""
    from seq2seq_es.config import RunConfig
    from seq2seq_es.engine.optim import warmup_steps

    cfg = RunConfig()
    cfg.optim.warmup_steps, cfg.optim.warmup_ratio = 1, 0.5
    assert warmup_steps(cfg, 100) == 1
    cfg.optim.warmup_steps = 0
    assert warmup_steps(cfg, 100) == 50


def test_each_rank_count_enters_the_deepspeed_step_size():
    """DeepSpeed checks train_batch_size = micro-batch x accumulation x ranks at start-up: the
    generated config counts the ranks, so a 2-rank run starts."""
    from seq2seq_es.config import RunConfig
    from seq2seq_es.engine.optim import deepspeed_config

    cfg = RunConfig()
    cfg.train.batch_size, cfg.train.grad_accum = 4, 3
    generated = deepspeed_config(cfg, world_size=2)
    assert (generated["train_micro_batch_size_per_gpu"], generated["gradient_accumulation_steps"],
            generated["train_batch_size"]) == (4, 3, 24)


def test_the_optimizer_uses_the_configured_betas_eps_and_rate():
    """optim.betas, optim.eps and optim.lr reach AdamW (BART and T5 recipes differ in them)."""
    from seq2seq_es.config import RunConfig
    from seq2seq_es.engine.optim import build_optimizer

    cfg = RunConfig()
    cfg.optim.betas, cfg.optim.eps, cfg.optim.lr = [0.8, 0.95], 1e-6, 2e-4
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    optimizer = build_optimizer(model, cfg)
    for group in optimizer.param_groups:
        assert tuple(group["betas"]) == (0.8, 0.95) and group["eps"] == 1e-6
        assert group["lr"] == 2e-4


# -- the run folder's lock -----------------------------------------------------------------------

_HOLD = ("import sys, time; from pathlib import Path; "
         "from seq2seq_es.engine.run_lock import RunFolderLock; "
         "lock = RunFolderLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)")


def test_a_second_run_of_the_same_slurm_job_restart_is_refused_at_once(tmp_path, monkeypatch):
    """Only a later restart of a job waits for its earlier run's lock (a dead node's): a second
    `srun seq2seq-es train` in the same allocation and restart is another run in the folder and
    is refused at once, never let in after the wait."""
    from seq2seq_es.engine.run_lock import RunFolderLock
    from seq2seq_es.errors import ConfigError

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True, env=subprocess_env(SLURM_JOB_ID="77",
                                                            SLURM_RESTART_COUNT="1"))
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        for restart in ("1", "0"):
            monkeypatch.setenv("SLURM_RESTART_COUNT", restart)
            with pytest.raises(ConfigError, match="is in use"):
                RunFolderLock(out, same_job_wait_s=0.3, say=lambda message: None)
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_folder_that_a_failed_start_made_is_not_left_holding_only_the_lock(tmp_path,
                                                                             monkeypatch):
    """A start refused during its set-up (a bad data file) left runs/x/train.lock alone, which
    looked like a run that had started. The lock's holder removes a folder it made when nothing
    but the lock is in it; never a folder that was there, one with files, or another's."""
    from seq2seq_es.engine.run_lock import RunFolderLock
    from seq2seq_es.errors import ConfigError

    made = tmp_path / "made" / "run"
    RunFolderLock(made).release()
    assert not made.exists() and (tmp_path / "made").is_dir()  # only the folder it made
    kept = tmp_path / "kept"
    kept.mkdir()
    RunFolderLock(kept).release()
    assert kept.is_dir()
    with_files = tmp_path / "with_files"
    lock = RunFolderLock(with_files)
    (with_files / "config.yaml").write_text("train: {}\n")
    lock.release()
    assert sorted(p.name for p in with_files.iterdir()) == ["config.yaml", "train.lock"]
    # A start refused because another holds the lock it found takes nothing away.
    out = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True, env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        # as if both had started together, each finding no folder yet
        exists = Path.exists
        monkeypatch.setattr(Path, "exists", lambda path: path != out and exists(path))
        with pytest.raises(ConfigError, match="is in use"):
            RunFolderLock(out)
        monkeypatch.undo()
        assert (out / "train.lock").is_file()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_the_lock_file_names_its_holder_even_after_a_longer_earlier_text(tmp_path):
    """train.lock says who holds the folder (the refusal quotes it, and a requeued job reads its
    job id there to know it may wait): a new holder's text replaces a longer earlier one whole,
    not over its first bytes."""
    from seq2seq_es.engine.run_lock import RunFolderLock

    out = tmp_path / "run"
    out.mkdir()
    (out / "train.lock").write_text(json.dumps({"pid": 1, "command": "x" * 5000}) + "\n")
    lock = RunFolderLock(out)
    try:
        holder = json.loads((out / "train.lock").read_text())
        assert holder["pid"] == os.getpid()
    finally:
        lock.release()


def test_only_rank_0_locks_the_run_folder(tmp_path, one_rank):
    """Rank 0 holds <run>/train.lock for the run; the other ranks hold nothing (they would find
    rank 0's lock and refuse their own run)."""
    from seq2seq_es.engine.run_lock import hold_run_folder

    rank_1 = DistEnv(1, 2, 1, "127.0.0.1", 0, "torchrun")
    assert hold_run_folder(tmp_path / "run", rank_1) is None
    assert not (tmp_path / "run" / "train.lock").exists()
    lock = hold_run_folder(tmp_path / "run", ONE)
    try:
        assert (tmp_path / "run" / "train.lock").exists()
    finally:
        lock.release()


# -- storage: a write that fails -----------------------------------------------------------------

def test_a_failed_write_removes_its_partial_output_and_says_so(tmp_path):
    """A write that runs out of room (ENOSPC, as a full disk raises it) becomes one
    StorageError naming what and where, and the half-written output is removed so its space is
    free again; an OSError without an errno is a write failure too."""
    import errno

    from seq2seq_es.engine import storage

    partial = tmp_path / "final"
    with pytest.raises(storage.StorageError) as caught:
        with storage.writing(tmp_path, "the export", partial=partial):
            partial.mkdir()
            (partial / "model.safetensors").write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial / "config.json"))
    message = str(caught.value)
    assert message.startswith(f"the export could not be written in {tmp_path}: ")
    assert "No space left on device" in message and "the partial output was removed" in message
    assert not partial.exists()
    assert storage.is_write_failure(OSError("the file system refused the write"))
    assert not storage.is_write_failure(ValueError("a bug, not the disk"))


# -- rendezvous ----------------------------------------------------------------------------------

def test_a_port_whose_last_connection_is_in_time_wait_counts_as_free():
    """A rendezvous port that an earlier run's store closed (its connections in TIME_WAIT) can
    be listened on again, as the TCPStore sets SO_REUSEADDR: the check must not skip it."""
    import socket

    from seq2seq_es.engine.rendezvous import any_free_port, port_is_free

    port = any_free_port()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(1)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()   # the server side closes first: its end of the connection in TIME_WAIT
    server.close()
    client.close()
    assert port_is_free(port)


# -- accelerate's config, as `accelerate launch` exports it --------------------------------------

def test_accelerate_settings_become_the_config_keys_they_name():
    """mixed_precision fp16 and bf16 set train.precision ('no' leaves it to auto), the optimizer
    offload device none/cpu sets dist.offload_optimizer, and zero3_save_16bit_model exports in
    the run's 16-bit dtype only when mixed_precision names one."""
    from seq2seq_es.engine.distributed import launcher_overrides

    def overrides(**env):
        return launcher_overrides({f"ACCELERATE_{key}": value for key, value in env.items()},
                                  cuda=False)

    assert overrides(MIXED_PRECISION="fp16") == {"train.precision": "fp16"}
    assert overrides(MIXED_PRECISION="bf16") == {"train.precision": "bf16"}
    assert overrides(MIXED_PRECISION="no") == {}
    assert overrides(DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE="none") == {
        "dist.offload_optimizer": "false"}
    assert overrides(DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE="cpu") == {
        "dist.offload_optimizer": "true"}
    assert overrides(MIXED_PRECISION="no", DEEPSPEED_ZERO3_SAVE_16BIT_MODEL="true") == {}
    assert overrides(MIXED_PRECISION="bf16", DEEPSPEED_ZERO3_SAVE_16BIT_MODEL="true") == {
        "train.precision": "bf16", "train.export_dtype": "bf16"}


# -- the hub: the model card and the upload ------------------------------------------------------

def test_the_model_card_names_the_chosen_step_and_how_sources_are_cut():
    """final/README.md says which step's weights these are (the best, not the last) and which
    end of a long source is lost (the oldest dialogue turns for MIAM, the end elsewhere)."""
    from seq2seq_es.config import compose
    from seq2seq_es.engine.hub import input_notes, model_card
    from seq2seq_es.models import get_model_spec
    from seq2seq_es.tasks import task_for

    card = model_card({"task": "mlsum", "model": "barto", "best_step": 40, "steps": 100,
                       "main_metric": "rougeL", "validation": {"rougeL": 0.3}}, None, None)
    assert "the weights are those of step 40 of 100" in card
    for task, lost in (("miam", "longer sources lose their start"),
                       ("mlsum", "longer sources lose their end")):
        cfg = compose(task=task, model="barto-tiny")
        notes = input_notes(cfg, task_for(cfg.data), get_model_spec("barto-tiny"))
        assert lost in notes[0], notes[0]


def test_the_uploaded_repo_is_created_private_unless_asked_otherwise(tmp_path, monkeypatch):
    """train.push_to_hub creates a private repo by default (results not yet published must not
    go public); train.hub_private false creates a public one. Against the fake hub of
    test_trackers (a real HTTP server and the real huggingface_hub client)."""
    import huggingface_hub.constants as constants

    from seq2seq_es.config import compose
    from seq2seq_es.engine.hub import push_final
    from seq2seq_es.errors import Seq2SeqEsError
    from test_trackers import WRITER, FakeHub

    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "final_results.json").write_text(json.dumps({
        "task": "mlsum", "model": "barto-tiny", "main_metric": "rouge1", "best_step": 2,
        "steps": 4, "validation": {"rouge1": 0.5}, "test": None}))
    hub = FakeHub(WRITER)
    try:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        for overrides, private in (({}, True), ({"train.hub_private": "false"}, False)):
            cfg = compose(task="mlsum", model="barto-tiny",
                          overrides={"train.push_to_hub": "tester/tiny", **overrides})
            with pytest.raises(Seq2SeqEsError):  # the fake hub takes no upload
                push_final(out, cfg)
            [create] = [body for method, path, body, _ in hub.requests
                        if path == "/api/repos/create"]
            asked_private = create.get("visibility") == "private" or create.get("private") is True
            assert asked_private is private, create
            hub.requests.clear()
    finally:
        hub.close()


def test_only_accelerate_asked_for_several_processes_is_warned_about(capsys):
    """accelerate's one-process launcher exports MASTER_ADDR/MASTER_PORT only when more than
    one process was asked for: that run is warned that it trains alone; a plain one-process
    `accelerate launch` (ACCELERATE_USE_CPU alone) says nothing."""
    D._said.clear()
    assert D.read_env({"ACCELERATE_USE_CPU": "True"}).world_size == 1
    assert "accelerate" not in capsys.readouterr().err
    D._said.clear()
    alone = D.read_env({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500"})
    assert alone.world_size == 1
    assert "accelerate launch was asked for more than one process" in capsys.readouterr().err


def test_the_first_every_log_every_th_and_the_last_step_are_logged_once(tmp_path):
    """train/loss is logged at step 1, every train.log_every steps and at the last step (10 of
    10 with log_every 4), each once, in metrics.jsonl."""
    from types import SimpleNamespace

    from seq2seq_es import metrics_log
    from seq2seq_es.engine.run_dir import RunLog

    t = _bare_trainer(tmp_path, log_every=4, report_to="none", progress_bar=False)
    t.total_steps, t.logged_step, t.window_start = 10, None, 0.0
    t.log = RunLog(tmp_path, t.cfg, True, 10, 0)
    t.stepper = SimpleNamespace(read=lambda result: {
        "loss": 1.0, "window_tokens": 10.0, "window_padded": 12.0, "new_tokens": 10.0,
        "skipped_micro_batches": 0})
    try:
        for step in range(1, 11):
            _advance(t, step)
            t.maybe_log(None, 1e-3, 0)
            t.maybe_log(None, 1e-3, 0)  # asked twice (an early stop's last step): logged once
    finally:
        t.log.close()
    logged = [record["step"] for record in metrics_log.read(tmp_path) if "train/loss" in record]
    assert logged == [1, 4, 8, 10]


def test_only_rank_0s_clock_asks_for_time_based_saves():
    """train.save_every_min: rank 0's clock decides (ranks' clocks disagree; the ranks agree on
    its answer in one collective), so a save is due on rank 0 only."""
    from seq2seq_es.engine.trainer import SaveClock

    assert SaveClock(1e-9, is_main=True).due()
    assert not SaveClock(1e-9, is_main=False).due()
    assert not SaveClock(0, is_main=True).due()  # 0: off


def test_evaluate_writes_predictions_and_scores_where_asked(eval_setup, tmp_path):
    """`seq2seq-es evaluate` passes its own folder: predictions.jsonl (one row per example) and
    scores.json holding the returned scores go there."""
    from seq2seq_es.engine.evaluation import evaluate

    model, kwargs, _, _ = eval_setup
    results = evaluate(model, **kwargs, batch_size=2, predictions_dir=tmp_path / "scored")
    rows = (tmp_path / "scored" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == len(kwargs["tokenized"]) == 5
    assert json.loads((tmp_path / "scored" / "scores.json").read_text()) == results


# -- the run folder's record ---------------------------------------------------------------------

def _run_cfg(tmp_path: Path, **optim):
    from seq2seq_es.config import compose
    return compose(task="mlsum", model="barto-tiny", overrides={
        "train.output_dir": str(tmp_path), "train.report_to": "none",
        "train.progress_bar": "false", **{f"optim.{k}": str(v) for k, v in optim.items()}})


def test_a_resumed_run_appends_to_metrics_jsonl(tmp_path):
    """A resume opens the run's record again: the steps logged before it are kept."""
    from seq2seq_es import metrics_log
    from seq2seq_es.engine.run_dir import RunLog

    for step in (1, 2):  # the first start, then the resume
        log = RunLog(tmp_path, _run_cfg(tmp_path), True, 2, step - 1)
        log.log(step, {"train/loss": float(step)})
        log.close()
    assert [record["step"] for record in metrics_log.read(tmp_path)] == [1, 2]


def test_a_second_resume_from_one_step_keeps_the_first_config(tmp_path):
    """Resumed with other settings, the run keeps the config it trained with until that step
    (config.until_step_<N>.yaml); resumed again from the same step, that file still holds the
    settings the steps before it were trained with, not the first resume's."""
    from seq2seq_es import run_files
    from seq2seq_es.engine.run_dir import RunLog, changed_settings

    RunLog(tmp_path, _run_cfg(tmp_path, lr=1e-4), True, 10, 0).close()
    original = (tmp_path / run_files.CONFIG).read_text()
    assert changed_settings(tmp_path, _run_cfg(tmp_path, lr=2e-4), 5) == [
        "optim.lr 0.0001 -> 0.0002"]
    RunLog(tmp_path, _run_cfg(tmp_path, lr=2e-4), True, 10, 5).close()
    assert changed_settings(tmp_path, _run_cfg(tmp_path, lr=3e-4), 5)
    assert (tmp_path / run_files.earlier_config(5)).read_text() == original


def test_a_key_the_run_did_not_read_before_is_said_so_when_it_changes(tmp_path):
    # A 30-step run (train.epochs 6 unread) resumed by epochs: "train.epochs 6 -> 3" read as
    # fewer epochs where the run had trained 2.5 of them.
    from seq2seq_es.config import compose
    from seq2seq_es.engine.run_dir import RunLog, settings_changed

    def cfg(**values):
        return compose(task="mlsum", model="barto-tiny", overrides={
            "train.output_dir": str(tmp_path), "train.report_to": "none", **values})

    RunLog(tmp_path, cfg(**{"train.max_steps": "30"}), True, 30, 0).close()
    assert settings_changed(tmp_path, cfg(**{"train.max_steps": "0", "train.epochs": "3"})) == [
        "train.epochs (not read until now: train.max_steps=30) 6 -> 3",
        "train.max_steps 30 -> 0"]


def test_progress_lines_give_the_elapsed_time_in_hours(tmp_path, capsys):
    """A log file's progress line says the elapsed time as h:mm:ss (2:05:03 after 7503 s)."""
    from seq2seq_es.engine.run_dir import RunLog

    log = RunLog(tmp_path, _run_cfg(tmp_path), True, 10, 0)
    try:
        import time
        log.started = time.monotonic() - 7503
        log.progress(1, 2.5, 1e-4, 1000.0)
    finally:
        log.close()
    line = capsys.readouterr().out
    assert "elapsed 2:05:03" in line and "since resuming" not in line  # a fresh run's whole time


def test_model_cudnn_attention_false_turns_cudnn_sdpa_off_for_the_run(tmp_path):
    """The switch get_model applies (process-wide, as the run is one model per process): SDPA
    then picks flash or memory-efficient kernels where it would pick cuDNN's."""
    import torch

    from seq2seq_es.engine.builders import get_model, set_cudnn_attention

    files = demo_files(tmp_path / "data", train_size=4)
    cfg = _eval_cfg(files, tmp_path)
    cfg.model.cudnn_attention = False
    try:
        get_model(cfg)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        cfg.model.cudnn_attention = True
        get_model(cfg)
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        set_cudnn_attention(True)
