"""The run directory: resolved config, library versions, metrics.jsonl, trackers, progress.

Only rank 0 writes here (checkpoints are written collectively by checkpoint.py). metrics.jsonl is
always written; `train.report_to` adds trackers (tensorboard, the default; wandb, an optional
extra), each a small object with log(step, values) and close().
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from .. import run_files
from ..config import RunConfig, dump
from ..metrics_log import cut_partial_line, resume_marker
# metrics.jsonl's one reader (a record per step, the last values kept), kept importable here.
from ..metrics_log import read as read_metrics  # noqa: F401
from ..errors import ConfigError, comma_names
from .progress import is_terminal

LIBRARIES = ("seq2seq-es", "torch", "transformers", "datasets", "deepspeed", "accelerate",
             "submitit", "evaluate", "tokenizers", "sentencepiece", "sacrebleu", "rouge-score")


def code_commit() -> str | None:
    """The git commit of this package's checkout, '+dirty' with uncommitted changes; None when
    it is not a checkout (an installed wheel) or git is missing. The version number alone does
    not change between commits, and a metric convention can (results tables compare runs)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    commit = code_commit()
    if commit is not None:
        out["seq2seq-es commit"] = commit
    return out


def write_versions(run_dir: Path, resumed_at: int | None) -> str | None:
    """versions.json of this start. A resume on other versions (a requeue on another node, a
    package upgraded between segments) keeps the earlier file as versions.until_step_N.json,
    as config.yaml is kept: it was overwritten, and what trained the first steps was lost.
    Returns the note saying so, or None."""
    path = run_dir / run_files.VERSIONS
    versions = library_versions()
    note = None
    if resumed_at is not None and path.exists():
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError):
            earlier = None
        if isinstance(earlier, dict) and earlier != versions:
            kept = run_files.earlier_versions(resumed_at)
            path.replace(run_dir / kept)
            changes = [f"{name} {earlier.get(name, '-')} -> {value}"
                       for name, value in versions.items() if earlier.get(name) != value]
            note = (f"note: resumed on other versions than until step {resumed_at} "
                    f"({'; '.join(changes)}); the earlier ones are kept in {kept}")
    write_json_atomic(path, versions)
    return note


def tracker_names(report_to: str) -> list[str]:
    """`train.report_to` as a list of trackers ("none" -> [])."""
    names = comma_names("train.report_to", report_to)
    return [] if names == ["none"] else names


def check_trackers(cfg: RunConfig) -> None:
    """Refuse, before any work, a tracker whose library is missing (only rank 0 needs it)."""
    if "wandb" in tracker_names(cfg.train.report_to):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("train.report_to", "wandb is not installed: pip install "
                              "seq2seq-es[wandb] (or drop wandb from train.report_to)") from None


def changed_settings(run_dir: Path, cfg: RunConfig, step: int) -> list[str]:
    """A resume's settings against the run's config.yaml: 'key old -> new' for each that
    changed (the keys that only watch or store the run aside, and those this run does not read),
    and the file the run was configured with until `step` kept as config.until_step_<step>.yaml
    (RunLog then writes the new config.yaml). Refused changes (seed, step size, ZeRO stage)
    never get here; the others (lengths, optimizer settings, generation) were taken silently, and
    the best checkpoint compares validations from before and after them."""
    changes = settings_changed(run_dir, cfg)
    if changes:
        kept = run_dir / run_files.earlier_config(step)
        if not kept.exists():  # a second resume from the same step keeps the first one's file
            kept.write_bytes((run_dir / run_files.CONFIG).read_bytes())
    return changes


def settings_changed(run_dir: Path, cfg: RunConfig) -> list[str]:
    """'key old -> new' for each setting of `cfg` that differs from the run's config.yaml
    (changed_settings' comparison, writing nothing); [] without a readable config.yaml."""
    from ..config import BOOKKEEPING_KEYS, not_applying

    try:
        saved = run_files.read_run_config(run_dir)
    except ValueError:
        return []
    if saved is None:
        return []
    import yaml

    before = run_files.flat_run_config(saved)
    now = run_files.flat_run_config(yaml.safe_load(cfg.to_yaml()))
    skipped = BOOKKEEPING_KEYS | set(not_applying(cfg))
    changes = run_files.setting_changes(
        {key: value for key, value in before.items() if key not in skipped}, now)
    # A key the run did not read until now (train.epochs under train.max_steps): its old value
    # was a default nobody trained by, so "train.epochs 6 -> 3" read as fewer epochs where
    # the run had trained 2.5 of them.
    unread_then = _not_applying_in(run_dir) if changes else {}
    described = []
    for change in changes:
        key, values = change.split(" ", 1)
        described.append(f"{key} (not read until now: {unread_then[key]}) {values}"
                         if key in unread_then else change)
    return described


