"""The names in a run folder and the exit codes that engine and slurm agree on.

The engine writes a run folder; `slurm` (TrainJob, status, collect, bench), `evaluate`/`predict`
and the demo read it. Every name either side uses is defined here once, so the writer and the
readers cannot drift apart. This module sits at the bottom of the package: it imports nothing
from it.

    RUN/
      config.yaml            the resolved config (RunLog)
      versions.json          library versions (RunLog)
      deepspeed_config.json  the DeepSpeed config the engine generated
      data_report.json       skipped rows and truncation counts per split
      metrics.jsonl          one record per logged step (metrics_log.read is its reader)
      checkpoints/           step_<N>/ (with trainer_state.json), best.json
      eval/, test/           predictions of the validation and test scoring
      evaluations/           `seq2seq-es evaluate` results, never the training's metrics
      final/                 the exported Hugging Face model
      final_results.json     task, model, main_metric, best_step, steps, validation, test
      DONE                   training finished (written last)
      PREEMPTED              a stop signal was handled and a checkpoint saved (exit code 3;
                             130 for SIGINT)
      OUT_OF_REQUEUES        TrainJob was pre-empted again with its requeues used up
      slurm_events.jsonl     TrainJob's start / requeued / finished / failed events
      submitted_config.yaml  the --config file as it was at submission (every restart reads it)
      logs/                  links to every rank's SLURM log
"""

import re
from pathlib import Path

# Exit codes of `seq2seq-es train`: a stop signal (SIGUSR2, SIGTERM) saved a checkpoint and the
# run wants to be requeued; SIGINT (Ctrl-C) saved one and the run stops (128 + SIGINT, as a shell).
PREEMPTED_EXIT_CODE = 3
INTERRUPTED_EXIT_CODE = 130

# Marker files: how a run ended (or that it must not be requeued again).
DONE = "DONE"
PREEMPTED = "PREEMPTED"
OUT_OF_REQUEUES = "OUT_OF_REQUEUES"

# Written by `seq2seq-es slurm submit | sweep`.
SUBMITTED_CONFIG = "submitted_config.yaml"
SWEEP_MANIFEST = "sweep.json"        # a sweep folder's plan (slurm.sweep)
RUN_MANIFEST = "slurm_job.json"      # a `slurm submit` run folder's plan

# Written by the engine.
CONFIG = "config.yaml"
VERSIONS = "versions.json"
DEEPSPEED_CONFIG = "deepspeed_config.json"
DATA_REPORT = "data_report.json"
METRICS = "metrics.jsonl"
# Set by a `seq2seq-es slurm` job (slurm.job.TrainJob) for the engine: how many more times it
# may requeue itself, so that the stop line does not promise a requeue that will not come.
REQUEUES_LEFT_ENV = "SEQ2SEQ_ES_REQUEUES_LEFT"
WANDB_RUN_ID = "wandb_run_id"       # the W&B run a resumed run continues (engine.run_dir)
RUN_LOCK = "train.lock"  # locked by the process training in the folder (engine.run_lock)
CHECKPOINTS = "checkpoints"
CHECKPOINT_DIR = re.compile(r"^step_(\d{8})$")  # checkpoints/step_<N>, N zero-padded to 8
TRAINER_STATE = "trainer_state.json"  # inside checkpoints/step_<N>: the folder is complete
BEST = "best.json"                    # inside checkpoints/: the best validation so far
FINAL = "final"
FINAL_RESULTS = "final_results.json"
EVALUATIONS = "evaluations"

# Written by slurm.job.TrainJob.
SLURM_EVENTS = "slurm_events.jsonl"
LOGS = "logs"


def checkpoint_run_dir(checkpoint: str | Path) -> Path | None:
    """The run folder a checkpoint folder RUN/checkpoints/step_N belongs to (RUN, whether or
    not it holds a config.yaml); None for a folder elsewhere."""
    path = Path(checkpoint)
    return path.parent.parent if path.parent.name == CHECKPOINTS else None


def complete_checkpoints(checkpoints: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint in a run's checkpoints/ folder, by step. A
    step folder exists only once complete (saved under a temporary name, then renamed) and holds
    trainer_state.json; a missing folder has none."""
    root = Path(checkpoints)
    if not root.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in root.iterdir()
             if (match := CHECKPOINT_DIR.match(path.name)) and path.is_dir()
             and (path / TRAINER_STATE).is_file()]
    return sorted(found)


def earlier_config(step: int) -> str:
    """The name a resume with changed settings keeps the run's config.yaml under: what it
    trained with until `step` (engine.run_dir.changed_settings)."""
    return f"config.until_step_{step}.yaml"


EARLIER_CONFIG = re.compile(r"^config\.until_step_(\d+)\.yaml$")


def earlier_versions(step: int) -> str:
    """The name a resume on other library versions keeps the run's versions.json under."""
    return f"versions.until_step_{step}.json"


def earlier_configs(run_dir: str | Path) -> list[tuple[int, str]]:
    """(step, file name) of each earlier config.yaml a run folder keeps, by step."""
    found = []
    for path in Path(run_dir).glob("config.until_step_*.yaml"):
        match = EARLIER_CONFIG.match(path.name)
        if match:
            found.append((int(match.group(1)), path.name))
    return sorted(found)


def read_run_config(run_dir: str | Path, name: str = CONFIG) -> dict | None:
    """A run folder's config.yaml (or the earlier config `name`) as {section: {key: value}};
    None when the folder has none. Raises ValueError, saying what is wrong, for a file that
    cannot be read as such (the callers name it in their own error, or pass over it)."""
    import yaml  # here: the command line imports this module at start-up

    path = Path(run_dir) / name
    if not path.is_file():
        return None
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot be read ({exc})") from None
    if loaded is None:
        return None  # empty: a run starting (the engine writes it as it starts)
    if not isinstance(loaded, dict):
        raise ValueError("expected a mapping of sections")
    return loaded


def setting_changes(before: dict, after: dict) -> list[str]:
    """'key old -> new' for each flat config key both hold with other values, in `after`'s
    order (a resume's note, and collect's warning about runs resumed with other settings)."""
    return [f"{key} {before[key]!r} -> {value!r}" for key, value in after.items()
            if key in before and before[key] != value]


def flat_run_config(config: dict) -> dict:
    """{section: {key: value}} -> {'section.key': value} (what command-line keys look like)."""
    return {f"{section}.{key}": value for section, values in config.items()
            if isinstance(values, dict) for key, value in values.items()}
