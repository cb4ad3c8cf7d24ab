"""`train.push_to_hub REPO`: check at the start of a run that the upload can happen, upload final/
at its end.

The check runs before any model or data is loaded, so a run of hours does not end by failing to
upload: the repo id must be valid, the hub reachable (HF_HUB_OFFLINE unset, network up), a token
present, accepted and not read-only, and the repo's namespace the user's or one of their
organisations'. The upload (rank 0, after final/ and final_results.json are written) creates the
repo if needed and uploads final/ in one commit, with final_results.json and a model card.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import run_files
from ..config import RunConfig, own_task_keys
from ..errors import ConfigError, Seq2SeqEsError
from ..tasks.formatting import SPLIT_MARKER

KEY = "train.push_to_hub"
_TRUE = {"1", "ON", "YES", "TRUE"}


def _offline_variable() -> str | None:
    """The variable that puts huggingface_hub offline, if one does (read now, and as the library
    read it at import)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in _TRUE:
            return name
    from huggingface_hub import constants
    return "HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE else None


def check_push(cfg: RunConfig) -> str:
    """Refuse (ConfigError naming train.push_to_hub) an upload that cannot happen; returns the
    full repo id (namespace/name)."""
    repo_id = cfg.train.push_to_hub
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(KEY, f"{repo_id!r} is not a hub repo id (namespace/name): {exc}") from None
    if not cfg.train.export:
        raise ConfigError(KEY, "needs train.export true: final/ is what is uploaded")
    offline = _offline_variable()
    if offline:
        raise ConfigError(KEY, f"{offline} is set, so the hub cannot be reached; unset it for this "
                          "run (HF_DATASETS_OFFLINE can stay) or drop train.push_to_hub")
    token = get_token()
    if not token:
        raise ConfigError(KEY, "no Hugging Face token: log in with `hf auth login` or set HF_TOKEN "
                          "to a token with write access")
    endpoint = constants.ENDPOINT
    try:
        me = HfApi(endpoint=endpoint).whoami(token=token)
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise ConfigError(KEY, f"{endpoint} refused the token (HTTP {status}): "
                          f"{str(exc).splitlines()[0]}") from None
    except Exception as exc:  # connection errors come from the HTTP client, not huggingface_hub
        raise ConfigError(KEY, f"cannot reach {endpoint} ({type(exc).__name__}: {exc}); check the "
                          "network or proxy of this machine, or drop train.push_to_hub") from None
    role = (me.get("auth") or {}).get("accessToken", {}).get("role")
    if role == "read":
        raise ConfigError(KEY, f"the token of user {me.get('name')} is read-only; use a token "
                          "with write access")
    user = me.get("name")
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    orgs = [org.get("name") for org in me.get("orgs") or []]
    if user and namespace != user and namespace not in orgs:
        raise ConfigError(KEY, f"user {user} cannot create repos under '{namespace}' (their "
                          f"organisations: {', '.join(orgs) or 'none'})")
    return f"{namespace}/{repo_id.split('/')[-1]}"


def model_card(results: dict, base_model: str | None, task_hub_id: str | None,
               inputs: list[str] = ()) -> str:
    """A short README.md: what was trained on what, how to feed it, and its validation and test
    scores."""
    lines = _card_head(results["model"], results["task"], base_model, task_hub_id)
    chosen = f"chosen on the validation {results['main_metric']}"
    if results.get("kept") == "last":  # train.load_best_at_end false, or nothing validated
        best = results.get("best_validation_step")
        chosen = "the last (" + (
            "no validation ran)" if best is None else
            f"train.load_best_at_end false; the best validation {results['main_metric']} was "
            f"at step {best})")
    lines += [f"Trained with seq2seq-es; the weights are those of step {results['best_step']}"
              f" of {results['steps']}, {chosen}.", ""]
    lines += _inputs_section(inputs)
    for split in ("validation", "test"):
        scores = results.get(split) or {}
        if scores:
            lines += [f"## {split}", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in scores.items()]
            lines.append("")
    lines += ["`final_results.json` holds the same numbers.", ""]
    return "\n".join(lines)


def trained_on_hub_dataset(cfg: RunConfig, task) -> str | None:
    """The hub dataset the card's metadata names: the task's, unless the run trained on a
    local file (the hub page then claimed a dataset the model never saw)."""
    return None if cfg.data.train_file else getattr(task, "hub_id", None)