def _not_applying_in(run_dir: Path) -> dict[str, str]:
    """config.not_applying of the run's config.yaml ({} where it no longer composes)."""
    from ..config import compose, not_applying
    from ..errors import Seq2SeqEsError

    try:
        return not_applying(compose(config_file=str(run_dir / run_files.CONFIG)))
    except (Seq2SeqEsError, ValueError, OSError):
        return {}


def check_tracker_login(cfg: RunConfig) -> None:
    """Refuse, before the model loads, a W&B run that has no API key: without a terminal to ask
    at, wandb.init raised "No API key configured" only after the data and the model had loaded
    (leaving config.yaml and metrics.jsonl behind). Offline and disabled modes need no key."""
    if "wandb" not in tracker_names(cfg.train.report_to):
        return
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled") or \
            os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return
    if sys.stdin is not None and sys.stdin.isatty():
        return  # wandb.init asks for the key there
    import wandb
    try:
        # verify=False: the key is not checked with the server (offline machines pass). With a
        # key, wandb still asks the server for the user name it prints, unless WANDB_SILENT.
        logged_in = wandb.login(prompt=False, verify=False)
    except TypeError:
        return  # a wandb without prompt=: its own init says what is missing
    except Exception as exc:  # noqa: BLE001 (wandb's AuthenticationError: a malformed key)
        raise ConfigError("train.report_to", f"wandb cannot log in: {exc}") from None
    if not logged_in:
        raise ConfigError("train.report_to", "wandb has no API key on this machine "
                          "(WANDB_API_KEY, `wandb login`, ~/.netrc): log in, or set "
                          "WANDB_MODE=offline to keep the W&B run in the run folder and "
                          "`wandb sync` it later, or drop wandb from train.report_to")


def check_inputs(cfg: RunConfig) -> None:
    """What would otherwise fail after the model is loaded and every split tokenized (or, for
    train.best_metric, at the first validation): the local data files, the DeepSpeed file, and
    that the best-checkpoint metric is one the task's validation reports."""
    from ..tasks import task_for
    from ..tasks.loading import check_data_file
    from .optim import deepspeed_config, refuse_unsupported_fp16

    task = task_for(cfg.data)
    for split in ("train", "validation", "test"):
        path = getattr(cfg.data, f"{split}_file")
        if path:
            check_data_file(f"data.{split}_file", path)
        if not path and not task.hub_id and split != "test":  # test: scored when given
            raise ConfigError(f"data.{split}_file", f"your own task {task.name} reads local "
                              f"files (it has no data.hub_dataset): pass --data.{split}_file "
                              "FILE")
    if cfg.data.train_file and not cfg.data.validation_file:
        # The validation split would come from the task's hub dataset: a model trained on the
        # user's data validated (and its checkpoint chosen) on another dataset, or, offline,
        # a failure after the model and the training set are loaded.
        raise ConfigError("data.validation_file", f"the run trains on a local file "
                          f"({cfg.data.train_file}) but has no validation file, so validation "
                          f"would come from the hub dataset {task.hub_id}; pass "
                          "--data.validation_file FILE")
    # The whole merge, not only the file: a value the file sets against a config key (a ZeRO
    # stage, the clipping) is refused before the model loads, not at the engine; so is a
    # precision this machine's DeepSpeed lacks.
    refuse_unsupported_fp16(cfg, deepspeed_config(cfg, world_size=1))
    check_best_metric_name(cfg)


