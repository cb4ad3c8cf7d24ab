"""configs/runs/: one example run per experiment family of the paper, each loadable by `--config`
and never at odds with the paper defaults in the task registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from seq2seq_es.cli import build_config
from seq2seq_es.config import SECTIONS, compose, flat_keys
from seq2seq_es.models import get_model_spec
from seq2seq_es.tasks import KINDS, get_task

RUNS = Path(__file__).resolve().parent.parent / "configs" / "runs"
# One file per experiment family, named after its task kind (tasks/registry.py KINDS).
FAMILIES = {
    "summarization.yaml": "summarization",              # MLSUM, WikiLingua
    "long_summarization.yaml": "long_summarization",    # LEDO on XL-Sum, EUR-Lex-Sum
    "qa.yaml": "qa",                                    # SQAC, MLQA
    "split_rephrase.yaml": "split_rephrase",            # BiSECT
    "dialogue.yaml": "dialogue",                        # MIAM
    "translation.yaml": "translation",                  # WMT13, FAPESP
}
# The marker a run file puts on a line that restates a registry default.
REGISTRY = "(registry)"


def registry_defaults(task: str, model: str) -> dict:
    """Every dotted key the registries set for this pair, with its value: what compose applies
    before any file (the task's row, the model's own defaults, the pair's differences)."""
    keys = set(get_task(task).defaults_for(model)) | set(get_model_spec(model).defaults)
    composed = compose(task=task, model=model)
    return {key: getattr(getattr(composed, key.split(".")[0]), key.split(".")[1])
            for key in keys}


def run_file(name: str) -> tuple[Path, dict]:
    path = RUNS / name
    return path, yaml.safe_load(path.read_text(encoding="utf-8"))


def test_every_family_has_one_file_and_every_file_is_covered():
    assert set(FAMILIES.values()) == set(KINDS)
    assert sorted(p.name for p in RUNS.iterdir()) == sorted(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_run_file_composes_through_config_and_the_cli(name):
    path, values = run_file(name)
    assert set(values) == set(SECTIONS)                  # model, data, optim, train, dist, gen
    cfg = compose(config_file=str(path))
    task = get_task(cfg.data.task)
    assert task.kind == FAMILIES[name]
    assert (cfg.data.task, cfg.model.name) == (values["data"]["task"], values["model"]["name"])
    # What `seq2seq-es train --config FILE` builds (no launcher environment in tests).
    assert build_config(["--config", str(path)]) == cfg
    # Cluster choices are explicit: output folder, precision, ZeRO stage, resumable.
    assert values["train"]["output_dir"].startswith("runs/")
    assert values["train"]["precision"] == "bf16"
    assert values["dist"]["zero_stage"] in (1, 2, 3)
    assert values["train"]["resume"] == "auto"
    # Generation follows the target length (no stale gen.max_new_tokens).
    assert "max_new_tokens" not in values["gen"]
    assert cfg.gen.max_new_tokens == cfg.data.max_target_length


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_run_file_restates_exactly_the_registry_defaults_of_its_pair(name):
    path, values = run_file(name)
    task, model = values["data"]["task"], values["model"]["name"]
    expected = registry_defaults(task, model)
    cfg = compose(config_file=str(path))
    set_here = set(flat_keys(values))
    # Every value the file sets that the registry also sets is the registry's (after type
    # conversion: compose read the file last, so the composed value is the file's).
    differ = {key: (getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]), want)
              for key, want in expected.items()
              if key in set_here and getattr(getattr(cfg, key.split(".")[0]),
                                              key.split(".")[1]) != want}
    assert not differ, f"{name} drifted from the registry ({task} x {model}): {differ}"
    # ... and it shows all of them, so a new registry default is noticed here.
    assert not set(expected) - set_here, f"{name} does not show {set(expected) - set_here}"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_paper_marker_is_on_exactly_the_registry_keys(name):
    """The comments say which lines are the paper's defaults; they must say it truthfully."""
    path, values = run_file(name)
    expected = registry_defaults(values["data"]["task"], values["model"]["name"])
    marked, section = set(), None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith((" ", "#")):
            section = line.split(":")[0]
        elif line.startswith("  ") and not line.lstrip().startswith("#") and ":" in line:
            if REGISTRY in line:
                marked.add(f"{section}.{line.split(':')[0].strip()}")
    assert marked == set(expected)


def test_the_long_document_run_reads_16k_with_checkpointing():
    cfg = compose(config_file=str(RUNS / "long_summarization.yaml"))
    assert (cfg.model.name, cfg.data.task) == ("ledo", "eurlexsum")
    assert cfg.data.max_source_length == 16384 == get_model_spec("ledo").max_source_positions
    assert cfg.model.gradient_checkpointing
    # The paper's 8 rows per GPU and optimizer step, as micro-batch x accumulation.
    assert cfg.train.batch_size * cfg.train.grad_accum == 8
