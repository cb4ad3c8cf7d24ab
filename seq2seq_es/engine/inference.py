"""`seq2seq-es evaluate` and `predict`: a saved model scored on a split, or run on a file.

What can be given as the model (`resolve_saved`):
- a run folder (train.output_dir): its `config.yaml` and its `final/` model;
- a Hugging Face folder such as RUN/final: the config comes from its parent's `config.yaml`
  (or `--config FILE`, or `--task T --model M` for a folder outside any run);
- a hub id (owner/name) that is not a local path: the hub's model files, fetched into the
  Hugging Face cache (HF_HUB_OFFLINE=1: from the cache only), then as a model folder;
- a DeepSpeed checkpoint RUN/checkpoints/step_N: the model is built from the run's config and
  the checkpoint's weights are put into it (`load_checkpoint_weights`).

Both commands work alone or under a launcher (torchrun, deepspeed, accelerate, srun), sharded
over the ranks exactly like the training's evaluation (`evaluation.py`): under ZeRO-3 (the run's
`dist.zero_stage`, or `--dist.zero_stage 3`) the parameters are partitioned by a DeepSpeed engine
without optimizer and generation runs with `synced_gpus`; at stages 0-2 each rank holds the
plain module. Predictions are gathered by index on rank 0, which writes every file.

DeepSpeed checkpoints are read into a full fp32 state dict before any engine exists (ZeRO 1-3's
through DeepSpeed's own consolidation, `zero_to_fp32`; stage 0's from its model states), so a
checkpoint written by any number of ranks at any ZeRO stage can be evaluated by any other number
of ranks at any stage.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .. import run_files
from ..errors import ConfigError, Seq2SeqEsError, json_problem
from ..line_files import split_lines
from . import distributed as D
from . import storage
from .progress import quiet_library_progress

SPLIT_PREFIX = {"validation": "eval", "test": "test"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class InputError(Seq2SeqEsError):
    """A bad line of the file given to `predict --input`: names the file and the 1-based line."""

    def __init__(self, file: Path, line: int | None, message: str):
        self.file, self.line = file, line
        where = f"input file {file}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {message}")


# ---------------------------------------------------------------------------------------------
# What was given: run folder, Hugging Face folder or DeepSpeed checkpoint


@dataclass(frozen=True)
class SavedModel:
    kind: str                  # "hf" | "deepspeed"
    path: Path                 # the Hugging Face folder or the checkpoint step folder
    run_dir: Path | None       # the run folder it belongs to, when it has a config.yaml
    name: str                  # "final", "step_00000400", ...: names the evaluation folder
    hub_id: str | None = None  # the hub id it was fetched for, if it came from the hub

    @property
    def config_file(self) -> Path | None:
        return self.run_dir / run_files.CONFIG if self.run_dir is not None else None

    @cached_property
    def export_card(self) -> ExportCard | None:
        """What a Hugging Face folder's model card says of its run, if this package exported
        it; read once (evaluate, the config and its notes all ask)."""
        return read_export_card(self.path) if self.kind == "hf" else None


def _is_run_dir(path: Path) -> bool:
    return (path / run_files.CONFIG).is_file()


def _checkpoint_list(run_dir: Path) -> str:
    root = run_dir / run_files.CHECKPOINTS
    steps = sorted(p.name for p in root.glob("step_*")
                   if (p / run_files.TRAINER_STATE).is_file()) if root.is_dir() else []
    if not steps:
        return "it holds no complete checkpoint either"
    # Every command that resolves a model (evaluate, predict) takes a checkpoint folder too.
    return "give one of its checkpoints instead: " + ", ".join(str(root / s) for s in steps)


# What a model folder needs from the hub: no optimizer states, no other frameworks' weights, and
# nothing in subfolders (a Trainer upload's checkpoint-N/ copies).
HUB_MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "pytorch_model*.bin")


def is_hub_reference(given: str) -> bool:
    """owner/name that is not a local path: neither it nor its first part exists here (so a
    mistyped runs/typo is a missing local folder, not a hub id)."""
    from ..models.sources import looks_like_hub_id

    path = Path(os.path.expanduser(given))
    return ("/" in given and looks_like_hub_id(given) and not path.exists()
            and not path.parent.exists())


def fetch_from_hub(hub_id: str) -> Path:
    """The local folder of hub model `hub_id`'s files (downloaded into the Hugging Face cache,
    or found there when offline): one weight format, safetensors where the repo has it."""
    from huggingface_hub import HfApi, constants, snapshot_download

    patterns = list(HUB_MODEL_FILES)
    try:
        if not constants.HF_HUB_OFFLINE:
            files = HfApi().list_repo_files(hub_id)
            if any(name.endswith(".safetensors") and "/" not in name for name in files):
                patterns.remove("pytorch_model*.bin")
    except Exception:  # noqa: BLE001 - snapshot_download below reports what is wrong
        pass
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns, ignore_patterns=["*/*"]))
    except Exception as err:  # offline and not cached, unknown id, no network, gated, ...
        raise Seq2SeqEsError(f"{hub_id} does not exist locally, and as a Hugging Face hub id it "
                             f"could not be fetched ({type(err).__name__}: {err})") from err


def resolve_saved(path: str | Path) -> SavedModel:
    """Tell a run folder, a Hugging Face folder, a DeepSpeed checkpoint and a hub id apart;
    errors name the path and what is missing."""
    given = str(path)
    path = Path(os.path.expanduser(given))
    if is_hub_reference(given):
        saved = resolve_saved(fetch_from_hub(given))
        return SavedModel("hf", saved.path, None, given.replace("/", "--"), hub_id=given)
    if not path.exists():
        step = re.fullmatch(r"step_0*(\d+)", path.name)
        if step and path.parent.is_dir():  # step_40 typed for step_00000040
            padded = path.parent / f"step_{int(step.group(1)):08d}"
            if padded.is_dir():
                raise Seq2SeqEsError(f"{path} does not exist; did you mean {padded}?")
        raise Seq2SeqEsError(f"{path} does not exist")
    if not path.is_dir():
        raise Seq2SeqEsError(f"{path} is a file; expected a run folder, a model folder such as "
                             "RUN/final, or a checkpoint folder RUN/checkpoints/step_N")
    if (path / run_files.TRAINER_STATE).is_file() or path.name.startswith("step_"):
        if not (path / run_files.TRAINER_STATE).is_file():
            raise Seq2SeqEsError(f"checkpoint {path} is incomplete: no trainer_state.json (it was "
                                 "not finished saving)")
        if not any(path.glob("*model_states.pt")):
            raise Seq2SeqEsError(f"checkpoint {path} has no DeepSpeed model states "
                                 "(*model_states.pt)")
        run_dir = run_files.checkpoint_run_dir(path)
        return SavedModel("deepspeed", path, run_dir if run_dir and _is_run_dir(run_dir) else None,
                          path.name)
    if (path / "config.json").is_file():
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise Seq2SeqEsError(f"model folder {path} has config.json but no weights "
                                 f"({' or '.join(WEIGHT_FILES[::2])})")
        run_dir = path.parent if _is_run_dir(path.parent) else None
        return SavedModel("hf", path, run_dir, path.name)
    if _is_run_dir(path):
        final = path / run_files.FINAL
        if not (final / "config.json").is_file():
            raise Seq2SeqEsError(f"run folder {path} has no final/ model (the run has not "
                                 f"finished, or ran with train.export false); "
                                 f"{_checkpoint_list(path)}")
        return resolve_saved(final)
    raise Seq2SeqEsError(f"{path} is neither a run folder (no config.yaml), a model folder (no "
                         "config.json) nor a DeepSpeed checkpoint (no trainer_state.json)")


GEN_KEYS = ("num_beams", "max_new_tokens", "min_new_tokens", "length_penalty",
            "no_repeat_ngram_size", "early_stopping", "do_sample", "temperature", "top_k",
            "top_p")


def generation_file(folder: Path) -> dict:
    """A model folder's generation_config.json ({} without one)."""
    path = Path(folder) / "generation_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def saved_generation(folder: Path, saved: dict | None = None) -> dict[str, str]:
    """The gen.* keys a model folder's generation_config.json sets (`saved`, where read
    already), as config overrides."""
    saved = dict(generation_file(folder) if saved is None else saved)
    # Length limits as transformers reads them for an encoder-decoder: max_length / min_length count
    # the decoder start token, and no minimum at all means 0 (our exports leave a 0 out), not the
    # task's registry minimum.
    if saved.get("max_new_tokens") is None and saved.get("max_length") is not None:
        saved["max_new_tokens"] = max(int(saved["max_length"]) - 1, 1)
    if saved.get("min_new_tokens") is None:
        saved["min_new_tokens"] = max(int(saved.get("min_length") or 0) - 1, 0)
    return {f"gen.{key}": str(saved[key]).lower() if isinstance(saved[key], bool)
            else str(saved[key]) for key in GEN_KEYS if saved.get(key) is not None}