def check_best_metric_name(cfg: RunConfig) -> None:
    """train.best_metric is one the task's validation reports (train refuses it before loading;
    `config` too, where a user checks a run before starting it)."""
    from ..tasks import task_for
    from .evaluation import validation_metric_names

    metric = cfg.train.best_metric
    if metric:
        task = task_for(cfg.data)
        names = validation_metric_names(task)
        if metric not in names:
            raise ConfigError("train.best_metric", f"'{metric}' is not among what a validation "
                              f"of task {task.name} reports: {', '.join(names)}")


def check_before_training(cfg: RunConfig, env) -> None:
    """Rank 0 checks, before any model or data is loaded, the inputs (`check_inputs`: data
    files, a DeepSpeed file, fp16 support, train.best_metric), the trackers' libraries and
    login, and for train.push_to_hub the hub and the login. Every rank raises rank 0's
    ConfigError, so none waits for a rank that has stopped."""
    from . import distributed as D

    def check() -> None:
        check_inputs(cfg)
        check_trackers(cfg)
        check_tracker_login(cfg)
        if cfg.train.push_to_hub:
            from .hub import check_push
            check_push(cfg)

    D.decided_by_main(env, check)


class TensorBoardTracker:
    """Scalars under RUN/tensorboard. Each start writes a session START at `first_step` (the
    first step it can log): TensorBoard then hides what an earlier process logged from that
    step on, which a run killed after its last checkpoint logged and the resumed run logs again
    (two points per step, the older from weights that were thrown away). TensorBoard's app takes
    a run's first START as its beginning, so a fresh run writes one too (at step 0)."""

    def __init__(self, run_dir: Path, cfg: RunConfig, first_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=first_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run (WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY, WANDB_DIR as wandb reads
    them; files under RUN/wandb unless WANDB_DIR is set). The run id is kept in RUN/wandb_run_id,
    so a resumed run continues the same W&B run (offline: a run of its own per resumed segment,
    see __init__). Values are plotted against our `step`, logged
    as a value (wandb's own step must only grow; the test scores come at the best step, earlier
    than the last, and a resumed run repeats steps after its checkpoint). `train.run_group` is
    the run's W&B group (`slurm sweep` sets the sweep's folder name) and a `seed-N` tag tells the
    seeds of one grid point apart, so the UI compares a sweep's runs and aggregates its seeds."""

    def __init__(self, run_dir: Path, cfg: RunConfig, first_step: int = 0):
        # Online, a resume continues the W&B run, which keeps every record: the steps a killed
        # process logged after its checkpoint stay beside the resumed ones (metrics.jsonl and
        # TensorBoard drop them). Offline, wandb cannot continue a run, and `wandb sync` of two
        # offline folders of one id keeps the last only (wandb issues 3841, 5865): a resumed
        # segment is then a W&B run of its own, named by the step it resumed from.
        import secrets

        import wandb
        id_file = run_dir / run_files.WANDB_RUN_ID
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id)
        name = run_dir.resolve().name
        offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun")
        if offline and first_step > 0:
            resumed_at = first_step - 1
            run_id, name = f"{run_id}-from-{resumed_at}", f"{name} (from step {resumed_at})"
            print(f"note: W&B offline: this resumed segment is the W&B run {run_id} ('{name}'), "
                  "as wandb cannot continue an offline run and syncing two offline runs of one "
                  f"id keeps only the last: `wandb sync` each offline-run-* folder", file=sys.stderr,
                  flush=True)
        # An empty run_group passes None, not "": wandb then takes WANDB_RUN_GROUP itself, and a
        # group given by the environment is not overridden by the key's default.
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "seq2seq-es"),
                              name=name, id=run_id, resume="allow",
                              dir=os.environ.get("WANDB_DIR") or str(run_dir),
                              config=cfg.to_dict(), group=cfg.train.run_group or None,
                              tags=[cfg.data.task, cfg.model.name, f"seed-{cfg.train.seed}"])
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log({"step": step, **values})

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def open_trackers(run_dir: Path, cfg: RunConfig, first_step: int = 0) -> list:
    """`first_step`: the first step this process can log (0 fresh, the checkpoint's + 1 on a
    resume)."""
    check_trackers(cfg)
    trackers = []
    for name in tracker_names(cfg.train.report_to):
        try:
            trackers.append(TRACKERS[name](run_dir, cfg, first_step))
        except ImportError:
            if name != "tensorboard":  # tensorboard is a dependency; stay usable without it
                raise
    return trackers