def _card_head(model: str, task: str, base_model: str | None, task_hub_id: str | None
               ) -> list[str]:
    """The card's front matter (the hub's metadata) and title."""
    front = ["---", "language: es", "library_name: transformers", "tags:", "- seq2seq-es",
             f"- {task}"]
    if base_model:
        front.append(f"base_model: {base_model}")
    if task_hub_id:
        front += ["datasets:", f"- {task_hub_id}"]
    return front + ["---", "", f"# {model} fine-tuned on {task}", ""]


def _inputs_section(inputs: list[str]) -> list[str]:
    return ["## Inputs", "", *(f"- {line}" for line in inputs), ""] if inputs else []


_GLOBAL_TOKENS = {"first": "the first token",
                  "sentences": "the first token and the first token of every sentence"}


def _global_mask_code(chosen: str) -> str:
    """Code that builds the mask the collator built for `chosen` (the sample was the first
    token's for every setting, so a `prefix:3` model was fed otherwise than it was scored)."""
    zeros = "`mask = torch.zeros_like(input_ids); "
    if chosen.startswith("prefix:"):
        return f"as {zeros}mask[:, :{chosen.split(':', 1)[1]}] = 1`"
    if chosen == "sentences":
        return (f"as {zeros}mask[:, 0] = 1; ends = torch.tensor([[t in END for t in row] for row "
                "in input_ids.tolist()]); mask[:, 1:] |= ends[:, :-1].long()`, END being the "
                "ids of the tokens whose text ends in `.`, `!`, `?` or `…` (the token after one "
                "starts a sentence)")
    return f"as {zeros}mask[:, 0] = 1`"


def input_notes(cfg: RunConfig, task, spec, dtype: str = "fp32") -> list[str]:
    """How the model is fed, for someone using final/ without this package: the source text's
    layout, its length, the decoding settings and, for LED, the global attention it trained
    with (transformers' LED puts none without a global_attention_mask, and its outputs then
    differ from the scores here), and how the scores compare answers where that is not the
    metric's plain definition. `dtype`: the weights' (train.export_dtype, export --dtype).

    A prediction as this package writes it is `formatting.clean_prediction`'s: the decoded text
    stripped and in NFC, and for split-and-rephrase every spelling of the sentence marker written
    as one (a vocabulary without '<' decodes it as "SPLIT"); the card says so, so that plain
    transformers gives the same text."""
    cut = "their end" if task.source_truncation_side == "right" else "their start"
    cleaned = "stripped of surrounding spaces, in Unicode NFC"
    if task.kind == "split_rephrase":
        cleaned += (f", and every spelling of the sentence marker (`SPLIT`, `< SPLIT >`, "
                    f"`_SPLIT_`, `<SEP>`) written ` {SPLIT_MARKER} `")
    # The weights' dtype is config.json's, which from_pretrained computes in by default; this
    # package loads them into fp32 (a bf16 export decoded otherwise in plain transformers).
    loaded, upcast = ("FOLDER", "") if dtype == "fp32" else (
        "FOLDER, dtype=torch.float32",
        f" The weights are {dtype}: `dtype=torch.float32` computes in fp32, as this package "
        f"does (without it, transformers computes in {dtype}, and predictions may differ).")
    notes = [f"Source: {task.formatter.source_layout()}; at most {cfg.data.max_source_length} "
             f"tokens (longer sources lose {cut}).",
             "Decoding: `generation_config.json` holds the run's decoding settings, those of any "
             "scores listed here (`model.generate` reads it); predictions are the decoded text "
             f"(`tokenizer.decode(ids, skip_special_tokens=True)`) {cleaned} "
             "(`seq2seq_es.tasks.formatting.clean_prediction`).",
             "Loading: `" + ("EncoderDecoderModel" if spec.family == "bert2bert"
                             else "AutoModelForSeq2SeqLM")
             + f".from_pretrained({loaded})` and `AutoTokenizer.from_pretrained(FOLDER)` (from "
             f"transformers).{upcast}"]
    own = own_task_keys(cfg)
    if own:  # what a copied folder needs to read rows of the task's columns (inference)
        notes.append(f"A task of its own: {', '.join(f'`{k} {v}`' for k, v in own.items())} "
                     "(`seq2seq-es predict` and `evaluate` read them from here, for a folder "
                     "without its run's config.yaml).")
    if spec.adapter.reads("data.global_attention"):
        chosen = cfg.data.global_attention
        tokens = _GLOBAL_TOKENS.get(chosen) or f"the first {chosen.split(':', 1)[1]} tokens"
        notes.append(f"Global attention on {tokens} (`data.global_attention {chosen}`): pass "
                     "`global_attention_mask` (1 there, 0 elsewhere) to `generate` and the "
                     f"forward pass, {_global_mask_code(chosen)}; without it transformers' LED "
                     "attends globally to no token.")
    for metric, options in task.metric_options.items():
        notes.append(f"`{metric}` compares answers under the `{options['convention']}` "
                     f"convention (`seq2seq-es score --help`), not the plain definition.")
    return notes