# What a generation_config.json may hold beside GEN_KEYS that decoding here still follows (the
# special token ids come from the tokenizer, max/min_length become max/min_new_tokens) or that
# only shapes generate's return value, and the values of other keys that change nothing.
_GEN_FOLLOWED = {"max_length", "min_length", "bos_token_id", "eos_token_id", "pad_token_id",
                 "decoder_start_token_id", "transformers_version", "_from_model_config",
                 "use_cache", "num_return_sequences", "return_dict_in_generate"}
_GEN_NEUTRAL = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
                "num_beam_groups": 1, "diversity_penalty": 0.0, "typical_p": 1.0}


def unapplied_generation(saved: dict) -> list[str]:
    """The settings of a generation_config.json (`saved`, as `generation_file` read it) that
    this package's decoding does not apply (`key value`): a model fine-tuned elsewhere may force
    BART's <s> first (forced_bos_token_id) or penalise repeats, which a gen.* key cannot say."""
    return [f"{key} {json.dumps(value)}" for key, value in saved.items()
            if key not in GEN_KEYS and key not in _GEN_FOLLOWED and value is not None
            and value is not False
            and not key.startswith("output_") and _GEN_NEUTRAL.get(key) != value]


def _our_card(folder: Path) -> tuple[str, list[str]] | None:
    """(the model card, its front matter's lines) of a folder this package exported (its tags
    hold `- seq2seq-es`); None for any other folder."""
    try:
        card = (Path(folder) / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    front = card.split("\n---", 1)[0].splitlines() if card.startswith("---") else []
    return (card, front) if "- seq2seq-es" in front else None


@dataclass(frozen=True)
class ExportCard:
    """What the model card of a folder this package exported says of its run, read once."""
    task: str | None         # a registry task, or a task of the user's own whose columns it names
    inputs: dict[str, str]   # how the run fed the model, as config overrides (`exported_inputs`)
    model: str | None = None  # the registry model it was trained as (its title), if one


def read_export_card(folder: Path) -> ExportCard | None:
    """The card of a folder this package exported (its tags hold `- seq2seq-es`, then
    `- TASK`); None for any other folder.

    Its inputs: the run's source length (the card's "at most N tokens"), a LED's global
    attention (named on the card) and, for a task of the user's own, its columns and metrics.
    So a run whose length was no task default (a LEDO run at 512 on xlsum) is fed at its own
    length. A tokenizer's model_max_length is not read: it is the base model's (a hub model's
    1024) in every folder whose card does not say the length."""
    from ..tasks import TASKS

    ours = _our_card(folder)
    if ours is None:
        return None
    card, front = ours
    tag = front.index("- seq2seq-es") + 1
    name = front[tag].removeprefix("- ").strip() if tag < len(front) else ""
    own_keys = _own_task_keys(card)
    task = name if name and (name in TASKS or "data.source_column" in own_keys) else None
    inputs = {}
    # The card's "at most N tokens" (written since 2026-12-03) is the run's length. Its
    # tokenizer's model_max_length is the run's only in exports since 12-04, whose cards carry
    # the line: a card without it was written beside the base model's (1024 where a SQAC run
    # trained at 480), so the task's default applies there, said in a note (upgrade audit).
    stated = _CARD_SOURCE_LENGTH.search(card)
    if stated:
        inputs["data.max_source_length"] = stated.group(1)
    attention = re.search(r"`data\.global_attention ([^`\s]+)`", card)
    if attention:
        inputs["data.global_attention"] = attention.group(1)
    if task not in TASKS:  # a task of the user's own: its columns, metrics
        inputs.update(own_keys)
    return ExportCard(task, inputs, card_model(card))


# hub._card_head's title: "# barto-tiny fine-tuned on mlsum"
_CARD_TITLE = re.compile(r"^# (\S+) fine-tuned on \S+\s*$", re.MULTILINE)


def card_model(card: str) -> str | None:
    """The registry model a card's title names (None for a name the registry does not hold)."""
    from ..models import MODELS

    title = _CARD_TITLE.search(card)
    return title.group(1) if title and title.group(1) in MODELS else None


def exported_task(folder: Path) -> str | None:
    """The task a folder this package exported was trained on (`read_export_card`)."""
    card = read_export_card(folder)
    return card.task if card else None


def exported_inputs(folder: Path) -> dict[str, str]:
    """How the run fed the model, as a folder this package exported (a copied final/ without
    its run's config.yaml) says it, as config overrides (`read_export_card`)."""
    card = read_export_card(folder)
    return dict(card.inputs) if card else {}


# A task of the user's own as the card names it (hub.input_notes): `data.source_column text`
OWN_TASK_CARD_KEYS = ("data.source_column", "data.target_column", "data.metrics",
                      "data.hub_dataset", "data.hub_config")  # config.own_task_keys' keys
_OWN_TASK_KEY = re.compile(r"`(" + "|".join(re.escape(key) for key in OWN_TASK_CARD_KEYS)
                           + r") ([^`]+)`")


# hub.input_notes' "- Source: ...; at most 480 tokens (longer sources lose their end)."
_CARD_SOURCE_LENGTH = re.compile(r"; at most ([1-9][0-9]{0,6}) tokens \(longer sources lose ")


def _own_task_keys(card: str) -> dict[str, str]:
    return dict(_OWN_TASK_KEY.findall(card))


def inference_config(saved: SavedModel, *, config_file: str | None = None,
                     overrides: dict[str, str] | None = None, task: str | None = None,
                     model: str | None = None, allow_model: bool = False):
    """The run's resolved config with `overrides` on top, pointing at the saved model.

    `config.yaml` holds every key explicitly, so composing it again gives the run's config;
    the launcher's environment (accelerate's ZeRO stage) and then the command line override it.
    """
    from ..config import compose, first_launched_process, load_yaml, note_not_read, own_task_keys
    from .distributed import launcher_overrides

    source = config_file or saved.config_file
    # A model folder without its run's config (a copied final/, a hub upload): decode as its
    # generation_config.json says, not with --task's registry defaults; --gen.* still wins.
    copied = source is None and saved.kind == "hf"
    generation = generation_file(saved.path) if copied else {}   # read once for both
    saved_gen = saved_generation(saved.path, generation) if copied else {}
    unapplied = unapplied_generation(generation)
    if unapplied and first_launched_process():
        print(f"note: {saved.path / 'generation_config.json'} also sets {', '.join(unapplied)}, "
              "which this package's decoding does not apply (it applies the gen.* settings: "
              "beams, lengths, no-repeat n-grams, sampling)", file=sys.stderr)
    card = saved.export_card if copied else None
    saved_inputs = dict(card.inputs) if card else {}  # and feed it as it was fed
    if copied and task is None:
        # A copied final/ fed as its run's task (truncation side, prediction cleaning), not as
        # the default task's: a MIAM model read its dialogues cut from the wrong end.
        task = card.task if card else None
        if task is not None and first_launched_process():
            print(f"note: {saved.path} was trained on {task} (its README.md says): read as "
                  f"{task}'s inputs (--task chooses another)", file=sys.stderr)
    elif copied and task != (card.task if card else None):  # --task another: not its columns
        saved_inputs = {key: value for key, value in saved_inputs.items()
                        if key not in OWN_TASK_CARD_KEYS}
    merged = {**saved_gen, **saved_inputs, **launcher_overrides(), **(overrides or {})}
    if source is None and model is None and allow_model and card is not None \
            and card.model is not None and "model.name" not in merged:
        # Its card names the model as it names the task: asking for --model was friction.
        model = card.model
        if first_launched_process():
            print(f"note: {saved.path} was trained as {model} (its README.md says): read as "
                  f"{model} (--model chooses another)", file=sys.stderr)
    elif source is None and card is not None and card.model not in (None, model) \
            and model is not None and first_launched_process():
        print(f"note: {saved.path} was trained as {card.model} (its README.md says), read here "
              f"as {model} (--model)", file=sys.stderr)
    if source is None and model is None:
        hint = " or --model NAME (seq2seq-es list)" if allow_model else ""
        raise Seq2SeqEsError(f"no run config for {saved.path}: "
                             f"{saved.path.parent / run_files.CONFIG} does not exist; pass "
                             f"--config RUN/config.yaml{hint}")
    if source is not None and not Path(source).is_file():
        raise Seq2SeqEsError(f"run config {source} does not exist")
    if saved.kind == "hf":
        merged["model.path"] = str(saved.path)
    elif saved.run_dir is not None and (saved.run_dir / run_files.FINAL / "config.json").is_file():
        # The checkpoint's weights replace all of the skeleton's: read the run's own export
        # rather than the pretrained model (which may live on the hub).
        merged["model.path"] = str(saved.run_dir / run_files.FINAL)
    if source is not None:
        merged.update(lengths_following_target(load_yaml(str(source)), overrides or {}))
    cfg = compose(task=None if source else task, model=model if not source else None,
                  config_file=str(source) if source else None, overrides=merged)
    # --gen.temperature without --gen.do_sample: said once, as `train` says it, rather than
    # recorded in the evaluation as if it had applied
    note_not_read(cfg, set(overrides or {}))
    if copied and task is None and card is None and "data.task" not in merged \
            and not own_task_keys(cfg) and first_launched_process():
        # An export of a version before the model cards (2026-12-02), or a model from
        # elsewhere: read as the default task's in silence (upgrade audit).
        print(f"note: {saved.path} does not say which task it was trained on (no seq2seq-es "
              f"model card: an export of an older version, or a model from elsewhere): read "
              f"as {cfg.data.task}'s inputs; --task names its task", file=sys.stderr)
    return cfg


def note_task_lengths(saved: SavedModel, cfg, given: dict[str, str],
                      keys: tuple[str, ...] = ("data.max_source_length",
                                               "data.max_target_length")) -> None:
    """A model folder without its run's config.yaml (a copied final/) is read with the lengths
    its export records, else with --task's defaults, which may not be the run's (a SQAC run read
    480 source tokens, a MIAM run 512 from the left): said once, with what gives the run's own."""
    import sys

    from ..config import first_launched_process

    exported = saved.export_card.inputs if saved.export_card else {}
    taken = [f"{key} {getattr(cfg.data, key.split('.')[1])}" for key in keys
             if key not in given and key not in exported]
    read = [f"{key} {value}" for key, value in exported.items() if key not in given]
    if (taken or read) and first_launched_process():
        one = len(taken) == 1
        listed = ", ".join(read[:-1]) + " and " + read[-1] if len(read) > 1 else "".join(read)
        said = [f"{listed} as the exported folder says"] if read else []
        said += [f"{' and '.join(taken)} {'is' if one else 'are'} {cfg.data.task}'s "
                 f"default{'' if one else 's'}"] if taken else []
        print(f"note: no run config for {saved.hub_id or saved.path}: {'; '.join(said)}; a "
              "run's own are in its config.yaml (--config RUN/config.yaml)", file=sys.stderr)


def lengths_following_target(run_values: dict, given: dict) -> dict:
    """The generation lengths a command's overrides `given` imply over a run's config.yaml
    (`run_values`), as `train` would resolve them (config.follow_target_length).

    config.yaml holds the lengths resolved: gen.max_new_tokens is the target length the run
    followed and gen.min_new_tokens the task's minimum, and every key of it counts as set. So
    `evaluate --data.max_target_length 8` still generated up to the run's 64 tokens, and
    `--gen.max_new_tokens 6` was refused for the minimum of 8 the user had never set. The
    maximum follows a new target length when the run's followed its own; a saved minimum larger
    than the new maximum is lowered to it unless the command gives one."""
    from ..config import file_value

    lengths = {}
    new_max = given.get("gen.max_new_tokens")
    if (new_max is None and "data.max_target_length" in given
            and file_value(run_values, "gen.max_new_tokens")
            in (None, file_value(run_values, "data.max_target_length"))):
        new_max = lengths["gen.max_new_tokens"] = given["data.max_target_length"]
    saved_min = file_value(run_values, "gen.min_new_tokens")
    if new_max is not None and saved_min is not None and "gen.min_new_tokens" not in given:
        try:
            if int(saved_min) > int(new_max):
                lengths["gen.min_new_tokens"] = new_max
        except (TypeError, ValueError):
            pass  # not a number: compose refuses it, naming its key
    return lengths


# ---------------------------------------------------------------------------------------------
# Loading the model for inference


def load_checkpoint_weights(model, checkpoint: Path) -> None:
    """Put the weights of DeepSpeed checkpoint `checkpoint` into `model` (full, on the CPU).

    ZeRO 1-3 checkpoints hold the fp32 master weights in their optimizer partitions, which
    DeepSpeed's `zero_to_fp32` consolidates; stage 0 keeps the full module in its model states.
    """
    import torch

    from .checkpoint import damaged_checkpoint_named

    optim_files = list(checkpoint.glob("*optim_states.pt"))
    try:
        # A truncated file was torch's reader traceback (export, evaluate, predict)
        with damaged_checkpoint_named(checkpoint, "give an earlier one:"):
            if any("zero_pp_rank" in f.name for f in optim_files):
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
                with contextlib.redirect_stdout(io.StringIO()):  # it prints every step it takes
                    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent),
                                                                     tag=checkpoint.name)
            else:
                files = sorted(checkpoint.glob("*model_states.pt"))
                if not files:
                    raise FileNotFoundError(f"no model states in {checkpoint}")
                state = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    except (Seq2SeqEsError, OSError) as exc:
        if not checkpoint.is_dir():  # removed while read: an IndexError's traceback before
            raise Seq2SeqEsError(
                f"checkpoint {checkpoint} was removed while it was read: the run is training and "
                "train.keep_last rotated it away; give one it keeps (its best, in best.json), or "
                "read the run's final/ once it ends") from exc
        raise
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (shared embeddings, the shared BERT2BERT pairs) are one Parameter under
    # several names; a checkpoint may hold only one of those names.
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}
    missing = [k for k in missing if not (k in params and id(params[k]) in loaded)]
    if missing or unexpected:
        raise Seq2SeqEsError(f"checkpoint {checkpoint} does not fit the run's model "
                             f"({_mismatch(missing, unexpected)})")