class RunLog:
    """metrics.jsonl (one JSON object per event, with `step`), the trackers of
    `train.report_to`, and the progress: a tqdm bar where stderr is a terminal, else (a SLURM log,
    `2> file`) one line per logging interval on stdout, which a redrawn bar would fill with
    carriage returns."""

    def __init__(self, output_dir: str | Path, cfg: RunConfig, is_main: bool, total_steps: int,
                 start_step: int, resumed: bool = False):
        self.dir = Path(output_dir)
        self.is_main = is_main
        self.bar = None
        self.progress_lines = False
        self.total_steps, self.started = total_steps, time.monotonic()
        # A resumed process's clock starts at its resume: the earlier segments' time is not
        # in the checkpoint, so the progress line says whose time it counts.
        self.clock_note = f" since resuming at step {start_step}" if resumed else ""
        self.first_logged: tuple[int, float] | None = None  # (step, time) of this start's first
        self.trackers: list = []
        if not is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        dump(cfg, self.dir / run_files.CONFIG)
        note = write_versions(self.dir, start_step if resumed else None)
        if note:
            print(note, file=sys.stderr, flush=True)
        metrics = self.dir / run_files.METRICS
        cut_partial_line(metrics)  # a killed process's half line, which a record would extend
        self.metrics_file = open(metrics, "a", encoding="utf-8")
        if resumed:  # the abandoned segment's steps after the checkpoint are dropped by readers
            self.metrics_file.write(json.dumps(resume_marker(start_step, time.time())) + "\n")
            self.metrics_file.flush()
        # A resumed run logs from the step after its checkpoint (a step-0 checkpoint too)
        self.trackers = open_trackers(self.dir, cfg, start_step + 1 if resumed else 0)
        if cfg.train.progress_bar and is_terminal(sys.stderr):
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True,
                            file=sys.stderr)
        else:
            # No bar (false, or no terminal): a line per log, as the Trainer's disable_tqdm
            # still prints its logs; train.log_every sets how often.
            self.progress_lines = True

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.is_main:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        scalars = {key: value for key, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
        for tracker in self.trackers:
            tracker.log(step, scalars)

    def progress(self, step: int, loss: float, lr: float, tokens_per_s: float,
                 grad_norm: float | None = None) -> None:
        """The bar, or a line per log; `grad_norm` (the interval's mean) where one was logged."""
        norm = {} if grad_norm is None else {"gnorm": f"{grad_norm:.3g}"}
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}",
                                 **norm, refresh=False)
            self.bar.refresh()
        elif self.progress_lines:
            now = time.monotonic()
            elapsed = now - self.started
            # The rate from this start's first logged step on: the steps before it carry the
            # start-up (compilation, the first validation) and a resumed run's are not its own.
            left = None
            if self.first_logged is None:
                self.first_logged = (step, now)
            elif step > self.first_logged[0]:
                rate = (now - self.first_logged[1]) / (step - self.first_logged[0])
                left = rate * (self.total_steps - step)
            self.write(f"step {step}/{self.total_steps}: train/loss {loss:.4f}, lr {lr:.2e}, "
                       + (f"grad_norm {grad_norm:.3g}, " if grad_norm is not None else "")
                       + f"{tokens_per_s:,.0f} tokens/s, elapsed {_clock(elapsed)}{self.clock_note}"
                       + (f", left ~{_clock(left)}" if left is not None else ""))

    def write(self, message: str) -> None:
        """A line of the run's record (evaluation scores, saves) on stdout, with or without the
        progress bar (which draws on stderr), so `> log.txt` keeps them either way."""
        if self.is_main:
            if self.bar is not None:
                self.bar.write(message, file=sys.stdout)
                sys.stdout.flush()
            else:
                print(message, flush=True)

    def end_progress(self) -> None:
        """Close the bar once the steps are done: it was redrawn under the end's validation,
        the test scoring and the export's own bars, and again after the `finished:` line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        if not self.is_main:
            return
        self.end_progress()
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
        self.metrics_file.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON to a temporary file and rename it: readers see the old or the new file, never
    half of one (other tools poll best.json and final_results.json while runs go on)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
