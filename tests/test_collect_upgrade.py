"""collect on runs written by different versions of the package: a key an older version did
not write yet reads as its default, as a resume of that run composes it (upgrade audit: the
seeds of one setting trained before and after an upgrade were compared as different grid
points, "data.columns=None" against '', and the table showed one lucky seed)."""

from __future__ import annotations

import json

import yaml

from seq2seq_es.config import RunConfig
from seq2seq_es.slurm.results_table import _trained_settings, build_table, format_markdown
from seq2seq_es.slurm.sweep import load_runs

# Keys added to config.yaml after 2026-12-01 (an older run's file lacks them).
ADDED_SINCE = {"model": ("cudnn_attention", "checkpoint_scope"), "data": ("columns", "metrics"),
               "train": ("eval_generate", "early_stopping_patience"), "gen": ("top_k",)}


def _run(folder, seed, rouge_l, *, older=False):
    config = RunConfig().to_dict()
    config["model"]["name"], config["data"]["task"] = "barto-tiny", "mlsum"
    config["train"].update(seed=seed, output_dir=str(folder))
    if older:
        for section, keys in ADDED_SINCE.items():
            for key in keys:
                del config[section][key]
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    scores = {"rouge1": 28.0, "rouge2": 12.0, "rougeL": rouge_l, "loss": 2.0}
    (folder / "final_results.json").write_text(json.dumps({
        "task": "mlsum", "model": "barto-tiny", "main_metric": "rougeL", "best_step": 8,
        "steps": 10, "validation": scores, "test": scores}))


def test_seeds_of_one_setting_before_and_after_an_upgrade_are_averaged(tmp_path):
    runs = tmp_path / "runs"
    _run(runs / "s1", 1, 30.0, older=True)
    _run(runs / "s2", 2, 20.0)
    manifest = load_runs([str(runs)])
    # the runs differ in their seed only
    assert [run.grid_point for run in manifest.runs] == [{"run": "s1", "train.seed": "1"},
                                                         {"run": "s2", "train.seed": "2"}]
    out = format_markdown(build_table(manifest))
    assert "- g1: run=s1,s2 (seeds 1, 2)" in out
    assert "| barto-tiny | g1 | " in out and "25.00 ± 7.07 / 25.00 ± 7.07" in out
    assert "cudnn_attention" not in out and "None" not in out
    # the sweep's warning about runs differing outside its grid reads the same settings
    assert _trained_settings(runs / "s1") == _trained_settings(runs / "s2") | {
        "train.seed": 1}


def test_a_key_the_run_wrote_is_not_replaced_by_the_default(tmp_path):
    _run(tmp_path / "run", 1, 30.0)
    path = tmp_path / "run" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["model"]["cudnn_attention"] = True
    del config["gen"]  # a section the file lacks is not filled in
    path.write_text(yaml.safe_dump(config))
    settings = _trained_settings(tmp_path / "run")
    assert settings["model.cudnn_attention"] is True
    assert settings["data.columns"] == RunConfig().data.columns
    assert not any(key.startswith("gen.") for key in settings)


def test_a_key_added_since_takes_its_tasks_and_models_value(tmp_path):
    # What a resume of the run composes: the registry's value for its task and model, not the
    # bare default (sqac's sources are 480 tokens for BART, where the default is 512).
    from seq2seq_es.config import compose, with_keys_added_since

    flat = {"data.task": "sqac", "model.name": "barto", "data.train_file": "x.jsonl",
            "train.seed": 3}
    filled = with_keys_added_since(flat)
    assert filled["data.max_source_length"] == compose("sqac", "barto").data.max_source_length \
        == 480
    assert filled["train.seed"] == 3 and filled["data.train_file"] == "x.jsonl"
    # a pair this version cannot compose (a model it does not know): the bare defaults
    unknown = with_keys_added_since({**flat, "model.name": "barto-huge-es"})
    assert unknown["data.max_source_length"] == RunConfig().data.max_source_length
    assert unknown["model.name"] == "barto-huge-es"