def write_model_card(run_dir: Path, cfg: RunConfig) -> Path:
    """final/README.md from final_results.json and the run's config (at the end of every
    exporting run, so a copied final/ says how to use it; the upload sends it)."""
    from ..models import get_model_spec
    from ..tasks import task_for

    results = json.loads((run_dir / run_files.FINAL_RESULTS).read_text())
    spec, task = get_model_spec(cfg.model.name), task_for(cfg.data)
    base = None if spec.tiny else getattr(spec, "hub_id", None)
    card = run_dir / run_files.FINAL / "README.md"
    card.write_text(model_card(results, base, trained_on_hub_dataset(cfg, task),
                               input_notes(cfg, task, spec, cfg.train.export_dtype)),
                    encoding="utf-8")
    return card


def write_export_card(out: Path, cfg: RunConfig, checkpoint: Path, dtype: str = "fp32") -> Path:
    """OUT/README.md for `seq2seq-es export`: what the folder holds and how to feed it, as
    final/ says (a LED model's global attention above all); a checkpoint has no scores yet."""
    from ..models import get_model_spec
    from ..tasks import task_for

    spec, task = get_model_spec(cfg.model.name), task_for(cfg.data)
    base = None if spec.tiny else getattr(spec, "hub_id", None)
    lines = _card_head(cfg.model.name, cfg.data.task, base, trained_on_hub_dataset(cfg, task))
    lines += [f"Trained with seq2seq-es; the weights of checkpoint `{checkpoint}`, exported by "
              "`seq2seq-es export`. Its scores: `seq2seq-es evaluate "
              f"{checkpoint} --split test` (in its run), or `seq2seq-es evaluate {out} "
              f"--config RUN/config.yaml --output-dir DIR --split test`; this folder alone "
              "holds no run config (predict and evaluate read its model and task from this card, "
              "a task of its own's columns and metrics, source length and global attention "
              "too, the task's defaults for the rest).", ""]
    lines += _inputs_section(input_notes(cfg, task, spec, dtype))
    card = out / "README.md"
    card.write_text("\n".join(lines), encoding="utf-8")
    return card


def push_final(run_dir: Path, cfg: RunConfig) -> str:
    """Upload RUN/final (with final_results.json and a model card) to train.push_to_hub in one
    commit; returns the repo URL. A failure names the command that uploads by hand: the run
    itself is complete."""
    from huggingface_hub import HfApi

    folder = run_dir / run_files.FINAL
    results = json.loads((run_dir / run_files.FINAL_RESULTS).read_text())
    shutil.copyfile(run_dir / run_files.FINAL_RESULTS, folder / run_files.FINAL_RESULTS)
    if not (folder / "README.md").exists():
        write_model_card(run_dir, cfg)
    repo_id = cfg.train.push_to_hub
    api = HfApi()
    try:
        # Private unless asked otherwise: results not yet published must not go public by
        # default (create_repo's own default is public).
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True,
                              private=cfg.train.hub_private)
        api.upload_folder(repo_id=url.repo_id, repo_type="model", folder_path=str(folder),
                          commit_message=f"seq2seq-es: {results['model']} on {results['task']}, "
                                         f"step {results['best_step']}")
    except (Exception, KeyboardInterrupt) as exc:  # a Ctrl-C too: say how to finish by hand
        raise Seq2SeqEsError(f"uploading {folder} to {repo_id} failed ({type(exc).__name__}: "
                             f"{exc}); the run is complete: upload it by hand with `hf upload "
                             f"{repo_id} {folder} . --repo-type model"
                             f"{' --private' if cfg.train.hub_private else ''}`") from exc
    return str(url)