def _mismatch(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unknown weights, e.g. {unexpected[0]}")
    return "; ".join(parts)


@dataclass
class Loaded:
    model: object              # the module to call (engine.module under ZeRO-3)
    tokenizer: object
    spec: object
    engine: object | None      # kept alive: its hooks gather the ZeRO-3 partitions


def load_for_inference(saved: SavedModel, cfg, env: D.DistEnv) -> Loaded:
    """Build the model, load the saved weights, and place it: partitioned by a DeepSpeed engine
    without optimizer under ZeRO-3, the plain module on this rank's device otherwise."""
    from .builders import get_model, set_activation_checkpointing

    try:
        model, tokenizer, spec = get_model(cfg)
    except ConfigError as exc:
        # A model folder given to this command is no model.path of the user's: the refusal
        # (a folder without tokenizer files, say) names the folder, not the key.
        if exc.key != "model.path" or saved.kind != "hf" or \
                Path(cfg.model.path).resolve() != saved.path.resolve():  # compose made it absolute
            raise
        raise Seq2SeqEsError(exc.reason) from None
    if saved.kind == "deepspeed":
        load_checkpoint_weights(model, saved.path)
    if cfg.model.gradient_checkpointing:
        set_activation_checkpointing(model, False)
        model.config.use_cache = True
    engine = None
    if cfg.dist.zero_stage == 3:
        import deepspeed

        from .optim import deepspeed_config
        ds_config = deepspeed_config(cfg, env.world_size)
        ds_config["zero_optimization"].pop("offload_optimizer", None)  # there is no optimizer
        engine, *_ = deepspeed.initialize(model=model, config=ds_config)
        model = engine.module
    else:
        model = model.to(env.device)
    model.eval()
    return Loaded(model, tokenizer, spec, engine)


def _say(env: D.DistEnv):
    def say(message: str) -> None:
        if env.is_main:
            print(message, file=sys.stderr, flush=True)
    return say


# ---------------------------------------------------------------------------------------------
# seq2seq-es evaluate


def parse_evaluate_args(argv: list[str]):
    from ..config import command_flags, parse_overrides

    parser = argparse.ArgumentParser(
        prog="seq2seq-es evaluate", allow_abbrev=False,
        description="Score a saved run, model folder or checkpoint on its task's validation or "
                    "test split. Any --section.key VALUE overrides the run's config (e.g. "
                    "--data.test_file FILE, --dist.zero_stage 3, --data.max_eval_samples N).")
    parser.add_argument("path", help="run folder, model folder (RUN/final), "
                                     "RUN/checkpoints/step_N, or a hub id (owner/name)")
    # `dev` is collect's name for validation (its --split dev): accepted here too
    parser.add_argument("--split", choices=tuple(SPLIT_PREFIX), default="validation",
                        type=lambda name: "validation" if name == "dev" else name,
                        help="the split to score (default validation; dev is the same)")
    # type=expanduser: the shell leaves `--output-dir=~/x` alone, and a folder named `~` was
    # written here (the same for predict's files and every --config)
    parser.add_argument("--output-dir", type=os.path.expanduser,
                        help="where predictions and scores go (default "
                                             "RUN/evaluations/<split>_<checkpoint>)")
    parser.add_argument("--batch-size", type=int, help="per rank (default: the run's "
                                                       "train.eval_batch_size or batch_size)")
    parser.add_argument("--config", type=os.path.expanduser,
                        help="the run's config.yaml, when PATH is outside its run")
    parser.add_argument("--task", help="for a model folder or hub id without a run: the task to "
                                       "score on (seq2seq-es list)")
    parser.add_argument("--model", help="for a model folder or hub id without a run: the "
                                        "registry name of its family's model (e.g. barto)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    known, rest = parser.parse_known_args(argv)
    return known, parse_overrides(rest, command_flags(parser))


def check_run_names(where: str, task: str | None, model: str | None) -> None:
    """--task/--model say what a model folder or hub id without a run is (both are needed: the
    split to score and the family's loading); `where` names it."""
    if task is None or model is None:
        raise Seq2SeqEsError(f"{where} has no run config: pass --task T --model M "
                             "(seq2seq-es list), or --config RUN/config.yaml")


def check_same_names(saved: SavedModel, cfg, task: str | None, model: str | None) -> None:
    """A run's config names its task and model; another --task/--model would score the run
    under a name it was not trained as."""
    for flag, given, run_value in (("--task", task, cfg.data.task), ("--model", model,
                                                                      cfg.model.name)):
        if given is not None and given != run_value:
            raise ConfigError(flag, f"{saved.path}'s run config says {run_value}, not {given}; "
                              f"{flag} is for a model folder without a run config")


def evaluation_dir(saved: SavedModel, split: str, output_dir: str | None) -> Path:
    if output_dir:
        return Path(output_dir)
    if saved.run_dir is None:
        raise Seq2SeqEsError(f"{saved.path} is not inside a run folder: pass --output-dir DIR "
                             "for the predictions and scores")
    return saved.run_dir / run_files.EVALUATIONS / f"{split}_{saved.name}"


# Overrides that change how the work is spread, never a prediction or a score.
_NOT_SCORING = ("dist.", "train.eval_batch_size", "train.batch_size")


def scoring_settings(overrides: dict[str, str]) -> dict[str, str]:
    """The overrides that can change predictions or scores (not a training-only key, which
    evaluate does not read)."""
    return {key: value for key, value in overrides.items()
            if not key.startswith(_NOT_SCORING) and not _training_only(key)}


# What evaluate and predict read of train.*: the batch, the sampling seed and the precision.
_INFERENCE_TRAIN_KEYS = ("train.eval_batch_size", "train.batch_size", "train.seed",
                         "train.precision")


def _training_only(key: str) -> bool:
    return key.startswith("optim.") or (key.startswith("train.")
                                        and key not in _INFERENCE_TRAIN_KEYS)


def unread_by_inference(overrides: dict[str, str], command: str,
                        split: str | None = None) -> list[str]:
    """The overrides `evaluate` (scoring `split`) or `predict` does not read, each with why:
    said in a note, as `train` names the keys it does not read, rather than taken in silence
    (`predict --optim.lr 5` ran, `evaluate --data.test_file FILE` scored validation)."""
    files = {f"data.{name}_file" for name in ("train", "validation", "test")}
    if command == "evaluate":
        files.discard(f"data.{split}_file")
    unread = []
    for key in overrides:
        if _training_only(key):
            unread.append(f"--{key} (training only)")
        elif key in files or key == "data.max_train_samples" or (
                command == "predict" and key == "data.max_eval_samples"):
            unread.append(f"--{key} (" + (f"the {split} split is scored" if command == "evaluate"
                                          else "predict reads --input") + ")")
    return unread


def note_replaced_evaluation(out: Path, checkpoint: Path, split: str,
                             overrides: dict[str, str], say, chosen_dir: bool) -> None:
    """Re-running an evaluation replaces its folder (as a script rewriting its output_dir
    would); one of another checkpoint or split, or scored with other settings (beams, another
    test file), is said before it goes, while another folder can still keep both."""
    try:
        earlier = json.loads((out / "evaluation.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(earlier, dict):
        return
    before = scoring_settings(earlier.get("overrides") or {})
    if (before != scoring_settings(overrides) or earlier.get("checkpoint") != str(checkpoint)
            or earlier.get("split") != split):
        shown = " ".join(f"--{k} {v}" for k, v in sorted(before.items())) or "no overrides"
        keep = "give another --output-dir" if chosen_dir else "pass --output-dir DIR"
        say(f"note: {out} holds an evaluation of {earlier.get('checkpoint')} "
            f"({earlier.get('split')} split) with {shown}; this one replaces it ({keep} to "
            "keep both)")


def rounded_export_note(run_dir: Path, dtype: str) -> str:
    """evaluate RUN scores final/, rounded to train.export_dtype, where the run scored its fp32
    weights: the losses differ in the fourth digit and beams can part. Names the checkpoint
    of the kept step (final_results.json's best_step), which evaluate scores in fp32."""
    try:
        step = json.loads((run_dir / run_files.FINAL_RESULTS).read_text())["best_step"]
        checkpoint = run_dir / run_files.CHECKPOINTS / f"step_{int(step):08d}"
    except (OSError, ValueError, KeyError, TypeError):  # not finished, or written by hand
        checkpoint = run_dir / run_files.CHECKPOINTS / "step_N"
    return (f"note: final/ holds {dtype} weights (train.export_dtype); the run's own scores "
            f"(final_results.json) came from its fp32 weights, which `seq2seq-es evaluate "
            f"{checkpoint}` scores")


def evaluate_main(argv: list[str]) -> int:
    from ..config import check_folder
    from ..tasks import task_for
    from .builders import get_collator, get_generation_config, get_split
    from .evaluation import evaluate
    from .optim import use_bf16

    args, overrides = parse_evaluate_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size", "must be at least 1")
    if args.output_dir:  # the folder is made once every prediction is in: refused before that
        check_folder("--output-dir", args.output_dir)
    if is_hub_reference(args.path) and not args.config:
        # Before a download of possibly gigabytes: what the scores would need anyway.
        check_run_names(f"{args.path} (a hub id)", args.task, args.model)
        if not args.output_dir:
            raise Seq2SeqEsError(f"{args.path} is a hub id, not a run folder: pass --output-dir "
                                 "DIR for the predictions and scores")
    saved = resolve_saved(args.path)
    if saved.kind == "hf" and not (args.config or saved.config_file):
        where = saved.hub_id or f"{saved.path} (no {saved.path.parent / run_files.CONFIG})"
        # an exported folder's card names its task (as predict reads it)
        card = saved.export_card
        check_run_names(where, args.task or (card.task if card else None), args.model)
    cfg = inference_config(saved, config_file=args.config, overrides=overrides, task=args.task,
                           model=args.model, allow_model=saved.kind == "hf")
    if args.config or saved.config_file:
        check_same_names(saved, cfg, args.task, args.model)
    else:
        note_task_lengths(saved, cfg, overrides)
    out = evaluation_dir(saved, args.split, args.output_dir)
    split_file = f"data.{args.split}_file"
    if cfg.data.train_file and not getattr(cfg.data, f"{args.split}_file"):
        raise ConfigError(split_file, f"the run read local files and has no {args.split} file; "
                          f"pass --{split_file} FILE")
    # Like the training's final test scores, the test split is scored whole unless
    # --data.max_eval_samples is given here (the run's value is meant for validation).
    max_samples = cfg.data.max_eval_samples \
        if args.split == "validation" or "data.max_eval_samples" in overrides else None
    env = D.read_env()
    D.init(env, cfg.dist.backend, cfg.dist.timeout_min)
    quiet_library_progress()
    say = _say(env)
    note_training_now(saved, say)
    say(f"evaluating {saved.path} on {cfg.data.task} {args.split} with {env.world_size} "
        f"process(es), ZeRO stage {cfg.dist.zero_stage}")
    unread = unread_by_inference(overrides, "evaluate", args.split)
    if unread:
        say(f"note: not read by evaluate: {', '.join(unread)}")
    if (saved.kind == "hf" and saved.run_dir is not None
            and saved.path.resolve() == (saved.run_dir / run_files.FINAL).resolve()
            and cfg.train.export_dtype != "fp32"):
        say(rounded_export_note(saved.run_dir, cfg.train.export_dtype))
    # held until the scores are written (on an error, until the lock object goes); a folder
    # of the user's own (--output-dir) gets no lock file beside it
    held = None if args.output_dir else D.decided_by_main(env, lambda: _evaluating_alone(out))
    note_replaced_evaluation(out, saved.path, args.split, overrides, say,
                             chosen_dir=bool(args.output_dir))
    task = task_for(cfg.data)
    loaded = load_for_inference(saved, cfg, env)
    data = D.first_on_each_node(env, lambda: get_split(
        cfg, task, loaded.tokenizer, loaded.model, args.split, max_samples, say))
    if len(data.tokenized) == 0:
        raise Seq2SeqEsError(f"the {args.split} split of {cfg.data.task} has no examples")
    collator = get_collator(cfg, loaded.spec, loaded.tokenizer, loaded.model)
    generation_config = get_generation_config(cfg, loaded.spec, loaded.tokenizer)
    batch_size = args.batch_size or cfg.train.eval_batch_size or cfg.train.batch_size
    results = evaluate(loaded.model, tokenized=data.tokenized, examples=data.examples,
                       collator=collator, tokenizer=loaded.tokenizer,
                       generation_config=generation_config, task=task, env=env,
                       batch_size=batch_size, zero_stage=cfg.dist.zero_stage, bf16=use_bf16(cfg),
                       step=0, out_dir=None, prefix=SPLIT_PREFIX[args.split],
                       predictions_dir=out, progress=True, sample_seed=cfg.train.seed)
    if env.is_main:
        (out / "evaluation.json").write_text(json.dumps({
            "checkpoint": str(saved.path), **({"hub_id": saved.hub_id} if saved.hub_id else {}),
            "split": args.split, "task": cfg.data.task,
            "model": cfg.model.name, "examples": len(data.tokenized),
            "world_size": env.world_size, "zero_stage": cfg.dist.zero_stage,
            "batch_size": batch_size, "overrides": overrides,
            # What scored, whatever set it (a later resume may change the run's config.yaml):
            # the lengths and the decoding, beside the overrides that changed them
            "lengths": {"max_source_length": cfg.data.max_source_length,
                        "max_target_length": cfg.data.max_target_length},
            "generation": generation_config.to_diff_dict(),
            "results": results}, indent=1))
        for key, value in results.items():
            print(f"{key} {value:.4f}")
        print(f"predictions and scores: {out}")
        if held is not None:
            held.release()
    D.barrier()
    return 0


def note_training_now(saved: SavedModel, say) -> None:
    """Said where the model's run trains now (a finished run resumed with more steps): its
    final/ is the earlier run's until the new one ends, its config.yaml already the new one's,
    and its checkpoints rotate (an audit's evaluation recorded the new settings beside the old
    model without a word)."""
    from .run_lock import describe_holder, training_now

    holder = training_now(saved.run_dir) if saved.run_dir is not None else None
    if holder is not None:
        say(f"note: {saved.run_dir} is training now ({describe_holder(holder)}): {saved.path} "
            "is what it holds at this moment (final/ is replaced when the run ends, and its "
            "checkpoints rotate), and its config.yaml is the training run's")


def _evaluating_alone(out: Path):
    """A lock beside the evaluation folder `out` while this command writes it: a second
    `evaluate` of one run and split wrote into the same folder, and the first one's scores
    were gone without a word (a concurrency audit)."""
    from .run_lock import describe_holder, held_alone, read_holder

    lock = out.parent / f".{out.name}.lock"
    held = held_alone(lock)
    if held is None:
        raise Seq2SeqEsError(f"{out} is being written by another evaluate "
                             f"({describe_holder(read_holder(lock))}): wait for it to end, or "
                             "give --output-dir DIR for this one")
    return held


# ---------------------------------------------------------------------------------------------
# seq2seq-es export


def export_main(argv: list[str]) -> int:
    """A DeepSpeed checkpoint's weights as a Hugging Face model folder: what a new run starts
    from (--model.path) when the checkpoint cannot be resumed (another ZeRO stage or
    precision, another step size), and what an unfinished run has in place of final/."""
    from ..config import check_folder
    from ..models import save_model
    from .builders import get_generation_config, get_model
    from ..tasks import task_for
    from .export import EXPORT_DTYPES, save_tokenizer
    from .hub import write_export_card

    parser = argparse.ArgumentParser(
        prog="seq2seq-es export", allow_abbrev=False,
        description="Write a DeepSpeed checkpoint's weights (consolidated from any number of "
                    "ranks and any ZeRO stage) as a Hugging Face model folder with the run's "
                    "tokenizer and generation settings; continue from it with --model.path OUT.")
    parser.add_argument("checkpoint", help="RUN/checkpoints/step_N, or a run folder (its "
                                           "newest complete checkpoint)")
    parser.add_argument("out", metavar="OUT", help="the model folder to write (new or empty)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="the dtype of the written weights (default fp32)")
    parser.add_argument("--config", type=os.path.expanduser,
                        help="the run's config.yaml, when CHECKPOINT is outside its run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    check_folder("OUT", args.out)  # a path under a file failed only once the model was loaded
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("OUT", f"{out} {'is not a folder' if not out.is_dir() else 'is not empty'}"
                          "; give a new or empty folder")
    path = Path(args.checkpoint)
    if _is_run_dir(path):
        checkpoints = run_files.complete_checkpoints(path / run_files.CHECKPOINTS)
        if not checkpoints:
            raise Seq2SeqEsError(f"{path} has no complete checkpoint to export")
        path = checkpoints[-1][1]
    saved = resolve_saved(path)
    if saved.kind != "deepspeed":
        raise Seq2SeqEsError(f"{saved.path} is a model folder already; --model.path takes it "
                             "as it is")
    cfg = inference_config(saved, config_file=args.config)
    model, tokenizer, spec = get_model(cfg)
    load_checkpoint_weights(model, saved.path)
    # The weights themselves in --dtype: save_model only writes the name into config.json, and
    # a bf16 export kept fp32 tensors under a bf16 label (twice the size the user asked for).
    model.to(EXPORT_DTYPES[args.dtype])
    # OUT was new or empty: a failed write leaves nothing of its own there
    with storage.writing(out, "the model folder", partial=None if out.exists() else out):
        save_model(model, out, dtype=args.dtype)
        save_tokenizer(tokenizer, out, cfg.data.max_source_length,
                       task_for(cfg.data).source_truncation_side)
        get_generation_config(cfg, spec, tokenizer).save_pretrained(out)
        # absolute: the card's commands work from anywhere (a relative one was the user's cwd)
        write_export_card(out.resolve(), cfg, saved.path.resolve(), args.dtype)
    print(f"exported {saved.path} ({cfg.model.name}, {cfg.data.task}) to {out}; a new run "
          f"continues from its weights with --model.path {out} --model.name {cfg.model.name}")
    return 0


# ---------------------------------------------------------------------------------------------
# seq2seq-es predict


def parse_predict_args(argv: list[str]):
    from ..config import command_flags, parse_overrides

    parser = argparse.ArgumentParser(
        prog="seq2seq-es predict", allow_abbrev=False,
        description="Generate for every row of a file. Input .jsonl: one object per line, with "
                    "the task's columns when --task is given (e.g. question and context for "
                    "sqac; a dialogue task's rows are whole histories in a 'source' field), "
                    "else the columns of the run's own task where a row has them (a test "
                    "file of its data), else a 'source' field; plain text: one source per line (.json, "
                    ".csv, .tsv, .parquet are refused: convert them). "
                    "Output .jsonl: {source, prediction} per row; otherwise one prediction per "
                    "line. --gen.KEY VALUE and --dist.zero_stage N override the run's config.")
    parser.add_argument("checkpoint", help="model folder (RUN/final), run folder, "
                                           "RUN/checkpoints/step_N, or a hub id (owner/name)")
    parser.add_argument("--input", required=True, type=os.path.expanduser)
    parser.add_argument("--output", required=True, type=os.path.expanduser)
    parser.add_argument("--task", help="format jsonl rows as this task's sources "
                                       "(seq2seq-es list)")
    parser.add_argument("--model", help="registry name, for a model folder without its run's "
                                        "config.yaml")
    parser.add_argument("--config", type=os.path.expanduser,
                        help="the run's config.yaml, when CHECKPOINT is outside its run")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output if it exists (without it an existing file is "
                             "refused: it may be data, or predictions of another model)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-source-length", type=int)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    known, rest = parser.parse_known_args(argv)
    return known, parse_overrides(rest, command_flags(parser))


def _field(row: dict, column: str, file: Path, line: int, label: str | None = None) -> str:
    value = row.get(column)
    label = label or column
    if value is None:
        raise InputError(file, line, f"field '{label}' is null" if column in row
                         else f"missing field '{label}'")
    if not isinstance(value, str):
        raise InputError(file, line, f"field '{label}' is not a string "
                                     f"({type(value).__name__})")
    if not value.strip():
        raise InputError(file, line, f"field '{label}' is empty")
    return _as_trained(value)


def _as_trained(text: str) -> str:
    """A source as the task's loader makes it (stripped, composed Unicode): a decomposed
    accent (e + U+0301) is other tokens than the composed one the model trained and is
    evaluated on, so predict gave other outputs than evaluate for the same row."""
    from ..tasks.formatting import _nfc

    return _nfc(text)


def _has_source_columns(row: dict, task) -> bool:
    """Whether a row holds what `task` reads as the model's input (a dialogue's rows are whole
    histories in a 'source' field, so never)."""
    from ..tasks.formatting import (PairFormatter, QAFormatter, SplitRephraseFormatter,
                                    TranslationFormatter)

    formatter = task.formatter
    if isinstance(formatter, (PairFormatter, SplitRephraseFormatter)):
        return formatter.source_column in row
    if isinstance(formatter, QAFormatter):
        return formatter.question_column in row and formatter.context_column in row
    if isinstance(formatter, TranslationFormatter):
        return formatter.column in row or formatter.source_lang in row
    return False


def source_of(row, task, file: Path, line: int, run_task=None) -> str:
    """The model input for one jsonl row: the task's formatting of its columns (no target
    needed); without a task, the columns of the run's own task where the row has them (a row
    of the task's data files as it trained on them, whose other columns may include a
    'source', e.g. a news outlet), else the row's 'source' field."""
    from ..tasks.formatting import (QA_PROMPT, PairFormatter, QAFormatter,
                                    SplitRephraseFormatter, TranslationFormatter)

    if not isinstance(row, dict):
        raise InputError(file, line, f"expected a JSON object, got {type(row).__name__}")
    if task is None and run_task is not None and ("source" not in row
                                                  or _has_source_columns(row, run_task)):
        try:
            return source_of(row, run_task, file, line)
        except InputError as err:
            why = str(err).split(': ', 1)[1]
            if "source" in row:  # the task's columns are read first where the row has them
                raise InputError(file, line, f"as a row of the run's task {run_task.name} (its "
                                 f"columns are read before 'source'): {why}") from None
            raise InputError(file, line, f"missing field 'source', and as a row of the run's "
                             f"task {run_task.name}: {why}") from None
    if task is None:
        if "source" not in row:
            raise InputError(file, line, "missing field 'source' (or pass --task T to format "
                                         "the task's own columns)")
        return _field(row, "source", file, line)
    formatter = task.formatter
    if isinstance(formatter, QAFormatter):
        question = _field(row, formatter.question_column, file, line)
        context = _field(row, formatter.context_column, file, line)
        return QA_PROMPT.format(question=question, context=context)
    if isinstance(formatter, (PairFormatter, SplitRephraseFormatter)):
        return _field(row, formatter.source_column, file, line)
    if isinstance(formatter, TranslationFormatter):
        pair = row.get(formatter.column)
        if isinstance(pair, dict):
            return _field(pair, formatter.source_lang, file, line,
                          f"{formatter.column}.{formatter.source_lang}")
        return _field(row, formatter.source_lang, file, line)
    # Dialogue: a history is many rows (one turn each), so a row here is a formatted history.
    if "source" not in row and set(formatter.required_columns()) & set(row):
        raise InputError(file, line, f"a {task.name} data row holds one turn of a dialogue; "
                                     "predict takes one history a row: a 'source' field with "
                                     "the earlier turns as 'Speaker: text', one a line (as "
                                     "the run's examples hold them)")
    return _field(row, "source", file, line)


# Suffixes of structured files that `predict` does not parse: read as text lines, a JSON array
# or a CSV header would become "sources" without a word said.
STRUCTURED_SUFFIXES = (".json", ".csv", ".tsv", ".parquet", ".arrow")


def _plain_name(path: Path) -> Path:
    """The name without a compression suffix (test.jsonl.gz -> test.jsonl), as training
    names a data file's format."""
    from ..tasks.local_files import uncompressed_name

    return path.with_name(uncompressed_name(path.name))


def _input_bytes(path: Path) -> tuple[bytes, str]:
    """The input's bytes, decompressed where its name says so, and its format suffix:
    training reads a .jsonl.gz data file, and predict read its compressed bytes as text
    ("not UTF-8 text" at some line) instead."""
    from ..errors import DataError
    from ..tasks.local_files import read_decompressed

    try:
        raw = read_decompressed(str(path))
    except DataError as err:  # the input's error, named as predict names its lines
        raise InputError(path, None, str(err).split(": ", 1)[-1]) from None
    return raw, _plain_name(path).suffix.lower()


@contextlib.contextmanager
def _length_named_as_given(max_source_length: int | None):
    """An error about the source length named by predict's own flag where the user gave it
    (the config check said "config key 'data.max_source_length'" for --max-source-length)."""
    try:
        yield
    except ConfigError as exc:
        if exc.key != "data.max_source_length" or max_source_length is None:
            raise
        raise ConfigError("--max-source-length", exc.reason) from None


def check_line_file(path: Path, flag: str) -> None:
    if not path.name:  # "." (or ""): no name to read a format from (a traceback it was)
        raise ConfigError(flag, f"{path} is a folder; expected a file name")
    plain = _plain_name(path)
    if plain.suffix.lower() in STRUCTURED_SUFFIXES:
        # An output has nothing to convert: its name is what to change.
        fix = (f"name it {plain.with_suffix('.jsonl').name} or {plain.with_suffix('.txt').name}"
               if flag == "--output" else
               "convert the file (e.g. a .json array to one object a line)")
        raise Seq2SeqEsError(f"{flag} {path}: predict reads and writes .jsonl (one JSON object a "
                             f"line) or plain text (one source a line), not {plain.suffix}; {fix}")
    if flag == "--output" and plain != path:
        # Predictions are written as plain text: a compressed name would hold uncompressed bytes.
        raise Seq2SeqEsError(f"{flag} {path}: predict writes uncompressed .jsonl or plain text; "
                             f"name it {plain.name} (compress it afterwards if need be)")


def read_sources(path: Path, task, run_task=None,
                 columns: dict[str, str] | None = None) -> list[str]:
    """Sources from a .jsonl file (formatted per `task`, else the run's task's columns where the
    row has them, else a 'source' field, `columns` renaming the row's keys as the run's data.columns did) or a text
    file (one per line)."""
    from ..tasks.local_files import decode_json_line, wide_encoding

    check_line_file(path, "--input")
    if not path.is_file():
        raise InputError(path, None, "does not exist" if not path.exists() else "is not a file")
    data, suffix = _input_bytes(path)
    encoding = wide_encoding(data)  # Windows Notepad's "Unicode", named as data files name it
    if encoding is not None:
        raise InputError(path, None, f"the file is {encoding}, not UTF-8: save it as UTF-8")
    try:
        # Universal newlines, as Python's text mode reads a file: a lone "\r" ends a line too.
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(path, line, "not UTF-8 text") from None
    lines = split_lines(text)  # only "\n" ends a line, as in the files `score` reads
    # Blank lines at the very end (an editor's or a `>>` append's) hold no row: dropping them
    # keeps every row's number, and so its output line. A blank line between rows stays an
    # error below: skipping it would shift every later row against its output line.
    while lines and not lines[-1].strip():
        lines.pop()
    sources = []
    if suffix == ".jsonl":
        for n, raw in enumerate(lines, start=1):
            if not raw.strip():
                raise InputError(path, n, "empty line (a .jsonl file holds one JSON object a "
                                          "line)")
            try:  # as training reads a line: a key named twice is refused, not the last kept
                row = decode_json_line(raw)
            except json.JSONDecodeError as exc:
                raise InputError(path, n, f"not valid JSON ({json_problem(exc)})") \
                    from None
            except ValueError as exc:
                raise InputError(path, n, str(exc)) from None
            if columns and isinstance(row, dict):
                row = {columns.get(key, key): value for key, value in row.items()}
            sources.append(source_of(row, task, path, n, run_task))
    else:
        for n, raw in enumerate(lines, start=1):
            if not raw.strip():
                raise InputError(path, n, "empty line (each line is one source)")
            sources.append(_as_trained(raw))
    if not sources:
        raise InputError(path, None, "is empty")
    return sources


def write_predictions(path: Path, sources: list[str], predictions: list[str]) -> None:
    """Atomically: a half-written output never looks like a finished one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with storage.writing(path, "the predictions", partial=tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            for source, prediction in zip(sources, predictions, strict=True):
                if path.suffix.lower() == ".jsonl":
                    f.write(json.dumps({"source": source, "prediction": prediction},
                                       ensure_ascii=False) + "\n")
                else:
                    f.write(" ".join(prediction.split("\n")) + "\n")
        tmp.replace(path)


def tokenize_sources(sources: list[str], tokenizer, max_length: int, side: str,
                     key: str = "data.max_source_length") -> list[dict]:
    """input_ids cut to `max_length` as training cuts them (the family's specials kept); a
    limit the specials alone fill is refused first, naming `key` (the option that set it)."""
    from ..data.tokenize import check_length_room, special_token_frames, truncate_ids

    frame = special_token_frames(tokenizer)
    check_length_room(key, max_length, frame, tokenizer, "source")
    lead, trail = len(frame[0]), len(frame[1])
    features = []
    for start in range(0, len(sources), 1024):
        for ids in tokenizer(sources[start:start + 1024], add_special_tokens=True,
                             verbose=False)["input_ids"]:  # cut below, and counted
            features.append({"input_ids": truncate_ids(ids, max_length, lead, trail, side),
                             "length": len(ids)})
    return features


def predict_main(argv: list[str]) -> int:
    from ..config import check_output_file, own_task_keys
    from ..tasks import get_task, task_for
    from .builders import get_collator, get_generation_config
    from .evaluation import generate_texts
    from ..tasks.formatting import DialogueFormatter, QAFormatter
    from .optim import use_bf16

    args, overrides = parse_predict_args(argv)
    for flag, value in (("--batch-size", args.batch_size),
                        ("--max-source-length", args.max_source_length)):
        if value is not None and value < 1:
            raise ConfigError(flag, "must be at least 1")
    if args.max_source_length is not None:
        overrides["data.max_source_length"] = str(args.max_source_length)
    task = get_task(args.task, hint=(
        "a run of a task of your own reads its rows by that task's columns without --task: "
        "give the run folder, its exported folder with --model, or --config RUN/config.yaml"))\
        if args.task else None
    input_path, output_path = Path(args.input), Path(args.output)
    if output_path.resolve() == input_path.resolve():
        raise Seq2SeqEsError(f"--output {output_path} is the input file")
    check_line_file(output_path, "--output")
    # written once every row is generated: a folder there, or a file above it, is refused now
    check_output_file("--output", args.output)
    if output_path.is_file() and not args.overwrite:
        # The file is replaced only once every row is generated; refused now, not after that.
        raise ConfigError("--output", f"{output_path} exists; give another file, or add "
                          "--overwrite to replace it")
    saved = resolve_saved(args.checkpoint)
    with _length_named_as_given(args.max_source_length):
        cfg = inference_config(saved, config_file=args.config, overrides=overrides,
                               task=args.task, model=args.model, allow_model=saved.kind == "hf")
    # A run's own config names its task: its data files' rows need no --task; nor do those of
    # a copied folder's task, which its model card names (a task of the user's own with its
    # columns). A SQAC export's rows were refused for want of a 'source' field, right after
    # the note that they were read as sqac's (upgrade audit).
    ran_config = args.config or saved.config_file
    card_task = args.task is None and not ran_config and saved.export_card is not None \
        and saved.export_card.task is not None
    run_task = task_for(cfg.data) if ran_config or card_task or (
        args.task is None and own_task_keys(cfg)) else None
    if ran_config:  # predicting with the run's model, not another --model
        check_same_names(saved, cfg, None, args.model)
    else:
        note_task_lengths(saved, cfg, overrides, ("data.max_source_length",))
    # bad input fails before loading; rows of the run's data files with their own column names
    sources = read_sources(input_path, task, run_task, cfg.data.column_map())
    env = D.read_env()
    D.init(env, cfg.dist.backend, cfg.dist.timeout_min)
    quiet_library_progress()
    say = _say(env)
    note_training_now(saved, say)
    unread = unread_by_inference(overrides, "predict")
    if unread:
        say(f"note: not read by predict: {', '.join(unread)}")
    model_task = task or task_for(cfg.data)  # --task, the run's, or an exported folder's
    if _plain_name(input_path).suffix.lower() != ".jsonl" and \
            isinstance(model_task.formatter, (QAFormatter, DialogueFormatter)):
        # Only .jsonl rows are formatted: a text line of a question alone was answered as it
        # was, without a word, by a model trained on question and context.
        fed = model_task.formatter.source_layout()
        way = ("give a .jsonl file with a `source` field holding them so (a text line cannot "
               "hold the line breaks)" if isinstance(model_task.formatter, DialogueFormatter)
               else "write each line so, or give a .jsonl file of the task's columns")
        say(f"note: {model_task.name}: each line of {input_path} is a source as it is, but "
            f"{model_task.name}'s sources are {fed}: {way}")
    with _length_named_as_given(args.max_source_length):  # a checkpoint with fewer positions
        loaded = load_for_inference(saved, cfg, env)
    side = model_task.source_truncation_side
    length_key = "--max-source-length" if args.max_source_length is not None \
        else "data.max_source_length"
    features = tokenize_sources(sources, loaded.tokenizer, cfg.data.max_source_length, side,
                                key=length_key)
    cut = sum(1 for f in features if f["length"] > cfg.data.max_source_length)
    say(f"predicting {len(sources)} rows of {input_path} with {saved.path} on "
        f"{env.world_size} process(es); {cut} source{'' if cut == 1 else 's'} cut at "
        f"{cfg.data.max_source_length} tokens")
    collator = get_collator(cfg, loaded.spec, loaded.tokenizer, loaded.model)
    predictions = generate_texts(
        loaded.model, features=features, collator=collator, tokenizer=loaded.tokenizer,
        generation_config=get_generation_config(cfg, loaded.spec, loaded.tokenizer),
        task=model_task,
        env=env, batch_size=args.batch_size or cfg.train.eval_batch_size or cfg.train.batch_size,
        zero_stage=cfg.dist.zero_stage, bf16=use_bf16(cfg), progress=True,
        sample_seed=cfg.train.seed,
        # sampled tokens depend on which rows share a batch: batch them as evaluate does
        sort_by_length=not cfg.gen.do_sample)
    if env.is_main:
        write_predictions(output_path, sources, predictions)
        say(f"wrote {len(predictions)} predictions to {output_path}")
    D.barrier()
    return 0
