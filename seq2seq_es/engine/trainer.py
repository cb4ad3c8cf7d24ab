"""The Trainer: build a run in `__init__`, `train()` it, `close()` it. Read top to bottom.

    with Trainer(cfg) as trainer:   # process group, model, data, engine, resume
        trainer.train()             # steps; validation, checkpoints, stop signals; the end

`train()` is a short loop over steps; what happens after a step is in the cadence helpers, in
order: `maybe_log` (the one read-back of a logging interval), `maybe_eval` (validation at
epoch ends and every `eval_every` steps, tracking the best), `maybe_save` (a new best, the
clock, `save_every`, a stop signal) and `maybe_stop` (leave after a stop signal's save).
`finish` ends the run. The step itself (loss normalisation, no per-micro-batch read-back) is
`step.TrainStep`, the checkpoint folders `checkpoint.Checkpointer` with the `TrainState` saved in
each, the export `export.export_hf`.

The best checkpoint: every validation (each epoch end, every `eval_every` steps, the end)
compares `train.best_metric`; a new best is saved at once and named in the trainer state of
every later checkpoint, so rotation keeps it and a resume remembers it. At the end the run goes
back to it (`load_best_at_end`), scores the test split, exports `final/` and writes
`final_results.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import run_files
from ..config import RunConfig, validate
from ..data.rows import rows_of
from ..errors import ConfigError, Seq2SeqEsError
from ..run_files import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE
from . import distributed as D
from . import storage
from .builders import (check_targets, compile_shapes, get_collator, get_engine,
                       get_generation_config, get_model, get_step_plan, has_test_split,
                       load_split, tokenize_split, warm_up_compiled)
from .checkpoint import (Checkpointer, TrainState, check_fresh_folder, data_layout, run_identity,
                         storage_layout)
from .evaluation import evaluate
from .export import export_hf
from .optim import apply_schedule, use_bf16
from .profiling import StepProfiler
from .progress import quiet_library_progress
from .run_dir import (RunLog, changed_settings, check_before_training, settings_changed,
                      write_json_atomic)
from .run_lock import hold_run_folder
from .signals import StopRequest
from .step import NonFiniteLoss, TrainStep  # noqa: F401  (NonFiniteLoss: what train() raises)


class Stopped(Seq2SeqEsError):
    """Raised after a stop signal was handled and a checkpoint saved; carries the exit code and
    whether this rank reports it (every rank stops together: one line says so)."""

    def __init__(self, message: str, exit_code: int, reports: bool = True):
        super().__init__(message)
        self.exit_code = exit_code
        self.reports = reports


def peak_memory_gib(device: torch.device) -> float | None:
    """The most GPU memory any rank's tensors held since the last call (GiB; torch's allocator
    counter, a host value: no device sync), then the counters start again; None off the GPU.
    Collective on GPUs (the maximum over ranks: ZeRO's shards and uneven batches differ)."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return D.all_reduce_max(peak, device)


def check_best_metric(best: dict | None, metric: str) -> None:
    """A resumed run chooses its best checkpoint by the metric its checkpoints chose by: another
    would compare its values with the stored best's value of the first (a ROUGE-L against a
    loss), keep the wrong checkpoint and name it by the wrong metric."""
    if not best or best.get("metric") in (None, metric):
        return
    raise ConfigError("train.best_metric", f"the run's checkpoints chose their best by "
                      f"{best['metric']} (step {best.get('step')}), this run would choose by "
                      f"{metric}; resume with the settings that chose {best['metric']} "
                      "(train.best_metric, train.eval_generate), or start a new run in another "
                      "train.output_dir")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# cuBLAS picks its reduction order per workspace; a fixed workspace makes its matmuls repeat
# bit for bit (CUDA's documented setting; read when the first cuBLAS handle is made).
CUBLAS_WORKSPACE = ":4096:8"


def use_deterministic_kernels() -> None:
    """train.deterministic: torch refuses every op without a deterministic implementation, cuDNN
    stops choosing algorithms by timing, and cuBLAS gets a fixed workspace. Called before the
    model reaches the GPU. On the CPU the kernels are deterministic already."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def deterministic_refusal(exc: BaseException) -> ConfigError | None:
    """The error that names train.deterministic for an op torch refused under it, or None."""
    text = str(exc)
    if "does not have a deterministic implementation" not in text:
        return None
    return ConfigError("train.deterministic", f"{text.splitlines()[0].split(', but')[0]}, so "
                       "this run cannot be deterministic on this device; set "
                       "train.deterministic false (or another model.attention)")


def is_better(value: float, best: dict | None, metric: str, loss: float | None = None) -> bool:
    """Lower is better for the loss, higher for every other metric; NaN never wins. A tie on
    the metric goes to the lower validation loss (`loss`): early in training, or on a hard task,
    ROUGE or F1 can stay at one value (often 0) while the model improves, and keeping the first
    of equals chose the least trained checkpoint."""
    if value != value:
        return False
    if best is None:
        return True
    if value == best["value"] and metric != "loss" and loss is not None:
        best_loss = best.get("validation", {}).get("loss")
        return best_loss is not None and loss < best_loss
    return value < best["value"] if metric == "loss" else value > best["value"]


def without_prefix(results: dict, prefix: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(prefix + "/")}


class SaveClock:
    """Rank 0's wall clock for time-based saves (train.save_every_min; 0 = off)."""

    def __init__(self, minutes: float, is_main: bool):
        self.seconds, self.is_main = minutes * 60, is_main
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.is_main and self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = time.monotonic()



def after_stop(signal_name: str, code: int, environ, resume: str = "none") -> str:
    """What happens after a stop signal's checkpoint, for the stop line. A job of `seq2seq-es
    slurm` (submitit's process: SUBMITIT_FOLDER) requeues itself (slurm.job.TrainJob) while it
    has requeues left (run_files.REQUEUES_LEFT_ENV, set by the job); anywhere else the user
    starts the run again. SIGTERM is also scancel's: the job decides, from SLURM's record,
    whether it ends. `resume`: the run's train.resume; a run that has it at auto already (the
    demo's, a config file's) is continued by the same command again."""
    if "SUBMITIT_FOLDER" not in environ or code != PREEMPTED_EXIT_CODE:
        if resume == "auto":
            return "the same command again resumes from it (train.resume is auto)"
        return "resume with --train.resume auto"
    if signal_name == "SIGTERM":
        return ("the job is requeued if SLURM requeues it, and ends if it was cancelled "
                "(seq2seq-es slurm status)")
    if environ.get(run_files.REQUEUES_LEFT_ENV) == "0":
        # The line said "the job requeues itself" just before the job gave up.
        return ("the job has used its requeues and ends; `seq2seq-es slurm resume` continues "
                "it from this checkpoint (seq2seq-es slurm status)")
    return "the job requeues itself and resumes from it (seq2seq-es slurm status)"

def check_steps_left(cfg: RunConfig, step: int, total_steps: int, checkpoint: Path) -> None:
    """A checkpoint past the run's last step is refused: it trained nothing, then recorded a
    run of more steps than its config.yaml says (after naming the rate of a step never run)."""
    if step <= total_steps:
        return
    if cfg.train.max_steps:
        raise ConfigError("train.max_steps", f"{cfg.train.max_steps} ends before the step of "
                          f"checkpoint {checkpoint}, {step}: give {step} to end the run there, "
                          "more to train on, or another train.output_dir for a new run")
    raise ConfigError("train.epochs", f"{cfg.train.epochs} epoch(s) make {total_steps} steps, "
                      f"fewer than the {step} of checkpoint {checkpoint}: give more epochs to "
                      "train on, or another train.output_dir for a new run")


def finished_line(out: Path, step: int, metric: str, validation: dict | None,
                  test: dict | None, exported: bool) -> str:
    """The run's last line: where its results are (the demo's summary says as much; a train
    run ended on `saved checkpoint step_N`)."""
    scores = "; ".join(f"{split} {metric} {values[metric]:.4f}"
                       for split, values in (("validation", validation), ("test", test))
                       if values and isinstance(values.get(metric), (int, float)))
    kept = f"step {step}" + (f" ({scores})" if scores else "")
    predictions = [f"{split}/step_{step:08d}" for split in ("eval", "test")
                   if (out / split / f"step_{step:08d}").is_dir()]
    return (f"finished: {out / run_files.FINAL_RESULTS} holds {kept}"
            + (f"; its model is in {out / run_files.FINAL}" if exported else "")
            + (f"; predictions in {', '.join(predictions)}" if predictions else ""))


class Trainer:
    """One training run of `cfg`. Every method is collective: all ranks call it together."""

    def __init__(self, cfg: RunConfig):
        from ..tasks import task_for

        validate(cfg)  # also a config built in code, not composed: its defaults resolved too
        self.cfg = cfg
        self.env = env = D.read_env()
        # Destroyed by close() only if this run started it (a caller's group is the caller's).
        self.owns_process_group = not dist.is_initialized()
        D.init(env, cfg.dist.backend, cfg.dist.timeout_min)
        quiet_library_progress()
        check_before_training(cfg, env)  # inputs, trackers; push_to_hub: hub reachable, login
        self.out = Path(cfg.train.output_dir)
        # One training process per folder; held until close() (or the process's end).
        self.folder_lock = hold_run_folder(self.out, env)
        self.ckpt = Checkpointer(self.out / run_files.CHECKPOINTS, env, cfg.train.keep_last)
        resume_from = self.ckpt.resume_point(cfg.train.resume)
        # Both checks read the run folder: rank 0's refusal, said once (it was said per rank).
        if resume_from is None:  # a fresh run must not overwrite or mix with another one
            D.decided_by_main(env, lambda: check_fresh_folder(self.out, cfg))
            if cfg.train.resume == "auto":  # a wrong folder (a relative output_dir read from
                # another directory) started afresh without a word
                self.say(f"note: train.resume auto: no checkpoint in {self.out.resolve()}; "
                         "starting a new run")
        else:  # another run's checkpoint, or files this ZeRO stage cannot read: before loading
            D.decided_by_main(env, lambda: self.ckpt.check_resumable(
                resume_from, run_identity(cfg), storage_layout(cfg)))
        seed_everything(cfg.train.seed)
        if cfg.train.deterministic:
            use_deterministic_kernels()
            self.say("train.deterministic: deterministic kernels only")

        self.task = task_for(cfg.data)
        self.model, self.tokenizer, spec = get_model(cfg)
        # flex attention cannot drop attention probabilities: refuse such a model now, not at
        # the first training forward after the data is loaded (evaluate/predict need no check).
        spec.adapter.check_flex_dropout(self.model, cfg.model.attention)
        spec.adapter.check_flex_device(cfg.model.attention, env.device.type)
        self.build_data(spec)
        layout = data_layout(cfg, self.plan, len(self.train_data.tokenized))
        if resume_from is not None:  # before the engine and any compilation; said once (every
            # rank finds it alike, and each printed it)
            D.decided_by_main(env, lambda: self.ckpt.check_layout(resume_from, layout))
        self.engine, self.scheduler, ds_config = get_engine(self.model, cfg, env,
                                                            self.total_steps)
        # from_pretrained hands back a model in eval() mode, and nothing else switches it: BART,
        # T5 and LED trained without dropout until this line. Evaluation puts the mode back.
        self.engine.train()
        unk = self.tokenizer.unk_token_id
        compiled = warm_up_compiled(self.engine, cfg, self.plan, self.collator,
                                    self.tokenizer.pad_token_id if unk is None else unk, env)
        if compiled:
            self.say(compiled)

        identity, storage = run_identity(cfg), storage_layout(cfg)
        self.state = TrainState(world_size=env.world_size, data_layout=layout, run=identity,
                                storage=storage)
        if resume_from is not None:
            self.state = self.ckpt.load(self.engine, resume_from)  # checked above
            # equal (or compatible), or a state from before the fields existed; the ranks may
            # differ (the next checkpoint is this run's)
            self.state.data_layout, self.state.run, self.state.storage = layout, identity, storage
            self.state.world_size = env.world_size
            self.say(f"resumed from {resume_from} at step {self.state.step}")
            if resume_from.parent.resolve() != self.ckpt.root.resolve():
                self.forget_best_elsewhere()
        # The step of the newest checkpoint: a step is never saved twice (e.g. a time-based save
        # and the save of a new best at the same step).
        self.saved_step = self.state.step if resume_from is not None else None
        self.last_eval: dict = {}  # the latest validation's results (an early stop ends on it)
        self.logged_step: int | None = None  # the last step whose train/* values were logged
        # The logging interval's clock (train/tokens_per_s): its start, and the seconds since
        # then spent validating and saving (not_training), which the rate leaves out
        self.window_start, self.window_paused = time.perf_counter(), 0.0
        # A finished run resumed as it was: nothing below may rewrite its record (config.yaml,
        # versions.json, trackers), which still describes the run that trained it.
        self.finished = self.finished_before()
        if resume_from is not None and self.finished is None:  # it trains on: under what
            check_steps_left(cfg, self.state.step, self.total_steps, resume_from)
            self.follow_schedule()
            if env.is_main:
                changes = changed_settings(self.out, cfg, self.state.step)
                if changes:
                    self.say(f"note: resumed with other settings than until step "
                             f"{self.state.step} ({'; '.join(changes)}); the earlier ones are "
                             f"kept in {run_files.earlier_config(self.state.step)}")
        self.log = None if self.finished is not None else RunLog(
            self.out, cfg, env.is_main, self.total_steps, self.state.step,
            resumed=resume_from is not None)
        if env.is_main and self.finished is None:
            (self.out / run_files.DEEPSPEED_CONFIG).write_text(json.dumps(ds_config, indent=1))
            # The skip report of bad rows and the truncation counts, kept with the run rather
            # than only printed: a reader of the results can see what data the scores rest on.
            splits = {"train": self.train_data, "validation": self.eval_data,
                      "test": self.test_data}
            write_json_atomic(self.out / run_files.DATA_REPORT,
                              {name: data.data_report() for name, data in splits.items() if data})
        # Without generated validations only the loss can choose (config refuses another).
        self.best_metric = cfg.train.best_metric or (
            self.task.main_metric if cfg.train.eval_generate else "loss")
        check_best_metric(self.state.best, self.best_metric)
        self.clock = SaveClock(cfg.train.save_every_min, env.is_main)
        # The ranks' agreement begun a step ago, and the step after which it was begun
        self.pending_poll: tuple[int, D.PendingMax] | None = None
        # The step (read back once per logging interval) and the non-finite check: never
        # evaluate, save or export weights that a non-finite loss reached (on_nan=stop).
        self.stepper = TrainStep(self.engine, env, cfg)
        self.stepper.restore_loss_window(self.state.loss_window)
        self.stop = StopRequest(announce=env.is_main)
        self.profiler = StepProfiler(self.profiled_steps(), self.out / "profile", env.rank,
                                     env.device, self.say)

    def profiled_steps(self) -> tuple[int, int] | None:
        """train.profile_steps, unless this run will not train all of them (said why)."""
        steps = self.cfg.train.profile_range()
        if steps is None:
            return None
        start, end = steps
        if start <= self.state.step or end > self.total_steps:
            self.say(f"train.profile_steps {start}-{end}: not profiled, the run trains steps "
                     f"{self.state.step + 1}-{self.total_steps}")
            return None
        return steps

    def follow_schedule(self) -> None:
        """After a resume: the next step's rate from this run's schedule (more steps, another
        optim.lr), not the checkpoint's, which gave the first resumed step the old schedule's
        rate (0 at the end of a finished run's linear decay)."""
        saved = self.scheduler.get_last_lr()[0]
        rate = apply_schedule(self.scheduler)[0]
        if rate != saved:
            self.say(f"learning rate of step {self.state.step + 1}: {rate:.4g} from this run's "
                     f"schedule ({self.total_steps} steps, optim.lr {self.cfg.optim.lr:g}); the "
                     f"checkpoint's schedule gave {saved:.4g}")

    def build_data(self, spec) -> None:
        """The three splits, the collator, the generation config and the step plan."""
        cfg, tokenizer, model = self.cfg, self.tokenizer, self.model
        # Each node's first rank reads and tokenizes first; the others read its caches.
        self.train_data, self.eval_data, self.test_data = D.first_on_each_node(
            self.env, self.read_splits)
        self.collator = get_collator(cfg, spec, tokenizer, model)
        self.generation_config = get_generation_config(cfg, spec, tokenizer)
        # The collator is passed on: bucketed plans set the lengths it pads to.
        self.plan, self.total_steps = get_step_plan(cfg, self.env, self.train_data,
                                                    self.collator.pad_to_multiple_of,
                                                    collator=self.collator)
        for line in self.plan.summary():
            self.say(line)

    def read_splits(self):
        """(train, validation, test or None): read, checked and tokenized."""
        cfg, task, tokenizer, model = self.cfg, self.task, self.tokenizer, self.model
        # Every split is read and checked before any is tokenized: a bad validation or test
        # file was reported only after the whole training split had been tokenized.
        loaded = {split: load_split(cfg, task, split, max_samples, self.say)
                  for split, max_samples in (("train", cfg.data.max_train_samples),
                                             ("validation", cfg.data.max_eval_samples))}
        if has_test_split(cfg, task, self.say):
            loaded["test"] = load_split(cfg, task, "test", None, self.say)
        train = tokenize_split(cfg, task, tokenizer, model, "train", loaded["train"], self.say)
        check_targets(cfg, train)
        validation = tokenize_split(cfg, task, tokenizer, model, "validation",
                                    loaded["validation"], self.say)
        test = (tokenize_split(cfg, task, tokenizer, model, "test", loaded["test"], self.say)
                if "test" in loaded else None)  # None: no test
        return train, validation, test

    def say(self, message: str) -> None:
        if self.env.is_main:
            print(message, flush=True)

    # -- the loop ------------------------------------------------------------------------------

    def train(self) -> dict:
        """Train to `total_steps` (from a resumed state), then `finish`; the end's results."""
        cfg, state = self.cfg, self.state
        if self.finished is not None:
            return self.finished
        self.stop.install()
        try:
            if cfg.train.eval_at_start and state.step == 0 and self.track_best(0, self.run_eval(0)):
                self.save(0)
            steps = self.plan.iter_steps(state.epoch, state.step_in_epoch, self.env.rank)
            self.window_start, self.window_paused = time.perf_counter(), 0.0
            while state.step < self.total_steps and not self.stopped_early:
                epoch, step_in_epoch, micro_indices = next(steps)
                micro = [self.collator(rows_of(self.train_data.tokenized, idx))
                         for idx in micro_indices]
                # The rate this step's update uses: the scheduler advances inside engine.step().
                lr = self.scheduler.get_last_lr()[0]
                self.profiler.before(state.step + 1)
                result = self.stepper(micro, state.step)
                state.step += 1
                self.profiler.after(state.step)
                state.epoch, state.step_in_epoch = epoch, step_in_epoch + 1
                self.maybe_log(result, lr, epoch)
                improved = self.maybe_eval(self.epoch_ended)
                if self.stopped_early:  # the last step: its interval's loss is logged too
                    self.maybe_log(result, lr, epoch, last=True)
                signum, save_due = self.poll_ranks()
                self.maybe_save(improved or save_due or bool(signum))
                self.maybe_stop(signum)
            return self.finish()
        except RuntimeError as exc:
            refusal = deterministic_refusal(exc) if cfg.train.deterministic else None
            if refusal is not None:
                raise refusal from exc
            raise
        finally:
            self.stop.restore()

    def forget_best_elsewhere(self) -> None:
        """A resume from another folder's checkpoint (--train.resume PATH) carries that run's
        best, whose checkpoint is not here: the run trained on and then failed at its end
        ("the best checkpoint ... is gone"), after all its steps. Its best is chosen anew here
        from the next validation on, and said (unless that checkpoint was copied here too).
        Rank 0 looks (the checkpoints' state files may be on its disk only)."""
        best = self.state.best
        if best is None or D.broadcast_object(self.ckpt.has(best["step"])):
            return
        self.say(f"note: the best checkpoint so far (step {best['step']}, {best['metric']} "
                 f"{best['value']:.4f}) is not in {self.ckpt.root}: this run's best is chosen "
                 f"among its validations from step {self.state.step} on")
        self.state.best, self.state.evals_without_best = None, 0

    def finished_before(self) -> dict | None:
        """A resumed run that has written DONE: with nothing left to train, its record (it is
        not validated, scored or exported again, nor logged twice; `seq2seq-es evaluate RUN`
        scores it anew). With more steps to train, its DONE and final_results.json go until it
        finishes again, so that status and collect do not read it as finished meanwhile."""
        if self.saved_step is None:  # a fresh run
            return None
        done_file = self.out / run_files.DONE
        done = None
        if self.env.is_main and done_file.is_file():
            try:
                done = json.loads(done_file.read_text())
            except (OSError, ValueError):  # killed while writing it (before DONE was atomic)
                done = None
            done = done if isinstance(done, dict) else {}  # unreadable: finish it again
        reached = self.state.step >= self.total_steps or self.stopped_early
        finished = done is not None and reached and done.get("step") == self.state.step
        # rank 0's reading decides for all (one collective, no shared-folder timing between ranks)
        had_done, finished = D.all_reduce_max([float(done is not None), float(finished)],
                                              self.env.device)
        if finished:
            further = ("raise train.max_steps or train.epochs to train it further"
                       if self.state.step >= self.total_steps else
                       f"its early stopping ran out ({self.state.evals_without_best} validations "
                       "without a new best): raise train.early_stopping_patience, or set it to "
                       "0, to train it further")
            self.say(f"{self.out} finished at step {self.state.step} (DONE): nothing to train; "
                     f"{further}, or score it with `seq2seq-es evaluate {self.out}`")
            # Settings given for a finished run are not applied: said, not taken silently (its
            # test file and beams looked used, as the data was loaded and named on the way).
            changes = settings_changed(self.out, self.cfg) if self.env.is_main else []
            if changes:
                self.say(f"note: not applied to the finished run: {'; '.join(changes)} (its "
                         f"config.yaml and results stay as they were); `seq2seq-es evaluate "
                         f"{self.out} --split test` with these options scores it under them")
            return done or {"step": self.state.step}
        if had_done and self.env.is_main:
            if "step" in done:
                self.say(f"{self.out} had finished at step {done['step']}; it trains on to step "
                         f"{self.total_steps}: its DONE and final_results.json are removed "
                         "until it finishes again")
            else:
                self.say(f"{self.out}'s DONE cannot be read (the run was stopped while "
                         "writing it): it finishes again")
            (self.out / run_files.FINAL_RESULTS).unlink(missing_ok=True)
            done_file.unlink()
        return None

    def maybe_log(self, result, lr: float, epoch: int, last: bool = False) -> None:
        """Every `log_every` steps, the first and the last (`last`: an early stop's): the
        interval's one read-back (the host waits for the device here, so the time is taken
        after it). A step is logged once."""
        step = self.state.step
        if step == self.logged_step or not (step % self.cfg.train.log_every == 0
                                            or step == self.total_steps or step == 1 or last):
            return
        self.logged_step = step
        values = self.stepper.read(result)  # the loss, tokens and grad norm since the last log
        window_tokens, window_padded = values["window_tokens"], values["window_padded"]
        # The tokens this process trained since window_start: a resume's window also holds the
        # steps before its checkpoint, trained by the earlier process in time not counted here
        # Validations and saves in the interval are not training time (window_paused): the
        # Trainer's logged speed leaves them out too, and a rate that dips at every validation
        # reads as a slow step.
        training_s = time.perf_counter() - self.window_start - self.window_paused
        tokens_per_s = values["new_tokens"] / max(training_s, 1e-9)
        memory = peak_memory_gib(self.env.device)
        self.log.log(step, {"train/loss": values["loss"], "train/lr": lr,
                            "train/tokens_per_s": tokens_per_s,
                            # epochs done, as a fraction (the Trainer's): the step is step
                            # state.step_in_epoch of epoch `epoch` (0-based)
                            "train/epoch": epoch + self.state.step_in_epoch
                            / max(self.plan.steps_per_epoch, 1),
                            "train/padded_fraction": 1.0 - window_tokens / max(window_padded, 1),
                            "train/skipped_micro_batches": values["skipped_micro_batches"],
                            # the interval's mean and largest gradient norm before clipping;
                            # absent when no step counted (fp16 overflows, fully skipped steps)
                            **{f"train/{key}": values[key] for key in
                               ("grad_norm", "grad_norm_max", "loss_scale", "overflow_skipped")
                               if key in values},
                            **({"train/memory_gib": memory} if memory is not None else {})})
        self.log.progress(step, values["loss"], lr, tokens_per_s, values.get("grad_norm"))
        self.window_start, self.window_paused = time.perf_counter(), 0.0

    @contextlib.contextmanager
    def not_training(self):
        """Time spent here (a validation, a save) leaves the logged tokens/s. The device first
        finishes the steps already queued, so that their time stays in the rate."""
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.window_paused += time.perf_counter() - started

    def maybe_eval(self, epoch_end: bool) -> bool:
        """Validate at epoch ends and every `eval_every` steps; True on a new best. The last
        step is validated in `finish` (see `end_eval_due`)."""
        step = self.state.step
        if not (step < self.total_steps and self.cadence_due(epoch_end)):
            return False
        with self.not_training():
            improved = self.note_validation(step, self.run_eval(step))
        if self.stopped_early:
            self.say(f"early stop at step {step}: {self.state.evals_without_best} validations "
                     f"in a row without a new best {self.best_metric} "
                     f"(train.early_stopping_patience); the best is step "
                     f"{self.state.best['step']}")
        return improved

    def note_validation(self, step: int, results: dict) -> bool:
        """Track the best and count the validations since it (kept in the checkpoints, so that
        a resumed or extended run stops where an uninterrupted one would); True on a new best."""
        self.last_eval = results
        improved = self.track_best(step, results)
        self.state.evals_without_best = 0 if improved else self.state.evals_without_best + 1
        return improved

    @property
    def stopped_early(self) -> bool:
        """train.early_stopping_patience validations in a row brought no new best. Every rank
        counts the same validations (their results are gathered), so all stop together."""
        patience = self.cfg.train.early_stopping_patience
        return bool(patience) and self.state.evals_without_best >= patience

    @property
    def epoch_ended(self) -> bool:
        """The last step done was its epoch's last."""
        return self.state.step_in_epoch == self.plan.steps_per_epoch

    def cadence_due(self, epoch_end: bool) -> bool:
        train = self.cfg.train
        return bool((train.eval_every and self.state.step % train.eval_every == 0)
                    or (train.eval_per_epoch and epoch_end))

    def end_eval_due(self) -> bool:
        """The last step is validated with train.eval_at_end, and also without it when the
        cadence falls there (the last epoch's end, a multiple of eval_every): eval_at_end=false
        saves the extra validation only, never the last epoch's, which would otherwise be
        trained but never a candidate for the best checkpoint."""
        return bool(self.cfg.train.eval_at_end or self.cadence_due(self.epoch_ended))

    def poll_ranks(self) -> tuple[float, float]:
        """(stop signal, time-based save due), agreed by all ranks in one collective every
        train.stop_check_every steps: DeepSpeed's save is collective, so every rank must save
        at the same step, and rank clocks disagree. After the last step neither matters (the
        run saves and ends anyway).

        Several ranks read the agreement one step late: begun after step k, it is read after
        step k+1, whose kernels are queued by then. Read at once, it made the host wait for
        step k's kernels to end, and the GPU idle while the host read and collated the next
        batch, every step. So a signal or a due save noted after step k is acted on after step
        k+1, by every rank alike. One process needs no collective and answers at once."""
        step = self.state.step
        if step >= self.total_steps:
            self.pending_poll = None
            return 0.0, 0.0
        agreed = [0.0, 0.0]
        if self.pending_poll is not None:
            begun_at, pending = self.pending_poll
            agreed = pending.read()
            if self.saved_step is not None and self.saved_step >= begun_at:
                agreed[1] = 0.0  # saved since the clock asked (a new best at that step): done
        self.pending_poll = None
        if step % max(self.cfg.train.stop_check_every, 1) == 0:
            flags = [float(self.stop.signum), float(self.clock.due())]
            if self.env.world_size == 1:
                return flags[0], flags[1]
            if flags[1]:  # rank 0's clock: the save it asks for comes a step later, once
                self.clock.reset()
            self.pending_poll = (step, D.PendingMax(flags, self.env.device))
        return agreed[0], agreed[1]

    def maybe_save(self, asked: bool) -> None:
        """Save when asked (a new best, the clock, a stop signal) or every `save_every` steps."""
        step, every = self.state.step, self.cfg.train.save_every
        if step < self.total_steps and (asked or (every and step % every == 0)):
            with self.not_training():
                self.save(step)

    def maybe_stop(self, signum: float, *, at_end: bool = False) -> None:
        """After a stop signal's save: write PREEMPTED and leave with the signal's exit code.
        At the last step only from `finish` (at_end), whose own save has just been made."""
        step = self.state.step
        if not signum or (step >= self.total_steps and not at_end):
            return
        name = StopRequest.name(int(signum))
        if self.env.is_main:
            write_json_atomic(self.out / run_files.PREEMPTED, {"step": step, "signal": name})
        code = INTERRUPTED_EXIT_CODE if name == "SIGINT" else PREEMPTED_EXIT_CODE
        raise Stopped(f"{name} received: saved a checkpoint at step {step}; "
                      f"{after_stop(name, code, os.environ, self.cfg.train.resume)}", code,
                      reports=self.env.is_main)

    # -- validation, checkpoints ---------------------------------------------------------------

    def run_eval(self, step: int, data=None, prefix: str = "eval", generate: bool | None = None,
                 log: bool = True, logged_already: tuple[str, ...] = ()) -> dict:
        """Loss, generation and metrics on `data` (the validation split by default), logged
        (but `logged_already`, keys this step's record holds). Validations generate with
        train.eval_generate (else the loss only), the test always."""
        self.stepper.check_finite()
        cfg, data = self.cfg, self.eval_data if data is None else data
        if generate is None:
            generate = prefix != "eval" or cfg.train.eval_generate
        with self.eval_stance():
            results = evaluate(self.engine.module, tokenized=data.tokenized,
                           examples=data.examples, collator=self.collator,
                               tokenizer=self.tokenizer,
                               generation_config=self.generation_config, task=self.task,
                               env=self.env,
                               batch_size=cfg.train.eval_batch_size or cfg.train.batch_size,
                               zero_stage=cfg.dist.zero_stage, bf16=use_bf16(cfg), step=step,
                               out_dir=self.out / prefix, prefix=prefix, generate=generate,
                               sample_seed=cfg.train.seed)
        if log:
            self.log.log(step, {key: value for key, value in results.items()
                                if key not in logged_already})
        self.log.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        return results

    def eval_stance(self):
        """Evaluation of a statically compiled model runs eagerly: generation meets a new length
        at every token, and a static graph for each would compile through the whole first
        validation (and use up Dynamo's recompile limit). So does one compiled with CUDA graphs
        (model.compile_mode reduce-overhead), which would record a graph for each length."""
        import contextlib

        model = self.cfg.model
        if model.compile and (compile_shapes(self.cfg) == "static"
                              or model.compile_mode == "reduce-overhead"):
            return torch.compiler.set_stance("force_eager")
        return contextlib.nullcontext()

    def track_best(self, step: int, results: dict) -> bool:
        """True when this validation is the best so far (its step must then be saved)."""
        metric = self.best_metric
        key = f"eval/{metric}"
        if key not in results:
            raise ConfigError("train.best_metric", f"'{metric}' is not among the validation "
                              f"results; available: {', '.join(without_prefix(results, 'eval'))}")
        if not is_better(results[key], self.state.best, metric, results.get("eval/loss")):
            return False
        self.state.best = {"step": step, "metric": metric, "value": results[key],
                           "validation": without_prefix(results, "eval")}
        return True

    def save(self, step: int) -> None:
        if self.saved_step == step:
            return
        self.stepper.check_finite()
        self.state.loss_window = self.stepper.loss_window_sums()
        path = self.ckpt.save(self.engine, self.state)
        self.log.write(f"saved checkpoint {path.name}")
        self.saved_step = step
        self.clock.reset()

    # -- the end -------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Validate and save the last step, then go back to the best checkpoint, so that the
        test scores and final/ come from the model chosen on validation (the last step is often
        past the best one when a run overfits); export, final_results.json, DONE."""
        cfg, step, out = self.cfg, self.state.step, self.out
        self.log.end_progress()  # the steps are done; what follows writes its own lines
        early = self.stopped_early and step < self.total_steps
        if early:  # this step was just validated (again only after a resume here)
            end_eval = self.last_eval or self.run_eval(step)
        else:
            end_eval = self.run_eval(step) if self.end_eval_due() else {}
            if end_eval:
                self.note_validation(step, end_eval)
        self.save(step)
        # A time-limit warning that came during the last validation: the test scoring and the
        # export may not fit in what is left, so leave now, requeued, with the last step saved
        # (a resume comes straight back here). One collective: every rank leaves together.
        self.maybe_stop(D.all_reduce_max([float(self.stop.signum)], self.env.device)[0],
                        at_end=True)
        self.stop.finishing = True  # a Ctrl-C from here on no longer waits for a step's end
        best = self.state.best
        chosen = best if cfg.train.load_best_at_end else None
        if chosen is not None and chosen["step"] != step:
            then = [what for what, due in (("scored on test", self.test_data is not None),
                                           ("exported", cfg.train.export)) if due]
            if not self.ckpt.has(chosen["step"]):  # deleted while the run trained
                raise Seq2SeqEsError(f"the best checkpoint {self.ckpt.path(chosen['step'])} is "
                                     "gone; set train.load_best_at_end=false to keep the last "
                                     "weights")
            self.say(f"best checkpoint: step {chosen['step']} ({self.best_metric} "
                     f"{chosen['value']:.4f}); its weights are "
                     + (" and ".join(then) if then else "loaded back"))
            self.ckpt.load_weights(self.engine, self.ckpt.path(chosen["step"]))
        if chosen is None and best is not None and best["step"] != step:
            self.say(f"train.load_best_at_end false: the last step's weights (step {step}) are "
                     f"kept, not the best checkpoint's (step {best['step']}, {self.best_metric} "
                     f"{best['value']:.4f})")
        final_step = chosen["step"] if chosen else step
        validation = chosen["validation"] if chosen else without_prefix(end_eval, "eval")
        if not cfg.train.eval_generate and (chosen or end_eval):
            # Validations ran on the loss only: the weights kept are generated and scored once
            # here, so that final_results.json holds validation scores as any run's does. Logged
            # at the kept step, as its test scores are below (a record of an earlier step after
            # later ones; the trackers plot against `step`), or the scores that chose nothing but
            # describe the model reached neither metrics.jsonl nor TensorBoard nor W&B.
            self.say(f"scoring step {final_step} on validation (train.eval_generate=false)")
            # The step's loss-only validation logged eval/loss already (TensorBoard and W&B
            # showed it twice at this step).
            validation = without_prefix(self.run_eval(final_step, generate=True,
                                                      logged_already=("eval/loss",)), "eval")
        test = None
        if self.test_data is not None and best is None:
            self.say("no validation ran (train.eval_at_end=false and no epoch or eval_every "
                     "evaluation): the test split is not scored")
        elif self.test_data is not None:
            test = without_prefix(self.run_eval(final_step, self.test_data, "test"), "test")
        if cfg.train.export:
            self.export(out / run_files.FINAL, step)
        if self.env.is_main:
            write_json_atomic(out / run_files.FINAL_RESULTS, {
                "task": self.task.name, "model": cfg.model.name,
                "main_metric": self.best_metric, "best_step": final_step, "steps": step,
                "validation": validation, "test": test,
                # train.load_best_at_end false, or no validation ran to choose by: best_step is
                # the last step (its weights were kept and scored); the best validation's step
                # is said beside it
                **({} if chosen else {
                    "kept": "last", **({"best_validation_step": best["step"]} if best else {})}),
                # how answers were compared, where not the metric's plain definition (QA's
                # exact match and F1 as MLQA's script for Spanish, not SQuAD's)
                **({"metric_options": {metric: dict(options) for metric, options
                                       in self.task.metric_options.items()}}
                   if self.task.metric_options else {}),
                **({"stopped_early": True} if early else {})})
            if cfg.train.export:
                from .hub import write_model_card
                write_model_card(out, cfg)
            (out / run_files.PREEMPTED).unlink(missing_ok=True)
            write_json_atomic(out / run_files.DONE, {"step": step, **end_eval,
                                                     "best_step": final_step})
            self.say(finished_line(out, final_step, self.best_metric, validation, test,
                                   cfg.train.export))
        # Finished: a Ctrl-C from here on (the upload) is an ordinary interrupt.
        self.stop.restore()
        if self.env.is_main:
            if cfg.train.push_to_hub:  # after DONE: a failed upload does not redo the run
                from .hub import push_final
                self.say(f"uploaded final/ to {push_final(out, cfg)}")
        return {"step": step, **end_eval, "best_step": final_step}

    def export(self, final: Path, step: int) -> None:
        """final/ from the weights now loaded. A failed write (disk full, quota) removes the
        partial folder and says so in one line: the last step is saved, and a resume of the
        finished training goes straight to this end again."""
        cfg = self.cfg
        with storage.writing(final.parent, "final/", partial=final if self.env.is_main else None,
                             then=f"checkpoint step {step} is kept, and --train.resume auto "
                                  "exports it without training again"):
            export_hf(self.engine, self.tokenizer, self.generation_config, final,
                      cfg.dist.zero_stage, self.env, dtype=cfg.train.export_dtype,
                      source_length=cfg.data.max_source_length,
                      truncation_side=self.task.source_truncation_side)

    def close(self, end_process_group: bool = True) -> None:
        """Remove the step's gradient hooks, close the log and trackers, and end the process
        group if this run started it (and `end_process_group`)."""
        if getattr(self, "profiler", None) is not None:
            self.profiler.close()
        self.stepper.close()
        if self.log is not None:
            self.log.close()
        if self.folder_lock is not None:
            self.folder_lock.release()
        if self.owns_process_group and end_process_group:
            D.close()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        # A failure on some of several ranks: the process group stays up until the process
        # ends, after its error is said (cli.console, process_exit.leave). Ended here, it closed
        # the connections the other ranks wait on first, so they failed before this rank had
        # said why, and torchrun, mpirun and SLURM named their "connection closed" as the cause.
        failing = exc_type is not None and not issubclass(exc_type, Stopped)
        self.close(end_process_group=not (failing and self.env.world_size > 1))


def train(cfg: RunConfig) -> dict:
    with Trainer(cfg) as trainer:
        return trainer.train()
