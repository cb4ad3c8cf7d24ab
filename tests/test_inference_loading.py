"""Loading never leaves 16-bit weights (training and evaluation start from fp32), and a model
folder without its run's config decodes as its own generation_config.json says."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from engine_runs import REPO, subprocess_env
from transformers import GenerationConfig

from seq2seq_es.config import RunConfig
from seq2seq_es.demo.synthetic import write_demo_dataset
from seq2seq_es.engine.builders import get_model
from seq2seq_es.engine.inference import inference_config, resolve_saved
from seq2seq_es.errors import ConfigError
from seq2seq_es.models import load_model_and_tokenizer, save_model


def _export(folder, dtype: str, generation: dict | None = None):
    cfg = RunConfig()
    cfg.model.name = "barto-tiny"
    model, tokenizer, _ = get_model(cfg)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()} \
        if dtype == "bf16" else None
    save_model(model, folder, state_dict=state, dtype=dtype)
    tokenizer.save_pretrained(folder)
    if generation is not None:
        GenerationConfig(**generation).save_pretrained(folder)
    return model


def test_a_bf16_export_loads_with_fp32_weights(tmp_path):
    original = _export(tmp_path, "bf16")
    model, _ = load_model_and_tokenizer("barto-tiny", str(tmp_path))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # the values are the export's bf16 ones, upcast exactly
    name, weight = next(iter(original.state_dict().items()))
    assert torch.equal(model.state_dict()[name], weight.to(torch.bfloat16).float())


def test_a_model_folder_without_run_config_decodes_with_its_own_generation_config(tmp_path):
    _export(tmp_path, "fp32", {"num_beams": 2, "max_new_tokens": 7, "min_new_tokens": 2,
                               "no_repeat_ngram_size": 0, "length_penalty": 1.5,
                               "early_stopping": False, "decoder_start_token_id": 2})
    saved = resolve_saved(tmp_path)
    cfg = inference_config(saved, model="barto-tiny", task="mlsum", allow_model=True)
    assert (cfg.gen.num_beams, cfg.gen.max_new_tokens, cfg.gen.min_new_tokens) == (2, 7, 2)
    assert (cfg.gen.no_repeat_ngram_size, cfg.gen.length_penalty, cfg.gen.early_stopping) == \
        (0, 1.5, False)
    # the command line still wins
    cfg = inference_config(saved, model="barto-tiny", task="mlsum", allow_model=True,
                           overrides={"gen.num_beams": "3"})
    assert (cfg.gen.num_beams, cfg.gen.max_new_tokens) == (3, 7)


def test_settings_of_a_folders_generation_config_that_decoding_does_not_apply_are_noted(
        tmp_path, capsys):
    # A BART fine-tuned elsewhere forces <s> first and </s> at the limit; gen.* cannot say so,
    # so the note names them rather than the README's "decodes as its own" promising them.
    _export(tmp_path, "fp32", {"num_beams": 4, "forced_bos_token_id": 0,
                               "forced_eos_token_id": 2, "repetition_penalty": 1.0,
                               "decoder_start_token_id": 2})
    inference_config(resolve_saved(tmp_path), model="barto-tiny", task="mlsum", allow_model=True)
    err = capsys.readouterr().err
    assert "also sets forced_bos_token_id 0, forced_eos_token_id 2, which this package's " \
        "decoding does not apply" in err
    assert "repetition_penalty" not in err  # 1.0 changes nothing
    # our own exports hold only what is applied: no note
    _export(tmp_path / "own", "fp32", {"num_beams": 4, "max_new_tokens": 48,
                                       "decoder_start_token_id": 2, "eos_token_id": 2})
    inference_config(resolve_saved(tmp_path / "own"), model="barto-tiny", task="mlsum",
                     allow_model=True)
    assert "does not apply" not in capsys.readouterr().err


def test_a_folder_without_a_minimum_decodes_with_none_and_reads_length_limits_like_transformers(
        tmp_path):
    # Our exports leave min_new_tokens out when it is 0; transformers then applies no minimum.
    # mlsum's registry minimum (8) must not creep back in. A folder written by another tool may
    # give max_length / min_length instead, which count the decoder start token.
    _export(tmp_path, "fp32", {"num_beams": 4, "max_new_tokens": 48, "decoder_start_token_id": 2})
    cfg = inference_config(resolve_saved(tmp_path), model="barto-tiny", task="mlsum",
                           allow_model=True)
    assert (cfg.gen.max_new_tokens, cfg.gen.min_new_tokens) == (48, 0)
    other = tmp_path / "other"
    _export(other, "fp32", {"num_beams": 4, "max_length": 31, "min_length": 6,
                            "decoder_start_token_id": 2})
    cfg = inference_config(resolve_saved(other), model="barto-tiny", task="mlsum",
                           allow_model=True)
    assert (cfg.gen.max_new_tokens, cfg.gen.min_new_tokens) == (30, 5)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seq2seq_es", *args], cwd=REPO,
                          env=subprocess_env(HF_HUB_OFFLINE="1", **env), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_a_model_folder_or_hub_id_without_a_run_is_evaluated_as_the_task_and_model_given(
        tmp_path):
    folder = tmp_path / "model"
    _export(folder, "fp32", {"num_beams": 1, "max_new_tokens": 5, "decoder_start_token_id": 2})
    data = write_demo_dataset(tmp_path / "data", train_size=0, validation_size=3, seed=1)
    split = ["--data.validation_file", data["validation"]]

    refused = _cli("evaluate", str(folder), *split, "--output-dir", str(tmp_path / "x"))
    assert refused.returncode == 2
    assert "has no run config: pass --task T --model M" in refused.stderr

    scored = _cli("evaluate", str(folder), "--task", "mlsum", "--model", "barto-tiny", *split,
                  "--output-dir", str(tmp_path / "local"))
    assert scored.returncode == 0, scored.stderr
    local = json.loads((tmp_path / "local" / "evaluation.json").read_text())
    assert (local["task"], local["model"], local["examples"]) == ("mlsum", "barto-tiny", 3)

    # The same files as a hub model in the Hugging Face cache layout, read offline.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--barto-mlsum"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    hub = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    fetched = _cli("evaluate", "someone/barto-mlsum", "--task", "mlsum", "--model", "barto-tiny",
                   *split, "--output-dir", str(tmp_path / "hub_out"), **hub)
    assert fetched.returncode == 0, fetched.stderr
    from_hub = json.loads((tmp_path / "hub_out" / "evaluation.json").read_text())
    assert from_hub["hub_id"] == "someone/barto-mlsum"
    assert from_hub["results"] == local["results"]  # the same weights, the same scores

    missing = _cli("evaluate", "someone/not-cached", "--task", "mlsum", "--model", "barto-tiny",
                   "--output-dir", str(tmp_path / "y"), **hub)
    assert missing.returncode == 2
    assert ("someone/not-cached does not exist locally, and as a Hugging Face hub id it could "
            "not be fetched") in missing.stderr
    # What the scores need is checked before any download.
    unnamed = _cli("evaluate", "someone/barto-mlsum", "--task", "mlsum", "--model", "barto-tiny",
                   **hub)
    assert unnamed.returncode == 2 and "pass --output-dir DIR" in unnamed.stderr


def test_a_run_config_is_not_evaluated_under_another_task(tmp_path):
    from seq2seq_es.engine.inference import SavedModel, check_same_names

    cfg = RunConfig()
    cfg.model.name, cfg.data.task = "barto-tiny", "mlsum"
    saved = SavedModel("hf", tmp_path, tmp_path, "final")
    check_same_names(saved, cfg, "mlsum", None)
    with pytest.raises(ConfigError, match="run config says mlsum, not xlsum"):
        check_same_names(saved, cfg, "xlsum", None)
    with pytest.raises(ConfigError, match="says barto-tiny, not t5s-tiny"):
        check_same_names(saved, cfg, None, "t5s-tiny")


def test_a_mistyped_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    from seq2seq_es.errors import Seq2SeqEsError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(Seq2SeqEsError, match="^runs/typo does not exist$"):
        resolve_saved("runs/typo")


def test_a_short_step_name_points_at_the_padded_folder(tmp_path):
    from seq2seq_es.errors import Seq2SeqEsError

    (tmp_path / "checkpoints" / "step_00000040").mkdir(parents=True)
    with pytest.raises(Seq2SeqEsError, match="did you mean .*step_00000040"):
        resolve_saved(tmp_path / "checkpoints" / "step_40")


def _run_with_config(folder, **overrides: str):
    from seq2seq_es.config import compose, dump
    from seq2seq_es.engine.inference import SavedModel

    dump(compose("mlsum", "barto-tiny", overrides=overrides), folder / "config.yaml")
    return SavedModel("deepspeed", folder / "checkpoints" / "step_00000004", folder,
                      "step_00000004")


def test_evaluate_lengths_follow_a_new_target_length_as_train_would(tmp_path):
    # config.yaml holds gen.max_new_tokens resolved (64, the target length the run followed)
    # and the task's minimum (8): every key of it counts as set, so a new target length did not
    # reach generation and a shorter maximum was refused for a minimum the user never set.
    saved = _run_with_config(tmp_path, **{"data.max_target_length": "64"})
    gen = inference_config(saved, overrides={"data.max_target_length": "8"}).gen
    assert (gen.max_new_tokens, gen.min_new_tokens) == (8, 8)
    gen = inference_config(saved, overrides={"gen.max_new_tokens": "6"}).gen
    assert (gen.max_new_tokens, gen.min_new_tokens) == (6, 6)
    gen = inference_config(saved, overrides={"data.max_target_length": "100"}).gen
    assert (gen.max_new_tokens, gen.min_new_tokens) == (100, 8)
    # what the command gives wins: its own maximum, and a minimum it sets is checked, not lowered
    gen = inference_config(saved, overrides={"data.max_target_length": "8",
                                             "gen.max_new_tokens": "20"}).gen
    assert (gen.max_new_tokens, gen.min_new_tokens) == (20, 8)
    with pytest.raises(ConfigError, match="gen.min_new_tokens"):
        inference_config(saved, overrides={"gen.max_new_tokens": "6", "gen.min_new_tokens": "8"})
    # a run that set its own maximum keeps it under a new target length, as train keeps it
    own = tmp_path / "own"
    own.mkdir()
    saved = _run_with_config(own, **{"data.max_target_length": "64", "gen.max_new_tokens": "30"})
    gen = inference_config(saved, overrides={"data.max_target_length": "16"}).gen
    assert (gen.max_new_tokens, gen.min_new_tokens) == (30, 8)


def test_evaluate_takes_dev_for_validation_as_collect_does():
    # `collect --split dev` and `evaluate --split validation`: each refused the other's name.
    from seq2seq_es.engine.inference import parse_evaluate_args

    known, _ = parse_evaluate_args(["RUN", "--split", "dev"])
    assert known.split == "validation"
    assert parse_evaluate_args(["RUN", "--split", "test"])[0].split == "test"
